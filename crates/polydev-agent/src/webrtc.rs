//! WebRTC live view: `POST /webrtc/offer`, `POST /webrtc/candidate`,
//! `GET /webrtc/stats` (see `docs/LIVE_VIEW.md`).
//!
//! The agent does not stream itself: it starts the screen streamer
//! (`polydev-streamer`, browser images only) on the first offer, as the
//! guest user on the display, and passes requests to it as JSON lines on
//! its stdin, one answer line each on its stdout. The streamer's stderr
//! goes to the agent's, prefixed, and its last lines explain a failure.
//! A streamer that died is started again on the next offer; one that does
//! not answer in time is killed. Without the binary (minimal and cli
//! images) every route answers 503 `streamer_unavailable`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::api::{parse_body, ApiError, AppState};
use crate::users;

/// How long the streamer may take to answer one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the streamer's stderr kept for error messages.
const STDERR_TAIL: usize = 8;

/// How the streamer is started.
#[derive(Debug, Clone)]
pub struct StreamerConfig {
    /// The binary.
    pub bin: PathBuf,
    /// The X display it captures (`DISPLAY`).
    pub display: String,
    /// The user it runs as; `None`: the agent's own user (tests).
    pub user: Option<String>,
    /// Extra arguments (tests: `--bind 127.0.0.1 --port 0 --advertise
    /// 127.0.0.1`); by default the streamer binds UDP
    /// [`STREAM_PORT`](polydev_core::guest::STREAM_PORT) and advertises
    /// [`GUEST_ADDR`](polydev_core::guest::GUEST_ADDR).
    pub args: Vec<String>,
}

impl Default for StreamerConfig {
    fn default() -> Self {
        Self {
            bin: polydev_core::guest::STREAMER_BIN.into(),
            display: ":1".into(),
            user: Some("polydev".into()),
            args: Vec::new(),
        }
    }
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

/// The agent's handle on the streamer.
pub struct WebrtcState {
    config: StreamerConfig,
    running: tokio::sync::Mutex<Option<Running>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for WebrtcState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebrtcState")
            .field("config", &self.config)
            .finish()
    }
}

impl Default for WebrtcState {
    fn default() -> Self {
        Self::new(StreamerConfig::default())
    }
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "streamer_unavailable",
        message,
    )
}

impl WebrtcState {
    /// A state starting the streamer per `config`.
    pub fn new(config: StreamerConfig) -> Self {
        Self {
            config,
            running: tokio::sync::Mutex::new(None),
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            last_error: Mutex::new(None),
        }
    }

    /// The running streamer's process id, if one runs.
    pub async fn streamer_pid(&self) -> Option<u32> {
        let mut guard = self.running.lock().await;
        let r = guard.as_mut()?;
        match r.child.try_wait() {
            Ok(None) => r.child.id(),
            _ => None,
        }
    }

    fn set_error(&self, e: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_owned());
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.is_empty() {
            "it printed nothing".into()
        } else {
            tail.iter().cloned().collect::<Vec<_>>().join(" | ")
        }
    }

    /// Starts the streamer, or says why not.
    fn spawn(&self) -> Result<Running, String> {
        let c = &self.config;
        if !c.bin.is_file() {
            return Err(format!(
                "this image has no screen streamer ({} is missing); the WebRTC live view needs a browser image",
                c.bin.display()
            ));
        }
        let mut cmd = tokio::process::Command::new(&c.bin);
        cmd.args(&c.args)
            .env_clear()
            .env("PATH", crate::exec::PATH)
            .env("DISPLAY", &c.display)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(name) = &c.user {
            let user = users::lookup(name)
                .map_err(|e| format!("cannot run the screen streamer as {name}: {e}"))?;
            cmd.uid(user.uid)
                .gid(user.gid)
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .current_dir(&user.home);
        } else if let Some(home) = std::env::var_os("HOME") {
            cmd.env("HOME", home);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the screen streamer {}: {e}", c.bin.display()))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("the screen streamer was started without pipes".into());
        };
        self.stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let tail = self.stderr_tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("polydev-streamer: {line}");
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == STDERR_TAIL {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        eprintln!(
            "polydev-agent: started the screen streamer (pid {:?}) on {}",
            child.id(),
            c.display
        );
        Ok(Running {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            next_id: 1,
        })
    }

    /// Sends one request and returns the answer (without its `id`).
    /// `start`: start the streamer if it is not running (else: `None`).
    async fn request(&self, mut req: Value, start: bool) -> Result<Option<Value>, ApiError> {
        let mut guard = self.running.lock().await;
        let alive = match guard.as_mut() {
            Some(r) => matches!(r.child.try_wait(), Ok(None)),
            None => false,
        };
        if !alive {
            if let Some(mut old) = guard.take() {
                let status = old.child.wait().await.ok();
                let e = format!(
                    "the screen streamer exited ({}): {}",
                    status.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
                    self.stderr_tail()
                );
                eprintln!("polydev-agent: {e}");
                self.set_error(&e);
            }
            if !start {
                return Ok(None);
            }
            match self.spawn() {
                Ok(r) => *guard = Some(r),
                Err(e) => {
                    self.set_error(&e);
                    return Err(unavailable(e));
                }
            }
        }
        let Some(r) = guard.as_mut() else {
            return Ok(None);
        };
        let id = r.next_id;
        r.next_id += 1;
        req["id"] = json!(id);
        let exchange = async {
            let mut line = req.to_string();
            line.push('\n');
            r.stdin.write_all(line.as_bytes()).await?;
            r.stdin.flush().await?;
            loop {
                let mut answer = String::new();
                if r.stdout.read_line(&mut answer).await? == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "it closed its output",
                    ));
                }
                match serde_json::from_str::<Value>(&answer) {
                    Ok(v) if v.get("id") == Some(&json!(id)) => return Ok(v),
                    // Not ours (or not JSON): skip.
                    _ => continue,
                }
            }
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await;
        let failure = match result {
            Ok(Ok(mut v)) => {
                if let Value::Object(m) = &mut v {
                    m.remove("id");
                }
                return Ok(Some(v));
            }
            Ok(Err(e)) => format!("the screen streamer failed: {e}"),
            Err(_) => format!(
                "the screen streamer did not answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        };
        // Whatever state it is in, start afresh next time.
        if let Some(mut r) = guard.take() {
            let _ = r.child.start_kill();
            let _ = r.child.wait().await;
        }
        // Let the stderr reader catch the last lines.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = format!("{failure}; {}", self.stderr_tail());
        eprintln!("polydev-agent: {e}");
        self.set_error(&e);
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "streamer_failed",
            e,
        ))
    }
}

#[derive(Deserialize)]
struct OfferRequest {
    sdp: String,
    /// `RTCSessionDescription.type`, when the whole description is sent.
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CandidateRequest {
    candidate: String,
    #[serde(default)]
    sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex")]
    sdp_mline_index: Option<u32>,
}

/// Splits a streamer answer into success or a 400.
fn streamer_answer(v: Value) -> Result<Value, ApiError> {
    match v.get("error").and_then(Value::as_str) {
        Some(e) => Err(ApiError::bad_request(e.to_owned())),
        None => Ok(v),
    }
}

/// `POST /webrtc/offer`: `{"sdp"}` → `{"answer", "candidates"}`.
pub async fn offer_handler(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: OfferRequest = parse_body(&body)?;
    if req.kind.as_deref().is_some_and(|k| k != "offer") {
        return Err(ApiError::bad_request(format!(
            "expected an offer, got type {:?}",
            req.kind.unwrap_or_default()
        )));
    }
    if req.sdp.trim().is_empty() {
        return Err(ApiError::bad_request("sdp is empty"));
    }
    let v = state
        .webrtc
        .request(json!({"op": "offer", "sdp": req.sdp}), true)
        .await?
        .ok_or_else(|| ApiError::internal("the screen streamer is not running"))?;
    let v = streamer_answer(v)?;
    Ok(Json(
        json!({"answer": v.get("answer"), "candidates": v.get("candidates")}),
    ))
}

/// `POST /webrtc/candidate`: a remote ICE candidate for the current peer.
pub async fn candidate_handler(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: CandidateRequest = parse_body(&body)?;
    let v = state
        .webrtc
        .request(
            json!({"op": "candidate", "candidate": req.candidate,
                   "sdpMid": req.sdp_mid, "sdpMLineIndex": req.sdp_mline_index}),
            false,
        )
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_session",
                "no WebRTC session: post an offer first",
            )
        })?;
    streamer_answer(v)?;
    Ok(Json(json!({"success": true})))
}

/// `GET /webrtc/stats`: the streamer's counters, plus `running`.
pub async fn stats_handler(State(state): State<AppState>) -> Json<Value> {
    let not_running = |state: &AppState| {
        let last = state
            .webrtc
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        json!({"running": false, "connected": false, "codec": null, "width": null, "height": null,
               "framesEncoded": 0, "framesSent": 0, "inputEvents": 0, "lastError": last})
    };
    match state.webrtc.request(json!({"op": "stats"}), false).await {
        Ok(Some(mut v)) if v.get("error").is_none() => {
            v["running"] = json!(true);
            Json(v)
        }
        _ => Json(not_running(&state)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamer_errors_become_400() {
        let e = streamer_answer(json!({"error": "the offer is not valid SDP"})).unwrap_err();
        assert!(format!("{e:?}").contains("bad_request"));
        assert!(streamer_answer(json!({"answer": "v=0"})).is_ok());
    }
}
