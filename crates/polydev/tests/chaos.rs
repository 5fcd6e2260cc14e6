//! Chaos: `polydev soak` SIGKILLs a controller of its own at random moments
//! of create, sign-in, hibernate, resume, destroy and runs, restarts it, and
//! after every round checks that nothing leaked (processes, namespaces, host
//! links, firewall elements, files, slots) and that every VM that ran before
//! the crash was re-adopted. CI runs a few rounds (`POLYDEV_CHAOS_ROUNDS`,
//! default 4); `polydev soak --rounds N` runs any number.

use std::process::Command;

#[test]
fn crashes_at_random_moments_leak_nothing() {
    let rounds = std::env::var("POLYDEV_CHAOS_ROUNDS").unwrap_or_else(|_| "4".into());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_polydev"))
        .args([
            "soak",
            "--rounds",
            &rounds,
            "--seed",
            &seed,
            "--settle-secs",
            "900",
        ])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the soak found leaks or failed (seed {seed}):\n{stdout}\n{}",
        stderr.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(stdout.contains("leaks found: 0"), "{stdout}");
}
