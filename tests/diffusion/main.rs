//! A diffusion model served on the CPU with its tiny fixture weights: step-level batching,
//! deadlines, jobs, the CLI and the drain, the masks, and the try-on page in headless Chromium. A binary
//! of its own, whose tests take turns: their requests keep both cores busy, which the timing
//! bounds of a drain or a deadline should not share. Run it with `cargo test --release --test diffusion`.

#[path = "../common/mod.rs"]
mod common;

mod catvton_serve;
mod demo_page;
mod masks_serve;
