//! CUDA launches for the custom ops (`cuda` feature). The kernels live in `kernels/*.cu`,
//! compiled to PTX by build.rs and loaded once per device.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

pub const GRID_SAMPLE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/grid_sample.ptx"));
pub const CONVERT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/convert.ptx"));

/// The contiguous elements of a CUDA tensor.
pub fn view<'a, T: CudaDType + DeviceRepr>(
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
fn alloc_output<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every kernel in kernels/ writes each element of its output (one thread per
    // output element, or per pixel for all of its channels or displacements).
    unsafe { dev.alloc::<T>(len) }
}

/// One thread per element, 256 a block (the register-heavy kernels cannot launch 1024).
pub fn elementwise(n: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub fn device(storage: &CudaStorage) -> CudaDevice {
    storage.device().clone()
}

/// Launches `grid_sample_bilinear_f32` and answers `N×C×Ho×Wo`.
#[allow(clippy::too_many_arguments)]
pub fn launch_grid_sample(
    input: &CudaStorage,
    li: &Layout,
    grid: &CudaStorage,
    lg: &Layout,
    (n, c, h, w): (usize, usize, usize, usize),
    (ho, wo): (usize, usize),
    border: bool,
    align_corners: bool,
) -> Result<CudaStorage> {
    let dev = device(input);
    let src = view::<f32>(input, li, "grid_sample")?;
    let grid = view::<f32>(grid, lg, "grid_sample")?;
    let count = n * ho * wo;
    let func = dev.get_or_load_custom_func(
        "grid_sample_bilinear_f32",
        "vf_grid_sample",
        GRID_SAMPLE_PTX,
    )?;
    let out = alloc_output::<f32>(&dev, n * c * ho * wo)?;
    let mut b = func.builder();
    b.arg(&src);
    b.arg(&grid);
    b.arg(&out);
    candle_core::builder_arg!(
        b,
        n as i32,
        c as i32,
        h as i32,
        w as i32,
        ho as i32,
        wo as i32,
        i32::from(border),
        i32::from(align_corners)
    );
    // SAFETY: the arguments match the kernel's signature.
    unsafe { b.launch(elementwise(count)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Launches `u8_hwc_to_f32_nchw`.
pub fn launch_convert_in(
    storage: &CudaStorage,
    layout: &Layout,
    (n, h, w, c): (usize, usize, usize, usize),
    mask: i32,
) -> Result<CudaStorage> {
    let dev = device(storage);
    let src = view::<u8>(storage, layout, "to_model_input")?;
    let total = n * h * w * c;
    let func = dev.get_or_load_custom_func("u8_hwc_to_f32_nchw", "vf_convert", CONVERT_PTX)?;
    let out = alloc_output::<f32>(&dev, total)?;
    let mut b = func.builder();
    b.arg(&src);
    b.arg(&out);
    candle_core::builder_arg!(b, n as i32, h as i32, w as i32, c as i32, mask);
    // SAFETY: the arguments match the kernel's signature.
    unsafe { b.launch(elementwise(total)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Launches `f32_nchw_to_u8_hwc`.
pub fn launch_convert_out(
    storage: &CudaStorage,
    layout: &Layout,
    (n, c, h, w): (usize, usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = device(storage);
    let src = view::<f32>(storage, layout, "to_u8_images")?;
    let total = n * c * h * w;
    let func = dev.get_or_load_custom_func("f32_nchw_to_u8_hwc", "vf_convert", CONVERT_PTX)?;
    let out = alloc_output::<u8>(&dev, total)?;
    let mut b = func.builder();
    b.arg(&src);
    b.arg(&out);
    candle_core::builder_arg!(b, n as i32, c as i32, h as i32, w as i32);
    // SAFETY: the arguments match the kernel's signature.
    unsafe { b.launch(elementwise(total)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

pub const CORRELATION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/correlation.ptx"));
pub const DEPTHWISE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/depthwise.ptx"));
pub const RESIZE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/resize.ptx"));

/// Launches `correlation7_f32`; answers `N×49×H×W`.
pub fn launch_correlation(
    first: &CudaStorage,
    l1: &Layout,
    second: &CudaStorage,
    l2: &Layout,
    (n, c, h, w): (usize, usize, usize, usize),
    displacements: usize,
) -> Result<CudaStorage> {
    let dev = device(first);
    let a = view::<f32>(first, l1, "correlation")?;
    let b2 = view::<f32>(second, l2, "correlation")?;
    let func =
        dev.get_or_load_custom_func("correlation7_f32", "vf_correlation", CORRELATION_PTX)?;
    let out = alloc_output::<f32>(&dev, n * displacements * h * w)?;
    let mut b = func.builder();
    b.arg(&a);
    b.arg(&b2);
    b.arg(&out);
    candle_core::builder_arg!(b, n as i32, c as i32, h as i32, w as i32);
    // SAFETY: the arguments match the kernel's signature.
    unsafe { b.launch(elementwise(n * h * w)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Launches `depthwise3x3_f32`; answers `N×C×Ho×Wo`.
#[allow(clippy::too_many_arguments)]
pub fn launch_depthwise(
    input: &CudaStorage,
    li: &Layout,
    weight: &CudaStorage,
    lw: &Layout,
    bias: &CudaStorage,
    lb: &Layout,
    (n, c, h, w): (usize, usize, usize, usize),
    (ho, wo): (usize, usize),
    stride: usize,
    relu6: bool,
) -> Result<CudaStorage> {
    let dev = device(input);
    let x = view::<f32>(input, li, "depthwise_conv3x3")?;
    let k = view::<f32>(weight, lw, "depthwise_conv3x3")?;
    let bi = view::<f32>(bias, lb, "depthwise_conv3x3")?;
    let total = n * c * ho * wo;
    let func = dev.get_or_load_custom_func("depthwise3x3_f32", "vf_depthwise", DEPTHWISE_PTX)?;
    let out = alloc_output::<f32>(&dev, total)?;
    let mut b = func.builder();
    b.arg(&x);
    b.arg(&k);
    b.arg(&bi);
    b.arg(&out);
    candle_core::builder_arg!(
        b,
        n as i32,
        c as i32,
        h as i32,
        w as i32,
        ho as i32,
        wo as i32,
        stride as i32,
        i32::from(relu6)
    );
    // SAFETY: the arguments match the kernel's signature.
    unsafe { b.launch(elementwise(total)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// Launches `resize_bilinear_f32`; answers `N×C×out_h×out_w`.
pub fn launch_resize(
    input: &CudaStorage,
    layout: &Layout,
    (n, c, h, w): (usize, usize, usize, usize),
    (out_h, out_w): (usize, usize),
) -> Result<CudaStorage> {
    let dev = device(input);
    let x = view::<f32>(input, layout, "resize_bilinear")?;
    let total = n * c * out_h * out_w;
    let func = dev.get_or_load_custom_func("resize_bilinear_f32", "vf_resize", RESIZE_PTX)?;
    let out = alloc_output::<f32>(&dev, total)?;
    let mut b = func.builder();
    b.arg(&x);
    b.arg(&out);
    candle_core::builder_arg!(
        b,
        (n * c) as i32,
        h as i32,
        w as i32,
        out_h as i32,
        out_w as i32
    );
    // SAFETY: the arguments match the kernel's signature.
    unsafe { b.launch(elementwise(total)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

pub const BIAS_ACT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/bias_act.ptx"));

/// Launches `bias_act_f32`.
#[allow(clippy::too_many_arguments)]
pub fn launch_bias_act(
    x: &CudaStorage,
    lx: &Layout,
    bias: &CudaStorage,
    lb: &Layout,
    c: usize,
    plane: usize,
    act: i32,
    slope: f32,
) -> Result<CudaStorage> {
    let dev = device(x);
    let src = view::<f32>(x, lx, "bias_activation")?;
    let b = view::<f32>(bias, lb, "bias_activation")?;
    let total = lx.shape().elem_count();
    let func = dev.get_or_load_custom_func("bias_act_f32", "vf_bias_act", BIAS_ACT_PTX)?;
    let out = alloc_output::<f32>(&dev, total)?;
    let mut builder = func.builder();
    builder.arg(&src);
    builder.arg(&b);
    builder.arg(&out);
    candle_core::builder_arg!(builder, total as i64, c as i32, plane as i64, act, slope);
    // SAFETY: the arguments match the kernel's signature.
    unsafe { builder.launch(elementwise(total)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
