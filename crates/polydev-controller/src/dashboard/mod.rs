//! The dashboard: the pages end users and operators work in, served by the
//! controller and rendered on the server (maud). Each page is HTML with its
//! data in it plus, where live data needs it, one small script (vendored,
//! embedded in the binary) that calls the same JSON API as any client with
//! the session cookie. Another user's object is a 404 here as in the API.
//!
//! One job per file:
//! - [`layout`]: the page shell (navigation, who is signed in, headers).
//! - [`signin`]: sign-in (password, OIDC), sign-out, password change.
//! - [`pages`]: Connections, Runs, Terminal, VMs, Account.
//! - [`admin`]: the Admin page and `GET /api/admin/overview` behind it.

pub mod admin;
pub mod layout;
pub mod pages;
pub mod signin;

use crate::accounts::session::SignedIn;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

/// The dashboard's routes, merged into the application by `crate::app`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/signin", get(signin::form).post(signin::submit))
        .route("/signout", post(signin::signout))
        .route("/auth/oidc/{id}", get(signin::oidc_begin))
        .route("/auth/oidc/{id}/callback", get(signin::oidc_callback))
        .route("/connections", get(pages::connections))
        .route("/runs", get(pages::runs))
        .route("/terminal", get(pages::terminal))
        .route("/vms", get(pages::vms))
        .route("/vms/{id}", get(pages::vm))
        .route("/account", get(pages::account))
        .route("/account/password", post(signin::change_password))
        .route("/admin", get(admin::page))
        .route("/assets/dashboard/{file}", get(asset))
}

/// The signed-in account of a page request, or a redirect to the sign-in
/// page (which comes back here).
pub async fn signed_in(
    s: &AppState,
    headers: &HeaderMap,
    here: &str,
) -> Result<SignedIn, Response> {
    match s.accounts.session_of(headers).await {
        Ok(Some(who)) => Ok(who),
        Ok(None) => {
            Err(Redirect::to(&format!("/signin?next={}", signin::encode(here))).into_response())
        }
        Err(e) => Err(crate::error::ApiError::internal(e).into_response()),
    }
}

async fn home(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match s.accounts.session_of(&headers).await {
        Ok(Some(_)) => Redirect::to("/connections").into_response(),
        _ => Redirect::to("/signin").into_response(),
    }
}

/// Files under `/assets/dashboard/`, embedded in the binary.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/dashboard/dashboard.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/dashboard.js"),
    ),
    (
        "connections.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/connections.js"),
    ),
    (
        "runs.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/runs.js"),
    ),
    (
        "manage.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/dashboard/manage.js"),
    ),
];

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == file) {
        Some((_, ty, body)) => {
            let mut r = ([(header::CONTENT_TYPE, *ty)], *body).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            r
        }
        None => crate::error::ApiError::not_found(format!("no dashboard asset {file:?}"))
            .into_response(),
    }
}

/// A page's answer: HTML with the dashboard's headers (a strict CSP:
/// scripts and styles of this origin only, frames of this origin, no
/// framing by others, forms to this origin; no caching; no referrer).
pub fn html(status: StatusCode, markup: maud::Markup) -> Response {
    let mut r = (status, markup).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// "x ago" / a date for a Unix-ms time, for tables.
pub fn ago(ms: i64) -> String {
    let now = polydev_core::vm::now_ms();
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}
