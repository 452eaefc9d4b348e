//! SCHP's backbone: ResNet-101 with a deep stem (three 3×3 convolutions), its last stage
//! dilated (stride 1, dilation 2) so its features stay at 1/16 of the input, as
//! `AugmentCE2P.ResNet`. Paths: `conv1`…`bn3`, `layer{1..4}.{i}.{conv,bn}{1..3}`,
//! `layer{1..4}.0.downsample.{0,1}`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::layers::{Activation, Bottleneck, Conv, ConvShape};

/// Blocks per stage of ResNet-101.
const BLOCKS: [usize; 4] = [3, 4, 23, 3];
/// A bottleneck's output channels over its inner ones.
const EXPANSION: usize = 4;

/// A bottleneck block under `vb`: 1×1, 3×3 (strided, dilated), 1×1, plus the shortcut.
fn bottleneck(
    vb: VarBuilder,
    c_in: usize,
    planes: usize,
    stride: usize,
    dilation: usize,
) -> Result<Bottleneck> {
    let c_out = planes * EXPANSION;
    let conv1 = Conv::with_batch_norm(
        vb.pp("conv1"),
        vb.pp("bn1"),
        ConvShape::new(c_in, planes, 1),
        Activation::Relu,
    )?;
    let conv2 = Conv::with_batch_norm(
        vb.pp("conv2"),
        vb.pp("bn2"),
        ConvShape::new(planes, planes, 3)
            .stride(stride)
            .dilated(dilation),
        Activation::Relu,
    )?;
    let conv3 = Conv::with_batch_norm(
        vb.pp("conv3"),
        vb.pp("bn3"),
        ConvShape::new(planes, c_out, 1),
        Activation::None,
    )?;
    let shortcut = if stride != 1 || c_in != c_out {
        let vb = vb.pp("downsample");
        Some(Conv::with_batch_norm(
            vb.pp("0"),
            vb.pp("1"),
            ConvShape::new(c_in, c_out, 1).stride(stride),
            Activation::None,
        )?)
    } else {
        None
    };
    Ok(Bottleneck {
        conv1,
        conv2,
        conv3,
        shortcut,
    })
}

/// The backbone's outputs: each stage's features, at 1/4, 1/8, 1/16 and 1/16 of the input
/// (the last stage dilated instead of strided).
#[derive(Debug)]
pub struct Features {
    pub layer1: Tensor,
    pub layer2: Tensor,
    pub layer3: Tensor,
    pub layer4: Tensor,
}

/// ResNet-101 as SCHP builds it.
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: [Conv; 3],
    stages: [Vec<Bottleneck>; 4],
}

impl ResNet {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let stem = [
            Conv::with_batch_norm(
                vb.pp("conv1"),
                vb.pp("bn1"),
                ConvShape::new(3, 64, 3).stride(2),
                Activation::Relu,
            )?,
            Conv::with_batch_norm(
                vb.pp("conv2"),
                vb.pp("bn2"),
                ConvShape::new(64, 64, 3),
                Activation::Relu,
            )?,
            Conv::with_batch_norm(
                vb.pp("conv3"),
                vb.pp("bn3"),
                ConvShape::new(64, 128, 3),
                Activation::Relu,
            )?,
        ];
        // (inner channels, stride, dilation) per stage.
        let plan = [(64, 1, 1), (128, 2, 1), (256, 2, 1), (512, 1, 2)];
        let mut c_in = 128;
        let mut stages: [Vec<Bottleneck>; 4] = Default::default();
        for (s, (&(planes, stride, dilation), &blocks)) in plan.iter().zip(&BLOCKS).enumerate() {
            let vb = vb.pp(format!("layer{}", s + 1));
            for i in 0..blocks {
                let stride = if i == 0 { stride } else { 1 };
                stages[s].push(bottleneck(
                    vb.pp(i.to_string()),
                    c_in,
                    planes,
                    stride,
                    dilation,
                )?);
                c_in = planes * EXPANSION;
            }
        }
        Ok(Self { stem, stages })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Features> {
        let mut x = x.clone();
        for conv in &self.stem {
            x = conv.forward(&x)?;
        }
        // MaxPool2d(3, stride 2, padding 1): after the ReLU every value is ≥ 0, so zero
        // padding gives the same maxima as PyTorch's -∞ padding.
        let x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let x = x.max_pool2d_with_stride(3, 2)?;
        let run = |stage: &[Bottleneck], x: &Tensor| -> Result<Tensor> {
            let mut x = x.clone();
            for block in stage {
                x = block.forward(&x)?;
            }
            Ok(x)
        };
        let layer1 = run(&self.stages[0], &x)?;
        let layer2 = run(&self.stages[1], &layer1)?;
        let layer3 = run(&self.stages[2], &layer2)?;
        let layer4 = run(&self.stages[3], &layer3)?;
        Ok(Features {
            layer1,
            layer2,
            layer3,
            layer4,
        })
    }
}
