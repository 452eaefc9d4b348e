//! Fitting a request's photos to the output size as the reference does: the person (and its
//! mask) is cropped to the output's aspect ratio around its centre and resized; the garment is
//! resized to fit inside and padded with white. Resizing is Lanczos (a = 3), as PIL's
//! `LANCZOS`; the two differ by rounding only.

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Pixel, Rgb, RgbImage};

/// The centred crop of a `w×h` image to the aspect ratio `tw:th`, as `(x, y, width, height)`,
/// in the reference's integer arithmetic.
pub fn crop_box(w: u32, h: u32, tw: u32, th: u32) -> (u32, u32, u32, u32) {
    let (w64, h64, tw64, th64) = (w as u64, h as u64, tw as u64, th as u64);
    let (new_w, new_h) = if w64 * th64 < tw64 * h64 {
        (w64, w64 * th64 / tw64)
    } else {
        (h64 * tw64 / th64, h64)
    };
    // A sliver of an image still keeps one pixel.
    let (new_w, new_h) = (new_w.max(1), new_h.max(1));
    let x0 = (w64 - new_w) / 2;
    let y0 = (h64 - new_h) / 2;
    let x1 = (w64 + new_w) / 2;
    let y1 = (h64 + new_h) / 2;
    (x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32)
}

/// Crops `img` to the aspect ratio of `width×height` around its centre and resizes it there.
pub fn resize_and_crop<P>(
    img: &ImageBuffer<P, Vec<P::Subpixel>>,
    width: u32,
    height: u32,
) -> ImageBuffer<P, Vec<P::Subpixel>>
where
    P: Pixel + 'static,
{
    let (x, y, w, h) = crop_box(img.width(), img.height(), width, height);
    let cropped = imageops::crop_imm(img, x, y, w, h).to_image();
    if cropped.dimensions() == (width, height) {
        return cropped;
    }
    imageops::resize(&cropped, width, height, FilterType::Lanczos3)
}

/// Resizes `img` to fit inside `width×height` and centres it on white.
pub fn resize_and_padding(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (img.width().max(1) as u64, img.height().max(1) as u64);
    let (tw, th) = (width as u64, height as u64);
    let (new_w, new_h) = if w * th < tw * h {
        (w * th / h, th)
    } else {
        (tw, h * tw / w)
    };
    let (new_w, new_h) = (new_w.max(1) as u32, new_h.max(1) as u32);
    let resized = if (new_w, new_h) == img.dimensions() {
        img.clone()
    } else {
        imageops::resize(img, new_w, new_h, FilterType::Lanczos3)
    };
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let x = (width - new_w) / 2;
    let y = (height - new_h) / 2;
    imageops::replace(&mut canvas, &resized, x as i64, y as i64);
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crop_keeps_the_centre_at_the_target_ratio() {
        // 100×150 (w×h) to 3:4: taller than needed, so the height is cut to 133.
        assert_eq!(crop_box(100, 150, 96, 128), (0, 8, 100, 133));
        // Wider than needed: the width is cut.
        assert_eq!(crop_box(200, 100, 96, 128), (62, 0, 75, 100));
        assert_eq!(crop_box(96, 128, 96, 128), (0, 0, 96, 128));
        assert_eq!(crop_box(1, 1, 768, 1024), (0, 0, 1, 1));
    }

    #[test]
    fn padding_centres_the_garment_on_white() {
        let img = RgbImage::from_pixel(120, 90, Rgb([10, 20, 30]));
        let out = resize_and_padding(&img, 96, 128);
        assert_eq!(out.dimensions(), (96, 128));
        // 120×90 fits as 96×72, centred vertically: rows 28..100 hold the garment.
        assert_eq!(out.get_pixel(48, 10), &Rgb([255, 255, 255]));
        assert_eq!(out.get_pixel(48, 64), &Rgb([10, 20, 30]));
        assert_eq!(out.get_pixel(48, 120), &Rgb([255, 255, 255]));
    }
}
