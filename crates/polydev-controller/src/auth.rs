//! API keys: made by `polydev apikey create`, shown once, stored as SHA-256
//! hashes; checked on every request but `/health`.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use sha2::Digest;

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

/// Whether this process should record a use of `key_id` now (at most once
/// per [`TOUCH_EVERY`]).
fn touch_due(key_id: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;
    static LAST: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    let mut m = LAST
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match m.get(key_id) {
        Some(t) if now.duration_since(*t) < TOUCH_EVERY => false,
        _ => {
            if m.len() > 10_000 {
                m.retain(|_, t| now.duration_since(*t) < TOUCH_EVERY);
            }
            m.insert(key_id.to_string(), now);
            true
        }
    }
}

/// The authenticated caller, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The API key used.
    pub key_id: String,
}

/// Middleware: requires `Authorization: Bearer <api key>`.
pub async fn require_api_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <api key>"))?;
    let value = header
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let key = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| unauthorized("Authorization must be `Bearer <api key>`"))?;
    let found = state
        .runtime
        .store()
        .find_api_key_by_hash(&hash(key))
        .await?
        .ok_or_else(|| unauthorized("unknown or revoked API key"))?;
    if touch_due(&found.key_id) {
        let _ = state.runtime.store().touch_api_key(&found.key_id).await;
    }
    req.extensions_mut().insert(Caller {
        key_id: found.key_id,
    });
    Ok(next.run(req).await)
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

    #[test]
    fn a_key_is_touched_once_a_minute() {
        assert!(super::touch_due("key_t1"));
        assert!(!super::touch_due("key_t1"));
        assert!(super::touch_due("key_t2"));
    }
}
