//! Reading a `/tryon` upload: the multipart body under its size limit, the byte budget of bodies
//! in memory and the body deadline; then each image checked from its header, decoded within the
//! decode budget and fitted to the model frame.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::cpu::Cpu;
use crate::api::{echo, CLOTH_PART, MASK_PART, PERSON_MASK_PART, PERSON_PART};
use crate::batcher::MIN_RETRY_AFTER_S;
use crate::error::ApiError;
use crate::imaging::{self, Probe};
use crate::metrics::Metrics;
use crate::models::catvton::{preprocess, request::DiffusionRequest};
use crate::models::{PreparedPair, WorkItem};

/// Budgets count in KiB, since a semaphore counts in `u32` permits.
const BUDGET_UNIT: u64 = 1024;

/// How much of a refused request's body is read and dropped, so that a client still sending it
/// reads the answer instead of meeting a reset; and for how long at most.
pub const REFUSAL_DRAIN_BYTES: usize = 1 << 20;
pub const REFUSAL_DRAIN_TIME: Duration = Duration::from_secs(2);

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX)
}

/// The bytes of request bodies held in memory at once, and of images being decoded.
pub struct Budgets {
    body: Arc<Semaphore>,
    decode: Arc<Semaphore>,
    decode_total: u64,
    metrics: Metrics,
}

impl Budgets {
    pub fn new(body_bytes: u64, decode_bytes: u64, metrics: Metrics) -> Self {
        let cap = |b: u64| (units(b) as usize).min(Semaphore::MAX_PERMITS);
        Budgets {
            body: Arc::new(Semaphore::new(cap(body_bytes))),
            decode: Arc::new(Semaphore::new(cap(decode_bytes))),
            decode_total: decode_bytes,
            metrics,
        }
    }
}

/// Longest text field of a form, in bytes.
pub const MAX_TEXT_FIELD_BYTES: usize = 4096;

/// The parts of a `/tryon` body, with the share of the body budget they hold.
pub struct Upload {
    pub person: Bytes,
    pub cloth: Bytes,
    pub mask: Option<Bytes>,
    /// The area of the person photo to repaint (diffusion models), white = repaint.
    pub person_mask: Option<Bytes>,
    /// The text fields the caller asked for, by name, each at most once.
    pub fields: Vec<(String, String)>,
    _held: Option<OwnedSemaphorePermit>,
}

impl Upload {
    /// Images that were stored earlier (a job's inputs), outside the body budget.
    pub fn stored(person: Bytes, cloth: Bytes, mask: Option<Bytes>) -> Self {
        Upload {
            person,
            cloth,
            mask,
            person_mask: None,
            fields: Vec::new(),
            _held: None,
        }
    }

    /// Stored images of a diffusion job, whose mask is the person mask.
    pub fn stored_diffusion(person: Bytes, cloth: Bytes, person_mask: Option<Bytes>) -> Self {
        Upload {
            person_mask,
            ..Upload::stored(person, cloth, None)
        }
    }

    /// A text field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why reading a body stopped early: the budget of bodies in memory ran out.
#[derive(Debug, thiserror::Error)]
#[error("the server holds too many request bodies")]
struct BodyBudgetSpent;

/// Streams the multipart body under the size limit, the body budget and the deadline, and
/// keeps the three image parts and the named `text_fields`.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budgets: &Budgets,
    deadline: Instant,
    timeout: Duration,
    text_fields: &[&str],
) -> Result<Upload, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::BadRequest(format!(
            "the body must be multipart/form-data with a boundary, not `{}`",
            echo(content_type)
        ))
    })?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(ApiError::PayloadTooLarge { limit });
    }

    // Each chunk takes its share of the body budget as it arrives; a stalled upload holds only
    // what it has sent.
    let held: Arc<Mutex<Option<OwnedSemaphorePermit>>> = Arc::default();
    let spent = Arc::new(AtomicBool::new(false));
    let stream = {
        let (held, spent, budget) = (held.clone(), spent.clone(), budgets.body.clone());
        // Bytes received so far: the budget is taken for what arrived, rounded up once, so
        // many tiny chunks weigh no more than one large one.
        let mut received = 0u64;
        body.into_data_stream().map(move |chunk| {
            let chunk =
                chunk.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let before = units(received);
            received += chunk.len() as u64;
            let more = units(received) - before;
            if more > 0 {
                let permit = budget.clone().try_acquire_many_owned(more).map_err(|_| {
                    spent.store(true, Ordering::Relaxed);
                    Box::new(BodyBudgetSpent)
                })?;
                let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
                match held.as_mut() {
                    Some(h) => h.merge(permit),
                    None => *held = Some(permit),
                }
            }
            Ok::<Bytes, Box<dyn std::error::Error + Send + Sync>>(chunk)
        })
    };
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit as u64));
    let multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let parts = tokio::time::timeout_at(deadline, read_parts(multipart, limit, text_fields))
        .await
        .map_err(|_| ApiError::BodyTimeout {
            timeout_s: timeout.as_secs_f64(),
        })
        .and_then(|r| r);
    let parts = match parts {
        Err(_) if spent.load(Ordering::Relaxed) => {
            return Err(ApiError::Overloaded {
                retry_after_s: MIN_RETRY_AFTER_S,
            })
        }
        other => other?,
    };
    let (person, cloth, mask, person_mask, fields) = parts;
    let person = person
        .ok_or_else(|| ApiError::BadRequest(format!("the `{PERSON_PART}` part is missing")))?;
    let cloth =
        cloth.ok_or_else(|| ApiError::BadRequest(format!("the `{CLOTH_PART}` part is missing")))?;
    let held = held.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(Upload {
        person,
        cloth,
        mask,
        person_mask,
        fields,
        _held: held,
    })
}

type Parts = (
    Option<Bytes>,
    Option<Bytes>,
    Option<Bytes>,
    Option<Bytes>,
    Vec<(String, String)>,
);

async fn read_parts(
    mut multipart: multer::Multipart<'_>,
    limit: usize,
    text_fields: &[&str],
) -> Result<Parts, ApiError> {
    let (mut person, mut cloth, mut mask, mut person_mask) = (None, None, None, None);
    let mut fields: Vec<(String, String)> = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e, limit)),
        };
        let name = field.name().unwrap_or("").to_string();
        let slot = match name.as_str() {
            PERSON_PART => &mut person,
            CLOTH_PART => &mut cloth,
            MASK_PART => &mut mask,
            PERSON_MASK_PART => &mut person_mask,
            known if text_fields.contains(&known) => {
                if fields.iter().any(|(n, _)| n == known) {
                    return Err(ApiError::BadRequest(format!(
                        "the `{known}` field appears more than once"
                    )));
                }
                let value = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                if value.len() > MAX_TEXT_FIELD_BYTES {
                    return Err(ApiError::BadRequest(format!(
                        "the `{known}` field is longer than {MAX_TEXT_FIELD_BYTES} bytes"
                    )));
                }
                let text = String::from_utf8(value.to_vec()).map_err(|_| {
                    ApiError::BadRequest(format!("the `{known}` field is not UTF-8 text"))
                })?;
                fields.push((known.to_string(), text));
                continue;
            }
            _ => {
                // Unknown parts are read past and ignored.
                field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                continue;
            }
        };
        if slot.is_some() {
            return Err(ApiError::BadRequest(format!(
                "the `{name}` part appears more than once"
            )));
        }
        if let Some(mime) = field.content_type() {
            let ok = mime.type_() == "image" || mime.essence_str() == "application/octet-stream";
            if !ok {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "the `{name}` part is `{}`; send a JPEG, PNG or WebP image",
                    echo(mime.as_ref())
                )));
            }
        }
        *slot = Some(field.bytes().await.map_err(|e| multipart_error(e, limit))?);
    }
    Ok((person, cloth, mask, person_mask, fields))
}

fn multipart_error(e: multer::Error, limit: usize) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        other => ApiError::BadRequest(format!(
            "malformed multipart body: {}",
            echo(&other.to_string())
        )),
    }
}

/// Reads and drops what a refused request still sends, up to [`REFUSAL_DRAIN_BYTES`] and
/// [`REFUSAL_DRAIN_TIME`].
pub async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let _ = tokio::time::timeout(REFUSAL_DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > REFUSAL_DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Every image's header, and the decode budget the largest needs.
pub struct Probes {
    pub person: Probe,
    pub cloth: Probe,
    pub mask: Option<Probe>,
    pub person_mask: Option<Probe>,
    pub decode_bytes: u64,
}

/// Checks every image's header (format, size, aspect ratio) and that the largest fits the
/// decode budget, before anything is decoded.
pub fn check_headers(
    upload: &Upload,
    max_pixels: u64,
    budgets: &Budgets,
) -> Result<Probes, ApiError> {
    let person = imaging::probe(&upload.person, max_pixels)?;
    let cloth = imaging::probe(&upload.cloth, max_pixels)?;
    let mask = match &upload.mask {
        Some(m) => Some(imaging::probe(m, max_pixels)?),
        None => None,
    };
    let person_mask = match &upload.person_mask {
        Some(m) => Some(imaging::probe(m, max_pixels)?),
        None => None,
    };
    let largest = [
        Some(&person),
        Some(&cloth),
        mask.as_ref(),
        person_mask.as_ref(),
    ]
    .into_iter()
    .flatten()
    .max_by_key(|p| p.decode_bytes())
    .copied()
    .unwrap_or(person);
    let need = largest.decode_bytes();
    if need > budgets.decode_total {
        return Err(ApiError::InvalidImage(format!(
            "the {}x{} image needs {} MiB to decode, more than this server decodes at once ({} MiB)",
            largest.width,
            largest.height,
            need >> 20,
            budgets.decode_total >> 20
        )));
    }
    Ok(Probes {
        person,
        cloth,
        mask,
        person_mask,
        decode_bytes: need,
    })
}

/// Checks every image's header, then decodes and fits the images one after the other on the
/// blocking pool, holding the decode budget that the largest of them needs (waiting for it
/// until `deadline`), and builds the request's inputs.
///
/// One grant per request, held until its last image is done: a request that has started never
/// waits again behind later arrivals, so requests finish in the order they were granted.
pub async fn prepare(
    upload: Upload,
    max_pixels: u64,
    budgets: &Budgets,
    deadline: Instant,
    cpu: &Cpu,
    diffusion: Option<DiffusionRequest>,
) -> Result<WorkItem, ApiError> {
    let probes = check_headers(&upload, max_pixels, budgets)?;
    let need = probes.decode_bytes;
    let permit = tokio::time::timeout_at(
        deadline,
        budgets.decode.clone().acquire_many_owned(units(need)),
    )
    .await
    .map_err(|_| ApiError::Overloaded {
        retry_after_s: MIN_RETRY_AFTER_S,
    })?
    .map_err(|_| ApiError::Internal("the decode budget is closed".into()))?;
    let gauge = budgets.metrics.decode_memory.clone();
    // The permit goes with the work: if this request is abandoned meanwhile, the budget is
    // still held until the decoder has let go of its memory.
    cpu.run(move || {
        gauge.add(need as i64);
        let prepared = match diffusion {
            None => decode_all(&upload, &probes).map(WorkItem::Pair),
            Some(d) => decode_diffusion(&upload, &probes, d).map(WorkItem::Diffusion),
        };
        gauge.sub(need as i64);
        drop(permit);
        drop(upload);
        prepared
    })
    .await
    .map_err(|e| ApiError::Internal(format!("image preparation failed: {e}")))?
}

fn decode_all(upload: &Upload, probes: &Probes) -> Result<PreparedPair, ApiError> {
    let (person_fit, content, _) = imaging::decode_and_fit(&upload.person, &probes.person)?;
    let (cloth_fit, _, cloth_size) = imaging::decode_and_fit(&upload.cloth, &probes.cloth)?;
    let mask_fit = match (&upload.mask, probes.mask.as_ref()) {
        (Some(bytes), Some(probe)) => Some(imaging::decode_mask_and_fit(bytes, probe, cloth_size)?),
        _ => None,
    };
    imaging::prepare_fitted((person_fit, content), cloth_fit, mask_fit)
        .map_err(|e| ApiError::InvalidImage(format!("cannot convert image: {e}")))
}

/// Decodes a diffusion request's images and fits them to its resolution; without a person
/// mask, one is drawn from the category.
fn decode_diffusion(
    upload: &Upload,
    probes: &Probes,
    request: DiffusionRequest,
) -> Result<crate::models::catvton::DiffusionInput, ApiError> {
    let person = imaging::decode_probed(&upload.person, &probes.person)?;
    let cloth = imaging::decode_probed(&upload.cloth, &probes.cloth)?;
    let mask = match (&upload.person_mask, probes.person_mask.as_ref()) {
        (Some(bytes), Some(probe)) => {
            let rgb = imaging::decode_probed(bytes, probe)?;
            Some(image::DynamicImage::ImageRgb8(rgb).to_luma8())
        }
        _ => None,
    };
    if let Some(m) = &mask {
        if m.dimensions() != person.dimensions() {
            return Err(ApiError::InvalidImage(format!(
                "the `{PERSON_MASK_PART}` part is {}x{}; it must match the person photo ({}x{})",
                m.width(),
                m.height(),
                person.width(),
                person.height()
            )));
        }
    }
    preprocess::prepare(
        &person,
        &cloth,
        mask.as_ref(),
        request.category,
        request.resolution.size(),
        request.params,
    )
    .map_err(|e| ApiError::InvalidImage(format!("cannot convert image: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn multipart(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, bytes) in parts {
            body.extend_from_slice(
                format!("--XYZ\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n")
                    .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XYZ--\r\n");
        body
    }

    #[tokio::test]
    async fn tiny_chunks_take_the_body_budget_by_bytes_not_by_chunk() {
        let body = multipart(&[(PERSON_PART, &[7u8; 400]), (CLOTH_PART, &[9u8; 400])]);
        assert!(body.len() < 2 * 1024);
        // One byte a chunk, against a budget of 2 KiB: counted per chunk it would need ~1000.
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            body.iter().map(|b| Ok(Bytes::from(vec![*b]))).collect();
        let stream = futures_util::stream::iter(chunks);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("multipart/form-data; boundary=XYZ"),
        );
        let budgets = Budgets::new(2 * 1024, 1 << 20, Metrics::new());
        let timeout = Duration::from_secs(5);
        let upload = read(
            &headers,
            Body::from_stream(stream),
            1 << 20,
            &budgets,
            Instant::now() + timeout,
            timeout,
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
        assert_eq!((upload.person.len(), upload.cloth.len()), (400, 400));
        assert_eq!(budgets.body.available_permits(), 2 - 1, "one KiB held");
        drop(upload);
        assert_eq!(
            budgets.body.available_permits(),
            2,
            "released with the upload"
        );
    }
}
