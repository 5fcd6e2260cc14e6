//! `polydev-streamer`: the browser VM's live view over WebRTC.
//!
//! The streamer captures an X display, encodes it as VP8 and sends it to
//! one viewer over a WebRTC peer connection; the viewer's input comes back
//! on a data channel and is injected with XTest. The agent starts it on
//! the first offer and talks to it over stdin/stdout (see
//! `docs/LIVE_VIEW.md`).
//!
//! | module | job |
//! |---|---|
//! | [`capture`] | the root window through MIT-SHM (or `GetImage`), changes from DAMAGE |
//! | [`convert`] | 32-bit pixels → I420 |
//! | [`encode`] | VP8 with libvpx (static), realtime settings |
//! | [`vpx`] | the libvpx FFI declarations |
//! | [`pipeline`] | the video thread: change → capture → convert → encode, paced |
//! | [`input`] | data-channel messages → XTest events |
//! | [`peer`] | the UDP socket and the str0m peer (ICE-lite), the network thread |
//! | [`control`] | the JSON-lines protocol on stdin/stdout |
//! | [`stats`] | counters for `{"op":"stats"}` |
//! | [`bench`] | per-stage timings on a display |
//! | [`viewer`] | a str0m viewer (the browser's side), for tests |
//! | [`xvfb`] | a private Xvfb, for tests |

#![warn(missing_docs)]

pub mod bench;
pub mod capture;
pub mod control;
pub mod convert;
pub mod encode;
pub mod input;
pub mod peer;
pub mod pipeline;
pub mod stats;
pub mod viewer;
pub mod vpx;
pub mod xvfb;

pub use peer::{Answer, IceCandidate, StartError, Streamer, StreamerConfig};
