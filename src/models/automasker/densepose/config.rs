//! The network's configuration, read from detectron2's YAML files as published with the weights
//! (`densepose_rcnn_R_50_FPN_s1x.yaml`, whose `_BASE_` is `Base-DensePose-RCNN-FPN.yaml`).
//!
//! detectron2 starts from its defaults (`detectron2/config/defaults.py`, plus the DensePose
//! project's `add_densepose_config`), merges each file over its base, and reads the keys below.
//! [`DensePoseConfig::from_yaml_file`] does the same for the keys inference reads; a file that
//! asks for an architecture this implementation does not have (another head, deformable
//! convolutions, confidence estimation…) is refused by name rather than run differently.

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

/// The file the published weights come with.
pub const CONFIG_FILE: &str = "densepose_rcnn_R_50_FPN_s1x.yaml";
/// Its `_BASE_`, beside it.
pub const BASE_CONFIG_FILE: &str = "Base-DensePose-RCNN-FPN.yaml";

/// The published files (detectron2's `projects/DensePose/configs`, also in the weights'
/// repository), for the seeded-weight network that has no folder: the base, then the file.
const PUBLISHED: [&str; 2] = [
    include_str!("../../../../models/densepose/config/Base-DensePose-RCNN-FPN.yaml"),
    include_str!("../../../../models/densepose/config/densepose_rcnn_R_50_FPN_s1x.yaml"),
];

/// How deep `_BASE_` chains may go (the published one has depth 1).
const MAX_BASE_DEPTH: usize = 8;

/// What goes wrong reading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a detectron2 YAML configuration: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{key} = {value}: {reason}")]
    Unsupported {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// How the photo becomes the network's input.
#[derive(Debug, Clone, PartialEq)]
pub struct InputConfig {
    /// `INPUT.MIN_SIZE_TEST`: the shorter side after resizing.
    pub min_size_test: u32,
    /// `INPUT.MAX_SIZE_TEST`: the cap on the longer side.
    pub max_size_test: u32,
    /// `MODEL.PIXEL_MEAN`, in the input's channel order (BGR).
    pub pixel_mean: [f32; 3],
    /// `MODEL.PIXEL_STD`.
    pub pixel_std: [f32; 3],
}

/// `MODEL.RESNETS`: the bottom-up backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNetConfig {
    pub depth: usize,
    pub stem_out_channels: usize,
    pub res2_out_channels: usize,
    pub width_per_group: usize,
    pub stride_in_1x1: bool,
    pub res5_dilation: usize,
}

impl ResNetConfig {
    /// Bottleneck blocks per stage res2..res5.
    pub fn blocks_per_stage(&self) -> [usize; 4] {
        match self.depth {
            101 => [3, 4, 23, 3],
            152 => [3, 8, 36, 3],
            _ => [3, 4, 6, 3],
        }
    }
}

/// `MODEL.FPN`.
#[derive(Debug, Clone, PartialEq)]
pub struct FpnConfig {
    /// The backbone stages it reads, e.g. `res2`..`res5`.
    pub in_features: Vec<String>,
    pub out_channels: usize,
    /// `FUSE_TYPE: avg` halves each top-down sum.
    pub fuse_average: bool,
}

/// `MODEL.ANCHOR_GENERATOR` (`DefaultAnchorGenerator`).
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorConfig {
    /// Sizes per level (the last list repeats for missing levels).
    pub sizes: Vec<Vec<f64>>,
    /// Aspect ratios per level (likewise).
    pub aspect_ratios: Vec<Vec<f64>>,
    /// `OFFSET`, in units of the level's stride.
    pub offset: f64,
}

/// `MODEL.RPN` and `MODEL.PROPOSAL_GENERATOR`.
#[derive(Debug, Clone, PartialEq)]
pub struct RpnConfig {
    pub in_features: Vec<String>,
    pub pre_nms_topk: usize,
    pub post_nms_topk: usize,
    /// Compared in f64, as torchvision's NMS takes it.
    pub nms_threshold: f64,
    pub bbox_reg_weights: [f32; 4],
    /// `PROPOSAL_GENERATOR.MIN_SIZE`: proposals not wider and taller than this are dropped.
    pub min_size: f32,
}

/// A `ROIPooler` of type `ROIAlign` or `ROIAlignV2`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolerConfig {
    pub resolution: usize,
    pub sampling_ratio: i32,
    /// `ROIAlignV2` samples pixel centres (`aligned=True`), `ROIAlign` does not.
    pub aligned: bool,
}

/// `MODEL.ROI_HEADS`, `MODEL.ROI_BOX_HEAD` and `TEST.DETECTIONS_PER_IMAGE`.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxHeadConfig {
    pub in_features: Vec<String>,
    pub num_classes: usize,
    /// Compared with f32 scores as an f32, as PyTorch promotes a Python float.
    pub score_threshold: f32,
    pub nms_threshold: f64,
    pub detections_per_image: usize,
    pub num_fc: usize,
    pub fc_dim: usize,
    pub pooler: PoolerConfig,
    pub bbox_reg_weights: [f32; 4],
    pub class_agnostic_boxes: bool,
}

/// `MODEL.ROI_DENSEPOSE_HEAD` (`DensePoseV1ConvXHead` with the chart predictor).
#[derive(Debug, Clone, PartialEq)]
pub struct DensePoseHeadConfig {
    pub num_stacked_convs: usize,
    pub conv_dim: usize,
    pub conv_kernel: usize,
    pub deconv_kernel: usize,
    /// Fine segmentation channels: the patches plus background.
    pub num_patches: usize,
    pub num_coarse_channels: usize,
    pub up_scale: usize,
    pub pooler: PoolerConfig,
    /// The Panoptic-FPN decoder that merges the levels before pooling (`DECODER_ON`).
    pub decoder: Option<DecoderConfig>,
}

/// The DensePose head's level-merging decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderConfig {
    pub num_classes: usize,
    pub conv_dims: usize,
    pub common_stride: usize,
}

/// Everything inference reads.
#[derive(Debug, Clone, PartialEq)]
pub struct DensePoseConfig {
    pub input: InputConfig,
    pub resnet: ResNetConfig,
    pub fpn: FpnConfig,
    pub anchors: AnchorConfig,
    pub rpn: RpnConfig,
    pub box_head: BoxHeadConfig,
    pub densepose: DensePoseHeadConfig,
}

impl DensePoseConfig {
    /// The configuration `path` describes, over detectron2's defaults.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let merged = read_with_bases(path, 0)?;
        Self::from_values(&Values(merged))
    }

    /// The configuration of YAML texts each merged over the one before (their `_BASE_` keys
    /// ignored), over detectron2's defaults.
    pub fn from_yaml_texts(texts: &[&str]) -> Result<Self, ConfigError> {
        let mut merged = Value::Mapping(Mapping::new());
        for text in texts {
            let mut value: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: PathBuf::from("<text>"),
                reason: e.to_string(),
            })?;
            if let Some(map) = value.as_mapping_mut() {
                map.remove("_BASE_");
            }
            merge(&mut merged, value);
        }
        Self::from_values(&Values(merged))
    }

    /// The configuration the published weights come with.
    pub fn published() -> Result<Self, ConfigError> {
        Self::from_yaml_texts(&PUBLISHED)
    }

    /// The same with `MODEL.ROI_HEADS.SCORE_THRESH_TEST` set, as a caller's options do.
    pub fn with_score_threshold(mut self, threshold: f32) -> Self {
        self.box_head.score_threshold = threshold;
        self
    }

    fn from_values(v: &Values) -> Result<Self, ConfigError> {
        v.expect_str("MODEL.META_ARCHITECTURE", "GeneralizedRCNN")?;
        v.expect_str("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone")?;
        v.expect_str("MODEL.PROPOSAL_GENERATOR.NAME", "RPN")?;
        v.expect_str("MODEL.RPN.HEAD_NAME", "StandardRPNHead")?;
        v.expect_str("MODEL.ROI_HEADS.NAME", "DensePoseROIHeads")?;
        v.expect_str("MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead")?;
        v.expect_str("MODEL.ROI_DENSEPOSE_HEAD.NAME", "DensePoseV1ConvXHead")?;
        v.expect_str("MODEL.RESNETS.NORM", "FrozenBN")?;
        v.expect_str("MODEL.FPN.NORM", "")?;
        v.expect_str("MODEL.ROI_BOX_HEAD.NORM", "")?;
        v.expect_str("MODEL.ROI_DENSEPOSE_HEAD.DECODER_NORM", "")?;
        v.expect_str("MODEL.ANCHOR_GENERATOR.NAME", "DefaultAnchorGenerator")?;
        v.expect_str("INPUT.FORMAT", "BGR")?;
        v.expect_bool("MODEL.DENSEPOSE_ON", true)?;
        v.expect_bool("MODEL.MASK_ON", false)?;
        v.expect_bool("MODEL.KEYPOINT_ON", false)?;
        v.expect_bool("MODEL.ROI_DENSEPOSE_HEAD.UV_CONFIDENCE.ENABLED", false)?;
        v.expect_bool("MODEL.ROI_DENSEPOSE_HEAD.SEGM_CONFIDENCE.ENABLED", false)?;
        v.expect_usize("MODEL.RESNETS.NUM_GROUPS", 1)?;
        v.expect_usize("MODEL.ROI_BOX_HEAD.NUM_CONV", 0)?;
        // detectron2's default is COCO's 80 classes; DensePose detects people only.
        let num_classes = v.usize_or("MODEL.ROI_HEADS.NUM_CLASSES", 80)?;
        if num_classes != 1 {
            return Err(ConfigError::Unsupported {
                key: "MODEL.ROI_HEADS.NUM_CLASSES",
                value: num_classes.to_string(),
                reason: "DensePose detects one class, people",
            });
        }
        if let Some(deform) = v.get("MODEL.RESNETS.DEFORM_ON_PER_STAGE") {
            if deform
                .as_sequence()
                .is_some_and(|s| s.iter().any(|d| d.as_bool() == Some(true)))
            {
                return Err(unsupported(
                    "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
                    deform,
                    "deformable convolutions are not implemented",
                ));
            }
        }
        let predictor = v.str_or(
            "MODEL.ROI_DENSEPOSE_HEAD.PREDICTOR_NAME",
            "DensePoseChartWithConfidencePredictor",
        )?;
        if !matches!(
            predictor.as_str(),
            "DensePoseChartPredictor" | "DensePoseChartWithConfidencePredictor"
        ) {
            return Err(ConfigError::Unsupported {
                key: "MODEL.ROI_DENSEPOSE_HEAD.PREDICTOR_NAME",
                value: predictor,
                reason: "only the chart predictor is implemented",
            });
        }
        let depth = v.usize_or("MODEL.RESNETS.DEPTH", 50)?;
        if ![50, 101, 152].contains(&depth) {
            return Err(ConfigError::Unsupported {
                key: "MODEL.RESNETS.DEPTH",
                value: depth.to_string(),
                reason: "bottleneck ResNets are 50, 101 or 152 deep",
            });
        }
        let stages = ["res2", "res3", "res4", "res5"];
        let fpn_in = v.strings_or("MODEL.FPN.IN_FEATURES", &[])?;
        if fpn_in != stages {
            return Err(ConfigError::Unsupported {
                key: "MODEL.FPN.IN_FEATURES",
                value: format!("{fpn_in:?}"),
                reason: "the FPN reads res2..res5",
            });
        }
        // Each key with detectron2's default: the box head pools 14×14 with adaptive sampling,
        // DensePose 28×28 with ratio 2, both ROIAlignV2 unless the file says otherwise.
        let pooler = |type_key: &'static str,
                      (resolution_key, resolution): (&'static str, usize),
                      (ratio_key, ratio): (&'static str, i64)| {
            let kind = v.str_or(type_key, "ROIAlignV2")?;
            let aligned = match kind.as_str() {
                "ROIAlign" => false,
                "ROIAlignV2" => true,
                _ => {
                    return Err(ConfigError::Unsupported {
                        key: type_key,
                        value: kind,
                        reason: "only ROIAlign and ROIAlignV2 poolers are implemented",
                    })
                }
            };
            Ok(PoolerConfig {
                resolution: v.usize_or(resolution_key, resolution)?,
                sampling_ratio: v.int_or(ratio_key, ratio)? as i32,
                aligned,
            })
        };
        let box_pooler = pooler(
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
            ("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 14),
            ("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 0),
        )?;
        let dp_pooler = pooler(
            "MODEL.ROI_DENSEPOSE_HEAD.POOLER_TYPE",
            ("MODEL.ROI_DENSEPOSE_HEAD.POOLER_RESOLUTION", 28),
            ("MODEL.ROI_DENSEPOSE_HEAD.POOLER_SAMPLING_RATIO", 2),
        )?;
        let decoder = if v.bool_or("MODEL.ROI_DENSEPOSE_HEAD.DECODER_ON", true)? {
            Some(DecoderConfig {
                num_classes: v.usize_or("MODEL.ROI_DENSEPOSE_HEAD.DECODER_NUM_CLASSES", 256)?,
                conv_dims: v.usize_or("MODEL.ROI_DENSEPOSE_HEAD.DECODER_CONV_DIMS", 256)?,
                common_stride: v.usize_or("MODEL.ROI_DENSEPOSE_HEAD.DECODER_COMMON_STRIDE", 4)?,
            })
        } else {
            None
        };
        let rpn_in = v.strings_or("MODEL.RPN.IN_FEATURES", &["res4"])?;
        let roi_in = v.strings_or("MODEL.ROI_HEADS.IN_FEATURES", &["res4"])?;
        for (key, features, allowed) in [
            (
                "MODEL.RPN.IN_FEATURES",
                &rpn_in,
                &["p2", "p3", "p4", "p5", "p6"][..],
            ),
            (
                "MODEL.ROI_HEADS.IN_FEATURES",
                &roi_in,
                &["p2", "p3", "p4", "p5"][..],
            ),
        ] {
            if features.is_empty() || !features.iter().all(|f| allowed.contains(&f.as_str())) {
                return Err(ConfigError::Unsupported {
                    key,
                    value: format!("{features:?}"),
                    reason: "the heads read the FPN's levels p2..p6",
                });
            }
        }
        Ok(Self {
            input: InputConfig {
                min_size_test: v.usize_or("INPUT.MIN_SIZE_TEST", 800)? as u32,
                max_size_test: v.usize_or("INPUT.MAX_SIZE_TEST", 1333)? as u32,
                pixel_mean: v.triple_or("MODEL.PIXEL_MEAN", [103.530, 116.280, 123.675])?,
                pixel_std: v.triple_or("MODEL.PIXEL_STD", [1.0, 1.0, 1.0])?,
            },
            resnet: ResNetConfig {
                depth,
                stem_out_channels: v.usize_or("MODEL.RESNETS.STEM_OUT_CHANNELS", 64)?,
                res2_out_channels: v.usize_or("MODEL.RESNETS.RES2_OUT_CHANNELS", 256)?,
                width_per_group: v.usize_or("MODEL.RESNETS.WIDTH_PER_GROUP", 64)?,
                stride_in_1x1: v.bool_or("MODEL.RESNETS.STRIDE_IN_1X1", true)?,
                res5_dilation: v.usize_or("MODEL.RESNETS.RES5_DILATION", 1)?,
            },
            fpn: FpnConfig {
                in_features: fpn_in,
                out_channels: v.usize_or("MODEL.FPN.OUT_CHANNELS", 256)?,
                fuse_average: v.str_or("MODEL.FPN.FUSE_TYPE", "sum")? == "avg",
            },
            anchors: AnchorConfig {
                sizes: v.nested_or(
                    "MODEL.ANCHOR_GENERATOR.SIZES",
                    &[&[32., 64., 128., 256., 512.]],
                )?,
                aspect_ratios: v
                    .nested_or("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", &[&[0.5, 1.0, 2.0]])?,
                offset: v.float_or("MODEL.ANCHOR_GENERATOR.OFFSET", 0.0)?,
            },
            rpn: RpnConfig {
                in_features: rpn_in,
                pre_nms_topk: v.usize_or("MODEL.RPN.PRE_NMS_TOPK_TEST", 6000)?,
                post_nms_topk: v.usize_or("MODEL.RPN.POST_NMS_TOPK_TEST", 1000)?,
                nms_threshold: v.float_or("MODEL.RPN.NMS_THRESH", 0.7)?,
                bbox_reg_weights: v.quad_or("MODEL.RPN.BBOX_REG_WEIGHTS", [1.0, 1.0, 1.0, 1.0])?,
                min_size: v.float_or("MODEL.PROPOSAL_GENERATOR.MIN_SIZE", 0.0)? as f32,
            },
            box_head: BoxHeadConfig {
                in_features: roi_in,
                num_classes: 1,
                score_threshold: v.float_or("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.05)? as f32,
                nms_threshold: v.float_or("MODEL.ROI_HEADS.NMS_THRESH_TEST", 0.5)?,
                detections_per_image: v.usize_or("TEST.DETECTIONS_PER_IMAGE", 100)?,
                num_fc: v.usize_or("MODEL.ROI_BOX_HEAD.NUM_FC", 0)?,
                fc_dim: v.usize_or("MODEL.ROI_BOX_HEAD.FC_DIM", 1024)?,
                pooler: box_pooler,
                bbox_reg_weights: v.quad_or(
                    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
                    [10.0, 10.0, 5.0, 5.0],
                )?,
                class_agnostic_boxes: v
                    .bool_or("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", false)?,
            },
            densepose: DensePoseHeadConfig {
                num_stacked_convs: v.usize_or("MODEL.ROI_DENSEPOSE_HEAD.NUM_STACKED_CONVS", 8)?,
                conv_dim: v.usize_or("MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_DIM", 512)?,
                conv_kernel: v.usize_or("MODEL.ROI_DENSEPOSE_HEAD.CONV_HEAD_KERNEL", 3)?,
                deconv_kernel: v.usize_or("MODEL.ROI_DENSEPOSE_HEAD.DECONV_KERNEL", 4)?,
                num_patches: v.usize_or("MODEL.ROI_DENSEPOSE_HEAD.NUM_PATCHES", 24)? + 1,
                num_coarse_channels: v
                    .usize_or("MODEL.ROI_DENSEPOSE_HEAD.NUM_COARSE_SEGM_CHANNELS", 2)?,
                up_scale: v.usize_or("MODEL.ROI_DENSEPOSE_HEAD.UP_SCALE", 2)?,
                pooler: dp_pooler,
                decoder,
            },
        })
    }
}

/// A file merged over its `_BASE_` chain, as yacs does: mappings merge key by key, anything else
/// is replaced.
fn read_with_bases(path: &Path, depth: usize) -> Result<Value, ConfigError> {
    if depth > MAX_BASE_DEPTH {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            reason: format!("_BASE_ chains deeper than {MAX_BASE_DEPTH}"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut value: Value = serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let Some(map) = value.as_mapping_mut() else {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            reason: "the top level is not a mapping".into(),
        });
    };
    let Some(base) = map.remove("_BASE_") else {
        return Ok(value);
    };
    let Some(base) = base.as_str() else {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            reason: "_BASE_ is not a file name".into(),
        });
    };
    if base.contains("://") {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            reason: format!("_BASE_ {base} is not a local file"),
        });
    }
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    let mut merged = read_with_bases(&base_path, depth + 1)?;
    merge(&mut merged, value);
    Ok(merged)
}

fn merge(into: &mut Value, over: Value) {
    match (into, over) {
        (Value::Mapping(into), Value::Mapping(over)) => {
            for (key, value) in over {
                match into.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        into.insert(key, value);
                    }
                }
            }
        }
        (into, over) => *into = over,
    }
}

fn unsupported(key: &'static str, value: &Value, reason: &'static str) -> ConfigError {
    ConfigError::Unsupported {
        key,
        value: serde_yaml::to_string(value)
            .unwrap_or_default()
            .trim()
            .to_string(),
        reason,
    }
}

/// The merged YAML, read by dotted key with detectron2's default where the files are silent.
struct Values(Value);

impl Values {
    fn get(&self, key: &str) -> Option<&Value> {
        let mut node = &self.0;
        for part in key.split('.') {
            node = node.as_mapping().and_then(|m: &Mapping| m.get(part))?;
        }
        Some(node)
    }

    /// A value yacs would parse from a string such as `(10.0, 10.0, 5.0, 5.0)`.
    fn get_parsed(&self, key: &str) -> Option<Value> {
        let value = self.get(key)?;
        match value.as_str() {
            Some(text) if text.trim_start().starts_with('(') => {
                let list = text.trim().trim_start_matches('(').trim_end_matches(')');
                serde_yaml::from_str(&format!("[{list}]")).ok()
            }
            _ => Some(value.clone()),
        }
    }

    fn wrong(key: &'static str, value: &Value, expected: &'static str) -> ConfigError {
        unsupported(key, value, expected)
    }

    fn str_or(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Self::wrong(key, other, "expected a string")),
        }
    }

    fn bool_or(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(Self::wrong(key, other, "expected true or false")),
        }
    }

    fn int_or(&self, key: &'static str, default: i64) -> Result<i64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(value) => value
                .as_i64()
                .ok_or_else(|| Self::wrong(key, value, "expected an integer")),
        }
    }

    fn usize_or(&self, key: &'static str, default: usize) -> Result<usize, ConfigError> {
        let value = self.int_or(key, default as i64)?;
        usize::try_from(value).map_err(|_| ConfigError::Unsupported {
            key,
            value: value.to_string(),
            reason: "expected a non-negative integer",
        })
    }

    fn float_or(&self, key: &'static str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(value) => value
                .as_f64()
                .ok_or_else(|| Self::wrong(key, value, "expected a number")),
        }
    }

    fn floats(&self, key: &'static str) -> Result<Option<Vec<f64>>, ConfigError> {
        let Some(value) = self.get_parsed(key) else {
            return Ok(None);
        };
        let list = value
            .as_sequence()
            .and_then(|s| s.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| Self::wrong(key, &value, "expected a list of numbers"))?;
        Ok(Some(list))
    }

    fn triple_or(&self, key: &'static str, default: [f32; 3]) -> Result<[f32; 3], ConfigError> {
        match self.floats(key)? {
            None => Ok(default),
            Some(list) if list.len() == 3 => Ok([list[0] as f32, list[1] as f32, list[2] as f32]),
            Some(list) => Err(ConfigError::Unsupported {
                key,
                value: format!("{list:?}"),
                reason: "expected three values, one per channel",
            }),
        }
    }

    fn quad_or(&self, key: &'static str, default: [f32; 4]) -> Result<[f32; 4], ConfigError> {
        match self.floats(key)? {
            None => Ok(default),
            Some(list) if list.len() == 4 => Ok([
                list[0] as f32,
                list[1] as f32,
                list[2] as f32,
                list[3] as f32,
            ]),
            Some(list) => Err(ConfigError::Unsupported {
                key,
                value: format!("{list:?}"),
                reason: "expected four weights (x, y, w, h)",
            }),
        }
    }

    fn nested_or(
        &self,
        key: &'static str,
        default: &[&[f64]],
    ) -> Result<Vec<Vec<f64>>, ConfigError> {
        let Some(value) = self.get_parsed(key) else {
            return Ok(default.iter().map(|l| l.to_vec()).collect());
        };
        let outer = value
            .as_sequence()
            .ok_or_else(|| Self::wrong(key, &value, "expected a list of lists of numbers"))?;
        let lists = outer
            .iter()
            .map(|inner| {
                inner
                    .as_sequence()
                    .and_then(|s| s.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                    .filter(|l| !l.is_empty())
            })
            .collect::<Option<Vec<_>>>()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| Self::wrong(key, &value, "expected a list of lists of numbers"))?;
        Ok(lists)
    }

    fn strings_or(&self, key: &'static str, default: &[&str]) -> Result<Vec<String>, ConfigError> {
        let Some(value) = self.get_parsed(key) else {
            return Ok(default.iter().map(|s| s.to_string()).collect());
        };
        value
            .as_sequence()
            .and_then(|s| {
                s.iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| Self::wrong(key, &value, "expected a list of names"))
    }

    fn expect_str(&self, key: &'static str, implemented: &str) -> Result<(), ConfigError> {
        let value = self.str_or(key, implemented)?;
        if value == implemented {
            Ok(())
        } else {
            Err(ConfigError::Unsupported {
                key,
                value,
                reason: "only the published DensePose R-CNN architecture is implemented",
            })
        }
    }

    fn expect_bool(&self, key: &'static str, implemented: bool) -> Result<(), ConfigError> {
        if self.bool_or(key, implemented)? == implemented {
            Ok(())
        } else {
            Err(ConfigError::Unsupported {
                key,
                value: (!implemented).to_string(),
                reason: "only the published DensePose R-CNN architecture is implemented",
            })
        }
    }

    fn expect_usize(&self, key: &'static str, implemented: usize) -> Result<(), ConfigError> {
        let value = self.usize_or(key, implemented)?;
        if value == implemented {
            Ok(())
        } else {
            Err(ConfigError::Unsupported {
                key,
                value: value.to_string(),
                reason: "only the published DensePose R-CNN architecture is implemented",
            })
        }
    }
}
