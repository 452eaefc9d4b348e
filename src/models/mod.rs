//! The model interface the rest of the server programs against. A model runs either whole
//! batches ([`TryOnModel`]) or step by step ([`StepModel`]: begin, step, finish, with rows per
//! request); the batcher drives either as a trait object and never names a model. Each model
//! declares its request options and the inputs it needs ([`ModelFamily`]); the registry
//! ([`registry`]) is the one place that lists them.

pub mod automasker;
pub mod buckets;
pub mod catvton;
pub mod dmvton;
pub mod identity_steps;
pub mod input;
pub mod options;
pub mod overlay;
pub mod registry;
pub mod staging;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use image::GrayImage;

/// `--flash-attention`, applied at start-up.
pub use catvton::attention::enable_flash_attention;
/// `virtualfit bench stages`: the diffusion model's networks one stage at a time.
pub use catvton::stage_bench::{run as run_stage_bench, StageBenchArgs};
/// The GPU check: kernels, parity and speed on a lent card.
pub use dmvton::gpu_check;
pub use input::{
    GarmentMaskSpec, InputSpec, ModelInput, PersonMaskSpec, PreparedPair, Rect, MODEL_HEIGHT,
    MODEL_WIDTH,
};
pub use options::{OptionKind, OptionLimits, OptionSpec, Preset, RequestOptions};
pub use registry::{
    family, load, LoadRequest, MaskerRequest, ModelFamily, ModelFlags, WeightSource, MODEL_NAMES,
};

use crate::ops::convert::{to_model_input, to_u8_images, InputKind};

/// A loaded model of the area to repaint in the person photo (e.g. human parsers), which a
/// family offers in place of its drawn mask. It runs on the CPU pool, on the device its weights
/// were loaded onto.
pub trait PersonMasker: Send + Sync {
    /// What `/v1/models` and the log call it (`parsers`, `parsers+densepose`).
    fn name(&self) -> &'static str;
    /// The area to repaint (white) in the fitted person photo, for the request's options.
    fn mask(&self, person: &image::RgbImage, options: &RequestOptions)
        -> Result<GrayImage, String>;
    /// The label maps it can show (`atr`, `lip`).
    fn label_maps(&self) -> &'static [&'static str];
    /// The label map `name` of the fitted person photo, one label per pixel as a grey level;
    /// `None` when it has no such map.
    fn label_map(&self, person: &image::RgbImage, name: &str) -> Result<Option<GrayImage>, String>;
    /// The answers to several photos at once, in order: a masker with device work (the
    /// parsers) runs it once for all of them. By default each in turn.
    fn masks(&self, queries: &[MaskQuery]) -> Vec<Result<GrayImage, String>> {
        queries
            .iter()
            .map(|query| query.answer_with(self))
            .collect()
    }
}

/// One photo for [`PersonMasker::masks`].
#[derive(Debug, Clone)]
pub struct MaskQuery {
    /// The fitted person photo.
    pub person: image::RgbImage,
    pub options: RequestOptions,
    /// `None`: the mask for `options`; else the label map of this name.
    pub labels: Option<String>,
}

impl MaskQuery {
    /// The answer of `masker` to this one photo, without batching.
    pub fn answer_with<M: PersonMasker + ?Sized>(&self, masker: &M) -> Result<GrayImage, String> {
        match &self.labels {
            None => masker.mask(&self.person, &self.options),
            Some(name) => masker
                .label_map(&self.person, name)?
                .ok_or_else(|| format!("no label map `{name}`")),
        }
    }
}

/// The licence of one part of a model's weights, as the logs and `/v1/models` report it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Licence {
    /// Which weights.
    pub part: String,
    /// Where they are published.
    pub source: String,
    /// The licence, with its main condition (`CC BY-NC-SA 4.0, non-commercial`).
    pub licence: String,
}

impl std::fmt::Display for Licence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.part, self.source, self.licence)
    }
}

/// One batch of try-on inputs, all on the model's device, all `B×C×256×192` f32.
#[derive(Debug, Clone)]
pub struct TryOnBatch {
    /// Person photos, `B×3×H×W`, in [-1, 1].
    pub person: Tensor,
    /// Garment product photos, `B×3×H×W`, in [-1, 1].
    pub cloth: Tensor,
    /// Garment masks, `B×1×H×W`, 1 on the garment and 0 elsewhere.
    pub cloth_mask: Tensor,
}

impl TryOnBatch {
    /// Number of pairs in the batch.
    pub fn len(&self) -> usize {
        self.person.dims().first().copied().unwrap_or(0)
    }

    /// Whether the batch holds no pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Builds a batch on `device` from requests' inputs, converting them there; each needs a
    /// garment mask.
    pub fn from_inputs(inputs: &[&ModelInput], device: &Device) -> Result<TryOnBatch, ModelError> {
        let stack = |f: &dyn Fn(&ModelInput) -> Option<&Tensor>,
                     kind: InputKind|
         -> Result<Tensor, ModelError> {
            let items = inputs
                .iter()
                .map(|i| f(i).ok_or_else(|| ModelError::WrongInput("a garment mask".into())))
                .collect::<Result<Vec<&Tensor>, ModelError>>()?;
            Ok(to_model_input(
                &Tensor::stack(&items, 0)?.to_device(device)?,
                kind,
            )?)
        };
        Ok(TryOnBatch {
            person: stack(&|i| Some(&i.person), InputKind::Image)?,
            cloth: stack(&|i| Some(&i.cloth), InputKind::Image)?,
            cloth_mask: stack(&|i| i.garment_mask.as_ref(), InputKind::Mask)?,
        })
    }

    /// Builds a batch on `device` from prepared 8-bit pairs, converting them there.
    pub fn from_pairs(pairs: &[&PreparedPair], device: &Device) -> candle_core::Result<TryOnBatch> {
        let stack =
            |f: fn(&PreparedPair) -> &Tensor, kind: InputKind| -> candle_core::Result<Tensor> {
                let items: Vec<&Tensor> = pairs.iter().map(|p| f(p)).collect();
                to_model_input(&Tensor::stack(&items, 0)?.to_device(device)?, kind)
            };
        Ok(TryOnBatch {
            person: stack(|p| &p.person, InputKind::Image)?,
            cloth: stack(|p| &p.cloth, InputKind::Image)?,
            cloth_mask: stack(|p| &p.cloth_mask, InputKind::Mask)?,
        })
    }
}

/// Runs a batch and answers each try-on as an 8-bit `H×W×3` CPU tensor (converted on the
/// model's device, so only bytes come back).
pub fn forward_u8(model: &dyn TryOnModel, batch: &TryOnBatch) -> Result<Vec<Tensor>, ModelError> {
    let images = to_u8_images(&model.forward(batch)?)?.to_device(&Device::Cpu)?;
    (0..batch.len())
        .map(|i| images.get(i).map_err(ModelError::from))
        .collect()
}

/// Runs one request from start to end (the CLI and the bench): a batch of one for a whole-batch
/// model, every step for a step model. The answer is 8-bit `H×W×3` on the CPU.
pub fn run_one(model: &LoadedModel, input: &ModelInput) -> Result<Tensor, ModelError> {
    match model {
        LoadedModel::Batch(m) => {
            let batch = TryOnBatch::from_inputs(&[input], m.device())?;
            forward_u8(m.as_ref(), &batch)?
                .into_iter()
                .next()
                .ok_or_else(|| ModelError::Panicked("the model answered no image".into()))
        }
        LoadedModel::Steps(m) => {
            let mut state = m.begin(input)?;
            while !state.is_done() {
                m.step(&mut [&mut state])?;
            }
            m.finish(state.as_ref())
        }
    }
}

/// Why a model could not be loaded or could not run a batch.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model `{0}` (known: overlay, dmvton, catvton)")]
    UnknownModel(String),
    #[error(
        "model `{model}` needs its weights: --model-source DIR (or --model-dir DIR){}",
        if model == "catvton" { ", or --model-source hub to fetch them" } else { "" }
    )]
    MissingModelDir { model: String },
    #[error("model `{model}` has no repository on the Hugging Face Hub: {help}")]
    NotOnHub { model: String, help: String },
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("device out of memory: {0}")]
    OutOfMemory(String),
    #[error("the model panicked: {0}")]
    Panicked(String),
    #[error("the model needs {0}, which the request does not have")]
    WrongInput(String),
    #[error("model `{0}` samples step by step and has no whole-batch interface")]
    NotBatched(String),
    #[error("invalid request options: {0}")]
    Options(String),
    #[error("--dtype {dtype} is not supported on {device}: {reason}")]
    UnsupportedDtype {
        dtype: &'static str,
        device: &'static str,
        reason: &'static str,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The message of a candle error without the backtrace it may have captured (for the
/// checkpoint errors' reasons).
pub fn candle_message(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(*inner),
        other => other.to_string(),
    }
}

impl ModelError {
    /// A checkpoint error naming the file `path` and why.
    pub fn checkpoint(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        ModelError::Checkpoint {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    /// True when the error is a device out-of-memory error that a smaller batch may avoid.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            ModelError::OutOfMemory(_) => true,
            ModelError::Candle(e) => {
                let text = e.to_string().to_ascii_lowercase();
                text.contains("out of memory") || text.contains("out_of_memory")
            }
            _ => false,
        }
    }
}

/// A try-on network that runs whole batches on one candle device.
///
/// The worker thread owns the model, so it needs `Send` but not `Sync`.
pub trait TryOnModel: Send {
    /// The registry name.
    fn name(&self) -> &str;
    /// The device the model's weights live on; inputs must be on it too.
    fn device(&self) -> &Device;
    /// Runs one batch and answers the try-on images, `B×3×H×W` in [-1, 1].
    fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError>;
    /// Readies every batch size up to `max_batch` before the first request (e.g. captures CUDA
    /// graphs, [`buckets::Bucketed`]); by default nothing.
    fn prepare_batches(&self, _max_batch: usize) -> Result<(), ModelError> {
        Ok(())
    }
}

/// What must match for requests to share one step call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepGroup {
    /// The size the model works at (e.g. the latent grid).
    pub size: (usize, usize),
    /// A model-defined kind of call, `None` for its plain one (e.g. CatVTON's shallow
    /// DeepCache pass, by where it splits the UNet).
    pub variant: Option<(usize, usize)>,
}

/// One request being sampled by a [`StepModel`]: the model's own state, which only the model
/// reads (through [`StepState::as_any_mut`]).
pub trait StepState: Send {
    /// Model rows each step of this request takes (e.g. two with classifier-free guidance).
    fn rows(&self) -> usize;
    /// Requests step together only when their groups match (e.g. their latent size).
    fn group(&self) -> StepGroup;
    /// Whether every step has run.
    fn is_done(&self) -> bool;
    /// Steps run so far, and in all.
    fn progress(&self) -> (usize, usize);
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// How long a step model's warm-up took, and what it predicts for full-size requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmUp {
    /// The device time of one request with the default options.
    pub seconds_per_request: f64,
    /// The longest call the warm-up made.
    pub longest_call: std::time::Duration,
    /// The longest call to expect in service, at `row_cap` rows.
    pub longest_call_estimate: std::time::Duration,
}

/// A model that samples step by step: the batcher begins each request, then makes one call per
/// iteration over every running request (each at its own step), and finishes each on its last.
///
/// The worker thread owns the model, so it needs `Send` but not `Sync`.
pub trait StepModel: Send {
    /// The registry name.
    fn name(&self) -> &str;
    /// Model rows each step of this request will take, known before it begins.
    fn rows(&self, input: &ModelInput) -> Result<usize, ModelError>;
    /// Builds the request's own state (its noise from its seed, its encoded images).
    fn begin(&self, input: &ModelInput) -> Result<Box<dyn StepState>, ModelError>;
    /// One step of every given request; they share one group.
    fn step(&self, states: &mut [&mut Box<dyn StepState>]) -> Result<(), ModelError>;
    /// The finished image, 8-bit `H×W×3` on the CPU.
    fn finish(&self, state: &dyn StepState) -> Result<Tensor, ModelError>;
    /// Runs a small request through every stage so that the first request meets warm
    /// kernels, and estimates service times for `row_cap` rows a step.
    fn warm_up(&self, row_cap: usize) -> Result<WarmUp, ModelError>;
}

/// A loaded model, as the batcher drives it.
pub enum LoadedModel {
    /// Runs whole batches.
    Batch(Box<dyn TryOnModel>),
    /// Samples step by step.
    Steps(Box<dyn StepModel>),
}

impl LoadedModel {
    /// The registry name.
    pub fn name(&self) -> &str {
        match self {
            LoadedModel::Batch(m) => m.name(),
            LoadedModel::Steps(m) => m.name(),
        }
    }

    /// An error naming `flag` when it asks for what only whole-batch models do and this is a
    /// step model.
    pub fn require_whole_batch(&self, flag: &str) -> Result<(), ModelError> {
        match self {
            LoadedModel::Batch(_) => Ok(()),
            LoadedModel::Steps(m) => Err(ModelError::Candle(candle_core::Error::Msg(format!(
                "{flag} applies to whole-batch models; `{}` samples step by step",
                m.name()
            )))),
        }
    }

    /// The whole-batch model, or an error for a step model.
    pub fn into_batch(self) -> Result<Box<dyn TryOnModel>, ModelError> {
        match self {
            LoadedModel::Batch(m) => Ok(m),
            LoadedModel::Steps(m) => Err(ModelError::NotBatched(m.name().into())),
        }
    }
}
