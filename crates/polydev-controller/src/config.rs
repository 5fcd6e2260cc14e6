//! The controller's configuration: one struct, filled from command-line flags
//! and environment variables (the table in the README lists them all).

use polydev_core::vm::VmType;
use polydev_vmm::accel::Accel;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How big a VM of one type is.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
}

/// Controller configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Where the controller keeps its database (SQLite) and VM directories.
    pub data_dir: PathBuf,
    /// Database URL; `None` means SQLite at `<data_dir>/polydev.db`.
    pub database_url: Option<String>,
    /// Where built kernels and images are cached.
    pub cache_dir: PathBuf,
    /// Explicit guest kernel, instead of the cached build.
    pub kernel: Option<PathBuf>,
    /// Explicit golden root filesystem, instead of the cached build.
    pub rootfs: Option<PathBuf>,
    /// Root filesystem for browser VMs only (the stand-in test image, say),
    /// instead of the cached browser image.
    pub browser_rootfs: Option<PathBuf>,
    /// Force KVM or TCG instead of probing.
    pub accel: Option<Accel>,
    /// Force a VMM instead of choosing (Firecracker when usable, else QEMU).
    pub vmm: Option<polydev_vmm::VmmKind>,
    /// How long a VM may take to announce readiness.
    pub boot_timeout: Duration,
    /// Size of browser VMs.
    pub browser_size: VmSize,
    /// Size of CLI VMs.
    pub cli_size: VmSize,
    /// Size of each VM's writable state disk in MiB (sparse).
    pub state_disk_mb: u64,
    /// Size of each user's persistent home disk in MiB (sparse).
    pub home_disk_mb: u64,
    /// Extra kernel arguments for every VM.
    pub extra_kernel_args: Vec<String>,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
}

impl Config {
    /// Defaults for a data directory (used by tests and benchmarks).
    pub fn with_data_dir(data_dir: PathBuf) -> Config {
        Config {
            listen: "127.0.0.1:4000".parse().expect("constant address"),
            data_dir,
            database_url: None,
            cache_dir: PathBuf::from(default_cache_dir()),
            kernel: None,
            rootfs: None,
            browser_rootfs: None,
            accel: None,
            vmm: None,
            boot_timeout: Duration::from_secs(180),
            browser_size: VmSize {
                vcpus: 2,
                memory_mb: 4096,
            },
            cli_size: VmSize {
                vcpus: 2,
                memory_mb: 2048,
            },
            state_disk_mb: 1024,
            home_disk_mb: 4096,
            extra_kernel_args: Vec::new(),
            max_body_bytes: 64 * 1024,
        }
    }

    /// The size for a VM type.
    pub fn size(&self, t: VmType) -> VmSize {
        match t {
            VmType::Browser => self.browser_size,
            VmType::Cli => self.cli_size,
        }
    }

    /// Directory holding every VM's directory.
    pub fn vms_dir(&self) -> PathBuf {
        self.data_dir.join("vms")
    }

    /// The database URL actually used.
    pub fn effective_database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("polydev.db").display()))
    }

    /// A short tag derived from the data directory, so that two controllers on
    /// one host (or two test runs) never share namespace names.
    pub fn host_tag(&self) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.data_dir.to_string_lossy().as_bytes());
        hex::encode(&d[..2])
    }

    /// Prefix of the network namespace names of this controller's VMs.
    pub fn netns_prefix(&self) -> String {
        format!("pd{}-", self.host_tag())
    }
}

/// `/var/cache/polydev`, or `POLYDEV_CACHE_DIR` when set.
pub fn default_cache_dir() -> String {
    std::env::var("POLYDEV_CACHE_DIR").unwrap_or_else(|_| "/var/cache/polydev".into())
}
