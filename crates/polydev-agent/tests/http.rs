//! Runs the agent's router on 127.0.0.1 and talks HTTP/1.1 to it.

use polydev_agent::{api, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start() -> std::net::SocketAddr {
    start_with_state().await.0
}

async fn start_with_state() -> (std::net::SocketAddr, api::AppState) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.json");
    std::fs::write(&path, r#"{"vm_id":"vm-test","token":"s3cret","port":0}"#).unwrap();
    let cfg = config::load(&path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = api::AppState::new(&cfg);
    let app = api::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

/// Sends one POST with a JSON body and returns (status, body).
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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

/// Sends one request and returns (status, body).
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    auth: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn health_with_right_token() {
    let addr = start().await;
    let (status, body) = get(addr, "/health", Some("Bearer s3cret")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["vmId"], "vm-test");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptimeMs"].is_u64());
}

#[tokio::test]
async fn wrong_or_missing_token_is_401() {
    let addr = start().await;
    for auth in [
        Some("Bearer nope"),
        Some("Basic s3cret"),
        Some("Bearer s3cre"),
        None,
    ] {
        let (status, body) = get(addr, "/health", auth).await;
        assert_eq!(status, 401, "auth {auth:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(body["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn unknown_route_is_404_json() {
    let addr = start().await;
    let (status, body) = get(addr, "/nope", Some("Bearer s3cret")).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    // Without a token, even unknown routes say 401 (no route probing).
    let (status, _) = get(addr, "/nope", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn exec_runs_with_env_cwd_and_stdin() {
    let addr = start().await;
    let body = serde_json::json!({
        "argv": ["sh", "-c", "echo \"$GREETING $(pwd)\"; cat; echo oops >&2; exit 3"],
        "env": {"GREETING": "hello"},
        "cwd": "/tmp",
        "stdin": "from stdin\n",
        "timeoutMs": 10000
    });
    let (status, r) = post(addr, "/exec", &body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["exitCode"], 3);
    assert_eq!(r["stdout"], "hello /tmp\nfrom stdin\n");
    assert_eq!(r["stderr"], "oops\n");
    assert_eq!(r["timedOut"], false);
    assert_eq!(r["stdoutTruncated"], false);
}

#[tokio::test]
async fn exec_environment_is_clean() {
    let addr = start().await;
    std::env::set_var("POLYDEV_AGENT_SECRET_TEST", "leak");
    let body = serde_json::json!({"argv": ["env"]});
    let (status, r) = post(addr, "/exec", &body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("POLYDEV_AGENT_SECRET_TEST"), "{out}");
    assert!(out.contains("PATH=/usr/local/sbin:"), "{out}");
}

#[tokio::test]
async fn exec_times_out_and_kills_the_group() {
    let addr = start().await;
    let started = std::time::Instant::now();
    let body = serde_json::json!({"argv": ["sh", "-c", "sleep 30 & sleep 30; echo never"], "timeoutMs": 300});
    let (status, r) = post(addr, "/exec", &body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["timedOut"], true);
    assert_eq!(r["exitCode"], serde_json::Value::Null);
    assert_eq!(r["signal"], 9);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn exec_bounds_output() {
    let addr = start().await;
    let body =
        serde_json::json!({"argv": ["head", "-c", "100000", "/dev/zero"], "maxOutputBytes": 1000});
    let (status, r) = post(addr, "/exec", &body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(r["stdoutTruncated"], true);
    assert_eq!(r["exitCode"], 0);
}

#[tokio::test]
async fn exec_errors_use_the_json_shape() {
    let addr = start().await;
    for (body, code) in [
        ("not json", "bad_request"),
        (r#"{"argv": []}"#, "bad_request"),
        (r#"{"argv": ["true"], "bogus": 1}"#, "bad_request"),
        (
            r#"{"argv": ["true"], "user": "no-such-user-here"}"#,
            "bad_request",
        ),
        (r#"{"argv": ["/nonexistent/program"]}"#, "internal"),
    ] {
        let (status, r) = post(addr, "/exec", body).await;
        assert_eq!(r["error"]["code"], code, "{body}: {r}");
        assert!(status == 400 || status == 500);
        assert!(r["error"]["message"].is_string());
    }
}

#[tokio::test]
async fn files_are_written_atomically_with_mode() {
    use std::os::unix::fs::PermissionsExt;
    let addr = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/sub/creds.json");
    let body = serde_json::json!({
        "path": path.to_str().unwrap(),
        "contentBase64": "eyJ0b2tlbiI6MX0=",
    });
    let (status, r) = post(addr, "/files", &body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["success"], true);
    assert_eq!(r["bytes"], 11);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"token":1}"#);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let dmode = std::fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dmode, 0o700);
    // Replace it with another mode; no temporary file is left behind.
    let body =
        serde_json::json!({"path": path.to_str().unwrap(), "contentBase64": "", "mode": "0644"});
    let (status, _) = post(addr, "/files", &body.to_string()).await;
    assert_eq!(status, 200);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o644);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1);
    for bad in [
        serde_json::json!({"path": "relative", "contentBase64": ""}),
        serde_json::json!({"path": "/tmp/../etc/x", "contentBase64": ""}),
        serde_json::json!({"path": path.to_str().unwrap(), "contentBase64": "!!"}),
        serde_json::json!({"path": path.to_str().unwrap(), "contentBase64": "", "owner": "no-such-user-here"}),
    ] {
        let (status, r) = post(addr, "/files", &bad.to_string()).await;
        assert_eq!(status, 400, "{bad}: {r}");
        assert_eq!(r["error"]["code"], "bad_request");
    }
}

#[tokio::test]
async fn open_url_is_recorded() {
    let addr = start().await;
    let (status, r) = get(addr, "/oauth-url", Some("Bearer s3cret")).await;
    assert_eq!(status, 200);
    assert_eq!(r["oauthUrl"], serde_json::Value::Null);
    let url = "https://auth.example.test/oauth/authorize?state=abc";
    let (status, r) = post(
        addr,
        "/open-url",
        &serde_json::json!({"url": url}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["success"], true);
    let (_, r) = get(addr, "/oauth-url", Some("Bearer s3cret")).await;
    assert_eq!(r["oauthUrl"], url);
    assert_eq!(r["source"], "api");
    let (status, r) = post(addr, "/open-url", r#"{"url": "file:///etc/shadow"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(r["error"]["code"], "bad_request");
}

#[tokio::test]
async fn hook_socket_hands_urls_to_the_agent() {
    let (addr, state) = start_with_state().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/open-url.sock");
    let urls = state.urls.clone();
    let sock2 = sock.clone();
    tokio::spawn(async move { polydev_agent::open_url::serve_socket(&sock2, urls).await });
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let url = "http://localhost:1455/auth/callback?x=1";
    let s = sock.clone();
    tokio::task::spawn_blocking(move || polydev_agent::open_url::client(&s, url))
        .await
        .unwrap()
        .unwrap();
    let (_, r) = get(addr, "/oauth-url", Some("Bearer s3cret")).await;
    assert_eq!(r["oauthUrl"], url);
    assert_eq!(r["source"], "hook");
    let s = sock.clone();
    let err = tokio::task::spawn_blocking(move || polydev_agent::open_url::client(&s, "ftp://x"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("http"), "{err}");
    let missing = dir.path().join("nope.sock");
    let err = polydev_agent::open_url::client(&missing, url).unwrap_err();
    assert!(err.contains("nope.sock"), "{err}");
}

#[tokio::test]
async fn exec_runs_as_another_user() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("nobody:"));
    if !is_root || !nobody {
        eprintln!("SKIPPED: needs root and a 'nobody' user");
        return;
    }
    let addr = start().await;
    let body = serde_json::json!({"argv": ["sh", "-c", "id -u; id -G; echo $USER"], "user": "nobody", "cwd": "/"});
    let (status, r) = post(addr, "/exec", &body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    let out = r["stdout"].as_str().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "65534", "{out}");
    assert!(
        !lines[1].split(' ').any(|g| g == "0"),
        "kept root's groups: {out}"
    );
    assert_eq!(lines[2], "nobody");
}
