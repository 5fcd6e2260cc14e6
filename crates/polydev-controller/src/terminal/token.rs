//! Terminal tokens: short-lived credentials for one user's terminal, handed
//! to the user's page instead of the operator's API key.
//!
//! A token is `pdt_<payload>.<mac>`: the payload is base64url JSON
//! `{"u": user id, "e": expiry (Unix ms)}`; the MAC is HMAC-SHA256 over
//! `pdt1.<payload>` under a key derived from the vault master key with HKDF
//! (label [`KEY_LABEL`]). The scheme is the view tokens' (`live/token.rs`)
//! with its own prefix, MAC domain and key, so a view token is never a
//! terminal token nor the reverse. Tokens survive a controller restart and
//! die with a key rotation.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use zeroize::Zeroizing;

/// Prefix of every terminal token (view tokens: `pdv_`, API keys: `pdk_`).
pub const PREFIX: &str = "pdt_";
/// HKDF label of the signing key.
pub const KEY_LABEL: &str = "polydev terminal token v1";
const MAC_DOMAIN: &[u8] = b"pdt1.";
/// Lifetime of a token unless the request asks for less.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// What a token grants: the terminal of one user, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The user.
    #[serde(rename = "u")]
    pub user_id: String,
    /// Expiry, Unix milliseconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a terminal token at all.
    #[error("malformed terminal token: {0}")]
    Malformed(&'static str),
    /// The signature does not match (tampered, or signed under another key).
    #[error("terminal token signature is not valid (tampered, or made under another master key)")]
    BadSignature,
    /// Past its expiry.
    #[error("terminal token expired {0} s ago; ask for a new one")]
    Expired(i64),
    /// Valid, but for another user.
    #[error("terminal token is for another user")]
    OtherUser,
}

/// Mints and checks terminal tokens.
pub struct TokenKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TerminalTokenKey(***)")
    }
}

impl TokenKey {
    /// The key derived from the vault's current master key.
    pub fn from_keyring(k: &polydev_vault::Keyring) -> TokenKey {
        TokenKey {
            key: k.derive_subkey(KEY_LABEL),
        }
    }

    /// A key from raw bytes (tests).
    pub fn from_bytes(key: [u8; 32]) -> TokenKey {
        TokenKey {
            key: Zeroizing::new(key),
        }
    }

    fn mac(&self, payload_b64: &str) -> Hmac<sha2::Sha256> {
        let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.key.as_ref())
            .expect("HMAC takes any key length");
        m.update(MAC_DOMAIN);
        m.update(payload_b64.as_bytes());
        m
    }

    /// A signed token for `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let tag = self.mac(&payload).finalize().into_bytes();
        format!("{PREFIX}{payload}.{}", B64.encode(tag))
    }

    /// Checks the signature, the expiry (at `now_ms`) and the user.
    pub fn verify(&self, token: &str, user_id: &str, now_ms: i64) -> Result<Claims, TokenError> {
        let body = token
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed("it does not start with pdt_"))?;
        let (payload, tag) = body
            .split_once('.')
            .ok_or(TokenError::Malformed("no signature part"))?;
        let tag = B64
            .decode(tag)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        if tag.len() != 32 {
            return Err(TokenError::Malformed("signature has the wrong length"));
        }
        // `verify_slice` compares in constant time.
        self.mac(payload)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let raw = B64
            .decode(payload)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&raw)
            .map_err(|_| TokenError::Malformed("payload is not a claims object"))?;
        if now_ms >= claims.expires_at {
            return Err(TokenError::Expired(
                now_ms.saturating_sub(claims.expires_at) / 1000,
            ));
        }
        if claims.user_id != user_id {
            return Err(TokenError::OtherUser);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            user_id: "alice".into(),
            expires_at: exp,
        }
    }

    #[test]
    fn round_trip_user_and_expiry() {
        let k = TokenKey::from_bytes([1; 32]);
        let t = k.mint(&claims(10_000));
        assert!(t.starts_with(PREFIX));
        assert_eq!(k.verify(&t, "alice", 9_999), Ok(claims(10_000)));
        assert_eq!(k.verify(&t, "bob", 9_999), Err(TokenError::OtherUser));
        assert_eq!(k.verify(&t, "alice", 10_000), Err(TokenError::Expired(0)));
        assert_eq!(k.verify(&t, "alice", 75_000), Err(TokenError::Expired(65)));
        let ancient = k.mint(&claims(i64::MIN));
        assert_eq!(
            k.verify(&ancient, "alice", i64::MAX),
            Err(TokenError::Expired(i64::MAX / 1000))
        );
    }

    #[test]
    fn tampering_other_keys_and_view_tokens_are_refused() {
        let k = TokenKey::from_bytes([1; 32]);
        let t = k.mint(&claims(10_000));
        assert_eq!(
            TokenKey::from_bytes([2; 32]).verify(&t, "alice", 0),
            Err(TokenError::BadSignature)
        );
        let (_, tag) = t.split_once('.').unwrap();
        let mut forged = claims(10_000);
        forged.user_id = "bob".into();
        let fp = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            k.verify(&format!("{PREFIX}{fp}.{tag}"), "bob", 0),
            Err(TokenError::BadSignature)
        );
        // A view token made under the same master key is not a terminal
        // token: other prefix, and its MAC is over another domain and key.
        let view =
            crate::live::token::TokenKey::from_bytes([1; 32]).mint(&crate::live::token::Claims {
                user_id: "alice".into(),
                session_id: "as_1".into(),
                expires_at: 10_000,
                read_only: false,
            });
        assert!(matches!(
            k.verify(&view, "alice", 0),
            Err(TokenError::Malformed(_))
        ));
        let (_, body) = view.split_at(4);
        assert_eq!(
            k.verify(&format!("{PREFIX}{body}"), "alice", 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens_say_why() {
        let k = TokenKey::from_bytes([1; 32]);
        for (t, why) in [
            ("pdk_abc", "pdt_"),
            ("pdt_abc", "no signature"),
            ("pdt_abc.!!!", "base64url"),
            ("pdt_abc.AAAA", "wrong length"),
        ] {
            match k.verify(t, "alice", 0) {
                Err(TokenError::Malformed(m)) => assert!(m.contains(why), "{t}: {m}"),
                other => panic!("{t}: {other:?}"),
            }
        }
    }

    // Properties over arbitrary tokens (see `crate::fuzz`).

    use crate::live::token::tests::token_text;
    use proptest::prelude::*;

    fn any_claims() -> impl Strategy<Value = Claims> {
        (any::<String>(), any::<i64>()).prop_map(|(user_id, expires_at)| Claims {
            user_id,
            expires_at,
        })
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(4096))]

        /// Text that was not minted never verifies, for any user and time;
        /// neither does a view token made under the same key bytes.
        #[test]
        fn made_up_tokens_never_verify(
            t in token_text(PREFIX),
            user in any::<String>(),
            now in any::<i64>(),
        ) {
            let k = TokenKey::from_bytes([7; 32]);
            prop_assert!(k.verify(&t, &user, now).is_err());
            let view = crate::live::token::TokenKey::from_bytes([7; 32]).mint(
                &crate::live::token::Claims {
                    user_id: user.clone(),
                    session_id: t,
                    expires_at: i64::MAX,
                    read_only: false,
                },
            );
            prop_assert!(k.verify(&view, &user, now).is_err());
            let renamed = format!("{PREFIX}{}", &view[PREFIX.len()..]);
            prop_assert!(k.verify(&renamed, &user, now).is_err());
        }

        /// Minted claims come back for their user before their expiry; they
        /// are refused as expired from it on, and for any other user.
        #[test]
        fn minted_claims_round_trip(
            c in any_claims(),
            other in any::<String>(),
            now in any::<i64>(),
        ) {
            let k = TokenKey::from_bytes([7; 32]);
            let t = k.mint(&c);
            if now < c.expires_at {
                prop_assert_eq!(k.verify(&t, &c.user_id, now), Ok(c.clone()));
                if other != c.user_id {
                    prop_assert_eq!(k.verify(&t, &other, now), Err(TokenError::OtherUser));
                }
            } else {
                let refused = k.verify(&t, &c.user_id, now);
                let expired = matches!(refused, Err(TokenError::Expired(s)) if s >= 0);
                prop_assert!(expired, "{refused:?}");
            }
        }

        /// A minted token with any one byte changed never verifies: it is
        /// malformed or its signature fails.
        #[test]
        fn one_changed_byte_never_verifies(
            c in any_claims(),
            at in any::<prop::sample::Index>(),
            to in any::<u8>(),
        ) {
            let k = TokenKey::from_bytes([7; 32]);
            let mut t = k.mint(&c).into_bytes();
            let i = at.index(t.len());
            prop_assume!(t[i] != to);
            t[i] = to;
            if let Ok(t) = String::from_utf8(t) {
                let refused = k.verify(&t, &c.user_id, i64::MIN);
                prop_assert!(
                    matches!(refused, Err(TokenError::Malformed(_) | TokenError::BadSignature)),
                    "{t}: {refused:?}"
                );
            }
        }
    }
}
