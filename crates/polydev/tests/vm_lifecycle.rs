//! Real VMs under QEMU (TCG where KVM cannot run guests): boot to a ready
//! agent, destroy without leftovers, a VM whose agent never starts, and a
//! controller killed and restarted with VMs running.
//!
//! Needs root, the guest kernel and the minimal image (`polydev kernel build`,
//! `polydev image build minimal`; the README's test command does both).

mod common;
use common::{agent_health, processes_mentioning, token_of, Controller};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(420);

fn assert_gone(c: &Controller, id: &str, netns: &str) {
    assert!(
        processes_mentioning(&format!("{}/", c.vm_dir(id).display())).is_empty(),
        "VMM of {id} still running"
    );
    assert!(
        !polydev_net::netns::exists(netns),
        "namespace {netns} still exists"
    );
    assert!(
        !polydev_net::tap::exists(netns, "tap0"),
        "TAP of {id} still exists"
    );
}

/// The VMM `pid` runs confined: its seccomp filter is on and it is no longer
/// root (QEMU drops to its account once it has opened the VM's files).
fn assert_vmm_confined(pid: i64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(
        field("Seccomp:"),
        ["2"],
        "the VMM runs without its seccomp filter:\n{status}"
    );
    // Real, effective, saved and file-system ids: none is root.
    for ids in ["Uid:", "Gid:"] {
        assert!(
            field(ids).iter().all(|id| id != "0"),
            "the VMM still runs as root:\n{status}"
        );
    }
    assert_eq!(
        field("CapEff:"),
        ["0000000000000000"],
        "the VMM kept capabilities:\n{status}"
    );
}

#[test]
fn vm_boots_agent_answers_and_destroy_leaves_nothing() {
    let c = Controller::start(&[]);
    let id = c.create_vm("cli", "alice");
    let v = c.wait_settled(&id, BOOT);
    assert_eq!(
        v["status"],
        "running",
        "VM failed: {v}\nconsole:\n{}",
        c.call("GET", &format!("/api/vms/{id}/console"), None).1
    );
    assert_eq!(v["userId"], "alice");
    assert_eq!(v["type"], "cli");
    let netns = v["netns"].as_str().unwrap().to_string();
    assert!(netns.starts_with(&c.netns_prefix()), "{netns}");
    assert!(v["kernelBootMs"].as_i64().unwrap() > 0, "{v}");
    assert!(v["agentReadyMs"].as_i64().is_some(), "{v}");

    // The VMM is confined: its seccomp filter is on, it is not root and it
    // sees none of the controller's environment.
    let pid = v["vmmPid"].as_i64().unwrap();
    assert_vmm_confined(pid);
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("POLYDEV_"),
        "the VMM inherited the controller's environment: {environ}"
    );
    assert!(environ.contains("PATH="), "{environ}");

    // The console was captured from the first byte and holds the readiness line.
    let (st, console) = c.call("GET", &format!("/api/vms/{id}/console"), None);
    assert_eq!(st, 200);
    let console = console.as_str().unwrap().to_string();
    assert!(
        console.contains("Linux version"),
        "console lacks the kernel banner"
    );
    assert!(
        console.contains("POLYDEV-AGENT-READY"),
        "console lacks the readiness line"
    );

    // The agent answers inside the VM's namespace, with its token only.
    let token = token_of(&c, &id);
    let (code, body) = agent_health(&netns, &token);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&id), "{body}");
    let (code, _) = agent_health(&netns, "not-the-token");
    assert_eq!(code, 401);
    // The TAP was created with IFF_VNET_HDR.
    let tap = polydev_net::tap::info(&netns, "tap0").unwrap();
    assert!(tap.vnet_hdr && tap.is_tap, "{tap:?}");

    // Nothing the controller keeps is readable by other accounts: the data
    // directory, the database, the VM's directory, disks and console log
    // (and the user's home disk, when the image has one).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let vm_dir = c.vm_dir(&id);
    let mut private = vec![
        (c.data_dir().to_path_buf(), 0o700),
        (c.data_dir().join("polydev.db"), 0o600),
        (c.data_dir().join("vms"), 0o700),
        (vm_dir.clone(), 0o700),
        (vm_dir.join("state.ext4"), 0o600),
        (vm_dir.join("console.log"), 0o600),
        (vm_dir.join("agent.json"), 0o600),
    ];
    let home = c.data_dir().join("users/alice/home.ext4");
    if home.exists() {
        private.push((home, 0o600));
    }
    for (p, want) in private {
        assert_eq!(mode(&p), want, "{} is {:o}", p.display(), mode(&p));
    }

    // Listing shows it.
    let (_, list) = c.call("GET", "/api/vms?userId=alice", None);
    assert_eq!(list["vms"].as_array().unwrap().len(), 1);

    let (st, d) = c.call("DELETE", &format!("/api/vms/{id}"), None);
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["status"], "destroyed");
    assert_gone(&c, &id, &netns);
    assert!(!c.vm_dir(&id).exists(), "VM directory still exists");
    assert_eq!(c.vm(&id)["status"], "destroyed");
    // Destroy is idempotent.
    assert_eq!(c.call("DELETE", &format!("/api/vms/{id}"), None).0, 200);
}

#[test]
fn vm_whose_agent_never_starts_fails_with_a_reason_and_keeps_its_log() {
    // systemd boots, but is told not to start the agent.
    let c = Controller::start(&[
        (
            "POLYDEV_EXTRA_KERNEL_ARGS",
            "systemd.mask=polydev-agent.service",
        ),
        ("POLYDEV_BOOT_TIMEOUT_SECS", "150"),
    ]);
    let id = c.create_vm("browser", "bob");
    let v = c.wait_settled(&id, BOOT);
    assert_eq!(v["status"], "failed", "{v}");
    let reason = v["failureReason"].as_str().unwrap();
    assert!(reason.contains("agent never started"), "reason: {reason}");
    let netns = v["netns"].as_str().unwrap();
    assert_gone(&c, &id, netns);
    // The console log is kept and served.
    let (st, console) = c.call("GET", &format!("/api/vms/{id}/console"), None);
    assert_eq!(st, 200);
    assert!(console.as_str().unwrap().contains("Linux version"));
    assert!(c.vm_dir(&id).join("console.log").exists());
    assert!(
        !c.vm_dir(&id).join("state.ext4").exists(),
        "state disk of a failed VM kept"
    );
    // Removing a failed VM removes its log too.
    assert_eq!(c.call("DELETE", &format!("/api/vms/{id}"), None).0, 200);
    assert!(!c.vm_dir(&id).exists());
}

#[test]
fn kernel_panic_is_named() {
    let c = Controller::start(&[("POLYDEV_EXTRA_KERNEL_ARGS", "init=/polydev-no-such-init")]);
    // The polydev init is replaced by one that does not exist: the kernel panics.
    let id = c.create_vm("cli", "carol");
    let v = c.wait_settled(&id, BOOT);
    assert_eq!(v["status"], "failed", "{v}");
    let reason = v["failureReason"].as_str().unwrap();
    assert!(reason.starts_with("kernel panic"), "reason: {reason}");
    assert_gone(&c, &id, v["netns"].as_str().unwrap());
}

#[test]
fn restarted_controller_readopts_live_vms_and_reclaims_dead_ones() {
    let mut c = Controller::start(&[]);
    let a = c.create_vm("cli", "dave");
    let b = c.create_vm("cli", "erin");
    let va = c.wait_settled(&a, BOOT);
    let vb = c.wait_settled(&b, BOOT);
    assert_eq!(va["status"], "running", "{va}");
    assert_eq!(vb["status"], "running", "{vb}");
    let (ns_a, ns_b) = (
        va["netns"].as_str().unwrap().to_string(),
        vb["netns"].as_str().unwrap().to_string(),
    );

    // The controller dies hard; then B's VMM dies too while nobody watches.
    c.kill();
    let pid_b = vb["vmmPid"].as_i64().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid_b.to_string()])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    c.spawn();

    let va2 = c.vm(&a);
    assert_eq!(va2["status"], "running", "{va2}");
    assert_eq!(
        va2["vmmPid"], va["vmmPid"],
        "A was restarted instead of re-adopted"
    );
    let (code, body) = agent_health(&ns_a, &token_of(&c, &a));
    assert_eq!(code, 200, "{body}");

    let vb2 = c.vm(&b);
    assert_eq!(vb2["status"], "failed", "{vb2}");
    assert!(
        vb2["failureReason"].as_str().unwrap().contains("gone"),
        "{vb2}"
    );
    assert_gone(&c, &b, &ns_b);
    assert!(
        c.vm_dir(&b).join("console.log").exists(),
        "B's console log was not kept"
    );

    // A still works normally after the restart: destroy it.
    assert_eq!(c.call("DELETE", &format!("/api/vms/{a}"), None).0, 200);
    assert_gone(&c, &a, &ns_a);
}

#[test]
fn vm_hibernates_and_resumes_without_rebooting() {
    let c = Controller::start(&[]);
    let id = c.create_vm("cli", "frank");
    let v = c.wait_settled(&id, BOOT);
    assert_eq!(v["status"], "running", "{v}");
    let netns = v["netns"].as_str().unwrap().to_string();
    let token = token_of(&c, &id);
    let (code, before) = agent_health(&netns, &token);
    assert_eq!(code, 200, "{before}");
    // Unprivileged QEMU writes its snapshot into a file it cannot open (the
    // controller hands it the descriptor) and is restored the same way.
    assert_vmm_confined(v["vmmPid"].as_i64().unwrap());

    let (st, h) = c.call("POST", &format!("/api/vms/{id}/hibernate"), None);
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["status"], "hibernated");
    assert!(
        processes_mentioning(&format!("{}/", c.vm_dir(&id).display())).is_empty(),
        "VMM still running while hibernated"
    );
    assert!(c.vm_dir(&id).join("snapshot/snapshot.json").exists());
    // Only a running VM hibernates; only a hibernated one resumes.
    let (st, b) = c.call("POST", &format!("/api/vms/{id}/hibernate"), None);
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{b}"
    );

    // The guest's clock stands still while it sleeps; resuming sets it.
    std::thread::sleep(std::time::Duration::from_secs(20));
    let (st, r) = c.call("POST", &format!("/api/vms/{id}/resume"), None);
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "running");
    let (code, after) = agent_health(&netns, &token);
    assert_eq!(code, 200, "{after}");
    let resumed = c.vm(&id)["vmmPid"].as_i64().unwrap();
    assert_ne!(Some(resumed), v["vmmPid"].as_i64(), "a new VMM restored it");
    assert_vmm_confined(resumed);
    common::connect::assert_guest_clock_near_host(&netns, &token, 10);
    // The restored QEMU still writes the VM's disk (opened before the drop).
    let (code, out, err) = common::connect::exec(
        &netns,
        &token,
        &[
            "sh",
            "-c",
            "echo resumed > /var/tmp/after-resume && sync && cat /var/tmp/after-resume",
        ],
        None,
    );
    assert_eq!((code, out.trim()), (0, "resumed"), "{err}");
    let uptime = |body: &str| -> u64 {
        let json = &body[body.find('{').unwrap()..];
        serde_json::from_str::<serde_json::Value>(json).unwrap()["uptimeMs"]
            .as_u64()
            .unwrap()
    };
    assert!(
        uptime(&after) >= uptime(&before),
        "the guest rebooted: {before} then {after}"
    );
    let console = std::fs::read_to_string(c.vm_dir(&id).join("console.log")).unwrap();
    assert_eq!(
        console.matches("Linux version").count(),
        1,
        "the kernel booted twice"
    );
    let (st, b) = c.call("POST", &format!("/api/vms/{id}/resume"), None);
    assert_eq!(st, 409, "{b}");

    assert_eq!(c.call("DELETE", &format!("/api/vms/{id}"), None).0, 200);
    assert_gone(&c, &id, &netns);
}

#[test]
fn vm_whose_vmm_dies_while_running_is_failed_and_reclaimed() {
    let c = Controller::start(&[]);
    let id = c.create_vm("cli", "grace");
    let v = c.wait_settled(&id, BOOT);
    assert_eq!(v["status"], "running", "{v}");
    let pid = v["vmmPid"].as_i64().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let start = std::time::Instant::now();
    let v = loop {
        let v = c.vm(&id);
        let reclaimed = v["status"] == "failed" && v["slotReleased"] == true;
        if reclaimed || start.elapsed() > Duration::from_secs(30) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(v["status"], "failed", "{v}");
    let reason = v["failureReason"].as_str().unwrap();
    assert!(
        reason.contains("VMM exited while running") && reason.contains(&pid.to_string()),
        "{reason}"
    );
    assert_gone(&c, &id, v["netns"].as_str().unwrap());
    assert!(c.vm_dir(&id).join("console.log").exists());
    assert!(c.vm_dir(&id).join("vmm.log").exists());
}
