//! Building blocks shared by the DM-VTON networks: convolutions with BatchNorm folded in at load
//! time, the fused depthwise convolution and the MobileNetV2 inverted residual block.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::{
    conv2d_fused, conv2d_winograd, depthwise_conv3x3, winograd_applies, winograd_weights,
    ConvActivation,
};

/// BatchNorm epsilon of every `nn.BatchNorm2d` in the reference networks.
const BN_EPS: f64 = 1e-5;

/// The activation applied after a convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    None,
    Relu6,
    LeakyRelu(f64),
}

impl Activation {
    fn fused(self) -> ConvActivation {
        match self {
            Activation::None => ConvActivation::None,
            Activation::Relu6 => ConvActivation::Relu6,
            Activation::LeakyRelu(slope) => ConvActivation::LeakyRelu(slope as f32),
        }
    }
}

/// How a [`Conv`] convolves, as `candle_nn::Conv2dConfig` (square kernel, zero padding, no
/// dilation or groups) plus the activation fused after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvConfig {
    pub padding: usize,
    pub stride: usize,
    pub activation: Activation,
}

impl Default for ConvConfig {
    /// Padding 0, stride 1, no activation.
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            activation: Activation::None,
        }
    }
}

/// The per-channel `(scale, shift)` of an eval-mode BatchNorm stored under `vb`.
fn batch_norm(vb: &VarBuilder, channels: usize) -> Result<(Tensor, Tensor)> {
    let gamma = vb.get(channels, "weight")?;
    let beta = vb.get(channels, "bias")?;
    let mean = vb.get(channels, "running_mean")?;
    let var = vb.get(channels, "running_var")?;
    let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
    let shift = (beta - (mean * &scale)?)?;
    Ok((scale, shift))
}

/// A dense 2-D convolution with an optional bias and a fused activation.
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
    activation: Activation,
    /// The Winograd transform of `weight`, on the CPU where it applies.
    winograd: Option<Tensor>,
}

impl Conv {
    /// A `c_in`→`c_out` `nn.Conv2d` with a `kernel`×`kernel` window stored under `vb` (`weight`
    /// and `bias`), as `candle_nn::conv2d`.
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        cfg: ConvConfig,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        Self::finish(weight, bias, cfg, vb.dtype())
    }

    /// As [`Conv::new`] for an `nn.Conv2d(bias=False)` (only `weight`), as
    /// `candle_nn::conv2d_no_bias`.
    pub fn no_bias(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        cfg: ConvConfig,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = Tensor::zeros(c_out, weight.dtype(), weight.device())?;
        Self::finish(weight, bias, cfg, vb.dtype())
    }

    /// A bias-free `nn.Conv2d` under `conv` followed by the `nn.BatchNorm2d` under `bn`, folded
    /// into one convolution with a bias.
    pub fn with_batch_norm(
        conv: VarBuilder,
        bn: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        cfg: ConvConfig,
    ) -> Result<Self> {
        let weight = conv.get((c_out, c_in, kernel, kernel), "weight")?;
        let (scale, shift) = batch_norm(&bn, c_out)?;
        let weight = weight
            .broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?
            .contiguous()?;
        Self::finish(weight, shift, cfg, conv.dtype())
    }
}

impl Conv {
    /// Whether `other` has exactly the same weight and bias.
    pub fn same_parameters(&self, other: &Conv) -> Result<bool> {
        let equal = |a: &Tensor, b: &Tensor| -> Result<bool> {
            Ok(a.dims() == b.dims()
                && a.ne(b)?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()?
                    == 0.0)
        };
        Ok(equal(&self.weight, &other.weight)? && equal(&self.bias, &other.bias)?)
    }

    /// The layer from its f32 weights (BatchNorm folded in), rounded to `dtype`, the precision
    /// it runs in. The Winograd transform stays f32: the CPU computes in f32.
    fn finish(weight: Tensor, bias: Tensor, cfg: ConvConfig, dtype: DType) -> Result<Self> {
        let ConvConfig {
            padding,
            stride,
            activation,
        } = cfg;
        let winograd = if weight.device().is_cpu() && winograd_applies(&weight, stride, padding) {
            Some(winograd_weights(&weight)?)
        } else {
            None
        };
        Ok(Self {
            weight: weight.to_dtype(dtype)?,
            bias: bias.to_dtype(dtype)?,
            stride,
            padding,
            activation,
            winograd,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(u), true) = (&self.winograd, x.device().is_cpu()) {
            return conv2d_winograd(x, u, &self.bias, self.activation.fused());
        }
        conv2d_fused(
            x,
            &self.weight,
            &self.bias,
            self.stride,
            self.padding,
            self.activation.fused(),
        )
    }
}

/// A depthwise 3×3 `nn.Conv2d` (padding 1) with its BatchNorm folded in and ReLU6 fused.
#[derive(Debug, Clone)]
pub struct Depthwise {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
}

impl Depthwise {
    /// The convolution under `conv` and its BatchNorm under `bn`.
    pub fn with_batch_norm(
        conv: VarBuilder,
        bn: VarBuilder,
        channels: usize,
        stride: usize,
    ) -> Result<Self> {
        let weight = conv.get((channels, 1, 3, 3), "weight")?;
        let (scale, shift) = batch_norm(&bn, channels)?;
        let weight = weight
            .reshape((channels, 9))?
            .broadcast_mul(&scale.reshape((channels, 1))?)?
            .to_dtype(conv.dtype())?
            .contiguous()?;
        Ok(Self {
            weight,
            bias: shift.to_dtype(conv.dtype())?.contiguous()?,
            stride,
        })
    }
}

impl Module for Depthwise {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        depthwise_conv3x3(x, &self.weight, &self.bias, self.stride, true)
    }
}

/// The shape of an [`InvertedResidual`] block besides its channels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InvertedResidualConfig {
    /// Stride of the depthwise convolution.
    pub stride: usize,
    /// Hidden channels per input channel.
    pub expand_ratio: usize,
    /// Whether the block has the 1×1 expansion even at ratio 1 (as the FPN encoder builds it);
    /// without it, ratio 1 means no expansion (as torchvision-style MobileNetV2 builds it).
    pub pointwise_expand: bool,
}

impl Default for InvertedResidualConfig {
    /// Stride 1, no expansion.
    fn default() -> Self {
        Self {
            stride: 1,
            expand_ratio: 1,
            pointwise_expand: false,
        }
    }
}

/// MobileNetV2's inverted residual block: 1×1 expansion (optional), depthwise 3×3, 1×1
/// projection, each with BatchNorm; ReLU6 after the first two; a skip when shapes allow.
#[derive(Debug, Clone)]
pub struct InvertedResidual {
    expand: Option<Conv>,
    depthwise: Depthwise,
    project: Conv,
    residual: bool,
}

impl InvertedResidual {
    /// The `c_in`→`c_out` block stored under `vb` (`conv.N.*`).
    pub fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        cfg: InvertedResidualConfig,
    ) -> Result<Self> {
        let InvertedResidualConfig {
            stride,
            expand_ratio,
            pointwise_expand,
        } = cfg;
        let hidden = c_in * expand_ratio;
        let vb = vb.pp("conv");
        let has_expand = pointwise_expand || expand_ratio != 1;
        let (expand, dw_at) = if has_expand {
            let relu6 = ConvConfig {
                activation: Activation::Relu6,
                ..Default::default()
            };
            let expand = Conv::with_batch_norm(vb.pp("0"), vb.pp("1"), c_in, hidden, 1, relu6)?;
            (Some(expand), 3)
        } else {
            (None, 0)
        };
        let depthwise = Depthwise::with_batch_norm(
            vb.pp(dw_at.to_string()),
            vb.pp((dw_at + 1).to_string()),
            hidden,
            stride,
        )?;
        let project = Conv::with_batch_norm(
            vb.pp((dw_at + 3).to_string()),
            vb.pp((dw_at + 4).to_string()),
            hidden,
            c_out,
            1,
            ConvConfig::default(),
        )?;
        Ok(Self {
            expand,
            depthwise,
            project,
            residual: stride == 1 && c_in == c_out,
        })
    }
}

impl Module for InvertedResidual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let h = self.depthwise.forward(&h)?;
        let h = self.project.forward(&h)?;
        if self.residual {
            h + x
        } else {
            Ok(h)
        }
    }
}
