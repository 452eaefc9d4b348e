//! diffusers' `Transformer2DModel` with one `BasicTransformerBlock`, as CatVTON runs it.
//!
//! CatVTON keeps the cross-attention layer but replaces its processor with one that returns
//! its input. The block feeds that layer `norm2(h)` and adds the result back, so the layer
//! computes `h + norm2(h)`; `attn2`'s weights are never read.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::layers::{Conv2d, GroupNorm};

use super::attention::Attention;

/// The GEGLU feed-forward network: `net.0.proj` doubles the width into a value and a gate,
/// `value · gelu(gate)` (the exact, erf-based GELU), then `net.2` projects back.
#[derive(Debug, Clone)]
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj_in: candle_nn::linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            proj_out: candle_nn::linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let projected = self.proj_in.forward(x)?;
        let inner = projected.dim(D::Minus1)? / 2;
        let value = projected.narrow(D::Minus1, 0, inner)?;
        let gate = projected.narrow(D::Minus1, inner, inner)?.gelu_erf()?;
        self.proj_out.forward(&(value * gate)?)
    }
}

/// Self-attention, the skipped cross-attention, and the feed-forward network, each with its
/// layer norm in front and its residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::self_attention(vb.pp("attn1"), dim, heads)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    /// `x: B×N×C` tokens.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (self.attn1.forward_tokens(&self.norm1.forward(x)?)? + x)?;
        // The skipped cross-attention: its output is its input, norm2(h), added to h.
        let h = (self.norm2.forward(&h)? + &h)?;
        self.ff.forward(&self.norm3.forward(&h)?)? + h
    }
}

/// Group norm, a 1×1 projection into tokens, the transformer block, a 1×1 projection back,
/// and the input added.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Conv2d,
    block: BasicTransformerBlock,
    proj_out: Conv2d,
}

impl Transformer2DModel {
    pub fn new(vb: VarBuilder, channels: usize, heads: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), groups, channels, 1e-6)?,
            proj_in: Conv2d::new(vb.pp("proj_in"), channels, channels, 1, 0, 1)?,
            block: BasicTransformerBlock::new(
                vb.pp("transformer_blocks").pp("0"),
                channels,
                heads,
            )?,
            proj_out: Conv2d::new(vb.pp("proj_out"), channels, channels, 1, 0, 1)?,
        })
    }

    /// `x: B×C×H×W`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let projected = self.proj_in.forward(&self.norm.forward(x)?)?;
        let tokens = projected
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let tokens = self.block.forward(&tokens)?;
        let image = tokens.transpose(1, 2)?.reshape((b, c, h, w))?;
        self.proj_out.forward(&image)? + x
    }
}
