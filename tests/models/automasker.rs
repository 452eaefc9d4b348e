//! The mask combination against the official `AutoMasker.cloth_agnostic_mask`: every case of
//! `tests/fixtures/automasker/masks.safetensors.gz` (written by
//! `scripts/fixtures/automasker.py`), all five parts, must come out identical, pixel for pixel.

use std::path::Path;

use safetensors::SafeTensors;
use serde_json::Value;
use virtualfit::models::automasker::{cloth_agnostic_mask, LabelMap, MaskPart};

fn fixture() -> Vec<u8> {
    crate::common::gunzip(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/automasker/masks.safetensors.gz"),
    )
}

fn label_map(tensors: &SafeTensors, name: &str) -> LabelMap {
    let view = tensors.tensor(name).expect("tensor");
    let shape = view.shape();
    assert_eq!(shape.len(), 2, "{name}");
    LabelMap {
        width: shape[1],
        height: shape[0],
        labels: view.data().to_vec(),
    }
}

#[test]
fn masks_equal_the_official_combination_pixel_for_pixel() {
    let bytes = fixture();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).expect("header");
    let metadata = metadata.metadata().clone().expect("metadata");
    let cases: Vec<Value> = serde_json::from_str(&metadata["cases"]).expect("cases");
    let tensors = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let densepose = label_map(&tensors, &format!("{name}.densepose"));
        let lip = label_map(&tensors, &format!("{name}.lip"));
        let atr = label_map(&tensors, &format!("{name}.atr"));
        for part in MaskPart::ALL {
            let expected = label_map(&tensors, &format!("{name}.{}", part.as_str()));
            let mask = cloth_agnostic_mask(&densepose, &lip, &atr, part).expect("mask");
            assert_eq!(
                (mask.width() as usize, mask.height() as usize),
                (expected.width, expected.height),
                "{name} {part:?}"
            );
            let differing = mask
                .as_raw()
                .iter()
                .zip(&expected.labels)
                .filter(|(a, b)| a != b)
                .count();
            let repainted = expected.labels.iter().filter(|&&v| v != 0).count();
            println!(
                "{name} {}: {repainted} repainted pixels, {differing} differ",
                part.as_str()
            );
            if differing > 0 {
                failures.push(format!(
                    "{name} {}: {differing} pixels differ",
                    part.as_str()
                ));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, cases.len() * 5);
    assert!(cases.len() >= 9, "{} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
