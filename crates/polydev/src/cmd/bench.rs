//! `polydev bench`: create-to-ready of real VMs, one after another and
//! several at once, split into kernel boot (kernel start to init) and agent
//! start (init to the agent's readiness). Prints figures; asserts nothing.

use super::common::Common;
use clap::Args as ClapArgs;
use polydev_core::vm::{VmStatus, VmType};
use std::time::{Duration, Instant};

/// Options of `polydev bench`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// VMs started one after another.
    #[arg(long, default_value_t = 3)]
    sequential: usize,
    /// VMs started at once.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Memory per VM in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mb: u32,
    /// vCPUs per VM.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Also hibernate and resume a VM and compare with its cold boot.
    #[arg(long)]
    snapshots: bool,
    /// Instead of the boot figures: time N sign-in sessions from start to
    /// `awaiting_user_auth` and to the URL open in the VM's Chromium (real
    /// browser image and CLI; each session is cancelled afterwards).
    #[arg(long, value_name = "N")]
    connect: Option<usize>,
    /// Provider of the `--connect` sessions.
    #[arg(long, default_value = "codex")]
    provider: String,
    /// With `--connect`: also time N sessions that take a warm browser VM
    /// from a pool of one (booted, Chromium up, hibernated), and compare.
    #[arg(long)]
    warm: bool,
    /// Instead of the boot figures: egress costs (throughput guest / host
    /// through the stand-in internet of the benchmark's own, DNS through
    /// the forwarder / direct, policy changes with 1 and 50 VMs, set-up
    /// time in create-to-ready).
    #[arg(long)]
    egress: bool,
    /// With `--egress`: bytes each throughput transfer sends.
    #[arg(long, default_value_t = 64 << 20)]
    egress_bytes: u64,
    /// Instead of the boot figures: what a prompt run costs (POST → CLI
    /// started and → first event with the VM running and hibernated, SSE
    /// events per second, the same command straight through the agent
    /// against the whole run through the API). Real Codex in a CLI VM, the
    /// model stand-in behind the benchmark's own internet.
    #[arg(long)]
    runs: bool,
    /// Instead of the boot figures: what authentication costs. A real
    /// `polydev serve` in a throwaway data directory under Debian's `wrk`:
    /// authenticated status reads against `/health` in the same run (no VM
    /// is booted).
    #[arg(long)]
    api: bool,
    /// Instead of the boot figures: what the dashboard's pages cost the
    /// server, each against the JSON endpoint behind it, under `wrk` with a
    /// session cookie (uses `--api-connections` and `--api-secs`).
    #[arg(long)]
    pages: bool,
    /// With `--api`: connections held open at once.
    #[arg(long, default_value_t = 32)]
    api_connections: u32,
    /// With `--api`: seconds per measurement.
    #[arg(long, default_value_t = 10)]
    api_secs: u64,
    /// With `--runs`: runs per case.
    #[arg(long, default_value_t = 3)]
    runs_count: usize,
    /// Seconds a VM may take to become ready.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

struct Sample {
    total_ms: i64,
    kernel_ms: Option<i64>,
    agent_ms: Option<i64>,
}

/// Creates a CLI VM and waits until it is running; a VM that fails or
/// misses `deadline` is destroyed and reported.
pub(crate) async fn create_ready(
    rt: &std::sync::Arc<polydev_controller::runtime::Runtime>,
    deadline: Duration,
) -> anyhow::Result<polydev_store::VmRecord> {
    let rec = rt.create("bench", VmType::Cli).await?;
    let start = Instant::now();
    loop {
        let r = rt
            .store()
            .get_vm(&rec.vm_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("VM vanished"))?;
        match r.status {
            VmStatus::Running => return Ok(r),
            VmStatus::Creating if start.elapsed() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            _ => {
                rt.destroy(&rec.vm_id).await?;
                anyhow::bail!(
                    "VM {} did not become ready within {deadline:?}: {:?}",
                    rec.vm_id,
                    r.failure_reason
                );
            }
        }
    }
}

async fn boot_one(
    rt: &std::sync::Arc<polydev_controller::runtime::Runtime>,
    deadline: Duration,
) -> anyhow::Result<Sample> {
    let r = create_ready(rt, deadline).await?;
    rt.destroy(&r.vm_id).await?;
    Ok(Sample {
        total_ms: r.ready_at.unwrap_or(0) - r.created_at,
        kernel_ms: r.kernel_boot_ms,
        agent_ms: r.agent_ready_ms,
    })
}

fn stats(label: &str, v: &mut [i64]) {
    if v.is_empty() {
        println!("  {label:<22} n/a");
        return;
    }
    v.sort();
    println!(
        "  {label:<22} median {:>6} ms   min {:>6} ms   max {:>6} ms   (n={})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1],
        v.len()
    );
}

fn report(title: &str, samples: &[Sample]) {
    println!("{title}");
    stats(
        "create-to-ready",
        &mut samples.iter().map(|s| s.total_ms).collect::<Vec<_>>(),
    );
    stats(
        "kernel boot (to init)",
        &mut samples
            .iter()
            .filter_map(|s| s.kernel_ms)
            .collect::<Vec<_>>(),
    );
    stats(
        "agent start (init→ready)",
        &mut samples
            .iter()
            .filter_map(|s| s.agent_ms)
            .collect::<Vec<_>>(),
    );
    let host: Vec<i64> = samples
        .iter()
        .filter_map(|s| Some(s.total_ms - s.kernel_ms? - s.agent_ms?))
        .collect();
    stats("host overhead", &mut host.clone());
}

/// Runs the benchmark.
pub async fn run(a: Args) -> anyhow::Result<()> {
    if a.api {
        return super::bench_api::run(a.api_connections.max(1), a.api_secs.max(1)).await;
    }
    if a.pages {
        return super::bench_pages::run(a.api_connections.max(1), a.api_secs.max(1)).await;
    }
    let mut cfg = a.common.config();
    cfg.cli_size = polydev_controller::config::VmSize {
        vcpus: a.vcpus,
        memory_mb: a.memory_mb,
    };
    cfg.boot_timeout = Duration::from_secs(a.timeout_secs);
    cfg.state_disk_mb = 256;
    let rt = polydev_controller::build_runtime(cfg).await?;
    println!(
        "polydev bench: {} ({})",
        rt.vmm().describe(),
        rt.accel().reason
    );
    if let Some(n) = a.connect {
        return connect_figures(&rt, n.max(1), &a.provider, a.warm).await;
    }
    if a.runs {
        return super::bench_runs::run(&rt, a.runs_count.max(1)).await;
    }
    if a.egress {
        let deadline = Duration::from_secs(a.timeout_secs + 30);
        return super::bench_egress::run(&rt, deadline, a.egress_bytes).await;
    }
    println!("VM size: {} vCPU, {} MiB", a.vcpus, a.memory_mb);
    let deadline = Duration::from_secs(a.timeout_secs + 30);
    let mut seq = Vec::new();
    for i in 0..a.sequential {
        let s = boot_one(&rt, deadline).await?;
        eprintln!("  sequential VM {}: ready in {} ms", i + 1, s.total_ms);
        seq.push(s);
    }
    let wall = Instant::now();
    let tasks: Vec<_> = (0..a.parallel)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move { boot_one(&rt, deadline).await })
        })
        .collect();
    let mut par = Vec::new();
    for t in tasks {
        par.push(t.await??);
    }
    let par_wall = wall.elapsed();
    println!();
    report(&format!("{} VMs one after another:", a.sequential), &seq);
    report(
        &format!(
            "{} VMs at once (all ready after {} ms):",
            a.parallel,
            par_wall.as_millis()
        ),
        &par,
    );
    if a.snapshots {
        println!();
        snapshot_figures(&rt, deadline).await?;
    }
    Ok(())
}

/// Cold boot, hibernate (snapshot) and resume (restore to agent answering)
/// of one VM, through the runtime the API uses.
async fn snapshot_figures(
    rt: &std::sync::Arc<polydev_controller::runtime::Runtime>,
    deadline: Duration,
) -> anyhow::Result<()> {
    let rec = create_ready(rt, deadline).await?;
    let cold = rec.ready_at.unwrap_or(0) - rec.created_at;
    let mut rows = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        rt.hibernate(&rec.vm_id).await?;
        let hib = t.elapsed().as_millis();
        let t = Instant::now();
        rt.resume(&rec.vm_id).await?;
        rows.push((hib, t.elapsed().as_millis()));
    }
    rt.destroy(&rec.vm_id).await?;
    println!("snapshots ({}):", rt.vmm().describe());
    println!("  cold create-to-ready   {cold:>6} ms");
    for (i, (h, r)) in rows.iter().enumerate() {
        println!(
            "  cycle {}: hibernate {h:>5} ms, resume to agent answering {r:>5} ms ({:.1}x faster than cold)",
            i + 1,
            cold as f64 / (*r).max(1) as f64
        );
    }
    Ok(())
}

/// Start → `awaiting_user_auth` of real sign-in sessions, split into the
/// session's steps, plus the time until the authorization URL is a page in
/// the VM's Chromium (asked through the agent with `polydev-cdp`).
async fn connect_figures(
    rt: &std::sync::Arc<polydev_controller::runtime::Runtime>,
    n: usize,
    provider: &str,
    warm: bool,
) -> anyhow::Result<()> {
    use polydev_controller::auth_flow::{AuthFlow, AuthFlowConfig};
    let provider: polydev_core::auth::Provider = provider.parse()?;
    let art = rt.artifacts(Some(VmType::Browser))?;
    println!(
        "sign-in sessions ({provider}, {}, {} vCPU / {} MiB):",
        art.image_note,
        rt.config().browser_size.vcpus,
        rt.config().browser_size.memory_mb
    );
    let keyring = || polydev_vault::Keyring::new(polydev_vault::MasterKey::generate());
    println!(" cold (each session boots a new browser VM):");
    let cli = polydev_controller::cli_vm::CliVms::new(rt.clone(), rt.config().cli_idle);
    let cold_flow = AuthFlow::new(
        rt.clone(),
        keyring(),
        AuthFlowConfig::default(),
        cli.clone(),
    );
    let cold = session_figures(rt, &cold_flow, n, provider, false).await?;
    cold.print();
    if !warm {
        return Ok(());
    }
    let warm_flow = AuthFlow::new(
        rt.clone(),
        keyring(),
        AuthFlowConfig {
            browser_pool: 1,
            ..AuthFlowConfig::default()
        },
        cli,
    );
    let filler = tokio::spawn(warm_flow.pool().clone().run());
    println!(" warm (each session resumes a browser VM from a pool of one, which refills 30 s after the URL is shown):");
    let warm = session_figures(rt, &warm_flow, n, provider, true).await;
    filler.abort();
    // The VM the pool made last is of no further use.
    for v in rt
        .store()
        .list_vms(Some(polydev_controller::pool::POOL_USER), false)
        .await?
    {
        let _ = rt.destroy(&v.vm_id).await;
    }
    let warm = warm?;
    warm.print();
    let (c, w) = (median(&cold.url), median(&warm.url));
    if let (Some(c), Some(w)) = (c, w) {
        println!(
            "  start → awaiting_user_auth, warm / cold: {:.2} ({w} ms / {c} ms)",
            w as f64 / c as f64
        );
    }
    let (c, w) = (median(&cold.screen), median(&warm.screen));
    if let (Some(c), Some(w)) = (c, w) {
        println!(
            "  start → URL in Chromium, warm / cold: {:.2} ({w} ms / {c} ms)",
            w as f64 / c as f64
        );
    }
    Ok(())
}

fn median(v: &[i64]) -> Option<i64> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// Milestones of sign-in sessions, in ms from the start call.
#[derive(Default)]
struct SessionFigures {
    created: Vec<i64>,
    ready: Vec<i64>,
    url: Vec<i64>,
    screen: Vec<i64>,
    warm_wait: Vec<i64>,
}

impl SessionFigures {
    fn print(&self) {
        if !self.warm_wait.is_empty() {
            stats("wait for a warm VM", &mut self.warm_wait.clone());
        }
        stats("start → vm_created", &mut self.created.clone());
        stats("start → ready (VNC)", &mut self.ready.clone());
        stats("start → awaiting_user_auth", &mut self.url.clone());
        stats("start → URL in Chromium", &mut self.screen.clone());
    }
}

/// Runs `n` sessions one after another, each cancelled once its URL is on
/// the VM's screen. With `warm`, each waits first for a warm VM in the
/// flow's pool.
async fn session_figures(
    rt: &std::sync::Arc<polydev_controller::runtime::Runtime>,
    flow: &std::sync::Arc<polydev_controller::auth_flow::AuthFlow>,
    n: usize,
    provider: polydev_core::auth::Provider,
    warm: bool,
) -> anyhow::Result<SessionFigures> {
    use polydev_core::auth::SessionStatus as S;
    let mut f = SessionFigures::default();
    for i in 0..n {
        if warm {
            let w = Instant::now();
            while flow.pool().ready().await.map_err(anyhow::Error::msg)? == 0 {
                anyhow::ensure!(
                    w.elapsed() < Duration::from_secs(900),
                    "the pool made no warm VM in 900 s"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            f.warm_wait.push(w.elapsed().as_millis() as i64);
        }
        let t0 = Instant::now();
        let s = flow.start(&format!("bench-{i}"), provider).await?;
        let id = s.session_id.clone();
        let mut seen: Vec<(S, i64)> = Vec::new();
        let outcome: anyhow::Result<()> = async {
            loop {
                let s = flow.get(&id).await?;
                if seen.last().map(|x| x.0) != Some(s.status) {
                    seen.push((s.status, t0.elapsed().as_millis() as i64));
                }
                match s.status {
                    S::AwaitingUserAuth => break,
                    S::Failed | S::Timeout | S::Cancelled | S::Completed => anyhow::bail!(
                        "session {id} ended {}: {}",
                        s.status,
                        s.error_message.unwrap_or_default()
                    ),
                    _ if t0.elapsed() > Duration::from_secs(600) => {
                        anyhow::bail!("session {id} still {} after 600 s", s.status)
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            let at = |st: S| seen.iter().find(|x| x.0 == st).map(|x| x.1);
            if let Some(v) = at(S::VmCreated) {
                f.created.push(v);
            }
            if let Some(v) = at(S::Ready) {
                f.ready.push(v);
            }
            f.url.push(at(S::AwaitingUserAuth).unwrap_or(0));
            // The URL as a page in Chromium.
            let s = flow.get(&id).await?;
            let host = s
                .auth_url
                .as_deref()
                .and_then(polydev_login::url::Url::parse)
                .map(|u| u.host)
                .unwrap_or_default();
            let vm = rt
                .store()
                .get_vm(s.browser_vm_id.as_deref().unwrap_or_default())
                .await?
                .ok_or_else(|| anyhow::anyhow!("the browser VM vanished"))?;
            let body = serde_json::json!({
                "argv": ["polydev-cdp", "wait", host, "300"],
                "user": "polydev",
                "timeoutMs": 310_000,
            });
            let r = rt
                .agent_call(&vm, "POST", "/exec", Some(body), Duration::from_secs(320))
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            if r.get("exitCode").and_then(|c| c.as_i64()) == Some(0) {
                f.screen.push(t0.elapsed().as_millis() as i64);
            } else {
                eprintln!("  session {}: Chromium did not show the URL: {r}", i + 1);
            }
            Ok(())
        }
        .await;
        let _ = flow.cancel(&id).await;
        outcome?;
        eprintln!(
            "  session {}: awaiting_user_auth after {} ms",
            i + 1,
            f.url.last().copied().unwrap_or(0)
        );
    }
    Ok(f)
}
