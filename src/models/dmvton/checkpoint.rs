//! Loading DM-VTON checkpoints: the official PyTorch `.pt` files (a dict with the state_dict
//! under `model`) or safetensors files with the same tensor names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::models::{candle_message as message, ModelError};

/// The key of the state_dict inside the official `.pt` files.
pub const STATE_DICT_KEY: &str = "model";

/// The tensors of one checkpoint file.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads `path`: safetensors when it ends in `.safetensors`, a PyTorch zip file otherwise.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::checkpoint(path, "file not found"));
        }
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let tensors: HashMap<String, Tensor> = if is_safetensors {
            candle_core::safetensors::load(path, device).map_err(|e| {
                ModelError::checkpoint(path, format!("cannot read safetensors: {}", message(e)))
            })?
        } else {
            candle_core::pickle::read_all_with_key(path, Some(STATE_DICT_KEY))
                .map_err(|e| {
                    ModelError::checkpoint(
                        path,
                        format!("cannot read PyTorch checkpoint: {}", message(e)),
                    )
                })?
                .into_iter()
                .map(|(name, t)| Ok((name, t.to_device(device)?)))
                .collect::<candle_core::Result<_>>()
                .map_err(|e| ModelError::checkpoint(path, message(e)))?
        };
        if tensors.is_empty() {
            return Err(ModelError::checkpoint(path, "no tensors found"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors by state_dict name.
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// A `VarBuilder` over the tensors, whose paths are the state_dict names. It serves every
    /// tensor in f32 whatever its `dtype`, which is the precision the network runs in: the
    /// layers fold BatchNorm into their weights in f32 and only then round them to it.
    pub fn var_builder(&self, device: &Device, dtype: DType) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(F32Tensors(self.tensors.clone())),
            dtype,
            device.clone(),
        )
    }

    /// Builds a network running in `dtype` from the checkpoint, turning a missing or mis-shaped
    /// tensor into an error that names this file and the tensor.
    pub fn build<T>(
        &self,
        device: &Device,
        dtype: DType,
        what: &str,
        f: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
    ) -> Result<T, ModelError> {
        f(self.var_builder(device, dtype)).map_err(|e| {
            ModelError::checkpoint(
                &self.path,
                format!("not a DM-VTON {what} checkpoint: {}", message(e)),
            )
        })
    }
}

/// The checkpoint's tensors in f32 (see [`Checkpoint::var_builder`]).
struct F32Tensors(HashMap<String, Tensor>);

impl candle_nn::var_builder::SimpleBackend for F32Tensors {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        _dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, DType::F32, dev)?;
        if tensor.shape() != &s {
            candle_core::bail!(
                "shape mismatch for {name}, got {:?}, expected {:?}",
                tensor.dims(),
                s.dims()
            );
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self
            .0
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })?;
        tensor.to_dtype(DType::F32)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}
