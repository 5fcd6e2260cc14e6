//! `polydev bench --api`: what authentication costs on the hot path. A real
//! `polydev serve` in a throwaway data directory, loaded by Debian's `wrk`
//! (32 connections): `/health` (no key) against authenticated status reads
//! (`GET /api/vms/:id` with an API key), in the same run. Prints figures;
//! asserts nothing.

use anyhow::Context;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One wrk measurement.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Non-2xx/3xx answers and socket errors.
    pub errors: u64,
}

/// A wrk latency figure (`850.00us`, `1.20ms`, `2.00s`) in ms.
fn wrk_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// Reads `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Option<Load> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut errors = 0u64;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = wrk_ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = wrk_ms(v);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(Load {
        rps: rps?,
        p50_ms: p50?,
        p99_ms: p99?,
        errors,
    })
}

fn wrk(url: &str, key: Option<&str>, connections: u32, secs: u64) -> anyhow::Result<Load> {
    let auth = key.map(|k| format!("Authorization: Bearer {k}"));
    wrk_with(url, auth.as_deref(), connections, secs)
}

/// `wrk` on `url` with one extra request header (`Name: value`).
pub fn wrk_with(
    url: &str,
    header: Option<&str>,
    connections: u32,
    secs: u64,
) -> anyhow::Result<Load> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (Debian package `wrk`; scripts/setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// A `polydev serve` of a benchmark; killed, and its host table removed,
/// when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its host firewall table, removed on drop.
    pub _table: super::common::HostTable,
    /// Its data directory.
    pub _dir: tempfile::TempDir,
}

impl Server {
    /// `polydev serve` over `dir` on `port`, its log in `dir/controller.log`.
    pub fn start(dir: tempfile::TempDir, port: u16) -> anyhow::Result<Server> {
        let log = std::fs::File::create(dir.path().join("controller.log"))?;
        let child = polydev(dir.path(), port)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let tag =
            polydev_controller::config::Config::with_data_dir(dir.path().to_path_buf()).host_tag();
        Ok(Server {
            child,
            _table: super::common::HostTable(tag),
            _dir: dir,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `polydev` (this executable) with a benchmark's environment: its data
/// directory and port, no egress uplink, TCG.
pub fn polydev(dir: &std::path::Path, port: u16) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| "polydev".into());
    let mut c = Command::new(exe);
    c.env("POLYDEV_DATA_DIR", dir)
        .env("POLYDEV_LISTEN", format!("127.0.0.1:{port}"))
        .env("POLYDEV_EGRESS_UPLINK", "none")
        .env("POLYDEV_DNS_UPSTREAM", "127.0.0.1:9")
        .env("POLYDEV_ACCEL", "tcg")
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL");
    c
}

/// The status of one GET on loopback (None if nothing answers).
fn status(port: u16, path: &str, key: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Runs the benchmark: `connections` at once for `secs` per endpoint.
pub async fn run(connections: u32, secs: u64) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("polydev-bench-api-")
        .tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let out = polydev(dir.path(), port)
        .args(["apikey", "create", "--name", "bench"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "polydev apikey create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // A VM record to read (no VM is booted: start-up reconciliation finds
    // its VMM gone and records it failed, which is still a status to read).
    let store = polydev_store::Store::sqlite_in(dir.path()).await?;
    let vm = store
        .insert_vm_allocating_slot(
            &polydev_store::NewVm {
                vm_id: "vm_bench_api".into(),
                user_id: "bench".into(),
                vm_type: polydev_core::vm::VmType::Cli,
                vcpu_count: 1,
                memory_mb: 512,
                vmm: "qemu".into(),
                dir: dir.path().join("vms/vm_bench_api").display().to_string(),
                home_disk: false,
            },
            |slot| (format!("pdbench-{slot}"), "tap0".into()),
        )
        .await?;
    store.close().await;
    let server = Server::start(dir, port)?;
    let base = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    loop {
        if status(port, &format!("/api/vms/{}", vm.vm_id), &key) == Some(200) {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "polydev serve did not answer in 60 s (log: {})",
            server._dir.path().join("controller.log").display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "api: polydev serve (SQLite), wrk -t2 -c{connections} -d{secs}s, {} CPUs, same run",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let health_url = format!("{base}/health");
    let read_url = format!("{base}/api/vms/{}", vm.vm_id);
    // Warm both paths, then measure each twice, interleaved.
    let _ = tokio::task::spawn_blocking({
        let (h, r, k) = (health_url.clone(), read_url.clone(), key.clone());
        move || {
            let _ = wrk(&h, None, connections, 1);
            let _ = wrk(&r, Some(&k), connections, 1);
        }
    })
    .await;
    let mut health = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..2 {
        let (h, r, k) = (health_url.clone(), read_url.clone(), key.clone());
        let (a, b) = tokio::task::spawn_blocking(move || {
            Ok::<_, anyhow::Error>((
                wrk(&h, None, connections, secs)?,
                wrk(&r, Some(&k), connections, secs)?,
            ))
        })
        .await??;
        health.push(a);
        reads.push(b);
    }
    let best = |v: &[Load]| {
        *v.iter()
            .max_by(|a, b| a.rps.total_cmp(&b.rps))
            .expect("two rounds")
    };
    let (h, r) = (best(&health), best(&reads));
    let line = |name: &str, l: Load| {
        println!(
            "  {name:<34} {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   errors {}",
            l.rps, l.p50_ms, l.p99_ms, l.errors
        )
    };
    line("GET /health (no key)", h);
    line("GET /api/vms/:id (API key)", r);
    println!(
        "  ratio authenticated / health      {:.2}   (goal ≥ 0.8; p99 goal < 10 ms)",
        r.rps / h.rps
    );
    drop(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:1/health
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   850.00us  200.00us   5.00ms   90.00%
  Latency Distribution
     50%  800.00us
     75%    1.00ms
     90%    1.20ms
     99%    2.50ms
  40000 requests in 2.00s, 5.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  20000.50
Transfer/sec:      2.50MB
";
        let l = parse_wrk(out).unwrap();
        assert_eq!(l.rps, 20000.5);
        assert!((l.p50_ms - 0.8).abs() < 1e-9);
        assert_eq!(l.p99_ms, 2.5);
        assert_eq!(l.errors, 7);
        assert!(parse_wrk("garbage").is_none());
    }
}
