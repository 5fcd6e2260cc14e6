//! The VM cleanup queue: deferred destruction that survives controller restarts.
//!
//! A task says "clean up VM X (of auth session S) at time T". Workers claim due
//! tasks with [`Store::claim_due_cleanups`], which moves them `pending →
//! processing` in one statement, so two workers never get the same task. A task
//! left `processing` longer than the lease ([`crate::DEFAULT_CLEANUP_LEASE_MS`],
//! see [`Store::set_cleanup_lease_ms`]) is taken to belong to a crashed worker and
//! is handed out again by the next claim. Cleanup work must therefore be
//! idempotent: a worker that outlives its lease may overlap the next one.

use std::fmt;
use std::str::FromStr;

use polydev_core::vm::now_ms;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::error::Result;
use crate::{get_enum, Store};

/// Where a cleanup task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupStatus {
    /// Waiting for its time (or for a retry).
    Pending,
    /// Claimed by a worker.
    Processing,
    /// Done.
    Completed,
    /// Given up; `error` says why.
    Failed,
}

impl CleanupStatus {
    /// The canonical lowercase name, as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            CleanupStatus::Pending => "pending",
            CleanupStatus::Processing => "processing",
            CleanupStatus::Completed => "completed",
            CleanupStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for CleanupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a cleanup status.
#[derive(Debug, thiserror::Error)]
#[error("unknown cleanup status {0:?} (expected one of: pending processing completed failed)")]
pub struct ParseCleanupStatusError(String);

impl FromStr for CleanupStatus {
    type Err = ParseCleanupStatusError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "pending" => Ok(CleanupStatus::Pending),
            "processing" => Ok(CleanupStatus::Processing),
            "completed" => Ok(CleanupStatus::Completed),
            "failed" => Ok(CleanupStatus::Failed),
            _ => Err(ParseCleanupStatusError(s.to_string())),
        }
    }
}

/// One cleanup task, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CleanupTask {
    /// Identifier of the task.
    pub task_id: String,
    /// The VM to clean up.
    pub vm_id: String,
    /// The auth session the VM served, if any.
    pub session_id: Option<String>,
    /// When the task is due (Unix ms).
    pub cleanup_at: i64,
    /// Where the task is.
    pub status: CleanupStatus,
    /// How many times it has been claimed.
    pub attempts: i64,
    /// The last error, if any.
    pub error: Option<String>,
    /// When it was enqueued (Unix ms).
    pub created_at: i64,
    /// When it last changed (Unix ms); for a `processing` task, when it was claimed.
    pub updated_at: i64,
}

impl FromRow<'_, AnyRow> for CleanupTask {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(CleanupTask {
            task_id: row.try_get("task_id")?,
            vm_id: row.try_get("vm_id")?,
            session_id: row.try_get("session_id")?,
            cleanup_at: row.try_get("cleanup_at")?,
            status: get_enum(row, "status")?,
            attempts: row.try_get("attempts")?,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

const COLUMNS: &str =
    "task_id, vm_id, session_id, cleanup_at, status, attempts, error, created_at, updated_at";

/// Due: pending and its time has come ($1 = now), or processing and claimed
/// before the lease cut-off ($2).
const CLAIMABLE: &str = "((status = 'pending' AND cleanup_at <= $1) \
    OR (status = 'processing' AND updated_at <= $2))";

impl Store {
    /// Queues the cleanup of `vm_id` at `cleanup_at` (Unix ms).
    pub async fn enqueue_cleanup(
        &self,
        vm_id: &str,
        session_id: Option<&str>,
        cleanup_at: i64,
    ) -> Result<CleanupTask> {
        self.insert_cleanup(vm_id, session_id, cleanup_at, CleanupStatus::Pending, 0)
            .await
    }

    /// Journals the cleanup of `vm_id` as already claimed by the caller
    /// (processing, first attempt), who runs it now: if the caller dies, the
    /// task falls due again once its lease runs out.
    pub async fn begin_cleanup(
        &self,
        vm_id: &str,
        session_id: Option<&str>,
    ) -> Result<CleanupTask> {
        self.insert_cleanup(vm_id, session_id, now_ms(), CleanupStatus::Processing, 1)
            .await
    }

    async fn insert_cleanup(
        &self,
        vm_id: &str,
        session_id: Option<&str>,
        cleanup_at: i64,
        status: CleanupStatus,
        attempts: i64,
    ) -> Result<CleanupTask> {
        let now = now_ms();
        let task = CleanupTask {
            task_id: uuid::Uuid::new_v4().to_string(),
            vm_id: vm_id.to_string(),
            session_id: session_id.map(str::to_string),
            cleanup_at,
            status,
            attempts,
            error: None,
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO vm_cleanup_tasks (task_id, vm_id, session_id, cleanup_at, status, \
             attempts, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&task.task_id)
        .bind(&task.vm_id)
        .bind(&task.session_id)
        .bind(task.cleanup_at)
        .bind(task.status.as_str())
        .bind(task.attempts)
        .bind(task.created_at)
        .bind(task.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("journal the cleanup of VM {vm_id:?}"), e))?;
        Ok(task)
    }

    /// Claims up to `limit` due tasks (earliest first) for this worker: pending
    /// tasks due at `now`, and processing tasks whose claim is older than the
    /// lease (their worker is taken to have crashed). Each comes back
    /// `processing`, with `attempts` counted up and `updated_at = now`. One
    /// statement does it, so concurrent claimers never get the same task.
    pub async fn claim_due_cleanups(&self, now: i64, limit: i64) -> Result<Vec<CleanupTask>> {
        if limit <= 0 {
            return Ok(Vec::new());
        }
        // The outer condition repeats the inner one: on PostgreSQL a claimer that
        // waited on a row another claimer just took re-checks it against the new
        // row version, which then no longer qualifies.
        let sql = format!(
            "UPDATE vm_cleanup_tasks SET status = 'processing', attempts = attempts + 1, \
             updated_at = $1 \
             WHERE {CLAIMABLE} AND task_id IN (SELECT task_id FROM vm_cleanup_tasks \
                 WHERE {CLAIMABLE} ORDER BY cleanup_at, task_id LIMIT $3) \
             RETURNING {COLUMNS}"
        );
        let mut tasks: Vec<CleanupTask> = sqlx::query_as(&sql)
            .bind(now)
            .bind(now.saturating_sub(self.cleanup_lease_ms))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.query_err("claim due cleanup tasks".to_string(), e))?;
        tasks.sort_by(|a, b| (a.cleanup_at, &a.task_id).cmp(&(b.cleanup_at, &b.task_id)));
        Ok(tasks)
    }

    /// processing → completed. Returns whether it applied.
    pub async fn complete_cleanup(&self, task_id: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE vm_cleanup_tasks SET status = 'completed', error = NULL, updated_at = $1 \
             WHERE task_id = $2 AND status = 'processing'",
        )
        .bind(now_ms())
        .bind(task_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("complete cleanup task {task_id:?}"), e))?;
        Ok(r.rows_affected() > 0)
    }

    /// Records a failed attempt: with `retry_at`, processing → pending due then;
    /// without, processing → failed for good. Returns whether it applied.
    pub async fn fail_cleanup(
        &self,
        task_id: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<bool> {
        let now = now_ms();
        let q = match retry_at {
            Some(at) => sqlx::query(
                "UPDATE vm_cleanup_tasks SET status = 'pending', error = $1, cleanup_at = $2, \
                 updated_at = $3 WHERE task_id = $4 AND status = 'processing'",
            )
            .bind(error)
            .bind(at),
            None => sqlx::query(
                "UPDATE vm_cleanup_tasks SET status = 'failed', error = $1, updated_at = $2 \
                 WHERE task_id = $3 AND status = 'processing'",
            )
            .bind(error),
        };
        let r = q
            .bind(now)
            .bind(task_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("fail cleanup task {task_id:?}"), e))?;
        Ok(r.rows_affected() > 0)
    }

    /// The task with this id, if any.
    pub async fn get_cleanup(&self, task_id: &str) -> Result<Option<CleanupTask>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM vm_cleanup_tasks WHERE task_id = $1"
        ))
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("get cleanup task {task_id:?}"), e))
    }
}
