//! `polydev kernel build` and `polydev image build|ls|check|bench`.

use clap::Subcommand;
use polydev_controller::runtime::Runtime;
use polydev_core::vm::{VmStatus, VmType};
use polydev_image::check::{self as guest_check, GuestCommand};
use polydev_image::manifest::Manifest;
use polydev_image::rootfs::{Flavour, ImageArtifact};
use polydev_store::VmRecord;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Kernel subcommands.
#[derive(Subcommand, Debug)]
pub enum KernelCommand {
    /// Build the guest kernel from Debian's linux-source-6.1 and the committed
    /// config fragment. Takes 10-20 minutes on 2 cores; cached afterwards.
    Build {
        /// Cache directory.
        #[arg(long, env = "POLYDEV_CACHE_DIR", default_value_t = polydev_controller::config::default_cache_dir())]
        cache_dir: String,
    },
}

/// Image subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build a golden image (mmdebstrap into a directory, then mkfs.ext4 -d).
    Build {
        /// Flavour: minimal, browser or cli.
        flavour: String,
        /// Cache directory.
        #[arg(long, env = "POLYDEV_CACHE_DIR", default_value_t = polydev_controller::config::default_cache_dir())]
        cache_dir: String,
        /// The guest agent binary; default: `polydev-agent` beside this binary.
        #[arg(long, env = "POLYDEV_AGENT_BIN")]
        agent: Option<PathBuf>,
    },
    /// Build the TEST image `standins-browser`: the newest browser image with
    /// `claude`, `codex` and `gemini` replaced by stand-ins that sign in
    /// against a local OAuth server (the connect-flow tests use it; never give
    /// it to users). Copies the image sparsely and writes the files with
    /// debugfs; seconds, cached.
    Standins {
        /// Cache directory.
        #[arg(long, env = "POLYDEV_CACHE_DIR", default_value_t = polydev_controller::config::default_cache_dir())]
        cache_dir: String,
    },
    /// List the built images with their size, CLIs and build time.
    Ls {
        /// Cache directory.
        #[arg(long, env = "POLYDEV_CACHE_DIR", default_value_t = polydev_controller::config::default_cache_dir())]
        cache_dir: String,
    },
    /// Boot the newest image of a flavour through the controller's runtime and
    /// check it: agent ready, X display, VNC handshake, Chromium renders, each
    /// CLI runs. Exits non-zero naming the checks that failed.
    Check {
        /// Flavour: minimal, browser or cli.
        flavour: String,
        /// Cache directory (kernel and images).
        #[arg(long, env = "POLYDEV_CACHE_DIR", default_value_t = polydev_controller::config::default_cache_dir())]
        cache_dir: String,
        /// Check this image file instead of the newest built one.
        #[arg(long)]
        image: Option<PathBuf>,
        /// Seconds the VM may take to become ready.
        #[arg(long, default_value_t = 300)]
        boot_timeout_secs: u64,
    },
    /// Print build, size, boot and create-cost figures (asserts nothing).
    Bench {
        /// Cache directory (kernel and images).
        #[arg(long, env = "POLYDEV_CACHE_DIR", default_value_t = polydev_controller::config::default_cache_dir())]
        cache_dir: String,
        /// VM creations per image size in the create-cost benchmark.
        #[arg(long, default_value_t = 9)]
        runs: usize,
        /// Skip booting images (only build, size and create-cost figures).
        #[arg(long)]
        no_boot: bool,
        /// The guest agent binary; default: `polydev-agent` beside this binary.
        #[arg(long, env = "POLYDEV_AGENT_BIN")]
        agent: Option<PathBuf>,
    },
}

/// Runs a kernel subcommand.
pub async fn kernel(c: KernelCommand) -> anyhow::Result<()> {
    match c {
        KernelCommand::Build { cache_dir } => {
            let k = tokio::task::spawn_blocking(move || {
                let mut p = polydev_image::StderrProgress::new("kernel");
                polydev_image::kernel::build(std::path::Path::new(&cache_dir), &mut p)
            })
            .await??;
            eprintln!(
                "kernel {} ({})",
                if k.cached { "cached" } else { "built" },
                k.hash
            );
            println!("{}", k.path.display());
        }
    }
    Ok(())
}

/// The agent binary shipped beside the running `polydev`.
pub fn default_agent_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("polydev-agent");
    if p.is_file() {
        Ok(p)
    } else {
        anyhow::bail!(
            "the guest agent binary {} does not exist: build it with `cargo build --release -p polydev-agent` or pass --agent",
            p.display()
        )
    }
}

/// Runs an image subcommand.
pub async fn image(c: ImageCommand) -> anyhow::Result<()> {
    match c {
        ImageCommand::Build {
            flavour,
            cache_dir,
            agent,
        } => {
            let flavour: Flavour = flavour.parse()?;
            let agent = match agent {
                Some(a) => a,
                None => default_agent_bin()?,
            };
            let img = tokio::task::spawn_blocking(move || {
                let mut p = polydev_image::StderrProgress::new("image");
                polydev_image::rootfs::build(
                    flavour,
                    std::path::Path::new(&cache_dir),
                    &agent,
                    &mut p,
                )
            })
            .await??;
            eprintln!(
                "image {flavour} {} ({})",
                if img.cached { "cached" } else { "built" },
                img.hash
            );
            println!("{}", img.path.display());
        }
        ImageCommand::Standins { cache_dir } => {
            let cache = PathBuf::from(cache_dir);
            let img = tokio::task::spawn_blocking(move || standin_image(&cache)).await??;
            eprintln!(
                "image {STANDIN_IMAGE} {} ({})",
                if img.cached { "cached" } else { "built" },
                img.hash
            );
            println!("{}", img.path.display());
        }
        ImageCommand::Ls { cache_dir } => list(Path::new(&cache_dir))?,
        ImageCommand::Check {
            flavour,
            cache_dir,
            image,
            boot_timeout_secs,
        } => {
            let flavour: Flavour = flavour.parse()?;
            let cache = PathBuf::from(cache_dir);
            let image = match image {
                Some(i) => i,
                None => newest(flavour, &cache)?.path,
            };
            check(
                flavour,
                &cache,
                &image,
                Duration::from_secs(boot_timeout_secs),
            )
            .await?;
        }
        ImageCommand::Bench {
            cache_dir,
            runs,
            no_boot,
            agent,
        } => {
            bench(Path::new(&cache_dir), runs.max(1), no_boot, agent).await?;
        }
    }
    Ok(())
}

/// Name of the stand-in test image in the cache.
pub const STANDIN_IMAGE: &str = "standins-browser";

/// Builds (or finds) the stand-in test image from the newest browser image.
pub fn standin_image(cache: &Path) -> anyhow::Result<ImageArtifact> {
    let base = newest(Flavour::Browser, cache)?;
    let files: Vec<polydev_image::derived::DerivedFile> = polydev_login::standins::image_files()
        .into_iter()
        .map(
            |(path, content, mode)| polydev_image::derived::DerivedFile {
                path,
                content: content.into_bytes(),
                mode,
            },
        )
        .collect();
    let mut p = polydev_image::StderrProgress::new("image");
    Ok(polydev_image::derived::build(
        STANDIN_IMAGE,
        &base,
        &files,
        cache,
        &mut p,
    )?)
}

fn newest(flavour: Flavour, cache: &Path) -> anyhow::Result<ImageArtifact> {
    polydev_image::rootfs::latest(flavour, cache)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no {flavour} image is built in {}: run `polydev image build {flavour}`",
            cache.display()
        )
    })
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// Bytes the file really occupies on disk.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

fn list(cache: &Path) -> anyhow::Result<()> {
    let mut any = false;
    for &flavour in Flavour::ALL {
        let Some(img) = polydev_image::rootfs::latest(flavour, cache)? else {
            continue;
        };
        any = true;
        let m = Manifest::read(&img.manifest_path)?;
        let size = std::fs::metadata(&img.path).map(|m| m.len()).unwrap_or(0);
        let clis: Vec<String> = m
            .clis
            .iter()
            .map(|c| format!("{} {}", c.command, c.version))
            .collect();
        println!(
            "{:<8} {:>9}  built {}  in {}s  {} packages{}",
            flavour.name(),
            mib(size),
            m.built_at,
            m.build_seconds,
            m.packages.len(),
            if clis.is_empty() {
                String::new()
            } else {
                format!("  ({})", clis.join(", "))
            }
        );
        println!("         {}", img.path.display());
    }
    if !any {
        println!("no images built in {}", cache.display());
    }
    Ok(())
}

/// A runtime over a throw-away data directory that boots `image`.
struct Scratch {
    rt: Arc<Runtime>,
    dir: PathBuf,
}

impl Scratch {
    async fn new(
        cache: &Path,
        image: &Path,
        boot_timeout: Duration,
        tag: &str,
    ) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("polydev-image-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut cfg = polydev_controller::config::Config::with_data_dir(dir.clone());
        cfg.cache_dir = cache.to_owned();
        cfg.rootfs = Some(image.to_owned());
        cfg.boot_timeout = boot_timeout;
        let rt = polydev_controller::build_runtime(cfg).await?;
        Ok(Scratch { rt, dir })
    }

    fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn vm_type(flavour: Flavour) -> VmType {
    if flavour == Flavour::Browser {
        VmType::Browser
    } else {
        VmType::Cli
    }
}

/// Polls the store until the VM is running (Ok) or failed / gone (Err).
async fn wait_running(rt: &Runtime, vm_id: &str, limit: Duration) -> Result<VmRecord, String> {
    let until = Instant::now() + limit;
    loop {
        match rt.store().get_vm(vm_id).await {
            Ok(Some(r)) if r.status == VmStatus::Running => return Ok(r),
            Ok(Some(r)) if r.status == VmStatus::Creating => {}
            Ok(Some(r)) => {
                return Err(format!(
                    "VM {vm_id} is {}: {} (console log: {}/{})",
                    r.status.as_str(),
                    r.failure_reason.unwrap_or_default(),
                    r.dir,
                    polydev_vmm::CONSOLE_FILE
                ))
            }
            Ok(None) => return Err(format!("VM {vm_id} disappeared from the store")),
            Err(e) => return Err(format!("reading VM {vm_id}: {e}")),
        }
        if Instant::now() > until {
            return Err(format!("VM {vm_id} not running after {}s", limit.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What `/exec` answered.
struct ExecOut {
    exit_code: Option<i64>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

async fn exec(rt: &Runtime, rec: &VmRecord, c: &GuestCommand) -> Result<ExecOut, String> {
    let body = serde_json::json!({
        "argv": c.argv,
        "user": c.user,
        "timeoutMs": c.timeout_ms,
        "maxOutputBytes": 8 << 20,
    });
    let limit = Duration::from_millis(c.timeout_ms) + Duration::from_secs(20);
    // Two streams of up to 8 MiB each, JSON-escaped.
    let v = rt
        .agent_call_limited(rec, "POST", "/exec", Some(body), limit, 40 << 20)
        .await?;
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    Ok(ExecOut {
        exit_code: v.get("exitCode").and_then(|x| x.as_i64()),
        stdout: s("stdout"),
        stderr: s("stderr"),
        timed_out: v.get("timedOut").and_then(|x| x.as_bool()).unwrap_or(false),
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Runs `c` until it exits 0 (retrying for `c.retry_for_secs`); its stdout.
async fn exec_ok(rt: &Runtime, rec: &VmRecord, c: &GuestCommand) -> Result<String, String> {
    let until = Instant::now() + Duration::from_secs(c.retry_for_secs);
    loop {
        let err = match exec(rt, rec, c).await {
            Ok(o) if o.exit_code == Some(0) && !o.timed_out => return Ok(o.stdout),
            Ok(o) if o.timed_out => format!("timed out after {} ms", c.timeout_ms),
            Ok(o) => format!(
                "exit {}: {}",
                o.exit_code.map_or("by signal".into(), |c| c.to_string()),
                tail(&format!("{}\n{}", o.stdout, o.stderr), 4)
            ),
            Err(e) => e,
        };
        if Instant::now() >= until {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints check results as they come and remembers the failures.
struct Report {
    created: Instant,
    failed: Vec<String>,
}

impl Report {
    fn record(&mut self, name: &str, took: Duration, result: Result<String, String>) -> bool {
        let since = self.created.elapsed().as_secs_f64();
        match result {
            Ok(detail) => {
                println!(
                    "  ok    {name:<44} {:>6.1}s  (t+{since:.1}s)  {detail}",
                    took.as_secs_f64()
                );
                true
            }
            Err(e) => {
                println!(
                    "  FAIL  {name:<44} {:>6.1}s  (t+{since:.1}s)  {e}",
                    took.as_secs_f64()
                );
                self.failed.push(name.to_owned());
                false
            }
        }
    }

    async fn run<F, Fut>(&mut self, name: &str, f: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, String>>,
    {
        let t = Instant::now();
        let r = f().await;
        self.record(name, t.elapsed(), r)
    }
}

/// Timings a check measured, for the benchmark.
#[derive(Debug, Default, Clone, Copy)]
struct BootTimes {
    agent_ready: Option<Duration>,
    chromium_ready: Option<Duration>,
}

async fn check(
    flavour: Flavour,
    cache: &Path,
    image: &Path,
    boot_timeout: Duration,
) -> anyhow::Result<()> {
    let manifest = Manifest::read(&image.with_file_name("manifest.json")).ok();
    println!("checking {flavour} image {}", image.display());
    let (times, failed) =
        boot_and_check(flavour, cache, image, boot_timeout, manifest.as_ref()).await?;
    if let Some(t) = times.agent_ready {
        println!("boot-to-agent-ready: {:.1}s", t.as_secs_f64());
    }
    if let Some(t) = times.chromium_ready {
        println!("boot-to-Chromium-ready: {:.1}s", t.as_secs_f64());
    }
    if failed.is_empty() {
        println!("image check passed");
        Ok(())
    } else {
        anyhow::bail!("image check of {flavour} failed: {}", failed.join("; "))
    }
}

async fn boot_and_check(
    flavour: Flavour,
    cache: &Path,
    image: &Path,
    boot_timeout: Duration,
    manifest: Option<&Manifest>,
) -> anyhow::Result<(BootTimes, Vec<String>)> {
    let scratch = Scratch::new(cache, image, boot_timeout, "check").await?;
    let rt = scratch.rt.clone();
    println!(
        "  vmm: qemu, accel {} ({})",
        rt.accel().accel.as_str(),
        rt.accel().reason
    );
    let created = Instant::now();
    let rec = rt.create("image-check", vm_type(flavour)).await?;
    let mut report = Report {
        created,
        failed: Vec::new(),
    };
    let mut times = BootTimes::default();
    let ready = match wait_running(&rt, &rec.vm_id, boot_timeout + Duration::from_secs(30)).await {
        Ok(r) => {
            times.agent_ready = Some(created.elapsed());
            let detail = format!(
                "kernel {} ms, agent {} ms after init",
                r.kernel_boot_ms.map_or("?".into(), |v| v.to_string()),
                r.agent_ready_ms.map_or("?".into(), |v| v.to_string())
            );
            report.record("agent ready", created.elapsed(), Ok(detail));
            Some(r)
        }
        Err(e) => {
            report.record("agent ready", created.elapsed(), Err(e));
            None
        }
    };
    if let Some(rec) = &ready {
        guest_checks(flavour, &rt, rec, manifest, &mut report, &mut times).await;
    }
    let keep = !report.failed.is_empty();
    if let Err(e) = rt.destroy(&rec.vm_id).await {
        eprintln!("warning: destroying VM {}: {e}", rec.vm_id);
    }
    if keep {
        println!("  (kept {} for inspection)", scratch.dir.display());
    } else {
        scratch.remove();
    }
    Ok((times, report.failed))
}

async fn guest_checks(
    flavour: Flavour,
    rt: &Runtime,
    rec: &VmRecord,
    manifest: Option<&Manifest>,
    report: &mut Report,
    times: &mut BootTimes,
) {
    if flavour.has_display() {
        for c in [guest_check::x_display(), guest_check::window_manager()] {
            report
                .run(&c.name.clone(), || async {
                    exec_ok(rt, rec, &c)
                        .await
                        .map(|out| tail(&out, 1).chars().take(60).collect())
                })
                .await;
        }
        let c = guest_check::vnc_banner();
        report
            .run(&c.name.clone(), || async {
                let out = exec_ok(rt, rec, &c).await?;
                match guest_check::parse_rfb_banner(&out) {
                    Some((major, minor)) => Ok(format!("RFB {major}.{minor}")),
                    None => Err(format!("not an RFB banner: {out:?}")),
                }
            })
            .await;
        let c = guest_check::chromium_screenshot();
        let ok = report
            .run(&c.name.clone(), || async {
                let out = exec_ok(rt, rec, &c).await?;
                let shot = guest_check::analyse_png_base64(&out)?;
                let detail = format!(
                    "{}x{} PNG, {} colours, top colour {:.0}%",
                    shot.width,
                    shot.height,
                    shot.colours,
                    shot.dominant_share * 100.0
                );
                if shot.is_rendered() {
                    Ok(detail)
                } else {
                    Err(format!("the screenshot looks blank: {detail}"))
                }
            })
            .await;
        if ok {
            times.chromium_ready = Some(report.created.elapsed());
        }
    }
    if flavour.has_clis() {
        let c = guest_check::guest_home();
        report
            .run(&c.name.clone(), || async {
                exec_ok(rt, rec, &c).await.map(|o| o.trim().to_owned())
            })
            .await;
        if flavour == Flavour::Cli {
            let c = guest_check::dev_tools();
            report
                .run(&c.name.clone(), || async {
                    exec_ok(rt, rec, &c).await.map(|o| tail(&o, 3))
                })
                .await;
        }
        for cli in flavour.npm_clis() {
            let c = guest_check::cli_version(cli);
            let pinned = manifest
                .and_then(|m| {
                    m.clis
                        .iter()
                        .find(|x| x.command == cli.command)
                        .map(|x| x.version.clone())
                })
                .unwrap_or_else(|| cli.version.to_owned());
            report
                .run(&c.name.clone(), || async {
                    let out = exec_ok(rt, rec, &c).await?;
                    let line = tail(&out, 1);
                    if line.contains(&pinned) {
                        Ok(line)
                    } else {
                        Err(format!("printed {line:?}, want version {pinned}"))
                    }
                })
                .await;
        }
        let url = format!("https://polydev.invalid/check?vm={}", rec.vm_id);
        let c = guest_check::open_url_hook(&url);
        report
            .run(&c.name.clone(), || async {
                exec_ok(rt, rec, &c).await?;
                let v = rt
                    .agent_call(rec, "GET", "/oauth-url", None, Duration::from_secs(10))
                    .await?;
                if v.get("oauthUrl").and_then(|u| u.as_str()) != Some(url.as_str()) {
                    return Err(format!("GET /oauth-url answered {v}, want {url}"));
                }
                let opened = v.get("opened").and_then(|o| o.as_bool()).unwrap_or(false);
                if flavour.has_display() && !opened {
                    return Err(format!(
                        "the URL was recorded but not opened in Chromium: {v}"
                    ));
                }
                Ok(format!(
                    "recorded{}",
                    if opened { ", opened in Chromium" } else { "" }
                ))
            })
            .await;
        if flavour.has_display() {
            let c = guest_check::chromium_on_display();
            report
                .run(&c.name.clone(), || async {
                    exec_ok(rt, rec, &c)
                        .await
                        .map(|o| format!("pids {}", tail(&o, 3)))
                })
                .await;
        }
    }
}

/// Median of a list of durations.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Times `rt.create` until the store records the VMM's pid, `runs` times.
async fn create_costs(rt: &Arc<Runtime>, runs: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let rec = rt.create("image-bench", VmType::Cli).await?;
        let took = loop {
            match rt.store().get_vm(&rec.vm_id).await? {
                Some(r) if r.vmm_pid.is_some() => break started.elapsed(),
                Some(r) if r.status != VmStatus::Creating => {
                    anyhow::bail!(
                        "VM {} {} before its VMM started: {:?}",
                        r.vm_id,
                        r.status.as_str(),
                        r.failure_reason
                    )
                }
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("VM {}: no VMM pid after 120 s", rec.vm_id);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        out.push(took);
        rt.destroy(&rec.vm_id).await?;
    }
    Ok(out)
}

/// A copy of `src` grown (sparse) to `size_mb` with `resize2fs`.
fn grown_copy(src: &Path, dest: &Path, size_mb: u64) -> anyhow::Result<()> {
    let run = |cmd: &mut std::process::Command| -> anyhow::Result<()> {
        let out = cmd
            .output()
            .map_err(|e| anyhow::anyhow!("running {cmd:?}: {e}"))?;
        // e2fsck exits 1 when it merely optimised something.
        if !out.status.success() && out.status.code() != Some(1) {
            anyhow::bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let _ = std::fs::remove_file(dest);
    run(std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(dest))?;
    run(std::process::Command::new("chmod").arg("0644").arg(dest))?;
    run(std::process::Command::new("truncate")
        .arg("-s")
        .arg(format!("{size_mb}M"))
        .arg(dest))?;
    run(std::process::Command::new("e2fsck").arg("-fy").arg(dest))?;
    run(std::process::Command::new("resize2fs").arg(dest))?;
    Ok(())
}

async fn bench(
    cache: &Path,
    runs: usize,
    no_boot: bool,
    agent: Option<PathBuf>,
) -> anyhow::Result<()> {
    let agent = match agent {
        Some(a) => Some(a),
        None => default_agent_bin().ok(),
    };
    println!("== image build (cold: as measured by the build; cached: a rebuild now) and size");
    for &flavour in Flavour::ALL {
        let Some(img) = polydev_image::rootfs::latest(flavour, cache)? else {
            println!("{:<8} not built", flavour.name());
            continue;
        };
        let m = Manifest::read(&img.manifest_path)?;
        let cached = match &agent {
            Some(a) if polydev_image::rootfs::locate(flavour, cache, a)?.is_some() => {
                let t = Instant::now();
                let mut p = polydev_image::NoProgress;
                polydev_image::rootfs::build(flavour, cache, a, &mut p)?;
                format!("{} ms", t.elapsed().as_millis())
            }
            _ => "n/a (the agent changed since the build)".into(),
        };
        let size = std::fs::metadata(&img.path)?.len();
        println!(
            "{:<8} cold {:>6}   cached {:<12} size {} ({} allocated)",
            flavour.name(),
            if m.build_seconds == 0 {
                "n/a".to_owned()
            } else {
                format!("{}s", m.build_seconds)
            },
            cached,
            mib(size),
            mib(allocated(&img.path))
        );
    }

    if !no_boot {
        println!("== boot (through the controller runtime)");
        for flavour in [Flavour::Minimal, Flavour::Cli, Flavour::Browser] {
            let Some(img) = polydev_image::rootfs::latest(flavour, cache)? else {
                continue;
            };
            let m = Manifest::read(&img.manifest_path).ok();
            let (t, failed) = boot_and_check(
                flavour,
                cache,
                &img.path,
                Duration::from_secs(300),
                m.as_ref(),
            )
            .await?;
            println!(
                "{:<8} boot-to-agent-ready {}   boot-to-Chromium-ready {}{}",
                flavour.name(),
                t.agent_ready
                    .map_or("n/a".into(), |d| format!("{:.1}s", d.as_secs_f64())),
                t.chromium_ready
                    .map_or("n/a".into(), |d| format!("{:.1}s", d.as_secs_f64())),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!("   (failed: {})", failed.join(", "))
                }
            );
        }
    }

    println!(
        "== create cost (record -> VMM started: state disk, netns, VMM spawn), median of {runs}"
    );
    let base = newest(Flavour::Minimal, cache)?;
    let work = std::env::temp_dir().join(format!("polydev-image-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut images = Vec::new();
    for size_mb in [1024u64, 3072] {
        let dest = work.join(format!("minimal-{size_mb}M.ext4"));
        grown_copy(&base.path, &dest, size_mb)?;
        images.push((format!("minimal grown to {} GiB", size_mb / 1024), dest));
    }
    if let Some(b) = polydev_image::rootfs::latest(Flavour::Browser, cache)? {
        images.push(("browser (real data)".into(), b.path));
    }
    let mut results = Vec::new();
    for (i, (name, path)) in images.iter().enumerate() {
        let scratch =
            Scratch::new(cache, path, Duration::from_secs(300), &format!("bench{i}")).await?;
        // One warm-up creation (page cache, first netns).
        create_costs(&scratch.rt, 1).await?;
        let samples = create_costs(&scratch.rt, runs).await?;
        let size = std::fs::metadata(path)?.len();
        let med = median(samples.clone());
        println!(
            "{name:<26} {:>9}  median {:>7.1} ms  (samples: {})",
            mib(size),
            med.as_secs_f64() * 1000.0,
            samples
                .iter()
                .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        results.push(med);
        scratch.remove();
    }
    if results.len() >= 2 {
        let ratio = results[1].as_secs_f64() / results[0].as_secs_f64().max(1e-9);
        println!(
            "3 GiB / 1 GiB create time ratio: {ratio:.2} ({})",
            if (ratio - 1.0).abs() <= 0.10 {
                "within 10%"
            } else {
                "NOT within 10%"
            }
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
