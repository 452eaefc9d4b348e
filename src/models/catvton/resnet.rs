//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`, shared by the UNet and the VAE.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{Conv2d, GroupNorm};

fn conv(
    vb: VarBuilder,
    c_in: usize,
    c_out: usize,
    k: usize,
    padding: usize,
    stride: usize,
) -> Result<Conv2d> {
    Conv2d::new(vb, c_in, c_out, k, padding, stride)
}

/// Two 3×3 convolutions with group norms and SiLU, an optional timestep projection added
/// between them, and a 1×1 shortcut when the channel count changes.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<candle_nn::Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

/// A resnet block's shape.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the timestep embedding; `None` in the VAE.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, cfg: ResnetConfig) -> Result<Self> {
        let (c_in, c_out) = (cfg.in_channels, cfg.out_channels);
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), cfg.groups, c_in, cfg.eps)?,
            conv1: conv(vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: cfg
                .temb_channels
                .map(|t| candle_nn::linear(t, c_out, vb.pp("time_emb_proj")))
                .transpose()?,
            norm2: GroupNorm::new(vb.pp("norm2"), cfg.groups, c_out, cfg.eps)?,
            conv2: conv(vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: (c_in != c_out)
                .then(|| conv(vb.pp("conv_shortcut"), c_in, c_out, 1, 0, 1))
                .transpose()?,
        })
    }

    /// `x: B×C×H×W`; `temb: B×T`, one row per batch item (each may be at its own timestep).
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&candle_nn::ops::silu(temb)?)?;
            h = h.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.conv_shortcut {
            Some(shortcut) => shortcut.forward(x)? + h,
            None => x + h,
        }
    }
}

/// A stride-2 3×3 convolution. The UNet pads it by 1 on each side; the VAE pads only the
/// right and bottom edges (`padding = 0` in diffusers).
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, channels: usize, symmetric_padding: bool) -> Result<Self> {
        let padding = usize::from(symmetric_padding);
        Ok(Self {
            conv: conv(vb.pp("conv"), channels, channels, 3, padding, 2)?,
            pad_right_bottom: !symmetric_padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_right_bottom {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour upsampling followed by a 3×3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv(vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    /// Upsamples to `size` (the matching skip connection's height and width) or, without one,
    /// to twice the input.
    pub fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&x.upsample_nearest2d(th, tw)?)
    }
}
