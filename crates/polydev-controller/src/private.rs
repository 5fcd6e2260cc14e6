//! Keeping the controller's files to itself: home disks hold provider
//! credentials in clear, snapshots a VM's memory, the database sealed rows
//! and API key hashes. The controller runs under umask 077 (files 0600,
//! directories 0700, whatever creates them: the VMMs too), its data and
//! cache directories are 0700, paths built from ids stay inside their
//! directory, and looser modes left by older versions are reported.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Sets the process's umask to 077 (inherited by the VMMs it starts).
pub fn restrict_umask() {
    // SAFETY: umask(2) only changes this process's file mode mask.
    unsafe { libc::umask(0o077) };
}

/// `parent/id`, when `id` is one plain path component (not empty, `.`,
/// `..`, and without `/` or NUL): a path built from an id never leaves its
/// directory.
pub fn child(parent: &Path, id: &str) -> Result<PathBuf, String> {
    let mut comps = Path::new(id).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(c)), None) if c == id && !id.contains('\0') => Ok(parent.join(id)),
        _ => Err(format!(
            "{id:?} cannot name an entry of {}: ids are single path components",
            parent.display()
        )),
    }
}

/// Makes `dir` (created if missing) mode 0700.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("making {} private (0700): {e}", dir.display()))
}

/// Entries under `dir` (three levels deep) that group or others may read,
/// write or enter, with their modes.
pub fn loose_modes(dir: &Path) -> Vec<String> {
    fn walk(p: &Path, depth: usize, out: &mut Vec<String>) {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return;
        };
        if md.file_type().is_symlink() {
            return;
        }
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 && (md.is_dir() || md.is_file()) {
            out.push(format!("{} is {mode:04o}", p.display()));
        }
        if md.is_dir() && depth > 0 {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    walk(&e.path(), depth - 1, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 3, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_inside() {
        let d = Path::new("/data/users");
        assert_eq!(child(d, "alice").unwrap(), Path::new("/data/users/alice"));
        for bad in ["", ".", "..", "a/b", "/etc", "../x", "a\0b"] {
            assert!(child(d, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loose_modes_are_found() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let f = t.path().join("home.ext4");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let found = loose_modes(t.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("0644"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(loose_modes(t.path()).is_empty());
    }
}
