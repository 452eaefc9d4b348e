//! Dense 2-D convolution (square kernel, zero padding) with the bias and the activation fused
//! in: the ops and what their CPU paths share. On the CPU a convolution runs as banded im2col
//! and one GEMM per band (`im2col.rs`), or, for 3×3 stride-1 convolutions with enough input
//! channels and (unless the weight comes transformed) enough output pixels, as Winograd
//! F(4×4, 3×3) (`winograd.rs`); on CUDA with `--cudnn-conv on`, through cuDNN
//! (`ops::cudnn_conv`); elsewhere through candle, then one fused bias and activation pass
//! ([`bias_activation`]).

mod im2col;
mod winograd;

pub use winograd::{conv2d_winograd, winograd_applies, winograd_weights};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

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
    if crate::ops::half_on_cpu(input) {
        return crate::ops::in_f32(&[input, weight, bias], |t| {
            conv2d_fused(&t[0], &t[1], &t[2], stride, padding, activation)
        });
    }
    let _span = crate::ops::profile::op(
        crate::ops::profile::conv_kind(weight.dims().get(2).copied().unwrap_or(0), stride, false),
        input.device(),
    );
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
    let op = Conv2dFused {
        stride,
        padding,
        activation,
        winograd_weights: false,
    };
    if !input.device().is_cpu() {
        return conv2d_device(input, weight, bias, op);
    }
    let input = input.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.flatten_all()?.contiguous()?;
    input.apply_op3_no_bwd(&weight, &bias, &op)
}

/// Off the CPU: through cuDNN with plans cached per shape when `--cudnn-conv` is on and the
/// tensors are on CUDA ([`crate::ops::cudnn_conv`]), else [`conv2d_candle`].
fn conv2d_device(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    op: Conv2dFused,
) -> Result<Tensor> {
    let Conv2dFused {
        stride,
        padding,
        activation,
        ..
    } = op;
    #[cfg(feature = "cudnn")]
    if crate::ops::cudnn_conv::applies(input.device()) {
        return crate::ops::cudnn_conv::conv2d_cudnn(
            input, weight, bias, stride, padding, activation,
        );
    }
    conv2d_candle(input, weight, bias, stride, padding, activation)
}

/// Pointwise convolutions as one batched matrix product straight into N×C×H×W (no im2col, no
/// transpose), others through candle's convolution; then the bias and the activation in one
/// fused pass.
pub(crate) fn conv2d_candle(
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
    if crate::ops::half_on_cpu(x) {
        return crate::ops::in_f32(&[x, bias], |t| bias_activation(&t[0], &t[1], activation));
    }
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
        use super::cuda::{launch_typed, Scalar, BIAS_ACT};
        let dims = l1.shape().dims();
        let c = dims.get(1).copied().unwrap_or(1);
        let plane: usize = dims.iter().skip(2).product();
        let (act, slope) = match self.activation {
            ConvActivation::None => (0, 0.0),
            ConvActivation::Relu6 => (1, 0.0),
            ConvActivation::LeakyRelu(s) => (2, s),
        };
        let total = l1.shape().elem_count();
        // SAFETY: the arguments of `bias_act_*` (each precision), in its order; one thread per
        // element.
        let out = unsafe {
            launch_typed(
                "bias_activation",
                &BIAS_ACT,
                &[(s1, l1), (s2, l2)],
                total,
                total,
                &[
                    Scalar::I64(total as i64),
                    Scalar::I32(c as i32),
                    Scalar::I64(plane as i64),
                    Scalar::I32(act),
                    Scalar::F32(slope),
                ],
            )
        }?;
        Ok((out, l1.shape().clone()))
    }
}

/// The custom op behind [`conv2d_fused`] and [`conv2d_winograd`].
#[derive(Debug, Clone, Copy)]
pub struct Conv2dFused {
    pub stride: usize,
    pub padding: usize,
    pub activation: ConvActivation,
    /// The weight is already in the Winograd domain (`16×Co×Ci`, from [`winograd_weights`]):
    /// a 3×3, stride 1, padding 1 convolution.
    pub winograd_weights: bool,
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
// SAFETY: the bands write disjoint parts of the output (column ranges in
// `im2col::conv2d_fused_cpu`, rows in `winograd::winograd_cpu`), which outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as for `Send`: no two bands touch the same element through it.
unsafe impl Sync for OutPtr {}

/// `dst = lhs · rhs` for an `m×k` `lhs` and a `k×n` `rhs`, each matrix given as its first
/// element and its row stride (its elements are consecutive along a row), on this thread: the
/// bands are the parallelism.
///
/// # Safety
///
/// Each matrix must be valid at every element that `(m, n, k)` and its row stride reach, for
/// reads (`lhs`, `rhs`) or writes (`dst`), and no other thread may access those elements of
/// `dst` meanwhile.
unsafe fn gemm_rows(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_rs): (*const f32, usize),
    (rhs, rhs_rs): (*const f32, usize),
) {
    // SAFETY: the caller answers for the three matrices; column stride 1 and `read_dst` false
    // (`dst` is only written) describe them as the doc comment says.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            1,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Bands per image so that a batch of `n` gives each thread at least two tasks.
fn bands_per_image(n: usize) -> usize {
    (2 * rayon::current_num_threads()).div_ceil(n.max(1))
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
        let (co, k) = if self.winograd_weights {
            (l2.shape().dims3()?.1, 3)
        } else {
            let (co, _, k, _) = l2.shape().dims4()?;
            (co, k)
        };
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
        let out = if self.winograd_weights {
            winograd::winograd_cpu(input, weight, bias, g, self.activation)
        } else if winograd::pays_per_call(&g) {
            let u = winograd::kernels(weight, co, ci);
            winograd::winograd_cpu(input, &u, bias, g, self.activation)
        } else {
            im2col::conv2d_fused_cpu(input, weight, bias, g, self.activation)
        };
        Ok((CpuStorage::F32(out), Shape::from((n, co, ho, wo))))
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
                let mut outputs = vec![conv2d_fused(&x, &wt, &b, s, pad, act)?];
                // Small images take im2col in `conv2d_fused`; the Winograd path is checked
                // at every size through the transformed weight.
                if winograd_applies(&wt, s, pad) {
                    outputs.push(conv2d_winograd(&x, &winograd_weights(&wt)?, &b, act)?);
                }
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
                for got in outputs {
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
        }
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
