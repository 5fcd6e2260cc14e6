//! `polydev bench --pages`: what the dashboard costs the server. A real
//! `polydev serve` (SQLite) in a throwaway data directory with an admin
//! account, a few VM records and runs, loaded by Debian's `wrk` with the
//! session cookie: each page against the JSON endpoint behind it, in the
//! same run, interleaved. Prints req/s, p50 and p99; asserts nothing.

use super::bench_api::{polydev, wrk_with, Load, Server};
use anyhow::Context;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Pages and the endpoint each one's data comes from.
const PAIRS: &[(&str, &str)] = &[
    ("/connections", "/api/credentials?userId=bench"),
    ("/runs", "/api/runs?userId=bench"),
    ("/vms", "/api/vms?userId=bench"),
    ("/account", "/api/keys"),
    ("/admin", "/api/admin/overview"),
];

async fn seed(dir: &std::path::Path) -> anyhow::Result<()> {
    let store = polydev_store::Store::sqlite_in(dir).await?;
    for i in 0..5 {
        let id = format!("vm_bench_pages_{i}");
        store
            .insert_vm_allocating_slot(
                &polydev_store::NewVm {
                    vm_id: id.clone(),
                    user_id: "bench".into(),
                    vm_type: polydev_core::vm::VmType::Cli,
                    vcpu_count: 1,
                    memory_mb: 512,
                    vmm: "qemu".into(),
                    dir: dir.join("vms").join(&id).display().to_string(),
                    home_disk: false,
                },
                |slot| (format!("pdbench-{slot}"), "tap0".into()),
            )
            .await?;
    }
    for i in 0..20 {
        store
            .insert_run(&polydev_store::NewRun {
                run_id: &format!("run_bench_{i:02}"),
                user_id: "bench",
                provider: "codex",
                prompt: "a prompt of the benchmark's history",
                model: None,
                resume_id: None,
                timeout_secs: 60,
            })
            .await?;
    }
    store.close().await;
    Ok(())
}

/// Runs the benchmark: `connections` at once for `secs` per measurement.
pub async fn run(connections: u32, secs: u64) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("polydev-bench-pages-")
        .tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let password = "bench password for the dashboard";
    let mut create = polydev(dir.path(), port)
        .args(["user", "create", "bench", "--admin", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    writeln!(create.stdin.take().context("stdin")?, "{password}")?;
    anyhow::ensure!(create.wait()?.success(), "polydev user create failed");
    seed(dir.path()).await?;
    let server = Server::start(dir, port)?;
    let base = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    let cookie = loop {
        let r = ureq_signin(&base, password);
        if let Some(c) = r {
            break c;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "polydev serve did not sign in in 60 s (log: {})",
            server._dir.path().join("controller.log").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let header = format!("Cookie: polydev_session={cookie}");
    println!(
        "pages: polydev serve (SQLite), wrk -t2 -c{connections} -d{secs}s with a session cookie, {} CPUs, same run",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let line = |name: &str, l: Load| {
        println!(
            "  {name:<34} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   errors {}",
            l.rps, l.p50_ms, l.p99_ms, l.errors
        )
    };
    let mut worst_p99: f64 = 0.0;
    let mut worst_api_p99: f64 = 0.0;
    for (page, api) in PAIRS {
        let (p, a, h) = (
            format!("{base}{page}"),
            format!("{base}{api}"),
            header.clone(),
        );
        let (pl, al) = tokio::task::spawn_blocking(move || {
            let _ = wrk_with(&p, Some(&h), connections, 1);
            let _ = wrk_with(&a, Some(&h), connections, 1);
            Ok::<_, anyhow::Error>((
                wrk_with(&p, Some(&h), connections, secs)?,
                wrk_with(&a, Some(&h), connections, secs)?,
            ))
        })
        .await??;
        line(&format!("GET {page} (page)"), pl);
        line(&format!("GET {api}"), al);
        worst_p99 = worst_p99.max(pl.p99_ms);
        worst_api_p99 = worst_api_p99.max(al.p99_ms);
    }
    println!("  worst page p99                     {worst_p99:.2} ms   (goal < 10 ms)");
    println!("  worst JSON endpoint p99            {worst_api_p99:.2} ms   (goal < 10 ms)");
    drop(server);
    Ok(())
}

/// Signs in over plain HTTP; the session cookie's value.
fn ureq_signin(base: &str, password: &str) -> Option<String> {
    use std::io::Read;
    let body = format!("user=bench&password={}", password.replace(' ', "+"));
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "POST /signin HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let line = resp.lines().find(|l| {
        l.to_ascii_lowercase()
            .starts_with("set-cookie: polydev_session=")
    })?;
    let v = line
        .split_once('=')?
        .1
        .split(';')
        .next()?
        .trim()
        .to_string();
    (!v.is_empty()).then_some(v)
}
