//! After the upgrade: the user's CLI VM (found, resumed or booted, and held
//! until the page goes), a WebSocket to its agent's `GET /terminal` on a
//! socket opened inside the VM's namespace, and the frames relayed both ways
//! until either side closes, the VM stops, or what opened the terminal is
//! taken away (its API key revoked, the user's account disabled; checked
//! every [`VM_CHECK`]).

use super::{Opener, Terminals, MAX_MESSAGE};
use crate::cli_vm::Hold;
use crate::runtime::{Runtime, AGENT_FILE};
use axum::extract::ws::{self, CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use polydev_core::guest::{AgentConfig, GUEST_ADDR};
use polydev_core::vm::VmStatus;
use polydev_store::VmRecord;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::WebSocketConfig};

/// The WebSocket to a guest agent.
pub type AgentSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Close code for "the server failed" (RFC 6455 §7.4.1).
const CLOSE_ERROR: u16 = 1011;
/// Close code for "policy violation" (RFC 6455 §7.4.1): access taken away.
const CLOSE_POLICY: u16 = 1008;
/// How often the VM's record is checked while a terminal is open: a VM that
/// vanished sends no FIN.
const VM_CHECK: Duration = Duration::from_secs(2);

/// A JSON text frame for the page.
fn text(kind: &str, message: &str) -> Message {
    Message::Text(
        serde_json::json!({"type": kind, "message": message})
            .to_string()
            .into(),
    )
}

/// A close frame; the reason is cut to the 123 bytes a frame may carry.
fn close(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// Serves one page's terminal: VM, agent, relay. Never panics on what
/// either side sends; every failure reaches the page as an error frame.
pub async fn run(
    t: Arc<Terminals>,
    user: String,
    opener: Opener,
    size: (u16, u16),
    mut page: WebSocket,
) {
    let started = Instant::now();
    let mut early = Early::default();
    let (rec, hold) = match start_vm(&t, &user, &mut page, &mut early).await {
        Ok(Some(v)) => v,
        Ok(None) => return, // the page left while the VM started
        Err(e) => return fail(page, &user, None, &e).await,
    };
    let mut agent = match connect_agent(&rec, size).await {
        Ok(a) => a,
        Err(e) => return fail(page, &user, Some(&rec.vm_id), &e).await,
    };
    for m in early.frames {
        if agent.send(m).await.is_err() {
            return fail(page, &user, Some(&rec.vm_id), "lost the VM's agent").await;
        }
    }
    tracing::info!(user_id = %user, vm_id = %rec.vm_id, setup_ms = started.elapsed().as_millis() as u64, "terminal connected");
    let vm = vm_gone(t.app.runtime.clone(), rec.vm_id.clone());
    let access = access_ends(&t.app, &opener, &user);
    let stop = async {
        tokio::select! {
            _ = vm => Stop::VmGone,
            why = access => Stop::Revoked(why),
        }
    };
    let reason = pump(&mut page, agent, stop).await;
    drop(hold);
    tracing::info!(user_id = %user, vm_id = %rec.vm_id, reason, open_s = started.elapsed().as_secs(), "terminal closed");
}

async fn fail(mut page: WebSocket, user: &str, vm_id: Option<&str>, e: &str) {
    tracing::warn!(user_id = %user, vm_id = vm_id.unwrap_or("-"), error = %e, "terminal failed");
    let _ = page.send(text("error", e)).await;
    let _ = page.send(close(CLOSE_ERROR, e)).await;
}

/// What the page sent before the agent's terminal existed, in order (at
/// most [`MAX_MESSAGE`] bytes; later ones are dropped).
#[derive(Default)]
struct Early {
    frames: Vec<tungstenite::Message>,
    bytes: usize,
}

impl Early {
    fn keep(&mut self, m: tungstenite::Message) {
        let n = m.len();
        if self.bytes + n <= MAX_MESSAGE {
            self.bytes += n;
            self.frames.push(m);
        }
    }
}

/// The user's CLI VM, running and held. Tells the page while it starts;
/// keeps what the page sends meanwhile. `None`: the page left.
async fn start_vm(
    t: &Terminals,
    user: &str,
    page: &mut WebSocket,
    early: &mut Early,
) -> Result<Option<(VmRecord, Hold)>, String> {
    let cli = &t.app.cli;
    let running = matches!(cli.current(user).await?, Some(v) if v.status == VmStatus::Running);
    if !running {
        let _ = page.send(text("status", "starting your CLI VM…")).await;
    }
    let ensure = cli.ensure(user);
    tokio::pin!(ensure);
    loop {
        tokio::select! {
            r = &mut ensure => {
                let (rec, hold, found) = r?;
                tracing::debug!(user_id = %user, vm_id = %rec.vm_id, ?found, "terminal's CLI VM");
                if !running {
                    let _ = page.send(text("status", "connecting to your terminal…")).await;
                }
                return Ok(Some((rec, hold)));
            }
            m = page.recv() => match m.map(|r| r.map(to_agent)) {
                Some(Ok(Some(m))) => early.keep(m),
                Some(Ok(None) | Err(_)) | None => return Ok(None),
            },
        }
    }
}

/// Where the VM's agent listens and its bearer token (the VM's `agent.json`).
fn agent_config(rec: &VmRecord) -> Result<AgentConfig, String> {
    let path = std::path::Path::new(&rec.dir).join(AGENT_FILE);
    let raw = std::fs::read(&path).map_err(|e| {
        format!(
            "the VM's agent configuration is missing ({}): {e}",
            path.display()
        )
    })?;
    serde_json::from_slice(&raw)
        .map_err(|e| format!("the VM's agent configuration is not valid: {e}"))
}

/// Opens the agent's `/terminal` WebSocket of `cols`×`rows` inside the VM's
/// namespace. A refusal by the agent (too many terminals, no tmux) comes
/// back with the agent's own message.
pub async fn connect_agent(
    rec: &VmRecord,
    (cols, rows): (u16, u16),
) -> Result<AgentSocket, String> {
    let cfg = agent_config(rec)?;
    let ip: Ipv4Addr = GUEST_ADDR
        .parse()
        .map_err(|e| format!("guest address: {e}"))?;
    let addr = SocketAddr::from((ip, cfg.port));
    let netns = rec.netns.clone();
    let std_stream = tokio::task::spawn_blocking(move || {
        let s = polydev_net::netns::connect_tcp(&netns, addr, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok::<_, String>(s)
    })
    .await
    .map_err(|e| format!("connecting to the agent: {e}"))?
    .map_err(|e| format!("cannot reach the VM's agent at {addr}: {e}"))?;
    let stream = tokio::net::TcpStream::from_std(std_stream)
        .map_err(|e| format!("adopting the agent socket: {e}"))?;
    let mut req = format!("ws://{addr}/terminal?cols={cols}&rows={rows}")
        .into_client_request()
        .map_err(|e| format!("building the agent request: {e}"))?;
    let auth = format!("Bearer {}", cfg.token)
        .parse()
        .map_err(|_| "the VM's agent token is not a valid header value".to_string())?;
    req.headers_mut().insert("Authorization", auth);
    let ws_cfg = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let handshake = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_cfg));
    match tokio::time::timeout(Duration::from_secs(15), handshake).await {
        Err(_) => Err("the VM's agent did not open the terminal in 15 s".into()),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(r))) => {
            Err(agent_refusal(r.status().as_u16(), r.body().as_deref()))
        }
        Ok(Err(e)) => Err(format!("the VM's agent did not open the terminal: {e}")),
    }
}

/// The agent's `{"error":{"message"}}`, else its status.
fn agent_refusal(status: u16, body: Option<&[u8]>) -> String {
    let message = body
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string));
    match message {
        Some(m) => format!("the VM's agent refused the terminal: {m}"),
        None => format!("the VM's agent refused the terminal (HTTP {status})"),
    }
}

/// Resolves when the VM is no longer running (checked every [`VM_CHECK`]).
async fn vm_gone(rt: Arc<Runtime>, vm_id: String) {
    loop {
        tokio::time::sleep(VM_CHECK).await;
        match rt.store().get_vm(&vm_id).await {
            Ok(Some(v)) if v.status == VmStatus::Running => {}
            Err(_) => {} // the store hiccuped: look again
            _ => return,
        }
    }
}

/// Resolves, saying why, when what opened the terminal no longer may:
/// the API key was revoked, or the user's account (if the user has one) was
/// disabled. Checked every [`VM_CHECK`]; a store that cannot answer is
/// asked again.
async fn access_ends(app: &crate::AppState, opener: &Opener, user: &str) -> &'static str {
    loop {
        tokio::time::sleep(VM_CHECK).await;
        if let Opener::Key(secret) = opener {
            if let Ok(None) = app.keys.verify(secret).await {
                return "the API key that opened this terminal was revoked";
            }
        }
        if let Ok(Some(a)) = app.runtime.store().get_account(user).await {
            if a.disabled {
                return "this account was disabled";
            }
        }
    }
}

/// Why the relay stops on its own.
enum Stop {
    VmGone,
    Revoked(&'static str),
}

/// Relays frames until one side closes or `stop` resolves; returns why.
async fn pump(
    page: &mut WebSocket,
    mut agent: AgentSocket,
    stop: impl std::future::Future<Output = Stop>,
) -> &'static str {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            why = &mut stop => {
                return match why {
                    Stop::VmGone => {
                        let _ = page.send(text("error", "your CLI VM stopped")).await;
                        let _ = page.send(close(CLOSE_ERROR, "the CLI VM stopped")).await;
                        "the VM stopped"
                    }
                    Stop::Revoked(why) => {
                        // The agent ends its tmux client; the session stays.
                        let _ = tokio::time::timeout(VM_CHECK, agent.close(None)).await;
                        let _ = page.send(text("error", why)).await;
                        let _ = page.send(close(CLOSE_POLICY, why)).await;
                        why
                    }
                };
            }
            m = page.recv() => match m {
                Some(Ok(m)) => {
                    let Some(m) = to_agent(m) else {
                        let _ = page.flush().await; // our reply to its close
                        let _ = agent.close(None).await;
                        return "the page closed";
                    };
                    if agent.send(m).await.is_err() {
                        let _ = page.send(close(CLOSE_ERROR, "lost the VM's agent")).await;
                        return "the agent went away";
                    }
                }
                Some(Err(_)) | None => {
                    let _ = agent.close(None).await;
                    return "the page went away";
                }
            },
            m = agent.next() => match m {
                Some(Ok(tungstenite::Message::Close(f))) => {
                    let (code, reason) = f
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((ws::close_code::NORMAL, String::new()));
                    let _ = page.send(close(code, &reason)).await;
                    return "the terminal session ended";
                }
                Some(Ok(m)) => {
                    if let Some(m) = to_page(m) {
                        if page.send(m).await.is_err() {
                            let _ = agent.close(None).await;
                            return "the page went away";
                        }
                    }
                }
                Some(Err(_)) | None => {
                    let _ = page.send(text("error", "lost the connection to your CLI VM")).await;
                    let _ = page.send(close(CLOSE_ERROR, "lost the VM's agent")).await;
                    return "the agent went away";
                }
            },
        }
    }
}

/// A page frame for the agent; `None` for a close.
fn to_agent(m: Message) -> Option<tungstenite::Message> {
    Some(match m {
        Message::Binary(b) => tungstenite::Message::Binary(b),
        Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
        Message::Ping(p) => tungstenite::Message::Ping(p),
        Message::Pong(p) => tungstenite::Message::Pong(p),
        Message::Close(_) => return None,
    })
}

/// An agent frame for the page (pings and pongs stay on their hop).
fn to_page(m: tungstenite::Message) -> Option<Message> {
    match m {
        tungstenite::Message::Binary(b) => Some(Message::Binary(b)),
        tungstenite::Message::Text(t) => Some(Message::Text(t.as_str().into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_frame() {
        let long = "é".repeat(200);
        match close(1011, &long) {
            Message::Close(Some(f)) => {
                assert!(f.reason.len() <= 123);
                assert_eq!(f.code, 1011);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn agent_refusals_carry_the_agents_message() {
        let body = br#"{"error":{"code":"too_many_terminals","message":"at most 8 terminals"}}"#;
        assert!(agent_refusal(429, Some(body)).contains("at most 8 terminals"));
        assert!(agent_refusal(502, Some(b"<html>")).contains("HTTP 502"));
        assert!(agent_refusal(500, None).contains("HTTP 500"));
    }

    #[test]
    fn frames_map_both_ways() {
        assert!(to_agent(Message::Close(None)).is_none());
        assert!(matches!(
            to_agent(Message::Text("{}".into())),
            Some(tungstenite::Message::Text(_))
        ));
        assert!(to_page(tungstenite::Message::Ping(Default::default())).is_none());
    }
}
