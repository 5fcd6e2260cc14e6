//! Capture and encoding against a private Xvfb: frame sizes, pixels after
//! drawing, DAMAGE (no change → no frame, change → frame), and a VP8
//! keyframe whose header carries the screen size.

mod common;

use std::time::Duration;

use polydev_stream::capture::Capturer;
use polydev_stream::convert;
use polydev_stream::encode::{keyframe_size, EncoderConfig, Vp8Encoder};

fn check_size(w: u16, h: u16) {
    let Some(x) = common::xvfb(w, h) else { return };
    let mut cap = Capturer::open(x.display()).unwrap();
    assert_eq!(cap.size(), (w, h));
    assert!(cap.uses_shm(), "Xvfb has MIT-SHM");
    assert!(cap.uses_damage(), "Xvfb has DAMAGE");
    let win = common::TestWindow::open(x.display());

    // Draw a red block and a green one; find them in the capture.
    win.fill(0xff0000, 10, 20, 100, 50);
    win.fill(0x00ff00, (w - 60) as i16, (h - 40) as i16, 60, 40);
    assert!(
        cap.wait(Duration::from_secs(2)).unwrap(),
        "drawing is a change"
    );
    let f = cap.capture().unwrap();
    assert_eq!((f.width, f.height), (w, h));
    assert!(f.stride >= w as usize * 4);
    assert!(f.data.len() >= f.stride * h as usize);
    let px = |x: usize, y: usize| {
        let o = y * f.stride + x * 4;
        // BGRX on a little-endian depth-24 server
        (f.data[o + 2], f.data[o + 1], f.data[o])
    };
    assert_eq!(f.format, convert::PixelFormat::Bgrx);
    assert_eq!(px(50, 40), (255, 0, 0), "red block");
    assert_eq!(
        px(w as usize - 1, h as usize - 1),
        (0, 255, 0),
        "green block, last pixel"
    );
    assert_eq!(px(5, 5), (0, 0, 0), "black window elsewhere");
    let nonblack = f.data.chunks(4).filter(|p| p[..3] != [0, 0, 0]).count();
    assert_eq!(nonblack, 100 * 50 + 60 * 40);

    // Nothing changed: no damage, nothing to capture.
    assert!(
        !cap.wait(Duration::from_millis(300)).unwrap(),
        "no change, no frame"
    );
    assert!(!cap.is_dirty());
    // A change: reported.
    win.fill(0x0000ff, 200, 200, 8, 8);
    assert!(
        cap.wait(Duration::from_secs(2)).unwrap(),
        "a change is reported"
    );
    let f = cap.capture().unwrap();
    let o = 204 * f.stride + 204 * 4;
    assert_eq!(&f.data[o..o + 3], &[255, 0, 0], "blue block (BGR order)");
    assert!(
        !cap.wait(Duration::from_millis(300)).unwrap(),
        "quiet again"
    );

    // Encode it: a keyframe with the screen's size in its header.
    let mut enc = Vp8Encoder::new(EncoderConfig::new(w as u32, h as u32)).unwrap();
    let f = cap.capture().unwrap();
    convert::to_i420(
        f.data,
        f.stride,
        w as usize,
        h as usize,
        f.format,
        &mut enc.planes(),
    )
    .unwrap();
    let out = enc.encode(0, 3000, true).unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].keyframe);
    assert_eq!(keyframe_size(&out[0].data), Some((w, h)));
    // The next frame, unforced, is an inter frame.
    let out = enc.encode(3000, 3000, false).unwrap();
    assert!(out
        .iter()
        .all(|f| !f.keyframe && keyframe_size(&f.data).is_none()));
    // And a forced one is a keyframe again.
    let out = enc.encode(6000, 3000, true).unwrap();
    assert_eq!(keyframe_size(&out[0].data), Some((w, h)));
}

#[test]
fn capture_and_encode_1280x800() {
    check_size(1280, 800);
}

#[test]
fn capture_and_encode_1920x1080() {
    check_size(1920, 1080);
}

#[test]
fn odd_sizes_encode() {
    let mut enc = Vp8Encoder::new(EncoderConfig::new(333, 201)).unwrap();
    let src = vec![0x80u8; 333 * 4 * 201];
    convert::to_i420(
        &src,
        333 * 4,
        333,
        201,
        convert::PixelFormat::Bgrx,
        &mut enc.planes(),
    )
    .unwrap();
    let out = enc.encode(0, 3000, true).unwrap();
    assert_eq!(keyframe_size(&out[0].data), Some((333, 201)));
}

#[test]
fn a_missing_display_is_a_clear_error() {
    let e = Capturer::open(":4999").unwrap_err().to_string();
    assert!(e.starts_with("connecting to X display :4999:"), "{e}");
}
