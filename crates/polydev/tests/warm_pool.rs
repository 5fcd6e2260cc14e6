//! The warm pool of browser VMs (`POLYDEV_BROWSER_POOL`), with the real
//! browser image and the real Codex CLI, under QEMU: the pool boots a VM,
//! waits for its Chromium, hibernates it; a sign-in session then takes that
//! very VM, resumed, not rebooted, with the guest's clock set to the host's,
//! and reaches `awaiting_user_auth` with Codex's URL; the pool makes another;
//! the reserved owner cannot be used by clients.

mod common;
use common::connect::{assert_guest_clock_near_host, wait_browser_vm_gone, wait_status};
use common::{token_of, Controller};
use serde_json::Value;
use std::time::{Duration, Instant};

fn pooled(c: &Controller) -> Vec<Value> {
    let (st, v) = c.call("GET", "/api/vms?userId=_pool", None);
    assert_eq!(st, 200, "{v}");
    v["vms"].as_array().cloned().unwrap_or_default()
}

fn wait_pooled(c: &Controller, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let vms = pooled(c);
        if ok(&vms) {
            return vms;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "the pool never had {what}: {vms:?}\nlog:\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn sessions_take_a_warm_vm_from_the_pool() {
    let c = Controller::start(&[
        ("POLYDEV_BROWSER_POOL", "1"),
        ("POLYDEV_BROWSER_MEMORY_MB", "1536"),
        ("POLYDEV_AUTH_URL_TIMEOUT_SECS", "600"),
    ]);
    // Clients cannot act as the pool.
    let (st, v) = c.call(
        "POST",
        "/api/auth/start",
        Some(r#"{"userId":"_pool","provider":"codex"}"#),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("invalid_user_id")),
        "{v}"
    );

    let warm = wait_pooled(&c, "a hibernated VM", |v| {
        v.iter().any(|x| x["status"] == "hibernated")
    });
    let warm_id = warm.iter().find(|x| x["status"] == "hibernated").unwrap()["vmId"]
        .as_str()
        .unwrap()
        .to_string();
    // Let the guest's clock fall behind while it sleeps.
    std::thread::sleep(Duration::from_secs(15));

    let started = Instant::now();
    let (st, v) = c.call(
        "POST",
        "/api/auth/start",
        Some(r#"{"userId":"warm-user","provider":"codex"}"#),
    );
    assert_eq!(st, 200, "{v}");
    let sid = v["sessionId"].as_str().unwrap().to_string();
    let s = wait_status(&c, &sid, "awaiting_user_auth", Duration::from_secs(600));
    eprintln!(
        "warm session: awaiting_user_auth after {:?}",
        started.elapsed()
    );
    assert_eq!(s["browserVmId"].as_str(), Some(warm_id.as_str()), "{s}");
    let url = s["authUrl"].as_str().unwrap_or_default();
    assert!(
        url.starts_with("https://auth.openai.com/oauth/authorize?"),
        "{url}"
    );

    let vm = c.vm(&warm_id);
    assert_eq!(vm["userId"], "warm-user", "{vm}");
    assert_eq!(vm["status"], "running", "{vm}");
    let ns = vm["netns"].as_str().unwrap().to_string();
    // Resumed, not booted again.
    let console = std::fs::read_to_string(c.vm_dir(&warm_id).join("console.log")).unwrap();
    assert_eq!(
        console.matches("Linux version").count(),
        1,
        "the kernel booted twice"
    );
    // The clock was set on resume.
    let token = token_of(&c, &warm_id);
    assert_guest_clock_near_host(&ns, &token, 10);

    // The pool makes a new VM for the next session.
    wait_pooled(&c, "a new VM", |v| {
        v.iter()
            .any(|x| x["vmId"] != warm_id.as_str() && x["status"] != "failed")
    });

    let (st, v) = c.call("DELETE", &format!("/api/vm/auth/{sid}"), None);
    assert_eq!(st, 200, "{v}");
    wait_browser_vm_gone(&c, &warm_id, &ns);
}
