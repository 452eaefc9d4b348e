//! The current callers' entry points from bytes or decoded images to a request's inputs, one
//! per caller: the server uses [`decode_and_fit`], [`decode_mask_and_fit`] and
//! [`prepare_fitted`], the CLI [`prepare_decoded`] and the bench [`prepare_pair`]. They only
//! chain the pieces of the other files, and are to give way to one pipeline that every caller
//! shares; new code should build on those pieces instead.

use image::{DynamicImage, GrayImage, RgbImage};

use super::{
    cloth_mask, decode, decode_mask, decode_probed, fit, fit_mask, mask_to_tensor, rgb_to_tensor,
    ImageError, Probe,
};
use crate::models::input::{PreparedPair, Rect};

/// Decodes and prepares a person/garment pair (and the optional garment mask).
pub fn prepare_pair(
    person: &[u8],
    cloth: &[u8],
    cloth_mask_bytes: Option<&[u8]>,
    max_pixels: u64,
) -> Result<PreparedPair, ImageError> {
    let person = decode(person, max_pixels)?;
    let cloth = decode(cloth, max_pixels)?;
    let mask = match cloth_mask_bytes {
        Some(bytes) => Some(decode_mask(bytes, max_pixels)?),
        None => None,
    };
    prepare_decoded(&person, &cloth, mask.as_ref())
        .map_err(|e| ImageError::Invalid(format!("cannot convert image: {e}")))
}

/// Prepares already decoded images.
pub fn prepare_decoded(
    person: &RgbImage,
    cloth: &RgbImage,
    mask: Option<&GrayImage>,
) -> candle_core::Result<PreparedPair> {
    let person = fit(person);
    let (cloth_fit, _) = fit(cloth);
    let mask_fit = mask.map(|m| fit_mask(m, cloth.dimensions()));
    prepare_fitted(person, cloth_fit, mask_fit)
}

/// Decodes an accepted image and fits it into the model frame; answers the frame, where the
/// picture lies in it, and the decoded size. The full-size pixels are gone when it returns.
pub fn decode_and_fit(
    bytes: &[u8],
    probe: &Probe,
) -> Result<(RgbImage, Rect, (u32, u32)), ImageError> {
    let img = decode_probed(bytes, probe)?;
    let size = img.dimensions();
    let (fitted, rect) = fit(&img);
    Ok((fitted, rect, size))
}

/// Decodes an accepted mask and fits it where its garment (decoded at `garment_size`) lies.
pub fn decode_mask_and_fit(
    bytes: &[u8],
    probe: &Probe,
    garment_size: (u32, u32),
) -> Result<GrayImage, ImageError> {
    let mask = DynamicImage::ImageRgb8(decode_probed(bytes, probe)?).to_luma8();
    Ok(fit_mask(&mask, garment_size))
}

/// Builds a request's inputs from fitted pictures; without a mask, it is computed from the
/// fitted garment photo.
pub fn prepare_fitted(
    (person, content): (RgbImage, Rect),
    cloth: RgbImage,
    mask: Option<GrayImage>,
) -> candle_core::Result<PreparedPair> {
    let mask = mask.unwrap_or_else(|| cloth_mask(&cloth));
    Ok(PreparedPair {
        person: rgb_to_tensor(person)?,
        cloth: rgb_to_tensor(cloth)?,
        cloth_mask: mask_to_tensor(mask)?,
        content,
    })
}
