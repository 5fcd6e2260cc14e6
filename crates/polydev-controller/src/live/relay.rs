//! The media relay: one UDP port per session on the controller's media
//! address (`POLYDEV_MEDIA_ADDR`), forwarding datagrams to the guest
//! streamer (`169.254.0.22:7071`) through a UDP socket bound inside the VM's
//! network namespace, and the streamer's datagrams back to the viewer.
//!
//! The viewer's address is learnt from its first ICE connectivity check
//! (latching): a STUN Binding request whose USERNAME starts with the
//! answer's ICE ufrag (`<streamer ufrag>:<viewer ufrag>`), which only the
//! holder of the answer knows. Until then, and from any other address after,
//! datagrams are dropped. A new answer (a new ufrag) un-latches. The relay
//! stops when its handle is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// The USERNAME attribute of a STUN Binding request (RFC 8489), if `d` is one.
pub fn stun_binding_username(d: &[u8]) -> Option<&[u8]> {
    if d.len() < 20 || d[0] & 0xc0 != 0 {
        return None;
    }
    let msg_type = u16::from_be_bytes([d[0], d[1]]);
    let len = u16::from_be_bytes([d[2], d[3]]) as usize;
    if msg_type != 0x0001 || d[4..8] != [0x21, 0x12, 0xa4, 0x42] || 20 + len > d.len() {
        return None;
    }
    let mut a = &d[20..20 + len];
    while a.len() >= 4 {
        let t = u16::from_be_bytes([a[0], a[1]]);
        let l = u16::from_be_bytes([a[2], a[3]]) as usize;
        if 4 + l > a.len() {
            return None;
        }
        if t == 0x0006 {
            return Some(&a[4..4 + l]);
        }
        let padded = (4 + l + 3) & !3;
        a = &a[padded.min(a.len())..];
    }
    None
}

/// Whether `d` may latch the relay to its sender: a Binding request for the
/// streamer's `ufrag`, or anything when no ufrag is known.
pub fn may_latch(d: &[u8], ufrag: Option<&str>) -> bool {
    match ufrag {
        None => true,
        Some(u) => stun_binding_username(d)
            .map(|name| {
                name.len() > u.len() && name.starts_with(u.as_bytes()) && name[u.len()] == b':'
            })
            .unwrap_or(false),
    }
}

/// Counters of a relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams forwarded viewer → guest.
    pub to_guest: AtomicU64,
    /// Datagrams forwarded guest → viewer.
    pub to_viewer: AtomicU64,
    /// Datagrams dropped (before latching, or from another address).
    pub dropped: AtomicU64,
}

/// A running relay; dropping it stops it.
#[derive(Debug)]
pub struct Relay {
    public: SocketAddr,
    ufrag: watch::Sender<Option<String>>,
    stats: Arc<RelayStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Binds `bind_ip:0` on the host and a socket inside `netns` connected to
    /// `target`, and starts forwarding.
    pub async fn start(
        netns: &str,
        bind_ip: std::net::IpAddr,
        target: SocketAddr,
    ) -> std::io::Result<Relay> {
        let outer = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
        let ns = netns.to_string();
        let inner = tokio::task::spawn_blocking(move || {
            let any: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0".parse().expect("constant")
            } else {
                "[::]:0".parse().expect("constant")
            };
            let s = polydev_net::netns::udp_bind_in(&ns, any).map_err(std::io::Error::other)?;
            s.connect(target)?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .await
        .map_err(std::io::Error::other)??;
        let inner = UdpSocket::from_std(inner)?;
        let public = outer.local_addr()?;
        let (tx, rx) = watch::channel(None);
        let stats = Arc::new(RelayStats::default());
        let task = tokio::spawn(run(outer, inner, rx, stats.clone()));
        Ok(Relay {
            public,
            ufrag: tx,
            stats,
            task,
        })
    }

    /// The address viewers send to (the answer's candidate).
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    /// A new answer: latch only on checks for `ufrag` from now on.
    pub fn expect(&self, ufrag: Option<String>) {
        self.ufrag.send_replace(ufrag);
    }

    /// Its counters.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }
}

async fn run(
    outer: UdpSocket,
    inner: UdpSocket,
    mut ufrag: watch::Receiver<Option<String>>,
    stats: Arc<RelayStats>,
) {
    let mut peer: Option<SocketAddr> = None;
    let mut a = vec![0u8; 65536];
    let mut b = vec![0u8; 65536];
    loop {
        tokio::select! {
            changed = ufrag.changed() => {
                if changed.is_err() {
                    return;
                }
                peer = None;
            }
            r = outer.recv_from(&mut a) => {
                let Ok((n, from)) = r else { continue };
                let ok = match peer {
                    Some(p) => p == from,
                    None => {
                        let u = ufrag.borrow().clone();
                        if may_latch(&a[..n], u.as_deref()) {
                            tracing::info!(viewer = %from, relay = %outer.local_addr().map(|x| x.to_string()).unwrap_or_default(), "media relay latched to the viewer");
                            peer = Some(from);
                            true
                        } else {
                            false
                        }
                    }
                };
                if ok {
                    if inner.send(&a[..n]).await.is_ok() {
                        stats.to_guest.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            r = inner.recv(&mut b) => {
                // Errors here are ICMP reports (nothing listening yet): keep going.
                let Ok(n) = r else { continue };
                match peer {
                    Some(p) => {
                        if outer.send_to(&b[..n], p).await.is_ok() {
                            stats.to_viewer.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A STUN Binding request with USERNAME `user` (and a PRIORITY before it).
    pub(crate) fn binding_request(user: &str) -> Vec<u8> {
        let mut attrs = vec![0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4];
        let u = user.as_bytes();
        attrs.extend_from_slice(&[0x00, 0x06]);
        attrs.extend_from_slice(&(u.len() as u16).to_be_bytes());
        attrs.extend_from_slice(u);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7u8; 12]);
        m.extend(attrs);
        m
    }

    #[test]
    fn stun_username_and_latching_rule() {
        let m = binding_request("gUeS:viewerU");
        assert_eq!(stun_binding_username(&m), Some(&b"gUeS:viewerU"[..]));
        assert!(may_latch(&m, Some("gUeS")));
        assert!(
            !may_latch(&m, Some("gUe")),
            "a prefix of the ufrag is not the ufrag"
        );
        assert!(!may_latch(&m, Some("other")));
        assert!(!may_latch(b"\x17\xfe\xfd dtls", Some("gUeS")));
        assert!(may_latch(b"anything", None));
        // A Binding response (0x0101) does not latch; truncated messages are ignored.
        let mut resp = m.clone();
        resp[1] = 0x01;
        resp[0] = 0x01;
        assert_eq!(stun_binding_username(&resp), None);
        assert_eq!(stun_binding_username(&m[..30]), None);
    }

    /// A real namespace with loopback up and a UDP echo server inside.
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = polydev_net::netns::delete(&self.0);
        }
    }

    async fn recv(
        s: &UdpSocket,
        b: &mut [u8],
    ) -> Result<std::io::Result<usize>, tokio::time::error::Elapsed> {
        tokio::time::timeout(Duration::from_millis(700), s.recv(b)).await
    }

    #[tokio::test]
    async fn relays_into_a_namespace_after_latching() {
        let ns = Ns(format!("pdrl-{}", std::process::id() % 100_000));
        if let Err(e) = polydev_net::netns::create(&ns.0) {
            eprintln!("SKIPPED: a network namespace is needed (root): {e}");
            return;
        }
        polydev_net::netns::run_in(&ns.0, || {
            std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .map(|_| ())
                .map_err(|e| polydev_net::NetError::Sys {
                    what: "lo up".into(),
                    source: e,
                })
        })
        .unwrap();
        let echo = polydev_net::netns::udp_bind_in(&ns.0, "127.0.0.1:0".parse().unwrap()).unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 2048];
            echo.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            while let Ok((n, from)) = echo.recv_from(&mut b) {
                let mut r = b"echo:".to_vec();
                r.extend_from_slice(&b[..n]);
                let _ = echo.send_to(&r, from);
            }
        });
        // The host's loopback cannot reach the echo server directly.
        let relay = Relay::start(&ns.0, "127.0.0.1".parse().unwrap(), target)
            .await
            .unwrap();
        relay.expect(Some("gUeS".into()));
        let viewer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = relay.public_addr();
        let mut b = [0u8; 2048];
        // Before latching, media and wrong checks are dropped.
        viewer.send_to(b"media-before", to).await.unwrap();
        viewer
            .send_to(&binding_request("nope:v"), to)
            .await
            .unwrap();
        assert!(recv(&viewer, &mut b).await.is_err());
        // The right check latches, and is forwarded and answered.
        let check = binding_request("gUeS:v");
        viewer.send_to(&check, to).await.unwrap();
        let n = recv(&viewer, &mut b).await.unwrap().unwrap();
        assert_eq!(&b[..n], [b"echo:".as_slice(), &check].concat());
        viewer.send_to(b"media", to).await.unwrap();
        let n = recv(&viewer, &mut b).await.unwrap().unwrap();
        assert_eq!(&b[..n], b"echo:media");
        // Another address gets nothing through, even with a right check.
        stranger.send_to(&check, to).await.unwrap();
        assert!(recv(&stranger, &mut b).await.is_err());
        assert!(
            recv(&viewer, &mut b).await.is_err(),
            "its echo went nowhere"
        );
        assert!(relay.stats().dropped.load(Ordering::Relaxed) >= 3);
        // A new answer un-latches: the stranger (now the viewer) may take over.
        relay.expect(Some("n3w".into()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stranger
            .send_to(&binding_request("n3w:x"), to)
            .await
            .unwrap();
        assert!(recv(&stranger, &mut b).await.unwrap().is_ok());
        // Stopped: nothing comes back.
        drop(relay);
        tokio::time::sleep(Duration::from_millis(50)).await;
        stranger.send_to(b"late", to).await.unwrap();
        assert!(recv(&stranger, &mut b).await.is_err());
    }
}
