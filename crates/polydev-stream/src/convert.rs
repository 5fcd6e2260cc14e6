//! Pixel conversion: 32-bit X images (BGRX or RGBX bytes) to I420, the
//! encoder's input.
//!
//! BT.601 coefficients, limited ("studio") range, which is what a VP8
//! decoder assumes when the stream says nothing else. Chroma is the
//! average of each 2×2 block; odd widths and heights repeat the last
//! column or row. Integer arithmetic only.

use thiserror::Error;

/// Byte order of one 32-bit pixel in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Blue, green, red, unused: X's usual little-endian depth-24 visual
    /// (red mask `0xff0000`).
    Bgrx,
    /// Red, green, blue, unused (red mask `0x0000ff`).
    Rgbx,
}

/// Three planes to write into, with their strides in bytes.
pub struct I420Mut<'a> {
    /// Luma plane, `y_stride * height` bytes at least.
    pub y: &'a mut [u8],
    /// Bytes from one luma row to the next.
    pub y_stride: usize,
    /// Cb plane, `u_stride * ceil(height / 2)` bytes at least.
    pub u: &'a mut [u8],
    /// Bytes from one Cb row to the next.
    pub u_stride: usize,
    /// Cr plane, like `u`.
    pub v: &'a mut [u8],
    /// Bytes from one Cr row to the next.
    pub v_stride: usize,
}

/// A conversion that cannot be done with the buffers given.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConvertError {
    /// A buffer is smaller than the image needs.
    #[error("converting a {width}x{height} image to I420: the {what} buffer holds {got} bytes, {need} needed")]
    BufferTooSmall {
        /// Width of the image.
        width: usize,
        /// Height of the image.
        height: usize,
        /// Which buffer.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The size needed.
        need: usize,
    },
}

fn check(
    width: usize,
    height: usize,
    what: &'static str,
    got: usize,
    stride: usize,
    row: usize,
    rows: usize,
) -> Result<(), ConvertError> {
    let need = if rows == 0 {
        0
    } else {
        stride * (rows - 1) + row
    };
    if got < need || stride < row {
        return Err(ConvertError::BufferTooSmall {
            width,
            height,
            what,
            got,
            need: need.max(stride * rows),
        });
    }
    Ok(())
}

/// Converts a `width`×`height` image of 32-bit pixels (`src_stride` bytes
/// per row) to I420 in `dst`.
pub fn to_i420(
    src: &[u8],
    src_stride: usize,
    width: usize,
    height: usize,
    format: PixelFormat,
    dst: &mut I420Mut<'_>,
) -> Result<(), ConvertError> {
    if width == 0 || height == 0 {
        return Ok(());
    }
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    check(
        width,
        height,
        "source",
        src.len(),
        src_stride,
        width * 4,
        height,
    )?;
    check(width, height, "Y", dst.y.len(), dst.y_stride, width, height)?;
    check(width, height, "U", dst.u.len(), dst.u_stride, cw, ch)?;
    check(width, height, "V", dst.v.len(), dst.v_stride, cw, ch)?;
    match format {
        PixelFormat::Bgrx => convert::<2, 0>(src, src_stride, width, height, dst),
        PixelFormat::Rgbx => convert::<0, 2>(src, src_stride, width, height, dst),
    }
    Ok(())
}

#[inline(always)]
fn luma(r: i32, g: i32, b: i32) -> u8 {
    (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8
}

/// One row of luma. Written as a plain zip over 4-byte pixels so the
/// compiler vectorises it.
#[inline(always)]
fn luma_row<const R: usize, const B: usize>(src: &[u8], dst: &mut [u8]) {
    for (p, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = luma(p[R] as i32, p[1] as i32, p[B] as i32);
    }
}

/// One row of chroma from two source rows (2×2 averages; an odd last
/// column counts twice).
#[inline(always)]
fn chroma_row<const R: usize, const B: usize>(
    row0: &[u8],
    row1: &[u8],
    u: &mut [u8],
    v: &mut [u8],
) {
    let pairs = row0.chunks_exact(8).zip(row1.chunks_exact(8));
    for ((a, b), (u, v)) in pairs.zip(u.iter_mut().zip(v.iter_mut())) {
        let rs = a[R] as i32 + a[4 + R] as i32 + b[R] as i32 + b[4 + R] as i32;
        let gs = a[1] as i32 + a[5] as i32 + b[1] as i32 + b[5] as i32;
        let bs = a[B] as i32 + a[4 + B] as i32 + b[B] as i32 + b[4 + B] as i32;
        *u = (((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128) as u8;
        *v = (((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128) as u8;
    }
    let w = row0.len() / 4;
    if w % 2 == 1 {
        let (a, b) = (&row0[(w - 1) * 4..], &row1[(w - 1) * 4..]);
        let rs = 2 * (a[R] as i32 + b[R] as i32);
        let gs = 2 * (a[1] as i32 + b[1] as i32);
        let bs = 2 * (a[B] as i32 + b[B] as i32);
        u[w / 2] = (((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128) as u8;
        v[w / 2] = (((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128) as u8;
    }
}

/// `R` and `B` are the byte offsets of red and blue within a pixel.
fn convert<const R: usize, const B: usize>(
    src: &[u8],
    src_stride: usize,
    width: usize,
    height: usize,
    dst: &mut I420Mut<'_>,
) {
    let cw = width.div_ceil(2);
    for y in 0..height {
        let row = &src[y * src_stride..y * src_stride + width * 4];
        luma_row::<R, B>(row, &mut dst.y[y * dst.y_stride..y * dst.y_stride + width]);
    }
    for cy in 0..height.div_ceil(2) {
        let y0 = cy * 2;
        let y1 = (y0 + 1).min(height - 1);
        let row0 = &src[y0 * src_stride..y0 * src_stride + width * 4];
        let row1 = &src[y1 * src_stride..y1 * src_stride + width * 4];
        chroma_row::<R, B>(
            row0,
            row1,
            &mut dst.u[cy * dst.u_stride..cy * dst.u_stride + cw],
            &mut dst.v[cy * dst.v_stride..cy * dst.v_stride + cw],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pixels: &[[u8; 3]], width: usize, height: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut src = Vec::new();
        for p in pixels {
            // BGRX
            src.extend_from_slice(&[p[2], p[1], p[0], 0xff]);
        }
        let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
        let (mut y, mut u, mut v) = (vec![0; width * height], vec![0; cw * ch], vec![0; cw * ch]);
        to_i420(
            &src,
            width * 4,
            width,
            height,
            PixelFormat::Bgrx,
            &mut I420Mut {
                y: &mut y,
                y_stride: width,
                u: &mut u,
                u_stride: cw,
                v: &mut v,
                v_stride: cw,
            },
        )
        .unwrap();
        (y, u, v)
    }

    #[test]
    fn primaries_match_bt601_limited_range() {
        let cases = [
            ([0, 0, 0], (16, 128, 128)),
            ([255, 255, 255], (235, 128, 128)),
            ([255, 0, 0], (82, 90, 240)),
            ([0, 255, 0], (144, 54, 34)),
            ([0, 0, 255], (41, 240, 110)),
        ];
        for (rgb, (ey, eu, ev)) in cases {
            let (y, u, v) = run(&[rgb; 4], 2, 2);
            assert!(
                y.iter().all(|&l| (l as i32 - ey).abs() <= 1),
                "{rgb:?}: Y {y:?}"
            );
            assert!((u[0] as i32 - eu).abs() <= 1, "{rgb:?}: U {}", u[0]);
            assert!((v[0] as i32 - ev).abs() <= 1, "{rgb:?}: V {}", v[0]);
        }
    }

    #[test]
    fn odd_sizes_and_rgbx() {
        let px = [[10, 200, 30]; 15];
        let (y, u, v) = run(&px, 5, 3);
        assert_eq!(y.len(), 15);
        assert!(y.iter().all(|&l| l == y[0]));
        assert_eq!((u.len(), v.len()), (6, 6));
        assert!(u.iter().all(|&c| c == u[0]) && v.iter().all(|&c| c == v[0]));
        // The same picture as RGBX gives the same planes.
        let src: Vec<u8> = px.iter().flat_map(|p| [p[0], p[1], p[2], 0]).collect();
        let (mut y2, mut u2, mut v2) = (vec![0; 15], vec![0; 6], vec![0; 6]);
        to_i420(
            &src,
            20,
            5,
            3,
            PixelFormat::Rgbx,
            &mut I420Mut {
                y: &mut y2,
                y_stride: 5,
                u: &mut u2,
                u_stride: 3,
                v: &mut v2,
                v_stride: 3,
            },
        )
        .unwrap();
        assert_eq!((y, u, v), (y2, u2, v2));
    }

    /// The straightforward per-pixel formula, for comparison.
    fn reference(px: &[[u8; 3]], w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let at = |x: usize, y: usize| px[y.min(h - 1) * w + x.min(w - 1)].map(|c| c as i32);
        let y: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).map(move |x| (y, x)))
            .map(|(yy, x)| {
                let [r, g, b] = at(x, yy);
                luma(r, g, b)
            })
            .collect();
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut u = vec![0; cw * ch];
        let mut v = vec![0; cw * ch];
        for cy in 0..ch {
            for cx in 0..cw {
                let mut s = [0i32; 3];
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let p = at(cx * 2 + dx, cy * 2 + dy);
                    for i in 0..3 {
                        s[i] += p[i];
                    }
                }
                u[cy * cw + cx] = (((-38 * s[0] - 74 * s[1] + 112 * s[2] + 512) >> 10) + 128) as u8;
                v[cy * cw + cx] = (((112 * s[0] - 94 * s[1] - 18 * s[2] + 512) >> 10) + 128) as u8;
            }
        }
        (y, u, v)
    }

    #[test]
    fn matches_the_reference_on_noise() {
        let mut seed = 12345u32;
        for (w, h) in [(16, 8), (17, 9), (1, 1), (3, 2), (64, 33)] {
            let px: Vec<[u8; 3]> = (0..w * h)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    let b = seed.to_le_bytes();
                    [b[1], b[2], b[3]]
                })
                .collect();
            assert_eq!(run(&px, w, h), reference(&px, w, h), "{w}x{h}");
        }
    }

    #[test]
    fn small_buffers_are_errors() {
        let src = vec![0u8; 16];
        let (mut y, mut u, mut v) = (vec![0; 3], vec![0; 1], vec![0; 1]);
        let err = to_i420(
            &src,
            8,
            2,
            2,
            PixelFormat::Bgrx,
            &mut I420Mut {
                y: &mut y,
                y_stride: 2,
                u: &mut u,
                u_stride: 1,
                v: &mut v,
                v_stride: 1,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("Y buffer"), "{err}");
        assert!(to_i420(
            &src[..8],
            8,
            2,
            2,
            PixelFormat::Bgrx,
            &mut I420Mut {
                y: &mut [0; 4],
                y_stride: 2,
                u: &mut u,
                u_stride: 1,
                v: &mut v,
                v_stride: 1
            }
        )
        .is_err());
    }
}
