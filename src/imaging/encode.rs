//! The output encodings (JPEG with a quality, PNG) and the format names clients and files use.

use image::RgbImage;

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
