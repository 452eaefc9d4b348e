//! Decoding an uploaded image under limits: the format is sniffed from the first bytes, the
//! header is checked (size, shape, pixel count) before any pixel exists, and JPEGs are decoded
//! with DCT scaling straight to the smallest size that still covers the frame the picture is
//! fitted into. The `_for` variants take that frame; the others assume the 256×192
//! [`MODEL_FRAME`].

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

/// The frame of the whole-batch models, as `(height, width)`: what [`decode`],
/// [`decode_probed`], [`Probe::decoded_size`] and [`Probe::decode_bytes`] decode for.
pub const MODEL_FRAME: (u32, u32) = (MODEL_HEIGHT as u32, MODEL_WIDTH as u32);

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
    /// [`Probe::decoded_size_for`] the [`MODEL_FRAME`].
    pub fn decoded_size(&self) -> (u32, u32) {
        self.decoded_size_for(MODEL_FRAME)
    }

    /// The size (width, height) the decoder will produce for a picture fitted into `frame`
    /// (height, width): JPEGs are decoded with DCT scaling straight to the smallest size that
    /// still covers the frame; other formats at their stored size.
    pub fn decoded_size_for(&self, frame: (u32, u32)) -> (u32, u32) {
        if !self.dct_scalable {
            return (self.width, self.height);
        }
        let factor = jpeg_scale_factor(self.width, self.height, frame);
        (self.width.div_ceil(factor), self.height.div_ceil(factor))
    }

    /// [`Probe::decode_bytes_for`] the [`MODEL_FRAME`].
    pub fn decode_bytes(&self) -> u64 {
        self.decode_bytes_for(MODEL_FRAME)
    }

    /// An upper bound of the memory decoding this image and fitting it into `frame` (height,
    /// width) takes at its peak: the decoder's buffer, its RGB copy, and the resize's
    /// intermediate rows.
    pub fn decode_bytes_for(&self, frame: (u32, u32)) -> u64 {
        let (w, h) = self.decoded_size_for(frame);
        let pixels = u64::from(w) * u64::from(h);
        let frame_long = u64::from(frame.0.max(frame.1));
        let resize_rows = u64::from(w.max(h)) * frame_long * 4 * 4;
        pixels * self.bytes_per_pixel.max(3) + pixels * 3 + resize_rows
    }
}

/// The JPEG DCT scale (1, 2, 4 or 8) that keeps a `w×h` image at least as large as `frame`
/// (height, width) in both directions, whatever its orientation.
fn jpeg_scale_factor(w: u32, h: u32, frame: (u32, u32)) -> u32 {
    let (long, short) = (w.max(h), w.min(h));
    let need_long = frame.0.max(frame.1);
    let need_short = frame.0.min(frame.1);
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
/// the limits. JPEGs at least twice the [`MODEL_FRAME`] are decoded at a reduced size.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    decode_probed(bytes, &probe(bytes, max_pixels)?)
}

/// [`decode_probed_for`] the [`MODEL_FRAME`].
pub fn decode_probed(bytes: &[u8], probe: &Probe) -> Result<RgbImage, ImageError> {
    decode_probed_for(bytes, probe, MODEL_FRAME)
}

/// Decodes an image whose header [`probe`] has accepted, for a picture fitted into `frame`
/// (height, width): a JPEG at least twice the frame comes out at [`Probe::decoded_size_for`]
/// it, within the budget [`Probe::decode_bytes_for`] it.
pub fn decode_probed_for(
    bytes: &[u8],
    probe: &Probe,
    frame: (u32, u32),
) -> Result<RgbImage, ImageError> {
    let invalid = |e: image::ImageError| ImageError::Invalid(format!("cannot decode image: {e}"));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), probe.format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(probe.decode_bytes_for(frame).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(invalid)?;
    let orientation = decoder.orientation().map_err(invalid)?;
    let decoded_size = probe.decoded_size_for(frame);
    let mut img = if decoded_size != (probe.width, probe.height) {
        // No full-size fallback: the decode budget was taken for the scaled size.
        DynamicImage::ImageRgb8(decode_jpeg_scaled(bytes, decoded_size).ok_or_else(|| {
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

/// A JPEG decoded with DCT scaling to `(want_w, want_h)` (from [`Probe::decoded_size_for`]);
/// `None` on an error it reports.
fn decode_jpeg_scaled(bytes: &[u8], (want_w, want_h): (u32, u32)) -> Option<RgbImage> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().ok()?;
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

    /// The 1024×768 frame of the diffusion model, as `(height, width)`.
    const LARGE_FRAME: (u32, u32) = (1024, 768);

    fn jpeg_probe(width: u32, height: u32) -> Probe {
        Probe {
            format: ImageFormat::Jpeg,
            width,
            height,
            bytes_per_pixel: 3,
            dct_scalable: true,
        }
    }

    #[test]
    fn the_scale_keeps_the_model_frame_covered() {
        // 256×192: the largest factor whose result still covers 256 on the long side and 192
        // on the short one, in either orientation.
        assert_eq!(jpeg_scale_factor(4000, 3000, MODEL_FRAME), 8); // 500×375
        assert_eq!(jpeg_scale_factor(3000, 4000, MODEL_FRAME), 8);
        assert_eq!(jpeg_scale_factor(2048, 1536, MODEL_FRAME), 8); // exactly 256×192
        assert_eq!(jpeg_scale_factor(2047, 1536, MODEL_FRAME), 4); // 2047 / 8 = 255 < 256
        assert_eq!(jpeg_scale_factor(2048, 1535, MODEL_FRAME), 4); // 1535 / 8 = 191 < 192
        assert_eq!(jpeg_scale_factor(1023, 767, MODEL_FRAME), 2); // 511×383
        assert_eq!(jpeg_scale_factor(511, 383, MODEL_FRAME), 1); // 255×191 at half size
        assert_eq!(jpeg_scale_factor(100, 100, MODEL_FRAME), 1);
    }

    #[test]
    fn the_scale_keeps_a_large_frame_covered() {
        // 1024×768: the same photos decode at most at half size.
        assert_eq!(jpeg_scale_factor(4000, 3000, LARGE_FRAME), 2); // 1000×750 at a quarter
        assert_eq!(jpeg_scale_factor(3000, 4000, LARGE_FRAME), 2);
        assert_eq!(jpeg_scale_factor(8192, 6144, LARGE_FRAME), 8); // exactly 1024×768
        assert_eq!(jpeg_scale_factor(8191, 6144, LARGE_FRAME), 4);
        assert_eq!(jpeg_scale_factor(2048, 1536, LARGE_FRAME), 2); // exactly 1024×768
        assert_eq!(jpeg_scale_factor(2047, 1536, LARGE_FRAME), 1);
        assert_eq!(jpeg_scale_factor(1024, 768, LARGE_FRAME), 1);
    }

    #[test]
    fn decoded_size_and_budget_follow_the_frame() {
        let photo = jpeg_probe(4000, 3000);
        assert_eq!(photo.decoded_size(), (500, 375));
        assert_eq!(photo.decoded_size_for(MODEL_FRAME), (500, 375));
        assert_eq!(photo.decoded_size_for(LARGE_FRAME), (2000, 1500));
        // Odd sizes round up, as the DCT decoder does.
        assert_eq!(jpeg_probe(4001, 3001).decoded_size(), (501, 376));
        // 500×375 pixels, three bytes each twice, and 500 × 256 rows of four f32 channels.
        assert_eq!(photo.decode_bytes(), 187_500 * 3 * 2 + 500 * 256 * 16);
        assert_eq!(photo.decode_bytes(), photo.decode_bytes_for(MODEL_FRAME));
        // 2000×1500 pixels and 2000 × 1024 rows.
        assert_eq!(
            photo.decode_bytes_for(LARGE_FRAME),
            3_000_000 * 3 * 2 + 2000 * 1024 * 16
        );
        // What the DCT decoder cannot scale decodes at its stored size for any frame.
        let png = Probe {
            format: ImageFormat::Png,
            dct_scalable: false,
            ..photo
        };
        assert_eq!(png.decoded_size_for(MODEL_FRAME), (4000, 3000));
        assert_eq!(png.decoded_size_for(LARGE_FRAME), (4000, 3000));
    }

    #[test]
    fn a_large_jpeg_decodes_to_cover_the_frame_it_is_for() {
        let photo = RgbImage::from_fn(2048, 1536, |x, y| {
            image::Rgb([(x / 8) as u8, (y / 6) as u8, ((x + y) / 16) as u8])
        });
        let mut jpeg = Vec::new();
        photo
            .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut jpeg, 90,
            ))
            .expect("encodes");
        let probe = probe(&jpeg, u64::MAX).expect("probes");
        assert!(probe.dct_scalable);
        let small = decode_probed(&jpeg, &probe).expect("decodes");
        assert_eq!(small.dimensions(), (256, 192));
        assert_eq!(decode_probed_for(&jpeg, &probe, MODEL_FRAME), Ok(small));
        let large = decode_probed_for(&jpeg, &probe, LARGE_FRAME).expect("decodes");
        assert_eq!(large.dimensions(), (1024, 768));
    }

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
