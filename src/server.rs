//! The HTTP server: routes, the /tryon pipeline (multipart → decode → batch → encode),
//! readiness and the SIGTERM drain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::batcher::{AdmitError, Batcher, JobError};
use crate::config::ServeArgs;
use crate::error::ApiError;
use crate::imaging::{self, ImageError, OutputFormat};
use crate::metrics::{Metrics, RejectReason};
use crate::models::{self, MODEL_HEIGHT, MODEL_NAMES, MODEL_WIDTH};

const PERSON_PART: &str = "person_image";
const CLOTH_PART: &str = "cloth_image";
const MASK_PART: &str = "cloth_mask";

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    WarmingUp = 0,
    Ready = 1,
    Failed = 2,
}

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    args: ServeArgs,
    batcher: Batcher,
    metrics: Metrics,
    model: String,
    device: String,
    readiness: Arc<Readiness>,
    draining: AtomicBool,
    /// Requests allowed to upload and decode at once (the queue's capacity).
    uploads: Arc<tokio::sync::Semaphore>,
}

/// The warm-up outcome, written once by the worker thread.
struct Readiness {
    phase: AtomicU8,
    failure: Mutex<Option<String>>,
}

impl Readiness {
    fn set(&self, result: &Result<(), crate::models::ModelError>) {
        match result {
            Ok(()) => self.phase.store(Phase::Ready as u8, Ordering::SeqCst),
            Err(e) => {
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some(e.to_string());
                }
                self.phase.store(Phase::Failed as u8, Ordering::SeqCst);
            }
        }
    }
}

impl AppState {
    fn phase(&self) -> Phase {
        match self.inner.readiness.phase.load(Ordering::SeqCst) {
            1 => Phase::Ready,
            2 => Phase::Failed,
            _ => Phase::WarmingUp,
        }
    }

    fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// The 503 of a draining server; clients may retry once the backlog (elsewhere) is gone.
    fn draining_error(&self) -> ApiError {
        ApiError::Unavailable {
            reason: "the server is draining before shutdown".into(),
            retry_after_s: self.inner.batcher.retry_after_s(),
        }
    }

    /// Why /tryon and /readyz refuse right now, if they do.
    fn unavailable(&self) -> Option<ApiError> {
        if self.is_draining() {
            return Some(self.draining_error());
        }
        match self.phase() {
            Phase::Ready => None,
            Phase::WarmingUp => Some(ApiError::Unavailable {
                reason: "the model is warming up".into(),
                retry_after_s: 1,
            }),
            Phase::Failed => Some(ApiError::Unavailable {
                reason: format!(
                    "the model failed to warm up: {}",
                    self.inner
                        .readiness
                        .failure
                        .lock()
                        .ok()
                        .and_then(|f| f.clone())
                        .unwrap_or_default()
                ),
                retry_after_s: 30,
            }),
        }
    }
}

/// A running server.
pub struct Server {
    /// The address /tryon listens on.
    pub addr: SocketAddr,
    /// The separate /metrics address, when `--metrics-bind` is set.
    pub metrics_addr: Option<SocketAddr>,
    state: AppState,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    warm_up: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
}

impl Server {
    /// Loads the model, binds the listeners and starts serving; the model warms up in the
    /// background (`/readyz` turns 200 when it is done).
    pub async fn start(args: ServeArgs) -> anyhow::Result<Server> {
        let device = args.model.open_device()?;
        let device_name = crate::device::name(&device);
        let model_args = args.model.clone();
        let model = tokio::task::spawn_blocking(move || {
            models::load(&model_args.model, model_args.model_dir.as_deref(), &device)
        })
        .await
        .context("model loading panicked")??;
        let model_name = model.name().to_string();
        let metrics = Metrics::new();
        metrics
            .model_info
            .with_label_values(&[&model_name, &device_name])
            .set(1.0);
        crate::gpu::start_monitor(&metrics, &device_name);

        let listener = TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("cannot listen on {}", args.bind))?;
        let addr = listener.local_addr()?;
        let metrics_listener = match args.metrics_bind {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} for /metrics"))?,
            ),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };

        let (warm_tx, warm_rx) = tokio::sync::oneshot::channel();
        let readiness = Arc::new(Readiness {
            phase: AtomicU8::new(Phase::WarmingUp as u8),
            failure: Mutex::new(None),
        });
        let worker_readiness = readiness.clone();
        let (batcher, _worker) =
            Batcher::start(model, args.batcher_config(), metrics.clone(), move |r| {
                worker_readiness.set(&r);
                match &r {
                    Ok(()) => tracing::info!("model warmed up; ready"),
                    Err(e) => tracing::error!(error = %e, "model warm-up failed"),
                }
                let _ = warm_tx.send(r.map_err(|e| e.to_string()));
            });
        let uploads = Arc::new(tokio::sync::Semaphore::new(args.queue_capacity as usize));
        let state = AppState {
            inner: Arc::new(Inner {
                args,
                batcher,
                metrics,
                model: model_name.clone(),
                device: device_name.clone(),
                readiness,
                draining: AtomicBool::new(false),
                uploads,
            }),
        };

        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let app = router(state.clone());
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        }));
        if let Some(l) = metrics_listener {
            let app = Router::new()
                .route("/metrics", get(metrics_handler))
                .with_state(state.clone());
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await
            }));
        }
        tracing::info!(%addr, model = %model_name, device = %device_name, "listening");
        if let Some(m) = metrics_addr {
            tracing::info!(addr = %m, "metrics listening");
        }
        Ok(Server {
            addr,
            metrics_addr,
            state,
            shutdown,
            tasks,
            warm_up: Some(warm_rx),
        })
    }

    /// Waits until the warm-up batch has run; an error if it failed.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        if let Some(rx) = self.warm_up.take() {
            rx.await
                .context("the worker stopped before warming up")?
                .map_err(|e| anyhow::anyhow!("model warm-up failed: {e}"))?;
        }
        Ok(())
    }

    /// Drains: refuses new work at once, answers everything admitted (or, past `timeout`,
    /// answers what is left with 503), then stops the listeners.
    pub async fn drain(mut self, timeout: Duration) -> anyhow::Result<()> {
        let state = &self.state;
        state.inner.draining.store(true, Ordering::SeqCst);
        state.inner.batcher.close();
        let metrics = &state.inner.metrics;
        tracing::info!(
            active = metrics.active_requests.get(),
            "draining: refusing new requests, finishing admitted ones"
        );
        // One deadline for everything; the last fifth (at most 1 s) is kept to answer what is
        // still queued with 503 and to close the listeners.
        let started = Instant::now();
        let reserve = (timeout / 5).min(Duration::from_secs(1));
        let soft = started + (timeout - reserve);
        let hard = started + timeout;
        while metrics.active_requests.get() > 0 && Instant::now() < soft {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if metrics.active_requests.get() > 0 {
            tracing::warn!(
                left = metrics.active_requests.get(),
                "drain timeout: answering the rest with 503"
            );
        }
        state.inner.batcher.abort_pending();
        while metrics.active_requests.get() > 0 && Instant::now() < hard {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.shutdown.cancel();
        let left = hard
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200));
        let all = futures_util::future::join_all(self.tasks.iter_mut());
        match tokio::time::timeout(left, all).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "listener stopped with an error"),
                        Err(e) => tracing::warn!(error = %e, "listener task failed"),
                    }
                }
            }
            Err(_) => {
                tracing::warn!("listeners did not stop in time; closing them");
                for task in &self.tasks {
                    task.abort();
                }
            }
        }
        tracing::info!("drained; exiting");
        Ok(())
    }
}

/// `virtualfit serve`: runs until SIGTERM/SIGINT, then drains and returns.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let drain_timeout = args.drain_timeout();
    let mut server = Server::start(args).await?;
    tokio::select! {
        r = server.ready() => r?,
        _ = shutdown_signal() => return server.drain(drain_timeout).await,
    }
    shutdown_signal().await;
    server.drain(drain_timeout).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// All routes, with request ids and one tracing span per request.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/tryon", post(tryon_handler))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/v1/models", get(models_handler))
        .route("/openapi.json", get(openapi_handler))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &Request| {
                        let id = req
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
                    }),
                )
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.unavailable() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(e) => e.into_response(),
    }
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.inner.metrics.render(),
    )
        .into_response()
}

async fn models_handler(State(state): State<AppState>) -> Json<serde_json::Value> {
    let args = &state.inner.args;
    Json(serde_json::json!({
        "models": [{
            "name": state.inner.model,
            "device": state.inner.device,
            "resolution": {"height": MODEL_HEIGHT, "width": MODEL_WIDTH},
            "max_batch_size": args.max_batch_size,
            "effective_max_batch_size": state.inner.batcher.batch_cap(),
            "max_batch_delay_ms": args.max_batch_delay_ms,
            "queue_capacity": args.queue_capacity,
            "ready": state.phase() == Phase::Ready && !state.is_draining(),
        }],
        "available": MODEL_NAMES,
    }))
}

async fn openapi_handler() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

/// `format` and `quality` query parameters of /tryon.
#[derive(Debug, Deserialize)]
struct TryOnQuery {
    format: Option<String>,
    quality: Option<u8>,
}

/// The uploaded parts of a /tryon request.
#[derive(Default)]
struct Upload {
    person: Option<Bytes>,
    cloth: Option<Bytes>,
    mask: Option<Bytes>,
}

/// Counts the request as active from admission until it is answered (or its client leaves).
struct ActiveGuard(Metrics);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_requests.dec();
    }
}

async fn tryon_handler(
    State(state): State<AppState>,
    query: Result<Query<TryOnQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let result = tryon(&state, query, request).await;
    let metrics = &state.inner.metrics;
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            match &e {
                ApiError::BadRequest(_)
                | ApiError::PayloadTooLarge { .. }
                | ApiError::UnsupportedMediaType(_)
                | ApiError::InvalidImage(_) => metrics.reject(RejectReason::Invalid),
                _ => {}
            }
            if e.status().is_server_error() {
                tracing::warn!(request_id = %request_id, error = %e, "request failed");
            } else {
                tracing::info!(request_id = %request_id, code = e.code(), "request refused: {e}");
            }
            e.into_response()
        }
    };
    metrics.observe_answer(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn tryon(
    state: &AppState,
    query: Result<Query<TryOnQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let inner = &state.inner;
    let args = &inner.args;
    let (parts, body) = request.into_parts();
    check_api_key(args.api_key.as_deref(), &parts.headers)?;
    if let Some(e) = state.unavailable() {
        if state.is_draining() {
            inner.metrics.reject(RejectReason::Draining);
        }
        return Err(e);
    }
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    let format = match query.format.as_deref() {
        None => args.output_format,
        Some(f) => f.parse::<OutputFormat>().map_err(ApiError::BadRequest)?,
    };
    let quality = match query.quality {
        None => args.jpeg_quality,
        Some(q @ 1..=100) => q,
        Some(q) => {
            return Err(ApiError::BadRequest(format!(
                "quality must be 1..100, got {q}"
            )))
        }
    };

    // Uploads being read and decoded are bounded like the queue: past it, 429 at once.
    let Ok(upload_permit) = inner.uploads.clone().try_acquire_owned() else {
        inner.metrics.reject(RejectReason::QueueFull);
        return Err(ApiError::Overloaded {
            retry_after_s: inner.batcher.retry_after_s(),
        });
    };
    let upload = read_multipart(&parts.headers, body, args.max_body_bytes).await?;
    let person = upload
        .person
        .ok_or_else(|| ApiError::BadRequest(format!("the `{PERSON_PART}` part is missing")))?;
    let cloth = upload
        .cloth
        .ok_or_else(|| ApiError::BadRequest(format!("the `{CLOTH_PART}` part is missing")))?;
    let mask = upload.mask;
    let max_pixels = args.max_image_pixels;
    let prepared = tokio::task::spawn_blocking(move || {
        imaging::prepare_pair(&person, &cloth, mask.as_deref(), max_pixels)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("image preparation failed: {e}")))?
    .map_err(|e| match e {
        ImageError::Unsupported(m) => ApiError::UnsupportedMediaType(m),
        ImageError::Invalid(m) => ApiError::InvalidImage(m),
    })?;
    let content = prepared.content;

    // Counted as active before admission, so a drain that starts now either waits for this
    // request or refuses it: never both admits and forgets it.
    inner.metrics.active_requests.inc();
    let _active = ActiveGuard(inner.metrics.clone());
    let receiver = match inner.batcher.submit(prepared) {
        Ok(rx) => rx,
        Err(AdmitError::QueueFull { retry_after_s }) => {
            inner.metrics.reject(RejectReason::QueueFull);
            return Err(ApiError::Overloaded { retry_after_s });
        }
        Err(AdmitError::Draining) => {
            inner.metrics.reject(RejectReason::Draining);
            return Err(state.draining_error());
        }
    };
    drop(upload_permit);

    // The worker answers expired requests itself; this bound only covers a stalled device.
    let request_timeout = args.batcher_config().request_timeout;
    let stall_bound = request_timeout * 2 + Duration::from_secs(10);
    let Ok(answer) = tokio::time::timeout(stall_bound, receiver).await else {
        inner.metrics.reject(RejectReason::Deadline);
        return Err(ApiError::DeadlineExceeded {
            waited_ms: stall_bound.as_millis() as u64,
            timeout_ms: request_timeout.as_millis() as u64,
        });
    };
    let output = match answer {
        Ok(Ok(output)) => output,
        Ok(Err(JobError::Deadline { waited, timeout })) => {
            return Err(ApiError::DeadlineExceeded {
                waited_ms: waited.as_millis() as u64,
                timeout_ms: timeout.as_millis() as u64,
            })
        }
        Ok(Err(JobError::ShutDown)) => {
            return Err(ApiError::Unavailable {
                reason: "the server shut down before the request ran".into(),
                retry_after_s: 1,
            })
        }
        Ok(Err(JobError::Model(m))) => {
            return Err(ApiError::Internal(format!("model failure: {m}")))
        }
        Err(_) => return Err(ApiError::Internal("the model worker stopped".into())),
    };
    let image = output.image;
    let encoded = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let rgb = imaging::tensor_to_rgb(&image).map_err(|e| e.to_string())?;
        imaging::encode(&imaging::crop(&rgb, content), format, quality)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("encoding failed: {e}")))?
    .map_err(|e| ApiError::Internal(format!("encoding failed: {e}")))?;

    let mut response = Response::new(Body::from(encoded));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.mime()),
    );
    h.insert("x-model", header_value(&inner.model));
    h.insert("x-batch-size", HeaderValue::from(output.batch_size));
    h.insert(
        "x-queue-time-ms",
        header_value(&format!("{:.3}", output.queue_time.as_secs_f64() * 1e3)),
    );
    h.insert(
        "x-inference-time-ms",
        header_value(&format!("{:.3}", output.inference_time.as_secs_f64() * 1e3)),
    );
    Ok(response)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn check_api_key(expected: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Streams the multipart body under the size limit and keeps the three known parts.
async fn read_multipart(headers: &HeaderMap, body: Body, limit: usize) -> Result<Upload, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::BadRequest(format!(
            "the body must be multipart/form-data with a boundary, not `{content_type}`"
        ))
    })?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // Read (and drop) a bounded amount so the client sees the answer, not a reset.
        drain_body(body, limit.saturating_mul(4).max(1 << 20)).await;
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limit as u64));
    let mut multipart =
        multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut upload = Upload::default();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e, limit)),
        };
        let name = field.name().unwrap_or("").to_string();
        let slot = match name.as_str() {
            PERSON_PART => &mut upload.person,
            CLOTH_PART => &mut upload.cloth,
            MASK_PART => &mut upload.mask,
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
                    "the `{name}` part is `{mime}`; send a JPEG, PNG or WebP image"
                )));
            }
        }
        let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
        *slot = Some(bytes);
    }
    Ok(upload)
}

fn multipart_error(e: multer::Error, limit: usize) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        other => ApiError::BadRequest(format!("malformed multipart body: {other}")),
    }
}

async fn drain_body(body: Body, max: usize) {
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > max {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_needs_the_exact_bearer_token() {
        let mut h = HeaderMap::new();
        assert!(check_api_key(None, &h).is_ok());
        assert!(check_api_key(Some("s3cret"), &h).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cre"),
        );
        assert!(check_api_key(Some("s3cret"), &h).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(check_api_key(Some("s3cret"), &h).is_ok());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic s3cret"),
        );
        assert!(check_api_key(Some("s3cret"), &h).is_err());
    }
}
