//! `polydev image check browser|cli` against the built golden images: boots
//! each under the available VMM (TCG here) through the controller's runtime
//! and checks the agent, the X display, VNC, Chromium and the CLIs.
//!
//! Needs root, the guest kernel and the images (`polydev kernel build`,
//! `polydev image build browser`, `polydev image build cli`). Without them
//! the tests print SKIPPED, except under CI (`CI` set), where they fail.

use std::process::Command;
use std::sync::Mutex;

use polydev_image::rootfs::Flavour;

/// The two checks boot big guests: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("POLYDEV_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| polydev_image::DEFAULT_CACHE_DIR.into())
}

/// Why the check cannot run here, if it cannot.
fn missing(flavour: Flavour) -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, TAP devices)".into());
    }
    let cache = cache_dir();
    match polydev_image::rootfs::latest(flavour, &cache) {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!(
            "the {flavour} image is not built in {}: run `polydev image build {flavour}`",
            cache.display()
        )),
        Err(e) => Some(format!("looking for the {flavour} image: {e}")),
    }
}

/// Whether the effective uid is 0 (from `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn run_check(flavour: Flavour) {
    if let Some(why) = missing(flavour) {
        if std::env::var_os("CI").is_some() {
            panic!("image check {flavour} cannot run under CI: {why}");
        }
        eprintln!("SKIPPED image check {flavour}: {why}");
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_polydev"))
        .args(["image", "check", flavour.name()])
        .env("POLYDEV_CACHE_DIR", cache_dir())
        .output()
        .expect("run polydev image check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "polydev image check {flavour} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("image check passed"), "{stdout}");
}

#[test]
fn browser_image_passes_its_check() {
    run_check(Flavour::Browser);
}

#[test]
fn cli_image_passes_its_check() {
    run_check(Flavour::Cli);
}
