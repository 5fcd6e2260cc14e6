//! `polydev bench --egress`: what egress costs, against baselines taken in
//! the same run. Prints figures; asserts nothing.
//!
//! It makes its own stand-in internet (`polydev_egress::testnet`: a
//! namespace behind a veth that is the uplink, documentation addresses, a
//! DNS server and a TCP sink) and never uses the host's real default route.
//!
//! - throughput: a guest writing to the sink through its link, NAT and the
//!   host firewall, against the host writing to the same sink;
//! - DNS: a lookup through a VM's forwarder against asking the upstream
//!   directly (p50/p99);
//! - policy changes with 1 and with 50 VMs attached (namespace rules and the
//!   host map): should be flat;
//! - what egress set-up adds to create-to-ready.

use polydev_controller::runtime::Runtime;
use polydev_egress::testnet::{self, TestInternet};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The sink's line for the transfer from `from` that arrives after `skip`
/// lines: (bytes, microseconds).
async fn sink_result(net: &TestInternet, skip: usize, from: &str) -> anyhow::Result<(u64, u64)> {
    let until = Instant::now() + Duration::from_secs(600);
    while Instant::now() < until {
        for l in net.lines().iter().skip(skip) {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.first() == Some(&"sink") && w.last() == Some(&from) {
                return Ok((w[1].parse()?, w[4].parse()?));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the sink saw no transfer from {from}")
}

fn mbit(bytes: u64, us: u64) -> f64 {
    bytes as f64 * 8.0 / us.max(1) as f64
}

async fn dns_times(sock: &tokio::net::UdpSocket, to: std::net::SocketAddr, n: usize) -> Vec<f64> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut out = Vec::new();
    let name = Name::from_ascii("web.test.").expect("constant name");
    for i in 0..n {
        let mut m = Message::new(i as u16, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.queries.push(Query::query(name.clone(), RecordType::A));
        let q = m.to_vec().expect("a query encodes");
        let t = Instant::now();
        if sock.send_to(&q, to).await.is_err() {
            continue;
        }
        let mut buf = [0u8; 2048];
        // Only a full answer to this question counts.
        if let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf)).await
        {
            let ok = Message::from_vec(&buf[..len])
                .map(|r| r.metadata.id == i as u16 && !r.answers.is_empty())
                .unwrap_or(false);
            if ok {
                out.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    out
}

/// Runs the egress figures.
pub async fn run(rt: &Arc<Runtime>, deadline: Duration, bytes: u64) -> anyhow::Result<()> {
    let net = TestInternet::start(None).map_err(anyhow::Error::msg)?;
    let mut settings = polydev_controller::egress::EgressSettings::default();
    settings.uplink = polydev_controller::egress::Uplink::Named(net.uplink.clone());
    settings.dns_upstream = Some(testnet::DNS_ADDR.into());
    let keyring = polydev_controller::load_keyring(rt.config())?;
    let tag = rt.config().host_tag();
    let hub =
        polydev_controller::egress::EgressHub::start(&settings, &tag, rt.store().clone(), keyring)
            .await?;
    rt.set_egress(hub.clone());
    let egress = hub.egress.clone();
    println!(
        "egress: uplink {} (the benchmark's own stand-in internet), DNS {}",
        net.uplink,
        testnet::DNS_ADDR
    );

    let rec = super::bench::create_ready(rt, deadline).await?;
    let total = rec.ready_at.unwrap_or(0) - rec.created_at;
    let setup = rt
        .store()
        .get_vm(&rec.vm_id)
        .await?
        .and_then(|r| r.egress_setup_ms);
    println!(
        "  create-to-ready        {total} ms, of which egress set-up {} ms ({:.1} %)",
        setup.map(|s| s.to_string()).unwrap_or("?".into()),
        setup
            .map(|s| s as f64 * 100.0 / total.max(1) as f64)
            .unwrap_or(f64::NAN)
    );

    // Throughput: host → sink, then guest → sink, same bytes.
    let skip = net.lines().len();
    {
        use tokio::io::AsyncWriteExt;
        let mut s =
            tokio::net::TcpStream::connect((testnet::SINK_ADDR, testnet::SINK_PORT)).await?;
        let chunk = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        s.shutdown().await?;
    }
    let (hb, hus) = sink_result(&net, skip, testnet::UPLINK_ADDR).await?;
    let skip = net.lines().len();
    let script = format!(
        "head -c {bytes} /dev/zero > /dev/tcp/{}/{}",
        testnet::SINK_ADDR,
        testnet::SINK_PORT
    );
    let body = serde_json::json!({"argv": ["bash", "-c", script], "timeoutMs": 600_000});
    rt.agent_call(&rec, "POST", "/exec", Some(body), Duration::from_secs(620))
        .await
        .map_err(anyhow::Error::msg)?;
    let (gb, gus) = sink_result(&net, skip, testnet::UPLINK_ADDR).await?;
    let (h, g) = (mbit(hb, hus), mbit(gb, gus));
    println!("  TCP to the test host   host {h:.0} Mbit/s, guest {g:.0} Mbit/s ({} MiB each); guest / host {:.2} ({} here)",
        bytes >> 20, g / h, rt.accel().accel.as_str());

    // DNS: through the VM's forwarder (a socket in its namespace) against
    // the upstream asked from the host.
    let n = 200;
    let in_ns = polydev_net::netns::udp_bind_in(&rec.netns, "0.0.0.0:0".parse()?)?;
    in_ns.set_nonblocking(true)?;
    let in_ns = tokio::net::UdpSocket::from_std(in_ns)?;
    let fwd = format!("{}:53", polydev_core::guest::HOST_ADDR).parse()?;
    let seen0 = net
        .lines()
        .iter()
        .filter(|l| l.starts_with("dns web.test"))
        .count();
    let mut via = dns_times(&in_ns, fwd, n).await;
    let forwarded = net
        .lines()
        .iter()
        .filter(|l| l.starts_with("dns web.test"))
        .count()
        - seen0;
    let direct_sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    let mut direct = dns_times(
        &direct_sock,
        format!("{}:53", testnet::DNS_ADDR).parse()?,
        n,
    )
    .await;
    println!(
        "  DNS lookup             forwarder p50 {:.2} ms p99 {:.2} ms ({} of {n} answered, {forwarded} reached the upstream); upstream directly p50 {:.2} ms p99 {:.2} ms ({} of {n})",
        pct(&mut via, 0.5),
        pct(&mut via, 0.99),
        via.len(),
        pct(&mut direct, 0.5),
        pct(&mut direct, 0.99),
        direct.len()
    );

    // Policy changes, with 1 and with 50 VMs attached.
    let policies = [
        polydev_egress::policy::Policy::default(),
        serde_json::from_str::<polydev_egress::policy::Policy>(
            r#"{"allowDomains": ["web.test", "*.example.com"], "denyCidrs": ["203.0.113.0/25"]}"#,
        )?,
    ];
    let time_changes = |label: &'static str| {
        let egress = egress.clone();
        let vm = rec.vm_id.clone();
        let policies = policies.clone();
        async move {
            let mut t = Vec::new();
            for i in 0..20 {
                let s = Instant::now();
                egress.set_policy(&vm, &policies[i % 2]).await?;
                t.push(s.elapsed().as_secs_f64() * 1000.0);
            }
            let mut src = Vec::new();
            let addr = egress.config().link(rec.slot)?.ns_addr;
            for i in 0..20 {
                let s = Instant::now();
                let p = if i % 2 == 0 {
                    Some("198.51.100.11".parse().unwrap())
                } else {
                    None
                };
                let host = egress.host().clone();
                tokio::task::spawn_blocking(move || host.set_source(addr, p)).await??;
                src.push(s.elapsed().as_secs_f64() * 1000.0);
            }
            println!(
                "  policy change ({label})  VM rules p50 {:.1} ms p99 {:.1} ms; host source map p50 {:.1} ms",
                pct(&mut t, 0.5),
                pct(&mut t, 0.99),
                pct(&mut src, 0.5)
            );
            anyhow::Ok(())
        }
    };
    time_changes(" 1 VM ").await?;
    // 49 more namespaces with egress attached (no VMM: the rules and the
    // host map are what a policy change touches).
    let prefix = rt.config().netns_prefix();
    let mut extra = Vec::new();
    let result = async {
        for i in 0..49i64 {
            let slot = 5000 + i;
            let ns = format!("{prefix}{slot}");
            let ns2 = ns.clone();
            tokio::task::spawn_blocking(move || polydev_net::setup_vm_network(&ns2)).await??;
            extra.push((format!("bench-extra-{i}"), ns.clone(), slot));
            let vm = polydev_egress::VmNet {
                vm_id: format!("bench-extra-{i}"),
                netns: ns,
                slot,
            };
            let identity = polydev_egress::Identity {
                proxy: None,
                source: Some("198.51.100.12".parse()?),
            };
            egress.attach(&vm, &policies[1], identity).await?;
        }
        time_changes("50 VMs").await
    }
    .await;
    for (id, ns, slot) in extra {
        let _ = egress.detach(&id, slot).await;
        let _ = tokio::task::spawn_blocking(move || polydev_net::teardown_vm_network(&ns)).await;
    }
    rt.destroy(&rec.vm_id).await?;
    let _ = tokio::task::spawn_blocking({
        let host = egress.host().clone();
        move || host.remove()
    })
    .await;
    drop(net);
    result
}
