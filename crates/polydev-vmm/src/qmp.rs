//! A small blocking QMP client: connect to QEMU's control socket, read the
//! greeting, negotiate capabilities, and run one command at a time, skipping
//! the asynchronous events QEMU interleaves with answers. QMP errors become
//! [`VmmError::Api`] carrying QEMU's own `desc`. A command may carry an open
//! file descriptor (`SCM_RIGHTS`), as `getfd` expects: that is how a QEMU
//! that has dropped its privileges is handed a file it could not open.

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
        self.execute_passing(command, arguments, None)
    }

    /// Hands QEMU a duplicate of `fd` under `name` (`getfd`): later commands
    /// name it as `fd:NAME` (`migrate`, `migrate-incoming`). QEMU keeps its
    /// own copy; the caller may close `fd` afterwards.
    pub fn pass_fd(&mut self, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        self.execute_passing("getfd", Some(json!({ "fdname": name })), Some(fd))
            .map(drop)
    }

    fn execute_passing(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let sent = match fd {
            // The descriptor travels with the command's first bytes.
            Some(fd) => send_with_fd(&self.writer, line.as_bytes(), fd)
                .and_then(|n| self.writer.write_all(&line.as_bytes()[n..])),
            None => self.writer.write_all(line.as_bytes()),
        };
        sent.map_err(|e| VmmError::Control {
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

/// Sends (some of) `bytes` on `sock` with `fd` attached as `SCM_RIGHTS`;
/// returns how many bytes went.
fn send_with_fd(
    sock: &UnixStream,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let raw: libc::c_int = fd.as_raw_fd();
    // SAFETY: CMSG_SPACE and CMSG_LEN are pure computations on a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // u64 elements keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `control`, which has room for one cmsghdr with
    // one int (CMSG_SPACE above); CMSG_FIRSTHDR is therefore non-null, and
    // every pointer stays valid for the duration of the sendmsg call.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::c_int, raw);
    }
    loop {
        // SAFETY: as above; `msg` and what it points at outlive the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
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

    /// `getfd`: the descriptor arrives with the command, in the other
    /// process, and writes into the caller's file.
    #[test]
    fn passes_a_descriptor_with_getfd() {
        use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("qmp.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut got = Vec::new();
            let mut pending = Vec::new();
            loop {
                // recvmsg, byte stream plus any SCM_RIGHTS descriptor.
                let mut buf = [0u8; 512];
                let mut control = [0u64; 8];
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                    iov_len: buf.len(),
                };
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = std::mem::size_of_val(&control) as _;
                let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
                assert!(n >= 0);
                if n == 0 {
                    break;
                }
                let mut fd = None;
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    if !c.is_null() && (*c).cmsg_type == libc::SCM_RIGHTS {
                        let raw =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                        fd = Some(OwnedFd::from_raw_fd(raw));
                    }
                }
                pending.extend_from_slice(&buf[..n as usize]);
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let v: Value = serde_json::from_slice(&line).unwrap();
                    if v["execute"] == "getfd" {
                        let mut f =
                            std::fs::File::from(fd.take().expect("getfd without a descriptor"));
                        f.write_all(b"written by the other side").unwrap();
                    }
                    got.push(v);
                    writeln!(w, r#"{{"return": {{}}}}"#).unwrap();
                }
            }
            got
        });
        let mut q = Qmp::connect(&sock, Duration::from_secs(5)).unwrap();
        let file = d.path().join("state");
        let f = std::fs::File::create(&file).unwrap();
        q.pass_fd("snapshot", f.as_fd()).unwrap();
        drop(f);
        q.execute("query-status", None).unwrap();
        drop(q);
        let got = t.join().unwrap();
        assert_eq!(got[1]["execute"], "getfd");
        assert_eq!(got[1]["arguments"]["fdname"], "snapshot");
        assert_eq!(got[2]["execute"], "query-status");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "written by the other side"
        );
    }
}
