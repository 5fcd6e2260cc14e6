//! Provider logins through the agent: at most one [`LoginSession`] at a
//! time, driven by the `/auth/*` and `/credentials/*` routes.
//!
//! | route | what |
//! |---|---|
//! | `POST /auth/{provider}` `{sessionId}` | start the CLI's login (replacing any other), answer its authorization URL |
//! | `GET /auth/callback?<query>` | forward the OAuth redirect to the CLI's localhost listener |
//! | `POST /auth/code` `{code}` | type a pasted code into the CLI |
//! | `GET /credentials/status` | `{authenticated, waiting, error?}` |
//! | `GET /credentials/get` | the credential files once authenticated; ends the login |

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use polydev_login::{LoginError, LoginOptions, LoginSession, LoginStatus, Provider, RunAs};
use serde_json::{json, Value};

use crate::api::{ApiError, AppState};
use crate::users;

/// How long `POST /auth/{provider}` waits for the authorization URL.
pub const URL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cancelled CLI gets between SIGTERM and SIGKILL.
pub const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Whom the CLIs run as and with what environment.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// The CLI user; `None` looks up [`LoginConfig::user`] in `/etc/passwd`
    /// at each login.
    pub run_as: Option<RunAs>,
    /// The user looked up when `run_as` is `None`.
    pub user: String,
    /// The login environment (`PATH`, opener, display, ...).
    pub options: LoginOptions,
}

impl Default for LoginConfig {
    /// The guest's: user `polydev`, display `:1`, and the agent's
    /// `open-url` client as the hook's opener when the binary is there.
    fn default() -> Self {
        let opener = agent_binary()
            .map(|p| vec![p.display().to_string(), "open-url".into()])
            .unwrap_or_default();
        Self {
            run_as: None,
            user: "polydev".into(),
            options: LoginOptions {
                display: Some(":1".into()),
                opener,
                ..LoginOptions::default()
            },
        }
    }
}

/// The `polydev-agent` binary, when it exists (the running one, else the
/// installed one).
fn agent_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok();
    exe.filter(|p| p.file_name().is_some_and(|n| n == "polydev-agent") && p.is_file())
        .or_else(|| {
            let p = PathBuf::from("/usr/local/bin/polydev-agent");
            p.is_file().then_some(p)
        })
}

struct Active {
    session_id: String,
    session: Arc<LoginSession>,
}

/// The agent's login state: the configuration and the one active login.
pub struct LoginState {
    config: LoginConfig,
    active: Mutex<Option<Active>>,
    /// Serializes starts, so that two `POST /auth/...` cannot both run.
    starting: tokio::sync::Mutex<()>,
}

impl LoginState {
    /// State with `config` and no login.
    pub fn new(config: LoginConfig) -> Self {
        Self {
            config,
            active: Mutex::new(None),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<(String, Arc<LoginSession>)> {
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| (a.session_id.clone(), a.session.clone()))
    }

    fn take(&self) -> Option<Active> {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Removes the active login without stopping it (its last handle's
    /// `Drop` kills the CLI's process group).
    pub fn take_session(&self) -> Option<Arc<LoginSession>> {
        self.take().map(|a| a.session)
    }

    /// The active login's authorization URL, with its session id and
    /// provider.
    pub fn oauth_url(&self) -> Option<(String, Provider, String)> {
        let (id, s) = self.current()?;
        s.oauth_url().map(|u| (u, s.provider(), id))
    }

    fn run_as(&self) -> Result<RunAs, ApiError> {
        if let Some(r) = &self.config.run_as {
            return Ok(r.clone());
        }
        let u = users::lookup(&self.config.user).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_cli_user",
                format!("cannot find the CLI user: {e}"),
            )
        })?;
        Ok(RunAs {
            name: u.name,
            home: u.home.into(),
            ids: Some((u.uid, u.gid)),
        })
    }
}

/// Parses a provider name: `codex`, `claude_code` (`claude`), `gemini_cli`
/// (`gemini`).
pub fn parse_provider(name: &str) -> Option<Provider> {
    match name {
        "claude" => Some(Provider::ClaudeCode),
        "gemini" => Some(Provider::GeminiCli),
        other => other.parse().ok(),
    }
}

fn login_error(e: LoginError) -> ApiError {
    let (status, code) = match &e {
        LoginError::CodexBusy => (StatusCode::CONFLICT, "busy"),
        LoginError::NoUrlYet(_) | LoginError::NoLocalListener { .. } => {
            (StatusCode::CONFLICT, "no_listener")
        }
        LoginError::Ended(_) => (StatusCode::CONFLICT, "login_ended"),
        LoginError::BadCallback(_) | LoginError::BadCode => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        LoginError::Forward { .. } => (StatusCode::BAD_GATEWAY, "forward_failed"),
        LoginError::Timeout(..) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "login_start_failed"),
    };
    ApiError::new(status, code, e.to_string())
}

fn no_login() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "no_login", "no login is running")
}

/// The one-line error for a failed login: its message and exit code or
/// signal.
fn failure_message(status: &LoginStatus) -> Option<String> {
    match status {
        LoginStatus::Failed {
            exit_code,
            signal,
            message,
            ..
        } => Some(match (exit_code, signal) {
            (Some(c), _) => format!("{message} (exit code {c})"),
            (None, Some(s)) => format!("{message} (killed by signal {s})"),
            (None, None) => message.clone(),
        }),
        _ => None,
    }
}

/// [`LoginSession::wait_for_url`] on a thread of its own: its future holds
/// a `watch::Ref` across an await, so it is not `Send` and cannot run in a
/// handler directly.
async fn wait_for_url(
    session: Arc<LoginSession>,
    timeout: Duration,
) -> Result<Result<String, LoginStatus>, ApiError> {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| ApiError::internal(format!("cannot start a runtime: {e}")))?;
        Ok(rt.block_on(session.wait_for_url(timeout)))
    })
    .await
    .map_err(|e| ApiError::internal(format!("URL waiter failed: {e}")))?
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRequest {
    session_id: String,
}

/// `POST /auth/{provider}`.
pub async fn start_handler(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Some(provider) = parse_provider(&provider) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_provider",
            format!("unknown provider {provider:?}; expected codex, claude_code or gemini_cli"),
        ));
    };
    let req: StartRequest = crate::api::parse_body(&body)?;
    if req.session_id.is_empty() {
        return Err(ApiError::bad_request("sessionId is empty"));
    }
    let login = state.login.clone();
    let _starting = login.starting.lock().await;
    if let Some(old) = login.take() {
        old.session.cancel(CANCEL_GRACE).await;
    }
    let run_as = login.run_as()?;
    let options = login.config.options.clone();
    let session =
        tokio::task::spawn_blocking(move || LoginSession::start(provider, &run_as, &options))
            .await
            .map_err(|e| ApiError::internal(format!("login starter failed: {e}")))?
            .map_err(login_error)?;
    let session = Arc::new(session);
    *login.active.lock().unwrap_or_else(|e| e.into_inner()) = Some(Active {
        session_id: req.session_id.clone(),
        session: session.clone(),
    });
    drop(_starting);
    if !session.expects_hook() {
        show_printed_urls(state.urls.clone(), session.clone());
    }
    match wait_for_url(session.clone(), URL_TIMEOUT).await? {
        Ok(url) => {
            // A CLI expected to open a browser that did not: put the page on
            // the display for the user.
            if session.expects_hook() && session.urls().hook.is_empty() {
                let urls = state.urls.clone();
                let u = url.clone();
                match tokio::task::spawn_blocking(move || urls.open(&u, "output")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => eprintln!("polydev-agent: opening the login URL: {e}"),
                    Err(e) => eprintln!("polydev-agent: opening the login URL: {e}"),
                }
            }
            Ok(Json(json!({
            "success": true,
            "sessionId": req.session_id,
            "provider": provider,
            "oauthUrl": url,
            })))
        }
        Err(status) => Err(match failure_message(&status) {
            Some(m) => ApiError::new(StatusCode::BAD_GATEWAY, "login_failed", m),
            None if status == LoginStatus::Cancelled => ApiError::new(
                StatusCode::CONFLICT,
                "login_cancelled",
                "the login was replaced by another",
            ),
            None => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "no authorization URL from the {provider} CLI within {URL_TIMEOUT:?}; last output: {:?}",
                    session.output_tail(5)
                ),
            ),
        }),
    }
}

/// Puts each URL a CLI only prints (Gemini's paste mode: the first one, and
/// the new one it prints when it asks again after a code that failed) on the
/// display, for as long as the login waits; the controller's `authUrl`
/// follows the same URL (`GET /credentials/status` reports it).
fn show_printed_urls(urls: Arc<crate::open_url::UrlState>, session: Arc<LoginSession>) {
    tokio::spawn(async move {
        let mut rx = session.subscribe();
        let mut shown: Option<String> = None;
        loop {
            let url = {
                let status = rx.borrow_and_update();
                if status.is_final() {
                    return;
                }
                match &*status {
                    LoginStatus::Waiting { oauth_url: Some(u) } => Some(u.clone()),
                    _ => None,
                }
            };
            if let Some(u) = url.filter(|u| shown.as_ref() != Some(u)) {
                let urls = urls.clone();
                let opening = u.clone();
                match tokio::task::spawn_blocking(move || urls.open(&opening, "output")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => eprintln!("polydev-agent: opening the login URL: {e}"),
                    Err(e) => eprintln!("polydev-agent: opening the login URL: {e}"),
                }
                shown = Some(u);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// `GET /auth/callback?<query>`.
pub async fn callback_handler(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let query = query.unwrap_or_default();
    if query.is_empty() {
        return Err(ApiError::bad_request("the callback has no query"));
    }
    let (_, session) = state.login.current().ok_or_else(no_login)?;
    let answer = session
        .forward_callback(&query)
        .await
        .map_err(login_error)?;
    Ok(Json(json!({
        "success": true,
        "status": answer.status,
        "location": answer.location,
    })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeRequest {
    code: String,
}

/// `POST /auth/code`.
pub async fn code_handler(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: CodeRequest = crate::api::parse_body(&body)?;
    let (_, session) = state.login.current().ok_or_else(no_login)?;
    session.type_code(&req.code).await.map_err(login_error)?;
    Ok(Json(json!({"success": true})))
}

/// `GET /credentials/status`.
pub async fn status_handler(State(state): State<AppState>) -> Json<Value> {
    let Some((id, session)) = state.login.current() else {
        return Json(json!({"authenticated": false, "waiting": false, "sessionId": null}));
    };
    let status = session.status();
    let state_name = match &status {
        LoginStatus::Waiting { .. } => "waiting",
        LoginStatus::Authenticated => "authenticated",
        LoginStatus::Failed { .. } => "failed",
        LoginStatus::Cancelled => "cancelled",
    };
    let mut body = json!({
        "authenticated": status.authenticated(),
        "waiting": status.waiting(),
        "state": state_name,
        "sessionId": id,
        "provider": session.provider(),
        "oauthUrl": session.oauth_url(),
    });
    if let Some(m) = failure_message(&status) {
        body["error"] = Value::String(m);
        if let LoginStatus::Failed { output, .. } = &status {
            body["output"] = json!(output);
        }
    }
    Json(body)
}

/// `GET /credentials/get`.
pub async fn get_handler(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (id, session) = state.login.current().ok_or_else(no_login)?;
    if !session.status().authenticated() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_authenticated",
            "the login has not authenticated",
        ));
    }
    let creds = session
        .credentials()
        .map_err(|e| ApiError::internal(format!("read the credentials: {e}")))?;
    let files: Vec<Value> = creds
        .files
        .iter()
        .map(|f| {
            json!({
                "path": f.path,
                "contentBase64": base64::engine::general_purpose::STANDARD.encode(&f.content),
            })
        })
        .collect();
    let primary = String::from_utf8_lossy(&creds.files[0].content).into_owned();
    // The credentials are taken: end the login (gemini stays in its screen).
    {
        let mut active = state.login.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.as_ref().is_some_and(|a| a.session_id == id) {
            *active = None;
        }
    }
    tokio::spawn(async move { session.cancel(CANCEL_GRACE).await });
    Ok(Json(json!({
        "success": true,
        "sessionId": id,
        "provider": creds.provider,
        "credentials": primary,
        "files": files,
    })))
}
