//! The deployment's integration tests, one binary: the Kubernetes manifests and their PromQL, a
//! live Prometheus scraping two replicas, `virtualfit simulate` and `plan`, the checks that
//! the repository and its Docker build context stand alone, and the source tree's layering. Run one file's tests with a filter
//! on its module, e.g. `cargo test --release --test deploy k8s_manifests::`.

#[path = "../common/mod.rs"]
mod common;

mod k8s_live;
mod k8s_manifests;
mod k8s_promql;
mod layering;
mod plan;
mod simulate;
mod standalone;
