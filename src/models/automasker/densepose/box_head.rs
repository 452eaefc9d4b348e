//! The box branch of detectron2's `StandardROIHeads`: proposals pooled from their FPN level
//! (`ROIPooler`), two fully connected layers (`FastRCNNConvFCHead`), class scores and per-class
//! box deltas (`FastRCNNOutputLayers`), then `fast_rcnn_inference`: softmax, decoding, clipping,
//! the score threshold, per-class suppression and the per-image cap. Module paths mirror the
//! checkpoint: `box_head.fc1`, `box_predictor.cls_score`, `box_predictor.bbox_pred`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::boxes::{batched_nms, clip, BoxTransform, BoxXyxy};
use super::config::BoxHeadConfig;
use super::fpn::level_stride;
use super::roi_align::RoiPooler;
use super::rpn::Proposals;

/// detectron2's `ROIPooler` level assignment constants (`canonical_box_size`, `canonical_level`).
pub const CANONICAL_BOX_SIZE: f32 = 224.0;
pub const CANONICAL_LEVEL: u32 = 4;

/// One image's detections, by decreasing score, in the network input's coordinates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detections {
    pub boxes: Vec<BoxXyxy>,
    pub scores: Vec<f32>,
}

/// The pooler of `levels` (e.g. p2..p5) as the configuration describes it.
pub fn pooler(
    levels: &[String],
    resolution: usize,
    sampling_ratio: i32,
    aligned: bool,
) -> RoiPooler {
    RoiPooler {
        output_size: resolution,
        scales: levels
            .iter()
            .map(|l| 1.0 / level_stride(l) as f32)
            .collect(),
        sampling_ratio,
        aligned,
        canonical_box_size: CANONICAL_BOX_SIZE,
        canonical_level: CANONICAL_LEVEL,
    }
}

#[derive(Debug, Clone)]
pub struct BoxHead {
    pooler: RoiPooler,
    fcs: Vec<Linear>,
    cls_score: Linear,
    bbox_pred: Linear,
    transform: BoxTransform,
    config: BoxHeadConfig,
}

impl BoxHead {
    /// The head under `roi_heads` (`vb`), over features of `channels` channels.
    pub fn new(config: &BoxHeadConfig, channels: usize, vb: VarBuilder) -> Result<Self> {
        let p = config.pooler;
        let mut width = channels * p.resolution * p.resolution;
        let mut fcs = Vec::with_capacity(config.num_fc);
        for index in 0..config.num_fc {
            fcs.push(candle_nn::linear(
                width,
                config.fc_dim,
                vb.pp(format!("box_head.fc{}", index + 1)),
            )?);
            width = config.fc_dim;
        }
        let classes = config.num_classes;
        let regressed = if config.class_agnostic_boxes {
            1
        } else {
            classes
        };
        Ok(Self {
            pooler: pooler(
                &config.in_features,
                p.resolution,
                p.sampling_ratio,
                p.aligned,
            ),
            fcs,
            cls_score: candle_nn::linear(width, classes + 1, vb.pp("box_predictor.cls_score"))?,
            bbox_pred: candle_nn::linear(width, regressed * 4, vb.pp("box_predictor.bbox_pred"))?,
            transform: BoxTransform::new(config.bbox_reg_weights),
            config: config.clone(),
        })
    }

    /// Detections per image from its proposals; `features` are the configured levels.
    pub fn forward(
        &self,
        features: &[Tensor],
        proposals: &[Proposals],
        image_sizes: &[(u32, u32)],
    ) -> Result<Vec<Detections>> {
        let _span = tracing::trace_span!("box_head").entered();
        let rois: Vec<(usize, BoxXyxy)> = proposals
            .iter()
            .enumerate()
            .flat_map(|(image, p)| p.boxes.iter().map(move |b| (image, *b)))
            .collect();
        if rois.is_empty() {
            return Ok(vec![Detections::default(); proposals.len()]);
        }
        let mut x = self.pooler.forward(features, &rois)?.flatten_from(1)?;
        for fc in &self.fcs {
            x = fc.forward(&x)?.relu()?;
        }
        let logits = self
            .cls_score
            .forward(&x)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let deltas = self
            .bbox_pred
            .forward(&x)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut start = 0;
        let mut detections = Vec::with_capacity(proposals.len());
        for (p, &(height, width)) in proposals.iter().zip(image_sizes) {
            let end = start + p.boxes.len();
            detections.push(self.infer(
                &p.boxes,
                &logits[start..end],
                &deltas[start..end],
                height as f32,
                width as f32,
            ));
            start = end;
        }
        Ok(detections)
    }

    /// `fast_rcnn_inference_single_image`.
    fn infer(
        &self,
        proposals: &[BoxXyxy],
        logits: &[Vec<f32>],
        deltas: &[Vec<f32>],
        height: f32,
        width: f32,
    ) -> Detections {
        let classes = self.config.num_classes;
        let mut boxes = Vec::new();
        let mut scores = Vec::new();
        let mut class_ids = Vec::new();
        for ((proposal, logits), deltas) in proposals.iter().zip(logits).zip(deltas) {
            let probabilities = softmax(logits);
            let decoded: Vec<BoxXyxy> = deltas
                .chunks_exact(4)
                .map(|d| self.transform.apply([d[0], d[1], d[2], d[3]], *proposal))
                .collect();
            let finite = probabilities.iter().all(|p| p.is_finite())
                && decoded.iter().flatten().all(|v| v.is_finite());
            if !finite {
                continue;
            }
            for (class, &score) in probabilities[..classes].iter().enumerate() {
                if score > self.config.score_threshold {
                    let b = decoded[if decoded.len() == 1 { 0 } else { class }];
                    boxes.push(clip(b, height, width));
                    scores.push(score);
                    class_ids.push(class);
                }
            }
        }
        let keep = batched_nms(&boxes, &scores, &class_ids, self.config.nms_threshold);
        let keep = &keep[..keep.len().min(self.config.detections_per_image)];
        Detections {
            boxes: keep.iter().map(|&i| boxes[i]).collect(),
            scores: keep.iter().map(|&i| scores[i]).collect(),
        }
    }
}

/// `F.softmax` over one row: exponentials of the differences from the maximum, normalised.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}
