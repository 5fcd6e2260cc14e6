//! Finding the guest kernel and golden image a VM boots from: explicit paths
//! from the configuration, else the newest cached builds.

use crate::config::Config;
use crate::runtime::Artifacts;
use std::path::Path;

/// Finds the kernel and root filesystem, or explains how to get them.
pub fn locate(cfg: &Config) -> Result<Artifacts, String> {
    let kernel = match &cfg.kernel {
        Some(p) => existing(p, "guest kernel (POLYDEV_KERNEL)")?,
        None => polydev_image::kernel::locate(&cfg.cache_dir)
            .map_err(|e| format!("looking for the guest kernel: {e}"))?
            .map(|k| k.path)
            .ok_or_else(|| {
                format!(
                    "the guest kernel is not built (looked in {}): run `polydev kernel build`",
                    cfg.cache_dir.display()
                )
            })?,
    };
    let rootfs = match &cfg.rootfs {
        Some(p) => existing(p, "root filesystem (POLYDEV_ROOTFS)")?,
        None => polydev_image::rootfs::latest(polydev_image::rootfs::Flavour::Minimal, &cfg.cache_dir)
            .map_err(|e| format!("looking for the guest image: {e}"))?
            .map(|i| i.path)
            .ok_or_else(|| {
                format!(
                    "the guest image is not built (looked in {}): run `polydev image build minimal`",
                    cfg.cache_dir.display()
                )
            })?,
    };
    Ok(Artifacts { kernel, rootfs })
}

fn existing(p: &Path, what: &str) -> Result<std::path::PathBuf, String> {
    if p.is_file() {
        Ok(p.to_path_buf())
    } else {
        Err(format!("{what} {} does not exist", p.display()))
    }
}
