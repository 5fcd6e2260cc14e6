//! The controller's client for a guest agent. Every request is made on a TCP
//! socket opened inside the VM's network namespace and carries the VM's
//! bearer token.
//!
//! The guest is not trusted, so every exchange is bounded: a request and its
//! whole answer must finish within the caller's timeout, and an answer is
//! read frame by frame up to [`MAX_ANSWER_BYTES`] (or the caller's own
//! limit), the connection dropped at the first byte beyond it.

use http_body_util::Full;
use hyper::body::{Body, Bytes};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// The largest answer an agent may give to a JSON request, unless the caller
/// asks for another limit. The largest legitimate answers are `/exec`
/// outputs (1 MiB per stream by default) and `/credentials/get`: the
/// credential file and its companions, each bounded by its provider's limit
/// in `polydev_login::provider` (64 KiB at most), as base64 and as text — far
/// below this.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// How much of an error answer's body is read and quoted.
const ERROR_BODY_BYTES: usize = 500;

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
    /// The answer was longer than the controller reads.
    #[error("agent answer to {path} is larger than {limit} bytes; refused")]
    TooLarge {
        /// Path requested.
        path: String,
        /// The limit in bytes.
        limit: usize,
    },
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

    /// `method path` with an optional JSON body, returning the JSON answer
    /// (at most [`MAX_ANSWER_BYTES`]); connection, request and the whole
    /// answer take at most `timeout`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, AgentError> {
        self.call_limited(method, path, body, timeout, MAX_ANSWER_BYTES)
            .await
    }

    /// [`AgentTarget::call`] with answers of up to `max_bytes`.
    pub async fn call_limited(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<serde_json::Value, AgentError> {
        within(path, timeout, async {
            let io = self.connect(path).await?;
            json_exchange(io, &self.exchange(method, path), body, max_bytes).await
        })
        .await
    }

    /// `GET path` whose answer is streamed: the response body, read as it
    /// comes (the agent's NDJSON process events). The connection takes at
    /// most `connect_timeout` to answer with its headers (and, for an error
    /// status, the start of its body).
    pub async fn stream(
        &self,
        path: &str,
        connect_timeout: Duration,
    ) -> Result<hyper::body::Incoming, AgentError> {
        within(path, connect_timeout, async {
            let io = self.connect(path).await?;
            stream_exchange(io, &self.exchange("GET", path)).await
        })
        .await
    }

    fn exchange<'a>(&'a self, method: &'a str, path: &'a str) -> Exchange<'a> {
        Exchange {
            authority: format!("{}:{}", polydev_core::guest::GUEST_ADDR, self.port),
            token: &self.token,
            method,
            path,
        }
    }

    /// A TCP connection to the agent, opened inside the VM's namespace.
    async fn connect(&self, path: &str) -> Result<tokio::net::TcpStream, AgentError> {
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
        tokio::net::TcpStream::from_std(std_stream)
            .map_err(|e| AgentError::Http(path.into(), e.to_string()))
    }
}

/// The fixed parts of one request to an agent.
struct Exchange<'a> {
    /// `Host` header.
    authority: String,
    /// Bearer token.
    token: &'a str,
    method: &'a str,
    path: &'a str,
}

/// `fut`, or [`AgentError::Timeout`] once `limit` has passed.
async fn within<T>(
    path: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(AgentError::Timeout(path.to_string(), limit)),
    }
}

/// Aborts the connection's task when dropped: once an exchange is over (or
/// given up), nothing more is read from the guest.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    /// Lets the task run on its own.
    fn detach(mut self) {
        self.0.take();
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Sends one request over `io`; returns the answer's head and body, and the
/// task driving the connection.
async fn send(
    io: tokio::net::TcpStream,
    x: &Exchange<'_>,
    body: Option<serde_json::Value>,
) -> Result<(hyper::Response<hyper::body::Incoming>, AbortOnDrop), AgentError> {
    let path = x.path;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| AgentError::Http(path.into(), e.to_string()))?;
    let conn = AbortOnDrop(Some(tokio::spawn(async move {
        let _ = conn.await;
    })));
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(x.method)
        .uri(path)
        .header("host", &x.authority)
        .header("authorization", format!("Bearer {}", x.token))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| AgentError::Http(path.into(), e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| AgentError::Http(path.into(), e.to_string()))?;
    Ok((resp, conn))
}

/// One JSON request over `io` and its answer, read up to `max` bytes.
async fn json_exchange(
    io: tokio::net::TcpStream,
    x: &Exchange<'_>,
    body: Option<serde_json::Value>,
    max: usize,
) -> Result<serde_json::Value, AgentError> {
    let (resp, _conn) = send(io, x, body).await?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(AgentError::Status {
            status,
            path: x.path.into(),
            body: read_prefix(resp.into_body(), ERROR_BODY_BYTES).await,
        });
    }
    let bytes = read_limited(resp.into_body(), x.path, max).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AgentError::Http(x.path.into(), format!("bad JSON: {e}")))
}

/// One streamed request over `io`: the answer's body, once its status says
/// success. The connection lives as long as the body.
async fn stream_exchange(
    io: tokio::net::TcpStream,
    x: &Exchange<'_>,
) -> Result<hyper::body::Incoming, AgentError> {
    let (resp, conn) = send(io, x, None).await?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(AgentError::Status {
            status,
            path: x.path.into(),
            body: read_prefix(resp.into_body(), ERROR_BODY_BYTES).await,
        });
    }
    // The body's reader owns the connection from here: hyper closes it when
    // the body is dropped.
    conn.detach();
    Ok(resp.into_body())
}

/// The whole body, frame by frame, failing as soon as it passes `max`
/// bytes (a `Content-Length` above `max` fails before any is read).
async fn read_limited<B>(mut body: B, path: &str, max: usize) -> Result<Vec<u8>, AgentError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let too_large = || AgentError::TooLarge {
        path: path.into(),
        limit: max,
    };
    if body.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    let mut out = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Ok(out),
            Some(Err(e)) => return Err(AgentError::Http(path.into(), e.to_string())),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    if d.len() > max - out.len() {
                        return Err(too_large());
                    }
                    out.extend_from_slice(&d);
                }
            }
        }
    }
}

/// Reads at most `max` bytes of a body as text (for error messages); the
/// rest is not read.
async fn read_prefix<B>(mut body: B, max: usize) -> String
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut out = Vec::new();
    while out.len() < max {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    out.extend_from_slice(&d[..d.len().min(max - out.len())]);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A hostile agent on loopback: reads one request's head, then plays
    /// `script` on the connection. Returns its address and how many bytes
    /// the script managed to write.
    async fn hostile<F, Fut>(script: F) -> (SocketAddr, Arc<AtomicU64>)
    where
        F: FnOnce(TcpStream, Arc<AtomicU64>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&b[..n]);
            }
            script(s, w).await;
        });
        (addr, written)
    }

    /// Writes `chunk` again and again (at most `most` bytes), counting.
    async fn flood(s: &mut TcpStream, chunk: &[u8], most: u64, written: &AtomicU64) {
        while written.load(Ordering::Relaxed) < most {
            if s.write_all(chunk).await.is_err() {
                return;
            }
            written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    }

    fn exchange(path: &str) -> Exchange<'_> {
        Exchange {
            authority: "169.254.0.22:7070".into(),
            token: "t",
            method: "GET",
            path,
        }
    }

    async fn ask(
        addr: SocketAddr,
        max: usize,
        limit: Duration,
    ) -> Result<serde_json::Value, AgentError> {
        let io = TcpStream::connect(addr).await.unwrap();
        within("/x", limit, json_exchange(io, &exchange("/x"), None, max)).await
    }

    const FLOOD: u64 = 256 << 20;

    #[tokio::test]
    async fn a_well_formed_answer_is_read() {
        let (addr, _) = hostile(|mut s, _| async move {
            let body = r#"{"ok":true}"#;
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        })
        .await;
        let v = ask(addr, 1024, Duration::from_secs(5)).await.unwrap();
        assert_eq!(v, serde_json::json!({"ok": true}));
    }

    #[tokio::test]
    async fn an_endless_chunked_answer_stops_at_the_limit() {
        let (addr, written) = hostile(|mut s, w| async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("4000\r\n{}\r\n", "a".repeat(0x4000));
            flood(&mut s, chunk.as_bytes(), FLOOD, &w).await;
        })
        .await;
        let started = std::time::Instant::now();
        let e = ask(addr, 1 << 20, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, AgentError::TooLarge { path, limit } if path == "/x" && *limit == 1 << 20),
            "{e}"
        );
        assert!(
            e.to_string().contains("/x") && e.to_string().contains("1048576"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // The connection was dropped: the agent could not write on and on.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = written.load(Ordering::Relaxed);
        assert!(sent < 64 << 20, "the controller kept reading: {sent} bytes");
    }

    #[tokio::test]
    async fn a_declared_huge_answer_is_refused_before_reading() {
        let (addr, written) = hostile(|mut s, w| async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n")
                .await;
            flood(&mut s, &[b'a'; 65536], FLOOD, &w).await;
        })
        .await;
        let e = ask(addr, 4096, Duration::from_secs(30)).await.unwrap_err();
        assert!(matches!(e, AgentError::TooLarge { limit: 4096, .. }), "{e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(written.load(Ordering::Relaxed) < 64 << 20);
    }

    #[tokio::test]
    async fn a_trickled_answer_ends_at_the_deadline() {
        let (addr, _) = hostile(|mut s, _| async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n{")
                .await;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if s.write_all(b" ").await.is_err() {
                    return;
                }
            }
        })
        .await;
        let started = std::time::Instant::now();
        let e = ask(addr, 1 << 20, Duration::from_millis(400))
            .await
            .unwrap_err();
        assert!(matches!(e, AgentError::Timeout(..)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn garbage_is_a_clear_error() {
        let (addr, _) = hostile(|mut s, _| async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nnot json{")
                .await;
        })
        .await;
        let e = ask(addr, 1024, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("bad JSON"), "{e}");
        let (addr, _) = hostile(|mut s, _| async move {
            let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        })
        .await;
        let e = ask(addr, 1024, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, AgentError::Http(..)), "{e}");
    }

    #[tokio::test]
    async fn an_error_status_quotes_only_the_start_of_an_endless_body() {
        let (addr, written) = hostile(|mut s, w| async move {
            let _ = s
                .write_all(b"HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("4000\r\n{}\r\n", "e".repeat(0x4000));
            flood(&mut s, chunk.as_bytes(), FLOOD, &w).await;
        })
        .await;
        let e = ask(addr, 1 << 20, Duration::from_secs(30))
            .await
            .unwrap_err();
        match &e {
            AgentError::Status { status, body, .. } => {
                assert_eq!(*status, 500);
                assert_eq!(body.len(), ERROR_BODY_BYTES);
            }
            other => panic!("{other}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(written.load(Ordering::Relaxed) < 64 << 20);
    }

    #[tokio::test]
    async fn a_stream_refused_with_a_trickled_body_ends_at_the_deadline() {
        let (addr, _) = hostile(|mut s, _| async move {
            let _ = s
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 100000\r\n\r\nx")
                .await;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if s.write_all(b"y").await.is_err() {
                    return;
                }
            }
        })
        .await;
        let io = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let e = within(
            "/procs/p/events",
            Duration::from_millis(400),
            stream_exchange(io, &exchange("/procs/p/events")),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AgentError::Timeout(..)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    // Properties over arbitrary answers (see `crate::fuzz`).

    use proptest::collection::vec;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body giving its frames one by one (an `Err` is a broken
    /// connection), announcing `declared` bytes as its exact length if set.
    struct Frames {
        frames: VecDeque<Result<Vec<u8>, String>>,
        declared: Option<u64>,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = String;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, String>>> {
            let next = self.frames.pop_front();
            Poll::Ready(next.map(|f| f.map(|d| hyper::body::Frame::data(Bytes::from(d)))))
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            self.declared
                .map(hyper::body::SizeHint::with_exact)
                .unwrap_or_default()
        }
    }

    fn frames() -> impl Strategy<Value = Vec<Result<Vec<u8>, String>>> {
        let frame = prop_oneof![
            8 => vec(any::<u8>(), 0..200).prop_map(Ok),
            1 => Just(Err("connection reset".to_string())),
        ];
        vec(frame, 0..8)
    }

    /// The bytes of `frames` before the first broken one, and whether one broke.
    fn delivered(frames: &[Result<Vec<u8>, String>]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for f in frames {
            match f {
                Ok(d) => out.extend_from_slice(d),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    /// An answer as a hostile agent might write it: anything, or an HTTP
    /// head with a status, framing headers that may lie, and a body.
    fn raw_answer() -> impl Strategy<Value = Vec<u8>> {
        let header = prop_oneof![
            (0u64..2000).prop_map(|n| format!("content-length: {n}\r\n")),
            Just("transfer-encoding: chunked\r\n".to_string()),
            Just("content-length: 99999999999999999999\r\n".to_string()),
            "[a-z-]{1,12}: [ -~]{0,20}\r\n",
        ];
        let body = prop_oneof![
            vec(any::<u8>(), 0..300),
            Just(br#"{"ok":true}"#.to_vec()),
            "[0-9a-f]{1,3}\r\n[ -~]{0,40}\r\n0\r\n\r\n".prop_map(String::into_bytes),
        ];
        prop_oneof![
            vec(any::<u8>(), 0..300),
            (100u16..600, vec(header, 0..3), body).prop_map(|(status, headers, body)| {
                let head = format!("HTTP/1.1 {status} X\r\n{}\r\n", headers.concat());
                let mut a = head.into_bytes();
                a.extend(body);
                a
            }),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(2048))]

        /// An answer is read whole when it fits in the limit; one beyond
        /// it (or announcing more) is refused; a broken one is an error.
        #[test]
        fn answers_are_read_within_the_limit(
            fs in frames(),
            max in 0usize..1000,
            declared in proptest::option::of(0u64..2000),
        ) {
            let (bytes, broke) = delivered(&fs);
            let body = Frames { frames: fs.into_iter().collect(), declared };
            let got = ready(read_limited(body, "/x", max));
            match got {
                Ok(b) => {
                    prop_assert!(!broke && b.len() <= max && declared.unwrap_or(0) <= max as u64);
                    prop_assert_eq!(b, bytes);
                }
                Err(AgentError::TooLarge { limit, .. }) => {
                    prop_assert_eq!(limit, max);
                    prop_assert!(bytes.len() > max || declared.is_some_and(|d| d > max as u64));
                }
                Err(AgentError::Http(..)) => prop_assert!(broke && bytes.len() <= max),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }

        /// An error answer is quoted by its first bytes only.
        #[test]
        fn error_bodies_are_quoted_by_their_start(fs in frames(), max in 0usize..600) {
            let (bytes, _) = delivered(&fs);
            let body = Frames { frames: fs.into_iter().collect(), declared: None };
            let quoted = ready(read_prefix(body, max));
            let want = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
            prop_assert_eq!(quoted, want);
        }
    }

    /// Runs a future that never waits (the bodies above are ready at once).
    fn ready<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    /// Any bytes from a hostile agent that then closes: the exchange ends
    /// at once with a JSON answer, a refusal at the limit or another error;
    /// never a panic, never a wait for the deadline.
    #[test]
    fn any_answer_ends_the_exchange() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut config = crate::fuzz::config(256);
        // A runner made by hand knows no source file to keep failures beside.
        config.failure_persistence = None;
        let mut runner = proptest::test_runner::TestRunner::new(config);
        runner
            .run(&(raw_answer(), 0usize..400), |(answer, max)| {
                let got = rt.block_on(async {
                    let (addr, _) = hostile(move |mut s, _| async move {
                        let _ = s.write_all(&answer).await;
                    })
                    .await;
                    ask(addr, max, Duration::from_secs(20)).await
                });
                match got {
                    Err(AgentError::Timeout(..)) => prop_assert!(false, "waited for the deadline"),
                    Err(AgentError::TooLarge { limit, .. }) => prop_assert_eq!(limit, max),
                    Ok(_) | Err(_) => {}
                }
                Ok(())
            })
            .unwrap();
    }
}
