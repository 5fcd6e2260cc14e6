//! "Open this URL": the path from a CLI's `$BROWSER` / `xdg-open` to the
//! controller and to Chromium on the VM's display.
//!
//! The image's hook script runs `polydev-agent open-url URL`, which hands the
//! URL to the running agent over a local Unix socket ([`SOCKET_PATH`]; the
//! CLIs run as an unprivileged user that cannot read the agent's token).
//! `POST /open-url` does the same over HTTP. The agent remembers the last URL
//! (`GET /oauth-url`) and, where the image has a display, opens it in
//! Chromium as the guest user.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::{uptime, users};

/// The hook's Unix socket inside the guest.
pub const SOCKET_PATH: &str = "/run/polydev-agent/open-url.sock";
/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 16 * 1024;

/// Where and as whom URLs are opened.
#[derive(Debug, Clone)]
pub struct Browser {
    /// The Chromium wrapper script.
    pub wrapper: PathBuf,
    /// The X display's socket; no socket, no display.
    pub x_socket: PathBuf,
    /// The `DISPLAY` value.
    pub display: String,
    /// The user Chromium runs as.
    pub user: String,
}

impl Default for Browser {
    fn default() -> Self {
        Self {
            wrapper: "/usr/local/bin/polydev-browser".into(),
            x_socket: "/tmp/.X11-unix/X1".into(),
            display: ":1".into(),
            user: "polydev".into(),
        }
    }
}

/// The last URL handed to the agent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OpenedUrl {
    /// The URL.
    pub url: String,
    /// `"hook"` (from `$BROWSER`/`xdg-open`), `"api"` (`POST /open-url`) or
    /// `"output"` (a URL the CLI only printed, opened by the login driver).
    pub source: &'static str,
    /// Guest uptime when it arrived.
    pub uptime_ms: u64,
    /// Whether it was opened in Chromium.
    pub opened: bool,
    /// Why it was not opened, when there is a display but opening failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_error: Option<String>,
}

/// The agent's URL state.
#[derive(Debug, Default)]
pub struct UrlState {
    browser: Browser,
    last: Mutex<Option<OpenedUrl>>,
}

/// Checks that `url` is an http(s) URL without spaces or control characters.
pub fn validate(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("url is longer than {MAX_URL_LEN} bytes"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("url must start with http:// or https://".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("url must not contain spaces or control characters".into());
    }
    Ok(())
}

impl UrlState {
    /// State opening URLs with `browser`.
    pub fn new(browser: Browser) -> Self {
        Self {
            browser,
            last: Mutex::new(None),
        }
    }

    /// The last URL, if any.
    pub fn last(&self) -> Option<OpenedUrl> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records `url` and opens it where there is a display.
    pub fn open(&self, url: &str, source: &'static str) -> Result<OpenedUrl, String> {
        validate(url)?;
        let (opened, open_error) = match self.launch(url) {
            Ok(opened) => (opened, None),
            Err(e) => (false, Some(e)),
        };
        let entry = OpenedUrl {
            url: url.to_owned(),
            source,
            uptime_ms: uptime::uptime_ms(),
            opened,
            open_error,
        };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry.clone());
        Ok(entry)
    }

    /// Starts Chromium on the display; `Ok(false)` when there is none.
    fn launch(&self, url: &str) -> Result<bool, String> {
        let b = &self.browser;
        if !b.wrapper.is_file() || !b.x_socket.exists() {
            return Ok(false);
        }
        let user = users::lookup(&b.user)?;
        let mut cmd = std::process::Command::new(&b.wrapper);
        use std::os::unix::process::CommandExt;
        cmd.arg(url)
            .env_clear()
            .env("PATH", crate::exec::PATH)
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("DISPLAY", &b.display)
            .env("LANG", "C.UTF-8")
            .current_dir(&user.home)
            .uid(user.uid)
            .gid(user.gid)
            .process_group(0)
            .stdin(std::process::Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", b.wrapper.display()))?;
        // Reap it whenever it exits (a second Chromium hands the URL to the
        // first one and exits at once).
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(true)
    }
}

/// Serves the hook socket at `path`: one URL per connection, one line
/// answered (`ok` or `error: ...`).
pub async fn serve_socket(path: &Path, state: std::sync::Arc<UrlState>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    // Any local user may hand over a URL: the CLIs run unprivileged.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(r).take(MAX_URL_LEN as u64 + 2);
            let answer = match reader.read_line(&mut line).await {
                Ok(_) => {
                    let state = state.clone();
                    let url = line.trim_end_matches(['\r', '\n']).to_owned();
                    match tokio::task::spawn_blocking(move || state.open(&url, "hook")).await {
                        Ok(Ok(_)) => "ok\n".to_owned(),
                        Ok(Err(e)) => format!("error: {e}\n"),
                        Err(e) => format!("error: {e}\n"),
                    }
                }
                Err(e) => format!("error: cannot read the url: {e}\n"),
            };
            let _ = w.write_all(answer.as_bytes()).await;
        });
    }
}

/// The `polydev-agent open-url URL` client: hands `url` to the agent.
pub fn client(socket: &Path, url: &str) -> Result<(), String> {
    validate(url)?;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the polydev agent at {} (is it running?): {e}",
            socket.display()
        )
    })?;
    stream
        .write_all(format!("{url}\n").as_bytes())
        .map_err(|e| format!("cannot send the url to the agent: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the agent: {e}"))?;
    match answer.trim_end() {
        "ok" => Ok(()),
        "" => Err("the agent closed the connection without an answer".into()),
        other => Err(other.strip_prefix("error: ").unwrap_or(other).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_urls() {
        assert!(validate("https://claude.com/cai/oauth/authorize?code=true").is_ok());
        assert!(validate("http://127.0.0.1:1455/auth/callback").is_ok());
        assert!(validate("file:///etc/passwd").is_err());
        assert!(validate("https://a b").is_err());
        assert!(validate("javascript:alert(1)").is_err());
    }

    #[test]
    fn records_without_a_display() {
        let dir = tempfile::tempdir().unwrap();
        let state = UrlState::new(Browser {
            wrapper: dir.path().join("none"),
            x_socket: dir.path().join("X1"),
            ..Browser::default()
        });
        assert!(state.last().is_none());
        let u = state.open("https://example.test/x", "api").unwrap();
        assert!(!u.opened);
        assert_eq!(state.last().unwrap().url, "https://example.test/x");
    }
}
