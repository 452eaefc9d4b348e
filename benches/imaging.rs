//! Request preparation and answer encoding: decode + fit + normalise for a 192×256 JPEG (the
//! fixtures' size) and a 1024×768 one (a phone-sized upload), the garment mask, catvton's drawn
//! repaint mask at 768×1024, DensePose's input (Pillow's bilinear resize of a 384×512 photo to
//! detectron2's 800×1067, and the whole preparation), and JPEG encode.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::RgbImage;
use virtualfit::imaging::{self, OutputFormat};
use virtualfit::models::automasker::densepose::preprocess::{
    model_input, pil_resize_bilinear, InputFormat,
};
use virtualfit::models::catvton::mask::{auto_mask, Category};
use virtualfit::models::catvton::preprocess::resize_and_crop;
use virtualfit::ops::convert::{to_model_input, InputKind};

const MAX_PIXELS: u64 = 36_000_000;

fn demo(rel: &str) -> Vec<u8> {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/samples")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Decode, fit to 192×256, and normalise to the model's `1×3×H×W` f32 input in [-1, 1].
fn decode_fit_normalise(bytes: &[u8]) -> candle_core::Tensor {
    let img = imaging::decode(bytes, MAX_PIXELS).expect("decodes");
    let (fitted, _) = imaging::fit(&img);
    let t = imaging::rgb_to_tensor(fitted)
        .and_then(|t| t.unsqueeze(0))
        .expect("tensor");
    to_model_input(&t, InputKind::Image).expect("normalises")
}

fn benches(c: &mut Criterion) {
    let small = demo("person/000066_0.jpg");
    let person: RgbImage = imaging::decode(&small, MAX_PIXELS).expect("decodes");
    let big_image =
        image::imageops::resize(&person, 1024, 768, image::imageops::FilterType::Triangle);
    let big = imaging::encode(&big_image, OutputFormat::Jpeg, 90).expect("encodes");
    let cloth_bytes = demo("cloth/017575_1.jpg");
    let mask_bytes = demo("cloth-mask/017575_1.jpg");
    let cloth = imaging::decode(&cloth_bytes, MAX_PIXELS).expect("decodes");
    let (cloth_fit, _) = imaging::fit(&cloth);

    let mut g = c.benchmark_group("imaging");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    g.bench_function("decode_fit_normalise/192x256", |b| {
        b.iter(|| decode_fit_normalise(black_box(&small)))
    });
    g.bench_function("decode_fit_normalise/1024x768", |b| {
        b.iter(|| decode_fit_normalise(black_box(&big)))
    });
    g.bench_function("cloth_mask/192x256", |b| {
        b.iter(|| imaging::cloth_mask(black_box(&cloth_fit)))
    });
    // A pair through the pipeline for the default (whole-batch) model, as the server prepares it.
    let family = virtualfit::models::family(virtualfit::models::registry::DEFAULT_MODEL)
        .expect("the default model");
    let parts = |mask: Option<&Vec<u8>>| virtualfit::pipeline::ImageParts {
        person: small.clone().into(),
        cloth: cloth_bytes.clone().into(),
        garment_mask: mask.map(|m| m.clone().into()),
        person_mask: None,
    };
    let (with_mask, without_mask) = (parts(Some(&mask_bytes)), parts(None));
    g.bench_function("prepare_pair/with_mask", |b| {
        b.iter(|| {
            virtualfit::pipeline::prepare_now(
                family,
                black_box(&with_mask),
                Default::default(),
                MAX_PIXELS,
            )
            .expect("prepares")
        })
    });
    g.bench_function("prepare_pair/computed_mask", |b| {
        b.iter(|| {
            virtualfit::pipeline::prepare_now(
                family,
                black_box(&without_mask),
                Default::default(),
                MAX_PIXELS,
            )
            .expect("prepares")
        })
    });
    // catvton's drawn repaint mask on a sample photo fitted to the full 768×1024.
    let catvton_person = resize_and_crop(&person, 768, 1024);
    for category in [Category::Upper, Category::Lower, Category::Overall] {
        g.bench_function(
            format!("catvton_auto_mask/768x1024/{}", category.label()),
            |b| b.iter(|| auto_mask(black_box(&catvton_person), category)),
        );
    }
    let densepose_photo = resize_and_crop(&person, 384, 512);
    g.bench_function("densepose_pil_resize/384x512_to_800x1067", |b| {
        b.iter(|| pil_resize_bilinear(black_box(&densepose_photo), 800, 1067))
    });
    let format = InputFormat::default();
    g.bench_function("densepose_model_input/384x512", |b| {
        b.iter(|| {
            model_input(
                std::slice::from_ref(black_box(&densepose_photo)),
                &format,
                &candle_core::Device::Cpu,
            )
            .expect("prepares")
        })
    });
    g.bench_function("encode_jpeg_q90/192x256", |b| {
        b.iter(|| imaging::encode(black_box(&person), OutputFormat::Jpeg, 90).expect("encodes"))
    });
    g.finish();
}

criterion_group!(imaging_benches, benches);
criterion_main!(imaging_benches);
