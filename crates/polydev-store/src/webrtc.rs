//! WebRTC signaling state of a sign-in session's live view: the viewer's
//! offer and the guest streamer's answer, kept in `auth_sessions` so that an
//! offer posted before the browser VM exists survives until the VM is ready.
//! A new offer clears the answer; an answer is recorded only for the offer it
//! answers (compare-and-set), so a late answer never pairs with a newer offer.

use sqlx::Row;

use crate::error::Result;
use crate::Store;

/// Statuses in which a session may still take an offer.
const ACTIVE: &str = "('initializing', 'vm_created', 'ready', 'awaiting_user_auth')";

/// A session's signaling state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebrtcSignal {
    /// The viewer's SDP offer.
    pub offer: Option<String>,
    /// The streamer's SDP answer (candidates rewritten to the media relay).
    pub answer: Option<String>,
    /// The answer's candidates: a JSON array of `{candidate, sdpMid, sdpMLineIndex}`.
    pub candidates: Option<String>,
}

impl Store {
    /// Records a session's offer, clearing any earlier answer. Returns false
    /// when the session does not exist or has ended.
    pub async fn set_webrtc_offer(&self, session_id: &str, sdp: &str) -> Result<bool> {
        let r = sqlx::query(&format!(
            "UPDATE auth_sessions SET webrtc_offer = $1, webrtc_answer = NULL, webrtc_candidates = NULL \
             WHERE session_id = $2 AND status IN {ACTIVE}"
        ))
        .bind(sdp)
        .bind(session_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("store webrtc offer of {session_id:?}"), e))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records the answer to `offer` (compare-and-set on the offer). Returns
    /// false when the session's offer has changed since, or it has ended.
    pub async fn set_webrtc_answer(
        &self,
        session_id: &str,
        offer: &str,
        answer: &str,
        candidates_json: &str,
    ) -> Result<bool> {
        let r = sqlx::query(&format!(
            "UPDATE auth_sessions SET webrtc_answer = $1, webrtc_candidates = $2 \
             WHERE session_id = $3 AND webrtc_offer = $4 AND status IN {ACTIVE}"
        ))
        .bind(answer)
        .bind(candidates_json)
        .bind(session_id)
        .bind(offer)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("store webrtc answer of {session_id:?}"), e))?;
        Ok(r.rows_affected() == 1)
    }

    /// A session's signaling state; `None` if there is no such session.
    pub async fn get_webrtc(&self, session_id: &str) -> Result<Option<WebrtcSignal>> {
        let row = sqlx::query(
            "SELECT webrtc_offer, webrtc_answer, webrtc_candidates FROM auth_sessions \
             WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("read webrtc state of {session_id:?}"), e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let get = |c: &str| -> Result<Option<String>> {
            row.try_get(c)
                .map_err(|e| self.query_err(format!("read {c} of {session_id:?}"), e))
        };
        Ok(Some(WebrtcSignal {
            offer: get("webrtc_offer")?,
            answer: get("webrtc_answer")?,
            candidates: get("webrtc_candidates")?,
        }))
    }

    /// Forgets a session's signaling state (its SDPs carry ICE passwords and
    /// DTLS fingerprints that are of no use once the session has ended).
    pub async fn clear_webrtc(&self, session_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE auth_sessions SET webrtc_offer = NULL, webrtc_answer = NULL, \
             webrtc_candidates = NULL WHERE session_id = $1",
        )
        .bind(session_id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.query_err(format!("clear webrtc state of {session_id:?}"), e))?;
        Ok(())
    }
}
