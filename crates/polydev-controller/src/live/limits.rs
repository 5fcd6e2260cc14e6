//! Per-session caps of the live view, so that one viewer cannot make the
//! controller open unbounded connections into a VM or unbounded agent calls:
//! concurrent VNC WebSockets, offers, and ICE candidates forwarded per offer.

use crate::error::ApiError;
use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// VNC WebSockets open at once into one session's VM.
pub const MAX_WEBSOCKETS: usize = 4;
/// WebRTC offers one session may post in its life (each costs agent calls
/// and a relay).
pub const MAX_OFFERS: usize = 32;
/// Viewer ICE candidates taken per offer (each is one agent call).
pub const MAX_CANDIDATES: usize = 64;

static SOCKETS: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Default::default);

fn sockets() -> std::sync::MutexGuard<'static, HashMap<String, usize>> {
    SOCKETS.lock().unwrap_or_else(|e| e.into_inner())
}

/// One open WebSocket of a session; dropping it frees the slot.
#[derive(Debug)]
pub struct SocketSlot(String);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut m = sockets();
        if let Some(n) = m.get_mut(&self.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.0);
            }
        }
    }
}

/// Takes a WebSocket slot of `session_id`, or 429 when it has
/// [`MAX_WEBSOCKETS`] open.
pub fn take_socket(session_id: &str) -> Result<SocketSlot, ApiError> {
    let mut m = sockets();
    let n = m.entry(session_id.to_string()).or_default();
    if *n >= MAX_WEBSOCKETS {
        return Err(too_many(format!(
            "session {session_id} already has {MAX_WEBSOCKETS} live-view connections open; close one first"
        )));
    }
    *n += 1;
    Ok(SocketSlot(session_id.to_string()))
}

/// Open WebSockets of a session (for tests and status).
pub fn open_sockets(session_id: &str) -> usize {
    sockets().get(session_id).copied().unwrap_or(0)
}

/// A 429 `too_many` naming what was refused.
pub fn too_many(message: String) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many", message)
}

/// Counts against a cap: `used + more` must stay within `cap`.
pub fn admit(used: usize, more: usize, cap: usize, what: &str) -> Result<(), ApiError> {
    if used.saturating_add(more) > cap {
        return Err(too_many(format!(
            "at most {cap} {what} per session ({used} taken, {more} more asked)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_slots_are_capped_and_freed() {
        let id = "as_limits_test";
        let slots: Vec<_> = (0..MAX_WEBSOCKETS)
            .map(|_| take_socket(id).unwrap())
            .collect();
        let e = take_socket(id).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(take_socket("as_other").is_ok(), "another session is free");
        drop(slots);
        assert_eq!(open_sockets(id), 0);
        assert!(take_socket(id).is_ok());
    }

    #[test]
    fn admit_counts() {
        assert!(admit(0, 64, 64, "candidates").is_ok());
        assert!(admit(60, 5, 64, "candidates").is_err());
    }
}
