//! Account passwords: argon2id hashes in the PHC string format (the
//! `argon2` crate's defaults: 19 MiB, 2 passes, 1 lane — OWASP's minimum for
//! argon2id). Hashing and checking run on a blocking thread.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::sync::OnceLock;

/// Shortest password accepted.
pub const MIN_LEN: usize = 12;
/// Longest password accepted (bytes): argon2 takes any length, but a
/// request should not make it hash megabytes.
pub const MAX_LEN: usize = 1024;

/// Why a new password is refused, in words.
pub fn check_new(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_LEN {
        return Err(format!(
            "a password must have at least {MIN_LEN} characters"
        ));
    }
    if password.len() > MAX_LEN {
        return Err(format!("a password must have at most {MAX_LEN} bytes"));
    }
    if password.trim().is_empty() {
        return Err("a password cannot be only spaces".into());
    }
    Ok(())
}

/// A random password (20 URL-safe characters, 120 bits).
pub fn generate() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 15];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The argon2id PHC string of `password` (a fresh random salt).
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

/// Whether `password` matches `stored` (a PHC string). With no stored hash
/// (an unknown account, or one without a password) a hash of the same cost
/// is checked anyway, so that the answer takes as long as for a known
/// account with a wrong password.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    let decoy = DECOY.get_or_init(|| hash("polydev decoy password").expect("hashing the decoy"));
    let (phc, real) = match stored {
        Some(s) => (s, true),
        None => (decoy.as_str(), false),
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && real
}

static DECOY: OnceLock<String> = OnceLock::new();

/// [`hash`] on a blocking thread.
pub async fn hash_async(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|e| format!("hashing the password: {e}"))?
}

/// [`verify`] on a blocking thread.
pub async fn verify_async(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || verify(&password, stored.as_deref()))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = super::hash("correct horse battery").unwrap();
        let b = super::hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(super::verify("correct horse battery", Some(&a)));
        assert!(!super::verify("correct horse batterz", Some(&a)));
        assert!(
            !super::verify("polydev decoy password", None),
            "the decoy never signs in"
        );
        assert!(!super::verify("x", Some("not a phc string")));
    }

    #[test]
    fn new_passwords_are_checked() {
        assert!(super::check_new("short").is_err());
        assert!(super::check_new("            ").is_err());
        assert!(super::check_new(&"x".repeat(2000)).is_err());
        assert!(super::check_new("a long enough one").is_ok());
    }
}
