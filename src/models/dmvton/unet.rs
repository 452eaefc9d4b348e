//! The generator, `MobileNetV2_unet(7, 4)`: a MobileNetV2 encoder at half resolution and a
//! decoder of transposed convolutions and inverted residual blocks with skip connections.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{Activation, Conv, ConvConfig, InvertedResidual, InvertedResidualConfig};

/// `(expansion, output channels, stride)` of the encoder's inverted residual blocks.
const BLOCKS: [(usize, usize, usize); 7] = [
    (1, 16, 1),
    (6, 24, 2),
    (6, 32, 2),
    (6, 64, 2),
    (6, 96, 1),
    (6, 160, 2),
    (6, 320, 1),
];

/// `nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)`: doubles the resolution.
#[derive(Debug, Clone)]
struct UpConv {
    weight: Tensor,
    bias: Tensor,
}

impl UpConv {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            weight: vb
                .get((c_in, c_out, 4, 4), "weight")?
                .to_dtype(vb.dtype())?,
            bias: vb
                .get(c_out, "bias")?
                .to_dtype(vb.dtype())?
                .reshape((1, c_out, 1, 1))?,
        })
    }
}

impl Module for UpConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv_transpose2d(&self.weight, 1, 0, 2, 1)?
            .broadcast_add(&self.bias)
    }
}

/// The generator network.
#[derive(Debug, Clone)]
pub struct MobileUnet {
    /// `backbone.features.0..=8`: stem, seven inverted residual blocks, 1×1 head.
    stem: Conv,
    blocks: Vec<InvertedResidual>,
    head: Conv,
    up: [UpConv; 4],
    invres: [InvertedResidual; 4],
    conv_last: Conv,
}

impl MobileUnet {
    /// Loads the network stored under `vb` (the root of the generator checkpoint) for `c_in`
    /// input and `c_out` output channels.
    pub fn new(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Self> {
        let features = vb.pp("backbone.features");
        let stem = Conv::with_batch_norm(
            features.pp("0.0"),
            features.pp("0.1"),
            c_in,
            32,
            3,
            ConvConfig {
                padding: 1,
                stride: 2,
                activation: Activation::Relu6,
            },
        )?;
        let mut blocks = Vec::with_capacity(BLOCKS.len());
        let mut channels = 32;
        for (i, &(t, c, s)) in BLOCKS.iter().enumerate() {
            blocks.push(InvertedResidual::new(
                features.pp((i + 1).to_string()),
                channels,
                c,
                InvertedResidualConfig {
                    stride: s,
                    expand_ratio: t,
                    pointwise_expand: false,
                },
            )?);
            channels = c;
        }
        let head = Conv::with_batch_norm(
            features.pp("8.0"),
            features.pp("8.1"),
            channels,
            512,
            1,
            ConvConfig {
                activation: Activation::Relu6,
                ..Default::default()
            },
        )?;
        let up = [
            UpConv::new(vb.pp("dconv1"), 512, 96)?,
            UpConv::new(vb.pp("dconv2"), 96, 32)?,
            UpConv::new(vb.pp("dconv3"), 32, 24)?,
            UpConv::new(vb.pp("dconv4"), 24, 16)?,
        ];
        let expand6 = InvertedResidualConfig {
            expand_ratio: 6,
            ..Default::default()
        };
        let invres = [
            InvertedResidual::new(vb.pp("invres1"), 192, 96, expand6)?,
            InvertedResidual::new(vb.pp("invres2"), 64, 32, expand6)?,
            InvertedResidual::new(vb.pp("invres3"), 48, 24, expand6)?,
            InvertedResidual::new(vb.pp("invres4"), 32, 16, expand6)?,
        ];
        let conv_last = Conv::no_bias(
            vb.pp("conv_last"),
            16,
            c_out,
            3,
            ConvConfig {
                padding: 1,
                ..Default::default()
            },
        )?;
        Ok(Self {
            stem,
            blocks,
            head,
            up,
            invres,
            conv_last,
        })
    }

    /// Runs `x` (`N×c_in×H×W`); answers `N×c_out×H×W`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.stem.forward(x)?;
        let x1 = self.blocks[0].forward(&x)?;
        let x2 = self.blocks[1].forward(&x1)?;
        let x3 = self.blocks[2].forward(&x2)?;
        let x4 = self.blocks[4].forward(&self.blocks[3].forward(&x3)?)?;
        let x = self.blocks[6].forward(&self.blocks[5].forward(&x4)?)?;
        let x = self.head.forward(&x)?;
        let mut up = x;
        for (i, skip) in [&x4, &x3, &x2, &x1].into_iter().enumerate() {
            let merged = Tensor::cat(&[skip, &self.up[i].forward(&up)?], 1)?;
            up = self.invres[i].forward(&merged)?;
        }
        let (_, _, h, w) = up.dims4()?;
        self.conv_last
            .forward(&up.upsample_nearest2d(2 * h, 2 * w)?)
    }
}
