//! Measures the human parsers' cost on the CPU: SCHP on ATR and on LIP over the six sample
//! photos fitted to 768×1024 (the size the app masks at), per image, with the process's CPU
//! time and peak resident memory. Seeded weights unless a folder with the official checkpoints
//! is given (the cost is the same: it is set by the network and the input size).
//!
//! `cargo run --release --example schp_cost [BATCH] [CHECKPOINT_DIR]` (batch 1 by default)

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use virtualfit::models::automasker::schp::{Schp, SchpParsers};
use virtualfit::models::catvton::preprocess::resize_and_crop;

/// User plus system CPU time of this process so far, and its peak resident memory in MiB.
fn usage() -> (Duration, f64) {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    (t(u.ru_utime) + t(u.ru_stime), u.ru_maxrss as f64 / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let device = Device::Cpu;
    let (_, rss_before) = usage();
    let parsers = match args.get(2) {
        Some(dir) => SchpParsers::load(Path::new(dir), &device)?,
        None => SchpParsers::random(0, &device)?,
    };
    let (_, rss_loaded) = usage();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/person");
    let mut photos = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jpg") {
            photos.push(resize_and_crop(&image::open(&path)?.to_rgb8(), 768, 1024));
        }
    }
    println!(
        "{} photos 768×1024, batch {batch}, {} threads; weights {:.0} MiB resident",
        photos.len(),
        rayon::current_num_threads(),
        rss_loaded - rss_before
    );
    let variants: [&Schp; 2] = [&parsers.atr, &parsers.lip];
    for schp in variants {
        // One warm-up batch, then the photos.
        schp.parse(&photos[..batch.min(photos.len())])?;
        let (cpu0, _) = usage();
        let wall0 = Instant::now();
        for chunk in photos.chunks(batch) {
            schp.parse(chunk)?;
        }
        let (cpu1, peak) = usage();
        let n = photos.len() as f64;
        println!(
            "{}: {:.2} s wall, {:.2} s CPU per image; peak resident {:.0} MiB",
            schp.config().name,
            wall0.elapsed().as_secs_f64() / n,
            (cpu1 - cpu0).as_secs_f64() / n,
            peak
        );
    }
    Ok(())
}
