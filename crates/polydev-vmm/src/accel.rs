//! Choosing between KVM and TCG. `/dev/kvm` existing proves nothing (a nested
//! paravirtual KVM can refuse ordinary guests), so the choice boots a probe
//! guest: the real guest kernel with no root filesystem under KVM, which must
//! reach its "cannot mount root" panic within a few seconds. The verdict is
//! cached per host boot, QEMU binary and kernel.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Hardware acceleration for QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// Lowercase name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The acceleration chosen and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccelChoice {
    /// What will be used.
    pub accel: Accel,
    /// Why, in words.
    pub reason: String,
}

/// How long the KVM probe guest may take to reach its panic.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// Decides KVM or TCG. `force` (from configuration) wins without probing;
/// otherwise the probe runs, or its cached verdict in `cache` is reused.
pub fn choose(
    qemu: &str,
    kernel: Option<&Path>,
    cache: Option<&Path>,
    force: Option<Accel>,
) -> AccelChoice {
    if let Some(a) = force {
        return AccelChoice {
            accel: a,
            reason: format!("{} forced by configuration", a.as_str()),
        };
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return AccelChoice {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm is not usable ({e})"),
        };
    }
    let Some(kernel) = kernel else {
        return AccelChoice {
            accel: Accel::Tcg,
            reason: "/dev/kvm exists but the guest kernel is not built, so KVM could not be \
                     probed (run `polydev kernel build`)"
                .into(),
        };
    };
    let key = cache_key(qemu, kernel);
    if let Some(c) = cache.and_then(|p| read_cache(p, &key)) {
        return c;
    }
    let choice = probe(qemu, kernel);
    if let Some(p) = cache {
        let _ = std::fs::write(
            p,
            serde_json::json!({"key": key, "choice": choice}).to_string(),
        );
    }
    choice
}

fn cache_key(qemu: &str, kernel: &Path) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let meta = std::fs::metadata(kernel).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{}|{}|{}|{}|{}",
        boot.trim(),
        qemu,
        kernel.display(),
        size,
        mtime
    )
}

fn read_cache(path: &Path, key: &str) -> Option<AccelChoice> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if v.get("key")?.as_str()? != key {
        return None;
    }
    serde_json::from_value(v.get("choice")?.clone()).ok()
}

/// Boots `kernel` under KVM with no root device and waits for the kernel's
/// root-mount panic on the serial console.
pub fn probe(qemu: &str, kernel: &Path) -> AccelChoice {
    let start = Instant::now();
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "128M",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .args([
            "-append",
            "console=ttyS0 panic=-1 root=/dev/polydev-probe-none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return AccelChoice {
                accel: Accel::Tcg,
                reason: format!("could not run {qemu} for the KVM probe: {e}"),
            }
        }
    };
    let mut out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut console = Vec::new();
    let verdict = loop {
        let left = PROBE_TIMEOUT.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(chunk) => {
                console.extend_from_slice(&chunk);
                let text = String::from_utf8_lossy(&console);
                if text.contains("Kernel panic") || text.contains("VFS: Unable to mount root") {
                    break Ok(start.elapsed());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Err("exited"),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break Err("timed out"),
        }
    };
    let _ = child.kill();
    let status = child.wait().ok();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    match verdict {
        Ok(t) => AccelChoice {
            accel: Accel::Kvm,
            reason: format!(
                "KVM probe guest ran its kernel to the root-mount panic in {} ms",
                t.as_millis()
            ),
        },
        Err(how) => {
            let detail = last_line(&err)
                .or_else(|| last_line(&String::from_utf8_lossy(&console)))
                .unwrap_or_else(|| "no output".into());
            AccelChoice {
                accel: Accel::Tcg,
                reason: format!(
                    "/dev/kvm exists but a probe guest did not run under it ({how} after {} ms{}: {detail}); using TCG software emulation",
                    start.elapsed().as_millis(),
                    status.map(|s| format!(", {s}")).unwrap_or_default(),
                ),
            }
        }
    }
}

fn last_line(s: &str) -> Option<String> {
    s.lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(200).collect())
}

/// Where the probe verdict is cached inside a data directory.
pub fn cache_path(data_dir: &Path) -> PathBuf {
    data_dir.join("accel-probe.json")
}
