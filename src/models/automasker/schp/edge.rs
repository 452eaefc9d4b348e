//! SCHP's edge branch features, as `AugmentCE2P.Edge_Module`: the first three backbone stages
//! reduced to 256 channels each and brought to the first stage's size. Paths: `conv{1,2,3}.0`
//! (conv) and `.1` (BN).
//!
//! The module's `conv4` turns these into edge maps that the network computes and then drops
//! (the fusion head reads only the features), so it is neither loaded nor run.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::layers::{upsample, Activation, Conv, ConvShape};

/// Channels of each reduced stage.
pub const EDGE_FEATURES: usize = 256;

#[derive(Debug, Clone)]
pub struct Edge {
    convs: [Conv; 3],
}

impl Edge {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let conv = |name: &str, c_in: usize| {
            let vb = vb.pp(name);
            Conv::with_batch_norm(
                vb.pp("0"),
                vb.pp("1"),
                ConvShape::new(c_in, EDGE_FEATURES, 1),
                Activation::LeakyRelu,
            )
        };
        Ok(Self {
            convs: [
                conv("conv1", 256)?,
                conv("conv2", 512)?,
                conv("conv3", 1024)?,
            ],
        })
    }

    /// The three stages' features, concatenated (768 channels) at `x1`'s size.
    pub fn forward(&self, x1: &Tensor, x2: &Tensor, x3: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x1.dims4()?;
        let f1 = self.convs[0].forward(x1)?;
        let f2 = upsample(&self.convs[1].forward(x2)?, h, w)?;
        let f3 = upsample(&self.convs[2].forward(x3)?, h, w)?;
        Tensor::cat(&[f1, f2, f3], 1)
    }
}
