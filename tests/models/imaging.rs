//! Imaging against the real sample photos (assets/samples): garment masks, decoding and limits.

use std::path::{Path, PathBuf};

use virtualfit::imaging::{self, ImageError};

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples")
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn computed_garment_masks_match_the_dataset_masks() {
    let mut ious = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(demo().join("cloth"))
        .expect("cloth dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names.len(), 6);
    for name in names {
        let cloth =
            imaging::decode(&read(demo().join("cloth").join(&name)), u64::MAX).expect("cloth");
        let truth = imaging::decode_mask(&read(demo().join("cloth-mask").join(&name)), u64::MAX)
            .expect("mask");
        let computed = imaging::cloth_mask(&cloth);
        assert_eq!(computed.dimensions(), truth.dimensions());
        let (mut inter, mut union) = (0u64, 0u64);
        for (a, b) in computed.pixels().zip(truth.pixels()) {
            let (a, b) = (a[0] >= 128, b[0] >= 128);
            inter += u64::from(a && b);
            union += u64::from(a || b);
        }
        let iou = inter as f64 / union as f64;
        println!("{}: IoU {iou:.4}", name.to_string_lossy());
        ious.push(iou);
    }
    let mean = ious.iter().sum::<f64>() / ious.len() as f64;
    println!("mean garment-mask IoU over {} masks: {mean:.4}", ious.len());
    assert!(mean >= 0.95, "mean IoU {mean:.4} < 0.95");
}

#[test]
fn jpeg_png_and_webp_decode_to_the_same_pixels() {
    let jpeg = read(demo().join("person/000066_0.jpg"));
    let img = imaging::decode(&jpeg, u64::MAX).expect("jpeg");
    assert_eq!(img.dimensions(), (192, 256));
    let png = imaging::encode(&img, imaging::OutputFormat::Png, 90).expect("png");
    assert_eq!(imaging::decode(&png, u64::MAX).expect("png decodes"), img);
    let mut webp = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone())
        .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut webp))
        .expect("webp");
    assert_eq!(imaging::decode(&webp, u64::MAX).expect("webp decodes"), img);
}

/// A JPEG with an EXIF orientation tag of 6 (rotate 90° clockwise to display).
fn jpeg_with_orientation(img: &image::RgbImage, orientation: u16) -> Vec<u8> {
    let plain = imaging::encode(img, imaging::OutputFormat::Jpeg, 95).expect("jpeg");
    // TIFF header (big endian) with one IFD entry: Orientation (0x0112), SHORT, 1 value.
    let mut tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    let img = image::RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            image::Rgb([250, 0, 0])
        } else {
            image::Rgb([0, 0, 250])
        }
    });
    let decoded = imaging::decode(&jpeg_with_orientation(&img, 6), u64::MAX).expect("decodes");
    assert_eq!(decoded.dimensions(), (20, 40), "rotated to portrait");
    // Rotating 90° clockwise puts the left (red) half on top.
    let top = decoded.get_pixel(10, 5);
    let bottom = decoded.get_pixel(10, 35);
    assert!(top[0] > 200 && top[2] < 60, "top is red: {top:?}");
    assert!(
        bottom[2] > 200 && bottom[0] < 60,
        "bottom is blue: {bottom:?}"
    );
}

#[test]
fn bad_bytes_are_refused_with_the_right_kind() {
    let jpeg = read(demo().join("person/000066_0.jpg"));
    assert!(matches!(
        imaging::decode(&jpeg[..jpeg.len() / 3], u64::MAX),
        Err(ImageError::Invalid(_))
    ));
    assert!(matches!(
        imaging::decode(b"definitely not an image", u64::MAX),
        Err(ImageError::Invalid(_))
    ));
    assert!(matches!(
        imaging::decode(b"GIF89a\x10\x00\x10\x00\x00\x00\x00", u64::MAX),
        Err(ImageError::Unsupported(_))
    ));
    match imaging::decode(&jpeg, 1000) {
        Err(ImageError::Invalid(m)) => assert!(m.contains("over the limit"), "{m}"),
        other => panic!("expected the pixel limit, got {other:?}"),
    }
}
