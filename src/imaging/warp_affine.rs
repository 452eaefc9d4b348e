//! OpenCV's `warpAffine` with `INTER_LINEAR` and `BORDER_CONSTANT`, with OpenCV's arithmetic, and
//! `getAffineTransform`. The human parsers warp photos into their input square and their logits
//! back with these, and their labels follow the exact rounding:
//! - each destination pixel's source position is computed in fixed point and snapped to 1/32
//!   pixel (`INTER_BITS` = 5), as OpenCV's `WarpAffineInvoker` does;
//! - 8-bit images blend with integer weights scaled by 2^15 (`INTER_REMAP_COEF_BITS`), rounded
//!   half up, as `remapBilinear` with `FixedPtCast` does;
//! - float images blend with float weights at the same 1/32 positions;
//! - a source pixel outside the image reads the border value; a destination pixel whose four
//!   neighbours all lie outside is the border value.
//!
//! Matches `cv2.warpAffine` of opencv-python-headless 4.10 bit for bit on 8-bit images and to
//! float rounding on float ones (tests/models/schp.rs, fixtures from scripts/fixtures/schp.py).

use rayon::prelude::*;

/// A 2×3 affine matrix, row-major: `x' = m[0] x + m[1] y + m[2]`, `y' = m[3] x + m[4] y + m[5]`.
pub type AffineMatrix = [f64; 6];

/// Bits of the sub-pixel position.
const INTER_BITS: i32 = 5;
const INTER_TAB_SIZE: i32 = 1 << INTER_BITS;
/// Bits of the fixed-point source position before the snap.
const AB_BITS: i32 = 10;
const AB_SCALE: f64 = (1 << AB_BITS) as f64;
/// Half a 1/32 step at `AB_BITS`, so the snap rounds to nearest.
const ROUND_DELTA: i32 = (1 << AB_BITS) / INTER_TAB_SIZE / 2;
/// Bits of the 8-bit blending weights.
const COEF_BITS: i32 = 15;

/// The affine map taking the three `src` points onto the three `dst` points, as
/// `cv2.getAffineTransform`: the 6×6 linear system solved in double precision by OpenCV's LU
/// decomposition with partial pivoting, operation for operation. `None` when the points are
/// collinear.
pub fn get_affine_transform(src: &[[f32; 2]; 3], dst: &[[f32; 2]; 3]) -> Option<AffineMatrix> {
    let mut a = [0f64; 36];
    let mut b = [0f64; 6];
    for i in 0..3 {
        let j = i * 12;
        let k = i * 12 + 6;
        let (x, y) = (f64::from(src[i][0]), f64::from(src[i][1]));
        a[j] = x;
        a[k + 3] = x;
        a[j + 1] = y;
        a[k + 4] = y;
        a[j + 2] = 1.0;
        a[k + 5] = 1.0;
        b[i * 2] = f64::from(dst[i][0]);
        b[i * 2 + 1] = f64::from(dst[i][1]);
    }
    lu_solve(&mut a, &mut b, 6).then_some(b)
}

/// OpenCV's `LUImpl` for one right-hand side: solves `a x = b` in place (`b` becomes `x`).
/// False for a singular matrix (a pivot below `100 ε`, as `hal::LU64f`).
fn lu_solve(a: &mut [f64], b: &mut [f64], m: usize) -> bool {
    let eps = f64::EPSILON * 100.0;
    for i in 0..m {
        let mut k = i;
        for j in i + 1..m {
            if a[j * m + i].abs() > a[k * m + i].abs() {
                k = j;
            }
        }
        if a[k * m + i].abs() < eps {
            return false;
        }
        if k != i {
            for j in i..m {
                a.swap(i * m + j, k * m + j);
            }
            b.swap(i, k);
        }
        let d = -1.0 / a[i * m + i];
        for j in i + 1..m {
            let alpha = a[j * m + i] * d;
            for k in i + 1..m {
                a[j * m + k] += alpha * a[i * m + k];
            }
            b[j] += alpha * b[i];
        }
    }
    for i in (0..m).rev() {
        let mut s = b[i];
        for k in i + 1..m {
            s -= a[i * m + k] * b[k];
        }
        b[i] = s / a[i * m + i];
    }
    true
}

/// The inverse map, computed as `warpAffine` does when it is not given `WARP_INVERSE_MAP`
/// (a singular matrix gives zeros, as there).
pub fn invert_affine(m: &AffineMatrix) -> AffineMatrix {
    let det = m[0] * m[4] - m[1] * m[3];
    let d = if det != 0.0 { 1.0 / det } else { 0.0 };
    let a11 = m[4] * d;
    let a22 = m[0] * d;
    let a12 = m[1] * -d;
    let a21 = m[3] * -d;
    let b1 = -a11 * m[2] - a12 * m[5];
    let b2 = -a21 * m[2] - a22 * m[5];
    [a11, a12, b1, a21, a22, b2]
}

/// `cvRound`: to nearest, ties to even, saturated.
fn round_to_i32(v: f64) -> i32 {
    v.round_ties_even() as i32
}

/// One destination pixel's source: the top-left neighbour and the position within, in 1/32.
#[derive(Debug, Clone, Copy)]
struct Sample {
    sx: i32,
    sy: i32,
    fx: usize,
    fy: usize,
}

/// The fixed-point source positions of a destination image under the inverse map `inv`, row by
/// row, as `WarpAffineInvoker`.
struct SampleGrid {
    inv: AffineMatrix,
    adelta: Vec<i32>,
    bdelta: Vec<i32>,
}

impl SampleGrid {
    fn new(inv: &AffineMatrix, dst_width: usize) -> Self {
        let adelta = (0..dst_width)
            .map(|x| round_to_i32(inv[0] * x as f64 * AB_SCALE))
            .collect();
        let bdelta = (0..dst_width)
            .map(|x| round_to_i32(inv[3] * x as f64 * AB_SCALE))
            .collect();
        Self {
            inv: *inv,
            adelta,
            bdelta,
        }
    }

    fn row(&self, y: usize) -> impl Iterator<Item = Sample> + '_ {
        let m = &self.inv;
        let x0 = round_to_i32((m[1] * y as f64 + m[2]) * AB_SCALE).wrapping_add(ROUND_DELTA);
        let y0 = round_to_i32((m[4] * y as f64 + m[5]) * AB_SCALE).wrapping_add(ROUND_DELTA);
        let short = |v: i32| v.clamp(i16::MIN as i32, i16::MAX as i32);
        self.adelta.iter().zip(&self.bdelta).map(move |(&a, &b)| {
            let x = x0.wrapping_add(a) >> (AB_BITS - INTER_BITS);
            let y = y0.wrapping_add(b) >> (AB_BITS - INTER_BITS);
            Sample {
                sx: short(x >> INTER_BITS),
                sy: short(y >> INTER_BITS),
                fx: (x & (INTER_TAB_SIZE - 1)) as usize,
                fy: (y & (INTER_TAB_SIZE - 1)) as usize,
            }
        })
    }
}

/// The four neighbours of a sample (top-left, top-right, bottom-left, bottom-right) as pixel
/// indices, `None` for one outside the image; `Err(())` when all four are outside.
fn neighbours(s: Sample, width: usize, height: usize) -> Result<[Option<usize>; 4], ()> {
    let (w, h) = (width as i64, height as i64);
    let (sx, sy) = (i64::from(s.sx), i64::from(s.sy));
    if sx >= w || sx + 1 < 0 || sy >= h || sy + 1 < 0 {
        return Err(());
    }
    let at = |x: i64, y: i64| (x >= 0 && x < w && y >= 0 && y < h).then(|| (y * w + x) as usize);
    Ok([
        at(sx, sy),
        at(sx + 1, sy),
        at(sx, sy + 1),
        at(sx + 1, sy + 1),
    ])
}

/// The 8-bit weights of a 1/32 position, as OpenCV's `BilinearTab_i`: exact products scaled by
/// 2^15, except that the whole weight 2^15 does not fit its 16-bit table and becomes
/// 32767 + 1 on the diagonal neighbour (its table correction).
fn weights_u8(fx: usize, fy: usize) -> [i32; 4] {
    if fx == 0 && fy == 0 {
        return [32767, 0, 0, 1];
    }
    let (fx, fy) = (fx as i32, fy as i32);
    let n = INTER_TAB_SIZE;
    [
        (n - fx) * (n - fy) * 32,
        fx * (n - fy) * 32,
        (n - fx) * fy * 32,
        fx * fy * 32,
    ]
}

/// The float weights of a 1/32 position, as OpenCV's `BilinearTab_f` (exact in f32).
fn weights_f32(fx: usize, fy: usize) -> [f32; 4] {
    let ax = fx as f32 / INTER_TAB_SIZE as f32;
    let ay = fy as f32 / INTER_TAB_SIZE as f32;
    [
        (1.0 - ay) * (1.0 - ax),
        (1.0 - ay) * ax,
        ay * (1.0 - ax),
        ay * ax,
    ]
}

/// Checks the sizes shared by both warps.
fn check_sizes(len: usize, width: usize, height: usize, channels: usize, border: usize) {
    assert_eq!(len, width * height * channels, "image size");
    assert_eq!(border, channels, "one border value per channel");
}

/// `cv2.warpAffine(src, m, (dst_width, dst_height), flags=INTER_LINEAR,
/// borderMode=BORDER_CONSTANT, borderValue=border)` on an 8-bit image of `channels` interleaved
/// channels, `m` mapping source to destination coordinates. Panics when `src` or `border` do
/// not match the sizes.
#[allow(clippy::too_many_arguments)]
pub fn warp_affine_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    m: &AffineMatrix,
    dst_width: usize,
    dst_height: usize,
    border: &[u8],
) -> Vec<u8> {
    check_sizes(src.len(), width, height, channels, border.len());
    let grid = SampleGrid::new(&invert_affine(m), dst_width);
    let mut dst = vec![0u8; dst_width * dst_height * channels];
    if dst.is_empty() {
        return dst;
    }
    dst.par_chunks_mut(dst_width * channels)
        .enumerate()
        .for_each(|(y, row)| {
            for (s, out) in grid.row(y).zip(row.chunks_exact_mut(channels)) {
                let Ok(corners) = neighbours(s, width, height) else {
                    out.copy_from_slice(border);
                    continue;
                };
                let w = weights_u8(s.fx, s.fy);
                for (c, o) in out.iter_mut().enumerate() {
                    let value = |p: Option<usize>| {
                        i32::from(p.map_or(border[c], |i| src[i * channels + c]))
                    };
                    let t = value(corners[0]) * w[0]
                        + value(corners[1]) * w[1]
                        + value(corners[2]) * w[2]
                        + value(corners[3]) * w[3];
                    *o = ((t + (1 << (COEF_BITS - 1))) >> COEF_BITS).clamp(0, 255) as u8;
                }
            }
        });
    dst
}

/// As [`warp_affine_u8`] on a float image (one border value for every channel), the blend in
/// f32 in OpenCV's order.
#[allow(clippy::too_many_arguments)]
pub fn warp_affine_f32(
    src: &[f32],
    width: usize,
    height: usize,
    channels: usize,
    m: &AffineMatrix,
    dst_width: usize,
    dst_height: usize,
    border: f32,
) -> Vec<f32> {
    check_sizes(src.len(), width, height, channels, channels);
    let grid = SampleGrid::new(&invert_affine(m), dst_width);
    let mut dst = vec![0f32; dst_width * dst_height * channels];
    if dst.is_empty() {
        return dst;
    }
    dst.par_chunks_mut(dst_width * channels)
        .enumerate()
        .for_each(|(y, row)| {
            for (s, out) in grid.row(y).zip(row.chunks_exact_mut(channels)) {
                let Ok(corners) = neighbours(s, width, height) else {
                    out.fill(border);
                    continue;
                };
                let w = weights_f32(s.fx, s.fy);
                let base = corners.map(|p| p.map(|i| i * channels));
                for (c, o) in out.iter_mut().enumerate() {
                    let value = |p: Option<usize>| p.map_or(border, |i| src[i + c]);
                    *o = value(base[0]) * w[0]
                        + value(base[1]) * w[1]
                        + value(base[2]) * w[2]
                        + value(base[3]) * w[3];
                }
            }
        });
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_copies_and_a_shift_fills_the_border() {
        let src: Vec<u8> = (0..12).collect();
        let identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        assert_eq!(warp_affine_u8(&src, 4, 3, 1, &identity, 4, 3, &[9]), src);
        let shift = [1.0, 0.0, 2.0, 0.0, 1.0, 0.0];
        let out = warp_affine_u8(&src, 4, 3, 1, &shift, 4, 3, &[9]);
        assert_eq!(&out[..4], &[9, 9, 0, 1]);
        let f: Vec<f32> = src.iter().map(|&v| f32::from(v)).collect();
        let out = warp_affine_f32(&f, 4, 3, 1, &shift, 4, 3, -1.0);
        assert_eq!(&out[..4], &[-1.0, -1.0, 0.0, 1.0]);
    }

    #[test]
    fn the_affine_of_three_points_maps_them() {
        let src = [[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]];
        let dst = [[1.0, 1.0], [5.0, 1.0], [1.0, 3.0]];
        let m = get_affine_transform(&src, &dst).unwrap();
        assert_eq!(m, [2.0, 0.0, 1.0, 0.0, 0.5, 1.0]);
        let inv = invert_affine(&m);
        assert_eq!(inv, [0.5, 0.0, -0.5, 0.0, 2.0, -2.0]);
        assert!(get_affine_transform(&src, &[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]).is_some());
        assert!(get_affine_transform(&[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], &dst).is_none());
    }
}
