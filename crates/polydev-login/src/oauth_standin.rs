//! A local OAuth 2.0 authorization server standing in for the providers'
//! (RFC 6749 authorization code grant with RFC 7636 PKCE, S256 only). It is
//! a test double: no real accounts, no passwords, no signatures.
//!
//! - `GET /cai/oauth/authorize`, `/oauth/authorize`, `/o/oauth2/v2/auth`
//!   (the providers' authorize paths): a sign-in page with a username field
//!   and "Approve"/"Deny" buttons, a form `POST /approve`;
//! - `POST /approve`: `302` to `redirect_uri?code=..&state=..`
//!   (or `error=access_denied`);
//! - `POST /v1/oauth/token`, `/oauth/token`, `/token` (form or JSON body):
//!   checks `code` (single use, 10 minutes), `client_id`, `redirect_uri`
//!   and `code_verifier`; errors are RFC 6749 §5.2 JSON;
//! - `GET /oauth/code/callback` and `/authcode`: the paste-code pages
//!   (claude shows `code#state`, gemini the code);
//! - `GET /health`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How long an authorization code stays valid.
pub const CODE_LIFETIME: Duration = Duration::from_secs(600);
/// Lifetime of issued access tokens, in seconds.
pub const TOKEN_LIFETIME_S: u64 = 3600;

#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    code_challenge: Option<String>,
    scope: String,
    username: String,
    issued: Instant,
}

#[derive(Default)]
struct Inner {
    codes: HashMap<String, Grant>,
    refresh: HashMap<String, Grant>,
}

#[derive(Clone, Default)]
struct AppState(Arc<Mutex<Inner>>);

/// The stand-in's routes.
pub fn router() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/cai/oauth/authorize", get(authorize))
        .route("/oauth/authorize", get(authorize))
        .route("/o/oauth2/v2/auth", get(authorize))
        .route("/approve", post(approve))
        .route("/v1/oauth/token", post(token))
        .route("/oauth/token", post(token))
        .route("/token", post(token))
        .route("/oauth/code/callback", get(paste_page_claude))
        .route("/authcode", get(paste_page_gemini))
        .with_state(AppState::default())
}

/// Serves the stand-in on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router()).await
}

fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// `BASE64URL(SHA256(verifier))`, RFC 7636 §4.2.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><title>Sign-in error</title><h1>Sign-in error</h1><p id=\"error\">{}</p>",
        escape(message)
    );
    (status, Html(body)).into_response()
}

fn with_params(uri: &str, params: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", q.finish())
}

fn valid_redirect(uri: &str) -> bool {
    crate::url::Url::parse(uri).is_some() && !uri.contains('#')
}

async fn authorize(Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    // RFC 6749 §4.1.2.1: a bad client or redirect URI is shown, not redirected.
    if get("client_id").is_empty() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request: client_id is missing",
        );
    }
    if !valid_redirect(get("redirect_uri")) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request: redirect_uri is missing or not an absolute http(s) URL",
        );
    }
    let fail = |error: &str, description: &str| {
        let mut p = vec![("error", error), ("error_description", description)];
        if !get("state").is_empty() {
            p.push(("state", get("state")));
        }
        Redirect::to(&with_params(get("redirect_uri"), &p)).into_response()
    };
    if get("response_type") != "code" {
        return fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    if !get("code_challenge").is_empty() && get("code_challenge_method") != "S256" {
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    let hidden: String = [
        "client_id",
        "redirect_uri",
        "state",
        "scope",
        "code_challenge",
        "code_challenge_method",
    ]
    .iter()
    .map(|k| {
        format!(
            "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
            escape(get(k))
        )
    })
    .collect();
    let body = format!(
        "<!doctype html><html><head><title>Sign in</title></head><body>\
         <h1>Sign in (polydev OAuth stand-in)</h1>\
         <p>Client <code id=\"client\">{client}</code> asks for <code id=\"scope\">{scope}</code>.</p>\
         <form method=\"post\" action=\"/approve\" id=\"approve-form\">{hidden}\
         <label>Username <input type=\"text\" name=\"username\" id=\"username\" value=\"\" autofocus></label>\
         <button type=\"submit\" name=\"action\" value=\"approve\" id=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"action\" value=\"deny\" id=\"deny\">Deny</button>\
         </form></body></html>",
        client = escape(get("client_id")),
        scope = escape(get("scope")),
    );
    Html(body).into_response()
}

async fn approve(State(st): State<AppState>, Form(f): Form<HashMap<String, String>>) -> Response {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    if get("client_id").is_empty() || !valid_redirect(get("redirect_uri")) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "invalid_request: client_id or redirect_uri",
        );
    }
    let mut params = Vec::new();
    let code;
    if get("action") == "deny" {
        params.push(("error", "access_denied"));
    } else {
        let username = get("username").trim();
        if username.is_empty() {
            return error_page(StatusCode::BAD_REQUEST, "enter a username");
        }
        code = random_token(24);
        let grant = Grant {
            client_id: get("client_id").into(),
            redirect_uri: get("redirect_uri").into(),
            code_challenge: Some(get("code_challenge").to_string()).filter(|c| !c.is_empty()),
            scope: get("scope").into(),
            username: username.into(),
            issued: Instant::now(),
        };
        st.0.lock()
            .unwrap_or_else(|e| e.into_inner())
            .codes
            .insert(code.clone(), grant);
        params.push(("code", &code));
    }
    if !get("state").is_empty() {
        params.push(("state", get("state")));
    }
    Redirect::to(&with_params(get("redirect_uri"), &params)).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Option<HashMap<String, String>> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        let v: Value = serde_json::from_slice(body).ok()?;
        Some(
            v.as_object()?
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect(),
        )
    } else {
        Some(form_urlencoded::parse(body).into_owned().collect())
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn id_token(grant: &Grant, account_id: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"standin"}"#);
    let payload = json!({
        "iss": "polydev-oauth-standin",
        "sub": format!("user-{}", grant.username),
        "aud": grant.client_id,
        "email": format!("{}@example.test", grant.username),
        "iat": now_s(),
        "exp": now_s() + TOKEN_LIFETIME_S,
        "https://api.openai.com/auth": {"chatgpt_account_id": account_id, "chatgpt_plan_type": "plus"},
    });
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    format!(
        "{header}.{payload}.{}",
        URL_SAFE_NO_PAD.encode(b"standin-unsigned")
    )
}

fn issue(st: &AppState, grant: Grant) -> Response {
    let refresh_token = format!("rt-{}", random_token(32));
    let account_id = format!(
        "acct-{}",
        hex_of(&Sha256::digest(grant.username.as_bytes())[..8])
    );
    let body = json!({
        "access_token": format!("at-{}", random_token(32)),
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_S,
        "refresh_token": refresh_token,
        "scope": grant.scope,
        "id_token": id_token(&grant, &account_id),
        "account": {"uuid": account_id, "email_address": format!("{}@example.test", grant.username)},
    });
    st.0.lock()
        .unwrap_or_else(|e| e.into_inner())
        .refresh
        .insert(refresh_token, grant);
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn token(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(p) = parse_body(&headers, &body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "body is neither a form nor a JSON object",
        );
    };
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    match get("grant_type") {
        "authorization_code" => {}
        "refresh_token" => {
            let grant =
                st.0.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .refresh
                    .remove(get("refresh_token"));
            return match grant {
                Some(g) if g.client_id == get("client_id") => issue(&st, g),
                _ => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token is invalid or was already used",
                ),
            };
        }
        "" => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
            )
        }
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type {other:?} is not supported"),
            )
        }
    }
    if get("code").is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code is missing",
        );
    }
    if get("client_id").is_empty() {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client_id is missing",
        );
    }
    // Single use: the code is gone whatever the outcome.
    let grant =
        st.0.lock()
            .unwrap_or_else(|e| e.into_inner())
            .codes
            .remove(get("code"));
    let Some(grant) = grant.filter(|g| g.issued.elapsed() < CODE_LIFETIME) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "authorization code is invalid, expired or already used",
        );
    };
    if grant.client_id != get("client_id") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "code was issued to another client",
        );
    }
    if grant.redirect_uri != get("redirect_uri") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri does not match the authorization request",
        );
    }
    if let Some(challenge) = &grant.code_challenge {
        let verifier = get("code_verifier");
        let well_formed = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !well_formed {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "code_verifier is missing or malformed",
            );
        }
        if &s256(verifier) != challenge {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "code_verifier does not match code_challenge",
            );
        }
    }
    issue(&st, grant)
}

fn paste_page(shown: &str) -> Response {
    Html(format!(
        "<!doctype html><title>Authorization code</title><h1>Paste this code into the CLI</h1>\
         <pre id=\"code\">{}</pre>",
        escape(shown)
    ))
    .into_response()
}

async fn paste_page_claude(Query(q): Query<HashMap<String, String>>) -> Response {
    match (q.get("code"), q.get("state")) {
        (Some(c), Some(s)) => paste_page(&format!("{c}#{s}")),
        _ => error_page(
            StatusCode::BAD_REQUEST,
            q.get("error").map(String::as_str).unwrap_or("no code"),
        ),
    }
}

async fn paste_page_gemini(Query(q): Query<HashMap<String, String>>) -> Response {
    match q.get("code") {
        Some(c) => paste_page(c),
        None => error_page(
            StatusCode::BAD_REQUEST,
            q.get("error").map(String::as_str).unwrap_or("no code"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::s256;

    #[test]
    fn s256_is_base64url_sha256() {
        // SHA-256("abc") = ba7816bf...f20015ad (FIPS 180-2), base64url without padding.
        assert_eq!(s256("abc"), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    }
}
