//! The garment mask of a product photo: what is not the plain backdrop around the garment.

use image::{GrayImage, Luma, RgbImage};

use super::backdrop::Backdrop;
use super::morphology::{keep_large_components, reaches_border, Grid};

/// The garment mask of a product photo on a plain light background.
///
/// The background colour is the median of the border pixels ([`Backdrop::from_border`]);
/// background is what is close to it and connected to the border, so light parts inside the
/// garment stay garment. Small specks are removed and the garment's holes filled.
pub fn cloth_mask(img: &RgbImage) -> GrayImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return GrayImage::new(img.width(), img.height());
    }
    let grid = Grid {
        width: w,
        height: h,
    };
    let bg = Backdrop::from_border(w, h, |x, y| img.get_pixel(x as u32, y as u32).0).colour;
    let close: Vec<bool> = img
        .pixels()
        .map(|p| {
            let d: i32 = (0..3)
                .map(|c| (p[c] as i32 - bg[c] as i32).abs())
                .max()
                .unwrap_or(0);
            d <= BACKGROUND_TOLERANCE
        })
        .collect();
    let background = reaches_border(&close, grid, None);
    let garment: Vec<bool> = background.iter().map(|b| !b).collect();
    let garment = keep_large_components(&garment, grid, (w * h) / 200);
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        Luma([if garment[grid.index(x as usize, y as usize)] {
            255
        } else {
            0
        }])
    })
}

/// How far (max over channels) a pixel may be from the background colour and still be background.
const BACKGROUND_TOLERANCE: i32 = 18;

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn light_inside_the_garment_stays_garment_and_specks_go() {
        // 20×20 (specks under 400 / 200 = 2 pixels go): a backdrop of 240 with a 1-pixel
        // speck at (17, 17), a dark garment over columns and rows 3..=12 with a backdrop-coloured
        // hole at (7, 7), and a light ring pixel 250 on the border, within the tolerance.
        let img = RgbImage::from_fn(20, 20, |x, y| {
            let garment = (3..=12).contains(&x) && (3..=12).contains(&y);
            Rgb(match (x, y) {
                (7, 7) => [240, 240, 240],
                (17, 17) => [20, 20, 20],
                (0, 5) => [250, 250, 250],
                _ if garment => [40, 60, 90],
                _ => [240, 240, 240],
            })
        });
        let mask = cloth_mask(&img);
        for (x, y, p) in mask.enumerate_pixels() {
            let garment = (3..=12).contains(&x) && (3..=12).contains(&y);
            assert_eq!(p.0[0], if garment { 255 } else { 0 }, "({x}, {y})");
        }
    }
}
