//! `polydev kernel build` and `polydev image build|ls`.

use clap::Subcommand;
use polydev_image::rootfs::Flavour;
use std::path::PathBuf;

/// Kernel subcommands.
#[derive(Subcommand, Debug)]
pub enum KernelCommand {
    /// Build the guest kernel from Debian's linux-source-6.1 and the committed
    /// config fragment. Takes 5-15 minutes on 2 cores; cached afterwards.
    Build {
        /// Cache directory.
        #[arg(long, env = "POLYDEV_CACHE_DIR", default_value_t = polydev_controller::config::default_cache_dir())]
        cache_dir: String,
    },
}

/// Image subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build a golden image (mmdebstrap into a directory, then mkfs.ext4 -d).
    Build {
        /// Flavour: minimal.
        flavour: String,
        /// Cache directory.
        #[arg(long, env = "POLYDEV_CACHE_DIR", default_value_t = polydev_controller::config::default_cache_dir())]
        cache_dir: String,
        /// The guest agent binary; default: `polydev-agent` beside this binary.
        #[arg(long, env = "POLYDEV_AGENT_BIN")]
        agent: Option<PathBuf>,
    },
}

/// Runs a kernel subcommand.
pub async fn kernel(c: KernelCommand) -> anyhow::Result<()> {
    match c {
        KernelCommand::Build { cache_dir } => {
            let k = tokio::task::spawn_blocking(move || {
                let mut p = polydev_image::StderrProgress::new("kernel");
                polydev_image::kernel::build(std::path::Path::new(&cache_dir), &mut p)
            })
            .await??;
            eprintln!("kernel {} ({})", if k.cached { "cached" } else { "built" }, k.hash);
            println!("{}", k.path.display());
        }
    }
    Ok(())
}

/// The agent binary shipped beside the running `polydev`.
pub fn default_agent_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("polydev-agent");
    if p.is_file() {
        Ok(p)
    } else {
        anyhow::bail!(
            "the guest agent binary {} does not exist: build it with `cargo build --release -p polydev-agent` or pass --agent",
            p.display()
        )
    }
}

/// Runs an image subcommand.
pub async fn image(c: ImageCommand) -> anyhow::Result<()> {
    match c {
        ImageCommand::Build { flavour, cache_dir, agent } => {
            let flavour: Flavour = flavour.parse()?;
            let agent = match agent {
                Some(a) => a,
                None => default_agent_bin()?,
            };
            let img = tokio::task::spawn_blocking(move || {
                let mut p = polydev_image::StderrProgress::new("image");
                polydev_image::rootfs::build(flavour, std::path::Path::new(&cache_dir), &agent, &mut p)
            })
            .await??;
            eprintln!("image {flavour} {} ({})", if img.cached { "cached" } else { "built" }, img.hash);
            println!("{}", img.path.display());
        }
    }
    Ok(())
}
