//! API keys: the bearer tokens that authenticate calls to the controller.
//!
//! Only the hex SHA-256 of a key is stored (`key_hash`, unique); the key itself is
//! shown once when minted and never kept. Revoked keys stay as rows, so a key id
//! is never reused and the list keeps its history.

use polydev_core::vm::now_ms;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::error::{is_unique_violation, Result, StoreError};
use crate::{get_flag, Store};

/// One API key, as stored (without the key itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// Public identifier of the key.
    pub key_id: String,
    /// Human-readable label.
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub key_hash: String,
    /// When it was minted (Unix ms).
    pub created_at: i64,
    /// When it last authenticated a request (Unix ms), if ever.
    pub last_used_at: Option<i64>,
    /// True once revoked; a revoked key authenticates nothing.
    pub revoked: bool,
    /// The user a key is bound to; `None` for an operator's key (acts for
    /// every user).
    pub user_id: Option<String>,
}

impl FromRow<'_, AnyRow> for ApiKey {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(ApiKey {
            key_id: row.try_get("key_id")?,
            name: row.try_get("name")?,
            key_hash: row.try_get("key_hash")?,
            created_at: row.try_get("created_at")?,
            last_used_at: row.try_get("last_used_at")?,
            revoked: get_flag(row, "revoked")?,
            user_id: row.try_get("user_id")?,
        })
    }
}

const COLUMNS: &str = "key_id, name, key_hash, created_at, last_used_at, revoked, user_id";

impl Store {
    /// Records a new key. Fails with [`StoreError::Conflict`] if the id or the
    /// hash is already taken.
    pub async fn insert_api_key(&self, key_id: &str, name: &str, key_hash: &str) -> Result<ApiKey> {
        self.insert_scoped_api_key(key_id, name, key_hash, None)
            .await
    }

    /// Records a new key bound to `user_id` (`None`: an operator's key).
    pub async fn insert_scoped_api_key(
        &self,
        key_id: &str,
        name: &str,
        key_hash: &str,
        user_id: Option<&str>,
    ) -> Result<ApiKey> {
        let key = ApiKey {
            key_id: key_id.to_string(),
            name: name.to_string(),
            key_hash: key_hash.to_string(),
            created_at: now_ms(),
            last_used_at: None,
            revoked: false,
            user_id: user_id.map(Into::into),
        };
        sqlx::query(
            "INSERT INTO api_keys (key_id, name, key_hash, created_at, revoked, user_id) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.key_id)
        .bind(&key.name)
        .bind(&key.key_hash)
        .bind(key.created_at)
        .bind(false)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict {
                    kind: self.kind,
                    what: format!("API key {key_id:?} (or one with the same hash)"),
                }
            } else {
                self.query_err(format!("insert API key {key_id:?}"), e)
            }
        })?;
        Ok(key)
    }

    /// The key with this hash, unless it is revoked or unknown.
    pub async fn find_api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked = $2"
        ))
        .bind(key_hash)
        .bind(false)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err("find API key by hash".to_string(), e))
    }

    /// Records that the key was just used. Returns false if no such key exists.
    pub async fn touch_api_key(&self, key_id: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE key_id = $2")
            .bind(now_ms())
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("touch API key {key_id:?}"), e))?;
        Ok(r.rows_affected() > 0)
    }

    /// Every key, revoked ones included, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created_at, key_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err("list API keys".to_string(), e))
    }

    /// The keys bound to `user_id`, revoked ones included, oldest first.
    pub async fn list_user_api_keys(&self, user_id: &str) -> Result<Vec<ApiKey>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, key_id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("list API keys of {user_id:?}"), e))
    }

    /// The hashes of every key that is not revoked (what an in-memory cache
    /// of verified keys may keep).
    pub async fn active_api_key_hashes(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT key_hash FROM api_keys WHERE revoked = $1")
            .bind(false)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.query_err("list active API key hashes".to_string(), e))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("key_hash"))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.query_err("read an API key hash".to_string(), e))
    }

    /// Revokes a key. Returns false if it was unknown or already revoked.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<bool> {
        let r = sqlx::query("UPDATE api_keys SET revoked = $1 WHERE key_id = $2 AND revoked = $3")
            .bind(true)
            .bind(key_id)
            .bind(false)
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("revoke API key {key_id:?}"), e))?;
        Ok(r.rows_affected() > 0)
    }
}
