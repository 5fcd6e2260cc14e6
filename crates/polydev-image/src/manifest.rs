//! The `manifest.json` written beside every image: what is inside and how
//! it was built.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
}

/// One provider CLI in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cli {
    /// Its command (`claude`, `codex`, `gemini`).
    pub command: String,
    /// The npm package.
    pub package: String,
    /// The pinned version installed.
    pub version: String,
    /// What `<command> --version` printed in the image (its last line).
    pub version_output: String,
}

/// Describes a built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Image flavour name ("minimal" ...).
    pub flavour: String,
    /// Debian suite the image was bootstrapped from.
    pub suite: String,
    /// The input hash (also the image directory's suffix).
    pub input_hash: String,
    /// SHA-256 of `rootfs.ext4`.
    pub image_sha256: String,
    /// SHA-256 of the agent binary installed in the image.
    pub agent_sha256: String,
    /// SHA-256 of the guest init script.
    pub init_sha256: String,
    /// Every installed package with its version.
    pub packages: Vec<Package>,
    /// The provider CLIs from the npm registry.
    #[serde(default)]
    pub clis: Vec<Cli>,
    /// SHA-256 of the guest kernel cached when the image was built, if any.
    #[serde(default)]
    pub kernel_sha256: Option<String>,
    /// Size of `rootfs.ext4` in bytes.
    #[serde(default)]
    pub image_bytes: u64,
    /// How long the build took, in seconds.
    #[serde(default)]
    pub build_seconds: u64,
    /// Build time, RFC 3339 UTC.
    pub built_at: String,
    /// Build time, seconds since the Unix epoch.
    pub built_at_unix: u64,
    /// Version of the image builder.
    pub builder_version: String,
}

impl Manifest {
    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(Error::io("read", path))?;
        serde_json::from_slice(&text).map_err(|e| Error::Manifest {
            path: path.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Writes the manifest atomically (temporary file + rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::Manifest {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(Error::io("write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(Error::io("rename", &tmp))
    }
}

/// Parses `dpkg-query -W -f '${Package}\t${Version}\n'` output.
pub fn parse_packages(text: &str) -> Vec<Package> {
    let mut packages: Vec<Package> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .map(|(n, v)| Package {
            name: n.to_owned(),
            version: v.to_owned(),
        })
        .collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    packages
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2025-05-20T12:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_747_742_400), "2025-05-20T12:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn parses_packages() {
        let p = parse_packages("systemd\t257.5-2\nbash\t5.2-1\n\nbroken\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "bash");
    }
}
