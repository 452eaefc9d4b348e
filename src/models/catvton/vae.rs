//! `AutoencoderKL` (the `sd-vae-ft-mse` VAE): the encoder gives a diagonal Gaussian over
//! latents, the decoder turns latents back into an image.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::Attention;
use super::config::VaeConfig;
use super::layers::{Conv2d, GroupNorm};
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};

/// The VAE's group norms all use this epsilon.
const EPS: f64 = 1e-6;

fn conv(vb: VarBuilder, c_in: usize, c_out: usize, k: usize) -> Result<Conv2d> {
    Conv2d::new(vb, c_in, c_out, k, k / 2, 1)
}

fn resnet(vb: VarBuilder, c_in: usize, c_out: usize, groups: usize) -> Result<ResnetBlock2D> {
    ResnetBlock2D::new(
        vb,
        ResnetConfig {
            in_channels: c_in,
            out_channels: c_out,
            temb_channels: None,
            groups,
            eps: EPS,
        },
    )
}

/// `UNetMidBlock2D`: resnet, one-head attention, resnet.
#[derive(Debug, Clone)]
struct VaeMidBlock {
    first: ResnetBlock2D,
    attention: Attention,
    second: ResnetBlock2D,
}

impl VaeMidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            first: resnet(vb.pp("resnets.0"), channels, channels, groups)?,
            attention: Attention::vae_attention(vb.pp("attentions.0"), channels, groups)?,
            second: resnet(vb.pp("resnets.1"), channels, channels, groups)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.first.forward(x, None)?;
        let h = self.attention.forward_image(&h)?;
        self.second.forward(&h, None)
    }
}

/// A stack of resnets followed by an optional resampler (encoder or decoder level).
#[derive(Debug, Clone)]
struct Level {
    resnets: Vec<ResnetBlock2D>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

impl Level {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        if let Some(down) = &self.down {
            h = down.forward(&h)?;
        }
        if let Some(up) = &self.up {
            h = up.forward(&h, None)?;
        }
        Ok(h)
    }
}

/// Norm, SiLU and the last convolution, as both halves end.
#[derive(Debug, Clone)]
struct Head {
    norm: GroupNorm,
    conv: Conv2d,
}

impl Head {
    fn new(vb: &VarBuilder, c_in: usize, c_out: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::new(vb.pp("conv_norm_out"), groups, c_in, EPS)?,
            conv: conv(vb.pp("conv_out"), c_in, c_out, 3)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&self.norm.forward_silu(x)?)
    }
}

/// The latent distribution of an image: its mean and standard deviation.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    pub mean: Tensor,
    pub std: Tensor,
}

impl LatentDistribution {
    /// `mean + std · noise`, with the noise supplied by the caller.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        self.mean.add(&self.std.broadcast_mul(noise)?)
    }
}

/// The variational autoencoder.
#[derive(Debug, Clone)]
pub struct AutoencoderKl {
    conv_in: Conv2d,
    down: Vec<Level>,
    encoder_mid: VaeMidBlock,
    encoder_head: Head,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    decoder_in: Conv2d,
    decoder_mid: VaeMidBlock,
    up: Vec<Level>,
    decoder_head: Head,
    scaling_factor: f64,
    dtype: candle_core::DType,
}

impl AutoencoderKl {
    /// Builds the VAE from `vb`, whose paths are the diffusers checkpoint names. The
    /// configuration must have passed [`VaeConfig::validate`].
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let n = channels.len();
        let groups = config.norm_num_groups;
        let layers = config.layers_per_block;
        let latent = config.latent_channels;
        let enc = vb.pp("encoder");
        let mut down = Vec::with_capacity(n);
        for (i, &c_out) in channels.iter().enumerate() {
            let c_in = if i == 0 { channels[0] } else { channels[i - 1] };
            let vb = enc.pp("down_blocks").pp(i);
            let resnets = (0..layers)
                .map(|j| {
                    resnet(
                        vb.pp("resnets").pp(j),
                        if j == 0 { c_in } else { c_out },
                        c_out,
                        groups,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let down_sampler = (i + 1 < n)
                .then(|| Downsample2D::new(vb.pp("downsamplers.0"), c_out, false))
                .transpose()?;
            down.push(Level {
                resnets,
                down: down_sampler,
                up: None,
            });
        }
        let top = channels[n - 1];
        let dec = vb.pp("decoder");
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let c_out = channels[n - 1 - i];
            let c_in = if i == 0 { top } else { channels[n - i] };
            let vb = dec.pp("up_blocks").pp(i);
            let resnets = (0..=layers)
                .map(|j| {
                    resnet(
                        vb.pp("resnets").pp(j),
                        if j == 0 { c_in } else { c_out },
                        c_out,
                        groups,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let up_sampler = (i + 1 < n)
                .then(|| Upsample2D::new(vb.pp("upsamplers.0"), c_out))
                .transpose()?;
            up.push(Level {
                resnets,
                down: None,
                up: up_sampler,
            });
        }
        let one = |vb: VarBuilder, c_in, c_out| conv(vb, c_in, c_out, 1);
        Ok(Self {
            conv_in: conv(enc.pp("conv_in"), config.in_channels, channels[0], 3)?,
            down,
            encoder_mid: VaeMidBlock::new(enc.pp("mid_block"), top, groups)?,
            encoder_head: Head::new(&enc, top, 2 * latent, groups)?,
            quant_conv: config
                .use_quant_conv
                .then(|| one(vb.pp("quant_conv"), 2 * latent, 2 * latent))
                .transpose()?,
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| one(vb.pp("post_quant_conv"), latent, latent))
                .transpose()?,
            decoder_in: conv(dec.pp("conv_in"), latent, top, 3)?,
            decoder_mid: VaeMidBlock::new(dec.pp("mid_block"), top, groups)?,
            up,
            decoder_head: Head::new(&dec, channels[0], config.out_channels, groups)?,
            scaling_factor: config.scaling_factor,
            dtype: vb.dtype(),
        })
    }

    /// The factor latents are multiplied by before the UNet sees them.
    pub fn scaling_factor(&self) -> f64 {
        self.scaling_factor
    }

    /// The latent distribution of `images: B×3×H×W` in [-1, 1], in f32.
    pub fn encode(&self, images: &Tensor) -> Result<LatentDistribution> {
        let x = images.to_dtype(self.dtype)?;
        let mut h = self.conv_in.forward(&x)?;
        for level in &self.down {
            h = level.forward(&h)?;
        }
        h = self.encoder_mid.forward(&h)?;
        h = self.encoder_head.forward(&h)?;
        if let Some(q) = &self.quant_conv {
            h = q.forward(&h)?;
        }
        let h = h.to_dtype(candle_core::DType::F32)?;
        let latent = h.dim(1)? / 2;
        let mean = h.narrow(1, 0, latent)?;
        let logvar = h.narrow(1, latent, latent)?.clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok(LatentDistribution { mean, std })
    }

    /// Decodes latents that are already divided by the scaling factor; answers
    /// `B×3×H×W` in f32, roughly in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let mut h = latents.to_dtype(self.dtype)?;
        if let Some(q) = &self.post_quant_conv {
            h = q.forward(&h)?;
        }
        h = self.decoder_in.forward(&h)?;
        h = self.decoder_mid.forward(&h)?;
        for level in &self.up {
            h = level.forward(&h)?;
        }
        self.decoder_head
            .forward(&h)?
            .to_dtype(candle_core::DType::F32)
    }
}
