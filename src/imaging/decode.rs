//! Decoding an uploaded image under limits: the format is sniffed from the first bytes, the
//! header is checked (size, shape, pixel count) before any pixel exists, and JPEGs are decoded
//! with DCT scaling straight to the smallest size that still covers the model frame.

use std::io::Cursor;

use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::models::input::{MODEL_HEIGHT, MODEL_WIDTH};

/// Why an uploaded image cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// Not one of the supported formats (JPEG, PNG, WebP).
    #[error("{0}")]
    Unsupported(String),
    /// A supported format that cannot be decoded, is empty, or is too large.
    #[error("{0}")]
    Invalid(String),
}

/// Sniffs the format from the first bytes; only JPEG, PNG and WebP are accepted.
pub fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, ImageError> {
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => Ok(f),
        Ok(other) => Err(ImageError::Unsupported(format!(
            "{} images are not supported (use JPEG, PNG or WebP)",
            other
                .extensions_str()
                .first()
                .copied()
                .unwrap_or("this format")
        ))),
        Err(_) if bytes.is_empty() => Err(ImageError::Invalid("the image is empty".into())),
        Err(_) => Err(ImageError::Invalid(
            "the bytes are not a JPEG, PNG or WebP image".into(),
        )),
    }
}

/// The longest side accepted, in pixels, whatever the pixel count.
pub const MAX_SIDE: u64 = 16_384;
/// The most elongated shape accepted (long side over short side). Photos of people and garments
/// are far from it; a 36,000,000×1 image, whose area passes the pixel limit, is not.
pub const MAX_ASPECT_RATIO: u64 = 16;

/// What the header of an uploaded image says, read before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: ImageFormat,
    /// Stored size (before the EXIF orientation is applied).
    pub width: u32,
    pub height: u32,
    /// Bytes of the decoder's own pixel buffer at the stored size (e.g. 8 for 16-bit RGBA).
    pub bytes_per_pixel: u64,
    /// A JPEG that the DCT-scaling decoder handles (grayscale or colour, not CMYK); others
    /// decode at full size, and are budgeted so.
    pub dct_scalable: bool,
}

impl Probe {
    /// The size the decoder will produce: JPEGs are decoded with DCT scaling straight to the
    /// smallest size that still covers the model frame; other formats at their stored size.
    pub fn decoded_size(&self) -> (u32, u32) {
        if !self.dct_scalable {
            return (self.width, self.height);
        }
        let factor = jpeg_scale_factor(self.width, self.height);
        (self.width.div_ceil(factor), self.height.div_ceil(factor))
    }

    /// An upper bound of the memory decoding and fitting this image takes at its peak: the
    /// decoder's buffer, its RGB copy, and the resize's intermediate rows.
    pub fn decode_bytes(&self) -> u64 {
        let (w, h) = self.decoded_size();
        let pixels = u64::from(w) * u64::from(h);
        let resize_rows = u64::from(w.max(h)) * MODEL_HEIGHT as u64 * 4 * 4;
        pixels * self.bytes_per_pixel.max(3) + pixels * 3 + resize_rows
    }
}

/// The JPEG DCT scale (1, 2, 4 or 8) that keeps the decoded image at least as large as the
/// model frame in both directions, whatever its orientation.
fn jpeg_scale_factor(w: u32, h: u32) -> u32 {
    let (long, short) = (w.max(h), w.min(h));
    let need_long = MODEL_HEIGHT as u32;
    let need_short = MODEL_WIDTH as u32;
    [8, 4, 2]
        .into_iter()
        .find(|f| long / f >= need_long && short / f >= need_short)
        .unwrap_or(1)
}

/// Reads an image's header and checks it against the limits: format, completeness (JPEG),
/// zero size, each side, the aspect ratio and the pixel count. Nothing is decoded.
pub fn probe(bytes: &[u8], max_pixels: u64) -> Result<Probe, ImageError> {
    let format = sniff_format(bytes)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(ImageError::Invalid(
            "the JPEG is truncated (no end-of-image marker)".into(),
        ));
    }
    // The size comes from the header alone, before any decoder state exists.
    if let Ok(size) = imagesize::blob_size(bytes) {
        check_size(size.width as u64, size.height as u64, max_pixels)?;
    }
    let invalid = |e: image::ImageError| ImageError::Invalid(format!("cannot decode image: {e}"));
    let decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(invalid)?;
    let (width, height) = decoder.dimensions();
    check_size(width.into(), height.into(), max_pixels)?;
    Ok(Probe {
        format,
        width,
        height,
        bytes_per_pixel: u64::from(decoder.color_type().bytes_per_pixel()),
        dct_scalable: format == ImageFormat::Jpeg && jpeg_is_dct_scalable(bytes),
    })
}

/// Decodes a JPEG, PNG or WebP image to RGB, applying its EXIF orientation.
///
/// The header is checked first ([`probe`]), so no pixel buffer is allocated for an image over
/// the limits. JPEGs larger than twice the model frame are decoded at a reduced size.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    decode_probed(bytes, &probe(bytes, max_pixels)?)
}

/// Decodes an image whose header [`probe`] has accepted.
pub fn decode_probed(bytes: &[u8], probe: &Probe) -> Result<RgbImage, ImageError> {
    let invalid = |e: image::ImageError| ImageError::Invalid(format!("cannot decode image: {e}"));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), probe.format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(probe.decode_bytes().max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(invalid)?;
    let orientation = decoder.orientation().map_err(invalid)?;
    let mut img = if probe.decoded_size() != (probe.width, probe.height) {
        // No full-size fallback: the decode budget was taken for the scaled size.
        DynamicImage::ImageRgb8(decode_jpeg_scaled(bytes, probe).ok_or_else(|| {
            ImageError::Invalid("cannot decode image: the JPEG data is corrupt".into())
        })?)
    } else {
        DynamicImage::from_decoder(decoder).map_err(invalid)?
    };
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

/// Whether the DCT-scaling decoder reads this JPEG's header and gives 8-bit grey or RGB.
fn jpeg_is_dct_scalable(bytes: &[u8]) -> bool {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().is_ok()
        && decoder.info().is_some_and(|i| {
            matches!(
                i.pixel_format,
                jpeg_decoder::PixelFormat::RGB24 | jpeg_decoder::PixelFormat::L8
            )
        })
}

/// A JPEG decoded with DCT scaling to [`Probe::decoded_size`]; `None` on an error it reports.
fn decode_jpeg_scaled(bytes: &[u8], probe: &Probe) -> Option<RgbImage> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().ok()?;
    let (want_w, want_h) = probe.decoded_size();
    let (w, h) = decoder
        .scale(u16::try_from(want_w).ok()?, u16::try_from(want_h).ok()?)
        .ok()?;
    let pixels = decoder.decode().ok()?;
    let info = decoder.info()?;
    let (w, h) = (u32::from(w), u32::from(h));
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => RgbImage::from_raw(w, h, pixels),
        jpeg_decoder::PixelFormat::L8 => {
            let gray = GrayImage::from_raw(w, h, pixels)?;
            Some(DynamicImage::ImageLuma8(gray).to_rgb8())
        }
        _ => None,
    }
}

fn check_size(w: u64, h: u64, max_pixels: u64) -> Result<(), ImageError> {
    if w == 0 || h == 0 {
        return Err(ImageError::Invalid("the image has zero size".into()));
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(ImageError::Invalid(format!(
            "the image is {w}x{h}; each side must be at most {MAX_SIDE} pixels"
        )));
    }
    if w.max(h) > w.min(h) * MAX_ASPECT_RATIO {
        return Err(ImageError::Invalid(format!(
            "the image is {w}x{h}; its sides may differ by a factor of at most {MAX_ASPECT_RATIO}"
        )));
    }
    let pixels = w.saturating_mul(h);
    if pixels > max_pixels {
        return Err(ImageError::Invalid(format!(
            "the image is {w}x{h} = {pixels} pixels, over the limit of {max_pixels}"
        )));
    }
    Ok(())
}

/// Whether a JPEG ends with its end-of-image marker (allowing a little trailing padding); the
/// decoder itself fills a truncated scan with grey instead of failing.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let tail = &bytes[end.saturating_sub(32)..end];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decodes a mask image (white = garment) to grayscale.
pub fn decode_mask(bytes: &[u8], max_pixels: u64) -> Result<GrayImage, ImageError> {
    let rgb = decode(bytes, max_pixels)?;
    Ok(DynamicImage::ImageRgb8(rgb).to_luma8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_tells_unsupported_from_garbage() {
        assert!(matches!(
            sniff_format(b"GIF89a\x01\x00\x01\x00"),
            Err(ImageError::Unsupported(_))
        ));
        assert!(matches!(
            sniff_format(b"hello world, not an image"),
            Err(ImageError::Invalid(_))
        ));
        assert!(matches!(sniff_format(b""), Err(ImageError::Invalid(_))));
    }
}
