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
async fn create_ready(
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
