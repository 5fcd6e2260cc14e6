//! A VM's console log: how far the boot got and why it failed ([`scan`],
//! [`BootScanner`] for a log read piece by piece), and keeping the file
//! bounded while the guest writes it ([`file`]).

use polydev_core::guest::{ReadyLine, INIT_MARKER};

pub mod file;

pub use file::{cap, read_capped, read_tail, Limits, LogReader, NewBytes};

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

/// The longest unfinished line [`BootScanner`] keeps (its last bytes).
pub const MAX_LINE: usize = 64 << 10;

/// [`scan`] over a log fed piece by piece: each piece is scanned once, and
/// a line split between two pieces is still found whole.
#[derive(Debug, Clone, Default)]
pub struct BootScanner {
    progress: BootProgress,
    /// The last, unfinished line (at most [`MAX_LINE`] bytes).
    partial: Vec<u8>,
}

impl BootScanner {
    /// Scans the lines `bytes` completes; keeps the unfinished one.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        if let Some(nl) = self.partial.iter().rposition(|b| *b == b'\n') {
            let done: Vec<u8> = self.partial.drain(..=nl).collect();
            merge(&mut self.progress, scan(&String::from_utf8_lossy(&done)));
        }
        if self.partial.len() > MAX_LINE {
            let cut = self.partial.len() - MAX_LINE;
            self.partial.drain(..cut);
        }
    }

    /// Forgets the unfinished line (the log was shortened and is read again
    /// from its start: what follows does not continue it).
    pub fn restart(&mut self) {
        self.partial.clear();
    }

    /// What the log says so far, the unfinished line included.
    pub fn progress(&self) -> BootProgress {
        let mut p = self.progress.clone();
        merge(&mut p, scan(&String::from_utf8_lossy(&self.partial)));
        p
    }
}

/// How much [`BootWatch::poll`] reads at a time.
const POLL_CHUNK: u64 = 1 << 20;
/// How much one [`BootWatch::poll`] reads at most (the rest comes next time).
const POLL_MAX: u64 = 8 << 20;

/// A booting VM's console log, read as it grows: each [`BootWatch::poll`]
/// reads only what was added since the last one, in bounded pieces.
#[derive(Debug, Clone)]
pub struct BootWatch {
    reader: LogReader,
    scanner: BootScanner,
}

impl BootWatch {
    /// Watches the log at `path` from its first byte.
    pub fn new(path: impl Into<std::path::PathBuf>) -> BootWatch {
        BootWatch {
            reader: LogReader::new(path),
            scanner: BootScanner::default(),
        }
    }

    /// Reads what the log gained and says what it shows so far.
    pub fn poll(&mut self) -> std::io::Result<BootProgress> {
        let mut read = 0;
        while read < POLL_MAX {
            let new = self.reader.read_new(POLL_CHUNK)?;
            if new.restarted {
                self.scanner.restart();
            }
            self.scanner.feed(&new.bytes);
            read += new.bytes.len() as u64;
            if (new.bytes.len() as u64) < POLL_CHUNK {
                break;
            }
        }
        Ok(self.scanner.progress())
    }

    /// What the log showed at the last [`BootWatch::poll`].
    pub fn progress(&self) -> BootProgress {
        self.scanner.progress()
    }
}

/// Adds what a later part of a log says to `into`; the first sighting of
/// each fact wins, as in a scan of the whole log.
fn merge(into: &mut BootProgress, later: BootProgress) {
    into.kernel_started |= later.kernel_started;
    into.init_ms = into.init_ms.or(later.init_ms);
    into.init_started |= later.init_started;
    into.systemd_started |= later.systemd_started;
    into.ready = into.ready.take().or(later.ready);
    into.panic = into.panic.take().or(later.panic);
    into.init_error = into.init_error.take().or(later.init_error);
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
    fn pieces_scan_like_the_whole_log_wherever_they_are_cut() {
        let log = "[    0.000000] Linux version 6.1\r\n[    2.250000] Run /usr/sbin/polydev-init as init process\r\nPOLYDEV-INIT\nWelcome to Debian\n[    3.4] Kernel panic - not syncing: oops\nPOLYDEV-AGENT-READY vm=vm_1 port=7070 uptime_ms=3000\r\n";
        let whole = scan(log);
        assert!(whole.ready.is_some() && whole.panic.is_some() && whole.init_ms.is_some());
        for cut in 0..=log.len() {
            let mut s = BootScanner::default();
            s.feed(&log.as_bytes()[..cut]);
            s.feed(&log.as_bytes()[cut..]);
            assert_eq!(s.progress(), whole, "cut at {cut}");
        }
        // Byte by byte, and an unfinished last line counts.
        let mut s = BootScanner::default();
        for b in log.trim_end().as_bytes() {
            s.feed(&[*b]);
        }
        assert_eq!(s.progress(), whole);
    }

    #[test]
    fn an_endless_line_is_bounded_and_its_end_still_read() {
        let mut s = BootScanner::default();
        for _ in 0..100 {
            s.feed(&[b'x'; 10_000]);
        }
        assert!(s.partial.len() <= MAX_LINE);
        s.feed(b" POLYDEV-AGENT-READY vm=v port=7070 uptime_ms=5");
        assert_eq!(s.progress().ready.map(|r| r.uptime_ms), Some(5));
        s.restart();
        s.feed(b"\n");
        assert_eq!(s.progress().ready, None, "only complete lines were kept");
    }

    #[test]
    fn a_watch_reads_only_new_bytes_and_finds_a_line_written_in_two_parts() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut w = BootWatch::new(&p);
        assert_eq!(w.poll().unwrap(), BootProgress::default(), "no file yet");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        f.write_all(b"[    0.0] Linux version 6.1\nPOLYDEV-AGENT-READY vm=vm_1 po")
            .unwrap();
        let p1 = w.poll().unwrap();
        assert!(p1.kernel_started && p1.ready.is_none(), "{p1:?}");
        f.write_all(b"rt=7070 uptime_ms=42\r\n").unwrap();
        let p2 = w.poll().unwrap();
        assert_eq!(p2.ready.map(|r| r.uptime_ms), Some(42));
        assert_eq!(w.reader.offset(), std::fs::metadata(&p).unwrap().len());
        // Several chunks' worth at once is read in one poll.
        f.write_all(&vec![b'.'; (POLL_CHUNK * 2 + 5) as usize])
            .unwrap();
        f.write_all(b"\nKernel panic - not syncing: late\n")
            .unwrap();
        assert!(w.poll().unwrap().panic.is_some());
    }

    #[test]
    fn ready_line_is_found() {
        let p = scan("x\r\nPOLYDEV-AGENT-READY vm=vm_1 port=7070 uptime_ms=3000\r\n");
        assert_eq!(p.ready.unwrap().uptime_ms, 3000);
    }
}
