//! The HTTP server: starting it (model, listeners, worker, job runner), its shared state, and
//! its end (the SIGTERM drain). Routes live in [`routes`], `/tryon` in [`tryon`], the jobs API
//! in [`jobs`], job event streams in [`events`], the try-on page in [`demo`], reading uploads in
//! [`upload`], connection bounds in [`listener`], the stalled-worker rule of `/livez` in
//! [`liveness`]. The images' way from bytes to the model is
//! `crate::pipeline`'s; the job runner is `crate::jobs::runner`.

pub mod auth;
pub mod demo;
pub mod events;
pub mod jobs;
pub mod listener;
pub mod liveness;
pub mod masks;
pub mod openapi;
pub mod readiness;
pub mod request_id;
pub mod routes;
pub mod tryon;
pub mod upload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderValue;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batcher::masks::WorkerMasker;
use crate::batcher::{Batcher, WorkerThread};
use crate::config::ServeArgs;
use crate::jobs::runner::Runner;
use crate::jobs::webhook::WebhookConfig;
use crate::jobs::{JobStore, JobsSettings};
use crate::metrics::Metrics;
use crate::pipeline::cpu::Cpu;
use crate::pipeline::{DecodeBudget, Pipeline};
use listener::ConnectionLimits;
use readiness::Readiness;
use upload::{BodyBudget, UploadSettings};

pub use readiness::Phase;

/// Connections the metrics port accepts at once; it serves monitoring and the kubelet's probes.
const METRICS_MAX_CONNECTIONS: usize = 64;
/// Share of the drain timeout kept, at the end, to answer what is left with 503 and close the
/// listeners; at most [`DRAIN_RESERVE_MAX`].
const DRAIN_RESERVE_SHARE: u32 = 5;
const DRAIN_RESERVE_MAX: Duration = Duration::from_secs(1);
/// The least time given to the listeners to close after the drain.
const LISTENER_CLOSE_MIN: Duration = Duration::from_millis(200);

/// State shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    upload: UploadSettings,
    jobs_settings: JobsSettings,
    /// The batching limits `/v1/models` reports.
    batching: crate::batcher::BatcherConfig,
    /// Whether /metrics is served on its own port.
    metrics_port: bool,
    batcher: Batcher,
    metrics: Metrics,
    /// The served model's side of the pipeline: its options and inputs.
    pipeline: Pipeline,
    model: String,
    device: String,
    /// The licences of the model's weights, for `/v1/models`.
    licences: Vec<crate::models::Licence>,
    readiness: Readiness,
    /// Requests decoding at once (the queue's capacity).
    decoding: Arc<Semaphore>,
    body_budget: BodyBudget,
    /// Every `/tryon` in progress, from the moment its handler runs, and every job running.
    in_flight: TaskTracker,
    /// Cancelled when the drain's time is up: whatever is still in flight answers 503.
    drain_deadline: CancellationToken,
    /// The asynchronous jobs' store.
    jobs: Arc<dyn JobStore>,
    /// Wakes the job runner when a job arrives.
    job_wake: Arc<Notify>,
    webhooks: WebhookConfig,
    /// `/livez`'s verdict on the model worker.
    liveness: liveness::Liveness,
    /// The API keys and their request rates.
    keys: auth::Keys,
    /// Why the job store cannot record jobs now, if it cannot (the runner checks every second).
    store_fault: Arc<std::sync::Mutex<Option<String>>>,
    /// Whether `/` serves the try-on page.
    demo: bool,
    /// The page's sample photos, when `--samples-dir` has them.
    samples: Option<demo::Samples>,
    /// The open job event streams.
    event_streams: Arc<events::StreamSlots>,
}

impl Inner {
    /// Why the job store cannot record jobs, as a 503, if it cannot.
    fn store_refusal(&self) -> Option<crate::error::ApiError> {
        let fault = self
            .store_fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        fault.map(|reason| crate::error::ApiError::Unavailable {
            reason: format!("the job store cannot record jobs: {reason}"),
            retry_after_s: crate::batcher::MIN_RETRY_AFTER_S,
        })
    }
}

/// Logs a failed request once, at its level (a refusal is routine, a server-side failure is
/// not), and answers it; `close` asks the client to close a connection whose body may be
/// partly unread.
fn error_response(error: crate::error::ApiError, close: bool) -> axum::response::Response {
    use axum::response::IntoResponse;
    if error.status().is_server_error() && error.reject_reason().is_none() {
        tracing::warn!(code = error.code(), "request failed: {error}");
    } else {
        tracing::info!(code = error.code(), "request refused: {error}");
    }
    let mut response = error.into_response();
    if close {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    response
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A running server.
pub struct Server {
    /// The address /tryon listens on.
    pub addr: SocketAddr,
    /// The metrics port, when `--metrics-bind` is set.
    pub metrics_addr: Option<SocketAddr>,
    state: AppState,
    shutdown: CancellationToken,
    listeners: TaskTracker,
    /// The job runner and the webhook sender.
    background: TaskTracker,
    worker: Option<WorkerThread>,
}

impl Server {
    /// Loads the model (fetching and verifying its weights first with `--model-source hub`),
    /// binds the listeners and starts serving; the model warms up in the background (`/readyz`
    /// turns 200 when it is done).
    pub async fn start(args: ServeArgs) -> anyhow::Result<Server> {
        let settings = args.settings()?;
        let device = args.model.open_device()?;
        let device_name = crate::device::name(&device);
        let choice = settings.model.clone();
        let (cuda_graphs, overlap) = (args.model.cuda_graphs, args.model.overlap);
        let max_batch = settings.batcher.max_batch_size;
        let (model, masker) = tokio::task::spawn_blocking(move || {
            let model = choice.load(&device, &crate::hub::Reporter::Log)?;
            let model = crate::models::buckets::with_cuda_graphs(model, cuda_graphs, max_batch)?;
            if overlap {
                model.require_whole_batch("--overlap on")?;
            }
            let masker = choice.masker(&device, &crate::hub::Reporter::Log)?;
            Ok::<_, crate::models::ModelError>((model, masker))
        })
        .await
        .context("model loading panicked")??;
        let family = settings.model.family()?;
        let model_name = model.name().to_string();
        let metrics = Metrics::new();
        metrics
            .model_info
            .with_label_values(&[&model_name, &device_name])
            .set(1.0);
        crate::gpu::start_monitor(&metrics, &device_name);
        if let Some(price) = settings.gpu_hour_price {
            metrics.set_gpu_hour_price(price);
        }

        let listener = TcpListener::bind(settings.bind)
            .await
            .with_context(|| format!("cannot listen on {}", settings.bind))?;
        let addr = listener.local_addr()?;
        let metrics_listener = match settings.metrics_bind {
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

        let auth = &settings.auth;
        let keys = auth::Keys::load(
            auth.api_key.as_deref(),
            auth.api_keys_file.as_deref(),
            auth.key_requests_per_s,
        )?;
        let store_settings = settings.jobs.store.clone();
        let jobs = tokio::task::spawn_blocking(move || crate::jobs::open_store(&store_settings))
            .await
            .context("opening the job store panicked")??;

        let readiness = Readiness::new();
        let on_ready = readiness.clone();
        let (batcher, worker) =
            Batcher::start_model(model, settings.batcher.clone(), metrics.clone(), move |r| {
                match &r {
                    Ok(()) => tracing::info!("model warmed up; ready"),
                    Err(e) => tracing::error!(error = %e, "model warm-up failed"),
                }
                on_ready.warmed_up(r.map_err(|e| e.to_string()));
            });
        let queue_capacity = settings.batcher.queue_capacity;
        let upload = settings.upload.clone();
        let body_budget =
            BodyBudget::new((queue_capacity as u64).saturating_mul(upload.max_body_bytes as u64));
        let pipeline = Pipeline::new(
            family,
            settings.option_limits,
            upload.max_image_pixels,
            DecodeBudget::new(upload.max_decode_memory, metrics.clone()),
        )
        .with_masker(masker.map(|masker| {
            // The masker's device work runs on the model's worker, batched across requests.
            Arc::new(WorkerMasker::new(masker, batcher.clone(), metrics.clone()))
                as Arc<dyn crate::models::PersonMasker>
        }));
        let api_limits = settings.connections;
        let metrics_limits = ConnectionLimits {
            max_connections: METRICS_MAX_CONNECTIONS,
            ..api_limits
        };
        let background_cpu = Cpu::background()?;
        let job_wake = Arc::new(Notify::new());
        let samples = settings.demo.as_deref().and_then(demo::Samples::load);
        match (&settings.demo, &samples) {
            (None, _) => tracing::info!("the try-on page is off (--demo off)"),
            (Some(_), Some(_)) => tracing::info!("the try-on page is at /, with sample photos"),
            (Some(dir), None) => tracing::info!(
                samples_dir = %dir.display(),
                "the try-on page is at /, upload only (no sample photos)"
            ),
        }
        let store_fault = Arc::new(std::sync::Mutex::new(None));
        let state = AppState {
            inner: Arc::new(Inner {
                upload,
                jobs_settings: settings.jobs.clone(),
                batching: settings.batcher.clone(),
                metrics_port: settings.metrics_bind.is_some(),
                batcher: batcher.clone(),
                metrics: metrics.clone(),
                pipeline: pipeline.clone(),
                model: model_name.clone(),
                device: device_name.clone(),
                licences: settings.model.licences(),
                readiness: readiness.clone(),
                decoding: Arc::new(Semaphore::new(queue_capacity)),
                body_budget,
                in_flight: TaskTracker::new(),
                drain_deadline: CancellationToken::new(),
                jobs: jobs.clone(),
                job_wake: job_wake.clone(),
                webhooks: settings.jobs.webhooks.clone(),
                liveness: liveness::Liveness::new(settings.liveness_stall),
                keys,
                store_fault: store_fault.clone(),
                demo: settings.demo.is_some(),
                samples,
                event_streams: events::StreamSlots::new(settings.events.clone(), metrics.clone()),
            }),
        };
        // Enough jobs in hand for the batch that runs and the next one; more would only wait
        // in memory instead of in the store.
        let runner = Arc::new(Runner {
            store: jobs.clone(),
            batcher,
            pipeline,
            metrics: metrics.clone(),
            settings: settings.jobs.clone(),
            capacity: (settings.batcher.max_batch_size * 2).min(queue_capacity),
            output_defaults: settings.upload.output,
            worker: crate::jobs::runner::worker_name(),
            wake: job_wake,
            tracker: state.inner.in_flight.clone(),
            preparing: Arc::new(Semaphore::new(background_cpu.threads())),
            background_cpu,
            gate: Arc::new(readiness),
            store_fault,
        });

        let shutdown = CancellationToken::new();
        let listeners = TaskTracker::new();
        listeners.spawn(listener::serve(
            listener,
            routes::api_router(state.clone()),
            api_limits,
            Some(metrics),
            shutdown.clone(),
        ));
        if let Some(l) = metrics_listener {
            listeners.spawn(listener::serve(
                l,
                routes::metrics_router(state.clone()),
                metrics_limits,
                None,
                shutdown.clone(),
            ));
        }
        listeners.close();
        let background = TaskTracker::new();
        background.spawn(crate::jobs::runner::run(runner, shutdown.clone()));
        if settings.auth.api_keys_file.is_some() {
            background.spawn(reload_keys_on_sighup(state.clone(), shutdown.clone()));
        }
        background.spawn(crate::jobs::webhook::run_deliveries(
            jobs,
            state.inner.webhooks.clone(),
            state.inner.metrics.clone(),
            shutdown.clone(),
        ));
        background.close();
        tracing::info!(%addr, model = %model_name, device = %device_name, "listening");
        if let Some(m) = metrics_addr {
            tracing::info!(addr = %m, "metrics listening");
        }
        Ok(Server {
            addr,
            metrics_addr,
            state,
            shutdown,
            listeners,
            background,
            worker: Some(worker),
        })
    }

    /// Where the server is in its life.
    pub fn phase(&self) -> Phase {
        self.state.inner.readiness.phase()
    }

    /// Waits until the warm-up batch has run; an error if it failed.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        self.state
            .inner
            .readiness
            .warm()
            .await
            .map_err(|e| anyhow::anyhow!("model warm-up failed: {e}"))
    }

    /// Drains: refuses new work at once, answers everything in flight (or, past `timeout`,
    /// answers what is left with 503), then stops the listeners and joins the worker.
    pub async fn drain(mut self, timeout: Duration) -> anyhow::Result<()> {
        let inner = &self.state.inner;
        // New requests are refused from here (readiness); those whose handler has started,
        // an upload still arriving included, are still admitted to the batcher and answered
        // within the budget.
        inner.readiness.start_draining();
        inner.in_flight.close();
        tracing::info!(
            in_flight = inner.in_flight.len(),
            "draining: refusing new requests, finishing admitted ones"
        );
        // One deadline for everything; the reserve at its end answers what is still in
        // flight with 503 and closes the listeners.
        let started = Instant::now();
        let reserve = (timeout / DRAIN_RESERVE_SHARE).min(DRAIN_RESERVE_MAX);
        let soft = started + (timeout - reserve);
        let hard = started + timeout;
        let finished = tokio::time::timeout_at(soft, inner.in_flight.wait())
            .await
            .is_ok();
        inner.batcher.close();
        if !finished {
            tracing::info!(
                left = inner.in_flight.len(),
                "drain timeout: answering the rest with 503"
            );
            inner.drain_deadline.cancel();
            inner.batcher.abort_pending();
            let _ = tokio::time::timeout_at(hard, inner.in_flight.wait()).await;
        }
        self.shutdown.cancel();
        let close_by = hard.max(Instant::now() + LISTENER_CLOSE_MIN);
        if tokio::time::timeout_at(close_by, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!("the job runner did not stop in time");
        }
        if tokio::time::timeout_at(close_by, self.listeners.wait())
            .await
            .is_err()
        {
            tracing::warn!("listeners did not close in time");
        }
        if let Some(worker) = self.worker.take() {
            let joined = tokio::task::spawn_blocking(move || drop(worker));
            let left = close_by
                .saturating_duration_since(Instant::now())
                .max(LISTENER_CLOSE_MIN);
            if tokio::time::timeout(left, joined).await.is_err() {
                tracing::warn!("the model worker is still running a batch; leaving it");
            }
        }
        tracing::info!("drained; exiting");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
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

/// Reads `--api-keys-file` again at each SIGHUP; a file that does not parse leaves the keys
/// in use as they were.
async fn reload_keys_on_sighup(state: AppState, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; --api-keys-file is read once");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => {}
                _ = shutdown.cancelled() => return,
            }
            match state.inner.keys.reload() {
                Ok(n) => tracing::info!(keys = n, "SIGHUP: API keys read again"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: the API keys file is refused; the keys in use stay")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (state, shutdown);
    }
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
