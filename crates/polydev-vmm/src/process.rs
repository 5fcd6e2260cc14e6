//! VMM processes: spawning one inside a namespace, knowing whether it is
//! alive and ours, and stopping it. Works the same for a process this
//! controller started (a child it reaps) and one it re-adopted after a
//! restart (identified by its command line).

use crate::{Result, VmmError};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running VMM process.
#[derive(Debug, Clone)]
pub struct VmmProcess {
    /// Process id.
    pub pid: u32,
    /// Path of the VMM's control socket (QMP or the Firecracker API), if any.
    pub socket_path: Option<std::path::PathBuf>,
    /// Exit status once the process has ended, when it is our child.
    pub exit: Arc<Mutex<Option<ExitStatus>>>,
}

impl VmmProcess {
    /// The exit status, if this process was our child and has ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The whole environment a VMM starts with.
pub const VMM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Spawns `cmd` in its own session inside network namespace `netns`, with
/// a cleared environment (only [`VMM_PATH`]), stdout and stderr appended to
/// `log`. A thread reaps the child and records
/// its exit status, so a dead VMM never lingers as a zombie.
pub fn spawn_in_netns(
    cmd: Command,
    netns: &str,
    log: &Path,
    socket_path: Option<std::path::PathBuf>,
) -> Result<VmmProcess> {
    spawn_in_netns_split(cmd, netns, log, log, socket_path)
}

fn open_append(path: &Path, what: &'static str) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| VmmError::File {
            what,
            path: path.into(),
            source: e,
        })
}

/// Like [`spawn_in_netns`], with stdout appended to `stdout_log` and stderr
/// to `stderr_log` (Firecracker writes the guest's serial console to its
/// stdout).
pub fn spawn_in_netns_split(
    mut cmd: Command,
    netns: &str,
    stdout_log: &Path,
    stderr_log: &Path,
    socket_path: Option<std::path::PathBuf>,
) -> Result<VmmProcess> {
    use std::os::unix::process::CommandExt;
    let ns = polydev_net::netns::open(netns)?;
    let ns_fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
    let out = open_append(stdout_log, "VMM log")?;
    let err = if stdout_log == stderr_log {
        out.try_clone().map_err(|e| VmmError::File {
            what: "VMM log",
            path: stderr_log.into(),
            source: e,
        })?
    } else {
        open_append(stderr_log, "VMM log")?
    };
    let binary = cmd.get_program().to_string_lossy().into_owned();
    // A VMM sees none of the controller's environment (the vault's master
    // key, the TURN secret, the database URL): only a PATH.
    cmd.env_clear()
        .env("PATH", VMM_PATH)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, setns) on an fd that stays open
    // in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child: Child = cmd
        .spawn()
        .map_err(|e| VmmError::Spawn { binary, source: e })?;
    drop(ns);
    let pid = child.id();
    let exit = Arc::new(Mutex::new(None));
    let slot = exit.clone();
    std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let mut child = child;
            if let Ok(st) = child.wait() {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
            }
        })
        .map_err(|e| VmmError::Spawn {
            binary: "reaper thread".into(),
            source: e,
        })?;
    Ok(VmmProcess {
        pid,
        socket_path,
        exit,
    })
}

/// True if process `pid` is alive (not a zombie) and its command line
/// contains `marker` (the VM's directory), i.e. it is that VM's VMM and not
/// an unrelated process that reused the pid.
pub fn is_alive(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if !String::from_utf8_lossy(&cmdline).contains(marker) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// Stops the VMM `pid` (if alive and matching `marker`): SIGTERM, then
/// SIGKILL after `grace`, and waits until it is gone.
pub fn stop(pid: u32, marker: &str, grace: Duration) -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !is_alive(pid, marker) {
        return Ok(());
    }
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    let start = Instant::now();
    while is_alive(pid, marker) {
        if start.elapsed() > grace {
            let _ = kill(p, Signal::SIGKILL);
        }
        if start.elapsed() > grace + Duration::from_secs(10) {
            return Err(VmmError::Stop {
                pid,
                detail: "still alive 10 s after SIGKILL".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Process ids of every live process whose command line contains `marker`
/// (at start-up, the VMMs no record owns; in the soak and the tests, leaks).
pub fn find_by_marker(marker: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && is_alive(*pid, marker))
        .collect()
}

/// The first line a VMM binary prints for `args` (its `--version`), cached
/// per binary and arguments for the life of the process.
pub fn binary_version(binary: &Path, args: &[&str]) -> Result<String> {
    use std::collections::HashMap;
    static CACHE: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);
    let key = format!("{} {}", binary.display(), args.join(" "));
    if let Some(v) = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return Ok(v.clone());
    }
    let out = Command::new(binary)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| VmmError::Spawn {
            binary: binary.display().to_string(),
            source: e,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        Some(l) if out.status.success() => {
            let v = l.to_string();
            CACHE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(key, v.clone());
            Ok(v)
        }
        _ => Err(VmmError::Spawn {
            binary: binary.display().to_string(),
            source: std::io::Error::other(format!(
                "`{key}` printed no version ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }),
    }
}
