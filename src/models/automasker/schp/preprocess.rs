//! SCHP's pre- and postprocessing, as `model/SCHP/__init__.py` and `utils/transforms.py`:
//! - the whole photo is warped into the square input, keeping its aspect ratio (the box
//!   `(0, 0, w - 1, h - 1)`, centred, the longer side spanning the input), by OpenCV's
//!   `warpAffine` (linear, black border) — [`crate::imaging::warp_affine`];
//! - the input is normalised with mean `[0.406, 0.456, 0.485]` and std `[0.225, 0.224, 0.229]`,
//!   constants for BGR images. The official app passes a PIL image, which is RGB, without a
//!   swap, so the red channel is normalised with the blue constants. We match the app, whose
//!   labels users of the official demo see, and take RGB photos as they are;
//! - the logits, upsampled to the input size (bilinear, `align_corners=True`), are warped back
//!   onto the photo by the inverse affine (`transform_logits`, float `warpAffine`, zero
//!   border), and the label is the first maximum (`np.argmax`).

use crate::imaging::warp_affine::{
    get_affine_transform, warp_affine_f32, warp_affine_u8, AffineMatrix,
};
use crate::models::automasker::LabelMap;

/// The normalisation mean, per input channel (for BGR; applied to RGB as the app does).
pub const MEAN: [f32; 3] = [0.406, 0.456, 0.485];
/// The normalisation standard deviation, per input channel.
pub const STD: [f32; 3] = [0.225, 0.224, 0.229];

/// The official `_xywh2cs` on the box `(0, 0, width - 1, height - 1)`: its centre and the box
/// widened or heightened to the input's aspect ratio (`input_width / input_height`).
pub fn center_scale(width: usize, height: usize, aspect: f64) -> ([f32; 2], [f32; 2]) {
    let (mut w, mut h) = ((width as f64) - 1.0, (height as f64) - 1.0);
    let center = [(w * 0.5) as f32, (h * 0.5) as f32];
    if w > aspect * h {
        h = w / aspect;
    } else if w < aspect * h {
        w = h * aspect;
    }
    (center, [w as f32, h as f32])
}

/// The official `get_affine_transform(center, scale, 0, (input_height, input_width), inv)`:
/// the box onto the input (`inverse` false) or back. Its three point pairs are computed in f64
/// and rounded to f32 as the reference's float32 arrays, then solved as `cv2.getAffineTransform`.
pub fn affine(
    center: [f32; 2],
    scale: [f32; 2],
    input_width: usize,
    input_height: usize,
    inverse: bool,
) -> AffineMatrix {
    let (cx, cy) = (f64::from(center[0]), f64::from(center[1]));
    let src_w = f64::from(scale[0]);
    let (dw, dh) = (input_width as f64 - 1.0, input_height as f64 - 1.0);
    let third = |a: [f64; 2], b: [f64; 2]| {
        let d = [a[0] - b[0], a[1] - b[1]];
        [b[0] - d[1], b[1] + d[0]]
    };
    let src0 = [cx, cy];
    let src1 = [cx, cy + src_w * -0.5];
    let dst0 = [dw * 0.5, dh * 0.5];
    let dst1 = [dw * 0.5, dh * 0.5 + dw * -0.5];
    let to_f32 = |p: [f64; 2]| [p[0] as f32, p[1] as f32];
    let src = [src0, src1, third(src0, src1)].map(to_f32);
    let dst = [dst0, dst1, third(dst0, dst1)].map(to_f32);
    let (from, to) = if inverse { (&dst, &src) } else { (&src, &dst) };
    // The three points of a non-empty box are never collinear; a 1×1 photo (scale 0) maps
    // everything to its one pixel.
    get_affine_transform(from, to).unwrap_or([0.0; 6])
}

/// A photo warped into the input square: 8-bit RGB, `input_width × input_height`, row-major.
pub fn warp_to_input(photo: &image::RgbImage, input_width: usize, input_height: usize) -> Vec<u8> {
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let aspect = input_width as f64 / input_height as f64;
    let (center, scale) = center_scale(w, h, aspect);
    let m = affine(center, scale, input_width, input_height, false);
    warp_affine_u8(
        photo.as_raw(),
        w,
        h,
        3,
        &m,
        input_width,
        input_height,
        &[0, 0, 0],
    )
}

/// `ToTensor` then `Normalize(MEAN, STD)`: channel-major float32.
pub fn normalise(warped: &[u8]) -> Vec<f32> {
    let pixels = warped.len() / 3;
    let mut out = vec![0f32; warped.len()];
    for c in 0..3 {
        let plane = &mut out[c * pixels..(c + 1) * pixels];
        for (o, v) in plane.iter_mut().zip(warped.iter().skip(c).step_by(3)) {
            *o = (f32::from(*v) / 255.0 - MEAN[c]) / STD[c];
        }
    }
    out
}

/// `transform_logits`: input-size logits (row-major, channel-last) warped back onto a
/// `width × height` photo, channel-last.
pub fn transform_logits(
    logits: &[f32],
    classes: usize,
    input_width: usize,
    input_height: usize,
    width: usize,
    height: usize,
) -> Vec<f32> {
    let aspect = input_width as f64 / input_height as f64;
    let (center, scale) = center_scale(width, height, aspect);
    let inv = affine(center, scale, input_width, input_height, true);
    warp_affine_f32(
        logits,
        input_width,
        input_height,
        classes,
        &inv,
        width,
        height,
        0.0,
    )
}

/// The label of each pixel: the index of its first largest logit.
pub fn argmax(logits: &[f32], classes: usize, width: usize, height: usize) -> LabelMap {
    let labels = logits
        .chunks_exact(classes)
        .map(|px| {
            let mut best = 0;
            for (i, &v) in px.iter().enumerate() {
                if v > px[best] {
                    best = i;
                }
            }
            best as u8
        })
        .collect();
    LabelMap {
        width,
        height,
        labels,
    }
}
