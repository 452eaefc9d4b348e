//! SCHP's fusion head, as `AugmentCE2P.ResNet.fushion` (the reference's spelling, kept in the
//! paths): the parsing and edge features to one logit per label. Paths: `fushion.0` (conv) and
//! `.1` (BN), then `fushion.4` (conv with bias; `fushion.3` in the checkpoints, before the
//! official key renames). Its `Dropout2d` is the identity at inference.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::layers::{Activation, Conv, ConvShape};

#[derive(Debug, Clone)]
pub struct Fusion {
    reduce: Conv,
    classify: Conv,
}

impl Fusion {
    pub fn new(vb: VarBuilder, c_in: usize, num_classes: usize) -> Result<Self> {
        Ok(Self {
            reduce: Conv::with_batch_norm(
                vb.pp("0"),
                vb.pp("1"),
                ConvShape::new(c_in, 256, 1),
                Activation::LeakyRelu,
            )?,
            classify: Conv::with_bias(vb.pp("4"), ConvShape::new(256, num_classes, 1))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.classify.forward(&self.reduce.forward(x)?)
    }
}
