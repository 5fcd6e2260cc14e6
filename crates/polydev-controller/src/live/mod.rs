//! The live view: how a user watches and drives a sign-in session's browser
//! VM from their own page (docs/LIVE_VIEW.md is the contract).
//!
//! One job per file:
//! - [`token`]: short-lived view tokens (HMAC-SHA256, key derived from the
//!   vault master key) bound to a user, a session, an expiry and read-only.
//! - [`access`]: API key or view token, allowed origins, base URL.
//! - [`novnc`]: the noVNC client's files (Debian's `novnc` package) and the
//!   WebSocket → VNC proxy into the VM's network namespace.
//! - [`rfb`]: the RFB client-message framing behind read-only mode.
//! - [`ice`]: ICE servers, with per-session TURN REST credentials that live
//!   no longer than the caller's view token (none for read-only tokens).
//! - [`limits`]: per-session caps on WebSockets, offers and candidates.
//! - [`signaling`]: offers, answers and candidates, stored with the session
//!   and handed to the guest's agent once the VM is ready.
//! - [`sdp`]: rewriting the guest's candidate to the media relay.
//! - [`relay`]: the per-session UDP media relay into the VM's namespace.
//! - [`viewer`]: the viewer page (WebRTC, falling back to noVNC).
//!
//! Walls: it reaches VMs only through the runtime (agent calls, records) and
//! `polydev_net::netns` sockets; it changes no session status. The flow
//! calls [`session_ready`] once when a session becomes `ready`.

pub mod access;
pub mod ice;
pub mod limits;
pub mod novnc;
pub mod relay;
pub mod rfb;
pub mod sdp;
pub mod signaling;
pub mod token;
pub mod viewer;

use crate::config::LiveConfig;
use crate::runtime::Runtime;
use crate::AppState;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

/// Shared state of the live-view handlers.
pub struct Live {
    /// The rest of the application.
    pub app: AppState,
    tokens: token::TokenKey,
}

impl Live {
    /// The live view over the application; its token key is derived from
    /// the vault's current master key.
    pub fn new(app: AppState) -> Live {
        let tokens = token::TokenKey::from_keyring(app.auth.vault());
        Live { app, tokens }
    }

    /// The live-view settings.
    pub fn cfg(&self) -> &LiveConfig {
        &self.app.runtime.config().live
    }

    /// The runtime.
    pub fn rt(&self) -> &Arc<Runtime> {
        &self.app.runtime
    }

    /// Mints a view token.
    pub fn mint(&self, claims: &token::Claims) -> String {
        self.tokens.mint(claims)
    }

    /// Checks a view token's signature and expiry.
    pub fn verify(&self, t: &str) -> Result<token::Claims, token::TokenError> {
        self.tokens.verify(t, polydev_core::vm::now_ms())
    }
}

/// The live view's routes, merged into the application by `crate::app`.
/// Only minting a token needs the API key; the noVNC files are public; the
/// VNC WebSocket and the viewer page take a view token; signaling takes
/// either.
pub fn routes(state: AppState) -> Router<AppState> {
    let live = Arc::new(Live::new(state.clone()));
    let with_api_key = Router::new()
        .route("/api/auth/session/{id}/novnc", get(novnc::mint))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::auth::require_api_key,
        ));
    Router::new()
        .route("/novnc/{*path}", get(novnc::static_file))
        .route("/api/live/{id}/vnc", get(novnc::proxy))
        .route("/api/webrtc/ice-servers", get(ice::ice_servers_route))
        .route(
            "/api/webrtc/session/{id}/offer",
            post(signaling::post_offer).get(signaling::get_offer),
        )
        .route(
            "/api/webrtc/session/{id}/answer",
            get(signaling::get_answer).post(signaling::get_answer),
        )
        .route(
            "/api/webrtc/session/{id}/candidates",
            post(signaling::post_candidates),
        )
        .route("/viewer/{id}", get(viewer::page))
        .merge(with_api_key)
        .with_state(live)
}

/// Called by the connect flow when a session becomes `ready`: hands an offer
/// stored earlier to the VM's agent (in the background; never fails the flow).
pub fn session_ready(rt: &Arc<Runtime>, session_id: &str) {
    signaling::kick(rt.clone(), session_id.to_string());
}
