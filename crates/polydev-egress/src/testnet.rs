//! A stand-in internet for egress tests and benchmarks: a network namespace
//! linked to the host by a veth pair whose host end is the controller's
//! egress uplink (`POLYDEV_EGRESS_UPLINK`), addressed from the documentation
//! ranges 198.51.100.0/24 (the link, the source pool) and 203.0.113.0/24
//! (the servers). Inside it: a DNS server (hickory-proto) for the `.test`
//! zone, web servers on port 80, TCP loggers on 443, UDP loggers, an HTTP
//! CONNECT proxy, a TCP sink for throughput, and whatever extra server the
//! caller adds (the connect-flow tests add the OAuth stand-in). Every server
//! logs what reached it, so a test can assert that nothing did. It is a
//! stand-in: real resolvers, sites and proxies speak the same protocols.
//!
//! Nothing leaves the machine: the namespace has no default route, and the
//! host routes only the servers' own addresses into it (each a `/32`, so
//! other addresses of those ranges keep their usual route).
//! A watch table counts VM packets forwarded to the host's real default
//! route (it must stay 0). Dropping it stops the servers and removes the
//! namespace, the link, the routes and the watch table.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A server the caller adds: started on the internet's runtime, inside its
/// namespace.
pub type ExtraServer = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Host end of the link (the uplink's address; masqueraded VM traffic comes from it).
pub const UPLINK_ADDR: &str = "198.51.100.1";
/// The internet's end of the link.
pub const INET_ADDR: &str = "198.51.100.2";
/// Host addresses for per-user source addresses (`POLYDEV_EGRESS_SOURCE_POOL`).
pub const POOL: [&str; 2] = ["198.51.100.11", "198.51.100.12"];
/// The DNS server (`POLYDEV_DNS_UPSTREAM`).
pub const DNS_ADDR: &str = "203.0.113.53";
/// `web.test`: a web server (80), a TCP logger (443), a UDP logger (9999).
pub const WEB_ADDR: &str = "203.0.113.10";
/// `other.test`: the same servers as `web.test`.
pub const OTHER_ADDR: &str = "203.0.113.20";
/// `proxy.test`: an HTTP CONNECT proxy on 3128, a SOCKS5 proxy on 1080.
pub const PROXY_ADDR: &str = "203.0.113.30";
/// Nothing listens here: a proxy that refuses.
pub const DEAD_PROXY_ADDR: &str = "203.0.113.31";
/// A shared-address-space server (always denied to VMs) behind the uplink.
pub const DENIED_ADDR: &str = "100.64.0.7";
/// The TCP sink (port [`SINK_PORT`]): reads to the end, logs bytes and time.
pub const SINK_ADDR: &str = "203.0.113.60";
/// Port of the sink.
pub const SINK_PORT: u16 = 5001;
/// Where an extra server of the caller's may listen (`provider.test`).
pub const EXTRA_ADDR: &str = "203.0.113.40";

/// Every server address inside the namespace: each is routed to it from the
/// host, one `/32` at a time.
pub const SERVER_ADDRS: [&str; 8] = [
    DNS_ADDR,
    WEB_ADDR,
    OTHER_ADDR,
    PROXY_ADDR,
    DEAD_PROXY_ADDR,
    DENIED_ADDR,
    SINK_ADDR,
    EXTRA_ADDR,
];

/// The `.test` zone.
pub fn zone(name: &str) -> Option<Ipv4Addr> {
    let a = match name.trim_end_matches('.') {
        "web.test" => WEB_ADDR,
        "other.test" => OTHER_ADDR,
        "proxy.test" => PROXY_ADDR,
        "denied.test" => DENIED_ADDR,
        "sink.test" => SINK_ADDR,
        n if n == "provider.test" || n.ends_with(".provider.test") => EXTRA_ADDR,
        _ => return None,
    };
    a.parse().ok()
}

/// What reached the servers, one line each.
pub type Log = Arc<Mutex<Vec<String>>>;

/// The running stand-in internet; dropping it removes everything.
pub struct TestInternet {
    /// Its namespace.
    pub ns: String,
    /// Host end of the link: the controller's uplink.
    pub uplink: String,
    /// What reached its servers.
    pub log: Log,
    watch: String,
    ip_forward: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn must(cmd: &str, args: &[&str]) -> Result<(), String> {
    run(cmd, args).map(|_| ())
}

fn note(log: &Log, line: String) {
    log.lock().unwrap().push(line);
}

impl TestInternet {
    /// Creates it; `extra` (if any) runs inside, e.g. a server on
    /// [`EXTRA_ADDR`]. Needs root.
    pub fn start(extra: Option<ExtraServer>) -> Result<TestInternet, String> {
        let id = std::process::id() % 100000;
        let ns = format!("pdtinet-{id}");
        let uplink = format!("pdti{id}");
        let watch = format!("pdt_watch_{id}");
        let _ = run("ip", &["link", "del", &uplink]);
        let _ = run("ip", &["netns", "del", &ns]);
        must("ip", &["netns", "add", &ns])?;
        let mut me = TestInternet {
            ns: ns.clone(),
            uplink: uplink.clone(),
            log: Arc::new(Mutex::new(Vec::new())),
            watch: watch.clone(),
            // A controller with an uplink turns forwarding on: put it back.
            ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .unwrap_or_default(),
            stop: None,
            thread: None,
        };
        must(
            "ip",
            &[
                "link", "add", &uplink, "type", "veth", "peer", "name", "inet0", "netns", &ns,
            ],
        )?;
        must(
            "ip",
            &["addr", "add", &format!("{UPLINK_ADDR}/24"), "dev", &uplink],
        )?;
        for p in POOL {
            must("ip", &["addr", "add", &format!("{p}/32"), "dev", &uplink])?;
        }
        must("ip", &["link", "set", &uplink, "up"])?;
        must(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{INET_ADDR}/24"),
                "dev",
                "inet0",
            ],
        )?;
        must("ip", &["-n", &ns, "link", "set", "inet0", "up"])?;
        must("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        for a in SERVER_ADDRS {
            must(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{a}/32"), "dev", "lo"],
            )?;
        }
        for p in POOL {
            must(
                "ip",
                &[
                    "-n",
                    &ns,
                    "route",
                    "add",
                    &format!("{p}/32"),
                    "dev",
                    "inet0",
                ],
            )?;
        }
        // One host route per server address, not the whole range: the host
        // may reach real services at other documentation addresses (a
        // sandbox's package proxy, say), which must keep working meanwhile.
        for a in SERVER_ADDRS {
            must(
                "ip",
                &[
                    "route",
                    "replace",
                    &format!("{a}/32"),
                    "via",
                    INET_ADDR,
                    "dev",
                    &uplink,
                ],
            )?;
        }
        // Packets of VMs forwarded to the host's real uplink, after every
        // filter has had its say: must stay 0.
        if let Some(real) = crate::host::default_route_interface() {
            let script = format!(
                "table ip {watch} {{\n counter leaked {{ }}\n chain watch {{ type filter hook forward priority 100; policy accept;\n  iifname \"pe*\" oifname \"{real}\" counter name leaked\n }}\n}}\n"
            );
            crate::nft::apply(crate::nft::Target::Host, &script)
                .map_err(|e| format!("the watch table: {e}"))?;
        }
        let file = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let log = me.log.clone();
        me.stop = Some(tx);
        me.thread = Some(std::thread::spawn(move || {
            if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                let _ = ready_tx.send(Err(format!("setns: {e}")));
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match servers(log).await {
                    Ok(mut tasks) => {
                        if let Some(x) = extra {
                            tasks.push(tokio::spawn(x()));
                        }
                        let _ = ready_tx.send(Ok(()));
                        let _ = rx.await;
                        for t in tasks {
                            t.abort();
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        }));
        ready_rx
            .recv()
            .map_err(|e| format!("the test internet's servers: {e}"))?
            .map_err(|e| format!("starting the test internet's servers: {e}"))?;
        Ok(me)
    }

    /// Environment for a controller whose VMs use this internet.
    pub fn controller_env(&self) -> Vec<(String, String)> {
        vec![
            ("POLYDEV_EGRESS_UPLINK".into(), self.uplink.clone()),
            ("POLYDEV_DNS_UPSTREAM".into(), DNS_ADDR.into()),
            ("POLYDEV_EGRESS_SOURCE_POOL".into(), POOL.join(",")),
        ]
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Forgets the log.
    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }

    /// VM packets forwarded to the host's real default route.
    pub fn leaked_packets(&self) -> u64 {
        crate::nft::counters(crate::nft::Target::Host, "ip", &self.watch)
            .ok()
            .and_then(|c| c.get("leaked").map(|x| x.0))
            .unwrap_or(0)
    }
}

impl Drop for TestInternet {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = crate::nft::delete_table(crate::nft::Target::Host, "ip", &self.watch);
        for a in SERVER_ADDRS {
            let _ = run("ip", &["route", "del", &format!("{a}/32")]);
        }
        let _ = run("ip", &["link", "del", &self.uplink]);
        let _ = run("ip", &["netns", "del", &self.ns]);
        if self.ip_forward.trim() == "0" {
            let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "0");
        }
    }
}

async fn servers(log: Log) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    use tokio::net::{TcpListener, UdpSocket};
    let mut tasks = Vec::new();
    let bind = |a: &str, p: u16| -> SocketAddr { format!("{a}:{p}").parse().unwrap() };
    let e = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let dns = UdpSocket::bind(bind(DNS_ADDR, 53))
        .await
        .map_err(|x| e("dns", x))?;
    tasks.push(tokio::spawn(dns_server(dns, log.clone())));
    for (addr, name) in [
        (WEB_ADDR, "web.test"),
        (OTHER_ADDR, "other.test"),
        (DENIED_ADDR, "denied.test"),
    ] {
        let l = TcpListener::bind(bind(addr, 80))
            .await
            .map_err(|x| e("web", x))?;
        tasks.push(tokio::spawn(web_server(l, name, log.clone())));
        let t = TcpListener::bind(bind(addr, 443))
            .await
            .map_err(|x| e("tls", x))?;
        tasks.push(tokio::spawn(tcp_logger(t, log.clone())));
        let u = UdpSocket::bind(bind(addr, 9999))
            .await
            .map_err(|x| e("udp", x))?;
        tasks.push(tokio::spawn(udp_logger(u, log.clone())));
    }
    let p = TcpListener::bind(bind(PROXY_ADDR, 3128))
        .await
        .map_err(|x| e("proxy", x))?;
    tasks.push(tokio::spawn(connect_proxy(p, log.clone())));
    let s5 = TcpListener::bind(bind(PROXY_ADDR, 1080))
        .await
        .map_err(|x| e("socks5", x))?;
    tasks.push(tokio::spawn(socks5_proxy(s5, log.clone())));
    let k = TcpListener::bind(bind(SINK_ADDR, SINK_PORT))
        .await
        .map_err(|x| e("sink", x))?;
    tasks.push(tokio::spawn(sink(k, log.clone())));
    Ok(tasks)
}

async fn dns_server(s: tokio::net::UdpSocket, log: Log) {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{rdata, RData, Record, RecordType};
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = s.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(query) = q.queries.first().cloned() else {
            continue;
        };
        let name = query
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        note(
            &log,
            format!("dns {name} {:?} from {}", query.query_type(), from.ip()),
        );
        let mut r = Message::response(q.metadata.id, q.metadata.op_code);
        r.metadata.message_type = MessageType::Response;
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.metadata.authoritative = true;
        r.queries = q.queries.clone();
        match zone(&name) {
            None => r.metadata.response_code = ResponseCode::NXDomain,
            Some(ip) => match query.query_type() {
                RecordType::A => r.answers.push(Record::from_rdata(
                    query.name().clone(),
                    300,
                    RData::A(rdata::A(ip)),
                )),
                // An IPv6 answer the forwarder must drop.
                RecordType::AAAA => r.answers.push(Record::from_rdata(
                    query.name().clone(),
                    300,
                    RData::AAAA(rdata::AAAA("2001:db8::1".parse().unwrap())),
                )),
                _ => {}
            },
        }
        if let Ok(b) = r.to_vec() {
            let _ = s.send_to(&b, from).await;
        }
    }
}

async fn read_head(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    head
}

async fn web_server(l: tokio::net::TcpListener, name: &'static str, log: Log) {
    use tokio::io::AsyncWriteExt;
    loop {
        let Ok((mut s, peer)) = l.accept().await else {
            continue;
        };
        let log = log.clone();
        tokio::spawn(async move {
            let head = read_head(&mut s).await;
            let text = String::from_utf8_lossy(&head);
            let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let host = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Host: ")
                        .or_else(|| l.strip_prefix("host: "))
                })
                .unwrap_or("")
                .trim()
                .to_string();
            note(
                &log,
                format!("http {name} from {} host {host} path {path}", peer.ip()),
            );
            let body = format!(
                "<html><head><title>{name}</title></head><body><h1 id=\"who\">{name} says hello to {}</h1></body></html>\n",
                peer.ip()
            );
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        });
    }
}

async fn sink(l: tokio::net::TcpListener, log: Log) {
    use tokio::io::AsyncReadExt;
    loop {
        let Ok((mut s, peer)) = l.accept().await else {
            continue;
        };
        let log = log.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            let mut first = None;
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(std::time::Instant::now);
                total += n as u64;
            }
            let us = first.map(|f| f.elapsed().as_micros()).unwrap_or(0);
            note(
                &log,
                format!("sink {total} bytes in {us} us from {}", peer.ip()),
            );
        });
    }
}

async fn tcp_logger(l: tokio::net::TcpListener, log: Log) {
    loop {
        let Ok((s, peer)) = l.accept().await else {
            continue;
        };
        let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
        note(&log, format!("tcp {local} from {}", peer.ip()));
    }
}

async fn udp_logger(u: tokio::net::UdpSocket, log: Log) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((_, from)) = u.recv_from(&mut buf).await else {
            continue;
        };
        let local = u.local_addr().map(|a| a.to_string()).unwrap_or_default();
        note(&log, format!("udp {local} from {}", from.ip()));
    }
}

/// SOCKS5 (RFC 1928) CONNECT, without authentication or with a user name
/// and password (RFC 1929, any accepted), names resolved in the `.test` zone.
async fn socks5_proxy(l: tokio::net::TcpListener, log: Log) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, peer)) = l.accept().await else {
            continue;
        };
        let log = log.clone();
        tokio::spawn(async move {
            let mut h = [0u8; 2];
            if s.read_exact(&mut h).await.is_err() || h[0] != 5 {
                return;
            }
            let mut methods = vec![0u8; h[1] as usize];
            if s.read_exact(&mut methods).await.is_err() {
                return;
            }
            if methods.contains(&2) {
                let _ = s.write_all(&[5, 2]).await;
                let mut v = [0u8; 2];
                if s.read_exact(&mut v).await.is_err() {
                    return;
                }
                let mut user = vec![0u8; v[1] as usize];
                let mut plen = [0u8; 1];
                if s.read_exact(&mut user).await.is_err() || s.read_exact(&mut plen).await.is_err()
                {
                    return;
                }
                let mut pass = vec![0u8; plen[0] as usize];
                if s.read_exact(&mut pass).await.is_err() {
                    return;
                }
                let _ = s.write_all(&[1, 0]).await;
            } else {
                let _ = s.write_all(&[5, 0]).await;
            }
            let mut req = [0u8; 4];
            if s.read_exact(&mut req).await.is_err() || req[1] != 1 {
                return;
            }
            let host = match req[3] {
                1 => {
                    let mut a = [0u8; 4];
                    if s.read_exact(&mut a).await.is_err() {
                        return;
                    }
                    Ipv4Addr::from(a).to_string()
                }
                3 => {
                    let mut n = [0u8; 1];
                    if s.read_exact(&mut n).await.is_err() {
                        return;
                    }
                    let mut name = vec![0u8; n[0] as usize];
                    if s.read_exact(&mut name).await.is_err() {
                        return;
                    }
                    String::from_utf8_lossy(&name).into_owned()
                }
                _ => return,
            };
            let mut port = [0u8; 2];
            if s.read_exact(&mut port).await.is_err() {
                return;
            }
            let port = u16::from_be_bytes(port);
            note(&log, format!("socks5 {host}:{port} from {}", peer.ip()));
            let ip = zone(&host).or_else(|| host.parse().ok());
            let up = match ip {
                Some(ip) => tokio::net::TcpStream::connect((ip, port)).await.ok(),
                None => None,
            };
            match up {
                Some(mut up) => {
                    let _ = s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await;
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
                None => {
                    let _ = s.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0]).await;
                }
            }
        });
    }
}

async fn connect_proxy(l: tokio::net::TcpListener, log: Log) {
    use tokio::io::AsyncWriteExt;
    loop {
        let Ok((mut s, peer)) = l.accept().await else {
            continue;
        };
        let log = log.clone();
        tokio::spawn(async move {
            let head = read_head(&mut s).await;
            let text = String::from_utf8_lossy(&head);
            let mut parts = text.split_whitespace();
            let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
                let _ = s
                    .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                    .await;
                return;
            };
            note(&log, format!("connect {target} from {}", peer.ip()));
            let Some((h, p)) = target.rsplit_once(':') else {
                return;
            };
            let ip = zone(h).or_else(|| h.parse().ok());
            let Some(ip) = ip else {
                let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                return;
            };
            let Ok(port) = p.parse::<u16>() else { return };
            match tokio::net::TcpStream::connect((ip, port)).await {
                Ok(mut up) => {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
                Err(_) => {
                    let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                }
            }
        });
    }
}
