//! The batched try-on model interface and the registry of models by name.

pub mod catvton;
pub mod dmvton;
pub mod input;
pub mod overlay;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use input::{PreparedPair, Rect, MODEL_HEIGHT, MODEL_WIDTH};

use crate::ops::convert::{to_model_input, to_u8_images, InputKind};

/// The models the server can run (`--model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// Weight-free baseline: pastes the garment over the worn top with the person's shading.
    Overlay,
    /// DM-VTON; needs `--model-source DIR` with its two checkpoints.
    Dmvton,
    /// CatVTON, a diffusion try-on; needs `--model-source DIR` with its four parts, or
    /// `--model-source hub`.
    Catvton,
}

impl ModelKind {
    pub const ALL: [ModelKind; 3] = [ModelKind::Overlay, ModelKind::Dmvton, ModelKind::Catvton];

    /// The registry name, as `--model` and `/v1/models` spell it.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Overlay => "overlay",
            ModelKind::Dmvton => "dmvton",
            ModelKind::Catvton => "catvton",
        }
    }
}

impl std::str::FromStr for ModelKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ModelError::UnknownModel(crate::api::echo(s)))
    }
}

/// The licence of one part of a model's weights, as the logs and `/v1/models` report it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Licence {
    /// Which weights (`CatVTON attention weights`).
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

/// Where the DM-VTON weights are published, and how `--model-source DIR` wants them.
pub const DMVTON_WEIGHTS_HELP: &str = "download dmvton_pf_warp.pt and dmvton_pf_gen.pt from \
     release 1.0.0 of https://github.com/KiseKloset/DM-VTON (its Releases page), put both in one \
     folder under exactly these names, and run with --model-source FOLDER \
     (models/dmvton/README.md)";

/// The licences of a model's weights (none for the weight-free overlay).
pub fn licences(kind: ModelKind, catvton: &catvton::sources::CatvtonRepos) -> Vec<Licence> {
    match kind {
        ModelKind::Overlay => Vec::new(),
        ModelKind::Dmvton => vec![Licence {
            part: "DM-VTON weights".into(),
            source: "KiseKloset/DM-VTON release 1.0.0".into(),
            licence: "CC BY-NC-SA 4.0, non-commercial".into(),
        }],
        ModelKind::Catvton => catvton::sources::licences(catvton),
    }
}

/// Names accepted by `--model`, in the order `/v1/models` lists them.
pub const MODEL_NAMES: &[&str] = &["overlay", "dmvton", "catvton"];

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
    #[error("model `{0}` does not take this kind of input")]
    WrongInput(String),
    #[error("model `{0}` samples step by step and has no whole-batch interface")]
    NotBatched(String),
    #[error("--dtype {dtype} is not supported on {device}: {reason}")]
    UnsupportedDtype {
        dtype: &'static str,
        device: &'static str,
        reason: &'static str,
    },
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
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
    /// The registry name (`overlay`, `dmvton`).
    fn name(&self) -> &str;
    /// The device the model's weights live on; inputs must be on it too.
    fn device(&self) -> &Device;
    /// Runs one batch and answers the try-on images, `B×3×H×W` in [-1, 1].
    fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError>;
}

/// One request's work, as the batcher queues it.
#[derive(Debug, Clone)]
pub enum WorkItem {
    /// Inputs of a whole-batch model (overlay, dmvton).
    Pair(PreparedPair),
    /// Inputs of a diffusion model (catvton).
    Diffusion(catvton::DiffusionInput),
}

impl WorkItem {
    /// Where the person picture lies in a whole-batch model's frame (the answer is cropped
    /// to it); diffusion answers are the requested size as they are.
    pub fn content(&self) -> Option<Rect> {
        match self {
            WorkItem::Pair(p) => Some(p.content),
            WorkItem::Diffusion(_) => None,
        }
    }
}

impl From<PreparedPair> for WorkItem {
    fn from(p: PreparedPair) -> Self {
        WorkItem::Pair(p)
    }
}

impl From<catvton::DiffusionInput> for WorkItem {
    fn from(d: catvton::DiffusionInput) -> Self {
        WorkItem::Diffusion(d)
    }
}

/// A loaded model, as the batcher drives it.
pub enum LoadedModel {
    /// Runs whole batches.
    Batch(Box<dyn TryOnModel>),
    /// Samples step by step.
    Diffusion(Box<catvton::CatVton>),
}

impl LoadedModel {
    /// The registry name.
    pub fn name(&self) -> &str {
        match self {
            LoadedModel::Batch(m) => m.name(),
            LoadedModel::Diffusion(_) => ModelKind::Catvton.name(),
        }
    }

    /// The whole-batch model, or an error for a diffusion model.
    pub fn into_batch(self) -> Result<Box<dyn TryOnModel>, ModelError> {
        match self {
            LoadedModel::Batch(m) => Ok(m),
            LoadedModel::Diffusion(_) => {
                Err(ModelError::NotBatched(ModelKind::Catvton.name().into()))
            }
        }
    }
}

/// How to load a model: which one, from where, in which precision.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    pub kind: ModelKind,
    pub model_dir: Option<&'a Path>,
    /// The diffusion model's compute precision (the others run in f32).
    pub dtype: candle_core::DType,
}

/// Loads any model, whole-batch or diffusion.
pub fn load_model(options: LoadOptions<'_>, device: &Device) -> Result<LoadedModel, ModelError> {
    match options.kind {
        ModelKind::Catvton => {
            let dir = options
                .model_dir
                .ok_or_else(|| ModelError::MissingModelDir {
                    model: options.kind.name().to_string(),
                })?;
            Ok(LoadedModel::Diffusion(Box::new(catvton::CatVton::load(
                dir,
                options.dtype,
                device,
            )?)))
        }
        kind => load_kind(kind, options.model_dir, device).map(LoadedModel::Batch),
    }
}

/// Loads the model registered under `name` (see [`ModelKind`]).
pub fn load(
    name: &str,
    model_dir: Option<&Path>,
    device: &Device,
) -> Result<Box<dyn TryOnModel>, ModelError> {
    load_kind(name.parse()?, model_dir, device)
}

/// Loads a model of the given kind.
pub fn load_kind(
    kind: ModelKind,
    model_dir: Option<&Path>,
    device: &Device,
) -> Result<Box<dyn TryOnModel>, ModelError> {
    match kind {
        ModelKind::Overlay => Ok(Box::new(overlay::OverlayModel::new(device.clone()))),
        ModelKind::Dmvton => {
            let dir = model_dir.ok_or_else(|| ModelError::MissingModelDir {
                model: kind.name().to_string(),
            })?;
            Ok(Box::new(dmvton::DmVton::load(dir, device)?))
        }
        ModelKind::Catvton => Err(ModelError::NotBatched(kind.name().into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_follow_the_kinds() {
        let names: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, MODEL_NAMES);
        for name in MODEL_NAMES {
            assert_eq!(name.parse::<ModelKind>().expect("parses").name(), *name);
        }
        assert!("x".repeat(1000).parse::<ModelKind>().is_err());
    }
}
