//! CUDA launches for the custom ops (`cuda` feature). The kernels live in `kernels/*.cu`,
//! compiled to PTX by build.rs and loaded once per device; every op runs its kernel through
//! [`launch`].

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

/// A kernel of `kernels/`: its function, the module its PTX loads as, and that PTX.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    pub func: &'static str,
    pub module: &'static str,
    pub ptx: &'static str,
}

/// The kernel `$func` of `kernels/$file.cu`: build.rs compiled the file to PTX, which loads as
/// the module `vf_$file`.
macro_rules! kernel {
    ($func:literal in $file:literal) => {
        Kernel {
            func: $func,
            module: concat!("vf_", $file),
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")),
        }
    };
}

pub const GRID_SAMPLE: Kernel = kernel!("grid_sample_bilinear_f32" in "grid_sample");
pub const U8_HWC_TO_F32_NCHW: Kernel = kernel!("u8_hwc_to_f32_nchw" in "convert");
pub const F32_NCHW_TO_U8_HWC: Kernel = kernel!("f32_nchw_to_u8_hwc" in "convert");
pub const CORRELATION: Kernel = kernel!("correlation7_f32" in "correlation");
pub const DEPTHWISE: Kernel = kernel!("depthwise3x3_f32" in "depthwise");
pub const RESIZE: Kernel = kernel!("resize_bilinear_f32" in "resize");
pub const BIAS_ACT: Kernel = kernel!("bias_act_f32" in "bias_act");
/// Flash attention per element type (f16, bf16) and padded head dimension, in the order of
/// [`crate::ops::flash_attention::PADDED_HEAD_DIMS`].
pub const FLASH_ATTENTION_F16: [Kernel; 5] = [
    kernel!("flash_attention_f16_d48" in "flash_attention"),
    kernel!("flash_attention_f16_d64" in "flash_attention"),
    kernel!("flash_attention_f16_d80" in "flash_attention"),
    kernel!("flash_attention_f16_d128" in "flash_attention"),
    kernel!("flash_attention_f16_d160" in "flash_attention"),
];
pub const FLASH_ATTENTION_BF16: [Kernel; 5] = [
    kernel!("flash_attention_bf16_d48" in "flash_attention"),
    kernel!("flash_attention_bf16_d64" in "flash_attention"),
    kernel!("flash_attention_bf16_d80" in "flash_attention"),
    kernel!("flash_attention_bf16_d128" in "flash_attention"),
    kernel!("flash_attention_bf16_d160" in "flash_attention"),
];

/// A scalar parameter of a kernel, of the C type the kernel declares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    I32(i32),
    I64(i64),
    F32(f32),
}

/// Launches `kernel` on `threads` threads with, in the order every kernel of `kernels/`
/// declares them: the contiguous elements of each of `inputs` (of element type `I`), a new
/// output of `out_len` elements of type `O`, then `scalars`. Answers the output; `op` names the
/// op in errors.
///
/// # Safety
///
/// The inputs, the output and `scalars` must be, in number, order and type, the parameters of
/// `kernel`; the inputs must hold every element that the kernel reads for these scalars on
/// `threads` threads, and it must write every element of the output and no more.
pub unsafe fn launch<I, O>(
    op: &str,
    kernel: &Kernel,
    inputs: &[(&CudaStorage, &Layout)],
    out_len: usize,
    threads: usize,
    scalars: &[Scalar],
) -> Result<CudaStorage>
where
    I: CudaDType + DeviceRepr,
    O: CudaDType + DeviceRepr,
{
    let Some((first, _)) = inputs.first() else {
        candle_core::bail!("{op}: a kernel launch needs an input");
    };
    let dev = first.device().clone();
    let views = inputs
        .iter()
        .map(|(storage, layout)| view::<I>(storage, layout, op))
        .collect::<Result<Vec<_>>>()?;
    let func = dev.get_or_load_custom_func(kernel.func, kernel.module, kernel.ptx)?;
    // SAFETY: the caller vouches that the kernel writes every element of the output.
    let out = unsafe { alloc_output::<O>(&dev, out_len) }?;
    let mut builder = func.builder();
    for v in &views {
        builder.arg(v);
    }
    builder.arg(&out);
    for s in scalars {
        match s {
            Scalar::I32(v) => builder.arg(v),
            Scalar::I64(v) => builder.arg(v),
            Scalar::F32(v) => builder.arg(v),
        };
    }
    // SAFETY: the caller answers for the arguments matching the kernel and for the sizes it
    // reads and writes; the views and the output live until the launch is queued on the
    // device's stream, which orders it before any later use of the output.
    unsafe { builder.launch(elementwise(threads)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// The contiguous elements of a CUDA tensor.
fn view<'a, T: CudaDType + DeviceRepr>(
    storage: &'a CudaStorage,
    layout: &Layout,
    op: &str,
) -> Result<CudaView<'a, T>> {
    let slice = storage.as_cuda_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// The output buffer of a kernel launch, left uninitialised.
///
/// # Safety
///
/// The kernel must write every element before anything reads it.
unsafe fn alloc_output<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: the caller answers for the writes; every kernel in kernels/ writes each element of
    // its output (one thread per output element, or per pixel for all of its channels or
    // displacements).
    unsafe { dev.alloc::<T>(len) }
}

/// One thread per element, 256 a block (the register-heavy kernels cannot launch 1024).
fn elementwise(n: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}
