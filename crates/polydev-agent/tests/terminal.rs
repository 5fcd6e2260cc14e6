//! The terminal WebSocket through the agent's router on 127.0.0.1, with the
//! host's tmux (a server of each test's own, in a temporary `TMUX_TMPDIR`):
//! typed bytes reach the shell and its output comes back, a resize reaches
//! `stty`, bad control messages get an error frame, a reconnect attaches to
//! the same session, closing the socket ends only the tmux client, `exit`
//! closes the socket normally, a terminal closed at once leaves the next one
//! working; refusals (token, size, no WebSocket, the
//! cap, no tmux) are HTTP errors before the upgrade.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use polydev_agent::terminal::TerminalConfig;
use polydev_agent::{api, config};
use tokio_tungstenite::tungstenite::{self, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A tmux server of the test's own; killed when dropped.
struct Tmux {
    dir: tempfile::TempDir,
    session: String,
}

impl Tmux {
    fn new(session: &str) -> Tmux {
        Tmux {
            dir: tempfile::tempdir().unwrap(),
            session: session.into(),
        }
    }

    fn config(&self, max: usize) -> TerminalConfig {
        let mut c = TerminalConfig::with_max(max);
        c.user = None;
        c.session = self.session.clone();
        c.env.insert(
            "TMUX_TMPDIR".into(),
            self.dir.path().to_string_lossy().into(),
        );
        c
    }

    /// Runs `tmux args…` against this server; (success, stdout).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("tmux")
            .args(args)
            .env("TMUX_TMPDIR", self.dir.path())
            .env_remove("TMUX")
            .output()
            .expect("running tmux");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn clients(&self) -> usize {
        self.run(&["list-clients", "-t", &self.session])
            .1
            .lines()
            .count()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

async fn start(cfg: TerminalConfig) -> std::net::SocketAddr {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.json");
    std::fs::write(&path, r#"{"vm_id":"vm-test","token":"s3cret","port":0}"#).unwrap();
    let c = config::load(&path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api::router(api::AppState::new(&c)).layer(axum::Extension(cfg));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Opens `/terminal?query`; `Err` carries a refused handshake's status and body.
async fn connect(
    addr: std::net::SocketAddr,
    query: &str,
    token: Option<&str>,
) -> Result<Ws, (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/terminal?{query}")
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((r.status().as_u16(), body))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

async fn open(addr: std::net::SocketAddr, query: &str) -> Ws {
    connect(addr, query, Some("s3cret"))
        .await
        .expect("the terminal opens")
}

async fn type_in(ws: &mut Ws, text: &str) {
    ws.send(Message::Binary(text.as_bytes().to_vec().into()))
        .await
        .unwrap();
}

/// Reads terminal output until it contains `needle` (20 s at most);
/// returns the output read.
async fn expect_output(ws: &mut Ws, needle: &str) -> String {
    let mut seen = String::new();
    let until = Instant::now() + Duration::from_secs(20);
    while !seen.contains(needle) {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(Message::Text(t)))) => panic!("unexpected text frame {t}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("no {needle:?} in the output ({other:?}); saw {seen:?}"),
        }
    }
    seen
}

/// The next text frame (binary output is skipped), as JSON.
async fn next_text(ws: &mut Ws) -> serde_json::Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => {}
            other => panic!("no text frame: {other:?}"),
        }
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "{what} did not happen in 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_types_resizes_reattaches_and_ends() {
    let tmux = Tmux::new("t1");
    let addr = start(tmux.config(8)).await;
    let mut ws = open(addr, "cols=80&rows=24").await;
    type_in(&mut ws, "echo marker-$((6*7))\r").await;
    expect_output(&mut ws, "marker-42").await;

    // Resize, then ask the shell.
    ws.send(Message::Text(
        r#"{"type":"resize","cols":100,"rows":30}"#.into(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    type_in(&mut ws, "stty size\r").await;
    expect_output(&mut ws, "30 100").await;

    // Bad control messages: an error frame each, the terminal stays.
    for bad in [
        "not json",
        r#"{"type":"resize","cols":0,"rows":30}"#,
        r#"{"type":"resize","cols":10,"rows":1001}"#,
        r#"{"type":"launch"}"#,
    ] {
        ws.send(Message::Text(bad.into())).await.unwrap();
        let e = next_text(&mut ws).await;
        assert_eq!(e["type"], "error", "{bad}: {e}");
        assert!(!e["message"].as_str().unwrap().is_empty(), "{e}");
    }

    // State set now is still there after a reconnect.
    type_in(&mut ws, "KEEP=kept-$((1+1)); echo set-$((2*2))\r").await;
    expect_output(&mut ws, "set-4").await;
    let (_, before) = tmux.run(&["display", "-p", "-t", "t1", "#{session_id}"]);
    assert_eq!(tmux.clients(), 1);
    ws.close(None).await.unwrap();
    drop(ws);
    wait_for("the tmux client ends with the socket", || {
        tmux.clients() == 0
    })
    .await;
    assert!(
        tmux.run(&["has-session", "-t", "t1"]).0,
        "the session stays"
    );

    let mut ws = open(addr, "cols=90&rows=20").await;
    type_in(&mut ws, "echo again-$KEEP\r").await;
    expect_output(&mut ws, "again-kept-2").await;
    let (_, after) = tmux.run(&["display", "-p", "-t", "t1", "#{session_id}"]);
    assert_eq!(before, after, "the same tmux session");

    // `exit` ends the session: a normal close frame.
    type_in(&mut ws, "exit\r").await;
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f,
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame after exit: {other:?}"),
        }
    };
    let frame = frame.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 1000, "{frame:?}");
    assert!(
        !tmux.run(&["has-session", "-t", "t1"]).0,
        "the session ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_before_the_upgrade() {
    let tmux = Tmux::new("t2");
    let addr = start(tmux.config(1)).await;
    let code = |r: Result<Ws, (u16, String)>| match r {
        Ok(_) => panic!("the terminal opened"),
        Err((st, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            (
                st,
                v["error"]["code"].as_str().unwrap_or_default().to_string(),
                body,
            )
        }
    };
    let (st, _, body) = code(connect(addr, "", None).await);
    assert_eq!(st, 401, "{body}");
    let (st, _, body) = code(connect(addr, "", Some("wrong")).await);
    assert_eq!(st, 401, "{body}");
    let (st, c, body) = code(connect(addr, "cols=0&rows=10", Some("s3cret")).await);
    assert_eq!((st, c.as_str()), (400, "bad_request"), "{body}");
    assert!(body.contains("between 1 and 1000"), "{body}");
    let (st, c, body) = code(connect(addr, "cols=x", Some("s3cret")).await);
    assert_eq!((st, c.as_str()), (400, "bad_request"), "{body}");

    // A plain GET is not a WebSocket.
    let resp = plain_get(addr, "/terminal").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("websocket_required"), "{resp}");

    // The cap (1 here): a second terminal is refused until the first closes.
    let mut first = open(addr, "").await;
    let (st, c, body) = code(connect(addr, "", Some("s3cret")).await);
    assert_eq!((st, c.as_str()), (429, "too_many_terminals"), "{body}");
    first.close(None).await.unwrap();
    drop(first);
    let mut opened = None;
    let until = Instant::now() + Duration::from_secs(10);
    while opened.is_none() && Instant::now() < until {
        match connect(addr, "", Some("s3cret")).await {
            Ok(ws) => opened = Some(ws),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut again = opened.expect("a slot is free again once the first terminal closed");
    type_in(&mut again, "echo slot-$((3*3))\r").await;
    expect_output(&mut again, "slot-9").await;
}

/// Pages opened and closed at once: the tmux client may be killed before
/// its command reached the server it started. The next terminal still works
/// (the server must not be left sessionless, exiting as the next client
/// connects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_closed_at_once_leave_the_next_one_working() {
    let tmux = Tmux::new("t5");
    let addr = start(tmux.config(8)).await;
    for round in 0..8 {
        let mut ws = open(addr, "").await;
        ws.close(None).await.unwrap();
        drop(ws);
        let mut ws = open(addr, "").await;
        type_in(&mut ws, &format!("echo round-$((100+{round}))\r")).await;
        expect_output(&mut ws, &format!("round-{}", 100 + round)).await;
        ws.close(None).await.unwrap();
        drop(ws);
        tmux.run(&["kill-server"]);
        wait_for("the tmux server ends", || !tmux.run(&["has-session"]).0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tmux_is_a_clear_error() {
    let tmux = Tmux::new("t3");
    let mut cfg = tmux.config(2);
    cfg.tmux = "/nonexistent/tmux".into();
    let addr = start(cfg).await;
    match connect(addr, "", Some("s3cret")).await {
        Ok(_) => panic!("the terminal opened"),
        Err((st, body)) => {
            assert_eq!(st, 500, "{body}");
            assert!(body.contains("/nonexistent/tmux"), "{body}");
        }
    }
}

async fn plain_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tmux_closes_with_an_error() {
    let tmux = Tmux::new("t4");
    let mut cfg = tmux.config(2);
    cfg.tmux = "false".into(); // starts, then exits 1 at once
    let addr = start(cfg).await;
    let mut ws = open(addr, "").await;
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.expect("a close frame with a code"),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(frame.code), 1011, "{frame:?}");
    assert!(frame.reason.contains("tmux failed"), "{frame:?}");
}
