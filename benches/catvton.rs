//! CatVTON on the CPU: one UNet step of the full-size Stable Diffusion 1.5 inpainting UNet
//! (`models/catvton/config/unet.json`, 815.6 M parameters without the skipped cross-attention,
//! random weights) at 512×384, for one request with guidance (two rows) and without (one row).
//!
//! Before it, self-attention at the UNet's largest shapes (first level, 40 channels per head):
//! one whole call at 512×384 (2 rows × 8 heads over 6,144 tokens), and 2 of the 16 heads of a
//! call at 1024×768 (24,576 tokens; the heads are independent, so a whole call costs 8 times
//! as much), the fused CPU op and the chunked one alternating.
//!
//! `cargo bench --bench catvton` (`-- attention` for the attention calls alone). Each call
//! takes seconds, so this times a few calls with the clock instead of criterion's statistics:
//! it prints the median and the spread. Whole samplings are timed by
//! `virtualfit bench model --model catvton --random-weights`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use virtualfit::models::catvton::attention::{chunked_attention, MAX_SCORE_ELEMENTS_CPU};
use virtualfit::models::catvton::fused_attention::fused_attention;
use virtualfit::models::catvton::CatVton;

const ITERATIONS: usize = 3;

/// Median, min and max of `times`, sorted in place.
fn spread(times: &mut [f64]) -> String {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    format!(
        "median {:.2} s (min {:.2}, max {:.2}, {n} runs)",
        times[n / 2],
        times[0],
        times[n - 1]
    )
}

/// One attention call of each path, alternating, at the first level's shape.
fn attention(device: &Device) {
    let dim = 40;
    for (label, groups, tokens) in [("512x384", 16, 6144usize), ("1024x768", 2, 24_576)] {
        let qkv: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn(0f32, 1.0, (groups, tokens, dim), device).expect("q, k, v"))
            .collect();
        let scale = 1.0 / (dim as f64).sqrt();
        let chunked = || {
            chunked_attention(&qkv[0], &qkv[1], &qkv[2], scale, MAX_SCORE_ELEMENTS_CPU)
                .expect("chunked attention")
        };
        let fused = || fused_attention(&qkv[0], &qkv[1], &qkv[2], scale).expect("fused attention");
        let (mut t_chunked, mut t_fused) = (Vec::new(), Vec::new());
        for _ in 0..ITERATIONS {
            let start = Instant::now();
            chunked();
            t_chunked.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            fused();
            t_fused.push(start.elapsed().as_secs_f64());
        }
        println!(
            "catvton attention, {label}, {groups} groups x {tokens} tokens x {dim}: chunked {}",
            spread(&mut t_chunked)
        );
        println!(
            "catvton attention, {label}, {groups} groups x {tokens} tokens x {dim}: fused   {}",
            spread(&mut t_fused)
        );
    }
}

fn main() {
    let device = Device::Cpu;
    attention(&device);
    if std::env::args().any(|a| a == "attention") {
        return;
    }
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
        println!(
            "catvton UNet step, 512x384, {rows} row(s) ({}): {}",
            if rows == 2 {
                "one request with guidance"
            } else {
                "one request without guidance"
            },
            spread(&mut times)
        );
    }
}
