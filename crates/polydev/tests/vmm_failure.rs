//! A VMM that exits names its root cause. On a host whose KVM cannot run
//! guests, a real Firecracker (v1.16.1, found at `POLYDEV_TEST_FIRECRACKER`
//! or /opt/firecracker-v1.16.1/firecracker) starts, its vCPU hits
//! KVM_EXIT_INTERNAL_ERROR and it exits 1 with nothing on the console: the
//! VM's failure names that line in words, and the console endpoint shows
//! the VMM's own log. Skipped (saying so) where no Firecracker binary is
//! installed or KVM runs guests here.

mod common;
use common::{processes_mentioning, Controller};
use std::time::Duration;

fn firecracker() -> Option<String> {
    let p = std::env::var("POLYDEV_TEST_FIRECRACKER")
        .unwrap_or_else(|_| "/opt/firecracker-v1.16.1/firecracker".into());
    std::path::Path::new(&p).exists().then_some(p)
}

#[test]
fn firecracker_on_a_kvm_that_cannot_run_guests_names_the_cause() {
    let Some(fc) = firecracker() else {
        eprintln!("SKIPPED: no Firecracker binary (set POLYDEV_TEST_FIRECRACKER)");
        return;
    };
    let c = Controller::start(&[
        ("POLYDEV_VMM", "firecracker"),
        ("POLYDEV_FIRECRACKER", fc.as_str()),
    ]);
    let id = c.create_vm("cli", "fc-user");
    let v = c.wait_settled(&id, Duration::from_secs(300));
    if v["status"] == "running" {
        eprintln!("SKIPPED: KVM runs guests on this host; nothing to diagnose");
        c.call("DELETE", &format!("/api/vms/{id}"), None);
        return;
    }
    assert_eq!(v["status"], "failed", "{v}");
    let reason = v["failureReason"].as_str().unwrap();
    eprintln!("failure reason: {reason}");
    assert!(
        reason.contains("Received KVM_EXIT_INTERNAL_ERROR signal"),
        "the first error, not the last line: {reason}"
    );
    assert!(reason.contains("cannot run guests"), "in words: {reason}");
    assert!(
        reason.contains("the kernel printed nothing on the console"),
        "{reason}"
    );
    let console = ureq::get(&c.url(&format!("/api/vms/{id}/console")))
        .set("Authorization", &format!("Bearer {}", c.key))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        console.contains("the guest printed nothing")
            && console.contains("KVM_EXIT_INTERNAL_ERROR"),
        "the console shows the VMM's own log: {console}"
    );
    let (st, _) = c.call("GET", &format!("/api/vms/{id}/vmm-log"), None);
    assert_eq!(st, 200);
    assert!(
        processes_mentioning(&format!("{}/", c.vm_dir(&id).display())).is_empty(),
        "the failed VM's VMM is gone"
    );
    let (st, _) = c.call("DELETE", &format!("/api/vms/{id}"), None);
    assert_eq!(st, 200);
}
