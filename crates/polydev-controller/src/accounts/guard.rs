//! Cross-site request forgery and cross-site WebSocket hijacking: a
//! changing request a browser sends with the dashboard's cookie, and every
//! WebSocket upgrade, must come from a page of the controller's own origin
//! (or one in `POLYDEV_ALLOWED_ORIGINS`). The browser says where a request
//! comes from in `Sec-Fetch-Site` and `Origin`; a page cannot forge either.
//! Requests that carry `Authorization` come from API clients, which a
//! cross-site form cannot imitate; requests with neither header come from no
//! browser at all and are left to authentication.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Whether a request must come from one of `allowed` origins, and if so
/// whether it does. `allowed` holds lower-cased `scheme://host[:port]`.
pub fn check(method: &Method, headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let changing = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !upgrade && (!changing || headers.contains_key(header::AUTHORIZATION)) {
        return Ok(());
    }
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("").trim().to_ascii_lowercase());
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let allowed_origin = origin
        .as_deref()
        .is_some_and(|o| allowed.iter().any(|a| a == o));
    let ok = match (site.as_deref(), origin.as_deref()) {
        // The browser's own word: the page is of this very origin, or the
        // user typed the address.
        (Some("same-origin" | "none"), _) => origin.is_none() || allowed_origin,
        // Another site (or a sibling subdomain): only a configured origin.
        (Some(_), _) => allowed_origin,
        (None, Some(_)) => allowed_origin,
        // Neither header: not a browser.
        (None, None) => true,
    };
    if ok {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        if upgrade { "origin_not_allowed" } else { "cross_site" },
        format!(
            "{} from a page of another site ({}) is refused; only this controller's pages (and POLYDEV_ALLOWED_ORIGINS) may send it",
            if upgrade { "a WebSocket upgrade" } else { "a changing request" },
            origin.as_deref().or(site.as_deref()).unwrap_or("unknown")
        ),
    ))
}

/// Middleware over the whole application: [`check`] with the controller's
/// own origin and the configured ones.
pub async fn cross_site(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let allowed =
        crate::live::access::allowed_origins_in(&state.runtime.config().live, req.headers());
    if let Err(e) = check(req.method(), req.headers(), &allowed) {
        tracing::warn!(method = %req.method(), path = %req.uri().path(), code = e.code, "cross-site request refused");
        return e.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::check;
    use axum::http::{HeaderMap, HeaderValue, Method};

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn cross_site_posts_and_upgrades_are_refused() {
        let own = vec![
            "http://c.test:8080".to_string(),
            "https://ok.example".to_string(),
        ];
        let post = Method::POST;
        // Forms and fetches of the controller's own pages.
        assert!(check(
            &post,
            &h(&[
                ("origin", "http://c.test:8080"),
                ("sec-fetch-site", "same-origin")
            ]),
            &own
        )
        .is_ok());
        assert!(check(&post, &h(&[("origin", "http://c.test:8080")]), &own).is_ok());
        // A configured embedding origin.
        assert!(check(
            &post,
            &h(&[
                ("origin", "https://ok.example"),
                ("sec-fetch-site", "cross-site")
            ]),
            &own
        )
        .is_ok());
        // Another site's form.
        let e = check(
            &post,
            &h(&[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ]),
            &own,
        )
        .unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(e.code, "cross_site");
        assert!(check(&post, &h(&[("origin", "https://evil.example")]), &own).is_err());
        assert!(check(&post, &h(&[("sec-fetch-site", "cross-site")]), &own).is_err());
        assert!(check(
            &post,
            &h(&[
                ("sec-fetch-site", "same-site"),
                ("origin", "http://x.c.test:8080")
            ]),
            &own
        )
        .is_err());
        assert!(check(&post, &h(&[("origin", "null")]), &own).is_err());
        // API clients and non-browsers; reads.
        assert!(check(
            &post,
            &h(&[
                ("authorization", "Bearer k"),
                ("origin", "https://evil.example")
            ]),
            &own
        )
        .is_ok());
        assert!(check(&post, &h(&[]), &own).is_ok());
        assert!(check(
            &Method::GET,
            &h(&[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site")
            ]),
            &own
        )
        .is_ok());
        // WebSocket upgrades: GET, and Authorization does not excuse them.
        let ws = [("upgrade", "websocket"), ("origin", "https://evil.example")];
        assert!(check(&Method::GET, &h(&ws), &own).is_err());
        let ws_auth = [
            ("upgrade", "websocket"),
            ("origin", "https://evil.example"),
            ("authorization", "Bearer k"),
        ];
        assert!(check(&Method::GET, &h(&ws_auth), &own).is_err());
        assert!(check(
            &Method::GET,
            &h(&[("upgrade", "websocket"), ("origin", "http://c.test:8080")]),
            &own
        )
        .is_ok());
    }
}
