//! Automatic repaint masks (placeholder until the heuristic lands).

use image::{GrayImage, RgbImage};

/// Which garment a request replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Upper,
    Lower,
    Overall,
}

/// White (255) = repaint.
pub fn auto_mask(person: &RgbImage, _category: Category) -> GrayImage {
    GrayImage::new(person.width(), person.height())
}
