//! Per-VM state disks: small ext4 images made with `mkfs.ext4 -d` (never a
//! loop mount) holding the VM's configuration. The guest init mounts the disk
//! at [`polydev_core::guest::STATE_MOUNT`] and keeps the overlay's upper layer
//! on it.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};
use std::process::Command;

use crate::command;
use crate::error::{Error, Result};

/// Filesystem label of state disks.
pub const STATE_LABEL: &str = "polydev-state";
/// Smallest state disk accepted, in MiB.
pub const MIN_SIZE_MB: u64 = 16;

fn check_rel(rel: &str) -> Result<()> {
    let p = Path::new(rel);
    let ok = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "state disk file path {rel:?} must be relative, without '..' or '.'"
        )))
    }
}

/// Creates a sparse ext4 image of `size_mb` MiB at `path` (replacing any
/// existing file) holding `files`: `(relative path, content, mode)`.
/// Parent directories are created with mode 0755.
pub fn make_state_disk(path: &Path, size_mb: u64, files: &[(&str, &[u8], u32)]) -> Result<()> {
    if size_mb < MIN_SIZE_MB {
        return Err(Error::InvalidInput(format!(
            "state disk {} of {size_mb} MiB is too small (minimum {MIN_SIZE_MB} MiB)",
            path.display()
        )));
    }
    for (rel, _, _) in files {
        check_rel(rel)?;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".polydev-state-")
        .tempdir_in(parent)
        .map_err(Error::io("create staging directory in", parent))?;
    let root = staging.path();
    std::fs::set_permissions(root, Permissions::from_mode(0o755))
        .map_err(Error::io("chmod", root))?;
    for (rel, content, mode) in files {
        let dest = root.join(rel);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        }
        std::fs::write(&dest, content).map_err(Error::io("write", &dest))?;
        std::fs::set_permissions(&dest, Permissions::from_mode(*mode))
            .map_err(Error::io("chmod", &dest))?;
    }
    let file = std::fs::File::create(path).map_err(Error::io("create", path))?;
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-d"])
        .arg(root)
        .args(["-L", STATE_LABEL])
        .arg(path);
    format_sparse(file, path, size_mb, &mut mkfs)
}

/// Grows the just-created `file` at `path` to `size_mb` (sparse) and runs
/// `mkfs` on it, removing the file if that fails. Shared by every per-VM and
/// per-user disk: none of them is ever mounted on the host.
pub(crate) fn format_sparse(
    file: std::fs::File,
    path: &Path,
    size_mb: u64,
    mkfs: &mut Command,
) -> Result<()> {
    file.set_len(size_mb * 1024 * 1024)
        .map_err(Error::io("resize", path))?;
    drop(file);
    command::run_quiet(mkfs).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_paths() {
        assert!(check_rel("config/agent.json").is_ok());
        assert!(check_rel("../x").is_err());
        assert!(check_rel("/etc/x").is_err());
        assert!(check_rel("").is_err());
    }

    #[test]
    fn rejects_tiny_disks() {
        let dir = tempfile::tempdir().unwrap();
        let err = make_state_disk(&dir.path().join("s.ext4"), 1, &[]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
    }

    #[test]
    fn makes_a_disk_with_files() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipping: mkfs.ext4 not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("state.ext4");
        make_state_disk(&disk, 16, &[("config/agent.json", b"{}", 0o600)]).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 16 << 20);
        // debugfs reads the image without mounting it.
        let out = Command::new("debugfs")
            .args(["-R", "stat /config/agent.json"])
            .arg(&disk)
            .output();
        if let Ok(out) = out {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("Mode:  0600"), "{text}");
        }
    }
}
