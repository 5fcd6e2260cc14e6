//! `GET /terminal/{user}?token=`: the terminal page (`page.html`, compiled
//! in), and `GET /assets/xterm/{file}`: the vendored xterm.js files
//! (`assets/xterm/README.md` says which, from where, under which licence).
//! The page runs under a strict Content-Security-Policy with a per-response
//! nonce; no CDN.

use super::Terminals;
use crate::error::ApiError;
use crate::live::access;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

const PAGE: &str = include_str!("page.html");

/// Version of the vendored `@xterm/xterm`.
pub const XTERM_VERSION: &str = "6.0.0";
/// Version of the vendored `@xterm/addon-fit`.
pub const ADDON_FIT_VERSION: &str = "0.11.0";

/// The vendored files: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "xterm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/xterm/xterm.js"),
    ),
    (
        "xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/xterm/xterm.css"),
    ),
    (
        "addon-fit.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/xterm/addon-fit.js"),
    ),
    (
        "LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/xterm/LICENSE"),
    ),
    (
        "LICENSE.addon-fit",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/xterm/LICENSE.addon-fit"),
    ),
];

/// `GET /assets/xterm/{file}` (no credentials: public release files).
pub async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, ctype, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == file) else {
        return ApiError::not_found(format!("no xterm asset {file:?}")).into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *ctype),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *bytes,
    )
        .into_response()
}

/// Query of the page.
#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    token: Option<String>,
}

fn nonce() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// The page's Content-Security-Policy. Styles allow inline ones: xterm.js
/// writes its theme into a `<style>` element it makes; scripts stay strict.
fn csp(t: &Terminals, nonce: &str) -> String {
    let mut ancestors = vec!["'self'".to_string()];
    ancestors.extend(
        t.live
            .cfg()
            .allowed_origins
            .iter()
            .filter_map(|o| access::origin_of(o)),
    );
    format!(
        "default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; \
         font-src 'self' data:; img-src 'self' data:; connect-src 'self'; \
         frame-ancestors {}; base-uri 'none'; form-action 'none'",
        ancestors.join(" ")
    )
}

/// `GET /terminal/{user}?token=`: the page, for a valid terminal token of
/// that user (checked here too, so a stale link says why at once).
pub async fn page(
    State(t): State<Arc<Terminals>>,
    Path(user): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    crate::api::validate_user_id(&user)?;
    let token = q.token.as_deref().filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the terminal page needs a terminal token (?token=, from POST /api/users/{user}/terminal/token)",
        )
    })?;
    let claims = t.verify(token, &user)?;
    let nonce = nonce();
    let cfg = serde_json::json!({
        "userId": user,
        "token": token,
        "expiresAt": claims.expires_at,
        "socketPath": format!("/api/users/{user}/terminal"),
    });
    let html = PAGE
        .replace("{{NONCE}}", &nonce)
        .replace("{{CONFIG}}", &crate::live::viewer::script_json(&cfg));
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
    if let Ok(v) = HeaderValue::from_str(&csp(&t, &nonce)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_loads_only_vendored_files() {
        assert!(PAGE.contains("{{NONCE}}") && PAGE.contains("{{CONFIG}}"));
        for f in [
            "/assets/xterm/xterm.js",
            "/assets/xterm/addon-fit.js",
            "/assets/xterm/xterm.css",
        ] {
            assert!(PAGE.contains(f), "{f}");
            let name = f.rsplit('/').next().unwrap();
            assert!(ASSETS.iter().any(|(n, _, _)| *n == name), "{name}");
        }
        for bad in ["http://", "https://", "//cdn", "unpkg", "jsdelivr"] {
            assert!(!PAGE.contains(bad), "the page must not load {bad}");
        }
    }

    #[test]
    fn vendored_files_are_the_pinned_release() {
        let readme = include_str!("../../assets/xterm/README.md");
        assert!(readme.contains(&format!("@xterm/xterm` | {XTERM_VERSION}")));
        assert!(readme.contains(&format!("@xterm/addon-fit` | {ADDON_FIT_VERSION}")));
        let js = std::str::from_utf8(ASSETS[0].2).unwrap();
        assert!(js.contains("e.Terminal="), "the UMD build of xterm.js");
        let fit = std::str::from_utf8(ASSETS[2].2).unwrap();
        assert!(fit.contains("FitAddon"));
    }
}
