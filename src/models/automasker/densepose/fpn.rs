//! detectron2's feature pyramid (`FPN` with `LastLevelMaxPool`): p2..p5 from res2..res5 by 1×1
//! laterals and a nearest-neighbour top-down path, each smoothed by a 3×3 convolution, and p6
//! subsampled from p5. Module paths mirror the checkpoint: `fpn_lateral{2..5}`,
//! `fpn_output{2..5}`, beside `bottom_up` (the [`ResNet`]).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::layers::{Conv, ConvShape};
use super::config::{FpnConfig, ResNetConfig};
use super::resnet::ResNet;

/// The FPN's output levels, finest first.
pub const LEVELS: [&str; 5] = ["p2", "p3", "p4", "p5", "p6"];

/// The stride of level `p{n}`: 2^n. The configuration admits only p2..p6, so any other name is
/// a caller's mistake, and it is taken as p2 rather than panicking.
pub fn level_stride(level: &str) -> usize {
    let n: u32 = level
        .strip_prefix('p')
        .and_then(|n| n.parse().ok())
        .filter(|n| (2..=6).contains(n))
        .unwrap_or(2);
    1 << n
}

/// The whole backbone: ResNet, FPN and the extra p6.
#[derive(Debug, Clone)]
pub struct Backbone {
    bottom_up: ResNet,
    laterals: Vec<Conv>,
    outputs: Vec<Conv>,
    fuse_average: bool,
}

impl Backbone {
    pub fn new(resnet: &ResNetConfig, fpn: &FpnConfig, vb: VarBuilder) -> Result<Self> {
        let bottom_up = ResNet::new(resnet, vb.pp("bottom_up"))?;
        let mut laterals = Vec::with_capacity(4);
        let mut outputs = Vec::with_capacity(4);
        for (index, c_in) in (0..4).map(|i| (i, resnet.res2_out_channels << i)) {
            let stage = index + 2;
            laterals.push(Conv::with_bias(
                vb.pp(format!("fpn_lateral{stage}")),
                ConvShape::new(c_in, fpn.out_channels, 1),
            )?);
            outputs.push(Conv::with_bias(
                vb.pp(format!("fpn_output{stage}")),
                ConvShape::new(fpn.out_channels, fpn.out_channels, 3),
            )?);
        }
        Ok(Self {
            bottom_up,
            laterals,
            outputs,
            fuse_average: fpn.fuse_average,
        })
    }

    /// p2..p6 of a batch whose height and width are multiples of 32.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let stages = self.bottom_up.forward(x)?;
        let _span = tracing::trace_span!("fpn").entered();
        let mut results = Vec::with_capacity(LEVELS.len());
        let mut previous = self.laterals[3].forward(&stages[3])?;
        results.push(self.outputs[3].forward(&previous)?);
        for index in (0..3).rev() {
            let lateral = self.laterals[index].forward(&stages[index])?;
            let (_, _, h, w) = previous.dims4()?;
            let top_down = previous.upsample_nearest2d(h * 2, w * 2)?;
            previous = (lateral + top_down)?;
            if self.fuse_average {
                previous = (previous / 2.0)?;
            }
            results.insert(0, self.outputs[index].forward(&previous)?);
        }
        // LastLevelMaxPool: a 1×1 max pool with stride 2 over p5.
        let p6 = results[3].max_pool2d_with_stride(1, 2)?;
        results.push(p6);
        Ok(results)
    }
}
