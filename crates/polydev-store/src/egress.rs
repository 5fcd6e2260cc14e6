//! Egress settings: each VM's policy (JSON, replaced whole) and each user's
//! egress identity (an upstream proxy sealed by the vault, never stored in
//! clear, and a source address from the host's pool).

use polydev_core::vm::now_ms;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::credentials::SealedParts;
use crate::error::Result;
use crate::Store;

/// A user's egress identity, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEgressRow {
    /// The user.
    pub user_id: String,
    /// The proxy URL with its password replaced (what is shown).
    pub proxy_display: Option<String>,
    /// The sealed proxy URL: (ciphertext, nonce, tag, salt, key id).
    pub proxy_sealed: Option<(Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>, String)>,
    /// Source address from the host's pool.
    pub source_address: Option<String>,
    /// Last change (Unix ms).
    pub updated_at: i64,
}

impl FromRow<'_, AnyRow> for UserEgressRow {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        let data: Option<Vec<u8>> = row.try_get("proxy_data")?;
        let sealed = match data {
            Some(d) => Some((
                d,
                row.try_get::<Option<Vec<u8>>, _>("proxy_iv")?
                    .unwrap_or_default(),
                row.try_get::<Option<Vec<u8>>, _>("proxy_tag")?
                    .unwrap_or_default(),
                row.try_get::<Option<Vec<u8>>, _>("proxy_salt")?
                    .unwrap_or_default(),
                row.try_get::<Option<String>, _>("proxy_key_id")?
                    .unwrap_or_default(),
            )),
            None => None,
        };
        Ok(UserEgressRow {
            user_id: row.try_get("user_id")?,
            proxy_display: row.try_get("proxy_display")?,
            proxy_sealed: sealed,
            source_address: row.try_get("source_address")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

const USER_COLUMNS: &str = "user_id, proxy_display, proxy_data, proxy_iv, proxy_tag, proxy_salt, \
    proxy_key_id, source_address, updated_at";

impl Store {
    /// Sets a VM's egress policy (JSON), replacing any earlier one.
    pub async fn set_vm_egress(&self, vm_id: &str, policy_json: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO vm_egress (vm_id, policy, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (vm_id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        )
        .bind(vm_id)
        .bind(policy_json)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("store the egress policy of {vm_id:?}"), e))?;
        Ok(())
    }

    /// A VM's egress policy (JSON), if one was stored.
    pub async fn get_vm_egress(&self, vm_id: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT policy FROM vm_egress WHERE vm_id = $1")
            .bind(vm_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("read the egress policy of {vm_id:?}"), e))
    }

    /// Forgets a VM's egress policy.
    pub async fn delete_vm_egress(&self, vm_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM vm_egress WHERE vm_id = $1")
            .bind(vm_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("delete the egress policy of {vm_id:?}"), e))?;
        Ok(())
    }

    /// Records how long a VM's egress took to set up.
    pub async fn set_vm_egress_setup_ms(&self, vm_id: &str, ms: i64) -> Result<()> {
        sqlx::query("UPDATE vms SET egress_setup_ms = $1 WHERE vm_id = $2")
            .bind(ms)
            .bind(vm_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("record egress timing of {vm_id:?}"), e))?;
        Ok(())
    }

    /// Replaces a user's egress identity (`None` parts are cleared).
    pub async fn put_user_egress(
        &self,
        user_id: &str,
        proxy: Option<(&str, &SealedParts<'_>)>,
        source_address: Option<&str>,
    ) -> Result<()> {
        self.ensure_user(user_id).await?;
        let (display, data, iv, tag, salt, key) = match proxy {
            Some((d, s)) => (
                Some(d.to_string()),
                Some(s.encrypted_data.to_vec()),
                Some(s.iv.to_vec()),
                Some(s.tag.to_vec()),
                Some(s.salt.to_vec()),
                Some(s.key_id.to_string()),
            ),
            None => (None, None, None, None, None, None),
        };
        sqlx::query(
            "INSERT INTO user_egress (user_id, proxy_display, proxy_data, proxy_iv, proxy_tag, proxy_salt, \
             proxy_key_id, source_address, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (user_id) DO UPDATE SET proxy_display = excluded.proxy_display, \
             proxy_data = excluded.proxy_data, proxy_iv = excluded.proxy_iv, proxy_tag = excluded.proxy_tag, \
             proxy_salt = excluded.proxy_salt, proxy_key_id = excluded.proxy_key_id, \
             source_address = excluded.source_address, updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(display)
        .bind(data)
        .bind(iv)
        .bind(tag)
        .bind(salt)
        .bind(key)
        .bind(source_address.map(str::to_string))
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("store the egress identity of {user_id:?}"), e))?;
        Ok(())
    }

    /// Replaces a user's sealed proxy if it is still sealed under
    /// `old_key_id` (compare-and-set, for key rotation). Returns whether it
    /// changed.
    pub async fn reseal_user_proxy(
        &self,
        user_id: &str,
        old_key_id: &str,
        s: &SealedParts<'_>,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE user_egress SET proxy_data = $1, proxy_iv = $2, proxy_tag = $3, proxy_salt = $4, \
             proxy_key_id = $5 WHERE user_id = $6 AND proxy_key_id = $7",
        )
        .bind(s.encrypted_data.to_vec())
        .bind(s.iv.to_vec())
        .bind(s.tag.to_vec())
        .bind(s.salt.to_vec())
        .bind(s.key_id)
        .bind(user_id)
        .bind(old_key_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("reseal the egress proxy of {user_id:?}"), e))?;
        Ok(r.rows_affected() == 1)
    }

    /// A user's egress identity, if set.
    pub async fn get_user_egress(&self, user_id: &str) -> Result<Option<UserEgressRow>> {
        sqlx::query_as::<_, UserEgressRow>(&format!(
            "SELECT {USER_COLUMNS} FROM user_egress WHERE user_id = $1"
        ))
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("read the egress identity of {user_id:?}"), e))
    }

    /// Every user's egress identity.
    pub async fn list_user_egress(&self) -> Result<Vec<UserEgressRow>> {
        sqlx::query_as::<_, UserEgressRow>(&format!(
            "SELECT {USER_COLUMNS} FROM user_egress ORDER BY user_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err("list egress identities".into(), e))
    }
}
