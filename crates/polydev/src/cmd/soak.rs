//! `polydev soak`: crash the controller at random moments and check that it
//! leaks nothing. Each round starts one operation through the API (create,
//! hibernate, resume or destroy a VM, start a sign-in, start a prompt run),
//! SIGKILLs `polydev serve` a random time later, starts it again, lets the
//! work settle, and counts what is left over: VMM processes no running VM
//! owns, namespaces, host links and firewall elements no VM holds, VM
//! directories of destroyed VMs, slots held by nothing live, and VMs that
//! were running before the crash but not re-adopted after it. A controller
//! of its own, in a throwaway data directory, with the minimal image; no
//! real provider is reached (egress has no uplink). Prints each round and a
//! summary; exits non-zero when anything leaked.

use super::common::Common;
use anyhow::Context;
use clap::Args as ClapArgs;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `polydev soak`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Crash-and-restart rounds.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Seed of the random choices (operation, moment of the crash); printed,
    /// so a run can be repeated. Default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// The crash comes between 0 and this many ms after the operation starts.
    #[arg(long, default_value_t = 4000)]
    max_delay_ms: u64,
    /// Seconds the work of a round may take to settle after the restart.
    #[arg(long, default_value_t = 600)]
    settle_secs: u64,
}

/// A small, seedable generator (xorshift64*): the choices need only be
/// repeatable, not strong.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The controller under test.
struct Served {
    exe: PathBuf,
    dir: PathBuf,
    port: u16,
    key: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Served {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .env("POLYDEV_DATA_DIR", &self.dir)
            .env("POLYDEV_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("POLYDEV_EGRESS_UPLINK", "none")
            .env("POLYDEV_DNS_UPSTREAM", "127.0.0.1:9")
            .env("POLYDEV_CLI_VCPUS", "1")
            .env("POLYDEV_CLI_MEMORY_MB", "512")
            .env("POLYDEV_BROWSER_VCPUS", "1")
            .env("POLYDEV_BROWSER_MEMORY_MB", "512")
            .env("POLYDEV_STATE_DISK_MB", "256")
            .env("POLYDEV_CLI_IDLE_SECS", "86400")
            .env("POLYDEV_RUN_TIMEOUT_SECS", "120")
            .env_remove("DATABASE_URL");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Starts `polydev serve`; returns how long until it answered (its
    /// start-up reconciliation runs before it listens).
    fn start(&mut self) -> anyhow::Result<Duration> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("controller.log"))?;
        let t = Instant::now();
        let child = self
            .command(&["serve"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting polydev serve")?;
        self.child = Some(child);
        while t.elapsed() < Duration::from_secs(120) {
            if ureq::get(&self.url("/health"))
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok()
            {
                return Ok(t.elapsed());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                anyhow::bail!(
                    "polydev serve exited ({st}); see {}",
                    self.dir.join("controller.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("polydev serve did not answer /health in 120 s")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(&self.url(path), &self.key, method, body)
    }

    fn vms(&self) -> Vec<Value> {
        let (_, v) = self.call("GET", "/api/vms?all=true", None);
        v["vms"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

fn call(url: &str, key: &str, method: &str, body: Option<Value>) -> (u16, Value) {
    let req = ureq::request(method, url)
        .set("Authorization", &format!("Bearer {key}"))
        .timeout(Duration::from_secs(600));
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(resp) => (resp.status(), resp.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(s, resp)) => (s, resp.into_json().unwrap_or(Value::Null)),
        Err(e) => (0, Value::String(e.to_string())),
    }
}

/// What a round left behind that nothing owns.
fn leaks(s: &Served, tag: &str, running_before: &[String], spared: Option<&str>) -> Vec<String> {
    let vms = s.vms();
    let mut out = Vec::new();
    let status = |v: &Value| v["status"].as_str().unwrap_or("").to_string();
    let id = |v: &Value| v["vmId"].as_str().unwrap_or("").to_string();
    let holds_slot: Vec<&Value> = vms.iter().filter(|v| v["slotReleased"] == false).collect();
    // Slots: only live VMs hold one once the work has settled.
    for v in &holds_slot {
        if !matches!(status(v).as_str(), "running" | "hibernated") {
            out.push(format!(
                "slot {} held by VM {} ({})",
                v["slot"],
                id(v),
                status(v)
            ));
        }
    }
    // Processes: every VMM belongs to a running VM, by pid.
    let vms_dir = format!("{}/vms/", s.dir.display());
    for pid in polydev_vmm::process::find_by_marker(&vms_dir) {
        let owner = vms
            .iter()
            .find(|v| status(v) == "running" && v["vmmPid"].as_u64() == Some(pid as u64));
        if owner.is_none() {
            out.push(format!("VMM process {pid} owned by no running VM"));
        }
    }
    // Namespaces and host links: one per VM holding a slot.
    let held: Vec<String> = holds_slot
        .iter()
        .filter_map(|v| v["netns"].as_str().map(str::to_string))
        .collect();
    for ns in polydev_net::netns::list(&format!("pd{tag}-")) {
        if !held.contains(&ns) {
            out.push(format!("namespace {ns} held by no VM"));
        }
    }
    let links = polydev_net::veth::list_host_links(&format!("pe{tag}-"));
    if links.len() > holds_slot.len() {
        out.push(format!(
            "{} host links for {} VMs holding a slot: {links:?}",
            links.len(),
            holds_slot.len()
        ));
    }
    let elements = polydev_egress::nft::list_json(
        polydev_egress::nft::Target::Host,
        &["map", "ip", &format!("polydev_{tag}"), "source_map"],
    )
    .map(|v| {
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["map"]["elem"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    })
    .unwrap_or(0);
    if elements > holds_slot.len() {
        out.push(format!(
            "{elements} firewall source elements for {} VMs holding a slot",
            holds_slot.len()
        ));
    }
    // Files: a directory only for VMs that are not destroyed.
    if let Ok(dir) = std::fs::read_dir(s.dir.join("vms")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let kept = vms
                .iter()
                .any(|v| id(v) == name && status(v) != "destroyed");
            if !kept {
                out.push(format!("directory vms/{name} of no live or failed VM"));
            }
        }
    }
    // Re-adoption: what ran before the crash runs after it (but the VM the
    // crashed operation acted on, which may have moved on).
    for was in running_before {
        if Some(was.as_str()) == spared {
            continue;
        }
        match vms.iter().find(|v| &id(v) == was) {
            Some(v) if status(v) == "running" => {}
            Some(v) => out.push(format!(
                "VM {was} ran before the crash and is {} after it ({})",
                status(v),
                v["failureReason"].as_str().unwrap_or("")
            )),
            None => out.push(format!("VM {was} vanished")),
        }
    }
    out
}

/// Waits until no VM is `creating`, failed VMs are reclaimed, and the
/// round's sign-ins and runs have ended.
fn settle(
    s: &Served,
    sessions: &[String],
    runs: &[String],
    within: Duration,
) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let vms = s.vms();
        let busy_vm = vms.iter().any(|v| {
            v["status"] == "creating" || (v["status"] == "failed" && v["slotReleased"] == false)
        });
        let busy_session = sessions.iter().any(|id| {
            let (_, v) = s.call("GET", &format!("/api/auth/session/{id}"), None);
            let st = v["status"].as_str().unwrap_or("");
            !matches!(st, "completed" | "failed" | "cancelled" | "timeout" | "")
        });
        let busy_run = runs.iter().any(|id| {
            let (_, v) = s.call("GET", &format!("/api/runs/{id}"), None);
            matches!(
                v["status"].as_str().unwrap_or(""),
                "queued" | "starting" | "running"
            )
        });
        if !busy_vm && !busy_session && !busy_run {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < within,
            "work did not settle in {within:?} (VMs busy: {busy_vm}, sign-ins: {busy_session}, runs: {busy_run})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs the soak; `Err` when anything leaked or the controller misbehaved.
pub async fn run(a: Args) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || soak(a)).await?
}

fn soak(a: Args) -> anyhow::Result<()> {
    let cfg = a.common.config();
    let minimal =
        polydev_image::rootfs::latest(polydev_image::rootfs::Flavour::Minimal, &cfg.cache_dir)?
            .context("the minimal image is not built: run `polydev image build minimal`")?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1
    });
    let mut rng = Rng(seed);
    let tmp = tempfile::Builder::new().prefix("polydev-soak-").tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut env = vec![(
        "POLYDEV_ROOTFS".to_string(),
        minimal.path.display().to_string(),
    )];
    if let Some(k) = &cfg.kernel {
        env.push(("POLYDEV_KERNEL".into(), k.display().to_string()));
    }
    env.push((
        "POLYDEV_CACHE_DIR".into(),
        cfg.cache_dir.display().to_string(),
    ));
    let tag =
        polydev_controller::config::Config::with_data_dir(tmp.path().to_path_buf()).host_tag();
    // Dropped after the controller (declared before it): whatever the soak
    // left on the host goes, however the soak ends.
    let _leftovers = Leftovers {
        dir: tmp.path().to_path_buf(),
        tag: tag.clone(),
    };
    let mut s = Served {
        exe: std::env::current_exe()?,
        dir: tmp.path().to_path_buf(),
        port,
        key: String::new(),
        env,
        child: None,
    };
    let out = s
        .command(&["apikey", "create", "--name", "soak"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "apikey create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    s.start()?;
    let (st, v) = s.call(
        "PUT",
        "/api/credentials/soak-runs/codex",
        Some(json!({"apiKey": "sk-soak"})),
    );
    anyhow::ensure!(st == 200, "storing an API key for the runs: {v}");
    println!(
        "soak: {} rounds, seed {seed}, crash 0–{} ms after each operation; minimal image {}",
        a.rounds,
        a.max_delay_ms,
        minimal.path.display()
    );
    let settle_for = Duration::from_secs(a.settle_secs);
    let (mut all_leaks, mut reconcile_ms) = (Vec::new(), Vec::new());
    let (mut sessions, mut runs) = (Vec::new(), Vec::new());
    for round in 1..=a.rounds {
        let vms = s.vms();
        let with = |st: &str| -> Vec<String> {
            vms.iter()
                .filter(|v| v["status"] == st)
                .filter_map(|v| v["vmId"].as_str().map(str::to_string))
                .collect()
        };
        let (running, hibernated) = (with("running"), with("hibernated"));
        let live = running.len() + hibernated.len();
        // Operations that apply now.
        let mut ops: Vec<&str> = vec!["signin", "run"];
        if live < 2 {
            ops.push("create");
        }
        if !running.is_empty() {
            ops.push("hibernate");
        }
        if !hibernated.is_empty() {
            ops.push("resume");
        }
        if live > 0 {
            ops.push("destroy");
        }
        let op = ops[rng.below(ops.len() as u64) as usize];
        let pick = |v: &[String], r: &mut Rng| v.get(r.below(v.len() as u64) as usize).cloned();
        let target = match op {
            "hibernate" => pick(&running, &mut rng),
            "resume" => pick(&hibernated, &mut rng),
            "destroy" => {
                let all: Vec<String> = running.iter().chain(&hibernated).cloned().collect();
                pick(&all, &mut rng)
            }
            _ => None,
        };
        let (method, path, body) = match (op, &target) {
            ("create", _) => (
                "POST",
                "/api/vms".to_string(),
                Some(json!({"type": "cli", "userId": format!("soak-{round}")})),
            ),
            ("hibernate", Some(t)) => ("POST", format!("/api/vms/{t}/hibernate"), None),
            ("resume", Some(t)) => ("POST", format!("/api/vms/{t}/resume"), None),
            ("destroy", Some(t)) => ("DELETE", format!("/api/vms/{t}"), None),
            ("signin", _) => (
                "POST",
                "/api/auth/start".to_string(),
                Some(json!({"userId": format!("soak-signin-{round}"), "provider": "codex"})),
            ),
            _ => (
                "POST",
                "/api/runs".to_string(),
                Some(
                    json!({"userId": "soak-runs", "provider": "codex", "prompt": "say hello", "timeoutSecs": 60}),
                ),
            ),
        };
        let delay = Duration::from_millis(rng.below(a.max_delay_ms + 1));
        let (url, key) = (s.url(&path), s.key.clone());
        let started = std::thread::spawn(move || call(&url, &key, method, body));
        std::thread::sleep(delay);
        s.kill();
        let (st, answer) = started.join().unwrap_or((0, Value::Null));
        if let Some(id) = answer["sessionId"].as_str() {
            sessions.push(id.to_string());
        }
        if let Some(id) = answer["runId"].as_str() {
            runs.push(id.to_string());
        }
        let took = s.start()?;
        reconcile_ms.push(took.as_millis() as u64);
        // Sign-ins and runs are not waited for: they are cancelled, which
        // must leave nothing behind either.
        for id in &sessions {
            s.call("DELETE", &format!("/api/vm/auth/{id}"), None);
        }
        for id in &runs {
            s.call("POST", &format!("/api/runs/{id}/cancel"), None);
        }
        let settled = settle(&s, &sessions, &runs, settle_for);
        let mut found = leaks(&s, &tag, &running, target.as_deref());
        if let Err(e) = settled {
            found.push(e.to_string());
        }
        println!(
            "  round {round:>3}: {op:<9} {:<22} crash after {:>5} ms (answer {st})   restart {:>6} ms   leaks {}",
            target.as_deref().unwrap_or(""),
            delay.as_millis(),
            took.as_millis(),
            found.len()
        );
        for l in &found {
            println!("             leak: {l}");
        }
        all_leaks.extend(found.into_iter().map(|l| format!("round {round}: {l}")));
    }
    // Tear down through the API: afterwards nothing at all may remain.
    for v in s.vms() {
        if v["status"] != "destroyed" {
            s.call(
                "DELETE",
                &format!("/api/vms/{}", v["vmId"].as_str().unwrap_or("")),
                None,
            );
        }
    }
    let final_leaks = leaks(&s, &tag, &[], None);
    let left_dirs = std::fs::read_dir(s.dir.join("vms"))
        .map(|d| d.flatten().count())
        .unwrap_or(0);
    s.kill();
    all_leaks.extend(
        final_leaks
            .into_iter()
            .map(|l| format!("after teardown: {l}")),
    );
    if left_dirs > 0 {
        all_leaks.push(format!("after teardown: {left_dirs} VM directories left"));
    }
    reconcile_ms.sort_unstable();
    let pct = |p: usize| {
        reconcile_ms
            .get((reconcile_ms.len().saturating_sub(1)) * p / 100)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "soak: {} rounds, leaks found: {}, restart to answering (reconcile included) p50 {} ms, max {} ms; seed {seed}",
        a.rounds,
        all_leaks.len(),
        pct(50),
        pct(100)
    );
    if !all_leaks.is_empty() {
        anyhow::bail!("{} leaks:\n{}", all_leaks.len(), all_leaks.join("\n"));
    }
    Ok(())
}

/// Removes, when dropped, whatever a soak left on the host (processes,
/// namespaces, links, the firewall table), so that a failure does not
/// outlive the run.
struct Leftovers {
    dir: PathBuf,
    tag: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in polydev_vmm::process::find_by_marker(&format!("{}/vms/", self.dir.display())) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        for ns in polydev_net::netns::list(&format!("pd{}-", self.tag)) {
            let _ = polydev_net::teardown_vm_network(&ns);
        }
        for l in polydev_net::veth::list_host_links(&format!("pe{}-", self.tag)) {
            let _ = polydev_net::veth::delete_host_link(&l);
        }
        drop(super::common::HostTable(self.tag.clone()));
    }
}
