//! The `$BROWSER` capture hook.
//!
//! Each session writes a private directory holding:
//! - `browser`: a shell script. The CLI runs it as `$BROWSER URL`; it appends
//!   the URL as one line to `urls` (the path is baked into the script, so it
//!   works even when a CLI trims the environment of what it spawns), then, if
//!   an opener was configured (in the VM: `polydev-agent open-url`, which
//!   shows the page in Chromium and tells the agent), `exec`s it with the URL.
//! - `xdg-open`: the same script, because Gemini CLI opens URLs with
//!   `xdg-open`; the session puts the directory first on `PATH`.
//! - `urls`: the captured URLs, one a line, read by the session's watcher.
//!
//! The hook never fails the CLI: a missing opener or an opener that fails
//! only loses the on-screen browser, not the captured URL.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::LoginError;

/// Names inside the hook directory.
pub const SCRIPT: &str = "browser";
/// The `xdg-open` stand-in that routes to the same script.
pub const XDG_OPEN: &str = "xdg-open";
/// The file the hook appends URLs to.
pub const URL_FILE: &str = "urls";

/// A written hook directory.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The directory.
    pub dir: PathBuf,
}

impl Hook {
    /// Writes the hook into `dir` (created, mode 0700). `opener` is the
    /// command (split on spaces) run after recording, e.g.
    /// `["polydev-agent", "open-url"]`; empty for none. `owner` (uid, gid)
    /// hands the directory to the CLI's user so the hook can write.
    pub fn write(
        dir: &Path,
        opener: &[String],
        owner: Option<(u32, u32)>,
    ) -> Result<Hook, LoginError> {
        let file_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| LoginError::File { what, path, source }
        };
        fs::create_dir_all(dir).map_err(file_err("create hook directory", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(file_err("chmod hook directory", dir))?;
        let urls = dir.join(URL_FILE);
        fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&urls)
            .map_err(file_err("create URL file", &urls))?;
        let script = script_text(&urls, opener);
        for name in [SCRIPT, XDG_OPEN] {
            let path = dir.join(name);
            let mut f = fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o755)
                .open(&path)
                .map_err(file_err("create hook script", &path))?;
            f.write_all(script.as_bytes())
                .map_err(file_err("write hook script", &path))?;
        }
        if let Some((uid, gid)) = owner {
            for p in [
                dir.to_path_buf(),
                urls,
                dir.join(SCRIPT),
                dir.join(XDG_OPEN),
            ] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                    .map_err(file_err("chown hook file", &p))?;
            }
        }
        Ok(Hook {
            dir: dir.to_path_buf(),
        })
    }

    /// The value for `$BROWSER`.
    pub fn browser(&self) -> PathBuf {
        self.dir.join(SCRIPT)
    }

    /// The URLs captured so far, in order.
    pub fn urls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join(URL_FILE))
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn script_text(urls: &Path, opener: &[String]) -> String {
    let opener = if opener.is_empty() {
        "exit 0".to_string()
    } else {
        let words: Vec<String> = opener.iter().map(|w| quote(w)).collect();
        format!("exec {} \"$1\" >/dev/null 2>&1 </dev/null", words.join(" "))
    };
    format!(
        "#!/bin/sh\n\
         # polydev-login $BROWSER hook: record the URL for the login driver, then open it.\n\
         [ -n \"$1\" ] || exit 0\n\
         printf '%s\\n' \"$1\" >> {urls}\n\
         {opener}\n",
        urls = quote(&urls.to_string_lossy()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_urls_and_runs_the_opener() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let opener = vec![
            "sh".to_string(),
            "-c".into(),
            format!("echo \"$0\" > {}", quote(&seen.to_string_lossy())),
        ];
        let hook = Hook::write(&dir.path().join("hook it's"), &opener, None).unwrap();
        for url in ["https://a.test/x?y=1&z='2'", "https://b.test/"] {
            let st = std::process::Command::new(hook.browser())
                .arg(url)
                .status()
                .unwrap();
            assert!(st.success());
        }
        assert_eq!(
            hook.urls(),
            vec!["https://a.test/x?y=1&z='2'", "https://b.test/"]
        );
        assert_eq!(fs::read_to_string(seen).unwrap().trim(), "https://b.test/");
    }
}
