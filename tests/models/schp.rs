//! SCHP parity with the official code (fixtures from scripts/fixtures/schp.py, which runs
//! Zheng-Chong/CatVTON's `model/SCHP` unmodified and OpenCV 4.10 from PyPI):
//! - OpenCV's `warpAffine` (linear, constant border) on 8-bit images, bit for bit, and on float
//!   images; `getAffineTransform` through SCHP's affine;
//! - the official checkpoint format: a `.pth` zip with `module.` keys and the official renames;
//! - both parsers, full-size, with the seeded weights both sides compute from one formula, on
//!   two sample photos and a landscape crop: logits within 1e-4 relative L2, label maps on
//!   ≥ 99.9 % of pixels (differences reported with their top-two margin).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use virtualfit::imaging::warp_affine::{warp_affine_f32, warp_affine_u8, AffineMatrix};
use virtualfit::models::automasker::schp::{preprocess, weights, Schp, SchpConfig, SchpParsers};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schp")
}

fn load_gz(name: &str) -> HashMap<String, Tensor> {
    crate::common::gz_tensors(&fixture_dir().join(name))
}

fn vec_f32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn vec_u8(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn matrix(t: &Tensor) -> AffineMatrix {
    let v: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.try_into().unwrap()
}

fn dims2(t: &Tensor) -> (usize, usize) {
    let v: Vec<i64> = t.to_vec1().unwrap();
    (v[0] as usize, v[1] as usize)
}

#[test]
fn warp_affine_matches_opencv_bit_for_bit_on_8_bit_images() {
    let fx = load_gz("warp.safetensors.gz");
    let mut cases = 0;
    for k in 0.. {
        let Some(m) = fx.get(&format!("warp.{k}.matrix")) else {
            break;
        };
        let m = matrix(m);
        let (dw, dh) = dims2(&fx[&format!("warp.{k}.dsize")]);
        for channels in [1usize, 3] {
            let key = |s: &str| format!("warp.{k}.u8c{channels}.{s}");
            let src_t = &fx[&key("src")];
            let (sh, sw, _) = src_t.dims3().unwrap();
            let ours = warp_affine_u8(
                &vec_u8(src_t),
                sw,
                sh,
                channels,
                &m,
                dw,
                dh,
                &vec_u8(&fx[&key("border")]),
            );
            let want = vec_u8(&fx[&key("dst")]);
            let wrong: Vec<usize> = (0..want.len()).filter(|&i| ours[i] != want[i]).collect();
            assert!(
                wrong.is_empty(),
                "case {k} ({channels} channels, {sw}×{sh} → {dw}×{dh}, {m:?}): {} of {} values \
                 differ, first at {} ({} vs OpenCV {})",
                wrong.len(),
                want.len(),
                wrong[0],
                ours[wrong[0]],
                want[wrong[0]]
            );
            cases += 1;
        }
    }
    assert_eq!(cases, 30);
}

#[test]
fn warp_affine_matches_opencv_on_float_images() {
    let fx = load_gz("warp.safetensors.gz");
    let mut worst = 0f32;
    for k in 0..15 {
        let m = matrix(&fx[&format!("warp.{k}.matrix")]);
        let (dw, dh) = dims2(&fx[&format!("warp.{k}.dsize")]);
        let src_t = &fx[&format!("warp.{k}.f32.src")];
        let (sh, sw) = src_t.dims2().unwrap();
        let ours = warp_affine_f32(&vec_f32(src_t), sw, sh, 1, &m, dw, dh, 0.0);
        let want = vec_f32(&fx[&format!("warp.{k}.f32.dst")]);
        for (a, b) in ours.iter().zip(&want) {
            worst = worst.max((a - b).abs());
        }
    }
    // Same 1/32 positions and weights; only the blend's float rounding may differ.
    assert!(worst <= 1e-5, "largest difference {worst}");
}

#[test]
fn schp_affine_matrices_match_opencv() {
    let fx = load_gz("warp.safetensors.gz");
    let mut checked = 0;
    for side in [512usize, 473] {
        for j in 0.. {
            let Some(size) = fx.get(&format!("affine.{side}.{j}.size")) else {
                break;
            };
            let (w, h) = dims2(size);
            let (center, scale) = preprocess::center_scale(w, h, 1.0);
            for inv in [0, 1] {
                let want = matrix(&fx[&format!("affine.{side}.{j}.{inv}")]);
                let ours = preprocess::affine(center, scale, side, side, inv == 1);
                if w > 1 || h > 1 {
                    assert_eq!(ours, want, "{w}×{h} into {side}, inverse {inv}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 32);
}

#[test]
fn official_checkpoint_keys_are_read_with_the_renames() {
    let tensors =
        weights::read_checkpoint(&fixture_dir().join("subset.pth"), &Device::Cpu).unwrap();
    let mut names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.weight",
            "conv1.weight",
            "decoder.conv3.3.weight",
            "decoder.conv3.4.bias",
            "decoder.conv3.4.running_mean",
            "decoder.conv3.4.running_var",
            "decoder.conv3.4.weight",
            "fushion.4.bias",
            "fushion.4.weight",
        ]
    );
    let formula = weights::FormulaWeights::new("atr");
    let full_dims: HashMap<&str, Vec<usize>> = [
        ("conv1.weight", vec![64, 3, 3, 3]),
        ("decoder.conv3.3.weight", vec![256, 256, 1, 1]),
        ("fushion.4.weight", vec![18, 256, 1, 1]),
    ]
    .into_iter()
    .collect();
    for (name, t) in &tensors {
        let values = vec_f32(t);
        let dims = full_dims
            .get(name.as_str())
            .cloned()
            .unwrap_or(t.dims().to_vec());
        let expected = formula.values(name, &dims).unwrap();
        // The decoder's 256×256 convolution is stored cut to its first 16 output channels.
        assert_eq!(values, expected[..values.len()], "{name}");
    }
    assert_eq!(tensors["decoder.conv3.3.weight"].dims(), &[16, 256, 1, 1]);
}

#[test]
fn a_folder_without_checkpoints_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = SchpParsers::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exp-schp-201908301523-atr.pth"), "{err}");
    assert!(err.contains("file not found"), "{err}");
    // A file that is not a checkpoint is refused too.
    std::fs::write(dir.path().join(SchpConfig::ATR.file_name), b"not a zip").unwrap();
    let err = SchpParsers::load(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read PyTorch checkpoint"), "{err}");
}

/// The largest minus the second largest of one pixel's logits.
fn margin(px: &[f32]) -> f32 {
    let mut sorted = px.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted[0] - sorted[1]
}

#[test]
fn both_parsers_match_the_official_schp() {
    let fx = load_gz("parity.safetensors.gz");
    let photos: Vec<image::RgbImage> = (0..3)
        .map(|i| {
            image::open(fixture_dir().join(format!("photo-{i}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    let parsers = SchpParsers::random(0, &Device::Cpu).unwrap();
    let variants: [&Schp; 2] = [&parsers.atr, &parsers.lip];
    for schp in variants {
        let config = *schp.config();
        let s = config.input_size;
        let classes = config.num_classes();
        let started = std::time::Instant::now();
        let outputs = schp.run(&photos).unwrap();
        eprintln!(
            "{}: {} photos in {:.1} s",
            config.name,
            photos.len(),
            started.elapsed().as_secs_f64()
        );
        for (i, (photo, out)) in photos.iter().zip(&outputs).enumerate() {
            let key = |k: &str| format!("{}.{i}.{k}", config.name);
            let (w, h) = (photo.width() as usize, photo.height() as usize);
            // The warp into the input, exactly.
            let (center, scale) = preprocess::center_scale(w, h, 1.0);
            assert_eq!(
                preprocess::affine(center, scale, s, s, false),
                matrix(&fx[&key("trans")])
            );
            assert_eq!(
                preprocess::affine(center, scale, s, s, true),
                matrix(&fx[&key("inv")])
            );
            let warped = preprocess::warp_to_input(photo, s, s);
            assert_eq!(
                Sha256::digest(&warped).as_slice(),
                vec_u8(&fx[&key("warped_sha256")]),
                "{}: warped input",
                key("")
            );
            // The logits at the input size: every 16th row and column, and each channel's sum
            // and sum of squares over all of them.
            let sub: Vec<f32> = (0..s)
                .step_by(16)
                .flat_map(|y| (0..s).step_by(16).map(move |x| (y, x)))
                .flat_map(|(y, x)| out.input_logits[(y * s + x) * classes..][..classes].to_vec())
                .collect();
            let err = crate::common::relative_l2(&sub, &vec_f32(&fx[&key("upsampled_sub")]));
            eprintln!("{}: input logits relative L2 {err:.2e}", key(""));
            assert!(err < 1e-4, "{}: input logits relative L2 {err}", key(""));
            let sums = vec_f32(&fx[&key("upsampled_sum")]);
            let sumsq = vec_f32(&fx[&key("upsampled_sumsq")]);
            for c in 0..classes {
                let channel = out.input_logits.iter().skip(c).step_by(classes);
                let ours_sq: f64 = channel.clone().map(|&v| f64::from(v).powi(2)).sum();
                let ours_sum: f64 = channel.map(|&v| f64::from(v)).sum();
                let rms = (f64::from(sumsq[c]) / (s * s) as f64).sqrt();
                assert!(
                    (ours_sum - f64::from(sums[c])).abs() <= 1e-4 * rms * (s * s) as f64,
                    "{} channel {c}: sum {ours_sum} vs {}",
                    key(""),
                    sums[c]
                );
                assert!(
                    (ours_sq / f64::from(sumsq[c]) - 1.0).abs() <= 2e-4,
                    "{} channel {c}: sum of squares {ours_sq} vs {}",
                    key(""),
                    sumsq[c]
                );
            }
            // The logits on the photo (transform_logits): every 16th row and column.
            let sub: Vec<f32> = (0..h)
                .step_by(16)
                .flat_map(|y| (0..w).step_by(16).map(move |x| (y, x)))
                .flat_map(|(y, x)| out.photo_logits[(y * w + x) * classes..][..classes].to_vec())
                .collect();
            let err = crate::common::relative_l2(&sub, &vec_f32(&fx[&key("photo_logits_sub")]));
            assert!(err < 1e-4, "{}: photo logits relative L2 {err}", key(""));
            // The labels: differences only where the top two logits (nearly) tie.
            let want = vec_u8(&fx[&key("labels")]);
            assert_eq!((out.labels.width, out.labels.height), (w, h));
            let differ: Vec<usize> = (0..want.len())
                .filter(|&p| out.labels.labels[p] != want[p])
                .collect();
            for &p in &differ {
                eprintln!(
                    "{}: label differs at ({}, {}): ours {}, official {}, top-two margin {:.2e}",
                    key(""),
                    p % w,
                    p / w,
                    out.labels.labels[p],
                    want[p],
                    margin(&out.photo_logits[p * classes..][..classes])
                );
            }
            let agree = 1.0 - differ.len() as f64 / want.len() as f64;
            assert!(
                agree >= 0.999,
                "{}: labels agree on {:.4} % of pixels",
                key(""),
                agree * 100.0
            );
        }
    }
}

#[test]
fn tiny_and_thin_photos_warp_both_ways_without_panicking() {
    for (w, h) in [(1u32, 1u32), (1, 40), (40, 1), (2, 2)] {
        let photo = image::RgbImage::from_pixel(w, h, image::Rgb([200, 100, 50]));
        let warped = preprocess::warp_to_input(&photo, 473, 473);
        assert_eq!(warped.len(), 473 * 473 * 3);
        assert!(
            warped.iter().any(|&v| v != 0),
            "{w}×{h}: the photo is in the input"
        );
        let logits: Vec<f32> = (0..473 * 473 * 2).map(|i| (i % 7) as f32).collect();
        let back = preprocess::transform_logits(&logits, 2, 473, 473, w as usize, h as usize);
        assert_eq!(back.len(), (w * h * 2) as usize);
        let labels = preprocess::argmax(&back, 2, w as usize, h as usize);
        assert_eq!(labels.labels.len(), (w * h) as usize);
    }
}
