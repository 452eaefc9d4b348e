//! Fitting pictures into the model frame keeping their aspect ratio (a letterbox padded with
//! white, or with black for masks), and cutting the padding off an answer again.

use image::{imageops::FilterType, GrayImage, Luma, Rgb, RgbImage};

use crate::models::input::{Rect, MODEL_HEIGHT, MODEL_WIDTH};

/// Where a `w×h` picture lands inside the model frame when fitted keeping its aspect ratio.
pub fn fit_rect(w: u32, h: u32) -> Rect {
    let (fw, fh) = (MODEL_WIDTH as f64, MODEL_HEIGHT as f64);
    let scale = (fw / w as f64).min(fh / h as f64);
    let width = ((w as f64 * scale).round() as u32).clamp(1, MODEL_WIDTH as u32);
    let height = ((h as f64 * scale).round() as u32).clamp(1, MODEL_HEIGHT as u32);
    Rect {
        x: (MODEL_WIDTH as u32 - width) / 2,
        y: (MODEL_HEIGHT as u32 - height) / 2,
        width,
        height,
    }
}

/// Letterboxes `img` into the model frame: resized to `rect` and centred on `pad`.
fn fit_into<P: image::Pixel<Subpixel = u8> + 'static>(
    img: &image::ImageBuffer<P, Vec<u8>>,
    rect: Rect,
    pad: P,
    filter: FilterType,
) -> image::ImageBuffer<P, Vec<u8>> {
    if img.width() == MODEL_WIDTH as u32 && img.height() == MODEL_HEIGHT as u32 {
        return img.clone();
    }
    let resized = image::imageops::resize(img, rect.width, rect.height, filter);
    let mut out = image::ImageBuffer::from_pixel(MODEL_WIDTH as u32, MODEL_HEIGHT as u32, pad);
    image::imageops::replace(&mut out, &resized, rect.x.into(), rect.y.into());
    out
}

/// Fits an RGB picture into the model frame, padding with white; answers the frame and where
/// the picture lies in it.
pub fn fit(img: &RgbImage) -> (RgbImage, Rect) {
    let rect = fit_rect(img.width(), img.height());
    (
        fit_into(img, rect, Rgb([255, 255, 255]), FilterType::Triangle),
        rect,
    )
}

/// Fits a garment mask into the place its garment photo (`garment_size`) takes in the model
/// frame, padding with 0. The mask is resized straight to that place, never to the garment's
/// own size, which the client chooses.
pub fn fit_mask(mask: &GrayImage, garment_size: (u32, u32)) -> GrayImage {
    let rect = fit_rect(garment_size.0, garment_size.1);
    let resized = if mask.dimensions() == (rect.width, rect.height) {
        mask.clone()
    } else {
        image::imageops::resize(mask, rect.width, rect.height, FilterType::Triangle)
    };
    let mut out = GrayImage::from_pixel(MODEL_WIDTH as u32, MODEL_HEIGHT as u32, Luma([0]));
    image::imageops::replace(&mut out, &resized, rect.x.into(), rect.y.into());
    out
}

/// Cuts the padding off a fitted answer.
pub fn crop(img: &RgbImage, rect: Rect) -> RgbImage {
    if rect.x == 0 && rect.y == 0 && rect.width == img.width() && rect.height == img.height() {
        return img.clone();
    }
    image::imageops::crop_imm(img, rect.x, rect.y, rect.width, rect.height).to_image()
}

/// The image cropped to `rect`, or whole without one.
pub fn crop_to(img: RgbImage, rect: Option<Rect>) -> RgbImage {
    match rect {
        Some(r) => crop(&img, r),
        None => img,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_rect_keeps_aspect_ratio_and_centres() {
        assert_eq!(
            fit_rect(192, 256),
            Rect {
                x: 0,
                y: 0,
                width: 192,
                height: 256
            }
        );
        let r = fit_rect(1024, 768);
        assert_eq!((r.width, r.height), (192, 144));
        assert_eq!((r.x, r.y), (0, 56));
        let r = fit_rect(100, 1000);
        assert_eq!((r.width, r.height, r.y), (26, 256, 0));
    }

    #[test]
    fn fitting_pads_with_white_and_crop_removes_it() {
        let img = RgbImage::from_pixel(400, 300, Rgb([10, 20, 30]));
        let (fitted, rect) = fit(&img);
        assert_eq!(fitted.dimensions(), (192, 256));
        assert_eq!(fitted.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(fitted.get_pixel(96, 128), &Rgb([10, 20, 30]));
        let cropped = crop(&fitted, rect);
        assert_eq!(cropped.dimensions(), (192, 144));
        assert!(cropped.pixels().all(|p| *p == Rgb([10, 20, 30])));
    }
}
