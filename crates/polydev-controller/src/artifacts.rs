//! Finding the guest kernel and golden image a VM boots from: explicit paths
//! from the configuration, else the newest cached builds. A VM type boots its
//! own image flavour (`browser`, `cli`) when it is built, and the minimal
//! image otherwise; the choice is recorded in [`Artifacts::image_note`].

use crate::config::Config;
use polydev_core::vm::VmType;
use polydev_image::rootfs::Flavour;
use std::path::{Path, PathBuf};

/// The guest artefacts a VM boots from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Artifacts {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Golden root filesystem.
    pub rootfs: PathBuf,
    /// Which image that is, in words (logged when a VM is created).
    pub image_note: String,
    /// The image mounts a per-user home disk (the CLI flavour).
    pub home_disk: bool,
}

/// Finds the kernel and the root filesystem for `vm_type` (or for any VM
/// when `vm_type` is `None`), or explains how to get them.
pub fn locate(cfg: &Config, vm_type: Option<VmType>) -> Result<Artifacts, String> {
    let kernel = match &cfg.kernel {
        Some(p) => existing(p, "guest kernel (POLYDEV_KERNEL)")?,
        None => polydev_image::kernel::latest(&cfg.cache_dir)
            .map_err(|e| format!("looking for the guest kernel: {e}"))?
            .map(|k| k.path)
            .ok_or_else(|| {
                format!(
                    "the guest kernel is not built (looked in {}): run `polydev kernel build`",
                    cfg.cache_dir.display()
                )
            })?,
    };
    if let Some(p) = &cfg.rootfs {
        let rootfs = existing(p, "root filesystem (POLYDEV_ROOTFS)")?;
        return Ok(Artifacts {
            kernel,
            rootfs,
            image_note: "POLYDEV_ROOTFS".into(),
            home_disk: false,
        });
    }
    if let (Some(VmType::Browser), Some(p)) = (vm_type, &cfg.browser_rootfs) {
        let rootfs = existing(p, "browser root filesystem (POLYDEV_BROWSER_ROOTFS)")?;
        return Ok(Artifacts {
            kernel,
            rootfs,
            image_note: "POLYDEV_BROWSER_ROOTFS".into(),
            home_disk: false,
        });
    }
    let latest = |f: Flavour| {
        polydev_image::rootfs::latest(f, &cfg.cache_dir)
            .map_err(|e| format!("looking for the {f} image: {e}"))
    };
    if let Some(flavour) = vm_type.and_then(|t| t.as_str().parse::<Flavour>().ok()) {
        if let Some(img) = latest(flavour)? {
            return Ok(Artifacts {
                kernel,
                rootfs: img.path,
                image_note: format!("{flavour} image"),
                // The CLI flavour mounts a per-user home disk from /dev/vdc.
                home_disk: flavour.name() == "cli",
            });
        }
    }
    let rootfs = latest(Flavour::Minimal)?.map(|i| i.path).ok_or_else(|| {
        format!(
            "the guest image is not built (looked in {}): run `polydev image build minimal`",
            cfg.cache_dir.display()
        )
    })?;
    let note = match vm_type {
        Some(t) => format!("minimal image (the {t} image is not built)"),
        None => "minimal image".into(),
    };
    Ok(Artifacts {
        kernel,
        rootfs,
        image_note: note,
        home_disk: false,
    })
}

fn existing(p: &Path, what: &str) -> Result<std::path::PathBuf, String> {
    if p.is_file() {
        Ok(p.to_path_buf())
    } else {
        Err(format!("{what} {} does not exist", p.display()))
    }
}
