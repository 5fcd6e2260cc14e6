//! Who may use the live view: the operator's API key, or a session's view
//! token; which page origins may open the VNC WebSocket or frame the viewer;
//! and the base URL the controller hands out.

use super::token::{Claims, TokenError};
use super::Live;
use crate::error::ApiError;
use axum::http::{header, HeaderMap, StatusCode};
use polydev_core::auth::SessionStatus;
use polydev_store::AuthSession;

/// An authenticated live-view caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An API key (an operator's acts for every user, a user's for one).
    ApiKey {
        /// The key's id.
        key_id: String,
        /// Whom it acts for.
        who: crate::auth::Caller,
    },
    /// A view token: one session, one user, until it expires.
    Viewer(Claims),
}

impl Caller {
    /// Whether the caller may only watch.
    pub fn read_only(&self) -> bool {
        matches!(self, Caller::Viewer(c) if c.read_only)
    }
}

/// The project's error for a refused token: 401 when it proves nothing,
/// 403 when it is valid for something else.
pub fn token_error(e: TokenError) -> ApiError {
    match e {
        TokenError::Expired(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "token_expired", e.to_string())
        }
        e if e.is_unauthenticated() => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string())
        }
        e => ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
    }
}

use crate::auth::bearer;

/// Authenticates a request by `Authorization: Bearer <API key | view token>`
/// or a `token` query parameter (a view token).
pub async fn caller(
    live: &Live,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Caller, ApiError> {
    let presented = match bearer(headers)? {
        Some(b) => b,
        None => query_token.filter(|t| !t.is_empty()).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing credentials: an API key (Authorization: Bearer) or a view token (?token=)",
            )
        })?,
    };
    if presented.starts_with(super::token::PREFIX) {
        return live
            .verify(presented)
            .map(Caller::Viewer)
            .map_err(token_error);
    }
    let who = crate::auth::check_key(&live.app, presented).await?;
    Ok(Caller::ApiKey {
        key_id: who.label(),
        who,
    })
}

/// The session `id`, if `caller` may act on it (a view token only on its own
/// session and user).
pub async fn session_for(live: &Live, caller: &Caller, id: &str) -> Result<AuthSession, ApiError> {
    if let Caller::Viewer(c) = caller {
        if c.session_id != id {
            return Err(token_error(TokenError::OtherSession));
        }
    }
    let s = live
        .app
        .runtime
        .store()
        .get_auth_session(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no sign-in session {id}")))?;
    match caller {
        Caller::Viewer(c) => c.check_for(id, &s.user_id).map_err(token_error)?,
        Caller::ApiKey { who, .. } => {
            who.owns(&s.user_id, || format!("no sign-in session {id}"))?
        }
    }
    Ok(s)
}

/// Whether a session's browser VM can be watched now (`ready` or
/// `awaiting_user_auth`); otherwise a 409 saying why.
pub fn live_now(s: &AuthSession) -> Result<(), ApiError> {
    match s.status {
        SessionStatus::Ready | SessionStatus::AwaitingUserAuth => Ok(()),
        st if st.is_terminal() => Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_ended",
            format!("session {} has ended ({st})", s.session_id),
        )),
        st => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_ready",
            format!(
                "session {} is {st}: its browser VM is not ready yet",
                s.session_id
            ),
        )),
    }
}

/// `scheme://host[:port]` of a URL (lower-cased), or `None`.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    Some(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    ))
}

/// The controller's base URL for links it hands out: `POLYDEV_PUBLIC_URL`,
/// else `http://<Host header>`.
pub fn base_url(live: &Live, headers: &HeaderMap) -> String {
    base_url_in(live.cfg(), live.app.runtime.config().listen, headers)
}

/// [`base_url`] from the live-view settings and the listen address.
pub fn base_url_in(
    cfg: &crate::config::LiveConfig,
    listen: std::net::SocketAddr,
    headers: &HeaderMap,
) -> String {
    if let Some(u) = &cfg.public_url {
        return u.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
        .map(str::to_string)
        .unwrap_or_else(|| listen.to_string());
    format!("http://{host}")
}

/// The origins a page may have to use the live view: the controller's own
/// (`POLYDEV_PUBLIC_URL`, or `http(s)://<Host>`) and `POLYDEV_ALLOWED_ORIGINS`.
pub fn allowed_origins(live: &Live, headers: &HeaderMap) -> Vec<String> {
    allowed_origins_in(live.cfg(), headers)
}

/// [`allowed_origins`] from the live-view settings alone.
pub fn allowed_origins_in(cfg: &crate::config::LiveConfig, headers: &HeaderMap) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    match cfg.public_url.as_deref().and_then(origin_of) {
        Some(o) => v.push(o),
        None => {
            if let Some(h) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
                let h = h.to_ascii_lowercase();
                v.push(format!("http://{h}"));
                v.push(format!("https://{h}"));
            }
        }
    }
    v.extend(cfg.allowed_origins.iter().filter_map(|o| origin_of(o)));
    v
}

/// Refuses (403) a browser request from a page of another origin. A request
/// without `Origin` comes from no web page (browsers always send it on
/// WebSocket handshakes) and is let through: the token still decides.
pub fn check_origin(live: &Live, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(o) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let o = o.to_str().unwrap_or("").trim().to_ascii_lowercase();
    if allowed_origins(live, headers).contains(&o) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!("origin {o:?} may not open the live view (see POLYDEV_ALLOWED_ORIGINS)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin_of("https://App.Example.com:8443/x?y").as_deref(),
            Some("https://app.example.com:8443")
        );
        assert_eq!(origin_of("http://h").as_deref(), Some("http://h"));
        assert_eq!(origin_of("nope"), None);
        assert_eq!(origin_of("http:///x"), None);
    }
}
