//! `POST /files`: writes one file atomically (temporary file in the same
//! directory, fsync, rename), creating missing parent directories (mode
//! 0700, same owner). Used to put credentials where a CLI expects them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::users;

/// Mode of a written file unless the request says otherwise.
pub const DEFAULT_MODE: u32 = 0o600;
/// Mode of parent directories the agent creates.
pub const DIR_MODE: u32 = 0o700;

/// The request body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileRequest {
    /// Absolute path of the file.
    pub path: String,
    /// The content, base64 (standard alphabet, padded).
    pub content_base64: String,
    /// Permission bits: a number (`384`) or an octal string (`"0600"`).
    #[serde(default)]
    pub mode: Option<serde_json::Value>,
    /// Owner (user name in `/etc/passwd`; the group is its primary group).
    #[serde(default)]
    pub owner: Option<String>,
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileResponse {
    /// Always true (failures are error answers).
    pub success: bool,
    /// The file written.
    pub path: String,
    /// How many bytes it holds.
    pub bytes: u64,
}

/// Why the file was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    /// The request is unusable.
    BadRequest(String),
    /// Writing failed.
    Io(String),
}

/// Parses the `mode` field.
pub fn parse_mode(v: Option<&serde_json::Value>) -> Result<u32, String> {
    let mode = match v {
        None | Some(serde_json::Value::Null) => return Ok(DEFAULT_MODE),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| format!("mode {n} is not a permission number"))?,
        Some(serde_json::Value::String(s)) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .map_err(|_| format!("mode {s:?} is not an octal number"))?,
        Some(other) => return Err(format!("mode {other} must be a number or an octal string")),
    };
    if mode > 0o7777 {
        return Err(format!("mode {mode:o} has bits beyond 07777"));
    }
    Ok(mode)
}

fn check_path(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let ok = p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && p.file_name().is_some();
    if ok {
        Ok(p.to_owned())
    } else {
        Err(format!(
            "path {path:?} must be absolute, name a file and have no '.' or '..'"
        ))
    }
}

/// Creates `dir` and its missing ancestors, each with [`DIR_MODE`] and owner.
fn create_dirs(dir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent, owner)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Writes the file described by `req` (blocking).
pub fn write(req: &FileRequest) -> Result<FileResponse, FileError> {
    let path = check_path(&req.path).map_err(FileError::BadRequest)?;
    let content = base64::engine::general_purpose::STANDARD
        .decode(req.content_base64.as_bytes())
        .map_err(|e| FileError::BadRequest(format!("contentBase64 is not valid base64: {e}")))?;
    let mode = parse_mode(req.mode.as_ref()).map_err(FileError::BadRequest)?;
    let owner = match &req.owner {
        Some(name) => {
            let u = users::lookup(name).map_err(FileError::BadRequest)?;
            Some((u.uid, u.gid))
        }
        None => None,
    };
    let io = |what: &str, p: &Path| {
        let what = what.to_owned();
        let p = p.display().to_string();
        move |e: std::io::Error| FileError::Io(format!("{what} {p}: {e}"))
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    create_dirs(dir, owner).map_err(io("create directory", dir))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.polydev-tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(&content).map_err(io("write", &tmp))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io("chown", &tmp))?;
        }
        // After chown: chown clears set-id bits.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(FileResponse {
        success: true,
        path: path.display().to_string(),
        bytes: content.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_modes() {
        assert_eq!(parse_mode(None), Ok(0o600));
        assert_eq!(parse_mode(Some(&json!(384))), Ok(0o600));
        assert_eq!(parse_mode(Some(&json!("0644"))), Ok(0o644));
        assert!(parse_mode(Some(&json!("9"))).is_err());
        assert!(parse_mode(Some(&json!(0o17777))).is_err());
        assert!(parse_mode(Some(&json!(true))).is_err());
    }

    #[test]
    fn checks_paths() {
        assert!(check_path("/home/polydev/.claude/.credentials.json").is_ok());
        assert!(check_path("relative").is_err());
        assert!(check_path("/a/../etc/passwd").is_err());
        assert!(check_path("/").is_err());
    }
}
