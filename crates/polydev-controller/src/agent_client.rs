//! The controller's client for a guest agent. Every request is made on a TCP
//! socket opened inside the VM's network namespace and carries the VM's
//! bearer token.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// Where and how to reach one VM's agent.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    /// The VM's network namespace.
    pub netns: String,
    /// The agent's port.
    pub port: u16,
    /// The VM's bearer token.
    pub token: String,
}

/// A failed agent request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No connection could be made.
    #[error("cannot connect to the agent at {addr} in namespace {netns}: {detail}")]
    Connect {
        /// Namespace.
        netns: String,
        /// Address.
        addr: SocketAddr,
        /// Why.
        detail: String,
    },
    /// The HTTP exchange failed.
    #[error("agent request {path} failed: {0}", path = .1)]
    Http(String, String),
    /// The agent answered with an error status.
    #[error("agent answered {status} to {path}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Path requested.
        path: String,
        /// Response body (truncated).
        body: String,
    },
    /// No answer in time.
    #[error("agent request {0} timed out after {1:?}")]
    Timeout(String, Duration),
}

impl AgentTarget {
    /// `GET path`, returning the JSON body.
    pub async fn get_json(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, AgentError> {
        self.call("GET", path, None, timeout).await
    }

    /// `method path` with an optional JSON body, returning the JSON answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, AgentError> {
        let fut = self.request(method, path, body);
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(AgentError::Timeout(path.to_string(), timeout)),
        }
    }

    /// `GET path` whose answer is streamed: the response body, read as it
    /// comes (the agent's NDJSON process events). The connection takes at
    /// most `connect_timeout` to answer with its headers.
    pub async fn stream(
        &self,
        path: &str,
        connect_timeout: Duration,
    ) -> Result<hyper::body::Incoming, AgentError> {
        let resp = match tokio::time::timeout(connect_timeout, self.send("GET", path, None)).await {
            Ok(r) => r?,
            Err(_) => return Err(AgentError::Timeout(path.to_string(), connect_timeout)),
        };
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = read_capped(resp.into_body(), 500).await;
            return Err(AgentError::Status {
                status,
                path: path.into(),
                body,
            });
        }
        Ok(resp.into_body())
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, AgentError> {
        let addr: SocketAddr = (
            polydev_core::guest::GUEST_ADDR
                .parse::<std::net::Ipv4Addr>()
                .expect("constant address"),
            self.port,
        )
            .into();
        let netns = self.netns.clone();
        let std_stream = tokio::task::spawn_blocking(move || {
            polydev_net::netns::connect_tcp(&netns, addr, Duration::from_secs(3))
        })
        .await
        .map_err(|e| AgentError::Http(path.into(), e.to_string()))?
        .map_err(|e| AgentError::Connect {
            netns: self.netns.clone(),
            addr,
            detail: e.to_string(),
        })?;
        std_stream
            .set_nonblocking(true)
            .map_err(|e| AgentError::Http(path.into(), e.to_string()))?;
        let stream = tokio::net::TcpStream::from_std(std_stream)
            .map_err(|e| AgentError::Http(path.into(), e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AgentError::Http(path.into(), e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(
                "host",
                format!("{}:{}", polydev_core::guest::GUEST_ADDR, self.port),
            )
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| AgentError::Http(path.into(), e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| AgentError::Http(path.into(), e.to_string()))
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, AgentError> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| AgentError::Http(path.into(), e.to_string()))?
            .to_bytes();
        if !(200..300).contains(&status) {
            return Err(AgentError::Status {
                status,
                path: path.into(),
                body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| AgentError::Http(path.into(), format!("bad JSON: {e}")))
    }
}

/// Reads at most `max` bytes of a body as text (for error messages).
async fn read_capped(mut body: hyper::body::Incoming, max: usize) -> String {
    use hyper::body::Body;
    let mut out = Vec::new();
    while out.len() < max {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d);
                }
            }
            _ => break,
        }
    }
    out.truncate(max);
    String::from_utf8_lossy(&out).into_owned()
}
