//! The routers: the API (try-on, jobs and their events, health, models, OpenAPI, and the try-on
//! page unless `--demo off`) and the separate metrics port, each with request ids, one tracing
//! span per request and `X-Content-Type-Options: nosniff`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use super::readiness::Phase;
use super::AppState;
use crate::api::REQUEST_ID_HEADER;
use crate::models::MODEL_NAMES;

/// The API port's routes. With `--metrics-bind`, `/metrics` lives only on the metrics port.
pub fn api_router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/tryon", post(super::tryon::tryon_handler))
        .route("/v1/masks", post(super::masks::masks_handler))
        .route("/v1/jobs", post(super::jobs::submit_handler))
        .route(
            "/v1/jobs/{id}",
            get(super::jobs::status_handler).delete(super::jobs::cancel_handler),
        )
        .route("/v1/jobs/{id}/result", get(super::jobs::result_handler))
        .route("/v1/jobs/{id}/events", get(super::events::events_handler))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/v1/models", get(models))
        .route("/openapi.json", get(openapi));
    if !state.inner.metrics_port {
        router = router.route("/metrics", get(metrics));
    }
    if state.inner.demo {
        router = router.merge(super::demo::router());
    }
    with_layers(router.with_state(state))
}

/// The metrics port's routes: what monitoring and the kubelet read.
pub fn metrics_router(state: AppState) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state);
    with_layers(router)
}

fn with_layers(router: Router) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    router.layer(
        ServiceBuilder::new()
            .layer(axum::middleware::from_fn(super::request_id::sanitize))
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|req: &Request| {
                        let id = req
                            .extensions()
                            .get::<RequestId>()
                            .and_then(|id| id.header_value().to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
                    })
                    // The handlers log each refusal or failure once, at its level.
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(request_id))
            .layer(SetResponseHeaderLayer::overriding(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            )),
    )
}

/// Liveness: the process serves, and the model worker is not stalled with work pending.
#[utoipa::path(get, path = "/livez", tag = "health", responses(
    (status = 200, description = "The process serves: nothing is pending, or the model worker has finished a model call within the stall bound.", body = String),
    (status = 503, description = "Work is queued or running and the model worker has finished no model call (batch, UNet step or VAE pass) for the stall bound: --liveness-stall-s, or max(60 s, 4 × the longest model call) + --max-batch-delay-ms (`worker_stalled`).", body = crate::error::ErrorBody),
))]
pub async fn livez(State(state): State<AppState>) -> Response {
    let inner = &state.inner;
    match inner.liveness.check(&inner.batcher.progress()) {
        Ok(()) => "ok".into_response(),
        Err(e) => e.into_response(),
    }
}

/// Readiness: the model is loaded and warmed up, the server is not draining, and the job
/// store can record jobs.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Ready.", body = String),
    (status = 503, description = "Warming up, failed to warm up, draining, or the job store cannot write (`unavailable`).", body = crate::error::ErrorBody),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let inner = &state.inner;
    match inner
        .readiness
        .refusal(|| inner.batcher.retry_after_s())
        .or_else(|| inner.store_refusal())
    {
        None => (StatusCode::OK, "ready").into_response(),
        Some(e) => e.into_response(),
    }
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format (on the metrics port when --metrics-bind is set).", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.inner.metrics.render(),
    )
        .into_response()
}

/// The served model and its batching limits.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelsBody {
    models: Vec<ModelEntry>,
    /// Every model this build can serve.
    available: Vec<&'static str>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelEntry {
    name: String,
    device: String,
    resolution: Resolution,
    max_batch_size: u64,
    effective_max_batch_size: usize,
    max_batch_delay_ms: u64,
    queue_capacity: u64,
    ready: bool,
    /// The licence of each part of the weights (empty for a weight-free model).
    licences: Vec<crate::models::Licence>,
    /// The request options the model takes, as form fields of `/tryon` and `/v1/jobs`.
    options: Vec<ModelOption>,
    /// What draws the person mask a request does not send: `parsers+densepose` (human parsers
    /// and DensePose), `parsers` (human parsers alone) or `drawn` (colours and layout); `null`
    /// when the model reads no person mask.
    masker: Option<&'static str>,
}

/// One request option of the served model.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelOption {
    name: &'static str,
    /// `integer`, `number`, `string` or `seed`.
    r#type: &'static str,
    /// Bounds or allowed values, in words.
    values: String,
    /// The default (`null` for a seed drawn per request).
    #[schema(value_type = Object)]
    default: serde_json::Value,
    help: &'static str,
    /// The least value of an `integer` or `number` (a form's bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    minimum: Option<f64>,
    /// The greatest value of an `integer` or `number`.
    #[serde(skip_serializing_if = "Option::is_none")]
    maximum: Option<f64>,
    /// The allowed words of a `string`.
    #[serde(skip_serializing_if = "Option::is_none")]
    choices: Option<Vec<&'static str>>,
}

impl ModelOption {
    fn of(spec: &crate::models::OptionSpec) -> ModelOption {
        use crate::models::OptionKind;
        let (minimum, maximum, choices) = match &spec.kind {
            OptionKind::Integer { min, max, .. } => (Some(*min as f64), Some(*max as f64), None),
            OptionKind::Number { min, max, .. } => (Some(*min), Some(*max), None),
            OptionKind::Choice { .. } | OptionKind::Preset { .. } => {
                (None, None, Some(spec.words()))
            }
            OptionKind::Seed => (Some(0.0), None, None),
        };
        ModelOption {
            name: spec.name,
            r#type: spec.type_name(),
            values: spec.bounds(),
            default: spec.default_value(),
            help: spec.help,
            minimum,
            maximum,
            choices,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Resolution {
    height: usize,
    width: usize,
}

/// The served model.
#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, description = "Model name, device, resolution, batch limits and the weights' licences.", body = ModelsBody)))]
pub async fn models(State(state): State<AppState>) -> Json<ModelsBody> {
    let inner = &state.inner;
    let batching = &inner.batching;
    let (height, width) = inner.pipeline.default_input().frame;
    Json(ModelsBody {
        models: vec![ModelEntry {
            name: inner.model.clone(),
            device: inner.device.clone(),
            resolution: Resolution {
                height: height as usize,
                width: width as usize,
            },
            max_batch_size: batching.max_batch_size as u64,
            effective_max_batch_size: inner.batcher.batch_cap(),
            max_batch_delay_ms: batching.max_batch_delay.as_millis() as u64,
            queue_capacity: batching.queue_capacity as u64,
            ready: inner.readiness.phase() == Phase::Ready,
            licences: inner.licences.clone(),
            options: inner
                .pipeline
                .option_specs()
                .iter()
                .map(ModelOption::of)
                .collect(),
            masker: inner.pipeline.masker_name(),
        }],
        available: MODEL_NAMES.to_vec(),
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "models", responses((status = 200, description = "The OpenAPI 3 document.", body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi::served_document(
        &state.inner.webhooks,
        state.inner.pipeline.option_specs(),
    ))
}
