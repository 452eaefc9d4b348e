//! DM-VTON ("Distilled Mobile Real-time Virtual Try-On", KiseKloset/DM-VTON): a parser-free
//! try-on network made of a warp module (`MobileAFWM`) and a generator (`MobileNetV2_unet`).
//!
//! The official weights are `dmvton_pf_warp.pt` and `dmvton_pf_gen.pt` (see
//! `models/dmvton/README.md`); `.safetensors` files with the same stem and tensor names work too.

pub mod afwm;
pub mod checkpoint;
pub mod fpn;
pub mod gpu_check;
pub mod gpu_paths;
pub mod layers;
pub mod unet;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::models::{ModelError, TryOnBatch, TryOnModel};
use crate::ops::{grid_sample, profile, GridPadding};
pub use afwm::MobileAfwm;
pub use checkpoint::Checkpoint;
pub use unet::MobileUnet;

/// File stem of the warp checkpoint.
pub const WARP_STEM: &str = "dmvton_pf_warp";
/// File stem of the generator checkpoint.
pub const GEN_STEM: &str = "dmvton_pf_gen";

/// Everything one forward pass computes that a caller may want to inspect.
#[derive(Debug, Clone)]
pub struct DmVtonOutput {
    /// The try-on image, `N×3×H×W` in [-1, 1].
    pub tryon: Tensor,
    /// The garment warped onto the person, `N×3×H×W`.
    pub warped_cloth: Tensor,
    /// The garment mask warped the same way (zeros padding), `N×1×H×W`.
    pub warped_mask: Tensor,
    /// The final sampling grid, `N×2×H×W` (x then y, in [-1, 1]).
    pub flow: Tensor,
    /// The generator output before tanh / sigmoid, `N×4×H×W`.
    pub gen_raw: Tensor,
}

/// The DM-VTON try-on model.
#[derive(Debug, Clone)]
pub struct DmVton {
    warp: MobileAfwm,
    gen: MobileUnet,
    device: Device,
    /// The precision the networks run in (weights and activations); inputs are converted to
    /// it and the try-on image back to f32.
    dtype: DType,
}

/// `DIR/STEM.pt`, or `DIR/STEM.safetensors` when only that exists.
fn checkpoint_path(dir: &Path, stem: &str) -> PathBuf {
    let pt = dir.join(format!("{stem}.pt"));
    let st = dir.join(format!("{stem}.safetensors"));
    if !pt.exists() && st.exists() {
        st
    } else {
        pt
    }
}

impl DmVton {
    /// Loads `dmvton_pf_warp.pt` and `dmvton_pf_gen.pt` (or `.safetensors`) from `dir`, in f32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::load_in(dir, device, DType::F32)
    }

    /// [`DmVton::load`] running in `dtype` (f32, f16 or bf16).
    pub fn load_in(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        Self::load_files(
            &checkpoint_path(dir, WARP_STEM),
            &checkpoint_path(dir, GEN_STEM),
            device,
            dtype,
        )
    }

    /// Loads the warp and generator checkpoints from the given files, running in `dtype`.
    pub fn load_files(
        warp: &Path,
        gen: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::Candle(candle_core::Error::Msg(format!(
                "DM-VTON runs in f32, f16 or bf16, not {}",
                dtype.as_str()
            ))));
        }
        let warp = Checkpoint::load(warp, device)?.build(device, dtype, "warp", MobileAfwm::new)?;
        let gen = Checkpoint::load(gen, device)?
            .build(device, dtype, "generator", |vb| MobileUnet::new(vb, 7, 4))?;
        Ok(Self {
            warp,
            gen,
            device: device.clone(),
            dtype,
        })
    }

    /// The precision the networks run in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The warp module.
    pub fn warp_module(&self) -> &MobileAfwm {
        &self.warp
    }

    /// Runs the full pipeline and answers every stage's output.
    pub fn run(&self, batch: &TryOnBatch) -> candle_core::Result<DmVtonOutput> {
        let device = &self.device;
        let _pass = profile::stage("forward", device);
        let dtype = self.dtype;
        let person = batch.person.to_dtype(dtype)?;
        let mask = batch.cloth_mask.gt(0.5f64)?.to_dtype(dtype)?;
        let cloth = batch.cloth.to_dtype(dtype)?.broadcast_mul(&mask)?;
        let warp = {
            let _stage = profile::stage("warp", device);
            self.warp.forward(&person, &cloth)?
        };
        let grid = warp.flow.permute((0, 2, 3, 1))?;
        let warped_mask = grid_sample(&mask, &grid, GridPadding::Zeros, true)?;
        let gen_in = Tensor::cat(&[&person, &warp.warped_cloth, &warped_mask], 1)?;
        let gen_raw = {
            let _stage = profile::stage("generator", device);
            self.gen.forward(&gen_in)?
        };
        let rendered = gen_raw.narrow(1, 0, 3)?.tanh()?;
        let composite = (candle_nn::ops::sigmoid(&gen_raw.narrow(1, 3, 1)?)? * &warped_mask)?;
        let tryon = (warp.warped_cloth.broadcast_mul(&composite)?
            + rendered.broadcast_mul(&(1.0 - &composite)?)?)?;
        Ok(DmVtonOutput {
            tryon,
            warped_cloth: warp.warped_cloth,
            warped_mask,
            flow: warp.flow,
            gen_raw,
        })
    }
}

impl TryOnModel for DmVton {
    fn name(&self) -> &str {
        "dmvton"
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
        Ok(self.run(batch)?.tryon.to_dtype(DType::F32)?)
    }
}

/// Where the DM-VTON weights are published, and how `--model-source DIR` wants them.
pub const WEIGHTS_HELP: &str = "download dmvton_pf_warp.pt and dmvton_pf_gen.pt from \
     release 1.0.0 of https://github.com/KiseKloset/DM-VTON (its Releases page), put both in one \
     folder under exactly these names, and run with --model-source FOLDER \
     (models/dmvton/README.md)";

/// The registry entry.
pub struct Family;

impl crate::models::ModelFamily for Family {
    fn name(&self) -> &'static str {
        "dmvton"
    }

    fn about(&self) -> &'static str {
        "DM-VTON; needs --model-source DIR with its two checkpoints"
    }

    fn input(&self, _options: &crate::models::RequestOptions) -> crate::models::InputSpec {
        crate::models::InputSpec::letterboxed()
    }

    fn licences(&self, _flags: &crate::models::ModelFlags) -> Vec<crate::models::Licence> {
        vec![crate::models::Licence {
            part: "DM-VTON weights".into(),
            source: "KiseKloset/DM-VTON release 1.0.0".into(),
            licence: "CC BY-NC-SA 4.0, non-commercial".into(),
        }]
    }

    fn load(
        &self,
        request: &crate::models::LoadRequest<'_>,
    ) -> Result<crate::models::LoadedModel, ModelError> {
        if let crate::models::WeightSource::Hub { .. } = request.source {
            return Err(crate::models::ModelFamily::not_on_hub(self));
        }
        let dir = crate::models::registry::required_dir(&request.source, self.name())?;
        Ok(crate::models::LoadedModel::Batch(Box::new(
            DmVton::load_in(dir, request.device, request.dtype)?,
        )))
    }

    fn not_on_hub(&self) -> ModelError {
        ModelError::NotOnHub {
            model: self.name().into(),
            help: WEIGHTS_HELP.into(),
        }
    }
}
