//! Forwarding an OAuth redirect to a CLI's localhost listener, as the
//! browser inside the VM would: one `GET path?query` over HTTP/1.1.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::url::Url;
use crate::LoginError;

/// How long to wait to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the listener may take to answer (it exchanges the code first).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most response bytes read.
const MAX_RESPONSE: usize = 64 * 1024;

/// What the CLI's listener answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackResponse {
    /// HTTP status.
    pub status: u16,
    /// `Location`, when it redirected the browser (to a success page).
    pub location: Option<String>,
    /// The start of the body, lossily decoded.
    pub body: String,
}

/// Extracts the query to forward from what the caller has: a full redirect
/// URL (`http://localhost:P/callback?code=..&state=..`), a path with a query
/// (`/callback?code=..`), or a query (`?code=..` or `code=..`). It must carry
/// `code` or `error`.
pub fn callback_query(input: &str) -> Result<String, LoginError> {
    let input = input.trim();
    let query = if let Some(u) = Url::parse(input) {
        u.raw_query
    } else if let Some((_, q)) = input.split_once('?') {
        q.to_string()
    } else {
        input.to_string()
    };
    let has = |name: &str| {
        form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == name && !v.is_empty())
    };
    if query.chars().any(|c| c.is_whitespace() || c.is_control()) || !(has("code") || has("error"))
    {
        return Err(LoginError::BadCallback(input.to_string()));
    }
    Ok(query)
}

/// Sends `GET path?query` to the listener on `port` (127.0.0.1, then ::1).
pub async fn forward(port: u16, path: &str, query: &str) -> Result<CallbackResponse, LoginError> {
    let target = format!("localhost:{port}{path}");
    let err = |source| LoginError::Forward {
        target: target.clone(),
        source,
    };
    let timed_out =
        |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string());
    let mut last = None;
    let mut stream = None;
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(timed_out("connect timed out")),
        }
    }
    let mut stream = match stream {
        Some(s) => s,
        None => return Err(err(last.unwrap_or_else(|| timed_out("no address")))),
    };
    let request = format!(
        "GET {path}?{query} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: polydev-login\r\nAccept: text/html,*/*\r\nConnection: close\r\n\r\n"
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() >= MAX_RESPONSE {
                break;
            }
            // Enough once the head and a declared body are in.
            if let Some(done) = complete_len(&buf) {
                if buf.len() >= done {
                    break;
                }
            }
        }
        Ok::<_, std::io::Error>(buf)
    };
    let raw = match tokio::time::timeout(RESPONSE_TIMEOUT, exchange).await {
        Ok(r) => r.map_err(err)?,
        Err(_) => return Err(err(timed_out("no answer from the listener"))),
    };
    parse_response(&raw).ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an HTTP response",
        ))
    })
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn complete_len(buf: &[u8]) -> Option<usize> {
    let end = head_end(buf)?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    })?;
    Some(end + len)
}

fn parse_response(raw: &[u8]) -> Option<CallbackResponse> {
    let end = head_end(raw).unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let location = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_string())
    });
    let body = &raw[end.min(raw.len())..];
    let body = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
    Some(CallbackResponse {
        status,
        location,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_url_path_or_query() {
        for input in [
            "http://localhost:4567/callback?code=abc&state=x",
            "/callback?code=abc&state=x",
            "?code=abc&state=x",
            "code=abc&state=x",
        ] {
            assert_eq!(callback_query(input).unwrap(), "code=abc&state=x");
        }
        assert!(callback_query("state=x").is_err());
        assert!(callback_query("code=a b").is_err());
        assert_eq!(
            callback_query("error=access_denied&state=s").unwrap(),
            "error=access_denied&state=s"
        );
    }

    #[test]
    fn parses_a_redirect() {
        let r = parse_response(
            b"HTTP/1.1 302 Found\r\nLocation: https://x.test/ok\r\nContent-Length: 2\r\n\r\nhi",
        )
        .unwrap();
        assert_eq!(r.status, 302);
        assert_eq!(r.location.as_deref(), Some("https://x.test/ok"));
        assert_eq!(r.body, "hi");
    }
}
