//! `UNet2DConditionModel` as CatVTON runs it: the Stable Diffusion 1.5 inpainting UNet with its
//! cross-attention skipped, so it takes no text, and with one timestep per batch item.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};

use super::blocks::{BlockShape, DownBlock, LevelConfig, MidBlock, UpBlock};
use super::config::UNetConfig;

/// The sinusoidal timestep embedding (`Timesteps`) followed by `TimestepEmbedding`'s two
/// linear layers.
#[derive(Debug, Clone)]
struct TimeEmbedding {
    channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    linear_1: Linear,
    linear_2: Linear,
}

impl TimeEmbedding {
    /// The sinusoids for each timestep, `B×channels`, computed in f32 as diffusers does.
    fn sinusoids(&self, timesteps: &[f64], device: &Device) -> Result<Tensor> {
        let half = self.channels / 2;
        let denominator = (half as f64 - self.freq_shift) as f32;
        let frequencies: Vec<f32> = (0..half)
            .map(|i| ((-(10000f64.ln()) as f32 * i as f32) / denominator).exp())
            .collect();
        let mut rows = Vec::with_capacity(timesteps.len() * half * 2);
        for &t in timesteps {
            let args: Vec<f32> = frequencies.iter().map(|f| t as f32 * f).collect();
            let sin = args.iter().map(|a| a.sin());
            let cos = args.iter().map(|a| a.cos());
            if self.flip_sin_to_cos {
                rows.extend(cos.chain(sin));
            } else {
                rows.extend(sin.chain(cos));
            }
        }
        Tensor::from_vec(rows, (timesteps.len(), half * 2), device)
    }

    fn forward(&self, timesteps: &[f64], device: &Device, dtype: DType) -> Result<Tensor> {
        let t = self.sinusoids(timesteps, device)?.to_dtype(dtype)?;
        let h = candle_nn::ops::silu(&self.linear_1.forward(&t)?)?;
        self.linear_2.forward(&h)
    }
}

/// The CatVTON UNet.
#[derive(Debug, Clone)]
pub struct UNet {
    conv_in: Conv2d,
    time: TimeEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    dtype: DType,
}

fn conv3(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    candle_nn::conv2d(c_in, c_out, 3, cfg, vb)
}

impl UNet {
    /// Builds the network from `vb`, whose paths are the diffusers checkpoint names. The
    /// configuration must have passed [`UNetConfig::validate`].
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let n = channels.len();
        let heads = config.heads();
        let c0 = channels[0];
        let temb = config.time_embed_dim();
        let shape = BlockShape {
            temb_channels: temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
        };
        let time = TimeEmbedding {
            channels: c0,
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
            linear_1: candle_nn::linear(c0, temb, vb.pp("time_embedding.linear_1"))?,
            linear_2: candle_nn::linear(temb, temb, vb.pp("time_embedding.linear_2"))?,
        };
        let mut down_blocks = Vec::with_capacity(n);
        for (i, kind) in config.down_block_types.iter().enumerate() {
            let level = LevelConfig {
                in_channels: if i == 0 { c0 } else { channels[i - 1] },
                out_channels: channels[i],
                layers: config.layers_per_block,
                heads: kind.starts_with("CrossAttn").then(|| heads.get(i)),
                resample: i + 1 < n,
            };
            down_blocks.push(DownBlock::new(vb.pp("down_blocks").pp(i), level, shape)?);
        }
        let mid_block =
            MidBlock::new(vb.pp("mid_block"), channels[n - 1], heads.get(n - 1), shape)?;
        let mut up_blocks = Vec::with_capacity(n);
        for (i, kind) in config.up_block_types.iter().enumerate() {
            let rev = |j: usize| channels[n - 1 - j.min(n - 1)];
            let out_channels = rev(i);
            let below = rev(i.saturating_sub(1));
            let skip_from_level_above = rev(i + 1);
            let layers = config.layers_per_block + 1;
            let skips: Vec<usize> = (0..layers)
                .map(|j| {
                    if j + 1 == layers {
                        skip_from_level_above
                    } else {
                        out_channels
                    }
                })
                .collect();
            let level = LevelConfig {
                in_channels: below,
                out_channels,
                layers,
                heads: kind.starts_with("CrossAttn").then(|| heads.get(n - 1 - i)),
                resample: i + 1 < n,
            };
            up_blocks.push(UpBlock::new(
                vb.pp("up_blocks").pp(i),
                level,
                &skips,
                shape,
            )?);
        }
        Ok(Self {
            conv_in: conv3(vb.pp("conv_in"), config.in_channels, c0)?,
            time,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: candle_nn::group_norm(
                config.norm_num_groups,
                c0,
                config.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv3(vb.pp("conv_out"), c0, config.out_channels)?,
            dtype: vb.dtype(),
        })
    }

    /// The weights' dtype; inputs are converted to it.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Predicts the noise in `x: B×9×h×w`, row `i` being at timestep `timesteps[i]`. Answers
    /// `B×4×h×w` in the weights' dtype.
    pub fn forward(&self, x: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        let b = x.dim(0)?;
        if timesteps.len() != b {
            candle_core::bail!("{} timesteps for a batch of {b}", timesteps.len());
        }
        let x = x.to_dtype(self.dtype)?;
        let temb = self.time.forward(timesteps, x.device(), self.dtype)?;
        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(&h, &temb)?;
            h = out;
            skips.extend(block_skips);
        }
        h = self.mid_block.forward(&h, &temb)?;
        for block in &self.up_blocks {
            h = block.forward(&h, &mut skips, &temb)?;
        }
        let h = candle_nn::ops::silu(&self.conv_norm_out.forward(&h)?)?;
        self.conv_out.forward(&h)
    }
}

/// The diffusers paths of every `attn1` module, in the order PyTorch's `named_modules` lists
/// them: the down blocks, then the up blocks, then the mid block (registered last). CatVTON's
/// attention checkpoint numbers its modules in this order.
pub fn attn1_paths(config: &UNetConfig) -> Vec<String> {
    let attn = |prefix: String| format!("{prefix}.transformer_blocks.0.attn1");
    let mut paths = Vec::new();
    for (i, kind) in config.down_block_types.iter().enumerate() {
        if kind.starts_with("CrossAttn") {
            for j in 0..config.layers_per_block {
                paths.push(attn(format!("down_blocks.{i}.attentions.{j}")));
            }
        }
    }
    for (i, kind) in config.up_block_types.iter().enumerate() {
        if kind.starts_with("CrossAttn") {
            for j in 0..=config.layers_per_block {
                paths.push(attn(format!("up_blocks.{i}.attentions.{j}")));
            }
        }
    }
    paths.push(attn("mid_block.attentions.0".into()));
    paths
}
