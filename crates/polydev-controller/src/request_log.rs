//! What the request log shows of a request: method, path and query, with the
//! value of every credential-bearing query parameter (`token`, view and
//! terminal tokens, keys) replaced, so no token reaches a log at any level.

use axum::http::Request;

/// Query parameters whose values are never logged.
const SECRET_PARAMS: &[&str] = &[
    "token", "key", "apikey", "api_key", "secret", "code", "state",
];

/// `path?query` of `uri` with secret parameter values replaced by `…`.
pub fn redacted(uri: &axum::http::Uri) -> String {
    let Some(q) = uri.query() else {
        return uri.path().to_string();
    };
    let q: Vec<String> = q
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                format!("{k}=…")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{}?{}", uri.path(), q.join("&"))
}

/// The span of one request, for `TraceLayer::make_span_with`.
pub fn span<B>(req: &Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %req.method(),
        uri = %redacted(req.uri()),
        version = ?req.version(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_cut_out_of_logged_uris() {
        let u: axum::http::Uri = "/api/live/as_1/vnc?token=pdv_secret&x=1&Token=pdv_2"
            .parse()
            .unwrap();
        let r = redacted(&u);
        assert_eq!(r, "/api/live/as_1/vnc?token=…&x=1&Token=…");
        assert!(!r.contains("pdv_"));
        let u: axum::http::Uri = "/terminal/u1?token=pdt_x".parse().unwrap();
        assert!(!redacted(&u).contains("pdt_x"));
        let u: axum::http::Uri = "/health".parse().unwrap();
        assert_eq!(redacted(&u), "/health");
    }
}
