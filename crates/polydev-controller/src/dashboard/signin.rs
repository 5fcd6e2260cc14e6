//! Signing in and out. Sign-up is closed: accounts are made by an operator
//! (`polydev user create`) and OIDC identities sign in only to an account
//! that exists. A wrong password, an unknown user and a disabled account get
//! the same page, after the same work (an argon2id check every time).

use super::layout::Page;
use super::{html, signed_in};
use crate::accounts::session::{SignInError, REFUSED};
use crate::AppState;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;

/// The client's address, for sign-in limits: the peer, or with
/// `POLYDEV_TRUST_FORWARDED` the last hop of `X-Forwarded-For`.
pub struct ClientAddr(pub Option<String>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        if s.runtime.config().accounts.trust_forwarded {
            if let Some(v) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim)
                .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
            {
                return Ok(ClientAddr(Some(v.to_string())));
            }
        }
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
        ))
    }
}

/// Percent-encodes a value for a query string.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to go after signing in: a path of this site only.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains(['\\', '\r', '\n'])
                && n.len() < 512 =>
        {
            n.to_string()
        }
        _ => "/connections".into(),
    }
}

/// Query of the sign-in page.
#[derive(serde::Deserialize, Default)]
pub struct SignInQuery {
    next: Option<String>,
}

fn signin_page(
    s: &AppState,
    status: StatusCode,
    next: &str,
    error: Option<&str>,
    user: &str,
) -> Response {
    let providers = s.accounts.oidc.providers();
    let body = html! {
        div.signin.card {
            @if let Some(e) = error {
                p.notice.bad #signin-error role="alert" { (e) }
            }
            form method="post" action="/signin" {
                input type="hidden" name="next" value=(next);
                label for="user" { "User name" }
                input #user name="user" autocomplete="username" required value=(user) autofocus[user.is_empty()];
                label for="password" { "Password" }
                input #password name="password" type="password" autocomplete="current-password" required autofocus[!user.is_empty()];
                p { button #signin type="submit" { "Sign in" } }
            }
            @if !providers.is_empty() {
                p.or { "or" }
                @for (id, name) in &providers {
                    p { a.button.secondary href=(format!("/auth/oidc/{id}")) data-oidc=(id) { "Sign in with " (name) } }
                }
            }
            p.muted { "There is no sign-up: an operator makes accounts." }
        }
    };
    html(
        status,
        Page {
            title: "Sign in",
            who: None,
            active: "",
            script: None,
            config: None,
        }
        .render(body),
    )
}

/// `GET /signin`.
pub async fn form(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<SignInQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = q.map(|q| q.0).unwrap_or_default();
    let next = safe_next(q.next.as_deref());
    if let Ok(Some(_)) = s.accounts.session_of(&headers).await {
        return Redirect::to(&next).into_response();
    }
    signin_page(&s, StatusCode::OK, &next, None, "")
}

/// The sign-in form's fields.
#[derive(serde::Deserialize)]
pub struct SignInForm {
    user: String,
    password: String,
    #[serde(default)]
    next: Option<String>,
}

fn with_cookie(mut r: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `POST /signin`.
pub async fn submit(
    State(s): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Form(f): Form<SignInForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let user = f.user.trim();
    match s
        .accounts
        .sessions
        .check_password(user, &f.password, addr.as_deref())
        .await
    {
        Ok(account) => match s
            .accounts
            .sessions
            .start(&account.user_id, "password")
            .await
        {
            Ok(cookie) => with_cookie(Redirect::to(&next).into_response(), &cookie),
            Err(e) => crate::error::ApiError::internal(e).into_response(),
        },
        Err(SignInError::Refused) => {
            signin_page(&s, StatusCode::UNAUTHORIZED, &next, Some(REFUSED), user)
        }
        Err(SignInError::Limited(secs)) => {
            let mut r = signin_page(
                &s,
                StatusCode::TOO_MANY_REQUESTS,
                &next,
                Some(&format!(
                    "Too many sign-in attempts; try again in {secs} s."
                )),
                user,
            );
            r.headers_mut().insert(header::RETRY_AFTER, secs.into());
            r
        }
        Err(SignInError::Store(e)) => crate::error::ApiError::internal(e).into_response(),
    }
}

/// `POST /signout`: ends the session here and now.
pub async fn signout(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match s.accounts.sessions.end(&headers).await {
        Ok(cookie) => with_cookie(Redirect::to("/signin").into_response(), &cookie),
        Err(e) => crate::error::ApiError::internal(e).into_response(),
    }
}

fn base_url(s: &AppState, headers: &HeaderMap) -> String {
    let cfg = s.runtime.config();
    crate::live::access::base_url_in(&cfg.live, cfg.listen, headers)
}

/// `GET /auth/oidc/{id}`: to the provider.
pub async fn oidc_begin(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match s.accounts.oidc.begin(&id, &base_url(&s, &headers)).await {
        Ok(url) => Redirect::to(&url).into_response(),
        Err(e) => {
            tracing::warn!(provider = %id, error = %e, "OIDC sign-in could not start");
            signin_page(
                &s,
                StatusCode::BAD_GATEWAY,
                "/connections",
                Some(&e.to_string()),
                "",
            )
        }
    }
}

/// Query of the OIDC callback.
#[derive(serde::Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/oidc/{id}/callback`: back from the provider.
pub async fn oidc_callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let refused = |status, msg: String| signin_page(&s, status, "/connections", Some(&msg), "");
    let Ok(Query(q)) = q else {
        return refused(
            StatusCode::BAD_REQUEST,
            "the provider's answer is malformed".into(),
        );
    };
    if let Some(e) = q.error {
        let what = q.error_description.unwrap_or_default();
        return refused(
            StatusCode::UNAUTHORIZED,
            format!("the provider refused the sign-in: {e} {what}")
                .trim()
                .to_string(),
        );
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "the provider's answer has no code or state".into(),
        );
    };
    let who = match s
        .accounts
        .oidc
        .finish(&id, &code, &state, &base_url(&s, &headers))
        .await
    {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(provider = %id, error = %e, "OIDC sign-in failed");
            return refused(StatusCode::UNAUTHORIZED, e.to_string());
        }
    };
    match s.accounts.oidc.account_for(&who).await {
        Ok(Some(a)) if !a.disabled => match s
            .accounts
            .sessions
            .start(&a.user_id, &format!("oidc:{id}"))
            .await
        {
            Ok(cookie) => with_cookie(Redirect::to("/connections").into_response(), &cookie),
            Err(e) => crate::error::ApiError::internal(e).into_response(),
        },
        Ok(_) => {
            tracing::info!(provider = %id, subject = %who.subject, "OIDC identity has no account");
            refused(
                StatusCode::FORBIDDEN,
                "no account here matches this identity (sign-up is closed: ask an operator to make one with your e-mail address)".into(),
            )
        }
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The password form's fields.
#[derive(serde::Deserialize)]
pub struct PasswordForm {
    current: String,
    new: String,
    confirm: String,
}

/// `POST /account/password`: checks the current password, sets the new one,
/// ends every session of the account and starts a fresh one here.
pub async fn change_password(
    State(s): State<AppState>,
    headers: HeaderMap,
    ClientAddr(addr): ClientAddr,
    Form(f): Form<PasswordForm>,
) -> Response {
    let who = match signed_in(&s, &headers, "/account").await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let back = |msg: &str| Redirect::to(&format!("/account?error={}", encode(msg))).into_response();
    if f.new != f.confirm {
        return back("the new password and its confirmation differ");
    }
    if let Err(m) = crate::accounts::password::check_new(&f.new) {
        return back(&m);
    }
    match s
        .accounts
        .sessions
        .check_password(&who.user_id, &f.current, addr.as_deref())
        .await
    {
        Ok(_) => {}
        Err(SignInError::Refused) => return back("the current password is wrong"),
        Err(e) => return back(&e.to_string()),
    }
    let hash = match crate::accounts::password::hash_async(f.new).await {
        Ok(h) => h,
        Err(e) => return crate::error::ApiError::internal(e).into_response(),
    };
    if let Err(e) = s
        .accounts
        .store()
        .set_account_password(&who.user_id, &hash)
        .await
    {
        return crate::error::ApiError::internal(e).into_response();
    }
    s.accounts.sessions.forget_user(&who.user_id);
    tracing::info!(user_id = %who.user_id, "password changed; other sessions ended");
    match s.accounts.sessions.start(&who.user_id, &who.method).await {
        Ok(cookie) => with_cookie(Redirect::to("/account?changed=1").into_response(), &cookie),
        Err(e) => crate::error::ApiError::internal(e).into_response(),
    }
}
