//! The `polydev-streamer` binary as the agent runs it: JSON lines on
//! stdin/stdout, logs on stderr, exit when stdin closes; a viewer connects
//! to the answer it prints.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use polydev_stream::viewer::{Viewer, ViewerEvent};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_polydev-streamer");

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn start(display: &str) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "--display",
                display,
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--advertise",
                "127.0.0.1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, req: &str) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{req}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serves_json_lines_and_streams() {
    let Some(x) = common::xvfb(1280, 800) else {
        return;
    };
    let mut p = Proc::start(x.display());

    let v = p.call("this is not json");
    assert_eq!(v["id"], Value::Null);
    assert!(
        v["error"].as_str().unwrap().contains("not valid JSON"),
        "{v}"
    );
    let v = p.call(r#"{"id":1,"op":"stats"}"#);
    assert_eq!(v["id"], 1);
    assert_eq!(
        (
            v["connected"].clone(),
            v["codec"].clone(),
            v["width"].clone()
        ),
        (json!(false), json!("VP8"), json!(1280))
    );

    let (mut viewer, offer) = Viewer::offer("127.0.0.1".parse().unwrap()).unwrap();
    let v = p.call(&json!({"id": 2, "op": "offer", "sdp": offer}).to_string());
    assert_eq!(v["id"], 2);
    let answer = v["answer"].as_str().unwrap_or_else(|| panic!("{v}"));
    let candidates: Vec<polydev_stream::IceCandidate> =
        serde_json::from_value(v["candidates"].clone()).unwrap();
    assert!(candidates[0].candidate.contains("127.0.0.1"));
    viewer.answer(answer, &candidates).unwrap();
    let got_key = viewer
        .run_until(Duration::from_secs(15), |e| {
            matches!(
                e,
                ViewerEvent::Frame {
                    keyframe: Some((1280, 800)),
                    ..
                }
            )
        })
        .unwrap();
    assert!(got_key, "no 1280x800 keyframe");

    let v = p.call(r#"{"id":3,"op":"candidate","candidate":"candidate:9 1 udp 2122260223 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}"#);
    assert_eq!(v, json!({"id": 3, "success": true}));
    let v = p.call(r#"{"id":4,"op":"candidate","candidate":"candidate:9 1 udp 1 abcd-ef.local 9 typ host","sdpMid":"0","sdpMLineIndex":0}"#);
    assert_eq!(
        v,
        json!({"id": 4, "success": true}),
        "mDNS candidates are skipped"
    );
    let v = p.call(r#"{"id":5,"op":"candidate","candidate":"bogus"}"#);
    assert!(v["error"].as_str().unwrap().contains("not valid"), "{v}");

    viewer.run_for(Duration::from_millis(300)).unwrap();
    let v = p.call(r#"{"id":6,"op":"stats"}"#);
    assert_eq!(v["connected"], true, "{v}");
    assert!(v["framesSent"].as_u64().unwrap() >= 1, "{v}");

    // stdin closes: the streamer exits by itself, successfully.
    drop(p.stdin.take());
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "the streamer did not exit after stdin closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn exits_when_the_display_goes_away() {
    let Some(x) = common::xvfb(640, 480) else {
        return;
    };
    let mut p = Proc::start(x.display());
    let v = p.call(r#"{"id":1,"op":"stats"}"#);
    assert_eq!(v["width"], 640);
    drop(x);
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the streamer outlived its display");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{status}");
}

#[test]
fn a_missing_display_fails_with_a_message() {
    let out = Command::new(BIN)
        .args(["--display", ":4998", "--port", "0", "--bind", "127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to X display :4998"), "{err}");
}

#[test]
fn help_explains_the_protocol() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "\"op\":\"offer\"",
        "candidate",
        "stats",
        "--advertise",
        "bench",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}

#[test]
fn bench_runs() {
    let Some(x) = common::xvfb(640, 400) else {
        return;
    };
    let out = Command::new(BIN)
        .args(["bench", "--display", x.display(), "--frames", "5", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["width"].clone(), r["height"].clone(), r["frames"].clone()),
        (json!(640), json!(400), json!(5))
    );
    assert!(r["bytes"][0].as_u64().unwrap() > 0);
    assert!(r["keyframe_bytes"].as_u64().unwrap() > 0);
}
