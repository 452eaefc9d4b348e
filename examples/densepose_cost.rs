//! Measures DensePose's cost beside the two human parsers it runs with: the sample photos fitted
//! to 768×1024 (the size the app masks at; detectron2 then works at 800×1067), per image, with
//! the process's CPU time and peak resident memory, and on a GPU the memory pool's peak.
//! Seeded weights: the cost is set by the network and the input size, not by the values.
//!
//! `cargo run --release --example densepose_cost [-- --device cuda] [--photos DIR] [--count N]`
//! (a CUDA build for `cuda`; the GPU check runs it from its bundle).

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use virtualfit::models::automasker::densepose::DensePose;
use virtualfit::models::automasker::schp::SchpParsers;
use virtualfit::models::automasker::HumanParsers;
use virtualfit::models::catvton::preprocess::resize_and_crop;

/// User plus system CPU time of this process so far, and its peak resident memory in MiB.
fn usage() -> (Duration, f64) {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    (t(u.ru_utime) + t(u.ru_stime), u.ru_maxrss as f64 / 1024.0)
}

/// Runs `work` on each photo after one warm-up, and prints the wall and CPU time per image.
fn measure(
    name: &str,
    photos: &[image::RgbImage],
    work: impl Fn(&image::RgbImage) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    work(&photos[0])?;
    let (cpu0, _) = usage();
    let wall0 = Instant::now();
    for photo in photos {
        work(photo)?;
    }
    let (cpu1, peak) = usage();
    let n = photos.len() as f64;
    let wall = wall0.elapsed().as_secs_f64() / n;
    println!(
        "{name}: {wall:.2} s wall, {:.2} s CPU per image; peak resident {peak:.0} MiB",
        (cpu1 - cpu0).as_secs_f64() / n,
    );
    Ok(wall)
}

/// The value after `flag` on the command line.
fn arg(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The device's memory pool peak since the last reset, in MiB (CUDA builds on a GPU only).
#[cfg(feature = "cuda")]
fn pool_peak(device: &Device, reset: bool) -> anyhow::Result<Option<f64>> {
    let Device::Cuda(dev) = device else {
        return Ok(None);
    };
    if reset {
        virtualfit::ops::cuda::reset_peak_memory(dev)?;
        return Ok(None);
    }
    Ok(Some(
        virtualfit::ops::cuda::peak_memory(dev)? as f64 / (1u64 << 20) as f64,
    ))
}

#[cfg(not(feature = "cuda"))]
fn pool_peak(_: &Device, _: bool) -> anyhow::Result<Option<f64>> {
    Ok(None)
}

fn main() -> anyhow::Result<()> {
    let device = match arg("--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::new_cuda(0)?,
        Some(other) => anyhow::bail!("--device cpu|cuda, not {other}"),
    };
    let dir = arg("--photos").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/person"),
        Into::into,
    );
    let count: usize = arg("--count")
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(usize::MAX);
    let (_, rss_before) = usage();
    pool_peak(&device, true)?;
    let densepose = DensePose::random(&device)?;
    let (_, rss_densepose) = usage();
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "jpg"));
    paths.sort();
    let mut photos = Vec::new();
    for path in paths.iter().take(count) {
        photos.push(resize_and_crop(&image::open(path)?.to_rgb8(), 768, 1024));
    }
    anyhow::ensure!(!photos.is_empty(), "no .jpg photos to measure");
    println!(
        "{} photos 768×1024 on {device:?}, {} threads; DensePose's weights {:.0} MiB resident",
        photos.len(),
        rayon::current_num_threads(),
        rss_densepose - rss_before
    );
    let dense = measure("DensePose", &photos, |p| {
        densepose.label_maps(std::slice::from_ref(p))?;
        Ok(())
    })?;
    if let Some(peak) = pool_peak(&device, false)? {
        println!("DensePose: peak GPU memory {peak:.0} MiB (memory pool, weights included)");
    }
    let parsers = SchpParsers::random(0, &device)?;
    let parse = measure("SCHP ATR + LIP", &photos, |p| {
        parsers.parse(std::slice::from_ref(p))?;
        Ok(())
    })?;
    println!(
        "DensePose is {:.0} % of the three networks' wall time",
        100.0 * dense / (dense + parse)
    );
    Ok(())
}
