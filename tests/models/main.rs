//! The models' integration tests, one binary: DM-VTON and CatVTON parity with their reference
//! pipelines, SCHP parity with the official human parser, the automatic mask's combination
//! against the official one, DensePose's input preparation and its box and region operations
//! against detectron2's, the overlay baseline, imaging, OpenCV-exact image operations, and
//! `virtualfit bench`. Run one file's tests with a filter on its module, e.g.
//! `cargo test --release --test models dmvton::`.

#[path = "../common/mod.rs"]
mod common;

mod automasker;
mod bench;
mod catvton;
mod cv;
mod densepose;
mod densepose_preprocess;
mod detection_ops;
mod detectron2_pkl;
mod dmvton;
mod imaging;
mod overlay;
mod schp;
