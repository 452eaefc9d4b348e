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
use crate::models::catvton::{
    self, preprocess, request, CatVton, Category, DiffusionInput, Noise, Resolution, SamplingParams,
};
use crate::models::{LoadedModel, ModelKind, TryOnBatch, MODEL_HEIGHT, MODEL_WIDTH};

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
    /// catvton: denoising steps per image.
    #[arg(long, default_value_t = catvton::DEFAULT_STEPS)]
    pub steps: usize,
    /// catvton: output size, `1024x768` or `512x384`.
    #[arg(long, default_value = "1024x768")]
    pub resolution: Resolution,
    /// catvton: the full-size networks with random weights instead of --model-dir, to time
    /// them without the downloads (the outputs are noise).
    #[arg(long)]
    pub random_weights: bool,
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
    /// Diffusion models: denoising steps per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Diffusion models: request-steps per second (`batch_size · steps / median_batch_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet_steps_per_s: Option<f64>,
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

/// Diffusion inputs: the fixture pairs (cycled) at the bench resolution, or random images
/// with a random torso-like mask.
fn diffusion_inputs(args: &ModelBenchArgs) -> Result<Vec<DiffusionInput>, BenchError> {
    let n = args.batch_size as usize;
    let size = args.resolution.size();
    let params = |i: usize| SamplingParams {
        steps: args.steps,
        guidance: catvton::DEFAULT_GUIDANCE,
        seed: i as u64,
    };
    match &args.data {
        None => (0..n)
            .map(|i| {
                let (h, w) = size;
                let image =
                    || Tensor::rand(0f32, 255f32, (h, w, 3), &Device::Cpu)?.to_dtype(DType::U8);
                let mask = Tensor::zeros((h, w, 1), DType::U8, &Device::Cpu)?.slice_assign(
                    &[h / 4..3 * h / 4, w / 4..3 * w / 4, 0..1],
                    &Tensor::full(255u8, (h / 2, w / 2, 1), &Device::Cpu)?,
                )?;
                Ok(DiffusionInput {
                    person: image()?,
                    cloth: image()?,
                    mask,
                    params: params(i),
                })
            })
            .collect(),
        Some(dir) => {
            let pairs = load_dataset(dir, false)?;
            if pairs.is_empty() {
                return Err(BenchError::Usage(format!("no pairs in {}", dir.display())));
            }
            (0..n)
                .map(|i| {
                    let p = &pairs[i % pairs.len()];
                    let decode = |bytes: &[u8], name: &str| {
                        imaging::decode(bytes, u64::MAX).map_err(|e| BenchError::Image {
                            path: dir.join(name),
                            reason: e.to_string(),
                        })
                    };
                    let person = decode(&p.person.bytes, &p.person.name)?;
                    let cloth = decode(&p.cloth.bytes, &p.cloth.name)?;
                    Ok(preprocess::prepare(
                        &person,
                        &cloth,
                        None,
                        Category::Upper,
                        size,
                        params(i),
                    )?)
                })
                .collect()
        }
    }
}

/// Samples every input together, step by step, and decodes them.
fn sample_all(model: &CatVton, inputs: &[DiffusionInput]) -> Result<(), BenchError> {
    let mut samples = inputs
        .iter()
        .map(|i| model.begin(i, Noise::seeded(i.params.seed)))
        .collect::<Result<Vec<_>, _>>()?;
    while samples.iter().any(|s| !s.is_done()) {
        let mut pending: Vec<&mut catvton::Sample> =
            samples.iter_mut().filter(|s| !s.is_done()).collect();
        model.step(&mut pending)?;
    }
    for s in &samples {
        model.finish(s)?;
    }
    Ok(())
}

/// Times the forward passes (diffusion models: whole samplings of a batch).
pub fn measure(args: &ModelBenchArgs) -> Result<ModelReport, BenchError> {
    let device = args.model.open_device()?;
    let model = if args.random_weights {
        if args.model.model != ModelKind::Catvton {
            return Err(BenchError::Usage(
                "--random-weights is for --model catvton".into(),
            ));
        }
        LoadedModel::Diffusion(Box::new(CatVton::random(args.model.dtype, &device)?))
    } else {
        args.model.load(&device)?
    };
    let name = model.name().to_string();
    let mut run: Box<dyn FnMut() -> Result<(), BenchError>> = match model {
        LoadedModel::Batch(model) => {
            let batch = inputs(args, &device)?;
            Box::new(move || {
                model.forward(&batch)?;
                Ok(())
            })
        }
        LoadedModel::Diffusion(model) => {
            request::check_steps(args.steps, args.model.max_steps as usize)
                .map_err(BenchError::Usage)?;
            let inputs = diffusion_inputs(args)?;
            Box::new(move || sample_all(&model, &inputs))
        }
    };
    let mut timed = || -> Result<f64, BenchError> {
        let start = Instant::now();
        run()?;
        // Kernels run asynchronously on a GPU: wait for them before reading the clock.
        device.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    };
    for _ in 0..args.warmup {
        timed()?;
    }
    let mut times = (0..args.iterations)
        .map(|_| timed())
        .collect::<Result<Vec<f64>, _>>()?;
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    let b = args.batch_size as f64;
    let diffusion = name == ModelKind::Catvton.name();
    Ok(ModelReport {
        model: name,
        device: crate::device::name(&device),
        batch_size: args.batch_size,
        iterations: args.iterations,
        warmup: args.warmup,
        inputs: match &args.data {
            Some(dir) => dir.display().to_string(),
            None if args.random_weights => "random, with random weights".to_string(),
            None => "random".to_string(),
        },
        median_batch_s: median,
        mean_batch_s: times.iter().sum::<f64>() / n as f64,
        min_batch_s: times[0],
        max_batch_s: times[n - 1],
        per_image_ms: median / b * 1e3,
        images_per_s: b / median,
        steps: diffusion.then_some(args.steps),
        unet_steps_per_s: diffusion.then(|| b * args.steps as f64 / median),
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
