//! `POST /v1/masks`: the automatic person mask a try-on would use for a photo and options, at
//! the model's frame, or one of the masker's label maps; so that a mask can be checked before a
//! long sampling run. It runs on a blocking thread under the same admission limits as the
//! try-on's image preparation (authentication, readiness, body limits, the decode budget and
//! the number of requests decoding at once), not through the model worker.

use std::io::Cursor;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::time::Instant;

use super::{upload, AppState};
use crate::api::{echo, MODEL_HEADER};
use crate::error::ApiError;
use crate::pipeline::cpu::Cpu;

/// The query of `/v1/masks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MaskQuery {
    /// Answer the masker's label map of this name instead of the mask (with the human parsers:
    /// `atr` or `lip`, and `densepose` when it runs; one label per pixel as a grey level).
    #[param(value_type = Option<String>, pattern = "^(atr|lip|densepose)$")]
    labels: Option<String>,
}

/// The multipart form of `POST /v1/masks`, with the served model's options (`category`,
/// `resolution`, ...).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct MaskForm {
    /// Person photo (JPEG, PNG or WebP; EXIF orientation is honoured).
    #[schema(value_type = String, format = Binary, min_length = 1, content_media_type = "image/*")]
    person_image: Vec<u8>,
}

/// The automatic person mask (white = repaint) that a try-on with these options would use.
#[utoipa::path(
    post,
    path = "/v1/masks",
    tag = "try-on",
    params(MaskQuery),
    request_body(content = MaskForm, content_type = "multipart/form-data", encoding(
        ("person_image" = (content_type = "image/jpeg, image/png, image/webp")),
    )),
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The mask (or label map) as a PNG at the model's frame.",
            content(("image/png"))),
        (status = 400, description = "Not multipart, a missing part, a bad option or query (`bad_request`).", body = crate::error::ErrorBody),
        (status = 401, description = "Wrong or missing bearer token (`unauthorized`).", body = crate::error::ErrorBody),
        (status = 404, description = "The served model reads no person mask (`not_found`).", body = crate::error::ErrorBody),
        (status = 408, description = "The body did not arrive within --body-timeout-s (`request_timeout`).", body = crate::error::ErrorBody),
        (status = 413, description = "Body over --max-body-bytes (`payload_too_large`).", body = crate::error::ErrorBody),
        (status = 415, description = "A part that is not a supported image format (`unsupported_media_type`).", body = crate::error::ErrorBody),
        (status = 422, description = "Undecodable, empty, too large or too elongated image (`invalid_image`).", body = crate::error::ErrorBody),
        (status = 429, description = "Decoding or upload budget full (`overloaded`), or this API key is past --key-requests-per-s (`rate_limited`); see Retry-After.", body = crate::error::ErrorBody),
        (status = 503, description = "Warming up or draining; see Retry-After (`unavailable`).", body = crate::error::ErrorBody),
        (status = 500, description = "Masker failure (`internal`).", body = crate::error::ErrorBody),
    )
)]
pub async fn masks_handler(
    State(state): State<AppState>,
    query: Result<Query<MaskQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let _in_flight = state.inner.in_flight.token();
    let labels = match check_before_body(&state, &parts.headers, query) {
        Ok(labels) => labels,
        Err(error) => {
            upload::drain(body).await;
            return super::error_response(error, true);
        }
    };
    match mask(&state, &parts.headers, body, labels).await {
        Ok(response) => response,
        Err((error, close)) => {
            if let Some(reason) = error.reject_reason() {
                state.inner.metrics.reject(reason);
            }
            super::error_response(error, close)
        }
    }
}

/// Refusals decided before the body: authentication, readiness, a model without a person
/// mask, and a label map the masker does not have.
fn check_before_body(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    query: Result<Query<MaskQuery>, QueryRejection>,
) -> Result<Option<String>, ApiError> {
    let inner = &state.inner;
    inner.keys.authenticate(headers)?;
    if let Some(e) = inner.readiness.refusal(|| inner.batcher.retry_after_s()) {
        return Err(e);
    }
    if inner.pipeline.default_input().person_mask.is_none() {
        return Err(ApiError::NotFound(format!(
            "model `{}` reads no person mask",
            inner.model
        )));
    }
    let Query(query) =
        query.map_err(|e| ApiError::BadRequest(format!("bad query: {}", echo(&e.body_text()))))?;
    if let Some(name) = &query.labels {
        let known = inner
            .pipeline
            .masker()
            .map(|m| m.label_maps())
            .unwrap_or_default();
        if !known.contains(&name.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "no label map `{}`; this server has: {}",
                echo(name),
                if known.is_empty() {
                    "none (the mask is drawn)".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    Ok(query.labels)
}

async fn mask(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    labels: Option<String>,
) -> Result<Response, (ApiError, bool)> {
    let inner = &state.inner;
    let settings = &inner.upload;
    let upload = upload::read(
        headers,
        body,
        settings.max_body_bytes,
        &inner.body_budget,
        Instant::now() + settings.body_timeout,
        settings.body_timeout,
        &inner.pipeline.option_names(),
        false,
    )
    .await
    .map_err(|e| (e, true))?;
    let refused = |e: ApiError| (e, false);
    let options = inner
        .pipeline
        .parse_options(|name| upload.field(name))
        .map_err(|e| refused(ApiError::BadRequest(e)))?;
    let Ok(_decoding) = inner.decoding.clone().try_acquire_owned() else {
        return Err(refused(ApiError::Overloaded {
            retry_after_s: inner.batcher.retry_after_s(),
        }));
    };
    let mask = inner
        .pipeline
        .automatic_mask(
            upload.person.clone(),
            options,
            labels,
            Instant::now() + inner.batching.request_timeout,
            &Cpu::Blocking,
        )
        .await
        .map_err(|e| refused(e.into()))?;
    drop(upload);
    let mut png = Vec::new();
    mask.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| refused(ApiError::Internal(format!("cannot encode the mask: {e}"))))?;
    let mut response = ([(header::CONTENT_TYPE, "image/png")], png).into_response();
    response
        .headers_mut()
        .insert(MODEL_HEADER, super::header_value(&inner.model));
    Ok(response)
}
