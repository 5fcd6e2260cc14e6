//! Options shared by every subcommand that touches the data directory.

use clap::Args;
use polydev_controller::config::{default_cache_dir, Config};
use std::path::PathBuf;

/// Where polydev keeps its state.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// Data directory: SQLite database, VM directories and console logs.
    #[arg(long, env = "POLYDEV_DATA_DIR", default_value = "/var/lib/polydev")]
    pub data_dir: PathBuf,
    /// Database URL: `sqlite:///path/db` or `postgres://user@host/db`.
    /// Default: SQLite at <data-dir>/polydev.db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Cache of built kernels and images.
    #[arg(long, env = "POLYDEV_CACHE_DIR", default_value_t = default_cache_dir())]
    pub cache_dir: String,
    /// Guest kernel to boot instead of the cached build.
    #[arg(long, env = "POLYDEV_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Golden root filesystem to boot instead of the cached build.
    #[arg(long, env = "POLYDEV_ROOTFS")]
    pub rootfs: Option<PathBuf>,
    /// Root filesystem for browser VMs only (e.g. the stand-in test image
    /// from `polydev image standins`), instead of the cached browser image.
    #[arg(long, env = "POLYDEV_BROWSER_ROOTFS")]
    pub browser_rootfs: Option<PathBuf>,
    /// Acceleration: `auto` probes KVM and falls back to TCG.
    #[arg(long, env = "POLYDEV_ACCEL", default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// VMM: `auto` uses Firecracker when its binary exists (POLYDEV_FIRECRACKER
    /// or PATH) and KVM runs guests, QEMU otherwise.
    #[arg(long, env = "POLYDEV_VMM", default_value = "auto", value_parser = ["auto", "qemu", "firecracker"])]
    pub vmm: String,
}

impl Common {
    /// The controller configuration these options describe.
    pub fn config(&self) -> Config {
        let mut c = Config::with_data_dir(absolute(&self.data_dir));
        c.database_url = self.database_url.clone().filter(|u| !u.is_empty());
        c.cache_dir = PathBuf::from(&self.cache_dir);
        c.kernel = self.kernel.clone();
        c.rootfs = self.rootfs.clone();
        c.browser_rootfs = self.browser_rootfs.clone();
        c.accel = match self.accel.as_str() {
            "kvm" => Some(polydev_vmm::accel::Accel::Kvm),
            "tcg" => Some(polydev_vmm::accel::Accel::Tcg),
            _ => None,
        };
        c.vmm = self.vmm.parse().ok();
        c
    }
}

/// The host's firewall table of a controller that lives only for one
/// command (a benchmark's, the soak's): deleted when this is dropped, on
/// success, error or panic alike. Its tag is the controller's host tag.
pub struct HostTable(pub String);

impl Drop for HostTable {
    fn drop(&mut self) {
        let _ = polydev_egress::nft::delete_table(
            polydev_egress::nft::Target::Host,
            "ip",
            &format!("polydev_{}", self.0),
        );
    }
}

fn absolute(p: &std::path::Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Logs to stderr; `POLYDEV_LOG_FORMAT=json` for JSON lines, `RUST_LOG` for
/// the level (default `info`).
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("POLYDEV_LOG_FORMAT")
        .map(|v| v == "json")
        .unwrap_or(false);
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}
