//! A full WebRTC loopback over 127.0.0.1: the streamer (in-process) on a
//! private Xvfb, and a str0m viewer playing the browser. Checks video
//! (VP8 keyframes of the screen's size, frames after changes), the size
//! message, and input: the pointer really moves, buttons are held and
//! released, the wheel clicks, keys and pasted text (including characters
//! the keymap lacks) reach the focused window.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use polydev_stream::viewer::{Viewer, ViewerEvent};
use polydev_stream::{Streamer, StreamerConfig};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn streamer(display: &str) -> Streamer {
    Streamer::start(StreamerConfig {
        display: display.to_owned(),
        bind: SocketAddr::new(LOCAL, 0),
        advertise: LOCAL,
        ..StreamerConfig::default()
    })
    .unwrap()
}

/// Connects a new viewer; returns it once it is connected, the channel is
/// open and a keyframe of `size` arrived.
fn connect(s: &Streamer, size: (u16, u16)) -> Viewer {
    let (mut v, offer) = Viewer::offer(LOCAL).unwrap();
    let answer = s.offer(&offer).unwrap();
    let port = s.local_addr().port();
    assert!(
        answer
            .answer
            .contains(&format!("127.0.0.1 {port} typ host")),
        "the answer SDP carries the host candidate:\n{}",
        answer.answer
    );
    assert_eq!(answer.candidates.len(), 1);
    assert!(answer.candidates[0].candidate.starts_with("candidate:"));
    assert!(answer.candidates[0]
        .candidate
        .contains(&format!("127.0.0.1 {port} typ host")));
    assert_eq!(answer.candidates[0].sdp_mline_index, Some(0));
    assert!(answer.answer.contains("VP8"), "{}", answer.answer);
    v.answer(&answer.answer, &answer.candidates).unwrap();
    let (mut connected, mut open, mut sized, mut keyframe) = (false, false, false, false);
    let want_size = serde_json::json!({"t": "size", "w": size.0, "h": size.1});
    let done = v
        .run_until(Duration::from_secs(15), |ev| {
            match ev {
                ViewerEvent::Connected => connected = true,
                ViewerEvent::ChannelOpen => open = true,
                ViewerEvent::Text(t) => {
                    let got: serde_json::Value = serde_json::from_str(t).unwrap();
                    assert_eq!(got, want_size);
                    sized = true;
                }
                ViewerEvent::Frame {
                    keyframe: Some(k), ..
                } => {
                    assert_eq!(*k, size, "keyframe size");
                    keyframe = true;
                }
                ViewerEvent::Frame { .. } => {}
            }
            connected && open && sized && keyframe
        })
        .unwrap();
    assert!(
        done,
        "connected={connected} channel={open} size message={sized} keyframe={keyframe}"
    );
    v
}

/// Runs the viewer until `f` holds (checked every 50 ms) or 5 s passed.
fn pump_until(v: &mut Viewer, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        v.run_for(Duration::from_millis(50)).unwrap();
        if f() {
            return true;
        }
    }
    false
}

fn frames_in(v: &mut Viewer, dur: Duration) -> usize {
    v.run_for(dur)
        .unwrap()
        .iter()
        .filter(|e| matches!(e, ViewerEvent::Frame { .. }))
        .count()
}

fn run(size: (u16, u16)) {
    let Some(x) = common::xvfb(size.0, size.1) else {
        return;
    };
    let win = common::TestWindow::open(x.display());
    let s = streamer(x.display());
    let mut v = connect(&s, size);

    // Video follows changes.
    // After the settle frames the stream goes quiet (a refresh every 2 s
    // at most): some 700 ms window within 8 s has at most one frame.
    let mut counts = Vec::new();
    while counts.len() < 12 && counts.last().is_none_or(|&n| n > 1) {
        counts.push(frames_in(&mut v, Duration::from_millis(700)));
    }
    assert!(
        counts.last().is_some_and(|&n| n <= 1),
        "frames per 700 ms while nothing changed: {counts:?}"
    );
    win.fill(0x3366cc, 100, 100, 300, 200);
    let after = frames_in(&mut v, Duration::from_millis(500));
    assert!(after >= 1, "no frame after a change");

    // Pointer.
    v.send(r#"{"t":"move","x":321,"y":123}"#).unwrap();
    assert!(
        pump_until(&mut v, || win.pointer().0 == 321),
        "pointer at {:?}",
        win.pointer()
    );
    assert_eq!(win.pointer().1, 123);
    // Out of the screen: clamped.
    v.send(r#"{"t":"move","x":99999,"y":-5}"#).unwrap();
    let edge = (size.0 as i16 - 1, 0);
    assert!(
        pump_until(&mut v, || (win.pointer().0, win.pointer().1) == edge),
        "{:?}",
        win.pointer()
    );
    v.send(r#"{"t":"move","x":400,"y":300}"#).unwrap();
    assert!(pump_until(&mut v, || win.pointer().0 == 400));

    // Buttons: held, then released.
    const BUTTON1: u16 = 0x100;
    v.send(r#"{"t":"down","b":1}"#).unwrap();
    assert!(
        pump_until(&mut v, || win.pointer().2 & BUTTON1 != 0),
        "button 1 not held"
    );
    v.send(r#"{"t":"up","b":1}"#).unwrap();
    assert!(
        pump_until(&mut v, || win.pointer().2 & BUTTON1 == 0),
        "button 1 not released"
    );
    // Wheel: 250 px down = 2 clicks of button 5, 100 px left = button 6.
    v.send(r#"{"t":"wheel","dx":-100,"dy":250}"#).unwrap();
    assert!(pump_until(&mut v, || {
        let b = &win.seen.lock().unwrap().buttons;
        b.iter().filter(|&&b| b == 5).count() == 2 && b.contains(&6)
    }));

    // Keys: Shift held by the viewer, then "A"; then a plain "b".
    for m in [
        r#"{"t":"key","key":"Shift","code":"ShiftLeft","down":true}"#,
        r#"{"t":"key","key":"A","code":"KeyA","down":true}"#,
        r#"{"t":"key","key":"A","code":"KeyA","down":false}"#,
        r#"{"t":"key","key":"Shift","code":"ShiftLeft","down":false}"#,
        r#"{"t":"key","key":"b","code":"KeyB","down":true}"#,
        r#"{"t":"key","key":"b","code":"KeyB","down":false}"#,
        r#"{"t":"key","key":"Enter","code":"Enter","down":true}"#,
        r#"{"t":"key","key":"Enter","code":"Enter","down":false}"#,
    ] {
        v.send(m).unwrap();
    }
    assert!(
        pump_until(&mut v, || win.seen.lock().unwrap().text == "Ab\n"),
        "{:?}",
        win.seen.lock().unwrap().text
    );
    win.seen.lock().unwrap().text.clear();

    // Paste: shifted and unshifted ASCII.
    let text = "Hello, World! 123 (a+b)=\"c\"\ttab_~|";
    v.send(&serde_json::json!({"t": "paste", "text": text}).to_string())
        .unwrap();
    assert!(
        pump_until(&mut v, || win.seen.lock().unwrap().text == text),
        "typed {:?}",
        win.seen.lock().unwrap().text
    );
    win.seen.lock().unwrap().text.clear();

    // Characters the US keymap lacks: typed through temporarily remapped
    // keycodes (MappingNotify before and after).
    let before = win.seen.lock().unwrap().mapping_notifies;
    let exotic = "déjà vu €5 ✓";
    v.send(&serde_json::json!({"t": "paste", "text": exotic}).to_string())
        .unwrap();
    assert!(
        pump_until(&mut v, || win.seen.lock().unwrap().text == exotic),
        "typed {:?}",
        win.seen.lock().unwrap().text
    );
    assert!(win.seen.lock().unwrap().mapping_notifies >= before + 2);

    // Bad messages are counted as errors, not fatal.
    v.send(r#"{"t":"down","b":9}"#).unwrap();
    v.send("garbage").unwrap();
    assert!(pump_until(&mut v, || s
        .stats()
        .last_error
        .is_some_and(|e| e.contains("not valid"))));
    v.send(r#"{"t":"move","x":10,"y":10}"#).unwrap();
    assert!(
        pump_until(&mut v, || win.pointer().0 == 10),
        "still working after bad input"
    );

    let st = s.stats();
    assert!(st.connected);
    assert_eq!((st.width, st.height), (size.0 as u32, size.1 as u32));
    assert!(
        st.frames_sent >= 2 && st.frames_encoded >= st.frames_sent,
        "{st:?}"
    );
    assert!(st.input_events >= 17, "{st:?}");

    // A held button is released when the viewer is replaced.
    v.send(r#"{"t":"down","b":3}"#).unwrap();
    assert!(pump_until(&mut v, || win.pointer().2 & 0x400 != 0));
    let mut v2 = connect(&s, size);
    assert_eq!(
        win.pointer().2 & 0x400,
        0,
        "button 3 released with the old viewer"
    );
    let old = frames_in(&mut v, Duration::from_millis(300));
    win.fill(0xcc0000, 0, 0, 50, 50);
    assert!(
        frames_in(&mut v2, Duration::from_millis(500)) >= 1,
        "new viewer gets frames"
    );
    let _ = old;
    assert!(s.stats().connected);
    s.stop();
}

#[test]
fn loopback_1280x800() {
    run((1280, 800));
}

#[test]
fn loopback_1920x1080() {
    run((1920, 1080));
}

#[test]
fn offers_without_video_are_refused() {
    let Some(x) = common::xvfb(640, 480) else {
        return;
    };
    let s = streamer(x.display());
    let e = s.offer("not sdp").unwrap_err();
    assert!(e.contains("not valid SDP"), "{e}");
    // A data-channel-only offer has nothing to send video on.
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_channel("input".into());
    let (offer, _) = api.apply().unwrap();
    let e = s.offer(&offer.to_sdp_string()).unwrap_err();
    assert!(e.contains("no video"), "{e}");
    assert!(s.stats().last_error.unwrap().contains("no video"));
    // Candidates need a peer.
    let e = s
        .candidate(polydev_stream::IceCandidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        })
        .unwrap_err();
    assert!(e.contains("offer first"), "{e}");
}
