//! The interactive terminal into a user's CLI VM.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /api/users/{user}/terminal/token` | API key | mints a terminal token (`?ttlSecs=`, at most 10 min): `{token, expiresAt, url, websocketPath}` |
//! | `GET /api/users/{user}/terminal?cols=&rows=` | API key (`Authorization: Bearer`) or `?token=` a terminal token | the WebSocket |
//! | `GET /terminal/{user}?token=` | a terminal token | the page (xterm.js) |
//! | `GET /assets/xterm/{file}` | none | the vendored xterm.js files (`assets/xterm/README.md`) |
//!
//! Every refusal of the WebSocket comes before the upgrade, as
//! `{"error":{"code","message"}}`: credentials (401), a token for another
//! user or a page of another origin (403), a bad user id or size (400),
//! nothing to boot (503). After the upgrade the user's CLI VM is found,
//! resumed or booted ([`crate::cli_vm::CliVms::ensure`], a text frame
//! `{"type":"status",...}` meanwhile) and held for the whole connection, and
//! frames are relayed to the agent's `GET /terminal` inside the VM's
//! namespace ([`relay`]): binary frames are terminal bytes, text frames JSON
//! control (`{"type":"resize","cols":C,"rows":R}` from the page;
//! `status`/`error` to it). A token is checked when the connection opens; an
//! open connection ends (close code 1008, the reason) when the API key that
//! opened it is revoked or the user's account is disabled.
//!
//! Modules: [`token`] (terminal tokens), [`relay`] (the agent side and the
//! pump), [`page`] (the page and the vendored files).

pub mod page;
pub mod relay;
pub mod token;

use crate::error::ApiError;
use crate::live::{access, Live};
use crate::AppState;
use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use polydev_core::vm::{now_ms, VmType};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Largest WebSocket message accepted from the page (or the agent).
pub const MAX_MESSAGE: usize = 64 << 10;
/// Largest number of columns or rows.
pub const MAX_DIM: u16 = 1000;

/// Shared state of the terminal handlers.
pub struct Terminals {
    /// The rest of the application.
    pub app: AppState,
    /// For the allowed origins and the base URL (the live view's rules).
    pub live: Live,
    tokens: token::TokenKey,
}

impl Terminals {
    /// The terminal routes' state; the token key is derived from the vault's
    /// current master key.
    pub fn new(app: AppState) -> Terminals {
        let tokens = token::TokenKey::from_keyring(app.auth.vault());
        let live = Live::new(app.clone());
        Terminals { app, live, tokens }
    }

    /// Checks a terminal token for `user_id` now.
    pub fn verify(&self, t: &str, user_id: &str) -> Result<token::Claims, ApiError> {
        self.tokens
            .verify(t, user_id, now_ms())
            .map_err(token_error)
    }
}

/// The routes, merged into the application by `crate::app`.
pub fn routes(state: AppState) -> Router<AppState> {
    let t = Arc::new(Terminals::new(state.clone()));
    let with_api_key = Router::new()
        .route("/api/users/{user}/terminal/token", post(mint))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::admission::limit_changes,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::auth::require_api_key,
        ));
    Router::new()
        .route("/api/users/{user}/terminal", get(socket))
        .route("/terminal/{user}", get(page::page))
        .route("/assets/xterm/{file}", get(page::asset))
        .merge(with_api_key)
        .with_state(t)
}

/// A refused terminal token: 401 when it proves nothing, 403 when it is
/// valid for another user.
pub fn token_error(e: token::TokenError) -> ApiError {
    match e {
        token::TokenError::Expired(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "token_expired", e.to_string())
        }
        token::TokenError::OtherUser => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        }
        _ => ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string()),
    }
}

use crate::auth::{bearer, unauthorized};

/// What opened a terminal, re-checked while it stays open.
#[derive(Clone)]
pub enum Opener {
    /// An API key (its secret, kept only in memory to look it up again).
    Key(String),
    /// A terminal token (checked once; the account is still watched).
    Token,
}

/// Who may open `user_id`'s terminal: an API key or a terminal token for
/// that user in the `Authorization` header, or a terminal token in
/// `?token=` (never an API key: URLs end up in logs).
pub async fn authorize(
    t: &Terminals,
    headers: &HeaderMap,
    query_token: Option<&str>,
    user_id: &str,
) -> Result<Opener, ApiError> {
    let query_token = query_token.filter(|q| !q.is_empty());
    let presented = match (bearer(headers)?, query_token) {
        (Some(b), _) => b,
        (None, Some(q)) if q.starts_with(token::PREFIX) => q,
        (None, Some(_)) => return Err(token_error(token::TokenError::Malformed(
            "?token= takes a terminal token (pdt_…, from POST /api/users/{user}/terminal/token)",
        ))),
        (None, None) => return Err(unauthorized(
            "missing credentials: an API key (Authorization: Bearer) or a terminal token (?token=)",
        )),
    };
    if presented.starts_with(token::PREFIX) {
        return t.verify(presented, user_id).map(|_| Opener::Token);
    }
    if presented.starts_with(crate::live::token::PREFIX) {
        return Err(unauthorized(
            "a view token does not open a terminal: use a terminal token (pdt_…)",
        ));
    }
    crate::auth::check_key(&t.app, presented)
        .await?
        .act_for(user_id)?;
    Ok(Opener::Key(presented.to_string()))
}

/// Query of `POST /api/users/{user}/terminal/token`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintQuery {
    /// A shorter lifetime than the default, in seconds.
    ttl_secs: Option<u64>,
}

/// `POST /api/users/{user}/terminal/token` (API key): a terminal token for
/// the user and the page URL that uses it.
pub async fn mint(
    State(t): State<Arc<Terminals>>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(user): Path<String>,
    q: Result<Query<MintQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    crate::api::validate_user_id(&user)?;
    caller.act_for(&user)?;
    let ttl = match q.ttl_secs {
        Some(0) => return Err(ApiError::bad_request("ttlSecs must be at least 1")),
        Some(s) => Duration::from_secs(s).min(token::DEFAULT_TTL),
        None => token::DEFAULT_TTL,
    };
    let claims = token::Claims {
        user_id: user.clone(),
        expires_at: now_ms() + ttl.as_millis() as i64,
    };
    let tok = t.tokens.mint(&claims);
    tracing::info!(user_id = %user, ttl_s = ttl.as_secs(), "terminal token minted");
    let mut r = Json(serde_json::json!({
        "success": true,
        "userId": user,
        "token": tok,
        "expiresAt": claims.expires_at,
        "url": format!("/terminal/{user}?token={tok}"),
        "websocketPath": format!("/api/users/{user}/terminal?token={tok}"),
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Query of the terminal WebSocket.
#[derive(Debug, Deserialize)]
pub struct SocketQuery {
    /// A terminal token.
    token: Option<String>,
    /// Initial columns (default 80).
    cols: Option<u32>,
    /// Initial rows (default 24).
    rows: Option<u32>,
}

fn dim(what: &str, v: Option<u32>, default: u16) -> Result<u16, ApiError> {
    match v {
        None => Ok(default),
        Some(n) => u16::try_from(n)
            .ok()
            .filter(|d| (1..=MAX_DIM).contains(d))
            .ok_or_else(|| {
                ApiError::bad_request(format!("{what} must be between 1 and {MAX_DIM}, not {n}"))
            }),
    }
}

/// Without a live CLI VM, one must be bootable: 503 before the upgrade
/// when the kernel or image is missing.
async fn bootable(t: &Terminals, user_id: &str) -> Result<(), ApiError> {
    let current = t
        .app
        .cli
        .current(user_id)
        .await
        .map_err(ApiError::internal)?;
    if current.is_none() {
        t.app.runtime.artifacts(Some(VmType::Cli)).map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "artifacts_missing",
                e.to_string(),
            )
        })?;
    }
    Ok(())
}

/// `GET /api/users/{user}/terminal`: the WebSocket.
pub async fn socket(
    State(t): State<Arc<Terminals>>,
    Path(user): Path<String>,
    q: Result<Query<SocketQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    crate::api::validate_user_id(&user)?;
    let opener = authorize(&t, &headers, q.token.as_deref(), &user).await?;
    access::check_origin(&t.live, &headers).map_err(|e| {
        ApiError::new(
            e.status,
            e.code,
            e.message.replace("the live view", "the terminal"),
        )
    })?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            format!("this endpoint is a WebSocket: {}", e.body_text()),
        )
    })?;
    let size = (dim("cols", q.cols, 80)?, dim("rows", q.rows, 24)?);
    bootable(&t, &user).await?;
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| relay::run(t, user, opener, size, socket)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(dim("cols", None, 80).unwrap(), 80);
        assert_eq!(dim("cols", Some(1000), 80).unwrap(), 1000);
        assert_eq!(dim("cols", Some(0), 80).unwrap_err().status, 400);
        assert_eq!(dim("rows", Some(70_000), 24).unwrap_err().status, 400);
    }

    #[test]
    fn token_errors_map_to_statuses() {
        use token::TokenError as E;
        assert_eq!(token_error(E::Expired(3)).status, 401);
        assert_eq!(token_error(E::BadSignature).status, 401);
        assert_eq!(token_error(E::Malformed("x")).status, 401);
        assert_eq!(token_error(E::OtherUser).status, 403);
    }
}
