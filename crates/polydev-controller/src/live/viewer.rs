//! `GET /viewer/:sessionId?token=...`: the viewer page (`viewer.html`,
//! compiled in; no CDN). It tries WebRTC first and falls back to noVNC
//! (the files of `/novnc/`) when no frame arrives in time; `#mode` says
//! which it uses. The page gets its settings in a JSON block and runs
//! under a strict Content-Security-Policy with a per-response nonce.

use super::access;
use super::Live;
use crate::error::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

const PAGE: &str = include_str!("viewer.html");

/// Query of the viewer page.
#[derive(Debug, serde::Deserialize)]
pub struct ViewerQuery {
    token: Option<String>,
}

/// JSON safe to place inside a `<script type="application/json">` block.
pub fn script_json(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// `GET /viewer/:id?token=`.
pub async fn page(
    State(live): State<Arc<Live>>,
    Path(id): Path<String>,
    Query(q): Query<ViewerQuery>,
) -> Result<Response, ApiError> {
    let token = q
        .token
        .as_deref()
        .filter(|t| t.starts_with(super::token::PREFIX))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the viewer needs a view token (?token=, from GET /api/auth/session/:id/novnc)",
            )
        })?;
    let caller = access::caller(&live, &HeaderMap::new(), Some(token)).await?;
    let s = access::session_for(&live, &caller, &id).await?;
    if s.status.is_terminal() {
        return Err(access::live_now(&s).unwrap_err());
    }
    let access::Caller::Viewer(claims) = &caller else {
        unreachable!("a pdv_ token is a view token")
    };
    let nonce = {
        use rand::RngCore;
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        hex::encode(b)
    };
    let cfg = serde_json::json!({
        "sessionId": id,
        "token": token,
        "readOnly": claims.read_only,
        "expiresAt": claims.expires_at,
        "webrtcTimeoutMs": live.cfg().webrtc_timeout.as_millis() as u64,
        "vncPath": format!("/api/live/{id}/vnc"),
    });
    let html = PAGE
        .replace("{{NONCE}}", &nonce)
        .replace("{{CONFIG}}", &script_json(&cfg));
    let mut ancestors = vec!["'self'".to_string()];
    ancestors.extend(
        live.cfg()
            .allowed_origins
            .iter()
            .filter_map(|o| access::origin_of(o)),
    );
    let csp = format!(
        "default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; \
         img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; \
         frame-ancestors {}; base-uri 'none'; form-action 'none'",
        ancestors.join(" ")
    );
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_cannot_close_its_script_block() {
        let s = script_json(&serde_json::json!({"x": "</script><script>alert(1)</script>&"}));
        assert!(
            !s.contains('<') && !s.contains('>') && !s.contains('&'),
            "{s}"
        );
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["x"], "</script><script>alert(1)</script>&");
    }

    #[test]
    fn page_has_its_placeholders_and_no_remote_resources() {
        assert!(PAGE.contains("{{NONCE}}") && PAGE.contains("{{CONFIG}}"));
        assert!(PAGE.contains("id=\"mode\""));
        assert!(PAGE.contains("/novnc/core/rfb.js"));
        for bad in ["http://", "https://", "//cdn", "unpkg", "jsdelivr"] {
            assert!(!PAGE.contains(bad), "the viewer must not load {bad}");
        }
    }
}
