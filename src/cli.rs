//! The `virtualfit` command line: `serve` (the default), `tryon`, `download`, `simulate`,
//! `bench`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::{LogFormat, ModelArgs, ServeArgs};
use crate::imaging::{self, OutputFormat};
use crate::models::registry::OptionFlags;
use crate::pipeline::{self, ImageParts, OutputChoice};

#[derive(Debug, Parser)]
#[command(
    name = "virtualfit",
    version,
    about = "Virtual try-on inference server"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve` flags, when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at start-up and matched once: the variants' sizes cost nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve(ServeArgs),
    /// Render one try-on offline and write it to a file.
    Tryon(TryOnArgs),
    /// Fetch a model's weights from the Hugging Face Hub into its cache, verified, and exit.
    Download(DownloadArgs),
    /// Check the CUDA kernels, the DM-VTON parity and the forward speed on a GPU.
    GpuCheck(crate::gpu_check::GpuCheckArgs),
    /// Replay a load trace against a KEDA ScaledObject with the HPA's algorithm.
    Simulate(crate::simulate::SimulateArgs),
    /// Plan capacity: replicas, ScaledObject thresholds and cost for a load and a p95 objective.
    Plan(crate::simulate::plan::PlanArgs),
    /// Benchmarks: HTTP load (`http`, `sweep`) and raw model speed (`model`).
    Bench(crate::bench::BenchArgs),
}

/// `virtualfit tryon`.
#[derive(Debug, Args)]
pub struct TryOnArgs {
    /// Person photo (JPEG, PNG or WebP).
    #[arg(long)]
    pub person: PathBuf,
    /// Garment product photo.
    #[arg(long)]
    pub cloth: PathBuf,
    /// Garment mask (white = garment), for models that read one; computed from the garment
    /// photo when absent.
    #[arg(long)]
    pub cloth_mask: Option<PathBuf>,
    /// The area to repaint on the person photo (white), for models that read one; drawn from
    /// the options when absent.
    #[arg(long)]
    pub person_mask: Option<PathBuf>,
    /// Output file; `.png` writes PNG, `.jpg`/`.jpeg` JPEG.
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// The model's request options, as the model declares them.
    #[command(flatten)]
    pub options: OptionFlags,
    /// Largest accepted image, in pixels.
    #[arg(
        long,
        env = "VIRTUALFIT_MAX_IMAGE_PIXELS",
        default_value_t = 36_000_000
    )]
    pub max_image_pixels: u64,
    /// JPEG quality.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
}

/// `virtualfit download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Also lay the files out in this folder as `--model-source DIR` reads them (hard links to
    /// the cache where the file system allows, else copies).
    #[arg(long)]
    pub to: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Parses the command line and runs it.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Tryon(args)) => {
            init_logging(LogFormat::Text, "warn");
            tryon(&args)
        }
        Some(Command::Download(args)) => {
            init_logging(LogFormat::Text, "info");
            download(&args)
        }
        Some(Command::Simulate(args)) => crate::simulate::run(&args),
        Some(Command::Plan(args)) => crate::simulate::plan::run(&args),
        Some(Command::GpuCheck(args)) => {
            init_logging(LogFormat::Text, "warn");
            crate::gpu_check::run(&args)
        }
        Some(Command::Bench(args)) => {
            init_logging(LogFormat::Text, "warn");
            crate::bench::run(args).map_err(anyhow::Error::from)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format, "info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(crate::server::serve(args));
    // Blocking work still running (a decode) must not hold the exit past the drain.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Sets up `tracing` logs on stdout; `RUST_LOG` overrides the level.
pub fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A bar per file on a terminal, log lines elsewhere (a container's log).
fn progress_reporter() -> crate::hub::Reporter {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        crate::hub::Reporter::bars()
    } else {
        crate::hub::Reporter::Log
    }
}

/// `virtualfit download`: the model's files into the hub cache, verified (nothing is fetched
/// that the cache already holds verified), with a progress bar per file on a terminal and log
/// lines elsewhere; with `--to`, also in the local-folder layout.
pub fn download(args: &DownloadArgs) -> anyhow::Result<()> {
    let choice = args.model.choice();
    for licence in choice.licences() {
        tracing::info!("weights licence: {licence}");
    }
    let downloaded = choice.download(&progress_reporter(), args.to.as_deref())?;
    let bytes: u64 = downloaded
        .files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    tracing::info!(
        files = downloaded.files.len(),
        bytes,
        "weights verified in the hub cache ({:.2} GB)",
        bytes as f64 / 1e9
    );
    if let Some(dir) = &args.to {
        tracing::info!(
            dir = %dir.display(),
            written = downloaded.written.len(),
            "weights laid out for --model-source {}",
            dir.display()
        );
    }
    Ok(())
}

fn read(path: &PathBuf, what: &str) -> anyhow::Result<bytes::Bytes> {
    std::fs::read(path)
        .map(Into::into)
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// `virtualfit tryon`: one pair through the model, written to `--output`.
pub fn tryon(args: &TryOnArgs) -> anyhow::Result<()> {
    let Some(format) = OutputFormat::from_path(&args.output) else {
        bail!(
            "cannot tell the output format of {}: use a .png, .jpg or .jpeg name",
            args.output.display()
        );
    };
    let optional = |path: &Option<PathBuf>, what: &str| -> anyhow::Result<Option<bytes::Bytes>> {
        path.as_ref().map(|p| read(p, what)).transpose()
    };
    let parts = ImageParts {
        person: read(&args.person, "person photo")?,
        cloth: read(&args.cloth, "garment photo")?,
        garment_mask: optional(&args.cloth_mask, "garment mask")?,
        person_mask: optional(&args.person_mask, "person mask")?,
    };
    for (bytes, what, path) in [
        (Some(&parts.person), "person photo", Some(&args.person)),
        (Some(&parts.cloth), "garment photo", Some(&args.cloth)),
        (
            parts.garment_mask.as_ref(),
            "garment mask",
            args.cloth_mask.as_ref(),
        ),
        (
            parts.person_mask.as_ref(),
            "person mask",
            args.person_mask.as_ref(),
        ),
    ] {
        if let (Some(bytes), Some(path)) = (bytes, path) {
            imaging::probe(bytes, args.max_image_pixels)
                .with_context(|| format!("the {what} {} is not usable", path.display()))?;
        }
    }
    let choice = args.model.choice();
    let family = choice.family()?;
    let options = args
        .options
        .options(family, &args.model.option_limits())
        .map_err(anyhow::Error::msg)?;
    for seed in options.seeds(&family.options(&args.model.option_limits())) {
        eprintln!("seed {seed}");
    }
    let device = args.model.open_device()?;
    let masker = choice.masker(&device, &progress_reporter())?;
    family
        .check_masker_options(&options, masker.is_some())
        .map_err(anyhow::Error::msg)?;
    let input = pipeline::prepare_now_masked(
        family,
        masker.as_deref(),
        &parts,
        options,
        args.max_image_pixels,
    )
    .context("the images are not usable")?;
    // Its logs show warnings only: a download's progress goes to bars on a terminal.
    let model = choice.load(&device, &progress_reporter())?;
    let image = crate::models::run_one(&model, &input)?;
    let output = OutputChoice {
        format,
        quality: args.jpeg_quality,
    };
    let bytes = pipeline::encode_answer(&image, input.content, output)
        .map_err(|e| anyhow::anyhow!("cannot encode the answer: {e}"))?;
    std::fs::write(&args.output, bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(())
}
