//! The video thread: screen changes → capture → I420 → VP8, paced.
//!
//! It runs only while a viewer is connected ([`PipelineCtl::set_active`]).
//! A frame is made when the screen changed (at most `fps` a second), when
//! a keyframe is asked for, a few times after the last change (so a still
//! picture sharpens), and at least every [`PipelineConfig::refresh`].

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::capture::{Capturer, X11Error};
use crate::convert;
use crate::encode::{EncoderConfig, Vp8Encoder};
use crate::stats::Stats;

/// Frames sent after the last change, to let a still picture sharpen.
const SETTLE_FRAMES: u32 = 3;
/// Gap between those frames.
const SETTLE_GAP: Duration = Duration::from_millis(200);
/// Longest wait before looking at the control state again.
const CTL_TICK: Duration = Duration::from_millis(50);
/// How often an idle pipeline checks that the display is still there.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Video settings.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Most frames per second.
    pub fps: u32,
    /// Target bitrate, kbit/s.
    pub bitrate_kbps: u32,
    /// libvpx `cpu-used`.
    pub cpu_used: i32,
    /// A frame at least this often, changed or not.
    pub refresh: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            fps: 30,
            bitrate_kbps: 3000,
            cpu_used: 8,
            refresh: Duration::from_secs(2),
        }
    }
}

/// An encoded frame ready to send.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    /// VP8 bitstream.
    pub data: Vec<u8>,
    /// Keyframe or not.
    pub keyframe: bool,
    /// RTP time, 90 kHz since the pipeline started.
    pub rtp_time: u64,
    /// When the screen was captured.
    pub captured: Instant,
}

/// What the pipeline tells the network loop.
#[derive(Debug)]
pub enum PipelineEvent {
    /// A frame to send.
    Frame(VideoFrame),
    /// The screen has a new size.
    Size(u16, u16),
}

#[derive(Debug, Default)]
struct CtlState {
    active: bool,
    keyframe: bool,
    stop: bool,
}

/// Switches the pipeline on and off and asks for keyframes.
#[derive(Debug, Default)]
pub struct PipelineCtl {
    state: Mutex<CtlState>,
    cv: Condvar,
    fatal: Mutex<Option<String>>,
}

impl PipelineCtl {
    fn with<R>(&self, f: impl FnOnce(&mut CtlState) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut s);
        self.cv.notify_all();
        r
    }
    /// Frames are wanted (a viewer is connected) or not.
    pub fn set_active(&self, active: bool) {
        self.with(|s| s.active = active);
    }
    /// The next frame is to be a keyframe.
    pub fn request_keyframe(&self) {
        self.with(|s| s.keyframe = true);
    }
    /// Ends the thread.
    pub fn stop(&self) {
        self.with(|s| s.stop = true);
    }
    /// Why the thread gave up for good (the X connection is gone), if it
    /// did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set_fatal(&self, e: String) {
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// Opens the display and starts the thread. Returns the thread and the
/// screen size.
pub fn spawn(
    display: &str,
    config: PipelineConfig,
    ctl: Arc<PipelineCtl>,
    stats: Arc<Stats>,
    sink: impl Fn(PipelineEvent) + Send + 'static,
) -> Result<(JoinHandle<()>, (u16, u16)), X11Error> {
    let cap = Capturer::open(display)?;
    let size = cap.size();
    tracing::info!(
        "capturing X display {} at {}x{} (MIT-SHM: {}, DAMAGE: {})",
        cap.display(),
        size.0,
        size.1,
        cap.uses_shm(),
        cap.uses_damage()
    );
    let handle = std::thread::Builder::new()
        .name("video".into())
        .spawn(move || run(cap, config, ctl, stats, sink))
        .map_err(|e| X11Error::Request {
            display: display.to_owned(),
            what: "starting the video thread".into(),
            message: e.to_string(),
        })?;
    Ok((handle, size))
}

fn run(
    mut cap: Capturer,
    config: PipelineConfig,
    ctl: Arc<PipelineCtl>,
    stats: Arc<Stats>,
    sink: impl Fn(PipelineEvent),
) {
    let start = Instant::now();
    let gap = Duration::from_secs(1) / config.fps.max(1);
    let mut encoder: Option<Vp8Encoder> = None;
    let mut last_frame = start;
    let mut settle_left = 0u32;
    let mut was_active = false;
    let mut failures = 0u32;
    loop {
        // Sleep while nobody watches (checking now and then that the
        // display is still there); note keyframe requests.
        let force_kf = {
            let mut s = ctl.state.lock().unwrap_or_else(|p| p.into_inner());
            while !s.active && !s.stop {
                was_active = false;
                let (guard, timeout) = ctl
                    .cv
                    .wait_timeout(s, IDLE_CHECK)
                    .unwrap_or_else(|p| p.into_inner());
                s = guard;
                if timeout.timed_out() {
                    if let Err(e) = cap.wait(Duration::ZERO) {
                        drop(s);
                        let e = format!("capture: the X display is gone: {e}");
                        stats.error(e.clone());
                        ctl.set_fatal(e);
                        return;
                    }
                }
            }
            if s.stop {
                return;
            }
            std::mem::take(&mut s.keyframe)
        };
        let activated = !was_active;
        was_active = true;
        let now = Instant::now();
        let changed = cap.is_dirty();
        let due = now >= last_frame + gap;
        let refresh = now >= last_frame + config.refresh;
        let settle = settle_left > 0 && now >= last_frame + SETTLE_GAP;
        let go = activated || force_kf || refresh || settle || (changed && due);
        if !go {
            let wait = if changed {
                (last_frame + gap).saturating_duration_since(now)
            } else {
                let mut next = last_frame + config.refresh;
                if settle_left > 0 {
                    next = next.min(last_frame + SETTLE_GAP);
                }
                next.saturating_duration_since(now)
            }
            .min(CTL_TICK);
            if changed {
                std::thread::sleep(wait);
            } else if let Err(e) = cap.wait(wait) {
                // Only a broken connection fails a wait.
                let e = format!("capture: the X display is gone: {e}");
                stats.error(e.clone());
                ctl.set_fatal(e);
                return;
            }
            continue;
        }
        let keyframe = activated || force_kf;
        let must_send = keyframe || refresh || settle;
        match frame(
            &mut cap,
            &mut encoder,
            &config,
            start,
            (keyframe, must_send),
            &stats,
            &sink,
        ) {
            Ok(Some(was_change)) => {
                failures = 0;
                last_frame = now;
                if was_change {
                    settle_left = SETTLE_FRAMES;
                } else {
                    settle_left = settle_left.saturating_sub(1);
                }
            }
            Ok(None) => last_frame = now,
            Err(e) => {
                failures += 1;
                stats.error(e);
                // A resize may be under way: look at the size again. If
                // even that fails, the connection is gone.
                if let Err(e) = cap.refresh_geometry() {
                    let e = format!("capture: the X display is gone: {e}");
                    stats.error(e.clone());
                    ctl.set_fatal(e);
                    return;
                }
                encoder = None;
                std::thread::sleep(Duration::from_millis(if failures > 5 { 1000 } else { 100 }));
            }
        }
    }
}

/// Makes one frame (a keyframe if asked; even of an unchanged screen if
/// `must_send`). `Some(changed)` when a frame was sent (and whether it
/// showed a change), `None` when polling found nothing new.
fn frame(
    cap: &mut Capturer,
    encoder: &mut Option<Vp8Encoder>,
    config: &PipelineConfig,
    start: Instant,
    (mut keyframe, must_send): (bool, bool),
    stats: &Stats,
    sink: &impl Fn(PipelineEvent),
) -> Result<Option<bool>, String> {
    // Take in events that came while nobody watched (a resize).
    cap.wait(Duration::ZERO)
        .map_err(|e| format!("capture: {e}"))?;
    let was_dirty = cap.is_dirty();
    let (w, h) = cap.size();
    let resized = cap.take_resized();
    let rebuild = match encoder {
        Some(e) => resized || (e.config().width, e.config().height) != (w as u32, h as u32),
        None => true,
    };
    if rebuild {
        let mut ec = EncoderConfig::new(w as u32, h as u32);
        ec.bitrate_kbps = config.bitrate_kbps;
        ec.cpu_used = config.cpu_used;
        *encoder = Some(Vp8Encoder::new(ec).map_err(|e| e.to_string())?);
        stats.set_size(w, h);
        sink(PipelineEvent::Size(w, h));
        keyframe = true;
    }
    let Some(enc) = encoder.as_mut() else {
        return Err("VP8 encoder: not set up".into());
    };
    let damage = cap.uses_damage();
    let captured = Instant::now();
    let f = cap.capture().map_err(|e| format!("capture: {e}"))?;
    if (f.width, f.height) != (w, h) {
        return Err(format!(
            "capture: the screen is {}x{} but the encoder is {w}x{h}",
            f.width, f.height
        ));
    }
    if !f.changed && !damage && !keyframe && !must_send {
        return Ok(None);
    }
    convert::to_i420(
        f.data,
        f.stride,
        w as usize,
        h as usize,
        f.format,
        &mut enc.planes(),
    )
    .map_err(|e| e.to_string())?;
    let rtp_time = (captured - start).as_micros() as u64 * 9 / 100;
    let duration = 90_000 / config.fps.max(1) as u64;
    let out = enc
        .encode(rtp_time as i64, duration, keyframe)
        .map_err(|e| e.to_string())?;
    for e in out {
        stats.frame_encoded();
        sink(PipelineEvent::Frame(VideoFrame {
            data: e.data,
            keyframe: e.keyframe,
            rtp_time,
            captured,
        }));
    }
    Ok(Some(was_dirty && f.changed))
}
