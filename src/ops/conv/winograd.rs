//! The CPU path of 3×3, stride-1, padding-1 convolutions with enough input channels: Winograd
//! F(4×4, 3×3), with the bias and the activation fused in. [`winograd_weights`] transforms a
//! weight once at load time for [`conv2d_winograd`]; [`super::conv2d_fused`] transforms it per
//! call.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::{bands_per_image, gemm_rows, Conv2dFused, ConvActivation, Geometry, OutPtr};

/// Input channels from which the transforms pay off.
const MIN_CHANNELS: usize = 16;

/// Output pixels (over the batch) from which transforming the weight on each call pays off:
/// the transform costs about as much per input–output channel pair as 36 output pixels of
/// the direct GEMM save. Below it (the UNet's deepest levels, 16×6 at 512×384) the banded
/// im2col path is faster.
const MIN_PIXELS_PER_CALL: usize = 512;

/// Whether the Winograd path applies to a convolution: a 3×3 kernel, stride 1, padding 1 and
/// enough input channels.
pub(super) fn applies(g: &Geometry) -> bool {
    g.k == 3 && g.stride == 1 && g.padding == 1 && g.ci >= MIN_CHANNELS
}

/// Whether a convolution whose weight is not yet transformed should take the Winograd path:
/// [`applies`], and enough output pixels to repay the weight transform.
pub(super) fn pays_per_call(g: &Geometry) -> bool {
    applies(g) && g.n * g.ho * g.wo >= MIN_PIXELS_PER_CALL
}

/// Output tile size of F(4×4, 3×3).
const TILE: usize = 4;
/// Transformed tile size: `TILE + 3 − 1`.
const ALPHA: usize = 6;
/// Number of transformed elements per tile, and of GEMMs.
const ALPHA2: usize = ALPHA * ALPHA;

/// `G·g` for one kernel column or row (interpolation points 0, ±1, ±2, ∞).
#[inline(always)]
fn kernel_transform([g0, g1, g2]: [f32; 3]) -> [f32; ALPHA] {
    [
        g0 / 4.0,
        -(g0 + g1 + g2) / 6.0,
        -(g0 - g1 + g2) / 6.0,
        g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
        g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
        g2,
    ]
}

/// `Bᵀ·d` for one column or row of a 6×6 input tile.
#[inline(always)]
fn input_transform([d0, d1, d2, d3, d4, d5]: [f32; ALPHA]) -> [f32; ALPHA] {
    [
        4.0 * d0 - 5.0 * d2 + d4,
        -4.0 * (d1 + d2) + d3 + d4,
        4.0 * (d1 - d2) - d3 + d4,
        2.0 * (d3 - d1) - d2 + d4,
        2.0 * (d1 - d3) - d2 + d4,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// `Aᵀ·m` for one column or row of a 6×6 transformed output tile.
#[inline(always)]
fn output_transform([m0, m1, m2, m3, m4, m5]: [f32; ALPHA]) -> [f32; TILE] {
    let (a, b) = (m1 + m2, m1 - m2);
    let (c, d) = (m3 + m4, m3 - m4);
    [m0 + a + c, b + 2.0 * d, a + 4.0 * c, b + 8.0 * d + m5]
}

/// The 36 transformed kernels `U = G·g·Gᵀ`, as `36 × Co × Ci`. The output channels are
/// transformed in parallel: for the UNet's 1280-channel convolutions this is 59 M values a
/// call.
pub(super) fn kernels(weight: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut u = vec![0f32; ALPHA2 * co * ci];
    let u_ptr = OutPtr(u.as_mut_ptr());
    (0..co).into_par_iter().for_each(|o| {
        // The whole `OutPtr` (Sync), not its raw pointer field, goes into the closure.
        let dst = u_ptr;
        for c in 0..ci {
            let g = &weight[(o * ci + c) * 9..(o * ci + c) * 9 + 9];
            // G·g, column by column: 6×3.
            let mut gg = [[0f32; 3]; ALPHA];
            for j in 0..3 {
                let col = kernel_transform([g[j], g[3 + j], g[6 + j]]);
                for i in 0..ALPHA {
                    gg[i][j] = col[i];
                }
            }
            for (i, row) in gg.iter().enumerate() {
                for (j, v) in kernel_transform(*row).iter().enumerate() {
                    // SAFETY: the index is inside `u` (i·6 + j < 36, o < Co, c < Ci), and
                    // only the task of output channel `o` writes row `o` of each block.
                    unsafe { *dst.0.add(((i * ALPHA + j) * co + o) * ci + c) = *v };
                }
            }
        }
    });
    u
}

/// Per-thread scratch of the Winograd path.
#[derive(Default)]
struct WinogradScratch {
    v: Vec<f32>,
    m: Vec<f32>,
    rows: Vec<f32>,
    out_rows: Vec<f32>,
}

/// Winograd F(4×4, 3×3) convolution (padding 1, stride 1): per band of tile rows, the input
/// transform `Bᵀ·d·B`, 36 GEMMs against the transformed kernels and the output transform
/// `Aᵀ·m·A`, with bias and activation fused. The transforms run along whole tile rows so that
/// they vectorise.
pub(super) fn winograd_cpu(
    input: &[f32],
    u: &[f32],
    bias: &[f32],
    g: Geometry,
    activation: ConvActivation,
) -> Vec<f32> {
    let (co, h, w) = (g.co, g.h, g.w);
    let (tiles_y, tiles_x) = (h.div_ceil(TILE), w.div_ceil(TILE));
    const TARGET_TILES: usize = 192;
    // Bands of about TARGET_TILES tiles, but enough of them to keep every thread busy.
    let band = (TARGET_TILES / tiles_x)
        .min(tiles_y.div_ceil(bands_per_image(g.n)))
        .clamp(1, tiles_y);
    let bands = tiles_y.div_ceil(band);
    let mut out = vec![0f32; g.n * co * h * w];
    let out_ptr = OutPtr(out.as_mut_ptr());
    // Padded input row: column 0 is x = −1; tiles read up to x = TILE·tiles_x + 1.
    let padded_w = TILE * tiles_x + 2;
    let ctx = WinogradBand {
        input,
        u,
        bias,
        g,
        activation,
        tiles_x,
        tiles_y,
        band,
        bands,
        padded_w,
        out: out_ptr,
    };
    (0..g.n * bands)
        .into_par_iter()
        .for_each_init(WinogradScratch::default, |scratch, task| {
            winograd_band_dispatch(&ctx, scratch, task)
        });
    out
}

/// Everything one band of the Winograd path needs.
struct WinogradBand<'a> {
    input: &'a [f32],
    u: &'a [f32],
    bias: &'a [f32],
    g: Geometry,
    activation: ConvActivation,
    tiles_x: usize,
    tiles_y: usize,
    band: usize,
    bands: usize,
    padded_w: usize,
    out: OutPtr,
}

avx2_dispatch! {
    /// Runs [`winograd_band`] compiled for AVX2 when the CPU has it.
    fn winograd_band_dispatch(
        ctx: &WinogradBand,
        scratch: &mut WinogradScratch,
        task: usize,
    ) => winograd_band
}

/// One band of tile rows of one image: input transform, 36 GEMMs, output transform.
#[inline(always)]
fn winograd_band(ctx: &WinogradBand, scratch: &mut WinogradScratch, task: usize) {
    let (g, tiles_x, padded_w) = (ctx.g, ctx.tiles_x, ctx.padded_w);
    let (ci, co, h, w) = (g.ci, g.co, g.h, g.w);
    let (b, bi) = (task / ctx.bands, task % ctx.bands);
    let ty0 = bi * ctx.band;
    let tr = ctx.band.min(ctx.tiles_y - ty0);
    let t_count = tr * tiles_x;
    let image = &ctx.input[b * ci * h * w..(b + 1) * ci * h * w];
    scratch.v.resize(ALPHA2 * ci * t_count, 0.0);
    scratch.m.resize(ALPHA2 * co * t_count, 0.0);
    scratch.rows.resize(2 * ALPHA * padded_w, 0.0);
    scratch.out_rows.resize(TILE * ALPHA * tiles_x, 0.0);
    let (v, m) = (&mut scratch.v, &mut scratch.m);
    let (rows, out_rows) = (&mut scratch.rows, &mut scratch.out_rows);
    for c in 0..ci {
        let plane = &image[c * h * w..(c + 1) * h * w];
        for ty in 0..tr {
            let (d, t) = rows.split_at_mut(ALPHA * padded_w);
            let y0 = (TILE * (ty0 + ty)) as isize - 1;
            for (i, prow) in d.chunks_exact_mut(padded_w).enumerate() {
                let y = y0 + i as isize;
                if y >= 0 && (y as usize) < h {
                    prow[0] = 0.0;
                    prow[1..1 + w].copy_from_slice(&plane[y as usize * w..(y as usize + 1) * w]);
                    prow[1 + w..].fill(0.0);
                } else {
                    prow.fill(0.0);
                }
            }
            // Bᵀ·d down the 6 rows, whole rows at once.
            for x in 0..padded_w {
                let col = input_transform(std::array::from_fn(|i| d[i * padded_w + x]));
                for (i, val) in col.iter().enumerate() {
                    t[i * padded_w + x] = *val;
                }
            }
            // ·B across each tile's 6 columns.
            let base = ty * tiles_x;
            for (i, ti) in t.chunks_exact(padded_w).enumerate() {
                let at = |j: usize| ((i * ALPHA + j) * ci + c) * t_count + base;
                for tx in 0..tiles_x {
                    let x = TILE * tx;
                    let row = input_transform(std::array::from_fn(|k| ti[x + k]));
                    for (j, val) in row.iter().enumerate() {
                        v[at(j) + tx] = *val;
                    }
                }
            }
        }
    }
    // 36 GEMMs: M_k (Co × T) = U_k (Co × Ci) · V_k (Ci × T).
    for k in 0..ALPHA2 {
        // SAFETY: `m`, `u` and `v` hold 36 blocks of `Co × T`, `Co × Ci` and `Ci × T` with
        // these row strides; `m` is this task's own scratch.
        unsafe {
            gemm_rows(
                (co, t_count, ci),
                (m.as_mut_ptr().add(k * co * t_count), t_count),
                (ctx.u.as_ptr().add(k * co * ci), ci),
                (v.as_ptr().add(k * ci * t_count), t_count),
            );
        }
    }
    // Output transform, bias, activation.
    let out_base = ctx.out;
    for (o, &bo) in ctx.bias.iter().enumerate() {
        // SAFETY: this task alone writes output rows TILE·ty0 .. TILE·(ty0 + tr) of
        // image `b`.
        let plane =
            unsafe { std::slice::from_raw_parts_mut(out_base.0.add((b * co + o) * h * w), h * w) };
        for ty in 0..tr {
            let base = ty * tiles_x;
            // Aᵀ·m down each tile's 6 rows, for each of the 6 columns j:
            // out_rows[a][j][tx].
            for j in 0..ALPHA {
                for tx in 0..tiles_x {
                    let col = output_transform(std::array::from_fn(|i| {
                        m[((i * ALPHA + j) * co + o) * t_count + base + tx]
                    }));
                    for (a, val) in col.iter().enumerate() {
                        out_rows[(a * ALPHA + j) * tiles_x + tx] = *val;
                    }
                }
            }
            let oy = TILE * (ty0 + ty);
            for a in 0..TILE.min(h - oy) {
                let row = &mut plane[(oy + a) * w..(oy + a + 1) * w];
                let s = &out_rows[a * ALPHA * tiles_x..(a + 1) * ALPHA * tiles_x];
                for tx in 0..tiles_x {
                    let vals = output_transform(std::array::from_fn(|j| s[j * tiles_x + tx]));
                    let x = TILE * tx;
                    for (bx, val) in vals.iter().enumerate().take(w.saturating_sub(x)) {
                        row[x + bx] = *val;
                    }
                }
                ctx.activation.bias_apply(row, bo);
            }
        }
    }
}

/// Whether [`conv2d_winograd`] can run a convolution with this weight (`Co×Ci×K×K`), stride and
/// padding: 3×3, stride 1, padding 1, at least 16 input channels.
pub fn winograd_applies(weight: &Tensor, stride: usize, padding: usize) -> bool {
    match weight.dims4() {
        Ok((_, ci, 3, 3)) => stride == 1 && padding == 1 && ci >= MIN_CHANNELS,
        _ => false,
    }
}

/// The Winograd F(4×4, 3×3) transform of a 3×3 weight (`Co×Ci×3×3`), as `36×Co×Ci`: compute it
/// once at load time and run [`conv2d_winograd`] with it.
pub fn winograd_weights(weight: &Tensor) -> Result<Tensor> {
    let (co, ci, kh, kw) = weight.dims4()?;
    if (kh, kw) != (3, 3) {
        candle_core::bail!("winograd_weights: kernel {kh}×{kw} is not 3×3");
    }
    let w: Vec<f32> = weight
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    Tensor::from_vec(kernels(&w, co, ci), (ALPHA2, co, ci), weight.device())
}

/// `act(conv2d(input, weight, padding 1) + bias)` for a 3×3 stride-1 convolution whose weight
/// was transformed by [`winograd_weights`] (`u`: `36×Co×Ci`). CPU only.
pub fn conv2d_winograd(
    input: &Tensor,
    u: &Tensor,
    bias: &Tensor,
    activation: ConvActivation,
) -> Result<Tensor> {
    if crate::ops::half_on_cpu(input) {
        return crate::ops::in_f32(&[input, u, bias], |t| {
            conv2d_winograd(&t[0], &t[1], &t[2], activation)
        });
    }
    let _span = crate::ops::profile::op(crate::ops::profile::conv_kind(3, 1, true), input.device());
    let (_n, ci, _h, _w) = input.dims4()?;
    let (a2, co, uci) = u.dims3()?;
    if a2 != ALPHA2 || uci != ci || bias.elem_count() != co {
        candle_core::bail!(
            "conv2d_winograd: input {:?}, transformed weight {:?}, bias {:?} do not fit",
            input.dims(),
            u.dims(),
            bias.dims()
        );
    }
    let input = input.contiguous()?;
    let u = u.contiguous()?;
    let bias = bias.flatten_all()?.contiguous()?;
    input.apply_op3_no_bwd(
        &u,
        &bias,
        &Conv2dFused {
            stride: 1,
            padding: 1,
            activation,
            winograd_weights: true,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::conv2d_fused;
    use candle_core::Device;

    #[test]
    fn precomputed_winograd_weights_give_the_same_output() -> Result<()> {
        let dev = Device::Cpu;
        // 2·26·10 output pixels: enough for `conv2d_fused` to take the Winograd path too.
        let x = Tensor::randn(0f32, 1.0, (2, 24, 26, 10), &dev)?;
        let wt = Tensor::randn(0f32, 1.0, (7, 24, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 7, &dev)?;
        assert!(winograd_applies(&wt, 1, 1));
        assert!(!winograd_applies(&wt, 2, 1));
        let act = ConvActivation::LeakyRelu(0.1);
        let direct = conv2d_fused(&x, &wt, &b, 1, 1, act)?;
        let cached = conv2d_winograd(&x, &winograd_weights(&wt)?, &b, act)?;
        let diff = (direct - cached)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
