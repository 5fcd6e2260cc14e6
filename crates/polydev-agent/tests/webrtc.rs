//! The WebRTC routes against the real `polydev-streamer` binary on a
//! private Xvfb: an offer through the agent's HTTP API, a str0m viewer
//! (the browser's part) connecting to the answer and receiving VP8 of the
//! screen's size, trickled candidates, stats, a streamer restarted after
//! it died, and the 503 of images without a streamer.
//!
//! The streamer binary is `POLYDEV_STREAMER_BIN`, else it is built with
//! cargo into this workspace's target directory (same profile as the test).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use polydev_agent::webrtc::StreamerConfig;
use polydev_agent::{api, config};
use polydev_stream::viewer::{Viewer, ViewerEvent};
use polydev_stream::IceCandidate;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn streamer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("POLYDEV_STREAMER_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<this test>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "polydev-stream",
        "--bin",
        "polydev-streamer",
        "--manifest-path",
    ])
    .arg(&manifest);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .expect("running cargo to build polydev-streamer");
    assert!(status.success(), "building polydev-streamer failed");
    let bin = profile_dir.join("polydev-streamer");
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

async fn start(streamer: StreamerConfig) -> (std::net::SocketAddr, api::AppState) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.json");
    std::fs::write(&path, r#"{"vm_id":"vm-test","token":"s3cret","port":0}"#).unwrap();
    let cfg = config::load(&path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = api::AppState::new(&cfg).with_streamer(streamer);
    let app = api::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

/// One request with the token; (status, JSON body).
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

#[tokio::test]
async fn images_without_a_streamer_answer_503() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _state) = start(StreamerConfig {
        bin: dir.path().join("polydev-streamer"),
        user: None,
        ..StreamerConfig::default()
    })
    .await;
    let (status, v) = call(addr, "POST", "/webrtc/offer", Some(r#"{"sdp":"v=0"}"#)).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "streamer_unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("browser image"),
        "{v}"
    );
    let (status, v) = call(addr, "POST", "/webrtc/candidate", Some(r#"{"candidate":"candidate:1 1 udp 1 10.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}"#)).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("no_session")),
        "{v}"
    );
    let (status, v) = call(addr, "GET", "/webrtc/stats", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["running"].clone(), v["connected"].clone()),
        (json!(false), json!(false))
    );
    assert!(
        v["lastError"].as_str().unwrap().contains("is missing"),
        "{v}"
    );
    // Bodies are checked before anything starts.
    let (status, v) = call(addr, "POST", "/webrtc/offer", Some(r#"{"sdp":5}"#)).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!("bad_request"))
    );
    let (status, _) = call(
        addr,
        "POST",
        "/webrtc/offer",
        Some(r#"{"type":"answer","sdp":"v=0"}"#),
    )
    .await;
    assert_eq!(status, 400);
}

/// Offers through the agent and connects a viewer; returns once a keyframe
/// of `size` arrived.
async fn connect_viewer(addr: std::net::SocketAddr, size: (u16, u16)) {
    let (mut viewer, offer) = Viewer::offer("127.0.0.1".parse().unwrap()).unwrap();
    let (status, v) = call(
        addr,
        "POST",
        "/webrtc/offer",
        Some(&json!({"type": "offer", "sdp": offer}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let answer = v["answer"].as_str().unwrap().to_owned();
    assert!(answer.starts_with("v=0"), "{answer}");
    assert!(
        answer.contains("a=ice-lite")
            && answer.contains("VP8/90000")
            && answer.contains("a=sendonly"),
        "{answer}"
    );
    let candidates: Vec<IceCandidate> = serde_json::from_value(v["candidates"].clone()).unwrap();
    assert_eq!(candidates.len(), 1);
    assert!(
        candidates[0].candidate.contains("127.0.0.1")
            && candidates[0].candidate.contains("typ host")
    );
    assert!(
        answer.contains(&format!("a={}", candidates[0].candidate)),
        "the SDP carries the candidate"
    );
    viewer.answer(&answer, &candidates).unwrap();
    let got = tokio::task::spawn_blocking(move || {
        viewer
            .run_until(
                Duration::from_secs(15),
                |e| matches!(e, ViewerEvent::Frame { keyframe: Some(k), .. } if *k == size),
            )
            .unwrap()
    })
    .await
    .unwrap();
    assert!(got, "no {size:?} keyframe through the agent's answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_through_the_agent_streams() {
    if !polydev_stream::xvfb::Xvfb::available() {
        if std::env::var_os("CI").is_some() {
            panic!("Xvfb is not installed (apt-get install xvfb)");
        }
        eprintln!("SKIPPED: Xvfb is not installed");
        return;
    }
    let x = polydev_stream::xvfb::Xvfb::start(1280, 800).unwrap();
    let (addr, state) = start(StreamerConfig {
        bin: streamer_bin(),
        display: x.display().to_owned(),
        user: None,
        args: [
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--advertise",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec(),
    })
    .await;

    // Nothing runs before the first offer.
    let (_, v) = call(addr, "GET", "/webrtc/stats", None).await;
    assert_eq!(v["running"], false);
    assert!(state.webrtc.streamer_pid().await.is_none());

    connect_viewer(addr, (1280, 800)).await;
    let pid = state.webrtc.streamer_pid().await.expect("streamer running");
    let (status, v) = call(addr, "POST", "/webrtc/candidate", Some(r#"{"candidate":"candidate:2 1 udp 2122260223 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}"#)).await;
    assert_eq!((status, v.clone()), (200, json!({"success": true})), "{v}");
    let (status, v) = call(
        addr,
        "POST",
        "/webrtc/candidate",
        Some(r#"{"candidate":"bogus"}"#),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!("bad_request")),
        "{v}"
    );
    let (_, v) = call(addr, "GET", "/webrtc/stats", None).await;
    assert_eq!(
        (
            v["running"].clone(),
            v["connected"].clone(),
            v["codec"].clone()
        ),
        (json!(true), json!(true), json!("VP8")),
        "{v}"
    );
    assert_eq!(
        (v["width"].clone(), v["height"].clone()),
        (json!(1280), json!(800))
    );
    assert!(v["framesSent"].as_u64().unwrap() >= 1, "{v}");
    for k in ["framesEncoded", "inputEvents", "lastError"] {
        assert!(v.get(k).is_some(), "stats lack {k}: {v}");
    }
    // A bad offer is the streamer's 400 (and the streamer keeps running).
    let (status, v) = call(addr, "POST", "/webrtc/offer", Some(r#"{"sdp":"garbage"}"#)).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!("bad_request")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("SDP"),
        "{v}"
    );
    assert_eq!(state.webrtc.streamer_pid().await, Some(pid));

    // The streamer dies: the next offer starts a new one.
    // SAFETY: signalling the streamer this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, v) = call(addr, "GET", "/webrtc/stats", None).await;
    assert_eq!(v["running"], false, "{v}");
    assert!(v["lastError"].as_str().unwrap().contains("exited"), "{v}");
    connect_viewer(addr, (1280, 800)).await;
    let pid2 = state.webrtc.streamer_pid().await.expect("restarted");
    assert_ne!(pid, pid2);
}
