//! A real `polydev serve` for integration tests: its own data directory, a
//! free loopback port, an API key, and cleanup of every VM, namespace and
//! process it made, even when the test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod connect;

/// `tests/browser`: the scripts that drive headless Chromium.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `npm ci` in `tests/browser` when playwright-core is not installed yet
/// (`scripts/test.sh` installs it before any test starts; this is for a
/// test run by hand). One at a time in a process: two installs into one
/// `node_modules` would trip over each other.
pub fn npm_ready() {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .expect("running npm (Node.js is needed for the browser tests)");
    assert!(
        out.status.success(),
        "npm ci in {} failed (run it there before the tests, as scripts/test.sh does): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
pub mod internet;

pub const BIN: &str = env!("CARGO_BIN_EXE_polydev");

pub struct Controller {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub key: String,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Controller {
    /// Starts a controller with extra environment variables.
    pub fn start(env: &[(&str, &str)]) -> Controller {
        let dir = tempfile::Builder::new()
            .prefix("polydev-test-")
            .tempdir()
            .unwrap();
        let mut c = Controller {
            dir,
            port: free_port(),
            key: String::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        let out = c.cli(&["apikey", "create", "--name", "test"]);
        c.key = out.trim().to_string();
        assert!(c.key.starts_with("pdk_"), "apikey create printed {out:?}");
        c.spawn();
        c
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("POLYDEV_DATA_DIR", self.dir.path())
            .env("POLYDEV_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("POLYDEV_CLI_VCPUS", "1")
            .env("POLYDEV_CLI_MEMORY_MB", "512")
            .env("POLYDEV_BROWSER_VCPUS", "1")
            .env("POLYDEV_BROWSER_MEMORY_MB", "512")
            .env("POLYDEV_STATE_DISK_MB", "256")
            // Never the host's real default route: a test that wants egress
            // gives its own uplink (`common::internet`); DNS goes nowhere.
            .env("POLYDEV_EGRESS_UPLINK", "none")
            .env("POLYDEV_DNS_UPSTREAM", "127.0.0.1:9")
            .env_remove("DATABASE_URL");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a `polydev` subcommand against this data directory; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "polydev {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (Re)starts `polydev serve` and waits for /health.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("controller.log"))
            .unwrap();
        let child = self
            .command(&["serve"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if ureq::get(&self.url("/health")).call().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "controller did not answer /health in 60 s; log:\n{}",
            self.log()
        );
    }

    /// Kills the controller with SIGKILL (VMs keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// A request with the API key; returns (status, JSON body).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let req = ureq::request(method, &self.url(path))
            .set("Authorization", &format!("Bearer {}", self.key));
        let r = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub fn create_vm(&self, vm_type: &str, user: &str) -> String {
        let (st, v) = self.call(
            "POST",
            "/api/vms",
            Some(&format!(r#"{{"type":"{vm_type}","userId":"{user}"}}"#)),
        );
        assert_eq!(st, 202, "create VM: {v}");
        v["vmId"].as_str().unwrap().to_string()
    }

    pub fn vm(&self, id: &str) -> serde_json::Value {
        let (st, v) = self.call("GET", &format!("/api/vms/{id}"), None);
        assert_eq!(st, 200, "{v}");
        v
    }

    /// Waits until the VM leaves `creating` and, if it failed, until its
    /// resources are reclaimed (the slot is released); returns its record.
    pub fn wait_settled(&self, id: &str, timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let v = self.vm(id);
            let settled = match v["status"].as_str() {
                Some("creating") => false,
                Some("failed") => v["slotReleased"] == true,
                _ => true,
            };
            if settled {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "VM {id} not settled after {timeout:?}: {v}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The controller's host tag (its namespace, link and table names).
    pub fn tag(&self) -> String {
        self.netns_prefix()
            .trim_start_matches("pd")
            .trim_end_matches('-')
            .to_string()
    }

    pub fn netns_prefix(&self) -> String {
        use std::io::Write;
        // Same derivation as the controller's `Config::host_tag`.
        let mut h = std::process::Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        h.stdin
            .take()
            .unwrap()
            .write_all(self.dir.path().to_string_lossy().as_bytes())
            .unwrap();
        let out = h.wait_with_output().unwrap();
        format!("pd{}-", &String::from_utf8_lossy(&out.stdout)[..4])
    }

    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("vms").join(id)
    }
}

/// Live processes (zombies left out) whose command line mentions a needle.
pub use polydev_vmm::process::find_by_marker as processes_mentioning;

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
        let vms = format!("{}/vms/", self.dir.path().display());
        for pid in processes_mentioning(&vms) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        for ns in polydev_net::netns::list(&self.netns_prefix()) {
            let _ = polydev_net::teardown_vm_network(&ns);
        }
        let tag = self.tag();
        for l in polydev_net::veth::list_host_links(&format!("pe{tag}-")) {
            let _ = polydev_net::veth::delete_host_link(&l);
        }
        let _ = polydev_egress::nft::delete_table(
            polydev_egress::nft::Target::Host,
            "ip",
            &format!("polydev_{tag}"),
        );
    }
}

/// Asks the agent of a VM directly (inside its namespace) for /health with
/// `token`; returns the HTTP status line's code.
pub fn agent_health(netns: &str, token: &str) -> (u16, String) {
    agent_request(netns, token, "GET", "/health", None)
}

/// One HTTP/1.1 request to a VM's agent on a socket opened inside its
/// namespace; returns (status, the whole response).
pub fn agent_request(
    netns: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = format!(
        "{}:{}",
        polydev_core::guest::GUEST_ADDR,
        polydev_core::guest::AGENT_PORT
    )
    .parse()
    .unwrap();
    let mut s = polydev_net::netns::connect_tcp(netns, addr, Duration::from_secs(5))
        .expect("connect to agent");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: guest\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

pub fn token_of(c: &Controller, id: &str) -> String {
    let raw = std::fs::read(c.vm_dir(id).join("agent.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// `POST path` with a JSON body to a VM's agent; returns (status, JSON body).
pub fn agent_post(
    netns: &str,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let (code, out) = agent_request(netns, token, "POST", path, Some(body));
    let json = out.find("\r\n\r\n").map(|i| &out[i + 4..]).unwrap_or("");
    // Tolerate chunked encoding: take the outermost JSON object in the body.
    let json = match (json.find('{'), json.rfind('}')) {
        (Some(a), Some(z)) if a <= z => &json[a..=z],
        _ => "null",
    };
    (
        code,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}
