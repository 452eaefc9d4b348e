//! CUDA launches for the custom ops (`cuda` feature). The kernels live in `kernels/*.cu`,
//! compiled to PTX by build.rs and loaded once per device; every op runs its kernel through
//! [`launch`].

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};

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
    ($func:expr, $file:literal) => {
        Kernel {
            func: $func,
            module: concat!("vf_", $file),
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")),
        }
    };
}

/// A kernel of `kernels/` in every precision (`kernels/precision.cuh`): the entries
/// `$func_f32`, `$func_f16` and `$func_bf16`, which compute in f32 whatever they load and store.
#[derive(Debug, Clone, Copy)]
pub struct Typed {
    pub f32: Kernel,
    pub f16: Kernel,
    pub bf16: Kernel,
}

macro_rules! typed_kernel {
    ($func:literal, $file:literal) => {
        Typed {
            f32: kernel!(concat!($func, "_f32"), $file),
            f16: kernel!(concat!($func, "_f16"), $file),
            bf16: kernel!(concat!($func, "_bf16"), $file),
        }
    };
}

pub const GRID_SAMPLE: Typed = typed_kernel!("grid_sample_bilinear", "grid_sample");
pub const U8_HWC_TO_F32_NCHW: Kernel = kernel!("u8_hwc_to_f32_nchw", "convert");
pub const F32_NCHW_TO_U8_HWC: Kernel = kernel!("f32_nchw_to_u8_hwc", "convert");
pub const CORRELATION: Typed = typed_kernel!("correlation7", "correlation");
pub const DEPTHWISE: Typed = typed_kernel!("depthwise3x3", "depthwise");
pub const RESIZE: Typed = typed_kernel!("resize_bilinear", "resize");
pub const BIAS_ACT: Typed = typed_kernel!("bias_act", "bias_act");
/// Flash attention per element type (f16, bf16) and padded head dimension, in the order of
/// [`crate::ops::flash_attention::PADDED_HEAD_DIMS`].
pub const FLASH_ATTENTION_F16: [Kernel; 5] = [
    kernel!("flash_attention_f16_d48", "flash_attention"),
    kernel!("flash_attention_f16_d64", "flash_attention"),
    kernel!("flash_attention_f16_d80", "flash_attention"),
    kernel!("flash_attention_f16_d128", "flash_attention"),
    kernel!("flash_attention_f16_d160", "flash_attention"),
];
pub const FLASH_ATTENTION_BF16: [Kernel; 5] = [
    kernel!("flash_attention_bf16_d48", "flash_attention"),
    kernel!("flash_attention_bf16_d64", "flash_attention"),
    kernel!("flash_attention_bf16_d80", "flash_attention"),
    kernel!("flash_attention_bf16_d128", "flash_attention"),
    kernel!("flash_attention_bf16_d160", "flash_attention"),
];

/// A scalar parameter of a kernel, of the C type the kernel declares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    I32(i32),
    I64(i64),
    F32(f32),
}

/// Launches `kernel` on `threads` threads with, in the order every kernel of `kernels/`
/// declares them: the contiguous elements of each of `inputs` (each of its own element type:
/// u8, f32, f16 or bf16), a new output of `out_len` elements of type `O`, then `scalars`.
/// Answers the output; `op` names the op in errors.
///
/// # Safety
///
/// The inputs (with their element types), the output and `scalars` must be, in number, order
/// and type, the parameters of `kernel`; the inputs must hold every element that the kernel
/// reads for these scalars on `threads` threads, and it must write every element of the output
/// and no more.
pub unsafe fn launch<O>(
    op: &str,
    kernel: &Kernel,
    inputs: &[(&CudaStorage, &Layout)],
    out_len: usize,
    threads: usize,
    scalars: &[Scalar],
) -> Result<CudaStorage>
where
    O: CudaDType + DeviceRepr,
{
    let Some((first, _)) = inputs.first() else {
        candle_core::bail!("{op}: a kernel launch needs an input");
    };
    let dev = first.device().clone();
    let views = inputs
        .iter()
        .map(|(storage, layout)| View::of(storage, layout, op))
        .collect::<Result<Vec<_>>>()?;
    let func = dev.get_or_load_custom_func(kernel.func, kernel.module, kernel.ptx)?;
    // SAFETY: the caller vouches that the kernel writes every element of the output.
    let out = unsafe { alloc_output::<O>(&dev, out_len) }?;
    let mut builder = func.builder();
    for v in &views {
        match v {
            View::U8(v) => builder.arg(v),
            View::F32(v) => builder.arg(v),
            View::F16(v) => builder.arg(v),
            View::Bf16(v) => builder.arg(v),
        };
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

/// [`launch`] of the entry of `kernel` for the element type of the first input, which the
/// output shares.
///
/// # Safety
///
/// As for [`launch`], for each of the three entries.
pub unsafe fn launch_typed(
    op: &str,
    kernel: &Typed,
    inputs: &[(&CudaStorage, &Layout)],
    out_len: usize,
    threads: usize,
    scalars: &[Scalar],
) -> Result<CudaStorage> {
    let Some((first, _)) = inputs.first() else {
        candle_core::bail!("{op}: a kernel launch needs an input");
    };
    // SAFETY: the caller answers for the arguments, which are the same for each entry.
    unsafe {
        match first.dtype() {
            DType::F32 => launch::<f32>(op, &kernel.f32, inputs, out_len, threads, scalars),
            DType::F16 => launch::<half::f16>(op, &kernel.f16, inputs, out_len, threads, scalars),
            DType::BF16 => {
                launch::<half::bf16>(op, &kernel.bf16, inputs, out_len, threads, scalars)
            }
            other => candle_core::bail!("{op}: no kernel for {other:?}"),
        }
    }
}

/// The contiguous elements of a CUDA tensor, of its element type.
enum View<'a> {
    U8(CudaView<'a, u8>),
    F32(CudaView<'a, f32>),
    F16(CudaView<'a, half::f16>),
    Bf16(CudaView<'a, half::bf16>),
}

impl<'a> View<'a> {
    fn of(storage: &'a CudaStorage, layout: &Layout, op: &str) -> Result<Self> {
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("{op}: input must be contiguous");
        };
        Ok(match storage.dtype() {
            DType::U8 => View::U8(storage.as_cuda_slice::<u8>()?.slice(a..b)),
            DType::F32 => View::F32(storage.as_cuda_slice::<f32>()?.slice(a..b)),
            DType::F16 => View::F16(storage.as_cuda_slice::<half::f16>()?.slice(a..b)),
            DType::BF16 => View::Bf16(storage.as_cuda_slice::<half::bf16>()?.slice(a..b)),
            other => candle_core::bail!("{op}: no kernel input of {other:?}"),
        })
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

/// The memory pool that stream-ordered allocations on `dev` come from (candle's tensors, where
/// the driver supports them): the device's default pool.
fn default_pool(
    dev: &CudaDevice,
) -> Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().w()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid place for the handle, and `cu_device` is the context's device.
    let status = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    status.result().w()?;
    Ok(pool)
}

/// The most memory in use at once from `dev`'s pool since the last [`reset_peak_memory`] (or
/// since it was created), in bytes.
pub fn peak_memory(dev: &CudaDevice) -> Result<u64> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = default_pool(dev)?;
    let mut high: u64 = 0;
    // SAFETY: USED_MEM_HIGH is a 64-bit value (cuuint64_t), written to `high`.
    let status = unsafe {
        sys::cuMemPoolGetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut high as *mut u64).cast(),
        )
    };
    status.result().w()?;
    Ok(high)
}

/// Starts a new high-water mark of `dev`'s pool at what is in use now.
pub fn reset_peak_memory(dev: &CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = default_pool(dev)?;
    let mut zero: u64 = 0;
    // SAFETY: USED_MEM_HIGH may only be set to 0 (a reset), passed as a 64-bit value.
    let status = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut zero as *mut u64).cast(),
        )
    };
    status.result().w()
}

/// The memory `dev`'s pool holds from the driver now, and at most since the last
/// [`reset_reserved_high`], in bytes: a steady state that allocates nothing new from the driver
/// keeps both where they were.
pub fn reserved_memory(dev: &CudaDevice) -> Result<(u64, u64)> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = default_pool(dev)?;
    let read = |attribute| -> Result<u64> {
        let mut value: u64 = 0;
        // SAFETY: both RESERVED_MEM attributes are 64-bit values (cuuint64_t), written to `value`.
        let status =
            unsafe { sys::cuMemPoolGetAttribute(pool, attribute, (&mut value as *mut u64).cast()) };
        status.result().w()?;
        Ok(value)
    };
    Ok((
        read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?,
        read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
    ))
}

/// Starts a new high-water mark of the memory `dev`'s pool holds from the driver.
pub fn reset_reserved_high(dev: &CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = default_pool(dev)?;
    let mut zero: u64 = 0;
    // SAFETY: RESERVED_MEM_HIGH may only be set to 0 (a reset), passed as a 64-bit value.
    let status = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
            (&mut zero as *mut u64).cast(),
        )
    };
    status.result().w()
}

/// Lets `dev`'s pool keep the memory it has reserved instead of returning it to the driver at
/// each synchronisation (its release threshold, 0 by default), so that a steady state of
/// same-sized batches reuses its memory and asks the driver for none.
pub fn keep_pool_memory(dev: &CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = default_pool(dev)?;
    let mut threshold: u64 = u64::MAX;
    // SAFETY: RELEASE_THRESHOLD is a 64-bit value (cuuint64_t), read from `threshold`.
    let status = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    };
    status.result().w()
}

/// The memory that CUDA graphs' allocations hold on `dev` (graph memory is its own pool, apart
/// from the default pool of [`peak_memory`]), in bytes.
pub fn graph_memory(dev: &CudaDevice) -> Result<u64> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().w()?;
    let mut reserved: u64 = 0;
    // SAFETY: RESERVED_MEM_CURRENT is a 64-bit value (cuuint64_t), written to `reserved`, of the
    // context's own device.
    let status = unsafe {
        sys::cuDeviceGetGraphMemAttribute(
            ctx.cu_device(),
            sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT,
            (&mut reserved as *mut u64).cast(),
        )
    };
    status.result().w()?;
    Ok(reserved)
}
