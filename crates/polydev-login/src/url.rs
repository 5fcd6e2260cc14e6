//! Finding and reading authorization URLs: just enough URL parsing for
//! `scheme://host[:port]/path?query`, without a general-purpose URL crate
//! (the agent ships in every VM and stays small).

use crate::provider::{authorize_endpoint, authorize_hosts, Provider};

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

/// The longest authorization URL taken from a VM.
pub const MAX_AUTHORIZE_URL_BYTES: usize = 4096;

/// An origin (`scheme://host[:port]`) on which an operator allows
/// authorization URLs besides each provider's own hosts, such as a stand-in
/// OAuth server in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: String,
    /// Host, lowercased.
    pub host: String,
    /// Port (the scheme's default when not written).
    pub port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is allowed).
    pub fn parse(s: &str) -> Result<Origin, String> {
        let u = Url::parse(s.trim())
            .ok_or_else(|| format!("{s:?} is not an http:// or https:// origin"))?;
        if u.path != "/" || !u.raw_query.is_empty() || s.contains('#') {
            return Err(format!(
                "{s:?} is not an origin: write scheme://host[:port] only"
            ));
        }
        Ok(Origin {
            scheme: u.scheme,
            host: u.host,
            port: u.port,
        })
    }

    fn matches(&self, u: &Url) -> bool {
        self.scheme == u.scheme && self.host == u.host && self.port == u.port
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Checks an authorization URL that a VM reported for `provider`, before it
/// is stored or shown to anyone: at most [`MAX_AUTHORIZE_URL_BYTES`] of
/// printable ASCII, and `https` on port 443 of one of the provider's
/// [`authorize_hosts`], or on one of the `extra` origins. The error says
/// which rule the URL broke.
pub fn check_authorize_url(provider: Provider, url: &str, extra: &[Origin]) -> Result<(), String> {
    if url.len() > MAX_AUTHORIZE_URL_BYTES {
        return Err(format!(
            "the {provider} authorization URL is {} bytes long, more than {MAX_AUTHORIZE_URL_BYTES}",
            url.len()
        ));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the {provider} authorization URL contains spaces, control or non-ASCII characters"
        ));
    }
    let u = Url::parse(url).ok_or_else(|| {
        format!("the {provider} authorization URL is not an http(s) URL with a plain host")
    })?;
    if extra.iter().any(|o| o.matches(&u)) {
        return Ok(());
    }
    let hosts = authorize_hosts(provider);
    if u.scheme != "https" || u.port != 443 {
        return Err(format!(
            "the {provider} authorization URL is not https on port 443 ({}://{}:{})",
            u.scheme, u.host, u.port
        ));
    }
    if !hosts.contains(&u.host.as_str()) {
        return Err(format!(
            "the {provider} authorization URL points at {}, not at {}",
            u.host,
            hosts.join(", ")
        ));
    }
    Ok(())
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
    fn authorization_urls_are_checked_before_they_are_shown() {
        let ok = |p, u: &str| check_authorize_url(p, u, &[]);
        ok(Provider::ClaudeCode, CLAUDE).unwrap();
        ok(
            Provider::Codex,
            "https://auth.openai.com/oauth/authorize?response_type=code&client_id=app",
        )
        .unwrap();
        ok(
            Provider::GeminiCli,
            "https://accounts.google.com:443/o/oauth2/v2/auth?client_id=x",
        )
        .unwrap();
        for (p, bad, why) in [
            (Provider::Codex, CLAUDE, "not at auth.openai.com"),
            (
                Provider::ClaudeCode,
                "http://claude.com/cai/oauth/authorize",
                "not https",
            ),
            (
                Provider::ClaudeCode,
                "https://claude.com:8443/cai/oauth/authorize",
                "port 443",
            ),
            (
                Provider::ClaudeCode,
                "https://claude.com.evil.test/cai/oauth/authorize",
                "points at claude.com.evil.test",
            ),
            (
                Provider::ClaudeCode,
                "https://evil.test@claude.com/",
                "not an http(s) URL",
            ),
            (Provider::GeminiCli, "javascript:alert(1)", "not an http(s)"),
            (
                Provider::GeminiCli,
                "https://accounts.google.com/o/oauth2/v2/auth?x=\u{1b}[2J",
                "control",
            ),
            (
                Provider::GeminiCli,
                "https://accounts.google.com/ x",
                "spaces",
            ),
        ] {
            let e = ok(p, bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("{CLAUDE}&pad={}", "a".repeat(MAX_AUTHORIZE_URL_BYTES));
        assert!(ok(Provider::ClaudeCode, &long)
            .unwrap_err()
            .contains("more than 4096"));
    }

    #[test]
    fn an_operator_origin_allows_a_stand_in_server() {
        let standin = "http://auth.provider.test:8080/cai/oauth/authorize?client_id=x";
        assert!(check_authorize_url(Provider::ClaudeCode, standin, &[]).is_err());
        let allowed = [Origin::parse("http://auth.provider.test:8080/").unwrap()];
        assert_eq!(allowed[0].to_string(), "http://auth.provider.test:8080");
        check_authorize_url(Provider::ClaudeCode, standin, &allowed).unwrap();
        // Exactly that origin: not another port or scheme.
        let other = standin.replace(":8080", ":8081");
        assert!(check_authorize_url(Provider::ClaudeCode, &other, &allowed).is_err());
        let tls = standin.replace("http://", "https://");
        assert!(check_authorize_url(Provider::ClaudeCode, &tls, &allowed).is_err());
        for bad in [
            "auth.provider.test",
            "http://h/p",
            "http://h?q=1",
            "ftp://h",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
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
