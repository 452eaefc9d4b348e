//! One pipeline from a request's bytes to the model's input, and from the model's answer to the
//! bytes sent back: bytes → checked (headers, sizes, the decode budget) → decoded → fitted as
//! the model's [`InputSpec`] asks → [`ModelInput`]; and answer → cropped → encoded. The server,
//! the job runner, the CLI and the bench all call it; it never names a model.

pub mod cpu;

use std::sync::Arc;

use bytes::Bytes;
use candle_core::Tensor;
use image::{DynamicImage, GrayImage};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::imaging::{self, ImageError, OutputFormat, Probe};
use crate::metrics::Metrics;
use crate::models::input::Frame;
use crate::models::{
    InputSpec, ModelFamily, ModelInput, OptionLimits, OptionSpec, PersonMasker, Rect,
    RequestOptions,
};
use cpu::Cpu;

/// Budgets count in KiB, since a semaphore counts in `u32` permits.
const BUDGET_UNIT: u64 = 1024;

/// Permits of a semaphore that counts `bytes` in [`BUDGET_UNIT`]s.
pub fn budget_units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX)
}

/// A request's images as they arrived (an upload, or a job's stored inputs).
#[derive(Debug, Clone)]
pub struct ImageParts {
    pub person: Bytes,
    pub cloth: Bytes,
    /// White = garment.
    pub garment_mask: Option<Bytes>,
    /// The area of the person photo to repaint, white = repaint; the photo's size.
    pub person_mask: Option<Bytes>,
}

/// Why a request's images cannot become the model's input.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The decode budget stayed taken until the deadline.
    #[error("the server decodes too many images at once")]
    Busy,
    #[error("image preparation failed: {0}")]
    Internal(String),
}

/// How the answer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputChoice {
    pub format: OutputFormat,
    /// JPEG quality, 1–100.
    pub quality: u8,
}

impl OutputChoice {
    /// The request's `format` and `quality` (absent: the server's defaults). Messages echo
    /// the input only through [`crate::api::echo`].
    pub fn parse(
        format: Option<&str>,
        quality: Option<&str>,
        defaults: OutputChoice,
    ) -> Result<OutputChoice, String> {
        let format = match format {
            None => defaults.format,
            Some(f) => f.parse::<OutputFormat>().map_err(|_| {
                format!("unknown format `{}` (use jpeg or png)", crate::api::echo(f))
            })?,
        };
        let quality = match quality {
            None => defaults.quality,
            Some(q) => q
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|q| (1..=100).contains(q))
                .ok_or_else(|| format!("quality must be 1..100, not `{}`", crate::api::echo(q)))?,
        };
        Ok(OutputChoice { format, quality })
    }
}

/// The answer as bytes: an 8-bit `H×W×3` image cropped to `content` and encoded.
pub fn encode_answer(
    image: &Tensor,
    content: Option<Rect>,
    output: OutputChoice,
) -> Result<Vec<u8>, String> {
    let rgb = imaging::tensor_to_rgb(image).map_err(|e| e.to_string())?;
    imaging::encode(
        &imaging::crop_to(rgb, content),
        output.format,
        output.quality,
    )
}

/// The bytes of images being decoded at once.
#[derive(Clone)]
pub struct DecodeBudget {
    semaphore: Arc<Semaphore>,
    total: u64,
    metrics: Metrics,
}

impl DecodeBudget {
    pub fn new(bytes: u64, metrics: Metrics) -> Self {
        let permits = (budget_units(bytes) as usize).min(Semaphore::MAX_PERMITS);
        DecodeBudget {
            semaphore: Arc::new(Semaphore::new(permits)),
            total: bytes,
            metrics,
        }
    }
}

/// Every image's header, and the decode budget the largest needs.
pub struct Probes {
    pub person: Probe,
    pub cloth: Probe,
    pub garment_mask: Option<Probe>,
    pub person_mask: Option<Probe>,
    /// The image that needs the most memory to decode for the frame, and what it needs.
    pub largest: Probe,
    pub decode_bytes: u64,
}

impl Probes {
    /// Reads every image's header and checks it against the limits (format, size, aspect
    /// ratio, `max_pixels`); nothing is decoded.
    pub fn read(parts: &ImageParts, max_pixels: u64, frame: Frame) -> Result<Probes, ImageError> {
        let probe_opt = |b: &Option<Bytes>| -> Result<Option<Probe>, ImageError> {
            b.as_ref()
                .map(|b| imaging::probe(b, max_pixels))
                .transpose()
        };
        let person = imaging::probe(&parts.person, max_pixels)?;
        let cloth = imaging::probe(&parts.cloth, max_pixels)?;
        let garment_mask = probe_opt(&parts.garment_mask)?;
        let person_mask = probe_opt(&parts.person_mask)?;
        let largest = [
            Some(&person),
            Some(&cloth),
            garment_mask.as_ref(),
            person_mask.as_ref(),
        ]
        .into_iter()
        .flatten()
        .max_by_key(|p| p.decode_bytes_for(frame))
        .copied()
        .unwrap_or(person);
        Ok(Probes {
            person,
            cloth,
            garment_mask,
            person_mask,
            largest,
            decode_bytes: largest.decode_bytes_for(frame),
        })
    }
}

/// The served model's side of the pipeline: its options and inputs, and the server's bounds.
#[derive(Clone)]
pub struct Pipeline {
    model: &'static dyn ModelFamily,
    options: Arc<Vec<OptionSpec>>,
    /// The model's loaded masker of the person photo; `None`: its drawn mask.
    masker: Option<Arc<dyn PersonMasker>>,
    max_pixels: u64,
    decode: DecodeBudget,
}

impl Pipeline {
    pub fn new(
        model: &'static dyn ModelFamily,
        limits: OptionLimits,
        max_pixels: u64,
        decode: DecodeBudget,
    ) -> Self {
        Pipeline {
            options: Arc::new(model.options(&limits)),
            model,
            masker: None,
            max_pixels,
            decode,
        }
    }

    /// The pipeline with the model's loaded masker, which replaces its drawn mask.
    pub fn with_masker(mut self, masker: Option<Arc<dyn PersonMasker>>) -> Self {
        self.masker = masker;
        self
    }

    /// The loaded masker, if any.
    pub fn masker(&self) -> Option<&Arc<dyn PersonMasker>> {
        self.masker.as_ref()
    }

    /// Which masker makes the automatic person mask: the loaded one's name, `drawn`, or `None`
    /// when the model reads no person mask.
    pub fn masker_name(&self) -> Option<&'static str> {
        self.default_input().person_mask?;
        Some(self.masker.as_ref().map(|m| m.name()).unwrap_or("drawn"))
    }

    /// The served model.
    pub fn model(&self) -> &'static dyn ModelFamily {
        self.model
    }

    /// The served model's request options.
    pub fn option_specs(&self) -> &[OptionSpec] {
        &self.options
    }

    /// The options' form field names.
    pub fn option_names(&self) -> Vec<&'static str> {
        self.options.iter().map(|s| s.name).collect()
    }

    /// A request's options from its fields; absent seeds are drawn.
    pub fn parse_options<'a>(
        &self,
        field: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<RequestOptions, String> {
        let options = RequestOptions::parse(&self.options, field, rand::random)?;
        self.model
            .check_masker_options(&options, self.masker.is_some())?;
        Ok(options)
    }

    /// Options stored with a job, checked again.
    pub fn stored_options(&self, stored: &serde_json::Value) -> Result<RequestOptions, String> {
        RequestOptions::from_stored(&self.options, stored)
    }

    /// The seeds a request runs with.
    pub fn seeds(&self, options: &RequestOptions) -> Vec<u64> {
        options.seeds(&self.options).collect()
    }

    /// The inputs the model needs for a request with its default options.
    pub fn default_input(&self) -> InputSpec {
        let defaults = RequestOptions::parse(&self.options, |_| None, || 0).unwrap_or_default();
        self.model.input(&defaults)
    }

    /// Checks every image's header (format, size, aspect ratio) and that the largest fits the
    /// decode budget for the model's `frame` (large JPEGs decode scaled to cover it), before
    /// anything is decoded.
    pub fn check_headers(&self, parts: &ImageParts, frame: Frame) -> Result<Probes, ImageError> {
        let probes = Probes::read(parts, self.max_pixels, frame)?;
        if probes.decode_bytes > self.decode.total {
            let largest = probes.largest;
            return Err(ImageError::Invalid(format!(
                "the {}x{} image needs {} MiB to decode, more than this server decodes at once ({} MiB)",
                largest.width,
                largest.height,
                probes.decode_bytes >> 20,
                self.decode.total >> 20
            )));
        }
        Ok(probes)
    }

    /// Checks every image's header, then decodes and fits the images one after the other on
    /// `cpu`, holding the decode budget that the largest of them needs (waiting for it until
    /// `deadline`), and builds the model's input.
    ///
    /// One grant per request, held until its last image is done: a request that has started
    /// never waits again behind later arrivals, so requests finish in the order they were
    /// granted.
    pub async fn prepare(
        &self,
        parts: ImageParts,
        options: RequestOptions,
        deadline: Instant,
        cpu: &Cpu,
    ) -> Result<ModelInput, PrepareError> {
        let spec = self.model.input(&options);
        let probes = self.check_headers(&parts, spec.frame)?;
        let need = probes.decode_bytes;
        let permit = self.decode_permit(need, deadline).await?;
        let gauge = self.decode.metrics.decode_memory.clone();
        let masker = self.masker.clone();
        // The permit goes with the work: if this request is abandoned meanwhile, the budget
        // is still held until the decoder has let go of its memory.
        cpu.run(move || {
            gauge.add(need as i64);
            let prepared = decode_and_fit(&parts, &probes, &spec, masker.as_deref(), options);
            gauge.sub(need as i64);
            drop(permit);
            drop(parts);
            prepared
        })
        .await
        .map_err(PrepareError::Internal)?
    }
}

impl Pipeline {
    /// `need` bytes of the decode budget, waited for until `deadline` (then `Busy`).
    async fn decode_permit(
        &self,
        need: u64,
        deadline: Instant,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, PrepareError> {
        tokio::time::timeout_at(
            deadline,
            self.decode
                .semaphore
                .clone()
                .acquire_many_owned(budget_units(need)),
        )
        .await
        .map_err(|_| PrepareError::Busy)?
        .map_err(|_| PrepareError::Internal("the decode budget is closed".into()))
    }

    /// The automatic person mask a request with `options` would get for this photo, at the
    /// model's frame; or, with `labels`, the loaded masker's label map of that name. Decoded
    /// and computed on `cpu` under the decode budget (waiting for it until `deadline`).
    pub async fn automatic_mask(
        &self,
        person: Bytes,
        options: RequestOptions,
        labels: Option<String>,
        deadline: Instant,
        cpu: &Cpu,
    ) -> Result<GrayImage, PrepareError> {
        let spec = self.model.input(&options);
        let mask_spec = spec
            .person_mask
            .ok_or_else(|| PrepareError::Internal("the model reads no person mask".into()))?;
        let probe = imaging::probe(&person, self.max_pixels)?;
        let need = probe.decode_bytes_for(spec.frame);
        if need > self.decode.total {
            return Err(ImageError::Invalid(format!(
                "the {}x{} image needs {} MiB to decode, more than this server decodes at once ({} MiB)",
                probe.width,
                probe.height,
                need >> 20,
                self.decode.total >> 20
            ))
            .into());
        }
        let permit = self.decode_permit(need, deadline).await?;
        let gauge = self.decode.metrics.decode_memory.clone();
        let masker = self.masker.clone();
        cpu.run(move || {
            gauge.add(need as i64);
            let decoded = imaging::decode_probed_for(&person, &probe, spec.frame);
            gauge.sub(need as i64);
            drop(permit);
            let (person, _) = (spec.fit_person)(&decoded?, spec.frame);
            match (labels, masker) {
                (Some(name), Some(masker)) => masker
                    .label_map(&person, &name)
                    .and_then(|map| map.ok_or_else(|| format!("no label map `{name}`"))),
                (Some(name), None) => Err(format!("the drawn mask has no label map `{name}`")),
                (None, Some(masker)) => masker.mask(&person, &options),
                (None, None) => (mask_spec.draw)(&person, &options),
            }
            .map_err(PrepareError::Internal)
        })
        .await
        .map_err(PrepareError::Internal)?
    }
}

/// Decodes each image in turn and fits it as `spec` asks, so that only one full-size image is
/// held at a time; draws what the request lacks.
pub fn decode_and_fit(
    parts: &ImageParts,
    probes: &Probes,
    spec: &InputSpec,
    masker: Option<&dyn PersonMasker>,
    options: RequestOptions,
) -> Result<ModelInput, PrepareError> {
    let frame = spec.frame;
    let decode = |bytes: &Bytes, probe: &Probe| imaging::decode_probed_for(bytes, probe, frame);
    let gray = |bytes: &Bytes, probe: &Probe| -> Result<GrayImage, ImageError> {
        Ok(DynamicImage::ImageRgb8(decode(bytes, probe)?).to_luma8())
    };
    let (person, content, person_size) = {
        let decoded = decode(&parts.person, &probes.person)?;
        let (fitted, content) = (spec.fit_person)(&decoded, frame);
        (fitted, content, decoded.dimensions())
    };
    let (cloth, garment_size) = {
        let decoded = decode(&parts.cloth, &probes.cloth)?;
        ((spec.fit_cloth)(&decoded, frame), decoded.dimensions())
    };
    let garment_mask = match (
        &spec.garment_mask,
        &parts.garment_mask,
        &probes.garment_mask,
    ) {
        (None, _, _) => None,
        (Some(m), Some(bytes), Some(probe)) => {
            Some((m.fit)(&gray(bytes, probe)?, garment_size, frame))
        }
        (Some(m), _, _) => Some((m.derive)(&cloth)),
    };
    let person_mask = match (&spec.person_mask, &parts.person_mask, &probes.person_mask) {
        (None, _, _) => None,
        (Some(m), Some(bytes), Some(probe)) => {
            let mask = gray(bytes, probe)?;
            if mask.dimensions() != person_size {
                return Err(ImageError::Invalid(format!(
                    "the `{}` part is {}x{}; it must match the person photo ({}x{})",
                    crate::api::PERSON_MASK_PART,
                    mask.width(),
                    mask.height(),
                    person_size.0,
                    person_size.1
                ))
                .into());
            }
            Some((m.fit)(&mask, frame))
        }
        (Some(m), _, _) => Some(
            match masker {
                Some(masker) => masker.mask(&person, &options),
                None => (m.draw)(&person, &options),
            }
            .map_err(PrepareError::Internal)?,
        ),
    };
    let tensor_error = |e: candle_core::Error| {
        PrepareError::Image(ImageError::Invalid(format!("cannot convert image: {e}")))
    };
    Ok(ModelInput {
        person: imaging::rgb_to_tensor(person).map_err(tensor_error)?,
        cloth: imaging::rgb_to_tensor(cloth).map_err(tensor_error)?,
        garment_mask: garment_mask
            .map(imaging::mask_to_tensor)
            .transpose()
            .map_err(tensor_error)?,
        person_mask: person_mask
            .map(imaging::mask_to_tensor)
            .transpose()
            .map_err(tensor_error)?,
        content,
        options,
    })
}

/// Decodes and fits a request's images on the calling thread, without a decode budget (the
/// CLI and the bench, which handle one request at a time).
pub fn prepare_now(
    model: &dyn ModelFamily,
    parts: &ImageParts,
    options: RequestOptions,
    max_pixels: u64,
) -> Result<ModelInput, PrepareError> {
    prepare_now_masked(model, None, parts, options, max_pixels)
}

/// [`prepare_now`] with the model's loaded masker, when there is one.
pub fn prepare_now_masked(
    model: &dyn ModelFamily,
    masker: Option<&dyn PersonMasker>,
    parts: &ImageParts,
    options: RequestOptions,
    max_pixels: u64,
) -> Result<ModelInput, PrepareError> {
    let spec = model.input(&options);
    let probes = Probes::read(parts, max_pixels, spec.frame)?;
    decode_and_fit(parts, &probes, &spec, masker, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_choices_take_defaults_and_refuse_nonsense() {
        let defaults = OutputChoice {
            format: OutputFormat::Jpeg,
            quality: 90,
        };
        assert_eq!(OutputChoice::parse(None, None, defaults), Ok(defaults));
        assert_eq!(
            OutputChoice::parse(Some("png"), Some("40"), defaults),
            Ok(OutputChoice {
                format: OutputFormat::Png,
                quality: 40
            })
        );
        for (f, q) in [
            (Some("gif"), None),
            (None, Some("0")),
            (None, Some("101")),
            (None, Some("x")),
        ] {
            assert!(OutputChoice::parse(f, q, defaults).is_err());
        }
    }
}
