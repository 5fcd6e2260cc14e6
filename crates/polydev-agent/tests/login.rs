//! Provider logins through the agent's HTTP API, on the host: the agent's
//! router on 127.0.0.1, the stand-in `codex` (crates/polydev-login/standins,
//! Node.js) as the CLI, run as the current user with a temporary home, and
//! the OAuth stand-in server in place of the provider.
//!
//! Needs `node` on `PATH`: without it the tests fail when `CI` is set and
//! print SKIPPED otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use polydev_agent::login::LoginConfig;
use polydev_agent::{api, config};
use polydev_login::url::Url;
use polydev_login::{credentials, LoginOptions, Provider, RunAs};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// codex listens on the fixed port 1455: one codex test at a time.
static CODEX: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn node_dir() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .map(|d| Path::new(d).join("node"))
        .find(|p| p.is_file());
    match found {
        Some(p) => Some(p.parent().unwrap().to_path_buf()),
        None if std::env::var_os("CI").is_some() => {
            panic!("node (Node.js 20) is not on PATH: the agent login tests need it")
        }
        None => {
            eprintln!("SKIPPED: node is not on PATH; the agent login tests need Node.js");
            None
        }
    }
}

/// A test's world. Dropping it stops the servers; the agent's state (and
/// with it any login, whose `Drop` kills the CLI's process group) goes with
/// the test's runtime.
struct World {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    agent: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    state: api::AppState,
}

impl Drop for World {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Whatever happened, leave no CLI behind.
        if let Some(s) = self.state.login.take_session() {
            let _ = unsafe { libc::killpg(s.pid(), libc::SIGKILL) };
        }
    }
}

async fn world(oauth_up: bool) -> Option<World> {
    let node = node_dir()?;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let bin = tmp.path().join("bin");
    let run = tmp.path().join("run");
    for d in [&home, &bin, &run] {
        std::fs::create_dir_all(d).unwrap();
    }
    let standins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../polydev-login/standins");
    std::os::unix::fs::symlink(standins.join("codex.js"), bin.join("codex")).unwrap();

    let mut tasks = Vec::new();
    let oauth_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let oauth = format!("http://{}", oauth_listener.local_addr().unwrap());
    if oauth_up {
        tasks.push(tokio::spawn(async move {
            let _ = polydev_login::oauth_standin::serve(oauth_listener).await;
        }));
    } else {
        drop(oauth_listener); // nothing listens there: the provider is unreachable
    }

    let cfg_path = tmp.path().join("agent.json");
    std::fs::write(
        &cfg_path,
        r#"{"vm_id":"vm-test","token":"s3cret","port":0}"#,
    )
    .unwrap();
    let cfg = config::load(&cfg_path).unwrap();
    let state = api::AppState::new(&cfg).with_login(LoginConfig {
        run_as: Some(RunAs::current(&home)),
        user: "unused".into(),
        options: LoginOptions {
            path: format!("{}:{}:/usr/bin:/bin", bin.display(), node.display()),
            extra_env: vec![("POLYDEV_STANDIN_OAUTH".into(), oauth)],
            runtime_dir: run,
            ..LoginOptions::default()
        },
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = listener.local_addr().unwrap();
    let app = api::router(state.clone());
    tasks.push(tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap()
    }));
    Some(World {
        _tmp: tmp,
        home,
        agent,
        tasks,
        state,
    })
}

/// A minimal HTTP/1.1 exchange: `(status, location, body)`.
async fn http(
    addr: (&str, u16),
    method: &str,
    target: &str,
    headers: &str,
    body: &str,
) -> (u16, Option<String>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        addr.0,
        addr.1,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let location = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    });
    (status, location, body.to_string())
}

impl World {
    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.call_with(method, path, "Bearer s3cret", body).await
    }

    async fn call_with(&self, method: &str, path: &str, auth: &str, body: &str) -> (u16, Value) {
        let headers = format!("Authorization: {auth}\r\nContent-Type: application/json\r\n");
        let (status, _, text) = http(
            ("127.0.0.1", self.agent.port()),
            method,
            path,
            &headers,
            body,
        )
        .await;
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, v)
    }

    /// `POST /auth/codex`, retrying while something else (another test run
    /// on this machine) holds codex's fixed port.
    async fn start_codex(&self, session_id: &str) -> (u16, Value) {
        let body = format!(r#"{{"sessionId":"{session_id}"}}"#);
        for _ in 0..60 {
            let (status, v) = self.call("POST", "/auth/codex", &body).await;
            if status == 409 && v["error"]["code"] == "busy" {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            return (status, v);
        }
        panic!("codex's port 1455 stayed busy");
    }

    /// Polls `GET /credentials/status` until it is no longer waiting.
    async fn settled_status(&self) -> Value {
        for _ in 0..200 {
            let (status, v) = self.call("GET", "/credentials/status", "").await;
            assert_eq!(status, 200, "{v}");
            if v["waiting"] != true {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the login stayed waiting");
    }
}

/// What the user does in the browser: opens the sign-in page and presses
/// Approve. Returns where the server redirects.
async fn approve(authorize_url: &str) -> String {
    let u = Url::parse(authorize_url).unwrap();
    let target = format!("{}?{}", u.path, u.raw_query);
    let (status, _, page) = http((u.host.as_str(), u.port), "GET", &target, "", "").await;
    assert_eq!(status, 200, "sign-in page: {page}");
    assert!(page.contains("id=\"approve\""), "no Approve button: {page}");
    let mut form = form_urlencoded::Serializer::new(String::new());
    for k in [
        "client_id",
        "redirect_uri",
        "state",
        "scope",
        "code_challenge",
        "code_challenge_method",
    ] {
        form.append_pair(k, u.param(k).unwrap_or(""));
    }
    form.append_pair("username", "alice")
        .append_pair("action", "approve");
    let (status, location, body) = http(
        (u.host.as_str(), u.port),
        "POST",
        "/approve",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        &form.finish(),
    )
    .await;
    assert_eq!(status, 303, "approve: {body}");
    location.expect("approve redirects")
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_login_through_the_agent() {
    let _one = CODEX.lock().await;
    let Some(w) = world(true).await else { return };

    // Nothing yet.
    let (status, v) = w.call("GET", "/credentials/status", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["authenticated"].clone(), v["waiting"].clone()),
        (false.into(), false.into())
    );
    let (status, v) = w.call("GET", "/credentials/get", "").await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"]["code"].is_string());

    // Unknown provider, wrong token.
    let (status, v) = w.call("POST", "/auth/nope", r#"{"sessionId":"s"}"#).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("unknown_provider"))
    );
    let (status, v) = w
        .call_with("POST", "/auth/codex", "Bearer nope", r#"{"sessionId":"s"}"#)
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    for path in [
        "/credentials/status",
        "/credentials/get",
        "/auth/callback?code=x",
    ] {
        let (status, _) = w.call_with("GET", path, "Bearer nope", "").await;
        assert_eq!(status, 401, "{path}");
    }

    // Start: the URL is the stand-in server's authorize endpoint.
    let (status, v) = w.start_codex("sess-1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["sessionId"], "sess-1");
    let url = v["oauthUrl"].as_str().unwrap().to_string();
    let u = Url::parse(&url).unwrap();
    assert_eq!(u.path, "/oauth/authorize", "{url}");
    assert_eq!(u.param("response_type"), Some("code"), "{url}");
    assert_eq!(
        u.param("client_id"),
        Some("app_EMoamEEZ73f0CkXaXp7hrann"),
        "{url}"
    );
    assert!(
        u.param("redirect_uri")
            .unwrap()
            .starts_with("http://localhost:1455/auth/callback")
            || u.param("redirect_uri")
                .unwrap()
                .starts_with("http://127.0.0.1:1455/auth/callback"),
        "{url}"
    );
    assert!(u.param("state").is_some_and(|s| s.len() >= 32), "{url}");
    assert!(u.param("code_challenge").is_some(), "{url}");

    // GET /oauth-url prefers the login's URL.
    let (status, v) = w.call("GET", "/oauth-url", "").await;
    assert_eq!(status, 200);
    assert_eq!(v["oauthUrl"], url.as_str());
    assert_eq!(v["sessionId"], "sess-1");

    let (_, v) = w.call("GET", "/credentials/status", "").await;
    assert_eq!(
        (v["authenticated"].clone(), v["waiting"].clone()),
        (false.into(), true.into())
    );

    // The browser approves; the agent forwards the redirect to the CLI.
    let redirect = approve(&url).await;
    let query = redirect.split_once('?').expect("redirect has a query").1;
    let (status, v) = w.call("GET", &format!("/auth/callback?{query}"), "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["status"], 302, "{v}");

    let v = w.settled_status().await;
    assert_eq!(v["authenticated"], true, "{v}");
    assert!(v.get("error").is_none(), "{v}");

    // The credentials: the primary file as a JSON string, and every file.
    let (status, v) = w.call("GET", "/credentials/get", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["provider"], "codex");
    let primary = v["credentials"].as_str().expect("credentials is a string");
    credentials::validate(Provider::Codex, primary.as_bytes()).expect("valid auth.json");
    let auth: Value = serde_json::from_str(primary).unwrap();
    assert!(auth["tokens"]["access_token"].is_string(), "{auth}");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files[0]["path"], ".codex/auth.json");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(files[0]["contentBase64"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, primary.as_bytes());
    assert_eq!(
        bytes,
        std::fs::read(credentials::path_in(Provider::Codex, &w.home)).unwrap()
    );

    // The login is over.
    let (_, v) = w.call("GET", "/credentials/status", "").await;
    assert_eq!(v["sessionId"], Value::Null, "{v}");
    let (status, _) = w.call("GET", "/credentials/get", "").await;
    assert_eq!(status, 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_login_fails_when_the_provider_is_down() {
    let _one = CODEX.lock().await;
    let Some(w) = world(false).await else { return };
    let (status, v) = w.start_codex("sess-down").await;
    assert_eq!(status, 200, "{v}");
    let url = v["oauthUrl"].as_str().unwrap().to_string();
    let state = Url::parse(&url)
        .unwrap()
        .param("state")
        .unwrap()
        .to_string();
    // The redirect arrives; the CLI cannot exchange the code.
    let _ = w
        .call(
            "GET",
            &format!("/auth/callback?code=anything&state={state}"),
            "",
        )
        .await;
    let v = w.settled_status().await;
    assert_eq!(v["authenticated"], false, "{v}");
    assert_eq!(v["state"], "failed", "{v}");
    let error = v["error"].as_str().expect("an error message");
    assert!(error.contains("exit code"), "{error}");
    let (status, v) = w.call("GET", "/credentials/get", "").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("not_authenticated"))
    );

    // A new POST replaces the failed login.
    let (status, v) = w.start_codex("sess-again").await;
    assert_eq!(status, 200, "{v}");
    let (_, v) = w.call("GET", "/credentials/status", "").await;
    assert_eq!(v["sessionId"], "sess-again", "{v}");
}
