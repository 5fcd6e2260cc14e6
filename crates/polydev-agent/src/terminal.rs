//! `GET /terminal?cols=N&rows=M`: an interactive terminal over a WebSocket.
//!
//! The agent makes sure the session exists (`tmux new-session -d`, see
//! [`ensure_session`]), then runs `tmux new-session -A -s polydev` (attach when the session
//! exists, so a reconnect shows the same session; the session's status line
//! off, so the shell has the whole window) on a fresh pseudo-terminal
//! of `cols`×`rows` (default 80×24), as the guest user `polydev` in its home
//! with the clean environment of `/exec` plus `TERM=xterm-256color`. An
//! image without that user (`minimal`) gets the agent's own user.
//!
//! Frames: binary frames carry terminal bytes both ways; text frames carry
//! JSON control. From the client: `{"type":"resize","cols":C,"rows":R}`
//! (1..=1000 each) resizes the terminal (tmux follows). To the client:
//! `{"type":"error","message":"..."}` for a control message it cannot use.
//!
//! The connection ends when the client closes (the tmux client is killed and
//! reaped; the tmux session and what runs in it stay) or when the tmux session
//! ends (the user typed `exit`: a normal close frame). At most
//! [`MAX_TERMINALS`] terminals are open at once; messages are at most
//! [`MAX_MESSAGE`] bytes.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::ws::{self, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::Extension;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;
use crate::users;

/// Terminals open at once (per agent).
pub const MAX_TERMINALS: usize = 8;
/// Largest WebSocket message or frame accepted from the client.
pub const MAX_MESSAGE: usize = 64 << 10;
/// Largest number of columns or rows.
pub const MAX_DIM: u16 = 1000;
/// The guest user a terminal runs as.
pub const USER: &str = "polydev";
/// The tmux session every terminal attaches to.
pub const SESSION: &str = "polydev";
/// Default size.
pub const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// How terminals are started. The agent uses [`TerminalConfig::default`];
/// tests add another as an `axum::Extension` on the router.
#[derive(Clone)]
pub struct TerminalConfig {
    /// Run as this user; `None`: the agent's own.
    pub user: Option<String>,
    /// Without that user in `/etc/passwd`, use the agent's own instead of
    /// refusing.
    pub fall_back_to_agent_user: bool,
    /// The tmux program.
    pub tmux: String,
    /// The tmux session name.
    pub session: String,
    /// Extra environment (tests: `TMUX_TMPDIR`, for a tmux server of their own).
    pub env: BTreeMap<String, String>,
    /// Free terminal slots.
    pub slots: Arc<Semaphore>,
    /// What [`TerminalConfig::slots`] started with (for the error message).
    pub max: usize,
}

impl TerminalConfig {
    /// A configuration with `max` terminal slots.
    pub fn with_max(max: usize) -> Self {
        Self {
            user: Some(USER.into()),
            fall_back_to_agent_user: true,
            tmux: "tmux".into(),
            session: SESSION.into(),
            env: BTreeMap::new(),
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl Default for TerminalConfig {
    fn default() -> Self {
        Self::with_max(MAX_TERMINALS)
    }
}

static DEFAULT: LazyLock<TerminalConfig> = LazyLock::new(TerminalConfig::default);

/// A control message from the client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Control {
    /// Resize the terminal.
    Resize {
        /// Columns.
        cols: u32,
        /// Rows.
        rows: u32,
    },
}

fn check_dim(what: &str, v: u32) -> Result<u16, String> {
    match u16::try_from(v) {
        Ok(d) if (1..=MAX_DIM).contains(&d) => Ok(d),
        _ => Err(format!("{what} must be between 1 and {MAX_DIM}, not {v}")),
    }
}

/// Parses a text frame; the error says what is wrong with it.
pub fn parse_control(text: &str) -> Result<(u16, u16), String> {
    let c: Control = serde_json::from_str(text).map_err(|e| {
        format!(
            "control message is not valid ({e}); expected {{\"type\":\"resize\",\"cols\":C,\"rows\":R}}"
        )
    })?;
    match c {
        Control::Resize { cols, rows } => Ok((check_dim("cols", cols)?, check_dim("rows", rows)?)),
    }
}

/// `cols` and `rows` from a query string (each optional).
pub fn parse_size(query: Option<&str>) -> Result<(u16, u16), String> {
    let (mut cols, mut rows) = DEFAULT_SIZE;
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let slot = match k {
            "cols" => &mut cols,
            "rows" => &mut rows,
            _ => continue,
        };
        let n: u32 = v
            .parse()
            .map_err(|_| format!("{k}={v:?} is not a number"))?;
        *slot = check_dim(k, n)?;
    }
    Ok((cols, rows))
}

/// The master side of a PTY, read and written without blocking a thread.
pub struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    fn new(master: OwnedFd) -> std::io::Result<Self> {
        set_flag(&master, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)?;
        // SAFETY: an `OwnedFd` always answers the same descriptor, which
        // stays open until the `AsyncFd` (its owner) is dropped.
        let fd = unsafe { AsyncFd::register(master) }.map_err(std::io::Error::from)?;
        Ok(Self { fd })
    }

    /// Reads what the terminal printed; `Ok(0)` once nothing holds its
    /// other side any more (Linux answers `EIO` then).
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut g = self.fd.readable().await?;
            let r = g.try_io(|fd| {
                // SAFETY: read(2) into a buffer we own, at most its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match r {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Types `data` into the terminal.
    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut g = self.fd.writable().await?;
            let r = g.try_io(|fd| {
                // SAFETY: write(2) from a slice we borrow, at most its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            if let Ok(r) = r {
                data = &data[r?..];
            }
        }
        Ok(())
    }

    /// Sets the terminal's size; the kernel sends `SIGWINCH` to its
    /// foreground process group (the tmux client, which tells its server).
    pub fn resize(&self, cols: u16, rows: u16) -> std::io::Result<()> {
        let ws = winsize(cols, rows);
        // SAFETY: TIOCSWINSZ reads one `winsize` we own.
        if unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn set_flag(fd: &OwnedFd, get: i32, set: i32, flag: i32) -> std::io::Result<()> {
    // SAFETY: fcntl(2) on a descriptor we own; no memory is passed.
    let old = unsafe { libc::fcntl(fd.as_raw_fd(), get) };
    // SAFETY: as above.
    if old < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), set, old | flag) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A started tmux client on its PTY.
pub struct Terminal {
    child: tokio::process::Child,
    pty: Pty,
}

/// The user to run as, after the fallback rule; `None`: the agent's own.
fn resolve_user(cfg: &TerminalConfig) -> Result<Option<users::User>, String> {
    let Some(name) = &cfg.user else {
        return Ok(None);
    };
    match users::lookup(name) {
        Ok(u) => Ok(Some(u)),
        Err(e) if cfg.fall_back_to_agent_user => {
            eprintln!("polydev-agent: terminal: {e}; using the agent's own user");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Makes sure the tmux server runs and holds the session before a client
/// attaches: `tmux new-session -d -s <session>`, waited for (5 s at most).
/// Without it the first client forks the server itself, and a client killed
/// before its command reached that server (a page opened and closed at once)
/// leaves a server with no session, exiting just as the next client connects
/// ("server exited unexpectedly"). Its outcome is not checked: the session
/// may exist already, and a tmux that cannot start fails the client that
/// follows, which reports it.
pub async fn ensure_session(cfg: &TerminalConfig) {
    let Ok(user) = resolve_user(cfg) else { return };
    let argv: Vec<String> = [cfg.tmux.as_str(), "new-session", "-d", "-s", &cfg.session]
        .map(String::from)
        .to_vec();
    let name = user.as_ref().map(|u| u.name.as_str());
    let Ok((mut cmd, _)) = crate::exec::command(&argv, &cfg.env, None, name) else {
        return;
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), cmd.status()).await;
}

/// Starts `tmux new-session -A -s <session>` on a new PTY of `cols`×`rows`.
pub fn spawn(cfg: &TerminalConfig, cols: u16, rows: u16) -> Result<Terminal, String> {
    let user = resolve_user(cfg)?;
    // No status line: the terminal is all the user's (`stty size` is the
    // window's size), the page around it says where it is.
    let argv: Vec<String> = [
        cfg.tmux.as_str(),
        "new-session",
        "-A",
        "-s",
        &cfg.session,
        ";",
        "set-option",
        "-q",
        "status",
        "off",
    ]
    .map(String::from)
    .to_vec();
    let mut env = cfg.env.clone();
    env.insert("TERM".into(), "xterm-256color".into());
    crate::exec::check_launch(&argv, &env, None, None)?;
    let name = user.as_ref().map(|u| u.name.as_str());
    let (mut cmd, cwd) = crate::exec::command(&argv, &env, None, name)?;
    let pty = nix::pty::openpty(Some(&winsize(cols, rows)), None)
        .map_err(|e| format!("cannot open a pseudo-terminal: {e}"))?;
    for fd in [&pty.master, &pty.slave] {
        set_flag(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)
            .map_err(|e| format!("cannot set close-on-exec on the pseudo-terminal: {e}"))?;
    }
    if let Some(u) = &user {
        nix::unistd::fchown(
            pty.slave.as_raw_fd(),
            Some(u.uid.into()),
            Some(u.gid.into()),
        )
        .map_err(|e| format!("cannot hand the terminal to {}: {e}", u.name))?;
    }
    let stdio = || {
        pty.slave
            .try_clone()
            .map(Stdio::from)
            .map_err(|e| format!("cannot duplicate the terminal: {e}"))
    };
    cmd.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and
    // exec. The client leads a session of its own, with the PTY as its
    // controlling terminal (stdin is the slave).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| {
        let who = name.map(|n| format!(" as {n}")).unwrap_or_default();
        format!("cannot start {:?} in {cwd:?}{who}: {e}", cfg.tmux)
    })?;
    drop(cmd); // our copies of the slave: the master reads EIO once tmux lets go.
    drop(pty.slave);
    let pty = Pty::new(pty.master).map_err(|e| format!("cannot watch the pseudo-terminal: {e}"))?;
    Ok(Terminal { child, pty })
}

/// `GET /terminal?cols=N&rows=M`. Every refusal is an HTTP error before the
/// upgrade: a bad size (400), no WebSocket (400), no free slot (429), tmux
/// not starting (500).
pub async fn handler(
    cfg: Option<Extension<TerminalConfig>>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let cfg = cfg.map(|Extension(c)| c).unwrap_or_else(|| DEFAULT.clone());
    let (cols, rows) = parse_size(uri.query()).map_err(ApiError::bad_request)?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            format!("/terminal is a WebSocket: {}", e.body_text()),
        )
    })?;
    let permit = cfg.slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_terminals",
            format!(
                "at most {} terminals may be open at once in this VM; close one first",
                cfg.max
            ),
        )
    })?;
    ensure_session(&cfg).await;
    let term = spawn(&cfg, cols, rows).map_err(ApiError::internal)?;
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(socket, term, permit)))
}

/// How a terminal connection ended.
enum End {
    /// The client closed or went away.
    ClientGone,
    /// The tmux client exited (the session ended, or tmux failed).
    TerminalEnded,
}

/// Pumps bytes between the WebSocket and the PTY until either ends.
async fn serve(mut socket: WebSocket, mut term: Terminal, _permit: OwnedSemaphorePermit) {
    let end = pump(&mut socket, &term).await;
    match end {
        End::ClientGone => {
            stop_client(&mut term.child).await;
        }
        End::TerminalEnded => {
            let status = tokio::time::timeout(Duration::from_secs(2), term.child.wait()).await;
            stop_client(&mut term.child).await;
            let frame = match status {
                Ok(Ok(s)) if !s.success() => CloseFrame {
                    code: ws::close_code::ERROR,
                    reason: format!("tmux failed ({s}); its message is in the terminal").into(),
                },
                _ => CloseFrame {
                    code: ws::close_code::NORMAL,
                    reason: "the terminal session ended".into(),
                },
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
            // Wait (briefly) for the client's close frame.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(m)) = socket.recv().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

async fn pump(socket: &mut WebSocket, term: &Terminal) -> End {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            n = term.pty.read(&mut buf) => match n {
                Ok(0) | Err(_) => return End::TerminalEnded,
                Ok(n) => {
                    if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        return End::ClientGone;
                    }
                }
            },
            m = socket.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if term.pty.write_all(&b).await.is_err() {
                        return End::TerminalEnded;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if let Err(message) = control(&term.pty, &t) {
                        let e = json!({"type": "error", "message": message}).to_string();
                        if socket.send(Message::Text(e.into())).await.is_err() {
                            return End::ClientGone;
                        }
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return End::ClientGone,
            },
        }
    }
}

/// Applies one control message.
fn control(pty: &Pty, text: &str) -> Result<(), String> {
    let (cols, rows) = parse_control(text)?;
    pty.resize(cols, rows)
        .map_err(|e| format!("cannot resize the terminal: {e}"))
}

/// Kills the tmux client (its own session and group; the tmux server left
/// both when it started) and reaps it.
async fn stop_client(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the client's process group; it may be gone.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size(None), Ok(DEFAULT_SIZE));
        assert_eq!(parse_size(Some("cols=100&rows=30")), Ok((100, 30)));
        assert_eq!(parse_size(Some("rows=5&x=1")), Ok((80, 5)));
        assert!(parse_size(Some("cols=0"))
            .unwrap_err()
            .contains("between 1 and 1000"));
        assert!(parse_size(Some("rows=1001")).is_err());
        assert!(parse_size(Some("cols=abc"))
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_size(Some("cols=99999999999")).is_err());
    }

    #[test]
    fn controls() {
        assert_eq!(
            parse_control(r#"{"type":"resize","cols":100,"rows":30}"#),
            Ok((100, 30))
        );
        for bad in [
            "",
            "nope",
            r#"{"type":"resize","cols":0,"rows":30}"#,
            r#"{"type":"resize","cols":10,"rows":5000}"#,
            r#"{"type":"resize","cols":-1,"rows":3}"#,
            r#"{"type":"resize","cols":10}"#,
            r#"{"type":"paste","data":"x"}"#,
            r#"{"type":"resize","cols":10,"rows":3,"x":1}"#,
        ] {
            assert!(parse_control(bad).is_err(), "{bad}");
        }
    }
}
