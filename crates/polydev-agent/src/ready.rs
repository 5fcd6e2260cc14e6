//! Announcing readiness to the host.
//!
//! The host watches the serial console for the [`ReadyLine`]; the line also
//! goes to stdout (the journal) for debugging.

use std::io::Write;

use polydev_core::guest::ReadyLine;

/// Writes the ready line to `/dev/console` (if it can be opened) and stdout.
/// Errors are ignored: the host also polls `/health`.
pub fn announce(line: &ReadyLine) {
    let text = format!("{}\n", line.render());
    if let Ok(mut console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = console.write_all(text.as_bytes());
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
