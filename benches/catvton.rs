//! CatVTON on the CPU: one UNet step of the full-size Stable Diffusion 1.5 inpainting UNet
//! (`models/catvton/config/unet.json`, 860 M parameters, random weights) at 512×384, for one
//! request with guidance (two rows) and without (one row).
//!
//! `cargo bench --bench catvton`. Each step takes seconds, so this times a few calls with the
//! clock instead of criterion's statistics: it prints the median and the spread.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use virtualfit::models::catvton::config::UNetConfig;
use virtualfit::models::catvton::UNet;

const ITERATIONS: usize = 3;

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/catvton/config/unet.json");
    let text = std::fs::read_to_string(&path).expect("the SD 1.5 inpainting UNet config");
    let config: UNetConfig = serde_json::from_str(&text).expect("parses");
    config.validate().expect("supported");
    let device = Device::Cpu;
    let started = Instant::now();
    // A VarMap initialises every tensor the network asks for; the network is then rebuilt from
    // plain (detached) copies, since a forward pass over variables would keep its whole graph
    // for backpropagation.
    let vars = VarMap::new();
    UNet::new(VarBuilder::from_varmap(&vars, DType::F32, &device), &config)
        .expect("random full-size UNet");
    let tensors: HashMap<String, Tensor> = vars
        .data()
        .lock()
        .expect("var map")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    drop(vars);
    let params: usize = tensors.values().map(|t| t.elem_count()).sum();
    let unet = UNet::new(
        VarBuilder::from_tensors(tensors, DType::F32, &device),
        &config,
    )
    .expect("random full-size UNet");
    println!(
        "UNet with {:.1} M random parameters built in {:.1} s",
        params as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    // 512×384 pixels: latents of 64×48, stacked person over garment: 128×48.
    for rows in [2usize, 1] {
        let x = Tensor::randn(0f32, 1.0, (rows, 9, 128, 48), &device).expect("input");
        let t = vec![501.0; rows];
        unet.forward(&x, &t).expect("warm-up step");
        let mut times: Vec<f64> = (0..ITERATIONS)
            .map(|_| {
                let start = Instant::now();
                unet.forward(&x, &t).expect("step");
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
