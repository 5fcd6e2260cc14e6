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

use polydev_core::guest::{AGENT_BIN, AGENT_UNIT, GUEST_INIT, STATE_MOUNT, STREAMER_BIN};

use crate::command;
use crate::error::{Error, Result};
use crate::flavour::{Unit, CLI_VERSIONS_FILE, GUEST_HOME, GUEST_UID, GUEST_USER, OPEN_URL_HOOK};
use crate::hashing::{file_sha256, parts_sha256};
use crate::lock::BuildLock;
use crate::manifest::{self, Manifest};
use crate::progress::{format_elapsed, Progress};

pub use crate::flavour::{Flavour, NpmCli, NPM_CLIS};
pub use crate::home_disk::make_home_disk;
pub use crate::state_disk::make_state_disk;

/// The guest init script installed at [`GUEST_INIT`].
pub const INIT_SCRIPT: &str = include_str!("../guest/polydev-init");
/// The agent's systemd unit, installed as [`AGENT_UNIT`].
pub const AGENT_UNIT_TEXT: &str = include_str!("../guest/polydev-agent.service");
/// Bump when the build procedure changes in a way that changes the output.
pub const BUILDER_VERSION: &str = "2";
/// The Debian suite images are built from.
pub const SUITE: &str = "trixie";
/// Environment variable overriding mmdebstrap's default mirror.
pub const MIRROR_ENV: &str = "POLYDEV_DEBIAN_MIRROR";
/// Environment variable overriding the npm registry the guest's npm uses
/// (default: the registry the host's npm is configured with, else npm's own).
pub const NPM_REGISTRY_ENV: &str = "POLYDEV_NPM_REGISTRY";
/// Where the image's `/etc/resolv.conf` points: the name servers the kernel
/// got from its `ip=` argument.
pub const RESOLV_CONF_TARGET: &str = "/proc/net/pnp";
/// The agent's unit, as every flavour ships it.
pub const AGENT: Unit = Unit {
    name: AGENT_UNIT,
    text: AGENT_UNIT_TEXT,
    wanted_by: "sysinit.target",
};
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

/// The units an image of `flavour` ships: the agent's first.
pub fn units(flavour: Flavour) -> Vec<Unit> {
    let mut units = vec![AGENT];
    units.extend_from_slice(flavour.units());
    units
}

/// The input hash of an image of `flavour` containing the agent whose
/// SHA-256 is `agent_sha256`.
pub fn input_hash(flavour: Flavour, agent_sha256: &str) -> String {
    let packages = flavour.packages().join(",");
    let excludes = DPKG_EXCLUDES.join(",");
    let clis: Vec<String> = flavour.npm_clis().iter().map(NpmCli::spec).collect();
    let clis = clis.join(",");
    let mut unit_texts = String::new();
    for u in units(flavour) {
        unit_texts.push_str(&format!("{}\0{}\0{}\0", u.name, u.wanted_by, u.text));
    }
    let mut files = String::new();
    for (path, text, mode) in flavour.files() {
        files.push_str(&format!("{path}\0{mode:o}\0{text}\0"));
    }
    let script = customize_script(Path::new("/stage"), flavour);
    parts_sha256(&[
        ("flavour", flavour.name().as_bytes()),
        ("packages", packages.as_bytes()),
        ("suite", SUITE.as_bytes()),
        ("dpkg-excludes", excludes.as_bytes()),
        ("agent-sha256", agent_sha256.as_bytes()),
        ("init", INIT_SCRIPT.as_bytes()),
        ("units", unit_texts.as_bytes()),
        ("files", files.as_bytes()),
        ("npm-clis", clis.as_bytes()),
        ("customize", script.as_bytes()),
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

/// The screen streamer that browser images carry: `polydev-streamer`
/// beside the agent binary (both come out of the same `cargo build`).
pub fn streamer_bin(agent_bin: &Path) -> PathBuf {
    agent_bin.with_file_name("polydev-streamer")
}

/// What the image's input hash records of the binaries it carries: the
/// agent's SHA-256, and for images with a display the streamer's too.
fn binaries_sha256(flavour: Flavour, agent_bin: &Path) -> Result<String> {
    let agent = agent_sha256(agent_bin)?;
    if !flavour.has_display() {
        return Ok(agent);
    }
    let streamer = streamer_bin(agent_bin);
    if !streamer.is_file() {
        return Err(Error::InvalidInput(format!(
            "the screen streamer {} does not exist: build it with `cargo build --release -p polydev-stream`",
            streamer.display()
        )));
    }
    Ok(format!("{agent}+streamer:{}", file_sha256(&streamer)?))
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
    let hash = input_hash(flavour, &binaries_sha256(flavour, agent_bin)?);
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
    let hash = input_hash(flavour, &binaries_sha256(flavour, agent_bin)?);
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
        cache_dir, flavour, agent_bin, &agent_sha, &hash, &stage, &dir, progress,
    );
    progress.finish();
    // The staging tree is large; keep nothing of it, success or failure,
    // unless something is still mounted inside it (an interrupted
    // mmdebstrap): deleting through a mount would reach outside the tree.
    if stage.exists() {
        match mounts_under(&stage) {
            Ok(m) if m.is_empty() => {
                let _ = std::fs::remove_dir_all(&stage);
            }
            Ok(m) => {
                return Err(result.err().unwrap_or_else(|| {
                    Error::ImageCheck(format!(
                        "{} is still mounted; unmount it and remove {}",
                        m.join(", "),
                        stage.display()
                    ))
                }))
            }
            Err(e) => return Err(result.err().unwrap_or(e)),
        }
    }
    result?;
    Ok(artifact(&dir, &hash, false))
}

/// Mount points at or below `dir`, from `/proc/self/mountinfo`.
fn mounts_under(dir: &Path) -> Result<Vec<String>> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(Error::io("read", info))?;
    let dir = dir.to_string_lossy();
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as octal (\040).
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(str::to_owned)
        .collect())
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Hook output lines starting with this start a new progress phase.
const PHASE_PREFIX: &str = "polydev-phase: ";

/// The name a file is staged under (its image path, flattened).
fn staged_name(path: &str) -> String {
    path.trim_start_matches('/').replace('/', "__")
}

/// Installs, enables and verifies one unit the way systemd itself would.
fn unit_script(u: &Unit) -> String {
    let name = u.name;
    let wanted_by = u.wanted_by;
    format!(
        r#"install -D -m 0644 "$stage/units/{name}" "$root/etc/systemd/system/{name}"
chroot "$root" systemctl enable {name}
link="$root/etc/systemd/system/{wanted_by}.wants/{name}"
if [ ! -L "$link" ]; then
    echo "polydev: 'systemctl enable {name}' did not create $link" >&2
    exit 1
fi
# verify exits 0 on mere warnings (unknown keys, bad values): treat any
# output as a failure too.
if ! out=$(chroot "$root" systemd-analyze verify --man=no /etc/systemd/system/{name} 2>&1) || [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    echo "polydev: 'systemd-analyze verify' rejected {name}" >&2
    exit 1
fi
"#
    )
}

/// Creates the guest user and installs the CLIs from the npm registry with
/// the guest's own node, then records each CLI's `--version`.
fn clis_script(flavour: Flavour) -> String {
    let specs: Vec<String> = flavour
        .npm_clis()
        .iter()
        .map(|c| sh_quote(&c.spec()))
        .collect();
    let commands: Vec<&str> = flavour.npm_clis().iter().map(|c| c.command).collect();
    format!(
        r#"chroot "$root" groupadd --gid {GUEST_UID} {GUEST_USER}
chroot "$root" useradd --uid {GUEST_UID} --gid {GUEST_UID} --create-home --home-dir {GUEST_HOME} --shell /bin/bash {GUEST_USER}
ln -sf polydev-open-url "$root/usr/local/bin/xdg-open"
echo "BROWSER={OPEN_URL_HOOK}" >> "$root/etc/environment"
registry=""
if [ -s "$stage/npm-registry" ]; then registry="npm_config_registry=$(cat "$stage/npm-registry")"; fi
cafile=""
if [ -s "$stage/npm-ca.pem" ]; then
    install -m 0644 "$stage/npm-ca.pem" "$root/tmp/polydev-npm-ca.pem"
    cafile="npm_config_cafile=/tmp/polydev-npm-ca.pem"
fi
echo "{PHASE_PREFIX}installing {specs_shown} from the npm registry"
if ! chroot "$root" env PATH="$guest_path" HOME=/root $registry $cafile npm install -g --omit=dev --no-audit --no-fund --loglevel=warn {specs}; then
    echo "POLYDEV-NPM-INSTALL-FAILED" >&2
    exit 1
fi
rm -rf "$root/root/.npm" "$root/tmp/polydev-npm-ca.pem"
mkdir -p "$root$(dirname {CLI_VERSIONS_FILE})"
: > "$root{CLI_VERSIONS_FILE}"
for c in {commands}; do
    echo "{PHASE_PREFIX}running '$c --version' in the image"
    if ! v=$(chroot "$root" env PATH="$guest_path" HOME=/tmp/polydev-version-home timeout 300 "$c" --version 2>&1 </dev/null); then
        printf '%s\n' "$v" >&2
        echo "polydev: '$c --version' failed inside the image" >&2
        exit 1
    fi
    printf '%s\t%s\n' "$c" "$(printf '%s\n' "$v" | grep -v '^[[:space:]]*$' | tail -n 1)" >> "$root{CLI_VERSIONS_FILE}"
done
rm -rf "$root/tmp/polydev-version-home"
"#,
        specs = specs.join(" "),
        specs_shown = flavour
            .npm_clis()
            .iter()
            .map(NpmCli::spec)
            .collect::<Vec<_>>()
            .join(", "),
        commands = commands.join(" "),
    )
}

/// The customize hook mmdebstrap runs with the target directory as `$1`.
fn customize_script(stage: &Path, flavour: Flavour) -> String {
    let stage = sh_quote(&stage.to_string_lossy());
    let dirs: Vec<String> = INIT_DIRS
        .iter()
        .map(|d| format!("\"$root\"{}", sh_quote(d)))
        .collect();
    let mut s = format!(
        r#"set -eu
root="$1"
stage={stage}
guest_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
install -D -m 0755 "$stage/polydev-agent" "$root{AGENT_BIN}"
install -D -m 0755 "$stage/polydev-init" "$root{GUEST_INIT}"
mkdir -p {dirs}
echo polydev > "$root/etc/hostname"
"#,
        dirs = dirs.join(" "),
    );
    for (path, _, mode) in flavour.files() {
        s.push_str(&format!(
            "install -D -m {mode:04o} \"$stage/files/{}\" \"$root\"{}\n",
            staged_name(path),
            sh_quote(path)
        ));
    }
    if flavour.has_display() {
        s.push_str(&format!(
            "install -D -m 0755 \"$stage/polydev-streamer\" \"$root{STREAMER_BIN}\"\n"
        ));
    }
    if flavour.has_clis() {
        s.push_str(&clis_script(flavour));
    }
    for u in units(flavour) {
        s.push_str(&unit_script(&u));
    }
    s.push_str(&format!(
        r#"# The kernel has no modules: skip the units that would try to load some.
chroot "$root" systemctl mask {MASKED}
install -D -m 0644 "$stage/system.conf" "$root/etc/systemd/system.conf.d/polydev.conf"
# DNS comes from the kernel's ip= argument (one source of truth), never from
# the build host: the kernel lists those servers in /proc/net/pnp.
rm -f "$root/etc/resolv.conf"
ln -s {RESOLV_CONF_TARGET} "$root/etc/resolv.conf"
"#,
        MASKED = MASKED_UNITS.join(" "),
    ));
    s
}

/// A setting of the host's npm (`npm config get <key>`), if npm is
/// installed and the key is set.
fn host_npm_config(key: &str) -> Option<String> {
    let out = Command::new("npm")
        .args(["config", "get", key])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !v.is_empty() && v != "null" && v != "undefined").then_some(v)
}

/// The npm registry the guest's npm should use: [`NPM_REGISTRY_ENV`], else
/// the host npm's configured registry, else none (npm's default).
fn npm_registry() -> Option<String> {
    if let Some(r) = std::env::var(NPM_REGISTRY_ENV)
        .ok()
        .filter(|r| !r.trim().is_empty())
    {
        return Some(r.trim().to_owned());
    }
    host_npm_config("registry").filter(|r| r.starts_with("http"))
}

/// The certificate authorities the host's npm is configured to trust
/// (`cafile`), which the guest's npm then trusts too.
fn npm_cafile() -> Option<PathBuf> {
    host_npm_config("cafile")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

fn looks_like_npm_network_failure(tail: &str) -> bool {
    tail.contains("POLYDEV-NPM-INSTALL-FAILED")
        && [
            "ENOTFOUND",
            "EAI_AGAIN",
            "ECONNREFUSED",
            "ECONNRESET",
            "ETIMEDOUT",
            "ENETUNREACH",
            "EHOSTUNREACH",
            "network",
            "CERT_",
            "certificate",
        ]
        .iter()
        .any(|p| tail.contains(p))
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

/// Reads what the hook recorded of each CLI's `--version`.
fn read_cli_versions(flavour: Flavour, root: &Path) -> Result<Vec<manifest::Cli>> {
    if flavour.npm_clis().is_empty() {
        return Ok(Vec::new());
    }
    let path = root.join(CLI_VERSIONS_FILE.trim_start_matches('/'));
    let text = std::fs::read_to_string(&path).map_err(Error::io("read", &path))?;
    let mut out = Vec::new();
    for cli in flavour.npm_clis() {
        let line = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(c, _)| *c == cli.command)
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::ImageCheck(format!(
                    "{} records no `{} --version` output",
                    path.display(),
                    cli.command
                ))
            })?;
        if !line.contains(cli.version) {
            return Err(Error::ImageCheck(format!(
                "`{} --version` printed {line:?}, which does not name the pinned {}",
                cli.command,
                cli.spec()
            )));
        }
        out.push(manifest::Cli {
            command: cli.command.into(),
            package: cli.package.into(),
            version: cli.version.into(),
            version_output: line,
        });
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn build_locked(
    cache_dir: &Path,
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
    if flavour.has_display() {
        let streamer = streamer_bin(agent_bin);
        std::fs::copy(&streamer, stage.join("polydev-streamer"))
            .map_err(Error::io("copy", &streamer))?;
    }
    let write = |name: &str, text: &str| -> Result<()> {
        let p = stage.join(name);
        std::fs::write(&p, text).map_err(Error::io("write", &p))
    };
    for dir in ["units", "files"] {
        let d = stage.join(dir);
        std::fs::create_dir_all(&d).map_err(Error::io("create directory", &d))?;
    }
    write("polydev-init", INIT_SCRIPT)?;
    for u in units(flavour) {
        write(&format!("units/{}", u.name), u.text)?;
    }
    for (path, text, _) in flavour.files() {
        write(&format!("files/{}", staged_name(path)), text)?;
    }
    if flavour.has_clis() {
        if let Some(r) = npm_registry() {
            write("npm-registry", &r)?;
        }
        if let Some(ca) = npm_cafile() {
            let dest = stage.join("npm-ca.pem");
            std::fs::copy(&ca, &dest).map_err(Error::io("copy", &ca))?;
        }
    }
    write("system.conf", SYSTEM_CONF)?;
    write("customize.sh", &customize_script(stage, flavour))?;
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
        if let Some(phase) = line.strip_prefix(PHASE_PREFIX) {
            progress.phase(phase);
        } else if let Some(step) = line.strip_prefix("I: ") {
            progress.update(step);
        }
    };
    command::run(&mut mm, &mut on_line).map_err(|e| match e {
        Error::CommandFailed { tail, .. } if looks_like_npm_network_failure(&tail) => {
            Error::NpmUnreachable {
                registry: npm_registry().map(|r| format!(" {r}")).unwrap_or_default(),
                tail,
            }
        }
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
    let resolv = root.join("etc/resolv.conf");
    if std::fs::read_link(&resolv).ok().as_deref() != Some(Path::new(RESOLV_CONF_TARGET)) {
        return Err(Error::ImageCheck(format!(
            "{} is not a link to {RESOLV_CONF_TARGET}: the build host's DNS settings would leak into the image",
            resolv.display()
        )));
    }
    for u in units(flavour) {
        let link = root.join(format!(
            "etc/systemd/system/{}.wants/{}",
            u.wanted_by, u.name
        ));
        if !std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::ImageCheck(format!(
                "enablement symlink {} is missing",
                link.display()
            )));
        }
    }
    let mut expected_modes = vec![(AGENT_BIN, 0o755), (GUEST_INIT, 0o755)];
    expected_modes.extend(flavour.files().iter().map(|(p, _, m)| (*p, *m)));
    for (path, mode) in expected_modes {
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

    let clis = read_cli_versions(flavour, &root)?;

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
    let kernel_sha256 = crate::kernel::locate(cache_dir)
        .ok()
        .flatten()
        .and_then(|k| file_sha256(&k.path).ok());
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
        clis,
        kernel_sha256,
        image_bytes: size,
        build_seconds: started.elapsed().as_secs(),
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
    fn hash_covers_flavour_and_pins() {
        assert_ne!(
            input_hash(Flavour::Browser, "a"),
            input_hash(Flavour::Cli, "a")
        );
        let s = customize_script(Path::new("/c/stage"), Flavour::Cli);
        for c in NPM_CLIS {
            assert!(s.contains(&c.spec()), "{}", c.package);
        }
        assert!(s.contains("npm install -g --omit=dev"));
        assert!(s.contains("POLYDEV-NPM-INSTALL-FAILED"));
    }

    #[test]
    fn browser_script_enables_every_unit() {
        let s = customize_script(Path::new("/c/stage"), Flavour::Browser);
        for u in units(Flavour::Browser) {
            assert!(
                s.contains(&format!("systemctl enable {}", u.name)),
                "{}",
                u.name
            );
            assert!(
                s.contains(&format!(
                    "systemd-analyze verify --man=no /etc/systemd/system/{}",
                    u.name
                )),
                "{}",
                u.name
            );
        }
        assert!(s.contains("useradd --uid 1000"));
    }

    #[test]
    fn finds_mounts_below_a_directory() {
        assert!(!mounts_under(Path::new("/proc")).unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn npm_failures_are_classified() {
        assert!(looks_like_npm_network_failure(
            "npm error code ENOTFOUND\nPOLYDEV-NPM-INSTALL-FAILED"
        ));
        assert!(!looks_like_npm_network_failure("npm error code ENOTFOUND"));
        assert!(!looks_like_npm_network_failure(
            "npm error code E404\nPOLYDEV-NPM-INSTALL-FAILED"
        ));
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
        let s = customize_script(Path::new("/c/stage"), Flavour::Minimal);
        assert!(
            s.contains(AGENT_BIN) && s.contains(GUEST_INIT) && s.contains("systemd-analyze verify")
        );
    }
}
