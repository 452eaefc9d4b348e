//! Draws the automatic repaint masks of the six sample photos, as the server draws them for a
//! catvton request without `person_mask` (photo fitted to 768×1024, then the mask), into
//! `assets/samples/catvton-masks.png`: one row per photo, with the photo and its `upper`,
//! `lower` and `overall` masks tinted.
//!
//! `cargo run --release --example catvton_masks [OUT.png]`

use std::path::Path;

use image::{imageops, GrayImage, Rgb, RgbImage};
use virtualfit::models::catvton::mask::{auto_mask, Category};
use virtualfit::models::catvton::preprocess::resize_and_crop;

/// Tile size in the montage (the server's 768×1024, scaled down).
const TILE: (u32, u32) = (115, 154);

/// Tints the repainted pixels.
fn overlay(person: &RgbImage, mask: &GrayImage) -> RgbImage {
    let mut out = person.clone();
    for (p, m) in out.pixels_mut().zip(mask.pixels()) {
        if m.0[0] > 127 {
            p.0 = [
                ((u16::from(p.0[0]) + 255) / 2) as u8,
                (u16::from(p.0[1]) / 2) as u8,
                ((u16::from(p.0[2]) + 80) / 2) as u8,
            ];
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::args().nth(1).unwrap_or_else(|| {
        root.join("assets/samples/catvton-masks.png")
            .display()
            .to_string()
    });
    let mut photos: Vec<_> = std::fs::read_dir(root.join("assets/samples/person"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    photos.sort();
    let gap = 3;
    let (tw, th) = TILE;
    let mut montage = RgbImage::from_pixel(
        4 * (tw + gap) - gap,
        photos.len() as u32 * (th + gap) - gap,
        Rgb([255, 255, 255]),
    );
    for (row, path) in photos.iter().enumerate() {
        let person = resize_and_crop(&image::open(path)?.to_rgb8(), 768, 1024);
        let mut tiles = vec![person.clone()];
        for category in [Category::Upper, Category::Lower, Category::Overall] {
            tiles.push(overlay(&person, &auto_mask(&person, category)));
        }
        for (col, tile) in tiles.iter().enumerate() {
            let small = imageops::resize(tile, tw, th, imageops::FilterType::Triangle);
            let (x, y) = (col as u32 * (tw + gap), row as u32 * (th + gap));
            imageops::replace(&mut montage, &small, i64::from(x), i64::from(y));
        }
    }
    // 5 bits per channel and the best compression keep the file small enough to commit.
    for p in montage.pixels_mut() {
        for c in p.0.iter_mut() {
            *c = (*c & 0xf8) | (*c >> 5);
        }
    }
    let file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        file,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    );
    montage.write_with_encoder(encoder)?;
    println!("wrote {out}");
    Ok(())
}
