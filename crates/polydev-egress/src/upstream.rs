//! A user's upstream proxy: `http://[user:pass@]host:port` (HTTP CONNECT)
//! or `socks5://[user:pass@]host:port` (SOCKS5, by `tokio-socks`). The gate
//! dials it from inside the VM's namespace, so the host firewall, the
//! always-deny set and the user's source address apply to it as to any of
//! the VM's traffic. Credentials never appear in [`ProxyUrl::redacted`],
//! which is what logs and errors show.

use std::fmt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Time for the proxy to accept the connection and answer the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP CONNECT.
    Http,
    /// SOCKS5.
    Socks5,
}

/// A parsed proxy URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// Protocol.
    pub scheme: Scheme,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name and password, if any.
    pub auth: Option<(String, String)>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ProxyUrl {
    /// Parses `http://…` or `socks5://…`; the error never repeats a password.
    pub fn parse(s: &str) -> Result<ProxyUrl, String> {
        if s.len() > 2048 {
            return Err("proxy URL longer than 2048 characters".into());
        }
        let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = s
            .strip_prefix("socks5://")
            .or_else(|| s.strip_prefix("socks5h://"))
        {
            (Scheme::Socks5, r)
        } else {
            return Err("proxy URL must start with http:// or socks5://".into());
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(
                "proxy URL must be scheme://[user:password@]host:port, without a path".into(),
            );
        }
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => {
                let (u, p) = a.split_once(':').unwrap_or((a, ""));
                (Some((pct_decode(u), pct_decode(p))), h)
            }
            None => (None, rest),
        };
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or("proxy URL needs a port (host:port)")?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("proxy port {port:?} is not a number"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ok_host = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
        if !ok_host || port == 0 {
            return Err(format!("proxy host {host:?} or port {port} is not valid"));
        }
        Ok(ProxyUrl {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            auth,
        })
    }

    /// The URL with the password replaced by `***`: safe to show and log.
    pub fn redacted(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Socks5 => "socks5",
        };
        match &self.auth {
            Some((u, _)) => format!("{scheme}://{u}:***@{}:{}", self.host, self.port),
            None => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }

    /// The full URL, credentials included (for sealing only).
    pub fn to_secret_string(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Socks5 => "socks5",
        };
        match &self.auth {
            Some((u, p)) => format!("{scheme}://{u}:{p}@{}:{}", self.host, self.port),
            None => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }

    /// The proxy's socket address (resolved from the host when a name).
    pub async fn resolve(&self) -> Result<std::net::SocketAddr, String> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("resolving the proxy {}: {e}", self.redacted()))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| format!("the proxy {} has no IPv4 address", self.redacted()))
    }

    /// Opens a tunnel to `target` (`host:port`) over `s`, a connection to
    /// the proxy.
    pub async fn handshake(&self, s: TcpStream, target: &str) -> Result<TcpStream, String> {
        let fut = async {
            match self.scheme {
                Scheme::Http => self.http_connect(s, target).await,
                Scheme::Socks5 => self.socks5(s, target).await,
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the proxy {} did not answer in {HANDSHAKE_TIMEOUT:?}",
                    self.redacted()
                ))
            })
    }

    async fn http_connect(&self, mut s: TcpStream, target: &str) -> Result<TcpStream, String> {
        use base64::Engine;
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((u, p)) = &self.auth {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req.push_str(&format!("Proxy-Authorization: Basic {b}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("writing to the proxy {}: {e}", self.redacted()))?;
        // Read the answer's head byte by byte: nothing past it may be eaten.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 8192 {
                return Err(format!(
                    "the proxy {} sent an oversized answer",
                    self.redacted()
                ));
            }
            let n = s
                .read(&mut b)
                .await
                .map_err(|e| format!("reading from the proxy {}: {e}", self.redacted()))?;
            if n == 0 {
                return Err(format!(
                    "the proxy {} closed the connection during CONNECT {target}",
                    self.redacted()
                ));
            }
            head.push(b[0]);
        }
        let line = String::from_utf8_lossy(&head);
        let status = line.lines().next().unwrap_or("").to_string();
        let code = status.split_whitespace().nth(1).unwrap_or("");
        if !code.starts_with('2') {
            return Err(format!(
                "the proxy {} refused CONNECT {target}: {}",
                self.redacted(),
                status.chars().take(200).collect::<String>()
            ));
        }
        Ok(s)
    }

    async fn socks5(&self, s: TcpStream, target: &str) -> Result<TcpStream, String> {
        let (h, p) = target.rsplit_once(':').ok_or("target without a port")?;
        let port: u16 = p.parse().map_err(|_| "bad target port")?;
        let t = (h, port);
        let r = match &self.auth {
            Some((u, pw)) => {
                tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(s, t, u, pw).await
            }
            None => tokio_socks::tcp::Socks5Stream::connect_with_socket(s, t).await,
        };
        r.map(|st| st.into_inner())
            .map_err(|e| format!("the proxy {} refused {target}: {e}", self.redacted()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let p = ProxyUrl::parse("http://alice:s%40cret@proxy.example:3128").unwrap();
        assert_eq!(p.scheme, Scheme::Http);
        assert_eq!(p.auth.as_ref().unwrap().1, "s@cret");
        assert_eq!(p.redacted(), "http://alice:***@proxy.example:3128");
        assert!(!format!("{p:?}").contains("cret"));
        let s = ProxyUrl::parse("socks5://198.51.100.7:1080").unwrap();
        assert_eq!((s.scheme, s.port), (Scheme::Socks5, 1080));
        for bad in [
            "ftp://x:1",
            "http://x",
            "http://x:0",
            "http://x:1/path",
            "http://a b:1",
        ] {
            assert!(ProxyUrl::parse(bad).is_err(), "{bad}");
        }
        let e = ProxyUrl::parse("http://u:topsecret@host:notaport").unwrap_err();
        assert!(!e.contains("topsecret"), "{e}");
    }
}
