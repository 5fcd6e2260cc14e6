//! Firecracker's jailer: the VMM in a chroot, as an unprivileged uid/gid, in
//! its own cgroup v2 with CPU and memory limits, joined to the VM's network
//! namespace. Every path Firecracker is given is the same absolute path as on
//! the host (the VM directory, the kernel, the images), staged at that path
//! under the jail's root by hard links, so request bodies and snapshots are
//! identical jailed and unjailed, and the VMM's command line still names the
//! VM directory (which is how [`crate::process::is_alive`] recognises it).

use crate::{Result, VmSpec, VmmError};
use std::path::{Path, PathBuf};

/// How the jailer is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    /// The `jailer` binary.
    pub binary: PathBuf,
    /// User the VMM runs as.
    pub uid: u32,
    /// Group the VMM runs as.
    pub gid: u32,
    /// Where jails are made (`--chroot-base-dir`). `None`: inside the VM's
    /// own directory (`<vm dir>/jail`), so removing the VM removes its jail.
    pub chroot_base: Option<PathBuf>,
    /// Parent cgroup (`--parent-cgroup`), e.g. `polydev`.
    pub parent_cgroup: Option<String>,
    /// The host's cgroup version ([`JailerConfig::host_cgroup_version`]).
    pub cgroup_version: u8,
}

/// The `jailer` beside `firecracker`: `POLYDEV_JAILER`, else a `jailer` in
/// the same directory, else on PATH.
pub fn find_binary(firecracker: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("POLYDEV_JAILER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let beside = firecracker.with_file_name("jailer");
    if beside.is_file() {
        return Some(beside);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("jailer"))
        .find(|p| p.is_file())
}

/// Extra memory (MiB) the VMM process may use beyond the guest's memory.
pub const MEMORY_OVERHEAD_MB: u64 = 128;

impl JailerConfig {
    /// The jail id for a VM: its id with anything but letters, digits and
    /// `-` replaced (the jailer accepts no more), at most 64 characters.
    pub fn jail_id(vm_id: &str) -> String {
        vm_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect()
    }

    fn base(&self, spec: &VmSpec) -> PathBuf {
        self.chroot_base
            .clone()
            .unwrap_or_else(|| spec.dir.join("jail"))
    }

    /// The jail's directory (`<base>/<exec name>/<id>`), removed on cleanup.
    pub fn jail_dir(&self, spec: &VmSpec, firecracker: &Path) -> PathBuf {
        let exec = firecracker
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "firecracker".into());
        self.base(spec).join(exec).join(Self::jail_id(&spec.vm_id))
    }

    /// The chroot (`<jail dir>/root`).
    pub fn root(&self, spec: &VmSpec, firecracker: &Path) -> PathBuf {
        self.jail_dir(spec, firecracker).join("root")
    }

    /// cgroup limits for `spec` in the host's cgroup version: its vCPUs'
    /// worth of CPU time and its memory plus [`MEMORY_OVERHEAD_MB`].
    pub fn cgroup_limits(spec: &VmSpec, version: u8) -> Vec<String> {
        let cpu = u64::from(spec.vcpus.max(1)) * 100_000;
        let mem = (u64::from(spec.memory_mb) + MEMORY_OVERHEAD_MB) * 1024 * 1024;
        if version == 2 {
            vec![format!("cpu.max={cpu} 100000"), format!("memory.max={mem}")]
        } else {
            vec![
                "cpu.cfs_period_us=100000".into(),
                format!("cpu.cfs_quota_us={cpu}"),
                format!("memory.limit_in_bytes={mem}"),
            ]
        }
    }

    /// The host's cgroup version: 2 when /sys/fs/cgroup is the unified
    /// hierarchy, 1 otherwise (per-controller mounts, maybe a hybrid).
    pub fn host_cgroup_version() -> u8 {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            2
        } else {
            1
        }
    }

    /// The jailer's arguments, then `--`, then Firecracker's own.
    pub fn args(&self, spec: &VmSpec, firecracker: &Path, fc_args: &[String]) -> Vec<String> {
        let mut a = vec![
            "--id".to_string(),
            Self::jail_id(&spec.vm_id),
            "--exec-file".into(),
            firecracker.display().to_string(),
            "--uid".into(),
            self.uid.to_string(),
            "--gid".into(),
            self.gid.to_string(),
            "--chroot-base-dir".into(),
            self.base(spec).display().to_string(),
            "--netns".into(),
            polydev_net::netns::path(&spec.netns).display().to_string(),
            "--cgroup-version".into(),
            self.cgroup_version.to_string(),
        ];
        if let Some(parent) = &self.parent_cgroup {
            a.push("--parent-cgroup".into());
            a.push(parent.clone());
        }
        for c in Self::cgroup_limits(spec, self.cgroup_version) {
            a.push("--cgroup".into());
            a.push(c);
        }
        a.push("--".into());
        a.extend(fc_args.iter().cloned());
        a
    }

    /// Where the host path `path` appears on the host once staged in the jail.
    pub fn staged(&self, spec: &VmSpec, firecracker: &Path, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        self.root(spec, firecracker).join(rel)
    }

    /// Makes `dir` (a host path) exist in the jail, owned by the VMM's user.
    pub fn stage_dir(&self, spec: &VmSpec, firecracker: &Path, dir: &Path) -> Result<PathBuf> {
        let dst = self.staged(spec, firecracker, dir);
        std::fs::create_dir_all(&dst).map_err(|e| file_err("jail directory", &dst, e))?;
        self.traversable(spec, firecracker, &dst)?;
        chown(&dst, self.uid, self.gid)?;
        Ok(dst)
    }

    /// Lets the VMM's user pass through every directory between the jail's
    /// root and `path` (made private by the controller's umask): search
    /// only, nothing listed or written.
    fn traversable(&self, spec: &VmSpec, firecracker: &Path, path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let root = self.root(spec, firecracker);
        let mut d = path.parent();
        while let Some(dir) = d {
            if !dir.starts_with(&root) {
                break;
            }
            let mode = std::fs::metadata(dir)
                .map_err(|e| file_err("jail directory", dir, e))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(
                    dir,
                    std::fs::Permissions::from_mode((mode & 0o7777) | 0o011),
                )
                .map_err(|e| file_err("jail directory", dir, e))?;
            }
            if dir == root {
                break;
            }
            d = dir.parent();
        }
        Ok(())
    }

    /// Hard-links the host file `path` to the same path in the jail; a
    /// `writable` file is given to the VMM's user. A read-only file on
    /// another file system is copied instead; a writable one cannot be.
    pub fn stage_file(
        &self,
        spec: &VmSpec,
        firecracker: &Path,
        path: &Path,
        writable: bool,
    ) -> Result<PathBuf> {
        let dst = self.staged(spec, firecracker, path);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| file_err("jail directory", parent, e))?;
        }
        self.traversable(spec, firecracker, &dst)?;
        let _ = std::fs::remove_file(&dst);
        if let Err(e) = std::fs::hard_link(path, &dst) {
            if writable || e.raw_os_error() != Some(libc::EXDEV) {
                return Err(file_err("staging into the jail", path, e));
            }
            std::fs::copy(path, &dst).map_err(|e| file_err("copying into the jail", path, e))?;
        }
        if writable {
            chown(&dst, self.uid, self.gid)?;
        }
        Ok(dst)
    }

    /// Removes the jail directory and the VM's cgroup, once its VMM is gone.
    pub fn cleanup(&self, spec: &VmSpec, firecracker: &Path) -> Result<()> {
        let dir = self.jail_dir(spec, firecracker);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| file_err("jail", &dir, e))?;
        }
        let mut cg = PathBuf::from("/sys/fs/cgroup");
        if let Some(p) = &self.parent_cgroup {
            cg.push(p);
        }
        cg.push(Self::jail_id(&spec.vm_id));
        // An empty cgroup is removed with rmdir; one that is gone is fine.
        match std::fs::remove_dir(&cg) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(file_err("cgroup", &cg, e)),
            _ => Ok(()),
        }
    }
}

fn file_err(what: &'static str, path: &Path, source: std::io::Error) -> VmmError {
    VmmError::File {
        what,
        path: path.into(),
        source,
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| file_err("giving to the jailed user", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            vm_id: "vm_01HX".into(),
            dir: "/var/lib/polydev/vms/vm_01HX".into(),
            kernel: "/k/vmlinux".into(),
            rootfs: "/i/rootfs.ext4".into(),
            state_disk: "/var/lib/polydev/vms/vm_01HX/state.ext4".into(),
            home_disk: None,
            vcpus: 2,
            memory_mb: 512,
            netns: "pd1a2b-x".into(),
            extra_kernel_args: vec![],
        }
    }

    #[test]
    fn jailer_arguments() {
        let cfg = JailerConfig {
            binary: "/usr/bin/jailer".into(),
            uid: 123,
            gid: 456,
            chroot_base: None,
            parent_cgroup: Some("polydev".into()),
            cgroup_version: 2,
        };
        let fc = Path::new("/usr/bin/firecracker");
        let a = cfg
            .args(&spec(), fc, &["--api-sock".into(), "/x.sock".into()])
            .join(" ");
        assert_eq!(
            a,
            "--id vm-01HX --exec-file /usr/bin/firecracker --uid 123 --gid 456 \
             --chroot-base-dir /var/lib/polydev/vms/vm_01HX/jail --netns /run/netns/pd1a2b-x \
             --cgroup-version 2 --parent-cgroup polydev --cgroup cpu.max=200000 100000 \
             --cgroup memory.max=671088640 -- --api-sock /x.sock"
        );
        assert_eq!(
            cfg.staged(&spec(), fc, Path::new("/k/vmlinux")),
            Path::new("/var/lib/polydev/vms/vm_01HX/jail/firecracker/vm-01HX/root/k/vmlinux")
        );
        let v1 = JailerConfig {
            cgroup_version: 1,
            ..cfg
        };
        let a = v1.args(&spec(), fc, &[]).join(" ");
        assert!(
            a.contains("--cgroup-version 1 --parent-cgroup polydev --cgroup cpu.cfs_period_us=100000 --cgroup cpu.cfs_quota_us=200000 --cgroup memory.limit_in_bytes=671088640"),
            "{a}"
        );
    }

    #[test]
    fn stages_by_hard_link_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let mut s = spec();
        s.dir = d.path().join("vm");
        std::fs::create_dir_all(&s.dir).unwrap();
        let disk = s.dir.join("state.ext4");
        std::fs::write(&disk, b"disk").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let cfg = JailerConfig {
            binary: "jailer".into(),
            uid: me,
            gid: nix::unistd::getegid().as_raw(),
            chroot_base: None,
            parent_cgroup: Some("polydev-test-nonexistent".into()),
            cgroup_version: 2,
        };
        let fc = Path::new("/usr/bin/firecracker");
        let staged = cfg.stage_file(&s, fc, &disk, true).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&staged).unwrap().ino(),
            std::fs::metadata(&disk).unwrap().ino()
        );
        cfg.cleanup(&s, fc).unwrap();
        assert!(!cfg.jail_dir(&s, fc).exists());
        assert!(disk.exists());
    }
}
