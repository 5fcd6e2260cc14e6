//! A private Xvfb for tests and benchmarks: started with `-displayfd` (the
//! server picks a free display number and reports it once it accepts
//! connections) and killed when dropped, panics included; it also dies
//! with the process that started it (`PR_SET_PDEATHSIG`).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `xvfb` package puts the server.
pub const XVFB: &str = "/usr/bin/Xvfb";

/// A running Xvfb.
#[derive(Debug)]
pub struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    /// Whether Xvfb is installed.
    pub fn available() -> bool {
        std::path::Path::new(XVFB).is_file()
    }

    /// Starts `Xvfb -screen 0 {width}x{height}x24` on a free display.
    pub fn start(width: u16, height: u16) -> Result<Self, String> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fresh fds from pipe2.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let wfd = w.as_raw_fd();
        let mut cmd = Command::new(XVFB);
        cmd.args(["-displayfd", &wfd.to_string(), "-screen", "0"])
            .arg(format!("{width}x{height}x24"))
            .args(["-nolisten", "tcp", "-noreset"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Keep the write end across exec; die with the parent.
                let flags = libc::fcntl(wfd, libc::F_GETFD);
                libc::fcntl(wfd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {XVFB}: {e} (install the xvfb package)"))?;
        drop(w);
        let mut x = Self {
            child,
            display: String::new(),
        };
        let mut file = std::fs::File::from(r);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        loop {
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("Xvfb did not report a display within 20 s".into());
            }
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            let mut buf = [0u8; 16];
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.contains(&b'\n') {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading Xvfb's display number: {e}")),
            }
        }
        let n: u32 = String::from_utf8_lossy(&got)
            .trim()
            .parse()
            .map_err(|_| format!("Xvfb exited without a display (said {got:?})"))?;
        x.display = format!(":{n}");
        Ok(x)
    }

    /// The display name, e.g. `:5`.
    pub fn display(&self) -> &str {
        &self.display
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
