//! The credential vault: AES-256-GCM encryption of provider credential files.
//!
//! Each record gets its own random 16-byte salt and 12-byte nonce; its key is
//! derived from a master key with HKDF-SHA256 over that salt. The associated
//! data binds the ciphertext to the user, the provider and the master key's
//! id, so a row copied to another user (or provider) fails to decrypt.
//!
//! Master keys come from the environment or a file, never from the
//! repository, and are never printed: [`MasterKey`]'s `Debug` shows only its
//! id, and its bytes are zeroed when dropped. A [`Keyring`] holds the current
//! key and older ones, so rows written under an old key can still be read and
//! re-encrypted ([`Keyring::reencrypt`]) during a rotation.
#![warn(missing_docs)]

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Salt length in bytes.
pub const SALT_LEN: usize = 16;
/// Nonce (IV) length in bytes.
pub const NONCE_LEN: usize = 12;
/// GCM tag length in bytes.
pub const TAG_LEN: usize = 16;
const HKDF_INFO: &[u8] = b"polydev credential vault v1";

/// Vault errors. None of them carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The master key is missing or malformed.
    #[error("master key: {0}")]
    BadKey(String),
    /// A record names a key this keyring does not have.
    #[error("record was encrypted under master key {0}, which is not in the keyring")]
    UnknownKey(String),
    /// Authentication failed: wrong key, wrong user/provider, or tampering.
    #[error("credential record for {user_id}/{provider} does not decrypt (wrong key, wrong owner, or tampered)")]
    Decrypt {
        /// Owner the caller claimed.
        user_id: String,
        /// Provider the caller claimed.
        provider: String,
    },
    /// A record's parts have the wrong sizes.
    #[error("malformed credential record: {0}")]
    Malformed(String),
}

/// A 256-bit master key with its id.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    #[zeroize(skip)]
    id: String,
    key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// Parses a key written as 64 hex digits or base64 of 32 bytes. Its id is
    /// `mk_` plus the first 8 hex digits of SHA-256 of the key: stable, and
    /// reveals nothing usable.
    pub fn parse(text: &str) -> Result<MasterKey, VaultError> {
        let t = text.trim();
        let bytes = Zeroizing::new(
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                hex::decode(t).map_err(|_| VaultError::BadKey("invalid hex".into()))?
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .map_err(|_| {
                        VaultError::BadKey("expected 64 hex digits or base64 of 32 bytes".into())
                    })?
            },
        );
        if bytes.len() != 32 {
            return Err(VaultError::BadKey(format!(
                "expected 32 bytes, got {}",
                bytes.len()
            )));
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(MasterKey::from_bytes(key))
    }

    /// A key from raw bytes.
    pub fn from_bytes(key: [u8; 32]) -> MasterKey {
        use sha2::Digest;
        let id = format!("mk_{}", &hex::encode(sha2::Sha256::digest(key))[..8]);
        MasterKey { id, key }
    }

    /// A new random key (for `polydev vault keygen`).
    pub fn generate() -> MasterKey {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        MasterKey::from_bytes(key)
    }

    /// The key as 64 hex digits, for writing a new key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.key))
    }

    /// The key's id (safe to log and store).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads a key file (hex or base64 text). Refuses a file that other users
    /// can read.
    pub fn from_file(path: &std::path::Path) -> Result<MasterKey, VaultError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| VaultError::BadKey(format!("{}: {e}", path.display())))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(VaultError::BadKey(format!(
                "{} is readable by other users (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| VaultError::BadKey(format!("{}: {e}", path.display())))?,
        );
        MasterKey::parse(&text).map_err(|e| VaultError::BadKey(format!("{}: {e}", path.display())))
    }

    fn cipher(&self, salt: &[u8]) -> Aes256Gcm {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), &self.key);
        let mut okm = Zeroizing::new([0u8; 32]);
        hk.expand(HKDF_INFO, okm.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Aes256Gcm::new_from_slice(okm.as_ref()).expect("32-byte key")
    }
}

/// One encrypted credential, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Ciphertext (without the tag).
    pub ciphertext: Vec<u8>,
    /// The 12-byte nonce.
    pub iv: Vec<u8>,
    /// The 16-byte GCM tag.
    pub tag: Vec<u8>,
    /// The 16-byte HKDF salt.
    pub salt: Vec<u8>,
    /// Id of the master key it was sealed under.
    pub key_id: String,
}

fn aad(user_id: &str, provider: &str, key_id: &str) -> Vec<u8> {
    // Length-prefixed so that no two (user, provider, key) triples collide.
    let mut v = b"polydev-credential-v1".to_vec();
    for part in [user_id, provider, key_id] {
        v.extend_from_slice(&(part.len() as u32).to_be_bytes());
        v.extend_from_slice(part.as_bytes());
    }
    v
}

/// The current master key and older ones still accepted for reading.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: MasterKey,
    old: Vec<MasterKey>,
}

impl Keyring {
    /// A keyring with only `current`.
    pub fn new(current: MasterKey) -> Keyring {
        Keyring {
            current,
            old: Vec::new(),
        }
    }

    /// Adds an older key accepted for decryption.
    pub fn with_old(mut self, k: MasterKey) -> Keyring {
        if k.id() != self.current.id() && !self.old.iter().any(|o| o.id() == k.id()) {
            self.old.push(k);
        }
        self
    }

    /// Loads from the environment: the current key from `POLYDEV_MASTER_KEY`
    /// or the file named by `POLYDEV_MASTER_KEY_FILE`; older keys from the
    /// files listed (colon-separated) in `POLYDEV_OLD_MASTER_KEY_FILES`.
    pub fn from_env() -> Result<Keyring, VaultError> {
        let current = match (std::env::var("POLYDEV_MASTER_KEY"), std::env::var("POLYDEV_MASTER_KEY_FILE")) {
            (Ok(k), _) if !k.is_empty() => MasterKey::parse(&Zeroizing::new(k))
                .map_err(|e| VaultError::BadKey(format!("POLYDEV_MASTER_KEY: {e}")))?,
            (_, Ok(f)) if !f.is_empty() => MasterKey::from_file(std::path::Path::new(&f))?,
            _ => {
                return Err(VaultError::BadKey(
                    "no master key: set POLYDEV_MASTER_KEY or POLYDEV_MASTER_KEY_FILE (make one with `polydev vault keygen`)"
                        .into(),
                ))
            }
        };
        let mut ring = Keyring::new(current);
        if let Ok(files) = std::env::var("POLYDEV_OLD_MASTER_KEY_FILES") {
            for f in files.split(':').filter(|f| !f.is_empty()) {
                ring = ring.with_old(MasterKey::from_file(std::path::Path::new(f))?);
            }
        }
        Ok(ring)
    }

    /// Id of the key new records are sealed under.
    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// A 32-byte key for another purpose, derived from the current master key
    /// with HKDF-SHA256 (no salt, `label` as the info). Distinct labels give
    /// independent keys, and none of them reveals the master key or the
    /// vault's own keys (whose info label differs). The live view signs its
    /// view tokens with one, so tokens survive a controller restart.
    pub fn derive_subkey(&self, label: &str) -> Zeroizing<[u8; 32]> {
        assert_ne!(label.as_bytes(), HKDF_INFO, "the vault's own label");
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.current.key);
        let mut okm = Zeroizing::new([0u8; 32]);
        hk.expand(label.as_bytes(), okm.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 length");
        okm
    }

    fn key(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(self.old.iter())
            .find(|k| k.id() == id)
    }

    /// Encrypts `plaintext` for `user_id`/`provider` under the current key.
    pub fn seal(&self, user_id: &str, provider: &str, plaintext: &[u8]) -> Sealed {
        let mut salt = vec![0u8; SALT_LEN];
        let mut iv = vec![0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut iv);
        let k = &self.current;
        let aad = aad(user_id, provider, k.id());
        let mut out = k
            .cipher(&salt)
            .encrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let tag = out.split_off(out.len() - TAG_LEN);
        Sealed {
            ciphertext: out,
            iv,
            tag,
            salt,
            key_id: k.id().to_string(),
        }
    }

    /// Decrypts a record, checking it belongs to `user_id`/`provider`.
    pub fn open(
        &self,
        user_id: &str,
        provider: &str,
        s: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if s.iv.len() != NONCE_LEN || s.tag.len() != TAG_LEN || s.salt.len() != SALT_LEN {
            return Err(VaultError::Malformed(format!(
                "iv {} bytes, tag {} bytes, salt {} bytes",
                s.iv.len(),
                s.tag.len(),
                s.salt.len()
            )));
        }
        let k = self
            .key(&s.key_id)
            .ok_or_else(|| VaultError::UnknownKey(s.key_id.clone()))?;
        let mut ct = Vec::with_capacity(s.ciphertext.len() + TAG_LEN);
        ct.extend_from_slice(&s.ciphertext);
        ct.extend_from_slice(&s.tag);
        let aad = aad(user_id, provider, &s.key_id);
        k.cipher(&s.salt)
            .decrypt(
                Nonce::from_slice(&s.iv),
                Payload {
                    msg: &ct,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Decrypt {
                user_id: user_id.into(),
                provider: provider.into(),
            })
    }

    /// Re-encrypts a record under the current key (rotation). Returns `None`
    /// when it already is.
    pub fn reencrypt(
        &self,
        user_id: &str,
        provider: &str,
        s: &Sealed,
    ) -> Result<Option<Sealed>, VaultError> {
        if s.key_id == self.current.id() {
            return Ok(None);
        }
        let plain = self.open(user_id, provider, s)?;
        Ok(Some(self.seal(user_id, provider, &plain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subkeys_are_stable_distinct_and_per_master_key() {
        let k = MasterKey::from_bytes([7u8; 32]);
        let a = Keyring::new(k.clone());
        let b = Keyring::new(k);
        assert_eq!(*a.derive_subkey("x"), *b.derive_subkey("x"));
        assert_ne!(*a.derive_subkey("x"), *a.derive_subkey("y"));
        assert_ne!(*a.derive_subkey("x"), [7u8; 32]);
        let other = Keyring::new(MasterKey::from_bytes([8u8; 32]));
        assert_ne!(*a.derive_subkey("x"), *other.derive_subkey("x"));
    }

    const CREDS: &[u8] =
        br#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-secret","refreshToken":"r"}}"#;

    #[test]
    fn round_trip_with_fresh_salt_and_nonce_each_time() {
        let ring = Keyring::new(MasterKey::generate());
        let a = ring.seal("alice", "claude_code", CREDS);
        let b = ring.seal("alice", "claude_code", CREDS);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.iv, b.iv);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert!(!a
            .ciphertext
            .windows(10)
            .any(|w| CREDS.windows(10).any(|c| c == w)));
        assert_eq!(&ring.open("alice", "claude_code", &a).unwrap()[..], CREDS);
    }

    #[test]
    fn a_row_copied_to_another_user_or_provider_fails() {
        let ring = Keyring::new(MasterKey::generate());
        let s = ring.seal("alice", "codex", CREDS);
        assert!(matches!(
            ring.open("mallory", "codex", &s),
            Err(VaultError::Decrypt { .. })
        ));
        assert!(matches!(
            ring.open("alice", "gemini_cli", &s),
            Err(VaultError::Decrypt { .. })
        ));
        let mut forged = s.clone();
        forged.key_id = "mk_other".into();
        assert!(matches!(
            ring.open("alice", "codex", &forged),
            Err(VaultError::UnknownKey(_))
        ));
        let mut tampered = s.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(ring.open("alice", "codex", &tampered).is_err());
    }

    #[test]
    fn rotation_reencrypts_under_the_new_key() {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let s = Keyring::new(old.clone()).seal("alice", "codex", CREDS);
        // The new key alone cannot read the old row.
        assert!(Keyring::new(new.clone())
            .open("alice", "codex", &s)
            .is_err());
        let ring = Keyring::new(new.clone()).with_old(old);
        let r = ring
            .reencrypt("alice", "codex", &s)
            .unwrap()
            .expect("re-encrypted");
        assert_eq!(r.key_id, new.id());
        assert_eq!(
            &Keyring::new(new).open("alice", "codex", &r).unwrap()[..],
            CREDS
        );
        assert!(ring.reencrypt("alice", "codex", &r).unwrap().is_none());
    }

    #[test]
    fn keys_parse_and_never_show_their_bytes() {
        let k = MasterKey::generate();
        let hex = k.to_hex();
        let parsed = MasterKey::parse(&hex).unwrap();
        assert_eq!(parsed.id(), k.id());
        let dbg = format!("{parsed:?}");
        assert!(!dbg.contains(&hex[..16]), "{dbg}");
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(MasterKey::parse(&b64).is_ok());
        let err = MasterKey::parse("short").unwrap_err().to_string();
        assert!(err.contains("expected"), "{err}");
    }

    #[test]
    fn key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        std::fs::write(&p, MasterKey::generate().to_hex().as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(MasterKey::from_file(&p)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MasterKey::from_file(&p).is_ok());
    }
}
