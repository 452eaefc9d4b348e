//! Custom candle ops that candle lacks or runs slowly: each is a `CustomOp` with a CPU
//! implementation here and a CUDA one under the `cuda` feature, so model code is
//! device-agnostic.

pub mod conv;
pub mod convert;
pub mod correlation;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod depthwise;
pub mod grid_sample;
pub mod resize;

pub use conv::{conv2d_fused, ConvActivation};
pub use correlation::correlation;
pub use depthwise::depthwise_conv3x3;
pub use grid_sample::{grid_sample, GridPadding};
pub use resize::resize_bilinear;

use candle_core::{CpuStorage, Layout, Result};

/// The f32 elements of a contiguous CPU tensor.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}
