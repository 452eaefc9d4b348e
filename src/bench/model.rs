//! `virtualfit bench model`: a model's forward time per batch, without HTTP, on random inputs
//! (or the pairs of a fixture folder).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{load_dataset, BenchError};
use crate::config::ModelArgs;
use crate::imaging;
use crate::models::{TryOnBatch, MODEL_HEIGHT, MODEL_WIDTH};

/// `virtualfit bench model`.
#[derive(Debug, Clone, Args)]
pub struct ModelBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pairs per forward pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub batch_size: u64,
    /// Timed forward passes.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: u64,
    /// Untimed forward passes first.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Use the pairs of this folder laid out like assets/samples (cycled) instead of random inputs.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The `bench model` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub model: String,
    pub device: String,
    pub batch_size: u64,
    pub iterations: u64,
    pub warmup: u64,
    /// `random` or the fixture folder.
    pub inputs: String,
    pub median_batch_s: f64,
    pub mean_batch_s: f64,
    pub min_batch_s: f64,
    pub max_batch_s: f64,
    /// `median_batch_s / batch_size`, in ms.
    pub per_image_ms: f64,
    /// `batch_size / median_batch_s`.
    pub images_per_s: f64,
}

fn inputs(args: &ModelBenchArgs, device: &Device) -> Result<TryOnBatch, BenchError> {
    let n = args.batch_size as usize;
    match &args.data {
        None => {
            let image = || Tensor::rand(-1f32, 1f32, (n, 3, MODEL_HEIGHT, MODEL_WIDTH), device);
            let mask = Tensor::rand(0f32, 1f32, (n, 1, MODEL_HEIGHT, MODEL_WIDTH), device)?
                .ge(0.5)?
                .to_dtype(DType::F32)?;
            Ok(TryOnBatch {
                person: image()?,
                cloth: image()?,
                cloth_mask: mask,
            })
        }
        Some(dir) => {
            let pairs = load_dataset(dir, true)?;
            let prepared = (0..n)
                .map(|i| {
                    let p = &pairs[i % pairs.len()];
                    imaging::prepare_pair(
                        &p.person.bytes,
                        &p.cloth.bytes,
                        p.mask.as_ref().map(|m| &m.bytes[..]),
                        u64::MAX,
                    )
                    .map_err(|e| BenchError::Image {
                        path: dir.join("person").join(&p.person.name),
                        reason: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&imaging::PreparedPair> = prepared.iter().collect();
            Ok(TryOnBatch::from_pairs(&refs, device)?)
        }
    }
}

/// Times the forward passes.
pub fn measure(args: &ModelBenchArgs) -> Result<ModelReport, BenchError> {
    let device = args.model.open_device()?;
    let model = args.model.load(&device)?;
    let batch = inputs(args, &device)?;
    let run = || -> Result<f64, BenchError> {
        let start = Instant::now();
        let out = model.forward(&batch)?;
        // Kernels run asynchronously on a GPU: wait for them before reading the clock.
        device.synchronize()?;
        drop(out);
        Ok(start.elapsed().as_secs_f64())
    };
    for _ in 0..args.warmup {
        run()?;
    }
    let mut times = (0..args.iterations)
        .map(|_| run())
        .collect::<Result<Vec<f64>, _>>()?;
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    let b = args.batch_size as f64;
    Ok(ModelReport {
        model: model.name().to_string(),
        device: crate::device::name(&device),
        batch_size: args.batch_size,
        iterations: args.iterations,
        warmup: args.warmup,
        inputs: args
            .data
            .as_ref()
            .map_or("random".to_string(), |d| d.display().to_string()),
        median_batch_s: median,
        mean_batch_s: times.iter().sum::<f64>() / n as f64,
        min_batch_s: times[0],
        max_batch_s: times[n - 1],
        per_image_ms: median / b * 1e3,
        images_per_s: b / median,
    })
}

/// `virtualfit bench model`: prints the result.
pub fn run(args: &ModelBenchArgs) -> Result<(), BenchError> {
    let r = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} on {}, batch {}: median {:.2} ms per batch, {:.2} ms per image, {:.1} images/s \
             (min {:.2} ms, max {:.2} ms, {} iterations)",
            r.model,
            r.device,
            r.batch_size,
            r.median_batch_s * 1e3,
            r.per_image_ms,
            r.images_per_s,
            r.min_batch_s * 1e3,
            r.max_batch_s * 1e3,
            r.iterations
        );
    }
    Ok(())
}
