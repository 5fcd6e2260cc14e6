//! VMM drivers: turning a [`VmSpec`] into a running virtual machine process.
//!
//! A driver knows one VMM's command line or API and nothing else: the VM's
//! namespace and disks are made by the caller, the driver starts the VMM
//! inside that namespace with its serial console captured to a file from the
//! first byte, and hands back the process. Stopping and liveness are the same
//! for every driver and live in [`process`]. [`accel`] decides between KVM
//! and software emulation by booting a probe guest, and [`console`] reads a
//! console log to say how far a boot got and, when it failed, why, and keeps
//! the log bounded while the guest writes it.
//!
//! Every driver also pauses, resumes, snapshots and restores a VM through the
//! same [`Vmm`] trait; a snapshot is a directory of VMM-specific files plus a
//! [`snapshot::SnapshotMeta`] saying which VMM, version and format wrote it.
//! [`choice`] picks the VMM for a host, and [`bench`] measures snapshot
//! restore against a cold boot.
#![warn(missing_docs)]

pub mod accel;
pub mod bench;
pub mod choice;
pub mod console;
pub mod diagnose;
pub mod firecracker;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod snapshot;

pub use choice::{choose_vmm, VmmChoice};
pub use snapshot::SnapshotMeta;

use std::path::{Path, PathBuf};

/// Which VMM runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmmKind {
    /// QEMU's `microvm` machine (KVM or TCG).
    Qemu,
    /// Firecracker (KVM only).
    Firecracker,
}

impl VmmKind {
    /// Lowercase name, as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            VmmKind::Qemu => "qemu",
            VmmKind::Firecracker => "firecracker",
        }
    }
}

impl std::fmt::Display for VmmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for VmmKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<VmmKind, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "qemu" => Ok(VmmKind::Qemu),
            "firecracker" => Ok(VmmKind::Firecracker),
            other => Err(format!(
                "unknown VMM {other:?} (expected firecracker or qemu)"
            )),
        }
    }
}

/// Everything a driver needs to start one VM. Paths are absolute.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The VM's id (names the process, appears in logs).
    pub vm_id: String,
    /// The VM's private directory (console log, VMM log, sockets, state disk).
    pub dir: PathBuf,
    /// Guest kernel (ELF vmlinux).
    pub kernel: PathBuf,
    /// Golden root filesystem, attached read-only as the first disk.
    pub rootfs: PathBuf,
    /// Per-VM writable state disk, attached as the second disk.
    pub state_disk: PathBuf,
    /// A user's persistent home disk, attached third (`/dev/vdc`) and
    /// mounted by the guest on the CLI user's home; `None` for none.
    pub home_disk: Option<PathBuf>,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Network namespace holding the VM's TAP; the VMM runs inside it.
    pub netns: String,
    /// Extra kernel command line arguments (operator debugging).
    pub extra_kernel_args: Vec<String>,
}

impl VmSpec {
    /// Where the serial console is captured.
    pub fn console_path(&self) -> PathBuf {
        self.dir.join(CONSOLE_FILE)
    }
    /// Where the VMM's own stdout/stderr go.
    pub fn vmm_log_path(&self) -> PathBuf {
        self.dir.join(VMM_LOG_FILE)
    }
    /// The kernel command line shared by every driver.
    pub fn kernel_cmdline(&self) -> String {
        use polydev_core::guest::{kernel_ip_arg, GUEST_INIT};
        let mut parts = vec![
            "console=ttyS0".to_string(),
            "reboot=t".into(),
            "panic=-1".into(),
            "root=/dev/vda".into(),
            "ro".into(),
            "rootfstype=ext4".into(),
            format!("init={GUEST_INIT}"),
            kernel_ip_arg(),
            // VMs have no IPv6 path out (egress is IPv4): without a stack
            // the guest never tries one.
            "ipv6.disable=1".into(),
            // Under emulation on a loaded host the IO-APIC timer check can
            // miss its window and panic the kernel ("IO-APIC + timer doesn't
            // work!"); a VM's timer is known good.
            "no_timer_check".into(),
        ];
        parts.extend(self.extra_kernel_args.iter().cloned());
        parts.join(" ")
    }
}

/// File name of the console log inside a VM's directory.
pub const CONSOLE_FILE: &str = "console.log";
/// File name of the VMM's own log inside a VM's directory.
pub const VMM_LOG_FILE: &str = "vmm.log";

/// Errors from VMM drivers.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM binary could not be started.
    #[error("starting {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file the VM needs is missing or unreadable.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Host networking failed.
    #[error(transparent)]
    Net(#[from] polydev_net::NetError),
    /// Stopping a VMM process failed.
    #[error("stopping VMM pid {pid}: {detail}")]
    Stop {
        /// Process id.
        pid: u32,
        /// What went wrong.
        detail: String,
    },
    /// The VMM's control socket (QMP, Firecracker API) could not be used.
    #[error("VMM control socket {path}: {detail}")]
    Control {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The VMM refused or failed a request. For Firecracker `detail` is the
    /// API's `fault_message`, verbatim; for QEMU the QMP error's `desc`.
    #[error("{vmm} {request}: {detail}")]
    Api {
        /// Which VMM.
        vmm: VmmKind,
        /// The request (`PUT /drives/root`, `migrate`).
        request: String,
        /// The VMM's own words.
        detail: String,
    },
    /// A snapshot could not be written, read or used.
    #[error("snapshot {dir}: {detail}")]
    Snapshot {
        /// The snapshot directory.
        dir: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The VMM did not reach a state in time.
    #[error("{what}: timed out after {secs} s")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        secs: u64,
    },
    /// The driver cannot do this (for example a VMM too old for snapshots).
    #[error("{0}")]
    Unsupported(String),
    /// The host is not set up for the driver (an account it needs is
    /// missing, say).
    #[error("{0}")]
    Config(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, VmmError>;

/// A VMM driver.
pub trait Vmm: Send + Sync {
    /// Which VMM this is.
    fn kind(&self) -> VmmKind;
    /// Starts the VM described by `spec`. Returns once the VMM process exists;
    /// the guest boots on its own and announces readiness on its console.
    fn start(&self, spec: &VmSpec) -> Result<process::VmmProcess>;
    /// A one-line description (binary, version, acceleration) for logs and
    /// `/health`.
    fn describe(&self) -> String;
    /// The VMM's version, as its binary reports it (`--version`).
    fn version(&self) -> Result<String>;
    /// Pauses the guest's vCPUs; the process and its devices stay.
    fn pause(&self, spec: &VmSpec, p: &process::VmmProcess) -> Result<()>;
    /// Resumes a paused guest.
    fn resume(&self, spec: &VmSpec, p: &process::VmmProcess) -> Result<()>;
    /// Writes a full snapshot (guest memory and device state) of the running
    /// or paused VM into `dest_dir` (created if missing), with its
    /// [`SnapshotMeta`] beside the files, and leaves the VM stopped: its VMM
    /// process has exited when this returns. The VM's disks are not copied;
    /// they stay consistent because nothing runs until [`Vmm::restore`].
    fn snapshot(
        &self,
        spec: &VmSpec,
        p: &process::VmmProcess,
        dest_dir: &Path,
    ) -> Result<SnapshotMeta>;
    /// Starts a new VMM process from `snap` inside `spec.netns` (every VM has
    /// the same TAP name and guest address, so no network change is needed)
    /// and resumes the guest. Refuses a snapshot written by another VMM kind,
    /// VMM version or snapshot format.
    fn restore(&self, spec: &VmSpec, snap: &SnapshotMeta) -> Result<process::VmmProcess>;
    /// Reclaims what the driver made for `spec` outside the VM's directory
    /// (a Firecracker jail elsewhere, its cgroup), once its VMM process is
    /// gone. Nothing for drivers that make nothing.
    fn cleanup(&self, spec: &VmSpec) -> Result<()> {
        let _ = spec;
        Ok(())
    }
}
