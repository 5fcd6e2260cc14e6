//! `polydev vm ls|logs|rm`: operator views over the store and VM directories.

use super::common::Common;
use clap::Subcommand;

/// VM subcommands.
#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// List VMs (add --all for destroyed ones).
    Ls {
        #[command(flatten)]
        common: Common,
        /// Include destroyed VMs.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a VM's console log.
    Logs {
        #[command(flatten)]
        common: Common,
        /// VM id.
        vm_id: String,
    },
    /// Destroy a VM: stop it and remove its namespace, TAP and files.
    Rm {
        #[command(flatten)]
        common: Common,
        /// VM id.
        vm_id: String,
    },
}

/// Runs a vm subcommand.
pub async fn run(c: VmCommand) -> anyhow::Result<()> {
    match c {
        VmCommand::Ls { common, all, json } => {
            let store = polydev_controller::open_store(&common.config()).await?;
            let vms = store.list_vms(None, all).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vms)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<8} {:<10} {:<16} {:>5} {:>8}  REASON",
                "ID", "TYPE", "STATUS", "USER", "VCPU", "MEM_MB"
            );
            for v in vms {
                println!(
                    "{:<20} {:<8} {:<10} {:<16} {:>5} {:>8}  {}",
                    v.vm_id,
                    v.vm_type,
                    v.status,
                    v.user_id,
                    v.vcpu_count,
                    v.memory_mb,
                    v.failure_reason.unwrap_or_default()
                );
            }
        }
        VmCommand::Logs { common, vm_id } => {
            let store = polydev_controller::open_store(&common.config()).await?;
            let v = store
                .get_vm(&vm_id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no VM with id {vm_id}"))?;
            let path = std::path::Path::new(&v.dir).join(polydev_vmm::CONSOLE_FILE);
            let text = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            print!("{}", String::from_utf8_lossy(&text));
        }
        VmCommand::Rm { common, vm_id } => {
            let rt = polydev_controller::build_runtime(common.config()).await?;
            let v = rt.destroy(&vm_id).await?;
            eprintln!("{} {}", v.vm_id, v.status);
        }
    }
    Ok(())
}
