//! Prompt runs and their events. A run's status changes are compare-and-set;
//! its events are numbered from 1 and appended in one transaction with the
//! run's event count, so a sequence number is never given twice or skipped
//! (a reader resumes exactly with `Last-Event-ID`).

use polydev_core::run::RunStatus;
use polydev_core::vm::now_ms;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::error::Result;
use crate::{get_enum, Store};

/// One run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Id.
    pub run_id: String,
    /// Owner.
    pub user_id: String,
    /// Provider (`claude_code`, `codex`, `gemini_cli`).
    pub provider: String,
    /// The prompt.
    #[serde(skip_serializing)]
    pub prompt: String,
    /// The model asked for.
    pub model: Option<String>,
    /// The conversation the run continues.
    pub resume_id: Option<String>,
    /// Deadline in seconds from the CLI's start.
    pub timeout_secs: i64,
    /// Status.
    pub status: RunStatus,
    /// The CLI VM it runs in.
    pub vm_id: Option<String>,
    /// How the VM was found: `running`, `resumed`, `booted`.
    pub vm_found: Option<String>,
    /// The agent's process id.
    pub agent_proc_id: Option<String>,
    /// The CLI's exit code.
    pub exit_code: Option<i64>,
    /// The CLI's final answer.
    pub answer: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The CLI's conversation id (continue with it).
    pub conversation_id: Option<String>,
    /// This run's input tokens.
    pub input_tokens: Option<i64>,
    /// This run's output tokens.
    pub output_tokens: Option<i64>,
    /// This run's cost in US dollars, as the CLI reports it.
    pub cost_usd: Option<f64>,
    /// The conversation's totals as the CLI reported them (JSON).
    #[serde(skip_serializing)]
    pub totals: Option<String>,
    /// Where the reader of the CLI's output stood after the last stored
    /// event (JSON, the controller's).
    #[serde(skip_serializing)]
    pub checkpoint: Option<String>,
    /// Events stored so far (the last sequence number).
    pub event_count: i64,
    /// Queued at (Unix ms).
    pub created_at: i64,
    /// The VM answered (Unix ms).
    pub vm_ready_at: Option<i64>,
    /// The CLI process started (Unix ms).
    pub cli_started_at: Option<i64>,
    /// The CLI's first output (Unix ms).
    pub first_output_at: Option<i64>,
    /// Ended (Unix ms).
    pub finished_at: Option<i64>,
}

impl FromRow<'_, AnyRow> for RunRecord {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(RunRecord {
            run_id: row.try_get("run_id")?,
            user_id: row.try_get("user_id")?,
            provider: row.try_get("provider")?,
            prompt: row.try_get("prompt")?,
            model: row.try_get("model")?,
            resume_id: row.try_get("resume_id")?,
            timeout_secs: row.try_get("timeout_secs")?,
            status: get_enum(row, "status")?,
            vm_id: row.try_get("vm_id")?,
            vm_found: row.try_get("vm_found")?,
            agent_proc_id: row.try_get("agent_proc_id")?,
            exit_code: row.try_get("exit_code")?,
            answer: row.try_get("answer")?,
            error: row.try_get("error")?,
            conversation_id: row.try_get("conversation_id")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cost_usd: row.try_get("cost_usd")?,
            totals: row.try_get("totals")?,
            checkpoint: row.try_get("checkpoint")?,
            event_count: row.try_get("event_count")?,
            created_at: row.try_get("created_at")?,
            vm_ready_at: row.try_get("vm_ready_at")?,
            cli_started_at: row.try_get("cli_started_at")?,
            first_output_at: row.try_get("first_output_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

/// What orders a page of runs: created at, then id.
trait RunOrder {
    fn order_key(&self) -> (i64, &str);
}

impl RunOrder for RunRecord {
    fn order_key(&self) -> (i64, &str) {
        (self.created_at, &self.run_id)
    }
}

impl RunOrder for RunSummary {
    fn order_key(&self) -> (i64, &str) {
        (self.created_at, &self.run_id)
    }
}

/// `snake_case` → `camelCase` (a column's key in a run's JSON).
fn camel(column: &str) -> String {
    let mut out = String::with_capacity(column.len());
    let mut upper = false;
    for c in column.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

const COLUMNS: &str = "run_id, user_id, provider, prompt, model, resume_id, timeout_secs, status, \
    vm_id, vm_found, agent_proc_id, exit_code, answer, error, conversation_id, input_tokens, \
    output_tokens, cost_usd, totals, checkpoint, event_count, created_at, vm_ready_at, cli_started_at, \
    first_output_at, finished_at";

/// What a list of runs shows: no answer, events or checkpoint (a run's
/// answer may be a megabyte), its prompt and error cut to 200 characters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Id.
    pub run_id: String,
    /// Owner.
    pub user_id: String,
    /// Provider.
    pub provider: String,
    /// The prompt's first 200 characters.
    pub prompt: String,
    /// Status.
    pub status: RunStatus,
    /// The error's first 200 characters.
    pub error: Option<String>,
    /// Input tokens.
    pub input_tokens: Option<i64>,
    /// Output tokens.
    pub output_tokens: Option<i64>,
    /// Cost in US dollars.
    pub cost_usd: Option<f64>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub finished_at: Option<i64>,
}

impl FromRow<'_, AnyRow> for RunSummary {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(RunSummary {
            run_id: row.try_get("run_id")?,
            user_id: row.try_get("user_id")?,
            provider: row.try_get("provider")?,
            prompt: row.try_get("prompt")?,
            status: get_enum(row, "status")?,
            error: row.try_get("error")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cost_usd: row.try_get("cost_usd")?,
            created_at: row.try_get("created_at")?,
            finished_at: row.try_get("finished_at")?,
        })
    }
}

const SUMMARY_COLUMNS: &str =
    "run_id, user_id, provider, SUBSTR(prompt, 1, 200) AS prompt, status, \
    SUBSTR(error, 1, 200) AS error, input_tokens, output_tokens, cost_usd, created_at, finished_at";

/// A run to record.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Id.
    pub run_id: &'a str,
    /// Owner.
    pub user_id: &'a str,
    /// Provider.
    pub provider: &'a str,
    /// Prompt.
    pub prompt: &'a str,
    /// Model.
    pub model: Option<&'a str>,
    /// Conversation to continue.
    pub resume_id: Option<&'a str>,
    /// Deadline.
    pub timeout_secs: i64,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunEvent {
    /// Sequence number, from 1.
    pub seq: i64,
    /// Kind (`status`, `text`, …).
    pub kind: String,
    /// JSON data.
    pub data: String,
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct RunOutcome<'a> {
    /// Exit code.
    pub exit_code: Option<i64>,
    /// Final answer.
    pub answer: Option<&'a str>,
    /// Error.
    pub error: Option<&'a str>,
    /// Conversation id.
    pub conversation_id: Option<&'a str>,
    /// This run's input tokens.
    pub input_tokens: Option<i64>,
    /// This run's output tokens.
    pub output_tokens: Option<i64>,
    /// This run's cost.
    pub cost_usd: Option<f64>,
    /// Conversation totals (JSON).
    pub totals: Option<&'a str>,
}

impl Store {
    /// Records a queued run.
    pub async fn insert_run(&self, r: &NewRun<'_>) -> Result<RunRecord> {
        self.ensure_user(r.user_id).await?;
        sqlx::query(
            "INSERT INTO runs (run_id, user_id, provider, prompt, model, resume_id, timeout_secs, \
             status, event_count, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9)",
        )
        .bind(r.run_id)
        .bind(r.user_id)
        .bind(r.provider)
        .bind(r.prompt)
        .bind(r.model)
        .bind(r.resume_id)
        .bind(r.timeout_secs)
        .bind(RunStatus::Queued.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("record run {}", r.run_id), e))?;
        self.get_run(r.run_id)
            .await?
            .ok_or(crate::StoreError::Conflict {
                kind: self.kind,
                what: format!("run {} (gone right after its insert)", r.run_id),
            })
    }

    /// A run.
    pub async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        sqlx::query_as::<_, RunRecord>(&format!("SELECT {COLUMNS} FROM runs WHERE run_id = $1"))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("read run {run_id}"), e))
    }

    /// A user's runs (or everyone's), newest first, whole.
    pub async fn list_runs(&self, user_id: Option<&str>, limit: i64) -> Result<Vec<RunRecord>> {
        let fields: Vec<(String, &str)> = COLUMNS
            .split(',')
            .map(str::trim)
            .map(|c| (camel(c), c))
            .collect();
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, c)| (k.as_str(), *c)).collect();
        self.runs_page("runs", &fields, user_id, limit).await
    }

    /// A user's runs, newest first, as lists show them.
    pub async fn list_run_summaries(&self, user_id: &str, limit: i64) -> Result<Vec<RunSummary>> {
        let fields = [
            ("runId", "run_id"),
            ("userId", "user_id"),
            ("provider", "provider"),
            ("prompt", "SUBSTR(prompt, 1, 200)"),
            ("status", "status"),
            ("error", "SUBSTR(error, 1, 200)"),
            ("inputTokens", "input_tokens"),
            ("outputTokens", "output_tokens"),
            ("costUsd", "cost_usd"),
            ("createdAt", "created_at"),
            ("finishedAt", "finished_at"),
        ];
        self.runs_page("run summaries", &fields, Some(user_id), limit)
            .await
    }

    /// A page of runs (one user's or everyone's), newest first, each run a
    /// JSON object of `fields` (key, SQL expression). The rows come back as
    /// one JSON array in one row: a page costs one row's trip from the
    /// database, not one per run (SQLite's driver hands rows over one by
    /// one between threads).
    async fn runs_page<T: serde::de::DeserializeOwned + RunOrder>(
        &self,
        what: &str,
        fields: &[(&str, &str)],
        user_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<T>> {
        let pairs: Vec<String> = fields.iter().map(|(k, c)| format!("'{k}', {c}")).collect();
        let (object, array, as_text) = match self.kind {
            crate::StoreKind::Sqlite => ("json_object", "json_group_array", ""),
            crate::StoreKind::Postgres => ("json_build_object", "json_agg", "::text"),
        };
        let (filter, limit_arg) = match user_id {
            Some(_) => ("WHERE user_id = $1", "$2"),
            None => ("", "$1"),
        };
        // The objects are built in the aggregate's own argument: SQLite then
        // keeps them as JSON and does not parse each one again.
        let sql = format!(
            "SELECT COALESCE((SELECT {array}({object}({})){as_text} FROM (SELECT * FROM runs {filter} \
             ORDER BY created_at DESC, run_id DESC LIMIT {limit_arg}) AS page), '[]') AS runs",
            pairs.join(", ")
        );
        let mut query = sqlx::query(&sql);
        if let Some(u) = user_id {
            query = query.bind(u);
        }
        let row = query
            .bind(limit)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("list {what}"), e))?;
        let text: String = row
            .try_get("runs")
            .map_err(|e| self.query_err(format!("read {what}"), e))?;
        let mut runs: Vec<T> = serde_json::from_str(&text).map_err(|e| {
            self.query_err(format!("decode {what}"), sqlx::Error::Decode(Box::new(e)))
        })?;
        // An aggregate's order is the database's to choose: set it here.
        runs.sort_by(|a, b| {
            let (a, b) = (a.order_key(), b.order_key());
            b.0.cmp(&a.0).then_with(|| b.1.cmp(a.1))
        });
        Ok(runs)
    }

    /// Every user's runs that failed or timed out since `since` (Unix ms),
    /// newest first, at most `limit`.
    pub async fn list_failed_runs_since(&self, since: i64, limit: i64) -> Result<Vec<RunSummary>> {
        sqlx::query_as::<_, RunSummary>(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM runs WHERE status IN ('failed', 'timeout') AND created_at >= $1 \
             ORDER BY created_at DESC LIMIT $2"
        ))
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err("list failed runs".into(), e))
    }

    /// Runs not yet ended, oldest first.
    pub async fn list_unfinished_runs(&self) -> Result<Vec<RunRecord>> {
        sqlx::query_as::<_, RunRecord>(&format!(
            "SELECT {COLUMNS} FROM runs WHERE status IN ('queued', 'starting', 'running') \
             ORDER BY created_at, run_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err("list unfinished runs".into(), e))
    }

    /// Moves a run from `from` to `to` (compare-and-set); whether it moved.
    pub async fn set_run_status(
        &self,
        run_id: &str,
        from: RunStatus,
        to: RunStatus,
    ) -> Result<bool> {
        let r = sqlx::query("UPDATE runs SET status = $1 WHERE run_id = $2 AND status = $3")
            .bind(to.as_str())
            .bind(run_id)
            .bind(from.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("run {run_id}: {from} → {to}"), e))?;
        Ok(r.rows_affected() == 1)
    }

    /// The VM a run got, and when it answered.
    pub async fn set_run_vm(&self, run_id: &str, vm_id: &str, found: &str) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET vm_id = $1, vm_found = $2, vm_ready_at = $3 WHERE run_id = $4",
        )
        .bind(vm_id)
        .bind(found)
        .bind(now_ms())
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("run {run_id}: record VM"), e))?;
        Ok(())
    }

    /// The agent process a run started; it is now `running`. Whether it
    /// moved from `starting`.
    pub async fn set_run_started(&self, run_id: &str, proc_id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE runs SET agent_proc_id = $1, cli_started_at = $2, status = 'running' \
             WHERE run_id = $3 AND status = 'starting'",
        )
        .bind(proc_id)
        .bind(now_ms())
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("run {run_id}: record process"), e))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records the time of the CLI's first output (once).
    pub async fn set_run_first_output(&self, run_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET first_output_at = $1 WHERE run_id = $2 AND first_output_at IS NULL",
        )
        .bind(now_ms())
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("run {run_id}: first output"), e))?;
        Ok(())
    }

    /// Appends events numbered `first_seq..` and the reader's checkpoint
    /// after them in one transaction; fails if `first_seq` is not the run's
    /// next number (another writer got there).
    pub async fn append_run_events(
        &self,
        run_id: &str,
        first_seq: i64,
        events: &[(&str, String)],
        checkpoint: Option<&str>,
    ) -> Result<()> {
        if events.is_empty() && checkpoint.is_none() {
            return Ok(());
        }
        let err = |e| self.query_err(format!("run {run_id}: append events from {first_seq}"), e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let n = events.len() as i64;
        let moved = sqlx::query(
            "UPDATE runs SET event_count = event_count + $1, checkpoint = COALESCE($2, checkpoint) \
             WHERE run_id = $3 AND event_count = $4",
        )
        .bind(n)
        .bind(checkpoint)
        .bind(run_id)
        .bind(first_seq - 1)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        if moved.rows_affected() != 1 {
            return Err(crate::StoreError::Conflict {
                kind: self.kind,
                what: format!("event {first_seq} of run {run_id}"),
            });
        }
        let at = now_ms();
        for (i, (kind, data)) in events.iter().enumerate() {
            sqlx::query(
                "INSERT INTO run_events (run_id, seq, kind, data, at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(run_id)
            .bind(first_seq + i as i64)
            .bind(*kind)
            .bind(data.as_str())
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    /// Events after `after_seq`, in order, at most `limit`.
    pub async fn run_events(
        &self,
        run_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<RunEvent>> {
        sqlx::query(
            "SELECT seq, kind, data FROM run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(run_id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("run {run_id}: read events"), e))?
        .iter()
        .map(|r| {
            Ok(RunEvent {
                seq: r.try_get("seq")?,
                kind: r.try_get("kind")?,
                data: r.try_get("data")?,
            })
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(|e| self.query_err(format!("run {run_id}: decode events"), e))
    }

    /// Ends a run that has not ended yet; whether it did.
    pub async fn finish_run(
        &self,
        run_id: &str,
        to: RunStatus,
        o: &RunOutcome<'_>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE runs SET status = $1, exit_code = $2, answer = $3, error = $4, \
             conversation_id = COALESCE($5, conversation_id), input_tokens = $6, output_tokens = $7, \
             cost_usd = $8, totals = $9, finished_at = $10 \
             WHERE run_id = $11 AND status IN ('queued', 'starting', 'running')",
        )
        .bind(to.as_str())
        .bind(o.exit_code)
        .bind(o.answer)
        .bind(o.error)
        .bind(o.conversation_id)
        .bind(o.input_tokens)
        .bind(o.output_tokens)
        .bind(o.cost_usd)
        .bind(o.totals)
        .bind(now_ms())
        .bind(run_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("run {run_id}: finish as {to}"), e))?;
        Ok(r.rows_affected() == 1)
    }

    /// The conversation totals the last ended run of a conversation reported.
    pub async fn conversation_totals(
        &self,
        user_id: &str,
        provider: &str,
        conversation_id: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT totals FROM runs WHERE user_id = $1 AND provider = $2 AND conversation_id = $3 \
             AND totals IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(provider)
        .bind(conversation_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("conversation {conversation_id}: totals"), e))?;
        row.map(|r| r.try_get("totals"))
            .transpose()
            .map_err(|e| self.query_err("decode totals".into(), e))
    }
}
