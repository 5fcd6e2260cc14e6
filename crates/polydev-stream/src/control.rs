//! The streamer's control channel: JSON lines on stdin, one answer line per
//! request on stdout (the agent drives it; see `docs/LIVE_VIEW.md`).
//!
//! | request | answer |
//! |---|---|
//! | `{"id":1,"op":"offer","sdp":"..."}` | `{"id":1,"answer":"...","candidates":[...]}` |
//! | `{"id":2,"op":"candidate","candidate":"...","sdpMid":"0","sdpMLineIndex":0}` | `{"id":2,"success":true}` |
//! | `{"id":3,"op":"stats"}` | `{"id":3,"connected":...,"codec":"VP8",...}` |
//!
//! Any failure, a line that is not JSON included, is answered
//! `{"id":...,"error":"..."}` (`"id":null` when there was none).

use std::io::{BufRead, Write};

use serde_json::{json, Value};

use crate::peer::{Answer, IceCandidate, Streamer};
use crate::stats::StatsSnapshot;

/// Longest request line.
pub const MAX_LINE: usize = 1 << 20;

/// What the control channel drives ([`Streamer`], or a stand-in in tests).
pub trait Backend {
    /// Accepts an offer.
    fn offer(&self, sdp: &str) -> Result<Answer, String>;
    /// Adds a remote candidate.
    fn candidate(&self, c: IceCandidate) -> Result<(), String>;
    /// The counters.
    fn stats(&self) -> StatsSnapshot;
}

impl Backend for Streamer {
    fn offer(&self, sdp: &str) -> Result<Answer, String> {
        Streamer::offer(self, sdp)
    }
    fn candidate(&self, c: IceCandidate) -> Result<(), String> {
        Streamer::candidate(self, c)
    }
    fn stats(&self) -> StatsSnapshot {
        Streamer::stats(self)
    }
}

/// Answers one request line.
pub fn handle_line(backend: &dyn Backend, line: &str) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return json!({"id": null, "error": "request is not a JSON object"}),
        Err(e) => return json!({"id": null, "error": format!("request is not valid JSON: {e}")}),
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let result = match req.get("op").and_then(Value::as_str) {
        Some("offer") => match req.get("sdp").and_then(Value::as_str) {
            Some(sdp) => backend
                .offer(sdp)
                .map(|a| json!({"answer": a.answer, "candidates": a.candidates})),
            None => Err("offer needs \"sdp\" (a string)".to_owned()),
        },
        Some("candidate") => match serde_json::from_value::<IceCandidate>(req.clone()) {
            Ok(c) => backend.candidate(c).map(|()| json!({"success": true})),
            Err(e) => Err(format!("candidate is not valid: {e}")),
        },
        Some("stats") => serde_json::to_value(backend.stats()).map_err(|e| e.to_string()),
        Some(other) => Err(format!("unknown op {other:?} (offer, candidate or stats)")),
        None => Err("request needs \"op\"".to_owned()),
    };
    let mut out = match result {
        Ok(v) => v,
        Err(e) => json!({"error": e}),
    };
    if let Value::Object(m) = &mut out {
        m.insert("id".into(), id);
    }
    out
}

/// Serves requests from `input` until it ends, answering on `output`.
pub fn serve(
    backend: &dyn Backend,
    input: impl BufRead,
    mut output: impl Write,
) -> std::io::Result<()> {
    let mut input = input;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n =
            std::io::Read::take(&mut input, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let reply = if line.len() > MAX_LINE && !line.ends_with(b"\n") {
            // Skip the rest of the line.
            let mut rest = Vec::new();
            input.read_until(b'\n', &mut rest)?;
            json!({"id": null, "error": format!("request line is longer than {MAX_LINE} bytes")})
        } else {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            handle_line(backend, text)
        };
        writeln!(output, "{reply}")?;
        output.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        candidates: Mutex<Vec<IceCandidate>>,
    }

    impl Backend for Fake {
        fn offer(&self, sdp: &str) -> Result<Answer, String> {
            if sdp == "bad" {
                return Err("the offer is not valid SDP".into());
            }
            Ok(Answer {
                answer: format!("answer to {sdp}"),
                candidates: vec![IceCandidate {
                    candidate: "candidate:1 1 udp 1 169.254.0.22 7071 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                }],
            })
        }
        fn candidate(&self, c: IceCandidate) -> Result<(), String> {
            self.candidates.lock().unwrap().push(c);
            Ok(())
        }
        fn stats(&self) -> StatsSnapshot {
            crate::stats::Stats::default().snapshot()
        }
    }

    #[test]
    fn answers_each_op() {
        let f = Fake::default();
        let v = handle_line(&f, r#"{"id":1,"op":"offer","sdp":"o"}"#);
        assert_eq!(v["id"], 1);
        assert_eq!(v["answer"], "answer to o");
        assert_eq!(v["candidates"][0]["sdpMid"], "0");
        assert_eq!(v["candidates"][0]["sdpMLineIndex"], 0);
        let v = handle_line(
            &f,
            r#"{"id":"x","op":"candidate","candidate":"candidate:2 1 udp 5 10.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}"#,
        );
        assert_eq!(v, json!({"id": "x", "success": true}));
        assert_eq!(
            f.candidates.lock().unwrap()[0].sdp_mid.as_deref(),
            Some("0")
        );
        let v = handle_line(&f, r#"{"id":3,"op":"stats"}"#);
        assert_eq!(
            (v["id"].clone(), v["codec"].clone()),
            (json!(3), json!("VP8"))
        );
    }

    #[test]
    fn errors_are_replies() {
        let f = Fake::default();
        let v = handle_line(&f, "{nope");
        assert_eq!(v["id"], Value::Null);
        assert!(
            v["error"].as_str().unwrap().contains("not valid JSON"),
            "{v}"
        );
        assert!(handle_line(&f, "[1]")["error"].is_string());
        assert!(handle_line(&f, r#"{"id":1}"#)["error"]
            .as_str()
            .unwrap()
            .contains("op"));
        assert!(handle_line(&f, r#"{"id":1,"op":"fly"}"#)["error"]
            .as_str()
            .unwrap()
            .contains("fly"));
        assert!(handle_line(&f, r#"{"id":1,"op":"offer"}"#)["error"]
            .as_str()
            .unwrap()
            .contains("sdp"));
        assert!(handle_line(&f, r#"{"id":1,"op":"candidate"}"#)["error"].is_string());
        let v = handle_line(&f, r#"{"id":9,"op":"offer","sdp":"bad"}"#);
        assert_eq!(v, json!({"id": 9, "error": "the offer is not valid SDP"}));
    }

    #[test]
    fn serves_lines_until_eof() {
        let f = Fake::default();
        let input =
            b"{\"id\":1,\"op\":\"stats\"}\n\nnot json\n{\"id\":2,\"op\":\"offer\",\"sdp\":\"o\"}"
                .to_vec();
        let mut out = Vec::new();
        serve(&f, &input[..], &mut out).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["id"], 1);
        assert!(lines[1]["error"].is_string());
        assert_eq!(lines[2]["answer"], "answer to o");
    }

    #[test]
    fn overlong_lines_are_refused() {
        let f = Fake::default();
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\n{\"id\":2,\"op\":\"stats\"}\n");
        let mut out = Vec::new();
        serve(&f, &input[..], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("longer than"));
        assert!(lines[1].contains("\"id\":2"));
    }
}
