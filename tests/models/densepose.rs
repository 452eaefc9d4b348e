//! DensePose (detectron2's `densepose_rcnn_R_50_FPN_s1x`, run as CatVTON's wrapper runs it)
//! against the official code: fixtures from scripts/fixtures/densepose.py, which runs
//! detectron2's `DefaultPredictor` and CatVTON's `model/DensePose` wrapper unmodified on the CPU
//! with the seeded formula weights both sides compute, on two sample photos and a synthetic
//! person. Each stage is compared: the input, the FPN's maps, the proposals, the detections, the
//! DensePose logits and the wrapper's label map. Also: the configuration read from the published
//! YAML files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use virtualfit::models::automasker::densepose::config::{
    ConfigError, DensePoseConfig, PoolerConfig,
};
use virtualfit::models::automasker::densepose::{self, extract, DensePose, Trace};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/densepose")
}

/// The published YAML files, as the weights' repository has them.
fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/densepose/config")
}

fn published_config() -> DensePoseConfig {
    let config =
        DensePoseConfig::from_yaml_file(&config_dir().join("densepose_rcnn_R_50_FPN_s1x.yaml"))
            .expect("the published configuration");
    assert_eq!(
        DensePoseConfig::published().expect("the embedded copy"),
        config,
        "the embedded copy reads the same"
    );
    config
}

#[test]
fn the_published_configuration_reads_as_detectron2_merges_it() {
    let config = published_config();
    // From the file itself and its _BASE_.
    assert_eq!(config.resnet.depth, 50);
    assert_eq!(config.resnet.blocks_per_stage(), [3, 4, 6, 3]);
    assert_eq!(config.rpn.in_features, ["p2", "p3", "p4", "p5", "p6"]);
    assert_eq!(config.rpn.pre_nms_topk, 1000);
    assert_eq!(config.rpn.post_nms_topk, 1000);
    assert_eq!(
        config.anchors.sizes,
        vec![
            vec![32.0],
            vec![64.0],
            vec![128.0],
            vec![256.0],
            vec![512.0]
        ]
    );
    assert_eq!(config.anchors.aspect_ratios, vec![vec![0.5, 1.0, 2.0]]);
    assert_eq!(config.box_head.in_features, ["p2", "p3", "p4", "p5"]);
    assert_eq!(config.box_head.num_fc, 2);
    let roi_align = PoolerConfig {
        resolution: 7,
        sampling_ratio: 2,
        aligned: false,
    };
    assert_eq!(config.box_head.pooler, roi_align);
    assert_eq!(
        config.densepose.pooler,
        PoolerConfig {
            resolution: 28,
            ..roi_align
        }
    );
    assert_eq!(config.densepose.num_coarse_channels, 2);
    // detectron2's and the DensePose project's defaults, which the files leave alone.
    assert_eq!(config.input.min_size_test, 800);
    assert_eq!(config.input.max_size_test, 1333);
    assert_eq!(config.input.pixel_mean, [103.530, 116.280, 123.675]);
    assert_eq!(config.rpn.nms_threshold, 0.7);
    assert_eq!(config.box_head.score_threshold, 0.05);
    assert_eq!(config.box_head.nms_threshold, 0.5);
    assert_eq!(config.box_head.detections_per_image, 100);
    assert_eq!(config.box_head.bbox_reg_weights, [10.0, 10.0, 5.0, 5.0]);
    assert_eq!(config.densepose.num_stacked_convs, 8);
    assert_eq!(config.densepose.num_patches, 25);
    let decoder = config
        .densepose
        .decoder
        .expect("DECODER_ON defaults to true");
    assert_eq!(
        (
            decoder.num_classes,
            decoder.conv_dims,
            decoder.common_stride
        ),
        (256, 256, 4)
    );
    assert_eq!(
        config.with_score_threshold(0.8).box_head.score_threshold,
        0.8
    );
}

#[test]
fn a_file_merges_over_its_base_and_tuples_parse_as_yacs_parses_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = config_dir().join("Base-DensePose-RCNN-FPN.yaml");
    std::fs::copy(&base, dir.path().join("Base-DensePose-RCNN-FPN.yaml")).expect("copy");
    let child = dir.path().join("child.yaml");
    std::fs::write(
        &child,
        "_BASE_: \"Base-DensePose-RCNN-FPN.yaml\"\nMODEL:\n  RESNETS:\n    DEPTH: 101\n  \
         ROI_BOX_HEAD:\n    BBOX_REG_WEIGHTS: (20.0, 20.0, 10.0, 10.0)\n  RPN:\n    \
         POST_NMS_TOPK_TEST: 500\n",
    )
    .expect("write");
    let config = DensePoseConfig::from_yaml_file(&child).expect("config");
    assert_eq!(config.resnet.blocks_per_stage(), [3, 4, 23, 3]);
    assert_eq!(config.box_head.bbox_reg_weights, [20.0, 20.0, 10.0, 10.0]);
    assert_eq!(config.rpn.post_nms_topk, 500);
    // The base's values survive where the child is silent.
    assert_eq!(config.rpn.pre_nms_topk, 1000);
    assert_eq!(config.box_head.pooler.resolution, 7);
}

#[test]
fn architectures_that_are_not_implemented_are_refused_by_name() {
    let base =
        std::fs::read_to_string(config_dir().join("Base-DensePose-RCNN-FPN.yaml")).expect("base");
    for (change, key) in [
        ("  MASK_ON: True\n", "MODEL.MASK_ON"),
        (
            "  ROI_DENSEPOSE_HEAD:\n    NAME: \"DensePoseDeepLabHead\"\n",
            "MODEL.ROI_DENSEPOSE_HEAD.NAME",
        ),
        (
            "  ROI_DENSEPOSE_HEAD:\n    UV_CONFIDENCE:\n      ENABLED: True\n",
            "MODEL.ROI_DENSEPOSE_HEAD.UV_CONFIDENCE.ENABLED",
        ),
        (
            "  RESNETS:\n    DEFORM_ON_PER_STAGE: [False, True, True, True]\n",
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
        ),
        ("  RESNETS:\n    DEPTH: 34\n", "MODEL.RESNETS.DEPTH"),
    ] {
        // The change replaces the base's MODEL section's matching subsection by appending an
        // override file merged over the base.
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("base.yaml"), &base).expect("write");
        let child = dir.path().join("child.yaml");
        std::fs::write(&child, format!("_BASE_: base.yaml\nMODEL:\n{change}")).expect("write");
        match DensePoseConfig::from_yaml_file(&child) {
            Err(ConfigError::Unsupported { key: refused, .. }) => assert_eq!(refused, key),
            other => panic!("{key}: expected a refusal, got {other:?}"),
        }
    }
    // Without the base, detectron2's default of 80 classes is not DensePose's one.
    assert!(matches!(
        DensePoseConfig::from_yaml_texts(&["MODEL:\n  ROI_HEADS:\n    NAME: DensePoseROIHeads\n"]),
        Err(ConfigError::Unsupported { .. })
    ));
}

#[test]
fn a_base_chain_that_loops_or_is_remote_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let looping = dir.path().join("a.yaml");
    std::fs::write(&looping, "_BASE_: a.yaml\n").expect("write");
    assert!(matches!(
        DensePoseConfig::from_yaml_file(&looping),
        Err(ConfigError::Parse { .. })
    ));
    let remote = dir.path().join("b.yaml");
    std::fs::write(&remote, "_BASE_: https://example.com/x.yaml\n").expect("write");
    assert!(matches!(
        DensePoseConfig::from_yaml_file(&remote),
        Err(ConfigError::Parse { .. })
    ));
    assert!(matches!(
        DensePoseConfig::from_yaml_file(&dir.path().join("missing.yaml")),
        Err(ConfigError::Read { .. })
    ));
}

/// The fixture's tensors (scripts/fixtures/densepose.py).
fn parity() -> &'static HashMap<String, Tensor> {
    static PARITY: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    PARITY.get_or_init(|| crate::common::gz_tensors(&fixture_dir().join("parity.safetensors.gz")))
}

fn fixture(key: &str) -> &'static Tensor {
    parity()
        .get(key)
        .unwrap_or_else(|| panic!("the fixture has no {key}"))
}

fn floats(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("floats")
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("integers")
}

fn boxes(t: &Tensor) -> Vec<[f32; 4]> {
    floats(t)
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

fn photo(i: usize) -> RgbImage {
    image::open(fixture_dir().join(format!("photo-{i}.png")))
        .expect("a fixture photo")
        .to_rgb8()
}

/// The network with the seeded weights, shared by the parity tests (it holds ~30 M values).
fn network() -> &'static DensePose {
    static NETWORK: OnceLock<DensePose> = OnceLock::new();
    NETWORK.get_or_init(|| DensePose::random(&Device::Cpu).expect("the seeded network"))
}

/// One trace per image, computed once.
fn trace(i: usize) -> &'static Trace {
    static TRACES: OnceLock<Vec<Trace>> = OnceLock::new();
    &TRACES.get_or_init(|| {
        (0..IMAGES)
            .map(|i| network().trace(&[photo(i)]).expect("the forward pass"))
            .collect()
    })[i]
}

/// Two sample photos and the synthetic person.
const IMAGES: usize = 3;

/// Whether box `a` is box `b`: each coordinate within 1e-3 px, or within 1e-4 of the box's
/// extent. The second bound is for f32 noise in the regression deltas (the features' own
/// ~2e-6 relative, grown through the heads' sums and the exponential of the size deltas), which
/// moves a few boxes by more than 1e-3 px; the tests print how many.
fn same_box(a: &[f32; 4], b: &[f32; 4]) -> bool {
    let diff = box_difference(a, b);
    let extent = (b[2] - b[0]).max(b[3] - b[1]);
    diff <= 1e-3 || diff <= 1e-4 * extent
}

fn box_difference(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The same boxes (see [`same_box`]); in the same order except where two scores are within
/// `tie` of each other, which f32 noise may swap. Returns the largest difference and how many
/// boxes needed the relative bound.
fn assert_same_boxes(
    ours: &[[f32; 4]],
    our_scores: &[f32],
    theirs: &[[f32; 4]],
    their_scores: &[f32],
    tie: f32,
    what: &str,
) -> (f32, usize) {
    assert_eq!(ours.len(), theirs.len(), "{what}: how many");
    let mut worst = 0f32;
    let mut relative = 0;
    for (index, b) in theirs.iter().enumerate() {
        // The same place, or a place whose score is within `tie` of this one's.
        let matched = std::iter::once(index)
            .chain(0..ours.len())
            .find(|&j| {
                (j == index || (our_scores[j] - their_scores[index]).abs() <= tie)
                    && same_box(&ours[j], b)
            })
            .unwrap_or_else(|| {
                panic!(
                    "{what} {index}: {b:?} (score {}) not found",
                    their_scores[index]
                )
            });
        let diff = box_difference(&ours[matched], b);
        relative += usize::from(diff > 1e-3);
        worst = worst.max(diff);
    }
    (worst, relative)
}

#[test]
fn the_input_is_detectron2s() {
    for i in 0..IMAGES {
        let t = trace(i);
        let size = ints(fixture(&format!("{i}/input_size")));
        assert_eq!(
            t.input_sizes,
            vec![(size[0] as u32, size[1] as u32)],
            "image {i}"
        );
        let padded = ints(fixture(&format!("{i}/padded_size")));
        let (_, _, h, w) = t.input.dims4().expect("a batch");
        assert_eq!((h as i64, w as i64), (padded[0], padded[1]), "image {i}");
        let crop = t
            .input
            .narrow(2, 300, 32)
            .and_then(|c| c.narrow(3, 200, 32))
            .expect("the crop");
        assert_eq!(
            floats(&crop),
            floats(fixture(&format!("{i}/input_crop"))),
            "image {i}"
        );
    }
}

#[test]
fn the_feature_pyramid_matches_within_1e_4() {
    for i in 0..IMAGES {
        for (level, ours) in ["p2", "p3", "p4", "p5", "p6"]
            .iter()
            .zip(&trace(i).features)
        {
            // Channel 0 (the fixture keeps one channel per level to stay compact).
            let channels = ours.narrow(1, 0, 1).expect("channel 0");
            let theirs = fixture(&format!("{i}/features/{level}"));
            assert_eq!(channels.dims()[1..], theirs.dims()[..], "{i}/{level}");
            let error = crate::common::relative_l2(&floats(&channels), &floats(theirs));
            eprintln!("image {i} {level}: relative L2 {error:.2e}");
            assert!(error <= 1e-4, "image {i} {level}: relative L2 {error:.2e}");
        }
    }
}

#[test]
fn proposals_are_the_same_boxes_after_nms() {
    for i in 0..IMAGES {
        let ours = &trace(i).proposals[0];
        let theirs = boxes(fixture(&format!("{i}/proposals")));
        let logits = floats(fixture(&format!("{i}/proposal_logits")));
        let (worst, relative) = assert_same_boxes(
            &ours.boxes,
            &ours.logits,
            &theirs,
            &logits,
            1e-4,
            &format!("image {i} proposal"),
        );
        let logit_error = ours
            .logits
            .iter()
            .zip(&logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "image {i}: {} proposals, worst box difference {worst:.1e} px ({relative} beyond \
             1e-3 px), logits {logit_error:.1e}",
            ours.boxes.len()
        );
        assert!(
            logit_error <= 1e-3,
            "image {i}: logits differ by {logit_error}"
        );
    }
}

#[test]
fn detections_are_the_same_boxes_and_scores() {
    for i in 0..IMAGES {
        let t = trace(i);
        let theirs = boxes(fixture(&format!("{i}/boxes_model")));
        assert!(!theirs.is_empty(), "image {i}: the fixture detects nobody");
        let scores = floats(fixture(&format!("{i}/scores")));
        let ours = &t.detections[0];
        let (worst, relative) = assert_same_boxes(
            &ours.boxes,
            &ours.scores,
            &theirs,
            &scores,
            1e-6,
            &format!("image {i} detection"),
        );
        eprintln!(
            "image {i}: {} detections, worst box difference {worst:.1e} px ({relative} beyond \
             1e-3 px)",
            theirs.len()
        );
        for (a, b) in ours.scores.iter().zip(&scores) {
            assert!((a - b).abs() <= 1e-5, "image {i}: score {a} against {b}");
        }
        let photo_boxes = boxes(fixture(&format!("{i}/boxes")));
        let photo = &t.photo_detections[0].0;
        assert_same_boxes(
            &photo.boxes,
            &photo.scores,
            &photo_boxes,
            &scores,
            1e-6,
            &format!("image {i} photo box"),
        );
    }
}

#[test]
fn densepose_logits_match_within_1e_4() {
    for i in 0..IMAGES {
        let chart = trace(i).charts[0].as_ref().expect("a detection");
        for (ours, key) in [
            (&chart.coarse_lowres, "coarse_lowres"),
            (&chart.fine_lowres, "fine_lowres"),
        ] {
            let theirs = fixture(&format!("{i}/{key}"));
            assert_eq!(ours.dims()[1..], theirs.dims()[..], "{i}/{key}");
            let error = crate::common::relative_l2(&floats(ours), &floats(theirs));
            eprintln!("image {i} {key}: relative L2 {error:.2e}");
            assert!(error <= 1e-4, "image {i} {key}: relative L2 {error:.2e}");
        }
    }
}

#[test]
fn the_label_map_is_the_wrappers() {
    for i in 0..IMAGES {
        let t = trace(i);
        let first = t.photo_detections[0].0.boxes[0];
        let expected_box = ints(fixture(&format!("{i}/box_xywh")));
        assert_eq!(
            extract::int_box_xywh(&first).to_vec(),
            expected_box,
            "image {i}"
        );
        let official = image::open(fixture_dir().join(format!("densepose-{i}.png")))
            .expect("the wrapper's map")
            .to_luma8();
        let ours = &t.maps[0];
        assert_eq!(
            (ours.width as u32, ours.height as u32),
            official.dimensions()
        );
        let differing: Vec<usize> = ours
            .labels
            .iter()
            .zip(official.as_raw())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(index, _)| index)
            .collect();
        let [x, y, w, h] = [
            expected_box[0],
            expected_box[1],
            expected_box[2],
            expected_box[3],
        ];
        let on_border = differing
            .iter()
            .filter(|&&index| {
                let (px, py) = ((index % ours.width) as i64, (index / ours.width) as i64);
                px <= x + 1 || py <= y + 1 || px >= x + w - 2 || py >= y + h - 2
            })
            .count();
        let share = differing.len() as f64 / ours.labels.len() as f64;
        eprintln!(
            "image {i}: {} of {} pixels differ ({on_border} within 2 px of the box border)",
            differing.len(),
            ours.labels.len()
        );
        assert!(
            share <= 1e-3,
            "image {i}: {:.3} % of pixels differ",
            share * 100.0
        );
        assert!(
            ours.labels.iter().any(|&l| l > 0),
            "image {i}: an empty map proves little"
        );
    }
}

#[test]
fn the_seeded_weights_are_the_generators() {
    // Every tensor of the official model, with its shape, as the generator listed them.
    let listing = std::fs::read_to_string(fixture_dir().join("state_dict.txt")).expect("listing");
    let weights = densepose::formula_weights();
    let mut checked = 0;
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let (name, shape) = line.split_once('\t').expect("name and shape");
        let dims: Vec<usize> = shape
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.parse().expect("a dimension"))
            .collect();
        let values = weights.values(name, &dims).expect("a formula");
        let theirs = floats(fixture(&format!("formula/{name}")));
        assert_eq!(&values[..theirs.len()], &theirs[..], "{name}");
        checked += 1;
    }
    assert!(checked > 300, "only {checked} tensors listed");
}

/// A file of the official `AutoMasker.__call__` run with the seeded DensePose and parsers
/// (scripts/fixtures/automasker_call_densepose.py).
fn official_call(name: &str) -> image::GrayImage {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/automasker/call-densepose")
        .join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8()
}

/// The official run on three photos: DensePose's map is the official one exactly; the mask
/// from the official parsers' maps and our DensePose map is the official mask exactly (so the
/// combination with a real DensePose map is the official one); and our whole path, parsers
/// included, differs from it only where our parsers' labels do (SCHP's own parity is ≥ 99.9 %
/// of pixels: one ATR pixel of photo 1 differs, and so do the masks that read it).
#[test]
fn the_automatic_mask_with_densepose_is_the_official_automaskers() {
    use virtualfit::models::automasker::schp::SchpParsers;
    use virtualfit::models::automasker::{cloth_agnostic_mask, HumanParsers, LabelMap, MaskPart};
    let parsers = SchpParsers::random(0, &Device::Cpu).expect("the seeded parsers");
    let photos: Vec<RgbImage> = (0..IMAGES)
        .map(|i| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
                "tests/fixtures/automasker/call-densepose/photo-{i}.png"
            ));
            image::open(path).expect("a photo").to_rgb8()
        })
        .collect();
    let parsed = parsers.parse(&photos).expect("the parsers");
    let dense = network().label_maps(&photos).expect("DensePose");
    let as_map = |image: image::GrayImage| LabelMap {
        width: image.width() as usize,
        height: image.height() as usize,
        labels: image.into_raw(),
    };
    for (i, (parsed, dense)) in parsed.iter().zip(&dense).enumerate() {
        assert_eq!(
            &dense.labels,
            official_call(&format!("densepose-{i}.png")).as_raw(),
            "densepose-{i}"
        );
        let official_atr = as_map(official_call(&format!("atr-{i}.png")));
        let official_lip = as_map(official_call(&format!("lip-{i}.png")));
        let parser_differences = parsed
            .atr
            .labels
            .iter()
            .zip(&official_atr.labels)
            .chain(parsed.lip.labels.iter().zip(&official_lip.labels))
            .filter(|(a, b)| a != b)
            .count();
        for part in MaskPart::ALL {
            let name = format!("mask-{i}-{}.png", part.as_str());
            let theirs = official_call(&name);
            let combined =
                cloth_agnostic_mask(dense, &official_lip, &official_atr, part).expect("a mask");
            assert!(
                combined == theirs,
                "{name}: the combination with our DensePose map"
            );
            let ours = cloth_agnostic_mask(dense, &parsed.lip, &parsed.atr, part).expect("a mask");
            let differing = ours
                .pixels()
                .zip(theirs.pixels())
                .filter(|(a, b)| a != b)
                .count();
            eprintln!(
                "{name}: {differing} pixels differ ({parser_differences} parser labels differ)"
            );
            if parser_differences == 0 {
                assert_eq!(differing, 0, "{name}");
            } else {
                assert!(
                    differing <= ours.len() / 1000,
                    "{name}: {differing} pixels differ"
                );
            }
        }
    }
}
