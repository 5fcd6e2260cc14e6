//! Finding and reading authorization URLs: just enough URL parsing for
//! `scheme://host[:port]/path?query`, without a general-purpose URL crate
//! (the agent ships in every VM and stays small).

use crate::provider::{authorize_endpoint, Provider};

/// The parts of an absolute `http(s)` URL this crate looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`.
    pub scheme: String,
    /// Host without brackets (`::1` for `[::1]`), lowercased.
    pub host: String,
    /// The port, or the scheme's default.
    pub port: u16,
    /// Path, `/` when empty.
    pub path: String,
    /// Decoded query pairs in order.
    pub query: Vec<(String, String)>,
    /// The raw query string (without `?`).
    pub raw_query: String,
}

impl Url {
    /// Parses an absolute `http`/`https` URL; `None` for anything else.
    pub fn parse(s: &str) -> Option<Url> {
        let (scheme, rest) = s.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let rest = rest.split('#').next().unwrap_or("");
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), default_port),
            }
        };
        let (path, raw_query) = match tail.split_once('?') {
            Some((p, q)) => (p, q),
            None => (tail, ""),
        };
        Some(Url {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            query: form_urlencoded::parse(raw_query.as_bytes())
                .into_owned()
                .collect(),
            raw_query: raw_query.to_string(),
        })
    }

    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the host is this machine (`localhost`, `127.0.0.1`, `::1`).
    pub fn is_loopback(&self) -> bool {
        matches!(self.host.as_str(), "localhost" | "127.0.0.1" | "::1")
    }
}

/// Every `http(s)://` URL in `text` (already free of escape sequences), in
/// order of appearance. A URL ends at whitespace, a quote or an angle
/// bracket; trailing sentence punctuation is dropped.
pub fn find_urls(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = ["https://", "http://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let candidate = &rest[start..];
        let end = candidate
            .find(|c: char| c.is_whitespace() || "\"'<>`".contains(c))
            .unwrap_or(candidate.len());
        let url = candidate[..end].trim_end_matches(['.', ',', ';', ':', ')', ']']);
        if Url::parse(url).is_some() {
            found.push(url.to_string());
        }
        rest = &candidate[end.max(1)..];
    }
    found
}

/// Whether `url` has the shape of `provider`'s authorization request: the
/// provider's authorize path, `response_type=code`, a `client_id` and a
/// `redirect_uri`. Any host is accepted (the stand-in server replaces it);
/// [`is_real_host`] tells the real one apart.
pub fn is_authorize_url(provider: Provider, url: &str) -> bool {
    let Some(u) = Url::parse(url) else {
        return false;
    };
    u.path == authorize_endpoint(provider).path
        && u.param("response_type") == Some("code")
        && u.param("client_id").is_some_and(|c| !c.is_empty())
        && u.param("redirect_uri").is_some_and(|c| !c.is_empty())
}

/// Whether `url` points at the provider's real authorization host.
pub fn is_real_host(provider: Provider, url: &str) -> bool {
    Url::parse(url).is_some_and(|u| u.host == authorize_endpoint(provider).host)
}

/// The CLI's localhost listener named by the URL's `redirect_uri`:
/// `(port, path)`, or `None` when the redirect goes elsewhere (a paste-code
/// page).
pub fn local_redirect(url: &str) -> Option<(u16, String)> {
    let redirect = Url::parse(Url::parse(url)?.param("redirect_uri")?)?;
    (redirect.scheme == "http" && redirect.is_loopback()).then_some((redirect.port, redirect.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAUDE: &str = "https://claude.com/cai/oauth/authorize?code=true&client_id=9d1c&response_type=code&redirect_uri=http%3A%2F%2Flocalhost%3A41234%2Fcallback&scope=user%3Ainference&code_challenge=abc&code_challenge_method=S256&state=xyz";

    #[test]
    fn parses_parts() {
        let u = Url::parse(CLAUDE).unwrap();
        assert_eq!(u.host, "claude.com");
        assert_eq!(u.port, 443);
        assert_eq!(u.path, "/cai/oauth/authorize");
        assert_eq!(
            u.param("redirect_uri"),
            Some("http://localhost:41234/callback")
        );
        let v6 = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.path.as_str()),
            ("::1", 8080, "/")
        );
        assert!(Url::parse("ftp://x").is_none());
        assert!(Url::parse("http://a:b@x/").is_none());
    }

    #[test]
    fn finds_urls_in_prose() {
        let text = format!("Visit:\n{CLAUDE}.\nDocs (https://docs.test/x), or \"http://h:1/p\"");
        assert_eq!(
            find_urls(&text),
            vec![
                CLAUDE.to_string(),
                "https://docs.test/x".into(),
                "http://h:1/p".into()
            ]
        );
    }

    #[test]
    fn recognises_shapes_and_redirects() {
        assert!(is_authorize_url(Provider::ClaudeCode, CLAUDE));
        assert!(is_real_host(Provider::ClaudeCode, CLAUDE));
        assert!(!is_authorize_url(Provider::Codex, CLAUDE));
        assert!(!is_authorize_url(
            Provider::ClaudeCode,
            "https://docs.test/x"
        ));
        assert_eq!(local_redirect(CLAUDE), Some((41234, "/callback".into())));
        let paste = CLAUDE.replace(
            "http%3A%2F%2Flocalhost%3A41234%2Fcallback",
            "https%3A%2F%2Fplatform.claude.com%2Foauth%2Fcode%2Fcallback",
        );
        assert_eq!(local_redirect(&paste), None);
    }
}
