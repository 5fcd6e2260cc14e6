//! The read-only filter of the VNC proxy: parses the RFB client → server
//! stream (RFC 6143) and drops every message that would act on the VM.
//!
//! After the handshake (ProtocolVersion, the chosen security type, its
//! response for VNC authentication, ClientInit) each client message is
//! framed by [`client_message`]: `SetPixelFormat`, `SetEncodings`,
//! `FramebufferUpdateRequest`, `EnableContinuousUpdates` and `ClientFence`
//! pass; `KeyEvent`, `PointerEvent`, `ClientCutText`, `SetDesktopSize`, xvp
//! and QEMU key events are dropped; anything else closes the connection
//! (the filter cannot know its length, so it cannot stay in step with the
//! server). Messages may arrive split or merged in any way: the filter
//! keeps its place across [`ReadOnlyFilter::feed`] calls and streams long
//! bodies without buffering them.

/// Why the filter closed the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RfbError {
    /// The client's ProtocolVersion is not 3.7 or 3.8.
    #[error("unsupported RFB protocol version {0:?} (read-only mode needs 3.7 or 3.8)")]
    Version(String),
    /// A security type the filter cannot follow.
    #[error("unsupported RFB security type {0} in read-only mode")]
    Security(u8),
    /// A client message of unknown type.
    #[error("unknown RFB client message type {0}")]
    UnknownMessage(u8),
}

/// What the filter does with one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward it to the server.
    Pass,
    /// Swallow it.
    Drop,
}

/// One framed client message: its whole length and what to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Length in bytes, type byte included.
    pub len: usize,
    /// Pass or drop.
    pub action: Action,
}

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

/// Frames the client message at the start of `buf` (RFB 3.8 client → server,
/// with the extensions noVNC sends). `Ok(None)`: more bytes are needed to
/// know its length. Only the first few bytes (at most 9) are ever needed.
pub fn client_message(buf: &[u8]) -> Result<Option<Frame>, RfbError> {
    use Action::{Drop, Pass};
    let Some(&t) = buf.first() else {
        return Ok(None);
    };
    let need = |n: usize| buf.len() >= n;
    let f = |len, action| Ok(Some(Frame { len, action }));
    match t {
        // SetPixelFormat: type, 3 padding, 16-byte pixel format.
        0 => f(20, Pass),
        // SetEncodings: type, padding, u16 count, count × i32.
        2 if need(4) => f(4 + 4 * be16(&buf[2..4]), Pass),
        // FramebufferUpdateRequest: type, incremental, x, y, w, h.
        3 => f(10, Pass),
        // KeyEvent: type, down, 2 padding, u32 keysym.
        4 => f(8, Drop),
        // PointerEvent: type, button mask, x, y.
        5 => f(6, Drop),
        // ClientCutText: type, 3 padding, i32 length (negative: extended
        // clipboard, |length| bytes follow), text.
        6 if need(8) => {
            let l = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
            f(8 + l.unsigned_abs() as usize, Drop)
        }
        // EnableContinuousUpdates: type, enable, x, y, w, h.
        150 => f(10, Pass),
        // ClientFence: type, 3 padding, u32 flags, u8 length, payload (≤ 64).
        248 if need(9) => f(9 + buf[8] as usize, Pass),
        // xvp (shutdown / reboot / reset): type, padding, version, code.
        250 => f(4, Drop),
        // SetDesktopSize: type, padding, w, h, u8 screens, padding, screens × 16.
        251 if need(7) => f(8 + 16 * buf[6] as usize, Drop),
        // QEMU client message; sub-type 0 is the extended key event.
        255 if need(2) => match buf[1] {
            0 => f(12, Drop),
            _ => Err(RfbError::UnknownMessage(255)),
        },
        2 | 6 | 248 | 251 | 255 => Ok(None),
        other => Err(RfbError::UnknownMessage(other)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Version,
    Security,
    VncAuth(usize),
    ClientInit,
    Header,
    Body { remaining: usize, action: Action },
    Closed,
}

/// The client → server half of a read-only VNC connection.
#[derive(Debug)]
pub struct ReadOnlyFilter {
    stage: Stage,
    buf: Vec<u8>,
    dropped: u64,
}

impl Default for ReadOnlyFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadOnlyFilter {
    /// A filter at the start of a connection.
    pub fn new() -> ReadOnlyFilter {
        ReadOnlyFilter {
            stage: Stage::Version,
            buf: Vec::with_capacity(16),
            dropped: 0,
        }
    }

    /// How many client messages were dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Takes the next bytes from the client; appends what may reach the
    /// server to `out`. After an error the connection must be closed (and
    /// every later call fails too).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RfbError> {
        while !input.is_empty() {
            match self.stage {
                Stage::Closed => return Err(RfbError::UnknownMessage(0xff)),
                Stage::Version => {
                    let n = (12 - self.buf.len()).min(input.len());
                    self.buf.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.buf.len() == 12 {
                        if self.buf != b"RFB 003.008\n" && self.buf != b"RFB 003.007\n" {
                            let v = String::from_utf8_lossy(&self.buf).into_owned();
                            return self.fail(RfbError::Version(v));
                        }
                        out.extend_from_slice(&self.buf);
                        self.buf.clear();
                        self.stage = Stage::Security;
                    }
                }
                Stage::Security => {
                    let t = input[0];
                    input = &input[1..];
                    self.stage = match t {
                        1 => Stage::ClientInit,
                        2 => Stage::VncAuth(16),
                        other => return self.fail(RfbError::Security(other)),
                    };
                    out.push(t);
                }
                Stage::VncAuth(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.stage = if n == left {
                        Stage::ClientInit
                    } else {
                        Stage::VncAuth(left - n)
                    };
                }
                Stage::ClientInit => {
                    // Always ask for a shared session: a watcher must not
                    // disconnect the user driving the browser.
                    input = &input[1..];
                    out.push(1);
                    self.stage = Stage::Header;
                }
                Stage::Header => {
                    self.buf.push(input[0]);
                    input = &input[1..];
                    match client_message(&self.buf) {
                        Err(e) => return self.fail(e),
                        Ok(None) => {}
                        Ok(Some(frame)) => {
                            if frame.action == Action::Pass {
                                out.extend_from_slice(&self.buf);
                            } else {
                                self.dropped += 1;
                            }
                            let remaining = frame.len - self.buf.len();
                            self.buf.clear();
                            self.stage = if remaining == 0 {
                                Stage::Header
                            } else {
                                Stage::Body {
                                    remaining,
                                    action: frame.action,
                                }
                            };
                        }
                    }
                }
                Stage::Body { remaining, action } => {
                    let n = remaining.min(input.len());
                    if action == Action::Pass {
                        out.extend_from_slice(&input[..n]);
                    }
                    input = &input[n..];
                    self.stage = if n == remaining {
                        Stage::Header
                    } else {
                        Stage::Body {
                            remaining: remaining - n,
                            action,
                        }
                    };
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: RfbError) -> Result<(), RfbError> {
        self.stage = Stage::Closed;
        Err(e)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const HANDSHAKE: &[u8] = b"RFB 003.008\n\x01\x00";

    pub(crate) fn set_pixel_format() -> Vec<u8> {
        let mut m = vec![0, 0, 0, 0];
        m.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        m
    }
    pub(crate) fn set_encodings(encs: &[i32]) -> Vec<u8> {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(encs.len() as u16).to_be_bytes());
        for e in encs {
            m.extend_from_slice(&e.to_be_bytes());
        }
        m
    }
    pub(crate) fn fb_request() -> Vec<u8> {
        vec![3, 1, 0, 0, 0, 0, 5, 0, 3, 32]
    }
    pub(crate) fn key(down: bool) -> Vec<u8> {
        vec![4, down as u8, 0, 0, 0, 0, 0, 0x61]
    }
    pub(crate) fn pointer(mask: u8, x: u16, y: u16) -> Vec<u8> {
        let mut m = vec![5, mask];
        m.extend_from_slice(&x.to_be_bytes());
        m.extend_from_slice(&y.to_be_bytes());
        m
    }
    pub(crate) fn cut_text(text: &[u8], extended: bool) -> Vec<u8> {
        let mut m = vec![6, 0, 0, 0];
        let l = if extended {
            -(text.len() as i32)
        } else {
            text.len() as i32
        };
        m.extend_from_slice(&l.to_be_bytes());
        m.extend_from_slice(text);
        m
    }
    fn fence(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![248, 0, 0, 0, 0, 0, 0, 1, payload.len() as u8];
        m.extend_from_slice(payload);
        m
    }
    fn desktop_size(screens: u8) -> Vec<u8> {
        let mut m = vec![251, 0, 5, 0, 3, 32, screens, 0];
        m.extend(vec![7u8; 16 * screens as usize]);
        m
    }

    #[test]
    fn framing_of_each_message() {
        let cases: Vec<(Vec<u8>, Action)> = vec![
            (set_pixel_format(), Action::Pass),
            (set_encodings(&[0, 1, -223, -312]), Action::Pass),
            (fb_request(), Action::Pass),
            (key(true), Action::Drop),
            (pointer(1, 10, 20), Action::Drop),
            (cut_text(b"hello", false), Action::Drop),
            (cut_text(b"\x10\x00\x00\x01xyz", true), Action::Drop),
            (vec![150, 1, 0, 0, 0, 0, 5, 0, 3, 32], Action::Pass),
            (fence(b"abc"), Action::Pass),
            (vec![250, 0, 1, 2], Action::Drop),
            (desktop_size(2), Action::Drop),
            (vec![255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 30], Action::Drop),
        ];
        for (m, action) in cases {
            // Never more than 9 bytes to know the length; never a wrong length.
            let mut known = None;
            for i in 1..=m.len().min(9) {
                if let Some(f) = client_message(&m[..i]).unwrap() {
                    known = Some(f);
                    break;
                }
            }
            assert_eq!(
                known,
                Some(Frame {
                    len: m.len(),
                    action
                }),
                "message {m:?}"
            );
        }
        assert_eq!(client_message(&[]), Ok(None));
        assert_eq!(client_message(&[7]), Err(RfbError::UnknownMessage(7)));
        assert_eq!(
            client_message(&[255, 1]),
            Err(RfbError::UnknownMessage(255))
        );
    }

    fn stream() -> (Vec<u8>, Vec<u8>) {
        // What the client sends, and what may reach the server.
        let mut sent = HANDSHAKE.to_vec();
        let mut want = b"RFB 003.008\n\x01\x01".to_vec(); // shared forced on
        for (m, pass) in [
            (set_pixel_format(), true),
            (set_encodings(&[7, 0, -239]), true),
            (pointer(1, 100, 100), false),
            (fb_request(), true),
            (key(true), false),
            (key(false), false),
            (cut_text(&[b'x'; 3000], false), false),
            (fb_request(), true),
            (cut_text(b"ext", true), false),
            (pointer(0, 1, 1), false),
        ] {
            sent.extend_from_slice(&m);
            if pass {
                want.extend_from_slice(&m);
            }
        }
        (sent, want)
    }

    #[test]
    fn drops_input_in_any_split() {
        let (sent, want) = stream();
        for chunk in [1, 2, 3, 7, 13, 64, 4096] {
            let mut f = ReadOnlyFilter::new();
            let mut out = Vec::new();
            for c in sent.chunks(chunk) {
                f.feed(c, &mut out).unwrap();
            }
            assert_eq!(out, want, "chunks of {chunk}");
            assert_eq!(f.dropped(), 6);
        }
    }

    #[test]
    fn vnc_auth_response_passes() {
        let mut f = ReadOnlyFilter::new();
        let mut out = Vec::new();
        let mut sent = b"RFB 003.008\n\x02".to_vec();
        sent.extend_from_slice(&[9u8; 16]);
        sent.push(0);
        sent.extend(pointer(1, 2, 3));
        sent.extend(fb_request());
        f.feed(&sent, &mut out).unwrap();
        let mut want = b"RFB 003.008\n\x02".to_vec();
        want.extend_from_slice(&[9u8; 16]);
        want.push(1);
        want.extend(fb_request());
        assert_eq!(out, want);
    }

    #[test]
    fn unknown_things_close() {
        let mut out = Vec::new();
        let mut f = ReadOnlyFilter::new();
        assert!(matches!(
            f.feed(b"RFB 003.003\n", &mut out),
            Err(RfbError::Version(_))
        ));
        let mut f = ReadOnlyFilter::new();
        assert_eq!(
            f.feed(b"RFB 003.008\n\x10", &mut out),
            Err(RfbError::Security(16))
        );
        let mut f = ReadOnlyFilter::new();
        out.clear();
        let mut sent = HANDSHAKE.to_vec();
        sent.extend(fb_request());
        sent.push(99);
        sent.extend(pointer(1, 1, 1));
        assert_eq!(f.feed(&sent, &mut out), Err(RfbError::UnknownMessage(99)));
        // Nothing after the unknown message got through, and the filter stays closed.
        let mut want = b"RFB 003.008\n\x01\x01".to_vec();
        want.extend(fb_request());
        assert_eq!(out, want);
        assert!(f.feed(&fb_request(), &mut out).is_err());
    }

    // Properties over arbitrary client streams (see `crate::fuzz`).

    use proptest::prelude::*;

    /// One well-formed client message of any kind, with whether it passes.
    fn message() -> impl Strategy<Value = (Vec<u8>, Action)> {
        let bytes = |n: std::ops::Range<usize>| proptest::collection::vec(any::<u8>(), n);
        prop_oneof![
            bytes(16..17).prop_map(|p| ([vec![0, 0, 0, 0], p].concat(), Action::Pass)),
            proptest::collection::vec(any::<i32>(), 0..8)
                .prop_map(|e| (set_encodings(&e), Action::Pass)),
            bytes(9..10).prop_map(|b| ([vec![3], b].concat(), Action::Pass)),
            bytes(7..8).prop_map(|b| ([vec![4], b].concat(), Action::Drop)),
            bytes(5..6).prop_map(|b| ([vec![5], b].concat(), Action::Drop)),
            (bytes(0..300), any::<bool>()).prop_map(|(t, x)| (cut_text(&t, x), Action::Drop)),
            bytes(9..10).prop_map(|b| ([vec![150], b].concat(), Action::Pass)),
            bytes(0..256).prop_map(|p| (fence(&p), Action::Pass)),
            bytes(3..4).prop_map(|b| ([vec![250], b].concat(), Action::Drop)),
            (0u8..4).prop_map(|n| (desktop_size(n), Action::Drop)),
            bytes(10..11).prop_map(|b| ([vec![255, 0], b].concat(), Action::Drop)),
        ]
    }

    /// A handshake (no authentication, or VNC authentication with its
    /// 16-byte response) and what of it reaches the server.
    fn handshake() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let version = prop_oneof![Just(&b"RFB 003.008\n"[..]), Just(&b"RFB 003.007\n"[..])];
        let auth = prop_oneof![
            Just(vec![1u8]),
            proptest::collection::vec(any::<u8>(), 16).prop_map(|r| [vec![2u8], r].concat()),
        ];
        (version, auth, any::<u8>()).prop_map(|(v, a, shared)| {
            let sent = [v, &a[..], &[shared][..]].concat();
            let passed = [v, &a[..], &[1][..]].concat();
            (sent, passed)
        })
    }

    /// Client bytes: anything at all, or a handshake followed by messages and
    /// then anything.
    fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (
                handshake(),
                proptest::collection::vec(message(), 0..8),
                proptest::collection::vec(any::<u8>(), 0..48),
            )
                .prop_map(|((h, _), ms, tail)| {
                    let mut b = h;
                    ms.into_iter().for_each(|(m, _)| b.extend(m));
                    b.extend(tail);
                    b
                }),
        ]
    }

    /// Feeds `input` cut into pieces of the given sizes (repeated), stopping
    /// at the first error: what reached the server, the error, the drops.
    fn feed_in_pieces(input: &[u8], sizes: &[usize]) -> (Vec<u8>, Option<RfbError>, u64) {
        let mut f = ReadOnlyFilter::new();
        let mut out = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < input.len() {
            let n = sizes[i % sizes.len()].min(input.len() - at);
            if let Err(e) = f.feed(&input[at..at + n], &mut out) {
                return (out, Some(e), f.dropped());
            }
            at += n;
            i += 1;
        }
        (out, None, f.dropped())
    }

    /// Length of the handshake at the start of what reached the server, or
    /// `None` when the handshake is not complete there.
    fn handshake_len(out: &[u8]) -> Option<usize> {
        let n = match out.get(12)? {
            2 => 12 + 1 + 16 + 1,
            _ => 12 + 1 + 1,
        };
        (out.len() >= n).then_some(n)
    }

    proptest! {
        #![proptest_config(crate::fuzz::config(4096))]

        /// Well-formed streams: exactly the passing messages reach the
        /// server, with the shared flag forced on, however the stream is cut.
        #[test]
        fn only_passing_messages_reach_the_server(
            (sent, mut want) in handshake(),
            msgs in proptest::collection::vec(message(), 0..12),
            sizes in proptest::collection::vec(1usize..40, 1..6),
        ) {
            let mut sent = sent;
            let mut drops = 0;
            for (m, action) in &msgs {
                sent.extend(m);
                match action {
                    Action::Pass => want.extend(m),
                    Action::Drop => drops += 1,
                }
            }
            let (out, err, dropped) = feed_in_pieces(&sent, &sizes);
            prop_assert_eq!(err, None);
            prop_assert_eq!(out, want);
            prop_assert_eq!(dropped, drops);
        }

        /// Any bytes: no panic, and the same bytes reach the server, the
        /// same error ends it and the same messages are dropped whether
        /// the stream comes whole or cut anywhere.
        #[test]
        fn any_stream_gives_the_same_outcome_however_it_is_cut(
            input in client_bytes(),
            sizes in proptest::collection::vec(1usize..24, 1..6),
        ) {
            let whole = feed_in_pieces(&input, &[input.len().max(1)]);
            let bytewise = feed_in_pieces(&input, &[1]);
            let cut = feed_in_pieces(&input, &sizes);
            prop_assert_eq!(&cut, &whole);
            prop_assert_eq!(&bytewise, &whole);
        }

        /// Whatever the client sends, what reaches the server after the
        /// handshake frames into passing messages only (the last one may be
        /// unfinished): never a key, pointer, clipboard, resize, xvp or
        /// QEMU key event.
        #[test]
        fn no_input_event_reaches_the_server(
            input in client_bytes(),
            sizes in proptest::collection::vec(1usize..24, 1..6),
        ) {
            let (out, _, _) = feed_in_pieces(&input, &sizes);
            let Some(start) = handshake_len(&out) else {
                return Ok(());
            };
            prop_assert_eq!(out[start - 1], 1, "the shared flag is forced on");
            let mut rest = &out[start..];
            while !rest.is_empty() {
                match client_message(rest) {
                    Ok(Some(frame)) => {
                        prop_assert_eq!(frame.action, Action::Pass, "type {} passed", rest[0]);
                        rest = &rest[frame.len.min(rest.len())..];
                    }
                    Ok(None) => break,
                    Err(e) => prop_assert!(false, "{e} reached the server"),
                }
            }
        }
    }
}
