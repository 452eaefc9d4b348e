//! `UNet2DConditionModel` as CatVTON runs it: the Stable Diffusion 1.5 inpainting UNet with its
//! cross-attention skipped, so it takes no text, and with one timestep per batch item.
//!
//! It also runs DeepCache's two passes (Ma et al., CVPR 2024, as the `DeepCache` package's
//! `DeepCacheSDHelper` does): a full pass that keeps the deep features entering the up path
//! at a skip branch ([`UNet::forward_capturing`]), and a shallow pass that recomputes only
//! the levels above that branch and takes the deep features from an earlier full pass
//! ([`UNet::forward_shallow`]).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::blocks::{BlockShape, DownBlock, LevelConfig, MidBlock, UpBlock};
use super::config::UNetConfig;
use super::layers::{Conv2d, GroupNorm};

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

/// Where a DeepCache branch splits the UNet: a shallow pass recomputes down block `level`'s
/// first `layer` resnets (without its downsampler) and every level above it, then resumes the
/// up path at that level's resnet mirroring `layer`, from the cached deep features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SplitPoint {
    pub level: usize,
    pub layer: usize,
}

/// DeepCache numbers the skip branches `block · 3 + layer` (`cache_branch_id`), three per
/// level as in Stable Diffusion, whose levels have two resnets and a downsampler.
pub const BRANCHES_PER_LEVEL: usize = 3;

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
    Conv2d::new(vb, c_in, c_out, 3, 1, 1)
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
            conv_norm_out: GroupNorm::new(
                vb.pp("conv_norm_out"),
                config.norm_num_groups,
                c0,
                config.norm_eps,
            )?,
            conv_out: conv3(vb.pp("conv_out"), c0, config.out_channels)?,
            dtype: vb.dtype(),
        })
    }

    /// The weights' dtype; inputs are converted to it.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Resnets per down block (`layers_per_block`); up blocks have one more.
    fn layers_per_block(&self) -> usize {
        self.down_blocks.first().map_or(0, |b| b.layers())
    }

    /// Where DeepCache's `cache_branch_id` splits this UNet, as `DeepCacheSDHelper` reads it:
    /// block `branch / 3`, layer `branch % 3`. A layer past the level's resnets caches the same
    /// features as its last one, and a block past the deepest level caches only the mid
    /// block, as the helper's comparisons do.
    pub fn split_point(&self, branch: usize) -> SplitPoint {
        let levels = self.down_blocks.len();
        let layers = self.layers_per_block();
        let level = branch / BRANCHES_PER_LEVEL;
        if level >= levels {
            return SplitPoint {
                level: levels.saturating_sub(1),
                layer: layers,
            };
        }
        SplitPoint {
            level,
            layer: (branch % BRANCHES_PER_LEVEL).min(layers),
        }
    }

    /// Position in the up path (up blocks in order, their resnets in order) of the first
    /// resnet a shallow pass at `point` runs.
    fn resume_position(&self, point: SplitPoint) -> usize {
        let per_block = self.layers_per_block() + 1;
        let block = self.up_blocks.len().saturating_sub(1 + point.level);
        block * per_block + (per_block - 1).saturating_sub(point.layer)
    }

    /// The inputs in the weights' dtype and the timestep embedding.
    fn prepare(&self, x: &Tensor, timesteps: &[f64]) -> Result<(Tensor, Tensor)> {
        let b = x.dim(0)?;
        if timesteps.len() != b {
            candle_core::bail!("{} timesteps for a batch of {b}", timesteps.len());
        }
        let x = x.to_dtype(self.dtype)?;
        let temb = self.time.forward(timesteps, x.device(), self.dtype)?;
        Ok((x, temb))
    }

    /// Predicts the noise in `x: B×9×h×w`, row `i` being at timestep `timesteps[i]`. Answers
    /// `B×4×h×w` in the weights' dtype.
    pub fn forward(&self, x: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        Ok(self.forward_capturing(x, timesteps, &[])?.0)
    }

    /// [`UNet::forward`], also answering, for each of `points`, the deep features a shallow
    /// pass at that point resumes from (`B×C×h'×w'`).
    pub fn forward_capturing(
        &self,
        x: &Tensor,
        timesteps: &[f64],
        points: &[SplitPoint],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (x, temb) = self.prepare(x, timesteps)?;
        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(&h, &temb)?;
            h = out;
            skips.extend(block_skips);
        }
        h = self.mid_block.forward(&h, &temb)?;
        let positions: Vec<usize> = points.iter().map(|&p| self.resume_position(p)).collect();
        let mut captured: Vec<Option<Tensor>> = vec![None; points.len()];
        let h = self.up_path(h, &mut skips, &temb, 0, |position, h| {
            for (slot, &p) in captured.iter_mut().zip(&positions) {
                if p == position {
                    *slot = Some(h.clone());
                }
            }
        })?;
        let captured = captured
            .into_iter()
            .map(|c| {
                c.ok_or_else(|| candle_core::Error::Msg("a split point outside the UNet".into()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((self.output(&h)?, captured))
    }

    /// DeepCache's shallow pass: the levels above `point` recomputed, the rest taken from
    /// `deep`, the features [`UNet::forward_capturing`] answered for `point` (one row per row
    /// of `x`).
    pub fn forward_shallow(
        &self,
        x: &Tensor,
        timesteps: &[f64],
        point: SplitPoint,
        deep: &Tensor,
    ) -> Result<Tensor> {
        let (x, temb) = self.prepare(x, timesteps)?;
        let Some(split_block) = self.down_blocks.get(point.level) else {
            candle_core::bail!("no UNet level {}", point.level);
        };
        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks[..point.level] {
            let (out, block_skips) = block.forward(&h, &temb)?;
            h = out;
            skips.extend(block_skips);
        }
        let (_, block_skips) = split_block.forward_layers(&h, &temb, point.layer)?;
        skips.extend(block_skips);
        let start = self.resume_position(point);
        let h = self.up_path(
            deep.to_dtype(self.dtype)?,
            &mut skips,
            &temb,
            start,
            |_, _| {},
        )?;
        self.output(&h)
    }

    /// The up path from position `start` (see [`UNet::resume_position`]); `observe` sees the
    /// features entering each resnet it runs.
    fn up_path(
        &self,
        mut h: Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        start: usize,
        mut observe: impl FnMut(usize, &Tensor),
    ) -> Result<Tensor> {
        let mut position = 0;
        for block in &self.up_blocks {
            let mut ran = false;
            for layer in 0..block.layers() {
                if position >= start {
                    observe(position, &h);
                    h = block.forward_layer(layer, &h, skips, temb)?;
                    ran = true;
                }
                position += 1;
            }
            if ran {
                h = block.upsample(&h, skips)?;
            }
        }
        if !skips.is_empty() {
            candle_core::bail!("{} UNet skip connections left over", skips.len());
        }
        Ok(h)
    }

    fn output(&self, h: &Tensor) -> Result<Tensor> {
        let h = self.conv_norm_out.forward_silu(h)?;
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
