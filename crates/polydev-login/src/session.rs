//! [`LoginSession`]: one provider login, from starting the CLI to
//! `authenticated` or `failed`.
//!
//! Threads, each with one job:
//! - the *reader* copies the terminal's output into a bounded transcript and
//!   looks for the authorization URL in it;
//! - the *monitor* wakes every 100 ms: it reads the hook's URL file, checks
//!   the credential file, reaps the CLI, and publishes the status on a
//!   `watch` channel. Polling rather than inotify: the file lives in a
//!   directory the CLI may create late (`~/.codex` does not exist before the
//!   first login), one stat every 100 ms costs nothing, a half-written file
//!   is simply seen again 100 ms later, and there is no extra dependency in
//!   the agent.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::sync::watch;

use crate::callback::{self, CallbackResponse};
use crate::credentials::{self, Credentials};
use crate::hook::Hook;
use crate::prepare;
use crate::provider::{self, LoginOptions, Provider};
use crate::pty;
use crate::url::{find_urls, is_authorize_url, local_redirect};
use crate::LoginError;

/// How often the monitor looks.
pub const POLL: Duration = Duration::from_millis(100);
/// Most transcript bytes kept.
const TRANSCRIPT_MAX: usize = 512 * 1024;
/// The window of recent output searched for a URL.
const SCAN_WINDOW: usize = 32 * 1024;
/// How long [`LoginSession::wait_for_url`] waits for the `$BROWSER` URL
/// after the terminal's.
pub const HOOK_GRACE: Duration = Duration::from_secs(1);
/// How long the monitor waits, once the CLI has exited, for the terminal to
/// close (its last output read); a process outside the group holding the
/// terminal open must not hold up the verdict.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Lines of output reported with a failure.
pub const FAILURE_LINES: usize = 20;
/// Longest reported output line.
const LINE_MAX: usize = 400;

/// Whom the CLI runs as.
#[derive(Debug, Clone)]
pub struct RunAs {
    /// The user's name (`USER`, `LOGNAME`).
    pub name: String,
    /// The user's home (`HOME`, working directory, credential files).
    pub home: PathBuf,
    /// `(uid, gid)` to switch to; `None` runs as the caller.
    pub ids: Option<(u32, u32)>,
}

impl RunAs {
    /// The calling user, with `home` as `HOME`.
    pub fn current(home: impl Into<PathBuf>) -> Self {
        Self {
            name: std::env::var("USER").unwrap_or_else(|_| "polydev".into()),
            home: home.into(),
            ids: None,
        }
    }
}

/// Where a login stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LoginStatus {
    /// The CLI runs; the user has not finished. `oauth_url` once captured.
    Waiting {
        /// The authorization URL, when captured.
        #[serde(rename = "oauthUrl")]
        oauth_url: Option<String>,
    },
    /// A complete, valid credential file appeared.
    Authenticated,
    /// The CLI ended without valid credentials.
    Failed {
        /// Its exit code, if it exited.
        #[serde(rename = "exitCode")]
        exit_code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        /// One line for `error_message`.
        message: String,
        /// Its last output lines, escape sequences removed.
        output: Vec<String>,
    },
    /// [`LoginSession::cancel`] stopped it.
    Cancelled,
}

impl LoginStatus {
    /// `authenticated`, `failed` or `cancelled`: nothing more will change.
    pub fn is_final(&self) -> bool {
        !matches!(self, LoginStatus::Waiting { .. })
    }

    /// For the agent's `GET /credentials/status`: `authenticated`.
    pub fn authenticated(&self) -> bool {
        matches!(self, LoginStatus::Authenticated)
    }

    /// For the agent's `GET /credentials/status`: `waiting`.
    pub fn waiting(&self) -> bool {
        matches!(self, LoginStatus::Waiting { .. })
    }
}

/// The URLs seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CapturedUrls {
    /// What the CLI handed to `$BROWSER`/`xdg-open`, in order.
    pub hook: Vec<String>,
    /// The latest authorization-shaped URL in the terminal output (a CLI
    /// that retries, such as Gemini after a code that failed, prints a new
    /// one).
    pub output: Option<String>,
}

impl CapturedUrls {
    /// The URL to show the user: an authorization-shaped hook URL (it
    /// redirects to the CLI's listener inside the VM), else the one from the
    /// output (claude's paste-code link, gemini's paste mode), else whatever
    /// went to the hook.
    pub fn preferred(&self, provider: Provider) -> Option<&str> {
        self.hook
            .iter()
            .find(|u| is_authorize_url(provider, u))
            .or(self.output.as_ref())
            .or(self.hook.first())
            .map(String::as_str)
    }

    /// The CLI's localhost listener `(port, path)` from the captured URLs.
    pub fn listener(&self, provider: Provider) -> Option<(u16, String)> {
        if let Some((port, path)) = provider::fixed_callback(provider) {
            return Some((port, path.to_string()));
        }
        self.hook
            .iter()
            .chain(self.output.iter())
            .filter(|u| is_authorize_url(provider, u))
            .find_map(|u| local_redirect(u))
    }
}

static CODEX_RUNNING: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Holds the VM's one codex slot until dropped.
struct CodexSlot;

impl CodexSlot {
    fn take() -> Result<CodexSlot, LoginError> {
        if CODEX_RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(LoginError::CodexBusy);
        }
        // Someone outside this process may hold the port too.
        if std::net::TcpListener::bind(("127.0.0.1", provider::CODEX_CALLBACK_PORT)).is_err() {
            CODEX_RUNNING.store(false, Ordering::Release);
            return Err(LoginError::CodexBusy);
        }
        Ok(CodexSlot)
    }
}

impl Drop for CodexSlot {
    fn drop(&mut self) {
        CODEX_RUNNING.store(false, Ordering::Release);
    }
}

#[derive(Default)]
struct Shared {
    transcript: Vec<u8>,
    urls: CapturedUrls,
    exit: Option<std::process::ExitStatus>,
    cancelled: bool,
    /// The reader saw the terminal close: the transcript is complete.
    output_closed: bool,
}

/// One running provider login.
pub struct LoginSession {
    provider: Provider,
    home: PathBuf,
    pid: i32,
    hook: Hook,
    shared: Arc<Mutex<Shared>>,
    master: Mutex<File>,
    status: watch::Receiver<LoginStatus>,
    expects_hook: bool,
}

impl std::fmt::Debug for LoginSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginSession")
            .field("provider", &self.provider)
            .field("pid", &self.pid)
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl LoginSession {
    /// Starts `provider`'s login as `user`. Returns at once; the URL comes
    /// later (see [`LoginSession::wait_for_url`]). A second codex login while
    /// one runs is refused with [`LoginError::CodexBusy`].
    pub fn start(
        provider: Provider,
        user: &RunAs,
        options: &LoginOptions,
    ) -> Result<Self, LoginError> {
        let slot = match provider {
            Provider::Codex => Some(CodexSlot::take()?),
            _ => None,
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let hook_dir = options.runtime_dir.join(format!(
            "polydev-login-{}-{}-{}",
            provider,
            std::process::id(),
            id
        ));
        let hook = Hook::write(&hook_dir, &options.opener, user.ids)?;
        prepare::prepare_home(provider, &user.home, user.ids).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&hook.dir);
        })?;
        let cred_path = credentials::path_in(provider, &user.home);
        let before = std::fs::read(&cred_path).ok();

        let mut env = vec![
            ("HOME".to_string(), user.home.display().to_string()),
            ("USER".into(), user.name.clone()),
            ("LOGNAME".into(), user.name.clone()),
            ("SHELL".into(), "/bin/sh".into()),
            ("TERM".into(), "xterm-256color".into()),
            ("LANG".into(), "C.UTF-8".into()),
            (
                "PATH".into(),
                format!("{}:{}", hook.dir.display(), options.path),
            ),
            ("BROWSER".into(), hook.browser().display().to_string()),
        ];
        env.extend(provider::login_env(provider, options));
        env.extend(options.extra_env.iter().cloned());
        let spec = pty::Spec {
            program: options
                .program
                .clone()
                .unwrap_or_else(|| provider::program_name(provider).into()),
            args: provider::login_args(provider)
                .iter()
                .map(|s| s.to_string())
                .collect(),
            env,
            cwd: user.home.clone(),
            run_as: user.ids,
            cols: 1000,
            rows: 50,
        };
        let started = pty::spawn(&spec).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&hook.dir);
        })?;
        let pid = started.child.id() as i32;
        let reader = started
            .master
            .try_clone()
            .map_err(|source| LoginError::Pty {
                what: "duplicate the master for reading",
                source,
            });
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let mut child = started.child;
                let _ = child.wait();
                return Err(e);
            }
        };

        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = watch::channel(LoginStatus::Waiting { oauth_url: None });
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("login-read-{provider}"))
                .spawn(move || read_output(provider, reader, &shared))
                .map_err(|source| LoginError::Spawn {
                    program: "output reader thread".into(),
                    source,
                })?;
        }
        {
            let watch = Monitor {
                provider,
                cred_path,
                before,
                hook: hook.clone(),
                shared: shared.clone(),
                tx,
                slot,
            };
            let child = started.child;
            std::thread::Builder::new()
                .name(format!("login-watch-{provider}"))
                .spawn(move || watch.run(child))
                .map_err(|source| LoginError::Spawn {
                    program: "monitor thread".into(),
                    source,
                })?;
        }
        Ok(LoginSession {
            provider,
            home: user.home.clone(),
            pid,
            hook,
            shared,
            master: Mutex::new(started.master),
            status: rx,
            expects_hook: !matches!(
                (provider, options.gemini_mode),
                (Provider::GeminiCli, provider::GeminiMode::Paste)
            ),
        })
    }

    /// Whether the CLI hands its URL to `$BROWSER`/`xdg-open` (all but
    /// Gemini's paste mode, which only prints it).
    pub fn expects_hook(&self) -> bool {
        self.expects_hook
    }

    /// The provider.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The CLI's pid, which is also its process group id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The current status.
    pub fn status(&self) -> LoginStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<LoginStatus> {
        self.status.clone()
    }

    /// The authorization URL to show, once captured.
    pub fn oauth_url(&self) -> Option<String> {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.urls.preferred(self.provider).map(String::from)
    }

    /// Everything captured so far.
    pub fn urls(&self) -> CapturedUrls {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .urls
            .clone()
    }

    /// The last output lines, escape sequences removed.
    pub fn output_tail(&self, lines: usize) -> Vec<String> {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        last_lines(&s.transcript, lines)
    }

    /// Waits until the URL is captured, or the login ends, or `timeout`.
    /// When the URL first seen came from the terminal and the CLI also calls
    /// `$BROWSER` (all but Gemini's paste mode), waits up to [`HOOK_GRACE`]
    /// more for the hook's URL, which is the one to open in the VM.
    pub async fn wait_for_url(&self, timeout: Duration) -> Result<String, LoginStatus> {
        let mut rx = self.status.clone();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| !matches!(s, LoginStatus::Waiting { oauth_url: None })),
        )
        .await
        // Keep only whether it timed out: the borrowed status must not be
        // held across the awaits below (the future stays `Send`).
        .map(|_| ());
        if self.expects_hook {
            let deadline = tokio::time::Instant::now() + HOOK_GRACE;
            while self.urls().hook.is_empty()
                && !self.status().is_final()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        match self.oauth_url() {
            Some(url) => Ok(url),
            None => match waited {
                Ok(_) => Err(self.status()),
                Err(_) => Err(LoginStatus::Waiting { oauth_url: None }),
            },
        }
    }

    /// Waits until the status is final, or `timeout` (then the current one).
    pub async fn wait_for_outcome(&self, timeout: Duration) -> LoginStatus {
        let mut rx = self.status.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(LoginStatus::is_final)).await;
        self.status()
    }

    /// Forwards a redirect to the CLI's localhost listener, as the VM's
    /// browser would. `callback` is the redirect URL, a path with a query,
    /// or a query; only the query is used, the listener (port and path) comes
    /// from the captured URL's `redirect_uri` (codex: 127.0.0.1:1455/auth/callback).
    pub async fn forward_callback(&self, callback: &str) -> Result<CallbackResponse, LoginError> {
        let query = callback::callback_query(callback)?;
        let urls = self.urls();
        let (port, path) = match urls.listener(self.provider) {
            Some(l) => l,
            None if urls.preferred(self.provider).is_none() => {
                return Err(LoginError::NoUrlYet(self.provider))
            }
            None => {
                let redirect_uri = urls
                    .preferred(self.provider)
                    .and_then(crate::url::Url::parse)
                    .and_then(|u| u.param("redirect_uri").map(String::from));
                return Err(LoginError::NoLocalListener {
                    provider: self.provider,
                    redirect_uri,
                });
            }
        };
        callback::forward(port, &path, &query).await
    }

    /// Types a pasted code and Enter into the CLI's terminal (claude
    /// `code#state`, gemini's code). Enter goes separately, 50 ms later, so
    /// a raw-mode UI sees a keypress rather than a pasted carriage return.
    pub async fn type_code(&self, code: &str) -> Result<(), LoginError> {
        let code = code.trim();
        if code.is_empty() || code.chars().any(char::is_control) {
            return Err(LoginError::BadCode);
        }
        if self.status().is_final() && self.status() != LoginStatus::Authenticated {
            return Err(LoginError::Ended(self.provider));
        }
        self.write_terminal(code.as_bytes())?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.write_terminal(b"\r")
    }

    fn write_terminal(&self, bytes: &[u8]) -> Result<(), LoginError> {
        let mut m = self.master.lock().unwrap_or_else(|e| e.into_inner());
        m.write_all(bytes)
            .and_then(|_| m.flush())
            .map_err(|source| LoginError::Type {
                provider: self.provider,
                source,
            })
    }

    /// The credentials, once [`LoginStatus::Authenticated`].
    pub fn credentials(&self) -> Result<Credentials, credentials::CredentialError> {
        credentials::read(self.provider, &self.home)
    }

    /// Stops the CLI and everything in its process group: SIGTERM, then
    /// SIGKILL after `grace`; returns once the CLI is reaped. A login that
    /// already authenticated keeps that status (Gemini stays in its
    /// interactive screen after signing in: cancel it once the credentials
    /// are taken).
    pub async fn cancel(&self, grace: Duration) {
        {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if s.exit.is_some() {
                return;
            }
            s.cancelled = true;
        }
        let group = Pid::from_raw(self.pid);
        let _ = killpg(group, Signal::SIGHUP);
        let _ = killpg(group, Signal::SIGTERM);
        if !self.wait_exit(grace).await {
            let _ = killpg(group, Signal::SIGKILL);
            self.wait_exit(Duration::from_secs(5)).await;
        }
    }

    async fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self
                .shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .exit
                .is_some()
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LoginSession {
    /// Never leaves a process behind: kills the group (the monitor reaps it)
    /// and removes the hook directory.
    fn drop(&mut self) {
        let running = {
            let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
            if s.exit.is_none() {
                s.cancelled = true;
            }
            s.exit.is_none()
        };
        if running {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.hook.dir);
    }
}

fn read_output(provider: Provider, mut master: File, shared: &Mutex<Shared>) {
    let mut buf = [0u8; 8192];
    loop {
        let n = match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: every slave descriptor is closed, the CLI is gone.
            Err(_) => break,
        };
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        s.transcript.extend_from_slice(&buf[..n]);
        if s.transcript.len() > TRANSCRIPT_MAX {
            let cut = s.transcript.len() - TRANSCRIPT_MAX / 2;
            s.transcript.drain(..cut);
        }
        if let Some(url) = scan_for_url(provider, &s.transcript) {
            if s.urls.output.as_deref() != Some(url.as_str()) {
                s.urls.output = Some(url);
            }
        }
    }
    shared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .output_closed = true;
}

/// The last authorization-shaped URL in the recent output, considering only
/// complete lines (a URL at the very end may still be arriving).
fn scan_for_url(provider: Provider, transcript: &[u8]) -> Option<String> {
    let window = &transcript[transcript.len().saturating_sub(SCAN_WINDOW)..];
    let text = crate::ansi::strip(&String::from_utf8_lossy(window));
    let complete = &text[..text.rfind('\n')?];
    find_urls(complete)
        .into_iter()
        .rev()
        .find(|u| is_authorize_url(provider, u))
}

fn last_lines(transcript: &[u8], n: usize) -> Vec<String> {
    let window = &transcript[transcript.len().saturating_sub(16 * 1024)..];
    let text = crate::ansi::strip(&String::from_utf8_lossy(window));
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.chars().take(LINE_MAX).collect())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

struct Monitor {
    provider: Provider,
    cred_path: PathBuf,
    before: Option<Vec<u8>>,
    hook: Hook,
    shared: Arc<Mutex<Shared>>,
    tx: watch::Sender<LoginStatus>,
    slot: Option<CodexSlot>,
}

impl Monitor {
    fn run(mut self, mut child: Child) {
        let group = Pid::from_raw(child.id() as i32);
        let mut authenticated = false;
        loop {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() {
                // Tidy anything the CLI left in its group (a browser opener),
                // then let the reader take in the CLI's last words.
                let _ = killpg(group, Signal::SIGKILL);
                self.wait_output_closed(OUTPUT_DRAIN);
            }
            // After an exit, look once more: the file may have landed last.
            if !authenticated && self.credentials_ready() {
                authenticated = true;
            }
            let hook_urls = self.hook.urls();
            let status = {
                let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                if hook_urls.len() > s.urls.hook.len() {
                    s.urls.hook = hook_urls;
                }
                if exited.is_some() {
                    s.exit = exited;
                }
                if authenticated {
                    LoginStatus::Authenticated
                } else if s.cancelled {
                    LoginStatus::Cancelled
                } else if let Some(exit) = exited {
                    failure(
                        self.provider,
                        exit,
                        last_lines(&s.transcript, FAILURE_LINES),
                    )
                } else {
                    LoginStatus::Waiting {
                        oauth_url: s.urls.preferred(self.provider).map(String::from),
                    }
                }
            };
            self.tx.send_if_modified(|old| {
                // A final status is never replaced, except that credentials
                // written while cancelling still count.
                if *old == status || (old.is_final() && status != LoginStatus::Authenticated) {
                    return false;
                }
                *old = status.clone();
                true
            });
            if exited.is_some() {
                self.slot.take();
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    fn wait_output_closed(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self
                .shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .output_closed
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn credentials_ready(&self) -> bool {
        match std::fs::read(&self.cred_path) {
            Ok(now) => {
                self.before.as_deref() != Some(now.as_slice())
                    && credentials::validate(self.provider, &now).is_ok()
            }
            Err(_) => false,
        }
    }
}

fn failure(provider: Provider, exit: std::process::ExitStatus, output: Vec<String>) -> LoginStatus {
    use std::os::unix::process::ExitStatusExt;
    let how = match (exit.code(), exit.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".to_string(),
    };
    let last = output.last().map(String::as_str).unwrap_or("no output");
    LoginStatus::Failed {
        exit_code: exit.code(),
        signal: exit.signal(),
        message: format!(
            "{provider} login {how} without writing {}: {last}",
            provider::credential_file(provider)
        ),
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemini_url(state: &str) -> String {
        format!(
            "https://accounts.google.com/o/oauth2/v2/auth?redirect_uri=https%3A%2F%2Fcodeassist.google.com%2Fauthcode&state={state}&response_type=code&client_id=681255809395-x.apps.googleusercontent.com"
        )
    }

    #[test]
    fn the_latest_complete_url_wins() {
        let first = gemini_url("one");
        let second = gemini_url("two");
        let mut t = format!(
            "Please visit the following URL to authorize the application:\r\n\r\n\x1b[36m{first}\x1b[39m\r\n\r\nEnter the authorization code: "
        );
        assert_eq!(
            scan_for_url(Provider::GeminiCli, t.as_bytes()),
            Some(first.clone())
        );
        // Gemini's retry after a code that failed: a new URL.
        t.push_str(&format!(
            "\r\nFailed to authenticate with user code. Retrying...\r\nPlease visit the following URL to authorize the application:\r\n\r\n{second}\r\n"
        ));
        assert_eq!(
            scan_for_url(Provider::GeminiCli, t.as_bytes()),
            Some(second.clone())
        );
        // A URL still arriving (no end of line yet) does not count.
        t.push_str(&gemini_url("three"));
        assert_eq!(
            scan_for_url(Provider::GeminiCli, t.as_bytes()),
            Some(second)
        );
    }
}
