//! An OpenID Connect provider for tests and benchmarks (there is no real
//! one to reach here). It behaves like one: discovery at
//! `/.well-known/openid-configuration`, a JWKS at `/jwks`, the authorization
//! endpoint `/authorize` (a sign-in form, then a redirect with `code` and
//! `state`), the token endpoint `/token` (client authentication by HTTP
//! Basic or form, the code once, the same `redirect_uri`, PKCE S256) and ID
//! tokens signed RS256 with the `nonce`, `email` and `email_verified`
//! claims; errors as RFC 6749 says (`invalid_grant`, `invalid_client`, …).

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use openidconnect::core::{
    CoreIdToken, CoreIdTokenClaims, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::{
    Audience, EmptyAdditionalClaims, EndUserEmail, IssuerUrl, JsonWebKeyId, Nonce,
    PrivateSigningKey, StandardClaims, SubjectIdentifier,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A person the stand-in knows.
#[derive(Debug, Clone)]
pub struct StandinUser {
    /// What they type on the sign-in form.
    pub username: String,
    /// Their `sub`.
    pub subject: String,
    /// Their `email`.
    pub email: String,
    /// Their `email_verified`.
    pub email_verified: bool,
}

/// The one client the stand-in has registered.
#[derive(Debug, Clone)]
pub struct StandinClient {
    /// `client_id`.
    pub id: String,
    /// `client_secret`.
    pub secret: String,
}

struct Pending {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    user: StandinUser,
    at: Instant,
}

struct Inner {
    issuer: String,
    client: StandinClient,
    users: Vec<StandinUser>,
    key: CoreRsaPrivateSigningKey,
    jwks: serde_json::Value,
    codes: Mutex<HashMap<String, Pending>>,
}

/// A running stand-in.
pub struct OidcStandin {
    issuer: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OidcStandin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OidcStandin {
    /// Serves on `listener`; the issuer is `http://<its address>`.
    pub async fn start(
        listener: tokio::net::TcpListener,
        client: StandinClient,
        users: Vec<StandinUser>,
    ) -> std::io::Result<OidcStandin> {
        let issuer = format!("http://{}", listener.local_addr()?);
        let pem = tokio::task::spawn_blocking(|| {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            let k =
                rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| e.to_string())?;
            k.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
                .map(|p| p.to_string())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
        let key =
            CoreRsaPrivateSigningKey::from_pem(&pem, Some(JsonWebKeyId::new("standin-1".into())))
                .map_err(std::io::Error::other)?;
        let jwks = serde_json::to_value(CoreJsonWebKeySet::new(vec![key.as_verification_key()]))
            .map_err(std::io::Error::other)?;
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            client,
            users,
            key,
            jwks,
            codes: Default::default(),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_route))
            .route("/authorize", get(authorize_form).post(authorize_post))
            .route("/token", axum::routing::post(token))
            .with_state(inner);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(OidcStandin { issuer, task })
    }

    /// The issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

async fn discovery(State(s): State<Arc<Inner>>) -> Json<serde_json::Value> {
    let i = &s.issuer;
    Json(serde_json::json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "email", "email_verified"],
    }))
}

async fn jwks_route(State(s): State<Arc<Inner>>) -> Json<serde_json::Value> {
    Json(s.jwks.clone())
}

#[derive(serde::Deserialize)]
struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scope: Option<String>,
}

fn bad(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Html(format!(
            "<!doctype html><title>Error</title><p id=\"error\">{msg}</p>"
        )),
    )
        .into_response()
}

fn check_authorize(s: &Inner, q: &AuthorizeQuery) -> Result<(), &'static str> {
    if q.client_id.as_deref() != Some(&s.client.id) {
        return Err("unknown client_id");
    }
    let r = q.redirect_uri.as_deref().unwrap_or("");
    if !(r.starts_with("http://") || r.starts_with("https://")) {
        return Err("redirect_uri is missing or not http(s)");
    }
    if q.response_type.as_deref() != Some("code") {
        return Err("response_type must be code");
    }
    if !q
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .any(|x| x == "openid")
    {
        return Err("scope must include openid");
    }
    if q.code_challenge_method.as_deref() != Some("S256") || q.code_challenge.is_none() {
        return Err("PKCE with S256 is required");
    }
    if q.state.as_deref().unwrap_or("").is_empty() {
        return Err("state is required");
    }
    Ok(())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn authorize_form(State(s): State<Arc<Inner>>, Query(q): Query<AuthorizeQuery>) -> Response {
    if let Err(m) = check_authorize(&s, &q) {
        return bad(m);
    }
    let hidden: String = [
        ("response_type", &q.response_type),
        ("client_id", &q.client_id),
        ("redirect_uri", &q.redirect_uri),
        ("state", &q.state),
        ("nonce", &q.nonce),
        ("code_challenge", &q.code_challenge),
        ("code_challenge_method", &q.code_challenge_method),
        ("scope", &q.scope),
    ]
    .iter()
    .filter_map(|(k, v)| {
        v.as_ref()
            .map(|v| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(v)))
    })
    .collect();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Stand-in identity provider</title></head>\
         <body><h1>Sign in to the stand-in identity provider</h1>\
         <form method=\"post\" action=\"/authorize\">{hidden}\
         <label for=\"username\">User name</label> <input id=\"username\" name=\"username\" autofocus autocomplete=\"username\">\
         <button id=\"approve\" type=\"submit\">Sign in</button></form></body></html>"
    ))
    .into_response()
}

#[derive(serde::Deserialize)]
struct AuthorizePost {
    #[serde(flatten)]
    q: AuthorizeQuery,
    username: String,
}

async fn authorize_post(State(s): State<Arc<Inner>>, Form(f): Form<AuthorizePost>) -> Response {
    if let Err(m) = check_authorize(&s, &f.q) {
        return bad(m);
    }
    let Some(user) = s.users.iter().find(|u| u.username == f.username.trim()) else {
        return bad("no such user at this identity provider");
    };
    let code = random_hex(16);
    let redirect = f.q.redirect_uri.clone().unwrap_or_default();
    s.codes.lock().unwrap_or_else(|e| e.into_inner()).insert(
        code.clone(),
        Pending {
            client_id: f.q.client_id.clone().unwrap_or_default(),
            redirect_uri: redirect.clone(),
            challenge: f.q.code_challenge.clone().unwrap_or_default(),
            nonce: f.q.nonce.clone(),
            user: user.clone(),
            at: Instant::now(),
        },
    );
    let sep = if redirect.contains('?') { '&' } else { '?' };
    Redirect::to(&format!(
        "{redirect}{sep}code={code}&state={}",
        pct(f.q.state.as_deref().unwrap_or(""))
    ))
    .into_response()
}

fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Percent-encodes `s` for a URL query or a form body (every byte but
/// RFC 3986's unreserved ones).
pub fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unpct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": code, "error_description": description})),
    )
        .into_response()
}

async fn token(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    use base64::Engine;
    // Client authentication: HTTP Basic (form-encoded id and secret), or
    // the form's client_id and client_secret.
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (unpct(a), unpct(b))));
    let (id, secret) = match basic {
        Some(x) => x,
        None => (
            f.get("client_id").cloned().unwrap_or_default(),
            f.get("client_secret").cloned().unwrap_or_default(),
        ),
    };
    if id != s.client.id || secret != s.client.secret {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    }
    if f.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code",
        );
    }
    let code = f.get("code").cloned().unwrap_or_default();
    let Some(p) = s
        .codes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&code)
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if p.at.elapsed() > Duration::from_secs(600) || p.client_id != id {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "expired code or another client's",
        );
    }
    if f.get("redirect_uri") != Some(&p.redirect_uri) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri differs from the authorization request's",
        );
    }
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
    if computed != p.challenge {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "PKCE verification failed",
        );
    }
    let now = chrono::Utc::now();
    let Ok(issuer) = IssuerUrl::new(s.issuer.clone()) else {
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "issuer");
    };
    let claims = CoreIdTokenClaims::new(
        issuer,
        vec![Audience::new(id.clone())],
        now + chrono::Duration::minutes(10),
        now,
        StandardClaims::new(SubjectIdentifier::new(p.user.subject.clone()))
            .set_email(Some(EndUserEmail::new(p.user.email.clone())))
            .set_email_verified(Some(p.user.email_verified)),
        EmptyAdditionalClaims {},
    )
    .set_nonce(p.nonce.map(Nonce::new));
    let id_token = match CoreIdToken::new(
        claims,
        &s.key,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        None,
        None,
    ) {
        Ok(t) => t,
        Err(e) => {
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &e.to_string(),
            )
        }
    };
    let mut r = Json(serde_json::json!({
        "access_token": random_hex(24),
        "token_type": "Bearer",
        "expires_in": 3600,
        "id_token": id_token.to_string(),
        "scope": "openid email profile",
    }))
    .into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}
