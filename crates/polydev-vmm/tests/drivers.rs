//! One suite every VMM driver passes against a real guest: boot to the
//! agent, pause and resume, snapshot and restore (the guest keeps running,
//! it does not reboot), an incompatible snapshot refused, and destroy with
//! nothing left behind. QEMU runs under TCG here; Firecracker runs when a
//! binary is available (`POLYDEV_FIRECRACKER=/path` or on `PATH`) and is
//! skipped with a plain message otherwise.

use polydev_core::guest::{AgentConfig, AGENT_PORT, READY_MARKER};
use polydev_vmm::accel::Accel;
use polydev_vmm::bench::{agent_health, wait_agent};
use polydev_vmm::process::{self, VmmProcess};
use polydev_vmm::{SnapshotMeta, VmSpec, Vmm};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BOOT_DEADLINE: Duration = Duration::from_secs(240);
const RESTORE_DEADLINE: Duration = Duration::from_secs(120);

/// Everything one test made; removed on drop even when the test fails.
struct Guard {
    ns: String,
    dir: tempfile::TempDir,
    pids: Vec<u32>,
    vmm: Option<Box<dyn Vmm>>,
    spec: Option<VmSpec>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let marker = self.dir.path().display().to_string();
        for pid in self.pids.drain(..) {
            let _ = process::stop(pid, &marker, Duration::from_secs(2));
        }
        for pid in process::find_by_marker(&marker) {
            let _ = process::stop(pid, &marker, Duration::from_secs(2));
        }
        if let (Some(v), Some(s)) = (&self.vmm, &self.spec) {
            let _ = v.cleanup(s);
        }
        let _ = polydev_net::teardown_vm_network(&self.ns);
    }
}

fn setup(vmm: Box<dyn Vmm>) -> (Guard, VmSpec, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let ns = format!(
        "pdvt-{}-{}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::SeqCst)
    );
    let dir = tempfile::Builder::new()
        .prefix("polydev-vmm-test-")
        .tempdir()
        .unwrap();
    let mut g = Guard {
        ns: ns.clone(),
        dir,
        pids: vec![],
        vmm: None,
        spec: None,
    };
    let cache = polydev_image::cache_dir_from_env();
    let kernel = polydev_image::kernel::locate(&cache)
        .unwrap()
        .expect("guest kernel (run `polydev kernel build`)");
    let image = polydev_image::rootfs::latest(polydev_image::rootfs::Flavour::Minimal, &cache)
        .unwrap()
        .expect("minimal image (run `polydev image build`)");
    let vm_dir = g.dir.path().join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let token = format!("tok-{ns}");
    let cfg = AgentConfig {
        vm_id: format!("vm_{ns}"),
        token: token.clone(),
        port: AGENT_PORT,
    };
    let json = serde_json::to_vec(&cfg).unwrap();
    let spec = VmSpec {
        vm_id: cfg.vm_id.clone(),
        dir: vm_dir.clone(),
        kernel: kernel.path,
        rootfs: image.path,
        state_disk: vm_dir.join("state.ext4"),
        home_disk: None,
        vcpus: 1,
        memory_mb: 512,
        netns: ns.clone(),
        extra_kernel_args: vec![],
    };
    polydev_image::state_disk::make_state_disk(
        &spec.state_disk,
        256,
        &[(polydev_core::guest::AGENT_CONFIG_REL, &json, 0o600)],
    )
    .unwrap();
    polydev_net::setup_vm_network(&ns).unwrap();
    g.vmm = Some(vmm);
    g.spec = Some(spec.clone());
    (g, spec, token)
}

fn logs(spec: &VmSpec) -> String {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let tail = |s: String| {
        s.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "--- console (tail) ---\n{}\n--- vmm log ---\n{}",
        tail(read(spec.console_path())),
        tail(read(spec.vmm_log_path()))
    )
}

fn uptime(v: &serde_json::Value) -> u64 {
    v["uptimeMs"].as_u64().expect("uptimeMs in /health")
}

fn run_suite(mut g: Guard, spec: VmSpec, token: String) {
    let vmm = g.vmm.take().unwrap();
    let name = vmm.kind();
    let marker = spec.dir.display().to_string();

    // Boot and agent ready: the console line and an authenticated /health.
    let t = Instant::now();
    let p: VmmProcess = vmm
        .start(&spec)
        .unwrap_or_else(|e| panic!("{name} start: {e}"));
    g.pids.push(p.pid);
    let health = wait_agent(&spec, &p, &token, BOOT_DEADLINE)
        .unwrap_or_else(|e| panic!("{name} boot: {e}\n{}", logs(&spec)));
    let console = std::fs::read_to_string(spec.console_path()).unwrap();
    assert!(console.contains(READY_MARKER), "{}", logs(&spec));
    assert_eq!(health["vmId"], spec.vm_id.as_str());
    eprintln!("{name}: agent ready after {} ms", t.elapsed().as_millis());

    // Pause: the agent does not answer; resume: it does.
    vmm.pause(&spec, &p).unwrap();
    let r = agent_health(&spec.netns, &token, Duration::from_secs(2));
    assert!(r.is_err(), "{name}: agent answered while paused: {r:?}");
    vmm.resume(&spec, &p).unwrap();
    let h1 = agent_health(&spec.netns, &token, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{name} after resume: {e}\n{}", logs(&spec)));

    // Snapshot leaves the VM stopped; restore resumes the same guest.
    let snap_dir = g.dir.path().join("snapshot");
    let t = Instant::now();
    let meta = vmm
        .snapshot(&spec, &p, &snap_dir)
        .unwrap_or_else(|e| panic!("{name} snapshot: {e}\n{}", logs(&spec)));
    eprintln!("{name}: snapshot written in {} ms", t.elapsed().as_millis());
    assert!(
        !process::is_alive(p.pid, &marker),
        "{name}: VMM alive after snapshot"
    );
    assert!(agent_health(&spec.netns, &token, Duration::from_secs(1)).is_err());
    let loaded = SnapshotMeta::load(&snap_dir).unwrap();
    assert_eq!(loaded, meta);
    assert_eq!(loaded.vmm, name);
    assert!(!loaded.vmm_version.is_empty());

    // A snapshot from another version is refused before anything starts.
    let mut other = loaded.clone();
    other.vmm_version.push_str("-other");
    let e = vmm.restore(&spec, &other).unwrap_err().to_string();
    assert!(e.contains("incompatible snapshot"), "{e}");
    assert!(process::find_by_marker(&marker).is_empty());

    let t = Instant::now();
    let p2 = vmm
        .restore(&spec, &loaded)
        .unwrap_or_else(|e| panic!("{name} restore: {e}\n{}", logs(&spec)));
    g.pids.push(p2.pid);
    let h2 = wait_agent(&spec, &p2, &token, RESTORE_DEADLINE)
        .unwrap_or_else(|e| panic!("{name} after restore: {e}\n{}", logs(&spec)));
    eprintln!(
        "{name}: agent answered {} ms after restore; uptime {} -> {} ms",
        t.elapsed().as_millis(),
        uptime(&h1),
        uptime(&h2)
    );
    assert!(
        uptime(&h2) >= uptime(&h1),
        "{name}: guest rebooted: {h1} then {h2}"
    );
    let console = std::fs::read_to_string(spec.console_path()).unwrap();
    assert_eq!(
        console.matches("Linux version").count(),
        1,
        "{name}: the guest booted twice\n{}",
        logs(&spec)
    );

    // Pause and resume work on the restored VM too.
    vmm.pause(&spec, &p2).unwrap();
    assert!(agent_health(&spec.netns, &token, Duration::from_secs(2)).is_err());
    vmm.resume(&spec, &p2).unwrap();
    agent_health(&spec.netns, &token, Duration::from_secs(20)).unwrap();

    // Destroy: nothing left.
    process::stop(p2.pid, &marker, Duration::from_secs(3)).unwrap();
    vmm.cleanup(&spec).unwrap();
    polydev_net::teardown_vm_network(&spec.netns).unwrap();
    assert!(!process::is_alive(p2.pid, &marker));
    assert!(process::find_by_marker(&marker).is_empty());
    assert!(!polydev_net::netns::exists(&spec.netns));
    g.vmm = Some(vmm);
}

#[test]
fn qemu_driver() {
    let vmm = polydev_vmm::qemu::Qemu::new(Accel::Tcg);
    let (g, spec, token) = setup(Box::new(vmm));
    run_suite(g, spec, token);
}

#[test]
fn firecracker_driver() {
    let Some(bin) = polydev_vmm::firecracker::find_binary() else {
        println!("SKIPPED: firecracker driver: no firecracker binary (set POLYDEV_FIRECRACKER)");
        eprintln!("SKIPPED: firecracker driver: no firecracker binary (set POLYDEV_FIRECRACKER)");
        return;
    };
    let vmm = polydev_vmm::firecracker::Firecracker::new(bin);
    let (g, spec, token) = setup(Box::new(vmm));
    run_suite(g, spec, token);
}

/// The Firecracker driver's API conversation, process handling, snapshot
/// files and error reporting, against a stand-in that speaks Firecracker's
/// HTTP API (no guest runs): this part of the driver is checked on every
/// host, with or without a real binary.
#[test]
fn firecracker_driver_against_a_fake_api() {
    use polydev_vmm::firecracker::Firecracker;
    static N: AtomicU32 = AtomicU32::new(100);
    let ns = format!(
        "pdvt-{}-{}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::SeqCst)
    );
    let dir = tempfile::Builder::new()
        .prefix("polydev-vmm-fake-")
        .tempdir()
        .unwrap();
    let mut g = Guard {
        ns: ns.clone(),
        dir,
        pids: vec![],
        vmm: None,
        spec: None,
    };
    polydev_net::setup_vm_network(&ns).unwrap();
    let fake =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-firecracker");
    let driver = |name: &str, fail: &str| {
        let log = g.dir.path().join(format!("{name}.requests"));
        let wrapper = g.dir.path().join(format!("firecracker-{name}"));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nFAKE_FC_LOG='{}' FAKE_FC_FAIL_PATH='{fail}' exec '{}' \"$@\"\n",
                log.display(),
                fake.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        (Firecracker::new(wrapper), log)
    };
    let requests = |log: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let paths = |r: &[serde_json::Value]| -> Vec<String> {
        r.iter()
            .map(|v| {
                format!(
                    "{} {}",
                    v["method"].as_str().unwrap(),
                    v["path"].as_str().unwrap()
                )
            })
            .collect()
    };
    let vm_dir = g.dir.path().join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let spec = VmSpec {
        vm_id: "vm_fake".into(),
        dir: vm_dir.clone(),
        kernel: "/k/vmlinux".into(),
        rootfs: "/i/rootfs.ext4".into(),
        state_disk: vm_dir.join("state.ext4"),
        home_disk: None,
        vcpus: 1,
        memory_mb: 512,
        netns: ns.clone(),
        extra_kernel_args: vec![],
    };
    let marker = vm_dir.display().to_string();

    let (fc, log) = driver("ok", "");
    let p = fc.start(&spec).unwrap();
    g.pids.push(p.pid);
    let r = requests(&log);
    assert_eq!(
        paths(&r),
        [
            "PUT /logger",
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/root",
            "PUT /drives/state",
            "PUT /network-interfaces/eth0",
            "PUT /entropy",
            "PUT /actions"
        ]
    );
    assert_eq!(r[4]["body"]["path_on_host"], "/i/rootfs.ext4");
    assert_eq!(r[8]["body"]["action_type"], "InstanceStart");
    assert!(process::is_alive(p.pid, &marker));
    // The guest's serial output (Firecracker's stdout) is the console log.
    let start = Instant::now();
    while !std::fs::read_to_string(spec.console_path())
        .unwrap_or_default()
        .contains("Linux version fake")
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "console not captured"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    fc.pause(&spec, &p).unwrap();
    fc.resume(&spec, &p).unwrap();
    let r = requests(&log);
    assert_eq!(r[9]["body"]["state"], "Paused");
    assert_eq!(r[10]["body"]["state"], "Resumed");

    let snap_dir = g.dir.path().join("snap");
    let meta = fc.snapshot(&spec, &p, &snap_dir).unwrap();
    assert!(
        !process::is_alive(p.pid, &marker),
        "VMM alive after snapshot"
    );
    assert_eq!(meta.vmm_version, "Firecracker v1.16.0-fake");
    assert_eq!(meta.format, "v10.0.0");
    let r = requests(&log);
    assert_eq!(paths(&r[11..]), ["PATCH /vm", "PUT /snapshot/create"]);
    assert_eq!(r[12]["body"]["snapshot_type"], "Full");
    let loaded = SnapshotMeta::load(&snap_dir).unwrap();

    std::fs::remove_file(&log).unwrap();
    let p2 = fc.restore(&spec, &loaded).unwrap();
    g.pids.push(p2.pid);
    let r = requests(&log);
    assert_eq!(
        paths(&r),
        ["PUT /logger", "PUT /metrics", "PUT /snapshot/load"]
    );
    let load = &r[2]["body"];
    assert_eq!(
        load["snapshot_path"],
        snap_dir.join("vmstate").display().to_string()
    );
    assert_eq!(load["mem_backend"]["backend_type"], "File");
    assert_eq!(load["resume_vm"], true);
    process::stop(p2.pid, &marker, Duration::from_secs(2)).unwrap();
    // A snapshot from another VMM kind is refused.
    let e = polydev_vmm::qemu::Qemu::new(Accel::Tcg)
        .restore(&spec, &loaded)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("written by firecracker, this driver is qemu"),
        "{e}"
    );

    // A refused request fails the start with the fault message verbatim, and
    // the process is stopped.
    let (bad, _) = driver("bad", "/drives/state");
    let e = bad.start(&spec).unwrap_err().to_string();
    assert_eq!(
        e,
        "firecracker PUT /drives/state: Invalid block device path: fake refusal"
    );
    assert!(process::find_by_marker(&marker).is_empty());
}
