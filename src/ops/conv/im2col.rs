//! The general CPU path of a dense convolution: banded im2col + one GEMM per band, with the
//! bias and the activation fused in. The bands run in parallel and each builds only a small
//! im2col block, so the peak memory stays at the output size. Pointwise convolutions skip the
//! im2col and multiply the input directly.

use rayon::prelude::*;

use super::{bands_per_image, gemm_rows, ConvActivation, Geometry, OutPtr};

/// Fills `col` (`Ci·K·K × rows·Wo`) with the im2col block of output rows `oy0..oy0 + rows`.
fn im2col(input: &[f32], g: &Geometry, oy0: usize, rows: usize, col: &mut [f32]) {
    let p = rows * g.wo;
    for c in 0..g.ci {
        let plane = &input[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.k {
            for kx in 0..g.k {
                let r = (c * g.k + ky) * g.k + kx;
                let dst = &mut col[r * p..(r + 1) * p];
                for dy in 0..rows {
                    let drow = &mut dst[dy * g.wo..(dy + 1) * g.wo];
                    let iy = ((oy0 + dy) * g.stride + ky) as isize - g.padding as isize;
                    if iy < 0 || iy as usize >= g.h {
                        drow.fill(0.0);
                        continue;
                    }
                    let srow = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    // Output x reads input x·stride + kx − padding.
                    let off = kx as isize - g.padding as isize;
                    if g.stride == 1 {
                        let lo = (-off).max(0) as usize;
                        let hi =
                            ((g.w as isize - off).min(g.wo as isize)).max(lo as isize) as usize;
                        drow[..lo].fill(0.0);
                        drow[lo..hi].copy_from_slice(
                            &srow[(lo as isize + off) as usize..(hi as isize + off) as usize],
                        );
                        drow[hi..].fill(0.0);
                    } else {
                        for (ox, d) in drow.iter_mut().enumerate() {
                            let ix = (ox * g.stride) as isize + off;
                            *d = if ix >= 0 && (ix as usize) < g.w {
                                srow[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
    }
}

/// Output rows per band: about `TARGET` output pixels, at least one row, and enough bands to
/// keep every thread busy.
fn band_rows(g: &Geometry) -> usize {
    const TARGET: usize = 768;
    (TARGET / g.wo.max(1))
        .min(g.ho.div_ceil(bands_per_image(g.n)))
        .clamp(1, g.ho)
}

/// `act(conv2d(input, weight) + bias)` on contiguous slices; answers `N×Co×Ho×Wo`.
pub(super) fn conv2d_fused_cpu(
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    g: Geometry,
    activation: ConvActivation,
) -> Vec<f32> {
    let out_plane = g.ho * g.wo;
    let kdim = g.ci * g.k * g.k;
    let mut out = vec![0f32; g.n * g.co * out_plane];
    let rows = band_rows(&g);
    let bands_per_image = g.ho.div_ceil(rows);
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..g.n * bands_per_image)
        .into_par_iter()
        .for_each_init(Vec::<f32>::new, |col, task| {
            let (b, band) = (task / bands_per_image, task % bands_per_image);
            let oy0 = band * rows;
            let r = rows.min(g.ho - oy0);
            let p = r * g.wo;
            let image = &input[b * g.ci * g.h * g.w..(b + 1) * g.ci * g.h * g.w];
            let (rhs, rhs_rs) = if g.pointwise() {
                (image[oy0 * g.w..].as_ptr(), g.h * g.w)
            } else {
                col.resize(kdim * p, 0.0);
                im2col(image, &g, oy0, r, col);
                (col.as_ptr(), p)
            };
            let dst = out_ptr;
            // SAFETY: `dst` points into `out` at image `b`, column `oy0·Wo`; this task alone
            // writes columns `oy0·Wo .. oy0·Wo + p` of the `Co × Ho·Wo` matrix of image `b`.
            // `rhs` and `weight` are live slices of at least the sizes the strides describe.
            unsafe {
                let dst = dst.0.add(b * g.co * out_plane + oy0 * g.wo);
                gemm_rows(
                    (g.co, p, kdim),
                    (dst, out_plane),
                    (weight.as_ptr(), kdim),
                    (rhs, rhs_rs),
                );
                for (c, &bc) in bias.iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(dst.add(c * out_plane), p);
                    activation.bias_apply(row, bc);
                }
            }
        });
    out
}
