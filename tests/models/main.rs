//! The models' integration tests, one binary: DM-VTON and CatVTON parity with their reference
//! pipelines, SCHP parity with the official human parser, the overlay baseline, imaging, and
//! `virtualfit bench`. Run one file's tests with a filter on its module, e.g.
//! `cargo test --release --test models dmvton::`.

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod catvton;
mod dmvton;
mod imaging;
mod overlay;
mod schp;
