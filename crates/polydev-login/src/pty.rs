//! Starting a program on a fresh pseudo-terminal, in its own session and
//! process group, optionally as another user.
//!
//! No `script` or `timeout` wrapper (SPEC §3 pitfalls: `script -q` hides the
//! exit code, `timeout` without `--foreground` freezes a TTY program): the
//! child is our direct child, the PTY slave is its controlling terminal, and
//! its process group id is its pid, so the whole group can be signalled.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::pty::{openpty, Winsize};

use crate::LoginError;

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Program (a path, or a name looked up on `env`'s `PATH`).
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// The complete environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// `(uid, gid)` to run as; `None` keeps ours.
    pub run_as: Option<(u32, u32)>,
    /// Terminal size. Wide, so a CLI does not hard-wrap a long URL.
    pub cols: u16,
    /// Terminal rows.
    pub rows: u16,
}

/// A started program.
#[derive(Debug)]
pub struct PtyChild {
    /// The process (its pid is also its process group id).
    pub child: Child,
    /// The PTY master: read the terminal's output, write its input.
    pub master: File,
}

fn pty_err(what: &'static str) -> impl FnOnce(std::io::Error) -> LoginError {
    move |source| LoginError::Pty { what, source }
}

fn cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a PTY and starts `spec` on it.
pub fn spawn(spec: &Spec) -> Result<PtyChild, LoginError> {
    let size = Winsize {
        ws_row: spec.rows,
        ws_col: spec.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).map_err(|e| LoginError::Pty {
        what: "openpty",
        source: e.into(),
    })?;
    // Neither end may leak into the child beyond its stdio copies.
    cloexec(&pty.master).map_err(pty_err("set close-on-exec on the master"))?;
    cloexec(&pty.slave).map_err(pty_err("set close-on-exec on the slave"))?;
    if let Some((uid, gid)) = spec.run_as {
        nix::unistd::fchown(pty.slave.as_raw_fd(), Some(uid.into()), Some(gid.into())).map_err(
            |e| LoginError::Pty {
                what: "hand the terminal to the CLI user",
                source: e.into(),
            },
        )?;
    }
    let stdio = |what| {
        pty.slave
            .try_clone()
            .map(Stdio::from)
            .map_err(pty_err(what))
    };
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(
            spec.env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
        .current_dir(&spec.cwd)
        .stdin(stdio("duplicate the slave for stdin")?)
        .stdout(stdio("duplicate the slave for stdout")?)
        .stderr(stdio("duplicate the slave for stderr")?);
    if let Some((uid, gid)) = spec.run_as {
        // std drops supplementary groups when it changes the uid as root.
        cmd.uid(uid).gid(gid);
    }
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // stdin is the slave: make it the controlling terminal.
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| LoginError::Spawn {
        program: spec.program.display().to_string(),
        source,
    })?;
    drop(cmd); // closes our copies of the slave: EOF/EIO once the child is gone.
    drop(pty.slave);
    Ok(PtyChild {
        child,
        master: File::from(pty.master),
    })
}
