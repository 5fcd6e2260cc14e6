//! Counters the streamer reports (`{"op":"stats"}`, the agent's
//! `GET /webrtc/stats`), shared by its threads.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Live counters.
#[derive(Debug, Default)]
pub struct Stats {
    connected: AtomicBool,
    width: AtomicU32,
    height: AtomicU32,
    frames_encoded: AtomicU64,
    frames_sent: AtomicU64,
    input_events: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of the counters, in the wire shape of `docs/LIVE_VIEW.md`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatsSnapshot {
    /// A viewer is connected (ICE and DTLS up).
    pub connected: bool,
    /// Always `"VP8"`.
    pub codec: &'static str,
    /// Screen width.
    pub width: u32,
    /// Screen height.
    pub height: u32,
    /// Frames out of the encoder since start.
    pub frames_encoded: u64,
    /// Frames handed to a peer since start.
    pub frames_sent: u64,
    /// Input messages carried out since start.
    pub input_events: u64,
    /// The last error (capture, encoding, input, peer), if any.
    pub last_error: Option<String>,
}

impl Stats {
    /// Marks the viewer connected or not.
    pub fn set_connected(&self, v: bool) {
        self.connected.store(v, Ordering::Relaxed);
    }
    /// Records the screen size.
    pub fn set_size(&self, w: u16, h: u16) {
        self.width.store(w as u32, Ordering::Relaxed);
        self.height.store(h as u32, Ordering::Relaxed);
    }
    /// One more encoded frame.
    pub fn frame_encoded(&self) {
        self.frames_encoded.fetch_add(1, Ordering::Relaxed);
    }
    /// One more frame sent.
    pub fn frame_sent(&self) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
    }
    /// One more input message carried out.
    pub fn input_event(&self) {
        self.input_events.fetch_add(1, Ordering::Relaxed);
    }
    /// Records an error (and logs it).
    pub fn error(&self, e: impl Into<String>) {
        let e = e.into();
        tracing::warn!("{e}");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
    /// A copy of everything.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            codec: "VP8",
            width: self.width.load(Ordering::Relaxed),
            height: self.height.load(Ordering::Relaxed),
            frames_encoded: self.frames_encoded.load(Ordering::Relaxed),
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            input_events: self.input_events.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_has_the_wire_names() {
        let s = Stats::default();
        s.set_size(1280, 800);
        s.frame_encoded();
        s.error("boom");
        let v = serde_json::to_value(s.snapshot()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"connected": false, "codec": "VP8", "width": 1280, "height": 800,
                "framesEncoded": 1, "framesSent": 0, "inputEvents": 0, "lastError": "boom"})
        );
    }
}
