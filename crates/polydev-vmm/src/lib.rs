//! VMM drivers: turning a [`VmSpec`] into a running virtual machine process.
//!
//! A driver knows one VMM's command line or API and nothing else: the VM's
//! namespace and disks are made by the caller, the driver starts the VMM
//! inside that namespace with its serial console captured to a file from the
//! first byte, and hands back the process. Stopping and liveness are the same
//! for every driver and live in [`process`]. [`accel`] decides between KVM
//! and software emulation by booting a probe guest, and [`console`] reads a
//! console log to say how far a boot got and, when it failed, why.
#![warn(missing_docs)]

pub mod accel;
pub mod console;
pub mod process;
pub mod qemu;

use std::path::PathBuf;

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
}
