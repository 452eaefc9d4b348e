//! `virtualfit::imaging::cv` against OpenCV 4.10 itself: every case of
//! `tests/fixtures/cv/ops.safetensors.gz` (written by `scripts/fixtures/cv_ops.py`) must come
//! out identical, pixel for pixel.

use std::path::Path;

use image::GrayImage;
use safetensors::SafeTensors;
use serde_json::Value;
use virtualfit::imaging::cv;

/// The decompressed fixture file.
fn fixture() -> Vec<u8> {
    crate::common::gunzip(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cv/ops.safetensors.gz"),
    )
}

fn image(tensors: &SafeTensors, name: &str) -> GrayImage {
    let view = tensors.tensor(name).expect("tensor");
    let shape = view.shape();
    assert_eq!(shape.len(), 2, "{name}");
    GrayImage::from_raw(shape[1] as u32, shape[0] as u32, view.data().to_vec()).expect("size")
}

/// Runs every case of operation `op` and reports each mismatch (count of differing pixels and
/// the first of them).
fn check(op: &str) {
    let bytes = fixture();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("header");
    let metadata = metadata.metadata().clone().expect("metadata");
    let cases: Vec<Value> = serde_json::from_str(&metadata["cases"]).expect("cases");
    let tensors = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c["op"] == op) {
        let name = case["name"].as_str().expect("name");
        let int = |key: &str| case[key].as_u64().expect(key) as u32;
        let float = |key: &str| case[key].as_f64().expect(key);
        let input = image(&tensors, &format!("{name}.input"));
        let expected = image(&tensors, &format!("{name}.expected"));
        let actual = match op {
            "dilate" => cv::dilate(&input, int("size"), int("iterations")),
            "resize" => cv::resize_nearest(&input, int("width"), int("height")),
            "resize_by" => cv::resize_nearest_by(&input, float("fx"), float("fy")),
            "hulls" => cv::fill_external_hulls(&input),
            "blur" => cv::gaussian_blur(&input, int("size")),
            other => panic!("unknown op {other}"),
        };
        checked += 1;
        if actual.dimensions() != expected.dimensions() {
            failures.push(format!(
                "{name}: size {:?}, OpenCV {:?}",
                actual.dimensions(),
                expected.dimensions()
            ));
            continue;
        }
        let differing: Vec<(u32, u32, u8, u8)> = actual
            .enumerate_pixels()
            .zip(expected.pixels())
            .filter(|((_, _, a), e)| a[0] != e[0])
            .map(|((x, y, a), e)| (x, y, a[0], e[0]))
            .collect();
        if let Some(first) = differing.first() {
            failures.push(format!(
                "{name}: {} pixels differ, first (x, y, ours, OpenCV) = {first:?}",
                differing.len()
            ));
        }
    }
    assert!(checked > 0, "no {op} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dilate_matches_opencv() {
    check("dilate");
}

#[test]
fn resize_to_a_size_matches_opencv() {
    check("resize");
}

#[test]
fn resize_by_factors_matches_opencv() {
    check("resize_by");
}

#[test]
fn filled_external_hulls_match_opencv() {
    check("hulls");
}

#[test]
fn gaussian_blur_matches_opencv() {
    check("blur");
}
