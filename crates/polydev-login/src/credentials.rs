//! Is a credential file complete and well-formed for its provider?
//!
//! The formats (SPEC §3):
//! - claude_code `~/.claude/.credentials.json`:
//!   `{"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt" (ms), "scopes"?: [..], ...}}`
//! - codex `~/.codex/auth.json`:
//!   `{"auth_mode", "tokens": {"id_token" (a JWT), "access_token", "refresh_token", "account_id"}, "last_refresh"}`
//! - gemini_cli `~/.gemini/oauth_creds.json`:
//!   `{"access_token", "refresh_token", "token_type", "expiry_date" (ms), "scope"?, "id_token"?}`
//!
//! A file caught half-written is not JSON yet and fails here; the session
//! keeps waiting until it passes.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::provider::{companion_files, credential_file, Provider};

/// Why a credential file is not (yet) usable.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file is not there.
    #[error("{provider} credential file {path} does not exist")]
    Missing {
        /// The provider.
        provider: Provider,
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("read {provider} credential file {path}: {source}")]
    Read {
        /// The provider.
        provider: Provider,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is not what the provider writes.
    #[error("{provider} credential file {file} is incomplete or malformed: {reason}")]
    Invalid {
        /// The provider.
        provider: Provider,
        /// The file, relative to home.
        file: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// One file of a provider's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFile {
    /// Path relative to the CLI user's home (install at the same place, 0600).
    pub path: &'static str,
    /// The bytes as the CLI wrote them.
    pub content: Vec<u8>,
}

/// A provider's credentials as read from a home directory: the credential
/// file first, then companion files that exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The provider.
    pub provider: Provider,
    /// The files, the credential file first.
    pub files: Vec<CredentialFile>,
}

impl Credentials {
    /// The credential file's JSON.
    pub fn primary_json(&self) -> Value {
        serde_json::from_slice(&self.files[0].content).unwrap_or(Value::Null)
    }
}

/// Checks that `content` is a complete credential file for `provider`.
pub fn validate(provider: Provider, content: &[u8]) -> Result<(), CredentialError> {
    let invalid = |reason: String| CredentialError::Invalid {
        provider,
        file: credential_file(provider),
        reason,
    };
    let v: Value =
        serde_json::from_slice(content).map_err(|e| invalid(format!("not JSON ({e})")))?;
    let check = |obj: &Value, at: &str, fields: &[(&str, Kind)]| -> Result<(), CredentialError> {
        for (name, kind) in fields {
            let f = obj.get(name);
            let ok = match kind {
                Kind::Text => f
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.trim().is_empty()),
                Kind::Millis => f.and_then(Value::as_u64).is_some_and(|n| n > 0),
                Kind::Jwt => f.and_then(Value::as_str).is_some_and(|s| {
                    s.split('.').count() == 3 && s.split('.').take(2).all(|p| !p.is_empty())
                }),
                Kind::OptStrings => match f {
                    None => true,
                    Some(Value::Array(a)) => a.iter().all(Value::is_string),
                    Some(Value::String(_)) => true,
                    Some(_) => false,
                },
            };
            if !ok {
                return Err(invalid(format!(
                    "{at}{name} is missing or not {}",
                    kind.describe()
                )));
            }
        }
        Ok(())
    };
    if !v.is_object() {
        return Err(invalid("not a JSON object".into()));
    }
    match provider {
        Provider::ClaudeCode => {
            let o = v
                .get("claudeAiOauth")
                .filter(|o| o.is_object())
                .ok_or_else(|| invalid("claudeAiOauth is missing or not an object".into()))?;
            check(
                o,
                "claudeAiOauth.",
                &[
                    ("accessToken", Kind::Text),
                    ("refreshToken", Kind::Text),
                    ("expiresAt", Kind::Millis),
                    ("scopes", Kind::OptStrings),
                ],
            )
        }
        Provider::Codex => {
            check(
                &v,
                "",
                &[("auth_mode", Kind::Text), ("last_refresh", Kind::Text)],
            )?;
            let t = v
                .get("tokens")
                .filter(|o| o.is_object())
                .ok_or_else(|| invalid("tokens is missing or not an object".into()))?;
            check(
                t,
                "tokens.",
                &[
                    ("id_token", Kind::Jwt),
                    ("access_token", Kind::Text),
                    ("refresh_token", Kind::Text),
                    ("account_id", Kind::Text),
                ],
            )
        }
        Provider::GeminiCli => check(
            &v,
            "",
            &[
                ("access_token", Kind::Text),
                ("refresh_token", Kind::Text),
                ("token_type", Kind::Text),
                ("expiry_date", Kind::Millis),
                ("scope", Kind::OptStrings),
            ],
        ),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Millis,
    Jwt,
    OptStrings,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Text => "a non-empty string",
            Kind::Millis => "a positive integer (milliseconds since the epoch)",
            Kind::Jwt => "a JWT (header.payload.signature)",
            Kind::OptStrings => "a string or a list of strings",
        }
    }
}

/// When the file's access token expires (Unix ms), when it says: Claude's
/// `expiresAt`, Gemini's `expiry_date`, the `exp` claim of Codex's access
/// token (a JWT).
pub fn expires_at(provider: Provider, content: &[u8]) -> Option<i64> {
    let v: Value = serde_json::from_slice(content).ok()?;
    match provider {
        Provider::ClaudeCode => v["claudeAiOauth"]["expiresAt"].as_i64(),
        Provider::GeminiCli => v["expiry_date"].as_i64(),
        Provider::Codex => {
            use base64::Engine;
            let token = v["tokens"]["access_token"].as_str()?;
            let payload = token.split('.').nth(1)?;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()?;
            let claims: Value = serde_json::from_slice(&bytes).ok()?;
            claims["exp"].as_i64().map(|s| s.saturating_mul(1000))
        }
    }
}

/// The credential file's path under `home`.
pub fn path_in(provider: Provider, home: &Path) -> PathBuf {
    home.join(credential_file(provider))
}

/// Reads and validates the provider's credentials under `home`; companion
/// files are included when present and JSON.
pub fn read(provider: Provider, home: &Path) -> Result<Credentials, CredentialError> {
    let path = path_in(provider, home);
    let content = match std::fs::read(&path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CredentialError::Missing { provider, path })
        }
        Err(source) => {
            return Err(CredentialError::Read {
                provider,
                path,
                source,
            })
        }
    };
    validate(provider, &content)?;
    let mut files = vec![CredentialFile {
        path: credential_file(provider),
        content,
    }];
    for f in companion_files(provider) {
        if let Ok(content) = std::fs::read(home.join(f.path)) {
            if serde_json::from_slice::<Value>(&content).is_ok() {
                files.push(CredentialFile {
                    path: f.path,
                    content,
                });
            }
        }
    }
    Ok(Credentials { provider, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_needs_tokens_and_expiry() {
        let ok = br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1,"scopes":["user:inference"]}}"#;
        validate(Provider::ClaudeCode, ok).unwrap();
        let no_refresh = br#"{"claudeAiOauth":{"accessToken":"a","expiresAt":1}}"#;
        let e = validate(Provider::ClaudeCode, no_refresh)
            .unwrap_err()
            .to_string();
        assert!(e.contains("claudeAiOauth.refreshToken"), "{e}");
        assert!(validate(Provider::ClaudeCode, br#"{"claudeAiOauth":{"acc"#).is_err());
    }

    #[test]
    fn codex_needs_jwt_and_account() {
        let ok = br#"{"auth_mode":"chatgpt","OPENAI_API_KEY":null,"tokens":{"id_token":"h.p.s","access_token":"a","refresh_token":"r","account_id":"acc"},"last_refresh":"2026-11-23T00:00:00Z"}"#;
        validate(Provider::Codex, ok).unwrap();
        let bad = String::from_utf8_lossy(ok).replace("h.p.s", "opaque");
        let e = validate(Provider::Codex, bad.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokens.id_token"), "{e}");
    }

    #[test]
    fn expiry_as_each_file_says() {
        use base64::Engine;
        let claude = br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1700000000000}}"#;
        assert_eq!(
            expires_at(Provider::ClaudeCode, claude),
            Some(1_700_000_000_000)
        );
        let gemini = br#"{"access_token":"a","expiry_date":5}"#;
        assert_eq!(expires_at(Provider::GeminiCli, gemini), Some(5));
        let claims =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1700000000}"#);
        let codex = format!(r#"{{"tokens":{{"access_token":"h.{claims}.s"}}}}"#);
        assert_eq!(
            expires_at(Provider::Codex, codex.as_bytes()),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            expires_at(Provider::Codex, br#"{"tokens":{"access_token":"opaque"}}"#),
            None
        );
        assert_eq!(expires_at(Provider::ClaudeCode, b"not json"), None);
    }

    #[test]
    fn gemini_needs_expiry_date() {
        let ok = br#"{"access_token":"a","refresh_token":"r","token_type":"Bearer","expiry_date":5,"scope":"x y"}"#;
        validate(Provider::GeminiCli, ok).unwrap();
        let bad = br#"{"access_token":"a","refresh_token":"r","token_type":"Bearer","expiry_date":"soon"}"#;
        assert!(validate(Provider::GeminiCli, bad).is_err());
    }
}
