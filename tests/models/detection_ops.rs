//! DensePose's box and region operations (`virtualfit::models::automasker::densepose::boxes`
//! and `roi_align`) against the official ones: every case of
//! `tests/fixtures/detectron2/ops.safetensors.gz` (written by
//! `scripts/fixtures/detection_ops.py` with torch 2.1.2, torchvision 0.16.2 and detectron2),
//! plus cases checked by hand.
//!
//! Indices must be identical, ties included; clipped boxes too. ROIAlign and the pooler must
//! give the same bits (each case first checks its largest difference against 1e-6 of the
//! data's scale, which says how far off a failure is). Boxes from `apply_deltas` may differ
//! where torch's vectorized `exp` (MKL or Sleef, by CPU) rounds an ulp away from the C
//! library's `expf`: within 2 ulps of the box's larger corner coordinate (up to 2.4e-4 px for
//! coordinates below 2048), never more.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use virtualfit::models::automasker::densepose::boxes::{
    assign_levels, batched_nms, clip, nms, nonempty, sort_descending, top_k, BoxTransform, BoxXyxy,
};
use virtualfit::models::automasker::densepose::roi_align::{RoiAlign, RoiPooler};

struct Fixture {
    tensors: HashMap<String, Tensor>,
    cases: Vec<Value>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/detectron2/ops.safetensors.gz");
        let bytes = crate::common::gunzip(&path);
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
        let cases = serde_json::from_str(
            metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get("cases"))
                .expect("cases"),
        )
        .expect("JSON");
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).expect("tensors");
        Fixture { tensors, cases }
    })
}

/// The cases of operation `op`, at least one.
fn cases(op: &str) -> Vec<&'static Value> {
    let found: Vec<_> = fixture().cases.iter().filter(|c| c["op"] == op).collect();
    assert!(!found.is_empty(), "no {op} cases");
    found
}

fn name(case: &Value) -> &str {
    case["name"].as_str().expect("name")
}

fn tensor(case: &Value, field: &str) -> &'static Tensor {
    let key = format!("{}.{field}", name(case));
    fixture()
        .tensors
        .get(&key)
        .unwrap_or_else(|| panic!("no tensor {key}"))
}

fn shared(name: &str) -> &'static Tensor {
    fixture()
        .tensors
        .get(&format!("shared.{name}"))
        .unwrap_or_else(|| panic!("no shared tensor {name}"))
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("f32 values")
}

fn i64s(t: &Tensor) -> Vec<i64> {
    t.flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("i64 values")
}

fn boxes(t: &Tensor) -> Vec<BoxXyxy> {
    f32s(t)
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

/// The case's scores: `scores`, or the integers `scores_u8` as f32.
fn scores(case: &Value) -> Vec<f32> {
    let key = format!("{}.scores_u8", name(case));
    match fixture().tensors.get(&key) {
        Some(t) => f32s(t),
        None => f32s(tensor(case, "scores")),
    }
}

fn as_i64(indices: &[usize]) -> Vec<i64> {
    indices.iter().map(|&i| i as i64).collect()
}

fn number(case: &Value, key: &str) -> f64 {
    case[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{}: no {key}", name(case)))
}

/// Same bits, or both NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// The spacing of f32 values at the magnitude of `x`: one unit in the last place.
fn ulp(x: f32) -> f32 {
    let x = x.abs();
    f32::from_bits(x.to_bits() + 1) - x
}

#[test]
fn apply_deltas_matches_detectron2_within_two_ulps() {
    let mut report = Vec::new();
    for case in cases("apply_deltas") {
        let weights: Vec<f32> = case["weights"]
            .as_array()
            .expect("weights")
            .iter()
            .map(|w| w.as_f64().expect("weight") as f32)
            .collect();
        let mut transform = BoxTransform::new([weights[0], weights[1], weights[2], weights[3]]);
        if let Some(clamp) = case["scale_clamp"].as_f64() {
            transform.scale_clamp = clamp as f32;
        }
        let anchors = boxes(tensor(case, "boxes"));
        let deltas = boxes(tensor(case, "deltas"));
        let expected = boxes(tensor(case, "expected"));
        let (mut worst, mut worst_abs, mut differing) = (0f32, 0f32, 0);
        for ((anchor, delta), want) in anchors.iter().zip(&deltas).zip(&expected) {
            let got = transform.apply(*delta, *anchor);
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!(
                    g.is_finite() && w.is_finite(),
                    "{}: {got:?} vs {want:?}",
                    name(case)
                );
                // x1 and x2 are centre -/+ half the width: both terms are at most the larger
                // corner's magnitude, whose ulp measures a rounding difference in either.
                let scale = want[i % 2].abs().max(want[i % 2 + 2].abs());
                let diff = (g - w).abs();
                differing += usize::from(diff > 0.0);
                worst = worst.max(diff / ulp(scale));
                worst_abs = worst_abs.max(diff);
            }
        }
        assert!(
            worst <= 2.0,
            "{}: {worst} ulps of the box apart (max abs {worst_abs})",
            name(case)
        );
        report.push(format!(
            "{}: {differing} of {} coordinates differ, by at most {worst} ulps / {worst_abs} px",
            name(case),
            expected.len() * 4
        ));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn clip_and_nonempty_match_detectron2_exactly() {
    for case in cases("clip") {
        let (h, w) = (number(case, "height") as f32, number(case, "width") as f32);
        let expected = boxes(tensor(case, "expected"));
        for (b, want) in boxes(tensor(case, "boxes")).iter().zip(&expected) {
            let got = clip(*b, h, w);
            assert!(
                got.iter().zip(want).all(|(g, w)| same(*g, *w)),
                "{}: {b:?}",
                name(case)
            );
        }
    }
    for case in cases("nonempty") {
        let threshold = number(case, "threshold") as f32;
        let got: Vec<i64> = boxes(tensor(case, "boxes"))
            .iter()
            .map(|b| i64::from(nonempty(b, threshold)))
            .collect();
        let want = i64s(&tensor(case, "expected").to_dtype(DType::I64).expect("i64"));
        assert_eq!(got, want, "{}", name(case));
    }
}

#[test]
fn top_k_matches_torch_ties_included() {
    let mut tie_orders = 0;
    for case in cases("topk") {
        let scores = scores(case);
        let k = number(case, "k") as usize;
        let got = top_k(&scores, k);
        assert_eq!(
            as_i64(&got),
            i64s(tensor(case, "expected")),
            "{}",
            name(case)
        );
        let values = f32s(tensor(case, "values"));
        assert!(
            got.iter().zip(&values).all(|(&i, &v)| same(scores[i], v)),
            "{}: values",
            name(case)
        );
        if case["index_order"] == false {
            tie_orders += 1;
        }
    }
    assert!(
        tie_orders >= 5,
        "the fixture must hold ties out of index order"
    );
}

#[test]
fn sort_descending_matches_torch_ties_included() {
    for case in cases("sort") {
        let got = sort_descending(&scores(case));
        assert_eq!(
            as_i64(&got),
            i64s(tensor(case, "expected")),
            "{}",
            name(case)
        );
    }
}

#[test]
fn nms_matches_torchvision() {
    for case in cases("nms") {
        let got = nms(
            &boxes(tensor(case, "boxes")),
            &scores(case),
            number(case, "iou_threshold"),
        );
        assert_eq!(
            as_i64(&got),
            i64s(tensor(case, "expected")),
            "{}",
            name(case)
        );
    }
}

#[test]
fn batched_nms_matches_torchvision_on_both_paths() {
    let mut separating = HashMap::new();
    for case in cases("batched_nms") {
        let boxes = boxes(tensor(case, "boxes"));
        let groups: Vec<usize> = i64s(tensor(case, "groups"))
            .into_iter()
            .map(|g| g as usize)
            .collect();
        let got = batched_nms(
            &boxes,
            &scores(case),
            &groups,
            number(case, "iou_threshold"),
        );
        assert_eq!(
            as_i64(&got),
            i64s(tensor(case, "expected")),
            "{}",
            name(case)
        );
        // torchvision 0.16.2 on the CPU: one NMS per group beyond 4000 coordinates.
        let path = if boxes.len() * 4 > 4000 {
            "per_group"
        } else {
            "offset"
        };
        assert_eq!(case["path"], path, "{}", name(case));
        if case["other_path_differs"] == true {
            *separating.entry(path).or_insert(0) += 1;
        }
    }
    assert!(
        separating.len() == 2,
        "each path needs a case the other path answers differently: {separating:?}"
    );
}

#[test]
fn assign_levels_matches_detectron2() {
    for case in cases("assign_levels") {
        let got = assign_levels(
            &boxes(tensor(case, "boxes")),
            number(case, "min_level") as u32,
            number(case, "max_level") as u32,
            number(case, "canonical_box_size") as f32,
            number(case, "canonical_level") as u32,
        );
        assert_eq!(
            as_i64(&got),
            i64s(tensor(case, "expected")),
            "{}",
            name(case)
        );
    }
}

/// (batch index, box) from detectron2's (K, 5) pooler format.
fn rois(t: &Tensor) -> Vec<(usize, BoxXyxy)> {
    f32s(t)
        .chunks_exact(5)
        .map(|r| (r[0] as usize, [r[1], r[2], r[3], r[4]]))
        .collect()
}

/// Compares a pooled output with the official one: same shape, and the largest difference
/// within 1e-6 of the features' largest magnitude. Answers how many values differ at all.
fn assert_pooled(case: &Value, got: &Tensor, features: &[&Tensor]) -> usize {
    let expected = tensor(case, "expected");
    assert_eq!(got.dims(), expected.dims(), "{}: shape", name(case));
    let scale = features
        .iter()
        .flat_map(|f| f32s(f))
        .fold(0f32, |m, v| m.max(v.abs()));
    let (got, want) = (f32s(got), f32s(expected));
    let worst = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        worst <= 1e-6 * scale,
        "{}: max abs diff {worst} at data scale {scale}",
        name(case)
    );
    got.iter()
        .zip(&want)
        .filter(|(g, w)| !same(**g, **w))
        .count()
}

#[test]
fn roi_align_matches_torchvision() {
    let mut differing = 0;
    for case in cases("roi_align") {
        let features = shared(case["features"][0].as_str().expect("features"));
        let op = RoiAlign {
            output_size: number(case, "output_size") as usize,
            spatial_scale: number(case, "spatial_scale") as f32,
            sampling_ratio: number(case, "sampling_ratio") as i32,
            aligned: case["aligned"].as_bool().expect("aligned"),
        };
        let got = op
            .forward(
                features,
                &rois(shared(case["rois"].as_str().expect("rois"))),
            )
            .expect("roi_align");
        differing += assert_pooled(case, &got, &[features]);
    }
    assert_eq!(differing, 0, "values not bit-identical to torchvision's");
}

#[test]
fn pooler_matches_detectron2() {
    let mut differing = 0;
    for case in cases("pooler") {
        let features: Vec<Tensor> = case["features"]
            .as_array()
            .expect("features")
            .iter()
            .map(|n| shared(n.as_str().expect("name")).clone())
            .collect();
        let pooler = RoiPooler {
            output_size: number(case, "output_size") as usize,
            scales: case["scales"]
                .as_array()
                .expect("scales")
                .iter()
                .map(|s| s.as_f64().expect("scale") as f32)
                .collect(),
            sampling_ratio: number(case, "sampling_ratio") as i32,
            aligned: case["aligned"].as_bool().expect("aligned"),
            canonical_box_size: 224.0,
            canonical_level: 4,
        };
        let got = pooler
            .forward(
                &features,
                &rois(shared(case["rois"].as_str().expect("rois"))),
            )
            .expect("pooler");
        differing += assert_pooled(case, &got, &features.iter().collect::<Vec<_>>());
    }
    assert_eq!(differing, 0, "values not bit-identical to detectron2's");
}

// Cases checked by hand.

#[test]
fn nms_suppresses_only_above_the_threshold() {
    let kept = [0.0, 0.0, 10.0, 10.0];
    // IoU 71 / 100 and 69 / 100 against a threshold of 0.7.
    assert_eq!(nms(&[kept, [0.0, 0.0, 10.0, 7.1]], &[0.9, 0.8], 0.7), [0]);
    assert_eq!(
        nms(&[kept, [0.0, 0.0, 10.0, 6.9]], &[0.9, 0.8], 0.7),
        [0, 1]
    );
    // The lower score goes, whichever index it has; equal scores keep index order.
    assert_eq!(nms(&[[0.0, 0.0, 10.0, 7.1], kept], &[0.8, 0.9], 0.7), [1]);
    assert_eq!(nms(&[[0.0, 0.0, 10.0, 7.1], kept], &[0.5, 0.5], 0.7), [0]);
    // 3 / 10 in f32 is 0.30000001, above 0.3 as torchvision compares (in double).
    let pair = [[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]];
    assert_eq!(nms(&pair, &[0.9, 0.8], 0.3), [0]);
    assert_eq!(nms(&pair, &[0.9, 0.8], 0.31), [0, 1]);
    assert!(nms(&[], &[], 0.5).is_empty());
}

#[test]
fn batched_nms_never_suppresses_across_groups() {
    let b = [0.0, 0.0, 10.0, 10.0];
    assert_eq!(batched_nms(&[b, b], &[0.9, 0.8], &[0, 1], 0.5), [0, 1]);
    assert_eq!(batched_nms(&[b, b], &[0.9, 0.8], &[1, 1], 0.5), [0]);
    // The per-group path (over 1000 boxes): identical boxes, one survivor per group, by score.
    let groups: Vec<usize> = (0..1001).map(|i| i % 3).collect();
    let scores: Vec<f32> = (0..1001).map(|i| i as f32).collect();
    assert_eq!(
        batched_nms(&[b; 1001], &scores, &groups, 0.5),
        [1000, 999, 998]
    );
    assert!(batched_nms(&[], &[], &[], 0.5).is_empty());
}

#[test]
fn top_k_and_sort_order_ties_as_torch_does() {
    assert_eq!(top_k(&[0.5, 2.0, 1.0], 2), [1, 2]);
    assert_eq!(top_k(&[0.5, f32::NAN, 1.0], 2), [1, 2]);
    assert_eq!(top_k(&[1.0, 2.0], 5), [1, 0]);
    assert!(top_k(&[1.0], 0).is_empty());
    // torch.ones(n).topk(k)[1] and torch.ones(17).sort(descending=True)[1], from torch 2.1.2.
    assert_eq!(
        top_k(&[1.0; 17], 17),
        [8, 16, 15, 14, 13, 12, 11, 10, 9, 4, 1, 2, 3, 6, 7, 0, 5]
    );
    assert_eq!(top_k(&[1.0; 17], 5), [10, 12, 11, 13, 9]);
    assert_eq!(top_k(&[1.0; 200], 3), [0, 1, 2]);
    assert_eq!(
        sort_descending(&[1.0; 17]),
        [8, 16, 15, 14, 13, 12, 11, 10, 9, 0, 7, 6, 5, 4, 3, 2, 1]
    );
    // Up to 16 elements, std::sort is an insertion sort: stable.
    assert_eq!(sort_descending(&[1.0, 2.0, 1.0, 2.0]), [1, 3, 0, 2]);
}

#[test]
fn box_transform_moves_and_scales_within_the_clamp() {
    let t = BoxTransform::new([10.0, 10.0, 5.0, 5.0]);
    assert_eq!(
        t.apply([0.0; 4], [10.0, 20.0, 30.0, 60.0]),
        [10.0, 20.0, 30.0, 60.0]
    );
    // dx = 10 / 10 widths to the right, dy = -5 / 10 heights up.
    assert_eq!(
        t.apply([10.0, -5.0, 0.0, 0.0], [10.0, 20.0, 30.0, 60.0]),
        [30.0, 0.0, 50.0, 40.0]
    );
    // dw = 100 / 5 is clamped to ln(1000 / 16): a 62.5 times wider box, same centre.
    let wide = t.apply([0.0, 0.0, 100.0, 0.0], [0.0, 0.0, 16.0, 16.0]);
    assert!((wide[2] - wide[0] - 1000.0).abs() < 1e-3, "{wide:?}");
    assert!((wide[0] + wide[2] - 16.0).abs() < 1e-3, "{wide:?}");
}

#[test]
fn clip_nonempty_and_levels_by_hand() {
    assert_eq!(
        clip([-5.0, 3.0, 700.0, 900.0], 480.0, 640.0),
        [0.0, 3.0, 640.0, 480.0]
    );
    assert!(nonempty(&[0.0, 0.0, 2.5, 2.5], 2.0));
    assert!(!nonempty(&[0.0, 0.0, 2.0, 9.0], 2.0));
    assert!(!nonempty(&[5.0, 0.0, 4.0, 9.0], 0.0));
    let square = |side: f32| [0.0, 0.0, side, side];
    // Level 4 for 224-pixel boxes, one level per factor of two, clamped to 2..=5.
    let levels = assign_levels(
        &[
            square(224.0),
            square(112.0),
            square(448.0),
            square(223.0),
            square(5000.0),
            square(3.0),
        ],
        2,
        5,
        224.0,
        4,
    );
    assert_eq!(levels, [2, 1, 3, 1, 3, 0]);
}

#[test]
fn roi_align_of_a_ramp_samples_the_bin_centres() {
    // f(y, x) = x on an 8x8 map, one box over all of it, 2x2 bins of one sample each.
    let ramp: Vec<f32> = (0..64).map(|i| (i % 8) as f32).collect();
    let map = Tensor::from_vec(ramp, (1, 1, 8, 8), &Device::Cpu).expect("map");
    let op = |aligned| RoiAlign {
        output_size: 2,
        spatial_scale: 1.0,
        sampling_ratio: 1,
        aligned,
    };
    let pooled =
        |aligned, b: BoxXyxy| f32s(&op(aligned).forward(&map, &[(0, b)]).expect("roi_align"));
    // Aligned: pixel centres at half-integers, so the bin centres 2 and 6 read 1.5 and 5.5.
    assert_eq!(pooled(true, [0.0, 0.0, 8.0, 8.0]), [1.5, 5.5, 1.5, 5.5]);
    assert_eq!(pooled(false, [0.0, 0.0, 8.0, 8.0]), [2.0, 6.0, 2.0, 6.0]);
    // Past the last pixel centre the map is clamped (x = 7.75 reads 7); more than a pixel off
    // it reads nothing.
    assert_eq!(pooled(true, [6.0, 0.0, 9.0, 8.0]), [6.25, 7.0, 6.25, 7.0]);
    assert_eq!(pooled(true, [20.0, 20.0, 30.0, 30.0]), [0.0; 4]);
    assert!(
        op(true).forward(&map, &[(1, [0.0; 4])]).is_err(),
        "batch index out of range"
    );
    let none = op(true).forward(&map, &[]).expect("no boxes");
    assert_eq!(none.dims(), [0, 1, 2, 2]);
}
