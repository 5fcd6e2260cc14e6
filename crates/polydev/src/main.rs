//! `polydev`: the controller and its operator tools in one binary.

mod cmd;

use clap::{Parser, Subcommand};

/// Run AI coding CLIs (Claude Code, Codex, Gemini CLI) in per-user microVMs.
///
/// Quick start: `polydev kernel build && polydev image build minimal`, then
/// `polydev apikey create` and `polydev serve`. Every option can also be set
/// with the environment variable shown in its help.
#[derive(Parser)]
#[command(name = "polydev", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: HTTP API, VM runtime, reconciler.
    Serve(cmd::serve::Args),
    /// Build the guest kernel (cached by content hash).
    Kernel {
        #[command(subcommand)]
        command: cmd::image::KernelCommand,
    },
    /// Build or inspect golden guest images.
    Image {
        #[command(subcommand)]
        command: cmd::image::ImageCommand,
    },
    /// List, inspect and remove VMs (works on the store directly).
    Vm {
        #[command(subcommand)]
        command: cmd::vm::VmCommand,
    },
    /// Dashboard accounts: create (the first admin too), ls, disable,
    /// enable, reset-password.
    User {
        #[command(subcommand)]
        command: cmd::user::UserCommand,
    },
    /// Manage API keys.
    Apikey {
        #[command(subcommand)]
        command: cmd::apikey::ApikeyCommand,
    },
    /// Credential vault master keys: keygen, rotate, status.
    Vault {
        #[command(subcommand)]
        command: cmd::vault::VaultCommand,
    },
    /// Check this host: which VMM and acceleration will be used and why.
    Doctor(cmd::common::Common),
    /// Measure VM create-to-ready times (prints figures, asserts nothing).
    Bench(cmd::bench::Args),
    /// Crash a controller of its own at random moments of its work and
    /// check it leaks nothing (processes, namespaces, links, firewall
    /// elements, files, slots) and re-adopts every live VM.
    Soak(cmd::soak::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cmd::common::init_logging();
    // Everything that writes the data directory (database, disks, logs,
    // snapshots) does so privately; image builds keep the default umask, as
    // the guest's own files need their packaged modes.
    if !matches!(cli.command, Command::Kernel { .. } | Command::Image { .. }) {
        polydev_controller::private::restrict_umask();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => cmd::serve::run(a).await,
            Command::Kernel { command } => cmd::image::kernel(command).await,
            Command::Image { command } => cmd::image::image(command).await,
            Command::Vm { command } => cmd::vm::run(command).await,
            Command::Apikey { command } => cmd::apikey::run(command).await,
            Command::User { command } => cmd::user::run(command).await,
            Command::Vault { command } => cmd::vault::run(command).await,
            Command::Doctor(c) => cmd::doctor::run(c).await,
            Command::Bench(a) => cmd::bench::run(a).await,
            Command::Soak(a) => cmd::soak::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polydev: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
