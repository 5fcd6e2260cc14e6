//! The HTTP API's routes and handlers.

use crate::error::ApiError;
use crate::runtime::RuntimeError;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use polydev_core::vm::VmType;
use polydev_store::VmRecord;
use serde::Deserialize;

/// The authenticated routes (everything under `/api`).
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/vms", get(list_vms).post(create_vm))
        .route("/api/vms/{id}", get(get_vm).delete(delete_vm))
        .route("/api/vms/{id}/console", get(console))
        .route("/api/vms/{id}/vmm-log", get(vmm_log))
        .route("/api/auth/start", axum::routing::post(auth_start))
        .route("/api/auth/session/{id}", get(auth_session))
        .route("/api/vm/auth/{id}", axum::routing::delete(auth_cancel))
        .route(
            "/api/auth/session/{id}/code",
            axum::routing::post(auth_code),
        )
        .route("/api/vms/{id}/hibernate", axum::routing::post(hibernate))
        .route("/api/vms/{id}/resume", axum::routing::post(resume))
        .route(
            "/api/vms/{id}/egress",
            get(crate::egress::get_vm_egress).put(crate::egress::put_vm_egress),
        )
        .route(
            "/api/users/{user}/egress",
            get(crate::egress::get_user_egress).put(crate::egress::put_user_egress),
        )
        .route(
            "/api/runs",
            get(crate::runs::api::list).post(crate::runs::api::create),
        )
        .route("/api/runs/{id}", get(crate::runs::api::get))
        .route("/api/runs/{id}/events", get(crate::runs::api::events))
        .route(
            "/api/runs/{id}/cancel",
            axum::routing::post(crate::runs::api::cancel),
        )
        .route("/api/credentials", get(crate::credentials::list))
        .route(
            "/api/credentials/{user}/{provider}",
            axum::routing::delete(crate::credentials::delete).put(crate::credentials::put_api_key),
        )
        .route(
            "/api/keys",
            get(crate::auth::list_keys).post(crate::auth::create_key),
        )
        .route(
            "/api/keys/{id}",
            axum::routing::delete(crate::auth::revoke_key),
        )
        .route(
            "/api/admin/overview",
            get(crate::dashboard::admin::api_overview),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::admission::limit_changes,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::auth::require_api_key,
        ))
}

/// `GET /health`: version, VMM and why, store kind, artefacts.
pub async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    let rt = &s.runtime;
    let artifacts = rt.artifacts(None);
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "vmm": {
            "kind": rt.vmm().kind().as_str(),
            "reason": rt.vmm_reason(),
            "accel": rt.accel().accel.as_str(),
            "accelReason": rt.accel().reason,
            "description": rt.vmm().describe(),
        },
        "store": rt.store().kind().to_string(),
        "egress": match rt.egress() {
            Some(h) => serde_json::json!({
                "table": h.egress.config().table(),
                "uplink": h.egress.config().uplink,
                "subnet": h.egress.config().subnet.to_string(),
                "dnsUpstream": h.egress.upstreams().addrs,
            }),
            None => serde_json::Value::Null,
        },
        "artifacts": match artifacts {
            Ok(a) => serde_json::json!({"ready": true, "kernel": a.kernel, "rootfs": a.rootfs}),
            Err(e) => serde_json::json!({"ready": false, "problem": e.to_string()}),
        },
    }))
}

fn vm_json(r: &VmRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "consoleUrl".into(),
            format!("/api/vms/{}/console", r.vm_id).into(),
        );
        o.insert("type".into(), r.vm_type.as_str().into());
        o.remove("dir");
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVm {
    #[serde(rename = "type")]
    vm_type: String,
    #[serde(rename = "userId")]
    user_id: String,
}

/// Checks a user id: 1–128 characters of `[A-Za-z0-9._@-]`, not starting
/// with `_` (reserved for the controller's own owners, such as the warm pool's).
pub fn validate_user_id(u: &str) -> Result<(), ApiError> {
    if !u.starts_with('_') {
        validate_listed_user_id(u)
    } else {
        Err(invalid_user_id())
    }
}

/// A user id to list VMs of: like [`validate_user_id`], but the reserved
/// owners (`_pool`, the warm pool's) may be listed.
fn validate_listed_user_id(u: &str) -> Result<(), ApiError> {
    // `.` and `..` would name a directory's self or parent in paths built from ids.
    let ok = !u.is_empty()
        && u != "."
        && u != ".."
        && u.len() <= 128
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid_user_id())
    }
}

fn invalid_user_id() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_user_id",
        "userId must be 1-128 characters of letters, digits, '.', '_', '@' or '-', not start with '_' (reserved), and not be '.' or '..'",
    )
}

fn runtime_error(e: RuntimeError) -> ApiError {
    match e {
        RuntimeError::ArtifactsMissing(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "artifacts_missing", m)
        }
        RuntimeError::NotFound(id) => ApiError::not_found(format!("no VM with id {id}")),
        RuntimeError::Store(e) => ApiError::internal(e),
        RuntimeError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        RuntimeError::Vmm(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "vmm_error", m),
        RuntimeError::Capacity(m) => crate::admission::capacity_error(m),
        RuntimeError::UserLimit(m) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "user_limit", m),
    }
}

async fn create_vm(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    body: Result<Json<CreateVm>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let vm_type: VmType = body
        .vm_type
        .parse()
        .map_err(|e: polydev_core::vm::ParseEnumError| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_vm_type",
                e.to_string(),
            )
        })?;
    validate_user_id(&body.user_id)?;
    caller.act_for(&body.user_id)?;
    let rec = s
        .runtime
        .create(&body.user_id, vm_type)
        .await
        .map_err(runtime_error)?;
    let location = format!("/api/vms/{}", rec.vm_id);
    Ok((
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, location)],
        Json(serde_json::json!({"vmId": rec.vm_id, "status": rec.status, "vm": vm_json(&rec)})),
    )
        .into_response())
}

/// The VM `id` if the caller sees it; 404 alike for another user's VM and
/// for none.
pub async fn find(
    s: &AppState,
    caller: &crate::auth::Caller,
    id: &str,
) -> Result<VmRecord, ApiError> {
    let missing = || format!("no VM with id {id}");
    let rec = s
        .runtime
        .store()
        .get_vm(id)
        .await?
        .ok_or_else(|| ApiError::not_found(missing()))?;
    caller.owns(&rec.user_id, missing)?;
    Ok(rec)
}

async fn get_vm(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(vm_json(&find(&s, &caller, &id).await?)))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(rename = "userId")]
    user_id: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn list_vms(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(u) = &q.user_id {
        validate_listed_user_id(u)?;
    }
    let scope = caller.list_scope(q.user_id.as_deref())?;
    let vms = s.runtime.store().list_vms(scope.as_deref(), q.all).await?;
    Ok(Json(
        serde_json::json!({"vms": vms.iter().map(vm_json).collect::<Vec<_>>()}),
    ))
}

/// `GET /api/vms/:id/console`: the console log, at most its configured head
/// and tail (the guest decides how much it writes).
async fn console(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = find(&s, &caller, &id).await?;
    let path = std::path::Path::new(&rec.dir).join(polydev_vmm::CONSOLE_FILE);
    let limits = s.runtime.config().console;
    let read = {
        let p = path.clone();
        tokio::task::spawn_blocking(move || polydev_vmm::console::read_capped(&p, limits))
            .await
            .map_err(|e| ApiError::internal(format!("reading {}: {e}", path.display())))?
    };
    match read {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
            // The guest printed nothing: what the VMM itself said is the
            // only lead.
            let vmm = vmm_log_text(&s, &rec).await?;
            let body = match vmm {
                Some((name, text)) => format!(
                    "[polydev: the guest printed nothing on its console; the VMM's own log ({name}) follows]\n{text}"
                ),
                None => String::new(),
            };
            Ok(text_response(body))
        }
        Ok(bytes) => Ok(text_response(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::not_found(format!(
            "VM {id} has no console log ({})",
            if rec.status == polydev_core::vm::VmStatus::Destroyed {
                "it was destroyed"
            } else {
                "not started yet"
            }
        ))),
        Err(e) => Err(ApiError::internal(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

fn text_response(body: String) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The VMM's own log of a VM (its first file that exists), capped like the
/// console.
async fn vmm_log_text(
    s: &AppState,
    rec: &VmRecord,
) -> Result<Option<(&'static str, String)>, ApiError> {
    let dir = std::path::PathBuf::from(&rec.dir);
    let limits = s.runtime.config().console;
    tokio::task::spawn_blocking(move || {
        polydev_vmm::diagnose::LOG_FILES.iter().find_map(|f| {
            let bytes = polydev_vmm::console::read_capped(&dir.join(f), limits).ok()?;
            Some((*f, String::from_utf8_lossy(&bytes).into_owned()))
        })
    })
    .await
    .map_err(ApiError::internal)
}

/// `GET /api/vms/:id/vmm-log`: the VMM's own log (Firecracker's log file or
/// the VMM's stderr), capped like the console.
async fn vmm_log(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = find(&s, &caller, &id).await?;
    match vmm_log_text(&s, &rec).await? {
        Some((_, text)) => Ok(text_response(text)),
        None => Err(ApiError::not_found(format!(
            "VM {id} has no VMM log (not started yet, or destroyed)"
        ))),
    }
}

async fn delete_vm(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    find(&s, &caller, &id).await?;
    let rec = s.runtime.destroy(&id).await.map_err(runtime_error)?;
    Ok(Json(
        serde_json::json!({"vmId": rec.vm_id, "status": rec.status}),
    ))
}

async fn hibernate(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    find(&s, &caller, &id).await?;
    let rec = s.runtime.hibernate(&id).await.map_err(runtime_error)?;
    Ok(Json(vm_json(&rec)))
}

async fn resume(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    find(&s, &caller, &id).await?;
    let rec = s.runtime.resume(&id).await.map_err(runtime_error)?;
    Ok(Json(vm_json(&rec)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthStart {
    user_id: String,
    provider: String,
    /// A WebRTC offer for the live view, kept until the browser VM is ready.
    #[serde(default)]
    webrtc_offer: Option<serde_json::Value>,
}

fn flow_error(e: crate::auth_flow::FlowError) -> Response {
    use crate::auth_flow::FlowError as F;
    match e {
        F::RateLimited(secs) => {
            let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
                .into_response();
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
            r
        }
        F::NotFound(_) => ApiError::not_found(e.to_string()).into_response(),
        F::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m).into_response(),
        F::Agent(m) => ApiError::new(StatusCode::BAD_GATEWAY, "agent_error", m).into_response(),
        F::Runtime(r) => runtime_error(r).into_response(),
    }
}

fn session_json(s: &polydev_store::AuthSession) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let (Some(o), Some(vm)) = (v.as_object_mut(), &s.browser_vm_id) {
        o.insert("consoleUrl".into(), format!("/api/vms/{vm}/console").into());
    }
    v
}

async fn auth_start(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    body: Result<Json<AuthStart>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    validate_user_id(&body.user_id)?;
    caller.act_for(&body.user_id)?;
    let provider: polydev_core::auth::Provider =
        body.provider
            .parse()
            .map_err(|e: polydev_core::ParseEnumError| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_provider",
                    e.to_string(),
                )
            })?;
    let offer = match body.webrtc_offer.as_ref().filter(|v| !v.is_null()) {
        Some(v) => Some(
            crate::live::signaling::offer_sdp(v)
                .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_offer", m))?,
        ),
        None => None,
    };
    let sess = match s.auth.start(&body.user_id, provider).await {
        Ok(x) => x,
        Err(e) => return Ok(flow_error(e)),
    };
    if let Some(sdp) = offer {
        crate::live::signaling::accept_offer(&s.runtime, &sess.session_id, &sdp).await?;
    }
    Ok(Json(serde_json::json!({
        "success": true,
        "sessionId": sess.session_id,
        "provider": sess.provider,
        "status": sess.status,
        "novncURL": null,
        "browserIP": null,
    }))
    .into_response())
}

/// The sign-in session `id` if the caller sees it (404 alike otherwise).
async fn own_session(
    s: &AppState,
    caller: &crate::auth::Caller,
    id: &str,
) -> Result<polydev_store::AuthSession, ApiError> {
    let missing = || format!("no sign-in session {id}");
    let sess = s
        .runtime
        .store()
        .get_auth_session(id)
        .await?
        .ok_or_else(|| ApiError::not_found(missing()))?;
    caller.owns(&sess.user_id, missing)?;
    Ok(sess)
}

async fn auth_session(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    own_session(&s, &caller, &id).await?;
    Ok(match s.auth.get(&id).await {
        Ok(sess) => Json(serde_json::json!({"success": true, "session": session_json(&sess)}))
            .into_response(),
        Err(e) => flow_error(e),
    })
}

async fn auth_cancel(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    own_session(&s, &caller, &id).await?;
    Ok(match s.auth.cancel(&id).await {
        Ok(sess) => Json(serde_json::json!({"success": true, "session": session_json(&sess)}))
            .into_response(),
        Err(e) => flow_error(e),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

/// `POST /api/auth/session/:id/code {code}`: the code the provider's page
/// showed, typed into the CLI in the browser VM.
async fn auth_code(
    State(s): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    Path(id): Path<String>,
    body: Result<Json<CodeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    own_session(&s, &caller, &id).await?;
    Ok(match s.auth.submit_code(&id, &body.code).await {
        Ok(()) => Json(serde_json::json!({"success": true})).into_response(),
        Err(e) => flow_error(e),
    })
}

/// Fallback for unknown routes.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
