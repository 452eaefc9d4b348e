//! Dense 2-D convolution (square kernel, zero padding) as banded im2col + one GEMM per band,
//! with the bias and the activation fused in. The bands run in parallel and each builds only a
//! small im2col block, so the peak memory stays at the output size.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// The activation fused after the bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConvActivation {
    /// Identity.
    None,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x` for `x ≥ 0`, `slope · x` otherwise.
    LeakyRelu(f32),
}

impl ConvActivation {
    /// Adds `bias` to every element of `row`, then applies the activation. The match is outside
    /// the loops so that each loop vectorises.
    #[inline(always)]
    pub fn bias_apply(self, row: &mut [f32], bias: f32) {
        match self {
            ConvActivation::None => row.iter_mut().for_each(|v| *v += bias),
            ConvActivation::Relu6 => row
                .iter_mut()
                .for_each(|v| *v = (*v + bias).clamp(0.0, 6.0)),
            ConvActivation::LeakyRelu(s) => row.iter_mut().for_each(|v| {
                let x = *v + bias;
                *v = if x >= 0.0 { x } else { x * s };
            }),
        }
    }

    #[cfg(test)]
    fn apply(self, v: f32) -> f32 {
        match self {
            ConvActivation::None => v,
            ConvActivation::Relu6 => v.clamp(0.0, 6.0),
            ConvActivation::LeakyRelu(s) => {
                if v >= 0.0 {
                    v
                } else {
                    v * s
                }
            }
        }
    }
}

/// `act(conv2d(input, weight) + bias)`: `input` `N×Ci×H×W`, `weight` `Co×Ci×K×K`, `bias` `Co`.
pub fn conv2d_fused(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    activation: ConvActivation,
) -> Result<Tensor> {
    let (_n, ci, h, w) = input.dims4()?;
    let (co, wci, kh, kw) = weight.dims4()?;
    if wci != ci || kh != kw || bias.elem_count() != co || stride == 0 {
        candle_core::bail!(
            "conv2d_fused: input {:?}, weight {:?}, bias {:?}, stride {stride} do not fit",
            input.dims(),
            weight.dims(),
            bias.dims()
        );
    }
    if h + 2 * padding < kh || w + 2 * padding < kw {
        candle_core::bail!("conv2d_fused: kernel {kh}×{kw} larger than padded input {h}×{w}");
    }
    if !input.device().is_cpu() {
        return conv2d_device(input, weight, bias, stride, padding, activation);
    }
    let input = input.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.flatten_all()?.contiguous()?;
    input.apply_op3_no_bwd(
        &weight,
        &bias,
        &Conv2dFused {
            stride,
            padding,
            activation,
        },
    )
}

/// Off the CPU: pointwise convolutions as one batched matrix product straight into N×C×H×W
/// (no im2col, no transpose), others through candle's convolution; then the bias and the
/// activation in one fused pass.
fn conv2d_device(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    activation: ConvActivation,
) -> Result<Tensor> {
    let (n, ci, h, w) = input.dims4()?;
    let (co, _, k, _) = weight.dims4()?;
    let y = if k == 1 && stride == 1 && padding == 0 {
        let x = input.contiguous()?.reshape((n, ci, h * w))?;
        let wt = weight.reshape((1, co, ci))?.broadcast_as((n, co, ci))?;
        wt.matmul(&x)?.reshape((n, co, h, w))?
    } else {
        input.conv2d(weight, padding, stride, 1, 1)?
    };
    bias_activation(&y, bias, activation)
}

/// `act(x + bias[c])` for `x` of `N×C×H×W` and a bias of `C`, in one pass.
pub fn bias_activation(x: &Tensor, bias: &Tensor, activation: ConvActivation) -> Result<Tensor> {
    let x = x.contiguous()?;
    let bias = bias.flatten_all()?.contiguous()?;
    x.apply_op2_no_bwd(&bias, &BiasActivation { activation })
}

/// The custom op behind [`bias_activation`].
#[derive(Debug, Clone, Copy)]
pub struct BiasActivation {
    pub activation: ConvActivation,
}

impl candle_core::CustomOp2 for BiasActivation {
    fn name(&self) -> &'static str {
        "bias_activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let c = dims.get(1).copied().unwrap_or(1);
        let plane: usize = dims.iter().skip(2).product();
        let mut out = contiguous_f32(s1, l1, "bias_activation")?.to_vec();
        let bias = contiguous_f32(s2, l2, "bias_activation")?;
        for (i, row) in out.chunks_mut(plane.max(1)).enumerate() {
            self.activation.bias_apply(row, bias[i % c]);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = l1.shape().dims();
        let c = dims.get(1).copied().unwrap_or(1);
        let plane: usize = dims.iter().skip(2).product();
        let (act, slope) = match self.activation {
            ConvActivation::None => (0, 0.0),
            ConvActivation::Relu6 => (1, 0.0),
            ConvActivation::LeakyRelu(s) => (2, s),
        };
        let out = super::cuda::launch_bias_act(s1, l1, s2, l2, c, plane, act, slope)?;
        Ok((out, l1.shape().clone()))
    }
}

/// The custom op behind [`conv2d_fused`].
#[derive(Debug, Clone, Copy)]
pub struct Conv2dFused {
    pub stride: usize,
    pub padding: usize,
    pub activation: ConvActivation,
}

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    stride: usize,
    padding: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.padding == 0
    }
}

/// A raw pointer that bands may share: each band writes a disjoint set of output elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the bands write disjoint column ranges of the output (see `conv2d_fused_cpu`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

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

/// Bands per image so that a batch of `n` gives each thread at least two tasks.
fn bands_per_image(n: usize) -> usize {
    (2 * rayon::current_num_threads()).div_ceil(n.max(1))
}

/// Output rows per band: about `TARGET` output pixels, at least one row, and enough bands to
/// keep every thread busy.
fn band_rows(g: &Geometry) -> usize {
    const TARGET: usize = 768;
    (TARGET / g.wo.max(1))
        .min(g.ho.div_ceil(bands_per_image(g.n)))
        .clamp(1, g.ho)
}

fn conv2d_fused_cpu(
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
                (image[oy0 * g.w..].as_ptr(), (g.h * g.w) as isize)
            } else {
                col.resize(kdim * p, 0.0);
                im2col(image, &g, oy0, r, col);
                (col.as_ptr(), p as isize)
            };
            let dst = out_ptr;
            // SAFETY: `dst` points into `out` at image `b`, column `oy0·Wo`; this task alone
            // writes columns `oy0·Wo .. oy0·Wo + p` of the `Co × Ho·Wo` matrix of image `b`.
            // `rhs` and `weight` are live slices of at least the sizes the strides describe.
            unsafe {
                let dst = dst.0.add(b * g.co * out_plane + oy0 * g.wo);
                gemm::gemm(
                    g.co,
                    p,
                    kdim,
                    dst,
                    1,
                    out_plane as isize,
                    false,
                    weight.as_ptr(),
                    1,
                    kdim as isize,
                    rhs,
                    1,
                    rhs_rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for (c, &bc) in bias.iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(dst.add(c * out_plane), p);
                    activation.bias_apply(row, bc);
                }
            }
        });
    out
}

/// Whether the Winograd F(4×4, 3×3) path applies: a 3×3, stride 1, padding 1 convolution with
/// enough input channels for the transforms to pay off.
fn use_winograd(g: &Geometry) -> bool {
    g.k == 3 && g.stride == 1 && g.padding == 1 && g.ci >= 16
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

/// The 36 transformed kernels `U = G·g·Gᵀ`, as `36 × Co × Ci`.
fn winograd_kernels(weight: &[f32], co: usize, ci: usize) -> Vec<f32> {
    let mut u = vec![0f32; ALPHA2 * co * ci];
    for o in 0..co {
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
                    u[((i * ALPHA + j) * co + o) * ci + c] = *v;
                }
            }
        }
    }
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
fn winograd_cpu(
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

/// Runs [`winograd_band`] compiled for AVX2 when the CPU has it.
fn winograd_band_dispatch(ctx: &WinogradBand, scratch: &mut WinogradScratch, task: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { winograd_band_avx2(ctx, scratch, task) };
    }
    winograd_band(ctx, scratch, task)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn winograd_band_avx2(ctx: &WinogradBand, scratch: &mut WinogradScratch, task: usize) {
    winograd_band(ctx, scratch, task)
}

/// One band of tile rows of one image: input transform, 36 GEMMs, output transform.
#[inline(always)]
fn winograd_band(ctx: &WinogradBand, scratch: &mut WinogradScratch, task: usize) {
    let WinogradBand {
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
    } = *ctx;
    let (ci, co, h, w) = (g.ci, g.co, g.h, g.w);
    {
        let (b, bi) = (task / bands, task % bands);
        let ty0 = bi * band;
        let tr = band.min(tiles_y - ty0);
        let t_count = tr * tiles_x;
        let image = &input[b * ci * h * w..(b + 1) * ci * h * w];
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
                        prow[1..1 + w]
                            .copy_from_slice(&plane[y as usize * w..(y as usize + 1) * w]);
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
            // SAFETY: the three buffers hold 36 blocks of the sizes and strides given.
            unsafe {
                gemm::gemm(
                    co,
                    t_count,
                    ci,
                    m.as_mut_ptr().add(k * co * t_count),
                    1,
                    t_count as isize,
                    false,
                    u.as_ptr().add(k * co * ci),
                    1,
                    ci as isize,
                    v.as_ptr().add(k * ci * t_count),
                    1,
                    t_count as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        // Output transform, bias, activation.
        let out_base = out_ptr;
        for (o, &bo) in bias.iter().enumerate() {
            // SAFETY: this task alone writes output rows TILE·ty0 .. TILE·(ty0 + tr) of
            // image `b`.
            let plane = unsafe {
                std::slice::from_raw_parts_mut(out_base.0.add((b * co + o) * h * w), h * w)
            };
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
                    activation.bias_apply(row, bo);
                }
            }
        }
    }
}

impl CustomOp3 for Conv2dFused {
    fn name(&self) -> &'static str {
        "conv2d_fused"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, ci, h, w) = l1.shape().dims4()?;
        let (co, _, k, _) = l2.shape().dims4()?;
        let ho = (h + 2 * self.padding - k) / self.stride + 1;
        let wo = (w + 2 * self.padding - k) / self.stride + 1;
        let g = Geometry {
            n,
            ci,
            h,
            w,
            co,
            k,
            stride: self.stride,
            padding: self.padding,
            ho,
            wo,
        };
        let input = contiguous_f32(s1, l1, "conv2d_fused")?;
        let weight = contiguous_f32(s2, l2, "conv2d_fused")?;
        let bias = contiguous_f32(s3, l3, "conv2d_fused")?;
        let out = if use_winograd(&g) {
            let u = winograd_kernels(weight, co, ci);
            winograd_cpu(input, &u, bias, g, self.activation)
        } else {
            conv2d_fused_cpu(input, weight, bias, g, self.activation)
        };
        Ok((CpuStorage::F32(out), Shape::from((n, co, ho, wo))))
    }
}

/// Whether [`conv2d_winograd`] can run a convolution with this weight (`Co×Ci×K×K`), stride and
/// padding: 3×3, stride 1, padding 1, at least 16 input channels.
pub fn winograd_applies(weight: &Tensor, stride: usize, padding: usize) -> bool {
    match weight.dims4() {
        Ok((_, ci, 3, 3)) => stride == 1 && padding == 1 && ci >= 16,
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
    Tensor::from_vec(
        winograd_kernels(&w, co, ci),
        (ALPHA2, co, ci),
        weight.device(),
    )
}

/// `act(conv2d(input, weight, padding 1) + bias)` for a 3×3 stride-1 convolution whose weight
/// was transformed by [`winograd_weights`] (`u`: `36×Co×Ci`). CPU only.
pub fn conv2d_winograd(
    input: &Tensor,
    u: &Tensor,
    bias: &Tensor,
    activation: ConvActivation,
) -> Result<Tensor> {
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
    input.apply_op3_no_bwd(&u, &bias, &Conv2dWinograd { activation })
}

/// The custom op behind [`conv2d_winograd`].
#[derive(Debug, Clone, Copy)]
pub struct Conv2dWinograd {
    pub activation: ConvActivation,
}

impl CustomOp3 for Conv2dWinograd {
    fn name(&self) -> &'static str {
        "conv2d_winograd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, ci, h, w) = l1.shape().dims4()?;
        let (_, co, _) = l2.shape().dims3()?;
        let g = Geometry {
            n,
            ci,
            h,
            w,
            co,
            k: 3,
            stride: 1,
            padding: 1,
            ho: h,
            wo: w,
        };
        let input = contiguous_f32(s1, l1, "conv2d_winograd")?;
        let u = contiguous_f32(s2, l2, "conv2d_winograd")?;
        let bias = contiguous_f32(s3, l3, "conv2d_winograd")?;
        let out = winograd_cpu(input, u, bias, g, self.activation);
        Ok((CpuStorage::F32(out), Shape::from((n, co, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f32],
        wt: &[f32],
        b: &[f32],
        (n, ci, h, w): (usize, usize, usize, usize),
        co: usize,
        k: usize,
        s: usize,
        pad: usize,
        act: ConvActivation,
    ) -> (Vec<f32>, Vec<f32>, usize, usize) {
        let ho = (h + 2 * pad - k) / s + 1;
        let wo = (w + 2 * pad - k) / s + 1;
        let mut out = vec![0f32; n * co * ho * wo];
        // Σ|terms| per output: the scale that float rounding errors are relative to.
        let mut scale = vec![0f32; n * co * ho * wo];
        for i in 0..n {
            for o in 0..co {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = b[o] as f64;
                        let mut mag = (b[o] as f64).abs();
                        for c in 0..ci {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s + ky) as isize - pad as isize;
                                    let ix = (ox * s + kx) as isize - pad as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        let term = wt[((o * ci + c) * k + ky) * k + kx] as f64
                                            * x[((i * ci + c) * h + iy as usize) * w + ix as usize]
                                                as f64;
                                        acc += term;
                                        mag += term.abs();
                                    }
                                }
                            }
                        }
                        out[((i * co + o) * ho + oy) * wo + ox] = act.apply(acc as f32);
                        scale[((i * co + o) * ho + oy) * wo + ox] = mag as f32;
                    }
                }
            }
        }
        (out, scale, ho, wo)
    }

    #[test]
    fn matches_naive_reference() -> Result<()> {
        let dev = Device::Cpu;
        let cases = [
            // (dims, co, k, stride, padding)
            ((2, 3, 9, 7), 5, 3, 1, 1),
            ((1, 4, 8, 6), 3, 3, 2, 1),
            ((2, 6, 5, 4), 7, 1, 1, 0),
            ((1, 2, 1, 1), 4, 3, 1, 1),
            ((1, 3, 40, 30), 2, 3, 1, 1),
            ((1, 5, 7, 7), 3, 1, 2, 0),
            // Winograd path (3×3, stride 1, padding 1, ≥ 16 input channels), sizes that are
            // and are not multiples of the tile.
            ((2, 16, 8, 6), 5, 3, 1, 1),
            ((1, 20, 7, 5), 3, 3, 1, 1),
            ((1, 16, 2, 3), 4, 3, 1, 1),
            ((1, 16, 1, 1), 2, 3, 1, 1),
            ((1, 24, 8, 6), 5, 3, 1, 1),
            ((1, 32, 41, 9), 6, 3, 1, 1),
            // Several bands of tile rows per image.
            ((2, 16, 101, 40), 3, 3, 1, 1),
        ];
        for &(dims, co, k, s, pad) in &cases {
            for act in [
                ConvActivation::None,
                ConvActivation::Relu6,
                ConvActivation::LeakyRelu(0.1),
            ] {
                let x = Tensor::randn(0f32, 2.0, dims, &dev)?;
                let wt = Tensor::randn(0f32, 1.0, (co, dims.1, k, k), &dev)?;
                let b = Tensor::randn(0f32, 1.0, co, &dev)?;
                let got = conv2d_fused(&x, &wt, &b, s, pad, act)?;
                let (want, scale, ho, wo) = naive(
                    &x.flatten_all()?.to_vec1()?,
                    &wt.flatten_all()?.to_vec1()?,
                    &b.to_vec1()?,
                    dims,
                    co,
                    k,
                    s,
                    pad,
                    act,
                );
                assert_eq!(got.dims(), &[dims.0, co, ho, wo]);
                let got: Vec<f32> = got.flatten_all()?.to_vec1()?;
                // Winograd F(4×4, 3×3) rounds to a few 1e-6 of the terms' magnitude.
                for ((g, r), m) in got.iter().zip(&want).zip(&scale) {
                    assert!(
                        (g - r).abs() <= 2e-5 * (1.0 + m),
                        "{dims:?} k{k} s{s}: {g} vs {r} (scale {m})"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn precomputed_winograd_weights_give_the_same_output() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 24, 13, 10), &dev)?;
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

    #[test]
    fn rejects_mismatched_weights() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 5, 5), candle_core::DType::F32, &dev)?;
        let wt = Tensor::zeros((2, 3, 3, 3), candle_core::DType::F32, &dev)?;
        let b = Tensor::zeros(2, candle_core::DType::F32, &dev)?;
        assert!(conv2d_fused(&x, &wt, &b, 1, 1, ConvActivation::None).is_err());
        Ok(())
    }
}
