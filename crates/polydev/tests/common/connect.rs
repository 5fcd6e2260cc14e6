//! Helpers of the connect-flow tests: sessions through the API, commands in
//! a VM through its agent, and the VM's Chromium through `polydev-cdp`.

use super::{agent_post, processes_mentioning, Controller};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub fn session(c: &Controller, id: &str) -> Value {
    let (st, v) = c.call("GET", &format!("/api/auth/session/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v["session"].clone()
}

/// Waits for `status`; panics with the session and the log if it ends otherwise.
pub fn wait_status(c: &Controller, id: &str, status: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let s = session(c, id);
        let now = s["status"].as_str().unwrap_or_default().to_string();
        if now == status {
            return s;
        }
        let ended = ["completed", "failed", "timeout", "cancelled"].contains(&now.as_str());
        assert!(
            !ended && start.elapsed() < timeout,
            "session {id} is {now}, waiting for {status} ({:?}): {s}\nlog:\n{}",
            start.elapsed(),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs a command in a VM through its agent's `/exec`; returns (exit code, stdout, stderr).
pub fn exec(ns: &str, token: &str, argv: &[&str], user: Option<&str>) -> (i64, String, String) {
    let mut body = json!({ "argv": argv, "timeoutMs": 120_000 });
    if let Some(u) = user {
        body["user"] = u.into();
    }
    let (code, v) = agent_post(ns, token, "/exec", &body);
    assert_eq!(
        code, 200,
        "exec {argv:?} (0: no answer from the agent): {v}"
    );
    (
        v["exitCode"].as_i64().unwrap_or(-1),
        v["stdout"].as_str().unwrap_or_default().to_string(),
        v["stderr"].as_str().unwrap_or_default().to_string(),
    )
}

/// `polydev-cdp ARGS` in the browser VM, as the user Chromium runs as; retried
/// while Chromium is still starting.
pub fn cdp(ns: &str, token: &str, args: &[&str], retry_for: Duration) -> String {
    let start = Instant::now();
    // Node 20 has WebSocket behind a flag; giving it here saves polydev-cdp
    // from starting Node a second time with it.
    let mut argv = vec![
        "node",
        "--experimental-websocket",
        "--no-warnings",
        "/usr/local/bin/polydev-cdp",
    ];
    argv.extend_from_slice(args);
    loop {
        let (code, out, err) = exec(ns, token, &argv, Some("polydev"));
        eprintln!(
            "  polydev-cdp {} → exit {code} after {:?}",
            args.first().copied().unwrap_or_default(),
            start.elapsed()
        );
        if code == 0 {
            return out.trim().to_string();
        }
        assert_ne!(code, 2, "polydev-cdp {args:?}: usage error: {err}");
        assert!(
            start.elapsed() < retry_for,
            "polydev-cdp {args:?} kept failing: {err}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The browser VM's (id, namespace) once it exists.
pub fn browser_vm(c: &Controller, sid: &str) -> (String, String) {
    let start = Instant::now();
    loop {
        let s = session(c, sid);
        if let Some(vm) = s["browserVmId"].as_str() {
            // The id is recorded before the VM exists.
            let (st, rec) = c.call("GET", &format!("/api/vms/{vm}"), None);
            if let (200, Some(ns)) = (st, rec["netns"].as_str()) {
                if polydev_net::netns::exists(ns) {
                    return (vm.to_string(), ns.to_string());
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no browser VM namespace for {sid}: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the browser VM is gone: its record destroyed, no process, no namespace.
pub fn wait_browser_vm_gone(c: &Controller, vm: &str, ns: &str) {
    let start = Instant::now();
    loop {
        let rec = c.vm(vm);
        let gone = rec["status"] == "destroyed"
            && processes_mentioning(&format!("vms/{vm}/")).is_empty()
            && !polydev_net::netns::exists(ns);
        if gone {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "browser VM {vm} still there: {rec}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// In the guest: one line per process of Chromium's binary, `PID SECCOMP
/// USER-NAMESPACE COMMAND-LINE`, then `init USER-NAMESPACE` for the guest's
/// own user namespace.
const CHROMIUM_PROCESSES: &str = r#"for p in /proc/[0-9]*; do
  c=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
  case "$c" in
    /usr/lib/chromium/chromium*)
      s=$(sed -n 's/^Seccomp:[[:space:]]*//p' "$p/status" 2>/dev/null)
      echo "${p#/proc/} $s $(readlink "$p/ns/user") $c" ;;
  esac
done
echo "init $(readlink /proc/1/ns/user)""#;

/// Asserts that the guest's Chromium runs with its own sandbox: no
/// `--no-sandbox` on any of its command lines, and its renderers under a
/// seccomp filter (`Seccomp: 2`) in a user namespace of their own. Waits up
/// to `timeout` for a renderer to exist.
pub fn assert_chromium_sandboxed(ns: &str, token: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let (code, out, err) = exec(ns, token, &["sh", "-c", CHROMIUM_PROCESSES], None);
        assert_eq!(code, 0, "{err}");
        let init_ns = out
            .lines()
            .find_map(|l| l.strip_prefix("init "))
            .unwrap_or_default()
            .to_string();
        let procs: Vec<Vec<&str>> = out
            .lines()
            .filter(|l| !l.starts_with("init "))
            .map(|l| l.splitn(4, ' ').collect())
            .collect();
        let renderers: Vec<&Vec<&str>> = procs
            .iter()
            .filter(|p| p.len() == 4 && p[3].contains("--type=renderer"))
            .collect();
        if renderers.is_empty() {
            assert!(
                start.elapsed() < timeout,
                "no Chromium renderer in the guest after {:?}:\n{out}",
                start.elapsed()
            );
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        assert!(
            procs
                .iter()
                .any(|p| p.len() == 4 && !p[3].contains("--type=")),
            "no Chromium browser process:\n{out}"
        );
        for p in &procs {
            assert!(
                !p.join(" ").contains("--no-sandbox"),
                "Chromium runs without its sandbox:\n{out}"
            );
        }
        for r in renderers {
            assert_eq!(r[1], "2", "a renderer without its seccomp filter:\n{out}");
            assert!(
                !init_ns.is_empty() && r[2] != init_ns,
                "a renderer in the guest's own user namespace (no namespace sandbox):\n{out}"
            );
        }
        return;
    }
}

/// Asserts that the guest's wall clock is within `slack_s` seconds of the host's.
pub fn assert_guest_clock_near_host(ns: &str, token: &str, slack_s: i64) {
    let (code, out, err) = exec(ns, token, &["date", "+%s"], None);
    assert_eq!(code, 0, "{err}");
    let guest: i64 = out.trim().parse().unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (guest - host).abs() <= slack_s,
        "the guest's clock is {}s off the host's",
        guest - host
    );
}

/// The stand-in test image (`polydev image standins`: the browser image
/// whose CLIs sign in against the OAuth stand-in), built if needed.
pub fn standin_image() -> String {
    let out = std::process::Command::new(super::BIN)
        .args(["image", "standins"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "polydev image standins failed (is the browser image built?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
