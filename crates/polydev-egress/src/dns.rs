//! Each VM's DNS server: a forwarder listening on the guest's gateway
//! address inside the VM's namespace (UDP and TCP port 53), asking the
//! host's resolvers from the host namespace (so `127.0.0.53` of
//! systemd-resolved works) or `POLYDEV_DNS_UPSTREAM`.
//!
//! It is where policy meets names: internet off answers `REFUSED`, a name the
//! policy does not allow answers `NXDOMAIN`, AAAA answers are dropped (IPv6
//! is off), and in allowlist mode the A records of an allowed answer are let
//! through the VM's firewall for their TTL *before* the guest sees them.
//! Messages are parsed and written by `hickory-proto` (Hickory DNS's wire
//! format library, the one the Rust DNS ecosystem maintains).

use crate::state::VmState;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Shortest time a learned address stays allowed, whatever the record's TTL
/// (clients such as Chromium keep answers for about a minute).
pub const MIN_LEARNED_TTL: Duration = Duration::from_secs(60);
/// Longest time a learned address stays allowed without a new answer.
pub const MAX_LEARNED_TTL: Duration = Duration::from_secs(3600);
/// Time for one upstream to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest DNS message accepted over TCP.
const MAX_TCP_MESSAGE: usize = 16 * 1024;

/// The resolvers queries are forwarded to.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// Addresses, tried in order.
    pub addrs: Vec<SocketAddr>,
}

impl Upstreams {
    /// From `spec` (comma-separated addresses, port 53 unless given), or
    /// the host's `/etc/resolv.conf`.
    pub fn from_spec(spec: Option<&str>) -> Result<Upstreams, String> {
        let text;
        let items: Vec<&str> = match spec {
            Some(s) if !s.trim().is_empty() => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect(),
            _ => {
                text = std::fs::read_to_string("/etc/resolv.conf")
                    .map_err(|e| format!("reading /etc/resolv.conf for the host's resolvers: {e}; set POLYDEV_DNS_UPSTREAM"))?;
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("nameserver"))
                    .map(str::trim)
                    .filter(|a| !a.contains(':') || a.parse::<SocketAddr>().is_ok())
                    .collect()
            }
        };
        let mut addrs = Vec::new();
        for i in items {
            let a = i
                .parse::<SocketAddr>()
                .or_else(|_| {
                    i.parse::<std::net::IpAddr>()
                        .map(|ip| SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    format!("DNS upstream {i:?} is not an address (a.b.c.d or a.b.c.d:port)")
                })?;
            addrs.push(a);
        }
        if addrs.is_empty() {
            return Err("no DNS upstream: the host's /etc/resolv.conf names no nameserver; set POLYDEV_DNS_UPSTREAM".into());
        }
        Ok(Upstreams { addrs })
    }

    /// Sends `query` to each upstream in turn until one answers (TCP when
    /// the UDP answer is truncated).
    pub async fn exchange(&self, query: &[u8]) -> Result<Vec<u8>, String> {
        let mut last = String::from("no upstream");
        for a in &self.addrs {
            match tokio::time::timeout(UPSTREAM_TIMEOUT, udp_exchange(*a, query)).await {
                Ok(Ok(r)) => {
                    if r.len() > 2 && r[2] & 0x02 != 0 {
                        if let Ok(Ok(t)) =
                            tokio::time::timeout(UPSTREAM_TIMEOUT, tcp_exchange(*a, query)).await
                        {
                            return Ok(t);
                        }
                    }
                    return Ok(r);
                }
                Ok(Err(e)) => last = format!("{a}: {e}"),
                Err(_) => last = format!("{a}: no answer in {UPSTREAM_TIMEOUT:?}"),
            }
        }
        Err(last)
    }
}

async fn udp_exchange(to: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("constant")
    } else {
        "[::]:0".parse().expect("constant")
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(to).await?;
    s.send(query).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = s.recv(&mut buf).await?;
        // Only the answer to this query (same id).
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(to: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(to).await?;
    s.write_all(&(query.len() as u16).to_be_bytes()).await?;
    s.write_all(query).await?;
    read_framed(&mut s).await
}

async fn read_framed(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let n = u16::from_be_bytes(len) as usize;
    if n > MAX_TCP_MESSAGE {
        return Err(std::io::Error::other("DNS message too long"));
    }
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

fn reply_code(q: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(q.metadata.id, q.metadata.op_code, code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.queries = q.queries.clone();
    m.to_vec().ok()
}

/// Answers one query from the guest: the bytes to send back, or `None` to
/// stay silent (unparseable input).
pub async fn answer(vm: &VmState, upstreams: &Upstreams, raw: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(raw).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    if q.metadata.op_code != OpCode::Query || q.queries.len() != 1 {
        return reply_code(&q, ResponseCode::NotImp);
    }
    let policy = vm.policy();
    if !policy.internet {
        return reply_code(&q, ResponseCode::Refused);
    }
    let query = &q.queries[0];
    let name = crate::policy::normalise_name(&query.name().to_ascii());
    if !policy.name_allowed(&name) {
        tracing::debug!(vm_id = %vm.vm_id, name, "DNS name refused by policy");
        vm.note_refused_name();
        return reply_code(&q, ResponseCode::NXDomain);
    }
    if query.query_type() == RecordType::AAAA {
        // IPv6 is off: an empty answer sends clients to A at once.
        return reply_code(&q, ResponseCode::NoError);
    }
    let r = match upstreams.exchange(raw).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(vm_id = %vm.vm_id, name, error = %e, "DNS upstream failed");
            return reply_code(&q, ResponseCode::ServFail);
        }
    };
    let mut m = match Message::from_vec(&r) {
        Ok(m) if m.metadata.id == q.metadata.id => m,
        _ => return reply_code(&q, ResponseCode::ServFail),
    };
    m.answers.retain(|r| r.record_type() != RecordType::AAAA);
    m.additionals
        .retain(|r| r.record_type() != RecordType::AAAA);
    if policy.domain_mode() {
        let mut addrs: Vec<Ipv4Addr> = Vec::new();
        let mut ttl = MAX_LEARNED_TTL;
        for rec in &m.answers {
            if let RData::A(a) = &rec.data {
                addrs.push(a.0);
                ttl = ttl.min(Duration::from_secs(rec.ttl as u64));
            }
        }
        if !addrs.is_empty() {
            let ttl = ttl.clamp(MIN_LEARNED_TTL, MAX_LEARNED_TTL);
            if let Err(e) = vm.learn(&addrs, ttl).await {
                tracing::warn!(vm_id = %vm.vm_id, name, error = %e, "letting a resolved address through failed");
                return reply_code(&q, ResponseCode::ServFail);
            }
        }
    }
    m.to_vec().ok()
}

/// Serves DNS for one VM on sockets already bound inside its namespace.
pub async fn serve(vm: Arc<VmState>, upstreams: Arc<Upstreams>, udp: UdpSocket, tcp: TcpListener) {
    let udp = Arc::new(udp);
    let tcp_task = {
        let vm = vm.clone();
        let up = upstreams.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let vm = vm.clone();
                let up = up.clone();
                tokio::spawn(async move {
                    while let Ok(Ok(q)) =
                        tokio::time::timeout(Duration::from_secs(10), read_framed(&mut s)).await
                    {
                        let Some(a) = answer(&vm, &up, &q).await else {
                            break;
                        };
                        if s.write_all(&(a.len() as u16).to_be_bytes()).await.is_err()
                            || s.write_all(&a).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        })
    };
    let _abort = crate::AbortOnDrop(tcp_task);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let q = buf[..n].to_vec();
        let vm = vm.clone();
        let up = upstreams.clone();
        let udp = udp.clone();
        tokio::spawn(async move {
            if let Some(mut a) = answer(&vm, &up, &q).await {
                if a.len() > 512 && edns_size(&q) < a.len() {
                    // Too big for the client's UDP: tell it to ask over TCP.
                    if let Ok(mut m) = Message::from_vec(&a) {
                        m.answers.clear();
                        m.authorities.clear();
                        m.additionals.clear();
                        m.metadata.truncation = true;
                        a = m.to_vec().unwrap_or_default();
                    }
                }
                let _ = udp.send_to(&a, from).await;
            }
        });
    }
}

fn edns_size(q: &[u8]) -> usize {
    Message::from_vec(q)
        .ok()
        .and_then(|m| m.edns.map(|e| e.max_payload() as usize))
        .unwrap_or(512)
        .max(512)
}
