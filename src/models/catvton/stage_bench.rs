//! `virtualfit bench stages`: CatVTON's networks one stage at a time on the CPU in f32,
//! at 512×384: a UNet step of one request with guidance (two rows, fused attention), the same
//! step as a DeepCache shallow pass, the VAE encoding of the masked person and the garment,
//! and the VAE decoding of one image. The weights are a model folder (`--model-dir`, the
//! layout of `models::catvton::weights`) or random (`--random-weights`).
//!
//! With `--stdin` it reads one stage name a line and answers each with one JSON line
//! (`{"stage": …, "seconds": …}`), so that `scripts/bench/catvton_side_by_side.py` can alternate
//! it with the official networks in one run; otherwise it times `--stages` `--iterations` times
//! each, round-robin, and prints the best and the median.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Args;

use super::CatVton;

/// `virtualfit bench stages`.
#[derive(Debug, Clone, Args)]
pub struct StageBenchArgs {
    /// A CatVTON model folder (base/unet, base/scheduler, vae, attention).
    #[arg(
        long,
        conflicts_with = "random_weights",
        required_unless_present = "random_weights"
    )]
    pub model_dir: Option<PathBuf>,
    /// The full-size networks with random weights instead of --model-dir.
    #[arg(long)]
    pub random_weights: bool,
    /// Stages to time, comma-separated: unet, unet-cached, encode, decode.
    #[arg(long, value_delimiter = ',', default_value = "unet,encode,decode")]
    pub stages: Vec<Stage>,
    /// Timed runs of each stage (after one untimed run).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub iterations: u64,
    /// DeepCache branch of `unet-cached` (`cache_branch_id`).
    #[arg(long, default_value_t = 0)]
    pub branch: usize,
    /// Read stage names from stdin, one a line, and answer each with a JSON line.
    #[arg(long)]
    pub stdin: bool,
}

/// One timed stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// One UNet call, two rows (a request with guidance).
    Unet,
    /// The same call as a DeepCache shallow pass.
    UnetCached,
    /// The VAE encoder over the masked person and the garment (one batch of two).
    Encode,
    /// The VAE decoder, one image.
    Decode,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Unet => "unet",
            Stage::UnetCached => "unet-cached",
            Stage::Encode => "encode",
            Stage::Decode => "decode",
        }
    }
}

/// 512×384 pixels; latents of 64×48, person over garment in the UNet.
const HEIGHT: usize = 512;
const WIDTH: usize = 384;
const TIMESTEP: f64 = 501.0;

/// The model and the inputs of every stage, drawn once.
struct Bench {
    model: CatVton,
    unet_input: Tensor,
    /// The deep features a shallow pass resumes from, from one full pass.
    deep: Option<Tensor>,
    branch: usize,
    images: Tensor,
    latents: Tensor,
}

impl Bench {
    fn new(args: &StageBenchArgs) -> anyhow::Result<Self> {
        let device = Device::Cpu;
        let model = match &args.model_dir {
            Some(dir) => CatVton::load(dir, DType::F32, &device)?,
            None => CatVton::random(DType::F32, &device)?,
        };
        let (lh, lw) = (HEIGHT / 8, WIDTH / 8);
        Ok(Self {
            model,
            unet_input: Tensor::randn(0f32, 1.0, (2, 9, 2 * lh, lw), &device)?,
            deep: None,
            branch: args.branch,
            images: Tensor::rand(-1f32, 1.0, (2, 3, HEIGHT, WIDTH), &device)?,
            latents: Tensor::randn(0f32, 1.0, (1, 4, lh, lw), &device)?,
        })
    }

    /// Runs `stage` once; answers its seconds.
    fn run(&mut self, stage: Stage) -> anyhow::Result<f64> {
        let t = [TIMESTEP; 2];
        let unet = self.model.unet();
        let point = unet.split_point(self.branch);
        if stage == Stage::UnetCached && self.deep.is_none() {
            let (_, mut deep) = unet.forward_capturing(&self.unet_input, &t, &[point])?;
            self.deep = deep.pop();
        }
        let start = Instant::now();
        match stage {
            Stage::Unet => drop(unet.forward(&self.unet_input, &t)?),
            Stage::UnetCached => {
                let deep = self
                    .deep
                    .as_ref()
                    .ok_or_else(|| anyhow::Error::msg("the full pass gave no deep features"))?;
                drop(unet.forward_shallow(&self.unet_input, &t, point, deep)?)
            }
            Stage::Encode => drop(self.model.vae().encode(&self.images)?),
            Stage::Decode => drop(self.model.vae().decode(&self.latents)?),
        }
        Ok(start.elapsed().as_secs_f64())
    }
}

/// Runs `virtualfit bench stages`.
pub fn run(args: &StageBenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut bench = Bench::new(args)?;
    eprintln!("loaded in {:.1} s", started.elapsed().as_secs_f64());
    if args.stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| anyhow::Error::msg(format!("stdin: {e}")))?;
            let name = line.trim();
            if name.is_empty() {
                continue;
            }
            let stage = <Stage as clap::ValueEnum>::from_str(name, false)
                .map_err(|e| anyhow::Error::msg(format!("unknown stage `{name}`: {e}")))?;
            let seconds = bench.run(stage)?;
            println!(
                "{}",
                serde_json::json!({ "stage": stage.label(), "seconds": seconds })
            );
        }
        return Ok(());
    }
    for &stage in &args.stages {
        bench.run(stage)?;
    }
    let mut times = vec![Vec::new(); args.stages.len()];
    for _ in 0..args.iterations {
        for (i, &stage) in args.stages.iter().enumerate() {
            times[i].push(bench.run(stage)?);
        }
    }
    for (stage, mut t) in args.stages.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        println!(
            "catvton {:<12} 512x384 f32 cpu: best {:.2} s, median {:.2} s ({} runs)",
            stage.label(),
            t[0],
            t[t.len() / 2],
            t.len()
        );
    }
    Ok(())
}
