//! SCHP's context encoding: a pyramid pooling module (Zhao et al., PSPNet) over the backbone's
//! last features, as `AugmentCE2P.PSPModule`. Paths: `stages.{i}.1` (conv) and `.2` (BN) per
//! pooling size, `bottleneck.0` and `.1`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::layers::{upsample, Activation, Conv, ConvShape};

/// The pooled grid sizes.
const SIZES: [usize; 4] = [1, 2, 3, 6];

/// The pyramid pooling module: 2048 → 512 channels.
#[derive(Debug, Clone)]
pub struct Psp {
    stages: Vec<Conv>,
    bottleneck: Conv,
}

impl Psp {
    pub fn new(vb: VarBuilder, features: usize, out_features: usize) -> Result<Self> {
        let stages = (0..SIZES.len())
            .map(|i| {
                let vb = vb.pp("stages").pp(i.to_string());
                Conv::with_batch_norm(
                    vb.pp("1"),
                    vb.pp("2"),
                    ConvShape::new(features, out_features, 1),
                    Activation::LeakyRelu,
                )
            })
            .collect::<Result<_>>()?;
        let vb = vb.pp("bottleneck");
        let bottleneck = Conv::with_batch_norm(
            vb.pp("0"),
            vb.pp("1"),
            ConvShape::new(features + SIZES.len() * out_features, out_features, 3),
            Activation::LeakyRelu,
        )?;
        Ok(Self { stages, bottleneck })
    }

    pub fn forward(&self, feats: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = feats.dims4()?;
        let mut priors = Vec::with_capacity(SIZES.len() + 1);
        for (stage, &size) in self.stages.iter().zip(&SIZES) {
            let pooled = adaptive_avg_pool(feats, size)?;
            priors.push(upsample(&stage.forward(&pooled)?, h, w)?);
        }
        priors.push(feats.clone());
        self.bottleneck.forward(&Tensor::cat(&priors, 1)?)
    }
}

/// `nn.AdaptiveAvgPool2d((size, size))`: bin `i` of `n` input rows spans
/// `floor(i n / size)..ceil((i + 1) n / size)` (bins overlap when `size` does not divide `n`).
pub fn adaptive_avg_pool(x: &Tensor, size: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let bins = |n: usize| -> Vec<(usize, usize)> {
        (0..size)
            .map(|i| (i * n / size, ((i + 1) * n).div_ceil(size)))
            .collect()
    };
    let (rows, cols) = (bins(h), bins(w));
    let mut out_rows = Vec::with_capacity(size);
    for &(y0, y1) in &rows {
        let band = x.narrow(2, y0, y1 - y0)?;
        let cells = cols
            .iter()
            .map(|&(x0, x1)| {
                let cell = band.narrow(3, x0, x1 - x0)?;
                cell.sum_keepdim((2, 3))? / ((y1 - y0) * (x1 - x0)) as f64
            })
            .collect::<Result<Vec<_>>>()?;
        out_rows.push(Tensor::cat(&cells, 3)?);
    }
    Tensor::cat(&out_rows, 2)
}
