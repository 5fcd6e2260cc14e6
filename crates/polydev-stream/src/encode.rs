//! VP8 encoding with libvpx (linked statically, see [`crate::vpx`]), set up
//! for interactive screen content: realtime deadline, high `cpu-used`, no
//! lag, error resilient, CBR, keyframes on request.
//!
//! The encoder owns an I420 image; the caller converts a captured frame
//! into [`Vp8Encoder::planes`] and then calls [`Vp8Encoder::encode`].

use std::ffi::CStr;
use std::os::raw::{c_int, c_ulong};
use std::ptr;

use thiserror::Error;

use crate::convert::I420Mut;
use crate::vpx;

/// Encoder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Target bitrate (CBR), kbit/s.
    pub bitrate_kbps: u32,
    /// libvpx `cpu-used` (VP8: -16..16; higher is faster, lower quality).
    pub cpu_used: i32,
    /// Encoder threads.
    pub threads: u32,
}

impl EncoderConfig {
    /// Defaults for a `width`×`height` screen: 3 Mbit/s, `cpu-used` 8,
    /// up to 4 threads.
    pub fn new(width: u32, height: u32) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Self {
            width,
            height,
            bitrate_kbps: 3000,
            cpu_used: 8,
            threads: cpus.clamp(1, 4),
        }
    }
}

/// An encoder failure, with libvpx's own words.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// The frame size is unusable.
    #[error("VP8 encoder: frame size {0}x{1} is not supported (1..16383 each)")]
    BadSize(u32, u32),
    /// A libvpx call failed.
    #[error("VP8 encoder: {call} failed: {message}")]
    Vpx {
        /// The libvpx function.
        call: &'static str,
        /// libvpx's error string and detail.
        message: String,
    },
}

/// One compressed frame.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// The VP8 bitstream of the frame.
    pub data: Vec<u8>,
    /// Whether it is a keyframe.
    pub keyframe: bool,
    /// Its presentation time, in the 90 kHz time base.
    pub pts: i64,
}

/// A VP8 encoder for one frame size.
pub struct Vp8Encoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
    // libvpx keeps a pointer to the configuration: it lives as long as ctx.
    _cfg: Box<vpx::vpx_codec_enc_cfg_t>,
    img: *mut vpx::vpx_image_t,
    config: EncoderConfig,
}

// The context and image are only touched through &mut self.
unsafe impl Send for Vp8Encoder {}

fn err_string(err: c_int, ctx: Option<&vpx::vpx_codec_ctx_t>) -> String {
    // SAFETY: libvpx returns static NUL-terminated strings (or null).
    unsafe {
        let mut s = {
            let p = vpx::vpx_codec_err_to_string(err);
            if p.is_null() {
                format!("error {err}")
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        if let Some(ctx) = ctx {
            let d = vpx::vpx_codec_error_detail(ctx);
            if !d.is_null() {
                s.push_str(": ");
                s.push_str(&CStr::from_ptr(d).to_string_lossy());
            }
        }
        s
    }
}

/// libvpx's version string (e.g. `v1.12.0`).
pub fn libvpx_version() -> String {
    // SAFETY: a static NUL-terminated string.
    unsafe { CStr::from_ptr(vpx::vpx_codec_version_str()) }
        .to_string_lossy()
        .into_owned()
}

impl Vp8Encoder {
    /// Sets up an encoder per `config`.
    pub fn new(config: EncoderConfig) -> Result<Self, EncodeError> {
        let (w, h) = (config.width, config.height);
        if w == 0 || h == 0 || w > 16383 || h > 16383 {
            return Err(EncodeError::BadSize(w, h));
        }
        // SAFETY: plain C calls on memory we own; every pointer handed to
        // libvpx outlives the encoder (boxed, freed in Drop).
        unsafe {
            let iface = vpx::vpx_codec_vp8_cx();
            let mut cfg: Box<vpx::vpx_codec_enc_cfg_t> = Box::new(std::mem::zeroed());
            let rc = vpx::vpx_codec_enc_config_default(iface, &mut *cfg, 0);
            if rc != vpx::VPX_CODEC_OK {
                return Err(EncodeError::Vpx {
                    call: "vpx_codec_enc_config_default",
                    message: err_string(rc, None),
                });
            }
            cfg.g_w = w;
            cfg.g_h = h;
            cfg.g_threads = config.threads;
            cfg.g_timebase = vpx::vpx_rational_t {
                num: 1,
                den: 90_000,
            };
            cfg.g_error_resilient = vpx::VPX_ERROR_RESILIENT_DEFAULT;
            cfg.g_pass = vpx::VPX_RC_ONE_PASS;
            cfg.g_lag_in_frames = 0;
            // Frames are encoded when the screen changes: never drop one,
            // the next may be seconds away.
            cfg.rc_dropframe_thresh = 0;
            cfg.rc_resize_allowed = 0;
            cfg.rc_end_usage = vpx::VPX_CBR;
            cfg.rc_target_bitrate = config.bitrate_kbps;
            cfg.rc_min_quantizer = 4;
            cfg.rc_max_quantizer = 56;
            cfg.rc_undershoot_pct = 100;
            cfg.rc_overshoot_pct = 15;
            cfg.rc_buf_initial_sz = 500;
            cfg.rc_buf_optimal_sz = 600;
            cfg.rc_buf_sz = 1000;
            // Keyframes on request (new viewer, PLI/FIR) and rarely
            // otherwise.
            cfg.kf_mode = vpx::VPX_KF_AUTO;
            cfg.kf_min_dist = 0;
            cfg.kf_max_dist = 3000;

            let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(std::mem::zeroed());
            let rc = vpx::vpx_codec_enc_init_ver(
                &mut *ctx,
                iface,
                &*cfg,
                0,
                vpx::VPX_ENCODER_ABI_VERSION,
            );
            if rc != vpx::VPX_CODEC_OK {
                return Err(EncodeError::Vpx {
                    call: "vpx_codec_enc_init",
                    message: err_string(rc, Some(&ctx)),
                });
            }
            let mut enc = Self {
                ctx,
                _cfg: cfg,
                img: ptr::null_mut(),
                config,
            };
            let threads_log2 = match enc.config.threads {
                0 | 1 => 0,
                2 | 3 => 1,
                _ => 2,
            };
            enc.control(
                "VP8E_SET_CPUUSED",
                vpx::VP8E_SET_CPUUSED,
                enc.config.cpu_used,
            )?;
            enc.control(
                "VP8E_SET_NOISE_SENSITIVITY",
                vpx::VP8E_SET_NOISE_SENSITIVITY,
                0,
            )?;
            // Skip blocks that barely changed (most of a screen).
            enc.control(
                "VP8E_SET_STATIC_THRESHOLD",
                vpx::VP8E_SET_STATIC_THRESHOLD,
                1,
            )?;
            enc.control(
                "VP8E_SET_TOKEN_PARTITIONS",
                vpx::VP8E_SET_TOKEN_PARTITIONS,
                threads_log2,
            )?;
            // Keyframes may take up to 3 frames' worth of bits.
            enc.control(
                "VP8E_SET_MAX_INTRA_BITRATE_PCT",
                vpx::VP8E_SET_MAX_INTRA_BITRATE_PCT,
                300,
            )?;
            enc.control(
                "VP8E_SET_SCREEN_CONTENT_MODE",
                vpx::VP8E_SET_SCREEN_CONTENT_MODE,
                1,
            )?;
            enc.img = vpx::vpx_img_alloc(ptr::null_mut(), vpx::VPX_IMG_FMT_I420, w, h, 32);
            if enc.img.is_null() {
                return Err(EncodeError::Vpx {
                    call: "vpx_img_alloc",
                    message: format!("cannot allocate a {w}x{h} I420 image"),
                });
            }
            Ok(enc)
        }
    }

    fn control(&mut self, name: &'static str, id: c_int, value: c_int) -> Result<(), EncodeError> {
        // SAFETY: every control used here takes an int.
        let rc = unsafe { vpx::vpx_codec_control_(&mut *self.ctx, id, value) };
        if rc != vpx::VPX_CODEC_OK {
            return Err(EncodeError::Vpx {
                call: name,
                message: err_string(rc, Some(&self.ctx)),
            });
        }
        Ok(())
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The input image's planes, to convert a frame into.
    pub fn planes(&mut self) -> I420Mut<'_> {
        // SAFETY: img was allocated by vpx_img_alloc for (w, h) I420 and is
        // exclusively borrowed through &mut self; the planes do not
        // overlap; lengths follow the strides and the (even-rounded)
        // heights libvpx allocated.
        unsafe {
            let img = &*self.img;
            let h = img.h as usize;
            let ch = h.div_ceil(2);
            let (ys, us, vs) = (
                img.stride[0] as usize,
                img.stride[1] as usize,
                img.stride[2] as usize,
            );
            I420Mut {
                y: std::slice::from_raw_parts_mut(img.planes[0], ys * h),
                y_stride: ys,
                u: std::slice::from_raw_parts_mut(img.planes[1], us * ch),
                u_stride: us,
                v: std::slice::from_raw_parts_mut(img.planes[2], vs * ch),
                v_stride: vs,
            }
        }
    }

    /// Encodes the image now in [`planes`](Self::planes) at `pts` (90 kHz)
    /// lasting `duration` (90 kHz ticks); a keyframe when `keyframe`.
    /// Usually one frame comes back; none if libvpx dropped it.
    pub fn encode(
        &mut self,
        pts: i64,
        duration: u64,
        keyframe: bool,
    ) -> Result<Vec<EncodedFrame>, EncodeError> {
        let flags = if keyframe { vpx::VPX_EFLAG_FORCE_KF } else { 0 };
        // SAFETY: ctx and img are valid; packets are copied out before the
        // next libvpx call.
        unsafe {
            let rc = vpx::vpx_codec_encode(
                &mut *self.ctx,
                self.img,
                pts,
                duration.max(1) as c_ulong,
                flags,
                vpx::VPX_DL_REALTIME,
            );
            if rc != vpx::VPX_CODEC_OK {
                return Err(EncodeError::Vpx {
                    call: "vpx_codec_encode",
                    message: err_string(rc, Some(&self.ctx)),
                });
            }
            let mut out = Vec::new();
            let mut iter: *const std::os::raw::c_void = ptr::null();
            loop {
                let pkt = vpx::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter);
                if pkt.is_null() {
                    break;
                }
                let pkt = &*pkt;
                if pkt.kind != vpx::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let f = pkt.data.frame;
                let data = std::slice::from_raw_parts(f.buf as *const u8, f.sz).to_vec();
                out.push(EncodedFrame {
                    data,
                    keyframe: f.flags & vpx::VPX_FRAME_IS_KEY != 0,
                    pts: f.pts,
                });
            }
            Ok(out)
        }
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: both were set up in new() and are released once.
        unsafe {
            if !self.img.is_null() {
                vpx::vpx_img_free(self.img);
            }
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

/// The size a VP8 keyframe declares: `None` if `frame` is not a keyframe
/// (RFC 6386 §9.1: 3-byte frame tag with bit 0 clear, start code
/// `9d 01 2a`, then 14-bit width and height, little-endian).
pub fn keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let h = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keyframe_headers() {
        let kf = [0x50, 0x2a, 0x01, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0x20, 0x03];
        assert_eq!(keyframe_size(&kf), Some((1280, 800)));
        let mut inter = kf;
        inter[0] |= 1;
        assert_eq!(keyframe_size(&inter), None);
        assert_eq!(keyframe_size(&kf[..9]), None);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(
            Vp8Encoder::new(EncoderConfig::new(0, 10)),
            Err(EncodeError::BadSize(0, 10))
        ));
    }
}
