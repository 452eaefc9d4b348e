//! Each model's forward pass on the CPU at batch 1, 4 and 8, on the sample pairs in
//! `assets/samples`. dmvton runs on the parity fixture's weights (`tests/fixtures/dmvton`),
//! and is skipped when they do not load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Device;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use virtualfit::models::{self, TryOnBatch, MODEL_NAMES};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn batch(n: usize) -> TryOnBatch {
    let samples = root().join("assets/samples");
    let pairs = virtualfit::bench::load_dataset(&samples, true).expect("sample pairs");
    // Every whole-batch model reads the same inputs; the default one's are prepared here.
    let family = models::family(models::registry::DEFAULT_MODEL).expect("the default model");
    let prepared: Vec<_> = (0..n)
        .map(|i| {
            let p = &pairs[i % pairs.len()];
            let parts = virtualfit::pipeline::ImageParts {
                person: p.person.bytes.clone(),
                cloth: p.cloth.bytes.clone(),
                garment_mask: p.mask.as_ref().map(|m| m.bytes.clone()),
                person_mask: None,
            };
            virtualfit::pipeline::prepare_now(family, &parts, Default::default(), u64::MAX)
                .expect("prepares")
        })
        .collect();
    let refs: Vec<_> = prepared.iter().collect();
    TryOnBatch::from_inputs(&refs, &Device::Cpu).expect("converts")
}

fn benches(c: &mut Criterion) {
    let model_dir = root().join("tests/fixtures/dmvton");
    let mut g = c.benchmark_group("models");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for &name in MODEL_NAMES.iter() {
        let model = match models::load(
            name,
            models::WeightSource::Dir(&model_dir),
            &Device::Cpu,
            candle_core::DType::F32,
        )
        .and_then(models::LoadedModel::into_batch)
        {
            Ok(m) => m,
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                continue;
            }
        };
        for n in [1usize, 4, 8] {
            let inputs = batch(n);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(name, n), &inputs, |b, inputs| {
                b.iter(|| model.forward(inputs).expect("forward"))
            });
        }
    }
    g.finish();
}

criterion_group!(model_benches, benches);
criterion_main!(model_benches);
