//! `overlay`: the weight-free baseline. It finds the top garment the person wears (foreground,
//! not skin, below the head), maps the new garment's bounding box onto it with an affine warp,
//! samples it bilinearly with [`grid_sample`], and blends it in with the person's shading.

use candle_core::{DType, Device, Tensor};

use super::{ModelError, TryOnBatch, TryOnModel};
use crate::ops::{grid_sample, GridPadding};

/// The weight-free baseline model.
pub struct OverlayModel {
    device: Device,
}

impl OverlayModel {
    pub fn new(device: Device) -> Self {
        Self { device }
    }
}

/// An axis-aligned box in pixels, inclusive bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bounds {
    x0: f32,
    y0: f32,
    x1: f32,
    y1: f32,
}

/// How far (max over channels, in 0..1) a pixel must be from the background to be foreground.
const FOREGROUND_DISTANCE: f32 = 0.10;
/// The torso starts this fraction of the person's height below the top of the head.
const TORSO_START: f32 = 0.2;
/// How far (per channel, in 0..1) a pixel may be from the worn garment's chest colour.
const GARMENT_COLOUR_DISTANCE: f32 = 0.16;
/// How strongly the person's shading modulates the new garment (0: flat, 1: full).
const SHADING_STRENGTH: f32 = 0.6;

/// One image plane set `3×H×W` in [0, 1].
struct Rgb<'a> {
    data: &'a [f32],
    h: usize,
    w: usize,
}

impl Rgb<'_> {
    #[inline]
    fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        (self.data[(c * self.h + y) * self.w + x] + 1.0) * 0.5
    }

    fn luminance(&self, y: usize, x: usize) -> f32 {
        0.299 * self.at(0, y, x) + 0.587 * self.at(1, y, x) + 0.114 * self.at(2, y, x)
    }
}

/// The median colour of the top rows and side columns, where the studio background shows.
fn background_colour(img: &Rgb) -> [f32; 3] {
    let band = 3.min(img.h).min(img.w);
    let mut bg = [1.0f32; 3];
    for (c, out) in bg.iter_mut().enumerate() {
        let mut values: Vec<f32> = Vec::new();
        for y in 0..img.h {
            for x in 0..img.w {
                if y < band || x < band || x + band >= img.w {
                    values.push(img.at(c, y, x));
                }
            }
        }
        values.sort_by(f32::total_cmp);
        *out = values[values.len() / 2];
    }
    bg
}

/// A common RGB skin rule (Kovac et al.), in 0..255 units.
fn is_skin(r: f32, g: f32, b: f32) -> bool {
    let (r, g, b) = (r * 255.0, g * 255.0, b * 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    r > 95.0 && g > 40.0 && b > 20.0 && max - min > 15.0 && (r - g).abs() > 15.0 && r > g && r > b
}

fn percentile(values: &mut [f32], q: f32) -> f32 {
    values.sort_by(f32::total_cmp);
    let i = ((values.len() - 1) as f32 * q).round() as usize;
    values[i]
}

/// The box of the garment the person wears now, and the mask of that region.
fn torso_region(img: &Rgb) -> (Bounds, Vec<bool>) {
    let (h, w) = (img.h, img.w);
    let bg = background_colour(img);
    let foreground =
        |y: usize, x: usize| (0..3).any(|c| (img.at(c, y, x) - bg[c]).abs() > FOREGROUND_DISTANCE);
    let top = (0..h)
        .find(|&y| (0..w).filter(|&x| foreground(y, x)).count() * 50 >= w)
        .unwrap_or(0);
    let start = top + ((h - top) as f32 * TORSO_START) as usize;
    let clothed = |y: usize, x: usize| {
        foreground(y, x) && !is_skin(img.at(0, y, x), img.at(1, y, x), img.at(2, y, x))
    };
    // The worn garment's colour: the median of the clothed pixels in the chest band.
    let chest_end = (start + (h - start) / 4).min(h);
    let mut chest: [Vec<f32>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for y in start..chest_end {
        for x in w / 4..w * 3 / 4 {
            if clothed(y, x) {
                for (c, v) in chest.iter_mut().enumerate() {
                    v.push(img.at(c, y, x));
                }
            }
        }
    }
    let garment_colour: Option<[f32; 3]> = (!chest[0].is_empty()).then(|| {
        let mut m = [0f32; 3];
        for (c, v) in chest.iter_mut().enumerate() {
            m[c] = percentile(v, 0.5);
        }
        m
    });
    let mut region = vec![false; h * w];
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for y in start..h {
        for x in 0..w {
            let similar = garment_colour.is_none_or(|g| {
                (0..3).all(|c| (img.at(c, y, x) - g[c]).abs() < GARMENT_COLOUR_DISTANCE)
            });
            if clothed(y, x) && similar {
                region[y * w + x] = true;
                xs.push(x as f32);
                ys.push(y as f32);
            }
        }
    }
    if xs.len() * 50 < h * w {
        // Too little found: fall back to the central upper-body box.
        let b = Bounds {
            x0: w as f32 * 0.25,
            y0: start.max(h * 3 / 10) as f32,
            x1: w as f32 * 0.75,
            y1: h as f32 * 0.8,
        };
        return (b, region);
    }
    let b = Bounds {
        x0: percentile(&mut xs, 0.05),
        x1: percentile(&mut xs, 0.95),
        y0: percentile(&mut ys, 0.01),
        y1: percentile(&mut ys, 0.98),
    };
    (b, region)
}

/// The bounding box of a garment mask (`H×W`, 0/1); the whole frame when it is empty.
fn mask_bounds(mask: &[f32], h: usize, w: usize) -> Bounds {
    let mut b = Bounds {
        x0: f32::MAX,
        y0: f32::MAX,
        x1: f32::MIN,
        y1: f32::MIN,
    };
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] > 0.5 {
                b.x0 = b.x0.min(x as f32);
                b.x1 = b.x1.max(x as f32);
                b.y0 = b.y0.min(y as f32);
                b.y1 = b.y1.max(y as f32);
            }
        }
    }
    if b.x0 > b.x1 {
        return Bounds {
            x0: 0.0,
            y0: 0.0,
            x1: (w - 1) as f32,
            y1: (h - 1) as f32,
        };
    }
    b
}

/// The sampling grid (`H×W×2`, normalised, align_corners=True) that maps `target` in the person
/// frame onto `source` in the garment frame.
fn affine_grid(target: Bounds, source: Bounds, h: usize, w: usize) -> Vec<f32> {
    let sx = (source.x1 - source.x0).max(1.0) / (target.x1 - target.x0).max(1.0);
    let sy = (source.y1 - source.y0).max(1.0) / (target.y1 - target.y0).max(1.0);
    let mut grid = Vec::with_capacity(h * w * 2);
    for y in 0..h {
        for x in 0..w {
            let gx = source.x0 + (x as f32 - target.x0) * sx;
            let gy = source.y0 + (y as f32 - target.y0) * sy;
            grid.push(gx / (w - 1) as f32 * 2.0 - 1.0);
            grid.push(gy / (h - 1) as f32 * 2.0 - 1.0);
        }
    }
    grid
}

/// 3×3 minimum filter of a 0/1 mask (`H×W`).
fn erode(mask: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let mut m = 1f32;
            for yy in y - 1..=y + 1 {
                for xx in x - 1..=x + 1 {
                    m = m.min(mask[yy * w + xx]);
                }
            }
            out[y * w + x] = m;
        }
    }
    out
}

impl TryOnModel for OverlayModel {
    fn name(&self) -> &str {
        "overlay"
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
        let (b, _, h, w) = batch.person.dims4()?;
        let to_vec = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let person = to_vec(&batch.person)?;
        let masks = to_vec(&batch.cloth_mask)?;
        let plane = h * w;
        let mut grids = Vec::with_capacity(b * plane * 2);
        let mut regions = Vec::with_capacity(b);
        for i in 0..b {
            let img = Rgb {
                data: &person[i * 3 * plane..(i + 1) * 3 * plane],
                h,
                w,
            };
            let (target, region) = torso_region(&img);
            let source = mask_bounds(&masks[i * plane..(i + 1) * plane], h, w);
            grids.extend(affine_grid(target, source, h, w));
            regions.push(region);
        }
        let grid = Tensor::from_vec(grids, (b, h, w, 2), &self.device)?;
        // Eroding the mask by a pixel keeps the light fringe of the product photo out.
        let eroded: Vec<f32> = (0..b)
            .flat_map(|i| erode(&masks[i * plane..(i + 1) * plane], h, w))
            .collect();
        let eroded = Tensor::from_vec(eroded, (b, 1, h, w), &self.device)?;
        let cloth = grid_sample(&batch.cloth, &grid, GridPadding::Border, true)?;
        let alpha = grid_sample(&eroded, &grid, GridPadding::Zeros, true)?;
        let cloth = to_vec(&cloth)?;
        let alpha = to_vec(&alpha)?;

        let mut out = person.clone();
        for (i, region) in regions.iter().enumerate() {
            let img = Rgb {
                data: &person[i * 3 * plane..(i + 1) * 3 * plane],
                h,
                w,
            };
            // Mean luminance of the worn garment: the shading reference.
            let (sum, n) = region
                .iter()
                .enumerate()
                .filter(|(_, &r)| r)
                .fold((0f32, 0usize), |(s, n), (j, _)| {
                    (s + img.luminance(j / w, j % w), n + 1)
                });
            let mean = if n > 0 {
                (sum / n as f32).max(0.05)
            } else {
                0.5
            };
            for j in 0..plane {
                let a = alpha[i * plane + j].clamp(0.0, 1.0);
                if a <= 0.0 {
                    continue;
                }
                let (y, x) = (j / w, j % w);
                let shade = if region[j] {
                    1.0 + SHADING_STRENGTH * ((img.luminance(y, x) / mean).clamp(0.5, 1.5) - 1.0)
                } else {
                    1.0
                };
                for c in 0..3 {
                    let k = (i * 3 + c) * plane + j;
                    let g = ((cloth[k] + 1.0) * 0.5 * shade).clamp(0.0, 1.0) * 2.0 - 1.0;
                    out[k] = a * g + (1.0 - a) * person[k];
                }
            }
        }
        Ok(Tensor::from_vec(out, (b, 3, h, w), &self.device)?)
    }
}

/// The registry entry.
pub struct Family;

impl super::ModelFamily for Family {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn about(&self) -> &'static str {
        "weight-free baseline: pastes the garment over the worn top with the person's shading"
    }

    fn input(&self, _options: &super::RequestOptions) -> super::InputSpec {
        super::InputSpec::letterboxed()
    }

    fn load(&self, request: &super::LoadRequest<'_>) -> Result<super::LoadedModel, ModelError> {
        if let super::WeightSource::Hub { .. } = request.source {
            return Err(super::ModelFamily::not_on_hub(self));
        }
        Ok(super::LoadedModel::Batch(Box::new(OverlayModel::new(
            request.device.clone(),
        ))))
    }

    fn not_on_hub(&self) -> ModelError {
        ModelError::NotOnHub {
            model: self.name().into(),
            help: "it has no weights (--model catvton is the model on the hub)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_grid_maps_target_box_onto_source_box() {
        let (h, w) = (9, 5);
        let target = Bounds {
            x0: 1.0,
            y0: 2.0,
            x1: 3.0,
            y1: 6.0,
        };
        let source = Bounds {
            x0: 0.0,
            y0: 0.0,
            x1: 4.0,
            y1: 8.0,
        };
        let g = affine_grid(target, source, h, w);
        let at = |y: usize, x: usize| (g[(y * w + x) * 2], g[(y * w + x) * 2 + 1]);
        assert_eq!(at(2, 1), (-1.0, -1.0));
        assert_eq!(at(6, 3), (1.0, 1.0));
    }

    #[test]
    fn mask_bounds_of_empty_mask_is_the_frame() {
        let b = mask_bounds(&[0.0; 12], 3, 4);
        assert_eq!((b.x1, b.y1), (3.0, 2.0));
        let mut m = vec![0.0; 12];
        m[5] = 1.0;
        let b = mask_bounds(&m, 3, 4);
        assert_eq!((b.x0, b.y0, b.x1, b.y1), (1.0, 1.0, 1.0, 1.0));
    }
}
