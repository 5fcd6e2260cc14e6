//! Encrypted provider credentials: one row per user and provider, replaced on
//! reconnect. The store never sees plaintext: rows hold the vault's
//! ciphertext, nonce, tag, salt and the id of the master key used.

use polydev_core::run::CredentialKind;
use polydev_core::vm::now_ms;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::error::Result;
use crate::{get_flag, Store};

/// One stored credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRow {
    /// Owner.
    pub user_id: String,
    /// Provider (`claude_code`, `codex`, `gemini_cli`).
    pub provider: String,
    /// Ciphertext without the tag.
    #[serde(skip)]
    pub encrypted_data: Vec<u8>,
    /// AES-GCM nonce.
    #[serde(skip)]
    pub iv: Vec<u8>,
    /// AES-GCM tag.
    #[serde(skip)]
    pub tag: Vec<u8>,
    /// HKDF salt.
    #[serde(skip)]
    pub salt: Vec<u8>,
    /// Id of the master key it is sealed under.
    pub key_id: String,
    /// False once the provider rejected it.
    pub is_valid: bool,
    /// When it was stored (Unix ms).
    pub created_at: i64,
    /// When it was last checked (Unix ms).
    pub last_validated_at: Option<i64>,
    /// The CLI's file from signing in, or an API key.
    pub kind: CredentialKind,
    /// When the provider's token expires, when the file says (Unix ms).
    pub expires_at: Option<i64>,
    /// Why the provider refused it.
    pub invalid_reason: Option<String>,
}

impl FromRow<'_, AnyRow> for CredentialRow {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(CredentialRow {
            user_id: row.try_get("user_id")?,
            provider: row.try_get("provider")?,
            encrypted_data: row.try_get("encrypted_data")?,
            iv: row.try_get("iv")?,
            tag: row.try_get("tag")?,
            salt: row.try_get("salt")?,
            key_id: row.try_get("key_id")?,
            is_valid: get_flag(row, "is_valid")?,
            created_at: row.try_get("created_at")?,
            last_validated_at: row.try_get("last_validated_at")?,
            kind: crate::get_enum(row, "kind")?,
            expires_at: row.try_get("expires_at")?,
            invalid_reason: row.try_get("invalid_reason")?,
        })
    }
}

const COLUMNS: &str = "user_id, provider, encrypted_data, iv, tag, salt, key_id, is_valid, \
    created_at, last_validated_at, kind, expires_at, invalid_reason";

/// The sealed parts of a credential, as the vault produces them.
#[derive(Debug, Clone)]
pub struct SealedParts<'a> {
    /// Ciphertext without the tag.
    pub encrypted_data: &'a [u8],
    /// Nonce.
    pub iv: &'a [u8],
    /// Tag.
    pub tag: &'a [u8],
    /// Salt.
    pub salt: &'a [u8],
    /// Master key id.
    pub key_id: &'a str,
}

impl Store {
    /// Stores a user's credential file for a provider (from signing in),
    /// replacing any previous one.
    pub async fn upsert_credential(
        &self,
        user_id: &str,
        provider: &str,
        s: &SealedParts<'_>,
    ) -> Result<()> {
        self.put_credential(user_id, provider, CredentialKind::Oauth, None, s)
            .await
    }

    /// Stores a user's credential of any kind for a provider, replacing any
    /// previous one (valid, connected now).
    pub async fn put_credential(
        &self,
        user_id: &str,
        provider: &str,
        kind: CredentialKind,
        expires_at: Option<i64>,
        s: &SealedParts<'_>,
    ) -> Result<()> {
        self.ensure_user(user_id).await?;
        sqlx::query(
            "INSERT INTO credentials (user_id, provider, encrypted_data, iv, tag, salt, key_id, is_valid, \
             created_at, kind, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (user_id, provider) DO UPDATE SET encrypted_data = excluded.encrypted_data, \
             iv = excluded.iv, tag = excluded.tag, salt = excluded.salt, key_id = excluded.key_id, \
             is_valid = excluded.is_valid, created_at = excluded.created_at, last_validated_at = NULL, \
             kind = excluded.kind, expires_at = excluded.expires_at, invalid_reason = NULL",
        )
        .bind(user_id)
        .bind(provider)
        .bind(s.encrypted_data.to_vec())
        .bind(s.iv.to_vec())
        .bind(s.tag.to_vec())
        .bind(s.salt.to_vec())
        .bind(s.key_id)
        .bind(true)
        .bind(now_ms())
        .bind(kind.as_str())
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("store credential {user_id:?}/{provider:?}"), e))?;
        Ok(())
    }

    /// Replaces a credential file the CLI refreshed (same kind, still
    /// connected since the same time), if the stored one is still `old` (its
    /// ciphertext): compare-and-set against a reconnect in between.
    pub async fn refresh_credential(
        &self,
        user_id: &str,
        provider: &str,
        old: &[u8],
        expires_at: Option<i64>,
        s: &SealedParts<'_>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE credentials SET encrypted_data = $1, iv = $2, tag = $3, salt = $4, key_id = $5, \
             expires_at = $6, last_validated_at = $7, is_valid = $8, invalid_reason = NULL \
             WHERE user_id = $9 AND provider = $10 AND encrypted_data = $11",
        )
        .bind(s.encrypted_data.to_vec())
        .bind(s.iv.to_vec())
        .bind(s.tag.to_vec())
        .bind(s.salt.to_vec())
        .bind(s.key_id)
        .bind(expires_at)
        .bind(now_ms())
        .bind(true)
        .bind(user_id)
        .bind(provider)
        .bind(old.to_vec())
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("refresh credential {user_id:?}/{provider:?}"), e))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records the outcome of using a credential: valid (now checked), or
    /// refused by the provider with `reason`.
    pub async fn mark_credential(
        &self,
        user_id: &str,
        provider: &str,
        invalid_reason: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE credentials SET is_valid = $1, invalid_reason = $2, last_validated_at = $3 \
             WHERE user_id = $4 AND provider = $5",
        )
        .bind(invalid_reason.is_none())
        .bind(invalid_reason)
        .bind(now_ms())
        .bind(user_id)
        .bind(provider)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("mark credential {user_id:?}/{provider:?}"), e))?;
        Ok(())
    }

    /// A user's credential for a provider.
    pub async fn get_credential(
        &self,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<CredentialRow>> {
        sqlx::query_as::<_, CredentialRow>(&format!(
            "SELECT {COLUMNS} FROM credentials WHERE user_id = $1 AND provider = $2"
        ))
        .bind(user_id)
        .bind(provider)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("read credential {user_id:?}/{provider:?}"), e))
    }

    /// Every credential of a user (or of everyone), for status views and key rotation.
    pub async fn list_credentials(&self, user_id: Option<&str>) -> Result<Vec<CredentialRow>> {
        let q = match user_id {
            Some(_) => format!(
                "SELECT {COLUMNS} FROM credentials WHERE user_id = $1 ORDER BY user_id, provider"
            ),
            None => format!("SELECT {COLUMNS} FROM credentials ORDER BY user_id, provider"),
        };
        let mut query = sqlx::query_as::<_, CredentialRow>(&q);
        if let Some(u) = user_id {
            query = query.bind(u);
        }
        query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.query_err("list credentials".into(), e))
    }

    /// Replaces a row's sealed parts if it is still sealed under `old_key_id`
    /// (compare-and-set, for rotation). Returns whether it changed.
    pub async fn reseal_credential(
        &self,
        user_id: &str,
        provider: &str,
        old_key_id: &str,
        s: &SealedParts<'_>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE credentials SET encrypted_data = $1, iv = $2, tag = $3, salt = $4, key_id = $5 \
             WHERE user_id = $6 AND provider = $7 AND key_id = $8",
        )
        .bind(s.encrypted_data.to_vec())
        .bind(s.iv.to_vec())
        .bind(s.tag.to_vec())
        .bind(s.salt.to_vec())
        .bind(s.key_id)
        .bind(user_id)
        .bind(provider)
        .bind(old_key_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("reseal credential {user_id:?}/{provider:?}"), e))?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes a user's credential for a provider. Returns whether one existed.
    pub async fn delete_credential(&self, user_id: &str, provider: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM credentials WHERE user_id = $1 AND provider = $2")
            .bind(user_id)
            .bind(provider)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                self.query_err(format!("delete credential {user_id:?}/{provider:?}"), e)
            })?;
        Ok(r.rows_affected() == 1)
    }
}
