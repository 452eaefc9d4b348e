//! The garment mask of a product photo: what is not the plain backdrop around the garment.

use std::collections::VecDeque;

use image::{GrayImage, Luma, Rgb, RgbImage};

use super::morphology::keep_large_components;

/// The garment mask of a product photo on a plain light background.
///
/// The background colour is the median of the border pixels; background is what is close to it
/// and connected to the border, so light parts inside the garment stay garment. Small specks
/// are removed and the garment's holes filled.
pub fn cloth_mask(img: &RgbImage) -> GrayImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return GrayImage::new(img.width(), img.height());
    }
    let bg = border_median(img);
    let close = |p: &Rgb<u8>| {
        let d: i32 = (0..3)
            .map(|c| (p[c] as i32 - bg[c] as i32).abs())
            .max()
            .unwrap_or(0);
        d <= BACKGROUND_TOLERANCE
    };
    // Flood the background from every border pixel.
    let mut background = vec![false; w * h];
    let mut queue = VecDeque::new();
    let mut seed = |x: usize, y: usize, queue: &mut VecDeque<(usize, usize)>| {
        let i = y * w + x;
        if !background[i] && close(img.get_pixel(x as u32, y as u32)) {
            background[i] = true;
            queue.push_back((x, y));
        }
    };
    for x in 0..w {
        seed(x, 0, &mut queue);
        seed(x, h - 1, &mut queue);
    }
    for y in 0..h {
        seed(0, y, &mut queue);
        seed(w - 1, y, &mut queue);
    }
    while let Some((x, y)) = queue.pop_front() {
        let mut visit = |nx: usize, ny: usize| {
            let i = ny * w + nx;
            if !background[i] && close(img.get_pixel(nx as u32, ny as u32)) {
                background[i] = true;
                queue.push_back((nx, ny));
            }
        };
        if x > 0 {
            visit(x - 1, y);
        }
        if x + 1 < w {
            visit(x + 1, y);
        }
        if y > 0 {
            visit(x, y - 1);
        }
        if y + 1 < h {
            visit(x, y + 1);
        }
    }
    let garment: Vec<bool> = background.iter().map(|b| !b).collect();
    let garment = keep_large_components(&garment, w, h, (w * h) / 200);
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        Luma([if garment[y as usize * w + x as usize] {
            255
        } else {
            0
        }])
    })
}

/// How far (max over channels) a pixel may be from the background colour and still be background.
const BACKGROUND_TOLERANCE: i32 = 18;

fn border_median(img: &RgbImage) -> [u8; 3] {
    let (w, h) = img.dimensions();
    let mut channels: [Vec<u8>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut push = |x: u32, y: u32| {
        let p = img.get_pixel(x, y);
        for c in 0..3 {
            channels[c].push(p[c]);
        }
    };
    for x in 0..w {
        push(x, 0);
        push(x, h - 1);
    }
    for y in 0..h {
        push(0, y);
        push(w - 1, y);
    }
    let mut median = [255u8; 3];
    for c in 0..3 {
        channels[c].sort_unstable();
        median[c] = channels[c][channels[c].len() / 2];
    }
    median
}
