//! Custom candle ops that candle lacks or runs slowly: each is a `CustomOp` with a CPU
//! implementation here and a CUDA one under the `cuda` feature, so model code is
//! device-agnostic. Also the helpers the CPU implementations share: contiguous input slices and
//! the AVX2 dispatch of their inner loops.

/// Defines `$name`, which calls `$portable` with the same arguments, compiled for AVX2 when the
/// CPU has it (detected once, see [`has_avx2`]) and as it is otherwise. `$portable` must be
/// `#[inline(always)]` so that its body is compiled into the AVX2 copy.
macro_rules! avx2_dispatch {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $portable:path
    ) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                /// The portable function compiled with AVX2 enabled.
                ///
                /// # Safety
                ///
                /// The CPU must support AVX2.
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if $crate::ops::has_avx2() {
                    // SAFETY: `has_avx2` has just found AVX2 on this CPU.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

/// For the model code's own inner loops (DensePose's ROIAlign).
pub(crate) use avx2_dispatch;

pub mod conv;
pub mod convert;
pub mod correlation;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod cuda_graph;
pub mod cudnn_conv;
pub mod depthwise;
pub mod flash_attention;
pub mod grid_sample;
pub mod group_norm;
pub mod profile;
pub mod resize;
pub mod transfer;

pub use conv::{conv2d_fused, conv2d_winograd, winograd_applies, winograd_weights, ConvActivation};
pub use correlation::correlation;
pub use cudnn_conv::{cudnn_conv_enabled, enable_cudnn_conv};
pub use depthwise::depthwise_conv3x3;
pub use grid_sample::{grid_sample, GridPadding};
pub use group_norm::group_norm;
pub use resize::resize_bilinear;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

/// The f32 elements of a contiguous CPU tensor.
/// Runs `f32_op` on f32 copies of `inputs` and answers its output in the first input's element
/// type. The CPU ops compute in f32 only: a half-precision tensor on the CPU takes this path,
/// which is also the reference of the GPU kernels' half entries (f32 arithmetic between half
/// loads and stores).
pub(crate) fn in_f32(
    inputs: &[&Tensor],
    f32_op: impl FnOnce(&[Tensor]) -> Result<Tensor>,
) -> Result<Tensor> {
    let dtype = inputs.first().map_or(DType::F32, |t| t.dtype());
    let upcast = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F32))
        .collect::<Result<Vec<_>>>()?;
    f32_op(&upcast)?.to_dtype(dtype)
}

/// Whether `t` is a half-precision tensor on the CPU, which the ops compute through [`in_f32`].
pub(crate) fn half_on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F16 | DType::BF16)
}

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

/// Whether the CPU supports AVX2, detected on the first call and remembered.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}
