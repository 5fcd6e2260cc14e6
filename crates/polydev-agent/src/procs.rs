//! Streamed processes: `POST /procs` starts a command and answers at once;
//! its output is kept as numbered events that `GET /procs/:id/events`
//! streams as they are produced (NDJSON, from any event number, so a
//! reader that lost its connection resumes where it stopped).
//!
//! A process runs in a session and process group of its own, as the
//! requested user in their home, with a clean environment (as `/exec`). Its
//! stdin is closed, given as text, or kept open for `POST /procs/:id/stdin`.
//! `POST /procs/:id/signal` signals the group; the deadline, `DELETE
//! /procs/:id` and the end of the process kill everything left in its
//! session, so nothing outlives a cancel or a deadline.
//!
//! Events (one JSON object per line):
//! `{"seq":N,"type":"stdout"|"stderr","data":"<base64>"}`,
//! `{"seq":N,"type":"exit","exitCode":…,"signal":…,"timedOut":…,"durationMs":…}` (last), and
//! `{"seq":N,"type":"gap","lost":K}` when a reader asks for events already
//! dropped (each process keeps its last [`MAX_KEPT_BYTES`] of output).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::watch;

use crate::exec::DEFAULT_TIMEOUT_MS;

/// Output kept per process (older events are dropped first).
pub const MAX_KEPT_BYTES: usize = 8 << 20;
/// Processes kept at once (running or exited); exited ones go first.
pub const MAX_PROCS: usize = 64;
/// How long an exited process's events stay readable.
pub const KEEP_EXITED: Duration = Duration::from_secs(600);

/// `POST /procs` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; default: the user's home.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Run as this user; default: the agent's.
    #[serde(default)]
    pub user: Option<String>,
    /// Deadline in milliseconds; default [`DEFAULT_TIMEOUT_MS`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Text for stdin, then closed.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Keep stdin open for `POST /procs/:id/stdin`.
    #[serde(default)]
    pub stdin_open: bool,
}

#[derive(Debug, Clone)]
struct Event {
    seq: u64,
    json: Value,
    size: usize,
}

#[derive(Debug, Default)]
struct Log {
    events: VecDeque<Event>,
    next_seq: u64,
    kept: usize,
    exited: Option<Instant>,
}

impl Log {
    fn push(&mut self, mut json: Value, size: usize) {
        json["seq"] = self.next_seq.into();
        self.events.push_back(Event {
            seq: self.next_seq,
            json,
            size,
        });
        self.next_seq += 1;
        self.kept += size;
        while self.kept > MAX_KEPT_BYTES && self.events.len() > 1 {
            if let Some(e) = self.events.pop_front() {
                self.kept -= e.size;
            }
        }
    }
}

/// One started process.
pub struct Proc {
    pgid: i32,
    log: Mutex<Log>,
    changed: watch::Sender<u64>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
}

impl Proc {
    fn push(&self, json: Value, size: usize) {
        let mut l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        l.push(json, size);
        let n = l.next_seq;
        drop(l);
        self.changed.send_replace(n);
    }

    fn exited(&self) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .exited
            .is_some()
    }

    /// Events from `from` on, and whether the process has exited with all
    /// of them given.
    fn since(&self, from: u64) -> (Vec<Value>, bool) {
        let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let first = l.events.front().map(|e| e.seq).unwrap_or(l.next_seq);
        let mut out = Vec::new();
        if from < first {
            out.push(json!({"seq": from, "type": "gap", "lost": first - from}));
        }
        out.extend(
            l.events
                .iter()
                .filter(|e| e.seq >= from)
                .map(|e| e.json.clone()),
        );
        (out, l.exited.is_some())
    }
}

/// Every process the agent started.
#[derive(Default)]
pub struct ProcTable {
    procs: Mutex<HashMap<String, Arc<Proc>>>,
}

/// Why a request failed.
#[derive(Debug)]
pub enum ProcError {
    /// Bad input (400).
    BadRequest(String),
    /// No such process (404).
    NotFound(String),
    /// Too many processes (429).
    TooMany,
    /// Could not start (500).
    Spawn(String),
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom(2) fills the buffer it is given.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        b = t.to_le_bytes();
    }
    format!(
        "p_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Every process: pid → (parent pid, session id).
fn process_table() -> HashMap<i32, (i32, i32)> {
    let mut m = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return m;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state ppid pgrp session …
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") {
            continue;
        }
        if let (Some(ppid), Some(sid)) = (
            f.get(1).and_then(|s| s.parse().ok()),
            f.get(3).and_then(|s| s.parse().ok()),
        ) {
            m.insert(pid, (ppid, sid));
        }
    }
    m
}

/// Kills everything a started process made: its descendants (it is their
/// subreaper, so even those that started a session of their own stay below
/// it while it lives), then itself, then whatever is left in its session.
/// `sid` is its pid (it leads its own session and group).
pub fn kill_session(sid: i32) {
    for round in 0..6 {
        let table = process_table();
        let mut doomed: Vec<i32> = Vec::new();
        let mut frontier = vec![sid];
        while let Some(p) = frontier.pop() {
            for (pid, (ppid, _)) in &table {
                if *ppid == p && !doomed.contains(pid) {
                    doomed.push(*pid);
                    frontier.push(*pid);
                }
            }
        }
        let same_session: Vec<i32> = table
            .iter()
            .filter(|(pid, (_, s))| *s == sid && **pid != sid && !doomed.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        doomed.extend(same_session);
        let leader_alive = table.contains_key(&sid);
        if doomed.is_empty() && (!leader_alive || round > 0) {
            if leader_alive {
                // SAFETY: kill(2) of one process; no memory involved.
                unsafe { libc::kill(sid, libc::SIGKILL) };
            }
            if !leader_alive {
                break;
            }
        }
        for pid in &doomed {
            // SAFETY: as above.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        if round >= 1 && leader_alive {
            // SAFETY: as above.
            unsafe { libc::kill(sid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the process group; it may be gone (ESRCH).
    unsafe { libc::kill(-sid, libc::SIGKILL) };
}

async fn pump(p: Arc<Proc>, mut r: impl AsyncRead + Unpin, kind: &'static str) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let data = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
                p.push(json!({"type": kind, "data": data}), n);
            }
        }
    }
}

impl ProcTable {
    /// Starts a process; returns its id and pid.
    pub async fn start(self: &Arc<Self>, req: StartRequest) -> Result<(String, u32), ProcError> {
        crate::exec::check_launch(&req.argv, &req.env, req.cwd.as_deref(), req.timeout_ms)
            .map_err(ProcError::BadRequest)?;
        if req.stdin.is_some() && req.stdin_open {
            return Err(ProcError::BadRequest(
                "give stdin text or stdinOpen, not both".into(),
            ));
        }
        {
            let mut g = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            g.retain(|_, p| {
                let l = p.log.lock().unwrap_or_else(|e| e.into_inner());
                !matches!(l.exited, Some(t) if t.elapsed() > KEEP_EXITED)
            });
            if g.len() >= MAX_PROCS {
                let oldest = g
                    .iter()
                    .filter_map(|(id, p)| {
                        p.log
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .exited
                            .map(|t| (t, id.clone()))
                    })
                    .min();
                match oldest {
                    Some((_, id)) => {
                        g.remove(&id);
                    }
                    None => return Err(ProcError::TooMany),
                }
            }
        }
        let (mut cmd, cwd) =
            crate::exec::command(&req.argv, &req.env, req.cwd.as_deref(), req.user.as_deref())
                .map_err(ProcError::BadRequest)?;
        // SAFETY: setsid(2) and prctl(2) in the child before exec: both
        // async-signal-safe, no allocation. The child leads a new session
        // and group, and is the subreaper of everything it starts (kept
        // across exec), so nothing it starts escapes `kill_session`.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
                Ok(())
            });
        }
        cmd.kill_on_drop(false)
            .stdin(if req.stdin.is_some() || req.stdin_open {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            ProcError::Spawn(format!("cannot start {:?} in {cwd:?}: {e}", req.argv[0]))
        })?;
        let pid = child.id().unwrap_or(0);
        let (tx, _) = watch::channel(0u64);
        let p = Arc::new(Proc {
            pgid: pid as i32,
            log: Mutex::new(Log::default()),
            changed: tx,
            stdin: tokio::sync::Mutex::new(None),
        });
        let mut input = child.stdin.take();
        if let Some(text) = req.stdin.clone() {
            let Some(mut i) = input.take() else {
                return Err(ProcError::Spawn("the process has no stdin pipe".into()));
            };
            tokio::spawn(async move {
                let _ = i.write_all(text.as_bytes()).await;
                let _ = i.shutdown().await;
            });
        }
        *p.stdin.lock().await = input;
        let out = child
            .stdout
            .take()
            .map(|o| tokio::spawn(pump(p.clone(), o, "stdout")));
        let err = child
            .stderr
            .take()
            .map(|e| tokio::spawn(pump(p.clone(), e, "stderr")));
        let id = new_id();
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), p.clone());
        let limit = Duration::from_millis(req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
        let started = Instant::now();
        tokio::spawn(async move {
            let (status, timed_out) = match tokio::time::timeout(limit, child.wait()).await {
                Ok(s) => (s.ok(), false),
                Err(_) => {
                    let sid = p.pgid;
                    let _ = tokio::task::spawn_blocking(move || kill_session(sid)).await;
                    (child.wait().await.ok(), true)
                }
            };
            // Whatever the command left in its session goes with it, so the
            // pipes close and nothing outlives it.
            let sid = p.pgid;
            let _ = tokio::task::spawn_blocking(move || kill_session(sid)).await;
            for h in [out, err].into_iter().flatten() {
                let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
            }
            use std::os::unix::process::ExitStatusExt;
            p.push(
                json!({
                    "type": "exit",
                    "exitCode": status.and_then(|s| s.code()),
                    "signal": status.and_then(|s| s.signal()),
                    "timedOut": timed_out,
                    "durationMs": started.elapsed().as_millis() as u64,
                }),
                64,
            );
            p.log.lock().unwrap_or_else(|e| e.into_inner()).exited = Some(Instant::now());
            p.changed.send_replace(u64::MAX);
        });
        Ok((id, pid))
    }

    fn get(&self, id: &str) -> Result<Arc<Proc>, ProcError> {
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| ProcError::NotFound(format!("no process {id}")))
    }

    /// Status: running or the exit event.
    pub fn status(&self, id: &str) -> Result<Value, ProcError> {
        let p = self.get(id)?;
        let l = p.log.lock().unwrap_or_else(|e| e.into_inner());
        let exit = l
            .exited
            .and_then(|_| l.events.back().map(|e| e.json.clone()));
        Ok(
            json!({"procId": id, "pid": p.pgid, "running": exit.is_none(), "exit": exit, "nextSeq": l.next_seq}),
        )
    }

    /// Sends a signal (`TERM`, `INT`, `HUP`, `KILL`) to the process group.
    pub fn signal(&self, id: &str, name: &str) -> Result<(), ProcError> {
        let p = self.get(id)?;
        let sig = match name.trim_start_matches("SIG") {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "HUP" => libc::SIGHUP,
            "KILL" => libc::SIGKILL,
            other => {
                return Err(ProcError::BadRequest(format!(
                    "signal {other:?}: use TERM, INT, HUP or KILL"
                )))
            }
        };
        if !p.exited() {
            // SAFETY: kill(2) on the group we made; no memory involved.
            unsafe { libc::kill(-p.pgid, sig) };
        }
        Ok(())
    }

    /// Writes to stdin (kept open by `stdinOpen`); `close` closes it after.
    pub async fn write_stdin(&self, id: &str, data: &[u8], close: bool) -> Result<(), ProcError> {
        let p = self.get(id)?;
        let mut g = p.stdin.lock().await;
        let Some(i) = g.as_mut() else {
            return Err(ProcError::BadRequest(format!(
                "process {id} has no open stdin"
            )));
        };
        i.write_all(data)
            .await
            .map_err(|e| ProcError::BadRequest(format!("writing to the stdin of {id}: {e}")))?;
        if close {
            if let Some(mut i) = g.take() {
                let _ = i.shutdown().await;
            }
        }
        Ok(())
    }

    /// Kills the process's session (if running) and forgets it.
    pub fn remove(&self, id: &str) -> Result<(), ProcError> {
        let p = self.get(id)?;
        if !p.exited() {
            kill_session(p.pgid);
        }
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    /// The events from `from` on, as NDJSON chunks, until the exit event.
    pub fn events(
        &self,
        id: &str,
        from: u64,
    ) -> Result<
        impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static,
        ProcError,
    > {
        let p = self.get(id)?;
        let rx = p.changed.subscribe();
        Ok(futures_util::stream::unfold(
            (p, rx, from, false),
            |(p, mut rx, next, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let (evs, exited) = p.since(next);
                    if !evs.is_empty() {
                        let last = evs
                            .iter()
                            .filter_map(|e| e["seq"].as_u64().filter(|_| e["type"] != "gap"))
                            .max()
                            .map(|s| s + 1)
                            .unwrap_or(next);
                        let finished = evs.iter().any(|e| e["type"] == "exit");
                        let mut text = String::new();
                        for e in &evs {
                            text.push_str(&e.to_string());
                            text.push('\n');
                        }
                        return Some((
                            Ok(axum::body::Bytes::from(text)),
                            (p, rx, last.max(next), finished),
                        ));
                    }
                    if exited {
                        return None;
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        ))
    }
}
