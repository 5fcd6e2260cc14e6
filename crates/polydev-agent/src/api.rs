//! The agent's HTTP API: the router, its shared state and the error shape.
//!
//! Every response that is not a success carries
//! `{"error":{"code":"...","message":"..."}}`, malformed request bodies
//! included.
//!
//! | route | what |
//! |---|---|
//! | `GET /health` | liveness, VM id, version, uptime |
//! | `POST /exec` | run a command to completion ([`exec`](crate::exec)) |
//! | `POST /procs`, `GET /procs/{id}`, `GET /procs/{id}/events?from=N`, `POST /procs/{id}/stdin`, `POST /procs/{id}/signal`, `DELETE /procs/{id}` | streamed processes ([`procs`](crate::procs)) |
//! | `POST /files` | write a file atomically ([`files`](crate::files)) |
//! | `POST /open-url` | record a URL and open it on the display ([`open_url`](crate::open_url)) |
//! | `GET /oauth-url` | the active login's URL, else the last URL recorded |
//! | `POST /auth/{provider}`, `GET /auth/callback`, `POST /auth/code` | provider logins ([`login`](crate::login)) |
//! | `GET /credentials/status`, `GET /credentials/get` | the login's outcome ([`login`](crate::login)) |
//! | `POST /webrtc/offer`, `POST /webrtc/candidate`, `GET /webrtc/stats` | the WebRTC live view through the screen streamer ([`webrtc`](crate::webrtc)) |
//! | `GET /terminal?cols=N&rows=M` | an interactive tmux terminal over a WebSocket ([`terminal`](crate::terminal)) |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::login::{self, LoginConfig, LoginState};
use crate::open_url::UrlState;
use crate::webrtc::{self, StreamerConfig, WebrtcState};
use crate::{auth, exec, files, procs, uptime};

/// Largest request body (a file to install, base64).
pub const MAX_BODY: usize = 32 << 20;

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    /// The VM's id.
    pub vm_id: Arc<str>,
    /// The bearer token every request must carry.
    pub token: Arc<str>,
    /// URLs handed to the agent.
    pub urls: Arc<UrlState>,
    /// Provider logins.
    pub login: Arc<LoginState>,
    /// The screen streamer (WebRTC live view).
    pub webrtc: Arc<WebrtcState>,
    /// Streamed processes.
    pub procs: Arc<procs::ProcTable>,
}

impl AppState {
    /// Builds the state from the agent's configuration.
    pub fn new(config: &polydev_core::guest::AgentConfig) -> Self {
        Self {
            vm_id: config.vm_id.as_str().into(),
            token: config.token.as_str().into(),
            urls: Arc::new(UrlState::default()),
            login: Arc::new(LoginState::new(LoginConfig::default())),
            webrtc: Arc::new(WebrtcState::default()),
            procs: Arc::new(procs::ProcTable::default()),
        }
    }

    /// The same state with logins run per `config` (tests: the current user
    /// and a temporary home).
    pub fn with_login(mut self, config: LoginConfig) -> Self {
        self.login = Arc::new(LoginState::new(config));
        self
    }

    /// The same state with the screen streamer started per `config`
    /// (tests: another binary, display and user).
    pub fn with_streamer(mut self, config: StreamerConfig) -> Self {
        self.webrtc = Arc::new(WebrtcState::new(config));
        self
    }
}

/// An error answer: HTTP status plus a machine-readable code and a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// Any status with its code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 401: missing or wrong token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.into(),
        }
    }

    /// 400: the request is unusable.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    /// 500: the agent could not do what was asked.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
        }
    }

    /// 404: no such route.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

/// The agent's router. Authentication wraps every route, the fallback too.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/exec", post(exec_handler))
        .route("/procs", post(proc_start))
        .route("/procs/{id}", get(proc_status).delete(proc_delete))
        .route("/procs/{id}/events", get(proc_events))
        .route("/procs/{id}/stdin", post(proc_stdin))
        .route("/procs/{id}/signal", post(proc_signal))
        .route("/files", post(files_handler))
        .route("/open-url", post(open_url_handler))
        .route("/oauth-url", get(oauth_url_handler))
        .route("/auth/callback", get(login::callback_handler))
        .route("/auth/code", post(login::code_handler))
        .route("/auth/{provider}", post(login::start_handler))
        .route("/credentials/status", get(login::status_handler))
        .route("/credentials/get", get(login::get_handler))
        .route("/webrtc/offer", post(webrtc::offer_handler))
        .route("/webrtc/candidate", post(webrtc::candidate_handler))
        .route("/webrtc/stats", get(webrtc::stats_handler))
        .route("/terminal", get(crate::terminal::handler))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "vmId": &*state.vm_id,
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeMs": uptime::uptime_ms(),
    }))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// Parses a JSON body into `T`, answering 400 in the common error shape.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid: {e}")))
}

async fn exec_handler(body: Bytes) -> Result<Json<exec::ExecResponse>, ApiError> {
    let req: exec::ExecRequest = parse_body(&body)?;
    match exec::run(req).await {
        Ok(r) => Ok(Json(r)),
        Err(exec::ExecError::BadRequest(m)) => Err(ApiError::bad_request(m)),
        Err(exec::ExecError::Spawn(m)) => Err(ApiError::internal(m)),
    }
}

fn proc_error(e: procs::ProcError) -> ApiError {
    match e {
        procs::ProcError::BadRequest(m) => ApiError::bad_request(m),
        procs::ProcError::NotFound(m) => ApiError::not_found(m),
        procs::ProcError::TooMany => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_processes",
            format!("at most {} processes at once", procs::MAX_PROCS),
        ),
        procs::ProcError::Spawn(m) => ApiError::internal(m),
    }
}

async fn proc_start(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req: procs::StartRequest = parse_body(&body)?;
    let (id, pid) = state.procs.start(req).await.map_err(proc_error)?;
    Ok((StatusCode::CREATED, Json(json!({"procId": id, "pid": pid}))))
}

async fn proc_status(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.procs.status(&id).map(Json).map_err(proc_error)
}

async fn proc_delete(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.procs.remove(&id).map_err(proc_error)?;
    Ok(Json(json!({"success": true})))
}

async fn proc_events(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let from = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("from="))
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("from={v:?} is not an event number")))
        })
        .transpose()?
        .unwrap_or(0);
    let stream = state.procs.events(&id, from).map_err(proc_error)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StdinRequest {
    #[serde(default)]
    data: String,
    #[serde(default)]
    close: bool,
}

async fn proc_stdin(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: StdinRequest = parse_body(&body)?;
    state
        .procs
        .write_stdin(&id, req.data.as_bytes(), req.close)
        .await
        .map_err(proc_error)?;
    Ok(Json(json!({"success": true})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalRequest {
    signal: String,
}

async fn proc_signal(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: SignalRequest = parse_body(&body)?;
    state.procs.signal(&id, &req.signal).map_err(proc_error)?;
    Ok(Json(json!({"success": true})))
}

async fn files_handler(body: Bytes) -> Result<Json<files::FileResponse>, ApiError> {
    let req: files::FileRequest = parse_body(&body)?;
    match tokio::task::spawn_blocking(move || files::write(&req)).await {
        Ok(Ok(r)) => Ok(Json(r)),
        Ok(Err(files::FileError::BadRequest(m))) => Err(ApiError::bad_request(m)),
        Ok(Err(files::FileError::Io(m))) => Err(ApiError::internal(m)),
        Err(e) => Err(ApiError::internal(format!("file writer failed: {e}"))),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenUrlRequest {
    url: String,
}

async fn open_url_handler(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: OpenUrlRequest = parse_body(&body)?;
    let urls = state.urls.clone();
    let entry = tokio::task::spawn_blocking(move || urls.open(&req.url, "api"))
        .await
        .map_err(|e| ApiError::internal(format!("url opener failed: {e}")))?
        .map_err(ApiError::bad_request)?;
    Ok(Json(
        json!({"success": true, "url": entry.url, "opened": entry.opened, "openError": entry.open_error}),
    ))
}

async fn oauth_url_handler(State(state): State<AppState>) -> Json<serde_json::Value> {
    if let Some((url, provider, session_id)) = state.login.oauth_url() {
        return Json(
            json!({"success": true, "oauthUrl": url, "source": "login", "provider": provider, "sessionId": session_id}),
        );
    }
    match state.urls.last() {
        Some(u) => Json(
            json!({"success": true, "oauthUrl": u.url, "source": u.source, "uptimeMs": u.uptime_ms, "opened": u.opened}),
        ),
        None => Json(json!({"success": true, "oauthUrl": null})),
    }
}
