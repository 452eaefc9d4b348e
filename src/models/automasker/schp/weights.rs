//! SCHP's weights: the official checkpoints, and seeded weights for tests.
//!
//! The official files (`exp-schp-201908301523-atr.pth`, `exp-schp-201908261155-lip.pth`) are
//! PyTorch zip archives holding `{'state_dict': ...}`, saved from a `DataParallel` network with
//! in-place ABN layers: every key starts with `module.`, and the decoder's second convolution
//! and the fusion head's classifier sit one index lower than in the plain-BatchNorm network.
//! [`read_checkpoint`] strips the prefix and applies the official renames
//! (`model/SCHP/__init__.py`, `load_ckpt`), so the names are the network's module paths.
//!
//! [`FormulaWeights`] computes every tensor from its name instead; the parity fixtures'
//! generator (scripts/fixtures/schp.py) fills the official network with the same values.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};

use crate::models::{candle_message as message, ModelError};

/// The key of the state dict inside the official checkpoints.
pub const STATE_DICT_KEY: &str = "state_dict";

/// The prefix `DataParallel` gave every key.
pub const MODULE_PREFIX: &str = "module.";

/// The official key renames: checkpoint name (after the prefix) → module path. Applied once,
/// not chained (`decoder.conv3.2.weight` becomes `decoder.conv3.3.weight`, and the checkpoint's
/// own `decoder.conv3.3.weight` becomes `decoder.conv3.4.weight`).
pub const RENAMES: [(&str, &str); 7] = [
    ("decoder.conv3.2.weight", "decoder.conv3.3.weight"),
    ("decoder.conv3.3.weight", "decoder.conv3.4.weight"),
    ("decoder.conv3.3.bias", "decoder.conv3.4.bias"),
    (
        "decoder.conv3.3.running_mean",
        "decoder.conv3.4.running_mean",
    ),
    ("decoder.conv3.3.running_var", "decoder.conv3.4.running_var"),
    ("fushion.3.weight", "fushion.4.weight"),
    ("fushion.3.bias", "fushion.4.bias"),
];

/// The module path of a checkpoint key: without `module.`, renamed.
pub fn module_path(key: &str) -> &str {
    let key = key.strip_prefix(MODULE_PREFIX).unwrap_or(key);
    RENAMES
        .iter()
        .find(|(from, _)| *from == key)
        .map_or(key, |(_, to)| to)
}

/// The tensors of an official checkpoint by module path, as float32 on `device`.
pub fn read_checkpoint(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let error = |reason: String| ModelError::checkpoint(path, reason);
    if !path.is_file() {
        return Err(error("file not found".into()));
    }
    let tensors = candle_core::pickle::read_all_with_key(path, Some(STATE_DICT_KEY))
        .map_err(|e| error(format!("cannot read PyTorch checkpoint: {}", message(e))))?;
    if tensors.is_empty() {
        return Err(error("no tensors under `state_dict`".into()));
    }
    tensors
        .into_iter()
        .filter(|(key, _)| !key.ends_with("num_batches_tracked"))
        .map(|(key, t)| {
            let t = t
                .to_dtype(DType::F32)
                .and_then(|t| t.to_device(device))
                .map_err(|e| error(format!("{key}: {}", message(e))))?;
            Ok((module_path(&key).to_string(), t))
        })
        .collect()
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Seeded weights: tensor `name` of variant `tag` is a function of `"{tag}/{name}"` and its
/// shape, the same function as the fixtures' generator:
/// - a splitmix64 stream seeded with the FNV-1a hash of `"{tag}/{name}"`, each output `z`
///   giving `u = (z >> 40) / 2^24` in [0, 1), one per value in row-major order;
/// - a 4-D convolution weight is `(2u - 1) √(3 / fan_in)` with `fan_in` the product of the
///   dimensions after the first; a 2-D (linear) weight is `(2u - 1) √(3 / dims[1])`; a 1-D
///   `weight` (BatchNorm scale) and `running_var` are `0.5 + u`; `running_mean` and any `bias`
///   are `0.2 (2u - 1)`;
/// - each value is computed in f64 and rounded once to f32;
/// - [`FormulaWeights::with_constant`] fixes a tensor's values instead.
///
/// Random-weight networks produce meaningless labels; they exist for parity tests and for
/// exercising the serving path without the checkpoints.
#[derive(Debug, Clone)]
pub struct FormulaWeights {
    tag: String,
    /// Tensors given fixed values instead of the formula's.
    constants: Vec<(String, Vec<f32>)>,
}

impl FormulaWeights {
    pub fn new(tag: &str) -> Self {
        Self {
            tag: tag.to_string(),
            constants: Vec::new(),
        }
    }

    /// The same weights with tensor `name` holding `values` (e.g. a classifier's bias that makes
    /// random weights still detect).
    pub fn with_constant(mut self, name: &str, values: &[f32]) -> Self {
        self.constants.push((name.to_string(), values.to_vec()));
        self
    }

    /// The values of tensor `name` with `dims`.
    pub fn values(&self, name: &str, dims: &[usize]) -> candle_core::Result<Vec<f32>> {
        let n: usize = dims.iter().product();
        if let Some((_, values)) = self.constants.iter().find(|(c, _)| c == name) {
            if values.len() != n {
                candle_core::bail!(
                    "constant {name} has {} values, {dims:?} needs {n}",
                    values.len()
                );
            }
            return Ok(values.clone());
        }
        let mut state = fnv1a64(format!("{}/{name}", self.tag).as_bytes());
        let mut uniform = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f64 / (1u64 << 24) as f64
        };
        let map: Box<dyn Fn(f64) -> f64> = if dims.len() == 4 {
            let fan_in: usize = dims[1..].iter().product();
            let bound = (3.0 / fan_in as f64).sqrt();
            Box::new(move |u| (2.0 * u - 1.0) * bound)
        } else if dims.len() == 2 {
            // A linear layer's (out, in) weight.
            let bound = (3.0 / dims[1] as f64).sqrt();
            Box::new(move |u| (2.0 * u - 1.0) * bound)
        } else if name.ends_with("running_var") || name.ends_with(".weight") {
            Box::new(|u| 0.5 + u)
        } else if name.ends_with("running_mean") || name.ends_with(".bias") {
            Box::new(|u| 0.2 * (2.0 * u - 1.0))
        } else {
            candle_core::bail!("no weight formula for {name} {dims:?}")
        };
        Ok((0..n).map(|_| map(uniform()) as f32).collect())
    }
}

impl candle_nn::var_builder::SimpleBackend for FormulaWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::from_vec(self.values(name, s.dims())?, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("seeded weights need a shape: {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_keys_lose_the_prefix_and_take_the_official_renames_once() {
        assert_eq!(module_path("module.conv1.weight"), "conv1.weight");
        assert_eq!(
            module_path("module.decoder.conv3.2.weight"),
            "decoder.conv3.3.weight"
        );
        assert_eq!(
            module_path("module.decoder.conv3.3.weight"),
            "decoder.conv3.4.weight"
        );
        assert_eq!(module_path("module.fushion.3.bias"), "fushion.4.bias");
        assert_eq!(module_path("fushion.0.weight"), "fushion.0.weight");
    }

    #[test]
    fn seeded_weights_follow_the_formula() {
        let w = FormulaWeights::new("atr");
        let a = w.values("conv1.weight", &[64, 3, 3, 3]).unwrap();
        assert_eq!(a, w.values("conv1.weight", &[64, 3, 3, 3]).unwrap());
        assert_ne!(
            a,
            FormulaWeights::new("lip")
                .values("conv1.weight", &[64, 3, 3, 3])
                .unwrap()
        );
        let bound = (3.0f64 / 27.0).sqrt() as f32;
        assert!(a.iter().all(|v| v.abs() <= bound));
        let var = w.values("bn1.running_var", &[64]).unwrap();
        assert!(var.iter().all(|v| (0.5..1.5).contains(v)));
        assert!(w.values("bn1.num_batches_tracked", &[]).is_err());
    }
}
