//! Accounts: the people who sign in to the dashboard, the OpenID Connect
//! identities linked to them, their sessions (only a hash of the cookie is
//! kept) and OIDC sign-ins in flight. An account's `user_id` is the user id
//! the rest of the store uses (VMs, runs, credentials).

use polydev_core::vm::now_ms;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use crate::error::{is_unique_violation, Result, StoreError};
use crate::{get_flag, Store};

/// One account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// The user id (also the sign-in name).
    pub user_id: String,
    /// Lower-cased e-mail address, if any (OIDC identities are matched by it).
    pub email: Option<String>,
    /// `user` or `admin`.
    pub role: String,
    /// Whether a password is set (accounts may sign in by OIDC only).
    pub has_password: bool,
    /// A disabled account signs in to nothing and its sessions end.
    pub disabled: bool,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

impl FromRow<'_, AnyRow> for Account {
    fn from_row(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(Account {
            user_id: row.try_get("user_id")?,
            email: row.try_get("email")?,
            role: row.try_get("role")?,
            has_password: row.try_get::<Option<String>, _>("password_hash")?.is_some(),
            disabled: get_flag(row, "disabled")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

const COLUMNS: &str =
    "a.user_id, a.email, a.role, a.password_hash, a.disabled, a.created_at, a.updated_at";

/// A dashboard session and its account.
#[derive(Debug, Clone)]
pub struct WebSession {
    /// The account (as it is now).
    pub account: Account,
    /// `password` or `oidc:<provider>`.
    pub method: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; the session is not found after it.
    pub expires_at: i64,
}

/// An OIDC sign-in in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcLogin {
    /// The provider's id in the operator's file.
    pub provider: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier.
    pub pkce_verifier: String,
    /// Unix ms.
    pub created_at: i64,
}

impl Store {
    /// Records an account. [`StoreError::Conflict`] when the user id or the
    /// e-mail address is taken.
    pub async fn insert_account(
        &self,
        user_id: &str,
        email: Option<&str>,
        role: &str,
        password_hash: Option<&str>,
    ) -> Result<Account> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO accounts (user_id, email, role, password_hash, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(user_id)
        .bind(email)
        .bind(role)
        .bind(password_hash)
        .bind(false)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict {
                    kind: self.kind,
                    what: format!("account {user_id:?} (or its e-mail address)"),
                }
            } else {
                self.query_err(format!("insert account {user_id:?}"), e)
            }
        })?;
        self.ensure_user(user_id).await?;
        Ok(Account {
            user_id: user_id.into(),
            email: email.map(Into::into),
            role: role.into(),
            has_password: password_hash.is_some(),
            disabled: false,
            created_at: now,
            updated_at: now,
        })
    }

    /// One account.
    pub async fn get_account(&self, user_id: &str) -> Result<Option<Account>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM accounts a WHERE a.user_id = $1"
        ))
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("get account {user_id:?}"), e))
    }

    /// An account and its password hash (for signing in).
    pub async fn account_password(
        &self,
        user_id: &str,
    ) -> Result<Option<(Account, Option<String>)>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM accounts a WHERE a.user_id = $1"
        ))
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("get account {user_id:?}"), e))?;
        let Some(row) = row else { return Ok(None) };
        let read = || -> std::result::Result<_, sqlx::Error> {
            Ok((
                Account::from_row(&row)?,
                row.try_get::<Option<String>, _>("password_hash")?,
            ))
        };
        read()
            .map(Some)
            .map_err(|e| self.query_err("read an account".into(), e))
    }

    /// The account with this (lower-cased) e-mail address.
    pub async fn find_account_by_email(&self, email: &str) -> Result<Option<Account>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM accounts a WHERE a.email = $1"
        ))
        .bind(email)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err("find account by e-mail".into(), e))
    }

    /// Every account, by user id.
    pub async fn list_accounts(&self) -> Result<Vec<Account>> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM accounts a ORDER BY a.user_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.query_err("list accounts".into(), e))
    }

    /// Disables or enables an account; disabling ends its sessions. False
    /// for an unknown account.
    pub async fn set_account_disabled(&self, user_id: &str, disabled: bool) -> Result<bool> {
        let r =
            sqlx::query("UPDATE accounts SET disabled = $1, updated_at = $2 WHERE user_id = $3")
                .bind(disabled)
                .bind(now_ms())
                .bind(user_id)
                .execute(&self.pool)
                .await
                .map_err(|e| self.query_err(format!("disable account {user_id:?}"), e))?;
        if disabled {
            self.delete_web_sessions_of(user_id).await?;
        }
        Ok(r.rows_affected() > 0)
    }

    /// Sets an account's password hash and ends its sessions. False for an
    /// unknown account.
    pub async fn set_account_password(&self, user_id: &str, password_hash: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE accounts SET password_hash = $1, updated_at = $2 WHERE user_id = $3",
        )
        .bind(password_hash)
        .bind(now_ms())
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("set password of {user_id:?}"), e))?;
        self.delete_web_sessions_of(user_id).await?;
        Ok(r.rows_affected() > 0)
    }

    /// The account an OIDC identity is linked to.
    pub async fn find_identity(&self, issuer: &str, subject: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT user_id FROM account_identities WHERE issuer = $1 AND subject = $2",
        )
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err("find OIDC identity".into(), e))?;
        row.map(|r| r.try_get("user_id"))
            .transpose()
            .map_err(|e| self.query_err("read OIDC identity".into(), e))
    }

    /// Links an OIDC identity to an account (idempotent for the same account).
    pub async fn link_identity(&self, issuer: &str, subject: &str, user_id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO account_identities (issuer, subject, user_id, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (issuer, subject) DO NOTHING",
        )
        .bind(issuer)
        .bind(subject)
        .bind(user_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("link an OIDC identity to {user_id:?}"), e))?;
        Ok(())
    }

    /// Records a dashboard session (by the SHA-256 of its cookie).
    pub async fn insert_web_session(
        &self,
        session_hash: &str,
        user_id: &str,
        method: &str,
        expires_at: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO web_sessions (session_hash, user_id, method, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(session_hash)
        .bind(user_id)
        .bind(method)
        .bind(now_ms())
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("record a session of {user_id:?}"), e))?;
        Ok(())
    }

    /// A session that has not expired, with its account.
    pub async fn find_web_session(&self, session_hash: &str) -> Result<Option<WebSession>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, s.method, s.created_at AS s_created, s.expires_at \
             FROM web_sessions s JOIN accounts a ON a.user_id = s.user_id \
             WHERE s.session_hash = $1 AND s.expires_at > $2"
        ))
        .bind(session_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err("find a session".into(), e))?;
        let Some(row) = row else { return Ok(None) };
        let read = || -> std::result::Result<_, sqlx::Error> {
            Ok(WebSession {
                account: Account::from_row(&row)?,
                method: row.try_get("method")?,
                created_at: row.try_get("s_created")?,
                expires_at: row.try_get("expires_at")?,
            })
        };
        read()
            .map(Some)
            .map_err(|e| self.query_err("read a session".into(), e))
    }

    /// Ends a session. False if it was not there.
    pub async fn delete_web_session(&self, session_hash: &str) -> Result<bool> {
        let r = sqlx::query("DELETE FROM web_sessions WHERE session_hash = $1")
            .bind(session_hash)
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err("end a session".into(), e))?;
        Ok(r.rows_affected() > 0)
    }

    /// Ends every session of an account, and any that expired.
    pub async fn delete_web_sessions_of(&self, user_id: &str) -> Result<u64> {
        let r = sqlx::query("DELETE FROM web_sessions WHERE user_id = $1 OR expires_at <= $2")
            .bind(user_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(|e| self.query_err(format!("end the sessions of {user_id:?}"), e))?;
        Ok(r.rows_affected())
    }

    /// Records an OIDC sign-in in flight under its `state`.
    pub async fn insert_oidc_login(&self, state: &str, l: &OidcLogin) -> Result<()> {
        sqlx::query(
            "INSERT INTO oidc_logins (state, provider, nonce, pkce_verifier, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(state)
        .bind(&l.provider)
        .bind(&l.nonce)
        .bind(&l.pkce_verifier)
        .bind(l.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err("record an OIDC sign-in".into(), e))?;
        Ok(())
    }

    /// Takes (reads and deletes) the OIDC sign-in recorded under `state`,
    /// once: a replayed callback finds nothing. Sign-ins older than
    /// `max_age_ms` are dropped on the way.
    pub async fn take_oidc_login(&self, state: &str, max_age_ms: i64) -> Result<Option<OidcLogin>> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.query_err("begin taking an OIDC sign-in".into(), e))?;
        let row = sqlx::query(
            "SELECT provider, nonce, pkce_verifier, created_at FROM oidc_logins WHERE state = $1",
        )
        .bind(state)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| self.query_err("find an OIDC sign-in".into(), e))?;
        let r = sqlx::query("DELETE FROM oidc_logins WHERE state = $1 OR created_at < $2")
            .bind(state)
            .bind(now_ms() - max_age_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.query_err("delete an OIDC sign-in".into(), e))?;
        tx.commit()
            .await
            .map_err(|e| self.query_err("commit taking an OIDC sign-in".into(), e))?;
        let Some(row) = row else { return Ok(None) };
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        let l = (|| -> std::result::Result<_, sqlx::Error> {
            Ok(OidcLogin {
                provider: row.try_get("provider")?,
                nonce: row.try_get("nonce")?,
                pkce_verifier: row.try_get("pkce_verifier")?,
                created_at: row.try_get("created_at")?,
            })
        })()
        .map_err(|e| self.query_err("read an OIDC sign-in".into(), e))?;
        Ok((l.created_at >= now_ms() - max_age_ms).then_some(l))
    }
}
