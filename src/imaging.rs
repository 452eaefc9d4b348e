//! Image decoding with limits, fitting to the model resolution, tensor conversion, encoding and
//! the garment mask of a product photo.

use std::collections::VecDeque;
use std::io::Cursor;

use candle_core::{Device, Tensor};
use image::{
    imageops::FilterType, DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, Luma,
    Rgb, RgbImage,
};

pub use crate::models::input::{PreparedPair, Rect};
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

/// The output encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Jpeg,
    Png,
}

impl OutputFormat {
    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
        }
    }

    /// The format a file name asks for by its extension.
    pub fn from_path(path: &std::path::Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jpg" | "jpeg" => Some(OutputFormat::Jpeg),
            "png" => Some(OutputFormat::Png),
            _ => None,
        }
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "jpeg" | "jpg" => Ok(OutputFormat::Jpeg),
            "png" => Ok(OutputFormat::Png),
            other => Err(format!("unknown format `{other}` (use jpeg or png)")),
        }
    }
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

/// An RGB image as an 8-bit `H×W×3` tensor (the batcher converts batches on the device).
pub fn rgb_to_tensor(img: RgbImage) -> candle_core::Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    Tensor::from_vec(img.into_raw(), (h, w, 3), &Device::Cpu)
}

/// A mask as an 8-bit `H×W×1` tensor (white = garment).
pub fn mask_to_tensor(mask: GrayImage) -> candle_core::Result<Tensor> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    Tensor::from_vec(mask.into_raw(), (h, w, 1), &Device::Cpu)
}

/// An 8-bit `H×W×3` tensor (as the models' answers come back) as an RGB image.
pub fn tensor_to_rgb(t: &Tensor) -> candle_core::Result<RgbImage> {
    let (h, w, c) = t.dims3()?;
    if c != 3 || t.dtype() != candle_core::DType::U8 {
        candle_core::bail!(
            "expected an H×W×3 u8 image, got {:?} {:?}",
            t.dtype(),
            t.dims()
        );
    }
    let data = t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<u8>()?;
    RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| candle_core::Error::Msg("image buffer size mismatch".into()))
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

/// Encodes an RGB image as JPEG (with `quality`, 1–100) or PNG.
pub fn encode(img: &RgbImage, format: OutputFormat, quality: u8) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(img.len() / 4);
    match format {
        OutputFormat::Jpeg => {
            let enc =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100));
            img.write_with_encoder(enc).map_err(|e| e.to_string())?;
        }
        OutputFormat::Png => {
            let enc = image::codecs::png::PngEncoder::new(&mut out);
            img.write_with_encoder(enc).map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}

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

/// Keeps the 4-connected components of `mask` with at least `min_size` pixels.
fn keep_large_components(mask: &[bool], w: usize, h: usize, min_size: usize) -> Vec<bool> {
    let mut label = vec![usize::MAX; w * h];
    let mut keep = vec![false; w * h];
    let mut stack = Vec::new();
    let mut members = Vec::new();
    for start in 0..w * h {
        if !mask[start] || label[start] != usize::MAX {
            continue;
        }
        members.clear();
        label[start] = start;
        stack.push(start);
        while let Some(i) = stack.pop() {
            members.push(i);
            let (x, y) = (i % w, i / w);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for n in neighbours.into_iter().flatten() {
                if mask[n] && label[n] == usize::MAX {
                    label[n] = start;
                    stack.push(n);
                }
            }
        }
        if members.len() >= min_size {
            for &i in &members {
                keep[i] = true;
            }
        }
    }
    keep
}

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
    fn tensor_round_trip_is_lossless() {
        let img = RgbImage::from_fn(7, 5, |x, y| Rgb([(x * 30) as u8, (y * 50) as u8, 200]));
        let t = rgb_to_tensor(img.clone()).expect("tensor");
        assert_eq!(t.dims(), &[5, 7, 3]);
        assert_eq!(tensor_to_rgb(&t).expect("image"), img);
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
