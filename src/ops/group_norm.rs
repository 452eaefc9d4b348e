//! Group normalisation with the per-channel affine and an optional SiLU fused in, as one pass
//! over the input for the statistics and one for the output. candle's `GroupNorm` runs it as
//! seven tensor ops (sum, subtract, square, sum, divide, multiply, add), each a full pass with a
//! new tensor, then the SiLU as an eighth: on the CPU this op replaces them for f32; other
//! dtypes and devices take candle's ops.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// `silu?(group_norm(x) · weight[c] + bias[c])` for `x` of `N×C×…` with `C` divisible by
/// `groups`; `weight` and `bias` have `C` elements.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let _span = super::profile::op("group norm", x.device());
    let dims = x.dims();
    let c = dims.get(1).copied().unwrap_or(0);
    if dims.len() < 3 || groups == 0 || c % groups != 0 {
        candle_core::bail!("group_norm: input {dims:?} cannot be split into {groups} groups");
    }
    if weight.elem_count() != c || bias.elem_count() != c {
        candle_core::bail!(
            "group_norm: weight {:?} and bias {:?} do not have {c} channels",
            weight.dims(),
            bias.dims()
        );
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let op = GroupNorm { groups, eps, silu };
        let weight = weight.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
        let bias = bias.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
        return x.contiguous()?.apply_op3_no_bwd(&weight, &bias, &op);
    }
    let norm = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, groups, eps)?;
    let y = candle_core::Module::forward(&norm, x)?;
    if silu {
        candle_nn::ops::silu(&y)
    } else {
        Ok(y)
    }
}

/// The custom op behind [`group_norm`] on the CPU.
#[derive(Debug, Clone, Copy)]
struct GroupNorm {
    groups: usize,
    eps: f64,
    silu: bool,
}

/// Sum and sum of squared deviations from `shift` of `data`, in f64. Lanes of 8 partial sums
/// in f32 over short runs keep the loop vectorised while f64 carries the total.
#[inline(always)]
fn moments(data: &[f32], shift: f32) -> (f64, f64) {
    const RUN: usize = 256;
    let (mut sum, mut sq) = (0f64, 0f64);
    for run in data.chunks(RUN) {
        let (mut s, mut q) = ([0f32; 8], [0f32; 8]);
        let mut lanes = run.chunks_exact(8);
        for v in &mut lanes {
            for i in 0..8 {
                let d = v[i] - shift;
                s[i] += d;
                q[i] += d * d;
            }
        }
        for &v in lanes.remainder() {
            let d = v - shift;
            s[0] += d;
            q[0] += d * d;
        }
        sum += s.iter().map(|&v| v as f64).sum::<f64>();
        sq += q.iter().map(|&v| v as f64).sum::<f64>();
    }
    (sum, sq)
}

/// `out = silu?((x − center) · scale + shift)` over one channel. Centring on an element of the
/// group keeps the product small: `x · scale` alone would round at the magnitude of the mean
/// times `1/σ`, which a group of near-equal values far from zero makes large.
#[inline(always)]
fn affine(x: &[f32], out: &mut [f32], center: f32, scale: f32, shift: f32, silu: bool) {
    if silu {
        for (o, &v) in out.iter_mut().zip(x) {
            let y = (v - center) * scale + shift;
            *o = y / (1.0 + (-y).exp());
        }
    } else {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v - center) * scale + shift;
        }
    }
}

avx2_dispatch!(fn moments_fast(data: &[f32], shift: f32) -> (f64, f64) => moments);
avx2_dispatch!(
    fn affine_fast(
        x: &[f32],
        out: &mut [f32],
        center: f32,
        scale: f32,
        shift: f32,
        silu: bool,
    ) => affine
);

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "group_norm"
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
        let dims = l1.shape().dims();
        let c = dims[1];
        let plane: usize = dims[2..].iter().product();
        let per_group = c / self.groups;
        let x = contiguous_f32(s1, l1, "group_norm")?;
        let weight = contiguous_f32(s2, l2, "group_norm")?;
        let bias = contiguous_f32(s3, l3, "group_norm")?;
        let mut out = vec![0f32; x.len()];
        let block = per_group * plane;
        if block == 0 {
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .enumerate()
            .for_each(|(index, (out, x))| {
                // Deviations from the first element: the variance does not lose its digits to
                // a large mean.
                let first = x[0];
                let (sum, sq) = moments_fast(x, first);
                let n = x.len() as f64;
                let mean_dev = sum / n;
                let var = (sq / n - mean_dev * mean_dev).max(0.0);
                let rstd = 1.0 / (var + self.eps).sqrt();
                let group = index % self.groups;
                for j in 0..per_group {
                    let ch = group * per_group + j;
                    let scale = rstd * weight[ch] as f64;
                    let shift = bias[ch] as f64 - mean_dev * scale;
                    let range = j * plane..(j + 1) * plane;
                    affine_fast(
                        &x[range.clone()],
                        &mut out[range],
                        first,
                        scale as f32,
                        shift as f32,
                        self.silu,
                    );
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    #[test]
    fn matches_candles_group_norm_and_silu() -> Result<()> {
        let dev = Device::Cpu;
        for (dims, groups) in [
            (vec![2, 32, 9, 7], 32),
            (vec![1, 64, 33, 5], 32),
            (vec![2, 6, 11], 3),
            (vec![1, 4, 1, 1], 2),
        ] {
            let c = dims[1];
            // An offset far from zero: the statistics must not lose their digits to it.
            let x = (Tensor::randn(0f32, 3.0, dims.as_slice(), &dev)? + 50.0)?;
            let w = Tensor::randn(1f32, 0.5, c, &dev)?;
            let b = Tensor::randn(0f32, 0.5, c, &dev)?;
            // The reference runs candle's ops in f64: in f32 its own statistics lose digits to
            // the offset, and with two values a group that loss is amplified up to 1/sqrt(eps).
            let f64s = |t: &Tensor| t.to_dtype(DType::F64);
            let reference = candle_nn::GroupNorm::new(f64s(&w)?, f64s(&b)?, c, groups, 1e-6)?
                .forward(&f64s(&x)?)?
                .to_dtype(DType::F32)?;
            for silu in [false, true] {
                let want = if silu {
                    candle_nn::ops::silu(&reference)?
                } else {
                    reference.clone()
                };
                let got = group_norm(&x, &w, &b, groups, 1e-6, silu)?;
                assert_eq!(got.dims(), x.dims());
                let err = (got - &want)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(err < 2e-4, "{dims:?} silu {silu}: {err}");
            }
        }
        Ok(())
    }

    #[test]
    fn near_equal_values_far_from_zero_keep_their_digits() -> Result<()> {
        let dev = Device::Cpu;
        // Two groups of two: the first is 1e-3 apart at 50, so 1/σ is near 1,000.
        let values = [50.0f32, 50.001, -3.0, 7.0];
        let x = Tensor::from_slice(&values, (1, 4, 1, 1), &dev)?;
        let w = Tensor::from_slice(&[1.0f32, 2.0, 1.0, 1.0], 4, &dev)?;
        let b = Tensor::from_slice(&[0.5f32, -0.5, 0.0, 0.0], 4, &dev)?;
        let got = group_norm(&x, &w, &b, 2, 1e-6, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let normalised = |a: f32, b: f32, eps: f64| {
            let (a, b) = (a as f64, b as f64);
            let (mean, var) = ((a + b) / 2.0, (a - b).powi(2) / 4.0);
            let rstd = 1.0 / (var + eps).sqrt();
            [(a - mean) * rstd, (b - mean) * rstd]
        };
        let [n0, n1] = normalised(values[0], values[1], 1e-6);
        let [n2, n3] = normalised(values[2], values[3], 1e-6);
        let want = [n0 + 0.5, 2.0 * n1 - 0.5, n2, n3];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{got:?} against {want:?}");
        }
        Ok(())
    }

    #[test]
    fn rejects_channels_that_do_not_split_into_the_groups() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 6, 2, 2), DType::F32, &dev)?;
        let w = Tensor::ones(6, DType::F32, &dev)?;
        assert!(group_norm(&x, &w, &w, 4, 1e-6, false).is_err());
        assert!(group_norm(&x, &w.narrow(0, 0, 5)?, &w, 3, 1e-6, false).is_err());
        Ok(())
    }
}
