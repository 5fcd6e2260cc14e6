//! The connect flow's API: start, status, cancel, rate limit, failure with a
//! reason, and a controller restart in the middle of a session. These boot
//! the minimal image (`POLYDEV_ROOTFS`: no VNC, no provider login), so a
//! session that gets as far as the display check must fail there, saying so,
//! and leave nothing behind.

mod common;
use common::{processes_mentioning, Controller};
use std::time::{Duration, Instant};

/// A controller whose VMs all boot the minimal image.
fn controller(env: &[(&str, &str)]) -> Controller {
    let cache = polydev_image::cache_dir_from_env();
    let minimal = polydev_image::rootfs::latest(polydev_image::rootfs::Flavour::Minimal, &cache)
        .expect("reading the image cache")
        .expect("the minimal image is built (polydev image build minimal)");
    let rootfs = minimal.path.display().to_string();
    let mut all: Vec<(&str, &str)> = env.to_vec();
    all.push(("POLYDEV_ROOTFS", &rootfs));
    Controller::start(&all)
}

fn session(c: &Controller, id: &str) -> serde_json::Value {
    let (st, v) = c.call("GET", &format!("/api/auth/session/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v["session"].clone()
}

fn wait_terminal(c: &Controller, id: &str, timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = session(c, id);
        if ["completed", "failed", "timeout", "cancelled"].contains(&s["status"].as_str().unwrap())
        {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "session {id} still {} after {timeout:?}",
            s["status"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start(c: &Controller, user: &str, provider: &str) -> String {
    let (st, v) = c.call(
        "POST",
        "/api/auth/start",
        Some(&format!(r#"{{"userId":"{user}","provider":"{provider}"}}"#)),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["provider"], provider);
    assert!(v["novncURL"].is_null() && v["browserIP"].is_null(), "{v}");
    v["sessionId"].as_str().unwrap().to_string()
}

/// The browser VM is destroyed (right after the session ends: allow a few
/// seconds for the VMM to stop).
fn assert_vm_gone(c: &Controller, vm: &str) {
    let start = Instant::now();
    let v = loop {
        let v = c.vm(vm);
        if v["status"] == "destroyed" || start.elapsed() > Duration::from_secs(30) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v["status"], "destroyed", "{v}");
    assert!(processes_mentioning(&format!("{}/", c.vm_dir(vm).display())).is_empty());
    assert!(!polydev_net::netns::exists(v["netns"].as_str().unwrap()));
}

#[test]
fn bad_requests_and_unknown_sessions() {
    let c = controller(&[]);
    let (st, v) = c.call(
        "POST",
        "/api/auth/start",
        Some(r#"{"userId":"u1","provider":"copilot"}"#),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (422, Some("invalid_provider")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude_code"),
        "{v}"
    );
    let (st, v) = c.call("POST", "/api/auth/start", Some(r#"{"userId":"u1""#));
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("malformed_json")),
        "{v}"
    );
    let (st, v) = c.call("GET", "/api/auth/session/as_nope", None);
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (st, _) = c.call("DELETE", "/api/vm/auth/as_nope", None);
    assert_eq!(st, 404);
    let (_, v) = c.call("GET", "/api/vms?all=true", None);
    assert!(v["vms"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn start_is_rate_limited_per_user_with_retry_after() {
    let c = controller(&[
        ("POLYDEV_AUTH_RATE_LIMIT", "3"),
        ("POLYDEV_USER_MAX_SIGNINS", "2"),
    ]);
    let a = start(&c, "ratey", "codex");
    let b = start(&c, "ratey", "claude_code");
    // Two sessions in progress: the user's cap.
    let (st, v) = c.call(
        "POST",
        "/api/auth/start",
        Some(r#"{"userId":"ratey","provider":"gemini_cli"}"#),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (429, Some("user_limit")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POLYDEV_USER_MAX_SIGNINS"),
        "{v}"
    );
    let (st, v) = c.call("DELETE", &format!("/api/vm/auth/{a}"), None);
    assert_eq!(st, 200, "{v}");
    // Room again, but three starts in the window: the rate limit.
    let r = ureq::post(&c.url("/api/auth/start"))
        .set("Authorization", &format!("Bearer {}", c.key))
        .send_json(serde_json::json!({"userId": "ratey", "provider": "gemini_cli"}));
    let Err(ureq::Error::Status(429, resp)) = r else {
        panic!("third start was not limited")
    };
    let retry: u64 = resp
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let body: serde_json::Value = resp.into_json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another user is not affected.
    let other = start(&c, "someone-else", "codex");
    for id in [b, other] {
        let (st, v) = c.call("DELETE", &format!("/api/vm/auth/{id}"), None);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["session"]["status"], "cancelled");
    }
}

#[test]
fn cancel_destroys_the_browser_vm() {
    let c = controller(&[]);
    let id = start(&c, "canceller", "claude_code");
    // Cancel while the VM boots.
    let start = Instant::now();
    let vm = loop {
        let s = session(&c, &id);
        if let Some(vm) = s["browserVmId"].as_str() {
            break vm.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no browser VM recorded: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (st, v) = c.call("DELETE", &format!("/api/vm/auth/{id}"), None);
    assert_eq!(st, 200, "{v}");
    let s = session(&c, &id);
    assert_eq!(s["status"], "cancelled");
    assert!(s["completedAt"].is_i64());
    // The VM was destroyed, or the cancel came before it was created at all.
    if c.call("GET", &format!("/api/vms/{vm}"), None).0 == 404 {
        assert!(processes_mentioning(&vm).is_empty());
        assert!(!c.vm_dir(&vm).exists());
    } else {
        assert_vm_gone(&c, &vm);
    }
}

#[test]
fn a_browser_vm_without_a_display_fails_the_session_with_a_reason() {
    let c = controller(&[("POLYDEV_AUTH_DISPLAY_TIMEOUT_SECS", "5")]);
    let id = start(&c, "nodisplay", "codex");
    let s = wait_terminal(&c, &id, Duration::from_secs(420));
    assert_eq!(s["status"], "failed", "{s}");
    let msg = s["errorMessage"].as_str().unwrap();
    assert!(msg.contains("VNC") && msg.contains("5901"), "{msg}");
    assert!(s["consoleUrl"].as_str().unwrap().starts_with("/api/vms/"));
    assert_vm_gone(&c, s["browserVmId"].as_str().unwrap());
    assert!(c.call("GET", "/api/vms?userId=nodisplay", None).1["vms"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_session_whose_vm_died_with_the_controller_fails_cleanly_after_restart() {
    let mut c = controller(&[("POLYDEV_AUTH_DISPLAY_TIMEOUT_SECS", "600")]);
    let id = start(&c, "crashy", "gemini_cli");
    let start = Instant::now();
    let vm = loop {
        let s = session(&c, &id);
        if s["status"] == "vm_created" {
            let vm = s["browserVmId"].as_str().unwrap().to_string();
            // The id is recorded just before the VM itself: 404 until then.
            let (st, v) = c.call("GET", &format!("/api/vms/{vm}"), None);
            if st == 200 && v["status"] == "running" {
                break vm;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(420),
            "VM never ran: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    c.kill();
    for p in processes_mentioning(&format!("{}/", c.vm_dir(&vm).display())) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    c.spawn();
    let s = wait_terminal(&c, &id, Duration::from_secs(60));
    assert_eq!(s["status"], "failed", "{s}");
    assert!(
        s["errorMessage"].as_str().unwrap().contains("restarted"),
        "{s}"
    );
    assert_vm_gone(&c, &vm);
}
