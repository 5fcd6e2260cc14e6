//! `POST /exec`: runs one command to completion and returns its output.
//!
//! The command runs in its own process group (so a timeout kills everything
//! it started), optionally as another user, with a clean environment:
//! `PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`, `LANG` plus what the request
//! adds. Each output stream is kept up to a bound; the rest is read and
//! dropped, and the answer says it was truncated.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::users;

/// Default bound on each output stream.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;
/// Largest bound a request may ask for.
pub const MAX_OUTPUT_LIMIT: usize = 16 << 20;
/// Default time limit.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// Largest time limit a request may ask for (one hour).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// `PATH` of every command.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The request body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments; the program is looked up in `PATH`.
    pub argv: Vec<String>,
    /// Extra environment variables (override the defaults).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; default: the user's home.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run as this user (name in `/etc/passwd`); default: the agent's user.
    #[serde(default)]
    pub user: Option<String>,
    /// Time limit in milliseconds; default [`DEFAULT_TIMEOUT_MS`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Text written to the command's stdin (then closed); default: no stdin.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Bound on each output stream in bytes; default [`DEFAULT_MAX_OUTPUT`].
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExecResponse {
    /// The exit status; `None` when a signal ended the command.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Its stdout (UTF-8, invalid sequences replaced).
    pub stdout: String,
    /// Its stderr (UTF-8, invalid sequences replaced).
    pub stderr: String,
    /// True when stdout was longer than the bound.
    pub stdout_truncated: bool,
    /// True when stderr was longer than the bound.
    pub stderr_truncated: bool,
    /// True when the time limit killed it.
    pub timed_out: bool,
    /// Wall-clock time it ran.
    pub duration_ms: u64,
}

/// Why a command could not be run at all (a 400 or 500 answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecError {
    /// The request is unusable.
    BadRequest(String),
    /// The command could not be started.
    Spawn(String),
}

/// Reads `r` to its end, keeping at most `max` bytes.
async fn read_bounded(mut r: impl AsyncRead + Unpin, max: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

/// Checks what `/exec` and `/procs` both take: a program, plain
/// environment names and values, an absolute working directory, a time
/// limit within bounds.
pub(crate) fn check_launch(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<(), String> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err("argv must name a program".into());
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("argv must not contain NUL bytes".into());
    }
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(format!(
                "invalid environment variable name or value for {k:?}"
            ));
        }
    }
    if let Some(cwd) = cwd {
        if !cwd.starts_with('/') {
            return Err(format!("cwd {cwd:?} must be an absolute path"));
        }
    }
    if matches!(timeout_ms, Some(t) if t == 0 || t > MAX_TIMEOUT_MS) {
        return Err(format!("timeoutMs must be between 1 and {MAX_TIMEOUT_MS}"));
    }
    Ok(())
}

/// The command for `argv`, as `user` (default: the agent's) in `cwd`
/// (default: the user's home), with a clean environment (`PATH`, `HOME`,
/// `USER`, `LOGNAME`, `SHELL`, `LANG`) plus `env`. Returns it and its
/// working directory.
pub(crate) fn command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
    user: Option<&str>,
) -> Result<(tokio::process::Command, String), String> {
    let user = match user {
        Some(name) => Some(users::lookup(name)?),
        None => None,
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().env("PATH", PATH);
    cmd.env("LANG", "C.UTF-8");
    let home = match &user {
        Some(u) => {
            cmd.uid(u.uid).gid(u.gid);
            cmd.env("USER", &u.name)
                .env("LOGNAME", &u.name)
                .env("SHELL", &u.shell);
            u.home.clone()
        }
        None => std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
    };
    cmd.env("HOME", &home);
    cmd.envs(env);
    let cwd = cwd.map(str::to_string).unwrap_or(home);
    cmd.current_dir(&cwd);
    Ok((cmd, cwd))
}

fn validate(req: &ExecRequest) -> Result<(), ExecError> {
    check_launch(&req.argv, &req.env, req.cwd.as_deref(), req.timeout_ms)
        .map_err(ExecError::BadRequest)?;
    if matches!(req.max_output_bytes, Some(m) if m > MAX_OUTPUT_LIMIT) {
        return Err(ExecError::BadRequest(format!(
            "maxOutputBytes must be at most {MAX_OUTPUT_LIMIT}"
        )));
    }
    Ok(())
}

/// Runs the command described by `req`.
pub async fn run(req: ExecRequest) -> Result<ExecResponse, ExecError> {
    validate(&req)?;
    let (mut cmd, cwd) = command(&req.argv, &req.env, req.cwd.as_deref(), req.user.as_deref())
        .map_err(ExecError::BadRequest)?;
    cmd.process_group(0)
        .kill_on_drop(true)
        .stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        ExecError::Spawn(format!(
            "cannot start {:?} in {cwd:?}{}: {e}",
            req.argv[0],
            req.user
                .as_ref()
                .map(|u| format!(" as {u}"))
                .unwrap_or_default()
        ))
    })?;
    let pgid = child.id().map(|p| p as i32);
    let max = req.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT);
    let stdout = child
        .stdout
        .take()
        .map(|o| tokio::spawn(read_bounded(o, max)));
    let stderr = child
        .stderr
        .take()
        .map(|e| tokio::spawn(read_bounded(e, max)));
    if let (Some(text), Some(mut input)) = (req.stdin, child.stdin.take()) {
        // A command that does not read its stdin closes the pipe: ignore that.
        tokio::spawn(async move {
            let _ = input.write_all(text.as_bytes()).await;
            let _ = input.shutdown().await;
        });
    }
    let limit = Duration::from_millis(req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    let (status, timed_out) = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => (status.ok(), false),
        Err(_) => {
            if let Some(pgid) = pgid {
                // SAFETY: kill(2) with a negative pid signals the process
                // group we created for this command; no memory is involved.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            (child.wait().await.ok(), true)
        }
    };
    // Also end anything the command left behind in its group, so the pipes
    // close; then wait briefly for the readers.
    if let Some(pgid) = pgid {
        // SAFETY: as above; the group may already be gone (ESRCH is fine).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let collect = |h: Option<tokio::task::JoinHandle<(Vec<u8>, bool)>>| async move {
        match h {
            Some(h) => tokio::time::timeout(Duration::from_secs(5), h)
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default(),
            None => Default::default(),
        }
    };
    let (out, out_trunc) = collect(stdout).await;
    let (err, err_trunc) = collect(stderr).await;
    use std::os::unix::process::ExitStatusExt;
    Ok(ExecResponse {
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        stdout_truncated: out_trunc,
        stderr_truncated: err_trunc,
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        let ok = ExecRequest {
            argv: vec!["true".into()],
            ..Default::default()
        };
        assert!(validate(&ok).is_ok());
        assert!(validate(&ExecRequest::default()).is_err());
        let mut r = ok.clone();
        r.cwd = Some("rel".into());
        assert!(validate(&r).is_err());
        let mut r = ok.clone();
        r.env.insert("A=B".into(), "x".into());
        assert!(validate(&r).is_err());
        let mut r = ok;
        r.timeout_ms = Some(0);
        assert!(validate(&r).is_err());
    }
}
