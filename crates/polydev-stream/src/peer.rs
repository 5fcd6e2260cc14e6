//! The WebRTC side: one UDP socket, one str0m peer at a time, ICE-lite.
//!
//! The viewer (the browser) makes the offer: a `recvonly` video m-line and
//! a data channel labelled `input`. The streamer answers with a `sendonly`
//! VP8 track and a single host candidate, the address given by
//! `--advertise` and the socket's port; being ICE-lite it answers
//! connectivity checks from wherever they come (the controller's relay).
//! A new offer replaces the current peer.
//!
//! [`Streamer`] owns the network thread, which runs str0m's sans-IO loop:
//! it waits (`poll(2)`) on the socket and on a wake-up pipe fed by the
//! video thread and by [`Streamer`]'s methods, feeds str0m, and drains its
//! output to the socket until the next timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use str0m::change::SdpOffer;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use thiserror::Error;

use crate::capture::X11Error;
use crate::input::{Injector, InputMessage};
use crate::pipeline::{self, PipelineConfig, PipelineCtl, PipelineEvent, VideoFrame};
use crate::stats::{Stats, StatsSnapshot};

/// How long a caller waits for the network thread to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest datagram read.
const MAX_DATAGRAM: usize = 2000;

/// Where the streamer listens and what it advertises.
#[derive(Debug, Clone)]
pub struct StreamerConfig {
    /// X display to capture and drive, e.g. `:1`.
    pub display: String,
    /// UDP address to bind (port 0: any free port).
    pub bind: SocketAddr,
    /// Address put in the host candidate (with the bound port).
    pub advertise: IpAddr,
    /// Video settings.
    pub video: PipelineConfig,
}

impl Default for StreamerConfig {
    fn default() -> Self {
        Self {
            display: ":1".into(),
            bind: SocketAddr::from(([0, 0, 0, 0], polydev_core::guest::STREAM_PORT)),
            advertise: polydev_core::guest::GUEST_ADDR
                .parse()
                .unwrap_or(IpAddr::from([169, 254, 0, 22])),
            video: PipelineConfig::default(),
        }
    }
}

/// The streamer could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The X display failed.
    #[error(transparent)]
    X11(#[from] X11Error),
    /// The socket or a thread failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// One ICE candidate in the browser's `RTCIceCandidateInit` shape.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct IceCandidate {
    /// `candidate:...` line, without `a=`.
    pub candidate: String,
    /// The m-line's mid.
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    /// The m-line's index.
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u32>,
}

/// The answer to an offer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Answer {
    /// The SDP answer.
    pub answer: String,
    /// The streamer's candidates (also in the SDP).
    pub candidates: Vec<IceCandidate>,
}

enum Msg {
    Offer(String, mpsc::Sender<Result<Answer, String>>),
    Candidate(IceCandidate, mpsc::Sender<Result<(), String>>),
    Video(PipelineEvent),
    Stop,
}

/// Sends messages to the network thread and wakes it.
#[derive(Clone)]
struct Notifier {
    tx: mpsc::Sender<Msg>,
    wake: Arc<UnixStream>,
}

impl Notifier {
    fn send(&self, m: Msg) -> bool {
        if self.tx.send(m).is_err() {
            return false;
        }
        // Non-blocking: a full pipe already means "wake up".
        let _ = (&*self.wake).write(&[1]);
        true
    }
}

/// A running streamer: the network thread, the video thread and their
/// shared state.
pub struct Streamer {
    notifier: Notifier,
    local_addr: SocketAddr,
    stats: Arc<Stats>,
    ctl: Arc<PipelineCtl>,
    net: Option<JoinHandle<()>>,
    video: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Streamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Streamer {
    /// Binds the socket, opens the display (capture and input) and starts
    /// both threads.
    pub fn start(config: StreamerConfig) -> Result<Self, StartError> {
        let io = |what: String| move |source| StartError::Io { what, source };
        let socket =
            UdpSocket::bind(config.bind).map_err(io(format!("binding UDP {}", config.bind)))?;
        let local_addr = socket
            .local_addr()
            .map_err(io("reading the socket's address".into()))?;
        socket
            .set_nonblocking(true)
            .map_err(io("making the socket non-blocking".into()))?;
        let (wake_tx, wake_rx) =
            UnixStream::pair().map_err(io("creating the wake-up pipe".into()))?;
        wake_tx
            .set_nonblocking(true)
            .and_then(|()| wake_rx.set_nonblocking(true))
            .map_err(io("making the wake-up pipe non-blocking".into()))?;
        let (tx, rx) = mpsc::channel();
        let notifier = Notifier {
            tx,
            wake: Arc::new(wake_tx),
        };
        let stats = Arc::new(Stats::default());
        let ctl = Arc::new(PipelineCtl::default());
        let injector = Injector::open(&config.display)?;
        let video_notifier = notifier.clone();
        let (video, size) = pipeline::spawn(
            &config.display,
            config.video.clone(),
            ctl.clone(),
            stats.clone(),
            move |ev| {
                video_notifier.send(Msg::Video(ev));
            },
        )?;
        stats.set_size(size.0, size.1);
        let advertise = SocketAddr::new(config.advertise, local_addr.port());
        tracing::info!(%local_addr, %advertise, "listening for WebRTC");
        let mut net = NetLoop {
            socket,
            advertise,
            rx,
            wake: wake_rx,
            session: None,
            injector,
            ctl: ctl.clone(),
            stats: stats.clone(),
            size,
        };
        let net = std::thread::Builder::new()
            .name("net".into())
            .spawn(move || net.run())
            .map_err(io("starting the network thread".into()))?;
        Ok(Self {
            notifier,
            local_addr,
            stats,
            ctl,
            net: Some(net),
            video: Some(video),
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn call<T>(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<T, String>>) -> Msg,
    ) -> Result<T, String> {
        let (tx, rx) = mpsc::channel();
        if !self.notifier.send(make(tx)) {
            return Err("the network thread has stopped".into());
        }
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|e| format!("no answer from the network thread: {e}"))?
    }

    /// Accepts a viewer's offer (replacing any current viewer).
    pub fn offer(&self, sdp: &str) -> Result<Answer, String> {
        let sdp = sdp.to_owned();
        self.call(|tx| Msg::Offer(sdp, tx))
    }

    /// Adds a trickled remote candidate.
    pub fn candidate(&self, c: IceCandidate) -> Result<(), String> {
        self.call(|tx| Msg::Candidate(c, tx))
    }

    /// The counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Why the streamer cannot go on (the X display went away), if so.
    /// The binary exits then, so its parent starts a new one.
    pub fn fatal(&self) -> Option<String> {
        self.ctl.fatal()
    }

    /// Stops both threads and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.ctl.stop();
        self.notifier.send(Msg::Stop);
        if let Some(t) = self.net.take() {
            let _ = t.join();
        }
        if let Some(t) = self.video.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One viewer.
struct Session {
    rtc: Rtc,
    video: Option<Mid>,
    pt: Option<Pt>,
    channel: Option<ChannelId>,
    connected: bool,
}

struct NetLoop {
    socket: UdpSocket,
    advertise: SocketAddr,
    rx: mpsc::Receiver<Msg>,
    wake: UnixStream,
    session: Option<Session>,
    injector: Injector,
    ctl: Arc<PipelineCtl>,
    stats: Arc<Stats>,
    size: (u16, u16),
}

impl NetLoop {
    fn run(&mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let deadline = self.drain();
            let now = Instant::now();
            let wait = deadline
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1));
            let mut fds = [
                libc::pollfd {
                    fd: self.socket.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = wait.as_millis().min(1000) as i32;
            // SAFETY: two valid pollfds.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    self.stats.error(format!("waiting on the socket: {e}"));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if fds[1].revents != 0 {
                let mut sink = [0u8; 64];
                while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
            }
            // Messages first (an offer may be waiting), then datagrams.
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::Stop) => {
                        self.end_session("the streamer is stopping");
                        return;
                    }
                    Ok(m) => self.handle_msg(m),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            if fds[0].revents != 0 {
                self.read_socket(&mut buf);
            }
            if let Some(s) = &mut self.session {
                let now = Instant::now();
                if deadline.is_some_and(|d| d <= now) {
                    if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                        self.fail_session(format!("WebRTC timeout handling: {e}"));
                    }
                }
            }
        }
    }

    fn read_socket(&mut self, buf: &mut [u8]) {
        loop {
            let (n, source) = match self.socket.recv_from(buf) {
                Ok(v) => v,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors (port unreachable) surface here; keep going.
                    tracing::debug!("UDP receive: {e}");
                    return;
                }
            };
            let Some(s) = &mut self.session else {
                continue;
            };
            let Ok(contents) = buf[..n].try_into() else {
                tracing::debug!(%source, "ignoring a datagram str0m cannot classify");
                continue;
            };
            let input = Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source,
                    // Bound to a wildcard address we do not know the real
                    // destination: it is the advertised one by definition.
                    destination: self.advertise,
                    contents,
                },
            );
            if !s.rtc.accepts(&input) {
                tracing::debug!(%source, "datagram for no peer");
                continue;
            }
            if let Err(e) = s.rtc.handle_input(input) {
                self.fail_session(format!("WebRTC input from {source}: {e}"));
                continue;
            }
            self.drain();
        }
    }

    fn handle_msg(&mut self, m: Msg) {
        match m {
            Msg::Offer(sdp, reply) => {
                let r = self.new_session(&sdp);
                if let Err(e) = &r {
                    self.stats.error(format!("offer: {e}"));
                }
                let _ = reply.send(r);
            }
            Msg::Candidate(c, reply) => {
                let _ = reply.send(self.add_candidate(&c));
            }
            Msg::Video(PipelineEvent::Frame(f)) => self.send_frame(f),
            Msg::Video(PipelineEvent::Size(w, h)) => {
                self.size = (w, h);
                self.injector.set_size(w, h);
                self.send_size();
            }
            Msg::Stop => {}
        }
    }

    fn new_session(&mut self, sdp: &str) -> Result<Answer, String> {
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|e| format!("the offer is not valid SDP: {e}"))?;
        self.end_session("a new offer replaces it");
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_vp8(true)
            .build(Instant::now());
        // Built from a string: str0m's host-candidate constructor refuses
        // link-local addresses, and the guest's address is one.
        let line = format!(
            "candidate:1 1 udp 2130706431 {} {} typ host",
            self.advertise.ip(),
            self.advertise.port()
        );
        let cand =
            Candidate::from_sdp_string(&line).map_err(|e| format!("local candidate: {e}"))?;
        let cand = rtc
            .add_local_candidate(cand)
            .ok_or("str0m refused the local candidate")?
            .to_sdp_string();
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("cannot accept the offer: {e}"))?
            .to_sdp_string();
        // str0m reports media (MediaAdded) only once connected: find the
        // video m-line we send on in the answer.
        let video = sections(&answer)
            .into_iter()
            .filter(|(kind, _)| kind == "video")
            .map(|(_, mid)| Mid::from(mid.as_str()))
            .find(|mid| {
                rtc.media(*mid)
                    .is_some_and(|m| m.kind() == MediaKind::Video && m.direction().is_sending())
            });
        let Some(mid) = video else {
            return Err("the offer has no video m-line the streamer can send on \
                        (offer a recvonly or sendrecv video)"
                .into());
        };
        let pt = rtc.writer(mid).and_then(|w| {
            w.payload_params()
                .find(|p| p.spec().codec == Codec::Vp8)
                .map(|p| p.pt())
        });
        let Some(pt) = pt else {
            return Err("the offer's video does not accept VP8".into());
        };
        self.session = Some(Session {
            rtc,
            video: Some(mid),
            pt: Some(pt),
            channel: None,
            connected: false,
        });
        self.drain();
        let mid = first_mid(&answer);
        tracing::info!("answered an offer; waiting for the viewer to connect");
        Ok(Answer {
            answer,
            candidates: vec![IceCandidate {
                candidate: cand,
                sdp_mid: mid,
                sdp_mline_index: Some(0),
            }],
        })
    }

    fn add_candidate(&mut self, c: &IceCandidate) -> Result<(), String> {
        let Some(s) = &mut self.session else {
            return Err("no peer: send an offer first".into());
        };
        let line = c.candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            return Ok(()); // end of candidates
        }
        match Candidate::from_sdp_string(line) {
            Ok(cand) => {
                s.rtc.add_remote_candidate(cand);
                self.drain();
                Ok(())
            }
            // mDNS (`….local`) candidates: ICE-lite needs no remote
            // candidates (the viewer's checks reach us), so skip them.
            Err(_)
                if line
                    .split_whitespace()
                    .nth(4)
                    .is_some_and(|a| a.ends_with(".local")) =>
            {
                tracing::debug!("ignoring mDNS candidate {line}");
                Ok(())
            }
            Err(e) => Err(format!("candidate is not valid: {e}")),
        }
    }

    fn send_frame(&mut self, f: VideoFrame) {
        let Some(s) = &mut self.session else {
            return;
        };
        let (Some(mid), Some(pt), true) = (s.video, s.pt, s.connected) else {
            return;
        };
        let Some(w) = s.rtc.writer(mid) else {
            return;
        };
        match w.write(pt, f.captured, MediaTime::from_90khz(f.rtp_time), f.data) {
            Ok(()) => self.stats.frame_sent(),
            Err(e) => self.stats.error(format!("sending a video frame: {e}")),
        }
        self.drain();
    }

    fn send_size(&mut self) {
        let Some(s) = &mut self.session else {
            return;
        };
        let Some(id) = s.channel else {
            return;
        };
        let msg = format!(r#"{{"t":"size","w":{},"h":{}}}"#, self.size.0, self.size.1);
        if let Some(mut ch) = s.rtc.channel(id) {
            if let Err(e) = ch.write(false, msg.as_bytes()) {
                self.stats.error(format!("sending the screen size: {e}"));
            }
        }
        self.drain();
    }

    fn end_session(&mut self, why: &str) {
        if let Some(mut s) = self.session.take() {
            tracing::info!("viewer gone: {why}");
            s.rtc.disconnect();
            // Flush the goodbye (DTLS close) where there is one.
            while let Ok(Output::Transmit(t)) = s.rtc.poll_output() {
                let _ = self.socket.send_to(&t.contents, t.destination);
            }
            self.injector.release_all();
            self.ctl.set_active(false);
            self.stats.set_connected(false);
        }
    }

    fn fail_session(&mut self, e: String) {
        self.stats.error(e.clone());
        self.end_session(&e);
    }

    /// Polls str0m until it asks for a timeout; returns it (None: no
    /// session).
    fn drain(&mut self) -> Option<Instant> {
        loop {
            let s = self.session.as_mut()?;
            if !s.rtc.is_alive() {
                self.end_session("the peer connection closed");
                return None;
            }
            let out = match s.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    self.fail_session(format!("WebRTC: {e}"));
                    return None;
                }
            };
            match out {
                Output::Timeout(t) => return Some(t),
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination) {
                        tracing::debug!(destination = %t.destination, "UDP send: {e}");
                    }
                }
                Output::Event(ev) => self.handle_event(ev),
            }
        }
    }

    fn handle_event(&mut self, ev: Event) {
        let Some(s) = &mut self.session else {
            return;
        };
        match ev {
            Event::Connected => {
                tracing::info!("viewer connected");
                s.connected = true;
                self.stats.set_connected(true);
                self.ctl.set_active(true);
                self.ctl.request_keyframe();
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.end_session("ICE disconnected");
            }
            Event::ChannelOpen(id, label) => {
                if label == "input" {
                    s.channel = Some(id);
                    self.send_size();
                } else {
                    tracing::debug!("ignoring data channel {label:?}");
                }
            }
            Event::ChannelData(d) => {
                if Some(d.id) != s.channel {
                    return;
                }
                let text = String::from_utf8_lossy(&d.data);
                match InputMessage::parse(&text).and_then(|m| self.injector.handle(&m)) {
                    Ok(()) => self.stats.input_event(),
                    Err(e) => self.stats.error(e.to_string()),
                }
            }
            Event::ChannelClose(id) if Some(id) == s.channel => {
                s.channel = None;
                self.injector.release_all();
            }
            Event::KeyframeRequest(_) => self.ctl.request_keyframe(),
            _ => {}
        }
    }
}

/// The (media kind, mid) of each m-line of an SDP.
fn sections(sdp: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut kind: Option<String> = None;
    for l in sdp.lines().map(str::trim) {
        if let Some(m) = l.strip_prefix("m=") {
            kind = m.split_whitespace().next().map(str::to_owned);
        } else if let (Some(mid), Some(k)) = (l.strip_prefix("a=mid:"), &kind) {
            out.push((k.clone(), mid.to_owned()));
        }
    }
    out
}

/// The first `a=mid:` of an SDP.
fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_mid() {
        assert_eq!(
            first_mid("v=0\r\nm=video 9 x\r\na=mid:0\r\nm=application\r\na=mid:1\r\n"),
            Some("0".into())
        );
        assert_eq!(first_mid("v=0\r\n"), None);
    }

    #[test]
    fn lists_sections() {
        let sdp = "v=0\r\na=group:BUNDLE a b\r\nm=video 9 UDP\r\na=mid:a\r\nm=application 9 UDP\r\na=mid:b\r\n";
        assert_eq!(
            sections(sdp),
            vec![
                ("video".into(), "a".into()),
                ("application".into(), "b".into())
            ]
        );
    }

    #[test]
    fn link_local_candidates_parse() {
        let c =
            Candidate::from_sdp_string("candidate:1 1 udp 2130706431 169.254.0.22 7071 typ host")
                .unwrap();
        assert_eq!(c.addr(), "169.254.0.22:7071".parse().unwrap());
    }
}
