//! Encrypted provider credentials: one row per user and provider, replaced on
//! reconnect. The store never sees plaintext: rows hold the vault's
//! ciphertext, nonce, tag, salt and the id of the master key used.

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
        })
    }
}

const COLUMNS: &str =
    "user_id, provider, encrypted_data, iv, tag, salt, key_id, is_valid, created_at, last_validated_at";

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
    /// Stores a user's credential for a provider, replacing any previous one.
    pub async fn upsert_credential(
        &self,
        user_id: &str,
        provider: &str,
        s: &SealedParts<'_>,
    ) -> Result<()> {
        self.ensure_user(user_id).await?;
        sqlx::query(
            "INSERT INTO credentials (user_id, provider, encrypted_data, iv, tag, salt, key_id, is_valid, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (user_id, provider) DO UPDATE SET encrypted_data = excluded.encrypted_data, \
             iv = excluded.iv, tag = excluded.tag, salt = excluded.salt, key_id = excluded.key_id, \
             is_valid = excluded.is_valid, created_at = excluded.created_at, last_validated_at = NULL",
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
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("store credential {user_id:?}/{provider:?}"), e))?;
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
