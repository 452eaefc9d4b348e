//! CatVTON (Zheng-Chong/CatVTON): diffusion try-on with a Stable Diffusion 1.5 inpainting UNet,
//! in which the masked person and the garment are stacked in one latent image, top and
//! bottom. It has no text or image encoder; only the UNet's self-attention is trained.
//!
//! A request is sampled step by step ([`CatVton::begin`], [`CatVton::step`],
//! [`CatVton::finish`]) so that the batcher can add and remove requests between UNet calls.
//! Each request draws its noise from its own seed on the CPU and keeps its own sampler state
//! (DDIM, DPM-Solver++ 2M or UniPC, see [`scheduler`]) and its own DeepCache features (see
//! [`deep_cache`]), so its image does not depend on what it was batched with.

pub mod attention;
pub mod blocks;
pub mod config;
pub mod deep_cache;
pub mod family;
pub mod fused_attention;
pub mod layers;
pub mod mask;
pub mod preprocess;
pub mod resnet;
pub mod scheduler;
pub mod sources;
pub mod stage_bench;
pub mod transformer;
pub mod unet;
pub mod vae;
pub mod weights;

use std::collections::VecDeque;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::Distribution;

use crate::models::ModelError;
use deep_cache::StepCache;
pub use deep_cache::{DeepCache, UnetCall};
pub use family::{CatvtonOptions, Family};
pub use mask::Category;
use scheduler::SolverState;
pub use scheduler::{Ddim, DpmSolver, SchedulerKind, UniPc};
pub use unet::UNet;
pub use vae::AutoencoderKl;

/// The output sizes CatVTON was trained for (`height × width`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Resolution {
    #[serde(rename = "1024x768")]
    Full,
    #[serde(rename = "512x384")]
    Half,
}

impl Resolution {
    /// `(height, width)` in pixels.
    pub fn size(self) -> (usize, usize) {
        match self {
            Resolution::Full => (1024, 768),
            Resolution::Half => (512, 384),
        }
    }

    /// As requests spell it.
    pub fn label(self) -> &'static str {
        match self {
            Resolution::Full => "1024x768",
            Resolution::Half => "512x384",
        }
    }
}

impl std::str::FromStr for Resolution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1024x768" => Ok(Resolution::Full),
            "512x384" => Ok(Resolution::Half),
            _ => Err("the resolution is `1024x768` or `512x384`".into()),
        }
    }
}

/// How a request is sampled.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// Sampling steps (UNet calls, each of one or two rows).
    pub steps: usize,
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// Classifier-free guidance scale; at 1 or below no unconditional pass is made.
    pub guidance: f64,
    /// Seeds the request's noise.
    pub seed: u64,
    /// DeepCache ([`DeepCache::OFF`]: every step a full UNet pass).
    pub cache: DeepCache,
}

/// The reference's defaults: 50 steps, guidance 2.5.
pub const DEFAULT_STEPS: usize = 50;
pub const DEFAULT_GUIDANCE: f64 = 2.5;

/// One request's inputs, already at the output size, as 8-bit CPU tensors.
#[derive(Debug, Clone)]
pub struct DiffusionInput {
    /// The person photo, `H×W×3`.
    pub person: Tensor,
    /// The garment photo, `H×W×3`.
    pub cloth: Tensor,
    /// `H×W×1`, white where the person is repainted.
    pub mask: Tensor,
    pub params: SamplingParams,
}

impl DiffusionInput {
    /// `(height, width)` of the images.
    pub fn size(&self) -> (usize, usize) {
        let d = self.person.dims();
        (
            d.first().copied().unwrap_or(0),
            d.get(1).copied().unwrap_or(0),
        )
    }

    /// UNet rows per step: two with guidance (unconditional and conditional), one without.
    pub fn rows(&self) -> usize {
        rows_for(self.params.guidance)
    }
}

fn rows_for(guidance: f64) -> usize {
    if guidance > 1.0 {
        2
    } else {
        1
    }
}

/// Where a request's random draws come from, in the reference's order: the VAE posterior
/// sample of the masked person, then of the garment, the initial latents, then one variance
/// noise per DDIM step (the other samplers draw none).
#[derive(Debug)]
pub enum Noise {
    /// Standard normal draws from a seeded generator on the CPU.
    Seeded(Box<rand::rngs::StdRng>),
    /// Given tensors, in draw order (to replay a recorded run).
    Given(VecDeque<Tensor>),
}

impl Noise {
    pub fn seeded(seed: u64) -> Self {
        Noise::Seeded(Box::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }

    fn draw(&mut self, dims: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let t = match self {
            Noise::Seeded(rng) => {
                let n: usize = dims.iter().product();
                let values: Vec<f32> = rand_distr::StandardNormal
                    .sample_iter(&mut **rng)
                    .take(n)
                    .collect();
                Tensor::from_vec(values, dims, &Device::Cpu)?
            }
            Noise::Given(queue) => {
                let t = queue
                    .pop_front()
                    .ok_or_else(|| candle_core::Error::Msg("the given noise ran out".into()))?;
                if t.dims() != dims {
                    candle_core::bail!("given noise {:?}, needed {dims:?}", t.dims());
                }
                t
            }
        };
        t.to_dtype(DType::F32)?.to_device(device)
    }
}

/// One request being sampled.
#[derive(Debug)]
pub struct Sample {
    noise: Noise,
    timesteps: Vec<usize>,
    /// Index of the next step in `timesteps`.
    next: usize,
    /// The sampler and what it carries between steps.
    solver: SolverState,
    /// DeepCache's split and features, when the request caches.
    cache: Option<StepCache>,
    guidance: f64,
    /// `1×4×2h×w`, f32.
    latents: Tensor,
    /// What each UNet row gets besides the latents: the mask latent and the masked latent,
    /// `rows×5×2h×w` (unconditional row first).
    condition: Tensor,
    /// The VAE latents of the masked person and of the garment (scaled), `1×4×h×w` each.
    pub masked_latent: Tensor,
    pub cloth_latent: Tensor,
    /// The last step's raw UNet output (`rows×4×2h×w`) and guided noise (`1×4×2h×w`).
    pub last_model_output: Option<Tensor>,
    pub last_noise_pred: Option<Tensor>,
    /// Why sampling stopped early, if it did.
    failure: Option<String>,
}

impl Sample {
    /// Marks the sample failed: it takes no further step.
    pub fn fail(&mut self, why: String) {
        self.failure = Some(why);
        self.next = self.timesteps.len();
    }

    /// Why the sample failed, once.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Whether every step has run.
    pub fn is_done(&self) -> bool {
        self.next >= self.timesteps.len()
    }

    /// Steps run so far, and in all.
    pub fn progress(&self) -> (usize, usize) {
        (self.next, self.timesteps.len())
    }

    /// UNet rows per step.
    pub fn rows(&self) -> usize {
        rows_for(self.guidance)
    }

    /// The latent grid `(2h, w)`; requests batch together only when it matches.
    pub fn latent_size(&self) -> (usize, usize) {
        let d = self.latents.dims();
        (d[2], d[3])
    }

    /// The current latents, `1×4×2h×w`.
    pub fn latents(&self) -> &Tensor {
        &self.latents
    }

    /// The sampler's timesteps, from the noisiest down.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The UNet pass the next step takes; requests step in one call only when it matches.
    pub fn unet_call(&self) -> UnetCall {
        match &self.cache {
            Some(cache) => cache.call(self.next),
            None => UnetCall::Full,
        }
    }
}

/// The CatVTON model: UNet, VAE and samplers.
pub struct CatVton {
    unet: UNet,
    vae: AutoencoderKl,
    ddim: Ddim,
    dpm: DpmSolver,
    device: Device,
}

/// `H×W×C` 8-bit images to `1×C×H×W` f32 on `device`.
fn to_nchw(t: &Tensor, device: &Device) -> candle_core::Result<Tensor> {
    t.to_device(device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .to_dtype(DType::F32)
}

/// Refuses a precision the device cannot compute in, at load time rather than at the first
/// request.
fn check_dtype(dtype: DType, device: &Device) -> Result<(), ModelError> {
    if dtype == DType::BF16 && device.is_cpu() {
        return Err(ModelError::UnsupportedDtype {
            dtype: "bf16",
            device: "the CPU",
            reason: "its matrix products have no bf16; use f32, or f16",
        });
    }
    Ok(())
}

/// The published configurations of the full-size networks: the SD 1.5 inpainting UNet,
/// `sd-vae-ft-mse` and the base model's scheduler (`models/catvton/config/`).
pub const FULL_SIZE_CONFIGS: [&str; 3] = [
    include_str!("../../../models/catvton/config/unet.json"),
    include_str!("../../../models/catvton/config/vae.json"),
    include_str!("../../../models/catvton/config/scheduler.json"),
];

/// Builds a network whose every tensor is random: a `VarMap` initialises what the network asks
/// for, then the network is rebuilt from detached copies (a forward pass over variables would
/// keep its whole graph for backpropagation).
fn random_network<T>(
    dtype: DType,
    device: &Device,
    build: impl Fn(candle_nn::VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<T> {
    let vars = candle_nn::VarMap::new();
    build(candle_nn::VarBuilder::from_varmap(&vars, dtype, device))?;
    let tensors: std::collections::HashMap<String, Tensor> = vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("the variable map is poisoned".into()))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    build(candle_nn::VarBuilder::from_tensors(tensors, dtype, device))
}

impl CatVton {
    /// The full-size model with random weights, for timing without the downloads: the same
    /// shapes and work as the published weights, but not a try-on.
    pub fn random(dtype: DType, device: &Device) -> Result<Self, ModelError> {
        check_dtype(dtype, device)?;
        fn parse<T: serde::de::DeserializeOwned>(
            text: &str,
            class: &str,
            validate: impl FnOnce(&T) -> Result<(), String>,
        ) -> Result<T, ModelError> {
            config::parse(text, class)
                .and_then(|config| validate(&config).map(|()| config))
                .map_err(|e| {
                    candle_core::Error::Msg(format!("a committed full-size configuration: {e}"))
                        .into()
                })
        }
        let unet_config = parse(
            FULL_SIZE_CONFIGS[0],
            "UNet2DConditionModel",
            config::UNetConfig::validate,
        )?;
        let vae_config = parse(
            FULL_SIZE_CONFIGS[1],
            "AutoencoderKL",
            config::VaeConfig::validate,
        )?;
        let scheduler = parse(FULL_SIZE_CONFIGS[2], "", config::SchedulerConfig::validate)?;
        Ok(Self {
            unet: random_network(dtype, device, |vb| UNet::new(vb, &unet_config))?,
            vae: random_network(dtype, device, |vb| AutoencoderKl::new(vb, &vae_config))?,
            ddim: Ddim::new(&scheduler),
            dpm: DpmSolver::new(&scheduler),
            device: device.clone(),
        })
    }

    /// Loads the model folder (see [`weights`]); the networks compute in `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        check_dtype(dtype, device)?;
        Self::from_loaded(weights::load(dir, dtype, device)?, device)
    }

    /// Loads the model from its files wherever they lie (the hub cache's snapshots).
    pub fn load_files(
        files: &weights::ModelFiles,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, ModelError> {
        check_dtype(dtype, device)?;
        Self::from_loaded(weights::load_files(files, dtype, device)?, device)
    }

    fn from_loaded(loaded: weights::Loaded, device: &Device) -> Result<Self, ModelError> {
        Ok(Self {
            unet: loaded.unet,
            vae: loaded.vae,
            ddim: Ddim::new(&loaded.scheduler),
            dpm: DpmSolver::new(&loaded.scheduler),
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    pub fn vae(&self) -> &AutoencoderKl {
        &self.vae
    }

    pub fn scheduler(&self) -> &Ddim {
        &self.ddim
    }

    pub fn dpm_solver(&self) -> &DpmSolver {
        &self.dpm
    }

    /// The timesteps of a `steps`-step sampling with `scheduler`.
    pub fn timesteps(&self, scheduler: SchedulerKind, steps: usize) -> Vec<usize> {
        match scheduler {
            SchedulerKind::Ddim => self.ddim.timesteps(steps),
            SchedulerKind::DpmPp2m | SchedulerKind::UniPc => self.dpm.timesteps(steps),
        }
    }

    /// Encodes a request and draws its initial latents: the sample is ready for its first
    /// step. The images' height and width must be multiples of 8 · 2^(UNet levels − 1).
    pub fn begin(&self, input: &DiffusionInput, mut noise: Noise) -> Result<Sample, ModelError> {
        let dev = &self.device;
        let person = ((to_nchw(&input.person, dev)? / 127.5)? - 1.0)?;
        let cloth = ((to_nchw(&input.cloth, dev)? / 127.5)? - 1.0)?;
        // White (≥ 0.5 after /255) is repainted, as the reference binarises its mask.
        let mask = (to_nchw(&input.mask, dev)? / 255.0)?
            .ge(0.5)?
            .to_dtype(DType::F32)?;
        let keep = (1.0 - &mask)?;
        let masked = person.broadcast_mul(&keep)?;
        let posterior = self.vae.encode(&Tensor::cat(&[&masked, &cloth], 0)?)?;
        let dims = posterior.mean.dims()[1..].to_vec();
        let one = |i: usize| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((
                posterior.mean.get(i)?.unsqueeze(0)?,
                posterior.std.get(i)?.unsqueeze(0)?,
            ))
        };
        let mut latent_dims = vec![1];
        latent_dims.extend(&dims);
        let scale = self.vae.scaling_factor();
        let (m, s) = one(0)?;
        let masked_latent = ((m + s.mul(&noise.draw(&latent_dims, dev)?)?)? * scale)?;
        let (m, s) = one(1)?;
        let cloth_latent = ((m + s.mul(&noise.draw(&latent_dims, dev)?)?)? * scale)?;
        let (h, w) = (latent_dims[2], latent_dims[3]);
        let mask_latent = mask.upsample_nearest2d(h, w)?;
        let zeros = mask_latent.zeros_like()?;
        let mask_concat = Tensor::cat(&[&mask_latent, &zeros], 2)?;
        let full = Tensor::cat(&[&masked_latent, &cloth_latent], 2)?;
        let guidance = input.params.guidance;
        let condition = if rows_for(guidance) == 2 {
            let without_garment = Tensor::cat(&[&masked_latent, &cloth_latent.zeros_like()?], 2)?;
            Tensor::cat(
                &[
                    Tensor::cat(&[&mask_concat, &without_garment], 1)?,
                    Tensor::cat(&[&mask_concat, &full], 1)?,
                ],
                0,
            )?
        } else {
            Tensor::cat(&[&mask_concat, &full], 1)?
        };
        let latents = noise.draw(&[1, dims[0], 2 * h, w], dev)?;
        let timesteps = self.timesteps(input.params.scheduler, input.params.steps);
        let solver = match input.params.scheduler {
            SchedulerKind::Ddim => SolverState::Ddim,
            SchedulerKind::DpmPp2m => self.dpm.state(&timesteps),
            SchedulerKind::UniPc => self.dpm.unipc_state(&timesteps),
        };
        let cache = input.params.cache.is_on().then(|| StepCache {
            interval: input.params.cache.interval,
            point: self.unet.split_point(input.params.cache.branch),
            deep: None,
        });
        Ok(Sample {
            noise,
            timesteps,
            next: 0,
            solver,
            cache,
            guidance,
            latents,
            condition,
            masked_latent,
            cloth_latent,
            last_model_output: None,
            last_noise_pred: None,
            failure: None,
        })
    }

    /// Advances every sample (all of one latent size, none done) by its own timestep: one UNet
    /// call per kind of pass present ([`Sample::unet_call`]); the batcher hands over one kind
    /// at a time.
    pub fn step(&self, samples: &mut [&mut Sample]) -> Result<(), ModelError> {
        let mut calls: Vec<(UnetCall, Vec<usize>)> = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            if s.is_done() {
                return Err(ModelError::Candle(candle_core::Error::Msg(
                    "a finished sample was stepped".into(),
                )));
            }
            let call = s.unet_call();
            match calls.iter_mut().find(|(c, _)| *c == call) {
                Some((_, members)) => members.push(i),
                None => calls.push((call, vec![i])),
            }
        }
        for (call, members) in calls {
            self.step_call(samples, call, &members)?;
        }
        Ok(())
    }

    /// One UNet call of kind `call` over `samples[members]`, then each sampler's update.
    fn step_call(
        &self,
        samples: &mut [&mut Sample],
        call: UnetCall,
        members: &[usize],
    ) -> Result<(), ModelError> {
        let mut inputs = Vec::with_capacity(members.len());
        let mut timesteps = Vec::new();
        let mut deep = Vec::new();
        let mut points = Vec::new();
        for &i in members {
            let s = &samples[i];
            let t = s.timesteps[s.next];
            let rows = s.rows();
            let latents = s.latents.repeat((rows, 1, 1, 1))?;
            inputs.push(Tensor::cat(&[&latents, &s.condition], 1)?);
            timesteps.extend(std::iter::repeat_n(t as f64, rows));
            if let Some(cache) = &s.cache {
                match (call, &cache.deep) {
                    (UnetCall::Shallow(_), Some(features)) => deep.push(features.clone()),
                    (UnetCall::Shallow(_), None) => {
                        return Err(ModelError::Candle(candle_core::Error::Msg(
                            "a shallow step without cached features".into(),
                        )))
                    }
                    (UnetCall::Full, _) if !points.contains(&cache.point) => {
                        points.push(cache.point)
                    }
                    (UnetCall::Full, _) => {}
                }
            }
        }
        let batch = Tensor::cat(&inputs, 0)?;
        let (output, captured) = match call {
            UnetCall::Full => self.unet.forward_capturing(&batch, &timesteps, &points)?,
            UnetCall::Shallow(point) => {
                let deep = Tensor::cat(&deep, 0)?;
                let out = self
                    .unet
                    .forward_shallow(&batch, &timesteps, point, &deep)?;
                (out, Vec::new())
            }
        };
        let output = output.to_dtype(DType::F32)?;
        let shared = members.len() > 1;
        let mut row = 0;
        for &i in members {
            let s = &mut *samples[i];
            let rows = s.rows();
            let out = output.narrow(0, row, rows)?;
            if let Some(cache) = &mut s.cache {
                if let Some(k) = points.iter().position(|p| *p == cache.point) {
                    let features = captured[k].narrow(0, row, rows)?;
                    // A copy, so that the batch's tensor is not kept alive by one request.
                    cache.deep = Some(if shared { features.copy()? } else { features });
                }
            }
            row += rows;
            let eps = if rows == 2 {
                let uncond = out.get(0)?.unsqueeze(0)?;
                let cond = out.get(1)?.unsqueeze(0)?;
                (&uncond + ((cond - &uncond)? * s.guidance)?)?
            } else {
                out.clone()
            };
            match &mut s.solver {
                SolverState::Ddim => {
                    let t = s.timesteps[s.next];
                    let factors = self.ddim.factors(t, s.timesteps.len());
                    let noise = s.noise.draw(s.latents.dims(), &self.device)?;
                    s.latents = self.ddim.step(factors, &s.latents, &eps, &noise)?;
                }
                SolverState::DpmPp2m {
                    sigmas,
                    previous_x0,
                } => {
                    let (next, x0) =
                        DpmSolver::step(sigmas, s.next, &s.latents, &eps, previous_x0.as_ref())?;
                    s.latents = next;
                    *previous_x0 = Some(x0);
                }
                SolverState::UniPc { sigmas, memory } => {
                    s.latents = UniPc::step(sigmas, s.next, &s.latents, &eps, memory)?;
                }
            }
            s.last_model_output = Some(out);
            s.last_noise_pred = Some(eps);
            s.next += 1;
        }
        Ok(())
    }

    /// Decodes the person half of a finished sample: `1×3×H×W` in [0, 1], f32.
    pub fn decode(&self, sample: &Sample) -> Result<Tensor, ModelError> {
        let (h2, _) = sample.latent_size();
        let person = sample.latents.narrow(2, 0, h2 / 2)?;
        let latents = (person * (1.0 / self.vae.scaling_factor()))?;
        let image = self.vae.decode(&latents)?;
        Ok(((image / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    }

    /// The finished try-on as an 8-bit `H×W×3` CPU tensor (`round(x · 255)`).
    pub fn finish(&self, sample: &Sample) -> Result<Tensor, ModelError> {
        let image = self.decode(sample)?;
        let bytes = (image * 255.0)?.round()?.to_dtype(DType::U8)?;
        Ok(bytes
            .squeeze(0)?
            .permute((1, 2, 0))?
            .to_device(&Device::Cpu)?)
    }

    /// Samples one request from start to end.
    pub fn generate(&self, input: &DiffusionInput) -> Result<Tensor, ModelError> {
        let mut sample = self.begin(input, Noise::seeded(input.params.seed))?;
        while !sample.is_done() {
            self.step(&mut [&mut sample])?;
        }
        self.finish(&sample)
    }
}
