//! SCHP's parsing decoder, as `AugmentCE2P.Decoder_Module`: the context features brought to the
//! first stage's size and merged with its low-level features. Paths: `conv1.{0,1}`,
//! `conv2.{0,1}`, `conv3.{0,1}` and `conv3.{3,4}` (after the official key renames; the
//! checkpoints store the second pair as `conv3.{2,3}`).
//!
//! The module's `conv4` (a per-label head) is commented out in the reference; the fusion head
//! labels.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::layers::{upsample, Activation, Conv, ConvShape};

/// Channels of the decoder's output.
pub const DECODER_FEATURES: usize = 256;

#[derive(Debug, Clone)]
pub struct Decoder {
    conv1: Conv,
    conv2: Conv,
    conv3: [Conv; 2],
}

impl Decoder {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let conv = |vb: VarBuilder, conv: &str, bn: &str, c_in: usize, c_out: usize| {
            Conv::with_batch_norm(
                vb.pp(conv),
                vb.pp(bn),
                ConvShape::new(c_in, c_out, 1),
                Activation::LeakyRelu,
            )
        };
        Ok(Self {
            conv1: conv(vb.pp("conv1"), "0", "1", 512, 256)?,
            conv2: conv(vb.pp("conv2"), "0", "1", 256, 48)?,
            conv3: [
                conv(vb.pp("conv3"), "0", "1", 304, DECODER_FEATURES)?,
                conv(vb.pp("conv3"), "3", "4", DECODER_FEATURES, DECODER_FEATURES)?,
            ],
        })
    }

    /// `context` (512 channels, 1/16) and `low` (the first stage, 256 channels, 1/4).
    pub fn forward(&self, context: &Tensor, low: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = low.dims4()?;
        let context = upsample(&self.conv1.forward(context)?, h, w)?;
        let low = self.conv2.forward(low)?;
        let x = Tensor::cat(&[context, low], 1)?;
        self.conv3[1].forward(&self.conv3[0].forward(&x)?)
    }
}
