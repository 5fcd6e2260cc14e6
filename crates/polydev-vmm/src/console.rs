//! Reading a VM's console log: how far the boot got, and why it failed.

use polydev_core::guest::{ReadyLine, INIT_MARKER};

/// What the guest init prints before it gives up (`POLYDEV-INIT-FAILED: <why>`).
pub const INIT_FAILED_MARKER: &str = "POLYDEV-INIT-FAILED";

/// What a console log says about a boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootProgress {
    /// The kernel printed anything at all.
    pub kernel_started: bool,
    /// Guest uptime (ms) at which the kernel ran init, from its printk time.
    pub init_ms: Option<u64>,
    /// The polydev init announced itself.
    pub init_started: bool,
    /// systemd announced itself.
    pub systemd_started: bool,
    /// The agent's readiness line.
    pub ready: Option<ReadyLine>,
    /// The kernel panic line, if any.
    pub panic: Option<String>,
    /// A failure message printed by the polydev init, if any.
    pub init_error: Option<String>,
}

/// Scans a console log.
pub fn scan(text: &str) -> BootProgress {
    let mut p = BootProgress {
        kernel_started: text.contains("Linux version"),
        ..Default::default()
    };
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if p.init_ms.is_none() && line.contains("as init process") {
            p.init_ms = printk_ms(line);
        }
        if line.contains(INIT_MARKER) {
            p.init_started = true;
            if let Some(i) = line.find(INIT_FAILED_MARKER) {
                let msg = line[i + INIT_FAILED_MARKER.len()..]
                    .trim_start_matches(':')
                    .trim();
                p.init_error.get_or_insert_with(|| msg.to_string());
            }
        }
        if line.contains("Welcome to") || line.contains("systemd[1]") {
            p.systemd_started = true;
        }
        if p.panic.is_none() && line.contains("Kernel panic") {
            p.panic = Some(strip_printk(line).to_string());
        }
    }
    p.ready = ReadyLine::find(text);
    p
}

fn printk_ms(line: &str) -> Option<u64> {
    let open = line.find('[')?;
    let close = line[open..].find(']')? + open;
    let secs: f64 = line[open + 1..close].trim().parse().ok()?;
    Some((secs * 1000.0) as u64)
}

fn strip_printk(line: &str) -> &str {
    match (line.find('['), line.find(']')) {
        (Some(0), Some(c)) => line[c + 1..].trim(),
        _ => line.trim(),
    }
}

/// Says in words why a boot that did not become ready failed.
/// `vmm_exit` describes the VMM's exit if it ended; `timed_out` is true when
/// the readiness deadline passed.
pub fn failure_reason(
    p: &BootProgress,
    vmm_exit: Option<&str>,
    timed_out_after: Option<u64>,
) -> String {
    if let Some(e) = &p.init_error {
        return format!("guest init failed: {e}");
    }
    if let Some(panic) = &p.panic {
        return format!("kernel panic: {panic}");
    }
    let stage = if !p.kernel_started {
        "the kernel printed nothing on the console"
    } else if !p.init_started && p.init_ms.is_none() {
        "the kernel never ran init"
    } else if !p.systemd_started {
        "init started but systemd did not"
    } else {
        "the agent never started (systemd is up but the agent did not announce readiness)"
    };
    match (vmm_exit, timed_out_after) {
        (Some(exit), _) => format!("VMM exited ({exit}); {stage}"),
        (None, Some(secs)) => format!("timeout: not ready after {secs} s; {stage}"),
        (None, None) => stage.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_named() {
        let log = "[    0.000000] Linux version 6.1\n[    1.500000] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
        let p = scan(log);
        assert_eq!(
            p.panic.as_deref(),
            Some("Kernel panic - not syncing: VFS: Unable to mount root fs")
        );
        assert!(failure_reason(&p, Some("exit status: 0"), None).starts_with("kernel panic: "));
    }

    #[test]
    fn agent_never_started_is_told_apart_from_no_init() {
        let booted = "[    0.0] Linux version 6.1\n[    2.250000] Run /usr/sbin/polydev-init as init process\nPOLYDEV-INIT\nWelcome to Debian\n";
        let p = scan(booted);
        assert_eq!(p.init_ms, Some(2250));
        let r = failure_reason(&p, None, Some(60));
        assert!(
            r.contains("timeout") && r.contains("agent never started"),
            "{r}"
        );
        let stuck = scan("[    0.0] Linux version 6.1\n");
        assert!(failure_reason(&stuck, None, Some(60)).contains("never ran init"));
        assert!(failure_reason(&scan(""), None, Some(1)).contains("printed nothing"));
    }

    #[test]
    fn init_failure_beats_the_panic_it_causes() {
        let log = "Linux version 6.1\nPOLYDEV-INIT\nPOLYDEV-INIT-FAILED: state disk /dev/vdb is missing\n[    3.4] Kernel panic - not syncing: Attempted to kill init!\n";
        let r = failure_reason(&scan(log), Some("exit status: 0"), None);
        assert_eq!(r, "guest init failed: state disk /dev/vdb is missing");
    }

    #[test]
    fn ready_line_is_found() {
        let p = scan("x\r\nPOLYDEV-AGENT-READY vm=vm_1 port=7070 uptime_ms=3000\r\n");
        assert_eq!(p.ready.unwrap().uptime_ms, 3000);
    }
}
