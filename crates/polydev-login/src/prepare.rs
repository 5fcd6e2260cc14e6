//! What a CLI needs in the user's home before its login shows a URL.
//!
//! Gemini CLI (0.61) starts its sign-in in an interactive terminal only when
//! `~/.gemini/settings.json` names an auth type
//! (`security.auth.selectedType`). `GOOGLE_GENAI_USE_GCA=true` counts only
//! without a terminal; with one, and no auth type in the settings, the CLI
//! opens its chat screen and waits. So before a Gemini login the settings
//! get `"oauth-personal"` ("Login with Google"), keeping every other setting
//! the user has. The settings file is one of Gemini's companion files, so
//! the same choice reaches the user's CLI VM with the credentials.
//!
//! Claude Code and Codex need nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{LoginError, Provider};

/// Gemini's user settings, relative to the home.
pub const GEMINI_SETTINGS: &str = ".gemini/settings.json";
/// Gemini's auth type for "Login with Google".
pub const GEMINI_OAUTH: &str = "oauth-personal";

/// Prepares `home` for `provider`'s login; `owner` is the `(uid, gid)` new
/// files and directories get. Returns the files written.
pub fn prepare_home(
    provider: Provider,
    home: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Vec<PathBuf>, LoginError> {
    match provider {
        Provider::GeminiCli => gemini_settings(home, owner).map(|p| vec![p]),
        Provider::ClaudeCode | Provider::Codex => Ok(Vec::new()),
    }
}

fn gemini_settings(home: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf, LoginError> {
    let path = home.join(GEMINI_SETTINGS);
    let err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| LoginError::File { what, path, source }
    };
    let dir = path.parent().expect("a file in a directory");
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err("create", dir))?;
        chown(dir, owner).map_err(err("chown", dir))?;
    }
    let mut settings = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).map_err(|e| LoginError::File {
            what: "parse (Gemini's settings must be JSON)",
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Object(Map::new()),
        Err(e) => return Err(err("read", &path)(e)),
    };
    if !with_gemini_oauth(&mut settings) {
        return Ok(path);
    }
    let tmp = dir.join(format!(".settings.json.polydev-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&settings).expect("JSON value"))?;
        f.sync_all()?;
        chown(&tmp, owner)?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err("write", &path)(e)
    })?;
    Ok(path)
}

/// The Gemini settings installed with the credentials in another VM: only
/// `security.auth.selectedType` = [`GEMINI_OAUTH`], the choice the sign-in
/// made, whatever else the settings in the login's VM said.
pub fn gemini_signed_in_settings() -> Vec<u8> {
    let mut v = Value::Object(Map::new());
    with_gemini_oauth(&mut v);
    serde_json::to_vec_pretty(&v).expect("JSON value")
}

/// Sets `security.auth.selectedType` to [`GEMINI_OAUTH`]; false when it
/// already was. A `settings` that is not an object becomes one.
pub fn with_gemini_oauth(settings: &mut Value) -> bool {
    let mut node = &mut *settings;
    for key in ["security", "auth"] {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node
            .as_object_mut()
            .expect("an object")
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let auth = node.as_object_mut().expect("an object");
    if auth.get("selectedType").and_then(Value::as_str) == Some(GEMINI_OAUTH) {
        return false;
    }
    auth.insert("selectedType".into(), Value::String(GEMINI_OAUTH.into()));
    true
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gemini_gets_oauth_and_keeps_the_rest() {
        let home = tempfile::tempdir().unwrap();
        let written = prepare_home(Provider::GeminiCli, home.path(), None).unwrap();
        assert_eq!(written, vec![home.path().join(GEMINI_SETTINGS)]);
        let v: Value = serde_json::from_slice(&fs::read(&written[0]).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"security": {"auth": {"selectedType": "oauth-personal"}}})
        );

        fs::write(
            &written[0],
            r#"{"ui": {"theme": "ANSI"}, "security": {"auth": {"selectedType": "gemini-api-key", "useExternal": false}}}"#,
        )
        .unwrap();
        prepare_home(Provider::GeminiCli, home.path(), None).unwrap();
        let v: Value = serde_json::from_slice(&fs::read(&written[0]).unwrap()).unwrap();
        assert_eq!(v["ui"]["theme"], "ANSI");
        assert_eq!(v["security"]["auth"]["selectedType"], "oauth-personal");
        assert_eq!(v["security"]["auth"]["useExternal"], false);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&written[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn bad_settings_are_reported_not_replaced() {
        let home = tempfile::tempdir().unwrap();
        fs::create_dir(home.path().join(".gemini")).unwrap();
        fs::write(home.path().join(GEMINI_SETTINGS), "{not json").unwrap();
        let e = prepare_home(Provider::GeminiCli, home.path(), None).unwrap_err();
        assert!(e.to_string().contains("settings must be JSON"), "{e}");
        assert_eq!(
            fs::read_to_string(home.path().join(GEMINI_SETTINGS)).unwrap(),
            "{not json"
        );
    }

    #[test]
    fn other_providers_touch_nothing() {
        let home = tempfile::tempdir().unwrap();
        assert!(prepare_home(Provider::Codex, home.path(), None)
            .unwrap()
            .is_empty());
        assert!(prepare_home(Provider::ClaudeCode, home.path(), None)
            .unwrap()
            .is_empty());
        assert_eq!(fs::read_dir(home.path()).unwrap().count(), 0);
    }

    #[test]
    fn signed_in_settings_carry_only_the_auth_type() {
        let v: Value = serde_json::from_slice(&gemini_signed_in_settings()).unwrap();
        assert_eq!(
            v,
            json!({"security": {"auth": {"selectedType": "oauth-personal"}}})
        );
    }

    #[test]
    fn odd_shapes_become_objects() {
        let mut v = json!({"security": "strict"});
        assert!(with_gemini_oauth(&mut v));
        assert_eq!(v["security"]["auth"]["selectedType"], "oauth-personal");
        assert!(!with_gemini_oauth(&mut v));
    }
}
