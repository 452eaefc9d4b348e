//! The parsers' building block (SCHP's and DensePose's ResNets): a bias-free convolution followed
//! by an eval-mode `BatchNorm2d` (detectron2's `FrozenBatchNorm2d` computes the same affine map),
//! folded into one convolution with a bias at load time, and its activation.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `nn.BatchNorm2d`'s default epsilon, which every BatchNorm of the networks uses (and
/// `FrozenBatchNorm2d`'s).
const BN_EPS: f64 = 1e-5;

/// The slope of `nn.LeakyReLU()` (its default).
const LEAKY_SLOPE: f64 = 0.01;

/// The activation after a convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    None,
    Relu,
    LeakyRelu,
}

/// The geometry of a square convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvShape {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl ConvShape {
    /// A `kernel`×`kernel` convolution, stride 1, "same" padding, no dilation.
    pub fn new(c_in: usize, c_out: usize, kernel: usize) -> Self {
        Self {
            c_in,
            c_out,
            kernel,
            stride: 1,
            padding: kernel / 2,
            dilation: 1,
        }
    }

    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    /// Dilation `d` with the padding that keeps a 3×3 window's size (`padding = d`).
    pub fn dilated(self, d: usize) -> Self {
        Self {
            dilation: d,
            padding: d * (self.kernel / 2),
            ..self
        }
    }
}

/// A convolution with a bias and a fused activation.
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    shape: ConvShape,
    activation: Activation,
}

impl Conv {
    /// An `nn.Conv2d(bias=False)` under `conv` followed by the `nn.BatchNorm2d` under `bn`.
    pub fn with_batch_norm(
        conv: VarBuilder,
        bn: VarBuilder,
        shape: ConvShape,
        activation: Activation,
    ) -> Result<Self> {
        let c = shape.c_out;
        let weight = conv.get((c, shape.c_in, shape.kernel, shape.kernel), "weight")?;
        let gamma = bn.get(c, "weight")?;
        let beta = bn.get(c, "bias")?;
        let mean = bn.get(c, "running_mean")?;
        let var = bn.get(c, "running_var")?;
        let scale = (gamma / (var + BN_EPS)?.sqrt()?)?;
        let bias = (beta - (mean * &scale)?)?;
        let weight = weight
            .broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?
            .contiguous()?;
        Ok(Self {
            weight,
            bias,
            shape,
            activation,
        })
    }

    /// An `nn.Conv2d(bias=True)` under `vb`, without activation.
    pub fn with_bias(vb: VarBuilder, shape: ConvShape) -> Result<Self> {
        let weight = vb.get(
            (shape.c_out, shape.c_in, shape.kernel, shape.kernel),
            "weight",
        )?;
        let bias = vb.get(shape.c_out, "bias")?;
        Ok(Self {
            weight,
            bias,
            shape,
            activation: Activation::None,
        })
    }

    /// The same convolution followed by `activation`.
    pub fn with_activation(self, activation: Activation) -> Self {
        Self { activation, ..self }
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = &self.shape;
        let y = x.conv2d(&self.weight, s.padding, s.stride, s.dilation, 1)?;
        let y = y.broadcast_add(&self.bias.reshape((1, s.c_out, 1, 1))?)?;
        match self.activation {
            Activation::None => Ok(y),
            Activation::Relu => y.relu(),
            Activation::LeakyRelu => leaky_relu(&y),
        }
    }
}

/// A bottleneck residual block, as both ResNets have it: 1×1, 3×3 and 1×1 convolutions (the first
/// two with ReLU), plus the input or its 1×1 projection, then ReLU. Each network builds the
/// convolutions from its own checkpoint paths.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    pub conv1: Conv,
    pub conv2: Conv,
    pub conv3: Conv,
    /// The projection of the input where the block changes its size or channels.
    pub shortcut: Option<Conv>,
}

impl Module for Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("bottleneck").entered();
        let out = self
            .conv3
            .forward(&self.conv2.forward(&self.conv1.forward(x)?)?)?;
        let shortcut = match &self.shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        (out + shortcut)?.relu()
    }
}

/// `nn.LeakyReLU()`: `x` where positive, `0.01 x` elsewhere.
pub fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    x.maximum(&(x * LEAKY_SLOPE)?)
}

/// `F.interpolate(x, size=(h, w), mode='bilinear', align_corners=True)`.
pub fn upsample(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    if (xh, xw) == (h, w) {
        return Ok(x.clone());
    }
    x.upsample_bilinear2d(h, w, true)
}
