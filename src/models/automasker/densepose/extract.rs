//! From a detection's charts to the label map the official wrapper writes: detectron2's
//! `resample_fine_and_coarse_segm_tensors_to_bbox` (both segmentations resampled bilinearly to
//! the integer box, the fine argmax kept where the coarse argmax says "person"), pasted into an
//! all-background map of the image at the box's integer corner.

use super::super::labels::LabelMap;
use super::boxes::BoxXyxy;

/// The box as the wrapper and the converter see it: XYWH, each value truncated towards zero
/// (`tensor.long()` and Python's `int`).
pub fn int_box_xywh(b: &BoxXyxy) -> [i64; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    [b[0] as i64, b[1] as i64, w as i64, h as i64]
}

/// The source index and the two weights of output position `i` when resampling `input` values to
/// `output`, as PyTorch's CPU `upsample_bilinear2d(align_corners=False)` computes them in f32.
fn source_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = real as usize;
            let i1 = (i0 + 1).min(input - 1);
            let lambda1 = (real - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - lambda1, lambda1)
        })
        .collect()
}

/// Per pixel of an `height`×`width` box, the channel whose bilinearly resampled logit is the
/// largest (the first on ties, as `argmax` returns). `logits` is `(C, S, S)` row-major.
fn resampled_argmax(
    logits: &[f32],
    channels: usize,
    side: usize,
    height: usize,
    width: usize,
) -> Vec<u8> {
    let rows = source_taps(side, height);
    let cols = source_taps(side, width);
    let plane = side * side;
    let mut labels = vec![0u8; height * width];
    for (y, &(y0, y1, wy0, wy1)) in rows.iter().enumerate() {
        for (x, &(x0, x1, wx0, wx1)) in cols.iter().enumerate() {
            let mut best = f32::NEG_INFINITY;
            let mut best_channel = 0usize;
            for c in 0..channels {
                let p = &logits[c * plane..(c + 1) * plane];
                let top = p[y0 * side + x0] * wx0 + p[y0 * side + x1] * wx1;
                let bottom = p[y1 * side + x0] * wx0 + p[y1 * side + x1] * wx1;
                let value = top * wy0 + bottom * wy1;
                // NaN wins, as in PyTorch's argmax; otherwise only a strictly larger value does.
                if value > best || (value.is_nan() && !best.is_nan()) {
                    best = value;
                    best_channel = c;
                }
            }
            labels[y * width + x] = best_channel as u8;
        }
    }
    labels
}

/// The fine labels (0 background, 1..24 parts) over the box's `height`×`width` pixels from one
/// detection's upsampled `coarse` (K×S×S) and `fine` (C×S×S) logits.
pub fn box_labels(
    coarse: &[f32],
    coarse_channels: usize,
    fine: &[f32],
    fine_channels: usize,
    side: usize,
    height: usize,
    width: usize,
) -> Vec<u8> {
    let person = resampled_argmax(coarse, coarse_channels, side, height, width);
    let mut labels = resampled_argmax(fine, fine_channels, side, height, width);
    for (label, person) in labels.iter_mut().zip(person) {
        if person == 0 {
            *label = 0;
        }
    }
    labels
}

/// The wrapper's map of a `width`×`height` image: the first detection's labels at its integer
/// box, background elsewhere. Where the wrapper's paste would fail (an empty box, or one whose
/// integer extent leaves the image) it writes an all-background map, and so does this.
pub fn paste(
    width: usize,
    height: usize,
    box_xywh: [i64; 4],
    labels_at: impl FnOnce(usize, usize) -> Vec<u8>,
) -> LabelMap {
    let mut map = LabelMap::filled(width, height, 0);
    let [x, y, w, h] = box_xywh;
    let fits =
        x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= width as i64 && y + h <= height as i64;
    if !fits {
        return map;
    }
    let (x, y, w, h) = (x as usize, y as usize, w as usize, h as usize);
    let labels = labels_at(h, w);
    for row in 0..h {
        let start = (y + row) * width + x;
        map.labels[start..start + w].copy_from_slice(&labels[row * w..(row + 1) * w]);
    }
    map
}

/// PIL's `Image.resize(size, Image.NEAREST)` of a label map. PIL runs it as an affine transform
/// that walks the source in f64 steps of `in / out` from the first output pixel's centre and
/// truncates, so the positions are accumulated here the same way.
pub fn resize_nearest_pil(map: &LabelMap, width: usize, height: usize) -> LabelMap {
    if (map.width, map.height) == (width, height) {
        return map.clone();
    }
    let positions = |input: usize, output: usize| -> Vec<usize> {
        let step = input as f64 / output as f64;
        let mut at = step * 0.5;
        (0..output)
            .map(|_| {
                let index = (at as usize).min(input - 1);
                at += step;
                index
            })
            .collect()
    };
    let xs = positions(map.width, width);
    let mut labels = Vec::with_capacity(width * height);
    for y in positions(map.height, height) {
        let row = y * map.width;
        labels.extend(xs.iter().map(|&x| map.labels[row + x]));
    }
    LabelMap {
        width,
        height,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_boxes_truncate_towards_zero() {
        assert_eq!(int_box_xywh(&[10.9, 20.2, 30.8, 50.1]), [10, 20, 19, 29]);
        assert_eq!(int_box_xywh(&[0.0, 0.0, 0.5, 0.999]), [0, 0, 0, 0]);
    }

    #[test]
    fn resampling_to_the_same_size_reproduces_the_argmax() {
        // Channel 1 wins on the left half, channel 0 on the right.
        let side = 4;
        let mut logits = vec![0.0f32; 2 * side * side];
        for y in 0..side {
            for x in 0..side {
                logits[y * side + x] = x as f32;
                logits[side * side + y * side + x] = 1.5;
            }
        }
        let labels = resampled_argmax(&logits, 2, side, side, side);
        for y in 0..side {
            assert_eq!(&labels[y * side..(y + 1) * side], &[1, 1, 0, 0]);
        }
    }

    #[test]
    fn upsampling_interpolates_between_centres_like_pytorch() {
        // 2 → 4 with align_corners=False: sources at max(0.5·(i + 0.5) − 0.5, 0) =
        // 0, 0.25, 0.75, 1.25 (clamped to the last pixel), so a ramp 0..1 becomes
        // 0, 0.25, 0.75, 1: with a constant 0.5 rival the labels switch between 0.25 and 0.75.
        let ramp = [0.0f32, 1.0, 0.0, 1.0];
        let mut logits = ramp.to_vec();
        logits.extend([0.5f32; 4]);
        assert_eq!(resampled_argmax(&logits, 2, 2, 1, 4), vec![1, 1, 0, 0]);
        let taps = source_taps(2, 4);
        assert_eq!(taps[1], (0, 1, 0.75, 0.25));
        assert_eq!(taps[3], (1, 1, 0.75, 0.25));
    }

    #[test]
    fn ties_go_to_the_first_channel() {
        let logits = vec![1.0f32; 3];
        assert_eq!(resampled_argmax(&logits, 3, 1, 1, 1), vec![0]);
    }

    #[test]
    fn fine_labels_are_kept_only_where_the_coarse_segmentation_says_person() {
        let side = 2;
        // Coarse: person (channel 1) on the top row only.
        let coarse = vec![0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        // Fine: part 7 everywhere.
        let mut fine = vec![0.0f32; 8 * side * side];
        fine[7 * side * side..8 * side * side].fill(2.0);
        let labels = box_labels(&coarse, 2, &fine, 8, side, side, side);
        assert_eq!(labels, vec![7, 7, 0, 0]);
    }

    #[test]
    fn the_paste_writes_the_box_and_refuses_what_the_wrapper_cannot_paste() {
        let map = paste(5, 4, [1, 2, 3, 2], |h, w| vec![9; h * w]);
        assert_eq!(
            map.labels,
            vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 0, 0, 9, 9, 9, 0]
        );
        for outside in [[3, 0, 3, 1], [0, 0, 0, 2], [0, 3, 1, 2]] {
            let map = paste(5, 4, outside, |h, w| vec![9; h * w]);
            assert!(map.labels.iter().all(|&l| l == 0), "{outside:?}");
        }
    }

    #[test]
    fn nearest_resizing_takes_the_pixel_under_each_centre() {
        let map = LabelMap {
            width: 4,
            height: 1,
            labels: vec![1, 2, 3, 4],
        };
        // 4 → 2: centres at 1.0 and 3.0.
        assert_eq!(resize_nearest_pil(&map, 2, 1).labels, vec![2, 4]);
        // 4 → 8: each pixel twice.
        assert_eq!(
            resize_nearest_pil(&map, 8, 1).labels,
            vec![1, 1, 2, 2, 3, 3, 4, 4]
        );
        // 4 → 3: step 4/3 from 2/3: 0.67, 2.0, 3.33.
        assert_eq!(resize_nearest_pil(&map, 3, 1).labels, vec![1, 3, 4]);
    }
}
