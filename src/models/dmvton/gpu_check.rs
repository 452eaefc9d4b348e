//! `virtualfit gpu-check`: on a GPU machine, in one run, compares every CUDA kernel with its CPU
//! op on fresh random inputs, runs the DM-VTON parity fixtures on the GPU and times the forward
//! pass at several batch sizes. `scripts/gpu-check.sh` wraps it with the card's details and an
//! end-to-end HTTP benchmark.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde::Serialize;

use crate::models::dmvton::DmVton;
use crate::models::{TryOnBatch, TryOnModel, MODEL_HEIGHT, MODEL_WIDTH};
use crate::ops::convert::{to_model_input, to_u8_images, InputKind};
use crate::ops::{self, profile, GridPadding};

/// Largest relative L2 error of a CUDA kernel against its CPU op (f32).
pub const KERNEL_TOLERANCE: f64 = 1e-5;
/// Largest relative L2 error of a model output against the reference fixtures.
pub const PARITY_TOLERANCE: f64 = 1e-4;
/// Flash attention in f16/bf16 against the f32 chunked attention on the same (rounded) inputs:
/// the output's own rounding (bf16: 2^-9 relative) bounds what can be asked.
pub const FLASH_TOLERANCE: f64 = 1e-2;
/// A half-precision kernel against the CPU op in the same precision: both compute in f32 and
/// round once, so they differ by at most a rounding step (f16: 2^-11, bf16: 2^-8 relative)
/// where the f32 results straddle one; the bound is a few such steps over the whole tensor.
pub const HALF_F16_TOLERANCE: f64 = 2e-3;
pub const HALF_BF16_TOLERANCE: f64 = 1.6e-2;
/// Share of 8-bit values that must be within one level of the reference.
pub const U8_AGREEMENT: f64 = 0.999;

#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// The GPU to check.
    #[arg(long, default_value = "cuda:0")]
    pub device: crate::device::DeviceSpec,
    /// DM-VTON checkpoints (dmvton_pf_warp.pt, dmvton_pf_gen.pt) for the parity run and timings.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Parity fixture (safetensors with input.* and output.* tensors; may hold fewer pairs).
    #[arg(long)]
    pub parity: Option<PathBuf>,
    /// Batch sizes to time the forward pass at.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    /// Timed iterations per batch size (after three warm-up runs).
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// Timed iterations per row of the off-by-default paths (`paths` in the JSON).
    #[arg(long, default_value_t = 10)]
    pub paths_iterations: usize,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub rel_l2: f64,
    pub max_abs: f64,
    pub nan: bool,
    pub pass: bool,
}

/// One timing.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub batch_size: usize,
    pub median_batch_ms: f64,
    pub images_per_s: f64,
    /// The most device memory in use at once over the runs (the weights included), from the
    /// device's memory pool; `None` where there is none (the CPU).
    pub peak_memory_mib: Option<f64>,
}

/// A forward timing in half precision.
#[derive(Debug, Clone, Serialize)]
pub struct HalfTiming {
    pub dtype: String,
    #[serde(flatten)]
    pub timing: Timing,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub device: String,
    pub kernels: Vec<Check>,
    pub parity: Vec<Check>,
    pub timings: Vec<Timing>,
    /// Where the f32 forward pass at the largest batch size spends its time.
    pub profile: Vec<profile::Row>,
    pub parity_tf32: Vec<Check>,
    /// The kernels' f16 and bf16 entries against the CPU ops in the same precision.
    pub half_kernels: Vec<Check>,
    /// DM-VTON in f16 and bf16 against the f32 reference (informative).
    pub parity_half: Vec<Check>,
    pub timings_half: Vec<HalfTiming>,
    pub timings_tf32: Vec<Timing>,
    /// CatVTON's flash attention against the f32 attention: run last, since a kernel that
    /// faults leaves the CUDA context unusable for whatever follows.
    pub flash_attention: Vec<Check>,
    /// The off-by-default paths (`--cuda-graphs`, `--cudnn-conv`, `--overlap`) against the
    /// paths they replace: informative, they decide which defaults to flip.
    pub paths: Vec<super::gpu_paths::PathRow>,
    /// cuDNN convolutions (`--cudnn-conv`) against a strict f32 reference and the old path,
    /// per DM-VTON convolution shape, batch size and precision, each path timed.
    #[cfg(feature = "cudnn")]
    pub cudnn_conv: Vec<ops::cudnn_conv::ConvCheck>,
    /// What failed to run with cuDNN convolutions (the self-check, or the forward with
    /// `--cudnn-conv on`), if anything: the other checks go on.
    #[cfg(feature = "cudnn")]
    pub cudnn_conv_errors: Vec<String>,
    /// DM-VTON in f32 with `--cudnn-conv on` against the reference fixtures.
    #[cfg(feature = "cudnn")]
    pub parity_cudnn_conv: Vec<Check>,
}

/// ‖a − b‖ / ‖b‖ and max |a − b| over all elements, and whether `a` holds a NaN.
pub fn compare(a: &Tensor, b: &Tensor) -> anyhow::Result<(f64, f64, bool)> {
    if a.dims() != b.dims() {
        bail!("shapes differ: {:?} vs {:?}", a.dims(), b.dims());
    }
    let flat = |t: &Tensor| -> anyhow::Result<Vec<f32>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let (a, b) = (flat(a)?, flat(b)?);
    let (mut diff, mut norm, mut max_abs, mut nan) = (0f64, 0f64, 0f64, false);
    for (x, y) in a.iter().zip(&b) {
        nan |= x.is_nan();
        let d = (*x as f64) - (*y as f64);
        diff += d * d;
        norm += (*y as f64) * (*y as f64);
        max_abs = max_abs.max(d.abs());
    }
    let rel = if norm > 0.0 {
        (diff / norm).sqrt()
    } else {
        diff.sqrt()
    };
    Ok((rel, max_abs, nan))
}

fn check(name: String, gpu: &Tensor, cpu: &Tensor, tolerance: f64) -> anyhow::Result<Check> {
    let (rel_l2, max_abs, nan) = compare(gpu, cpu)?;
    Ok(Check {
        pass: !nan && rel_l2 <= tolerance,
        name,
        rel_l2,
        max_abs,
        nan,
    })
}

fn randn(shape: &[usize]) -> anyhow::Result<Tensor> {
    Ok(Tensor::randn(0f32, 1f32, shape, &Device::Cpu)?)
}

fn uniform(shape: &[usize], lo: f32, hi: f32) -> anyhow::Result<Tensor> {
    Ok(Tensor::rand(lo, hi, shape, &Device::Cpu)?)
}

/// Runs `op` on CPU inputs and on copies of them on `gpu`, and compares.
fn kernel(
    name: String,
    gpu: &Device,
    inputs: &[Tensor],
    op: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> anyhow::Result<Check> {
    kernel_within(name, gpu, inputs, op, KERNEL_TOLERANCE)
}

/// [`kernel`] with its own tolerance.
fn kernel_within(
    name: String,
    gpu: &Device,
    inputs: &[Tensor],
    op: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    tolerance: f64,
) -> anyhow::Result<Check> {
    let cpu_out = op(inputs).with_context(|| format!("{name} on the CPU"))?;
    let gpu_out = inputs
        .iter()
        .map(|t| t.to_device(gpu))
        .collect::<candle_core::Result<Vec<_>>>()
        .and_then(|gpu_inputs| op(&gpu_inputs));
    match gpu_out {
        Ok(out) => check(name, &out, &cpu_out, tolerance),
        // A kernel that fails to launch is a failed check, and the others still run.
        Err(e) => Ok(Check {
            name: format!("{name}: {e}"),
            rel_l2: f64::INFINITY,
            max_abs: f64::INFINITY,
            nan: false,
            pass: false,
        }),
    }
}

/// Every custom op, CUDA against CPU, at several sizes, including odd ones and the edges.
pub fn kernel_checks(gpu: &Device) -> anyhow::Result<Vec<Check>> {
    let mut out = Vec::new();
    for &(n, c, h, w, ho, wo) in &[
        (1, 3, 256, 192, 256, 192),
        (3, 5, 31, 17, 40, 9),
        (2, 64, 64, 48, 64, 48),
    ] {
        for padding in [GridPadding::Border, GridPadding::Zeros] {
            for align in [true, false] {
                let inputs = [randn(&[n, c, h, w])?, uniform(&[n, ho, wo, 2], -1.2, 1.2)?];
                out.push(kernel(
                    format!("grid_sample {padding:?} align={align} {n}x{c}x{h}x{w}->{ho}x{wo}"),
                    gpu,
                    &inputs,
                    |t| ops::grid_sample(&t[0], &t[1], padding, align),
                )?);
            }
        }
    }
    for &(n, c, h, w) in &[(1, 256, 8, 6), (2, 256, 64, 48), (3, 7, 13, 11)] {
        let inputs = [randn(&[n, c, h, w])?, randn(&[n, c, h, w])?];
        out.push(kernel(
            format!("correlation {n}x{c}x{h}x{w}"),
            gpu,
            &inputs,
            |t| ops::correlation(&t[0], &t[1]),
        )?);
    }
    for &(n, c, h, w) in &[(2, 32, 128, 96), (1, 960, 8, 6), (3, 5, 7, 9)] {
        for stride in [1, 2] {
            for relu6 in [true, false] {
                let inputs = [randn(&[n, c, h, w])?, randn(&[c, 1, 3, 3])?, randn(&[c])?];
                out.push(kernel(
                    format!("depthwise3x3 s{stride} relu6={relu6} {n}x{c}x{h}x{w}"),
                    gpu,
                    &inputs,
                    |t| ops::depthwise_conv3x3(&t[0], &t[1], &t[2], stride, relu6),
                )?);
            }
        }
    }
    for &(n, c, h, w, oh, ow) in &[
        (1, 256, 8, 6, 16, 12),
        (2, 3, 13, 7, 32, 20),
        (1, 2, 64, 48, 256, 192),
    ] {
        let inputs = [randn(&[n, c, h, w])?];
        out.push(kernel(
            format!("resize_bilinear {h}x{w}->{oh}x{ow}"),
            gpu,
            &inputs,
            |t| ops::resize_bilinear(&t[0], oh, ow),
        )?);
    }
    for &(n, ci, co, h, w, k, stride, pad) in &[
        (4, 96, 24, 32, 24, 1, 1, 0),
        (2, 16, 32, 64, 48, 3, 1, 1),
        (1, 64, 64, 32, 24, 3, 2, 1),
        (3, 24, 8, 16, 12, 1, 1, 0),
    ] {
        let inputs = [
            randn(&[n, ci, h, w])?,
            randn(&[co, ci, k, k])?,
            randn(&[co])?,
        ];
        out.push(kernel(
            format!("conv2d {n}x{ci}x{h}x{w} k{k} s{stride} -> {co}"),
            gpu,
            &inputs,
            |t| ops::conv2d_fused(&t[0], &t[1], &t[2], stride, pad, ops::ConvActivation::Relu6),
        )?);
    }
    for act in [
        ops::ConvActivation::None,
        ops::ConvActivation::Relu6,
        ops::ConvActivation::LeakyRelu(0.1),
    ] {
        let inputs = [randn(&[3, 17, 9, 7])?, randn(&[17])?];
        out.push(kernel(
            format!("bias_activation {act:?} 3x17x9x7"),
            gpu,
            &inputs,
            |t| ops::conv::bias_activation(&t[0], &t[1], act),
        )?);
    }
    for &(n, h, w) in &[(1, 256, 192), (5, 33, 17)] {
        for (kind, c) in [(InputKind::Image, 3), (InputKind::Mask, 1)] {
            let bytes = uniform(&[n, h, w, c], 0.0, 256.0)?.to_dtype(DType::U8)?;
            out.push(kernel(
                format!("to_model_input {kind:?} {n}x{h}x{w}x{c}"),
                gpu,
                &[bytes],
                |t| to_model_input(&t[0], kind),
            )?);
        }
        let x = uniform(&[n, 3, h, w], -1.5, 1.5)?;
        out.push(kernel(
            format!("to_u8_images {n}x3x{h}x{w}"),
            gpu,
            &[x],
            |t| to_u8_images(&t[0])?.to_dtype(DType::F32),
        )?);
    }
    Ok(out)
}

/// The half-precision entries of the kernels (f16, bf16) against the CPU ops in the same
/// precision (f32 arithmetic between rounded loads and stores), on the same rounded inputs:
/// one shape per op and mode, from the DM-VTON networks.
pub fn half_kernel_checks(gpu: &Device) -> anyhow::Result<Vec<Check>> {
    type Op = Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>>;
    let cases: Vec<(String, Vec<Tensor>, Op)> = vec![
        (
            "grid_sample Border align=true 2x64x64x48".into(),
            vec![
                randn(&[2, 64, 64, 48])?,
                uniform(&[2, 64, 48, 2], -1.2, 1.2)?,
            ],
            Box::new(|t| ops::grid_sample(&t[0], &t[1], GridPadding::Border, true)),
        ),
        (
            "grid_sample Zeros align=false 3x5x31x17->40x9".into(),
            vec![randn(&[3, 5, 31, 17])?, uniform(&[3, 40, 9, 2], -1.2, 1.2)?],
            Box::new(|t| ops::grid_sample(&t[0], &t[1], GridPadding::Zeros, false)),
        ),
        (
            "correlation 2x256x16x12".into(),
            vec![randn(&[2, 256, 16, 12])?, randn(&[2, 256, 16, 12])?],
            Box::new(|t| ops::correlation(&t[0], &t[1])),
        ),
        (
            "depthwise3x3 s1 relu6 2x32x128x96".into(),
            vec![
                randn(&[2, 32, 128, 96])?,
                randn(&[32, 1, 3, 3])?,
                randn(&[32])?,
            ],
            Box::new(|t| ops::depthwise_conv3x3(&t[0], &t[1], &t[2], 1, true)),
        ),
        (
            "depthwise3x3 s2 3x5x7x9".into(),
            vec![randn(&[3, 5, 7, 9])?, randn(&[5, 1, 3, 3])?, randn(&[5])?],
            Box::new(|t| ops::depthwise_conv3x3(&t[0], &t[1], &t[2], 2, false)),
        ),
        (
            "resize_bilinear 8x6->16x12".into(),
            vec![randn(&[1, 256, 8, 6])?],
            Box::new(|t| ops::resize_bilinear(&t[0], 16, 12)),
        ),
        (
            "conv2d 4x96x32x24 k1 -> 24".into(),
            vec![
                randn(&[4, 96, 32, 24])?,
                randn(&[24, 96, 1, 1])?,
                randn(&[24])?,
            ],
            Box::new(|t| ops::conv2d_fused(&t[0], &t[1], &t[2], 1, 0, ops::ConvActivation::Relu6)),
        ),
        (
            "conv2d 2x16x64x48 k3 s1 -> 32".into(),
            vec![
                randn(&[2, 16, 64, 48])?,
                randn(&[32, 16, 3, 3])?,
                randn(&[32])?,
            ],
            Box::new(|t| {
                ops::conv2d_fused(
                    &t[0],
                    &t[1],
                    &t[2],
                    1,
                    1,
                    ops::ConvActivation::LeakyRelu(0.1),
                )
            }),
        ),
        (
            "bias_activation LeakyRelu 3x17x9x7".into(),
            vec![randn(&[3, 17, 9, 7])?, randn(&[17])?],
            Box::new(|t| {
                ops::conv::bias_activation(&t[0], &t[1], ops::ConvActivation::LeakyRelu(0.1))
            }),
        ),
    ];
    let mut out = Vec::new();
    for (dtype, tolerance) in [
        (DType::F16, HALF_F16_TOLERANCE),
        (DType::BF16, HALF_BF16_TOLERANCE),
    ] {
        for (name, inputs, op) in &cases {
            let rounded = inputs
                .iter()
                .map(|t| t.to_dtype(dtype))
                .collect::<candle_core::Result<Vec<_>>>()?;
            out.push(kernel_within(
                format!("{} {name}", dtype.as_str()),
                gpu,
                &rounded,
                op,
                tolerance,
            )?);
        }
    }
    Ok(out)
}

/// CatVTON's flash attention (CUDA only, f16/bf16) against the chunked attention in f32 on the
/// CPU, on the same inputs rounded to the half type: the UNet's head sizes, odd token counts
/// (past a query block and a key block) and different query and key counts.
pub fn flash_attention_checks(gpu: &Device) -> anyhow::Result<Vec<Check>> {
    use crate::models::catvton::attention::chunked_attention;
    use crate::ops::flash_attention::flash_attention;
    let mut out = Vec::new();
    for &(groups, n_q, n_k, d) in &[
        (16, 300, 300, 40),
        (16, 200, 200, 80),
        (16, 96, 96, 160),
        (3, 129, 65, 40),
        (2, 1, 1000, 80),
        (1, 1536, 1536, 160),
    ] {
        for dtype in [DType::BF16, DType::F16] {
            let name = format!("flash_attention {dtype:?} {groups}x{n_q}x{d} over {n_k} keys");
            let scale = 1.0 / (d as f64).sqrt();
            // Scores of a few units, as after the projections: softmax neither flat nor one-hot.
            let rounded = |shape: &[usize]| -> anyhow::Result<Tensor> {
                Ok((randn(shape)? * 1.5)?
                    .to_dtype(dtype)?
                    .to_dtype(DType::F32)?)
            };
            let (q, k, v) = (
                rounded(&[groups, n_q, d])?,
                rounded(&[groups, n_k, d])?,
                rounded(&[groups, n_k, d])?,
            );
            let cpu = chunked_attention(&q, &k, &v, scale, usize::MAX)?;
            let gpu_out = [&q, &k, &v]
                .iter()
                .map(|t| t.to_dtype(dtype)?.to_device(gpu))
                .collect::<candle_core::Result<Vec<_>>>()
                .and_then(|t| flash_attention(&t[0], &t[1], &t[2], scale))
                .and_then(|o| o.to_dtype(DType::F32));
            out.push(match gpu_out {
                Ok(o) => check(name, &o, &cpu, FLASH_TOLERANCE)?,
                Err(e) => Check {
                    name: format!("{name}: {e}"),
                    rel_l2: f64::INFINITY,
                    max_abs: f64::INFINITY,
                    nan: false,
                    pass: false,
                },
            });
        }
    }
    Ok(out)
}

/// DM-VTON on the GPU against the reference outputs in `parity`.
pub fn parity_checks(
    model: &DmVton,
    parity: &std::collections::HashMap<String, Tensor>,
) -> anyhow::Result<Vec<Check>> {
    let get = |name: &str| -> anyhow::Result<&Tensor> {
        parity
            .get(name)
            .with_context(|| format!("the parity file has no {name}"))
    };
    let device = model.device().clone();
    let batch = TryOnBatch {
        person: get("input.person")?.to_device(&device)?,
        cloth: get("input.cloth")?.to_device(&device)?,
        cloth_mask: get("input.cloth_mask")?.to_device(&device)?,
    };
    let out = model.run(&batch)?;
    let mut checks = Vec::new();
    for (name, t) in [
        ("output.flow", &out.flow),
        ("output.warped_cloth", &out.warped_cloth),
        ("output.warped_mask", &out.warped_mask),
        ("output.gen_raw", &out.gen_raw),
        ("output.tryon", &out.tryon),
    ] {
        if let Some(reference) = parity.get(name) {
            checks.push(check(name.to_string(), t, reference, PARITY_TOLERANCE)?);
        }
    }
    if let Some(reference) = parity.get("output.tryon_u8") {
        // The fixture stores N×3×H×W; ours come back N×H×W×3.
        let ours = to_u8_images(&out.tryon.to_dtype(DType::F32)?)?
            .permute((0, 3, 1, 2))?
            .to_device(&Device::Cpu)?;
        let a: Vec<u8> = ours.flatten_all()?.to_vec1()?;
        let b: Vec<u8> = reference.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
        let within = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.abs_diff(**y) <= 1)
            .count();
        let share = within as f64 / b.len().max(1) as f64;
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap_or(0);
        checks.push(Check {
            name: format!("output.tryon_u8 within 1 level: {:.4} %", share * 100.0),
            rel_l2: 1.0 - share,
            max_abs: f64::from(max),
            nan: false,
            pass: share >= U8_AGREEMENT,
        });
    }
    Ok(checks)
}

/// A batch of random inputs on `device`.
fn random_batch(batch_size: usize, device: &Device) -> anyhow::Result<TryOnBatch> {
    let shape = |c: usize| [batch_size, c, MODEL_HEIGHT, MODEL_WIDTH];
    Ok(TryOnBatch {
        person: Tensor::rand(-1f32, 1f32, &shape(3), device)?,
        cloth: Tensor::rand(-1f32, 1f32, &shape(3), device)?,
        cloth_mask: Tensor::rand(0f32, 1f32, &shape(1), device)?.round()?,
    })
}

/// Where `passes` forward passes at `batch_size` spend their time, per stage and op kind (the
/// model warmed up first).
pub fn profile_forward(
    model: &dyn TryOnModel,
    batch_size: usize,
    passes: usize,
) -> anyhow::Result<Vec<profile::Row>> {
    let device = model.device().clone();
    let batch = random_batch(batch_size, &device)?;
    model.forward(&batch)?;
    device.synchronize()?;
    profile::start();
    let start = Instant::now();
    let ran = (0..passes.max(1)).try_for_each(|_| model.forward(&batch).map(drop));
    let synced = device.synchronize();
    let total = start.elapsed().as_secs_f64();
    let kinds = profile::finish();
    ran?;
    synced?;
    Ok(profile::rows(&kinds, passes.max(1), total))
}

/// Median forward time per batch on random inputs, after three warm-up runs.
pub fn time_forward(
    model: &dyn TryOnModel,
    batch_size: usize,
    iterations: usize,
) -> anyhow::Result<Timing> {
    let device = model.device().clone();
    let batch = random_batch(batch_size, &device)?;
    reset_peak_memory(&device)?;
    for _ in 0..3 {
        model.forward(&batch)?;
    }
    device.synchronize()?;
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let start = Instant::now();
        model.forward(&batch)?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(Timing {
        batch_size,
        median_batch_ms: median * 1e3,
        images_per_s: batch_size as f64 / median,
        peak_memory_mib: peak_memory(&device)?.map(|b| b as f64 / (1 << 20) as f64),
    })
}

/// Times the forward pass at each of `args`' batch sizes and prints the table; `mode` names
/// the precision in its title.
fn time_and_print(model: &DmVton, mode: &str, args: &GpuCheckArgs) -> anyhow::Result<Vec<Timing>> {
    println!(
        "\nDM-VTON forward {mode} (median of {} runs)",
        args.iterations
    );
    println!(
        "{:>6} {:>14} {:>12} {:>10}",
        "batch", "batch ms", "images/s", "peak MiB"
    );
    args.batch_sizes
        .iter()
        .map(|&b| {
            let t = time_forward(model, b, args.iterations)?;
            println!(
                "{:>6} {:>14.2} {:>12.1} {:>10}",
                t.batch_size,
                t.median_batch_ms,
                t.images_per_s,
                t.peak_memory_mib.map_or("-".into(), |m| format!("{m:.0}"))
            );
            Ok(t)
        })
        .collect()
}

/// Starts a new high-water mark of the device's memory in use.
fn reset_peak_memory(device: &Device) -> anyhow::Result<()> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => Ok(ops::cuda::reset_peak_memory(d)?),
        _ => Ok(()),
    }
}

/// The device's memory in use at its most since [`reset_peak_memory`]; `None` on the CPU, or
/// where allocations do not come from the device's pool (it then reads 0).
fn peak_memory(device: &Device) -> anyhow::Result<Option<u64>> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => Ok(Some(ops::cuda::peak_memory(d)?).filter(|&b| b > 0)),
        _ => Ok(None),
    }
}

/// `virtualfit gpu-check`.
pub fn run(args: &GpuCheckArgs) -> anyhow::Result<()> {
    let gpu = crate::device::select(args.device)?;
    if gpu.is_cpu() {
        bail!("gpu-check needs a GPU device, got the CPU");
    }
    let mut report = Report {
        device: crate::device::name(&gpu),
        ..Report::default()
    };
    report.kernels = kernel_checks(&gpu)?;
    print_checks("CUDA kernel vs CPU op (rel L2 <= 1e-5)", &report.kernels);
    report.half_kernels = half_kernel_checks(&gpu)?;
    print_checks(
        "CUDA kernel in f16/bf16 vs CPU op in the same precision (rel L2 <= 2e-3 / 1.6e-2)",
        &report.half_kernels,
    );
    if let Some(dir) = &args.model_dir {
        let model = DmVton::load(dir, &gpu)?;
        let parity = match &args.parity {
            Some(path) => Some(
                candle_core::safetensors::load(path, &Device::Cpu)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            ),
            None => None,
        };
        // Strict f32 first (required), then TF32 matrix products (`--allow-tf32`, informative).
        for tf32 in [false, true] {
            crate::device::set_tf32(tf32);
            let mode = if tf32 { "with --allow-tf32" } else { "in f32" };
            if let Some(parity) = &parity {
                let checks = parity_checks(&model, parity)?;
                print_checks(
                    &format!("DM-VTON parity on the GPU {mode} (rel L2 <= 1e-4)"),
                    &checks,
                );
                *(if tf32 {
                    &mut report.parity_tf32
                } else {
                    &mut report.parity
                }) = checks;
            }
            let timings = time_and_print(&model, mode, args)?;
            if tf32 {
                report.timings_tf32 = timings;
            } else {
                report.timings = timings;
            }
            if let (false, Some(&largest)) = (tf32, args.batch_sizes.iter().max()) {
                println!(
                    "\nDM-VTON forward in f32 at batch {largest}: time per stage and op kind \
                     (CUDA events, {} passes)",
                    args.iterations
                );
                report.profile = profile_forward(&model, largest, args.iterations)?;
                profile::print(&report.profile);
            }
        }
        crate::device::set_tf32(false);
        #[cfg(feature = "cudnn")]
        {
            // The same model with `--cudnn-conv on` (its first pass plans the shapes); the
            // timings against the old path are the `paths` rows.
            let run = with_cudnn_conv(|| {
                if let Some(parity) = &parity {
                    report.parity_cudnn_conv = parity_checks(&model, parity)?;
                    print_checks(
                        "DM-VTON parity on the GPU in f32 with --cudnn-conv on (rel L2 <= 1e-4)",
                        &report.parity_cudnn_conv,
                    );
                }
                Ok(())
            });
            note_cudnn_conv_error(&mut report, "the f32 forward", run);
        }
        // Half precision (`--dtype f16|bf16`): parity against the f32 reference is informative
        // (the error each precision costs), the timings are the point.
        for dtype in [DType::BF16, DType::F16] {
            let model = DmVton::load_in(dir, &gpu, dtype)?;
            let mode = dtype.as_str();
            if let Some(parity) = &parity {
                let checks = parity_checks(&model, parity)?;
                print_checks(
                    &format!(
                        "DM-VTON on the GPU in {mode} against the f32 reference (informative)"
                    ),
                    &checks,
                );
                report.parity_half.extend(checks.into_iter().map(|mut c| {
                    c.name = format!("{mode} {}", c.name);
                    c
                }));
            }
            let timings = time_and_print(&model, &format!("in {mode}"), args)?;
            report
                .timings_half
                .extend(timings.into_iter().map(|timing| HalfTiming {
                    dtype: mode.to_string(),
                    timing,
                }));
        }
    }
    #[cfg(feature = "cudnn")]
    cudnn_conv_checks(&gpu, &mut report);
    report.flash_attention = flash_attention_checks(&gpu)?;
    print_checks(
        "CatVTON flash attention (f16/bf16) vs f32 attention (rel L2 <= 1e-2)",
        &report.flash_attention,
    );
    if let Some(dir) = &args.model_dir {
        let fixture = args
            .parity
            .as_deref()
            .map(super::gpu_paths::Fixture::load)
            .transpose()?;
        report.paths = super::gpu_paths::check_paths(
            dir,
            fixture.as_ref(),
            &gpu,
            &args.batch_sizes,
            args.paths_iterations,
        );
        super::gpu_paths::print(&report.paths);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    #[allow(unused_mut)]
    let mut failed: Vec<String> = report
        .kernels
        .iter()
        .chain(&report.half_kernels)
        .chain(&report.parity)
        .chain(&report.flash_attention)
        .filter(|c| !c.pass)
        .map(|c| c.name.clone())
        .collect();
    #[cfg(feature = "cudnn")]
    failed.extend(cudnn_conv_failures(&report));
    if !failed.is_empty() {
        bail!("{} check(s) failed: {}", failed.len(), failed.join("; "));
    }
    println!(
        "\nall {} checks passed",
        report.kernels.len()
            + report.half_kernels.len()
            + report.parity.len()
            + report.flash_attention.len()
    );
    Ok(())
}

/// Runs the cuDNN convolution self-check into `report` and prints its table; an error (no
/// cuDNN library, a failing call) is recorded and printed, and the other checks go on.
#[cfg(feature = "cudnn")]
fn cudnn_conv_checks(gpu: &Device, report: &mut Report) {
    let tf32 = if candle_core::cuda::gemm_reduced_precision_f32() {
        " (TF32 allowed)"
    } else {
        ""
    };
    println!(
        "\ncuDNN convolutions (--cudnn-conv) vs strict f32 CPU reference{tf32}, old path for \
         comparison; mean ms of {} calls",
        ops::cudnn_conv::CHECK_ITERATIONS
    );
    match ops::cudnn_conv::self_check(gpu, &super::gpu_paths::CONV_SHAPES) {
        Ok(rows) => {
            for row in &rows {
                println!("{row}");
            }
            report.cudnn_conv = rows;
        }
        Err(e) => note_cudnn_conv_error(report, "the self-check", Err(e.into())),
    }
}

/// Prints and records the error of `what` with cuDNN convolutions, if it failed.
#[cfg(feature = "cudnn")]
fn note_cudnn_conv_error(report: &mut Report, what: &str, run: anyhow::Result<()>) {
    if let Err(e) = run {
        println!("FAIL cuDNN convolutions, {what}: {e:#}");
        report.cudnn_conv_errors.push(format!("{what}: {e:#}"));
    }
}

/// Runs `f` with cuDNN convolutions on, then turns them off again.
#[cfg(feature = "cudnn")]
fn with_cudnn_conv(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    ops::cudnn_conv::enable_cudnn_conv(true).map_err(anyhow::Error::msg)?;
    let result = f();
    ops::cudnn_conv::enable_cudnn_conv(false).map_err(anyhow::Error::msg)?;
    result
}

/// The names of the cuDNN convolution rows and parity checks that failed, and the errors.
#[cfg(feature = "cudnn")]
fn cudnn_conv_failures(report: &Report) -> Vec<String> {
    report
        .cudnn_conv
        .iter()
        .filter(|c| !c.pass)
        .map(|c| format!("cudnn conv {} {}", c.layer, c.shape))
        .chain(
            report
                .parity_cudnn_conv
                .iter()
                .filter(|c| !c.pass)
                .map(|c| format!("--cudnn-conv on: {}", c.name)),
        )
        .chain(
            report
                .cudnn_conv_errors
                .iter()
                .map(|e| format!("cudnn conv, {e}")),
        )
        .collect()
}

fn print_checks(title: &str, checks: &[Check]) {
    println!("\n{title}");
    for c in checks {
        println!(
            "{:<4} {:<60} rel_l2 {:>10.3e}  max_abs {:>10.3e}{}",
            if c.pass { "ok" } else { "FAIL" },
            c.name,
            c.rel_l2,
            c.max_abs,
            if c.nan { "  NaN!" } else { "" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_measures_relative_l2_and_nan() {
        let a = Tensor::new(&[1f32, 2.0, 2.0], &Device::Cpu).expect("a");
        let b = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).expect("b");
        let (rel, max, nan) = compare(&a, &b).expect("compare");
        assert!((rel - 1.0 / 14f64.sqrt()).abs() < 1e-12);
        assert_eq!(max, 1.0);
        assert!(!nan);
        let n = Tensor::new(&[f32::NAN, 2.0, 3.0], &Device::Cpu).expect("n");
        assert!(compare(&n, &b).expect("compare").2);
    }

    #[test]
    fn kernel_checks_pass_cpu_against_cpu() {
        // With the CPU standing in for the GPU every comparison is exact: this exercises the
        // harness (shapes, ops, inputs) that the GPU run uses.
        let checks = kernel_checks(&Device::Cpu).expect("checks");
        assert!(checks.len() > 30);
        for c in checks {
            assert!(c.pass && c.rel_l2 == 0.0, "{c:?}");
        }
    }

    #[test]
    fn half_kernel_checks_run_every_op_in_both_half_precisions() {
        // CPU against CPU: exact, which exercises the rounded inputs and each op's half path.
        let checks = half_kernel_checks(&Device::Cpu).expect("checks");
        assert_eq!(checks.len(), 18);
        for c in checks {
            assert!(c.pass && c.rel_l2 == 0.0, "{c:?}");
        }
    }

    #[test]
    fn flash_attention_checks_run_their_reference_and_fail_where_the_kernel_cannot_run() {
        // On the CPU the reference side runs at every shape and the kernel side is refused:
        // each row is a failed check with the reason, never a pass and never an abort.
        let checks = flash_attention_checks(&Device::Cpu).expect("checks");
        assert_eq!(checks.len(), 12);
        for c in checks {
            assert!(!c.pass && c.name.contains("CUDA only"), "{c:?}");
        }
    }

    #[test]
    fn the_forward_profile_names_each_stage_and_op_kind_of_dm_vton() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dmvton");
        let model = DmVton::load(&dir, &Device::Cpu).expect("the fixture's checkpoints");
        let rows = profile_forward(&model, 1, 1).expect("profile");
        let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
        for kind in [
            "forward",
            "warp",
            "warp: feature pyramids",
            "warp: flow",
            "generator",
            "correlation",
            "grid_sample",
            "depthwise 3x3",
            "conv 1x1",
            "resize",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
        }
        let forward = &rows[0];
        assert_eq!(
            (forward.level.as_str(), forward.calls_per_pass),
            ("stage", 1.0)
        );
        // The pass contains its stages, and the stages their ops.
        let ms = |kind: &str| {
            rows.iter()
                .find(|r| r.kind == kind)
                .map_or(0.0, |r| r.ms_per_pass)
        };
        assert!(ms("forward") >= ms("warp") + ms("generator"));
        let ops: f64 = rows
            .iter()
            .filter(|r| r.level == "op")
            .map(|r| r.ms_per_pass)
            .sum();
        assert!(ops <= ms("forward") && ops > 0.0, "{rows:?}");
        // Five pyramid levels: five correlations per pass.
        let corr = rows.iter().find(|r| r.kind == "correlation").expect("row");
        assert_eq!(corr.calls_per_pass, 5.0);
    }

    #[test]
    fn gpu_check_refuses_the_cpu() {
        let args = GpuCheckArgs {
            device: crate::device::DeviceSpec::Cpu,
            model_dir: None,
            parity: None,
            batch_sizes: vec![1],
            iterations: 1,
            paths_iterations: 1,
            json: None,
        };
        assert!(run(&args).is_err());
    }
}
