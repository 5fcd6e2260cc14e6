//! The agent's HTTP API: the router, its shared state and the error shape.
//!
//! Every response that is not a success carries
//! `{"error":{"code":"...","message":"..."}}`. New endpoints (exec, file
//! install) are added to [`router`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::{auth, uptime};

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    /// The VM's id.
    pub vm_id: Arc<str>,
    /// The bearer token every request must carry.
    pub token: Arc<str>,
}

impl AppState {
    /// Builds the state from the agent's configuration.
    pub fn new(config: &polydev_core::guest::AgentConfig) -> Self {
        Self {
            vm_id: config.vm_id.as_str().into(),
            token: config.token.as_str().into(),
        }
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
    /// 401: missing or wrong token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
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
        .fallback(not_found)
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
