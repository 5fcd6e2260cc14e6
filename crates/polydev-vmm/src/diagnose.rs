//! Why a VMM exited, read from its own logs (Firecracker's log file, QEMU's
//! and Firecracker's stderr): the first error line, classified in words —
//! not the last line, which is usually only "exiting with error".

use std::path::Path;

/// The VMM's own log files in a VM directory, most specific first.
pub const LOG_FILES: &[&str] = &["firecracker.log", crate::VMM_LOG_FILE];

/// How much of the end of each log is read.
const READ_TAIL: u64 = 64 << 10;

/// A root cause found in a VMM log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// What went wrong, in words.
    pub what: String,
    /// The log line it was read from (its message, without the timestamp).
    pub line: String,
    /// The VMM's last line, when it is another one (e.g. "exiting with
    /// error. exit_code=1").
    pub last: Option<String>,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: \"{}\"", self.what, self.line)?;
        if let Some(l) = &self.last {
            write!(f, " (then: \"{l}\")")?;
        }
        Ok(())
    }
}

/// Known failures: a fragment of the log line and what it means.
const KNOWN: &[(&str, &str)] = &[
    (
        "KVM_EXIT_INTERNAL_ERROR",
        "KVM could not run the guest's vCPU (KVM_EXIT_INTERNAL_ERROR): this host's KVM cannot run guests (often nested virtualisation without support); QEMU with TCG can (POLYDEV_VMM=qemu)",
    ),
    (
        "KVM_EXIT_SHUTDOWN",
        "the guest shut the vCPU down (a triple fault: the kernel crashed before it could print)",
    ),
    (
        "KVM_EXIT_FAIL_ENTRY",
        "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY): the host's virtualisation refused the vCPU state",
    ),
    (
        "Could not access KVM kernel module",
        "KVM is not available on this host (no /dev/kvm or no module)",
    ),
    ("failed to initialize kvm", "KVM could not be initialised on this host"),
    (
        "/dev/kvm: Permission denied",
        "no permission to open /dev/kvm",
    ),
    ("Permission denied", "the VMM was refused access to a file or device it needs"),
    (
        "Cannot allocate memory",
        "the host could not give the VM its memory",
    ),
    ("Out of memory", "the host could not give the VM its memory"),
    (
        "Address already in use",
        "the VMM's socket or address is already in use",
    ),
    (
        "No such file or directory",
        "a file the VMM needs is missing",
    ),
    (
        "Failed to exec into Firecracker",
        "the jailer could not start Firecracker in its chroot (a dynamically linked build, or a missing binary: the jailer needs a static Firecracker)",
    ),
    ("Bad system call", "the VMM's seccomp filter stopped a system call"),
    ("seccomp", "the VMM's seccomp filter stopped it"),
    ("Could not open", "the VMM could not open one of its files"),
];

/// Lines that only say the VMM is ending, never a root cause.
const SUMMARIES: &[&str] = &[
    "exiting with error",
    "exiting successfully",
    "MicroVMStopped without an error",
    "Vmm is stopping",
    "Killing vCPU threads",
    "RunWithoutApiError",
];

/// The message of a log line: Firecracker's `<timestamp> [id:thread:LEVEL…]`
/// prefix and QEMU's `qemu-system-x86_64: ` are cut off.
fn message(line: &str) -> &str {
    let l = line.trim();
    let l = match l.find("] ") {
        Some(i) if l[..i].contains('[') => &l[i + 2..],
        _ => l,
    };
    l.strip_prefix("qemu-system-x86_64: ").unwrap_or(l).trim()
}

/// Whether a line is logged as an error (Firecracker's level, QEMU's
/// prefix, or the word).
fn is_error(line: &str) -> bool {
    let head = line.split("] ").next().unwrap_or("");
    head.contains(":ERROR") || line.contains("qemu-system-x86_64: ") || {
        let m = message(line).to_ascii_lowercase();
        m.starts_with("error") || m.contains(" error")
    }
}

/// The root cause in a VMM's log text: the first line of a known failure,
/// else the first error line that is not a summary, else the last line.
pub fn root_cause(log: &str) -> Option<Cause> {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines.last().map(|l| clip(message(l)));
    let summary = |l: &str| SUMMARIES.iter().any(|s| l.contains(s));
    let known = lines.iter().find_map(|l| {
        KNOWN
            .iter()
            .find(|(frag, _)| l.contains(frag) && !summary(l))
            .map(|(_, what)| (*l, (*what).to_string()))
    });
    let (line, what) = match known {
        Some(k) => k,
        None => match lines.iter().find(|l| is_error(l) && !summary(l)) {
            Some(l) => (*l, "the VMM logged an error".to_string()),
            None => (*lines.last()?, "the VMM's last words".to_string()),
        },
    };
    let line = clip(message(line));
    let last = last.filter(|l| *l != line);
    Some(Cause { what, line, last })
}

fn clip(s: &str) -> String {
    s.chars().take(300).collect()
}

/// The root cause read from the VMM logs in `dir` (their last 64 KiB).
pub fn explain(dir: &Path) -> Option<Cause> {
    LOG_FILES.iter().find_map(|f| {
        let (text, _) = crate::console::read_tail(&dir.join(f), READ_TAIL).ok()?;
        root_cause(&String::from_utf8_lossy(&text))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Firecracker v1.16.1's log, verbatim, on a host whose KVM cannot run
    /// guests (the guest printed nothing).
    const FC_KVM_INTERNAL: &str = "\
2026-12-03T07:59:37.975620256 [anonymous-instance:main:INFO:src/firecracker/src/main.rs:333] Running Firecracker v1.16.1
2026-12-03T07:59:37.989501619 [anonymous-instance:main:INFO:src/vmm/src/device_manager/mod.rs:375] Artificially kick devices
2026-12-03T07:59:37.989549070 [anonymous-instance:fc_vcpu 0:WARN:src/vmm/src/vstate/vcpu.rs:302] Received a VcpuEvent::Resume message with immediate_exit enabled. immediate_exit was disabled before proceeding
2026-12-03T07:59:37.997038466 [anonymous-instance:main:INFO:src/firecracker/src/main.rs:608] Successfully started microvm that was configured from one single json
2026-12-03T07:59:51.607284558 [anonymous-instance:fc_vcpu 0:ERROR:src/vmm/src/vstate/vcpu.rs:459] Received KVM_EXIT_INTERNAL_ERROR signal
2026-12-03T07:59:51.607429384 [anonymous-instance:main:INFO:src/vmm/src/lib.rs:690] Vmm is stopping.
2026-12-03T07:59:51.607469845 [anonymous-instance:main:INFO:src/vmm/src/lib.rs:765] Killing vCPU threads
2026-12-03T07:59:51.639096637 [anonymous-instance:main:ERROR:src/firecracker/src/main.rs:110] RunWithoutApiError error: MicroVMStopped without an error: GenericError
2026-12-03T07:59:51.639154756 [anonymous-instance:main:ERROR:src/firecracker/src/main.rs:113] Firecracker exiting with error. exit_code=1
";

    #[test]
    fn firecracker_kvm_internal_error_is_the_cause_not_the_last_line() {
        let c = root_cause(FC_KVM_INTERNAL).unwrap();
        assert_eq!(c.line, "Received KVM_EXIT_INTERNAL_ERROR signal");
        assert!(c.what.contains("cannot run guests"), "{c}");
        assert_eq!(
            c.last.as_deref(),
            Some("Firecracker exiting with error. exit_code=1")
        );
        let shown = c.to_string();
        assert!(shown.contains("KVM_EXIT_INTERNAL_ERROR"), "{shown}");
        // The same with the level shown but not the origin (our logger).
        let short = FC_KVM_INTERNAL.replace(":src/vmm/src/vstate/vcpu.rs:459", "");
        assert_eq!(
            root_cause(&short).unwrap().line,
            "Received KVM_EXIT_INTERNAL_ERROR signal"
        );
    }

    #[test]
    fn qemu_errors_and_unknown_errors() {
        let q = "qemu-system-x86_64: -drive file=/x/rootfs.ext4,if=none: Could not open '/x/rootfs.ext4': No such file or directory\n";
        let c = root_cause(q).unwrap();
        assert_eq!(c.what, "a file the VMM needs is missing");
        assert!(c.line.starts_with("-drive file="), "{c:?}");
        assert_eq!(c.last, None);
        let c = root_cause("starting\nError: something odd happened\nbye\n").unwrap();
        assert_eq!(c.what, "the VMM logged an error");
        assert_eq!(c.line, "Error: something odd happened");
        assert_eq!(c.last.as_deref(), Some("bye"));
        let c = root_cause("all fine\nstill fine\n").unwrap();
        assert_eq!((c.line.as_str(), c.last), ("still fine", None));
        assert_eq!(root_cause("\n\n"), None);
    }

    #[test]
    fn explained_from_the_files_in_a_vm_directory() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(explain(d.path()), None);
        std::fs::write(
            d.path().join("vmm.log"),
            "qemu-system-x86_64: failed to initialize kvm: Permission denied\n",
        )
        .unwrap();
        assert!(explain(d.path())
            .unwrap()
            .what
            .contains("KVM could not be initialised"));
        std::fs::write(d.path().join("firecracker.log"), FC_KVM_INTERNAL).unwrap();
        assert!(explain(d.path())
            .unwrap()
            .line
            .contains("KVM_EXIT_INTERNAL_ERROR"));
    }
}
