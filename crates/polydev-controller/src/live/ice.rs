//! `GET /api/webrtc/ice-servers`: the STUN and TURN servers a viewer's
//! peer connection may use. TURN credentials are minted per session in the
//! TURN REST scheme that coturn implements (`use-auth-secret` +
//! `static-auth-secret`): username `<expiry unix seconds>:<session id>`,
//! credential base64(HMAC-SHA1(shared secret, username)). There is no static
//! TURN password; the shared secret never leaves the controller.

use super::access;
use super::Live;
use crate::config::LiveConfig;
use crate::error::ApiError;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use std::sync::Arc;

/// TURN REST credentials: (username, credential).
pub fn turn_credentials(secret: &str, session_id: &str, expires_unix_s: u64) -> (String, String) {
    let username = format!("{expires_unix_s}:{session_id}");
    let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    m.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
    (username, credential)
}

/// When TURN credentials handed to `caller` at `now_unix_s` expire (Unix
/// seconds): the configured life, cut to what is left of a view token; none
/// for a read-only token, which cannot open a WebRTC session anyway.
pub fn turn_expiry(cfg: &LiveConfig, caller: &access::Caller, now_unix_s: u64) -> Option<u64> {
    let configured = now_unix_s + cfg.turn_ttl.as_secs();
    match caller {
        access::Caller::ApiKey { .. } => Some(configured),
        access::Caller::Viewer(c) if c.read_only => None,
        access::Caller::Viewer(c) => {
            let token_end = u64::try_from(c.expires_at / 1000).unwrap_or(0);
            (token_end > now_unix_s).then(|| configured.min(token_end))
        }
    }
}

/// The `iceServers` list for a session: STUN, and TURN with credentials
/// that expire at `turn_until` (none without it).
pub fn ice_servers(
    cfg: &LiveConfig,
    session_id: &str,
    turn_until: Option<u64>,
) -> serde_json::Value {
    let mut v = Vec::new();
    if !cfg.stun_urls.is_empty() {
        v.push(serde_json::json!({ "urls": cfg.stun_urls }));
    }
    if let (false, Some(secret), Some(until)) =
        (cfg.turn_urls.is_empty(), &cfg.turn_secret, turn_until)
    {
        let (username, credential) = turn_credentials(secret.expose(), session_id, until);
        v.push(serde_json::json!({
            "urls": cfg.turn_urls,
            "username": username,
            "credential": credential,
        }));
    }
    serde_json::Value::Array(v)
}

/// Query of `GET /api/webrtc/ice-servers`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceQuery {
    /// The session (needed with an API key; a view token names its own).
    session_id: Option<String>,
    /// A view token, when not sent as `Authorization: Bearer`.
    token: Option<String>,
}

/// `GET /api/webrtc/ice-servers[?sessionId=]` (API key or view token).
pub async fn ice_servers_handler(
    live: &Live,
    headers: &HeaderMap,
    q: IceQuery,
) -> Result<Response, ApiError> {
    let caller = access::caller(live, headers, q.token.as_deref()).await?;
    let session_id =
        match (&caller, q.session_id) {
            (access::Caller::Viewer(c), _) => c.session_id.clone(),
            (_, Some(s)) => s,
            (_, None) => return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "session_required",
                "sessionId is required with an API key: TURN credentials are minted per session",
            )),
        };
    let s = access::session_for(live, &caller, &session_id).await?;
    if s.status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_ended",
            format!("session {session_id} has ended ({})", s.status),
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut r = Json(serde_json::json!({
        "success": true,
        "iceServers": ice_servers(live.cfg(), &session_id, turn_expiry(live.cfg(), &caller, now)),
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// The route handler.
pub async fn ice_servers_route(
    State(live): State<Arc<Live>>,
    headers: HeaderMap,
    q: Result<Query<IceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    ice_servers_handler(&live, &headers, q).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn turn_rest_credentials_match_an_independent_vector() {
        // printf '%s' '1700000000:as_0123456789abcdef01234567' \
        //   | openssl dgst -sha1 -hmac 'north-wind-turn-secret' -binary | base64
        let (u, c) = turn_credentials(
            "north-wind-turn-secret",
            "as_0123456789abcdef01234567",
            1_700_000_000,
        );
        assert_eq!(u, "1700000000:as_0123456789abcdef01234567");
        assert_eq!(c, "xI0Halr3/S4Pc2eSH39X2jxqXks=");
    }

    #[test]
    fn turn_rest_credentials_match_openssl_when_present() {
        let Ok(out) = std::process::Command::new("sh")
            .args([
                "-c",
                "printf '%s' '1800000000:as_x' | openssl dgst -sha1 -hmac 'k2' -binary | base64",
            ])
            .output()
        else {
            return;
        };
        if !out.status.success() || out.stdout.is_empty() {
            eprintln!("SKIPPED: no openssl");
            return;
        }
        let (_, c) = turn_credentials("k2", "as_x", 1_800_000_000);
        assert_eq!(c, String::from_utf8_lossy(&out.stdout).trim());
    }

    #[test]
    fn servers_from_config() {
        let mut cfg = LiveConfig::default();
        assert_eq!(ice_servers(&cfg, "as_1", Some(160)), serde_json::json!([]));
        cfg.stun_urls = vec!["stun:stun.example:3478".into()];
        cfg.turn_urls = vec!["turn:turn.example:3478?transport=udp".into()];
        cfg.turn_secret = Some(Secret::new("s".into()));
        cfg.turn_ttl = std::time::Duration::from_secs(60);
        let v = ice_servers(&cfg, "as_1", Some(160));
        assert_eq!(
            v[0],
            serde_json::json!({"urls": ["stun:stun.example:3478"]})
        );
        assert_eq!(v[1]["urls"][0], "turn:turn.example:3478?transport=udp");
        assert_eq!(v[1]["username"], "160:as_1");
        assert_eq!(v[1]["credential"], turn_credentials("s", "as_1", 160).1);
        assert!(
            !v.to_string().contains("\"s\""),
            "the secret is not handed out"
        );
        assert_eq!(
            ice_servers(&cfg, "as_1", None).as_array().unwrap().len(),
            1,
            "STUN only without a TURN expiry"
        );
    }

    fn viewer(expires_unix_s: i64, read_only: bool) -> access::Caller {
        access::Caller::Viewer(crate::live::token::Claims {
            user_id: "u".into(),
            session_id: "as_1".into(),
            expires_at: expires_unix_s * 1000,
            read_only,
        })
    }

    #[test]
    fn turn_lives_no_longer_than_the_token_and_not_for_read_only() {
        let mut cfg = LiveConfig::default();
        cfg.turn_ttl = std::time::Duration::from_secs(3600);
        let now = 1_000_000;
        let key = access::Caller::ApiKey {
            key_id: "k".into(),
            who: crate::auth::Caller {
                key_id: Some("k".into()),
                user_id: None,
                admin: true,
            },
        };
        assert_eq!(turn_expiry(&cfg, &key, now), Some(now + 3600));
        assert_eq!(
            turn_expiry(&cfg, &viewer(now as i64 + 300, false), now),
            Some(now + 300),
            "cut to the token's remaining 5 minutes"
        );
        assert_eq!(
            turn_expiry(&cfg, &viewer(now as i64 + 7200, false), now),
            Some(now + 3600)
        );
        assert_eq!(
            turn_expiry(&cfg, &viewer(now as i64 + 300, true), now),
            None
        );
        assert_eq!(turn_expiry(&cfg, &viewer(now as i64 - 1, false), now), None);
    }
}
