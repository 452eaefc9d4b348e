//! The DensePose branch of detectron2's `DensePoseROIHeads`: the decoder that merges p2..p5 into
//! one map at stride 4 (Panoptic FPN's semantic head, `DECODER_ON`), the pooler over the detected
//! boxes, eight 3×3 convolutions (`DensePoseV1ConvXHead`) and the chart predictor's transposed
//! convolutions, upsampled ×2. Module paths mirror the checkpoint under `roi_heads`:
//! `decoder.p2.0`, `decoder.predictor`, `densepose_head.body_conv_fcn1`,
//! `densepose_predictor.ann_index_lowres`, `densepose_predictor.index_uv_lowres`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::layers::{Activation, Conv, ConvShape};
use super::box_head::pooler;
use super::boxes::BoxXyxy;
use super::config::{DecoderConfig, DensePoseHeadConfig};
use super::fpn::level_stride;
use super::roi_align::RoiPooler;

/// The decoder's per-level towers and its 1×1 predictor.
#[derive(Debug, Clone)]
struct Decoder {
    /// Per level: convolutions, each followed by a ×2 upsampling when the level is coarser than
    /// the common stride.
    towers: Vec<(Vec<Conv>, bool)>,
    predictor: Conv,
}

impl Decoder {
    fn new(
        config: &DecoderConfig,
        levels: &[String],
        channels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut towers = Vec::with_capacity(levels.len());
        for level in levels {
            let stride = level_stride(level);
            let length =
                ((stride as f64).log2() - (config.common_stride as f64).log2()).max(1.0) as usize;
            let upsamples = stride != config.common_stride;
            let mut convs = Vec::with_capacity(length);
            for k in 0..length {
                // nn.Sequential numbers the upsampling modules too.
                let index = if upsamples { 2 * k } else { k };
                convs.push(
                    Conv::with_bias(
                        vb.pp(level).pp(index),
                        ConvShape::new(
                            if k == 0 { channels } else { config.conv_dims },
                            config.conv_dims,
                            3,
                        ),
                    )?
                    .with_activation(Activation::Relu),
                );
            }
            towers.push((convs, upsamples));
        }
        Ok(Self {
            towers,
            predictor: Conv::with_bias(
                vb.pp("predictor"),
                ConvShape::new(config.conv_dims, config.num_classes, 1),
            )?,
        })
    }

    fn forward(&self, features: &[Tensor]) -> Result<Tensor> {
        let _span = tracing::trace_span!("densepose_decoder").entered();
        let mut sum: Option<Tensor> = None;
        for ((convs, upsamples), x) in self.towers.iter().zip(features) {
            let mut x = x.clone();
            for conv in convs {
                x = conv.forward(&x)?;
                if *upsamples {
                    let (_, _, h, w) = x.dims4()?;
                    x = x.upsample_bilinear2d(h * 2, w * 2, false)?;
                }
            }
            sum = Some(match sum {
                None => x,
                Some(s) => (s + x)?,
            });
        }
        match sum {
            Some(s) => self.predictor.forward(&s),
            None => candle_core::bail!("the decoder needs at least one level"),
        }
    }
}

/// A transposed convolution with a bias (`ConvTranspose2d`, weight laid out (in, out, k, k)).
#[derive(Debug, Clone)]
struct Deconv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Deconv {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, kernel: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((c_in, c_out, kernel, kernel), "weight")?,
            bias: vb.get(c_out, "bias")?,
            stride: 2,
            padding: kernel / 2 - 1,
        })
    }
}

impl Module for Deconv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv_transpose2d(&self.weight, self.padding, 0, self.stride, 1)?;
        let c = self.bias.dim(0)?;
        y.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }
}

/// What the predictor says of each box, before resampling to the box: coarse (person or not)
/// and fine (24 parts or background) segmentation logits, each `(R, C, S, S)` with S the
/// pooled resolution ×2 (the transposed convolution) ×`UP_SCALE`.
#[derive(Debug, Clone)]
pub struct ChartOutput {
    pub coarse_lowres: Tensor,
    pub fine_lowres: Tensor,
    pub coarse: Tensor,
    pub fine: Tensor,
}

/// The DensePose branch under `roi_heads`.
#[derive(Debug, Clone)]
pub struct DensePoseHead {
    decoder: Option<Decoder>,
    pooler: RoiPooler,
    convs: Vec<Conv>,
    coarse: Deconv,
    fine: Deconv,
    up_scale: usize,
}

impl DensePoseHead {
    /// `levels` are `ROI_HEADS.IN_FEATURES` (p2..p5), of `channels` channels.
    pub fn new(
        config: &DensePoseHeadConfig,
        levels: &[String],
        channels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let p = config.pooler;
        let (decoder, pooled_levels, mut width) = match &config.decoder {
            Some(d) => (
                Some(Decoder::new(d, levels, channels, vb.pp("decoder"))?),
                // The decoder's map has the finest level's stride.
                levels[..1].to_vec(),
                d.num_classes,
            ),
            None => (None, levels.to_vec(), channels),
        };
        let mut convs = Vec::with_capacity(config.num_stacked_convs);
        for index in 0..config.num_stacked_convs {
            convs.push(
                Conv::with_bias(
                    vb.pp(format!("densepose_head.body_conv_fcn{}", index + 1)),
                    ConvShape::new(width, config.conv_dim, config.conv_kernel),
                )?
                .with_activation(Activation::Relu),
            );
            width = config.conv_dim;
        }
        let predictor = vb.pp("densepose_predictor");
        Ok(Self {
            decoder,
            pooler: pooler(&pooled_levels, p.resolution, p.sampling_ratio, p.aligned),
            convs,
            coarse: Deconv::new(
                predictor.pp("ann_index_lowres"),
                width,
                config.num_coarse_channels,
                config.deconv_kernel,
            )?,
            fine: Deconv::new(
                predictor.pp("index_uv_lowres"),
                width,
                config.num_patches,
                config.deconv_kernel,
            )?,
            up_scale: config.up_scale,
        })
    }

    /// The features the boxes are pooled from: the decoder's one map, or the levels themselves.
    pub fn pooled_features(&self, levels: &[Tensor]) -> Result<Vec<Tensor>> {
        match &self.decoder {
            Some(decoder) => Ok(vec![decoder.forward(levels)?]),
            None => Ok(levels.to_vec()),
        }
    }

    /// The charts of `rois` (batch index, box in input coordinates) from
    /// [`Self::pooled_features`]; `None` when there are no boxes.
    pub fn forward(
        &self,
        pooled: &[Tensor],
        rois: &[(usize, BoxXyxy)],
    ) -> Result<Option<ChartOutput>> {
        if rois.is_empty() {
            return Ok(None);
        }
        let _span = tracing::trace_span!("densepose_head").entered();
        let mut x = self.pooler.forward(pooled, rois)?;
        for conv in &self.convs {
            x = conv.forward(&x)?;
        }
        let coarse_lowres = self.coarse.forward(&x)?;
        let fine_lowres = self.fine.forward(&x)?;
        let up = |t: &Tensor| -> Result<Tensor> {
            let (_, _, h, w) = t.dims4()?;
            t.upsample_bilinear2d(h * self.up_scale, w * self.up_scale, false)
        };
        Ok(Some(ChartOutput {
            coarse: up(&coarse_lowres)?,
            fine: up(&fine_lowres)?,
            coarse_lowres,
            fine_lowres,
        }))
    }
}
