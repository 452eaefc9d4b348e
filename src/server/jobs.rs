//! The asynchronous jobs API: `POST /v1/jobs`, `GET /v1/jobs/{id}`,
//! `GET /v1/jobs/{id}/result` and `DELETE /v1/jobs/{id}`. The work itself is done by
//! `crate::jobs::runner`.
//!
//! A job belongs to the API key that submitted it: any other key gets `404` for it, as for
//! an id that never existed. An `Idempotency-Key` is scoped to its key's owner, and stored
//! with a hash of the request; the same key with another request is `422`.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::auth::Caller;
use super::{upload, AppState};
use crate::api::echo;
use crate::batcher::Priority;
use crate::error::ApiError;
use crate::imaging::OutputFormat;
use crate::jobs::{
    now_ms, scoped_idempotency_key, valid_id, JobInputs, JobRecord, JobStatus, JobView, NewJob,
    MAX_IDEMPOTENCY_KEY_BYTES, MAX_METADATA_BYTES,
};
use crate::pipeline::OutputChoice;

/// The form's text fields.
pub const PRIORITY_FIELD: &str = "priority";
pub const WEBHOOK_FIELD: &str = "webhook_url";
pub const METADATA_FIELD: &str = "metadata";
pub const FORMAT_FIELD: &str = "format";
pub const QUALITY_FIELD: &str = "quality";
const TEXT_FIELDS: &[&str] = &[
    PRIORITY_FIELD,
    WEBHOOK_FIELD,
    METADATA_FIELD,
    FORMAT_FIELD,
    QUALITY_FIELD,
];
/// The form's text fields, the served model's options added.
pub fn text_fields(model_options: &[&'static str]) -> Vec<&'static str> {
    let mut fields = TEXT_FIELDS.to_vec();
    fields.extend_from_slice(model_options);
    fields
}

/// The header that makes a resubmission return the first job.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Set on the answer to a resubmission that returned an existing job.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The multipart form of `POST /v1/jobs`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct JobForm {
    /// Person photo (JPEG, PNG or WebP).
    #[schema(value_type = String, format = Binary, min_length = 1, content_media_type = "image/*")]
    person_image: Vec<u8>,
    /// Garment product photo.
    #[schema(value_type = String, format = Binary, min_length = 1, content_media_type = "image/*")]
    cloth_image: Vec<u8>,
    /// Optional garment mask, white = garment (models that read one).
    #[schema(value_type = String, format = Binary, min_length = 1, content_media_type = "image/*", required = false)]
    cloth_mask: Option<Vec<u8>>,
    /// Optional area of the person photo to repaint, white = repaint, the photo's size (models
    /// that read one; drawn from the options when absent).
    #[schema(value_type = String, format = Binary, min_length = 1, content_media_type = "image/*", required = false)]
    person_mask: Option<Vec<u8>>,
    /// `interactive` or `batch` (default): batch work runs where interactive work leaves room.
    #[schema(nullable = false)]
    priority: Option<Priority>,
    /// Called with the status JSON when the job ends; its host must be in
    /// --webhook-allow-hosts.
    #[schema(nullable = false, max_length = 2048)]
    webhook_url: Option<String>,
    /// A short string of the client's (at most 512 bytes: 128 characters always fit),
    /// echoed back.
    #[schema(nullable = false, max_length = 128)]
    metadata: Option<String>,
    /// `jpeg` or `png` (default: --output-format).
    #[schema(nullable = false, pattern = "^(jpeg|png)$")]
    format: Option<String>,
    /// JPEG quality, 1 to 100 (default: --jpeg-quality).
    #[schema(nullable = false, minimum = 1, maximum = 100)]
    quality: Option<u8>,
}

fn location(id: &str) -> HeaderValue {
    super::header_value(&format!("/v1/jobs/{id}"))
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::jobs::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("the job store call failed: {e}")))?
        .map_err(ApiError::from)
}

/// Submit a try-on job: answered at once with its id; poll it, or get a webhook.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body(content = JobForm, content_type = "multipart/form-data", encoding(
        ("person_image" = (content_type = "image/jpeg, image/png, image/webp")),
        ("cloth_image" = (content_type = "image/jpeg, image/png, image/webp")),
        ("cloth_mask" = (content_type = "image/jpeg, image/png, image/webp")),
    )),
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,128}$", description = "A resubmission with the same key (at most 128 visible ASCII characters, sent once) and the same request returns the first job. Keys are scoped to the API key that sent them; the same key with a different request is refused (`idempotency_key_reused`).")),
    security(("bearer" = []), ()),
    responses(
        (status = 202, description = "Accepted (or, with a known Idempotency-Key, the job it named: `Idempotent-Replayed: true`).", body = JobView,
            headers(("location" = String, description = "`/v1/jobs/{id}`."))),
        (status = 400, description = "A missing or bad part or field, a duplicated Idempotency-Key header, or a webhook URL this server does not call (`bad_request`).", body = crate::error::ErrorBody),
        (status = 401, description = "Wrong or missing bearer token (`unauthorized`).", body = crate::error::ErrorBody),
        (status = 408, description = "The body did not arrive within --body-timeout-s (`request_timeout`).", body = crate::error::ErrorBody),
        (status = 413, description = "Body over --max-body-bytes (`payload_too_large`).", body = crate::error::ErrorBody),
        (status = 415, description = "A part that is not a supported image (`unsupported_media_type`).", body = crate::error::ErrorBody),
        (status = 422, description = "An image refused from its header (`invalid_image`), or an Idempotency-Key used before with a different request (`idempotency_key_reused`).", body = crate::error::ErrorBody),
        (status = 429, description = "--max-queued-jobs are waiting (`overloaded`), or this API key is past --max-jobs-per-key or --key-requests-per-s (`rate_limited`); see Retry-After.", body = crate::error::ErrorBody),
        (status = 503, description = "Warming up, draining, or the job store is unreachable or cannot write (`unavailable`).", body = crate::error::ErrorBody),
        (status = 507, description = "The job store holds --max-store-bytes of inputs and results; see Retry-After (`insufficient_storage`).", body = crate::error::ErrorBody),
    )
)]
pub async fn submit_handler(State(state): State<AppState>, request: Request) -> Response {
    let _in_flight = state.inner.in_flight.token();
    match submit(&state, request).await {
        Ok(r) => r,
        Err((e, close)) => {
            if let Some(reason) = e.reject_reason() {
                state.inner.metrics.reject(reason);
            }
            super::error_response(e, close)
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "Idempotency-Key is sent more than once; send it once".into(),
        ));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_BYTES
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_string()))
}

async fn submit(state: &AppState, request: Request) -> Result<Response, (ApiError, bool)> {
    let inner = &state.inner;
    let upload_settings = &inner.upload;
    let jobs_settings = &inner.jobs_settings;
    let (parts, body) = request.into_parts();
    let before_body = inner.keys.authenticate(&parts.headers).and_then(|caller| {
        match inner
            .readiness
            .refusal(|| inner.batcher.retry_after_s())
            .or_else(|| inner.store_refusal())
        {
            Some(e) => Err(e),
            None => Ok((caller, idempotency_key(&parts.headers)?)),
        }
    });
    let (caller, key) = match before_body {
        Ok(k) => k,
        Err(e) => {
            upload::drain(body).await;
            return Err((e, true));
        }
    };
    let upload = upload::read(
        &parts.headers,
        body,
        upload_settings.max_body_bytes,
        &inner.body_budget,
        Instant::now() + upload_settings.body_timeout,
        upload_settings.body_timeout,
        &text_fields(&inner.pipeline.option_names()),
        true,
    )
    .await
    .map_err(|e| (e, true))?;
    let mut record =
        job_record(upload_settings.output, &inner.webhooks, &upload).map_err(|e| (e, false))?;
    let options = inner
        .pipeline
        .parse_options(|name| upload.field(name))
        .map_err(|e| (ApiError::BadRequest(e), false))?;
    if !options.is_empty() {
        record.options = Some(options.to_value());
    }
    record.owner = caller.owner.clone();
    record.fingerprint = Some(fingerprint(&upload));
    let images = upload.parts();
    let frame = inner.pipeline.model().input(&options).frame;
    inner
        .pipeline
        .check_headers(&images, frame)
        .map_err(|e| (ApiError::from(e), false))?;

    let job = NewJob {
        record,
        inputs: JobInputs {
            person: images.person,
            cloth: images.cloth,
            garment_mask: images.garment_mask,
            person_mask: images.person_mask,
        },
        idempotency_key: key.map(|k| scoped_idempotency_key(caller.owner.as_deref(), &k)),
        max_queued: jobs_settings.max_queued,
        retention: jobs_settings.retention,
        max_owner_jobs: jobs_settings.max_per_owner,
        max_store_bytes: jobs_settings.max_store_bytes,
    };
    let store = inner.jobs.clone();
    let submitted = blocking(move || store.submit(job))
        .await
        .map_err(|e| (e, false))?;
    // The body's share of the body budget is held until its bytes are stored.
    drop(upload);
    let record = submitted.record;
    if submitted.created {
        inner
            .metrics
            .jobs_submitted_total
            .with_label_values(&[record.priority.label()])
            .inc();
        inner.job_wake.notify_one();
        tracing::info!(job = %record.id, priority = record.priority.label(), "job queued");
    }
    let mut response = (StatusCode::ACCEPTED, Json(JobView::from(&record))).into_response();
    let h = response.headers_mut();
    h.insert(header::LOCATION, location(&record.id));
    if !submitted.created {
        h.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A hash of what the client sent: every part and field, each with its name and length, in
/// a fixed order, so that two requests hash alike only when they are the same.
pub fn fingerprint(upload: &upload::Upload) -> String {
    let mut hash = Sha256::new();
    let mut put = |name: &str, bytes: &[u8]| {
        for piece in [name.as_bytes(), bytes] {
            hash.update((piece.len() as u64).to_le_bytes());
            hash.update(piece);
        }
    };
    put("person", &upload.person);
    put("cloth", &upload.cloth);
    if let Some(m) = &upload.garment_mask {
        put("mask", m);
    }
    if let Some(m) = &upload.person_mask {
        put("person_mask", m);
    }
    let mut fields: Vec<&(String, String)> = upload.fields.iter().collect();
    fields.sort();
    for (name, value) in fields {
        put(name, value.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// The new job's record, from the form's fields (its owner, fingerprint and model options are
/// the caller's to set).
pub fn job_record(
    output_defaults: OutputChoice,
    webhooks: &crate::jobs::webhook::WebhookConfig,
    upload: &upload::Upload,
) -> Result<JobRecord, ApiError> {
    let priority = match upload.field(PRIORITY_FIELD) {
        None => Priority::Batch,
        Some(p) => p
            .parse()
            .map_err(|e: String| ApiError::BadRequest(format!("{e}, not `{}`", echo(p))))?,
    };
    let webhook_url = match upload.field(WEBHOOK_FIELD) {
        None => None,
        Some(u) => Some(
            webhooks
                .check_url(u)
                .map_err(ApiError::BadRequest)?
                .to_string(),
        ),
    };
    let metadata = upload.field(METADATA_FIELD).map(str::to_string);
    if metadata
        .as_ref()
        .is_some_and(|m| m.len() > MAX_METADATA_BYTES)
    {
        return Err(ApiError::BadRequest(format!(
            "metadata is longer than {MAX_METADATA_BYTES} bytes"
        )));
    }
    let OutputChoice { format, quality } = OutputChoice::parse(
        upload.field(FORMAT_FIELD),
        upload.field(QUALITY_FIELD),
        output_defaults,
    )
    .map_err(ApiError::BadRequest)?;
    Ok(JobRecord {
        id: crate::jobs::new_id(),
        status: JobStatus::Queued,
        priority,
        created_ms: now_ms(),
        started_ms: None,
        finished_ms: None,
        expires_ms: None,
        error: None,
        metadata,
        webhook_url,
        format: match format {
            OutputFormat::Jpeg => "jpeg".into(),
            OutputFormat::Png => "png".into(),
        },
        quality,
        attempts: 0,
        cancel_requested: false,
        lease: None,
        options: None,
        owner: None,
        fingerprint: None,
        progress: None,
    })
}

/// The job's record, after authentication; 404 for an id this server never made, and for
/// another key's job.
pub(super) async fn find(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<JobRecord, ApiError> {
    let caller = check_id(state, headers, id)?;
    let store = state.inner.jobs.clone();
    let key = id.to_string();
    blocking(move || store.get(&key, now_ms()))
        .await?
        .filter(|r| owns(&caller, r))
        .ok_or_else(|| unknown(id))
}

/// Whether the caller may see the job: its owner, or anyone when the job has none (no key
/// was configured when it was submitted) and the caller has none either.
fn owns(caller: &Caller, record: &JobRecord) -> bool {
    caller.owner == record.owner
}

/// Authentication, and an id this server could have made (anything else is unknown without
/// asking the store).
fn check_id(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Caller, ApiError> {
    let caller = state.inner.keys.authenticate(headers)?;
    if valid_id(id) {
        Ok(caller)
    } else {
        Err(unknown(id))
    }
}

fn unknown(id: &str) -> ApiError {
    ApiError::NotFound(format!("no job `{}`", echo(id)))
}

/// A job's status.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id.")),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The job's status.", body = JobView),
        (status = 401, description = "Wrong or missing bearer token (`unauthorized`).", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown id, or another API key's job (`not_found`).", body = crate::error::ErrorBody),
        (status = 429, description = "This API key is past --key-requests-per-s; see Retry-After (`rate_limited`).", body = crate::error::ErrorBody),
    )
)]
pub async fn status_handler(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match find(&state, &headers, &id).await {
        Ok(record) => Json(JobView::from(&record)).into_response(),
        Err(e) => super::error_response(e, false),
    }
}

/// A job's result image.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/result",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id.")),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The try-on image.", content(("image/jpeg"), ("image/png"))),
        (status = 401, description = "Wrong or missing bearer token (`unauthorized`).", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown id, or another API key's job (`not_found`).", body = crate::error::ErrorBody),
        (status = 429, description = "This API key is past --key-requests-per-s; see Retry-After (`rate_limited`).", body = crate::error::ErrorBody),
        (status = 409, description = "Queued or running (`not_ready`), or failed or cancelled: no result (`conflict`).", body = crate::error::ErrorBody),
        (status = 410, description = "Kept past --job-retention and deleted (`expired`).", body = crate::error::ErrorBody),
    )
)]
pub async fn result_handler(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match result(&state, &headers, &id).await {
        Ok(r) => r,
        Err(e) => super::error_response(e, false),
    }
}

async fn result(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Response, ApiError> {
    let record = find(state, headers, id).await?;
    let expired =
        || ApiError::Expired(format!("job {id}'s result was deleted after the retention"));
    match record.status {
        JobStatus::Queued | JobStatus::Running => Err(ApiError::NotReady(format!(
            "job {id} is {}; poll /v1/jobs/{id} until it has succeeded",
            record.status.as_str()
        ))),
        JobStatus::Failed | JobStatus::Cancelled => Err(ApiError::Conflict(format!(
            "job {id} {}; it has no result",
            if record.status == JobStatus::Failed {
                "failed"
            } else {
                "was cancelled"
            }
        ))),
        JobStatus::Expired => Err(expired()),
        JobStatus::Succeeded => {
            let store = state.inner.jobs.clone();
            let key = id.to_string();
            let (image, content_type) = blocking(move || store.result(&key))
                .await?
                .ok_or_else(expired)?;
            let mut response = Response::new(Body::from(image));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&content_type)
                    .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream")),
            );
            Ok(response)
        }
    }
}

/// Cancel a job: a queued one ends `cancelled` at once; a running one finishes, its result is
/// dropped, and it ends `cancelled`.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id.")),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "Cancelled.", body = JobView),
        (status = 202, description = "Running: it will end `cancelled`.", body = JobView),
        (status = 401, description = "Wrong or missing bearer token (`unauthorized`).", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown id, or another API key's job (`not_found`).", body = crate::error::ErrorBody),
        (status = 429, description = "This API key is past --key-requests-per-s; see Retry-After (`rate_limited`).", body = crate::error::ErrorBody),
        (status = 409, description = "The job has already ended (`conflict`).", body = crate::error::ErrorBody),
    )
)]
pub async fn cancel_handler(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match cancel(&state, &headers, &id).await {
        Ok(r) => r,
        Err(e) => super::error_response(e, false),
    }
}

async fn cancel(state: &AppState, headers: &HeaderMap, id: &str) -> Result<Response, ApiError> {
    // Another key's job is unknown to this caller: it is neither cancelled nor revealed.
    find(state, headers, id).await?;
    let store = state.inner.jobs.clone();
    let key = id.to_string();
    let retention = state.inner.jobs_settings.retention;
    let (before, after) = blocking(move || store.cancel(&key, now_ms(), retention))
        .await?
        .ok_or_else(|| unknown(id))?;
    let status = match (before, after.status) {
        (JobStatus::Queued, JobStatus::Cancelled) => {
            state
                .inner
                .metrics
                .jobs_finished_total
                .with_label_values(&[JobStatus::Cancelled.as_str()])
                .inc();
            tracing::info!(job = %id, "job cancelled");
            StatusCode::OK
        }
        (JobStatus::Running, JobStatus::Running) => StatusCode::ACCEPTED,
        // It had ended, or another DELETE ended it first.
        (_, other) => {
            return Err(ApiError::Conflict(format!(
                "job {id} has already ended ({})",
                other.as_str()
            )))
        }
    };
    Ok((status, Json(JobView::from(&after))).into_response())
}
