//! Progress reporting for long builds.
//!
//! Builders call a [`Progress`]; [`StderrProgress`] renders it on stderr,
//! rewriting one status line in place when stderr is a terminal and printing
//! periodic lines otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Receives progress from a builder.
pub trait Progress {
    /// A one-off message that should always be shown.
    fn note(&mut self, message: &str);
    /// A new phase starts (e.g. "configuring", "compiling").
    fn phase(&mut self, name: &str);
    /// Status within the current phase; may be shown only now and then.
    fn update(&mut self, detail: &str);
    /// The build is over (successfully or not).
    fn finish(&mut self);
}

/// Discards all progress.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn note(&mut self, _: &str) {}
    fn phase(&mut self, _: &str) {}
    fn update(&mut self, _: &str) {}
    fn finish(&mut self) {}
}

/// Renders progress on stderr as `<label>: <detail>, <elapsed> elapsed`.
#[derive(Debug)]
pub struct StderrProgress {
    label: String,
    start: Instant,
    tty: bool,
    last_line: Option<Instant>,
    interval: Duration,
    dirty: bool,
}

impl StderrProgress {
    /// A progress display prefixed with `label` (e.g. "kernel").
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_line: None,
            interval: Duration::from_secs(15),
            dirty: false,
        }
    }

    fn clear(&mut self, err: &mut impl Write) {
        if self.dirty {
            let _ = write!(err, "\r\x1b[K");
            self.dirty = false;
        }
    }
}

/// Formats a duration as `3m12s` / `42s`.
pub fn format_elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl Progress for StderrProgress {
    fn note(&mut self, message: &str) {
        let mut err = std::io::stderr().lock();
        self.clear(&mut err);
        let _ = writeln!(err, "{}: {message}", self.label);
    }

    fn phase(&mut self, name: &str) {
        let elapsed = format_elapsed(self.start.elapsed());
        let mut err = std::io::stderr().lock();
        self.clear(&mut err);
        let _ = writeln!(err, "{}: {name} ({elapsed} elapsed)", self.label);
        self.last_line = Some(Instant::now());
    }

    fn update(&mut self, detail: &str) {
        let elapsed = format_elapsed(self.start.elapsed());
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{}: {detail}, {elapsed} elapsed", self.label);
            let _ = err.flush();
            self.dirty = true;
        } else if !matches!(self.last_line, Some(t) if t.elapsed() < self.interval) {
            let _ = writeln!(err, "{}: {detail}, {elapsed} elapsed", self.label);
            self.last_line = Some(Instant::now());
        }
    }

    fn finish(&mut self) {
        let mut err = std::io::stderr().lock();
        self.clear(&mut err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_elapsed() {
        assert_eq!(format_elapsed(Duration::from_secs(42)), "42s");
        assert_eq!(format_elapsed(Duration::from_secs(192)), "3m12s");
    }
}
