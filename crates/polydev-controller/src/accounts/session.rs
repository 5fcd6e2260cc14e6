//! Dashboard sessions: a random cookie (`polydev_session`, HttpOnly,
//! SameSite=Lax, Secure when the public URL is https) whose SHA-256 is kept
//! in the store with the account and an expiry. A request's session is
//! checked from memory and again against the store at most once a second,
//! so signing out here ends it at once, and disabling the account or
//! signing out through another controller within a second.

use super::password;
use super::AccountsConfig;
use crate::admission::RateLimiter;
use crate::auth::Caller;
use axum::http::{header, HeaderMap};
use polydev_core::vm::now_ms;
use polydev_store::{Store, StoreError};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "polydev_session";

/// How long a session checked against the store is trusted from memory.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The answer to a refused sign-in: the same for an unknown account, a
/// wrong password and a disabled account.
pub const REFUSED: &str = "wrong user name or password";

/// A signed-in account.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The account's user id.
    pub user_id: String,
    /// Whether it is an admin.
    pub admin: bool,
    /// Its e-mail address.
    pub email: Option<String>,
    /// How it signed in: `password` or `oidc:<provider>`.
    pub method: String,
    /// When the session ends (Unix ms).
    pub expires_at: i64,
}

impl SignedIn {
    /// The API caller this session is.
    pub fn caller(&self) -> Caller {
        Caller {
            key_id: None,
            user_id: Some(self.user_id.clone()),
            admin: self.admin,
        }
    }
}

/// Why a sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Unknown account, wrong password or disabled account: one answer.
    #[error("{REFUSED}")]
    Refused,
    /// Too many attempts for the account or from the address.
    #[error("too many sign-in attempts; try again in {0} s")]
    Limited(u64),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Cached {
    who: SignedIn,
    checked: Instant,
}

/// Sessions and sign-in attempts.
pub struct Sessions {
    store: Store,
    cfg: AccountsConfig,
    secure: bool,
    cache: RwLock<HashMap<String, Cached>>,
    attempts: RateLimiter,
}

fn digest(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The session cookie's value in a request, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

impl Sessions {
    /// Sessions over `store`; cookies are `Secure` when `secure`.
    pub fn new(store: Store, cfg: AccountsConfig, secure: bool) -> Sessions {
        Sessions {
            store,
            cfg,
            secure,
            cache: Default::default(),
            attempts: Default::default(),
        }
    }

    /// The settings.
    pub fn cfg(&self) -> &AccountsConfig {
        &self.cfg
    }

    /// The account signed in by the request's cookie, if any.
    pub async fn session_of(&self, headers: &HeaderMap) -> Result<Option<SignedIn>, StoreError> {
        let Some(token) = cookie_value(headers) else {
            return Ok(None);
        };
        let h = digest(token);
        {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(&h) {
                if c.checked.elapsed() < RECHECK && c.who.expires_at > now_ms() {
                    return Ok(Some(c.who.clone()));
                }
            }
        }
        let found = self.store.find_web_session(&h).await?;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.retain(|_, c| c.checked.elapsed() < RECHECK);
        }
        match found {
            Some(s) if !s.account.disabled => {
                let who = SignedIn {
                    admin: s.account.role == "admin",
                    user_id: s.account.user_id,
                    email: s.account.email,
                    method: s.method,
                    expires_at: s.expires_at,
                };
                cache.insert(
                    h,
                    Cached {
                        who: who.clone(),
                        checked: Instant::now(),
                    },
                );
                Ok(Some(who))
            }
            _ => {
                cache.remove(&h);
                Ok(None)
            }
        }
    }

    /// Starts a session for `user_id`: the `Set-Cookie` value and who it is.
    pub async fn start(&self, user_id: &str, method: &str) -> Result<String, StoreError> {
        use rand::RngCore;
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = hex::encode(raw);
        let expires_at = now_ms() + self.cfg.session_ttl.as_millis() as i64;
        self.store
            .insert_web_session(&digest(&token), user_id, method, expires_at)
            .await?;
        tracing::info!(user_id, method, "dashboard session started");
        Ok(self.set_cookie(&token, self.cfg.session_ttl.as_secs()))
    }

    /// Ends the request's session (here at once): the `Set-Cookie` value
    /// that clears the cookie.
    pub async fn end(&self, headers: &HeaderMap) -> Result<String, StoreError> {
        if let Some(token) = cookie_value(headers) {
            let h = digest(token);
            self.cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&h);
            self.store.delete_web_session(&h).await?;
        }
        Ok(self.set_cookie("", 0))
    }

    /// Forgets every cached session of `user_id` (after disabling it or
    /// changing its password, which end its sessions in the store).
    pub fn forget_user(&self, user_id: &str) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, c| c.who.user_id != user_id);
    }

    fn set_cookie(&self, value: &str, max_age_s: u64) -> String {
        format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{}",
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// Counts a sign-in attempt for `user` from `address`; `Err(seconds)`
    /// when either is over its limit.
    pub fn count_attempt(&self, user: &str, address: Option<&str>) -> Result<(), u64> {
        let w = self.cfg.attempt_window;
        self.attempts.check(
            &format!("account:{}", user.to_ascii_lowercase()),
            self.cfg.attempts_per_account,
            w,
        )?;
        if let Some(a) = address {
            self.attempts
                .check(&format!("address:{a}"), self.cfg.attempts_per_address, w)?;
        }
        Ok(())
    }

    /// Checks a user name and password: the account, or one refusal for an
    /// unknown account, a wrong password and a disabled account alike
    /// (the password is hashed in every case, so they take as long).
    pub async fn check_password(
        &self,
        user: &str,
        pass: &str,
        address: Option<&str>,
    ) -> Result<polydev_store::Account, SignInError> {
        self.count_attempt(user, address)
            .map_err(SignInError::Limited)?;
        let found = if user.len() <= 128 && pass.len() <= password::MAX_LEN {
            self.store.account_password(user).await?
        } else {
            None
        };
        let (account, stored) = match found {
            Some((a, h)) => (Some(a), h),
            None => (None, None),
        };
        let ok = password::verify_async(pass.to_string(), stored).await;
        match account {
            Some(a) if ok && !a.disabled => Ok(a),
            _ => {
                tracing::info!(user = %user.chars().take(64).collect::<String>(), "sign-in refused");
                Err(SignInError::Refused)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; polydev_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h), Some("abc"));
        h.insert(header::COOKIE, "polydev_sessionx=1".parse().unwrap());
        assert_eq!(cookie_value(&h), None);
    }

    /// The session token a `Set-Cookie` value carries.
    fn token_of(set_cookie: &str) -> String {
        let first = set_cookie.split(';').next().unwrap();
        first.split_once('=').unwrap().1.to_string()
    }

    #[tokio::test]
    async fn sessions_start_check_and_end() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::sqlite_in(d.path()).await.unwrap();
        let hash = password::hash("a good long password").unwrap();
        store
            .insert_account("ann", None, "user", Some(&hash))
            .await
            .unwrap();
        let s = Sessions::new(store.clone(), AccountsConfig::default(), true);
        assert!(matches!(
            s.check_password("ann", "wrong password!!", None).await,
            Err(SignInError::Refused)
        ));
        assert!(matches!(
            s.check_password("nobody", "a good long password", None)
                .await,
            Err(SignInError::Refused)
        ));
        s.check_password("ann", "a good long password", None)
            .await
            .unwrap();
        let set = s.start("ann", "password").await.unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Secure"),
            "{set}"
        );
        let token = token_of(&set);
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("{COOKIE}={token}").parse().unwrap());
        assert_eq!(s.session_of(&h).await.unwrap().unwrap().user_id, "ann");
        // Disabled in the store: refused after the recheck.
        store.set_account_disabled("ann", true).await.unwrap();
        tokio::time::sleep(RECHECK + Duration::from_millis(50)).await;
        assert!(s.session_of(&h).await.unwrap().is_none());
        store.set_account_disabled("ann", false).await.unwrap();
        let set = s.start("ann", "password").await.unwrap();
        let token = token_of(&set);
        h.insert(header::COOKIE, format!("{COOKIE}={token}").parse().unwrap());
        assert!(s.session_of(&h).await.unwrap().is_some());
        let cleared = s.end(&h).await.unwrap();
        assert!(cleared.contains("Max-Age=0"));
        assert!(s.session_of(&h).await.unwrap().is_none(), "ended at once");
        // Attempts are limited per account.
        for _ in 0..20 {
            let _ = s
                .check_password("ann", "nope nope nope", Some("192.0.2.1"))
                .await;
        }
        assert!(matches!(
            s.check_password("ann", "a good long password", None).await,
            Err(SignInError::Limited(_))
        ));
        store.close().await;
    }
}
