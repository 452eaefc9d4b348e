//! Depthwise 3×3 convolution (one filter per channel, padding 1, stride 1 or 2) with the
//! per-channel bias of a folded BatchNorm and an optional ReLU6 fused in.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_f32;

/// Runs a depthwise 3×3 convolution with zero padding 1.
///
/// `input` is `N×C×H×W`, `weight` has `C·9` elements (`C×1×3×3` as PyTorch stores it),
/// `bias` has `C`. The output is `N×C×Ho×Wo` with `Ho = (H − 1) / stride + 1`. With `relu6` the
/// output is clamped to `[0, 6]`.
pub fn depthwise_conv3x3(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    relu6: bool,
) -> Result<Tensor> {
    if super::half_on_cpu(input) {
        return super::in_f32(&[input, weight, bias], |t| {
            depthwise_conv3x3(&t[0], &t[1], &t[2], stride, relu6)
        });
    }
    let _span = super::profile::op("depthwise 3x3", input.device());
    let (_n, c, _h, _w) = input.dims4()?;
    if weight.elem_count() != c * 9 || bias.elem_count() != c {
        candle_core::bail!(
            "depthwise_conv3x3: weight {:?} / bias {:?} do not fit {c} channels",
            weight.dims(),
            bias.dims()
        );
    }
    if stride != 1 && stride != 2 {
        candle_core::bail!("depthwise_conv3x3: stride must be 1 or 2, got {stride}");
    }
    let input = input.contiguous()?;
    let weight = weight.flatten_all()?.contiguous()?;
    let bias = bias.flatten_all()?.contiguous()?;
    input.apply_op3_no_bwd(&weight, &bias, &DepthwiseConv3x3 { stride, relu6 })
}

/// The custom op behind [`depthwise_conv3x3`].
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseConv3x3 {
    pub stride: usize,
    pub relu6: bool,
}

/// Output size of a 3×3 window with padding 1 along an axis of `size`.
#[inline]
pub fn out_size(size: usize, stride: usize) -> usize {
    (size - 1) / stride + 1
}

avx2_dispatch! {
    /// [`plane`] compiled for AVX2 when the CPU has it.
    #[allow(clippy::too_many_arguments)]
    fn plane_dispatch(
        src: &[f32],
        dst: &mut [f32],
        hw: (usize, usize),
        out_hw: (usize, usize),
        k: &[f32],
        bias: f32,
        stride: usize,
        relu6: bool,
    ) => plane
}

/// One channel plane: `src` is `h×w`, `dst` is `ho×wo`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn plane(
    src: &[f32],
    dst: &mut [f32],
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
    k: &[f32],
    bias: f32,
    stride: usize,
    relu6: bool,
) {
    for oy in 0..ho {
        let out_row = &mut dst[oy * wo..(oy + 1) * wo];
        out_row.fill(bias);
        for ky in 0..3 {
            let iy = (oy * stride + ky) as isize - 1;
            if iy < 0 || iy as usize >= h {
                continue;
            }
            let row = &src[iy as usize * w..(iy as usize + 1) * w];
            let (k0, k1, k2) = (k[ky * 3], k[ky * 3 + 1], k[ky * 3 + 2]);
            if stride == 1 {
                // Interior: out[x] += k0·row[x−1] + k1·row[x] + k2·row[x+1].
                if w >= 2 {
                    out_row[0] += k1 * row[0] + k2 * row[1];
                    for x in 1..w - 1 {
                        out_row[x] += k0 * row[x - 1] + k1 * row[x] + k2 * row[x + 1];
                    }
                    out_row[w - 1] += k0 * row[w - 2] + k1 * row[w - 1];
                } else {
                    out_row[0] += k1 * row[0];
                }
            } else {
                for (ox, o) in out_row.iter_mut().enumerate() {
                    let ix = 2 * ox;
                    let mut acc = k1 * row[ix];
                    if ix >= 1 {
                        acc += k0 * row[ix - 1];
                    }
                    if ix + 1 < w {
                        acc += k2 * row[ix + 1];
                    }
                    *o += acc;
                }
            }
        }
        if relu6 {
            for v in out_row.iter_mut() {
                *v = v.clamp(0.0, 6.0);
            }
        }
    }
}

/// The CPU kernel on contiguous slices.
pub fn depthwise_conv3x3_cpu(
    input: &[f32],
    weight: &[f32],
    bias: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    stride: usize,
    relu6: bool,
) -> Vec<f32> {
    let (ho, wo) = (out_size(h, stride), out_size(w, stride));
    let mut out = vec![0f32; n * c * ho * wo];
    out.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(plane_index, dst)| {
            let ch = plane_index % c;
            let src = &input[plane_index * h * w..(plane_index + 1) * h * w];
            plane_dispatch(
                src,
                dst,
                (h, w),
                (ho, wo),
                &weight[ch * 9..ch * 9 + 9],
                bias[ch],
                stride,
                relu6,
            );
        });
    out
}

impl CustomOp3 for DepthwiseConv3x3 {
    fn name(&self) -> &'static str {
        "depthwise_conv3x3"
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
        let (n, c, h, w) = l1.shape().dims4()?;
        let input = contiguous_f32(s1, l1, "depthwise_conv3x3")?;
        let weight = contiguous_f32(s2, l2, "depthwise_conv3x3")?;
        let bias = contiguous_f32(s3, l3, "depthwise_conv3x3")?;
        let out = depthwise_conv3x3_cpu(input, weight, bias, (n, c, h, w), self.stride, self.relu6);
        let shape = Shape::from((n, c, out_size(h, self.stride), out_size(w, self.stride)));
        Ok((CpuStorage::F32(out), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{launch_typed, Scalar::I32, DEPTHWISE};
        let (n, c, h, w) = l1.shape().dims4()?;
        let (ho, wo) = (out_size(h, self.stride), out_size(w, self.stride));
        let total = n * c * ho * wo;
        let scalars = [n, c, h, w, ho, wo, self.stride, self.relu6.into()];
        // SAFETY: the arguments of `depthwise3x3_*` (each precision), in its order; one thread per
        // output element.
        let out = unsafe {
            launch_typed(
                "depthwise_conv3x3",
                &DEPTHWISE,
                &[(s1, l1), (s2, l2), (s3, l3)],
                total,
                total,
                &scalars.map(|v| I32(v as i32)),
            )
        }?;
        Ok((out, Shape::from((n, c, ho, wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Direct definition: zero-padded 3×3 window per channel.
    fn naive(
        input: &[f32],
        k: &[f32],
        b: &[f32],
        dims: (usize, usize, usize, usize),
        s: usize,
        relu6: bool,
    ) -> Vec<f32> {
        let (n, c, h, w) = dims;
        let (ho, wo) = (out_size(h, s), out_size(w, s));
        let mut out = vec![0f32; n * c * ho * wo];
        for i in 0..n {
            for ch in 0..c {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = b[ch];
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let iy = (oy * s + ky) as isize - 1;
                                let ix = (ox * s + kx) as isize - 1;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    acc += k[ch * 9 + ky * 3 + kx]
                                        * input[((i * c + ch) * h + iy as usize) * w + ix as usize];
                                }
                            }
                        }
                        if relu6 {
                            acc = acc.clamp(0.0, 6.0);
                        }
                        out[((i * c + ch) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_reference() -> Result<()> {
        let dev = Device::Cpu;
        // Even, odd and degenerate sizes, both strides, with and without ReLU6.
        for &(n, c, h, w) in &[
            (2, 5, 8, 6),
            (1, 3, 7, 5),
            (1, 2, 1, 1),
            (3, 4, 2, 9),
            (1, 1, 16, 12),
        ] {
            for stride in [1, 2] {
                for relu6 in [false, true] {
                    let x = (Tensor::randn(0f32, 3.0, (n, c, h, w), &dev)?).contiguous()?;
                    let k = Tensor::randn(0f32, 1.0, (c, 1, 3, 3), &dev)?;
                    let b = Tensor::randn(0f32, 1.0, c, &dev)?;
                    let got = depthwise_conv3x3(&x, &k, &b, stride, relu6)?;
                    let want = naive(
                        &x.flatten_all()?.to_vec1()?,
                        &k.flatten_all()?.to_vec1()?,
                        &b.to_vec1()?,
                        (n, c, h, w),
                        stride,
                        relu6,
                    );
                    assert_eq!(
                        got.dims(),
                        &[n, c, out_size(h, stride), out_size(w, stride)]
                    );
                    let got: Vec<f32> = got.flatten_all()?.to_vec1()?;
                    for (g, r) in got.iter().zip(&want) {
                        assert!((g - r).abs() <= 1e-5 * (1.0 + r.abs()), "{g} vs {r}");
                    }
                    // Also agree with candle's grouped convolution (no bias, no clamp).
                    if !relu6 {
                        let candle = x
                            .conv2d(&k, 1, stride, 1, c)?
                            .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
                        let diff = (candle
                            - Tensor::from_vec(got, want.len(), &dev)?.reshape((
                                n,
                                c,
                                out_size(h, stride),
                                out_size(w, stride),
                            ))?)?
                        .abs()?
                        .max_all()?
                        .to_scalar::<f32>()?;
                        assert!(diff < 1e-4, "differs from candle's grouped conv by {diff}");
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
        let k = Tensor::zeros((3, 1, 3, 3), candle_core::DType::F32, &dev)?;
        let b = Tensor::zeros(4, candle_core::DType::F32, &dev)?;
        assert!(depthwise_conv3x3(&x, &k, &b, 1, false).is_err());
        let k = Tensor::zeros((4, 1, 3, 3), candle_core::DType::F32, &dev)?;
        assert!(depthwise_conv3x3(&x, &k, &b, 3, false).is_err());
        Ok(())
    }
}
