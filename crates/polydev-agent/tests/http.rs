//! Runs the agent's router on 127.0.0.1 and talks HTTP/1.1 to it.

use polydev_agent::{api, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
