//! `polydev-streamer bench`: how long capture, conversion and encoding take
//! per frame at the display's size, and how big frames are.
//!
//! A full-screen override-redirect window is drawn on between frames
//! (filled rectangles of changing colours and places, through the core
//! protocol on a second connection, no XTest), so every frame is a real
//! change that DAMAGE reports and the encoder has to code.

use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::wrapper::ConnectionExt as _;

use crate::capture::{connect, Capturer};
use crate::convert;
use crate::encode::{EncoderConfig, Vp8Encoder};

/// Per-stage timings and sizes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Display benchmarked.
    pub display: String,
    /// Screen width.
    pub width: u16,
    /// Screen height.
    pub height: u16,
    /// Frames measured (after the first, a keyframe).
    pub frames: usize,
    /// MIT-SHM used.
    pub shm: bool,
    /// DAMAGE used.
    pub damage: bool,
    /// Encoder threads.
    pub threads: u32,
    /// Capture ms (p50, p95).
    pub capture_ms: (f64, f64),
    /// BGRX→I420 ms (p50, p95).
    pub convert_ms: (f64, f64),
    /// VP8 encode ms (p50, p95).
    pub encode_ms: (f64, f64),
    /// Whole frame ms (p50, p95).
    pub total_ms: (f64, f64),
    /// Frame bytes (p50, p95), inter frames.
    pub bytes: (usize, usize),
    /// The first (key)frame's bytes.
    pub keyframe_bytes: usize,
    /// ms from drawing to the damage event (p50, p95).
    pub damage_ms: (f64, f64),
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "display {} {}x{}, {} frames, shm={} damage={} encoder threads={}",
            self.display, self.width, self.height, self.frames, self.shm, self.damage, self.threads
        )?;
        writeln!(f, "            p50       p95")?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, v: (f64, f64)| {
            writeln!(f, "{name:<9} {:7.2} ms {:7.2} ms", v.0, v.1)
        };
        row(f, "damage", self.damage_ms)?;
        row(f, "capture", self.capture_ms)?;
        row(f, "convert", self.convert_ms)?;
        row(f, "encode", self.encode_ms)?;
        row(f, "total", self.total_ms)?;
        writeln!(
            f,
            "frame     {:7} B  {:7} B   (keyframe {} B)",
            self.bytes.0, self.bytes.1, self.keyframe_bytes
        )
    }
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A tiny deterministic PRNG (xorshift), for the drawing.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
    fn below(&mut self, n: u32) -> u32 {
        self.next() % n.max(1)
    }
}

/// Runs `frames` frames (plus a first keyframe) on `display` with
/// `config`'s bitrate and `cpu-used` (its size is the display's).
pub fn run(
    display: &str,
    frames: usize,
    bitrate_kbps: u32,
    cpu_used: i32,
) -> Result<BenchReport, String> {
    let mut cap = Capturer::open(display).map_err(|e| e.to_string())?;
    let (w, h) = cap.size();
    let (conn, screen_num) = connect(display).map_err(|e| e.to_string())?;
    let screen = &conn.setup().roots[screen_num];
    let win = conn.generate_id().map_err(|e| e.to_string())?;
    let gc = conn.generate_id().map_err(|e| e.to_string())?;
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        win,
        screen.root,
        0,
        0,
        w,
        h,
        0,
        xproto::WindowClass::INPUT_OUTPUT,
        x11rb::COPY_FROM_PARENT,
        &xproto::CreateWindowAux::new()
            .override_redirect(1)
            .background_pixel(screen.white_pixel),
    )
    .map_err(|e| format!("CreateWindow: {e}"))?;
    conn.create_gc(gc, win, &xproto::CreateGCAux::new())
        .map_err(|e| e.to_string())?;
    conn.map_window(win).map_err(|e| e.to_string())?;
    conn.sync().map_err(|e| e.to_string())?;

    let mut ec = EncoderConfig::new(w as u32, h as u32);
    ec.bitrate_kbps = bitrate_kbps;
    ec.cpu_used = cpu_used;
    let threads = ec.threads;
    let mut enc = Vp8Encoder::new(ec).map_err(|e| e.to_string())?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut t_dmg, mut t_cap, mut t_conv, mut t_enc, mut t_tot, mut sizes) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut keyframe_bytes = 0;
    let start = Instant::now();
    for i in 0..=frames {
        // Change the screen: a few rectangles, like windows, text and
        // scrolling would.
        for _ in 0..12 {
            let color = rng.next() & 0x00ff_ffff;
            conn.change_gc(gc, &xproto::ChangeGCAux::new().foreground(color))
                .map_err(|e| e.to_string())?;
            let rw = 16 + rng.below(w as u32 / 4) as u16;
            let rh = 8 + rng.below(h as u32 / 8) as u16;
            let rect = xproto::Rectangle {
                x: rng.below(w as u32) as i16,
                y: rng.below(h as u32) as i16,
                width: rw,
                height: rh,
            };
            conn.poly_fill_rectangle(win, gc, &[rect])
                .map_err(|e| e.to_string())?;
        }
        conn.sync().map_err(|e| e.to_string())?;
        let drawn = Instant::now();
        // The capturer must see the change.
        let deadline = drawn + Duration::from_secs(2);
        while !cap.is_dirty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "frame {i}: no change reported within 2 s of drawing"
                ));
            }
            cap.wait(left).map_err(|e| e.to_string())?;
        }
        let t0 = Instant::now();
        let f = cap.capture().map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        convert::to_i420(
            f.data,
            f.stride,
            w as usize,
            h as usize,
            f.format,
            &mut enc.planes(),
        )
        .map_err(|e| e.to_string())?;
        let t2 = Instant::now();
        let pts = (t0 - start).as_micros() as i64 * 9 / 100;
        let out = enc.encode(pts, 3000, i == 0).map_err(|e| e.to_string())?;
        let t3 = Instant::now();
        let bytes: usize = out.iter().map(|f| f.data.len()).sum();
        if i == 0 {
            keyframe_bytes = bytes;
            continue;
        }
        t_dmg.push(ms(t0 - drawn));
        t_cap.push(ms(t1 - t0));
        t_conv.push(ms(t2 - t1));
        t_enc.push(ms(t3 - t2));
        t_tot.push(ms(t3 - t0));
        sizes.push(bytes as f64);
        // Pace like the streamer would (30 fps at most).
        if let Some(rest) = Duration::from_millis(33).checked_sub(t3 - drawn) {
            std::thread::sleep(rest);
        }
    }
    let _ = conn.destroy_window(win);
    let _ = conn.flush();
    let p = |v: &Vec<f64>| (pct(v.clone(), 0.5), pct(v.clone(), 0.95));
    let bytes = p(&sizes);
    Ok(BenchReport {
        display: display.to_owned(),
        width: w,
        height: h,
        frames,
        shm: cap.uses_shm(),
        damage: cap.uses_damage(),
        threads,
        capture_ms: p(&t_cap),
        convert_ms: p(&t_conv),
        encode_ms: p(&t_enc),
        total_ms: p(&t_tot),
        bytes: (bytes.0 as usize, bytes.1 as usize),
        keyframe_bytes,
        damage_ms: p(&t_dmg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(v.clone(), 0.5), 51.0);
        assert_eq!(pct(v.clone(), 0.95), 95.0);
        assert_eq!(pct(vec![], 0.5), 0.0);
    }
}
