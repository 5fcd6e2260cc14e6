//! The terminal into a user's CLI VM through a real controller and a real
//! VM (QEMU; TCG where KVM cannot run guests): terminal tokens and the
//! refusals that come before the upgrade (bad token, view token, another
//! user's token, a cross-site page — none of them starts a VM), the VM
//! started on the first connection, typed bytes and their output, a resize
//! reaching `stty`, the same tmux session after a reconnect, the page in
//! headless Chromium (xterm.js, driven by playwright-core from
//! `tests/browser/`), `exit` closing the socket normally, and an open
//! terminal ended (1008) when its API key is revoked or the account disabled.
//!
//! One controller, one CLI VM on the newest minimal image (it has tmux:
//! `polydev image build minimal`), given as `POLYDEV_ROOTFS`.

mod common;
use common::{browser_dir, npm_ready, Controller};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

type Ws = tungstenite::WebSocket<MaybeTlsStream<std::net::TcpStream>>;

const USER: &str = "tara";
/// The first connection boots the VM (minutes under TCG).
const BOOT: Duration = Duration::from_secs(600);
const OUTPUT: Duration = Duration::from_secs(60);

/// The newest minimal image, if it has tmux.
fn minimal_image() -> Option<PathBuf> {
    let cache = polydev_controller::config::default_cache_dir();
    let img =
        polydev_image::rootfs::latest(polydev_image::rootfs::Flavour::Minimal, Path::new(&cache))
            .ok()??;
    let m = polydev_image::manifest::Manifest::read(&img.manifest_path).ok()?;
    m.packages
        .iter()
        .any(|p| p.name == "tmux")
        .then_some(img.path)
}

/// Runs a script of `tests/browser` with Node (bounded); its last line as JSON.
fn node(script: &str, args: &[&str]) -> (bool, Value) {
    let out = Command::new("timeout")
        .args(["-k", "10", "300", "node", script])
        .args(args)
        .current_dir(browser_dir())
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v = serde_json::from_str(last).unwrap_or_else(
        |_| serde_json::json!({"unparsed": stdout, "stderr": String::from_utf8_lossy(&out.stderr)}),
    );
    (out.status.success(), v)
}

fn mint(c: &Controller, user: &str) -> Value {
    let (st, v) = c.call("POST", &format!("/api/users/{user}/terminal/token"), None);
    assert_eq!(st, 200, "{v}");
    v
}

/// Opens the terminal WebSocket; `Err` carries a refused handshake's status
/// and body.
fn open(
    c: &Controller,
    user: &str,
    token: &str,
    origin: Option<&str>,
    query: &str,
) -> Result<Ws, (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    let url = format!(
        "ws://127.0.0.1:{}/api/users/{user}/terminal?token={token}{query}",
        c.port
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    connect(req)
}

/// Opens the terminal WebSocket with an API key in `Authorization`.
fn open_with_key(c: &Controller, user: &str, key: &str) -> Result<Ws, (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    let url = format!("ws://127.0.0.1:{}/api/users/{user}/terminal", c.port);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {key}").parse().unwrap());
    connect(req)
}

fn connect(req: tungstenite::handshake::client::Request) -> Result<Ws, (u16, String)> {
    match tungstenite::connect(req) {
        Ok((ws, _)) => {
            if let MaybeTlsStream::Plain(s) = ws.get_ref() {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
            }
            Ok(ws)
        }
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

fn refused(r: Result<Ws, (u16, String)>) -> (u16, String) {
    match r {
        Ok(_) => panic!("the terminal opened"),
        Err((st, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            let code = v["error"]["code"].as_str().unwrap_or_default().to_string();
            assert!(!code.is_empty(), "refusal without the error shape: {body}");
            (st, code)
        }
    }
}

fn type_in(ws: &mut Ws, text: &str) {
    ws.send(Message::Binary(text.as_bytes().to_vec().into()))
        .expect("typing into the terminal");
}

/// The next frame; `None` when none came within the socket's read timeout.
fn next_frame(ws: &mut Ws) -> Result<Option<Message>, tungstenite::Error> {
    match ws.read() {
        Ok(m) => Ok(Some(m)),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What the terminal said until `done(output)` (text frames of type
/// `status` are kept in `statuses`; an `error` frame fails the test).
fn read_while(
    ws: &mut Ws,
    what: &str,
    within: Duration,
    statuses: &mut Vec<String>,
    done: impl Fn(&str) -> bool,
) -> String {
    let until = Instant::now() + within;
    let mut seen = String::new();
    while !done(&seen) {
        assert!(
            Instant::now() < until,
            "no {what} in {within:?}; statuses {statuses:?}; saw {seen:?}"
        );
        match next_frame(ws) {
            Ok(None) => {}
            Ok(Some(Message::Binary(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("control frames are JSON");
                let m = v["message"].as_str().unwrap_or_default().to_string();
                assert_ne!(v["type"], "error", "the terminal failed: {m}");
                statuses.push(m);
            }
            Ok(Some(Message::Close(f))) => {
                panic!("closed while waiting for {what}: {f:?}; saw {seen:?}")
            }
            Ok(Some(_)) => {}
            Err(e) => panic!("reading the terminal: {e}; saw {seen:?}"),
        }
    }
    seen
}

fn read_until(ws: &mut Ws, needle: &str, within: Duration, statuses: &mut Vec<String>) -> String {
    read_while(ws, &format!("{needle:?}"), within, statuses, |s| {
        s.contains(needle)
    })
}

/// The tmux session id (`$N`) printed by `tmux display` after `label=`.
fn session_id(ws: &mut Ws, label: &str) -> String {
    type_in(ws, &format!("tmux display -p '{label}=#{{session_id}}'\r"));
    let marker = format!("{label}=$");
    let id_of = |s: &str| -> Option<String> {
        let rest = &s[s.find(&marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        // Complete once something follows the digits.
        (!digits.is_empty() && rest.len() > digits.len()).then(|| format!("${digits}"))
    };
    let out = read_while(ws, &marker, OUTPUT, &mut Vec::new(), |s| id_of(s).is_some());
    id_of(&out).unwrap()
}

/// Closes the socket and waits for the server's close.
fn close(mut ws: Ws) {
    let _ = ws.close(None);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if next_frame(&mut ws).is_err() {
            return; // closed (or broken)
        }
    }
}

fn cli_vms(c: &Controller) -> Vec<Value> {
    let (st, v) = c.call("GET", &format!("/api/vms?userId={USER}"), None);
    assert_eq!(st, 200, "{v}");
    v["vms"].as_array().cloned().unwrap_or_default()
}

/// Refusals before the upgrade; none of them may start a VM.
fn check_refusals(c: &Controller, token: &str) {
    let own = format!("http://127.0.0.1:{}", c.port);
    assert_eq!(
        refused(open(c, USER, "", None, "")),
        (401, "unauthorized".into())
    );
    assert_eq!(
        refused(open(c, USER, "pdt_abc.def", None, "")),
        (401, "invalid_token".into())
    );
    let other = mint(c, "someone-else")["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        refused(open(c, USER, &other, None, "")),
        (403, "forbidden".into())
    );
    // A view token is not a terminal token, nor is an API key in the URL.
    let fake_view = format!("pdv_{}", &token[4..]);
    assert_eq!(refused(open(c, USER, &fake_view, None, "")).0, 401);
    assert_eq!(refused(open(c, USER, &c.key, None, "")).0, 401);
    assert_eq!(
        refused(open(c, USER, token, Some("https://evil.example"), "")),
        (403, "origin_not_allowed".into())
    );
    assert_eq!(
        refused(open(c, USER, token, Some(&own), "&cols=0")),
        (400, "bad_request".into())
    );
    // The page checks its token too.
    let page = ureq::get(&c.url(&format!("/terminal/{USER}?token=pdt_x.y"))).call();
    assert!(matches!(page, Err(ureq::Error::Status(401, _))), "{page:?}");
    assert!(cli_vms(c).is_empty(), "a refused terminal started a VM");
}

/// The page and its vendored files.
fn check_page_files(c: &Controller, url: &str) {
    let r = ureq::get(&c.url(url)).call().expect("the terminal page");
    let csp = r
        .header("content-security-policy")
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self' 'nonce-"), "{csp}");
    let html = r.into_string().unwrap();
    assert!(html.contains("/assets/xterm/xterm.js"), "{html}");
    for (file, ctype) in [
        ("xterm.js", "text/javascript"),
        ("addon-fit.js", "text/javascript"),
        ("xterm.css", "text/css"),
        ("LICENSE", "text/plain"),
    ] {
        let r = ureq::get(&c.url(&format!("/assets/xterm/{file}")))
            .call()
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            r.content_type().starts_with(ctype),
            "{file}: {}",
            r.content_type()
        );
    }
}

#[test]
fn a_terminal_into_the_users_cli_vm() {
    let started = Instant::now();
    let Some(rootfs) = minimal_image() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no minimal image with tmux: run `polydev image build minimal`"
        );
        eprintln!("SKIPPED: no minimal image with tmux (polydev image build minimal)");
        return;
    };
    let c = Controller::start(&[("POLYDEV_ROOTFS", rootfs.to_str().unwrap())]);
    let own = format!("http://127.0.0.1:{}", c.port);
    let minted = mint(&c, USER);
    let token = minted["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("pdt_"), "{minted}");
    assert_eq!(
        minted["url"].as_str().unwrap(),
        format!("/terminal/{USER}?token={token}")
    );
    check_refusals(&c, &token);
    check_page_files(&c, minted["url"].as_str().unwrap());
    eprintln!(
        "refusals and page checked at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The first connection starts the VM.
    let mut ws = open(&c, USER, &token, Some(&own), "&cols=80&rows=24").expect("terminal");
    let mut statuses = Vec::new();
    // Wait for the terminal (what is typed while the VM boots is kept, but
    // the boot takes minutes under TCG).
    read_while(&mut ws, "terminal output", BOOT, &mut statuses, |s| {
        !s.is_empty()
    });
    type_in(&mut ws, "echo marker-$((6*7))\r");
    read_until(&mut ws, "marker-42", BOOT, &mut statuses);
    assert!(
        statuses.iter().any(|s| s.contains("starting your CLI VM")),
        "{statuses:?}"
    );
    let vms = cli_vms(&c);
    assert_eq!(vms.len(), 1, "{vms:?}");
    assert_eq!(
        (vms[0]["type"].as_str(), vms[0]["status"].as_str()),
        (Some("cli"), Some("running"))
    );
    eprintln!(
        "VM up, marker-42 read at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    ws.send(Message::Text(
        r#"{"type":"resize","cols":100,"rows":30}"#.into(),
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    type_in(&mut ws, "stty size\r");
    read_until(&mut ws, "30 100", OUTPUT, &mut statuses);
    // A bad control message is answered, not fatal.
    ws.send(Message::Text("{not json".into())).unwrap();
    let err = loop {
        match ws.read() {
            Ok(Message::Text(t)) => break serde_json::from_str::<Value>(&t).unwrap(),
            Ok(Message::Close(f)) => panic!("closed: {f:?}"),
            _ => {}
        }
    };
    assert_eq!(err["type"], "error", "{err}");

    type_in(&mut ws, "KEEP=kept-$((1+1))\r");
    let before = session_id(&mut ws, "sidA");
    close(ws);

    let mut ws = open(&c, USER, &token, Some(&own), "&cols=90&rows=20").expect("reconnect");
    type_in(&mut ws, "echo again-$KEEP\r");
    read_until(&mut ws, "again-kept-2", OUTPUT, &mut statuses);
    let after = session_id(&mut ws, "sidB");
    assert!(
        !before.is_empty() && before == after,
        "tmux session {before:?} then {after:?}"
    );
    close(ws);
    eprintln!(
        "reconnect checked at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The page in headless Chromium.
    npm_ready();
    let page_url = c.url(minted["url"].as_str().unwrap());
    let (ok, v) = node("terminal_page.mjs", &[&page_url]);
    assert!(ok && v["ok"] == true, "terminal page: {v:#}");
    eprintln!(
        "page: state {} after {} connection(s), {} bytes in; checked at {:.1} s",
        v["state"],
        v["connects"],
        v["bytesIn"],
        started.elapsed().as_secs_f64()
    );

    // `exit` ends the tmux session: a normal close.
    let mut ws = open(&c, USER, &token, Some(&own), "").expect("terminal for exit");
    type_in(&mut ws, "echo last-$((4+4))\r");
    read_until(&mut ws, "last-8", OUTPUT, &mut statuses);
    type_in(&mut ws, "exit\r");
    let until = Instant::now() + OUTPUT;
    let frame = loop {
        assert!(Instant::now() < until, "no close frame after exit");
        match next_frame(&mut ws) {
            Ok(Some(Message::Close(f))) => break f,
            Ok(_) => {}
            Err(e) => panic!("reading after exit: {e}"),
        }
    };
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));

    check_access_taken_away(&c, &token, &mut statuses);
    let (_, health) = c.call("GET", "/health", None);
    eprintln!(
        "terminal test took {:.1} s ({} with {})",
        started.elapsed().as_secs_f64(),
        health["vmm"]["kind"],
        health["vmm"]["accel"]
    );
}

/// Reads until the server closes the terminal: (close code, reason, the
/// error frame's message before it).
fn ended_by_server(ws: &mut Ws, within: Duration) -> (u16, String, String) {
    let until = Instant::now() + within;
    let mut error = String::new();
    loop {
        assert!(
            Instant::now() < until,
            "the terminal stayed open for {within:?}"
        );
        match next_frame(ws) {
            Ok(Some(Message::Close(f))) => {
                let f = f.expect("a close frame with a code");
                return (u16::from(f.code), f.reason.to_string(), error);
            }
            Ok(Some(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("control frames are JSON");
                if v["type"] == "error" {
                    error = v["message"].as_str().unwrap_or_default().to_string();
                }
            }
            Ok(_) => {}
            Err(e) => panic!("reading the terminal: {e}"),
        }
    }
}

/// An open terminal ends when what opened it is taken away: the API key
/// revoked, or the user's account disabled (the terminal token itself
/// still valid).
fn check_access_taken_away(c: &Controller, token: &str, statuses: &mut Vec<String>) {
    let body = serde_json::json!({"name": "terminal test", "userId": USER}).to_string();
    let (st, key) = c.call("POST", "/api/keys", Some(&body));
    assert_eq!(st, 201, "{key}");
    let mut ws = open_with_key(c, USER, key["key"].as_str().unwrap()).expect("terminal by API key");
    type_in(&mut ws, "echo key-$((5+5))\r");
    read_until(&mut ws, "key-10", OUTPUT, statuses);
    let t = Instant::now();
    let (st, v) = c.call(
        "DELETE",
        &format!("/api/keys/{}", key["keyId"].as_str().unwrap()),
        None,
    );
    assert_eq!(st, 204, "{v}");
    let (code, reason, error) = ended_by_server(&mut ws, Duration::from_secs(20));
    assert_eq!(code, 1008, "{reason}");
    assert!(
        reason.contains("revoked") && error.contains("revoked"),
        "{reason} / {error}"
    );
    eprintln!(
        "revoked key's terminal closed {:.1} s after the revocation",
        t.elapsed().as_secs_f64()
    );

    c.cli(&["user", "create", USER]);
    let mut ws = open(c, USER, token, None, "").expect("terminal by token");
    type_in(&mut ws, "echo account-$((6+6))\r");
    read_until(&mut ws, "account-12", OUTPUT, statuses);
    let t = Instant::now();
    c.cli(&["user", "disable", USER]);
    let (code, reason, _) = ended_by_server(&mut ws, Duration::from_secs(20));
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("disabled"), "{reason}");
    eprintln!(
        "disabled account's terminal closed {:.1} s after `polydev user disable`",
        t.elapsed().as_secs_f64()
    );
}
