//! The runs API: `POST /api/runs`, `GET /api/runs?userId=`,
//! `GET /api/runs/:id`, `GET /api/runs/:id/events` (Server-Sent Events,
//! resumable with `Last-Event-ID`), `POST /api/runs/:id/cancel`.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use polydev_core::auth::Provider;
use polydev_store::{NewRun, RunRecord};
use serde_json::json;
use std::collections::VecDeque;
use std::time::Duration;

/// `POST /api/runs` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateRun {
    user_id: String,
    provider: String,
    prompt: String,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

fn unprocessable(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, msg)
}

/// A conversation id or model name: 1–256 characters of
/// `[A-Za-z0-9._:/@-]` (the CLIs' ids are UUIDs or hex; model names may
/// carry a `/` or `@`).
fn check_word(what: &str, code: &'static str, v: &str) -> Result<(), ApiError> {
    let ok = !v.is_empty()
        && v.len() <= 256
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(unprocessable(
            code,
            format!("{what} must be 1-256 characters of letters, digits and . _ : / @ -, not starting with '-'"),
        ))
    }
}

/// The JSON of a run, written straight from the record (no intermediate
/// JSON tree: lists of runs are a hot path).
pub fn run_json(r: &RunRecord) -> RunView<'_> {
    RunView {
        run_id: &r.run_id,
        user_id: &r.user_id,
        provider: &r.provider,
        model: r.model.as_deref(),
        status: r.status,
        exit_code: r.exit_code,
        answer: r.answer.as_deref(),
        error: r.error.as_deref(),
        conversation_id: r.conversation_id.as_deref().or(r.resume_id.as_deref()),
        continues: r.resume_id.as_deref(),
        usage: Usage {
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_usd: r.cost_usd,
        },
        vm_id: r.vm_id.as_deref(),
        vm: r.vm_found.as_deref(),
        timeout_secs: r.timeout_secs,
        timings: Timings {
            queued_at: r.created_at,
            vm_ready_at: r.vm_ready_at,
            cli_started_at: r.cli_started_at,
            first_output_at: r.first_output_at,
            finished_at: r.finished_at,
        },
        event_count: r.event_count,
        events_url: format!("/api/runs/{}/events", r.run_id),
    }
}

/// A run as the API shows it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView<'a> {
    run_id: &'a str,
    user_id: &'a str,
    provider: &'a str,
    model: Option<&'a str>,
    status: polydev_core::run::RunStatus,
    exit_code: Option<i64>,
    answer: Option<&'a str>,
    error: Option<&'a str>,
    /// The CLI's conversation id, else the one the run continues.
    conversation_id: Option<&'a str>,
    continues: Option<&'a str>,
    usage: Usage,
    vm_id: Option<&'a str>,
    /// How the VM was found: `running`, `resumed`, `booted`.
    vm: Option<&'a str>,
    timeout_secs: i64,
    timings: Timings,
    event_count: i64,
    events_url: String,
}

/// A run's tokens and cost.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cost_usd: Option<f64>,
}

/// A run's moments (Unix ms).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Timings {
    queued_at: i64,
    vm_ready_at: Option<i64>,
    cli_started_at: Option<i64>,
    first_output_at: Option<i64>,
    finished_at: Option<i64>,
}

fn new_run_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    format!("run_{}", hex::encode(b))
}

/// `POST /api/runs`.
pub async fn create(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    body: Result<Json<CreateRun>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    crate::api::validate_user_id(&b.user_id)?;
    caller.act_for(&b.user_id)?;
    let p: Provider = b
        .provider
        .parse()
        .map_err(|e: polydev_core::ParseEnumError| {
            unprocessable("invalid_provider", e.to_string())
        })?;
    let cfg = s.runs.config();
    if b.prompt.trim().is_empty() {
        return Err(unprocessable("invalid_prompt", "prompt is empty"));
    }
    if b.prompt.len() > cfg.max_prompt_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "prompt_too_large",
            format!(
                "the prompt is {} bytes; the limit is {} (POLYDEV_MAX_PROMPT_BYTES)",
                b.prompt.len(),
                cfg.max_prompt_bytes
            ),
        ));
    }
    if b.prompt.contains('\0') {
        return Err(unprocessable(
            "invalid_prompt",
            "prompt contains a NUL character",
        ));
    }
    if let Some(c) = &b.conversation_id {
        check_word("conversationId", "invalid_conversation_id", c)?;
    }
    if let Some(m) = &b.model {
        check_word("model", "invalid_model", m)?;
    }
    let max = cfg.max_timeout.as_secs();
    let timeout = b.timeout_secs.unwrap_or(cfg.default_timeout.as_secs());
    if timeout == 0 || timeout > max {
        return Err(unprocessable(
            "invalid_timeout",
            format!("timeoutSecs must be 1-{max}"),
        ));
    }
    match s.runtime.store().get_credential(&b.user_id, p.as_str()).await? {
        None => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_connected",
                format!(
                    "{} has not connected {p}: sign in first (POST /api/auth/start) or store an API key (PUT /api/credentials/{}/{p})",
                    b.user_id, b.user_id
                ),
            ))
        }
        Some(c) if !c.is_valid => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "credential_invalid",
                format!(
                    "the provider refused {}'s {p} credential ({}): reconnect {p} (POST /api/auth/start) or store a new API key",
                    b.user_id,
                    c.invalid_reason.unwrap_or_else(|| "no reason recorded".into())
                ),
            ))
        }
        Some(_) => {}
    }
    let cap = s.runtime.config().admission.user_max_runs;
    let open = s
        .runtime
        .store()
        .list_runs(Some(&b.user_id), cap as i64 + 1)
        .await?
        .iter()
        .filter(|r| !r.status.is_terminal())
        .count();
    if open >= cap {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "user_limit",
            format!(
                "{} has {open} runs queued or running, the most allowed (POLYDEV_USER_MAX_RUNS={cap}); wait for one to end or cancel it",
                b.user_id
            ),
        ));
    }
    let id = new_run_id();
    let rec = s
        .runtime
        .store()
        .insert_run(&NewRun {
            run_id: &id,
            user_id: &b.user_id,
            provider: p.as_str(),
            prompt: &b.prompt,
            model: b.model.as_deref(),
            resume_id: b.conversation_id.as_deref(),
            timeout_secs: timeout as i64,
        })
        .await?;
    tracing::info!(run_id = %id, user_id = %b.user_id, provider = %p, "run queued");
    s.runs.kick(&b.user_id).await;
    Ok((
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, format!("/api/runs/{id}"))],
        Json(json!({"runId": id, "status": rec.status, "run": run_json(&rec)})),
    )
        .into_response())
}

/// The run `id` if the caller sees it; 404 alike for another user's run
/// and for none.
async fn find(s: &AppState, caller: &crate::auth::Caller, id: &str) -> Result<RunRecord, ApiError> {
    let missing = || format!("no run with id {id}");
    let r = s
        .runtime
        .store()
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(missing()))?;
    caller.owns(&r.user_id, missing)?;
    Ok(r)
}

/// `GET /api/runs/:id`.
pub async fn get(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(run_json(&find(&s, &caller, &id).await?)).into_response())
}

/// `GET /api/runs` query.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(rename = "userId")]
    user_id: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/runs?userId=&limit=`: newest first.
pub async fn list(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(u) = &q.user_id {
        crate::api::validate_user_id(u)?;
    }
    let scope = caller.list_scope(q.user_id.as_deref())?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let runs = s.runtime.store().list_runs(scope.as_deref(), limit).await?;
    #[derive(serde::Serialize)]
    struct Page<'a> {
        runs: Vec<RunView<'a>>,
    }
    Ok(Json(Page {
        runs: runs.iter().map(run_json).collect(),
    })
    .into_response())
}

/// `POST /api/runs/:id/cancel`.
pub async fn cancel(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = find(&s, &caller, &id).await?;
    if r.status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_ended",
            format!("run {id} already ended: {}", r.status),
        ));
    }
    s.runs.cancel(&id).await.map_err(ApiError::internal)?;
    let r = find(&s, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(run_json(&r))).into_response())
}

/// `GET /api/runs/:id/events` query.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events after this sequence number (as `Last-Event-ID`).
    after: Option<i64>,
}

/// `GET /api/runs/:id/events`: every stored event after `Last-Event-ID`
/// (or `?after=`), then new ones as they come, until the run has ended and
/// its last event was sent. Each SSE event has `id` (its sequence number),
/// `event` (its kind) and `data` (JSON, with the CLI's raw line).
pub async fn events(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    find(&s, &caller, &id).await?;
    let header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event number"))
        })
        .transpose()?;
    let after = header.or(q.after).unwrap_or(0).max(0);
    let rx = s.runs.subscribe(&id);
    let state = Feed {
        s,
        id,
        after,
        rx,
        buf: VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(state, |mut f| async move {
        f.next()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), f))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct Feed {
    s: AppState,
    id: String,
    after: i64,
    rx: tokio::sync::watch::Receiver<i64>,
    buf: VecDeque<polydev_store::RunEvent>,
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                self.after = e.seq;
                return Some(
                    Event::default()
                        .id(e.seq.to_string())
                        .event(e.kind)
                        .data(e.data),
                );
            }
            // Read the status before the events: events stored before the
            // run ended are then all read below.
            let ended = match self.s.runtime.store().get_run(&self.id).await {
                Ok(Some(r)) => r.status.is_terminal(),
                Ok(None) => true,
                Err(e) => {
                    tracing::warn!(run_id = %self.id, error = %e, "reading a run for its event stream");
                    false
                }
            };
            match self
                .s
                .runtime
                .store()
                .run_events(&self.id, self.after, 256)
                .await
            {
                Ok(evs) if !evs.is_empty() => {
                    self.buf.extend(evs);
                    continue;
                }
                Ok(_) if ended => return None,
                Ok(_) => {}
                Err(e) => tracing::warn!(run_id = %self.id, error = %e, "reading a run's events"),
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.rx.changed()).await;
            if self.rx.has_changed().is_err() {
                // The run's writer is gone: poll.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polydev_core::run::RunStatus;

    #[test]
    fn a_run_shows_every_field_in_its_place() {
        let r = RunRecord {
            run_id: "run_1".into(),
            user_id: "u1".into(),
            provider: "codex".into(),
            prompt: "not shown".into(),
            model: Some("m".into()),
            resume_id: Some("th-0".into()),
            timeout_secs: 60,
            status: RunStatus::Completed,
            vm_id: Some("vm_1".into()),
            vm_found: Some("resumed".into()),
            agent_proc_id: Some("p1".into()),
            exit_code: Some(0),
            answer: Some("hi".into()),
            error: None,
            conversation_id: None,
            input_tokens: Some(10),
            output_tokens: Some(5),
            cost_usd: Some(0.25),
            totals: Some("{}".into()),
            checkpoint: Some("{}".into()),
            event_count: 7,
            created_at: 1,
            vm_ready_at: Some(2),
            cli_started_at: Some(3),
            first_output_at: Some(4),
            finished_at: Some(5),
        };
        assert_eq!(
            serde_json::to_value(run_json(&r)).unwrap(),
            json!({
                "runId": "run_1", "userId": "u1", "provider": "codex", "model": "m",
                "status": "completed", "exitCode": 0, "answer": "hi", "error": null,
                "conversationId": "th-0", "continues": "th-0",
                "usage": {"inputTokens": 10, "outputTokens": 5, "costUsd": 0.25},
                "vmId": "vm_1", "vm": "resumed", "timeoutSecs": 60,
                "timings": {"queuedAt": 1, "vmReadyAt": 2, "cliStartedAt": 3,
                            "firstOutputAt": 4, "finishedAt": 5},
                "eventCount": 7, "eventsUrl": "/api/runs/run_1/events",
            })
        );
        let r = RunRecord {
            conversation_id: Some("th-1".into()),
            ..r
        };
        assert_eq!(
            serde_json::to_value(run_json(&r)).unwrap()["conversationId"],
            "th-1"
        );
    }
}
