//! VirtualFit: a batched virtual try-on inference server.

pub mod batcher;
pub mod error;
pub mod imaging;
pub mod metrics;
pub mod models;
pub mod ops;
pub mod simulate;
