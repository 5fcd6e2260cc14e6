//! Hand-written FFI for the part of libvpx the encoder uses (VP8 encoding
//! only), matching the headers of libvpx 1.12 (`/usr/include/vpx/*.h`,
//! Debian 12's `libvpx-dev`).
//!
//! libvpx is linked statically (see `build.rs`): the structures below must
//! match the headers of the library that is linked, not of whatever libvpx
//! the guest has. `tests/vpx_layout.rs` compiles a C program against the
//! installed headers and compares every size, offset and constant used here.
//!
//! Only what the encoder needs is declared; the configuration structure is
//! declared in full because `vpx_codec_enc_config_default` writes all of it.

#![allow(non_camel_case_types, missing_docs)]

use std::os::raw::{c_char, c_int, c_long, c_uint, c_ulong, c_void};

/// `VPX_IMAGE_ABI_VERSION`.
pub const VPX_IMAGE_ABI_VERSION: c_int = 5;
/// `VPX_CODEC_ABI_VERSION` = 4 + `VPX_IMAGE_ABI_VERSION`.
pub const VPX_CODEC_ABI_VERSION: c_int = 4 + VPX_IMAGE_ABI_VERSION;
/// `VPX_EXT_RATECTRL_ABI_VERSION`.
pub const VPX_EXT_RATECTRL_ABI_VERSION: c_int = 1;
/// `VPX_ENCODER_ABI_VERSION`, passed to `vpx_codec_enc_init_ver`.
pub const VPX_ENCODER_ABI_VERSION: c_int =
    15 + VPX_CODEC_ABI_VERSION + VPX_EXT_RATECTRL_ABI_VERSION;

pub const VPX_TS_MAX_PERIODICITY: usize = 16;
pub const VPX_TS_MAX_LAYERS: usize = 5;
pub const VPX_MAX_LAYERS: usize = 12;
pub const VPX_SS_MAX_LAYERS: usize = 5;

/// `vpx_codec_err_t`: `VPX_CODEC_OK`.
pub const VPX_CODEC_OK: c_int = 0;
/// `VPX_IMG_FMT_I420` (`VPX_IMG_FMT_PLANAR | 2`).
pub const VPX_IMG_FMT_I420: c_int = 0x100 | 2;
/// `VPX_CODEC_CX_FRAME_PKT`.
pub const VPX_CODEC_CX_FRAME_PKT: c_int = 0;
/// `VPX_FRAME_IS_KEY`.
pub const VPX_FRAME_IS_KEY: u32 = 0x1;
/// `VPX_EFLAG_FORCE_KF`.
pub const VPX_EFLAG_FORCE_KF: c_long = 1;
/// `VPX_DL_REALTIME`.
pub const VPX_DL_REALTIME: c_ulong = 1;
/// `VPX_ERROR_RESILIENT_DEFAULT`.
pub const VPX_ERROR_RESILIENT_DEFAULT: u32 = 0x1;
/// `VPX_RC_ONE_PASS`.
pub const VPX_RC_ONE_PASS: c_int = 0;
/// `VPX_CBR`.
pub const VPX_CBR: c_int = 1;
/// `VPX_KF_AUTO`.
pub const VPX_KF_AUTO: c_int = 1;

/// `enum vp8e_enc_control_id`: `VP8E_SET_CPUUSED`.
pub const VP8E_SET_CPUUSED: c_int = 13;
/// `VP8E_SET_NOISE_SENSITIVITY`.
pub const VP8E_SET_NOISE_SENSITIVITY: c_int = 15;
/// `VP8E_SET_STATIC_THRESHOLD`.
pub const VP8E_SET_STATIC_THRESHOLD: c_int = 17;
/// `VP8E_SET_TOKEN_PARTITIONS`.
pub const VP8E_SET_TOKEN_PARTITIONS: c_int = 18;
/// `VP8E_SET_MAX_INTRA_BITRATE_PCT`.
pub const VP8E_SET_MAX_INTRA_BITRATE_PCT: c_int = 26;
/// `VP8E_SET_SCREEN_CONTENT_MODE`.
pub const VP8E_SET_SCREEN_CONTENT_MODE: c_int = 31;

/// Opaque `vpx_codec_iface_t`.
#[repr(C)]
pub struct vpx_codec_iface_t {
    _opaque: [u8; 0],
}

/// `struct vpx_rational`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vpx_rational_t {
    pub num: c_int,
    pub den: c_int,
}

/// `vpx_fixed_buf_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vpx_fixed_buf_t {
    pub buf: *mut c_void,
    pub sz: usize,
}

/// `vpx_codec_ctx_t`.
#[repr(C)]
pub struct vpx_codec_ctx_t {
    pub name: *const c_char,
    pub iface: *const vpx_codec_iface_t,
    pub err: c_int,
    pub err_detail: *const c_char,
    pub init_flags: c_long,
    /// Union of the decoder/encoder configuration pointers.
    pub config: *const c_void,
    pub priv_: *mut c_void,
}

/// `vpx_codec_enc_cfg_t`, in full.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vpx_codec_enc_cfg_t {
    pub g_usage: c_uint,
    pub g_threads: c_uint,
    pub g_profile: c_uint,
    pub g_w: c_uint,
    pub g_h: c_uint,
    /// `vpx_bit_depth_t`.
    pub g_bit_depth: c_int,
    pub g_input_bit_depth: c_uint,
    pub g_timebase: vpx_rational_t,
    pub g_error_resilient: u32,
    /// `enum vpx_enc_pass`.
    pub g_pass: c_int,
    pub g_lag_in_frames: c_uint,
    pub rc_dropframe_thresh: c_uint,
    pub rc_resize_allowed: c_uint,
    pub rc_scaled_width: c_uint,
    pub rc_scaled_height: c_uint,
    pub rc_resize_up_thresh: c_uint,
    pub rc_resize_down_thresh: c_uint,
    /// `enum vpx_rc_mode`.
    pub rc_end_usage: c_int,
    pub rc_twopass_stats_in: vpx_fixed_buf_t,
    pub rc_firstpass_mb_stats_in: vpx_fixed_buf_t,
    pub rc_target_bitrate: c_uint,
    pub rc_min_quantizer: c_uint,
    pub rc_max_quantizer: c_uint,
    pub rc_undershoot_pct: c_uint,
    pub rc_overshoot_pct: c_uint,
    pub rc_buf_sz: c_uint,
    pub rc_buf_initial_sz: c_uint,
    pub rc_buf_optimal_sz: c_uint,
    pub rc_2pass_vbr_bias_pct: c_uint,
    pub rc_2pass_vbr_minsection_pct: c_uint,
    pub rc_2pass_vbr_maxsection_pct: c_uint,
    pub rc_2pass_vbr_corpus_complexity: c_uint,
    /// `enum vpx_kf_mode`.
    pub kf_mode: c_int,
    pub kf_min_dist: c_uint,
    pub kf_max_dist: c_uint,
    pub ss_number_layers: c_uint,
    pub ss_enable_auto_alt_ref: [c_int; VPX_SS_MAX_LAYERS],
    pub ss_target_bitrate: [c_uint; VPX_SS_MAX_LAYERS],
    pub ts_number_layers: c_uint,
    pub ts_target_bitrate: [c_uint; VPX_TS_MAX_LAYERS],
    pub ts_rate_decimator: [c_uint; VPX_TS_MAX_LAYERS],
    pub ts_periodicity: c_uint,
    pub ts_layer_id: [c_uint; VPX_TS_MAX_PERIODICITY],
    pub layer_target_bitrate: [c_uint; VPX_MAX_LAYERS],
    pub temporal_layering_mode: c_int,
    pub use_vizier_rc_params: c_int,
    pub active_wq_factor: vpx_rational_t,
    pub err_per_mb_factor: vpx_rational_t,
    pub sr_default_decay_limit: vpx_rational_t,
    pub sr_diff_factor: vpx_rational_t,
    pub kf_err_per_mb_factor: vpx_rational_t,
    pub kf_frame_min_boost_factor: vpx_rational_t,
    pub kf_frame_max_boost_first_factor: vpx_rational_t,
    pub kf_frame_max_boost_subs_factor: vpx_rational_t,
    pub kf_max_total_boost_factor: vpx_rational_t,
    pub gf_max_total_boost_factor: vpx_rational_t,
    pub gf_frame_max_boost_factor: vpx_rational_t,
    pub zm_factor: vpx_rational_t,
    pub rd_mult_inter_qp_fac: vpx_rational_t,
    pub rd_mult_arf_qp_fac: vpx_rational_t,
    pub rd_mult_key_qp_fac: vpx_rational_t,
}

/// `vpx_image_t`.
#[repr(C)]
pub struct vpx_image_t {
    /// `vpx_img_fmt_t`.
    pub fmt: c_int,
    /// `vpx_color_space_t`.
    pub cs: c_int,
    /// `vpx_color_range_t`.
    pub range: c_int,
    pub w: c_uint,
    pub h: c_uint,
    pub bit_depth: c_uint,
    pub d_w: c_uint,
    pub d_h: c_uint,
    pub r_w: c_uint,
    pub r_h: c_uint,
    pub x_chroma_shift: c_uint,
    pub y_chroma_shift: c_uint,
    pub planes: [*mut u8; 4],
    pub stride: [c_int; 4],
    pub bps: c_int,
    pub user_priv: *mut c_void,
    pub img_data: *mut u8,
    pub img_data_owner: c_int,
    pub self_allocd: c_int,
    pub fb_priv: *mut c_void,
}

/// The `frame` member of `vpx_codec_cx_pkt_t`'s data union.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vpx_codec_cx_pkt_frame {
    pub buf: *mut c_void,
    pub sz: usize,
    pub pts: i64,
    pub duration: c_ulong,
    pub flags: u32,
    pub partition_id: c_int,
    pub width: [c_uint; VPX_SS_MAX_LAYERS],
    pub height: [c_uint; VPX_SS_MAX_LAYERS],
    pub spatial_layer_encoded: [u8; VPX_SS_MAX_LAYERS],
}

/// The data union of `vpx_codec_cx_pkt_t` (the `psnr` member, with
/// doubles, fixes its alignment at 8; `pad` its size at 124 + padding).
#[repr(C)]
#[derive(Clone, Copy)]
pub union vpx_codec_cx_pkt_data {
    pub frame: vpx_codec_cx_pkt_frame,
    pub raw: vpx_fixed_buf_t,
    pub psnr_align: [f64; 12],
    pub pad: [c_char; 128 - 4],
}

/// `vpx_codec_cx_pkt_t`.
#[repr(C)]
pub struct vpx_codec_cx_pkt_t {
    /// `enum vpx_codec_cx_pkt_kind`.
    pub kind: c_int,
    pub data: vpx_codec_cx_pkt_data,
}

extern "C" {
    pub fn vpx_codec_vp8_cx() -> *const vpx_codec_iface_t;
    pub fn vpx_codec_version_str() -> *const c_char;
    pub fn vpx_codec_err_to_string(err: c_int) -> *const c_char;
    pub fn vpx_codec_error_detail(ctx: *const vpx_codec_ctx_t) -> *const c_char;
    pub fn vpx_codec_enc_config_default(
        iface: *const vpx_codec_iface_t,
        cfg: *mut vpx_codec_enc_cfg_t,
        usage: c_uint,
    ) -> c_int;
    pub fn vpx_codec_enc_init_ver(
        ctx: *mut vpx_codec_ctx_t,
        iface: *const vpx_codec_iface_t,
        cfg: *const vpx_codec_enc_cfg_t,
        flags: c_long,
        ver: c_int,
    ) -> c_int;
    pub fn vpx_codec_control_(ctx: *mut vpx_codec_ctx_t, ctrl_id: c_int, ...) -> c_int;
    pub fn vpx_codec_encode(
        ctx: *mut vpx_codec_ctx_t,
        img: *const vpx_image_t,
        pts: i64,
        duration: c_ulong,
        flags: c_long,
        deadline: c_ulong,
    ) -> c_int;
    pub fn vpx_codec_get_cx_data(
        ctx: *mut vpx_codec_ctx_t,
        iter: *mut *const c_void,
    ) -> *const vpx_codec_cx_pkt_t;
    pub fn vpx_codec_destroy(ctx: *mut vpx_codec_ctx_t) -> c_int;
    pub fn vpx_img_alloc(
        img: *mut vpx_image_t,
        fmt: c_int,
        d_w: c_uint,
        d_h: c_uint,
        align: c_uint,
    ) -> *mut vpx_image_t;
    pub fn vpx_img_free(img: *mut vpx_image_t);
}

/// Layout facts the layout test compares with the C compiler's: `(name,
/// value)` for sizes, offsets and constants.
#[allow(clippy::unnecessary_cast)] // C types differ per platform
pub fn layout_facts() -> Vec<(&'static str, i64)> {
    use std::mem::{offset_of, size_of};
    vec![
        (
            "sizeof(vpx_codec_ctx_t)",
            size_of::<vpx_codec_ctx_t>() as i64,
        ),
        (
            "offsetof(vpx_codec_ctx_t, err)",
            offset_of!(vpx_codec_ctx_t, err) as i64,
        ),
        (
            "offsetof(vpx_codec_ctx_t, priv)",
            offset_of!(vpx_codec_ctx_t, priv_) as i64,
        ),
        (
            "sizeof(vpx_codec_enc_cfg_t)",
            size_of::<vpx_codec_enc_cfg_t>() as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, g_timebase)",
            offset_of!(vpx_codec_enc_cfg_t, g_timebase) as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, g_lag_in_frames)",
            offset_of!(vpx_codec_enc_cfg_t, g_lag_in_frames) as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, rc_end_usage)",
            offset_of!(vpx_codec_enc_cfg_t, rc_end_usage) as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, rc_twopass_stats_in)",
            offset_of!(vpx_codec_enc_cfg_t, rc_twopass_stats_in) as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, rc_target_bitrate)",
            offset_of!(vpx_codec_enc_cfg_t, rc_target_bitrate) as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, rc_buf_optimal_sz)",
            offset_of!(vpx_codec_enc_cfg_t, rc_buf_optimal_sz) as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, kf_mode)",
            offset_of!(vpx_codec_enc_cfg_t, kf_mode) as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, kf_max_dist)",
            offset_of!(vpx_codec_enc_cfg_t, kf_max_dist) as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, layer_target_bitrate)",
            offset_of!(vpx_codec_enc_cfg_t, layer_target_bitrate) as i64,
        ),
        (
            "offsetof(vpx_codec_enc_cfg_t, rd_mult_key_qp_fac)",
            offset_of!(vpx_codec_enc_cfg_t, rd_mult_key_qp_fac) as i64,
        ),
        ("sizeof(vpx_image_t)", size_of::<vpx_image_t>() as i64),
        (
            "offsetof(vpx_image_t, planes)",
            offset_of!(vpx_image_t, planes) as i64,
        ),
        (
            "offsetof(vpx_image_t, stride)",
            offset_of!(vpx_image_t, stride) as i64,
        ),
        (
            "offsetof(vpx_image_t, fb_priv)",
            offset_of!(vpx_image_t, fb_priv) as i64,
        ),
        (
            "sizeof(vpx_codec_cx_pkt_t)",
            size_of::<vpx_codec_cx_pkt_t>() as i64,
        ),
        (
            "offsetof(vpx_codec_cx_pkt_t, data)",
            offset_of!(vpx_codec_cx_pkt_t, data) as i64,
        ),
        (
            "offsetof(vpx_codec_cx_pkt_t, data.frame.sz)",
            (offset_of!(vpx_codec_cx_pkt_t, data) + offset_of!(vpx_codec_cx_pkt_frame, sz)) as i64,
        ),
        (
            "offsetof(vpx_codec_cx_pkt_t, data.frame.pts)",
            (offset_of!(vpx_codec_cx_pkt_t, data) + offset_of!(vpx_codec_cx_pkt_frame, pts)) as i64,
        ),
        (
            "offsetof(vpx_codec_cx_pkt_t, data.frame.flags)",
            (offset_of!(vpx_codec_cx_pkt_t, data) + offset_of!(vpx_codec_cx_pkt_frame, flags))
                as i64,
        ),
        ("VPX_ENCODER_ABI_VERSION", VPX_ENCODER_ABI_VERSION as i64),
        ("VPX_IMG_FMT_I420", VPX_IMG_FMT_I420 as i64),
        ("VPX_CODEC_CX_FRAME_PKT", VPX_CODEC_CX_FRAME_PKT as i64),
        ("VPX_FRAME_IS_KEY", VPX_FRAME_IS_KEY as i64),
        ("VPX_EFLAG_FORCE_KF", VPX_EFLAG_FORCE_KF as i64),
        ("VPX_DL_REALTIME", VPX_DL_REALTIME as i64),
        (
            "VPX_ERROR_RESILIENT_DEFAULT",
            VPX_ERROR_RESILIENT_DEFAULT as i64,
        ),
        ("VPX_RC_ONE_PASS", VPX_RC_ONE_PASS as i64),
        ("VPX_CBR", VPX_CBR as i64),
        ("VPX_KF_AUTO", VPX_KF_AUTO as i64),
        ("VP8E_SET_CPUUSED", VP8E_SET_CPUUSED as i64),
        (
            "VP8E_SET_NOISE_SENSITIVITY",
            VP8E_SET_NOISE_SENSITIVITY as i64,
        ),
        (
            "VP8E_SET_STATIC_THRESHOLD",
            VP8E_SET_STATIC_THRESHOLD as i64,
        ),
        (
            "VP8E_SET_TOKEN_PARTITIONS",
            VP8E_SET_TOKEN_PARTITIONS as i64,
        ),
        (
            "VP8E_SET_MAX_INTRA_BITRATE_PCT",
            VP8E_SET_MAX_INTRA_BITRATE_PCT as i64,
        ),
        (
            "VP8E_SET_SCREEN_CONTENT_MODE",
            VP8E_SET_SCREEN_CONTENT_MODE as i64,
        ),
    ]
}
