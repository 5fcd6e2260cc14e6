//! The Firecracker driver (API of Firecracker 1.14 and later; written against
//! 1.16). Firecracker starts empty and is configured through its HTTP API on
//! a Unix socket: logger, metrics, machine, kernel, the golden image as the
//! read-only root drive, the per-VM state disk, virtio-net on the namespace's
//! TAP, virtio-rng, then `InstanceStart`. Pause and resume are `PATCH /vm`;
//! a snapshot is a full `PUT /snapshot/create` of the paused VM, after which
//! the process is stopped; a restore is a fresh process given only the logger,
//! metrics and `PUT /snapshot/load` (memory from the file, resumed at once).
//!
//! The guest's serial console is Firecracker's stdout, which the driver
//! appends to the VM's console log: `PUT /serial` (1.14+) opens its file
//! without `O_APPEND`, so a restored VM would overwrite the boot's console
//! from the first byte; an inherited append-mode stdout keeps one continuous
//! console across restores, and lets [`crate::console::cap`] shorten the
//! log in place while Firecracker (or the jailer, which passes its stdout
//! on) writes it. Firecracker's own log goes to
//! [`LOG_FILE`] (the previous process's kept as `.prev`), its stderr to the
//! VMM log.
//!
//! **Why no `fctools`.** The `fctools` crate (0.6, 0.7 alphas) was evaluated
//! first and not used: it is async-only (this trait is synchronous and the
//! controller calls it from blocking tasks); a library may not choose its
//! syscall backend (the binary crate must enable `nix-` or
//! `rustix-syscall-backend`, otherwise fctools panics at run time, a wall
//! this crate cannot enforce); it brings hyper, hyper-client-sockets, http,
//! futures and its own runtime abstraction for about a dozen requests; it owns
//! process spawning and jailing through its executors, which would fight our
//! namespace spawn and our re-adoption of VMMs by command line after a
//! controller restart; and it has had five breaking releases and is pre-1.0.
//! The client here is a small blocking HTTP/1.1 client over
//! `std::os::unix::net::UnixStream` ([`api`]) with request bodies tested
//! against Firecracker's swagger definitions.

pub mod api;
pub mod jailer;

use crate::process::{self, VmmProcess};
use crate::snapshot::{self, SnapshotMeta, SpecEssentials};
use crate::{Result, VmSpec, Vmm, VmmError, VmmKind};
use api::Client;
use jailer::JailerConfig;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The logger and metrics requests every Firecracker process gets first,
/// at boot and at restore.
fn log_requests(spec: &VmSpec) -> Vec<(&'static str, String, serde_json::Value)> {
    vec![
        (
            "PUT",
            "/logger".into(),
            api::logger(&spec.dir.join(LOG_FILE)),
        ),
        (
            "PUT",
            "/metrics".into(),
            api::metrics(&spec.dir.join(METRICS_FILE)),
        ),
    ]
}

/// File name of the API socket inside a VM's directory.
pub const API_SOCKET: &str = "firecracker.sock";
/// File name of Firecracker's own log inside a VM's directory.
pub const LOG_FILE: &str = "firecracker.log";
/// File name of Firecracker's metrics inside a VM's directory.
pub const METRICS_FILE: &str = "firecracker-metrics.json";
/// File name of the VM state in a snapshot directory.
pub const SNAPSHOT_STATE: &str = "vmstate";
/// File name of the guest memory in a snapshot directory.
pub const SNAPSHOT_MEMORY: &str = "memory";
/// The guest network interface's id.
pub const IFACE_ID: &str = "eth0";

/// How long a configuration request may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// How long snapshot create and load may take (memory-sized files).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long Firecracker may take to open its API socket.
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// The Firecracker binary from `POLYDEV_FIRECRACKER` when set (and a file),
/// else `firecracker` on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("POLYDEV_FIRECRACKER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("firecracker"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The Firecracker driver.
#[derive(Debug, Clone)]
pub struct Firecracker {
    /// The `firecracker` binary.
    pub binary: PathBuf,
    /// Run under the jailer when set; unjailed (development) otherwise.
    pub jailer: Option<JailerConfig>,
}

impl Firecracker {
    /// An unjailed driver for `binary`.
    pub fn new(binary: PathBuf) -> Firecracker {
        Firecracker {
            binary,
            jailer: None,
        }
    }

    /// Where a path Firecracker is given lies on the host: itself unjailed,
    /// the same path under the jail's root when jailed.
    pub fn host_path(&self, spec: &VmSpec, path: &Path) -> PathBuf {
        match &self.jailer {
            Some(j) => j.staged(spec, &self.binary, path),
            None => path.to_path_buf(),
        }
    }

    /// The API socket as seen from the host.
    pub fn socket_path(&self, spec: &VmSpec) -> PathBuf {
        self.host_path(spec, &spec.dir.join(API_SOCKET))
    }

    /// Firecracker's own arguments. The API socket lies in the VM directory
    /// (jailed: that path inside the chroot), so the process's command line
    /// names the VM directory. The log level is `Off` until `PUT /logger`
    /// points the log at its file, so nothing but the guest reaches stdout.
    pub fn firecracker_args(&self, spec: &VmSpec) -> Vec<String> {
        let mut a = vec![
            "--api-sock".to_string(),
            spec.dir.join(API_SOCKET).display().to_string(),
            "--level".into(),
            "Off".into(),
        ];
        if self.jailer.is_none() {
            // The jailer passes its own --id.
            a.push("--id".into());
            a.push(JailerConfig::jail_id(&spec.vm_id));
        }
        a
    }

    /// The configuration requests that boot `spec`, in order: `(method,
    /// path, body)`.
    pub fn boot_requests(&self, spec: &VmSpec) -> Vec<(&'static str, String, serde_json::Value)> {
        use polydev_core::guest::{GUEST_MAC, TAP_NAME};
        let home = spec.home_disk.as_ref().map(|h| {
            (
                "PUT",
                "/drives/home".to_string(),
                api::drive("home", h, false, false),
            )
        });
        let mut reqs = log_requests(spec);
        reqs.extend([
            (
                "PUT",
                "/machine-config".into(),
                api::machine_config(spec.vcpus, spec.memory_mb),
            ),
            (
                "PUT",
                "/boot-source".into(),
                api::boot_source(&spec.kernel, &spec.kernel_cmdline()),
            ),
            (
                "PUT",
                "/drives/root".into(),
                api::drive("root", &spec.rootfs, true, true),
            ),
            (
                "PUT",
                "/drives/state".into(),
                api::drive("state", &spec.state_disk, false, false),
            ),
            (
                "PUT",
                format!("/network-interfaces/{IFACE_ID}"),
                api::network_interface(IFACE_ID, TAP_NAME, GUEST_MAC),
            ),
            ("PUT", "/entropy".into(), api::entropy()),
            ("PUT", "/actions".into(), api::instance_start()),
        ]);
        // The home disk is the third drive (vdc): after root and state.
        if let Some(h) = home {
            reqs.insert(6, h);
        }
        reqs
    }

    /// The requests that restore `snap`, in order.
    pub fn restore_requests(
        &self,
        spec: &VmSpec,
        snap: &SnapshotMeta,
    ) -> Vec<(&'static str, String, serde_json::Value)> {
        let mut reqs = log_requests(spec);
        reqs.extend([(
            "PUT",
            "/snapshot/load".into(),
            api::snapshot_load(
                &snap.file(SNAPSHOT_STATE),
                &snap.file(SNAPSHOT_MEMORY),
                true,
                Some((IFACE_ID, polydev_core::guest::TAP_NAME)),
            ),
        )]);
        reqs
    }

    fn client(&self, spec: &VmSpec, p: Option<&VmmProcess>) -> Client {
        let sock = p
            .and_then(|p| p.socket_path.clone())
            .unwrap_or_else(|| self.socket_path(spec));
        Client::new(&sock, API_TIMEOUT)
    }

    /// The snapshot data format this binary writes and reads.
    pub fn snapshot_format(&self) -> Result<String> {
        process::binary_version(&self.binary, &["--snapshot-version"])
    }

    /// Starts a bare Firecracker process for `spec` and waits for its API.
    /// `files` are staged into the jail when jailed: `(path, writable)`.
    fn spawn(&self, spec: &VmSpec, files: &[(&Path, bool)]) -> Result<VmmProcess> {
        let host_log = self.host_path(spec, &spec.dir.join(LOG_FILE));
        if host_log.exists() {
            let _ = std::fs::rename(&host_log, host_log.with_extension("log.prev"));
        }
        let _ = std::fs::remove_file(self.host_path(spec, &spec.dir.join(METRICS_FILE)));
        let sock = self.socket_path(spec);
        let _ = std::fs::remove_file(&sock);
        let fc_args = self.firecracker_args(spec);
        let cmd = match &self.jailer {
            Some(j) => {
                j.stage_dir(spec, &self.binary, &spec.dir)?;
                for (f, writable) in files {
                    j.stage_file(spec, &self.binary, f, *writable)?;
                }
                // Firecracker's log is one file seen from both sides: the
                // VM directory keeps it (diagnosis, the console endpoint)
                // when the jail is gone.
                let log = spec.dir.join(LOG_FILE);
                if log.exists() {
                    let _ = std::fs::rename(&log, log.with_extension("log.prev"));
                }
                std::fs::write(&log, b"").map_err(|e| VmmError::File {
                    what: "Firecracker log",
                    path: log.clone(),
                    source: e,
                })?;
                j.stage_file(spec, &self.binary, &log, true)?;
                let mut c = Command::new(&j.binary);
                c.args(j.args(spec, &self.binary, &fc_args));
                c
            }
            None => {
                let mut c = Command::new(&self.binary);
                c.args(&fc_args);
                c
            }
        };
        let mut cmd = cmd;
        cmd.current_dir(&spec.dir);
        let p = process::spawn_in_netns_split(
            cmd,
            &spec.netns,
            &spec.console_path(),
            &spec.vmm_log_path(),
            Some(sock.clone()),
        )?;
        let marker = spec.dir.display().to_string();
        let exit = p.exit.clone();
        let alive = move || exit.lock().map(|e| e.is_none()).unwrap_or(false);
        if let Err(e) = Client::new(&sock, API_TIMEOUT).wait_ready(SOCKET_WAIT, &alive) {
            let _ = process::stop(p.pid, &marker, Duration::from_secs(1));
            return Err(e);
        }
        Ok(p)
    }

    /// Sends `requests`; on the first refusal stops the process and returns
    /// the API's error (its `fault_message` verbatim).
    fn send_all(
        &self,
        spec: &VmSpec,
        p: &VmmProcess,
        requests: Vec<(&'static str, String, serde_json::Value)>,
        timeout: Duration,
    ) -> Result<()> {
        let c = Client::new(
            p.socket_path.as_deref().unwrap_or(&self.socket_path(spec)),
            timeout,
        );
        for (method, path, body) in requests {
            if let Err(e) = c.request(method, &path, Some(&body)) {
                let _ = process::stop(
                    p.pid,
                    &spec.dir.display().to_string(),
                    Duration::from_secs(1),
                );
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Vmm for Firecracker {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn start(&self, spec: &VmSpec) -> Result<VmmProcess> {
        let p = self.spawn(
            spec,
            &[
                (&spec.kernel, false),
                (&spec.rootfs, false),
                (&spec.state_disk, true),
            ]
            .into_iter()
            .chain(spec.home_disk.iter().map(|h| (h, true)))
            .map(|(p, w)| (p.as_path(), w))
            .collect::<Vec<_>>(),
        )?;
        self.send_all(spec, &p, self.boot_requests(spec), API_TIMEOUT)?;
        Ok(p)
    }

    fn describe(&self) -> String {
        let version = self
            .version()
            .unwrap_or_else(|e| format!("version unknown: {e}"));
        match &self.jailer {
            Some(j) => format!(
                "{version} ({}) jailed by {} as {}:{}",
                self.binary.display(),
                j.binary.display(),
                j.uid,
                j.gid
            ),
            None => format!("{version} ({}) unjailed", self.binary.display()),
        }
    }

    fn version(&self) -> Result<String> {
        process::binary_version(&self.binary, &["--version"])
    }

    fn pause(&self, spec: &VmSpec, p: &VmmProcess) -> Result<()> {
        self.client(spec, Some(p))
            .patch("/vm", &api::vm_state(true))
    }

    fn resume(&self, spec: &VmSpec, p: &VmmProcess) -> Result<()> {
        self.client(spec, Some(p))
            .patch("/vm", &api::vm_state(false))
    }

    fn snapshot(&self, spec: &VmSpec, p: &VmmProcess, dest_dir: &Path) -> Result<SnapshotMeta> {
        let start = Instant::now();
        let version = self.version()?;
        let format = self.snapshot_format()?;
        snapshot::prepare_dir(dest_dir)?;
        // Jailed, Firecracker can only write inside its chroot: into the VM
        // directory there, moved out afterwards.
        let write_dir = match &self.jailer {
            Some(j) => {
                let d = spec.dir.join("snapshot-tmp");
                j.stage_dir(spec, &self.binary, &d)?;
                d
            }
            None => dest_dir.to_path_buf(),
        };
        let state = write_dir.join(SNAPSHOT_STATE);
        let memory = write_dir.join(SNAPSHOT_MEMORY);
        let c = self.client(spec, Some(p));
        c.patch("/vm", &api::vm_state(true))?;
        Client::new(c.socket(), SNAPSHOT_TIMEOUT)
            .put("/snapshot/create", &api::snapshot_create(&state, &memory))?;
        process::stop(
            p.pid,
            &spec.dir.display().to_string(),
            Duration::from_secs(2),
        )?;
        if self.jailer.is_some() {
            for f in [SNAPSHOT_STATE, SNAPSHOT_MEMORY] {
                let from = self.host_path(spec, &write_dir.join(f));
                let to = dest_dir.join(f);
                if std::fs::rename(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(|e| VmmError::Snapshot {
                        dir: dest_dir.into(),
                        detail: format!("moving {} out of the jail: {e}", from.display()),
                    })?;
                    let _ = std::fs::remove_file(&from);
                }
            }
        }
        let meta = SnapshotMeta {
            layout_version: snapshot::LAYOUT_VERSION,
            vmm: VmmKind::Firecracker,
            vmm_version: version,
            format,
            files: vec![SNAPSHOT_STATE.into(), SNAPSHOT_MEMORY.into()],
            created_unix_ms: snapshot::now_unix_ms(),
            create_ms: start.elapsed().as_millis() as u64,
            spec: SpecEssentials::of(spec),
            dir: dest_dir.into(),
        };
        meta.write()?;
        Ok(meta)
    }

    fn restore(&self, spec: &VmSpec, snap: &SnapshotMeta) -> Result<VmmProcess> {
        snap.check_compatible(
            VmmKind::Firecracker,
            &self.version()?,
            &self.snapshot_format()?,
        )?;
        snap.check_spec(spec)?;
        let state = snap.file(SNAPSHOT_STATE);
        let memory = snap.file(SNAPSHOT_MEMORY);
        let p = self.spawn(
            spec,
            &[
                (&spec.rootfs, false),
                (&spec.state_disk, true),
                (&state, false),
                (&memory, false),
            ]
            .into_iter()
            .chain(spec.home_disk.iter().map(|h| (h, true)))
            .map(|(p, w)| (p.as_path(), w))
            .collect::<Vec<_>>(),
        )?;
        let reqs = self.restore_requests(spec, snap);
        self.send_all(spec, &p, reqs, SNAPSHOT_TIMEOUT)?;
        Ok(p)
    }

    fn cleanup(&self, spec: &VmSpec) -> Result<()> {
        match &self.jailer {
            Some(j) => j.cleanup(spec, &self.binary),
            None => Ok(()),
        }
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
            vcpus: 1,
            memory_mb: 512,
            netns: "pd0".into(),
            extra_kernel_args: vec![],
        }
    }

    #[test]
    fn boot_sequence_ends_with_instance_start() {
        let fc = Firecracker::new("/usr/bin/firecracker".into());
        let r = fc.boot_requests(&spec());
        let paths: Vec<&str> = r.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/logger",
                "/metrics",
                "/machine-config",
                "/boot-source",
                "/drives/root",
                "/drives/state",
                "/network-interfaces/eth0",
                "/entropy",
                "/actions"
            ]
        );
        let boot = &r[3].2;
        let args = boot["boot_args"].as_str().unwrap();
        assert!(
            args.contains("console=ttyS0") && args.contains("root=/dev/vda"),
            "{args}"
        );
        assert!(!args.contains("virtio_mmio.device"), "{args}");
        assert_eq!(r[4].2["is_read_only"], true);
        assert_eq!(r[5].2["is_read_only"], false);
        assert_eq!(r[6].2["host_dev_name"], "tap0");
        assert_eq!(r[6].2["guest_mac"], polydev_core::guest::GUEST_MAC);
        let a = fc.firecracker_args(&spec()).join(" ");
        assert_eq!(
            a,
            "--api-sock /var/lib/polydev/vms/vm_1/firecracker.sock --level Off --id vm-1"
        );
    }

    #[test]
    fn restore_loads_memory_from_file_and_resumes() {
        let fc = Firecracker::new("/usr/bin/firecracker".into());
        let snap = SnapshotMeta {
            layout_version: snapshot::LAYOUT_VERSION,
            vmm: VmmKind::Firecracker,
            vmm_version: "Firecracker v1.16.0".into(),
            format: "v10.0.0".into(),
            files: vec![SNAPSHOT_STATE.into(), SNAPSHOT_MEMORY.into()],
            created_unix_ms: 0,
            create_ms: 0,
            spec: SpecEssentials::of(&spec()),
            dir: "/snaps/s1".into(),
        };
        let r = fc.restore_requests(&spec(), &snap);
        let load = &r[2].2;
        assert_eq!(r[2].1, "/snapshot/load");
        assert_eq!(load["snapshot_path"], "/snaps/s1/vmstate");
        assert_eq!(load["mem_backend"]["backend_path"], "/snaps/s1/memory");
        assert_eq!(load["resume_vm"], true);
        assert_eq!(load["network_overrides"][0]["host_dev_name"], "tap0");
    }

    #[test]
    fn jailed_paths_live_under_the_chroot() {
        let mut fc = Firecracker::new("/usr/bin/firecracker".into());
        fc.jailer = Some(JailerConfig {
            binary: "/usr/bin/jailer".into(),
            uid: 1000,
            gid: 1000,
            chroot_base: Some("/srv/jailer".into()),
            parent_cgroup: None,
            cgroup_version: 2,
        });
        assert_eq!(
            fc.socket_path(&spec()),
            Path::new(
                "/srv/jailer/firecracker/vm-1/root/var/lib/polydev/vms/vm_1/firecracker.sock"
            )
        );
        assert!(!fc.firecracker_args(&spec()).contains(&"--id".to_string()));
    }

    #[test]
    fn find_binary_honours_the_environment() {
        // Only checks a set-but-missing path yields None (the environment is
        // process-wide, so the PATH case is left to the driver tests).
        if std::env::var_os("POLYDEV_FIRECRACKER").is_none() {
            assert!(is_executable(Path::new("/bin/sh")));
            assert!(!is_executable(Path::new("/nonexistent/firecracker")));
        }
    }
}
