//! Reading CatVTON's weights from their official layouts under one folder:
//!
//! - `base/unet/`: the Stable Diffusion 1.5 inpainting UNet (`config.json` and
//!   `diffusion_pytorch_model.safetensors`, or `.fp16.safetensors`);
//! - `base/scheduler/scheduler_config.json`;
//! - `vae/`: `sd-vae-ft-mse`, laid out like the UNet;
//! - `attention/model.safetensors`: CatVTON's trained self-attention weights.
//!
//! The hub's layout (`--model-source hub`) gives the same files by their paths in the cache
//! (`sources.rs`). Every error names the file, and the tensor where one is at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::{self, SchedulerConfig, UNetConfig, VaeConfig};
use super::unet::{attn1_paths, UNet};
use super::vae::AutoencoderKl;
use crate::models::{candle_message as message, ModelError};

/// The weight file names diffusers writes, in the order they are looked for.
const WEIGHT_FILES: [&str; 2] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
];

/// The tensors each attention module of CatVTON's checkpoint holds.
const ATTENTION_TENSORS: [&str; 5] = [
    "to_q.weight",
    "to_k.weight",
    "to_v.weight",
    "to_out.0.weight",
    "to_out.0.bias",
];

/// The checkpoint lists eight entries per `attn1` module (the module, its four projections,
/// `to_out`'s dropout and the processor); an entry's tensors are reachable under each alias.
const ENTRIES_PER_MODULE: usize = 8;

/// The files of one CatVTON model folder.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub unet_config: PathBuf,
    pub unet_weights: PathBuf,
    pub scheduler_config: PathBuf,
    pub vae_config: PathBuf,
    pub vae_weights: PathBuf,
    pub attention: PathBuf,
}

fn weights_in(dir: &Path) -> PathBuf {
    WEIGHT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join(WEIGHT_FILES[0]))
}

impl ModelFiles {
    /// The expected files under `dir`; each is checked when it is read.
    pub fn under(dir: &Path) -> Self {
        let unet = dir.join("base").join("unet");
        let vae = dir.join("vae");
        Self {
            unet_config: unet.join("config.json"),
            unet_weights: weights_in(&unet),
            scheduler_config: dir
                .join("base")
                .join("scheduler")
                .join("scheduler_config.json"),
            vae_config: vae.join("config.json"),
            vae_weights: weights_in(&vae),
            attention: dir.join("attention").join("model.safetensors"),
        }
    }
}

fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    class: &str,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, ModelError> {
    if !path.is_file() {
        return Err(ModelError::checkpoint(path, "file not found"));
    }
    let config: T = config::read(path, class).map_err(|e| ModelError::checkpoint(path, e))?;
    validate(&config).map_err(|e| ModelError::checkpoint(path, e))?;
    Ok(config)
}

/// Reads every tensor of a safetensors file onto `device`.
fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, ModelError> {
    if !path.is_file() {
        return Err(ModelError::checkpoint(path, "file not found"));
    }
    let tensors = candle_core::safetensors::load(path, device).map_err(|e| {
        ModelError::checkpoint(path, format!("cannot read safetensors: {}", message(e)))
    })?;
    if tensors.is_empty() {
        return Err(ModelError::checkpoint(path, "no tensors found"));
    }
    Ok(tensors)
}

/// Builds a network from tensors, turning a missing or mis-shaped tensor into an error that
/// names the file.
fn build<T>(
    path: &Path,
    what: &str,
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
    f: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T, ModelError> {
    f(VarBuilder::from_tensors(tensors, dtype, device)).map_err(|e| {
        ModelError::checkpoint(path, format!("not a {what} checkpoint: {}", message(e)))
    })
}

/// Maps a key of CatVTON's attention checkpoint (`16.to_q.weight`, or an alias such as
/// `17.weight`) to the UNet module number and the tensor's name inside it.
fn attention_key(key: &str) -> Option<(usize, String)> {
    let (index, rest) = key.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let prefix = match index % ENTRIES_PER_MODULE {
        0 => "",
        1 => "to_q.",
        2 => "to_k.",
        3 => "to_v.",
        4 => "to_out.",
        5 => "to_out.0.",
        _ => return None,
    };
    Some((index / ENTRIES_PER_MODULE, format!("{prefix}{rest}")))
}

/// Replaces the UNet's `attn1` weights with those of CatVTON's attention checkpoint. Every
/// attention module must receive all its tensors, with the base model's shapes, and every
/// tensor in the file must find its module.
fn apply_attention(
    unet: &mut HashMap<String, Tensor>,
    config: &UNetConfig,
    path: &Path,
    attention: HashMap<String, Tensor>,
) -> Result<(), ModelError> {
    let modules = attn1_paths(config);
    let mut applied: HashMap<String, ()> = HashMap::new();
    let mut keys: Vec<&String> = attention.keys().collect();
    keys.sort();
    for key in keys {
        let (module, name) = attention_key(key)
            .ok_or_else(|| ModelError::checkpoint(path, format!("unexpected tensor `{key}`")))?;
        let Some(prefix) = modules.get(module) else {
            return Err(ModelError::checkpoint(
                path,
                format!(
                    "tensor `{key}` is for attention module {module}, but the UNet has {} \
                     (a checkpoint for another base model?)",
                    modules.len()
                ),
            ));
        };
        if !ATTENTION_TENSORS.contains(&name.as_str()) {
            return Err(ModelError::checkpoint(
                path,
                format!("unexpected tensor `{key}`"),
            ));
        }
        let target = format!("{prefix}.{name}");
        let tensor = &attention[key];
        if let Some(base) = unet.get(&target) {
            if base.dims() != tensor.dims() {
                return Err(ModelError::checkpoint(
                    path,
                    format!(
                        "tensor `{key}` has shape {:?}, the UNet's `{target}` has {:?}",
                        tensor.dims(),
                        base.dims()
                    ),
                ));
            }
        }
        unet.insert(target.clone(), tensor.clone());
        applied.insert(target, ());
    }
    for (module, prefix) in modules.iter().enumerate() {
        for name in ATTENTION_TENSORS {
            if !applied.contains_key(&format!("{prefix}.{name}")) {
                return Err(ModelError::checkpoint(
                    path,
                    format!(
                        "missing tensor `{}.{name}` (for `{prefix}`)",
                        module * ENTRIES_PER_MODULE
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The loaded networks and schedule of one CatVTON model.
pub struct Loaded {
    pub unet: UNet,
    pub vae: AutoencoderKl,
    pub scheduler: SchedulerConfig,
}

/// Reads the model folder `dir`; the networks compute in `dtype`.
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Loaded, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::checkpoint(dir, "model directory not found"));
    }
    load_files(&ModelFiles::under(dir), dtype, device)
}

/// Reads the model's files wherever they are (a folder, or the hub cache's snapshots).
pub fn load_files(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Loaded, ModelError> {
    let unet_config: UNetConfig = read_config(
        &files.unet_config,
        "UNet2DConditionModel",
        UNetConfig::validate,
    )?;
    let vae_config: VaeConfig =
        read_config(&files.vae_config, "AutoencoderKL", VaeConfig::validate)?;
    let scheduler: SchedulerConfig =
        read_config(&files.scheduler_config, "", SchedulerConfig::validate)?;
    let mut unet_tensors = read_tensors(&files.unet_weights, device)?;
    let attention = read_tensors(&files.attention, device)?;
    apply_attention(&mut unet_tensors, &unet_config, &files.attention, attention)?;
    let unet = build(
        &files.unet_weights,
        "UNet",
        unet_tensors,
        dtype,
        device,
        |vb| UNet::new(vb, &unet_config),
    )?;
    let vae_tensors = read_tensors(&files.vae_weights, device)?;
    let vae = build(
        &files.vae_weights,
        "VAE",
        vae_tensors,
        dtype,
        device,
        |vb| AutoencoderKl::new(vb, &vae_config),
    )?;
    Ok(Loaded {
        unet,
        vae,
        scheduler,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_keys_and_their_aliases_map_to_modules() {
        assert_eq!(
            attention_key("0.to_q.weight"),
            Some((0, "to_q.weight".into()))
        );
        assert_eq!(
            attention_key("16.to_out.0.bias"),
            Some((2, "to_out.0.bias".into()))
        );
        assert_eq!(attention_key("17.weight"), Some((2, "to_q.weight".into())));
        assert_eq!(attention_key("21.bias"), Some((2, "to_out.0.bias".into())));
        assert_eq!(
            attention_key("12.0.weight"),
            Some((1, "to_out.0.weight".into()))
        );
        assert_eq!(attention_key("7.weight"), None);
        assert_eq!(attention_key("x.to_q.weight"), None);
    }
}
