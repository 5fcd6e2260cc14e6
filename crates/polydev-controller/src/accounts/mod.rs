//! End users' accounts and how they sign in to the dashboard.
//!
//! One job per file:
//! - [`password`]: argon2id hashes, a decoy check for unknown accounts.
//! - [`session`]: the session cookie, sessions kept in the store and checked
//!   from memory, sign-in attempts limited per account and address.
//! - [`oidc`]: sign-in with OpenID Connect providers named in an operator's
//!   file (the `openidconnect` crate: discovery, PKCE, state, nonce).
//! - [`oidc_standin`]: an OpenID Connect provider for tests and benchmarks.
//! - [`guard`]: changing requests and WebSocket upgrades only from the
//!   controller's own pages.
//!
//! Walls: it knows accounts, sessions and identities, and turns them into an
//! [`crate::auth::Caller`]; what a caller may do is decided where the
//! objects are (the API's handlers).

pub mod guard;
pub mod oidc;
pub mod oidc_standin;
pub mod password;
pub mod session;

use std::path::PathBuf;
use std::time::Duration;

/// Accounts' settings.
#[derive(Debug, Clone)]
pub struct AccountsConfig {
    /// How long a dashboard session lasts (`POLYDEV_SESSION_HOURS`, default 12).
    pub session_ttl: Duration,
    /// The OpenID Connect providers file (`POLYDEV_OIDC_FILE`, TOML).
    pub oidc_file: Option<PathBuf>,
    /// Its providers, read and checked with their client secrets.
    pub oidc: Vec<oidc::ProviderSettings>,
    /// Sign-in attempts per account per window (`POLYDEV_SIGNIN_PER_ACCOUNT`, 10).
    pub attempts_per_account: u32,
    /// Sign-in attempts per client address per window
    /// (`POLYDEV_SIGNIN_PER_ADDRESS`, 30).
    pub attempts_per_address: u32,
    /// The window of those limits: 15 minutes.
    pub attempt_window: Duration,
    /// Take the client address from `X-Forwarded-For`'s last hop
    /// (`POLYDEV_TRUST_FORWARDED=1`, behind a reverse proxy).
    pub trust_forwarded: bool,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            session_ttl: Duration::from_secs(12 * 3600),
            oidc_file: None,
            oidc: Vec::new(),
            attempts_per_account: 10,
            attempts_per_address: 30,
            attempt_window: Duration::from_secs(15 * 60),
            trust_forwarded: false,
        }
    }
}

impl AccountsConfig {
    /// From the `POLYDEV_*` variables above; a malformed value is an error
    /// naming the variable.
    pub fn from_env() -> Result<AccountsConfig, String> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`AccountsConfig::from_env`] over any lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<AccountsConfig, String> {
        let mut c = AccountsConfig::default();
        let num = |k: &str| -> Result<Option<u64>, String> {
            get(k)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("{k} must be a positive whole number, not {v:?}"))
                })
                .transpose()
        };
        if let Some(h) = num("POLYDEV_SESSION_HOURS")? {
            c.session_ttl = Duration::from_secs(h * 3600);
        }
        if let Some(n) = num("POLYDEV_SIGNIN_PER_ACCOUNT")? {
            c.attempts_per_account = n.min(u32::MAX as u64) as u32;
        }
        if let Some(n) = num("POLYDEV_SIGNIN_PER_ADDRESS")? {
            c.attempts_per_address = n.min(u32::MAX as u64) as u32;
        }
        c.oidc_file = get("POLYDEV_OIDC_FILE").map(PathBuf::from);
        if let Some(f) = &c.oidc_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("POLYDEV_OIDC_FILE {}: {e}", f.display()))?;
            c.oidc = oidc::parse(&text, &f.display().to_string())?;
            for p in &mut c.oidc {
                if let Some(sf) = p.client_secret_file.take() {
                    let secret = std::fs::read_to_string(&sf).map_err(|e| {
                        format!(
                            "{}: provider {:?}: client_secret_file {}: {e}",
                            f.display(),
                            p.id,
                            sf.display()
                        )
                    })?;
                    p.client_secret = Some(secret.trim().to_string());
                }
            }
        }
        c.trust_forwarded = matches!(
            get("POLYDEV_TRUST_FORWARDED").as_deref().map(str::trim),
            Some("1" | "true" | "yes")
        );
        Ok(c)
    }
}

/// Accounts, their sessions and OIDC sign-ins.
pub struct Accounts {
    /// Sessions and password sign-ins.
    pub sessions: session::Sessions,
    /// OpenID Connect providers.
    pub oidc: oidc::Oidc,
    store: polydev_store::Store,
}

impl Accounts {
    /// Over `store`, with `cfg`; cookies `Secure` when `secure` (an https
    /// public URL).
    pub fn new(store: polydev_store::Store, cfg: &AccountsConfig, secure: bool) -> Accounts {
        Accounts {
            sessions: session::Sessions::new(store.clone(), cfg.clone(), secure),
            oidc: oidc::Oidc::new(store.clone(), cfg.oidc.clone()),
            store,
        }
    }

    /// The store.
    pub fn store(&self) -> &polydev_store::Store {
        &self.store
    }

    /// The account signed in by the request's session cookie, if any.
    pub async fn session_of(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<session::SignedIn>, polydev_store::StoreError> {
        self.sessions.session_of(headers).await
    }
}

/// Roles an account may have.
pub const ROLES: [&str; 2] = ["user", "admin"];

/// Checks an e-mail address enough to match OIDC identities: lower-cased,
/// one `@`, no spaces.
pub fn normalize_email(e: &str) -> Result<String, String> {
    let e = e.trim().to_ascii_lowercase();
    let ok = e.len() <= 254
        && e.split('@').count() == 2
        && !e.starts_with('@')
        && !e.ends_with('@')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(e)
    } else {
        Err(format!("{e:?} is not an e-mail address"))
    }
}
