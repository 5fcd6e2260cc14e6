//! A small blocking QMP client: connect to QEMU's control socket, read the
//! greeting, negotiate capabilities, and run one command at a time, skipping
//! the asynchronous events QEMU interleaves with answers. QMP errors become
//! [`VmmError::Api`] carrying QEMU's own `desc`.

use crate::{Result, VmmError, VmmKind};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to `path`, retrying until `wait` has passed (QEMU creates the
    /// socket a moment after it starts), and enters command mode.
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() >= wait => {
                    return Err(VmmError::Control {
                        path: path.into(),
                        detail: format!("connecting: {e}"),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let ctl = |detail: String| VmmError::Control {
            path: path.into(),
            detail,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| ctl(format!("setting a timeout: {e}")))?;
        let writer = stream
            .try_clone()
            .map_err(|e| ctl(format!("cloning the socket: {e}")))?;
        let mut q = Qmp {
            path: path.into(),
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(ctl(format!("expected the QMP greeting, got {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| VmmError::Control {
                path: self.path.clone(),
                detail: format!("reading: {e}"),
            })?;
        if n == 0 {
            return Err(VmmError::Control {
                path: self.path.clone(),
                detail: "QEMU closed the connection".into(),
            });
        }
        serde_json::from_str(&line).map_err(|e| VmmError::Control {
            path: self.path.clone(),
            detail: format!("unparsable QMP message ({e}): {}", line.trim()),
        })
    }

    /// Runs `command` with optional `arguments`; returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| VmmError::Control {
                path: self.path.clone(),
                detail: format!("sending {command}: {e}"),
            })?;
        loop {
            let m = self.read_message()?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let desc = e
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(VmmError::Api {
                    vmm: VmmKind::Qemu,
                    request: command.into(),
                    detail: desc.to_string(),
                });
            }
            // Anything else is an asynchronous event: skip it.
        }
    }

    /// The run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub fn status(&mut self) -> Result<String> {
        let r = self.execute("query-status", None)?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    /// Polls `query-migrate` until the migration completes; fails with QEMU's
    /// `error-desc` when it fails, or after `timeout`.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<Value> {
        let start = Instant::now();
        loop {
            let r = self.execute("query-migrate", None)?;
            match r.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(r),
                Some("failed") | Some("cancelled") => {
                    return Err(VmmError::Api {
                        vmm: VmmKind::Qemu,
                        request: "migrate".into(),
                        detail: r
                            .get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("migration failed")
                            .to_string(),
                    })
                }
                _ => {}
            }
            if start.elapsed() > timeout {
                return Err(VmmError::Timeout {
                    what: format!("migration through {}", self.path.display()),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A fake QEMU that greets, accepts capabilities, emits an event before
    /// one answer and refuses `cont`.
    #[test]
    fn negotiates_skips_events_and_reports_errors() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut seen = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_string();
                match cmd.as_str() {
                    "query-status" => {
                        writeln!(w, r#"{{"event": "STOP", "data": {{}}}}"#).unwrap();
                        writeln!(
                            w,
                            r#"{{"return": {{"status": "paused", "running": false}}}}"#
                        )
                        .unwrap();
                    }
                    "cont" => writeln!(
                        w,
                        r#"{{"error": {{"class": "GenericError", "desc": "guest is gone"}}}}"#
                    )
                    .unwrap(),
                    _ => writeln!(w, r#"{{"return": {{}}}}"#).unwrap(),
                }
                seen.push(cmd);
                line.clear();
            }
            seen
        });
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(q.status().unwrap(), "paused");
        let e = q.execute("cont", None).unwrap_err().to_string();
        assert_eq!(e, "qemu cont: guest is gone");
        drop(q);
        assert_eq!(
            t.join().unwrap(),
            ["qmp_capabilities", "query-status", "cont"]
        );
    }
}
