//! DensePose, the official AutoMasker's third network: detectron2's `densepose_rcnn_R_50_FPN_s1x`
//! (a ResNet-50 FPN Mask R-CNN-style detector whose per-person head predicts 24 body parts), run
//! as CatVTON's wrapper runs it, in our own code.
//!
//! The parts, one file each: the configuration read from the published YAML ([`config`]), the
//! checkpoint reader ([`checkpoint`]), the input ([`preprocess`]), the backbone ([`resnet`],
//! [`fpn`]), proposals ([`rpn`]), detection ([`box_head`]), pooling ([`roi_align`]) and box
//! arithmetic ([`boxes`]), the DensePose head ([`head`]) and the label map ([`extract`]).
//!
//! What the wrapper does, and so [`DensePose::label_maps`] does: photos whose largest dimension
//! exceeds 1024 are first shrunk by OpenCV; detectron2's predictor resizes to a shorter side of
//! 800, detects people with score above 0.8, and of the first (best) detection writes the fine
//! part labels (0 background, 1..24) into its integer box on an all-background map, which is
//! scaled back to the photo with nearest-neighbour sampling. No detection gives an
//! all-background map.

pub mod box_head;
pub mod boxes;
pub mod checkpoint;
pub mod config;
pub mod extract;
pub mod fpn;
pub mod head;
pub mod preprocess;
pub mod resnet;
pub mod roi_align;
pub mod rpn;

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;

use super::labels::LabelMap;
use super::schp::weights::FormulaWeights;
use crate::models::ModelError;
use box_head::{BoxHead, Detections};
use boxes::{clip, nonempty, BoxXyxy};
use config::DensePoseConfig;
use fpn::{Backbone, LEVELS};
use head::{ChartOutput, DensePoseHead};
use preprocess::{InputFormat, ResizeShortestEdge};
use rpn::{Proposals, Rpn};

pub use checkpoint::read_detectron2_pkl;
pub use config::{BASE_CONFIG_FILE, CONFIG_FILE};

/// The published checkpoint's file name (model zoo id 165712039).
pub const CHECKPOINT_FILE: &str = "model_final_162be9.pkl";

/// The wrapper's `min_score`: `MODEL.ROI_HEADS.SCORE_THRESH_TEST`.
pub const WRAPPER_SCORE_THRESHOLD: f32 = 0.8;

/// The `resize` the AutoMasker passes: photos larger than this are shrunk first.
pub const WRAPPER_RESIZE: u32 = 1024;

/// The seeded weights' tag, and the two tensors the fixtures' generator fixes so that random
/// weights still detect with confidence: the classifier's bias (person, background) and the
/// stem's batch-norm variance, which brings pixel values of ±128 to ±1 (with the formula's
/// variances near 1 the stem would amplify them through the whole network).
pub const FORMULA_TAG: &str = "densepose";
pub const FORMULA_CLASSIFIER_BIAS: (&str, [f32; 2]) =
    ("roi_heads.box_predictor.cls_score.bias", [0.0, 0.0]);
pub const FORMULA_STEM_VARIANCE: (&str, f32) =
    ("backbone.bottom_up.stem.conv1.norm.running_var", 16384.0);

/// The seeded weights: [`FormulaWeights`] of [`FORMULA_TAG`] with the classifier's bias fixed.
pub fn formula_weights() -> FormulaWeights {
    let (classifier, bias) = FORMULA_CLASSIFIER_BIAS;
    let (stem, variance) = FORMULA_STEM_VARIANCE;
    FormulaWeights::new(FORMULA_TAG)
        .with_constant(classifier, &bias)
        .with_constant(stem, &[variance; 64])
}

/// Everything one forward pass computes, for tests that compare each stage.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The normalised, padded batch.
    pub input: Tensor,
    /// Each image's (height, width) inside it.
    pub input_sizes: Vec<(u32, u32)>,
    /// p2..p6.
    pub features: Vec<Tensor>,
    pub proposals: Vec<Proposals>,
    /// Detections in the input's coordinates.
    pub detections: Vec<Detections>,
    /// The same rescaled to each photo (`detector_postprocess`), with the index each kept one
    /// had in `detections`.
    pub photo_detections: Vec<(Detections, Vec<usize>)>,
    /// The first photo detection's charts, per image.
    pub charts: Vec<Option<ChartOutput>>,
    /// The wrapper's map per image, at the photo's size.
    pub maps: Vec<LabelMap>,
}

/// The network with its weights, on one device.
#[derive(Debug, Clone)]
pub struct DensePose {
    config: DensePoseConfig,
    backbone: Backbone,
    rpn: Rpn,
    box_head: BoxHead,
    head: DensePoseHead,
    format: InputFormat,
    device: Device,
}

impl DensePose {
    /// The network `config` describes, with weights from `vb` (detectron2's names).
    pub fn new(config: DensePoseConfig, vb: VarBuilder) -> Result<Self> {
        let channels = config.fpn.out_channels;
        let device = vb.device().clone();
        let format = InputFormat {
            resize: ResizeShortestEdge {
                short_edge: config.input.min_size_test,
                max_size: config.input.max_size_test,
            },
            pixel_mean_bgr: config.input.pixel_mean,
            pixel_std_bgr: config.input.pixel_std,
            // The FPN's coarsest backbone level (res5) has stride 32.
            size_divisibility: 32,
        };
        Ok(Self {
            backbone: Backbone::new(&config.resnet, &config.fpn, vb.pp("backbone"))?,
            rpn: Rpn::new(
                &config.rpn,
                &config.anchors,
                channels,
                vb.pp("proposal_generator"),
            )?,
            box_head: BoxHead::new(&config.box_head, channels, vb.pp("roi_heads"))?,
            head: DensePoseHead::new(
                &config.densepose,
                &config.box_head.in_features,
                channels,
                vb.pp("roi_heads"),
            )?,
            config,
            format,
            device,
        })
    }

    /// The published files in `dir`: the YAML configuration (with its `_BASE_`) and the pickled
    /// checkpoint, with the wrapper's score threshold.
    pub fn load(dir: &Path, device: &Device) -> std::result::Result<Self, ModelError> {
        Self::load_files(&dir.join(CONFIG_FILE), &dir.join(CHECKPOINT_FILE), device)
    }

    /// The configuration file (its `_BASE_` beside it) and the checkpoint.
    pub fn load_files(
        config_path: &Path,
        weights_path: &Path,
        device: &Device,
    ) -> std::result::Result<Self, ModelError> {
        let config = DensePoseConfig::from_yaml_file(config_path)
            .map_err(|e| ModelError::checkpoint(config_path, e))?
            .with_score_threshold(WRAPPER_SCORE_THRESHOLD);
        let tensors = read_detectron2_pkl(weights_path, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(config, vb)
            .map_err(|e| ModelError::checkpoint(weights_path, crate::models::candle_message(e)))
    }

    /// The published network with the fixtures' seeded weights and the wrapper's threshold
    /// (meaningless detections, for tests and for exercising the serving path without the
    /// checkpoint).
    pub fn random(device: &Device) -> Result<Self> {
        let config = DensePoseConfig::published()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .with_score_threshold(WRAPPER_SCORE_THRESHOLD);
        Self::new(
            config,
            VarBuilder::from_backend(Box::new(formula_weights()), DType::F32, device.clone()),
        )
    }

    pub fn config(&self) -> &DensePoseConfig {
        &self.config
    }

    /// The wrapper's maps, one per photo at its size. Photos of the same size run as one batch.
    pub fn label_maps(&self, photos: &[RgbImage]) -> Result<Vec<LabelMap>> {
        let mut maps: Vec<Option<LabelMap>> = vec![None; photos.len()];
        let mut pending: Vec<usize> = (0..photos.len()).collect();
        while let Some(&first) = pending.first() {
            let size = photos[first].dimensions();
            let (group, rest): (Vec<usize>, Vec<usize>) = pending
                .iter()
                .partition(|&&i| photos[i].dimensions() == size);
            let batch: Vec<RgbImage> = group.iter().map(|&i| photos[i].clone()).collect();
            for (index, map) in group.iter().zip(self.trace(&batch)?.maps) {
                maps[*index] = Some(map);
            }
            pending = rest;
        }
        maps.into_iter()
            .map(|m| m.ok_or_else(|| candle_core::Error::Msg("a photo was not labelled".into())))
            .collect()
    }

    /// Every stage for a batch of photos of one size.
    pub fn trace(&self, photos: &[RgbImage]) -> Result<Trace> {
        let _span = tracing::trace_span!("densepose").entered();
        // The wrapper shrinks large photos with OpenCV before the predictor sees them.
        let capped: Vec<RgbImage> = photos
            .iter()
            .map(
                |p| match preprocess::capped_size(p.width(), p.height(), WRAPPER_RESIZE) {
                    Some((w, h)) => preprocess::cv2_resize_linear(p, w, h),
                    None => p.clone(),
                },
            )
            .collect();
        let input = preprocess::model_input(&capped, &self.format, &self.device)?;
        let features = self.backbone.forward(&input.images)?;
        let pick = |names: &[String]| -> Vec<Tensor> {
            names
                .iter()
                .filter_map(|n| {
                    LEVELS
                        .iter()
                        .position(|l| l == n)
                        .map(|i| features[i].clone())
                })
                .collect()
        };
        let proposals = self
            .rpn
            .forward(&pick(&self.config.rpn.in_features), &input.sizes)?;
        let roi_features = pick(&self.config.box_head.in_features);
        let detections = self
            .box_head
            .forward(&roi_features, &proposals, &input.sizes)?;
        let photo_detections: Vec<(Detections, Vec<usize>)> = detections
            .iter()
            .zip(&input.sizes)
            .zip(&capped)
            .map(|((d, &size), photo)| rescale(d, size, photo.dimensions()))
            .collect();
        // Only the first detection reaches the map, and each box's charts depend on it alone.
        let rois: Vec<(usize, BoxXyxy)> = photo_detections
            .iter()
            .enumerate()
            .filter_map(|(image, (_, kept))| {
                kept.first().map(|&i| (image, detections[image].boxes[i]))
            })
            .collect();
        let pooled = self.head.pooled_features(&roi_features)?;
        let output = self.head.forward(&pooled, &rois)?;
        let mut charts: Vec<Option<ChartOutput>> = vec![None; photos.len()];
        if let Some(output) = output {
            for (row, (image, _)) in rois.iter().enumerate() {
                let one = |t: &Tensor| t.narrow(0, row, 1);
                charts[*image] = Some(ChartOutput {
                    coarse_lowres: one(&output.coarse_lowres)?,
                    fine_lowres: one(&output.fine_lowres)?,
                    coarse: one(&output.coarse)?,
                    fine: one(&output.fine)?,
                });
            }
        }
        let mut maps = Vec::with_capacity(photos.len());
        for ((photo, capped), ((scaled, _), chart)) in photos
            .iter()
            .zip(&capped)
            .zip(photo_detections.iter().zip(&charts))
        {
            let (width, height) = (capped.width() as usize, capped.height() as usize);
            let map = match (scaled.boxes.first(), chart) {
                (Some(b), Some(chart)) => {
                    let coarse = chart.coarse.flatten_all()?.to_vec1::<f32>()?;
                    let fine = chart.fine.flatten_all()?.to_vec1::<f32>()?;
                    let (_, coarse_channels, side, _) = chart.coarse.dims4()?;
                    let fine_channels = chart.fine.dim(1)?;
                    extract::paste(width, height, extract::int_box_xywh(b), |h, w| {
                        extract::box_labels(
                            &coarse,
                            coarse_channels,
                            &fine,
                            fine_channels,
                            side,
                            h,
                            w,
                        )
                    })
                }
                _ => LabelMap::filled(width, height, 0),
            };
            maps.push(extract::resize_nearest_pil(
                &map,
                photo.width() as usize,
                photo.height() as usize,
            ));
        }
        Ok(Trace {
            input: input.images,
            input_sizes: input.sizes,
            features,
            proposals,
            detections,
            photo_detections,
            charts,
            maps,
        })
    }
}

/// detectron2's `detector_postprocess`: boxes scaled from the input's `size` (height, width) to
/// the photo's `(width, height)`, clipped to it, and the empty ones dropped.
fn rescale(d: &Detections, size: (u32, u32), photo: (u32, u32)) -> (Detections, Vec<usize>) {
    let scale_x = (photo.0 as f64 / size.1 as f64) as f32;
    let scale_y = (photo.1 as f64 / size.0 as f64) as f32;
    let mut out = Detections::default();
    let mut kept = Vec::new();
    for (index, (b, &score)) in d.boxes.iter().zip(&d.scores).enumerate() {
        let scaled = [
            b[0] * scale_x,
            b[1] * scale_y,
            b[2] * scale_x,
            b[3] * scale_y,
        ];
        let scaled = clip(scaled, photo.1 as f32, photo.0 as f32);
        if nonempty(&scaled, 0.0) {
            out.boxes.push(scaled);
            out.scores.push(score);
            kept.push(index);
        }
    }
    (out, kept)
}
