//! `MobileNetV2_dynamicFPN`: a MobileNetV2 encoder with a five-level feature pyramid (256
//! channels per level), one for the person (`cond_mobile`) and one for the garment
//! (`image_mobile`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{Activation, Conv, ConvConfig, InvertedResidual, InvertedResidualConfig};
use crate::ops::resize_bilinear;

/// Channels of every pyramid level.
pub const FPN_DIM: usize = 256;

/// `(expansion, output channels, stride)` of the seven inverted residual blocks.
const BLOCKS: [(usize, usize, usize); 7] = [
    (1, 16, 1),
    (6, 24, 2),
    (6, 32, 2),
    (6, 64, 2),
    (6, 96, 2),
    (6, 160, 2),
    (6, 320, 1),
];

/// The feature pyramid network.
#[derive(Debug, Clone)]
pub struct MobileFpn {
    first: Conv,
    blocks: Vec<InvertedResidual>,
    top: Conv,
    /// Lateral 1×1 convolutions after the blocks that halve the resolution.
    laterals: Vec<(usize, Conv)>,
    smooth: Vec<Conv>,
}

impl MobileFpn {
    /// Loads the network stored under `vb` for `c_in` input channels.
    pub fn new(vb: VarBuilder, c_in: usize) -> Result<Self> {
        let first = Conv::with_batch_norm(
            vb.pp("first_layer.0"),
            vb.pp("first_layer.1"),
            c_in,
            32,
            3,
            ConvConfig {
                padding: 1,
                activation: Activation::Relu6,
                ..Default::default()
            },
        )?;
        let mut blocks = Vec::with_capacity(BLOCKS.len());
        let mut laterals = Vec::new();
        let mut channels = 32;
        for (i, &(t, c, s)) in BLOCKS.iter().enumerate() {
            blocks.push(InvertedResidual::new(
                vb.pp(format!("inverted_residual_blocks.{i}.0")),
                channels,
                c,
                InvertedResidualConfig {
                    stride: s,
                    expand_ratio: t,
                    pointwise_expand: true,
                },
            )?);
            channels = c;
            if s > 1 && i + 1 < BLOCKS.len() {
                let lateral = Conv::new(
                    vb.pp(format!("lateral_layers.{}", laterals.len())),
                    c,
                    FPN_DIM,
                    1,
                    ConvConfig::default(),
                )?;
                laterals.push((i, lateral));
            }
        }
        let top = Conv::new(
            vb.pp("top_layer"),
            channels,
            FPN_DIM,
            1,
            ConvConfig::default(),
        )?;
        let smooth = (0..laterals.len())
            .map(|i| {
                let cfg = ConvConfig {
                    padding: 1,
                    ..Default::default()
                };
                Conv::new(
                    vb.pp(format!("smooth_layers.{i}")),
                    FPN_DIM,
                    FPN_DIM,
                    3,
                    cfg,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // The reference builds the smooth layers as one module repeated, so the checkpoint
        // holds one tensor under five names: keep one copy (and one Winograd transform).
        let smooth = match smooth.split_first() {
            Some((head, rest)) => {
                let mut shared = vec![head.clone()];
                for conv in rest {
                    shared.push(if conv.same_parameters(head)? {
                        head.clone()
                    } else {
                        conv.clone()
                    });
                }
                shared
            }
            None => smooth,
        };
        Ok(Self {
            first,
            blocks,
            top,
            laterals,
            smooth,
        })
    }

    /// The pyramid of `x` (`N×C×H×W`), fine to coarse: `H/2, H/4, H/8, H/16, H/32`.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut x = self.first.forward(x)?;
        let mut lateral_out = Vec::with_capacity(self.laterals.len());
        let mut next_lateral = self.laterals.iter().peekable();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x)?;
            if let Some((_, lateral)) = next_lateral.next_if(|(at, _)| *at == i) {
                lateral_out.push(lateral.forward(&x)?);
            }
        }
        let pooled = x.mean_keepdim(3)?.mean_keepdim(2)?;
        let mut m = self.top.forward(&pooled)?;
        let mut merged = Vec::with_capacity(lateral_out.len());
        for lateral in lateral_out.iter().rev() {
            let (_, _, h, w) = lateral.dims4()?;
            m = (resize_bilinear(&m, h, w)? + lateral)?;
            merged.push(m.clone());
        }
        // `merged` runs coarse to fine; smooth layer i goes with merged level i.
        let mut out = merged
            .iter()
            .zip(&self.smooth)
            .map(|(m, s)| s.forward(m))
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }
}
