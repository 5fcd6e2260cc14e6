//! Reaching a VM's agent from the host, and measuring snapshots: cold boot to
//! agent-ready, snapshot create, and restore to agent-ready, for one driver in
//! one run, so the figures compare like with like. The caller supplies the
//! guest kernel, image and a function writing a state disk (this crate does
//! not build images).

use crate::process::{self, VmmProcess};
use crate::{Result, VmSpec, Vmm, VmmError};
use polydev_core::guest::{AgentConfig, AGENT_PORT, GUEST_ADDR};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Asks the agent in namespace `netns` for `GET /health` with `token`;
/// returns the answer's JSON when it is `200`. Connecting and reading each
/// may take `timeout`.
pub fn agent_health(netns: &str, token: &str, timeout: Duration) -> Result<serde_json::Value> {
    let addr = std::net::SocketAddr::new(
        GUEST_ADDR
            .parse()
            .map_err(|e| VmmError::Unsupported(format!("{e}")))?,
        AGENT_PORT,
    );
    let mut s = polydev_net::netns::connect_tcp(netns, addr, timeout)?;
    let io = |e: std::io::Error| VmmError::Control {
        path: PathBuf::from(format!("{addr} in {netns}")),
        detail: format!("agent /health: {e}"),
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: guest\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(io)?;
    let code: u16 = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    if code != 200 {
        return Err(VmmError::Control {
            path: PathBuf::from(format!("{addr} in {netns}")),
            detail: format!("agent /health answered {code}: {}", body.trim()),
        });
    }
    serde_json::from_str(body).map_err(|e| VmmError::Control {
        path: PathBuf::from(format!("{addr} in {netns}")),
        detail: format!("agent /health body ({e}): {}", body.trim()),
    })
}

/// Polls the agent every few milliseconds until it answers `/health`, the
/// VMM dies, or `deadline` passes; returns its answer.
pub fn wait_agent(
    spec: &VmSpec,
    p: &VmmProcess,
    token: &str,
    deadline: Duration,
) -> Result<serde_json::Value> {
    let start = Instant::now();
    let marker = spec.dir.display().to_string();
    loop {
        match agent_health(&spec.netns, token, Duration::from_millis(500)) {
            Ok(v) => return Ok(v),
            Err(e) => {
                if !process::is_alive(p.pid, &marker) {
                    let console = std::fs::read_to_string(spec.console_path()).unwrap_or_default();
                    let why = crate::console::failure_reason(
                        &crate::console::scan(&console),
                        Some("exited"),
                        None,
                    );
                    return Err(VmmError::Control {
                        path: spec.dir.clone(),
                        detail: format!("VMM exited before the agent answered: {why}"),
                    });
                }
                if start.elapsed() > deadline {
                    return Err(VmmError::Timeout {
                        what: format!("agent of {} ({e})", spec.vm_id),
                        secs: deadline.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// What the benchmark needs.
pub struct BenchInput<'a> {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Golden image.
    pub rootfs: PathBuf,
    /// A scratch directory (a VM directory and a snapshot go under it).
    pub work_dir: PathBuf,
    /// Network namespace to create, use and remove (at most 15 characters).
    pub netns: String,
    /// vCPUs and memory of the VM.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Writes a state disk at the path holding the agent configuration.
    pub make_state_disk: &'a dyn Fn(&Path, &AgentConfig) -> std::result::Result<(), String>,
    /// How long a cold boot may take.
    pub boot_deadline: Duration,
}

/// The figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    /// The driver (`describe()`).
    pub driver: String,
    /// Start to agent answering, cold.
    pub cold_boot_ms: u64,
    /// Snapshot create (pause, write, stop).
    pub snapshot_create_ms: u64,
    /// Bytes written into the snapshot directory.
    pub snapshot_bytes: u64,
    /// Restore to agent answering.
    pub restore_ms: u64,
    /// Guest uptime just before the snapshot and just after the restore.
    pub uptime_ms_before_after: (u64, u64),
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: cold boot to agent ready {} ms; snapshot create {} ms ({} MiB); \
             restore to agent ready {} ms ({:.1}x faster than cold boot); guest uptime {} ms -> {} ms",
            self.driver,
            self.cold_boot_ms,
            self.snapshot_create_ms,
            self.snapshot_bytes / (1024 * 1024),
            self.restore_ms,
            self.cold_boot_ms as f64 / self.restore_ms.max(1) as f64,
            self.uptime_ms_before_after.0,
            self.uptime_ms_before_after.1
        )
    }
}

/// Boots a VM cold with `vmm`, snapshots it, restores it, and times each
/// step to the agent answering. Removes the VM, its namespace and files.
pub fn snapshot_bench(vmm: &dyn Vmm, input: &BenchInput) -> Result<BenchResult> {
    let dir = input.work_dir.join(format!("bench-{}", vmm.kind()));
    let snap_dir = input
        .work_dir
        .join(format!("bench-{}-snapshot", vmm.kind()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&snap_dir);
    std::fs::create_dir_all(&dir).map_err(|e| VmmError::File {
        what: "bench directory",
        path: dir.clone(),
        source: e,
    })?;
    let token = format!("bench-{}-{}", std::process::id(), snapshot::now_unix_ms());
    let spec = VmSpec {
        vm_id: format!("bench-{}", vmm.kind()),
        dir: dir.clone(),
        kernel: input.kernel.clone(),
        rootfs: input.rootfs.clone(),
        state_disk: dir.join("state.ext4"),
        home_disk: None,
        vcpus: input.vcpus,
        memory_mb: input.memory_mb,
        netns: input.netns.clone(),
        extra_kernel_args: vec![],
    };
    let cfg = AgentConfig {
        vm_id: spec.vm_id.clone(),
        token: token.clone(),
        port: AGENT_PORT,
    };
    (input.make_state_disk)(&spec.state_disk, &cfg).map_err(|e| VmmError::File {
        what: "state disk",
        path: spec.state_disk.clone(),
        source: std::io::Error::other(e),
    })?;
    polydev_net::setup_vm_network(&spec.netns)?;
    let mut pids = Vec::new();
    let r = (|| {
        let t = Instant::now();
        let p = vmm.start(&spec)?;
        pids.push(p.pid);
        wait_agent(&spec, &p, &token, input.boot_deadline)?;
        let cold_boot_ms = t.elapsed().as_millis() as u64;
        let before = agent_health(&spec.netns, &token, Duration::from_secs(5))?;
        let t = Instant::now();
        let meta = vmm.snapshot(&spec, &p, &snap_dir)?;
        let snapshot_create_ms = t.elapsed().as_millis() as u64;
        let snapshot_bytes = meta
            .files
            .iter()
            .filter_map(|f| std::fs::metadata(meta.file(f)).ok())
            .map(|m| m.len())
            .sum();
        let t = Instant::now();
        let p2 = vmm.restore(&spec, &meta)?;
        pids.push(p2.pid);
        let after = wait_agent(&spec, &p2, &token, Duration::from_secs(120))?;
        let restore_ms = t.elapsed().as_millis() as u64;
        let up = |v: &serde_json::Value| v["uptimeMs"].as_u64().unwrap_or(0);
        Ok(BenchResult {
            driver: vmm.describe(),
            cold_boot_ms,
            snapshot_create_ms,
            snapshot_bytes,
            restore_ms,
            uptime_ms_before_after: (up(&before), up(&after)),
        })
    })();
    let marker = spec.dir.display().to_string();
    for pid in pids {
        let _ = process::stop(pid, &marker, Duration::from_secs(2));
    }
    let _ = vmm.cleanup(&spec);
    let _ = polydev_net::teardown_vm_network(&spec.netns);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&snap_dir);
    r
}

use crate::snapshot;
