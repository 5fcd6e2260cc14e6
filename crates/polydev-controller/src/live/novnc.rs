//! noVNC through the controller: the client's files from the host's `novnc`
//! package at `/novnc/...`, a view token at `GET /api/auth/session/:id/novnc`,
//! and the WebSocket proxy `GET /api/live/:id/vnc?token=...` to the session's
//! browser VM's VNC server (`169.254.0.22:5901`), reached from inside the
//! VM's network namespace. With a read-only token the client's input is
//! dropped by [`super::rfb::ReadOnlyFilter`].

use super::access;
use super::token::Claims;
use super::Live;
use crate::error::ApiError;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use polydev_core::vm::{now_ms, VmStatus};
use serde::Deserialize;
use std::path::{Component, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest WebSocket message accepted from a viewer.
const MAX_WS_MESSAGE: usize = 4 << 20;

/// Content type of a noVNC file, by extension.
fn content_type(p: &std::path::Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "ogg" | "oga" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        _ => "application/octet-stream",
    }
}

/// The file `rel` (a path below `/novnc/`) inside `root`, or `None` when it
/// would leave the directory (`..`, absolute parts, links pointing out) or
/// is not a regular file.
pub fn resolve_static(root: &std::path::Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.contains(['\0', '\\']) {
        return None;
    }
    let mut p = PathBuf::new();
    for c in std::path::Path::new(rel).components() {
        match c {
            Component::Normal(s) if !s.to_string_lossy().starts_with('.') => p.push(s),
            _ => return None,
        }
    }
    let root = root.canonicalize().ok()?;
    let full = root.join(&p).canonicalize().ok()?;
    (full.starts_with(&root) && full.is_file()).then_some(full)
}

/// `GET /novnc/*path`: the noVNC client's files (no API key: they are the
/// public noVNC release).
pub async fn static_file(State(live): State<Arc<Live>>, Path(rel): Path<String>) -> Response {
    let root = live.cfg().novnc_dir.clone();
    let Some(file) = resolve_static(&root, &rel) else {
        return ApiError::not_found(format!("no noVNC file {rel:?}")).into_response();
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(&file)),
                (header::CACHE_CONTROL, "public, max-age=3600"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("reading {}: {e}", file.display())).into_response(),
    }
}

/// Query of `GET /api/auth/session/:id/novnc`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintQuery {
    /// Mint a watch-only token.
    #[serde(default)]
    read_only: bool,
    /// A shorter lifetime than the configured one, in seconds.
    ttl_secs: Option<u64>,
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// The WebSocket path (no leading slash) of a session's VNC proxy.
pub fn ws_path(session_id: &str, token: &str) -> String {
    format!("api/live/{session_id}/vnc?token={token}")
}

/// `GET /api/auth/session/:id/novnc` (API key): a view token for the
/// session and the URLs that use it.
pub async fn mint(
    State(live): State<Arc<Live>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<MintQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let s = live
        .rt()
        .store()
        .get_auth_session(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no sign-in session {id}")))?;
    caller.owns(&s.user_id, || format!("no sign-in session {id}"))?;
    if s.status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_ended",
            format!("session {id} has ended ({})", s.status),
        ));
    }
    let max = live.cfg().view_token_ttl;
    let ttl = match q.ttl_secs {
        Some(0) => return Err(ApiError::bad_request("ttlSecs must be at least 1")),
        Some(t) => Duration::from_secs(t).min(max),
        None => max,
    };
    let claims = Claims {
        user_id: s.user_id.clone(),
        session_id: id.clone(),
        expires_at: now_ms() + ttl.as_millis() as i64,
        read_only: q.read_only,
    };
    let token = live.mint(&claims);
    let base = access::base_url(&live, &headers);
    let novnc = format!(
        "{base}/novnc/vnc.html?autoconnect=true&reconnect=true&reconnect_delay=2000&resize=scale&shared=true&view_only={}&path={}",
        q.read_only,
        url_encode(&ws_path(&id, &token))
    );
    let viewer = format!("{base}/viewer/{id}?token={token}");
    tracing::info!(session_id = %id, read_only = q.read_only, ttl_s = ttl.as_secs(), "view token minted");
    let mut r = Json(serde_json::json!({
        "success": true,
        "sessionId": id,
        "novncURL": novnc,
        "viewerURL": viewer,
        "websocketURL": format!("{}/{}", base.replacen("http", "ws", 1), ws_path(&id, &token)),
        "token": token,
        "expiresAt": claims.expires_at,
        "readOnly": q.read_only,
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Query of the VNC WebSocket.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    /// The view token.
    pub token: Option<String>,
}

/// `GET /api/live/:id/vnc?token=...`: the WebSocket proxy to the session's
/// VNC server. Every refusal is an HTTP error before the upgrade.
pub async fn proxy(
    State(live): State<Arc<Live>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = q
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing view token (?token=, from GET /api/auth/session/:id/novnc)",
            )
        })?;
    if !token.starts_with(super::token::PREFIX) {
        return Err(access::token_error(super::token::TokenError::Malformed(
            "it does not start with pdv_",
        )));
    }
    let caller = access::caller(&live, &HeaderMap::new(), Some(token)).await?;
    let s = access::session_for(&live, &caller, &id).await?;
    access::check_origin(&live, &headers)?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            format!("this endpoint is a WebSocket: {}", e.body_text()),
        )
    })?;
    access::live_now(&s)?;
    let slot = super::limits::take_socket(&id)?;
    let vm_id = s.browser_vm_id.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_ready",
            "the session has no browser VM",
        )
    })?;
    let rec = live
        .rt()
        .store()
        .get_vm(&vm_id)
        .await?
        .filter(|r| r.status == VmStatus::Running)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_ready",
                format!("the browser VM {vm_id} is not running"),
            )
        })?;
    let netns = rec.netns.clone();
    let tcp = tokio::task::spawn_blocking(move || {
        let addr = std::net::SocketAddr::from((
            polydev_core::guest::GUEST_ADDR
                .parse::<std::net::Ipv4Addr>()
                .expect("constant"),
            polydev_core::guest::VNC_PORT,
        ));
        let s = polydev_net::netns::connect_tcp(&netns, addr, Duration::from_secs(5))?;
        s.set_nonblocking(true)
            .map_err(|e| polydev_net::NetError::Sys {
                what: "making the VNC socket non-blocking".into(),
                source: e,
            })?;
        Ok::<_, polydev_net::NetError>(s)
    })
    .await
    .map_err(ApiError::internal)?
    .and_then(|s| {
        TcpStream::from_std(s).map_err(|e| polydev_net::NetError::Sys {
            what: "adopting the VNC socket".into(),
            source: e,
        })
    })
    .map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "vnc_unreachable",
            format!("the browser VM's VNC server did not answer: {e}"),
        )
    })?;
    let read_only = caller.read_only();
    let rt = live.rt().clone();
    tracing::info!(session_id = %id, vm_id = %vm_id, read_only, "VNC proxy connected");
    Ok(ws
        .protocols(["binary"])
        .max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            let stop = session_gone(rt, id.clone(), vm_id);
            let r = bridge(socket, tcp, read_only, stop).await;
            tracing::info!(session_id = %id, read_only, dropped = r.dropped, reason = %r.reason, "VNC proxy closed");
        }))
}

/// Resolves when the session has ended or its VM is no longer running
/// (checked every 2 s): a VM that vanished sends no FIN, so the proxy must
/// not wait for one.
pub async fn session_gone(rt: Arc<crate::runtime::Runtime>, session_id: String, vm_id: String) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = rt.store().get_auth_session(&session_id).await;
        let v = rt.store().get_vm(&vm_id).await;
        match (s, v) {
            (Ok(Some(s)), Ok(Some(v)))
                if !s.status.is_terminal() && v.status == VmStatus::Running => {}
            (Err(_), _) | (_, Err(_)) => {}
            _ => return,
        }
    }
}

/// How a proxied connection ended.
#[derive(Debug)]
pub struct BridgeEnd {
    /// Why.
    pub reason: String,
    /// Client messages dropped by the read-only filter.
    pub dropped: u64,
}

/// Pumps bytes between a viewer's WebSocket and the VNC server until either
/// side closes, the filter refuses a message, or `stop` resolves.
pub async fn bridge(
    mut ws: WebSocket,
    tcp: TcpStream,
    read_only: bool,
    stop: impl std::future::Future<Output = ()>,
) -> BridgeEnd {
    let (mut rd, mut wr) = tcp.into_split();
    let mut filter = read_only.then(super::rfb::ReadOnlyFilter::new);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(4096);
    tokio::pin!(stop);
    let reason = loop {
        tokio::select! {
            _ = &mut stop => break "the session ended".to_string(),
            n = rd.read(&mut buf) => match n {
                Ok(0) => break "the VNC server closed the connection".into(),
                Ok(n) => {
                    if let Err(e) = ws.send(Message::Binary(buf[..n].to_vec().into())).await {
                        break format!("viewer gone: {e}");
                    }
                }
                Err(e) => break format!("reading from the VNC server: {e}"),
            },
            m = ws.recv() => {
                let data = match m {
                    None | Some(Ok(Message::Close(_))) => break "the viewer closed the connection".into(),
                    Some(Err(e)) => break format!("viewer connection failed: {e}"),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(_)) => continue,
                };
                let fwd: &[u8] = match filter.as_mut() {
                    None => &data,
                    Some(f) => {
                        out.clear();
                        if let Err(e) = f.feed(&data, &mut out) {
                            break format!("read-only filter: {e}");
                        }
                        &out
                    }
                };
                if !fwd.is_empty() {
                    if let Err(e) = wr.write_all(fwd).await {
                        break format!("writing to the VNC server: {e}");
                    }
                }
            }
        }
    };
    let _ = wr.shutdown().await;
    let _ = ws.send(Message::Close(None)).await;
    BridgeEnd {
        reason,
        dropped: filter.map(|f| f.dropped()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::rfb::tests as m;

    #[test]
    fn static_paths_cannot_leave_the_directory() {
        let dir = tempfile_dir();
        let root = dir.join("novnc");
        std::fs::create_dir_all(root.join("core")).unwrap();
        std::fs::write(root.join("vnc.html"), "<html>").unwrap();
        std::fs::write(root.join("core/rfb.js"), "export default 1").unwrap();
        std::fs::write(dir.join("secret.txt"), "no").unwrap();
        std::os::unix::fs::symlink(dir.join("secret.txt"), root.join("out.txt")).unwrap();
        assert!(resolve_static(&root, "vnc.html").is_some());
        assert!(resolve_static(&root, "core/rfb.js").is_some());
        for bad in [
            "../secret.txt",
            "core/../../secret.txt",
            "/etc/passwd",
            "out.txt",
            "core",
            "",
            ".hidden",
            "core\\..\\..\\secret.txt",
            "nope.js",
        ] {
            assert_eq!(resolve_static(&root, bad), None, "{bad}");
        }
        assert_eq!(
            content_type(std::path::Path::new("a/b.js")),
            "text/javascript; charset=utf-8"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "polydev-novnc-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn ws_path_is_encoded_for_novnc() {
        let p = url_encode(&ws_path("as_1", "pdv_a.b"));
        assert_eq!(p, "api%2Flive%2Fas_1%2Fvnc%3Ftoken%3Dpdv_a.b");
    }

    /// A fake VNC server on loopback: sends a banner, then records what
    /// reaches it until the proxy closes.
    async fn fake_vnc() -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"RFB 003.008\n").await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
            got
        });
        (addr, h)
    }

    /// The real bridge behind a real WebSocket (axum + tungstenite), to a
    /// fake VNC server: returns what the server received.
    async fn through_proxy(read_only: bool, msgs: Vec<Vec<u8>>) -> (Vec<u8>, bool) {
        use tokio_tungstenite::tungstenite::Message as T;
        let (vnc, server) = fake_vnc().await;
        let app = axum::Router::new().route(
            "/ws",
            axum::routing::get(move |ws: WebSocketUpgrade| async move {
                let tcp = TcpStream::connect(vnc).await.unwrap();
                ws.protocols(["binary"]).on_upgrade(move |s| async move {
                    bridge(s, tcp, read_only, std::future::pending()).await;
                })
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{a}/ws"),
            )
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("binary"));
        let (mut c, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(
            resp.headers().get("sec-websocket-protocol").unwrap(),
            "binary"
        );
        use futures_util::{SinkExt, StreamExt};
        let banner = loop {
            match c.next().await {
                Some(Ok(T::Binary(b))) => break b.to_vec(),
                Some(Ok(_)) => continue,
                other => panic!("no banner: {other:?}"),
            }
        };
        assert_eq!(banner, b"RFB 003.008\n");
        for m in msgs {
            if c.send(T::Binary(m.into())).await.is_err() {
                break;
            }
        }
        // Closed by the proxy (filter refusal), or still open.
        let closed_by_proxy = matches!(
            tokio::time::timeout(Duration::from_millis(500), c.next()).await,
            Ok(None | Some(Ok(T::Close(_))) | Some(Err(_)))
        );
        let _ = c.close(None).await;
        let got = server.await.unwrap();
        (got, closed_by_proxy)
    }

    #[tokio::test]
    async fn read_only_proxy_drops_input_and_keeps_the_rest() {
        let mut hs = m::HANDSHAKE.to_vec();
        hs.extend(m::set_pixel_format());
        let msgs = vec![
            hs,
            m::set_encodings(&[0, 7]),
            // A pointer event split over two WebSocket messages.
            m::pointer(1, 300, 200)[..3].to_vec(),
            [m::pointer(1, 300, 200)[3..].to_vec(), m::fb_request()].concat(),
            m::key(true),
            m::cut_text(b"stolen", false),
            m::fb_request(),
        ];
        let (got, closed) = through_proxy(true, msgs).await;
        let mut want = b"RFB 003.008\n\x01\x01".to_vec();
        want.extend(m::set_pixel_format());
        want.extend(m::set_encodings(&[0, 7]));
        want.extend(m::fb_request());
        want.extend(m::fb_request());
        assert_eq!(got, want);
        assert!(!closed);
    }

    #[tokio::test]
    async fn read_write_proxy_passes_everything() {
        let mut all = m::HANDSHAKE.to_vec();
        all.extend(m::pointer(1, 300, 200));
        all.extend(m::key(true));
        let (got, _) = through_proxy(false, vec![all.clone()]).await;
        assert_eq!(got, all);
    }

    #[tokio::test]
    async fn read_only_proxy_closes_on_unknown_messages() {
        let mut hs = m::HANDSHAKE.to_vec();
        hs.extend(m::fb_request());
        let (got, closed) =
            through_proxy(true, vec![hs, vec![42, 0, 0, 0], m::pointer(1, 1, 1)]).await;
        let mut want = b"RFB 003.008\n\x01\x01".to_vec();
        want.extend(m::fb_request());
        assert_eq!(got, want);
        assert!(closed, "the proxy closed the viewer's connection");
    }
}
