//! Streamed processes through the agent's router on 127.0.0.1: output
//! arrives while the process runs, a reader resumes from an event number,
//! stdin is fed, signals and the deadline end the process, and nothing it
//! started outlives a cancel or a deadline (not even a child that made a
//! session of its own).

use polydev_agent::{api, config};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

async fn start() -> std::net::SocketAddr {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.json");
    std::fs::write(&path, r#"{"vm_id":"vm-test","token":"s3cret","port":0}"#).unwrap();
    let cfg = config::load(&path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api::router(api::AppState::new(&cfg));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Opens the event stream; returns a reader of its NDJSON lines (the
/// chunked framing's size lines are skipped).
async fn events(
    addr: std::net::SocketAddr,
    id: &str,
    from: u64,
) -> tokio::io::Lines<BufReader<tokio::net::TcpStream>> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /procs/{id}/events?from={from} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(s).lines();
    while let Some(l) = lines.next_line().await.unwrap() {
        if l.is_empty() {
            break;
        }
    }
    lines
}

/// The next event (skipping chunk-size lines).
async fn next_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
) -> Option<serde_json::Value> {
    while let Some(l) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("an event in 20 s")
        .unwrap()
    {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
            if v.is_object() {
                return Some(v);
            }
        }
    }
    None
}

fn text(v: &serde_json::Value) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(v["data"].as_str().unwrap_or_default())
        .unwrap();
    String::from_utf8(b).unwrap()
}

fn running_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .count()
}

#[tokio::test]
async fn output_streams_while_the_process_runs_and_resumes_by_number() {
    let addr = start().await;
    let (st, v) = request(
        addr,
        "POST",
        "/procs",
        r#"{"argv": ["sh", "-c", "echo one; sleep 1; echo two >&2; sleep 1; echo three; exit 3"]}"#,
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["procId"].as_str().unwrap().to_string();
    let started = Instant::now();
    let mut ev = events(addr, &id, 0).await;
    let first = next_event(&mut ev).await.unwrap();
    assert_eq!(
        (first["type"].as_str(), text(&first).as_str()),
        (Some("stdout"), "one\n")
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the first line waited for the end"
    );
    let second = next_event(&mut ev).await.unwrap();
    assert_eq!(
        (second["type"].as_str(), text(&second).as_str()),
        (Some("stderr"), "two\n")
    );
    let third = next_event(&mut ev).await.unwrap();
    assert_eq!(text(&third), "three\n");
    let exit = next_event(&mut ev).await.unwrap();
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["exitCode"], 3);
    assert_eq!(exit["timedOut"], false);
    assert!(
        next_event(&mut ev).await.is_none(),
        "the stream ends after exit"
    );
    // A reader that stopped after event 1 gets exactly the rest.
    let mut again = events(addr, &id, 2).await;
    let e = next_event(&mut again).await.unwrap();
    assert_eq!((e["seq"].as_u64(), text(&e).as_str()), (Some(2), "three\n"));
    assert_eq!(next_event(&mut again).await.unwrap()["type"], "exit");
    let (st, s) = request(addr, "GET", &format!("/procs/{id}"), "").await;
    assert_eq!(st, 200);
    assert_eq!(s["running"], false, "{s}");
    let (st, _) = request(addr, "GET", "/procs/p_nope/events", "").await;
    assert_eq!(st, 404);
    let (st, _) = request(addr, "POST", "/procs", r#"{"argv": []}"#).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn stdin_is_fed_and_signals_and_deadlines_end_everything() {
    let addr = start().await;
    // stdin kept open, fed, closed.
    let (st, v) = request(
        addr,
        "POST",
        "/procs",
        r#"{"argv": ["cat"], "stdinOpen": true}"#,
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["procId"].as_str().unwrap().to_string();
    let (st, v) = request(
        addr,
        "POST",
        &format!("/procs/{id}/stdin"),
        r#"{"data": "hello\n", "close": true}"#,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let mut ev = events(addr, &id, 0).await;
    assert_eq!(text(&next_event(&mut ev).await.unwrap()), "hello\n");
    assert_eq!(next_event(&mut ev).await.unwrap()["exitCode"], 0);

    // SIGTERM to the group.
    let (_, v) = request(addr, "POST", "/procs", r#"{"argv": ["sleep", "30"]}"#).await;
    let id = v["procId"].as_str().unwrap().to_string();
    let (st, v) = request(
        addr,
        "POST",
        &format!("/procs/{id}/signal"),
        r#"{"signal": "TERM"}"#,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let mut ev = events(addr, &id, 0).await;
    let exit = next_event(&mut ev).await.unwrap();
    assert_eq!(exit["signal"], 15, "{exit}");
    let (st, _) = request(
        addr,
        "POST",
        &format!("/procs/{id}/signal"),
        r#"{"signal": "USR9"}"#,
    )
    .await;
    assert_eq!(st, 400);

    // The deadline kills the process, its children and a child that made a
    // session of its own.
    let marker = format!("4{}.5", std::process::id() % 1000);
    let script = format!("sleep {marker} & setsid sleep {marker} & echo started; sleep 60");
    let body = serde_json::json!({"argv": ["sh", "-c", script], "timeoutMs": 1500}).to_string();
    let (_, v) = request(addr, "POST", "/procs", &body).await;
    let id = v["procId"].as_str().unwrap().to_string();
    let mut ev = events(addr, &id, 0).await;
    assert_eq!(text(&next_event(&mut ev).await.unwrap()), "started\n");
    assert!(running_with(&marker) >= 2, "both sleeps run");
    let exit = loop {
        let e = next_event(&mut ev).await.unwrap();
        if e["type"] == "exit" {
            break e;
        }
    };
    assert_eq!(exit["timedOut"], true, "{exit}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(running_with(&marker), 0, "something outlived the deadline");

    // Cancel (DELETE) does the same.
    let marker = format!("5{}.5", std::process::id() % 1000);
    let script = format!("setsid sleep {marker} & echo started; sleep 60");
    let body = serde_json::json!({"argv": ["sh", "-c", script]}).to_string();
    let (_, v) = request(addr, "POST", "/procs", &body).await;
    let id = v["procId"].as_str().unwrap().to_string();
    let mut ev = events(addr, &id, 0).await;
    assert_eq!(text(&next_event(&mut ev).await.unwrap()), "started\n");
    let (st, _) = request(addr, "DELETE", &format!("/procs/{id}"), "").await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(running_with(&marker), 0, "something outlived the cancel");
}
