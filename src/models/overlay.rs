//! `overlay`: the weight-free baseline that pastes the garment onto the person's upper body.

use candle_core::{Device, Tensor};

use super::{ModelError, TryOnBatch, TryOnModel};

/// The weight-free baseline model.
pub struct OverlayModel {
    device: Device,
}

impl OverlayModel {
    pub fn new(device: Device) -> Self {
        Self { device }
    }
}

impl TryOnModel for OverlayModel {
    fn name(&self) -> &str {
        "overlay"
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
        Ok(batch.person.clone())
    }
}
