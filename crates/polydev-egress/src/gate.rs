//! The gate: guest TCP that policy sends through the controller arrives here
//! (redirected by the VM's namespace firewall to [`GATE_PORT`] on the
//! gateway address). For each connection it learns the original destination
//! (`SO_ORIGINAL_DST`), reads the name the client asks for (TLS SNI on 443,
//! the HTTP `Host` on 80), checks the VM's policy, then dials from inside
//! the VM's namespace, directly or through the user's upstream proxy, and
//! relays bytes both ways.
//!
//! [`GATE_PORT`]: polydev_core::guest::GATE_PORT

use crate::state::VmState;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Most bytes read while looking for the SNI or Host.
const MAX_HELLO: usize = 16 * 1024;
/// Time the guest has to send them.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to connect to the destination or the proxy.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The destination the guest dialled, before the redirect.
pub fn original_dst(s: &TcpStream) -> std::io::Result<SocketAddrV4> {
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a valid socket fd and a properly sized, writable sockaddr_in.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            &mut addr as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// What the first bytes of a connection say about its name.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// A name was found.
    Name(String),
    /// The bytes are complete and carry no name.
    NoName,
    /// More bytes are needed.
    More,
}

/// Looks for the SNI of a TLS ClientHello (`tls-parser`).
pub fn sniff_tls(buf: &[u8]) -> Sniffed {
    use tls_parser::{
        parse_tls_extensions, parse_tls_plaintext, TlsExtension, TlsMessage, TlsMessageHandshake,
    };
    match parse_tls_plaintext(buf) {
        Ok((_, rec)) => {
            for m in rec.msg {
                if let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) = m {
                    let Some(ext) = ch.ext else {
                        return Sniffed::NoName;
                    };
                    let Ok((_, exts)) = parse_tls_extensions(ext) else {
                        return Sniffed::NoName;
                    };
                    for e in exts {
                        if let TlsExtension::SNI(names) = e {
                            for (t, n) in names {
                                if t.0 == 0 {
                                    if let Ok(s) = std::str::from_utf8(n) {
                                        return Sniffed::Name(s.to_string());
                                    }
                                }
                            }
                        }
                    }
                    return Sniffed::NoName;
                }
            }
            Sniffed::NoName
        }
        Err(tls_parser::nom::Err::Incomplete(_)) => Sniffed::More,
        Err(_) => Sniffed::NoName,
    }
}

/// Looks for the `Host` of an HTTP/1 request head (`httparse`).
pub fn sniff_http(buf: &[u8]) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|v| {
                let v = v.trim();
                let host = match v.rsplit_once(':') {
                    Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                    _ => v,
                };
                Sniffed::Name(host.to_string())
            })
            .unwrap_or(Sniffed::NoName),
        Ok(httparse::Status::Partial) => Sniffed::More,
        Err(_) => Sniffed::NoName,
    }
}

async fn read_name(s: &mut TcpStream, port: u16) -> (Vec<u8>, Option<String>) {
    let mut buf = Vec::with_capacity(2048);
    let sniff: fn(&[u8]) -> Sniffed = if port == 443 { sniff_tls } else { sniff_http };
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut chunk = [0u8; 4096];
    loop {
        match sniff(&buf) {
            Sniffed::Name(n) => return (buf, Some(n)),
            Sniffed::NoName if !buf.is_empty() => return (buf, None),
            _ => {}
        }
        if buf.len() >= MAX_HELLO {
            return (buf, None);
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (buf, None),
        }
    }
}

/// Opens a TCP connection to `to` from inside namespace `ns`.
pub async fn dial_in(ns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let ns = ns.to_string();
    let sock = tokio::task::spawn_blocking(move || {
        polydev_net::netns::run_in(&ns, || {
            tokio::net::TcpSocket::new_v4().map_err(|e| polydev_net::NetError::Sys {
                what: "making a socket".into(),
                source: e,
            })
        })
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)?;
    match tokio::time::timeout(DIAL_TIMEOUT, sock.connect(to)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer in {DIAL_TIMEOUT:?}"),
        )),
    }
}

/// Why the gate refused a connection.
fn refuse(vm: &VmState, dst: SocketAddrV4, name: Option<&str>, why: &str) {
    vm.note_gate(true);
    tracing::info!(vm_id = %vm.vm_id, %dst, name, why, "egress gate refused a connection");
}

async fn handle(vm: Arc<VmState>, mut guest: TcpStream) {
    let Ok(dst) = original_dst(&guest) else {
        return;
    };
    let policy = vm.policy();
    let ip = *dst.ip();
    if !policy.internet {
        return refuse(&vm, dst, None, "internet is off");
    }
    if policy.cidr_denied(ip) {
        return refuse(&vm, dst, None, "destination in denyCidrs");
    }
    let web = dst.port() == 443 || dst.port() == 80;
    let (first, name) = if web {
        read_name(&mut guest, dst.port()).await
    } else {
        (Vec::new(), None)
    };
    if policy.names_checked() {
        match &name {
            Some(n) if !policy.name_allowed(n) => {
                return refuse(&vm, dst, Some(n), "name not allowed by policy")
            }
            None if web => return refuse(&vm, dst, None, "no TLS SNI or HTTP Host to check"),
            _ => {}
        }
    }
    if policy.domain_mode() && !policy.cidr_allowed(ip) && !vm.learned(ip) {
        return refuse(
            &vm,
            dst,
            name.as_deref(),
            "address not given by DNS for an allowed name",
        );
    }
    if !policy.domain_mode() && !policy.allow.is_empty() && !policy.cidr_allowed(ip) {
        return refuse(&vm, dst, name.as_deref(), "destination not in allowCidrs");
    }
    let upstream = match vm.proxy() {
        None => dial_in(&vm.netns, SocketAddr::V4(dst))
            .await
            .map_err(|e| format!("connecting to {dst}: {e}")),
        Some(p) => {
            let target = match &name {
                Some(n) => format!("{n}:{}", dst.port()),
                None => dst.to_string(),
            };
            match p.resolve().await {
                Err(e) => Err(e),
                Ok(paddr) => match dial_in(&vm.netns, paddr).await {
                    Err(e) => Err(format!(
                        "the egress proxy {} cannot be reached: {e}",
                        p.redacted()
                    )),
                    Ok(s) => p.handshake(s, &target).await,
                },
            }
        }
    };
    let mut upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            vm.set_error(e.clone());
            return refuse(&vm, dst, name.as_deref(), &e);
        }
    };
    vm.note_gate(false);
    if !first.is_empty() {
        use tokio::io::AsyncWriteExt;
        if upstream.write_all(&first).await.is_err() {
            return;
        }
    }
    let _ = tokio::io::copy_bidirectional(&mut guest, &mut upstream).await;
}

/// Serves the gate of one VM on a listener bound inside its namespace.
pub async fn serve(vm: Arc<VmState>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handle(vm.clone(), s));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_host_is_found() {
        assert_eq!(
            sniff_http(b"GET / HTTP/1.1\r\nHost: Web.Example:8080\r\nAccept: */*\r\n\r\n"),
            Sniffed::Name("Web.Example".into())
        );
        assert_eq!(sniff_http(b"GET / HTTP/1.1\r\nHo"), Sniffed::More);
        assert_eq!(sniff_http(b"GET / HTTP/1.0\r\n\r\n"), Sniffed::NoName);
    }

    #[test]
    fn tls_sni_is_found() {
        // A minimal TLS 1.2 ClientHello with SNI "a.example".
        let name = b"a.example";
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        assert_eq!(sniff_tls(&rec), Sniffed::Name("a.example".into()));
        assert_eq!(sniff_tls(&rec[..20]), Sniffed::More);
        assert_eq!(sniff_tls(b"\x16\x03\x01\x00\x02\x02\x00"), Sniffed::NoName);
    }
}
