//! The GPU paths that stay off until a card has verified them, checked by `virtualfit
//! gpu-check` on DM-VTON: `--cuda-graphs` (one graph per batch-size bucket, a batch of 5 padded
//! to 8), `--cudnn-conv` (our cached cuDNN convolutions), both together, and `--overlap` (the
//! next batch staged on a copy stream). Each row sets the path against the one it replaces on
//! the same random inputs, in one run: the largest difference of their outputs, and their
//! median times side by side. A path that fails (a capture refused, a kernel fault) is a row
//! with its error; the other rows still run.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::gpu_check::{compare, time_forward, Timing};
use super::DmVton;
use crate::models::buckets::Bucketed;
use crate::models::staging::Stager;
use crate::models::{ModelInput, TryOnBatch, TryOnModel, MODEL_HEIGHT, MODEL_WIDTH};
use crate::ops::convert::to_u8_images;
use crate::ops::cudnn_conv::CheckShape;
use crate::ops::ConvActivation;

/// DM-VTON's dense convolutions at 256×192, for the cuDNN self-check. Every class occurs: 1×1
/// and 3×3, strides 1 and 2, each activation, the FPNs, the flow heads and the generator.
pub const CONV_SHAPES: [CheckShape; 16] = [
    ("fpn.first", 3, 256, 192, 32, 3, 1, 1, ConvActivation::Relu6),
    (
        "fpn.expand0",
        32,
        256,
        192,
        32,
        1,
        1,
        0,
        ConvActivation::Relu6,
    ),
    (
        "fpn.project0",
        32,
        256,
        192,
        16,
        1,
        1,
        0,
        ConvActivation::None,
    ),
    (
        "fpn.expand1",
        16,
        256,
        192,
        96,
        1,
        1,
        0,
        ConvActivation::Relu6,
    ),
    (
        "fpn.project1",
        96,
        128,
        96,
        24,
        1,
        1,
        0,
        ConvActivation::None,
    ),
    (
        "fpn.lateral0",
        24,
        128,
        96,
        256,
        1,
        1,
        0,
        ConvActivation::None,
    ),
    (
        "fpn.smooth@128x96",
        256,
        128,
        96,
        256,
        3,
        1,
        1,
        ConvActivation::None,
    ),
    (
        "fpn.smooth@16x12",
        256,
        16,
        12,
        256,
        3,
        1,
        1,
        ConvActivation::None,
    ),
    (
        "fpn.expand6",
        160,
        8,
        6,
        960,
        1,
        1,
        0,
        ConvActivation::Relu6,
    ),
    ("fpn.top", 320, 8, 6, 256, 1, 1, 0, ConvActivation::None),
    (
        "flow.main0",
        49,
        128,
        96,
        128,
        3,
        1,
        1,
        ConvActivation::LeakyRelu(0.1),
    ),
    (
        "flow.main1",
        128,
        128,
        96,
        64,
        3,
        1,
        1,
        ConvActivation::LeakyRelu(0.1),
    ),
    ("flow.main3", 32, 128, 96, 2, 3, 1, 1, ConvActivation::None),
    (
        "flow.refine0",
        512,
        64,
        48,
        128,
        3,
        1,
        1,
        ConvActivation::LeakyRelu(0.1),
    ),
    ("gen.stem", 7, 256, 192, 32, 3, 2, 1, ConvActivation::Relu6),
    ("gen.head", 320, 8, 6, 512, 1, 1, 0, ConvActivation::Relu6),
];

/// A path's output against the old path's: the graphs replay the same kernels, so they must
/// agree to rounding; the cuDNN convolutions sum in another order (and may use TF32 or tensor
/// cores in half precision), so their bound is the parity bound's order.
pub const GRAPH_TOLERANCE: f64 = 1e-6;
pub const CONV_TOLERANCE_F32: f64 = 1e-4;
pub const CONV_TOLERANCE_HALF: f64 = 1e-2;
/// A path's try-on on the parity fixture against the reference (the official code's output):
/// the parity bound in f32, and in f16 the bound of the CPU's f16 test
/// (`tests/models/dmvton.rs`, about twice f16's own error).
pub const FIXTURE_TOLERANCE_F32: f64 = super::gpu_check::PARITY_TOLERANCE;
pub const FIXTURE_TOLERANCE_F16: f64 = 1.5e-2;

/// The parity fixture's pairs and reference try-on.
pub struct Fixture {
    batch: TryOnBatch,
    tryon: Tensor,
}

impl Fixture {
    /// Reads `input.*` and `output.tryon` from a parity file (safetensors).
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let get = |name: &str| -> anyhow::Result<Tensor> {
            tensors
                .get(name)
                .cloned()
                .with_context(|| format!("{} has no {name}", path.display()))
        };
        Ok(Self {
            batch: TryOnBatch {
                person: get("input.person")?,
                cloth: get("input.cloth")?,
                cloth_mask: get("input.cloth_mask")?,
            },
            tryon: get("output.tryon")?,
        })
    }

    /// The relative L2 error of `model`'s try-on of the fixture's pairs.
    pub fn error(&self, model: &dyn TryOnModel) -> anyhow::Result<f64> {
        let device = model.device();
        let batch = TryOnBatch {
            person: self.batch.person.to_device(device)?,
            cloth: self.batch.cloth.to_device(device)?,
            cloth_mask: self.batch.cloth_mask.to_device(device)?,
        };
        let (rel_l2, _, nan) = compare(&model.forward(&batch)?, &self.tryon)?;
        Ok(if nan { f64::NAN } else { rel_l2 })
    }
}

/// One path at one batch size and precision.
#[derive(Debug, Clone, Serialize)]
pub struct PathRow {
    pub path: String,
    pub dtype: String,
    pub batch_size: usize,
    /// Relative L2 and largest absolute difference from the old path's output (8-bit levels for
    /// `overlap`).
    pub rel_l2: f64,
    pub max_abs: f64,
    /// The path's try-on of the parity fixture's pairs against the reference outputs (rel L2),
    /// where a fixture was given; it counts in `pass`.
    pub fixture_rel_l2: Option<f64>,
    pub pass: bool,
    pub old_ms: f64,
    pub new_ms: f64,
    /// Old time over new time.
    pub speedup: f64,
    pub images_per_s: f64,
    pub peak_memory_mib: Option<f64>,
    /// Memory held by CUDA graphs' allocations (their own pool, not in `peak_memory_mib`) after
    /// the timed runs; `None` where not measured.
    pub graph_memory_mib: Option<f64>,
    /// Memory the device's pool took from the driver during the timed runs, past what it held
    /// before them (0: the steady state allocates nothing new); `None` where not measured.
    pub reserved_growth_mib: Option<f64>,
    pub error: Option<String>,
}

impl PathRow {
    fn failed(path: &str, dtype: DType, batch_size: usize, error: String) -> Self {
        PathRow {
            path: path.into(),
            dtype: dtype.as_str().into(),
            batch_size,
            rel_l2: f64::INFINITY,
            max_abs: f64::INFINITY,
            fixture_rel_l2: None,
            pass: false,
            old_ms: f64::NAN,
            new_ms: f64::NAN,
            speedup: f64::NAN,
            images_per_s: f64::NAN,
            peak_memory_mib: None,
            graph_memory_mib: None,
            reserved_growth_mib: None,
            error: Some(error),
        }
    }
}

/// A batch of random inputs, the same for every path at this size (seeded on the CPU).
fn seeded_batch(batch_size: usize, device: &Device) -> anyhow::Result<TryOnBatch> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(batch_size as u64);
    let mut tensor = |c: usize, mask: bool| -> anyhow::Result<Tensor> {
        let n = batch_size * c * MODEL_HEIGHT * MODEL_WIDTH;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let v: f32 = rng.random_range(-1.0..1.0);
                if mask {
                    f32::from(v > 0.0)
                } else {
                    v
                }
            })
            .collect();
        Ok(Tensor::from_vec(
            data,
            (batch_size, c, MODEL_HEIGHT, MODEL_WIDTH),
            device,
        )?)
    };
    Ok(TryOnBatch {
        person: tensor(3, false)?,
        cloth: tensor(3, false)?,
        cloth_mask: tensor(1, true)?,
    })
}

/// The device pool's reserved memory now (bytes), and a reset of its high-water mark.
fn reserved_now(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let now = crate::ops::cuda::reserved_memory(d).ok()?.0;
            crate::ops::cuda::reset_reserved_high(d).ok()?;
            Some(now)
        }
        _ => None,
    }
}

/// How far the pool's reservation rose above `before` since [`reserved_now`], in MiB.
fn reserved_growth(device: &Device, before: Option<u64>) -> Option<f64> {
    match (device, before) {
        #[cfg(feature = "cuda")]
        (Device::Cuda(d), Some(before)) => {
            let high = crate::ops::cuda::reserved_memory(d).ok()?.1;
            Some(high.saturating_sub(before) as f64 / (1 << 20) as f64)
        }
        _ => None,
    }
}

/// What CUDA graphs hold on `device`, in MiB.
fn graph_memory(device: &Device) -> Option<f64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => crate::ops::cuda::graph_memory(d)
            .ok()
            .map(|b| b as f64 / (1 << 20) as f64),
        _ => None,
    }
}

/// One row: `new` against `old` at `batch_size`, outputs compared within `tolerance`.
#[allow(clippy::too_many_arguments)]
fn row(
    path: &str,
    dtype: DType,
    batch_size: usize,
    old: &dyn TryOnModel,
    new: &dyn TryOnModel,
    tolerance: f64,
    iterations: usize,
    old_timing: Option<&Timing>,
) -> anyhow::Result<PathRow> {
    let device = new.device().clone();
    let batch = seeded_batch(batch_size, &device)?;
    let want = old.forward(&batch)?;
    let got = new.forward(&batch)?;
    let (rel_l2, max_abs, nan) = compare(&got, &want)?;
    let old_timing = match old_timing {
        Some(t) => t.clone(),
        None => time_forward(old, batch_size, iterations)?,
    };
    let before = reserved_now(&device);
    let timing = time_forward(new, batch_size, iterations)?;
    Ok(PathRow {
        path: path.into(),
        dtype: dtype.as_str().into(),
        batch_size,
        rel_l2,
        max_abs,
        fixture_rel_l2: None,
        pass: !nan && rel_l2 <= tolerance,
        old_ms: old_timing.median_batch_ms,
        new_ms: timing.median_batch_ms,
        speedup: old_timing.median_batch_ms / timing.median_batch_ms,
        images_per_s: timing.images_per_s,
        peak_memory_mib: timing.peak_memory_mib,
        graph_memory_mib: graph_memory(&device),
        reserved_growth_mib: reserved_growth(&device, before),
        error: None,
    })
}

/// Rows for `path` at each batch size: `build` makes the new model (an error there fails every
/// row of the path), each size is compared and timed against `old`.
#[allow(clippy::too_many_arguments)]
fn path_rows(
    path: &str,
    dtype: DType,
    sizes: &[usize],
    old: &dyn TryOnModel,
    old_timings: &[Timing],
    tolerance: f64,
    iterations: usize,
    fixture: Option<&Fixture>,
    build: impl FnOnce() -> anyhow::Result<Box<dyn TryOnModel>>,
) -> Vec<PathRow> {
    let fail_all = |e: String| -> Vec<PathRow> {
        sizes
            .iter()
            .map(|&b| PathRow::failed(path, dtype, b, e.clone()))
            .collect()
    };
    let new = match build() {
        Ok(m) => m,
        Err(e) => return fail_all(format!("{e:#}")),
    };
    let fixture_rel_l2 = match fixture.map(|f| f.error(new.as_ref())).transpose() {
        Ok(e) => e,
        Err(e) => return fail_all(format!("the parity fixture: {e:#}")),
    };
    let fixture_tolerance = if dtype == DType::F32 {
        FIXTURE_TOLERANCE_F32
    } else {
        FIXTURE_TOLERANCE_F16
    };
    let fixture_ok = fixture_rel_l2.is_none_or(|e| e <= fixture_tolerance);
    sizes
        .iter()
        .map(|&b| {
            let old_timing = old_timings.iter().find(|t| t.batch_size == b);
            row(
                path,
                dtype,
                b,
                old,
                new.as_ref(),
                tolerance,
                iterations,
                old_timing,
            )
            .map(|r| PathRow {
                fixture_rel_l2,
                pass: r.pass && fixture_ok,
                ..r
            })
            .unwrap_or_else(|e| PathRow::failed(path, dtype, b, format!("{e:#}")))
        })
        .collect()
}

/// Random 8-bit requests as the server prepares them (CPU tensors, `H×W×C`).
fn requests(count: usize, seed: u64) -> anyhow::Result<Vec<ModelInput>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut image = |c: usize| -> anyhow::Result<Tensor> {
        let data: Vec<u8> = (0..MODEL_HEIGHT * MODEL_WIDTH * c)
            .map(|_| rng.random())
            .collect();
        Ok(Tensor::from_vec(
            data,
            (MODEL_HEIGHT, MODEL_WIDTH, c),
            &Device::Cpu,
        )?)
    };
    (0..count)
        .map(|_| {
            Ok(ModelInput {
                person: image(3)?,
                cloth: image(3)?,
                garment_mask: Some(image(1)?),
                person_mask: None,
                content: None,
                options: Default::default(),
            })
        })
        .collect()
}

/// `--overlap` at `batch_size`: `rounds` consecutive batches served as the worker serves them,
/// from 8-bit requests to 8-bit images on the CPU, staged when formed (old) against staged
/// while the previous batch runs (new). The outputs must be the same bytes.
fn overlap_row(
    model: &dyn TryOnModel,
    dtype: DType,
    batch_size: usize,
    rounds: usize,
) -> anyhow::Result<PathRow> {
    let device = model.device().clone();
    let rounds = rounds.max(2);
    let all = requests(batch_size * (rounds + 1), batch_size as u64)?;
    let batches: Vec<Vec<&ModelInput>> =
        all.chunks(batch_size).map(|c| c.iter().collect()).collect();
    let old = |b: &[&ModelInput]| -> anyhow::Result<Tensor> {
        let batch = TryOnBatch::from_inputs(b, &device)?;
        Ok(to_u8_images(&model.forward(&batch)?)?.to_device(&Device::Cpu)?)
    };
    let mut stager = Stager::new(&device)?;
    let mut new = |i: usize| -> anyhow::Result<Tensor> {
        let (batch, _) = stager.batch(&batches[i])?;
        let images = to_u8_images(&model.forward(&batch)?)?;
        if let Some(next) = all.chunks(batch_size).nth(i + 1) {
            stager.prestage(next)?;
        }
        Ok(stager.download(&images)?)
    };
    // Warm both, and compare the first batch's bytes.
    let want = old(&batches[0])?;
    let got = new(0)?;
    let (rel_l2, max_abs, nan) = compare(&got.to_dtype(DType::F32)?, &want.to_dtype(DType::F32)?)?;
    let time = |f: &mut dyn FnMut(usize) -> anyhow::Result<Tensor>| -> anyhow::Result<f64> {
        device.synchronize()?;
        let start = Instant::now();
        for i in 0..rounds {
            f(i)?;
        }
        Ok(start.elapsed().as_secs_f64() * 1e3 / rounds as f64)
    };
    let old_ms = time(&mut |i| old(&batches[i]))?;
    let new_ms = time(&mut new)?;
    Ok(PathRow {
        path: "overlap".into(),
        dtype: dtype.as_str().into(),
        batch_size,
        rel_l2,
        max_abs,
        fixture_rel_l2: None,
        pass: !nan && max_abs == 0.0,
        old_ms,
        new_ms,
        speedup: old_ms / new_ms,
        images_per_s: batch_size as f64 * 1e3 / new_ms,
        peak_memory_mib: None,
        graph_memory_mib: None,
        reserved_growth_mib: None,
        error: None,
    })
}

/// Every off-by-default path on DM-VTON (weights in `dir`) in f32 and f16, at `batch_sizes`
/// (plus 5, which the graphs run padded to 8), each also on the parity `fixture` if given.
pub fn check_paths(
    dir: &std::path::Path,
    fixture: Option<&Fixture>,
    gpu: &Device,
    batch_sizes: &[usize],
    iterations: usize,
) -> Vec<PathRow> {
    let mut sizes: Vec<usize> = batch_sizes.to_vec();
    let largest = sizes.iter().copied().max().unwrap_or(1);
    if largest >= 8 && !sizes.contains(&5) {
        sizes.push(5);
        sizes.sort_unstable();
    }
    let mut rows = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        let model = match DmVton::load_in(dir, gpu, dtype) {
            Ok(m) => m,
            Err(e) => {
                rows.push(PathRow::failed("load", dtype, 0, e.to_string()));
                continue;
            }
        };
        let eager: Vec<Timing> = sizes
            .iter()
            .filter_map(|&b| time_forward(&model, b, iterations).ok())
            .collect();
        let graphed = |model: &DmVton| -> anyhow::Result<Box<dyn TryOnModel>> {
            let g = Bucketed::graphed(Box::new(model.clone()), largest)?;
            g.prepare_batches(largest)?;
            Ok(Box::new(g))
        };
        rows.extend(path_rows(
            "cuda-graphs",
            dtype,
            &sizes,
            &model,
            &eager,
            GRAPH_TOLERANCE,
            iterations,
            fixture,
            || graphed(&model),
        ));
        let conv_tolerance = if dtype == DType::F32 {
            CONV_TOLERANCE_F32
        } else {
            CONV_TOLERANCE_HALF
        };
        match crate::ops::cudnn_conv::enable_cudnn_conv(true) {
            Ok(()) => {
                // The old path's outputs come from the same model with the switch off.
                let candle_conv = SwitchedConv(&model);
                for (path, with_graphs) in [("cudnn-conv", false), ("cudnn-conv+cuda-graphs", true)]
                {
                    rows.extend(path_rows(
                        path,
                        dtype,
                        &sizes,
                        &candle_conv,
                        &eager,
                        conv_tolerance,
                        iterations,
                        fixture,
                        || {
                            if with_graphs {
                                graphed(&model)
                            } else {
                                Ok(Box::new(model.clone()))
                            }
                        },
                    ));
                }
                let _ = crate::ops::cudnn_conv::enable_cudnn_conv(false);
            }
            Err(e) => rows.push(PathRow::failed("cudnn-conv", dtype, 0, e)),
        }
    }
    // Last: a copy stream turns off cudarc's event tracking for what is created after it.
    crate::ops::transfer::prepare_device(gpu);
    match DmVton::load_in(dir, gpu, DType::F32) {
        Ok(model) => {
            for &b in batch_sizes {
                rows.push(
                    overlap_row(&model, DType::F32, b, iterations.clamp(2, 20)).unwrap_or_else(
                        |e| PathRow::failed("overlap", DType::F32, b, format!("{e:#}")),
                    ),
                );
            }
        }
        Err(e) => rows.push(PathRow::failed("overlap", DType::F32, 0, e.to_string())),
    }
    rows
}

/// A model run with `--cudnn-conv` switched off for its calls: the old path of the cuDNN rows.
struct SwitchedConv<'a>(&'a DmVton);

impl TryOnModel for SwitchedConv<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn device(&self) -> &Device {
        self.0.device()
    }

    fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, crate::models::ModelError> {
        let was = crate::ops::cudnn_conv::cudnn_conv_enabled();
        let _ = crate::ops::cudnn_conv::enable_cudnn_conv(false);
        let out = self.0.forward(batch);
        let _ = crate::ops::cudnn_conv::enable_cudnn_conv(was);
        out
    }
}

/// Prints the rows as a table.
pub fn print(rows: &[PathRow]) {
    println!("\nOff-by-default GPU paths vs the path each replaces (same inputs, same run)");
    println!(
        "{:<4} {:<24} {:>5} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>11} {:>9}",
        "",
        "path",
        "dtype",
        "batch",
        "rel_l2",
        "max_abs",
        "fixture",
        "old ms",
        "new ms",
        "speedup",
        "images/s",
        "grew MiB"
    );
    for r in rows {
        println!(
            "{:<4} {:<24} {:>5} {:>6} {:>10.3e} {:>10.3e} {:>10} {:>10.2} {:>10.2} {:>8.2} {:>11.1} {:>9}{}",
            if r.pass { "ok" } else { "FAIL" },
            r.path,
            r.dtype,
            r.batch_size,
            r.rel_l2,
            r.max_abs,
            r.fixture_rel_l2.map_or("-".into(), |e| format!("{e:.3e}")),
            r.old_ms,
            r.new_ms,
            r.speedup,
            r.images_per_s,
            r.reserved_growth_mib
                .map_or("-".into(), |m| format!("{m:.1}")),
            r.error.as_ref().map_or(String::new(), |e| format!("  {e}"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_shapes_cover_every_class_of_convolution_and_run() {
        let has = |f: &dyn Fn(&CheckShape) -> bool| CONV_SHAPES.iter().any(f);
        assert!(has(&|s| s.5 == 1));
        assert!(has(&|s| s.5 == 3 && s.6 == 1));
        assert!(has(&|s| s.5 == 3 && s.6 == 2));
        assert!(has(&|s| s.8 == ConvActivation::None));
        assert!(has(&|s| s.8 == ConvActivation::Relu6));
        assert!(has(&|s| matches!(s.8, ConvActivation::LeakyRelu(_))));
        // Each is a valid convolution, which the CPU path runs to the expected size.
        for &(layer, ci, h, w, co, k, stride, padding, act) in &CONV_SHAPES {
            let x = Tensor::zeros((1, ci, h, w), DType::F32, &Device::Cpu).expect("x");
            let wt = Tensor::zeros((co, ci, k, k), DType::F32, &Device::Cpu).expect("w");
            let b = Tensor::ones(co, DType::F32, &Device::Cpu).expect("b");
            let y = crate::ops::conv2d_fused(&x, &wt, &b, stride, padding, act).expect(layer);
            let out = |n: usize| (n + 2 * padding - k) / stride + 1;
            assert_eq!(y.dims(), &[1, co, out(h), out(w)], "{layer}");
        }
    }
}
