//! Reading an upload (`/tryon`, `/v1/jobs`): the multipart body under its size limit, the byte
//! budget of bodies in memory and the body deadline. What happens to the images next is the
//! pipeline's (`crate::pipeline`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::api::{echo, CLOTH_PART, MASK_PART, PERSON_MASK_PART, PERSON_PART};
use crate::batcher::MIN_RETRY_AFTER_S;
use crate::error::ApiError;
use crate::pipeline::{budget_units as units, ImageParts, OutputChoice};

/// The bounds of an upload, and the answer's default encoding.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest time to receive a whole body.
    pub body_timeout: Duration,
    /// Largest accepted image, in pixels.
    pub max_image_pixels: u64,
    /// Bytes that images being decoded may take at once.
    pub max_decode_memory: u64,
    /// The answer's encoding when the request does not ask.
    pub output: OutputChoice,
}

/// How much of a refused request's body is read and dropped, so that a client still sending it
/// reads the answer instead of meeting a reset; and for how long at most.
pub const REFUSAL_DRAIN_BYTES: usize = 1 << 20;
pub const REFUSAL_DRAIN_TIME: Duration = Duration::from_secs(2);

/// The bytes of request bodies held in memory at once.
pub struct BodyBudget {
    body: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new(body_bytes: u64) -> Self {
        BodyBudget {
            body: Arc::new(Semaphore::new(
                (units(body_bytes) as usize).min(Semaphore::MAX_PERMITS),
            )),
        }
    }
}

/// Longest text field of a form, in bytes.
pub const MAX_TEXT_FIELD_BYTES: usize = 4096;

/// The parts of an upload, with the share of the body budget they hold.
pub struct Upload {
    pub person: Bytes,
    pub cloth: Bytes,
    /// White = garment.
    pub garment_mask: Option<Bytes>,
    /// The area of the person photo to repaint, white = repaint.
    pub person_mask: Option<Bytes>,
    /// The text fields the caller asked for, by name, each at most once.
    pub fields: Vec<(String, String)>,
    _held: Option<OwnedSemaphorePermit>,
}

impl Upload {
    /// The images, for the pipeline (the bytes are shared, not copied).
    pub fn parts(&self) -> ImageParts {
        ImageParts {
            person: self.person.clone(),
            cloth: self.cloth.clone(),
            garment_mask: self.garment_mask.clone(),
            person_mask: self.person_mask.clone(),
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
/// keeps the image parts and the named `text_fields`. Without `need_cloth`, a missing garment
/// photo reads as empty.
// The limits are the settings' own fields, passed one by one so that tests can vary each.
#[allow(clippy::too_many_arguments)]
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budget: &BodyBudget,
    deadline: Instant,
    timeout: Duration,
    text_fields: &[&str],
    need_cloth: bool,
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
        let (held, spent, budget) = (held.clone(), spent.clone(), budget.body.clone());
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
    let (person, cloth, garment_mask, person_mask, fields) = parts;
    let person = person
        .ok_or_else(|| ApiError::BadRequest(format!("the `{PERSON_PART}` part is missing")))?;
    let cloth = match cloth {
        Some(cloth) => cloth,
        None if !need_cloth => Bytes::new(),
        None => {
            return Err(ApiError::BadRequest(format!(
                "the `{CLOTH_PART}` part is missing"
            )))
        }
    };
    let held = held.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(Upload {
        person,
        cloth,
        garment_mask,
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
        let budget = BodyBudget::new(2 * 1024);
        let timeout = Duration::from_secs(5);
        let upload = read(
            &headers,
            Body::from_stream(stream),
            1 << 20,
            &budget,
            Instant::now() + timeout,
            timeout,
            &[],
            true,
        )
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
        assert_eq!((upload.person.len(), upload.cloth.len()), (400, 400));
        assert_eq!(budget.body.available_permits(), 2 - 1, "one KiB held");
        drop(upload);
        assert_eq!(
            budget.body.available_permits(),
            2,
            "released with the upload"
        );
    }
}
