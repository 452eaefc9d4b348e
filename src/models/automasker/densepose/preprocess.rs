//! DensePose's input, prepared bit for bit as the official pipeline prepares it:
//!
//! - the wrapper around detectron2 first caps the photo's size ([`capped_size`]) with OpenCV's
//!   `cv2.resize` (`INTER_LINEAR`, [`cv2_resize_linear`]);
//! - detectron2's `DefaultPredictor` resizes it with `ResizeShortestEdge`
//!   ([`ResizeShortestEdge::output_size`]) through Pillow's bilinear filter
//!   ([`pil_resize_bilinear`]);
//! - the model turns it into BGR floats less the pixel mean, over the pixel deviation, padded
//!   with zeros to a multiple of the backbone's stride ([`model_input`]).
//!
//! Both resizes are fixed-point integer arithmetic in their libraries (Pillow 10.3's
//! `libImaging/Resample.c`, OpenCV 4.10's `imgproc/src/resize.cpp`), reproduced here with the
//! same coefficients, accumulators and roundings, so the results are the same bytes. Both act
//! on each channel alone, so resizing the RGB photo and swapping channels afterwards equals
//! resizing the BGR array the reference holds. (The `fast_image_resize` crate follows
//! Pillow-SIMD's arithmetic, with weights of at most 15 bits; it misses Pillow by one on a few
//! percent of the bytes, hence this code.)

use candle_core::{Device, Result, Tensor};
use image::RgbImage;
use rayon::prelude::*;

/// Channels of an RGB pixel.
const CN: usize = 3;

// ---------------------------------------------------------------------------------------------
// Pillow

/// Pillow's fixed-point precision for 8-bit resampling: 32 bits less 8 for the value and 2 for
/// the sign and for sums of coefficients above 1.
const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

/// One axis of a Pillow resampling: for each output index, the first input index, the number of
/// inputs and their fixed-point weights (`stride` slots per output).
struct PilTaps {
    first: Vec<usize>,
    count: Vec<usize>,
    stride: usize,
    weights: Vec<i32>,
}

impl PilTaps {
    fn of(&self, out: usize) -> (usize, &[i32]) {
        let start = out * self.stride;
        (
            self.first[out],
            &self.weights[start..start + self.count[out]],
        )
    }
}

/// Pillow's triangle filter.
fn pil_bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` for the bilinear filter over the whole input (box `0..in_size`)
/// and `normalize_coeffs_8bpc`: double-precision weights, normalised per output, rounded half
/// away from zero to `PIL_PRECISION_BITS` bits.
fn pil_taps(in_size: usize, out_size: usize) -> PilTaps {
    // `(double)(in1 - in0) / outSize` with `in0 = 0.0f`, `in1 = (float)in_size`.
    let scale = in_size as f32 as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter's support is 1
    let stride = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut first = Vec::with_capacity(out_size);
    let mut count = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * stride];
    let mut k = vec![0f64; stride];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let n = xmax.max(0) as usize;
        let mut ww = 0.0;
        for (x, w) in k.iter_mut().take(n).enumerate() {
            *w = pil_bilinear_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            ww += *w;
        }
        for (x, w) in k.iter().take(n).enumerate() {
            let w = if ww != 0.0 { w / ww } else { *w };
            let scaled = w * (1u32 << PIL_PRECISION_BITS) as f64;
            weights[xx * stride + x] = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        first.push(xmin as usize);
        count.push(n);
    }
    PilTaps {
        first,
        count,
        stride,
        weights,
    }
}

/// Pillow's `clip8`: the accumulator's integer part, clamped to a byte.
fn pil_clip8(acc: i32) -> u8 {
    (acc >> PIL_PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize(size, Image.BILINEAR)` of an 8-bit RGB image (Pillow 10.3, no
/// `box`, `reducing_gap` None), bit-exact, up- and down-scaling: a horizontal pass over the
/// rows the vertical pass reads, rounded to bytes, then the vertical pass. An empty source
/// gives a black image.
pub fn pil_resize_bilinear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if (out_w, out_h) == (in_w, in_h) {
        return img.clone();
    }
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let half = 1i32 << (PIL_PRECISION_BITS - 1);
    let vert = pil_taps(in_h, out_h);

    // Horizontal pass, only over the rows the vertical pass reads.
    let (rows, row_first, tmp_w) = if out_w != in_w {
        let horiz = pil_taps(in_w, out_w);
        let row_first = vert.first[0];
        let row_last = vert.first[out_h - 1] + vert.count[out_h - 1];
        let src = img.as_raw();
        let mut tmp = vec![0u8; (row_last - row_first) * out_w * CN];
        tmp.par_chunks_mut(out_w * CN)
            .enumerate()
            .for_each(|(i, out_row)| {
                let row = &src[(row_first + i) * in_w * CN..(row_first + i + 1) * in_w * CN];
                for (xx, out_px) in out_row.chunks_exact_mut(CN).enumerate() {
                    let (xmin, k) = horiz.of(xx);
                    let taps = &row[xmin * CN..(xmin + k.len()) * CN];
                    let mut acc = [half; CN];
                    for (px, &w) in taps.chunks_exact(CN).zip(k) {
                        for c in 0..CN {
                            acc[c] += px[c] as i32 * w;
                        }
                    }
                    for c in 0..CN {
                        out_px[c] = pil_clip8(acc[c]);
                    }
                }
            });
        (std::borrow::Cow::Owned(tmp), row_first, out_w)
    } else {
        (std::borrow::Cow::Borrowed(img.as_raw()), 0, in_w)
    };

    let out = if out_h != in_h {
        let stride = tmp_w * CN;
        let mut out = vec![0u8; out_h * stride];
        // Whole rows at a time, each tap's row added into 32-bit sums (the same sums, in the
        // same order, as Pillow's per-pixel loop).
        out.par_chunks_mut(stride).enumerate().for_each_init(
            || vec![0i32; stride],
            |acc, (yy, out_row)| {
                let (ymin, k) = vert.of(yy);
                let ymin = ymin - row_first;
                acc.fill(half);
                for (j, &w) in k.iter().enumerate() {
                    let row = &rows[(ymin + j) * stride..(ymin + j + 1) * stride];
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v as i32 * w;
                    }
                }
                for (o, &a) in out_row.iter_mut().zip(acc.iter()) {
                    *o = pil_clip8(a);
                }
            },
        );
        out
    } else {
        rows.into_owned()
    };
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

// ---------------------------------------------------------------------------------------------
// OpenCV

/// OpenCV's `INTER_RESIZE_COEF_BITS`: linear weights are 11-bit fixed point.
const CV_COEF_SCALE: f32 = 2048.0;

/// OpenCV's `saturate_cast<short>(float)`: round half to even, then clamp.
fn cv_short(v: f32) -> i32 {
    v.round_ties_even().clamp(i16::MIN as f32, i16::MAX as f32) as i32
}

/// OpenCV's source position for output index `d` (`(d + 0.5) * scale - 0.5`, in double, then
/// as float): the index below and the fraction, both as OpenCV computes them.
fn cv_position(d: usize, scale: f64) -> (i64, f32) {
    let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
    let s = f.floor();
    (s as i64, f - s)
}

/// `cv2.resize(img, (width, height))` with `INTER_LINEAR` on an 8-bit 3-channel image (OpenCV
/// 4.10), bit-exact. A halving of both sides runs OpenCV's 2×2 averaging instead, as OpenCV
/// does; other sizes run its fixed-point separable filter: 11-bit horizontal weights into 32-bit
/// row sums, then 11-bit vertical weights applied to the sums shifted right by 4, each product's
/// high 16 bits kept, and a final rounding shift by 2. An empty source gives a black image.
pub fn cv2_resize_linear(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (src_w, src_h) = (img.width() as usize, img.height() as usize);
    let (dst_w, dst_h) = (width as usize, height as usize);
    if (dst_w, dst_h) == (src_w, src_h) {
        return img.clone();
    }
    if dst_w == 0 || dst_h == 0 || src_w == 0 || src_h == 0 {
        return RgbImage::new(width, height);
    }
    let inv_scale_x = dst_w as f64 / src_w as f64;
    let inv_scale_y = dst_h as f64 / src_h as f64;
    let scale_x = 1.0 / inv_scale_x;
    let scale_y = 1.0 / inv_scale_y;
    let src = img.as_raw();
    let src_stride = src_w * CN;
    let dst_stride = dst_w * CN;
    let mut out = vec![0u8; dst_h * dst_stride];

    // `saturate_cast<int>(double)` rounds half to even.
    let is_area_fast = (scale_x - scale_x.round_ties_even()).abs() < f64::EPSILON
        && (scale_y - scale_y.round_ties_even()).abs() < f64::EPSILON;
    if is_area_fast && scale_x.round_ties_even() == 2.0 && scale_y.round_ties_even() == 2.0 {
        // OpenCV swaps INTER_LINEAR for INTER_AREA's fast path here: the rounded mean of
        // each 2×2 block.
        out.par_chunks_mut(dst_stride)
            .enumerate()
            .for_each(|(dy, out_row)| {
                let r0 = &src[2 * dy * src_stride..(2 * dy + 1) * src_stride];
                let r1 = &src[(2 * dy + 1) * src_stride..(2 * dy + 2) * src_stride];
                for (i, o) in out_row.iter_mut().enumerate() {
                    // Output pixel `i / CN`, channel `i % CN`: its block's left column.
                    let j = 2 * (i - i % CN) + i % CN;
                    let sum = r0[j] as u32 + r0[j + CN] as u32 + r1[j] as u32 + r1[j + CN] as u32;
                    *o = ((sum + 2) >> 2) as u8;
                }
            });
        return RgbImage::from_raw(width, height, out)
            .unwrap_or_else(|| RgbImage::new(width, height));
    }

    // Horizontal taps: the left source pixel and two weights; outside the image, the edge
    // pixel with weights (2048, 0).
    let xtaps: Vec<(usize, i32, i32)> = (0..dst_w)
        .map(|dx| {
            let (sx, fx) = cv_position(dx, scale_x);
            let (sx, fx) = if sx < 0 {
                (0, 0.0)
            } else if sx >= src_w as i64 - 1 {
                (src_w - 1, 0.0)
            } else {
                (sx as usize, fx)
            };
            (
                sx,
                cv_short((1.0 - fx) * CV_COEF_SCALE),
                cv_short(fx * CV_COEF_SCALE),
            )
        })
        .collect();
    // Vertical taps: two source rows, clamped to the image, with the weights of the unclamped
    // position (OpenCV keeps them at the edges).
    let clamp_row = |y: i64| y.clamp(0, src_h as i64 - 1) as usize;
    let ytaps: Vec<(usize, usize, i32, i32)> = (0..dst_h)
        .map(|dy| {
            let (sy, fy) = cv_position(dy, scale_y);
            (
                clamp_row(sy),
                clamp_row(sy + 1),
                cv_short((1.0 - fy) * CV_COEF_SCALE),
                cv_short(fy * CV_COEF_SCALE),
            )
        })
        .collect();
    let hresize = |row: &[u8], sums: &mut [i32]| {
        for (&(sx, a0, a1), sum) in xtaps.iter().zip(sums.chunks_exact_mut(CN)) {
            let left = &row[sx * CN..(sx + 1) * CN];
            for c in 0..CN {
                sum[c] = left[c] as i32 * a0;
            }
            if a1 != 0 {
                let right = &row[(sx + 1) * CN..(sx + 2) * CN];
                for c in 0..CN {
                    sum[c] += right[c] as i32 * a1;
                }
            }
        }
    };
    out.par_chunks_mut(dst_stride).enumerate().for_each_init(
        || (vec![0i32; dst_stride], vec![0i32; dst_stride]),
        |(s0, s1), (dy, out_row)| {
            let (r0, r1, b0, b1) = ytaps[dy];
            hresize(&src[r0 * src_stride..(r0 + 1) * src_stride], s0);
            hresize(&src[r1 * src_stride..(r1 + 1) * src_stride], s1);
            for ((o, &v0), &v1) in out_row.iter_mut().zip(s0.iter()).zip(s1.iter()) {
                let v = ((b0 * (v0 >> 4)) >> 16) + ((b1 * (v1 >> 4)) >> 16) + 2;
                *o = (v >> 2) as u8;
            }
        },
    );
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

// ---------------------------------------------------------------------------------------------
// Sizes

/// The wrapper's own size cap before detectron2 sees the photo: when the largest of the BGR
/// array's dimensions — height, width and its 3 channels — exceeds `resize`, the `(width,
/// height)` it hands `cv2.resize`, each side times `resize / largest`, truncated; else `None`.
pub fn capped_size(width: u32, height: u32, resize: u32) -> Option<(u32, u32)> {
    let largest = height.max(width).max(CN as u32);
    if largest <= resize {
        return None;
    }
    let scale = resize as f64 / largest as f64;
    Some((
        (width as f64 * scale) as u32,
        (height as f64 * scale) as u32,
    ))
}

/// detectron2's `ResizeShortestEdge` at test time (one short-edge length): the short side
/// scaled to `short_edge`, unless the long side would exceed `max_size`, then scaled to that.
#[derive(Debug, Clone, Copy)]
pub struct ResizeShortestEdge {
    pub short_edge: u32,
    pub max_size: u32,
}

impl ResizeShortestEdge {
    /// The output `(height, width)` of an input `(height, width)`, in detectron2's double
    /// arithmetic with its `int(x + 0.5)` rounding. A zero short edge is detectron2's no-op; an
    /// empty input stays empty.
    pub fn output_size(&self, height: u32, width: u32) -> (u32, u32) {
        if self.short_edge == 0 {
            return (height, width);
        }
        if height == 0 || width == 0 {
            return (0, 0);
        }
        let size = self.short_edge as f64;
        let scale = size / height.min(width) as f64;
        let (mut newh, mut neww) = if height < width {
            (size, scale * width as f64)
        } else {
            (scale * height as f64, size)
        };
        let longest = newh.max(neww);
        if longest > self.max_size as f64 {
            let scale = self.max_size as f64 / longest;
            newh *= scale;
            neww *= scale;
        }
        ((newh + 0.5) as u32, (neww + 0.5) as u32)
    }
}

// ---------------------------------------------------------------------------------------------
// The network's input

/// How the network takes its images: detectron2's `ResizeShortestEdge` for test, then BGR
/// floats `(x - pixel_mean) / pixel_std`, zero-padded to a multiple of `size_divisibility`
/// (none when it is 0 or 1).
#[derive(Debug, Clone)]
pub struct InputFormat {
    pub resize: ResizeShortestEdge,
    pub pixel_mean_bgr: [f32; 3],
    pub pixel_std_bgr: [f32; 3],
    pub size_divisibility: u32,
}

impl Default for InputFormat {
    /// `densepose_rcnn_R_50_FPN_s1x`'s: detectron2's default test size, pixel statistics and
    /// the FPN's stride.
    fn default() -> Self {
        Self {
            resize: ResizeShortestEdge {
                short_edge: 800,
                max_size: 1333,
            },
            pixel_mean_bgr: [103.530, 116.280, 123.675],
            pixel_std_bgr: [1.0, 1.0, 1.0],
            size_divisibility: 32,
        }
    }
}

/// A batch as detectron2's `ImageList` holds it.
pub struct ModelInput {
    /// `(N, 3, Hp, Wp)` f32, BGR, normalised, zero-padded.
    pub images: Tensor,
    /// Each image's `(height, width)` after resizing, before padding.
    pub sizes: Vec<(u32, u32)>,
}

/// The network's input for RGB photos, as detectron2 builds it: each photo resized with
/// `ResizeShortestEdge` through Pillow's bilinear filter (`ResizeTransform.apply_image` on an
/// 8-bit array), its channels put in BGR order, normalised per channel in f32, and the batch
/// padded with zeros to the largest height and width, each rounded up to the divisibility
/// (`ImageList.from_tensors`).
pub fn model_input(
    photos: &[RgbImage],
    format: &InputFormat,
    device: &Device,
) -> Result<ModelInput> {
    if photos.is_empty() {
        candle_core::bail!("DensePose: no photo to prepare");
    }
    let resized: Vec<RgbImage> = photos
        .iter()
        .map(|photo| {
            let (h, w) = format.resize.output_size(photo.height(), photo.width());
            pil_resize_bilinear(photo, w, h)
        })
        .collect();
    let sizes: Vec<(u32, u32)> = resized.iter().map(|r| (r.height(), r.width())).collect();
    let pad = |v: u32| -> usize {
        let d = format.size_divisibility;
        if d > 1 {
            v.div_ceil(d) as usize * d as usize
        } else {
            v as usize
        }
    };
    let hp = pad(sizes.iter().map(|s| s.0).max().unwrap_or(0));
    let wp = pad(sizes.iter().map(|s| s.1).max().unwrap_or(0));
    let plane = hp * wp;
    let mut data = vec![0f32; resized.len() * CN * plane];
    for (img, batch) in resized.iter().zip(data.chunks_exact_mut(CN * plane)) {
        let w = img.width() as usize;
        for (c, channel) in batch.chunks_exact_mut(plane).enumerate() {
            // BGR channel `c` is RGB channel `2 - c`.
            let (mean, std) = (format.pixel_mean_bgr[c], format.pixel_std_bgr[c]);
            for (y, row) in img.as_raw().chunks_exact(w * CN).enumerate() {
                let dst = &mut channel[y * wp..y * wp + w];
                for (d, px) in dst.iter_mut().zip(row.chunks_exact(CN)) {
                    *d = (px[2 - c] as f32 - mean) / std;
                }
            }
        }
    }
    let images = Tensor::from_vec(data, (resized.len(), CN, hp, wp), device)?;
    Ok(ModelInput { images, sizes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_sizes_follow_detectron2() {
        let r = ResizeShortestEdge {
            short_edge: 800,
            max_size: 1333,
        };
        // 384×512 photo (w×h): short side 384 → 800, long 512 × 800/384 = 1066.67 → 1067.
        assert_eq!(r.output_size(512, 384), (1067, 800));
        assert_eq!(r.output_size(1024, 768), (1067, 800));
        // Wide: the long side would be 1333.33 > 1333, so it is capped.
        assert_eq!(r.output_size(900, 1500), (800, 1333));
        assert_eq!(r.output_size(100, 1000), (133, 1333));
        assert_eq!(r.output_size(800, 800), (800, 800));
        let noop = ResizeShortestEdge {
            short_edge: 0,
            max_size: 1333,
        };
        assert_eq!(noop.output_size(37, 41), (37, 41));
    }

    #[test]
    fn the_cap_counts_channels_and_truncates() {
        assert_eq!(capped_size(384, 512, 512), None);
        assert_eq!(capped_size(768, 1024, 512), Some((384, 512)));
        assert_eq!(capped_size(1000, 333, 512), Some((512, 170)));
        // The channel count is one of the dimensions compared.
        assert_eq!(capped_size(2, 2, 2), Some((1, 1)));
    }

    #[test]
    fn pillow_weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(384, 800), (800, 384), (7, 3), (1, 5), (5, 1)] {
            let taps = pil_taps(i, o);
            for out in 0..o {
                let (_, k) = taps.of(out);
                let sum: i32 = k.iter().sum();
                assert!(
                    (sum - (1 << PIL_PRECISION_BITS)).abs() <= k.len() as i32,
                    "{i}->{o} at {out}: {sum}"
                );
            }
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 7]));
        assert_eq!(pil_resize_bilinear(&img, 5, 4), img);
        assert_eq!(cv2_resize_linear(&img, 5, 4), img);
    }
}
