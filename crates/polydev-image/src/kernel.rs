//! The guest kernel: Debian's `linux-source-6.1` built with `tinyconfig` plus
//! the committed fragment `kernel/microvm.config` into an ELF `vmlinux` that
//! QEMU `microvm` and Firecracker boot directly (PVH).
//!
//! The result lives at `<cache>/kernel/<hash>/vmlinux`, where the hash covers
//! the fragment, the `linux-source-6.1` package version and
//! [`BUILDER_VERSION`]. The source tree is kept in `<cache>/kernel/build` so a
//! rebuild after a fragment change is incremental.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::command;
use crate::error::{Error, Result};
use crate::hashing::parts_sha256;
use crate::lock::BuildLock;
use crate::progress::{format_elapsed, Progress};

/// The config fragment merged on top of `tinyconfig`.
pub const FRAGMENT: &str = include_str!("../kernel/microvm.config");
/// Bump when the build procedure changes in a way that changes the output.
pub const BUILDER_VERSION: &str = "1";
/// The Debian package providing the source tarball.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// The source tarball the package installs.
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// The directory the tarball unpacks to.
const SOURCE_DIR: &str = "linux-source-6.1";

/// A built (or cached) guest kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArtifact {
    /// The uncompressed ELF kernel (`vmlinux`).
    pub path: PathBuf,
    /// The content hash of the inputs (the directory name).
    pub hash: String,
    /// True when the kernel came from the cache without building.
    pub cached: bool,
}

/// The installed version of [`SOURCE_PACKAGE`].
pub fn source_version() -> Result<String> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f", "${Version}", SOURCE_PACKAGE]);
    let out = command::run_quiet(&mut cmd).map_err(|e| match e {
        Error::CommandFailed { tail, .. } => Error::InvalidInput(format!(
            "the Debian package {SOURCE_PACKAGE} is not installed (apt-get install {SOURCE_PACKAGE}): {tail}"
        )),
        other => other,
    })?;
    let version = out.stdout.trim().to_owned();
    if version.is_empty() {
        return Err(Error::InvalidInput(format!(
            "the Debian package {SOURCE_PACKAGE} is not installed (apt-get install {SOURCE_PACKAGE})"
        )));
    }
    Ok(version)
}

/// The input hash for a given source version.
pub fn input_hash(source_version: &str) -> String {
    parts_sha256(&[
        ("fragment", FRAGMENT.as_bytes()),
        ("source-version", source_version.as_bytes()),
        ("builder-version", BUILDER_VERSION.as_bytes()),
    ])
}

fn artifact_path(cache_dir: &Path, hash: &str) -> PathBuf {
    cache_dir.join("kernel").join(hash).join("vmlinux")
}

/// Returns the cached kernel for the current inputs, if it was built.
pub fn locate(cache_dir: &Path) -> Result<Option<KernelArtifact>> {
    let hash = input_hash(&source_version()?);
    let path = artifact_path(cache_dir, &hash);
    Ok(path.is_file().then_some(KernelArtifact {
        path,
        hash,
        cached: true,
    }))
}

/// The most recently built kernel in the cache, whatever its inputs (for
/// hosts where `linux-source-6.1` is no longer installed).
pub fn latest(cache_dir: &Path) -> Result<Option<KernelArtifact>> {
    let dir = cache_dir.join("kernel");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("list", &dir)(e)),
    };
    let mut best: Option<(std::time::SystemTime, KernelArtifact)> = None;
    for entry in entries {
        let entry = entry.map_err(Error::io("list", &dir))?;
        let path = entry.path().join("vmlinux");
        let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified()) else {
            continue;
        };
        if !matches!(&best, Some((t, _)) if *t >= modified) {
            let hash = entry.file_name().to_string_lossy().into_owned();
            best = Some((
                modified,
                KernelArtifact {
                    path,
                    hash,
                    cached: true,
                },
            ));
        }
    }
    Ok(best.map(|(_, k)| k))
}

/// The `CONFIG_X=y` lines of a fragment.
pub fn required_options(fragment: &str) -> Vec<&str> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_") && l.ends_with("=y"))
        .collect()
}

/// The `# CONFIG_X is not set` lines of a fragment, as option names.
pub fn forbidden_options(fragment: &str) -> Vec<&str> {
    fragment
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# "))
        .filter_map(|l| l.strip_suffix(" is not set"))
        .filter(|o| o.starts_with("CONFIG_"))
        .collect()
}

/// Checks a final `.config` against the fragment; returns what did not stick.
pub fn check_config(fragment: &str, config: &str) -> Vec<String> {
    let lines: std::collections::HashSet<&str> = config.lines().map(str::trim).collect();
    let mut bad: Vec<String> = required_options(fragment)
        .into_iter()
        .filter(|o| !lines.contains(o))
        .map(str::to_owned)
        .collect();
    for o in forbidden_options(fragment) {
        if lines.contains(format!("{o}=y").as_str()) {
            bad.push(format!("{o} (should be off)"));
        }
    }
    bad
}

/// Builds the kernel unless the cache already holds it.
pub fn build(cache_dir: &Path, progress: &mut dyn Progress) -> Result<KernelArtifact> {
    let version = source_version()?;
    let hash = input_hash(&version);
    let target = artifact_path(cache_dir, &hash);
    if target.is_file() {
        return Ok(KernelArtifact {
            path: target,
            hash,
            cached: true,
        });
    }
    let kernel_dir = cache_dir.join("kernel");
    std::fs::create_dir_all(&kernel_dir).map_err(Error::io("create directory", &kernel_dir))?;
    let _lock = BuildLock::acquire(&kernel_dir.join(".lock"))?;
    // Another process may have finished it while we waited for the lock.
    if target.is_file() {
        return Ok(KernelArtifact {
            path: target,
            hash,
            cached: true,
        });
    }
    progress
        .note("building the guest kernel takes 10-20 minutes on 2 cores; it is cached afterwards");
    let result = build_locked(&kernel_dir, &version, &target, progress);
    progress.finish();
    result?;
    Ok(KernelArtifact {
        path: target,
        hash,
        cached: false,
    })
}

fn make(src: &Path) -> Command {
    // ARCH is left to kbuild (x86 on an x86_64 host); the fragment forces
    // CONFIG_64BIT=y and the config check verifies it.
    let mut cmd = Command::new("make");
    cmd.current_dir(src);
    cmd
}

fn build_locked(
    kernel_dir: &Path,
    version: &str,
    target: &Path,
    progress: &mut dyn Progress,
) -> Result<()> {
    let build_dir = kernel_dir.join("build");
    let src = build_dir.join(SOURCE_DIR);
    let stamp = build_dir.join(format!(".extracted-{version}"));
    if !stamp.is_file() {
        progress.phase(&format!("extracting {SOURCE_TARBALL}"));
        if build_dir.exists() {
            std::fs::remove_dir_all(&build_dir).map_err(Error::io("remove", &build_dir))?;
        }
        std::fs::create_dir_all(&build_dir).map_err(Error::io("create directory", &build_dir))?;
        let mut tar = Command::new("tar");
        tar.arg("-xf").arg(SOURCE_TARBALL).arg("-C").arg(&build_dir);
        command::run_quiet(&mut tar)?;
        std::fs::write(&stamp, b"").map_err(Error::io("write", &stamp))?;
    }

    progress.phase("configuring (tinyconfig + microvm.config)");
    command::run_quiet(make(&src).arg("tinyconfig"))?;
    let fragment_path = build_dir.join("microvm.config");
    std::fs::write(&fragment_path, FRAGMENT).map_err(Error::io("write", &fragment_path))?;
    let mut merge = Command::new("scripts/kconfig/merge_config.sh");
    merge
        .current_dir(&src)
        .args(["-m", ".config"])
        .arg(&fragment_path);
    command::run_quiet(&mut merge)?;
    command::run_quiet(make(&src).arg("olddefconfig"))?;
    let config_path = src.join(".config");
    let config = std::fs::read_to_string(&config_path).map_err(Error::io("read", &config_path))?;
    let dropped = check_config(FRAGMENT, &config);
    if !dropped.is_empty() {
        return Err(Error::ConfigDropped(dropped));
    }

    progress.phase("compiling vmlinux");
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let mut compiled = 0u64;
    let mut last_update = Instant::now();
    let mut on_line = |line: &str| {
        // kbuild prints "  CC      path/file.o" (also AS, LD, AR ...).
        if line.starts_with("  CC ") || line.starts_with("  AS ") {
            compiled += 1;
        }
        if last_update.elapsed().as_millis() >= 250 {
            last_update = Instant::now();
            progress.update(&format!("compiled {compiled} files"));
        }
    };
    command::run(
        make(&src).arg(format!("-j{jobs}")).arg("vmlinux"),
        &mut on_line,
    )?;
    progress.finish();
    progress.note(&format!(
        "compiled {compiled} files in {}",
        format_elapsed(started.elapsed())
    ));

    let out_dir = target
        .parent()
        .ok_or_else(|| Error::InvalidInput(format!("bad target {}", target.display())))?;
    std::fs::create_dir_all(out_dir).map_err(Error::io("create directory", out_dir))?;
    let built = src.join("vmlinux");
    let tmp = out_dir.join("vmlinux.tmp");
    std::fs::copy(&built, &tmp).map_err(Error::io("copy", &built))?;
    let config_copy = out_dir.join("config");
    std::fs::copy(&config_path, &config_copy).map_err(Error::io("copy", &config_path))?;
    std::fs::rename(&tmp, target).map_err(Error::io("rename", &tmp))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_has_the_essentials() {
        let req = required_options(FRAGMENT);
        for o in [
            "CONFIG_PVH=y",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
            "CONFIG_OVERLAY_FS=y",
            "CONFIG_IP_PNP=y",
            "CONFIG_BPF_JIT=y",
        ] {
            assert!(req.contains(&o), "{o}");
        }
        assert!(forbidden_options(FRAGMENT).contains(&"CONFIG_BLK_DEV_INITRD"));
    }

    #[test]
    fn check_lists_dropped_and_forbidden() {
        let frag = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n";
        assert_eq!(
            check_config(frag, config),
            vec!["CONFIG_B=y", "CONFIG_C (should be off)"]
        );
        assert!(check_config(frag, "CONFIG_A=y\nCONFIG_B=y\n").is_empty());
    }

    #[test]
    fn hash_depends_on_version() {
        assert_ne!(input_hash("6.1.1"), input_hash("6.1.2"));
    }
}
