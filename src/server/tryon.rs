//! `POST /tryon`: upload → the pipeline (header checks, decode within budget, fit) → batch →
//! the pipeline's encoding, with every failure answered through [`ApiError`] and counted once.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use serde::Deserialize;
use tokio::time::Instant;

use super::{upload, AppState};
use crate::api::{
    echo, BATCH_SIZE_HEADER, INFERENCE_TIME_HEADER, MODEL_HEADER, QUEUE_TIME_HEADER, SEED_HEADER,
};
use crate::batcher::{Priority, MIN_RETRY_AFTER_S};
use crate::error::ApiError;
use crate::metrics::ActiveGuard;
use crate::pipeline::{cpu::Cpu, OutputChoice};

/// The handler's own bound on a worker that makes no progress, beyond the request timeout the
/// worker enforces itself: it only matters when the device stalls. Twice the timeout, plus this.
const STALL_GRACE: Duration = Duration::from_secs(10);

/// `format` and `quality` query parameters of /tryon.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TryOnQuery {
    /// `jpeg` or `png` (default: `--output-format`).
    #[param(value_type = Option<String>, pattern = "^(jpeg|jpg|png)$")]
    format: Option<String>,
    /// JPEG quality, 1 to 100 (default: `--jpeg-quality`).
    #[param(minimum = 1, maximum = 100)]
    quality: Option<u8>,
}

/// The multipart form of `POST /tryon` (the part names are `crate::api`'s).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct TryOnForm {
    /// Person photo (JPEG, PNG or WebP; EXIF orientation is honoured).
    #[schema(value_type = String, format = Binary, min_length = 1, content_media_type = "image/*")]
    person_image: Vec<u8>,
    /// Garment product photo, ideally on a plain light background.
    #[schema(value_type = String, format = Binary, min_length = 1, content_media_type = "image/*")]
    cloth_image: Vec<u8>,
    /// Optional garment mask, white = garment (models that read one).
    #[schema(value_type = String, format = Binary, min_length = 1, content_media_type = "image/*", required = false)]
    cloth_mask: Option<Vec<u8>>,
    /// Optional area of the person photo to repaint, white = repaint, the photo's size (models
    /// that read one; drawn from the options when absent).
    #[schema(value_type = String, format = Binary, min_length = 1, content_media_type = "image/*", required = false)]
    person_mask: Option<Vec<u8>>,
}

/// A failed request: the error, and whether the connection must close after the answer
/// because the body was left partly unread.
struct Failure {
    error: ApiError,
    close: bool,
}

impl Failure {
    /// A failure while the body may still be arriving.
    fn mid_body(error: ApiError) -> Self {
        Failure { error, close: true }
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure {
            error,
            close: false,
        }
    }
}

/// Render the person wearing the garment.
#[utoipa::path(
    post,
    path = "/tryon",
    tag = "try-on",
    params(TryOnQuery),
    request_body(content = TryOnForm, content_type = "multipart/form-data", encoding(
        ("person_image" = (content_type = "image/jpeg, image/png, image/webp")),
        ("cloth_image" = (content_type = "image/jpeg, image/png, image/webp")),
        ("cloth_mask" = (content_type = "image/jpeg, image/png, image/webp")),
    )),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The try-on image, cropped to the person photo's aspect ratio.",
            content(("image/jpeg"), ("image/png")),
            headers(
                ("x-request-id" = String, description = "The client's id when it is at most 128 visible ASCII characters, else a fresh one."),
                ("x-model" = String, description = "The model that answered."),
                ("x-batch-size" = u32, description = "Requests in the answering batch."),
                ("x-queue-time-ms" = f64, description = "Admission to batch start."),
                ("x-inference-time-ms" = f64, description = "The batch's forward time (step models: the request's sampling time)."),
                ("x-seed" = u64, description = "Models with a seed option: the seed the request was sampled with."),
            )),
        (status = 400, description = "Not multipart, a missing or duplicated part, a malformed body or query (`bad_request`).", body = crate::error::ErrorBody),
        (status = 401, description = "Wrong or missing bearer token (`unauthorized`).", body = crate::error::ErrorBody),
        (status = 408, description = "The body did not arrive within --body-timeout-s (`request_timeout`).", body = crate::error::ErrorBody),
        (status = 413, description = "Body over --max-body-bytes (`payload_too_large`).", body = crate::error::ErrorBody),
        (status = 415, description = "A part that is not a supported image format (`unsupported_media_type`).", body = crate::error::ErrorBody),
        (status = 422, description = "Undecodable, empty, too large or too elongated image (`invalid_image`).", body = crate::error::ErrorBody),
        (status = 429, description = "Queue or upload budget full (`overloaded`), or this API key is past --key-requests-per-s (`rate_limited`); see Retry-After.", body = crate::error::ErrorBody),
        (status = 503, description = "Warming up or draining; see Retry-After (`unavailable`).", body = crate::error::ErrorBody),
        (status = 504, description = "Waited past --request-timeout-s before its batch ran (`deadline_exceeded`).", body = crate::error::ErrorBody),
        (status = 500, description = "Model or device failure (`internal`).", body = crate::error::ErrorBody),
    )
)]
pub async fn tryon_handler(
    State(state): State<AppState>,
    query: Result<Query<TryOnQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let inner = &state.inner;
    // Tracked from here, so a drain answers this request whatever stage it is in.
    let _in_flight = inner.in_flight.token();
    let (parts, body) = request.into_parts();
    let result = match check_before_body(&state, &parts.headers, query) {
        // Refused before the body: read what the client still sends, then answer, as
        // /v1/jobs does; the drain's deadline does not cut this short, so the client reads
        // the answer rather than a reset.
        Err(error) => {
            upload::drain(body).await;
            Err(Failure::mid_body(error))
        }
        Ok(output) => tokio::select! {
            r = tryon(&state, &parts, body, output) => r,
            _ = inner.drain_deadline.cancelled() => Err(Failure::mid_body(ApiError::Draining {
                retry_after_s: MIN_RETRY_AFTER_S,
            })),
        },
    };
    let response = match result {
        Ok(r) => r,
        Err(Failure { error, close }) => {
            if let Some(reason) = error.reject_reason() {
                inner.metrics.reject(reason);
            }
            super::error_response(error, close)
        }
    };
    inner
        .metrics
        .observe_answer(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Refusals decided before the body is read: authentication, readiness and the query.
fn check_before_body(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    query: Result<Query<TryOnQuery>, QueryRejection>,
) -> Result<OutputChoice, ApiError> {
    let inner = &state.inner;
    inner.keys.authenticate(headers)?;
    if let Some(e) = inner.readiness.refusal(|| inner.batcher.retry_after_s()) {
        return Err(e);
    }
    let Query(query) =
        query.map_err(|e| ApiError::BadRequest(format!("bad query: {}", echo(&e.body_text()))))?;
    OutputChoice::parse(
        query.format.as_deref(),
        query.quality.map(|q| q.to_string()).as_deref(),
        inner.upload.output,
    )
    .map_err(ApiError::BadRequest)
}

async fn tryon(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
    output_choice: OutputChoice,
) -> Result<Response, Failure> {
    let inner = &state.inner;
    let settings = &inner.upload;

    let body_deadline = Instant::now() + settings.body_timeout;
    let upload = upload::read(
        &parts.headers,
        body,
        settings.max_body_bytes,
        &inner.body_budget,
        body_deadline,
        settings.body_timeout,
        &inner.pipeline.option_names(),
        true,
    )
    .await
    .map_err(Failure::mid_body)?;
    let options = inner
        .pipeline
        .parse_options(|name| upload.field(name))
        .map_err(ApiError::BadRequest)?;
    let seeds = inner.pipeline.seeds(&options);

    // Decoding runs for at most --queue-capacity requests at once: past it, 429 at once.
    let Ok(_decoding) = inner.decoding.clone().try_acquire_owned() else {
        return Err(ApiError::Overloaded {
            retry_after_s: inner.batcher.retry_after_s(),
        }
        .into());
    };
    let request_timeout = inner.batching.request_timeout;
    let images = upload.parts();
    let prepared = inner
        .pipeline
        .prepare(
            images,
            options,
            Instant::now() + request_timeout,
            &Cpu::Blocking,
        )
        .await
        .map_err(ApiError::from)?;
    // The body's share of the body budget is held until its images are decoded.
    drop(upload);
    drop(_decoding);
    let content = prepared.content;

    // Counted as active before admission, so a drain that starts now either waits for this
    // request or refuses it: never both admits and forgets it.
    let _active = ActiveGuard::new(&inner.metrics, Priority::Interactive.label());
    let mut receiver = inner.batcher.submit(prepared).map_err(ApiError::from)?;

    // The worker answers expired requests itself; this bound only covers a stalled device: the
    // handler gives up when the worker has finished no model call for that long. A request of
    // many diffusion steps may take longer in all while every step makes progress.
    let stall_bound = request_timeout * 2 + STALL_GRACE;
    let mut calls_seen = inner.batcher.model_calls();
    let answer = loop {
        match tokio::time::timeout(stall_bound, &mut receiver).await {
            Ok(answer) => break answer,
            Err(_) => {
                let calls = inner.batcher.model_calls();
                if calls == calls_seen {
                    return Err(ApiError::DeadlineExceeded {
                        waited_ms: stall_bound.as_millis() as u64,
                        timeout_ms: request_timeout.as_millis() as u64,
                    }
                    .into());
                }
                calls_seen = calls;
            }
        }
    }
    .map_err(|_| ApiError::Internal("the model worker stopped".into()))?;
    let output = answer.map_err(ApiError::from)?;

    let image = output.image;
    let encoded = tokio::task::spawn_blocking(move || {
        crate::pipeline::encode_answer(&image, content, output_choice)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("encoding failed: {e}")))?
    .map_err(|e| ApiError::Internal(format!("encoding failed: {e}")))?;

    let mut response = Response::new(Body::from(encoded));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(output_choice.format.mime()),
    );
    h.insert(MODEL_HEADER, super::header_value(&inner.model));
    if let Some(seed) = seeds.first() {
        h.insert(SEED_HEADER, HeaderValue::from(*seed));
    }
    h.insert(BATCH_SIZE_HEADER, HeaderValue::from(output.batch_size));
    h.insert(
        QUEUE_TIME_HEADER,
        super::header_value(&format!("{:.3}", output.queue_time.as_secs_f64() * 1e3)),
    );
    h.insert(
        INFERENCE_TIME_HEADER,
        super::header_value(&format!("{:.3}", output.inference_time.as_secs_f64() * 1e3)),
    );
    Ok(response)
}
