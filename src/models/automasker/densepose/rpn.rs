//! The region proposal network (detectron2's `RPN` with `StandardRPNHead` and
//! `DefaultAnchorGenerator`): a shared 3×3 convolution over each level, objectness logits and box
//! deltas per anchor, then per image the top logits of each level, decoded, clipped, filtered and
//! suppressed level by level (`find_top_rpn_proposals`). Module paths mirror the checkpoint:
//! `rpn_head.conv`, `rpn_head.objectness_logits`, `rpn_head.anchor_deltas`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::super::layers::{Activation, Conv, ConvShape};
use super::boxes::{batched_nms, clip, nonempty, top_k, BoxTransform, BoxXyxy};
use super::config::{AnchorConfig, RpnConfig};
use super::fpn::level_stride;

/// One image's proposals, by decreasing objectness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposals {
    pub boxes: Vec<BoxXyxy>,
    pub logits: Vec<f32>,
}

/// The anchors of one level centred on the origin, in `generate_cell_anchors`' order (sizes,
/// then aspect ratios), computed in f64 as Python does and stored as f32 as the tensor is.
fn cell_anchors(sizes: &[f64], aspect_ratios: &[f64]) -> Vec<BoxXyxy> {
    let mut anchors = Vec::with_capacity(sizes.len() * aspect_ratios.len());
    for &size in sizes {
        let area = size * size;
        for &ratio in aspect_ratios {
            let w = (area / ratio).sqrt();
            let h = ratio * w;
            anchors.push([
                (-w / 2.0) as f32,
                (-h / 2.0) as f32,
                (w / 2.0) as f32,
                (h / 2.0) as f32,
            ]);
        }
    }
    anchors
}

/// detectron2's `_broadcast_params`: one list serves every level, else one list per level.
fn per_level(lists: &[Vec<f64>], levels: usize, name: &str) -> Result<Vec<Vec<f64>>> {
    match lists.len() {
        1 => Ok(vec![lists[0].clone(); levels]),
        n if n == levels => Ok(lists.to_vec()),
        n => candle_core::bail!("anchor {name}: {n} lists for {levels} levels"),
    }
}

/// The RPN over the levels its configuration names.
#[derive(Debug, Clone)]
pub struct Rpn {
    conv: Conv,
    objectness: Conv,
    deltas: Conv,
    /// Per level: its stride and the anchors centred on the origin.
    levels: Vec<(usize, Vec<BoxXyxy>)>,
    offset: f64,
    transform: BoxTransform,
    config: RpnConfig,
}

impl Rpn {
    pub fn new(
        config: &RpnConfig,
        anchors: &AnchorConfig,
        channels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let count = config.in_features.len();
        let sizes = per_level(&anchors.sizes, count, "sizes")?;
        let ratios = per_level(&anchors.aspect_ratios, count, "aspect ratios")?;
        let levels: Vec<(usize, Vec<BoxXyxy>)> = config
            .in_features
            .iter()
            .zip(sizes.iter().zip(&ratios))
            .map(|(level, (s, r))| (level_stride(level), cell_anchors(s, r)))
            .collect();
        let Some(per_location) = levels.first().map(|(_, a)| a.len()) else {
            candle_core::bail!("the RPN needs at least one level");
        };
        if levels.iter().any(|(_, a)| a.len() != per_location) {
            candle_core::bail!("every RPN level needs the same number of anchors");
        }
        let head = vb.pp("rpn_head");
        Ok(Self {
            conv: Conv::with_bias(head.pp("conv"), ConvShape::new(channels, channels, 3))?
                .with_activation(Activation::Relu),
            objectness: Conv::with_bias(
                head.pp("objectness_logits"),
                ConvShape::new(channels, per_location, 1),
            )?,
            deltas: Conv::with_bias(
                head.pp("anchor_deltas"),
                ConvShape::new(channels, per_location * 4, 1),
            )?,
            levels,
            offset: anchors.offset,
            transform: BoxTransform::new(config.bbox_reg_weights),
            config: config.clone(),
        })
    }

    /// Proposals per image; `features` are the configured levels of the batch, `image_sizes` the
    /// (height, width) each image has inside the padded batch.
    pub fn forward(
        &self,
        features: &[Tensor],
        image_sizes: &[(u32, u32)],
    ) -> Result<Vec<Proposals>> {
        let _span = tracing::trace_span!("rpn").entered();
        if features.len() != self.levels.len() {
            candle_core::bail!(
                "the RPN reads {} levels, got {}",
                self.levels.len(),
                features.len()
            );
        }
        // Every level has the same number of anchors per location (checked at construction).
        let per_location = self.levels.first().map_or(0, |(_, a)| a.len());
        // Per image: candidate boxes, logits and level ids, level by level.
        let mut candidates: Vec<(Vec<BoxXyxy>, Vec<f32>, Vec<usize>)> =
            vec![Default::default(); image_sizes.len()];
        for (level, (x, (stride, cell))) in features.iter().zip(&self.levels).enumerate() {
            let t = self.conv.forward(x)?;
            let logits = self
                .objectness
                .forward(&t)?
                .to_dtype(candle_core::DType::F32)?;
            let deltas = self.deltas.forward(&t)?.to_dtype(candle_core::DType::F32)?;
            let (n, _, h, w) = logits.dims4()?;
            if n != image_sizes.len() {
                candle_core::bail!("{n} feature maps for {} images", image_sizes.len());
            }
            // (N, A, H, W) → per image [h][w][a], the order of detectron2's anchors.
            let logits = logits
                .permute((0, 2, 3, 1))?
                .flatten_from(1)?
                .to_vec2::<f32>()?;
            let deltas = deltas
                .reshape((n, per_location, 4, h, w))?
                .permute((0, 3, 4, 1, 2))?
                .flatten_from(1)?
                .to_vec2::<f32>()?;
            let take = (h * w * per_location).min(self.config.pre_nms_topk);
            for (image, (logits, deltas)) in logits.iter().zip(&deltas).enumerate() {
                let (boxes, scores, ids) = &mut candidates[image];
                for index in top_k(logits, take) {
                    let location = index / per_location;
                    let anchor = cell[index % per_location];
                    let shift_x = (self.offset * *stride as f64) as f32
                        + (location % w) as f32 * *stride as f32;
                    let shift_y = (self.offset * *stride as f64) as f32
                        + (location / w) as f32 * *stride as f32;
                    let anchor = [
                        anchor[0] + shift_x,
                        anchor[1] + shift_y,
                        anchor[2] + shift_x,
                        anchor[3] + shift_y,
                    ];
                    let d = &deltas[index * 4..index * 4 + 4];
                    boxes.push(self.transform.apply([d[0], d[1], d[2], d[3]], anchor));
                    scores.push(logits[index]);
                    ids.push(level);
                }
            }
        }
        Ok(candidates
            .into_iter()
            .zip(image_sizes)
            .map(|((boxes, scores, ids), &(height, width))| {
                self.select(boxes, scores, ids, height as f32, width as f32)
            })
            .collect())
    }

    /// One image's candidates: finite ones, clipped, non-empty, suppressed per level, the best.
    fn select(
        &self,
        boxes: Vec<BoxXyxy>,
        scores: Vec<f32>,
        ids: Vec<usize>,
        height: f32,
        width: f32,
    ) -> Proposals {
        let mut kept_boxes = Vec::with_capacity(boxes.len());
        let mut kept_scores = Vec::with_capacity(boxes.len());
        let mut kept_ids = Vec::with_capacity(boxes.len());
        for ((b, s), id) in boxes.into_iter().zip(scores).zip(ids) {
            if !(b.iter().all(|v| v.is_finite()) && s.is_finite()) {
                continue;
            }
            let b = clip(b, height, width);
            if nonempty(&b, self.config.min_size) {
                kept_boxes.push(b);
                kept_scores.push(s);
                kept_ids.push(id);
            }
        }
        let keep = batched_nms(
            &kept_boxes,
            &kept_scores,
            &kept_ids,
            self.config.nms_threshold,
        );
        let keep = &keep[..keep.len().min(self.config.post_nms_topk)];
        Proposals {
            boxes: keep.iter().map(|&i| kept_boxes[i]).collect(),
            logits: keep.iter().map(|&i| kept_scores[i]).collect(),
        }
    }
}
