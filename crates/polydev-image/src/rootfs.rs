//! Golden root filesystem images.
//!
//! `mmdebstrap` bootstraps Debian into a directory (never a loop mount), a
//! customize hook installs the agent, its systemd unit and the guest init,
//! and `mkfs.ext4 -d` turns the directory into a read-only ext4 image at
//! `<cache>/images/<flavour>-<hash>/rootfs.ext4` with a `manifest.json`
//! beside it. The hash covers every input, so an unchanged build is a cache
//! hit.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use polydev_core::guest::{AGENT_BIN, AGENT_UNIT, GUEST_INIT, STATE_MOUNT};

use crate::command;
use crate::error::{Error, Result};
use crate::hashing::{file_sha256, parts_sha256};
use crate::lock::BuildLock;
use crate::manifest::{self, Manifest};
use crate::progress::{format_elapsed, Progress};

pub use crate::state_disk::make_state_disk;

/// The guest init script installed at [`GUEST_INIT`].
pub const INIT_SCRIPT: &str = include_str!("../guest/polydev-init");
/// The agent's systemd unit, installed as [`AGENT_UNIT`].
pub const AGENT_UNIT_TEXT: &str = include_str!("../guest/polydev-agent.service");
/// Bump when the build procedure changes in a way that changes the output.
pub const BUILDER_VERSION: &str = "1";
/// The Debian suite images are built from.
pub const SUITE: &str = "trixie";
/// Environment variable overriding mmdebstrap's default mirror.
pub const MIRROR_ENV: &str = "POLYDEV_DEBIAN_MIRROR";
/// Directories the guest init needs in the image.
pub const INIT_DIRS: [&str; 3] = [STATE_MOUNT, "/polydev/newroot", "/polydev/oldroot"];
/// systemd manager settings installed as `/etc/systemd/system.conf.d/polydev.conf`.
pub const SYSTEM_CONF: &str = include_str!("../guest/system.conf");
/// Units masked in every image (the kernel has no loadable modules).
pub const MASKED_UNITS: &[&str] = &["systemd-modules-load.service", "modprobe@.service"];
/// Filesystem label of golden images.
pub const ROOT_LABEL: &str = "polydev-root";

/// Paths dpkg skips while installing: documentation and translations are of
/// no use in a guest. Copyright files stay.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
];

/// What an image is for; each flavour has its own package list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Flavour {
    /// systemd and the agent: the smallest bootable guest.
    Minimal,
}

impl Flavour {
    /// Every flavour, for listings.
    pub const ALL: &'static [Flavour] = &[Flavour::Minimal];

    /// The name used on the command line and in paths.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Minimal => "minimal",
        }
    }

    /// Packages installed on top of mmdebstrap's `minbase` variant.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Flavour::Minimal => &["systemd", "systemd-sysv", "iproute2", "procps"],
        }
    }
}

impl std::fmt::Display for Flavour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Flavour {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Flavour::ALL
            .iter()
            .copied()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Flavour::ALL.iter().map(|f| f.name()).collect();
                Error::InvalidInput(format!(
                    "unknown image flavour {s:?} (known: {})",
                    names.join(", ")
                ))
            })
    }
}

/// A built (or cached) golden image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArtifact {
    /// The ext4 image (`rootfs.ext4`, mode 0444).
    pub path: PathBuf,
    /// Its `manifest.json`.
    pub manifest_path: PathBuf,
    /// The input hash (the directory suffix).
    pub hash: String,
    /// True when it came from the cache without building.
    pub cached: bool,
}

/// The input hash of an image of `flavour` containing the agent whose
/// SHA-256 is `agent_sha256`.
pub fn input_hash(flavour: Flavour, agent_sha256: &str) -> String {
    let packages = flavour.packages().join(",");
    let excludes = DPKG_EXCLUDES.join(",");
    parts_sha256(&[
        ("flavour", flavour.name().as_bytes()),
        ("packages", packages.as_bytes()),
        ("suite", SUITE.as_bytes()),
        ("dpkg-excludes", excludes.as_bytes()),
        ("agent-sha256", agent_sha256.as_bytes()),
        ("init", INIT_SCRIPT.as_bytes()),
        ("unit", AGENT_UNIT_TEXT.as_bytes()),
        ("system-conf", SYSTEM_CONF.as_bytes()),
        ("masked", MASKED_UNITS.join(",").as_bytes()),
        ("builder-version", BUILDER_VERSION.as_bytes()),
    ])
}

fn image_dir(cache_dir: &Path, flavour: Flavour, hash: &str) -> PathBuf {
    cache_dir
        .join("images")
        .join(format!("{}-{hash}", flavour.name()))
}

fn artifact(dir: &Path, hash: &str, cached: bool) -> ImageArtifact {
    ImageArtifact {
        path: dir.join("rootfs.ext4"),
        manifest_path: dir.join("manifest.json"),
        hash: hash.to_owned(),
        cached,
    }
}

fn complete(a: &ImageArtifact) -> bool {
    a.path.is_file() && a.manifest_path.is_file()
}

fn agent_sha256(agent_bin: &Path) -> Result<String> {
    let meta = std::fs::metadata(agent_bin).map_err(Error::io("read agent binary", agent_bin))?;
    if !meta.is_file() {
        return Err(Error::InvalidInput(format!(
            "agent binary {} is not a regular file",
            agent_bin.display()
        )));
    }
    file_sha256(agent_bin)
}

/// The cached image of `flavour` built with exactly this agent, if any.
pub fn locate(
    flavour: Flavour,
    cache_dir: &Path,
    agent_bin: &Path,
) -> Result<Option<ImageArtifact>> {
    let hash = input_hash(flavour, &agent_sha256(agent_bin)?);
    let a = artifact(&image_dir(cache_dir, flavour, &hash), &hash, true);
    Ok(complete(&a).then_some(a))
}

/// The most recently built complete image of `flavour`, whatever its agent.
pub fn latest(flavour: Flavour, cache_dir: &Path) -> Result<Option<ImageArtifact>> {
    let images = cache_dir.join("images");
    let entries = match std::fs::read_dir(&images) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("list", &images)(e)),
    };
    let prefix = format!("{}-", flavour.name());
    let mut best: Option<(u64, ImageArtifact)> = None;
    for entry in entries {
        let entry = entry.map_err(Error::io("list", &images))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(hash) = name.strip_prefix(&prefix) else {
            continue;
        };
        let a = artifact(&entry.path(), hash, true);
        if !complete(&a) {
            continue;
        }
        let Ok(m) = Manifest::read(&a.manifest_path) else {
            continue;
        };
        if !matches!(&best, Some((t, _)) if *t >= m.built_at_unix) {
            best = Some((m.built_at_unix, a));
        }
    }
    Ok(best.map(|(_, a)| a))
}

/// Builds the image unless the cache already holds it.
pub fn build(
    flavour: Flavour,
    cache_dir: &Path,
    agent_bin: &Path,
    progress: &mut dyn Progress,
) -> Result<ImageArtifact> {
    let agent_sha = agent_sha256(agent_bin)?;
    let hash = input_hash(flavour, &agent_sha);
    let dir = image_dir(cache_dir, flavour, &hash);
    let a = artifact(&dir, &hash, true);
    if complete(&a) {
        return Ok(a);
    }
    let images = cache_dir.join("images");
    std::fs::create_dir_all(&images).map_err(Error::io("create directory", &images))?;
    let _lock = BuildLock::acquire(&images.join(".lock"))?;
    if complete(&a) {
        return Ok(a);
    }
    let stage = images.join(format!(".build-{}-{hash}", flavour.name()));
    let result = build_locked(
        flavour, agent_bin, &agent_sha, &hash, &stage, &dir, progress,
    );
    progress.finish();
    // The staging tree is large; keep nothing of it, success or failure.
    if stage.exists() {
        let _ = std::fs::remove_dir_all(&stage);
    }
    result?;
    Ok(artifact(&dir, &hash, false))
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The customize hook mmdebstrap runs with the target directory as `$1`.
fn customize_script(stage: &Path) -> String {
    let stage = sh_quote(&stage.to_string_lossy());
    let dirs: Vec<String> = INIT_DIRS
        .iter()
        .map(|d| format!("\"$root\"{}", sh_quote(d)))
        .collect();
    format!(
        r#"set -eu
root="$1"
stage={stage}
install -D -m 0755 "$stage/polydev-agent" "$root{AGENT_BIN}"
install -D -m 0755 "$stage/polydev-init" "$root{GUEST_INIT}"
install -D -m 0644 "$stage/{AGENT_UNIT}" "$root/etc/systemd/system/{AGENT_UNIT}"
mkdir -p {dirs}
echo polydev > "$root/etc/hostname"
chroot "$root" systemctl enable {AGENT_UNIT}
link="$root/etc/systemd/system/sysinit.target.wants/{AGENT_UNIT}"
if [ ! -L "$link" ]; then
    echo "polydev: 'systemctl enable {AGENT_UNIT}' did not create $link" >&2
    exit 1
fi
# verify exits 0 on mere warnings (unknown keys, bad values): treat any
# output as a failure too.
if ! out=$(chroot "$root" systemd-analyze verify --man=no /etc/systemd/system/{AGENT_UNIT} 2>&1) || [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    echo "polydev: 'systemd-analyze verify' rejected {AGENT_UNIT}" >&2
    exit 1
fi
# The kernel has no modules: skip the units that would try to load some.
chroot "$root" systemctl mask {MASKED}
install -D -m 0644 "$stage/system.conf" "$root/etc/systemd/system.conf.d/polydev.conf"
"#,
        dirs = dirs.join(" "),
        MASKED = MASKED_UNITS.join(" "),
    )
}

fn looks_like_mirror_failure(tail: &str) -> bool {
    [
        "Failed to fetch",
        "Could not resolve",
        "Temporary failure resolving",
        "Unable to connect",
        "Could not connect",
        "Connection failed",
        "apt-get update failed",
        "Network is unreachable",
    ]
    .iter()
    .any(|p| tail.contains(p))
}

/// Sizes of a directory tree: (bytes rounded to 4 KiB blocks, inode count).
fn tree_usage(root: &Path) -> Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let dev = std::fs::symlink_metadata(root)
        .map_err(Error::io("stat", root))?
        .dev();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(Error::io("list", &dir))? {
            let entry = entry.map_err(Error::io("list", &dir))?;
            let meta = entry.metadata().map_err(Error::io("stat", entry.path()))?;
            inodes += 1;
            bytes += meta.len().div_ceil(4096) * 4096;
            if meta.is_dir() && meta.dev() == dev {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

fn build_locked(
    flavour: Flavour,
    agent_bin: &Path,
    agent_sha: &str,
    hash: &str,
    stage: &Path,
    out_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<()> {
    let started = Instant::now();
    if stage.exists() {
        std::fs::remove_dir_all(stage).map_err(Error::io("remove", stage))?;
    }
    std::fs::create_dir_all(stage).map_err(Error::io("create directory", stage))?;
    let stage_str = stage.to_string_lossy();
    if stage_str.contains(['\n', '"', '$', '`', '\\']) {
        return Err(Error::InvalidInput(format!(
            "cache directory path {stage_str:?} contains characters the build hook cannot handle"
        )));
    }
    let staged_agent = stage.join("polydev-agent");
    std::fs::copy(agent_bin, &staged_agent).map_err(Error::io("copy", agent_bin))?;
    let write = |name: &str, text: &str| -> Result<()> {
        let p = stage.join(name);
        std::fs::write(&p, text).map_err(Error::io("write", &p))
    };
    write("polydev-init", INIT_SCRIPT)?;
    write(AGENT_UNIT, AGENT_UNIT_TEXT)?;
    write("system.conf", SYSTEM_CONF)?;
    write("customize.sh", &customize_script(stage))?;
    let root = stage.join("root");

    // 1. Bootstrap + customize.
    progress.phase(&format!(
        "bootstrapping Debian {SUITE} ({}) with mmdebstrap",
        flavour.name()
    ));
    let mut mm = Command::new("mmdebstrap");
    mm.arg("--variant=minbase")
        .arg(format!("--include={}", flavour.packages().join(",")));
    for opt in DPKG_EXCLUDES {
        mm.arg(format!("--dpkgopt={opt}"));
    }
    mm.arg(format!(
        "--customize-hook=sh {} \"$1\"",
        sh_quote(&stage.join("customize.sh").to_string_lossy())
    ))
    .arg(SUITE)
    .arg(&root);
    let mirror = std::env::var(MIRROR_ENV)
        .ok()
        .filter(|m| !m.trim().is_empty());
    if let Some(m) = &mirror {
        mm.arg(m);
    }
    let mut on_line = |line: &str| {
        if let Some(step) = line.strip_prefix("I: ") {
            progress.update(step);
        }
    };
    command::run(&mut mm, &mut on_line).map_err(|e| match e {
        Error::CommandFailed { tail, .. } if looks_like_mirror_failure(&tail) => {
            Error::MirrorUnreachable {
                mirror: mirror.as_ref().map(|m| format!(" {m}")).unwrap_or_default(),
                tail,
            }
        }
        other => other,
    })?;

    // 2. Check what the hook did.
    progress.phase("checking the image tree");
    let link = root.join(format!(
        "etc/systemd/system/sysinit.target.wants/{AGENT_UNIT}"
    ));
    if !std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(Error::ImageCheck(format!(
            "enablement symlink {} is missing",
            link.display()
        )));
    }
    for (path, mode) in [(AGENT_BIN, 0o755), (GUEST_INIT, 0o755)] {
        let p = root.join(path.trim_start_matches('/'));
        let meta = std::fs::metadata(&p).map_err(Error::io("stat", &p))?;
        if meta.permissions().mode() & 0o777 != mode {
            return Err(Error::ImageCheck(format!(
                "{} has mode {:o}, want {mode:o}",
                p.display(),
                meta.permissions().mode() & 0o777
            )));
        }
    }
    let admindir = root.join("var/lib/dpkg");
    let mut dq = Command::new("dpkg-query");
    dq.arg(format!("--admindir={}", admindir.display())).args([
        "-W",
        "-f",
        "${Package}\t${Version}\n",
    ]);
    let packages = manifest::parse_packages(&command::run_quiet(&mut dq)?.stdout);
    if packages.is_empty() {
        return Err(Error::UnexpectedOutput {
            command: command::display(&dq),
            detail: "no installed packages listed".into(),
        });
    }

    // 3. ext4 image.
    progress.phase("making the ext4 image");
    let (bytes, inodes) = tree_usage(&root)?;
    // Headroom: ext4 metadata (inode tables, bitmaps) plus 15 %.
    let size = (bytes + bytes / 20 * 3 + 64 * 1024 * 1024).div_ceil(1 << 20) << 20;
    let inode_count = inodes + inodes / 5 + 1024;
    std::fs::create_dir_all(out_dir).map_err(Error::io("create directory", out_dir))?;
    let tmp_image = out_dir.join("rootfs.ext4.tmp");
    let _ = std::fs::remove_file(&tmp_image);
    let file = std::fs::File::create(&tmp_image).map_err(Error::io("create", &tmp_image))?;
    file.set_len(size)
        .map_err(Error::io("resize", &tmp_image))?;
    drop(file);
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
        .arg("-N")
        .arg(inode_count.to_string())
        .args(["-L", ROOT_LABEL, "-d"])
        .arg(&root)
        .arg(&tmp_image);
    command::run_quiet(&mut mkfs)?;
    std::fs::set_permissions(&tmp_image, std::fs::Permissions::from_mode(0o444))
        .map_err(Error::io("chmod", &tmp_image))?;
    progress.phase("hashing the image");
    let image_sha256 = file_sha256(&tmp_image)?;
    let image = out_dir.join("rootfs.ext4");
    std::fs::rename(&tmp_image, &image).map_err(Error::io("rename", &tmp_image))?;

    // 4. Manifest (written last: its presence marks the image complete).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let m = Manifest {
        flavour: flavour.name().into(),
        suite: SUITE.into(),
        input_hash: hash.into(),
        image_sha256,
        agent_sha256: agent_sha.into(),
        init_sha256: parts_sha256_plain(INIT_SCRIPT),
        packages,
        built_at: manifest::rfc3339(now),
        built_at_unix: now,
        builder_version: BUILDER_VERSION.into(),
    };
    m.write(&out_dir.join("manifest.json"))?;
    progress.note(&format!(
        "image {} ({} MiB) built in {}",
        image.display(),
        size >> 20,
        format_elapsed(started.elapsed())
    ));
    Ok(())
}

/// Plain SHA-256 of a text, hex.
fn parts_sha256_plain(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_matches_the_contract() {
        assert!(AGENT_UNIT_TEXT.contains(&format!("ExecStart={AGENT_BIN}\n")));
        assert!(AGENT_UNIT_TEXT.contains("DefaultDependencies=no"));
        assert!(AGENT_UNIT_TEXT.contains("WantedBy=sysinit.target"));
        assert!(AGENT_UNIT_TEXT.contains("Restart=always"));
    }

    #[test]
    fn init_matches_the_contract() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh\n"));
        assert!(INIT_SCRIPT.contains(&format!("echo \"{}\"", polydev_core::guest::INIT_MARKER)));
        assert!(INIT_SCRIPT.contains(&format!("STATE={STATE_MOUNT}\n")));
        for d in &INIT_DIRS[1..] {
            assert!(INIT_SCRIPT.contains(d.trim_start_matches('/')), "{d}");
        }
    }

    #[test]
    fn flavours_parse() {
        assert_eq!("minimal".parse::<Flavour>().unwrap(), Flavour::Minimal);
        assert!("nope".parse::<Flavour>().is_err());
    }

    #[test]
    fn hash_covers_agent() {
        assert_ne!(
            input_hash(Flavour::Minimal, "a"),
            input_hash(Flavour::Minimal, "b")
        );
    }

    #[test]
    fn quotes_for_shell() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn script_installs_everything() {
        let s = customize_script(Path::new("/c/stage"));
        assert!(
            s.contains(AGENT_BIN) && s.contains(GUEST_INIT) && s.contains("systemd-analyze verify")
        );
    }
}
