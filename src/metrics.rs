//! Every Prometheus metric the server exports, defined once: the names here are the contract
//! with `k8s/` (KEDA triggers, alerts, dashboards) and the benchmark harness.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const QUEUE_LENGTH: &str = "virtualfit_queue_length";
pub const ACTIVE_REQUESTS: &str = "virtualfit_active_requests";
pub const REQUEST_DURATION: &str = "virtualfit_request_duration_seconds";
pub const REQUESTS_TOTAL: &str = "virtualfit_requests_total";
pub const QUEUE_DURATION: &str = "virtualfit_queue_duration_seconds";
pub const BATCH_SIZE: &str = "virtualfit_batch_size";
pub const BATCH_DURATION: &str = "virtualfit_batch_duration_seconds";
pub const REJECTED_TOTAL: &str = "virtualfit_rejected_requests_total";
pub const BACKLOG_SECONDS: &str = "virtualfit_backlog_seconds";
pub const MODEL_INFO: &str = "virtualfit_model_info";
pub const OOM_RECOVERIES_TOTAL: &str = "virtualfit_oom_recoveries_total";
pub const BATCH_CAP: &str = "virtualfit_effective_max_batch_size";
pub const OPEN_CONNECTIONS: &str = "virtualfit_open_connections";
pub const CONNECTIONS_CLOSED_TOTAL: &str = "virtualfit_connections_closed_total";
pub const DECODE_MEMORY: &str = "virtualfit_decode_memory_bytes";
pub const QUEUED_BY_PRIORITY: &str = "virtualfit_queued_items";
pub const BATCH_ITEMS_TOTAL: &str = "virtualfit_batch_items_total";
pub const JOBS_SUBMITTED_TOTAL: &str = "virtualfit_jobs_submitted_total";
pub const JOBS_FINISHED_TOTAL: &str = "virtualfit_jobs_finished_total";
pub const JOBS_QUEUED: &str = "virtualfit_jobs_queued";
pub const JOB_STORE_BYTES: &str = "virtualfit_job_store_bytes";
pub const EVENT_STREAMS: &str = "virtualfit_open_event_streams";
pub const MODEL_BUSY_SECONDS_TOTAL: &str = "virtualfit_model_busy_seconds_total";
pub const GPU_HOUR_PRICE: &str = "virtualfit_price_per_gpu_hour_usd";
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "virtualfit_webhook_deliveries_total";
pub const ACTIVE_BY_PRIORITY: &str = "virtualfit_active_items";
pub const QUEUED_SECONDS_BY_PRIORITY: &str = "virtualfit_queued_seconds";
pub const MODEL_BUSY_SHARE_SECONDS_TOTAL: &str = "virtualfit_model_busy_share_seconds_total";
pub const UNET_STEPS_TOTAL: &str = "virtualfit_unet_steps_total";
pub const UNET_BATCH_ROWS: &str = "virtualfit_unet_batch_rows";
pub const MASK_BATCH_SIZE: &str = "virtualfit_mask_batch_size";
pub const GPU_UTILIZATION: &str = "virtualfit_gpu_utilization_ratio";
pub const GPU_MEMORY_USED: &str = "virtualfit_gpu_memory_used_bytes";
pub const GPU_MEMORY_TOTAL: &str = "virtualfit_gpu_memory_total_bytes";
pub const GPU_TEMPERATURE: &str = "virtualfit_gpu_temperature_celsius";
pub const GPU_POWER: &str = "virtualfit_gpu_power_watts";

/// The names of the contract's metrics that every build exports (the GPU gauges excepted).
pub const CONTRACT_NAMES: &[&str] = &[
    QUEUE_LENGTH,
    ACTIVE_REQUESTS,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    QUEUE_DURATION,
    BATCH_SIZE,
    BATCH_DURATION,
    REJECTED_TOTAL,
    BACKLOG_SECONDS,
    MODEL_INFO,
];

/// Latency buckets in seconds; 5 s is the P95 autoscaling trigger's threshold.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// The `priority` label's values (the batcher's priorities).
pub const PRIORITY_LABELS: [&str; 2] = ["interactive", "batch"];
/// Batch size buckets.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Why an admitted or arriving request was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    QueueFull,
    Draining,
    Deadline,
    Cancelled,
    Invalid,
    /// The body did not arrive within `--body-timeout-s`.
    BodyTimeout,
    /// A key past its request rate or its most jobs.
    RateLimited,
    /// The job store holds `--max-store-bytes`.
    StoreFull,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::QueueFull,
        RejectReason::Draining,
        RejectReason::Deadline,
        RejectReason::Cancelled,
        RejectReason::Invalid,
        RejectReason::BodyTimeout,
        RejectReason::RateLimited,
        RejectReason::StoreFull,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::QueueFull => "queue_full",
            RejectReason::Draining => "draining",
            RejectReason::Deadline => "deadline",
            RejectReason::Cancelled => "cancelled",
            RejectReason::Invalid => "invalid",
            RejectReason::BodyTimeout => "body_timeout",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::StoreFull => "store_full",
        }
    }
}

/// Why the server closed a client connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionClose {
    /// Accepted past `--max-connections` and closed at once.
    MaxConnections,
    /// The request headers did not arrive within the header timeout.
    HeaderTimeout,
}

impl ConnectionClose {
    pub const ALL: [ConnectionClose; 2] = [
        ConnectionClose::MaxConnections,
        ConnectionClose::HeaderTimeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ConnectionClose::MaxConnections => "max_connections",
            ConnectionClose::HeaderTimeout => "header_timeout",
        }
    }
}

/// The server's metrics and the registry that exposes them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub queue_length: IntGauge,
    pub active_requests: IntGauge,
    pub request_duration: HistogramVec,
    pub requests_total: IntCounterVec,
    /// Label `priority`: `interactive` or `batch`.
    pub queue_duration: HistogramVec,
    pub batch_size: Histogram,
    pub batch_duration: Histogram,
    pub rejected_total: IntCounterVec,
    pub backlog_seconds: Gauge,
    pub model_info: GaugeVec,
    pub oom_recoveries_total: prometheus::IntCounter,
    pub batch_cap: IntGauge,
    pub open_connections: IntGauge,
    pub connections_closed_total: IntCounterVec,
    pub decode_memory: IntGauge,
    pub queued_by_priority: IntGaugeVec,
    /// Admitted and unanswered work by priority (`/tryon` is interactive; a running job has its
    /// own priority); their sum is `active_requests`.
    pub active_by_priority: IntGaugeVec,
    /// The backlog in seconds by priority; their sum is `backlog_seconds`.
    pub queued_seconds_by_priority: GaugeVec,
    /// The device's busy time shared out over the priorities of the items each call ran, so
    /// that the interactive Deployment's triggers can leave batch work out.
    pub model_busy_share_seconds_total: prometheus::CounterVec,
    pub batch_items_total: IntCounterVec,
    pub jobs_submitted_total: IntCounterVec,
    pub jobs_finished_total: IntCounterVec,
    pub jobs_queued: IntGauge,
    /// Bytes of job inputs and results the store holds (`--max-store-bytes` bounds it).
    pub job_store_bytes: IntGauge,
    /// `GET /v1/jobs/{id}/events` streams open now.
    pub event_streams: IntGauge,
    pub webhook_deliveries_total: IntCounterVec,
    /// Diffusion models: denoising steps taken, one per request per UNet call.
    pub unet_steps_total: prometheus::IntCounter,
    /// Diffusion models: UNet rows per call (a request with guidance takes two).
    pub unet_batch_rows: Histogram,
    /// Person photos per masker call on the worker (the human parsers and DensePose), across requests.
    pub mask_batch_size: Histogram,
    /// Forward time, summed: what the device is really used for.
    pub model_busy_seconds_total: prometheus::Counter,
    /// The configured price of one GPU-hour; registered only when one is configured.
    pub gpu_hour_price: Gauge,
    pub gpu: GaugeVecs,
}

/// The per-GPU gauges, registered only when a GPU is monitored.
#[derive(Clone)]
pub struct GaugeVecs {
    pub utilization: GaugeVec,
    pub memory_used: GaugeVec,
    pub memory_total: GaugeVec,
    pub temperature: GaugeVec,
    pub power: GaugeVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("valid histogram")
        };
        let gpu_gauge = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &["gpu"]).expect("valid gauge")
        };
        let metrics = Metrics {
            queue_length: register(
                r,
                IntGauge::new(QUEUE_LENGTH, "Admitted requests waiting for a batch.")
                    .expect("valid gauge"),
            ),
            active_requests: register(
                r,
                IntGauge::new(
                    ACTIVE_REQUESTS,
                    "Admitted /tryon requests not yet answered (queued, running or encoding).",
                )
                .expect("valid gauge"),
            ),
            request_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(REQUEST_DURATION, "Whole /tryon request time.")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["code"],
                )
                .expect("valid histogram"),
            ),
            requests_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(REQUESTS_TOTAL, "/tryon answers by HTTP status."),
                    &["code"],
                )
                .expect("valid counter"),
            ),
            queue_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        QUEUE_DURATION,
                        "Time from admission to the start of the item's batch, by priority.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["priority"],
                )
                .expect("valid histogram"),
            ),
            batch_size: register(
                r,
                histogram(
                    BATCH_SIZE,
                    "Requests per executed batch.",
                    BATCH_SIZE_BUCKETS,
                ),
            ),
            batch_duration: register(
                r,
                histogram(
                    BATCH_DURATION,
                    "Model forward time per batch.",
                    LATENCY_BUCKETS,
                ),
            ),
            rejected_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(REJECTED_TOTAL, "Requests not run, by reason."),
                    &["reason"],
                )
                .expect("valid counter"),
            ),
            backlog_seconds: register(
                r,
                Gauge::new(
                    BACKLOG_SECONDS,
                    "Estimated seconds to drain the queue at the measured per-item time.",
                )
                .expect("valid gauge"),
            ),
            model_info: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        MODEL_INFO,
                        "The model and device this replica runs (always 1).",
                    ),
                    &["model", "device"],
                )
                .expect("valid gauge"),
            ),
            oom_recoveries_total: register(
                r,
                prometheus::IntCounter::new(
                    OOM_RECOVERIES_TOTAL,
                    "Batches split in half after a device out-of-memory error.",
                )
                .expect("valid counter"),
            ),
            batch_cap: register(
                r,
                IntGauge::new(
                    BATCH_CAP,
                    "Current batch size cap (lowered after device out-of-memory errors).",
                )
                .expect("valid gauge"),
            ),
            open_connections: register(
                r,
                IntGauge::new(OPEN_CONNECTIONS, "Open client connections on the API port.")
                    .expect("valid gauge"),
            ),
            connections_closed_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        CONNECTIONS_CLOSED_TOTAL,
                        "Connections the server closed on its own, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid counter"),
            ),
            decode_memory: register(
                r,
                IntGauge::new(
                    DECODE_MEMORY,
                    "Bytes of the decode budget held by images being decoded.",
                )
                .expect("valid gauge"),
            ),
            queued_by_priority: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        QUEUED_BY_PRIORITY,
                        "Items waiting for a batch, by priority (their sum is the queue length).",
                    ),
                    &["priority"],
                )
                .expect("valid gauge"),
            ),
            active_by_priority: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        ACTIVE_BY_PRIORITY,
                        "Admitted, unanswered items by priority (their sum is the active requests).",
                    ),
                    &["priority"],
                )
                .expect("valid gauge"),
            ),
            queued_seconds_by_priority: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        QUEUED_SECONDS_BY_PRIORITY,
                        "Estimated seconds to run the queued items of a priority (their sum is the backlog).",
                    ),
                    &["priority"],
                )
                .expect("valid gauge"),
            ),
            model_busy_share_seconds_total: register(
                r,
                prometheus::CounterVec::new(
                    Opts::new(
                        MODEL_BUSY_SHARE_SECONDS_TOTAL,
                        "The model's busy seconds shared out by the priorities of the items (or UNet rows) of each call.",
                    ),
                    &["priority"],
                )
                .expect("valid counter"),
            ),
            batch_items_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(BATCH_ITEMS_TOTAL, "Items run by the model, by priority."),
                    &["priority"],
                )
                .expect("valid counter"),
            ),
            jobs_submitted_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        JOBS_SUBMITTED_TOTAL,
                        "Asynchronous jobs accepted, by priority.",
                    ),
                    &["priority"],
                )
                .expect("valid counter"),
            ),
            jobs_finished_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        JOBS_FINISHED_TOTAL,
                        "Asynchronous jobs this replica ended, by final status.",
                    ),
                    &["status"],
                )
                .expect("valid counter"),
            ),
            jobs_queued: register(
                r,
                IntGauge::new(
                    JOBS_QUEUED,
                    "Jobs waiting in the job store (all replicas, with --jobs-redis).",
                )
                .expect("valid gauge"),
            ),
            job_store_bytes: register(
                r,
                IntGauge::new(
                    JOB_STORE_BYTES,
                    "Bytes of job inputs and results the job store holds, bounded by --max-store-bytes.",
                )
                .expect("valid gauge"),
            ),
            event_streams: register(
                r,
                IntGauge::new(
                    EVENT_STREAMS,
                    "Job event streams (GET /v1/jobs/{id}/events) open now, bounded by --max-event-streams.",
                )
                .expect("valid gauge"),
            ),
            webhook_deliveries_total: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        WEBHOOK_DELIVERIES_TOTAL,
                        "Webhook attempts, by outcome: delivered, retried or failed (given up).",
                    ),
                    &["outcome"],
                )
                .expect("valid counter"),
            ),
            unet_steps_total: register(
                r,
                prometheus::IntCounter::new(
                    UNET_STEPS_TOTAL,
                    "Denoising steps taken (diffusion models): one per request per UNet call.",
                )
                .expect("valid counter"),
            ),
            unet_batch_rows: register(
                r,
                histogram(
                    UNET_BATCH_ROWS,
                    "UNet rows per call (diffusion models; a request with guidance takes two).",
                    BATCH_SIZE_BUCKETS,
                ),
            ),
            mask_batch_size: register(
                r,
                histogram(
                    MASK_BATCH_SIZE,
                    "Person photos per masker call on the worker (automatic masks and /v1/masks).",
                    BATCH_SIZE_BUCKETS,
                ),
            ),
            model_busy_seconds_total: register(
                r,
                prometheus::Counter::new(
                    MODEL_BUSY_SECONDS_TOTAL,
                    "Seconds the model spent in forward passes (the device's busy time).",
                )
                .expect("valid counter"),
            ),
            gpu_hour_price: Gauge::new(
                GPU_HOUR_PRICE,
                "The configured price of one GPU-hour of this replica, in US dollars.",
            )
            .expect("valid gauge"),
            gpu: GaugeVecs {
                utilization: gpu_gauge(GPU_UTILIZATION, "GPU utilization, 0 to 1."),
                memory_used: gpu_gauge(GPU_MEMORY_USED, "GPU memory in use, bytes."),
                memory_total: gpu_gauge(GPU_MEMORY_TOTAL, "GPU memory in all, bytes."),
                temperature: gpu_gauge(GPU_TEMPERATURE, "GPU temperature, degrees Celsius."),
                power: gpu_gauge(GPU_POWER, "GPU power draw, watts."),
            },
            registry,
        };
        for reason in RejectReason::ALL {
            metrics.rejected_total.with_label_values(&[reason.label()]);
        }
        for p in PRIORITY_LABELS {
            metrics.queue_duration.with_label_values(&[p]);
            metrics.queued_by_priority.with_label_values(&[p]);
            metrics.active_by_priority.with_label_values(&[p]);
            metrics.queued_seconds_by_priority.with_label_values(&[p]);
            metrics
                .model_busy_share_seconds_total
                .with_label_values(&[p]);
            metrics.batch_items_total.with_label_values(&[p]);
            metrics.jobs_submitted_total.with_label_values(&[p]);
        }
        for status in ["succeeded", "failed", "cancelled"] {
            metrics.jobs_finished_total.with_label_values(&[status]);
        }
        for outcome in ["delivered", "retried", "failed"] {
            metrics
                .webhook_deliveries_total
                .with_label_values(&[outcome]);
        }
        for reason in ConnectionClose::ALL {
            metrics
                .connections_closed_total
                .with_label_values(&[reason.label()]);
        }
        metrics
    }

    /// Publishes the price of a GPU-hour (`--gpu-hour-price`).
    pub fn set_gpu_hour_price(&self, usd: f64) {
        self.gpu_hour_price.set(usd);
        let _ = self
            .registry
            .register(Box::new(self.gpu_hour_price.clone()));
    }

    /// Registers the GPU gauges; called once a GPU monitor is running.
    pub fn register_gpu_gauges(&self) {
        for g in [
            &self.gpu.utilization,
            &self.gpu.memory_used,
            &self.gpu.memory_total,
            &self.gpu.temperature,
            &self.gpu.power,
        ] {
            let _ = self.registry.register(Box::new(g.clone()));
        }
    }

    pub fn close_connection(&self, reason: ConnectionClose) {
        self.connections_closed_total
            .with_label_values(&[reason.label()])
            .inc();
    }

    pub fn reject(&self, reason: RejectReason) {
        self.rejected_total
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Counts one /tryon answer with its status and whole duration.
    pub fn observe_answer(&self, status: u16, seconds: f64) {
        let code = status.to_string();
        self.requests_total.with_label_values(&[&code]).inc();
        self.request_duration
            .with_label_values(&[&code])
            .observe(seconds);
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Counts a request in `virtualfit_active_requests`, and in `virtualfit_active_items` under its
/// priority, from admission until it is answered (or its client leaves).
pub struct ActiveGuard(Metrics, &'static str);

impl ActiveGuard {
    /// `priority` is one of [`PRIORITY_LABELS`].
    pub fn new(metrics: &Metrics, priority: &'static str) -> Self {
        metrics.active_requests.inc();
        metrics
            .active_by_priority
            .with_label_values(&[priority])
            .inc();
        ActiveGuard(metrics.clone(), priority)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_requests.dec();
        self.0.active_by_priority.with_label_values(&[self.1]).dec();
    }
}
