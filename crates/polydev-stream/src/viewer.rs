//! A minimal viewer: the browser's side of the connection, made with str0m.
//! Used by the tests (this crate's and the agent's) to connect to a real
//! streamer over UDP and check what it sends; not part of the streamer.
//!
//! Like the viewer page it offers a `recvonly` video and a data channel
//! labelled `input`, and it is a full ICE agent (controlling).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

use crate::encode::keyframe_size;
use crate::peer::IceCandidate;

/// What the viewer saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerEvent {
    /// ICE and DTLS are up.
    Connected,
    /// The `input` channel is open.
    ChannelOpen,
    /// A video frame (VP8), with the size its keyframe header declares.
    Frame {
        /// Frame bytes.
        len: usize,
        /// `Some((w, h))` for a keyframe.
        keyframe: Option<(u16, u16)>,
    },
    /// A text message on the channel.
    Text(String),
}

/// The viewer.
pub struct Viewer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    channel: ChannelId,
    open: bool,
}

impl Viewer {
    /// Binds a UDP socket on `ip` and makes the offer. Returns the viewer
    /// and the offer's SDP.
    pub fn offer(ip: IpAddr) -> Result<(Self, String), String> {
        let socket = UdpSocket::bind((ip, 0)).map_err(|e| format!("binding UDP: {e}"))?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_millis(5)))
            .map_err(|e| e.to_string())?;
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_vp8(true)
            .build(Instant::now());
        let cand = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
        rtc.add_local_candidate(cand);
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let channel = api.add_channel("input".into());
        let (offer, pending) = api.apply().ok_or("nothing to offer")?;
        Ok((
            Self {
                rtc,
                socket,
                local,
                pending: Some(pending),
                channel,
                open: false,
            },
            offer.to_sdp_string(),
        ))
    }

    /// Applies the streamer's answer and candidates.
    pub fn answer(&mut self, sdp: &str, candidates: &[IceCandidate]) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| format!("answer SDP: {e}"))?;
        let pending = self.pending.take().ok_or("no offer pending")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("accepting the answer: {e}"))?;
        for c in candidates {
            let c = Candidate::from_sdp_string(&c.candidate)
                .map_err(|e| format!("candidate {:?}: {e}", c.candidate))?;
            self.rtc.add_remote_candidate(c);
        }
        Ok(())
    }

    /// Sends a text message on the `input` channel.
    pub fn send(&mut self, text: &str) -> Result<(), String> {
        if !self.open {
            return Err("the input channel is not open yet".into());
        }
        let mut ch = self.rtc.channel(self.channel).ok_or("no input channel")?;
        ch.write(false, text.as_bytes())
            .map_err(|e| format!("channel write: {e}"))?;
        Ok(())
    }

    /// Runs the connection for `dur`, returning what happened.
    pub fn run_for(&mut self, dur: Duration) -> Result<Vec<ViewerEvent>, String> {
        let mut events = Vec::new();
        self.run_until(dur, |ev| {
            events.push(ev.clone());
            false
        })?;
        Ok(events)
    }

    /// Runs the connection until `stop` returns true for an event (true)
    /// or `dur` passed (false).
    pub fn run_until(
        &mut self,
        dur: Duration,
        mut stop: impl FnMut(&ViewerEvent) -> bool,
    ) -> Result<bool, String> {
        let end = Instant::now() + dur;
        let mut buf = vec![0u8; 2000];
        loop {
            // Drain.
            loop {
                match self.rtc.poll_output().map_err(|e| e.to_string())? {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination);
                    }
                    Output::Event(e) => {
                        let ev = match e {
                            Event::Connected => Some(ViewerEvent::Connected),
                            Event::ChannelOpen(id, _) if id == self.channel => {
                                self.open = true;
                                Some(ViewerEvent::ChannelOpen)
                            }
                            Event::ChannelData(d) if !d.binary => Some(ViewerEvent::Text(
                                String::from_utf8_lossy(&d.data).into_owned(),
                            )),
                            Event::MediaData(m) => Some(ViewerEvent::Frame {
                                len: m.data.len(),
                                keyframe: keyframe_size(&m.data),
                            }),
                            _ => None,
                        };
                        if let Some(ev) = ev {
                            if stop(&ev) {
                                return Ok(true);
                            }
                        }
                    }
                }
            }
            let now = Instant::now();
            if now >= end {
                return Ok(false);
            }
            let input = match self.socket.recv_from(&mut buf) {
                Ok((n, source)) => Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents: buf[..n].try_into().map_err(|e| format!("{e:?}"))?,
                    },
                ),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    Input::Timeout(Instant::now())
                }
                Err(e) => return Err(format!("UDP receive: {e}")),
            };
            self.rtc.handle_input(input).map_err(|e| e.to_string())?;
        }
    }
}
