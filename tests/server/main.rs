//! The server's integration tests, one binary: the HTTP API, hostile clients, drain and
//! liveness, the jobs API and both job stores, job progress and its event streams, the try-on
//! page's routes, the hub download, the model interface end to end and the `tryon` command.
//! Run one file's tests with a filter on its module, e.g.
//! `cargo test --release --test server http_api::`.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod demo_page;
mod drain;
mod events;
mod hostile;
mod http_api;
mod hub;
mod job_store;
mod jobs;
mod jobs_safety;
mod liveness;
mod model_interface;
