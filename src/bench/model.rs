//! `virtualfit bench model`: a model's forward time per batch, without HTTP, on random inputs
//! (or the pairs of a fixture folder).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{load_dataset, BenchError};
use crate::config::ModelArgs;
use crate::models::registry::{OptionFlags, REGISTRY};
use crate::models::{
    LoadRequest, LoadedModel, ModelFamily, ModelInput, RequestOptions, StepState, TryOnBatch,
    WeightSource,
};
use crate::ops::profile;
use crate::pipeline::{self, ImageParts};

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
    /// The model's request options, as the model declares them (e.g. its steps).
    #[command(flatten)]
    pub options: OptionFlags,
    /// The full-size networks with random weights instead of --model-source, to time them
    /// without the downloads (the outputs are noise), for the models that offer it.
    #[arg(long)]
    pub random_weights: bool,
    /// After the timed passes, as many again with the profile on: the time per stage of the
    /// model and per kind of op (CUDA events on a GPU), printed as a table (JSON: `profile`).
    #[arg(long)]
    pub profile: bool,
}

/// The `bench model` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub model: String,
    pub device: String,
    /// The networks' precision (`--dtype`).
    #[serde(default)]
    pub dtype: String,
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
    /// Step models: steps per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Step models: request-steps per second (`batch_size · steps / median_batch_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unet_steps_per_s: Option<f64>,
    /// Step models: where a batch's time goes, averaged over the timed passes (the device
    /// synchronised at each boundary), so that a run of few steps extrapolates to more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<StepPhases>,
    /// `--profile`: the time per stage and op kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<profile::Row>,
}

/// The parts of one sampling of a batch, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepPhases {
    /// Every request's `begin` (a diffusion model: the VAE encodings and the initial noise).
    pub begin_s: f64,
    /// One step of the whole batch (the mean over its steps).
    pub step_s: f64,
    /// Every request's `finish` (a diffusion model: the VAE decodings).
    pub finish_s: f64,
}

impl StepPhases {
    /// The time of one batch at `steps` steps.
    pub fn at_steps(&self, steps: usize) -> f64 {
        self.begin_s + self.step_s * steps as f64 + self.finish_s
    }
}

/// One batch of inputs as the model asks for them: the fixture pairs (cycled) through the
/// pipeline, or random images with a centred rectangle as each mask.
fn inputs(
    args: &ModelBenchArgs,
    family: &dyn ModelFamily,
    options: &RequestOptions,
) -> Result<Vec<ModelInput>, BenchError> {
    let n = args.batch_size as usize;
    let spec = family.input(options);
    match &args.data {
        None => {
            let (h, w) = (spec.frame.0 as usize, spec.frame.1 as usize);
            let image = || Tensor::rand(0f32, 255f32, (h, w, 3), &Device::Cpu)?.to_dtype(DType::U8);
            let mask = || {
                Tensor::zeros((h, w, 1), DType::U8, &Device::Cpu)?.slice_assign(
                    &[h / 4..3 * h / 4, w / 4..3 * w / 4, 0..1],
                    &Tensor::full(255u8, (h / 2, w / 2, 1), &Device::Cpu)?,
                )
            };
            (0..n)
                .map(|_| {
                    Ok(ModelInput {
                        person: image()?,
                        cloth: image()?,
                        garment_mask: spec.garment_mask.map(|_| mask()).transpose()?,
                        person_mask: spec.person_mask.map(|_| mask()).transpose()?,
                        content: None,
                        options: options.clone(),
                    })
                })
                .collect()
        }
        Some(dir) => {
            let pairs = load_dataset(dir, spec.garment_mask.is_some())?;
            if pairs.is_empty() {
                return Err(BenchError::Usage(format!("no pairs in {}", dir.display())));
            }
            (0..n)
                .map(|i| {
                    let p = &pairs[i % pairs.len()];
                    let parts = ImageParts {
                        person: p.person.bytes.clone(),
                        cloth: p.cloth.bytes.clone(),
                        garment_mask: p.mask.as_ref().map(|m| m.bytes.clone()),
                        person_mask: None,
                    };
                    pipeline::prepare_now(family, &parts, options.clone(), u64::MAX).map_err(|e| {
                        BenchError::Image {
                            path: dir.join("person").join(&p.person.name),
                            reason: e.to_string(),
                        }
                    })
                })
                .collect()
        }
    }
}

/// Samples every input together, step by step, and decodes them; answers the steps each took
/// and the time of each phase.
fn sample_all(
    model: &dyn crate::models::StepModel,
    inputs: &[ModelInput],
    device: &Device,
) -> Result<(usize, StepPhases), BenchError> {
    let start = Instant::now();
    let mut states = inputs
        .iter()
        .map(|i| model.begin(i))
        .collect::<Result<Vec<Box<dyn StepState>>, _>>()?;
    device.synchronize()?;
    let begun = start.elapsed().as_secs_f64();
    let steps = states.first().map_or(0, |s| s.progress().1);
    let mut calls = 0usize;
    while states.iter().any(|s| !s.is_done()) {
        let mut pending: Vec<&mut Box<dyn StepState>> =
            states.iter_mut().filter(|s| !s.is_done()).collect();
        model.step(&mut pending)?;
        calls += 1;
    }
    device.synchronize()?;
    let stepped = start.elapsed().as_secs_f64();
    for s in &states {
        model.finish(s.as_ref())?;
    }
    device.synchronize()?;
    let finished = start.elapsed().as_secs_f64();
    let phases = StepPhases {
        begin_s: begun,
        step_s: (stepped - begun) / calls.max(1) as f64,
        finish_s: finished - stepped,
    };
    Ok((steps, phases))
}

/// Times the forward passes (diffusion models: whole samplings of a batch).
pub fn measure(args: &ModelBenchArgs) -> Result<ModelReport, BenchError> {
    let device = args.model.open_device()?;
    let choice = args.model.choice();
    let family = choice.family()?;
    let model = if args.random_weights {
        let offered: Vec<&str> = REGISTRY
            .iter()
            .filter(|f| f.offers_random())
            .map(|f| f.name())
            .collect();
        let request = LoadRequest {
            source: WeightSource::None,
            device: &device,
            dtype: choice.dtype,
            flags: &choice.flags,
        };
        family.random(&request).ok_or_else(|| {
            BenchError::Usage(format!(
                "--random-weights is for --model {}",
                offered.join(", --model ")
            ))
        })??
    } else {
        choice.load(&device, &crate::hub::Reporter::Log)?
    };
    let model = crate::models::buckets::with_cuda_graphs(
        model,
        args.model.cuda_graphs,
        args.batch_size as usize,
    )?;
    let options = args
        .options
        .options(family, &args.model.option_limits())
        .map_err(BenchError::Usage)?;
    let inputs = inputs(args, family, &options)?;
    let name = model.name().to_string();
    let steps = std::rc::Rc::new(std::cell::Cell::new(None));
    let phases = std::rc::Rc::new(std::cell::Cell::new(None::<StepPhases>));
    let mut run: Box<dyn FnMut() -> Result<(), BenchError>> = match model {
        LoadedModel::Batch(model) => {
            let refs: Vec<&ModelInput> = inputs.iter().collect();
            let batch = TryOnBatch::from_inputs(&refs, &device)?;
            model.prepare_batches(batch.len())?;
            Box::new(move || {
                model.forward(&batch)?;
                Ok(())
            })
        }
        LoadedModel::Steps(model) => {
            let (steps, phases, device) = (steps.clone(), phases.clone(), device.clone());
            Box::new(move || {
                let (n, p) = sample_all(model.as_ref(), &inputs, &device)?;
                steps.set(Some(n));
                phases.set(Some(p));
                Ok(())
            })
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
    let mut phase_sum = StepPhases::default();
    let mut times = (0..args.iterations)
        .map(|_| {
            let t = timed()?;
            if let Some(p) = phases.get() {
                phase_sum.begin_s += p.begin_s;
                phase_sum.step_s += p.step_s;
                phase_sum.finish_s += p.finish_s;
            }
            Ok(t)
        })
        .collect::<Result<Vec<f64>, BenchError>>()?;
    let profile = if args.profile {
        profile::start();
        let start = Instant::now();
        let ran = (0..args.iterations).try_for_each(|_| run());
        device.synchronize()?;
        let total = start.elapsed().as_secs_f64();
        let kinds = profile::finish();
        ran?;
        profile::rows(&kinds, args.iterations as usize, total)
    } else {
        Vec::new()
    };
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    let b = args.batch_size as f64;
    let steps = steps.get();
    Ok(ModelReport {
        model: name,
        device: crate::device::name(&device),
        dtype: choice.dtype.as_str().to_string(),
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
        steps,
        unet_steps_per_s: steps.map(|s| b * s as f64 / median),
        profile,
        phases: phases.get().map(|_| {
            let runs = args.iterations as f64;
            StepPhases {
                begin_s: phase_sum.begin_s / runs,
                step_s: phase_sum.step_s / runs,
                finish_s: phase_sum.finish_s / runs,
            }
        }),
    })
}

/// `virtualfit bench model`: prints the result.
pub fn run(args: &ModelBenchArgs) -> Result<(), BenchError> {
    let r = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} on {} in {}, batch {}: median {:.2} ms per batch, {:.2} ms per image, \
             {:.1} images/s (min {:.2} ms, max {:.2} ms, {} iterations)",
            r.model,
            r.device,
            r.dtype,
            r.batch_size,
            r.median_batch_s * 1e3,
            r.per_image_ms,
            r.images_per_s,
            r.min_batch_s * 1e3,
            r.max_batch_s * 1e3,
            r.iterations
        );
        if !r.profile.is_empty() {
            println!();
            profile::print(&r.profile);
        }
    }
    Ok(())
}
