//! The UNet's down, mid and up blocks (`CrossAttnDownBlock2D` / `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D` / `UpBlock2D`), with diffusers' names.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use super::transformer::Transformer2DModel;

/// What every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
}

impl BlockShape {
    fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetConfig {
        ResnetConfig {
            in_channels,
            out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
        }
    }
}

/// One resolution level on the way down: `layers` resnets, each followed by a transformer
/// when the block has attention, then a downsampler unless it is the last level.
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

/// The shape of one down or up block.
#[derive(Debug, Clone, Copy)]
pub struct LevelConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub layers: usize,
    /// Attention heads, or `None` for a block without attention.
    pub heads: Option<usize>,
    /// Whether the block ends with a down- or upsampler.
    pub resample: bool,
}

impl DownBlock {
    pub fn new(vb: VarBuilder, level: LevelConfig, shape: BlockShape) -> Result<Self> {
        let mut resnets = Vec::with_capacity(level.layers);
        let mut attentions = Vec::new();
        for i in 0..level.layers {
            let c_in = if i == 0 {
                level.in_channels
            } else {
                level.out_channels
            };
            resnets.push(ResnetBlock2D::new(
                vb.pp("resnets").pp(i),
                shape.resnet(c_in, level.out_channels),
            )?);
            if let Some(heads) = level.heads {
                attentions.push(Transformer2DModel::new(
                    vb.pp("attentions").pp(i),
                    level.out_channels,
                    heads,
                    shape.groups,
                )?);
            }
        }
        let downsampler = level
            .resample
            .then(|| Downsample2D::new(vb.pp("downsamplers").pp("0"), level.out_channels, true))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Resnets (and transformers) in the block.
    pub fn layers(&self) -> usize {
        self.resnets.len()
    }

    /// Returns the block's output and the skip connections it hands to the up path.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let (mut h, mut skips) = self.forward_layers(x, temb, self.resnets.len())?;
        if let Some(down) = &self.downsampler {
            h = down.forward(&h)?;
            skips.push(h.clone());
        }
        Ok((h, skips))
    }

    /// Only the first `layers` resnets (each with its transformer), without the downsampler:
    /// the part a shallow (cached) UNet pass recomputes. Returns their output and skips.
    pub fn forward_layers(
        &self,
        x: &Tensor,
        temb: &Tensor,
        layers: usize,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate().take(layers) {
            h = resnet.forward(&h, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h)?;
            }
            skips.push(h.clone());
        }
        Ok((h, skips))
    }
}

/// A resnet, a transformer, and a second resnet, at the lowest resolution.
#[derive(Debug, Clone)]
pub struct MidBlock {
    first: ResnetBlock2D,
    attention: Transformer2DModel,
    second: ResnetBlock2D,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, channels: usize, heads: usize, shape: BlockShape) -> Result<Self> {
        Ok(Self {
            first: ResnetBlock2D::new(vb.pp("resnets.0"), shape.resnet(channels, channels))?,
            attention: Transformer2DModel::new(
                vb.pp("attentions.0"),
                channels,
                heads,
                shape.groups,
            )?,
            second: ResnetBlock2D::new(vb.pp("resnets.1"), shape.resnet(channels, channels))?,
        })
    }

    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.first.forward(x, Some(temb))?;
        let h = self.attention.forward(&h)?;
        self.second.forward(&h, Some(temb))
    }
}

/// One resolution level on the way up: `layers` resnets, each taking the matching skip
/// connection concatenated to its input and followed by a transformer when the block has
/// attention, then an upsampler unless it is the last level.
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `skip_channels[i]` is the channel count of the skip connection resnet `i` consumes;
    /// `level.in_channels` is the channel count coming up from the level below.
    pub fn new(
        vb: VarBuilder,
        level: LevelConfig,
        skip_channels: &[usize],
        shape: BlockShape,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(level.layers);
        let mut attentions = Vec::new();
        for (i, skip) in skip_channels.iter().enumerate().take(level.layers) {
            let c_in = if i == 0 {
                level.in_channels
            } else {
                level.out_channels
            };
            resnets.push(ResnetBlock2D::new(
                vb.pp("resnets").pp(i),
                shape.resnet(c_in + skip, level.out_channels),
            )?);
            if let Some(heads) = level.heads {
                attentions.push(Transformer2DModel::new(
                    vb.pp("attentions").pp(i),
                    level.out_channels,
                    heads,
                    shape.groups,
                )?);
            }
        }
        let upsampler = level
            .resample
            .then(|| Upsample2D::new(vb.pp("upsamplers").pp("0"), level.out_channels))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Resnets (and transformers) in the block.
    pub fn layers(&self) -> usize {
        self.resnets.len()
    }

    /// Consumes the last `resnets.len()` skip connections (newest first), then upsamples.
    pub fn forward(&self, x: &Tensor, skips: &mut Vec<Tensor>, temb: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in 0..self.resnets.len() {
            h = self.forward_layer(layer, &h, skips, temb)?;
        }
        self.upsample(&h, skips)
    }

    /// Resnet `layer` on `x` and the newest skip connection, which it consumes, then its
    /// transformer.
    pub fn forward_layer(
        &self,
        layer: usize,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
    ) -> Result<Tensor> {
        let resnet = self
            .resnets
            .get(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("no up layer {layer}")))?;
        let skip = skips
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("UNet skip connections ran out".into()))?;
        let h = resnet.forward(&Tensor::cat(&[x, &skip], 1)?, Some(temb))?;
        match self.attentions.get(layer) {
            Some(attn) => attn.forward(&h),
            None => Ok(h),
        }
    }

    /// The upsampler, if the block has one. It matches the size of the skip the next level
    /// takes, as diffusers does for odd sizes.
    pub fn upsample(&self, h: &Tensor, skips: &[Tensor]) -> Result<Tensor> {
        match &self.upsampler {
            Some(up) => {
                let next_size = match skips.last() {
                    Some(s) => {
                        let (_, _, sh, sw) = s.dims4()?;
                        Some((sh, sw))
                    }
                    None => None,
                };
                up.forward(h, next_size)
            }
            None => Ok(h.clone()),
        }
    }
}
