//! The convolution and the group norm of the UNet and the VAE, with diffusers' parameter names.
//! In f32 on the CPU they run on the fused ops of [`crate::ops`] (banded im2col or Winograd
//! with the bias added in the same pass; one-pass group norm with the SiLU fused in); other
//! dtypes and devices take candle's ops.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::ops::{conv2d_fused, group_norm, ConvActivation};

/// A square-kernel convolution with a bias and zero padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Reads `weight` and `bias` under `vb` (random initialisation as candle's).
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Ok(Self {
            inner: candle_nn::conv2d(c_in, c_out, kernel, cfg, vb)?,
            stride,
            padding,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.inner.bias() {
            Some(bias) if x.device().is_cpu() && x.dtype() == DType::F32 => conv2d_fused(
                x,
                self.inner.weight(),
                bias,
                self.stride,
                self.padding,
                ConvActivation::None,
            ),
            _ => self.inner.forward(x),
        }
    }
}

/// Group normalisation with a per-channel affine.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Reads `weight` and `bias` of `channels` elements under `vb`.
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?,
            groups,
            eps,
        })
    }

    /// `silu(norm(x))`, the pre-activation of the resnet blocks and of the output heads.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        group_norm(x, &self.weight, &self.bias, self.groups, self.eps, true)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        group_norm(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }
}
