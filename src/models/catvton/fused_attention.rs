//! Attention on the CPU in one pass over the keys (the flash-attention scheme): each task takes
//! a block of queries of one head and walks the keys in blocks, keeping a running maximum and
//! sum per query (the online softmax) and rescaling its output accumulator when the maximum
//! grows. Only a query-block × key-block tile of scores exists at a time, in cache; the score
//! matrix is never written to memory. The exponentials run through a polynomial that the
//! compiler vectorises (AVX-512 or AVX2 + FMA when the CPU has them, chosen at run time); the two
//! products of each tile go through `gemm`. [`super::attention::chunked_attention`] is its
//! reference.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::contiguous_f32;

/// Queries per task: the output accumulator (`QUERY_BLOCK × d`) stays in L1/L2, and each key
/// block that `gemm` packs is used by this many queries.
const QUERY_BLOCK: usize = 64;
/// Keys per tile: the score tile is `QUERY_BLOCK × KEY_BLOCK` f32, 64 KiB.
const KEY_BLOCK: usize = 256;
/// Lanes of the hand-unrolled reductions, a multiple of every vector width we compile for.
const LANES: usize = 16;

/// `softmax(q·kᵀ·scale)·v` for f32 CPU tensors `q: G×Nq×d`, `k, v: G×Nk×d`, without the score
/// matrix.
pub fn fused_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (groups, _, d) = q.dims3()?;
    let (kg, n_k, kd) = k.dims3()?;
    if (kg, kd) != (groups, d) || v.dims3()? != (groups, n_k, d) {
        candle_core::bail!(
            "fused_attention: q {:?}, k {:?}, v {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if n_k == 0 {
        candle_core::bail!("fused_attention: no keys");
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3_no_bwd(&k, &v, &FusedAttention { scale })
}

/// The custom op behind [`fused_attention`]; CPU and f32 only.
#[derive(Debug, Clone, Copy)]
struct FusedAttention {
    scale: f64,
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused_attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(sq, lq, "fused_attention")?;
        let k = contiguous_f32(sk, lk, "fused_attention")?;
        let v = contiguous_f32(sv, lv, "fused_attention")?;
        let (groups, n_q, d) = lq.shape().dims3()?;
        let n_k = lk.shape().dims()[1];
        let shape = Shape::from((groups, n_q, d));
        let mut out = vec![0f32; groups * n_q * d];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), shape));
        }
        let dims = Dims { n_k, d };
        let scale = self.scale as f32;
        out.par_chunks_mut(n_q * d)
            .enumerate()
            .for_each(|(g, out_g)| {
                let q_g = &q[g * n_q * d..(g + 1) * n_q * d];
                let k_g = &k[g * n_k * d..(g + 1) * n_k * d];
                let v_g = &v[g * n_k * d..(g + 1) * n_k * d];
                out_g
                    .par_chunks_mut(QUERY_BLOCK * d)
                    .enumerate()
                    .for_each_init(Scratch::default, |scratch, (block, out_b)| {
                        let rows = out_b.len() / d;
                        let q_b = &q_g[block * QUERY_BLOCK * d..][..rows * d];
                        query_block_dispatch(dims, scale, q_b, k_g, v_g, out_b, scratch);
                    });
            });
        Ok((CpuStorage::F32(out), shape))
    }
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    n_k: usize,
    d: usize,
}

/// A task's buffers, reused across the blocks a thread runs.
#[derive(Default)]
struct Scratch {
    /// The scaled queries of the block.
    q: Vec<f32>,
    /// The score tile, then its exponentials.
    scores: Vec<f32>,
    /// The unnormalised output rows.
    acc: Vec<f32>,
    /// Running maximum and sum of the exponentials per query.
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// [`query_block`] compiled for the widest vector unit the CPU has.
fn query_block_dispatch(
    dims: Dims,
    scale: f32,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must support AVX-512F.
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512(
            dims: Dims,
            scale: f32,
            q: &[f32],
            k: &[f32],
            v: &[f32],
            out: &mut [f32],
            scratch: &mut Scratch,
        ) {
            query_block(dims, scale, q, k, v, out, scratch)
        }
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(
            dims: Dims,
            scale: f32,
            q: &[f32],
            k: &[f32],
            v: &[f32],
            out: &mut [f32],
            scratch: &mut Scratch,
        ) {
            query_block(dims, scale, q, k, v, out, scratch)
        }
        static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
        let level = *LEVEL.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f") {
                2
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                1
            } else {
                0
            }
        });
        match level {
            // SAFETY: the features each copy is compiled for were detected above.
            2 => return unsafe { avx512(dims, scale, q, k, v, out, scratch) },
            1 => return unsafe { avx2(dims, scale, q, k, v, out, scratch) },
            _ => {}
        }
    }
    query_block(dims, scale, q, k, v, out, scratch)
}

/// Attention of the `rows = out.len() / d` queries in `q` over all keys of one head.
#[inline(always)]
fn query_block(
    dims: Dims,
    scale: f32,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let Dims { n_k, d, .. } = dims;
    let rows = out.len() / d;
    let Scratch {
        q: qs,
        scores,
        acc,
        max,
        sum,
    } = scratch;
    // Scaling the queries is cheaper than scaling every score.
    qs.clear();
    qs.extend(q.iter().map(|x| x * scale));
    scores.resize(QUERY_BLOCK * KEY_BLOCK, 0.0);
    acc.clear();
    acc.resize(rows * d, 0.0);
    max.clear();
    max.resize(rows, f32::NEG_INFINITY);
    sum.clear();
    sum.resize(rows, 0.0);
    let mut k0 = 0;
    while k0 < n_k {
        let cols = KEY_BLOCK.min(n_k - k0);
        // SAFETY: `scores` holds `rows × KEY_BLOCK` ≥ `rows × cols` with row stride
        // KEY_BLOCK; `qs` is `rows × d`; keys `k0..k0 + cols` of `k` (`n_k × d`) read as the
        // `d × cols` matrix kᵀ (row stride 1, column stride d).
        unsafe {
            gemm::gemm(
                rows,
                cols,
                d,
                scores.as_mut_ptr(),
                1,
                KEY_BLOCK as isize,
                false,
                qs.as_ptr(),
                1,
                d as isize,
                k.as_ptr().add(k0 * d),
                d as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for r in 0..rows {
            let row = &mut scores[r * KEY_BLOCK..r * KEY_BLOCK + cols];
            let new_max = max[r].max(row_max(row));
            let correction = exp(max[r] - new_max);
            sum[r] = sum[r] * correction + exp_sub_sum(row, new_max);
            max[r] = new_max;
            if correction != 1.0 {
                acc[r * d..(r + 1) * d]
                    .iter_mut()
                    .for_each(|a| *a *= correction);
            }
        }
        // SAFETY: `acc` is `rows × d`; the exponentials are `rows × cols` with row stride
        // KEY_BLOCK; values `k0..k0 + cols` of `v` are `cols × d`.
        unsafe {
            gemm::gemm(
                rows,
                d,
                cols,
                acc.as_mut_ptr(),
                1,
                d as isize,
                true,
                scores.as_ptr(),
                1,
                KEY_BLOCK as isize,
                v.as_ptr().add(k0 * d),
                1,
                d as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        k0 += cols;
    }
    for ((o, a), s) in out
        .chunks_exact_mut(d)
        .zip(acc.chunks_exact(d))
        .zip(sum.iter())
    {
        let inv = 1.0 / s;
        o.iter_mut().zip(a).for_each(|(o, a)| *o = a * inv);
    }
}

/// The largest value of `row`, in `LANES` independent lanes so that it vectorises.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = if x > *l { x } else { *l };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    lanes.iter().fold(tail, |m, &x| if x > m { x } else { m })
}

/// Replaces each `x` of `row` by `exp(x − max)` and answers their sum (`LANES` partial sums).
#[inline(always)]
fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *x = exp(*x - max);
            *l += *x;
        }
    }
    let mut total = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        total += *x;
    }
    total + lanes.iter().sum::<f32>()
}

/// `eˣ` for `x ≤ 0` to about 2 ulp (Cephes' `expf`): `x = n·ln 2 + r` with |r| ≤ ln 2 / 2, a
/// degree-6 polynomial for `eʳ`, and `2ⁿ` built in the exponent bits. Inputs below −87.3 give
/// about 1e-38 instead of underflowing; a softmax sums them with at least one 1, so they count
/// for nothing. Branch-free, so loops of it vectorise.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let pow2 = f32::from_bits(((n as i32 + 127) << 23) as u32);
    e * pow2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_polynomial_exponential_matches_the_library_one() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (ours, std) = (exp(x), x.exp());
            worst = worst.max((ours - std).abs() / std);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }
}
