//! WebRTC signaling between a viewer and the guest streamer, through the
//! controller:
//!
//! - `POST /api/webrtc/session/:id/offer {sdp | offer}` stores the offer with
//!   the session (so an offer sent before the browser VM exists, or as
//!   `webrtcOffer` to `POST /api/auth/start`, is kept) and, once the session
//!   is `ready`, hands it to the agent's `POST /webrtc/offer`.
//! - `GET /api/webrtc/session/:id/answer` → `{success, answer, candidates,
//!   pending}`: the streamer's answer with its candidate rewritten to the
//!   session's media relay ([`super::relay`]); `pending` while it is coming;
//!   502 `webrtc_failed` with the agent's reason when it could not be had.
//!   `POST` does the same (the original API's clients use it).
//! - `GET .../offer` → `{success, offer}`.
//! - `POST .../candidates` takes the viewer's trickled candidates and
//!   forwards them to the agent's `POST /webrtc/candidate` once there is a
//!   VM with a peer (they wait in memory until then).
//!
//! Each accepts the API key or the session's view token, but not a
//! read-only one: input over a data channel cannot be filtered.
//!
//! Per-process state (the relays, delivery failures, waiting candidates)
//! lives in a registry keyed by session id; a watchdog per entry drops it,
//! and the session's stored SDPs, when the session ends.

use super::access::{self, Caller};
use super::relay::Relay;
use super::Live;
use crate::error::ApiError;
use crate::runtime::Runtime;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use polydev_core::auth::SessionStatus;
use polydev_core::vm::VmStatus;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// Candidates kept per session while there is no VM to give them to.
const MAX_PENDING: usize = 64;

/// The guest streamer's address inside every browser VM's namespace.
pub fn guest_stream_addr() -> SocketAddr {
    SocketAddr::from((
        polydev_core::guest::GUEST_ADDR
            .parse::<std::net::Ipv4Addr>()
            .expect("constant"),
        polydev_core::guest::STREAM_PORT,
    ))
}

#[derive(Default)]
struct Entry {
    relay: Option<Relay>,
    /// (SHA-256 of the offer, why it could not be answered).
    failed: Option<(String, String)>,
    pending: Vec<Value>,
    /// Offers posted in the session's life.
    offers: usize,
    /// Viewer candidates taken since the last offer.
    candidates: usize,
    lock: Arc<tokio::sync::Mutex<()>>,
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Entry>>> = LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, HashMap<String, Entry>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn offer_hash(sdp: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(sdp.as_bytes()))
}

/// The session's entry lock, creating the entry (and its watchdog) if new.
fn entry_lock(rt: &Arc<Runtime>, id: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut reg = registry();
    if let Some(e) = reg.get(id) {
        return e.lock.clone();
    }
    let e = Entry::default();
    let lock = e.lock.clone();
    reg.insert(id.to_string(), e);
    tokio::spawn(watchdog(rt.clone(), id.to_string()));
    lock
}

/// Drops a session's entry (its relay stops) and its stored SDPs once the
/// session has ended or its browser VM is gone.
async fn watchdog(rt: Arc<Runtime>, id: String) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = match rt.store().get_auth_session(&id).await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let vm_gone = match s.as_ref().and_then(|s| s.browser_vm_id.clone()) {
            Some(vm) => matches!(
                rt.store().get_vm(&vm).await.map(|r| r.map(|r| r.status)),
                Ok(None | Some(VmStatus::Destroyed | VmStatus::Failed))
            ),
            None => false,
        };
        let ended = s.as_ref().map(|s| s.status.is_terminal()).unwrap_or(true);
        if ended || vm_gone {
            let had_relay = registry()
                .remove(&id)
                .map(|e| e.relay.is_some())
                .unwrap_or(false);
            if ended {
                let _ = rt.store().clear_webrtc(&id).await;
            }
            tracing::info!(session_id = %id, had_relay, "live view of the session closed");
            return;
        }
    }
}

/// The media relay's public address for a session, if it has one here.
pub fn relay_addr(session_id: &str) -> Option<SocketAddr> {
    registry()
        .get(session_id)
        .and_then(|e| e.relay.as_ref().map(|r| r.public_addr()))
}

/// Hands the session's stored offer to its VM in the background, if the
/// session is ready and the offer is not answered yet (idempotent).
pub fn kick(rt: Arc<Runtime>, session_id: String) {
    tokio::spawn(async move {
        if let Err(e) = deliver(&rt, &session_id, true).await {
            tracing::warn!(session_id = %session_id, error = %e, "WebRTC offer not answered");
        }
    });
}

/// Like [`kick`], but does nothing while a delivery is running.
fn nudge(rt: Arc<Runtime>, session_id: String) {
    tokio::spawn(async move {
        if let Err(e) = deliver(&rt, &session_id, false).await {
            tracing::warn!(session_id = %session_id, error = %e, "WebRTC offer not answered");
        }
    });
}

/// Delivers the stored offer to the agent, rewrites and stores the answer.
/// `wait`: wait for a running delivery to finish first, else return at once.
pub async fn deliver(rt: &Arc<Runtime>, id: &str, wait: bool) -> Result<(), String> {
    let lock = entry_lock(rt, id);
    let _g = if wait {
        lock.lock().await
    } else {
        match lock.try_lock() {
            Ok(g) => g,
            Err(_) => return Ok(()),
        }
    };
    let store = rt.store();
    let Some(s) = store
        .get_auth_session(id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    if !matches!(
        s.status,
        SessionStatus::Ready | SessionStatus::AwaitingUserAuth
    ) {
        return Ok(());
    }
    let sig = store
        .get_webrtc(id)
        .await
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let Some(offer) = sig.offer else {
        return Ok(());
    };
    let hash = offer_hash(&offer);
    {
        let reg = registry();
        let e = reg.get(id);
        let has_relay = e.map(|e| e.relay.is_some()).unwrap_or(false);
        if sig.answer.is_some() && has_relay {
            return Ok(());
        }
        if e.and_then(|e| e.failed.as_ref()).map(|f| f.0 == hash) == Some(true) {
            return Ok(());
        }
    }
    let fail = |msg: String| {
        if let Some(e) = registry().get_mut(id) {
            e.failed = Some((hash.clone(), msg.clone()));
        }
        Err(msg)
    };
    let Some(vm_id) = s.browser_vm_id.clone() else {
        return fail("the session has no browser VM".into());
    };
    let rec = match store.get_vm(&vm_id).await {
        Ok(Some(r)) if r.status == VmStatus::Running => r,
        Ok(_) => return fail(format!("the browser VM {vm_id} is not running")),
        Err(e) => return Err(e.to_string()),
    };
    // The relay first: its address goes into the answer.
    let public = match relay_addr(id) {
        Some(a) => a,
        None => {
            let relay =
                match Relay::start(&rec.netns, rt.config().live.media_addr, guest_stream_addr())
                    .await
                {
                    Ok(r) => r,
                    Err(e) => return fail(format!("starting the media relay: {e}")),
                };
            let a = relay.public_addr();
            if let Some(e) = registry().get_mut(id) {
                e.relay = Some(relay);
            }
            tracing::info!(session_id = %id, relay = %a, "media relay started");
            a
        }
    };
    let resp = match rt
        .agent_call(
            &rec,
            "POST",
            "/webrtc/offer",
            Some(json!({ "sdp": offer })),
            Duration::from_secs(60),
        )
        .await
    {
        Ok(v) => v,
        Err(e) => {
            return fail(format!(
                "the browser VM's agent did not answer the offer: {e}"
            ))
        }
    };
    let answer = match guest_answer(&resp, guest_stream_addr(), public) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let GuestAnswer {
        sdp: rewritten,
        candidates,
        ufrag,
    } = answer;
    if let Some(e) = registry().get(id) {
        if let Some(r) = &e.relay {
            r.expect(ufrag);
        }
    }
    let stored = store
        .set_webrtc_answer(id, &offer, &rewritten, &Value::from(candidates).to_string())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(session_id = %id, stored, relay = %public, "WebRTC answer from the guest");
    // Candidates the viewer sent while there was no peer yet.
    let pending = registry()
        .get_mut(id)
        .map(|e| std::mem::take(&mut e.pending))
        .unwrap_or_default();
    forward_candidates(rt, &rec, id, pending).await;
    Ok(())
}

/// A guest streamer's answer, checked and rewritten to the relay.
#[derive(Debug)]
struct GuestAnswer {
    /// The answer's SDP naming the relay.
    sdp: String,
    /// The candidates beside it that name the streamer, rewritten.
    candidates: Vec<Value>,
    /// The answer's ICE username fragment.
    ufrag: Option<String>,
}

/// The answer in the agent's reply to an offer (`{answer: sdp | {sdp},
/// candidates?}`), bounded ([`super::sdp::check_answer`], at most
/// [`super::sdp::MAX_ANSWER_CANDIDATES`] candidates beside it) and rewritten
/// from the streamer's address `guest` to the relay's `public`.
fn guest_answer(
    resp: &Value,
    guest: SocketAddr,
    public: SocketAddr,
) -> Result<GuestAnswer, String> {
    use super::sdp;
    let Some(answer) = resp
        .get("answer")
        .and_then(|a| a.as_str().or_else(|| a.get("sdp").and_then(|s| s.as_str())))
    else {
        let shown: String = resp.to_string().chars().take(200).collect();
        return Err(format!("the agent's reply has no answer: {shown}"));
    };
    sdp::check_answer(answer).map_err(|e| format!("the guest's WebRTC answer is refused: {e}"))?;
    let listed = resp
        .get("candidates")
        .and_then(|c| c.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    if listed.len() > sdp::MAX_ANSWER_CANDIDATES {
        return Err(format!(
            "the guest's WebRTC answer is refused: {} candidates, more than {}",
            listed.len(),
            sdp::MAX_ANSWER_CANDIDATES
        ));
    }
    let candidates = listed
        .iter()
        .filter_map(|c| {
            let text = c.get("candidate")?.as_str()?;
            if text.len() > sdp::MAX_CANDIDATE_BYTES {
                return None;
            }
            let new = sdp::rewrite_candidate(text, guest, public)?;
            let mut out = json!({ "candidate": new });
            for k in ["sdpMid", "sdpMLineIndex"] {
                match c.get(k) {
                    Some(Value::String(s)) if s.len() <= 64 => out[k] = s.as_str().into(),
                    Some(v @ Value::Number(_)) if v.is_u64() => out[k] = v.clone(),
                    _ => {}
                }
            }
            Some(out)
        })
        .collect();
    Ok(GuestAnswer {
        sdp: sdp::rewrite_answer(answer, guest, public),
        candidates,
        ufrag: sdp::ice_ufrag(answer),
    })
}

/// The SDP of an offer given as a string, `{sdp}`, `{type: "offer", sdp}`
/// or `{offer: <any of these>}`.
pub fn offer_sdp(v: &Value) -> Result<String, String> {
    let sdp = match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            if let Some(t) = o.get("type").and_then(|t| t.as_str()) {
                if t != "offer" {
                    return Err(format!("expected an offer, got type {t:?}"));
                }
            }
            match (o.get("sdp"), o.get("offer")) {
                (Some(Value::String(s)), _) => s.clone(),
                (_, Some(inner)) => return offer_sdp(inner),
                _ => return Err("the body must carry the offer as `sdp` or `offer`".into()),
            }
        }
        _ => return Err("the offer must be an SDP string or an object with `sdp`".into()),
    };
    super::sdp::check_offer(&sdp)?;
    Ok(sdp)
}

/// Stores an offer for a session and hands it to the VM if it is ready.
pub async fn accept_offer(rt: &Arc<Runtime>, id: &str, sdp: &str) -> Result<(), ApiError> {
    entry_lock(rt, id);
    {
        let mut reg = registry();
        if let Some(e) = reg.get_mut(id) {
            super::limits::admit(e.offers, 1, super::limits::MAX_OFFERS, "WebRTC offers")?;
            e.offers += 1;
        }
    }
    if !rt.store().set_webrtc_offer(id, sdp).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_ended",
            format!("session {id} has ended or does not exist"),
        ));
    }
    if let Some(e) = registry().get_mut(id) {
        e.failed = None;
        e.pending.clear();
        e.candidates = 0;
    }
    kick(rt.clone(), id.to_string());
    Ok(())
}

/// `?token=` for signaling calls made without an Authorization header.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

async fn writer(
    live: &Live,
    headers: &HeaderMap,
    q: &TokenQuery,
    id: &str,
) -> Result<(Caller, polydev_store::AuthSession), ApiError> {
    let caller = access::caller(live, headers, q.token.as_deref()).await?;
    let s = access::session_for(live, &caller, id).await?;
    if caller.read_only() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "a read-only view token cannot open a WebRTC session (input over its data channel cannot be filtered); use noVNC",
        ));
    }
    Ok((caller, s))
}

/// `POST /api/webrtc/session/:id/offer`.
pub async fn post_offer(
    State(live): State<Arc<Live>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let (_, s) = writer(&live, &headers, &q, &id).await?;
    let Json(body) = body?;
    let sdp = offer_sdp(&body)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_offer", m))?;
    accept_offer(live.rt(), &id, &sdp).await?;
    tracing::info!(session_id = %id, status = %s.status, "WebRTC offer stored");
    Ok(Json(json!({
        "success": true,
        "sessionId": id,
        "status": s.status,
        "pending": true,
    }))
    .into_response())
}

/// `GET /api/webrtc/session/:id/offer`.
pub async fn get_offer(
    State(live): State<Arc<Live>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    writer(&live, &headers, &q, &id).await?;
    let sig = live.rt().store().get_webrtc(&id).await?.unwrap_or_default();
    Ok(Json(json!({"success": true, "sessionId": id, "offer": sig.offer})).into_response())
}

/// `GET|POST /api/webrtc/session/:id/answer`.
pub async fn get_answer(
    State(live): State<Arc<Live>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, s) = writer(&live, &headers, &q, &id).await?;
    let sig = live.rt().store().get_webrtc(&id).await?.unwrap_or_default();
    if let Some(offer) = &sig.offer {
        let failed = registry()
            .get(&id)
            .and_then(|e| e.failed.clone())
            .filter(|f| f.0 == offer_hash(offer));
        if let Some((_, why)) = failed {
            return Err(ApiError::new(StatusCode::BAD_GATEWAY, "webrtc_failed", why));
        }
    }
    let here = relay_addr(&id).is_some();
    if let (Some(answer), true) = (&sig.answer, here) {
        let candidates: Value = sig
            .candidates
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_else(|| json!([]));
        return Ok(Json(json!({
            "success": true,
            "sessionId": id,
            "answer": answer,
            "candidates": candidates,
            "pending": false,
        }))
        .into_response());
    }
    let live_now = matches!(
        s.status,
        SessionStatus::Ready | SessionStatus::AwaitingUserAuth
    );
    if sig.offer.is_some() && live_now {
        // Not answered (or answered by a controller process that is gone).
        nudge(live.rt().clone(), id.clone());
    }
    Ok(Json(json!({
        "success": true,
        "sessionId": id,
        "status": s.status,
        "answer": null,
        "candidates": [],
        "pending": sig.offer.is_some() && !s.status.is_terminal(),
    }))
    .into_response())
}

/// A viewer candidate as the agent takes it, from `{candidate, sdpMid,
/// sdpMLineIndex}`.
pub fn viewer_candidate(v: &Value) -> Result<Value, String> {
    let c = v
        .get("candidate")
        .and_then(|c| c.as_str())
        .ok_or("each candidate needs a `candidate` string")?;
    if c.len() > 1024 || c.chars().any(char::is_control) {
        return Err("a candidate must be at most 1024 printable characters".into());
    }
    if !c.is_empty() && !c.starts_with("candidate:") {
        return Err(format!("not an ICE candidate: {c:?}"));
    }
    let mid = v.get("sdpMid").and_then(|m| m.as_str());
    if mid.map(|m| m.len() > 64).unwrap_or(false) {
        return Err("sdpMid is too long".into());
    }
    let idx = v.get("sdpMLineIndex").and_then(|i| i.as_u64());
    Ok(json!({"candidate": c, "sdpMid": mid, "sdpMLineIndex": idx}))
}

/// `POST /api/webrtc/session/:id/candidates` (`{candidate, sdpMid,
/// sdpMLineIndex}` or `{candidates: [...]}`).
pub async fn post_candidates(
    State(live): State<Arc<Live>>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let (_, s) = writer(&live, &headers, &q, &id).await?;
    let Json(body) = body?;
    let list: Vec<Value> = match body.get("candidates") {
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "`candidates` must be an array",
            ))
        }
        None => vec![body],
    };
    if list.len() > MAX_PENDING {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("at most {MAX_PENDING} candidates at once"),
        ));
    }
    let cands = list
        .iter()
        .map(viewer_candidate)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_candidate", m))?;
    if s.status.is_terminal() {
        return Err(access::live_now(&s).unwrap_err());
    }
    let sig = live.rt().store().get_webrtc(&id).await?.unwrap_or_default();
    let answered = sig.answer.is_some() && relay_addr(&id).is_some();
    let vm = match (&s.browser_vm_id, answered) {
        (Some(vm), true) => live
            .rt()
            .store()
            .get_vm(vm)
            .await?
            .filter(|r| r.status == VmStatus::Running),
        _ => None,
    };
    let n = cands.len();
    entry_lock(live.rt(), &id);
    {
        let mut reg = registry();
        if let Some(e) = reg.get_mut(&id) {
            super::limits::admit(
                e.candidates,
                n,
                super::limits::MAX_CANDIDATES,
                "ICE candidates per offer",
            )?;
            e.candidates += n;
        }
    }
    match vm {
        Some(rec) => {
            let rt = live.rt().clone();
            let sid = id.clone();
            tokio::spawn(async move {
                forward_candidates(&rt, &rec, &sid, cands).await;
            });
            Ok(Json(json!({"success": true, "accepted": n, "forwarded": true})).into_response())
        }
        None => {
            let mut reg = registry();
            let e = reg.entry(id.clone()).or_default();
            e.pending.extend(cands);
            let excess = e.pending.len().saturating_sub(MAX_PENDING);
            e.pending.drain(..excess);
            Ok(Json(json!({"success": true, "accepted": n, "forwarded": false})).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str =
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";

    #[test]
    fn offers_in_every_accepted_shape() {
        for v in [
            json!(OFFER),
            json!({"sdp": OFFER}),
            json!({"type": "offer", "sdp": OFFER}),
            json!({"offer": OFFER}),
            json!({"offer": {"type": "offer", "sdp": OFFER}}),
        ] {
            assert_eq!(offer_sdp(&v).as_deref(), Ok(OFFER), "{v}");
        }
        assert!(offer_sdp(&json!({"type": "answer", "sdp": OFFER})).is_err());
        assert!(offer_sdp(&json!({"sdp": "hello"})).is_err());
        assert!(offer_sdp(&json!(42)).is_err());
        assert!(offer_sdp(&json!({})).is_err());
    }

    #[test]
    fn guest_answers_are_bounded_and_rewritten() {
        let guest = guest_stream_addr();
        let public: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let sdp = "v=0\r\nm=video 7071 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:uF\r\na=candidate:1 1 udp 1 169.254.0.22 7071 typ host\r\n";
        let cand = |t: &str| json!({"candidate": t, "sdpMid": "0", "sdpMLineIndex": 0, "extra": "x".repeat(100)});
        let ok = json!({"answer": {"sdp": sdp}, "candidates": [
            cand("candidate:1 1 udp 1 169.254.0.22 7071 typ host"),
            cand("candidate:2 1 udp 1 10.0.0.9 7071 typ host"),
        ]});
        let a = guest_answer(&ok, guest, public).unwrap();
        assert!(a.sdp.contains("203.0.113.9 40000") && !a.sdp.contains("169.254"));
        assert_eq!(a.ufrag.as_deref(), Some("uF"));
        assert_eq!(
            a.candidates,
            vec![
                json!({"candidate": "candidate:1 1 udp 1 203.0.113.9 40000 typ host", "sdpMid": "0", "sdpMLineIndex": 0})
            ],
            "only the streamer's candidate, only the known fields"
        );

        let many: Vec<Value> = (0..17)
            .map(|_| cand("candidate:1 1 udp 1 169.254.0.22 7071 typ host"))
            .collect();
        let e =
            guest_answer(&json!({"answer": sdp, "candidates": many}), guest, public).unwrap_err();
        assert!(e.contains("17 candidates"), "{e}");
        let huge = format!("{sdp}a=x:{}\r\n", "y".repeat(70_000));
        let e = guest_answer(&json!({"answer": huge}), guest, public).unwrap_err();
        assert!(e.contains("more than 65536"), "{e}");
        let e = guest_answer(&json!({"noise": "z".repeat(100_000)}), guest, public).unwrap_err();
        assert!(e.len() < 300, "the reply is not quoted whole: {}", e.len());
    }

    #[test]
    fn viewer_candidates_are_checked() {
        let c = viewer_candidate(&json!({"candidate": "candidate:1 1 udp 1 192.0.2.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "x"})).unwrap();
        assert_eq!(
            c,
            json!({"candidate": "candidate:1 1 udp 1 192.0.2.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0})
        );
        assert!(
            viewer_candidate(&json!({"candidate": ""})).is_ok(),
            "end of candidates"
        );
        assert!(viewer_candidate(&json!({"candidate": "rm -rf /"})).is_err());
        assert!(viewer_candidate(&json!({"candidate": "candidate:\n"})).is_err());
        assert!(viewer_candidate(&json!({})).is_err());
    }

    // Properties over arbitrary agent replies (see `crate::fuzz`).

    use crate::fuzz::any_json;
    use crate::live::sdp::tests::{
        answer_text, candidate_line, check_rewritten, check_rewritten_answer, relay_addr,
    };
    use proptest::prelude::*;

    /// A reply of the agent to an offer: mostly shaped like a real one.
    fn agent_reply() -> impl Strategy<Value = Value> {
        let field = |real: BoxedStrategy<Value>| prop_oneof![3 => real, 1 => any_json()];
        let answer = prop_oneof![
            answer_text().prop_map(|s| json!(format!("v=0\r\n{s}"))),
            answer_text().prop_map(|s| json!({"sdp": format!("v=0\r\n{s}")})),
        ];
        let candidate = (
            field(candidate_line("candidate:").prop_map(Value::from).boxed()),
            field(".{0,70}".prop_map(Value::from).boxed()),
            field(any::<u64>().prop_map(Value::from).boxed()),
        )
            .prop_map(|(c, m, i)| json!({"candidate": c, "sdpMid": m, "sdpMLineIndex": i}));
        let candidates = proptest::collection::vec(candidate, 0..20).prop_map(Value::from);
        prop_oneof![
            (field(answer.boxed()), field(candidates.boxed()))
                .prop_map(|(a, c)| json!({"answer": a, "candidates": c})),
            any_json(),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(2048))]

        /// Any reply to an offer: no panic; an accepted answer names only
        /// the relay, with at most 16 candidates beside it, each rewritten
        /// and with only the known fields.
        #[test]
        fn accepted_answers_name_only_the_relay(reply in agent_reply(), public in relay_addr()) {
            let Ok(a) = guest_answer(&reply, guest_stream_addr(), public) else {
                return Ok(());
            };
            check_rewritten_answer(&a.sdp, public)?;
            prop_assert!(a.candidates.len() <= crate::live::sdp::MAX_ANSWER_CANDIDATES);
            for c in &a.candidates {
                let o = c.as_object().expect("a candidate is an object");
                let known = ["candidate", "sdpMid", "sdpMLineIndex"];
                prop_assert!(o.keys().all(|k| known.contains(&k.as_str())), "{c}");
                check_rewritten(o["candidate"].as_str().expect("a string"), public)?;
                if let Some(m) = o.get("sdpMid") {
                    prop_assert!(m.as_str().is_some_and(|m| m.len() <= 64) || m.is_u64(), "{c}");
                }
            }
        }

        /// Any JSON as an offer or a viewer candidate: no panic, and what is
        /// accepted passed the offer check or is at most 1024 printable
        /// characters.
        #[test]
        fn viewer_input_is_checked(v in prop_oneof![
            any_json(),
            answer_text().prop_map(|s| json!({"type": "offer", "sdp": format!("v=0\r\n{s}")})),
            candidate_line("candidate:").prop_map(|c| json!({"candidate": c, "sdpMid": "0"})),
        ]) {
            if let Ok(sdp) = offer_sdp(&v) {
                prop_assert!(crate::live::sdp::check_offer(&sdp).is_ok());
            }
            if let Ok(c) = viewer_candidate(&v) {
                let text = c["candidate"].as_str().expect("a string");
                prop_assert!(text.len() <= 1024 && !text.chars().any(char::is_control));
                prop_assert!(c["sdpMid"].as_str().unwrap_or_default().len() <= 64);
            }
        }
    }
}

/// Hands the viewer's ICE candidates to the guest's agent, one by one; a
/// candidate the agent refuses is logged and skipped.
async fn forward_candidates(
    rt: &crate::runtime::Runtime,
    rec: &polydev_store::VmRecord,
    session_id: &str,
    candidates: Vec<serde_json::Value>,
) {
    for c in candidates {
        if let Err(e) = rt
            .agent_call(
                rec,
                "POST",
                "/webrtc/candidate",
                Some(c),
                Duration::from_secs(10),
            )
            .await
        {
            tracing::warn!(session_id, error = %e, "forwarding a viewer candidate");
        }
    }
}
