//! Command-line and environment configuration. Every flag has an environment variable
//! `VIRTUALFIT_<FLAG_IN_CAPS>`, except the hub's (`crate::hub::HubArgs`), which read the Hugging
//! Face tools' own (`HF_ENDPOINT`, `HF_HUB_CACHE`, …); the defaults here are the contract's.
//! `serve`'s flags are turned once, at start-up, into each part's own settings ([`Settings`]);
//! this module parses and converts, and loads nothing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::batcher::{BatcherConfig, Priority};
use crate::device::DeviceSpec;
use crate::hub::HubArgs;
use crate::imaging::OutputFormat;
use crate::jobs::{JobsSettings, StoreSettings};
use crate::models::registry::{self, ModelChoice, SourceChoice, DEFAULT_MODEL};
use crate::models::{ModelFlags, OptionLimits};
use crate::pipeline::OutputChoice;
use crate::server::auth::AuthSettings;
use crate::server::events::EventSettings;
use crate::server::listener::ConnectionLimits;
use crate::server::upload::UploadSettings;

/// Which model to run and where.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model to serve (the default is weight-free; the others need --model-source).
    #[arg(long, env = "VIRTUALFIT_MODEL", default_value = DEFAULT_MODEL, value_parser = registry::name_parser())]
    pub model: String,
    /// Where the weights are: a folder, laid out as the model's README says, or `hub`: fetched
    /// from the Hugging Face Hub into its cache and verified. Wins over --model-dir.
    #[arg(long, env = "VIRTUALFIT_MODEL_SOURCE")]
    pub model_source: Option<SourceChoice>,
    /// The same as --model-source DIR (kept for existing set-ups).
    #[arg(long, env = "VIRTUALFIT_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(flatten)]
    pub flags: ModelFlags,
    /// Device: `auto` (CUDA when built with it and present, else CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, env = "VIRTUALFIT_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// Let CUDA matrix products use TF32 tensor cores: faster, with about 1e-4 relative error
    /// instead of f32's 1e-6 (off by default; no effect on the CPU).
    #[arg(long, env = "VIRTUALFIT_ALLOW_TF32")]
    pub allow_tf32: bool,
    /// The networks' precision, `f32`, `f16` or `bf16`, for models that offer several (half
    /// precision is for GPUs, where our kernels compute in f32 between half loads and stores;
    /// the README says which models take it).
    #[arg(long, env = "VIRTUALFIT_DTYPE", default_value = "f32", value_parser = parse_dtype)]
    pub dtype: candle_core::DType,
    /// Diffusion models' self-attention through our flash-attention kernel (CUDA, f16/bf16 only; an
    /// error elsewhere). Off until a card has verified it with scripts/gpu-check.sh.
    #[arg(long, env = "VIRTUALFIT_FLASH_ATTENTION", default_value = "off", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub flash_attention: bool,
    /// Whole-batch models replay CUDA graphs, one captured per batch-size bucket at warm-up (a
    /// batch runs padded to the next power of two, or to --max-batch-size). CUDA only; off
    /// until a card has verified it with scripts/gpu-check.sh.
    #[arg(long, env = "VIRTUALFIT_CUDA_GRAPHS", default_value = "off", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub cuda_graphs: bool,
    /// Dense convolutions through our cuDNN op (descriptors cached per shape, the algorithm
    /// chosen by a timed search at warm-up, one workspace, the bias fused where cuDNN allows)
    /// instead of candle's. Needs a build with --features cudnn and a CUDA device; off until a
    /// card has verified it.
    #[arg(long, env = "VIRTUALFIT_CUDNN_CONV", default_value = "off", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub cudnn_conv: bool,
    /// Whole-batch models stage the next batch's inputs (stacked into pinned memory, copied on a
    /// second stream) while the device computes the current one, and bring outputs back through
    /// pinned memory. CUDA only; off until a card has verified it.
    #[arg(long, env = "VIRTUALFIT_OVERLAP", default_value = "off", value_parser = parse_switch, action = clap::ArgAction::Set)]
    pub overlap: bool,
    /// The most sampling steps a request may ask for (step models).
    #[arg(long, env = "VIRTUALFIT_MAX_STEPS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_steps: u64,
}

/// `on` or `off`.
pub(crate) fn parse_switch(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("use on or off".into()),
    }
}

/// `f32`, `f16` or `bf16`.
pub(crate) fn parse_dtype(s: &str) -> Result<candle_core::DType, String> {
    match s {
        "f32" => Ok(candle_core::DType::F32),
        "f16" => Ok(candle_core::DType::F16),
        "bf16" => Ok(candle_core::DType::BF16),
        _ => Err("use f32, f16 or bf16".into()),
    }
}

impl ModelArgs {
    /// Opens the device and applies the precision setting.
    pub fn open_device(&self) -> Result<candle_core::Device, crate::device::DeviceError> {
        crate::device::set_tf32(self.allow_tf32);
        let device = crate::device::select(self.device)?;
        crate::models::enable_flash_attention(self.flash_attention, &device, self.dtype)
            .map_err(crate::device::DeviceError::Unsupported)?;
        // The paths that wait for a card are CUDA only.
        let gpu_paths = [
            (self.cuda_graphs, "--cuda-graphs"),
            (self.cudnn_conv, "--cudnn-conv"),
            (self.overlap, "--overlap"),
        ];
        if let Some((_, flag)) = gpu_paths.iter().find(|(on, _)| *on && !device.is_cuda()) {
            return Err(crate::device::DeviceError::Unsupported(format!(
                "{flag} on needs a CUDA device, and the device is {}{}",
                crate::device::name(&device),
                if cfg!(feature = "cuda") {
                    ""
                } else {
                    " (this binary is built without --features cuda)"
                }
            )));
        }
        if self.overlap {
            crate::ops::transfer::prepare_device(&device);
        }
        crate::ops::cudnn_conv::enable_cudnn_conv(self.cudnn_conv)
            .map_err(crate::device::DeviceError::Unsupported)?;
        Ok(device)
    }

    /// The model to load: --model-source, else --model-dir.
    pub fn choice(&self) -> ModelChoice {
        ModelChoice {
            name: self.model.clone(),
            source: self
                .model_source
                .clone()
                .or_else(|| self.model_dir.clone().map(SourceChoice::Dir)),
            dtype: self.dtype,
            flags: self.flags.clone(),
            hub: self.hub.clone(),
        }
    }

    /// The server's bounds on request options.
    pub fn option_limits(&self) -> OptionLimits {
        OptionLimits {
            max_steps: self.max_steps as usize,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The batching and admission settings, shared by `serve` and the simulator's replica model.
#[derive(Debug, Clone, Args)]
pub struct BatchingArgs {
    /// Most requests run together in one forward pass.
    #[arg(long, env = "VIRTUALFIT_MAX_BATCH_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_batch_size: u64,
    /// Longest time the oldest queued request waits for its batch to fill, in milliseconds.
    #[arg(long, env = "VIRTUALFIT_MAX_BATCH_DELAY_MS", default_value_t = 2)]
    pub max_batch_delay_ms: u64,
    /// Most admitted requests waiting for a batch; beyond it requests get 429.
    #[arg(long, env = "VIRTUALFIT_QUEUE_CAPACITY", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_capacity: u64,
    /// Longest time a request may wait before its batch runs; past it, 504 (more than 0).
    #[arg(long, env = "VIRTUALFIT_REQUEST_TIMEOUT_S", default_value_t = 30.0, value_parser = positive_seconds)]
    pub request_timeout_s: f64,
    /// A batch-priority job waiting this long since it was submitted is served as interactive
    /// (e.g. `10m`).
    #[arg(long, env = "VIRTUALFIT_BATCH_MAX_WAIT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub batch_max_wait: Duration,
}

impl BatchingArgs {
    pub fn batcher_config(&self) -> BatcherConfig {
        BatcherConfig {
            max_batch_size: self.max_batch_size as usize,
            max_batch_delay: Duration::from_millis(self.max_batch_delay_ms),
            queue_capacity: self.queue_capacity as usize,
            request_timeout: seconds(self.request_timeout_s),
            batch_max_wait: self.batch_max_wait,
            debug_stall_after_calls: None,
            overlap: false,
        }
    }
}

/// The asynchronous jobs API: its store, bounds and webhooks.
#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// Folder of the embedded job store (a SQLite file), used unless --jobs-redis is set. One
    /// server per folder.
    #[arg(long, env = "VIRTUALFIT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// `redis://…` (or `rediss://…`): keep jobs in Redis, shared by every replica.
    #[arg(long, env = "VIRTUALFIT_JOBS_REDIS", hide_env_values = true)]
    pub jobs_redis: Option<String>,
    /// How long results are kept after a job ends (e.g. `24h`); then the job reads `expired`.
    #[arg(long, env = "VIRTUALFIT_JOB_RETENTION", default_value = "24h", value_parser = positive_duration)]
    pub job_retention: Duration,
    /// Most jobs waiting in the store; beyond it, 429.
    #[arg(long, env = "VIRTUALFIT_MAX_QUEUED_JOBS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_jobs: u64,
    /// Most jobs one API key may have queued or running; beyond it, 429 `rate_limited`.
    #[arg(long, env = "VIRTUALFIT_MAX_JOBS_PER_KEY", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_jobs_per_key: u64,
    /// Most bytes of job inputs and results the store keeps (e.g. `8GiB`); past it,
    /// submissions get 507 `insufficient_storage`. The default fits the Deployment's 10 GiB
    /// data volume with room for SQLite's journal.
    #[arg(long, env = "VIRTUALFIT_MAX_STORE_BYTES", default_value = "8GiB", value_parser = byte_size)]
    pub max_store_bytes: u64,
    /// With --jobs-redis: a job whose replica has been silent this long is taken over by another.
    /// With SQLite: a running job whose end could not be stored is run again after this long.
    #[arg(long, env = "VIRTUALFIT_JOB_LEASE", default_value = "5m", value_parser = positive_duration)]
    pub job_lease: Duration,
    /// The job priorities this replica takes from the store, comma-separated. Beside a worker
    /// pool that shares the Redis store, inference replicas take `interactive` only, so that
    /// batch work runs on the pool and never counts in the interactive Deployment's triggers.
    /// Jobs of every priority are still accepted. A SQLite store has no other replica to run
    /// what this one leaves, so it needs both.
    #[arg(
        long,
        env = "VIRTUALFIT_JOB_PRIORITIES",
        value_delimiter = ',',
        default_value = "interactive,batch",
        num_args = 1..
    )]
    pub job_priorities: Vec<crate::batcher::Priority>,
    /// Key of the webhooks' HMAC-SHA256 signature (unset: webhooks are refused).
    #[arg(long, env = "VIRTUALFIT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Hosts webhooks may call, comma-separated: `host`, `host:port`, `http://host[:port]` to
    /// allow plain http, or an IP address to allow it even when it is not public.
    #[arg(long, env = "VIRTUALFIT_WEBHOOK_ALLOW_HOSTS", value_delimiter = ',')]
    pub webhook_allow_hosts: Vec<crate::jobs::webhook::AllowEntry>,
    /// Delay before the first webhook retry; each later one doubles it (6 attempts in all:
    /// 20s gives about 10 minutes).
    #[arg(long, env = "VIRTUALFIT_WEBHOOK_RETRY_BASE", default_value = "20s", value_parser = positive_duration)]
    pub webhook_retry_base: Duration,
}

impl JobsArgs {
    /// Refuses settings that would leave jobs nobody runs.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.jobs_redis.is_none() && self.job_priorities.len() < Priority::ALL.len() {
            let missing: Vec<&str> = Priority::ALL
                .iter()
                .filter(|p| !self.job_priorities.contains(p))
                .map(|p| p.label())
                .collect();
            anyhow::bail!(
                "--job-priorities leaves {} jobs to other replicas, which only a shared store \
                 has: set --jobs-redis, or take every priority",
                missing.join(" and ")
            );
        }
        Ok(())
    }

    /// The jobs' settings.
    pub fn settings(&self) -> JobsSettings {
        JobsSettings {
            store: StoreSettings {
                data_dir: self.data_dir.clone(),
                redis: self.jobs_redis.clone(),
                lease: self.job_lease,
            },
            retention: self.job_retention,
            max_queued: self.max_queued_jobs as usize,
            max_per_owner: self.max_jobs_per_key as usize,
            max_store_bytes: self.max_store_bytes,
            priorities: self.job_priorities.clone(),
            webhooks: self.webhook_config(),
        }
    }

    pub fn webhook_config(&self) -> crate::jobs::webhook::WebhookConfig {
        crate::jobs::webhook::WebhookConfig {
            secret: self.webhook_secret.clone(),
            allow: self.webhook_allow_hosts.clone(),
            retry_base: self.webhook_retry_base,
        }
    }
}

/// `virtualfit serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "VIRTUALFIT_BIND", default_value = "0.0.0.0:8000")]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub batching: BatchingArgs,
    #[command(flatten)]
    pub jobs: JobsArgs,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "VIRTUALFIT_MAX_BODY_BYTES", default_value_t = 16_777_216)]
    pub max_body_bytes: usize,
    /// Largest accepted image, in pixels (width × height, read from the header).
    #[arg(
        long,
        env = "VIRTUALFIT_MAX_IMAGE_PIXELS",
        default_value_t = 36_000_000
    )]
    pub max_image_pixels: u64,
    /// Bytes that images being decoded may take at once, estimated from their headers before
    /// decoding (e.g. `4GiB`). The default leaves room for the bodies being read and the model
    /// under the Deployment's 16 GiB memory limit.
    #[arg(long, env = "VIRTUALFIT_MAX_DECODE_MEMORY", default_value = "4GiB", value_parser = byte_size)]
    pub max_decode_memory: u64,
    /// Longest time to receive a request's whole body, in seconds; past it, 408 and the
    /// connection is closed.
    #[arg(long, env = "VIRTUALFIT_BODY_TIMEOUT_S", default_value_t = 30.0, value_parser = positive_seconds)]
    pub body_timeout_s: f64,
    /// Longest time to receive a request's headers, in seconds; past it the connection closes.
    #[arg(long, env = "VIRTUALFIT_HEADER_TIMEOUT_S", default_value_t = 10.0, value_parser = positive_seconds)]
    pub header_timeout_s: f64,
    /// Most open connections on the API port; more are closed at once. The metrics port keeps
    /// its own small allowance, so liveness stays answerable there.
    #[arg(long, env = "VIRTUALFIT_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Longest time to finish admitted requests after SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "VIRTUALFIT_DRAIN_TIMEOUT_S", default_value_t = 25.0)]
    pub drain_timeout_s: f64,
    /// Answer format when the request does not ask (`format=`).
    #[arg(long, env = "VIRTUALFIT_OUTPUT_FORMAT", default_value = "jpeg")]
    pub output_format: OutputFormat,
    /// JPEG quality when the request does not ask (`quality=`).
    #[arg(long, env = "VIRTUALFIT_JPEG_QUALITY", default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// Bearer token required on /tryon and the jobs API (unset: no authentication); its
    /// holder is the key named `default`.
    #[arg(long, env = "VIRTUALFIT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Named API keys, one `name:SHA256_HEX_OF_TOKEN` a line; read again on SIGHUP. Each
    /// key sees only its own jobs.
    #[arg(long, env = "VIRTUALFIT_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Requests a second each API key may make (bursts of one second's worth); past it, 429
    /// `rate_limited` (unset: unbounded).
    #[arg(long, env = "VIRTUALFIT_KEY_REQUESTS_PER_S", value_parser = positive_price)]
    pub key_requests_per_s: Option<f64>,
    /// Log format.
    #[arg(long, env = "VIRTUALFIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Price of one GPU-hour of this replica in US dollars, published as
    /// `virtualfit_price_per_gpu_hour_usd` for the cost panels (unset: not published).
    #[arg(long, env = "VIRTUALFIT_GPU_HOUR_PRICE", value_parser = positive_price)]
    pub gpu_hour_price: Option<f64>,
    /// Serve /metrics, /livez and /readyz on this address instead of the API port (for a
    /// NetworkPolicy that lets only monitoring and the kubelet in).
    #[arg(long, env = "VIRTUALFIT_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// /livez fails when work is pending and the model worker has finished no model call for
    /// this many seconds (unset: derived, max(60 s, 4 × the longest model call) plus
    /// --max-batch-delay-ms; see `server::liveness`).
    #[arg(long, env = "VIRTUALFIT_LIVENESS_STALL_S", value_parser = positive_seconds)]
    pub liveness_stall_s: Option<f64>,
    /// Serve the try-on page at `/` (`off` removes it; the API is the same either way).
    #[arg(long, env = "VIRTUALFIT_DEMO", value_enum, default_value_t = OnOff::On)]
    pub demo: OnOff,
    /// The sample photos the page offers, when this folder exists (a clone has
    /// `assets/samples`; images do not): its `pairs.txt`, `person/`, `cloth/` and `NOTICE`.
    #[arg(long, env = "VIRTUALFIT_SAMPLES_DIR", default_value = "assets/samples")]
    pub samples_dir: PathBuf,
    /// Job event streams (`GET /v1/jobs/{id}/events`) open at once; more get 429.
    #[arg(long, env = "VIRTUALFIT_MAX_EVENT_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_event_streams: u64,
    /// Job event streams one API key may have open at once; more get 429.
    #[arg(long, env = "VIRTUALFIT_MAX_EVENT_STREAMS_PER_KEY", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_event_streams_per_key: u64,
    /// Time between the heartbeat comments of a job event stream (proxies close silent
    /// connections).
    #[arg(long, env = "VIRTUALFIT_EVENT_HEARTBEAT", default_value = "15s", value_parser = positive_duration)]
    pub event_heartbeat: Duration,
    /// A job event stream whose job has not changed for this long ends with `event: idle`.
    #[arg(long, env = "VIRTUALFIT_EVENT_IDLE_TIMEOUT", default_value = "10m", value_parser = positive_duration)]
    pub event_idle_timeout: Duration,
    /// Test hook, not for service: after this many finished model calls the model worker
    /// blocks for ever inside the next one, as on a hung device (tests/server/liveness.rs).
    #[arg(long, hide = true)]
    pub debug_stall_model_after: Option<u64>,
}

/// `serve`'s flags turned into each part's own settings, once, at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub metrics_bind: Option<SocketAddr>,
    pub model: ModelChoice,
    pub option_limits: OptionLimits,
    pub upload: UploadSettings,
    pub batcher: BatcherConfig,
    pub jobs: JobsSettings,
    pub auth: AuthSettings,
    pub connections: ConnectionLimits,
    pub drain_timeout: Duration,
    pub liveness_stall: Option<Duration>,
    pub gpu_hour_price: Option<f64>,
    /// The page's sample folder, when the page is served (`--demo on`).
    pub demo: Option<PathBuf>,
    pub events: EventSettings,
}

/// A flag that turns a feature on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl ServeArgs {
    /// Each part's settings; an error for flags that contradict each other.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        self.jobs.check()?;
        registry::family(&self.model.model)?;
        Ok(Settings {
            bind: self.bind,
            metrics_bind: self.metrics_bind,
            model: self.model.choice(),
            option_limits: self.model.option_limits(),
            upload: UploadSettings {
                max_body_bytes: self.max_body_bytes,
                body_timeout: self.body_timeout(),
                max_image_pixels: self.max_image_pixels,
                max_decode_memory: self.max_decode_memory,
                output: OutputChoice {
                    format: self.output_format,
                    quality: self.jpeg_quality,
                },
            },
            batcher: self.batcher_config(),
            jobs: self.jobs.settings(),
            auth: AuthSettings {
                api_key: self.api_key.clone(),
                api_keys_file: self.api_keys_file.clone(),
                key_requests_per_s: self.key_requests_per_s,
            },
            connections: ConnectionLimits {
                max_connections: crate::server::listener::fit_connection_cap(self.max_connections)
                    as usize,
                header_timeout: self.header_timeout(),
            },
            drain_timeout: self.drain_timeout(),
            liveness_stall: self.liveness_stall(),
            gpu_hour_price: self.gpu_hour_price,
            demo: (self.demo == OnOff::On).then(|| self.samples_dir.clone()),
            events: EventSettings {
                max_streams: self.max_event_streams as usize,
                max_streams_per_key: self.max_event_streams_per_key as usize,
                heartbeat: self.event_heartbeat,
                idle_timeout: self.event_idle_timeout,
            },
        })
    }

    pub fn drain_timeout(&self) -> Duration {
        seconds(self.drain_timeout_s)
    }

    pub fn body_timeout(&self) -> Duration {
        seconds(self.body_timeout_s)
    }

    pub fn header_timeout(&self) -> Duration {
        seconds(self.header_timeout_s)
    }

    /// `--liveness-stall-s`, when set.
    pub fn liveness_stall(&self) -> Option<Duration> {
        self.liveness_stall_s.map(seconds)
    }

    /// The worker's settings: the batching flags, and the stall test hook.
    pub fn batcher_config(&self) -> BatcherConfig {
        BatcherConfig {
            debug_stall_after_calls: self.debug_stall_model_after,
            overlap: self.model.overlap,
            ..self.batching.batcher_config()
        }
    }
}

/// A duration flag that must be more than zero (0 would refuse every request).
fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a number of seconds above 0, got {v}"))
    }
}

/// A price in dollars, or a rate: finite and above zero.
fn positive_price(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a number above 0, got {v}"))
    }
}

/// A duration with a unit (`24h`, `5m`, `500ms`), more than zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 24h, 5m, 30s)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A size in bytes: a number with an optional unit (`4GiB`, `512MiB`, `1000000`).
pub(crate) fn byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4GiB, 512MiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "ki" => 1 << 10,
        "mib" | "mi" => 1 << 20,
        "gib" | "gi" => 1 << 30,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use B, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("`{s}` is not a usable size"))
}

/// Seconds from a flag: negative or NaN is 0, and anything over a day is a day.
fn seconds(v: f64) -> Duration {
    if v.is_nan() || v <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(v.min(86_400.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(byte_size("4GiB"), Ok(4 << 30));
        assert_eq!(byte_size("512 MiB"), Ok(512 << 20));
        assert_eq!(byte_size("1000"), Ok(1000));
        assert!(byte_size("0").is_err());
        assert!(byte_size("lots").is_err());
        assert!(byte_size("99999999999GiB").is_err());
        assert_eq!(positive_seconds("0.5"), Ok(0.5));
        assert!(positive_seconds("0").is_err());
        assert!(positive_seconds("-1").is_err());
        assert!(positive_seconds("NaN").is_err());
    }
}
