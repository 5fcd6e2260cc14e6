//! Provider sign-in sessions (`auth_sessions`): their status, the browser VM
//! they own, the captured authorization URL and, when they fail, why.
//! Status changes are compare-and-set so that a cancel, a timeout and the
//! session's own progress never overwrite each other.

use polydev_core::auth::{Provider, SessionStatus};
use polydev_core::vm::now_ms;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::error::Result;
use crate::{get_enum, Store};

/// One sign-in session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthSession {
    /// Session id.
    pub session_id: String,
    /// The user signing in.
    pub user_id: String,
    /// The provider.
    pub provider: Provider,
    /// Current status.
    pub status: SessionStatus,
    /// The browser VM running the login, once created.
    pub browser_vm_id: Option<String>,
    /// The provider's authorization URL, once captured.
    pub auth_url: Option<String>,
    /// Why it failed, timed out or was cancelled.
    pub error_message: Option<String>,
    /// When it started (Unix ms).
    pub started_at: i64,
    /// When it reached a terminal status (Unix ms).
    pub completed_at: Option<i64>,
    /// When the user's time runs out (Unix ms).
    pub expires_at: i64,
}

impl FromRow<'_, AnyRow> for AuthSession {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(AuthSession {
            session_id: row.try_get("session_id")?,
            user_id: row.try_get("user_id")?,
            provider: get_enum(row, "provider")?,
            status: get_enum(row, "status")?,
            browser_vm_id: row.try_get("browser_vm_id")?,
            auth_url: row.try_get("auth_url")?,
            error_message: row.try_get("error_message")?,
            started_at: row.try_get("started_at")?,
            completed_at: row.try_get("completed_at")?,
            expires_at: row.try_get("expires_at")?,
        })
    }
}

const COLUMNS: &str =
    "session_id, user_id, provider, status, browser_vm_id, auth_url, error_message, \
                       started_at, completed_at, expires_at";

impl Store {
    /// Records a new session in `initializing`.
    pub async fn insert_auth_session(
        &self,
        session_id: &str,
        user_id: &str,
        provider: Provider,
        expires_at: i64,
    ) -> Result<AuthSession> {
        self.ensure_user(user_id).await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO auth_sessions (session_id, user_id, provider, status, started_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(provider.as_str())
        .bind(SessionStatus::Initializing.as_str())
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("insert auth session {session_id:?}"), e))?;
        Ok(AuthSession {
            session_id: session_id.into(),
            user_id: user_id.into(),
            provider,
            status: SessionStatus::Initializing,
            browser_vm_id: None,
            auth_url: None,
            error_message: None,
            started_at: now,
            completed_at: None,
            expires_at,
        })
    }

    /// One session.
    pub async fn get_auth_session(&self, session_id: &str) -> Result<Option<AuthSession>> {
        sqlx::query_as::<_, AuthSession>(&format!(
            "SELECT {COLUMNS} FROM auth_sessions WHERE session_id = $1"
        ))
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("read auth session {session_id:?}"), e))
    }

    /// Sessions not yet in a terminal status (for restart recovery).
    pub async fn list_active_auth_sessions(&self) -> Result<Vec<AuthSession>> {
        sqlx::query_as::<_, AuthSession>(&format!(
            "SELECT {COLUMNS} FROM auth_sessions WHERE status IN ('initializing', 'vm_created', 'ready', 'awaiting_user_auth') \
             ORDER BY started_at"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err("list active auth sessions".into(), e))
    }

    /// Every user's sessions started since `since` (Unix ms), newest first.
    pub async fn list_auth_sessions_since(&self, since: i64) -> Result<Vec<AuthSession>> {
        sqlx::query_as::<_, AuthSession>(&format!(
            "SELECT {COLUMNS} FROM auth_sessions WHERE started_at >= $1 ORDER BY started_at DESC"
        ))
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err("list recent auth sessions".into(), e))
    }

    /// A user's sessions, newest first.
    pub async fn list_auth_sessions(&self, user_id: &str) -> Result<Vec<AuthSession>> {
        sqlx::query_as::<_, AuthSession>(&format!(
            "SELECT {COLUMNS} FROM auth_sessions WHERE user_id = $1 ORDER BY started_at DESC"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("list auth sessions of {user_id:?}"), e))
    }

    /// Moves a session from `from` to `to` (compare-and-set), recording the
    /// browser VM, URL and error when given. Terminal statuses set
    /// `completed_at`. Returns whether it changed.
    pub async fn advance_auth_session(
        &self,
        session_id: &str,
        from: SessionStatus,
        to: SessionStatus,
        browser_vm_id: Option<&str>,
        auth_url: Option<&str>,
        error_message: Option<&str>,
    ) -> Result<bool> {
        let completed = to.is_terminal().then(now_ms);
        let r = sqlx::query(
            "UPDATE auth_sessions SET status = $1, browser_vm_id = COALESCE($2, browser_vm_id), \
             auth_url = COALESCE($3, auth_url), error_message = COALESCE($4, error_message), \
             completed_at = COALESCE($5, completed_at) WHERE session_id = $6 AND status = $7",
        )
        .bind(to.as_str())
        .bind(browser_vm_id)
        .bind(auth_url)
        .bind(error_message)
        .bind(completed)
        .bind(session_id)
        .bind(from.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            self.query_err(
                format!("advance auth session {session_id:?} {from} -> {to}"),
                e,
            )
        })?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends a session from whatever non-terminal status it is in (cancel,
    /// timeout, failure). Returns the status it left, or `None` if it had
    /// already ended.
    pub async fn end_auth_session(
        &self,
        session_id: &str,
        to: SessionStatus,
        error_message: &str,
    ) -> Result<Option<SessionStatus>> {
        for _ in 0..8 {
            let Some(s) = self.get_auth_session(session_id).await? else {
                return Ok(None);
            };
            if s.status.is_terminal() {
                return Ok(None);
            }
            if self
                .advance_auth_session(session_id, s.status, to, None, None, Some(error_message))
                .await?
            {
                return Ok(Some(s.status));
            }
        }
        Ok(None)
    }
}
