//! One run from start to end: the user's CLI VM (created or resumed), the
//! credential (file reconciled with the vault, or an API key in the
//! environment), the CLI started through the agent's `/procs` as the
//! `polydev` user, its output read and stored as numbered events, and the
//! outcome: status, exit code, answer, usage, conversation id, and the
//! credential marked valid or refused. A refreshed token is sealed back.

use super::reader::{Checkpoint, Exit, Reader};
use super::Runs;
use crate::agent_client::AgentTarget;
use crate::auth_flow::CLI_USER;
use crate::cli_vm::Hold;
use crate::credentials;
use hyper::body::Body;
use polydev_core::auth::Provider;
use polydev_core::run::{CredentialKind, RunStatus};
use polydev_core::vm::VmStatus;
use polydev_runs::command::{run_command, RunSpec};
use polydev_runs::normalize::{Kind, Normalizer, Usage};
use polydev_store::{RunOutcome, RunRecord, VmRecord};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The guest user's home, where every run starts (Gemini resumes only from
/// the directory a conversation began in).
const HOME: &str = "/home/polydev";
/// Reconnections to the agent's event stream before the run fails.
const MAX_RECONNECTS: u32 = 20;

/// How a run ended, before it is stored.
struct End {
    status: RunStatus,
    exit: Option<Exit>,
    error: Option<String>,
}

impl End {
    fn failed(msg: impl Into<String>) -> End {
        End {
            status: RunStatus::Failed,
            exit: None,
            error: Some(msg.into()),
        }
    }
    fn cancelled() -> End {
        End {
            status: RunStatus::Cancelled,
            exit: None,
            error: Some("cancelled".into()),
        }
    }
}

/// The event writer of one run: numbers events and stores them with the
/// reader's checkpoint.
struct Events<'a> {
    runs: &'a Runs,
    run_id: String,
    next: i64,
}

impl Events<'_> {
    async fn put(
        &mut self,
        events: Vec<(Kind, Value)>,
        cp: Option<&Checkpoint>,
    ) -> Result<(), String> {
        let cp = cp.map(|c| serde_json::to_string(c).unwrap_or_default());
        let rows: Vec<(&str, String)> = events
            .iter()
            .map(|(k, d)| (k.as_str(), d.to_string()))
            .collect();
        self.runs
            .rt
            .store()
            .append_run_events(&self.run_id, self.next, &rows, cp.as_deref())
            .await
            .map_err(|e| format!("storing the run's events: {e}"))?;
        self.next += rows.len() as i64;
        self.runs.notify(&self.run_id, self.next - 1);
        Ok(())
    }

    async fn status(&mut self, data: Value) {
        if let Err(e) = self.put(vec![(Kind::Status, data)], None).await {
            tracing::warn!(run_id = %self.run_id, error = %e, "storing a status event");
        }
    }
}

/// Carries `run` to its end (`reattach`: its CLI already runs; continue
/// reading from the stored checkpoint).
pub(super) async fn drive(
    runs: &Arc<Runs>,
    run: RunRecord,
    mut cancel: watch::Receiver<bool>,
    reattach: bool,
) {
    let mut ev = Events {
        runs,
        run_id: run.run_id.clone(),
        next: run.event_count + 1,
    };
    let provider: Provider = match run.provider.parse() {
        Ok(p) => p,
        Err(e) => {
            return finish(runs, &run, &mut ev, None, End::failed(e.to_string())).await;
        }
    };
    let (end, reader, vm) = if reattach {
        reattach_run(runs, &run, &mut ev, &mut cancel).await
    } else {
        start_run(runs, &run, provider, &mut ev, &mut cancel).await
    };
    let (vm, _hold) = match vm {
        Some((v, h)) => (Some(v), Some(h)),
        None => (None, None),
    };
    // Before the run ends: whoever sees it ended finds the vault current.
    if let Some(vm) = &vm {
        credentials::sync_all(&runs.rt, &runs.vault, vm).await;
    }
    finish(runs, &run, &mut ev, reader.as_ref(), end).await;
}

type Started = (End, Option<Reader>, Option<(VmRecord, Hold)>);

async fn cancelled(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn start_run(
    runs: &Arc<Runs>,
    run: &RunRecord,
    p: Provider,
    ev: &mut Events<'_>,
    cancel: &mut watch::Receiver<bool>,
) -> Started {
    ev.status(json!({"status": "starting"})).await;
    let opened = match credentials::open(&runs.rt, &runs.vault, &run.user_id, p).await {
        Ok(Some(o)) => o,
        Ok(None) => return (End::failed(not_connected(&run.user_id, p)), None, None),
        Err(e) => return (End::failed(e), None, None),
    };
    let ensured = tokio::select! {
        r = runs.cli.ensure(&run.user_id) => r,
        _ = cancelled(cancel) => return (End::cancelled(), None, None),
    };
    let (vm, hold, found) = match ensured {
        Ok(x) => x,
        Err(e) => return (End::failed(e), None, None),
    };
    if let Err(e) = runs
        .rt
        .store()
        .set_run_vm(
            &run.run_id,
            &vm.vm_id,
            &json!(found).as_str().unwrap_or("").to_string(),
        )
        .await
    {
        return (End::failed(e.to_string()), None, Some((vm, hold)));
    }
    ev.status(json!({"status": "vm_ready", "vmId": vm.vm_id, "vm": found}))
        .await;
    let settings = runs.cfg.providers.get(p).clone();
    let api_key = match opened.kind {
        CredentialKind::ApiKey => Some(String::from_utf8_lossy(&opened.secret).into_owned()),
        CredentialKind::Oauth => {
            if let Err(e) =
                credentials::reconcile_file(&runs.rt, &runs.vault, &vm, &run.user_id, p, &opened)
                    .await
            {
                return (End::failed(e), None, Some((vm, hold)));
            }
            None
        }
    };
    if p == Provider::GeminiCli {
        let selected = settings
            .selected_auth_type
            .clone()
            .or_else(|| api_key.as_ref().map(|_| "gemini-api-key".to_string()));
        if let Some(t) = selected {
            if let Err(e) = gemini_settings(runs, &vm, &t).await {
                return (End::failed(e), None, Some((vm, hold)));
            }
        }
    }
    let cmd = run_command(
        p,
        &RunSpec {
            prompt: &run.prompt,
            resume: run.resume_id.as_deref(),
            model: run.model.as_deref(),
            api_key: api_key.as_deref(),
        },
        &settings,
    );
    let body = json!({
        "argv": cmd.argv,
        "env": cmd.env,
        "user": CLI_USER,
        "cwd": HOME,
        "timeoutMs": run.timeout_secs.max(1) as u64 * 1000,
    });
    let started = runs
        .rt
        .agent_call(&vm, "POST", "/procs", Some(body), Duration::from_secs(30))
        .await;
    let proc_id = match started.as_ref().map(|v| v["procId"].as_str()) {
        Ok(Some(id)) => id.to_string(),
        Ok(None) => {
            return (
                End::failed("the agent started the CLI but gave no process id"),
                None,
                Some((vm, hold)),
            )
        }
        Err(e) => {
            return (
                End::failed(format!("starting the CLI: {e}")),
                None,
                Some((vm, hold)),
            )
        }
    };
    match runs.rt.store().set_run_started(&run.run_id, &proc_id).await {
        Ok(true) => {}
        _ => {
            // Cancelled (or lost) between the start and its record.
            let _ = runs
                .rt
                .agent_call(
                    &vm,
                    "DELETE",
                    &format!("/procs/{proc_id}"),
                    None,
                    Duration::from_secs(10),
                )
                .await;
            return (End::cancelled(), None, Some((vm, hold)));
        }
    }
    let mut reader = Reader::new(Normalizer::new(p));
    if let Err(e) = ev
        .put(
            vec![(
                Kind::Status,
                json!({"status": "running", "procId": proc_id}),
            )],
            Some(reader.checkpoint()),
        )
        .await
    {
        return (End::failed(e), Some(reader), Some((vm, hold)));
    }
    let end = follow(runs, run, &vm, &proc_id, &mut reader, ev, cancel).await;
    (end, Some(reader), Some((vm, hold)))
}

async fn reattach_run(
    runs: &Arc<Runs>,
    run: &RunRecord,
    ev: &mut Events<'_>,
    cancel: &mut watch::Receiver<bool>,
) -> Started {
    let (Some(vm_id), Some(proc_id)) = (&run.vm_id, &run.agent_proc_id) else {
        return (
            End::failed("the controller restarted before the CLI's process was recorded"),
            None,
            None,
        );
    };
    let vm = match runs.rt.store().get_vm(vm_id).await {
        Ok(Some(v)) if v.status == VmStatus::Running => v,
        Ok(Some(v)) => {
            let why = v.failure_reason.unwrap_or_else(|| v.status.to_string());
            return (
                End::failed(format!(
                    "the CLI VM {vm_id} stopped while the controller was down: {why}"
                )),
                None,
                None,
            );
        }
        Ok(None) => {
            return (
                End::failed(format!("the CLI VM {vm_id} is gone")),
                None,
                None,
            )
        }
        Err(e) => return (End::failed(e.to_string()), None, None),
    };
    let hold = runs.cli.hold(&vm.vm_id);
    let cp: Option<Checkpoint> = run
        .checkpoint
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok());
    let Some(cp) = cp else {
        return (
            End::failed("the run's reading checkpoint is missing or unreadable"),
            None,
            Some((vm, hold)),
        );
    };
    let mut reader = Reader::resume(cp);
    let end = follow(runs, run, &vm, proc_id, &mut reader, ev, cancel).await;
    (end, Some(reader), Some((vm, hold)))
}

/// Reads the process's events until it exits, reconnecting when the stream
/// breaks; kills it on cancel and past the deadline.
async fn follow(
    runs: &Runs,
    run: &RunRecord,
    vm: &VmRecord,
    proc_id: &str,
    reader: &mut Reader,
    ev: &mut Events<'_>,
    cancel: &mut watch::Receiver<bool>,
) -> End {
    let Some(target) = runs.rt.agent_target(vm) else {
        return End::failed("the CLI VM's agent configuration is missing");
    };
    // The agent kills the CLI at the deadline; this is the controller's own
    // guard for an agent that does not answer.
    let started = run.cli_started_at.unwrap_or_else(polydev_core::vm::now_ms);
    let guard_ms = started + run.timeout_secs.max(1) * 1000 + 30_000;
    let guard = Instant::now()
        + Duration::from_millis((guard_ms - polydev_core::vm::now_ms()).max(0) as u64);
    let mut failures = 0;
    loop {
        let from = reader.reconnect_from();
        let path = format!("/procs/{proc_id}/events?from={from}");
        let read = read_stream(runs, &target, &path, reader, ev);
        let r = tokio::select! {
            r = read => r,
            _ = cancelled(cancel) => {
                kill(runs, vm, proc_id).await;
                return End::cancelled();
            }
            _ = tokio::time::sleep_until(guard.into()) => {
                kill(runs, vm, proc_id).await;
                return End { status: RunStatus::Timeout, exit: None, error: Some(deadline_message(run)) };
            }
        };
        match r {
            Ok(Some(exit)) => {
                let status = if exit.timed_out {
                    RunStatus::Timeout
                } else {
                    RunStatus::Completed
                };
                let error = exit.timed_out.then(|| deadline_message(run));
                return End {
                    status,
                    exit: Some(exit),
                    error,
                };
            }
            Ok(None) => failures += 1,
            Err(Fatal(msg)) => return End::failed(msg),
        }
        if failures > MAX_RECONNECTS {
            return End::failed(
                "lost the CLI's output stream from the CLI VM's agent too many times",
            );
        }
        match runs.rt.store().get_vm(&vm.vm_id).await {
            Ok(Some(v)) if v.status == VmStatus::Running => {}
            Ok(Some(v)) => {
                let why = v.failure_reason.unwrap_or_else(|| v.status.to_string());
                return End::failed(format!(
                    "the CLI VM {} stopped during the run: {why}",
                    vm.vm_id
                ));
            }
            _ => return End::failed(format!("the CLI VM {} is gone", vm.vm_id)),
        }
        tokio::time::sleep(Duration::from_millis(200 * failures.min(10) as u64)).await;
    }
}

struct Fatal(String);

/// One connection to the agent's event stream: `Ok(Some(exit))` when the
/// process ended, `Ok(None)` when the stream broke (reconnect).
async fn read_stream(
    runs: &Runs,
    target: &AgentTarget,
    path: &str,
    reader: &mut Reader,
    ev: &mut Events<'_>,
) -> Result<Option<Exit>, Fatal> {
    let mut body = match target.stream(path, Duration::from_secs(10)).await {
        Ok(b) => b,
        Err(crate::agent_client::AgentError::Status { status: 404, .. }) => {
            return Err(Fatal(
                "the CLI's process is gone from the CLI VM (the VM restarted?)".into(),
            ))
        }
        Err(e) => {
            tracing::warn!(run_id = %ev.run_id, error = %e, "connecting to the CLI's output stream");
            return Ok(None);
        }
    };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        let data = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Some(Err(e)) => {
                tracing::warn!(run_id = %ev.run_id, error = %e, "the CLI's output stream broke");
                return Ok(None);
            }
            None => return Ok(None),
        };
        let mut events = Vec::new();
        let mut exit = None;
        let mut first = false;
        take_lines(&mut buf, &data, |line| {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                return;
            };
            let step = reader.feed(&v);
            first |= step.first_output;
            events.extend(step.events);
            if step.exit.is_some() {
                exit = step.exit;
            }
        });
        if buf.len() > 16 << 20 {
            return Err(Fatal("the agent sent an event line over 16 MiB".into()));
        }
        if first {
            let _ = runs.rt.store().set_run_first_output(&ev.run_id).await;
        }
        ev.put(events, Some(reader.checkpoint()))
            .await
            .map_err(Fatal)?;
        if exit.is_some() {
            return Ok(exit);
        }
    }
}

async fn kill(runs: &Runs, vm: &VmRecord, proc_id: &str) {
    if let Err(e) = runs
        .rt
        .agent_call(
            vm,
            "DELETE",
            &format!("/procs/{proc_id}"),
            None,
            Duration::from_secs(10),
        )
        .await
    {
        tracing::warn!(vm_id = %vm.vm_id, proc_id, error = %e, "killing a run's CLI");
    }
}

fn deadline_message(run: &RunRecord) -> String {
    format!(
        "the run's deadline of {} s passed; the CLI and everything it started were killed",
        run.timeout_secs
    )
}

fn not_connected(user_id: &str, p: Provider) -> String {
    format!(
        "{user_id} has not connected {p}: sign in (POST /api/auth/start) or store an API key (PUT /api/credentials/{user_id}/{p})"
    )
}

async fn gemini_settings(runs: &Runs, vm: &VmRecord, selected: &str) -> Result<(), String> {
    use base64::Engine;
    let content = json!({"security": {"auth": {"selectedType": selected}}}).to_string();
    let body = json!({
        "path": format!("{HOME}/.gemini/settings.json"),
        "contentBase64": base64::engine::general_purpose::STANDARD.encode(content),
        "mode": "0600",
        "owner": CLI_USER,
    });
    runs.rt
        .agent_call(vm, "POST", "/files", Some(body), Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|e| format!("writing Gemini CLI's settings in CLI VM {}: {e}", vm.vm_id))
}

/// Words in a CLI's error that mean the provider refused the credential.
fn is_auth_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    let words = [
        "authentication_error",
        "unauthorized",
        "unauthenticated",
        "invalid api key",
        "invalid_api_key",
        "invalid x-api-key",
        "api key not valid",
        "api_key_invalid",
        "token has expired",
        "please run /login",
    ];
    if words.iter().any(|w| t.contains(w)) {
        return true;
    }
    t.match_indices("401").any(|(i, _)| {
        let before = t[..i].chars().next_back();
        let after = t[i + 3..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

async fn finish(
    runs: &Runs,
    run: &RunRecord,
    ev: &mut Events<'_>,
    reader: Option<&Reader>,
    end: End,
) {
    let before: Option<Usage> = match &run.resume_id {
        Some(c) => runs
            .rt
            .store()
            .conversation_totals(&run.user_id, &run.provider, c)
            .await
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok()),
        None => None,
    };
    let summary = reader.map(|r| r.normalizer().summary(before));
    let stderr = reader
        .map(|r| r.stderr_tail().trim().to_string())
        .unwrap_or_default();
    let mut status = end.status;
    let mut error = end.error.clone();
    if status == RunStatus::Completed {
        let code = end.exit.as_ref().and_then(|e| e.code);
        let cli_error = summary.as_ref().is_some_and(|s| s.is_error);
        if code != Some(0) || cli_error {
            status = RunStatus::Failed;
            let said = summary.as_ref().and_then(|s| s.error.clone()).or_else(|| {
                stderr
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            });
            let how = match (code, end.exit.as_ref().and_then(|e| e.signal)) {
                (Some(c), _) => format!("the CLI exited {c}"),
                (None, Some(s)) => format!("the CLI was killed by signal {s}"),
                _ => "the CLI failed".into(),
            };
            error = Some(match said {
                Some(m) => format!("{how}: {m}"),
                None => how,
            });
        }
    }
    if status == RunStatus::Failed {
        if let Some(msg) = &error {
            if is_auth_failure(msg) || is_auth_failure(&stderr) {
                let _ = runs
                    .rt
                    .store()
                    .mark_credential(&run.user_id, &run.provider, Some(msg))
                    .await;
                error = Some(format!(
                    "{msg} — the provider refused the credential: reconnect {} (POST /api/auth/start) or store a new API key",
                    run.provider
                ));
            }
        }
    } else if status == RunStatus::Completed {
        let _ = runs
            .rt
            .store()
            .mark_credential(&run.user_id, &run.provider, None)
            .await;
    }
    if let Some(e) = &error {
        if status != RunStatus::Cancelled {
            ev.put(vec![(Kind::Error, json!({"message": e}))], None)
                .await
                .ok();
        }
    }
    let s = summary.unwrap_or_default();
    let totals = s
        .totals
        .map(|t| serde_json::to_string(&t).unwrap_or_default());
    let outcome = RunOutcome {
        exit_code: end.exit.as_ref().and_then(|e| e.code),
        answer: s.answer.as_deref(),
        error: error.as_deref(),
        conversation_id: s.conversation_id.as_deref(),
        input_tokens: s.usage.map(|u| u.input_tokens as i64),
        output_tokens: s.usage.map(|u| u.output_tokens as i64),
        cost_usd: s.usage.and_then(|u| u.cost_usd),
        totals: totals.as_deref(),
    };
    ev.status(json!({
        "status": status,
        "exitCode": outcome.exit_code,
        "error": error,
        "conversationId": s.conversation_id,
    }))
    .await;
    match runs
        .rt
        .store()
        .finish_run(&run.run_id, status, &outcome)
        .await
    {
        Ok(true) => {
            tracing::info!(run_id = %run.run_id, user_id = %run.user_id, status = %status, "run ended")
        }
        Ok(false) => {}
        Err(e) => tracing::error!(run_id = %run.run_id, error = %e, "recording a run's end"),
    }
    runs.notify(&run.run_id, ev.next - 1);
}

/// Appends `data` to `buf` and hands each complete line in it (without its
/// `\n`) to `f`, keeping the unfinished rest in `buf`. Only the new bytes are
/// searched for line ends and the lines taken are removed at once, so a long
/// line arriving in small frames, or many short lines in one frame, cost time
/// linear in their bytes.
fn take_lines(buf: &mut Vec<u8>, data: &[u8], mut f: impl FnMut(&[u8])) {
    let mut at = buf.len();
    buf.extend_from_slice(data);
    let mut start = 0;
    while let Some(i) = buf[at..].iter().position(|b| *b == b'\n') {
        f(&buf[start..at + i]);
        start = at + i + 1;
        at = start;
    }
    buf.drain(..start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_taken_across_frames_and_the_rest_kept() {
        let mut buf = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let mut take = |buf: &mut Vec<u8>, data: &[u8]| {
            take_lines(buf, data, |l| seen.push(String::from_utf8_lossy(l).into()))
        };
        take(&mut buf, b"{\"a\":1}\n{\"b\"");
        assert_eq!(buf, b"{\"b\"");
        take(&mut buf, b":2}");
        take(&mut buf, b"\n\nx\ny");
        assert_eq!(buf, b"y");
        drop(take);
        assert_eq!(seen, ["{\"a\":1}", "{\"b\":2}", "", "x"]);

        // A long line in small frames is one line; nothing is taken early.
        let mut buf = Vec::new();
        let mut n = 0;
        for _ in 0..4096 {
            take_lines(&mut buf, &[b'z'; 256], |_| n += 1);
        }
        assert_eq!((n, buf.len()), (0, 4096 * 256));
        take_lines(&mut buf, b"\n", |l| {
            n += 1;
            assert_eq!(l.len(), 4096 * 256);
        });
        assert_eq!((n, buf.len()), (1, 0));
    }

    #[test]
    fn auth_failures_are_recognized_in_each_clis_words() {
        for t in [
            "API Error: 401 {\"type\":\"error\",\"error\":{\"type\":\"authentication_error\"}}",
            "unexpected status 401 Unauthorized: Incorrect API key provided",
            "[API Error: API key not valid. Please pass a valid API key.]",
            "Invalid API key · Please run /login",
        ] {
            assert!(is_auth_failure(t), "{t}");
        }
        for t in [
            "exit 1: connection refused",
            "read 14012 bytes",
            "model overloaded (529)",
        ] {
            assert!(!is_auth_failure(t), "{t}");
        }
    }
}
