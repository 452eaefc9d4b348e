//! VirtualFit: a batched virtual try-on inference server.
//!
//! The router side (HTTP, admission, batching, metrics) lives in [`server`], [`batcher`] and
//! [`metrics`]; the models and their ops in [`models`] and [`ops`].

pub mod api;
pub mod batcher;
pub mod bench;
pub mod cli;
pub mod config;
pub mod device;
pub mod error;
pub mod gpu;
pub use models::gpu_check;
pub mod hub;
pub mod imaging;
pub mod jobs;
pub mod metrics;
pub mod metrics_text;
pub mod models;
pub mod ops;
pub mod pipeline;
pub mod plotting;
pub mod server;
pub mod simulate;
