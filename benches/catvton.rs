//! CatVTON on the CPU: one UNet step of the full-size Stable Diffusion 1.5 inpainting UNet
//! (`models/catvton/config/unet.json`, 815.6 M parameters without the skipped cross-attention,
//! random weights) at 512×384, for one request with guidance (two rows) and without (one row).
//!
//! `cargo bench --bench catvton`. Each step takes seconds, so this times a few calls with the
//! clock instead of criterion's statistics: it prints the median and the spread. Whole
//! samplings are timed by `virtualfit bench model --model catvton --random-weights`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use virtualfit::models::catvton::CatVton;

const ITERATIONS: usize = 3;

fn main() {
    let device = Device::Cpu;
    let started = Instant::now();
    let model = CatVton::random(DType::F32, &device).expect("random full-size CatVTON");
    println!(
        "full-size UNet and VAE with random weights built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // 512×384 pixels: latents of 64×48, stacked person over garment: 128×48.
    for rows in [2usize, 1] {
        let x = Tensor::randn(0f32, 1.0, (rows, 9, 128, 48), &device).expect("input");
        let t = vec![501.0; rows];
        model.unet().forward(&x, &t).expect("warm-up step");
        let mut times: Vec<f64> = (0..ITERATIONS)
            .map(|_| {
                let start = Instant::now();
                model.unet().forward(&x, &t).expect("step");
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "catvton UNet step, 512x384, {rows} row(s) ({}): median {:.2} s (min {:.2}, max {:.2}, {ITERATIONS} runs)",
            if rows == 2 { "one request with guidance" } else { "one request without guidance" },
            times[ITERATIONS / 2],
            times[0],
            times[ITERATIONS - 1]
        );
    }
}
