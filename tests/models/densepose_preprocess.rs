//! DensePose's input preparation (`virtualfit::models::automasker::densepose::preprocess`)
//! against the official code: every case of `tests/fixtures/detectron2/preprocess.safetensors.gz`
//! (written by `scripts/fixtures/densepose_preprocess.py` with Pillow 10.3, OpenCV 4.10 and
//! detectron2) must come out identical — resized bytes, sizes, and the network's f32 input bit
//! for bit. Large results are compared through their SHA-256.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::Device;
use image::RgbImage;
use safetensors::SafeTensors;
use serde_json::Value;
use sha2::{Digest, Sha256};
use virtualfit::models::automasker::densepose::preprocess::{
    capped_size, cv2_resize_linear, model_input, pil_resize_bilinear, InputFormat,
    ResizeShortestEdge,
};

struct Fixture {
    bytes: Vec<u8>,
    cases: Vec<Value>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let bytes = crate::common::gunzip(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/detectron2/preprocess.safetensors.gz"),
        );
        let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("header");
        let metadata = metadata.metadata().clone().expect("metadata");
        let fixture: Value = serde_json::from_str(&metadata["fixture"]).expect("fixture json");
        let cases = fixture["cases"].as_array().expect("cases").clone();
        Fixture { bytes, cases }
    })
}

fn cases(op: &str) -> Vec<&'static Value> {
    let found: Vec<_> = fixture().cases.iter().filter(|c| c["op"] == op).collect();
    assert!(!found.is_empty(), "no {op} cases");
    found
}

fn tensors() -> SafeTensors<'static> {
    SafeTensors::deserialize(&fixture().bytes).expect("safetensors")
}

fn int(v: &Value, key: &str) -> u32 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as u32
}

fn pair(v: &Value) -> (u32, u32) {
    let a = v.as_array().expect("pair");
    (
        a[0].as_u64().expect("int") as u32,
        a[1].as_u64().expect("int") as u32,
    )
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The generator's `noise`: the top byte of a 32-bit hash of (x, y, channel, seed).
fn noise(width: u32, height: u32, seed: u32) -> RgbImage {
    let mut img = RgbImage::new(width, height);
    for (x, y, px) in img.enumerate_pixels_mut() {
        for c in 0..3u32 {
            let mut v = x
                .wrapping_mul(0x9E37_79B1)
                .wrapping_add(y.wrapping_mul(0x85EB_CA77))
                .wrapping_add(c.wrapping_mul(0xC2B2_AE3D))
                .wrapping_add(seed.wrapping_mul(0x27D4_EB2F));
            v ^= v >> 15;
            v = v.wrapping_mul(0x2C1B_3C6D);
            v ^= v >> 12;
            v = v.wrapping_mul(0x297A_2D39);
            v ^= v >> 15;
            px[c as usize] = (v >> 24) as u8;
        }
    }
    img
}

/// `tests/fixtures/automasker/call/photo-<index>.png`, tiled `across × down`.
fn photo(index: u64, across: u32, down: u32) -> RgbImage {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/automasker/call/photo-{index}.png"));
    let one = image::open(&path).expect("photo").to_rgb8();
    let (w, h) = one.dimensions();
    RgbImage::from_fn(w * across, h * down, |x, y| *one.get_pixel(x % w, y % h))
}

fn stored_image(name: &str) -> RgbImage {
    let tensors = tensors();
    let view = tensors
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let shape = view.shape();
    assert_eq!((shape.len(), shape[2]), (3, 3), "{name}");
    RgbImage::from_raw(shape[1] as u32, shape[0] as u32, view.data().to_vec()).expect("size")
}

fn source(case: &Value, source: &Value) -> RgbImage {
    match source["kind"].as_str().expect("kind") {
        "noise" => noise(
            int(source, "width"),
            int(source, "height"),
            int(source, "seed"),
        ),
        "photo" => {
            let (across, down) = pair(&source["tile"]);
            photo(source["index"].as_u64().expect("index"), across, down)
        }
        "stored" => stored_image(&format!("{}.input", case["name"].as_str().expect("name"))),
        other => panic!("unknown source {other}"),
    }
}

fn format_of(f: &Value) -> InputFormat {
    let three = |key: &str| -> [f32; 3] {
        let a = f[key].as_array().expect(key);
        [0, 1, 2].map(|i| a[i].as_f64().expect(key) as f32)
    };
    InputFormat {
        resize: ResizeShortestEdge {
            short_edge: int(f, "short_edge"),
            max_size: int(f, "max_size"),
        },
        pixel_mean_bgr: three("pixel_mean"),
        pixel_std_bgr: three("pixel_std"),
        size_divisibility: int(f, "size_divisibility"),
    }
}

/// The first differing byte of two images of one size, as (x, y, channel, ours, reference).
fn first_difference(ours: &RgbImage, theirs: &[u8]) -> Option<(usize, usize, usize, u8, u8)> {
    let w = ours.width() as usize;
    ours.as_raw()
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .map(|i| (i / 3 % w, i / 3 / w, i % 3, ours.as_raw()[i], theirs[i]))
}

/// Runs every resize case of `op` and collects the mismatches.
fn check_resizes(op: &str, resize: fn(&RgbImage, u32, u32) -> RgbImage) {
    let tensors = tensors();
    let (mut stored, mut hashed) = (0, 0);
    let mut failures = Vec::new();
    for case in cases(op) {
        let name = case["name"].as_str().expect("name");
        let input = source(case, &case["source"]);
        let (width, height) = (int(case, "width"), int(case, "height"));
        let out = resize(&input, width, height);
        assert_eq!(out.dimensions(), (width, height), "{name}");
        if let Some(hash) = case["sha256"].as_str() {
            hashed += 1;
            if sha256(out.as_raw()) != hash {
                failures.push(format!("{name}: SHA-256 differs"));
            }
        } else {
            stored += 1;
            let expected = tensors
                .tensor(&format!("{name}.expected"))
                .expect("expected");
            assert_eq!(
                expected.shape(),
                [height as usize, width as usize, 3],
                "{name}"
            );
            if let Some(d) = first_difference(&out, expected.data()) {
                let count = out
                    .as_raw()
                    .iter()
                    .zip(expected.data())
                    .filter(|(a, b)| a != b)
                    .count();
                failures.push(format!(
                    "{name}: {count} bytes differ, first (x, y, c, ours, reference) {d:?}"
                ));
            }
        }
    }
    assert!(
        stored >= 20 && hashed >= 4,
        "{op}: {stored} stored, {hashed} hashed"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_noise_is_the_generators() {
    for case in cases("noise") {
        let img = source(case, &case["source"]);
        assert_eq!(
            sha256(img.as_raw()),
            case["sha256"].as_str().expect("sha256")
        );
    }
}

#[test]
fn pillow_bilinear_resizes_are_byte_exact() {
    check_resizes("pil", pil_resize_bilinear);
}

#[test]
fn opencv_linear_resizes_are_byte_exact() {
    check_resizes("cv2", cv2_resize_linear);
}

#[test]
fn the_wrappers_size_cap_matches() {
    for case in cases("cap") {
        let expected = (!case["expected"].is_null()).then(|| pair(&case["expected"]));
        assert_eq!(
            capped_size(int(case, "width"), int(case, "height"), int(case, "resize")),
            expected,
            "{}",
            case["name"]
        );
    }
}

#[test]
fn shortest_edge_sizes_match_detectron2() {
    let all = cases("shortest_edge");
    assert!(all.len() >= 60);
    for case in all {
        let resize = ResizeShortestEdge {
            short_edge: int(case, "short_edge"),
            max_size: int(case, "max_size"),
        };
        assert_eq!(
            resize.output_size(int(case, "height"), int(case, "width")),
            pair(&case["expected"]),
            "{}",
            case["name"]
        );
    }
}

/// The network's input for one case: its sizes, shape and values (stored, or hashed).
fn check_model_input(case: &Value, photos: &[RgbImage]) {
    let name = case["name"].as_str().expect("name");
    let input =
        model_input(photos, &format_of(&case["format"]), &Device::Cpu).expect("model_input");
    let sizes: Vec<(u32, u32)> = case["sizes"]
        .as_array()
        .expect("sizes")
        .iter()
        .map(pair)
        .collect();
    assert_eq!(input.sizes, sizes, "{name}");
    let shape: Vec<usize> = case["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|v| v.as_u64().expect("dim") as usize)
        .collect();
    assert_eq!(input.images.dims(), shape.as_slice(), "{name}");
    let values = input
        .images
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("values");
    if let Some(hash) = case["sha256"].as_str() {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(sha256(&bytes), hash, "{name}");
    } else {
        let tensors = tensors();
        let expected = tensors
            .tensor(&format!("{name}.expected"))
            .expect("expected");
        let expected: Vec<f32> = expected
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(values.len(), expected.len(), "{name}");
        let differing: Vec<(usize, f32, f32)> = values
            .iter()
            .zip(&expected)
            .enumerate()
            .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
            .map(|(i, (a, b))| (i, *a, *b))
            .collect();
        assert!(
            differing.is_empty(),
            "{name}: {} values differ, first (index, ours, reference) {:?}",
            differing.len(),
            differing.first()
        );
    }
}

#[test]
fn model_input_matches_detectron2() {
    let (mut stored, mut batches, mut padded) = (0, 0, 0);
    for case in cases("model_input") {
        let photos: Vec<RgbImage> = case["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .map(|s| source(case, s))
            .collect();
        check_model_input(case, &photos);
        stored += case["sha256"].is_null() as usize;
        batches += (photos.len() > 1) as usize;
        // Padded: some image smaller than the batch's padded size.
        let shape = case["shape"].as_array().expect("shape");
        let padded_size = (
            shape[2].as_u64().expect("dim") as u32,
            shape[3].as_u64().expect("dim") as u32,
        );
        padded += case["sizes"]
            .as_array()
            .expect("sizes")
            .iter()
            .any(|s| pair(s) != padded_size) as usize;
    }
    // Exact values on small batches, two-image batches and padding are all among the cases.
    assert!(
        stored >= 3 && batches >= 2 && padded >= 3,
        "{stored} {batches} {padded}"
    );
}

#[test]
fn photos_through_the_whole_path_match() {
    for case in cases("pipeline") {
        let name = case["name"].as_str().expect("name");
        let photo = source(case, &case["source"]);
        let capped = capped_size(photo.width(), photo.height(), int(case, "resize"));
        let expected = (!case["capped"].is_null()).then(|| pair(&case["capped"]));
        assert_eq!(capped, expected, "{name}");
        let photo = match capped {
            Some((w, h)) => cv2_resize_linear(&photo, w, h),
            None => photo,
        };
        assert_eq!(
            sha256(photo.as_raw()),
            case["capped_sha256"].as_str().expect("capped_sha256"),
            "{name}"
        );
        check_model_input(case, &[photo]);
    }
}
