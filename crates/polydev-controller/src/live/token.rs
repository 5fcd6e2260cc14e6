//! View tokens: short-lived credentials for one session's live view, handed
//! to the user's page instead of the operator's API key.
//!
//! A token is `pdv_<payload>.<mac>`: the payload is base64url JSON
//! `{"u": user id, "s": session id, "e": expiry (Unix ms), "ro": read-only}`;
//! the MAC is HMAC-SHA256 over `pdv1.<payload>` under a key derived from the
//! vault master key with HKDF (label [`KEY_LABEL`]), so tokens survive a
//! controller restart and die with a key rotation. Verification compares MACs
//! in constant time and says exactly why a token is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Prefix of every view token (API keys start with `pdk_`).
pub const PREFIX: &str = "pdv_";
/// HKDF label of the signing key.
pub const KEY_LABEL: &str = "polydev live-view token v1";
const MAC_DOMAIN: &[u8] = b"pdv1.";

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user the session belongs to.
    #[serde(rename = "u")]
    pub user_id: String,
    /// The session.
    #[serde(rename = "s")]
    pub session_id: String,
    /// Expiry, Unix milliseconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
    /// Watch only: no input reaches the VM.
    #[serde(rename = "ro")]
    pub read_only: bool,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a view token at all (wrong prefix, bad encoding, bad payload).
    #[error("malformed view token: {0}")]
    Malformed(&'static str),
    /// The signature does not match (tampered, or signed under another key).
    #[error("view token signature is not valid (tampered, or made under another master key)")]
    BadSignature,
    /// Past its expiry.
    #[error("view token expired {0} s ago")]
    Expired(i64),
    /// Valid, but for another session.
    #[error("view token is for another session")]
    OtherSession,
    /// Valid, but for another user than the session's.
    #[error("view token is for another user")]
    OtherUser,
}

impl TokenError {
    /// Whether the caller is unauthenticated (401) rather than authenticated
    /// for something else (403).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            TokenError::Malformed(_) | TokenError::BadSignature | TokenError::Expired(_)
        )
    }
}

/// Mints and checks view tokens.
pub struct TokenKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(***)")
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

    /// Checks the signature and expiry (at `now_ms`); returns the claims.
    /// The session and user are checked by [`Claims::check_for`].
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, TokenError> {
        let body = token
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed("it does not start with pdv_"))?;
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
        Ok(claims)
    }
}

impl Claims {
    /// Checks that the token is for `session_id`, owned by `user_id`.
    pub fn check_for(&self, session_id: &str, user_id: &str) -> Result<(), TokenError> {
        if self.session_id != session_id {
            return Err(TokenError::OtherSession);
        }
        if self.user_id != user_id {
            return Err(TokenError::OtherUser);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            user_id: "alice".into(),
            session_id: "as_1".into(),
            expires_at: exp,
            read_only: false,
        }
    }

    #[test]
    fn round_trip_and_binding() {
        let k = TokenKey::from_bytes([1; 32]);
        let t = k.mint(&claims(10_000));
        assert!(t.starts_with(PREFIX));
        let c = k.verify(&t, 9_999).unwrap();
        assert_eq!(c, claims(10_000));
        assert_eq!(c.check_for("as_1", "alice"), Ok(()));
        assert_eq!(c.check_for("as_2", "alice"), Err(TokenError::OtherSession));
        assert_eq!(c.check_for("as_1", "bob"), Err(TokenError::OtherUser));
    }

    #[test]
    fn expiry_is_exact() {
        let k = TokenKey::from_bytes([1; 32]);
        let t = k.mint(&claims(10_000));
        assert_eq!(k.verify(&t, 10_000), Err(TokenError::Expired(0)));
        assert_eq!(k.verify(&t, 75_000), Err(TokenError::Expired(65)));
        let ancient = k.mint(&claims(i64::MIN));
        assert_eq!(
            k.verify(&ancient, i64::MAX),
            Err(TokenError::Expired(i64::MAX / 1000))
        );
        assert!(TokenError::Expired(1).is_unauthenticated());
        assert!(!TokenError::OtherSession.is_unauthenticated());
    }

    #[test]
    fn tampering_and_other_keys_are_refused() {
        let k = TokenKey::from_bytes([1; 32]);
        let t = k.mint(&claims(10_000));
        // Another key (another master key).
        assert_eq!(
            TokenKey::from_bytes([2; 32]).verify(&t, 0),
            Err(TokenError::BadSignature)
        );
        // A payload swapped for one claiming another session, old signature kept.
        let (_, tag) = t.split_once('.').unwrap();
        let mut forged = claims(10_000);
        forged.session_id = "as_2".into();
        let fp = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            k.verify(&format!("{PREFIX}{fp}.{tag}"), 0),
            Err(TokenError::BadSignature)
        );
        // Read-only flipped off.
        let mut ro = claims(10_000);
        ro.read_only = true;
        let tro = k.mint(&ro);
        let (p_rw, _) = t.split_once('.').unwrap();
        let (_, tag_ro) = tro.split_once('.').unwrap();
        assert_eq!(
            k.verify(&format!("{p_rw}.{tag_ro}"), 0),
            Err(TokenError::BadSignature)
        );
        // One flipped bit in the signature.
        let mut bytes = B64.decode(tag).unwrap();
        bytes[0] ^= 1;
        let (p, _) = t.split_once('.').unwrap();
        assert_eq!(
            k.verify(&format!("{p}.{}", B64.encode(bytes)), 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens_say_why() {
        let k = TokenKey::from_bytes([1; 32]);
        for (t, why) in [
            ("pdk_abc", "pdv_"),
            ("pdv_abc", "no signature"),
            ("pdv_abc.!!!", "base64url"),
            ("pdv_abc.AAAA", "wrong length"),
        ] {
            match k.verify(t, 0) {
                Err(TokenError::Malformed(m)) => assert!(m.contains(why), "{t}: {m}"),
                other => panic!("{t}: {other:?}"),
            }
        }
        // A well-signed payload that is not claims.
        let p = B64.encode(b"[1,2]");
        let tag = B64.encode(k.mac(&p).finalize().into_bytes());
        assert_eq!(
            k.verify(&format!("{PREFIX}{p}.{tag}"), 0),
            Err(TokenError::Malformed("payload is not a claims object"))
        );
    }

    // Properties over arbitrary tokens (see `crate::fuzz`).

    use proptest::prelude::*;

    fn any_claims() -> impl Strategy<Value = Claims> {
        (
            any::<String>(),
            any::<String>(),
            any::<i64>(),
            any::<bool>(),
        )
            .prop_map(|(user_id, session_id, expires_at, read_only)| Claims {
                user_id,
                session_id,
                expires_at,
                read_only,
            })
    }

    /// Token-like text: anything, or a prefix, base64url parts and a dot in
    /// any arrangement.
    pub(crate) fn token_text(prefix: &'static str) -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            (
                prop::sample::select(vec![prefix, "pdv_", "pdt_", "pdk_", ""]),
                "[A-Za-z0-9_-]{0,80}",
                prop::sample::select(vec![".", "", ".."]),
                "[A-Za-z0-9_=-]{0,50}",
            )
                .prop_map(|(p, a, dot, b)| format!("{p}{a}{dot}{b}")),
            (any_claims(), proptest::collection::vec(any::<u8>(), 32)).prop_map(move |(c, tag)| {
                let payload = B64.encode(serde_json::to_vec(&c).unwrap());
                format!("{prefix}{payload}.{}", B64.encode(tag))
            }),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(4096))]

        /// Text that was not minted never verifies, whatever the time.
        #[test]
        fn made_up_tokens_never_verify(t in token_text(PREFIX), now in any::<i64>()) {
            let k = TokenKey::from_bytes([7; 32]);
            prop_assert!(k.verify(&t, now).is_err());
        }

        /// Minted claims come back as they were before their expiry, and
        /// are refused as expired from it on.
        #[test]
        fn minted_claims_round_trip(c in any_claims(), now in any::<i64>()) {
            let k = TokenKey::from_bytes([7; 32]);
            let t = k.mint(&c);
            if now < c.expires_at {
                prop_assert_eq!(k.verify(&t, now), Ok(c));
            } else {
                let refused = k.verify(&t, now);
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
                let refused = k.verify(&t, i64::MIN);
                prop_assert!(
                    matches!(refused, Err(TokenError::Malformed(_) | TokenError::BadSignature)),
                    "{t}: {refused:?}"
                );
            }
        }
    }
}
