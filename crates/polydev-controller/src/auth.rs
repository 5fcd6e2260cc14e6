//! API keys: made by `polydev apikey create` or `POST /api/keys`, shown
//! once, stored as SHA-256 hashes; checked on every request but `/health`
//! from an in-memory cache ([`KeyCache`]) that revocation empties.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use sha2::Digest;

/// A key found active: its id and the user it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    /// The key's id.
    pub key_id: String,
    /// `None` for an operator's key, else the only user it acts for.
    pub user_id: Option<String>,
}

/// Prefix of every polydev API key.
pub const KEY_PREFIX: &str = "pdk_";

/// A freshly made key: the secret (shown once) and what is stored.
pub struct NewKey {
    /// Key id (not secret).
    pub key_id: String,
    /// The full secret key.
    pub secret: String,
    /// Its hash, as stored.
    pub hash: String,
}

/// Makes a new random key.
pub fn generate() -> NewKey {
    use rand::RngCore;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut id);
    rand::thread_rng().fill_bytes(&mut secret);
    let key_id = format!("key_{}", hex::encode(id));
    let secret = format!("{KEY_PREFIX}{}", hex::encode(secret));
    let hash = hash(&secret);
    NewKey {
        key_id,
        secret,
        hash,
    }
}

/// SHA-256 of a key, hex.
pub fn hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// How often a key's `last_used_at` is written: a write per request made
/// authenticated reads a quarter as fast as `/health`.
pub const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How often [`KeyCache::refresh_loop`] drops keys revoked outside this
/// process (`polydev apikey revoke`, another controller on the same store).
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keys verified against the store, kept in memory so that a request costs
/// a hash and a map lookup, not a query. Revocation through this process
/// ([`KeyCache::forget`]) is honoured at once; revocation straight in the
/// store within [`REFRESH_EVERY`]. Unknown keys are always looked up (and
/// never cached), so a new key works at once.
pub struct KeyCache {
    store: polydev_store::Store,
    known: std::sync::RwLock<std::collections::HashMap<String, Known>>,
    /// Bumped by every forget and refresh: a lookup that raced one is not
    /// cached.
    generation: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

struct Known {
    key: VerifiedKey,
    /// When `last_used_at` was last written, ms since `started` (+1; 0: never).
    touched_ms: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    /// An empty cache over `store`.
    pub fn new(store: polydev_store::Store) -> std::sync::Arc<KeyCache> {
        std::sync::Arc::new(KeyCache {
            store,
            known: Default::default(),
            generation: Default::default(),
            started: std::time::Instant::now(),
        })
    }

    /// The key `secret`, if it is known and not revoked.
    pub async fn verify(
        &self,
        secret: &str,
    ) -> Result<Option<VerifiedKey>, polydev_store::StoreError> {
        use std::sync::atomic::Ordering;
        let h = hash(secret);
        if let Some(k) = self.cached(&h) {
            return Ok(Some(k));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(found) = self.store.find_api_key_by_hash(&h).await? else {
            return Ok(None);
        };
        let key = VerifiedKey {
            key_id: found.key_id.clone(),
            user_id: found.user_id.clone(),
        };
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::SeqCst) == generation {
            known.insert(
                h,
                Known {
                    key: key.clone(),
                    touched_ms: (self.started.elapsed().as_millis() as u64 + 1).into(),
                },
            );
        }
        drop(known);
        self.touch(&found.key_id, None);
        Ok(Some(key))
    }

    fn cached(&self, h: &str) -> Option<VerifiedKey> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        let k = known.get(h)?;
        self.touch(&k.key.key_id, Some(&k.touched_ms));
        Some(k.key.clone())
    }

    /// Writes the key's `last_used_at` in the background, at most once per
    /// [`TOUCH_EVERY`] for a cached key.
    fn touch(&self, key_id: &str, last: Option<&std::sync::atomic::AtomicU64>) {
        use std::sync::atomic::Ordering;
        let now = self.started.elapsed().as_millis() as u64 + 1;
        if let Some(last) = last {
            let prev = last.load(Ordering::Relaxed);
            let due = prev == 0 || now.saturating_sub(prev) >= TOUCH_EVERY.as_millis() as u64;
            if !due
                || last
                    .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return;
            }
        }
        let store = self.store.clone();
        let key_id = key_id.to_string();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = store.touch_api_key(&key_id).await;
            });
        }
    }

    /// Drops a key from the cache (after revoking it): its next use is
    /// looked up, and refused.
    pub fn forget(&self, key_id: &str) {
        use std::sync::atomic::Ordering;
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        known.retain(|_, k| k.key.key_id != key_id);
    }

    /// Drops every cached key the store no longer holds as active.
    pub async fn refresh(&self) -> Result<(), polydev_store::StoreError> {
        use std::sync::atomic::Ordering;
        let generation = self.generation.load(Ordering::SeqCst);
        let active: std::collections::HashSet<String> = self
            .store
            .active_api_key_hashes()
            .await?
            .into_iter()
            .collect();
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        let before = known.len();
        known.retain(|h, _| active.contains(h));
        if known.len() != before || self.generation.load(Ordering::SeqCst) != generation {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Keys cached now.
    pub fn len(&self) -> usize {
        self.known.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs [`KeyCache::refresh`] every `every`, for ever.
    pub async fn refresh_loop(self: std::sync::Arc<Self>, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "refreshing the API key cache");
            }
        }
    }
}

/// The key presented as `Authorization: Bearer <key>`, if any; an error for
/// a malformed header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    v.strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Some)
        .ok_or_else(|| unauthorized("Authorization must be `Bearer <key or token>`"))
}

/// 401 `unauthorized` with `message`.
pub fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Checks an API key: the caller it makes, or 401 for an unknown or
/// revoked one.
pub async fn check_key(state: &AppState, secret: &str) -> Result<Caller, ApiError> {
    let k = state
        .keys
        .verify(secret)
        .await?
        .ok_or_else(|| unauthorized("unknown or revoked API key"))?;
    Ok(Caller {
        admin: k.user_id.is_none(),
        user_id: k.user_id,
        key_id: Some(k.key_id),
    })
}

/// The authenticated caller, available to handlers as an extension: an
/// operator's API key (every user), a user's API key (one user), or a
/// dashboard session (its account; every user for an admin).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The API key used; `None` for a dashboard session.
    pub key_id: Option<String>,
    /// The user the caller is (or is bound to); `None` for an operator key.
    pub user_id: Option<String>,
    /// Whether it acts for every user (operator keys, admin accounts).
    pub admin: bool,
}

impl Caller {
    /// What rate limits and logs call it: the key's id, or `session:<user>`.
    pub fn label(&self) -> String {
        match (&self.key_id, &self.user_id) {
            (Some(k), _) => k.clone(),
            (None, Some(u)) => format!("session:{u}"),
            (None, None) => "session".into(),
        }
    }

    /// Whether the caller may see and act on objects of `owner`.
    pub fn sees(&self, owner: &str) -> bool {
        self.admin || self.user_id.as_deref() == Some(owner)
    }

    /// 403 `forbidden` unless the caller may act for `user`: a user's key or
    /// session names only its own user.
    pub fn act_for(&self, user: &str) -> Result<(), ApiError> {
        if self.sees(user) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this {} acts only for user {:?}, not {user:?}",
                if self.key_id.is_some() {
                    "API key"
                } else {
                    "session"
                },
                self.user_id.as_deref().unwrap_or_default()
            ),
        ))
    }

    /// An object of `owner`: `Ok` if the caller sees it, else the same 404
    /// as for an object that does not exist (`missing` says what).
    pub fn owns(&self, owner: &str, missing: impl FnOnce() -> String) -> Result<(), ApiError> {
        if self.sees(owner) {
            Ok(())
        } else {
            Err(ApiError::not_found(missing()))
        }
    }

    /// Whose objects a list shows: the requested user (checked), every user
    /// for an admin that names none, the caller's own otherwise.
    pub fn list_scope(&self, requested: Option<&str>) -> Result<Option<String>, ApiError> {
        match requested {
            Some(u) => self.act_for(u).map(|_| Some(u.to_string())),
            None if self.admin => Ok(None),
            None => Ok(self.user_id.clone()),
        }
    }
}

/// Middleware: requires `Authorization: Bearer <api key>`, or a dashboard
/// session cookie (whose changing requests must come from the controller's
/// own pages: `crate::accounts::guard`).
pub async fn require_api_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = match bearer(req.headers())? {
        Some(key) => check_key(&state, key).await?,
        None => match state.accounts.session_of(req.headers()).await? {
            Some(s) => s.caller(),
            None => {
                return Err(unauthorized(
                    "missing Authorization: Bearer <api key> (or a dashboard session)",
                ))
            }
        },
    };
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Body of `POST /api/keys`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewKeyBody {
    /// A label for the key (1–100 printable characters).
    name: String,
    /// The user the key is bound to. A user (key or session) makes keys for
    /// itself only; an operator or admin names any user, or none for an
    /// operator's key.
    #[serde(default)]
    user_id: Option<String>,
}

/// A key as the API shows it: never its secret or hash.
pub fn key_json(k: &polydev_store::ApiKey) -> serde_json::Value {
    serde_json::json!({
        "keyId": k.key_id,
        "name": k.name,
        "userId": k.user_id,
        "scope": if k.user_id.is_some() { "user" } else { "operator" },
        "createdAt": k.created_at,
        "lastUsedAt": k.last_used_at,
        "revoked": k.revoked,
    })
}

/// `GET /api/keys`: the keys the caller sees (every key for an operator or
/// admin, a user's own otherwise), revoked ones too.
pub async fn list_keys(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let store = state.runtime.store();
    let keys = match (&caller.user_id, caller.admin) {
        (Some(u), false) => store.list_user_api_keys(u).await?,
        (None, false) => Vec::new(),
        (_, true) => store.list_api_keys().await?,
    };
    let keys: Vec<_> = keys.iter().map(key_json).collect();
    Ok(axum::Json(serde_json::json!({ "keys": keys })))
}

/// `POST /api/keys {"name", "userId"?}`: a new key; its secret is in this
/// answer only.
pub async fn create_key(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<axum::Json<NewKeyBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, axum::Json<serde_json::Value>), ApiError> {
    let axum::Json(body) = body?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
            "name must be 1 to 100 printable characters",
        ));
    }
    let user = match (&body.user_id, caller.admin) {
        (Some(u), _) => {
            crate::api::validate_user_id(u)?;
            caller.act_for(u)?;
            Some(u.clone())
        }
        (None, true) => None,
        (None, false) => caller.user_id.clone(),
    };
    let k = generate();
    let row = state
        .runtime
        .store()
        .insert_scoped_api_key(&k.key_id, name, &k.hash, user.as_deref())
        .await?;
    tracing::info!(key_id = %k.key_id, user_id = ?user, by = %caller.label(), "API key created");
    let mut v = key_json(&row);
    v["key"] = k.secret.into();
    Ok((StatusCode::CREATED, axum::Json(v)))
}

/// `DELETE /api/keys/:id`: revokes a key; refused from its next request on.
/// A user revokes only their own keys (another's answers 404).
pub async fn revoke_key(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::extract::Path(key_id): axum::extract::Path<String>,
) -> Result<StatusCode, ApiError> {
    let missing = || format!("no active API key {key_id:?}");
    if !caller.admin {
        let mine = match &caller.user_id {
            Some(u) => state.runtime.store().list_user_api_keys(u).await?,
            None => Vec::new(),
        };
        if !mine.iter().any(|k| k.key_id == key_id) {
            return Err(ApiError::not_found(missing()));
        }
    }
    let revoked = state.runtime.store().revoke_api_key(&key_id).await?;
    state.keys.forget(&key_id);
    if !revoked {
        return Err(ApiError::not_found(missing()));
    }
    tracing::info!(%key_id, by = %caller.label(), "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_random_and_hash_is_stable() {
        let a = super::generate();
        let b = super::generate();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(super::KEY_PREFIX));
        assert_eq!(super::hash(&a.secret), a.hash);
        assert!(!a.hash.contains(&a.secret[4..]));
    }

    async fn store() -> (tempfile::TempDir, polydev_store::Store) {
        let d = tempfile::tempdir().unwrap();
        let s = polydev_store::Store::sqlite_in(d.path()).await.unwrap();
        (d, s)
    }

    #[tokio::test]
    async fn cached_keys_answer_without_the_store_and_revocation_is_honoured() {
        let (_d, store) = store().await;
        let k = super::generate();
        store.insert_api_key(&k.key_id, "t", &k.hash).await.unwrap();
        let cache = super::KeyCache::new(store.clone());
        assert_eq!(
            cache.verify(&k.secret).await.unwrap().map(|k| k.key_id),
            Some(k.key_id.clone())
        );
        assert_eq!(cache.verify("pdk_nope").await.unwrap(), None);
        assert_eq!(cache.len(), 1, "only known keys are cached");
        // Revoked in the store by another process: still cached until the
        // refresh, refused right after it.
        store.revoke_api_key(&k.key_id).await.unwrap();
        assert!(cache.verify(&k.secret).await.unwrap().is_some());
        cache.refresh().await.unwrap();
        assert_eq!(cache.verify(&k.secret).await.unwrap(), None);
        // Revoked through this process: refused at once.
        let k2 = super::generate();
        store
            .insert_api_key(&k2.key_id, "t2", &k2.hash)
            .await
            .unwrap();
        assert!(cache.verify(&k2.secret).await.unwrap().is_some());
        store.revoke_api_key(&k2.key_id).await.unwrap();
        cache.forget(&k2.key_id);
        assert_eq!(cache.verify(&k2.secret).await.unwrap(), None);
        store.close().await;
    }

    #[tokio::test]
    async fn a_key_is_touched_once_a_minute() {
        let (_d, store) = store().await;
        let k = super::generate();
        store.insert_api_key(&k.key_id, "t", &k.hash).await.unwrap();
        let cache = super::KeyCache::new(store.clone());
        let last = || async { store.list_api_keys().await.unwrap()[0].last_used_at };
        cache.verify(&k.secret).await.unwrap();
        let mut first = None;
        for _ in 0..100 {
            first = last().await;
            if first.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(first.is_some(), "the first use is recorded");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        for _ in 0..10 {
            cache.verify(&k.secret).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(last().await, first, "not written again within the minute");
        store.close().await;
    }
}
