//! The bottom-up backbone: detectron2's ResNet (`build_resnet_backbone`) with frozen batch norm,
//! bottleneck blocks and the stride in the first 1×1 convolution (the MSRA layout the published
//! weights use). Module paths mirror the checkpoint: `stem.conv1`, `res2.0.conv1`,
//! `res2.0.shortcut`, each convolution's norm under `.norm`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::layers::{Activation, Bottleneck, Conv, ConvShape};
use super::config::ResNetConfig;

/// A bottleneck block under `vb`, the stride in the 1×1 or the 3×3 convolution, each
/// convolution's frozen norm under `.norm`.
fn bottleneck(
    vb: VarBuilder,
    c_in: usize,
    inner: usize,
    c_out: usize,
    stride: usize,
    dilation: usize,
    stride_in_1x1: bool,
) -> Result<Bottleneck> {
    let (stride_1x1, stride_3x3) = if stride_in_1x1 {
        (stride, 1)
    } else {
        (1, stride)
    };
    let frozen = |name: &str, shape: ConvShape, activation| {
        Conv::with_batch_norm(vb.pp(name), vb.pp(name).pp("norm"), shape, activation)
    };
    let shortcut = if c_in != c_out {
        Some(frozen(
            "shortcut",
            ConvShape::new(c_in, c_out, 1).stride(stride),
            Activation::None,
        )?)
    } else {
        None
    };
    Ok(Bottleneck {
        conv1: frozen(
            "conv1",
            ConvShape::new(c_in, inner, 1).stride(stride_1x1),
            Activation::Relu,
        )?,
        conv2: frozen(
            "conv2",
            ConvShape::new(inner, inner, 3)
                .stride(stride_3x3)
                .dilated(dilation),
            Activation::Relu,
        )?,
        conv3: frozen("conv3", ConvShape::new(inner, c_out, 1), Activation::None)?,
        shortcut,
    })
}

/// The ResNet's stem and its four stages; [`ResNet::forward`] returns res2..res5.
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: Conv,
    stages: Vec<Vec<Bottleneck>>,
}

impl ResNet {
    pub fn new(config: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        let stem = Conv::with_batch_norm(
            vb.pp("stem.conv1"),
            vb.pp("stem.conv1.norm"),
            ConvShape::new(3, config.stem_out_channels, 7).stride(2),
            Activation::Relu,
        )?;
        let mut c_in = config.stem_out_channels;
        let mut inner = config.width_per_group;
        let mut c_out = config.res2_out_channels;
        let mut stages = Vec::with_capacity(4);
        for (index, blocks) in config.blocks_per_stage().into_iter().enumerate() {
            let stage = index + 2;
            let dilation = if stage == 5 { config.res5_dilation } else { 1 };
            let first_stride = if index == 0 || dilation == 2 { 1 } else { 2 };
            let vb = vb.pp(format!("res{stage}"));
            let mut stage_blocks = Vec::with_capacity(blocks);
            for block in 0..blocks {
                stage_blocks.push(bottleneck(
                    vb.pp(block),
                    c_in,
                    inner,
                    c_out,
                    if block == 0 { first_stride } else { 1 },
                    dilation,
                    config.stride_in_1x1,
                )?);
                c_in = c_out;
            }
            stages.push(stage_blocks);
            inner *= 2;
            c_out *= 2;
        }
        Ok(Self { stem, stages })
    }

    /// The outputs of res2, res3, res4 and res5 (strides 4, 8, 16, 32).
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let _span = tracing::trace_span!("resnet").entered();
        let x = self.stem.forward(x)?;
        // max_pool2d(kernel 3, stride 2, padding 1): after the ReLU every value is ≥ 0 and every
        // window holds one, so zero padding pools like PyTorch's −∞ padding.
        let mut x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        x = x.max_pool2d_with_stride(3, 2)?;
        let mut outputs = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                x = block.forward(&x)?;
            }
            outputs.push(x.clone());
        }
        Ok(outputs)
    }
}
