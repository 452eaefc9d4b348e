//! Region-of-interest pooling as detectron2 runs it: torchvision's `roi_align` CPU kernel
//! ([`RoiAlign`]) and detectron2's `ROIPooler`, which sends each box to one FPN level
//! ([`RoiPooler`]).
//!
//! The arithmetic follows torchvision's kernel in f32 and in its order — sample positions,
//! bilinear weights, the sum over a bin's samples and the division by their count — so the
//! results are the same bits. As there, the positions and weights of a box's samples are
//! computed once and shared by all channels. Unlike there, the feature maps are first copied
//! to the host channels last, so that each sample reads its neighbours' channels as contiguous
//! runs, summed for all channels at once (vectorized, each lane in torchvision's order); boxes
//! are pooled in parallel.

use candle_core::{bail, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use super::boxes::{assign_levels, BoxXyxy};

/// torchvision.ops.roi_align (what detectron2's ROIAlign calls), on the CPU.
#[derive(Debug, Clone, Copy)]
pub struct RoiAlign {
    /// Bins per side of the output.
    pub output_size: usize,
    /// Feature-map pixels per image pixel (1 / stride).
    pub spatial_scale: f32,
    /// Samples per bin side; 0 or less: ceil(box side / output_size) samples, per box.
    pub sampling_ratio: i32,
    /// Shift the box by half a pixel (detectron2's ROIAlignV2); without it, a box is at least
    /// one feature pixel on each side (the legacy ROIAlign).
    pub aligned: bool,
}

impl RoiAlign {
    /// features: (N, C, H, W) f32 candle Tensor (on any device; read to host). rois: (batch
    /// index, box). Returns (R, C, out, out) f32 on the features' device.
    pub fn forward(&self, features: &Tensor, rois: &[(usize, BoxXyxy)]) -> Result<Tensor> {
        pool(
            &[features],
            &[self.spatial_scale],
            self.output_size,
            self.sampling_ratio,
            self.aligned,
            rois,
            &vec![0; rois.len()],
        )
    }
}

/// detectron2's ROIPooler for ROIAlign: levels with scales (1/stride), boxes assigned with
/// assign_levels (canonical 224, level 4), output in box order. One level means no assignment.
#[derive(Debug, Clone)]
pub struct RoiPooler {
    pub output_size: usize,
    /// One per feature level, from the finest: 1/4, 1/8, ... (powers of two in a pyramid).
    pub scales: Vec<f32>,
    pub sampling_ratio: i32,
    /// true for detectron2's "ROIAlignV2", false for "ROIAlign".
    pub aligned: bool,
    pub canonical_box_size: f32,
    pub canonical_level: u32,
}

impl RoiPooler {
    /// features: one tensor per level (N, C, H_l, W_l); rois: (batch index, box). Returns
    /// (R, C, out, out).
    ///
    /// A box whose level falls outside the pyramid (a box of negative area) pools to zeros, as
    /// in detectron2, where no level's pooler writes it.
    pub fn forward(&self, features: &[Tensor], rois: &[(usize, BoxXyxy)]) -> Result<Tensor> {
        if features.is_empty() || features.len() != self.scales.len() {
            bail!(
                "ROIPooler: {} feature maps for {} scales",
                features.len(),
                self.scales.len()
            );
        }
        let levels = if self.scales.len() == 1 {
            vec![0; rois.len()]
        } else {
            let min_level = level_of_scale(self.scales[0])?;
            let max_level = level_of_scale(self.scales[self.scales.len() - 1])?;
            if max_level < min_level || (max_level - min_level + 1) as usize != self.scales.len() {
                bail!("ROIPooler: the scales {:?} are not a pyramid", self.scales);
            }
            let boxes: Vec<BoxXyxy> = rois.iter().map(|&(_, b)| b).collect();
            assign_levels(
                &boxes,
                min_level,
                max_level,
                self.canonical_box_size,
                self.canonical_level,
            )
        };
        let features: Vec<&Tensor> = features.iter().collect();
        pool(
            &features,
            &self.scales,
            self.output_size,
            self.sampling_ratio,
            self.aligned,
            rois,
            &levels,
        )
    }
}

/// The pyramid level of a scale: -log2(scale), which must be a whole number of at least 0
/// (detectron2 asserts both; strides are powers of two).
fn level_of_scale(scale: f32) -> Result<u32> {
    let level = -f64::from(scale).log2();
    let whole = level.round();
    if !(whole >= 0.0 && (level - whole).abs() <= 1e-9 * level.abs().max(whole.abs())) {
        bail!("ROIPooler: the scale {scale} is not 1 / a power of two");
    }
    Ok(whole as u32)
}

/// One bilinear sample: its four neighbours (pixel indices y * W + x) and their weights (all
/// zero for a sample off the map, which then reads pixel 0 times 0, as torchvision does).
#[derive(Debug, Clone, Copy)]
struct Sample {
    pixels: [u32; 4],
    weights: [f32; 4],
}

/// A feature map on the host, channels last: (N, H, W, C) contiguous f32, so that a sample
/// reads each neighbour's channels as one contiguous run.
struct HostMap {
    data: Vec<f32>,
    channels: usize,
    height: usize,
    width: usize,
}

impl HostMap {
    /// Reads an (N, C, H, W) tensor into channels-last order on the host.
    fn read(features: &Tensor) -> Result<Self> {
        let (_, channels, height, width) = features.dims4()?;
        let host = features
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .contiguous()?;
        let (storage, layout) = host.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            bail!("ROIAlign: the features did not come to the host");
        };
        let planar = crate::ops::contiguous_f32(cpu, layout, "ROIAlign")?;
        let mut data = vec![0f32; planar.len()];
        if channels > 0 && width > 0 {
            // One output row (image, y) at a time, W x C values from C input rows, taken
            // CHANNEL_BLOCK rows at a time so that each pixel's run is written whole.
            const CHANNEL_BLOCK: usize = 16;
            data.par_chunks_mut(width * channels)
                .enumerate()
                .for_each(|(row, out)| {
                    let (image, y) = (row / height, row % height);
                    let row_start = |c: usize| ((image * channels + c) * height + y) * width;
                    for c0 in (0..channels).step_by(CHANNEL_BLOCK) {
                        let block = CHANNEL_BLOCK.min(channels - c0);
                        for (x, pixel) in out.chunks_exact_mut(channels).enumerate() {
                            for (k, value) in pixel[c0..c0 + block].iter_mut().enumerate() {
                                *value = planar[row_start(c0 + k) + x];
                            }
                        }
                    }
                });
        }
        Ok(Self {
            data,
            channels,
            height,
            width,
        })
    }
}

/// How each box is pooled: the level's scale and the pooler's settings.
#[derive(Clone, Copy)]
struct Bins {
    output_size: usize,
    spatial_scale: f32,
    sampling_ratio: i32,
    aligned: bool,
}

/// Per-thread scratch space, reused from box to box.
#[derive(Default)]
struct Scratch {
    samples: Vec<Sample>,
    /// One bin's sums, one per channel.
    sums: Vec<f32>,
}

/// Pools each roi from the level `levels[i]` names (zeros when it names none) into
/// (R, C, out, out) on the device of `features[0]`.
fn pool(
    features: &[&Tensor],
    scales: &[f32],
    output_size: usize,
    sampling_ratio: i32,
    aligned: bool,
    rois: &[(usize, BoxXyxy)],
    levels: &[usize],
) -> Result<Tensor> {
    if output_size == 0 {
        bail!("ROIAlign: output size 0");
    }
    let device = features[0].device().clone();
    let (batch, channels, _, _) = features[0].dims4()?;
    for map in features {
        let (b, c, _, _) = map.dims4()?;
        if (b, c) != (batch, channels) {
            bail!("ROIPooler: levels of {batch}x{channels} and {b}x{c} images x channels");
        }
    }
    if let Some((index, _)) = rois.iter().find(|(index, _)| *index >= batch) {
        bail!("ROIAlign: batch index {index} of {batch} images");
    }
    let per_roi = channels * output_size * output_size;
    let mut out = vec![0f32; rois.len() * per_roi];
    if per_roi > 0 {
        // Only the levels some box is pooled from are read.
        let maps = features
            .iter()
            .enumerate()
            .map(|(level, map)| {
                let used = levels.contains(&level);
                used.then(|| HostMap::read(map)).transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        out.par_chunks_mut(per_roi)
            .zip(rois.par_iter().zip(levels.par_iter()))
            .for_each_init(Scratch::default, |scratch, (out, (&(index, b), &level))| {
                if let (Some(Some(map)), Some(&spatial_scale)) =
                    (maps.get(level), scales.get(level))
                {
                    let bins = Bins {
                        output_size,
                        spatial_scale,
                        sampling_ratio,
                        aligned,
                    };
                    pool_box(map, index, b, bins, scratch, out);
                }
            });
    }
    Tensor::from_vec(
        out,
        (rois.len(), channels, output_size, output_size),
        &Device::Cpu,
    )?
    .to_device(&device)
}

/// torchvision's roi_align for one box of image `index` into `out` (C, out, out), which starts
/// zeroed.
fn pool_box(
    map: &HostMap,
    index: usize,
    b: BoxXyxy,
    bins: Bins,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    if map.height == 0 || map.width == 0 {
        return;
    }
    let offset = if bins.aligned { 0.5 } else { 0.0 };
    let start_w = b[0] * bins.spatial_scale - offset;
    let start_h = b[1] * bins.spatial_scale - offset;
    let end_w = b[2] * bins.spatial_scale - offset;
    let end_h = b[3] * bins.spatial_scale - offset;
    let mut roi_w = end_w - start_w;
    let mut roi_h = end_h - start_h;
    if !bins.aligned {
        // The legacy ROIAlign makes malformed boxes 1x1.
        roi_w = if roi_w < 1.0 { 1.0 } else { roi_w };
        roi_h = if roi_h < 1.0 { 1.0 } else { roi_h };
    }
    let pooled = bins.output_size as f32;
    let bin_h = roi_h / pooled;
    let bin_w = roi_w / pooled;
    let grid = |side: f32| {
        if bins.sampling_ratio > 0 {
            i64::from(bins.sampling_ratio)
        } else {
            (side / pooled).ceil() as i64
        }
    };
    let (grid_h, grid_w) = (grid(roi_h), grid(roi_w));
    if grid_h <= 0 || grid_w <= 0 {
        // No samples: torchvision's bins stay zero.
        return;
    }
    let count = (grid_h * grid_w) as f32;
    let (height, width) = (map.height as i64, map.width as i64);
    let samples = &mut scratch.samples;
    samples.clear();
    for ph in 0..bins.output_size {
        for pw in 0..bins.output_size {
            for iy in 0..grid_h {
                let yy = start_h + ph as f32 * bin_h + (iy as f32 + 0.5) * bin_h / grid_h as f32;
                for ix in 0..grid_w {
                    let xx =
                        start_w + pw as f32 * bin_w + (ix as f32 + 0.5) * bin_w / grid_w as f32;
                    samples.push(bilinear_sample(yy, xx, height, width));
                }
            }
        }
    }
    let channels = map.channels;
    let image =
        &map.data[index * map.height * map.width * channels..][..map.height * map.width * channels];
    let pixel = |p: u32| &image[p as usize * channels..][..channels];
    let sums = &mut scratch.sums;
    let bins_len = bins.output_size * bins.output_size;
    for (bin, bin_samples) in samples.chunks_exact((grid_h * grid_w) as usize).enumerate() {
        sums.clear();
        sums.resize(channels, 0.0);
        for s in bin_samples {
            let [p1, p2, p3, p4] = s.pixels;
            accumulate(sums, pixel(p1), pixel(p2), pixel(p3), pixel(p4), s.weights);
        }
        for (c, sum) in sums.iter().enumerate() {
            out[c * bins_len + bin] = sum / count;
        }
    }
}

crate::ops::avx2_dispatch! {
    /// [`accumulate_portable`] compiled for AVX2 when the CPU has it.
    fn accumulate(
        sums: &mut [f32],
        v1: &[f32],
        v2: &[f32],
        v3: &[f32],
        v4: &[f32],
        weights: [f32; 4],
    ) => accumulate_portable
}

/// Adds one sample to every channel's sum: `sum += w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4`,
/// torchvision's expression, evaluated left to right in each lane.
#[inline(always)]
fn accumulate_portable(
    sums: &mut [f32],
    v1: &[f32],
    v2: &[f32],
    v3: &[f32],
    v4: &[f32],
    weights: [f32; 4],
) {
    let [w1, w2, w3, w4] = weights;
    for ((((sum, a), b), c), d) in sums.iter_mut().zip(v1).zip(v2).zip(v3).zip(v4) {
        *sum += w1 * a + w2 * b + w3 * c + w4 * d;
    }
}

/// The four neighbours and weights of the point (y, x) of a height x width plane, as
/// torchvision's `pre_calc_for_bilinear_interpolate` finds them: points more than one pixel
/// off the map weigh nothing; others are clamped to the map.
fn bilinear_sample(mut y: f32, mut x: f32, height: i64, width: i64) -> Sample {
    if y < -1.0 || y > height as f32 || x < -1.0 || x > width as f32 {
        return Sample {
            pixels: [0; 4],
            weights: [0.0; 4],
        };
    }
    if y <= 0.0 {
        y = 0.0;
    }
    if x <= 0.0 {
        x = 0.0;
    }
    let mut y_low = y as i64;
    let mut x_low = x as i64;
    let y_high = if y_low >= height - 1 {
        y_low = height - 1;
        y = y_low as f32;
        y_low
    } else {
        y_low + 1
    };
    let x_high = if x_low >= width - 1 {
        x_low = width - 1;
        x = x_low as f32;
        x_low
    } else {
        x_low + 1
    };
    let ly = y - y_low as f32;
    let lx = x - x_low as f32;
    let hy = 1.0 - ly;
    let hx = 1.0 - lx;
    let pixel = |row: i64, col: i64| (row * width + col) as u32;
    Sample {
        pixels: [
            pixel(y_low, x_low),
            pixel(y_low, x_high),
            pixel(y_high, x_low),
            pixel(y_high, x_high),
        ],
        weights: [hy * hx, hy * lx, ly * hx, ly * lx],
    }
}
