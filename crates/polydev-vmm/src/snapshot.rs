//! Snapshot metadata: the JSON file written beside a snapshot's VMM files
//! saying which VMM kind, VMM version and snapshot format wrote them, when,
//! and the parts of the [`VmSpec`] a restore must reproduce. Loading is the
//! only place compatibility is judged, so a snapshot from another VMM, another
//! VMM version or another format is refused with one clear error.

use crate::{Result, VmSpec, VmmError, VmmKind};
use std::path::{Path, PathBuf};

/// File name of the metadata inside a snapshot directory.
pub const META_FILE: &str = "snapshot.json";

/// Version of polydev's own snapshot layout (this metadata and the file
/// names beside it). Bumped when either changes incompatibly.
pub const LAYOUT_VERSION: u32 = 1;

/// The parts of a [`VmSpec`] that must be the same when a snapshot is
/// restored (the guest's memory was laid out for them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecEssentials {
    /// The VM's id when the snapshot was taken.
    pub vm_id: String,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Golden root filesystem.
    pub rootfs: PathBuf,
    /// Per-VM state disk.
    pub state_disk: PathBuf,
    /// The user's home disk, when one was attached.
    #[serde(default)]
    pub home_disk: Option<PathBuf>,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// The kernel command line the guest booted with.
    pub kernel_cmdline: String,
}

impl SpecEssentials {
    /// The essentials of `spec`.
    pub fn of(spec: &VmSpec) -> SpecEssentials {
        SpecEssentials {
            vm_id: spec.vm_id.clone(),
            kernel: spec.kernel.clone(),
            rootfs: spec.rootfs.clone(),
            state_disk: spec.state_disk.clone(),
            home_disk: spec.home_disk.clone(),
            vcpus: spec.vcpus,
            memory_mb: spec.memory_mb,
            kernel_cmdline: spec.kernel_cmdline(),
        }
    }
}

/// What a snapshot directory holds; serialised as [`META_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotMeta {
    /// polydev's snapshot layout version ([`LAYOUT_VERSION`]).
    pub layout_version: u32,
    /// The VMM that wrote it.
    pub vmm: VmmKind,
    /// That VMM's version (`--version`, first line).
    pub vmm_version: String,
    /// The VMM's own snapshot format: Firecracker's snapshot data format
    /// version (`--snapshot-version`); for QEMU the machine type, accelerator
    /// and migration stream (`microvm/tcg/migration-stream-v3`).
    pub format: String,
    /// The files of the snapshot, relative to its directory.
    pub files: Vec<String>,
    /// When it was written (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// How long writing it took (milliseconds).
    pub create_ms: u64,
    /// The VM it was taken from.
    pub spec: SpecEssentials,
    /// The directory holding the snapshot (not serialised; set on load).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl SnapshotMeta {
    /// Path of one of the snapshot's files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes the metadata into its directory (atomically: a temporary file
    /// renamed into place, so a crash never leaves half a metadata file).
    pub fn write(&self) -> Result<()> {
        let err = |detail: String| VmmError::Snapshot {
            dir: self.dir.clone(),
            detail,
        };
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| err(format!("encoding metadata: {e}")))?;
        let tmp = self.dir.join(format!("{META_FILE}.tmp"));
        std::fs::write(&tmp, json).map_err(|e| err(format!("writing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, self.dir.join(META_FILE))
            .map_err(|e| err(format!("renaming {}: {e}", tmp.display())))
    }

    /// Reads the metadata of the snapshot in `dir` and checks its files exist.
    pub fn load(dir: &Path) -> Result<SnapshotMeta> {
        let err = |detail: String| VmmError::Snapshot {
            dir: dir.to_path_buf(),
            detail,
        };
        let path = dir.join(META_FILE);
        let raw = std::fs::read(&path).map_err(|e| err(format!("reading {META_FILE}: {e}")))?;
        let mut meta: SnapshotMeta = serde_json::from_slice(&raw)
            .map_err(|e| err(format!("{META_FILE} is not valid snapshot metadata: {e}")))?;
        meta.dir = dir.to_path_buf();
        for f in &meta.files {
            if f.contains('/') || f == ".." {
                return Err(err(format!(
                    "file name {f:?} leaves the snapshot directory"
                )));
            }
            if !dir.join(f).is_file() {
                return Err(err(format!("file {f} is missing")));
            }
        }
        Ok(meta)
    }

    /// Refuses the snapshot unless it was written by `vmm` at `vmm_version`
    /// in `format` with this layout.
    pub fn check_compatible(&self, vmm: VmmKind, vmm_version: &str, format: &str) -> Result<()> {
        let refuse = |why: String| {
            Err(VmmError::Snapshot {
                dir: self.dir.clone(),
                detail: format!("incompatible snapshot: {why}"),
            })
        };
        if self.layout_version != LAYOUT_VERSION {
            return refuse(format!(
                "polydev snapshot layout {} (this build reads {LAYOUT_VERSION})",
                self.layout_version
            ));
        }
        if self.vmm != vmm {
            return refuse(format!("written by {}, this driver is {vmm}", self.vmm));
        }
        if self.vmm_version != vmm_version {
            return refuse(format!(
                "written by {} {:?}, this host runs {:?}",
                self.vmm, self.vmm_version, vmm_version
            ));
        }
        if self.format != format {
            return refuse(format!(
                "snapshot format {:?}, this driver writes and reads {:?}",
                self.format, format
            ));
        }
        Ok(())
    }

    /// Refuses restoring into `spec` when its memory, vCPUs, kernel or disks
    /// differ from those the snapshot was taken with.
    pub fn check_spec(&self, spec: &VmSpec) -> Result<()> {
        let now = SpecEssentials::of(spec);
        let s = &self.spec;
        let mut diffs = Vec::new();
        if s.vcpus != now.vcpus {
            diffs.push(format!("vcpus {} != {}", s.vcpus, now.vcpus));
        }
        if s.memory_mb != now.memory_mb {
            diffs.push(format!(
                "memory {} MiB != {} MiB",
                s.memory_mb, now.memory_mb
            ));
        }
        for (what, a, b) in [
            ("kernel", &s.kernel, &now.kernel),
            ("rootfs", &s.rootfs, &now.rootfs),
            ("state disk", &s.state_disk, &now.state_disk),
        ] {
            if a != b {
                diffs.push(format!("{what} {} != {}", a.display(), b.display()));
            }
        }
        if s.home_disk != now.home_disk {
            diffs.push(format!(
                "home disk {:?} != {:?}",
                s.home_disk, now.home_disk
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(VmmError::Snapshot {
                dir: self.dir.clone(),
                detail: format!(
                    "taken from a differently configured VM: {}",
                    diffs.join(", ")
                ),
            })
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Creates `dir` (and parents) for a new snapshot, refusing one that already
/// holds a snapshot.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    let err = |detail: String| VmmError::Snapshot {
        dir: dir.to_path_buf(),
        detail,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("creating: {e}")))?;
    if dir.join(META_FILE).exists() {
        return Err(err("already holds a snapshot".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> VmSpec {
        VmSpec {
            vm_id: "vm_1".into(),
            dir: dir.into(),
            kernel: "/k/vmlinux".into(),
            rootfs: "/i/rootfs.ext4".into(),
            state_disk: dir.join("state.ext4"),
            home_disk: None,
            vcpus: 1,
            memory_mb: 512,
            netns: "pd0".into(),
            extra_kernel_args: vec![],
        }
    }

    fn meta(dir: &Path) -> SnapshotMeta {
        SnapshotMeta {
            layout_version: LAYOUT_VERSION,
            vmm: VmmKind::Firecracker,
            vmm_version: "Firecracker v1.16.0".into(),
            format: "v10.0.0".into(),
            files: vec!["vmstate".into(), "memory".into()],
            created_unix_ms: 1,
            create_ms: 2,
            spec: SpecEssentials::of(&spec(dir)),
            dir: dir.into(),
        }
    }

    #[test]
    fn round_trips_and_checks_files() {
        let d = tempfile::tempdir().unwrap();
        let m = meta(d.path());
        m.write().unwrap();
        let e = SnapshotMeta::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("file vmstate is missing"), "{e}");
        std::fs::write(d.path().join("vmstate"), b"x").unwrap();
        std::fs::write(d.path().join("memory"), b"x").unwrap();
        assert_eq!(SnapshotMeta::load(d.path()).unwrap(), m);
        let raw = std::fs::read_to_string(d.path().join(META_FILE)).unwrap();
        assert!(raw.contains("\"vmm\": \"firecracker\""), "{raw}");
        assert!(!raw.contains("\"dir\""), "{raw}");
    }

    #[test]
    fn other_kind_version_or_format_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let m = meta(d.path());
        m.check_compatible(VmmKind::Firecracker, "Firecracker v1.16.0", "v10.0.0")
            .unwrap();
        let e = m
            .check_compatible(VmmKind::Qemu, "QEMU 7.2", "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("written by firecracker, this driver is qemu"),
            "{e}"
        );
        let e = m
            .check_compatible(VmmKind::Firecracker, "Firecracker v1.17.0", "v10.0.0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("incompatible snapshot") && e.contains("v1.17.0"),
            "{e}"
        );
        let e = m
            .check_compatible(VmmKind::Firecracker, "Firecracker v1.16.0", "v9.0.0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("snapshot format \"v10.0.0\""), "{e}");
        let mut s = spec(d.path());
        m.check_spec(&s).unwrap();
        s.memory_mb = 1024;
        assert!(m
            .check_spec(&s)
            .unwrap_err()
            .to_string()
            .contains("memory 512 MiB != 1024 MiB"));
    }

    #[test]
    fn escaping_file_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut m = meta(d.path());
        m.files = vec!["../etc/passwd".into()];
        m.write().unwrap();
        assert!(SnapshotMeta::load(d.path())
            .unwrap_err()
            .to_string()
            .contains("leaves the snapshot directory"));
    }
}
