//! Command-line and environment configuration. Every flag has an environment variable
//! `VIRTUALFIT_<FLAG_IN_CAPS>`; the defaults here are the contract's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::batcher::BatcherConfig;
use crate::imaging::OutputFormat;

/// Which model to run and where.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model to serve: `overlay` (weight-free) or `dmvton` (needs --model-dir).
    #[arg(long, env = "VIRTUALFIT_MODEL", default_value = "overlay")]
    pub model: String,
    /// Folder with the model's weights (dmvton: dmvton_pf_warp.pt and dmvton_pf_gen.pt).
    #[arg(long, env = "VIRTUALFIT_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Device: `auto` (CUDA when built with it and present, else CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, env = "VIRTUALFIT_DEVICE", default_value = "auto")]
    pub device: String,
    /// Let CUDA matrix products use TF32 tensor cores: faster, with about 1e-4 relative error
    /// instead of f32's 1e-6 (off by default; no effect on the CPU).
    #[arg(long, env = "VIRTUALFIT_ALLOW_TF32")]
    pub allow_tf32: bool,
}

impl ModelArgs {
    /// Opens the device and applies the precision setting.
    pub fn open_device(&self) -> Result<candle_core::Device, crate::device::DeviceError> {
        crate::device::set_tf32(self.allow_tf32);
        crate::device::select(&self.device)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `virtualfit serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "VIRTUALFIT_BIND", default_value = "0.0.0.0:8000")]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Most requests run together in one forward pass.
    #[arg(long, env = "VIRTUALFIT_MAX_BATCH_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_batch_size: u64,
    /// Longest time the oldest queued request waits for its batch to fill, in milliseconds.
    #[arg(long, env = "VIRTUALFIT_MAX_BATCH_DELAY_MS", default_value_t = 2)]
    pub max_batch_delay_ms: u64,
    /// Most admitted requests waiting for a batch; beyond it requests get 429.
    #[arg(long, env = "VIRTUALFIT_QUEUE_CAPACITY", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_capacity: u64,
    /// Longest time a request may wait before its batch runs; past it, 504.
    #[arg(long, env = "VIRTUALFIT_REQUEST_TIMEOUT_S", default_value_t = 30.0)]
    pub request_timeout_s: f64,
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
    /// Longest time to finish admitted requests after SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "VIRTUALFIT_DRAIN_TIMEOUT_S", default_value_t = 25.0)]
    pub drain_timeout_s: f64,
    /// Answer format when the request does not ask (`format=`).
    #[arg(long, env = "VIRTUALFIT_OUTPUT_FORMAT", default_value = "jpeg")]
    pub output_format: OutputFormat,
    /// JPEG quality when the request does not ask (`quality=`).
    #[arg(long, env = "VIRTUALFIT_JPEG_QUALITY", default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// Bearer token required on /tryon (unset: no authentication).
    #[arg(long, env = "VIRTUALFIT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Log format.
    #[arg(long, env = "VIRTUALFIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Also serve /metrics on this address (for a NetworkPolicy that only lets monitoring in).
    #[arg(long, env = "VIRTUALFIT_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
}

impl ServeArgs {
    pub fn batcher_config(&self) -> BatcherConfig {
        BatcherConfig {
            max_batch_size: self.max_batch_size as usize,
            max_batch_delay: Duration::from_millis(self.max_batch_delay_ms),
            queue_capacity: self.queue_capacity as usize,
            request_timeout: seconds(self.request_timeout_s),
        }
    }

    pub fn drain_timeout(&self) -> Duration {
        seconds(self.drain_timeout_s)
    }
}

/// Seconds from a flag: negative or NaN is 0, and anything over a day is a day.
fn seconds(v: f64) -> Duration {
    if v.is_nan() || v <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(v.min(86_400.0))
    }
}
