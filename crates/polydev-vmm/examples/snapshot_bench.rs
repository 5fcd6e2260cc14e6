//! Prints snapshot create and restore-to-agent-ready times against a cold
//! boot, per available driver (QEMU always; Firecracker when its binary is
//! found and KVM runs guests). Run as root:
//! `cargo run --release -p polydev-vmm --example snapshot_bench`.

use polydev_vmm::accel::{self, Accel};
use polydev_vmm::bench::{snapshot_bench, BenchInput};
use polydev_vmm::Vmm;
use std::time::Duration;

fn main() {
    let cache = polydev_image::cache_dir_from_env();
    let kernel = polydev_image::kernel::locate(&cache)
        .ok()
        .flatten()
        .expect("guest kernel");
    let image = polydev_image::rootfs::latest(polydev_image::rootfs::Flavour::Minimal, &cache)
        .ok()
        .flatten()
        .expect("minimal image");
    let qemu = polydev_vmm::qemu::default_binary();
    let kvm = accel::choose(&qemu, Some(&kernel.path), None, None);
    println!("acceleration: {} ({})", kvm.accel.as_str(), kvm.reason);
    let mut drivers: Vec<Box<dyn Vmm>> = vec![Box::new(polydev_vmm::qemu::Qemu::new(kvm.accel))];
    match polydev_vmm::firecracker::find_binary() {
        Some(fc) if kvm.accel == Accel::Kvm => {
            drivers.push(Box::new(polydev_vmm::firecracker::Firecracker::new(fc)))
        }
        Some(_) => println!("firecracker: skipped (KVM does not run guests here)"),
        None => println!("firecracker: skipped (no binary; set POLYDEV_FIRECRACKER)"),
    }
    let work = tempfile::tempdir().expect("scratch directory");
    let make = |path: &std::path::Path, cfg: &polydev_core::guest::AgentConfig| {
        let json = serde_json::to_vec(cfg).map_err(|e| e.to_string())?;
        polydev_image::state_disk::make_state_disk(
            path,
            256,
            &[(polydev_core::guest::AGENT_CONFIG_REL, &json, 0o600)],
        )
        .map_err(|e| e.to_string())
    };
    for vmm in drivers {
        let input = BenchInput {
            kernel: kernel.path.clone(),
            rootfs: image.path.clone(),
            work_dir: work.path().into(),
            netns: format!("pdbench-{}", std::process::id() % 10000),
            vcpus: 1,
            memory_mb: 512,
            make_state_disk: &make,
            boot_deadline: Duration::from_secs(240),
        };
        match snapshot_bench(vmm.as_ref(), &input) {
            Ok(r) => println!("{r}"),
            Err(e) => println!("{}: benchmark failed: {e}", vmm.kind()),
        }
    }
}
