//! Loading the per-VM agent configuration.
//!
//! The host writes [`AgentConfig`] as JSON onto the per-VM state disk; the
//! guest init mounts that disk at [`STATE_MOUNT`] before systemd starts.

use std::path::{Path, PathBuf};

use polydev_core::guest::{AgentConfig, AGENT_CONFIG_REL, STATE_MOUNT};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read agent config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid [`AgentConfig`].
    #[error("agent config {path} is not valid JSON for AgentConfig: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The file parsed but holds unusable values.
    #[error("agent config {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The default location of the configuration inside the guest.
pub fn default_path() -> PathBuf {
    PathBuf::from(format!("{STATE_MOUNT}/{AGENT_CONFIG_REL}"))
}

/// Reads and validates the configuration at `path`.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config: AgentConfig =
        serde_json::from_slice(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let invalid = |reason| ConfigError::Invalid {
        path: path.to_owned(),
        reason,
    };
    if config.token.is_empty() {
        return Err(invalid("token is empty"));
    }
    if config.vm_id.is_empty() {
        return Err(invalid("vm_id is empty"));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        std::fs::write(&path, r#"{"vm_id":"vm-1","token":"","port":7070}"#).unwrap();
        assert!(matches!(load(&path), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn reports_missing_file() {
        let err = load(Path::new("/nonexistent/agent.json")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/agent.json"));
    }
}
