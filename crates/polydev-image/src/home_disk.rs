//! Per-user home disks: a sparse ext4 image labelled [`HOME_LABEL`] that a
//! VM gets as its third disk (`/dev/vdc`).
//!
//! The guest init checks the label, mounts the disk on
//! [`GUEST_HOME`](crate::flavour::GUEST_HOME)
//! (`rw,noatime,nodev,nosuid`) before systemd starts and, on first use
//! (no `.polydev-home` marker at its root), seeds it with the image's home
//! directory. The disk is made once per user and outlives every VM; it is
//! never loop-mounted on the host.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};
use crate::flavour::{GUEST_UID, HOME_LABEL};

/// Smallest home disk accepted, in MiB.
pub const MIN_SIZE_MB: u64 = 64;
/// The marker file the guest init writes once it has seeded a home disk.
pub const SEEDED_MARKER: &str = ".polydev-home";

/// Creates an empty, sparse home disk of `size_mb` MiB at `path`, owned by
/// the guest user (uid/gid [`GUEST_UID`]). Fails if `path` exists: a home
/// disk holds a user's data and is never replaced.
pub fn make_home_disk(path: &Path, size_mb: u64) -> Result<()> {
    if size_mb < MIN_SIZE_MB {
        return Err(Error::InvalidInput(format!(
            "home disk {} of {size_mb} MiB is too small (minimum {MIN_SIZE_MB} MiB)",
            path.display()
        )));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Error::io("create home disk", path))?;
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-m", "0", "-L", HOME_LABEL, "-E"])
        .arg(format!("root_owner={GUEST_UID}:{GUEST_UID}"))
        .arg(path);
    crate::state_disk::format_sparse(file, path, size_mb, &mut mkfs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flavour::GUEST_HOME;

    #[test]
    fn init_knows_the_contract() {
        let init = crate::rootfs::INIT_SCRIPT;
        assert!(init.contains(&format!("HOME_LABEL={HOME_LABEL}\n")));
        assert!(init.contains(&format!("HOME_DIR={GUEST_HOME}\n")));
        assert!(init.contains(&format!("HOME_OWNER={GUEST_UID}:{GUEST_UID}\n")));
        assert!(init.contains("HOME_DISK=/dev/vdc\n"));
        assert!(init.contains(SEEDED_MARKER));
    }

    #[test]
    fn makes_a_labelled_disk_once() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipping: mkfs.ext4 not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("home.ext4");
        make_home_disk(&disk, 64).unwrap();
        // The label where the guest init reads it: offset 1024 + 120.
        let bytes = std::fs::read(&disk).unwrap();
        assert_eq!(&bytes[1144..1144 + HOME_LABEL.len()], HOME_LABEL.as_bytes());
        assert_eq!(bytes[1144 + HOME_LABEL.len()], 0);
        let err = make_home_disk(&disk, 64).unwrap_err();
        assert!(err.to_string().contains("home.ext4"), "{err}");
        assert!(make_home_disk(&dir.path().join("x"), 1).is_err());
    }
}
