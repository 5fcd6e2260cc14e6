//! The QEMU `microvm` driver. Boots the guest kernel directly (PVH), with the
//! golden image read-only as the first virtio-mmio disk, the per-VM state
//! disk as the second, a virtio-net device on the namespace's TAP (opened
//! with `vnet_hdr=on`), virtio-rng, the serial console captured to a file
//! and a QMP socket for control. The console file is opened `O_APPEND`
//! (`-chardev file,append=on`), so the controller may shorten it in place
//! while QEMU writes ([`crate::console::cap`]); a fresh boot empties it
//! first, a restore continues it.
//!
//! QEMU opens all of these as root, then drops to an unprivileged account
//! (`-runas`, [`vmm_user`]) before the guest runs, under its seccomp filter
//! ([`SANDBOX`]): no spawning, no privilege changes. It opens nothing after
//! the drop; everything it needs later arrives as an open descriptor.
//!
//! Pause and resume are QMP `stop` and `cont`. A snapshot stops the guest,
//! migrates it into a file the controller opened and handed over QMP
//! (`getfd`, then `migrate fd:NAME`; QEMU 7.2 has no `file:` migration URI)
//! and quits; a restore starts QEMU with the same arguments plus
//! `-incoming defer`, hands it the opened file the same way
//! (`migrate-incoming fd:NAME`), waits for the incoming migration, and
//! continues the guest. The disks are the VM's own files, untouched while the
//! VM is stopped.

use crate::accel::Accel;
use crate::process::{self, VmmProcess};
use crate::qmp::Qmp;
use crate::snapshot::{self, SnapshotMeta, SpecEssentials};
use crate::{Result, VmSpec, Vmm, VmmError, VmmKind};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// File name of the QMP socket inside a VM's directory.
pub const QMP_SOCKET: &str = "qmp.sock";

/// File name of the migration stream inside a snapshot directory.
pub const STATE_FILE: &str = "qemu-state.migration";

/// How long QEMU may take to write or read a migration stream.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// The id of the serial console's character device.
const CONSOLE_CHARDEV: &str = "serial0";

/// How long to wait for QEMU's QMP socket after starting it.
const QMP_WAIT: Duration = Duration::from_secs(20);

/// The `-sandbox` argument every QEMU VM starts with: no obsolete system
/// calls, no spawning (`fork`, `execve`), no scheduler or affinity changes.
///
/// `set*uid`/`set*gid` stay allowed (`elevateprivileges=allow`) because of
/// `-runas`: QEMU 7.2 installs its seccomp filter while parsing its early
/// options and drops privileges (`setgid`, `initgroups`, `setuid`) only at
/// the end of set-up (`os_setup_post`), under the filter already;
/// `elevateprivileges=deny` (and `=children`, which denies them too) kills
/// QEMU there with SIGSYS. Once dropped, QEMU holds no capabilities and runs
/// with `no_new_privs`, so `setuid(0)` fails and no set-uid program can be
/// executed (execve is denied anyway).
pub const SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";

/// The account QEMU runs as when `POLYDEV_VMM_USER` is unset, if it exists
/// (`scripts/setup.sh` creates it: a system account with no home and no
/// login shell).
pub const DEFAULT_USER: &str = "polydev-vmm";

/// The account QEMU runs as when neither `POLYDEV_VMM_USER` is set nor
/// [`DEFAULT_USER`] exists.
pub const FALLBACK_USER: &str = "nobody";

/// The name `getfd` gives a migration stream's descriptor in QEMU.
const MIGRATION_FD: &str = "migration";

/// The QEMU driver.
#[derive(Debug, Clone)]
pub struct Qemu {
    /// Path of `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// KVM or TCG, decided by [`crate::accel::choose`].
    pub accel: Accel,
}

impl Qemu {
    /// The driver with the default binary name.
    pub fn new(accel: Accel) -> Qemu {
        Qemu {
            binary: PathBuf::from(default_binary()),
            accel,
        }
    }

    /// The full argument list for `spec` (without the binary), QEMU
    /// running as `user` once set up.
    pub fn args(&self, spec: &VmSpec, user: &str) -> Vec<String> {
        use polydev_core::guest::{GUEST_MAC, TAP_NAME};
        let d = |p: &std::path::Path| p.display().to_string();
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg,thread=multi", "max"),
        };
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("polydev-{},process=polydev-{}", spec.vm_id, spec.vm_id),
            "-M".into(),
            "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off".into(),
            "-accel".into(),
            accel.into(),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-m".into(),
            format!("{}M", spec.memory_mb),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            d(&spec.kernel),
            "-append".into(),
            spec.kernel_cmdline(),
            "-drive".into(),
            format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                d(&spec.rootfs)
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            // Writable disks are opened read-write once, for good
            // (`auto-read-only=off`): with `-drive`'s default, QEMU reopens
            // a disk by name read-only when a migration deactivates it and
            // read-write when a restore activates it, which QEMU, no longer
            // root, cannot do.
            "-drive".into(),
            format!(
                "id=state,file={},format=raw,if=none,cache=unsafe,auto-read-only=off",
                d(&spec.state_disk)
            ),
            "-device".into(),
            "virtio-blk-device,drive=state".into(),
        ];
        if let Some(home) = &spec.home_disk {
            a.extend([
                "-drive".into(),
                format!(
                    "id=home,file={},format=raw,if=none,auto-read-only=off",
                    d(home)
                ),
                "-device".into(),
                "virtio-blk-device,drive=home".into(),
            ]);
        }
        a.extend([
            "-netdev".into(),
            format!("tap,id=net0,ifname={TAP_NAME},script=no,downscript=no,vnet_hdr=on"),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={GUEST_MAC}"),
            "-object".into(),
            "rng-random,id=rng0,filename=/dev/urandom".into(),
            "-device".into(),
            "virtio-rng-device,rng=rng0".into(),
            "-chardev".into(),
            format!(
                "file,id={CONSOLE_CHARDEV},path={},append=on",
                d(&spec.console_path())
            ),
            "-serial".into(),
            format!("chardev:{CONSOLE_CHARDEV}"),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", d(&spec.dir.join(QMP_SOCKET))),
            // Everything above is opened as root; then QEMU becomes `user`
            // under its seccomp filter, before the guest runs.
            "-runas".into(),
            user.into(),
            "-sandbox".into(),
            SANDBOX.into(),
        ]);
        a.shrink_to_fit();
        a
    }

    /// The argument list that restores `spec`: the boot arguments (the
    /// console is appended to, so the boot's log goes on), the guest held
    /// stopped (`-S`) and an incoming migration whose stream is handed over
    /// QMP later (`-incoming defer`).
    pub fn restore_args(&self, spec: &VmSpec, user: &str) -> Vec<String> {
        let mut a = self.args(spec, user);
        a.extend(["-S".into(), "-incoming".into(), "defer".into()]);
        a
    }

    /// The snapshot format this driver writes: machine, accelerator and
    /// migration stream, all of which a restore must match.
    pub fn snapshot_format(&self) -> String {
        format!("microvm/{}/qemu-migration-stream", self.accel.as_str())
    }

    fn qmp(&self, p: &VmmProcess, spec: &VmSpec) -> Result<Qmp> {
        let path = p
            .socket_path
            .clone()
            .unwrap_or_else(|| spec.dir.join(QMP_SOCKET));
        Qmp::connect(&path, QMP_WAIT)
    }

    fn spawn(&self, spec: &VmSpec, args: Vec<String>) -> Result<VmmProcess> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args).current_dir(&spec.dir);
        process::spawn_in_netns(
            cmd,
            &spec.netns,
            &spec.vmm_log_path(),
            Some(spec.dir.join(QMP_SOCKET)),
        )
    }
}

/// The account QEMU drops to: `POLYDEV_VMM_USER` when set (it must exist
/// and not be root), else [`DEFAULT_USER`] when it exists, else
/// [`FALLBACK_USER`]. A name, as QEMU 7.2's `-runas` takes it (QEMU then
/// takes the account's primary group and supplementary groups).
pub fn vmm_user() -> Result<String> {
    let configured = std::env::var("POLYDEV_VMM_USER")
        .ok()
        .filter(|v| !v.trim().is_empty());
    choose_user(configured.as_deref(), |name| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

/// [`vmm_user`]'s choice, with `uid_of` looking accounts up.
fn choose_user(configured: Option<&str>, uid_of: impl Fn(&str) -> Option<u32>) -> Result<String> {
    let name = match configured {
        Some(name) => name.trim(),
        None if uid_of(DEFAULT_USER).is_some() => DEFAULT_USER,
        None => FALLBACK_USER,
    };
    match uid_of(name) {
        Some(0) => Err(VmmError::Config(format!(
            "POLYDEV_VMM_USER: QEMU must drop to an unprivileged account, not {name:?} (uid 0)"
        ))),
        Some(_) => Ok(name.to_string()),
        None if configured.is_some() => Err(VmmError::Config(format!(
            "POLYDEV_VMM_USER: no account {name:?} on this host"
        ))),
        None => Err(VmmError::Config(format!(
            "no account {DEFAULT_USER:?} (scripts/setup.sh creates it) nor {FALLBACK_USER:?} for QEMU to run as; set POLYDEV_VMM_USER"
        ))),
    }
}

/// Waits until process `pid` (matching `marker`) has ended.
pub(crate) fn wait_gone(pid: u32, marker: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while process::is_alive(pid, marker) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// `qemu-system-x86_64`, or `POLYDEV_QEMU` when set.
pub fn default_binary() -> String {
    std::env::var("POLYDEV_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

impl Vmm for Qemu {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn start(&self, spec: &VmSpec) -> Result<VmmProcess> {
        // A boot starts a fresh log (QEMU only appends to it).
        let console = spec.console_path();
        std::fs::File::create(&console).map_err(|e| VmmError::File {
            what: "console log",
            path: console.clone(),
            source: e,
        })?;
        self.spawn(spec, self.args(spec, &vmm_user()?))
    }

    fn describe(&self) -> String {
        format!(
            "qemu microvm ({}) with {}",
            self.binary.display(),
            self.accel.as_str()
        )
    }

    fn version(&self) -> Result<String> {
        process::binary_version(&self.binary, &["--version"])
    }

    fn pause(&self, spec: &VmSpec, p: &VmmProcess) -> Result<()> {
        self.qmp(p, spec)?.execute("stop", None).map(drop)
    }

    fn resume(&self, spec: &VmSpec, p: &VmmProcess) -> Result<()> {
        self.qmp(p, spec)?.execute("cont", None).map(drop)
    }

    fn snapshot(&self, spec: &VmSpec, p: &VmmProcess, dest_dir: &Path) -> Result<SnapshotMeta> {
        let start = Instant::now();
        let version = self.version()?;
        snapshot::prepare_dir(dest_dir)?;
        let state = dest_dir.join(STATE_FILE);
        // Opened here: QEMU, no longer root, could not open it itself.
        let file = std::fs::File::create(&state).map_err(|e| VmmError::File {
            what: "migration stream",
            path: state.clone(),
            source: e,
        })?;
        let mut q = self.qmp(p, spec)?;
        // Stopped first, the guest dirties nothing: one pass, and the stream
        // records `paused`, so the restored QEMU waits for our `cont`.
        q.execute("stop", None)?;
        q.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": 1u64 << 40 })),
        )?;
        q.pass_fd(MIGRATION_FD, file.as_fd())?;
        drop(file);
        q.execute(
            "migrate",
            Some(serde_json::json!({ "uri": format!("fd:{MIGRATION_FD}") })),
        )?;
        q.wait_migration(MIGRATION_TIMEOUT)?;
        // The guest stays stopped: QEMU exits, the snapshot is the VM now.
        let _ = q.execute("quit", None);
        drop(q);
        let marker = spec.dir.display().to_string();
        if !wait_gone(p.pid, &marker, Duration::from_secs(10)) {
            process::stop(p.pid, &marker, Duration::from_secs(2))?;
        }
        let meta = SnapshotMeta {
            layout_version: snapshot::LAYOUT_VERSION,
            vmm: VmmKind::Qemu,
            vmm_version: version,
            format: self.snapshot_format(),
            files: vec![STATE_FILE.into()],
            created_unix_ms: snapshot::now_unix_ms(),
            create_ms: start.elapsed().as_millis() as u64,
            spec: SpecEssentials::of(spec),
            dir: dest_dir.into(),
        };
        meta.write()?;
        Ok(meta)
    }

    fn restore(&self, spec: &VmSpec, snap: &SnapshotMeta) -> Result<VmmProcess> {
        snap.check_compatible(VmmKind::Qemu, &self.version()?, &self.snapshot_format())?;
        snap.check_spec(spec)?;
        let state = snap.file(STATE_FILE);
        let file = std::fs::File::open(&state).map_err(|e| VmmError::File {
            what: "migration stream",
            path: state.clone(),
            source: e,
        })?;
        let p = self.spawn(spec, self.restore_args(spec, &vmm_user()?))?;
        let marker = spec.dir.display().to_string();
        let fail = |e: VmmError| {
            let _ = process::stop(p.pid, &marker, Duration::from_secs(2));
            e
        };
        let mut q = self.qmp(&p, spec).map_err(fail)?;
        q.pass_fd(MIGRATION_FD, file.as_fd()).map_err(fail)?;
        drop(file);
        q.execute(
            "migrate-incoming",
            Some(serde_json::json!({ "uri": format!("fd:{MIGRATION_FD}") })),
        )
        .map_err(fail)?;
        let start = Instant::now();
        loop {
            let st = q.status().map_err(fail)?;
            match st.as_str() {
                // Still reading the stream.
                "inmigrate" => {
                    if start.elapsed() > MIGRATION_TIMEOUT {
                        return Err(fail(VmmError::Timeout {
                            what: format!("QEMU loading {}", snap.dir.display()),
                            secs: MIGRATION_TIMEOUT.as_secs(),
                        }));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                "paused" | "postmigrate" | "prelaunch" => {
                    q.execute("cont", None).map_err(fail)?;
                    break;
                }
                "running" => break,
                other => {
                    let err = VmmError::Snapshot {
                        dir: snap.dir.clone(),
                        detail: format!("QEMU is {other} after loading the snapshot"),
                    };
                    return Err(fail(err));
                }
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            vm_id: "vm_1".into(),
            dir: "/var/lib/polydev/vms/vm_1".into(),
            kernel: "/k/vmlinux".into(),
            rootfs: "/i/rootfs.ext4".into(),
            state_disk: "/var/lib/polydev/vms/vm_1/state.ext4".into(),
            home_disk: None,
            vcpus: 2,
            memory_mb: 512,
            netns: "pd0".into(),
            extra_kernel_args: vec!["systemd.mask=x.service".into()],
        }
    }

    #[test]
    fn command_line_has_readonly_root_vnet_hdr_and_console_file() {
        let a = Qemu::new(Accel::Tcg).args(&spec(), "polydev-vmm").join(" ");
        assert!(
            a.contains("file=/i/rootfs.ext4,format=raw,if=none,readonly=on"),
            "{a}"
        );
        assert!(a.contains("vnet_hdr=on"), "{a}");
        assert!(
            a.contains("state.ext4,format=raw,if=none,cache=unsafe,auto-read-only=off"),
            "an unprivileged QEMU cannot reopen the state disk when a migration deactivates it: {a}"
        );
        assert!(
            a.contains(
                "-chardev file,id=serial0,path=/var/lib/polydev/vms/vm_1/console.log,append=on -serial chardev:serial0"
            ),
            "the console is opened O_APPEND, so it can be shortened in place: {a}"
        );
        assert!(!a.contains("file:"), "{a}");
        assert!(a.contains("-accel tcg,thread=multi -cpu max"), "{a}");
        assert!(a.contains("init=/usr/sbin/polydev-init"), "{a}");
        assert!(a.contains("ip=169.254.0.22::169.254.0.21"), "{a}");
        assert!(a.contains("server=on,wait=off"), "{a}");
        assert!(
            a.ends_with(&format!("-runas polydev-vmm -sandbox {SANDBOX}")),
            "QEMU drops to its account, under its seccomp filter: {a}"
        );
        assert!(SANDBOX.contains("spawn=deny"), "{SANDBOX}");
        assert!(a.contains("systemd.mask=x.service"), "{a}");
        // The root disk is declared before the state disk: vda, then vdb.
        assert!(a.find("drive=root").unwrap() < a.find("drive=state").unwrap());
        let k = Qemu::new(Accel::Kvm).args(&spec(), "nobody").join(" ");
        assert!(k.contains("-accel kvm -cpu host"), "{k}");
    }

    #[test]
    fn a_restore_appends_to_the_same_console() {
        let q = Qemu::new(Accel::Tcg);
        let r = q.restore_args(&spec(), "polydev-vmm");
        let boot = q.args(&spec(), "polydev-vmm");
        assert_eq!(&r[..boot.len()], &boot[..]);
        // The stream arrives later as a descriptor: nothing is run to read it.
        assert_eq!(r[boot.len()..].join(" "), "-S -incoming defer");
    }

    #[test]
    fn qemu_runs_as_an_unprivileged_account() {
        let accounts = |names: &'static [(&'static str, u32)]| {
            move |n: &str| names.iter().find(|(a, _)| *a == n).map(|(_, u)| *u)
        };
        let both = accounts(&[("root", 0), ("nobody", 65534), ("polydev-vmm", 998)]);
        assert_eq!(choose_user(None, both).unwrap(), "polydev-vmm");
        let no_own = accounts(&[("root", 0), ("nobody", 65534)]);
        assert_eq!(choose_user(None, no_own).unwrap(), "nobody");
        assert_eq!(choose_user(Some("nobody"), both).unwrap(), "nobody");
        let e = choose_user(Some("root"), both).unwrap_err().to_string();
        assert!(e.contains("uid 0"), "{e}");
        let e = choose_user(Some("qemu"), both).unwrap_err().to_string();
        assert!(e.contains("no account \"qemu\""), "{e}");
        let e = choose_user(None, accounts(&[("root", 0)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("POLYDEV_VMM_USER"), "{e}");
    }
}
