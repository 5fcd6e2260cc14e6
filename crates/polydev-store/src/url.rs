//! Database URLs: which backend a URL names, and how to print one safely.
//!
//! A PostgreSQL URL may carry a password (`postgres://user:secret@host/db` or
//! `?password=secret`); [`redact_url`] replaces it with `***` so URLs can appear in
//! errors and logs.

/// Returns `url` with any password (in the user-info part or a `password=` query
/// parameter) replaced by `***`. Anything that does not look like a URL is
/// returned unchanged, since it then carries no recognisable password.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // The authority runs to the first '/', '?' or '#'.
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{}", &userinfo[..colon], host),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://bob:s3cr@t@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(
            redact_url("postgres://bob@db/x?sslmode=disable&password=hunter2"),
            "postgres://bob@db/x?sslmode=disable&password=***"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/polydev.db"),
            "sqlite:///var/lib/polydev.db"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
