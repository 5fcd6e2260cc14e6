//! `polydev serve`.

use super::common::Common;
use clap::Args as ClapArgs;
use std::net::SocketAddr;

/// Options of `polydev serve`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Address to listen on.
    #[arg(long, env = "POLYDEV_LISTEN", default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// Seconds a VM may take to announce readiness before it is failed.
    #[arg(long, env = "POLYDEV_BOOT_TIMEOUT_SECS", default_value_t = 180)]
    boot_timeout_secs: u64,
    /// vCPUs of a browser VM.
    #[arg(long, env = "POLYDEV_BROWSER_VCPUS", default_value_t = 2)]
    browser_vcpus: u32,
    /// Memory of a browser VM in MiB.
    #[arg(long, env = "POLYDEV_BROWSER_MEMORY_MB", default_value_t = 4096)]
    browser_memory_mb: u32,
    /// vCPUs of a CLI VM.
    #[arg(long, env = "POLYDEV_CLI_VCPUS", default_value_t = 2)]
    cli_vcpus: u32,
    /// Memory of a CLI VM in MiB.
    #[arg(long, env = "POLYDEV_CLI_MEMORY_MB", default_value_t = 2048)]
    cli_memory_mb: u32,
    /// Size of each VM's sparse writable state disk in MiB.
    #[arg(long, env = "POLYDEV_STATE_DISK_MB", default_value_t = 1024)]
    state_disk_mb: u64,
    /// Size of each user's persistent home disk in MiB (sparse; CLI image).
    #[arg(long, env = "POLYDEV_HOME_DISK_MB", default_value_t = 4096)]
    home_disk_mb: u64,
    /// Extra kernel command-line arguments for every VM (space-separated).
    #[arg(long, env = "POLYDEV_EXTRA_KERNEL_ARGS", default_value = "")]
    extra_kernel_args: String,
    /// Seconds a user has to finish signing in to a provider.
    #[arg(long, env = "POLYDEV_AUTH_TIMEOUT_SECS", default_value_t = 300)]
    auth_timeout_secs: u64,
    /// Sign-in sessions a user may start per 15 minutes (429 beyond).
    #[arg(long, env = "POLYDEV_AUTH_RATE_LIMIT", default_value_t = 30)]
    auth_rate_limit: u32,
    /// Seconds a browser VM's VNC server may take to answer once its agent is ready.
    #[arg(long, env = "POLYDEV_AUTH_DISPLAY_TIMEOUT_SECS", default_value_t = 90)]
    auth_display_timeout_secs: u64,
    /// Seconds a provider CLI may take to show its authorization URL once
    /// started (a Node.js CLI under TCG can take minutes).
    #[arg(long, env = "POLYDEV_AUTH_URL_TIMEOUT_SECS", default_value_t = 120)]
    auth_url_timeout_secs: u64,
    /// Warm browser VMs to keep booted and hibernated, so a sign-in session
    /// resumes one instead of booting (each costs its memory on disk; 0: off).
    #[arg(long, env = "POLYDEV_BROWSER_POOL", default_value_t = 0)]
    browser_pool: usize,
    /// Further origins (comma-separated `scheme://host[:port]`) a sign-in's
    /// authorization URL may point at besides the provider's own https hosts:
    /// a stand-in OAuth server in tests. Empty by default.
    #[arg(long, env = "POLYDEV_AUTH_URL_ORIGINS", default_value = "")]
    auth_url_origins: String,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "POLYDEV_MAX_BODY_BYTES", default_value_t = 65536)]
    max_body_bytes: usize,
    /// Seconds a CLI VM may stay without a run or a terminal before it
    /// hibernates (the next run or terminal resumes it).
    #[arg(long, env = "POLYDEV_CLI_IDLE_SECS", default_value_t = 600)]
    cli_idle_secs: u64,
    /// Bytes kept from the start of each VM's console log (the boot).
    #[arg(long, env = "POLYDEV_CONSOLE_HEAD_BYTES", default_value_t = 1 << 20)]
    console_head_bytes: u64,
    /// Bytes kept from the end of each VM's console log; what lies between
    /// head and tail is dropped, leaving a line that says how much.
    #[arg(long, env = "POLYDEV_CONSOLE_TAIL_BYTES", default_value_t = 4 << 20)]
    console_tail_bytes: u64,
}

/// Runs the controller.
pub async fn run(a: Args) -> anyhow::Result<()> {
    let mut cfg = a.common.config();
    cfg.listen = a.listen;
    cfg.boot_timeout = std::time::Duration::from_secs(a.boot_timeout_secs.max(1));
    cfg.browser_size = polydev_controller::config::VmSize {
        vcpus: a.browser_vcpus,
        memory_mb: a.browser_memory_mb,
    };
    cfg.cli_size = polydev_controller::config::VmSize {
        vcpus: a.cli_vcpus,
        memory_mb: a.cli_memory_mb,
    };
    cfg.state_disk_mb = a.state_disk_mb;
    cfg.home_disk_mb = a.home_disk_mb;
    cfg.extra_kernel_args = a
        .extra_kernel_args
        .split_whitespace()
        .map(String::from)
        .collect();
    cfg.max_body_bytes = a.max_body_bytes;
    cfg.live = polydev_controller::config::LiveConfig::from_env().map_err(anyhow::Error::msg)?;
    cfg.egress =
        polydev_controller::egress::EgressSettings::from_env().map_err(anyhow::Error::msg)?;
    cfg.cli_idle = std::time::Duration::from_secs(a.cli_idle_secs.max(1));
    cfg.runs = polydev_controller::runs::RunsConfig::from_env().map_err(anyhow::Error::msg)?;
    cfg.admission =
        polydev_controller::admission::AdmissionConfig::from_env().map_err(anyhow::Error::msg)?;
    cfg.accounts =
        polydev_controller::accounts::AccountsConfig::from_env().map_err(anyhow::Error::msg)?;
    cfg.console = polydev_vmm::console::Limits {
        head: a.console_head_bytes,
        // A boot's last lines (readiness, a panic) must fit.
        tail: a.console_tail_bytes.max(64 << 10),
    };
    let auth = polydev_controller::auth_flow::AuthFlowConfig {
        user_timeout: std::time::Duration::from_secs(a.auth_timeout_secs.max(1)),
        rate_limit: a.auth_rate_limit,
        display_timeout: std::time::Duration::from_secs(a.auth_display_timeout_secs.max(1)),
        url_timeout: std::time::Duration::from_secs(a.auth_url_timeout_secs.max(1)),
        browser_pool: a.browser_pool,
        url_origins: polydev_controller::sign_in::parse_origins(&a.auth_url_origins)
            .map_err(anyhow::Error::msg)?,
        ..Default::default()
    };
    polydev_controller::serve(cfg, auth).await
}
