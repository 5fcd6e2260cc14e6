//! The connect flow: a user signs in to a provider inside an ephemeral
//! browser VM, and the credential file the CLI writes ends up sealed in the
//! vault and installed in the user's CLI VM.
//!
//! `initializing → vm_created → ready → awaiting_user_auth → completed`, or
//! `failed`, `timeout`, `cancelled`. Every step is a compare-and-set on the
//! session's status in the store, so cancel, timeout and progress never
//! overwrite each other, and a restarted controller picks each session up
//! from its recorded status ([`AuthFlow::recover`]). Whatever ends a session,
//! its browser VM is destroyed through the cleanup journal.

use crate::cli_vm::CliVms;
use crate::pool::BrowserPool;
use crate::runtime::{Runtime, RuntimeError};
use crate::sign_in;
use polydev_core::auth::{Provider, SessionStatus as S};
use polydev_core::vm::{now_ms, VmStatus, VmType};
use polydev_store::AuthSession;
use polydev_vault::Keyring;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings of the connect flow.
#[derive(Debug, Clone)]
pub struct AuthFlowConfig {
    /// Time the user has to sign in, from the start of the session.
    pub user_timeout: Duration,
    /// Session starts allowed per user per window.
    pub rate_limit: u32,
    /// The rate-limit window.
    pub rate_window: Duration,
    /// How long the VNC server may take to answer once the agent is ready.
    pub display_timeout: Duration,
    /// How long the CLI may take to show its authorization URL once started.
    pub url_timeout: Duration,
    /// Warm browser VMs kept hibernated for new sessions (0: none).
    pub browser_pool: usize,
    /// Origins an authorization URL may point at besides the provider's own
    /// sign-in hosts (`POLYDEV_AUTH_URL_ORIGINS`; a stand-in OAuth server in
    /// tests). Empty by default.
    pub url_origins: Vec<polydev_login::url::Origin>,
}

impl Default for AuthFlowConfig {
    fn default() -> Self {
        AuthFlowConfig {
            user_timeout: Duration::from_secs(300),
            rate_limit: 30,
            rate_window: Duration::from_secs(900),
            display_timeout: Duration::from_secs(90),
            url_timeout: Duration::from_secs(120),
            browser_pool: 0,
            url_origins: Vec::new(),
        }
    }
}

/// Where each provider's CLI keeps its credential file, under the CLI
/// user's home in the guest.
pub fn credential_path(p: Provider) -> &'static str {
    match p {
        Provider::ClaudeCode => "/home/polydev/.claude/.credentials.json",
        Provider::Codex => "/home/polydev/.codex/auth.json",
        Provider::GeminiCli => "/home/polydev/.gemini/oauth_creds.json",
    }
}

/// The guest user that owns installed credentials.
pub const CLI_USER: &str = "polydev";
/// The VNC port of browser VMs.
pub use polydev_core::guest::VNC_PORT;

/// Errors of the connect flow that an API caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Too many sessions started; retry after this many seconds.
    #[error("too many sign-in sessions for this user; retry in {0} s")]
    RateLimited(u64),
    /// No such session.
    #[error("no sign-in session {0}")]
    NotFound(String),
    /// The session is not in a state that allows the request.
    #[error("{0}")]
    Conflict(String),
    /// The browser VM's agent refused or failed the request.
    #[error("{0}")]
    Agent(String),
    /// Lower layers failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<polydev_store::StoreError> for FlowError {
    fn from(e: polydev_store::StoreError) -> Self {
        FlowError::Runtime(RuntimeError::Store(e))
    }
}

/// The connect flow.
pub struct AuthFlow {
    rt: Arc<Runtime>,
    vault: Keyring,
    cfg: AuthFlowConfig,
    limiter: crate::admission::RateLimiter,
    pool: Arc<BrowserPool>,
    cli: Arc<CliVms>,
    tasks: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl AuthFlow {
    /// A flow over the runtime, sealing credentials with `vault`.
    pub fn new(
        rt: Arc<Runtime>,
        vault: Keyring,
        cfg: AuthFlowConfig,
        cli: Arc<CliVms>,
    ) -> Arc<AuthFlow> {
        Arc::new(AuthFlow {
            cli,
            pool: BrowserPool::new(rt.clone(), cfg.browser_pool),
            rt,
            vault,
            cfg,
            limiter: Default::default(),
            tasks: Mutex::default(),
        })
    }

    /// The vault keyring.
    pub fn vault(&self) -> &Keyring {
        &self.vault
    }

    /// The warm pool of browser VMs ([`BrowserPool::run`] fills it).
    pub fn pool(&self) -> &Arc<BrowserPool> {
        &self.pool
    }

    /// Records a session and starts it in the background; returns at once.
    pub async fn start(
        self: &Arc<Self>,
        user_id: &str,
        provider: Provider,
    ) -> Result<AuthSession, FlowError> {
        self.limiter
            .check(user_id, self.cfg.rate_limit, self.cfg.rate_window)
            .map_err(FlowError::RateLimited)?;
        let cap = self.rt.config().admission.user_max_signins;
        let open = self
            .rt
            .store()
            .list_auth_sessions(user_id)
            .await?
            .iter()
            .filter(|s| !s.status.is_terminal())
            .count();
        if open >= cap {
            return Err(FlowError::Runtime(RuntimeError::UserLimit(format!(
                "user {user_id} has {open} sign-in sessions in progress, the most allowed (POLYDEV_USER_MAX_SIGNINS={cap}); finish or cancel one first"
            ))));
        }
        // Fail fast, before recording anything, when no VM could boot.
        self.rt.artifacts(Some(VmType::Browser))?;
        let id = new_session_id();
        let expires = now_ms() + self.cfg.user_timeout.as_millis() as i64;
        let s = self
            .rt
            .store()
            .insert_auth_session(&id, user_id, provider, expires)
            .await?;
        tracing::info!(session_id = %id, user_id, provider = %provider, "sign-in session started");
        self.spawn(s.clone());
        Ok(s)
    }

    fn spawn(self: &Arc<Self>, s: AuthSession) {
        let flow = self.clone();
        let id = s.session_id.clone();
        // Held while inserting, so the task cannot remove itself first.
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let handle = tokio::spawn(async move {
            let id = s.session_id.clone();
            if let Err(msg) = flow.drive(s).await {
                flow.end(&id, S::Failed, &msg).await;
            }
            flow.tasks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
        tasks.insert(id, handle);
    }

    /// A session by id.
    pub async fn get(&self, id: &str) -> Result<AuthSession, FlowError> {
        self.rt
            .store()
            .get_auth_session(id)
            .await?
            .ok_or_else(|| FlowError::NotFound(id.into()))
    }

    /// Cancels a session and destroys its browser VM.
    pub async fn cancel(&self, id: &str) -> Result<AuthSession, FlowError> {
        self.get(id).await?;
        let task = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(h) = task {
            // Stop the session's task and wait until it has really stopped, so
            // that a VM it was creating is recorded before it is destroyed.
            h.abort();
            let _ = h.await;
        }
        self.end(id, S::Cancelled, "cancelled").await;
        self.get(id).await
    }

    /// Hands a code the user copied from the provider's page to the CLI in
    /// the session's browser VM (Gemini's paste mode, Claude's `code#state`).
    pub async fn submit_code(&self, id: &str, code: &str) -> Result<(), FlowError> {
        let code = code.trim();
        if code.is_empty() || code.len() > 4096 || code.chars().any(char::is_control) {
            return Err(FlowError::Conflict(
                "the code must be 1 to 4096 printable characters".into(),
            ));
        }
        let s = self.get(id).await?;
        if s.status != S::AwaitingUserAuth {
            return Err(FlowError::Conflict(format!(
                "session {id} is {}, not awaiting_user_auth: there is no login to paste a code into",
                s.status
            )));
        }
        let vm = s
            .browser_vm_id
            .ok_or_else(|| FlowError::Conflict(format!("session {id} has no browser VM")))?;
        let rec = self
            .rt
            .store()
            .get_vm(&vm)
            .await?
            .ok_or_else(|| FlowError::Conflict(format!("the browser VM {vm} is gone")))?;
        self.rt
            .agent_call(
                &rec,
                "POST",
                "/auth/code",
                Some(serde_json::json!({ "code": code })),
                Duration::from_secs(30),
            )
            .await
            .map_err(|e| {
                FlowError::Agent(format!("typing the code into the {} CLI: {e}", s.provider))
            })?;
        tracing::info!(session_id = id, "code handed to the CLI");
        Ok(())
    }

    /// Ends a session in `to` (if it has not ended) and destroys its VM.
    async fn end(&self, id: &str, to: S, msg: &str) {
        match self.rt.store().end_auth_session(id, to, msg).await {
            Ok(Some(from)) => {
                tracing::info!(session_id = id, %from, %to, msg, "sign-in session ended")
            }
            Ok(None) => {}
            Err(e) => tracing::error!(session_id = id, error = %e, "ending sign-in session"),
        }
        self.destroy_vm(id).await;
    }

    async fn destroy_vm(&self, id: &str) {
        let Ok(Some(s)) = self.rt.store().get_auth_session(id).await else {
            return;
        };
        if let Some(vm) = s.browser_vm_id {
            if let Err(e) = self.rt.destroy_for_session(&vm, id).await {
                if matches!(e, RuntimeError::NotFound(_)) {
                    return;
                }
                tracing::error!(session_id = id, vm_id = %vm, error = %e, "destroying browser VM");
            }
        }
    }

    async fn advance(
        &self,
        id: &str,
        from: S,
        to: S,
        vm: Option<&str>,
        url: Option<&str>,
    ) -> Result<(), String> {
        match self
            .rt
            .store()
            .advance_auth_session(id, from, to, vm, url, None)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("session left {from} before it could become {to}")),
            Err(e) => Err(format!("recording {to}: {e}")),
        }
    }

    /// Runs a session from its recorded status to its end.
    async fn drive(&self, s: AuthSession) -> Result<(), String> {
        let id = s.session_id.clone();
        let deadline =
            Instant::now() + Duration::from_millis((s.expires_at - now_ms()).max(0) as u64);
        let mut status = s.status;
        let mut vm_id = s.browser_vm_id.clone();
        // Held until the URL is shown: the pool refills after that.
        let mut claimed = None;
        let mut auth_url = s.auth_url.clone();
        if status == S::Initializing {
            // A user whose traffic goes through a proxy that does not answer
            // cannot sign in: say so now, naming the proxy.
            if let Some(h) = self.rt.egress() {
                if let Some(p) = h.identity(&s.user_id).await?.proxy {
                    h.egress.check_proxy(&p, None).await?;
                }
            }
            if let Some(warm) = self.pool.claim(&s.user_id, &id).await {
                // A warm VM from the pool, already recorded on the session
                // (one transaction): hibernated, resumed just below.
                vm_id = Some(warm.vm_id.clone());
                claimed = Some(warm);
            } else {
                // The VM's id is recorded before the VM exists, so a cancel
                // or a crash at any point finds it.
                let new_id = crate::runtime::new_vm_id();
                self.advance(&id, S::Initializing, S::VmCreated, Some(&new_id), None)
                    .await?;
                self.rt
                    .create_with_id(&new_id, &s.user_id, VmType::Browser)
                    .await
                    .map_err(|e| format!("creating the browser VM: {e}"))?;
                vm_id = Some(new_id);
            }
            status = S::VmCreated;
        }
        let vm_id = vm_id.ok_or("the session has no browser VM")?;
        let rec = self.wait_running(&vm_id).await?;
        if status == S::VmCreated {
            self.wait_vnc(&rec.netns).await?;
            self.advance(&id, S::VmCreated, S::Ready, None, None)
                .await?;
            // Live view: a WebRTC offer stored before the VM was ready goes to it now.
            crate::live::session_ready(&self.rt, &id);
            status = S::Ready;
        }
        if status == S::Ready {
            let body = serde_json::json!({ "sessionId": id });
            let started = self
                .rt
                .agent_call(
                    &rec,
                    "POST",
                    &format!("/auth/{}", s.provider),
                    Some(body),
                    Duration::from_secs(45),
                )
                .await;
            let url = match started {
                Ok(v) => match v.get("oauthUrl").and_then(|u| u.as_str()) {
                    Some(u) if !u.is_empty() => u.to_string(),
                    _ => self.wait_url(&rec, s.provider).await?,
                },
                // The CLI is still starting (a Node.js CLI under TCG can take
                // a minute): the login goes on in the agent; ask for its URL.
                Err(e) if e.contains("timed out") || e.contains(" 504 ") => {
                    tracing::info!(session_id = %id, "the CLI is slow to show its URL; waiting for it");
                    self.wait_url(&rec, s.provider).await?
                }
                Err(e) => {
                    return Err(format!(
                        "starting the {} login in the browser VM: {e}",
                        s.provider
                    ))
                }
            };
            sign_in::check_url(s.provider, &url, &self.cfg.url_origins)?;
            self.advance(&id, S::Ready, S::AwaitingUserAuth, None, Some(&url))
                .await?;
            auth_url = Some(url);
        }
        if let Some(claim) = claimed.take() {
            // The page is still loading in the VM's Chromium: let it, then refill.
            tokio::spawn(async move {
                tokio::time::sleep(crate::pool::REFILL_SETTLE).await;
                drop(claim);
            });
        }
        // Awaiting the user: poll the agent until the CLI has written its file.
        loop {
            if Instant::now() >= deadline {
                self.end(
                    &id,
                    S::Timeout,
                    "the user did not finish signing in in time",
                )
                .await;
                return Ok(());
            }
            let st = self
                .rt
                .agent_call(
                    &rec,
                    "GET",
                    "/credentials/status",
                    None,
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| format!("asking the browser VM for the login status: {e}"))?;
            if st.get("authenticated").and_then(|v| v.as_bool()) == Some(true) {
                break;
            }
            // A CLI that asks again (Gemini, after a code that failed) shows
            // a new URL; the agent has put it on the VM's screen.
            if let Some(u) = st.get("oauthUrl").and_then(|v| v.as_str()) {
                if !u.is_empty() && auth_url.as_deref() != Some(u) {
                    sign_in::check_url(s.provider, u, &self.cfg.url_origins)?;
                    self.advance(&id, S::AwaitingUserAuth, S::AwaitingUserAuth, None, Some(u))
                        .await?;
                    tracing::info!(session_id = %id, "the CLI shows a new authorization URL");
                    auth_url = Some(u.to_string());
                }
            }
            if let Some(err) = st.get("error").and_then(|v| v.as_str()) {
                let output = st.get("output").map(|o| o.to_string()).unwrap_or_default();
                let err = sign_in::clip(err, sign_in::MAX_FAILURE_CHARS);
                let mut msg = login_failure(s.provider, &err, &output);
                if let Some(e) = self.rt.egress().and_then(|h| h.egress.last_error(&vm_id)) {
                    msg.push_str(&format!(" (the VM's egress: {e})"));
                }
                return Err(msg);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let got = self
            .rt
            .agent_call(
                &rec,
                "GET",
                "/credentials/get",
                None,
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("fetching the credential file: {e}"))?;
        let sign_in::SignedIn {
            credentials: creds,
            companions,
        } = sign_in::take_files(&got, s.provider)?;
        let sealed = self.vault.seal(&s.user_id, s.provider.as_str(), &creds);
        let parts = polydev_store::SealedParts {
            encrypted_data: &sealed.ciphertext,
            iv: &sealed.iv,
            tag: &sealed.tag,
            salt: &sealed.salt,
            key_id: &sealed.key_id,
        };
        self.rt
            .store()
            .put_credential(
                &s.user_id,
                s.provider.as_str(),
                polydev_core::run::CredentialKind::Oauth,
                polydev_login::credentials::expires_at(s.provider, &creds),
                &parts,
            )
            .await
            .map_err(|e| format!("storing the credentials: {e}"))?;
        self.install(&s.user_id, s.provider, &creds, &companions)
            .await?;
        self.advance(&id, S::AwaitingUserAuth, S::Completed, None, None)
            .await?;
        tracing::info!(session_id = %id, "sign-in session completed");
        self.destroy_vm(&id).await;
        Ok(())
    }

    async fn wait_running(&self, vm_id: &str) -> Result<polydev_store::VmRecord, String> {
        let until = Instant::now() + self.rt.config().boot_timeout + Duration::from_secs(30);
        loop {
            let r = self
                .rt
                .store()
                .get_vm(vm_id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("VM {vm_id} vanished"))?;
            match r.status {
                VmStatus::Running => return Ok(r),
                VmStatus::Creating if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                VmStatus::Hibernated => {
                    self.rt.resume(vm_id).await.map_err(|e| e.to_string())?;
                }
                _ => {
                    return Err(format!(
                        "VM {vm_id} failed: {} (console log: /api/vms/{vm_id}/console)",
                        r.failure_reason.unwrap_or_else(|| r.status.to_string())
                    ))
                }
            }
        }
    }

    /// Waits until the VM's VNC server answers an RFB handshake.
    async fn wait_vnc(&self, netns: &str) -> Result<(), String> {
        let until = Instant::now() + self.cfg.display_timeout;
        let mut last = String::new();
        while Instant::now() < until {
            let ns = netns.to_string();
            match tokio::task::spawn_blocking(move || rfb_banner(&ns)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(format!(
            "the browser VM's VNC server (port {VNC_PORT}) did not answer: {last}"
        ))
    }

    async fn wait_url(&self, rec: &polydev_store::VmRecord, p: Provider) -> Result<String, String> {
        let until = Instant::now() + self.cfg.url_timeout;
        while Instant::now() < until {
            if let Ok(v) = self
                .rt
                .agent_call(rec, "GET", "/oauth-url", None, Duration::from_secs(10))
                .await
            {
                if let Some(u) = v
                    .get("url")
                    .or_else(|| v.get("oauthUrl"))
                    .and_then(|u| u.as_str())
                {
                    if !u.is_empty() {
                        return Ok(u.to_string());
                    }
                }
                if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
                    return Err(format!(
                        "the {p} login failed before showing a sign-in page: {}",
                        sign_in::clip(err, sign_in::MAX_FAILURE_CHARS)
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(format!(
            "the {p} login did not show an authorization URL within {:?}",
            self.cfg.url_timeout
        ))
    }

    /// Installs a credential file into the user's CLI VM (created or resumed
    /// on demand), mode 0600, owned by the CLI user.
    async fn install(
        &self,
        user_id: &str,
        p: Provider,
        creds: &[u8],
        companions: &[(String, Vec<u8>)],
    ) -> Result<(), String> {
        use base64::Engine;
        let (rec, _hold, _) = self.cli.ensure(user_id).await?;
        let vm_id = rec.vm_id.clone();
        let body = serde_json::json!({
            "path": credential_path(p),
            "contentBase64": base64::engine::general_purpose::STANDARD.encode(creds),
            "mode": "0600",
            "owner": CLI_USER,
        });
        self.rt
            .agent_call(&rec, "POST", "/files", Some(body), Duration::from_secs(30))
            .await
            .map_err(|e| format!("installing the credentials in CLI VM {vm_id}: {e}"))?;
        for (path, content) in companions {
            let body = serde_json::json!({
                "path": path,
                "contentBase64": base64::engine::general_purpose::STANDARD.encode(content),
                "mode": "0600",
                "owner": CLI_USER,
            });
            self.rt
                .agent_call(&rec, "POST", "/files", Some(body), Duration::from_secs(30))
                .await
                .map_err(|e| format!("installing {path} in CLI VM {vm_id}: {e}"))?;
        }
        Ok(())
    }

    /// After a restart: resumes every unfinished session whose browser VM is
    /// still there, and fails the others cleanly (destroying what is left).
    pub async fn recover(self: &Arc<Self>) -> Result<usize, FlowError> {
        let mut resumed = 0;
        for s in self.rt.store().list_active_auth_sessions().await? {
            let vm_ok = match &s.browser_vm_id {
                // A warm VM taken from the pool may still be hibernated:
                // the session resumes it.
                Some(vm) => matches!(
                    self.rt.store().get_vm(vm).await?.map(|r| r.status),
                    Some(VmStatus::Running | VmStatus::Creating | VmStatus::Hibernated)
                ),
                None => s.status == S::Initializing,
            };
            if vm_ok && s.expires_at > now_ms() {
                tracing::info!(session_id = %s.session_id, status = %s.status, "resuming sign-in session after restart");
                self.spawn(s);
                resumed += 1;
            } else {
                let msg = if s.expires_at <= now_ms() {
                    "the session expired while the controller was down"
                } else {
                    "the controller restarted and the session's browser VM was gone"
                };
                let to = if s.expires_at <= now_ms() {
                    S::Timeout
                } else {
                    S::Failed
                };
                self.end(&s.session_id, to, msg).await;
            }
        }
        self.reap_unclaimed().await?;
        Ok(resumed)
    }

    /// Destroys hibernated browser VMs that left the pool but that no
    /// session in progress names (a claim cut short by a crash, or a session
    /// that ended without its VM): nothing would ever use or free them.
    async fn reap_unclaimed(&self) -> Result<Vec<String>, FlowError> {
        let store = self.rt.store();
        let named: std::collections::HashSet<String> = store
            .list_active_auth_sessions()
            .await?
            .into_iter()
            .filter_map(|s| s.browser_vm_id)
            .collect();
        let mut reaped = Vec::new();
        for v in store.list_vms(None, false).await? {
            let unclaimed = v.vm_type == VmType::Browser
                && v.user_id != crate::pool::POOL_USER
                && v.status == VmStatus::Hibernated
                && !named.contains(&v.vm_id);
            if unclaimed {
                tracing::warn!(vm_id = %v.vm_id, user_id = %v.user_id, status = %v.status, "browser VM named by no sign-in session: destroying it");
                self.rt.destroy(&v.vm_id).await?;
                reaped.push(v.vm_id);
            }
        }
        Ok(reaped)
    }
}

/// Connects to the guest's VNC port inside its namespace and reads the RFB
/// protocol banner (`RFB 003.008\n`).
fn rfb_banner(netns: &str) -> Result<String, String> {
    use std::io::Read;
    let addr = std::net::SocketAddr::from((
        polydev_core::guest::GUEST_ADDR
            .parse::<std::net::Ipv4Addr>()
            .expect("constant"),
        VNC_PORT,
    ));
    let mut s = polydev_net::netns::connect_tcp(netns, addr, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 12];
    s.read_exact(&mut b)
        .map_err(|e| format!("reading the RFB banner: {e}"))?;
    let banner = String::from_utf8_lossy(&b).into_owned();
    if banner.starts_with("RFB 003.") {
        Ok(banner)
    } else {
        Err(format!("not an RFB server: {banner:?}"))
    }
}

/// Signs in the CLI's output that it could not reach the provider's servers
/// (DNS, connection or TLS failures, as Rust, Node.js and Go clients word them).
const UNREACHABLE_SIGNS: &[&str] = &[
    "error sending request",
    "ENOTFOUND",
    "EAI_AGAIN",
    "getaddrinfo",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
    "EHOSTUNREACH",
    "fetch failed",
    "dns error",
    "Network is unreachable",
    "Connection refused",
    "Could not resolve host",
    "failed to lookup address",
];

/// The session's error for a login that failed with `err` (the CLI's last
/// line and exit status) after printing `output`: says in words when the
/// provider could not be reached.
fn login_failure(p: Provider, err: &str, output: &str) -> String {
    let all = format!("{err}\n{output}");
    if UNREACHABLE_SIGNS.iter().any(|s| all.contains(s)) {
        format!("the {p} login failed: cannot reach the provider from the browser VM: {err}")
    } else {
        format!("the {p} login failed: {err}")
    }
}

fn new_session_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    format!("as_{}", hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_provider_is_said_in_words() {
        let m = login_failure(
            Provider::Codex,
            "Error logging in: Token exchange error: error sending request for url (https://auth.openai.com/oauth/token) (exit code 1)",
            "",
        );
        assert!(m.contains("cannot reach the provider"), "{m}");
        let m = login_failure(
            Provider::GeminiCli,
            "FatalAuthenticationError (exit code 41)",
            "[\"getaddrinfo EAI_AGAIN oauth2.googleapis.com\"]",
        );
        assert!(m.contains("cannot reach the provider"), "{m}");
        let m = login_failure(
            Provider::ClaudeCode,
            "Couldn't log in: invalid_grant (exit code 1)",
            "",
        );
        assert!(!m.contains("cannot reach"), "{m}");
    }

    #[test]
    fn credential_paths_are_the_clis_own() {
        assert!(credential_path(Provider::ClaudeCode).ends_with(".claude/.credentials.json"));
        assert!(credential_path(Provider::Codex).ends_with(".codex/auth.json"));
        assert!(credential_path(Provider::GeminiCli).ends_with(".gemini/oauth_creds.json"));
    }
}
