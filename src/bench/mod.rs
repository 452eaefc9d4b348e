//! `virtualfit bench`: the HTTP load generator (`http`), the throughput–latency sweep (`sweep`),
//! the raw model timing (`model`) and a diffusion model's stages (`stages`, the model's own). A
//! run's load shape and samples live in `load`, the server-side figures read from `/metrics`
//! in `scrape`, and the report built from both in `report`.

pub mod http;
pub mod load;
pub mod model;
pub mod plot;
pub mod report;
pub mod scrape;
pub mod sweep;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

/// Why a benchmark could not run or could not write its results.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot draw the plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error("model input: {0}")]
    Input(#[from] candle_core::Error),
    #[error("image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// `virtualfit bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load a running server's /tryon and report throughput, latency and server-side batching.
    Http(HttpArgs),
    /// Run `bench http` over a list of concurrencies or rates: the throughput–latency curve.
    Sweep(sweep::SweepArgs),
    /// Time a model's forward pass on random (or fixture) inputs, without HTTP.
    Model(model::ModelBenchArgs),
    /// Time a diffusion model's networks stage by stage (UNet step, VAE encode and decode) at
    /// 512×384, on the CPU.
    Stages(crate::models::StageBenchArgs),
}

/// How open-loop arrivals are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Evenly spaced, `1/R` apart.
    Constant,
    /// A Poisson process: exponential gaps with mean `1/R`.
    Poisson,
}

/// Target, inputs and length of a load run (shared by `bench http` and `bench sweep`).
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("inputs").required(true).args(["data", "person"])))]
pub struct LoadArgs {
    /// Server base URL: requests go to `<URL>/tryon` and metrics are read from `<URL>/metrics`.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// The /metrics URL when the server serves it on another address (`--metrics-bind`).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Folder laid out like assets/samples: person/, cloth/, optional cloth-mask/ and pairs.txt.
    #[arg(long, conflicts_with_all = ["person", "cloth", "cloth_mask"])]
    pub data: Option<PathBuf>,
    /// A single person photo (with --cloth) instead of --data.
    #[arg(long, requires = "cloth")]
    pub person: Option<PathBuf>,
    /// A single garment photo (with --person).
    #[arg(long, requires = "person")]
    pub cloth: Option<PathBuf>,
    /// The garment mask for --cloth; without it the server computes the mask.
    #[arg(long, requires = "cloth")]
    pub cloth_mask: Option<PathBuf>,
    /// Do not send the masks of --data's cloth-mask/ (the server then computes them).
    #[arg(long)]
    pub no_masks: bool,
    /// How long to send requests, like `30s` or `2m` (default 10s unless --requests is given).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Send exactly this many requests instead of running for a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// Load the server this long first, without counting (e.g. `5s`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Open loop: how arrivals are spaced.
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    pub arrival: Arrival,
    /// Open loop: most requests in flight at once; later arrivals wait for a slot, and their
    /// latency still counts from their scheduled time.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: u64,
    /// Per-request timeout (counted as an error).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Seed of the Poisson arrivals (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// An extra form field sent with every request, `NAME=VALUE` (repeatable), e.g. a model's option
    /// `steps=20` or `resolution=512x384`.
    #[arg(long = "field", value_parser = parse_field)]
    pub fields: Vec<(String, String)>,
}

/// `NAME=VALUE`.
fn parse_field(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err("a field is NAME=VALUE".into()),
    }
}

impl LoadArgs {
    /// How the measured phase ends.
    pub fn stop(&self) -> load::Stop {
        match (self.requests, self.duration) {
            (Some(n), _) => load::Stop::Requests(n),
            (None, Some(d)) => load::Stop::Duration(d),
            (None, None) => load::Stop::Duration(Duration::from_secs(10)),
        }
    }

    /// The /tryon URL.
    pub fn tryon_url(&self) -> String {
        format!("{}/tryon", self.url.trim_end_matches('/'))
    }

    /// The /metrics URL.
    pub fn metrics_url(&self) -> String {
        self.metrics_url
            .clone()
            .unwrap_or_else(|| format!("{}/metrics", self.url.trim_end_matches('/')))
    }

    /// Reads the request payloads into memory.
    pub fn payloads(&self) -> Result<Vec<Payload>, BenchError> {
        match (&self.data, &self.person, &self.cloth) {
            (Some(dir), _, _) => load_dataset(dir, !self.no_masks),
            (None, Some(person), Some(cloth)) => Ok(vec![Payload {
                person: ImageFile::read(person)?,
                cloth: ImageFile::read(cloth)?,
                mask: match &self.cloth_mask {
                    Some(m) => Some(ImageFile::read(m)?),
                    None => None,
                },
            }]),
            _ => Err(BenchError::Usage(
                "give --data DIR, or --person and --cloth".into(),
            )),
        }
    }
}

/// `virtualfit bench http`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("load").args(["concurrency", "rate"])))]
pub struct HttpArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Closed loop: this many clients, each sending its next request when the last is answered
    /// (the default, with 1 client).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: Option<u64>,
    /// Open loop: this many requests per second, whatever the answers (see --arrival).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency distribution and the throughput over time (`.png` or `.svg`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

impl HttpArgs {
    pub fn mode(&self) -> Result<load::Load, BenchError> {
        match (self.concurrency, self.rate) {
            (_, Some(rate)) => load::Load::open(rate, self.load.arrival),
            (Some(n), None) => Ok(load::Load::Closed {
                concurrency: n as usize,
            }),
            (None, None) => Ok(load::Load::Closed { concurrency: 1 }),
        }
    }
}

/// One image file read into memory.
#[derive(Debug, Clone)]
pub struct ImageFile {
    pub name: String,
    pub bytes: bytes::Bytes,
    pub mime: &'static str,
}

impl ImageFile {
    pub fn read(path: &Path) -> Result<ImageFile, BenchError> {
        let bytes = std::fs::read(path).map_err(|source| BenchError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let mime = match ext.as_str() {
            "jpg" | "jpeg" => "image/jpeg",
            "png" => "image/png",
            "webp" => "image/webp",
            _ => "application/octet-stream",
        };
        Ok(ImageFile {
            name: path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("image")
                .to_string(),
            bytes: bytes.into(),
            mime,
        })
    }
}

/// One /tryon request's images.
#[derive(Debug, Clone)]
pub struct Payload {
    pub person: ImageFile,
    pub cloth: ImageFile,
    pub mask: Option<ImageFile>,
}

impl Payload {
    /// The multipart form of the request, with the extra text `fields`.
    pub fn form(&self, fields: &[(String, String)]) -> reqwest::multipart::Form {
        let part = |f: &ImageFile| {
            let p = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::from(f.bytes.clone()),
                f.bytes.len() as u64,
            )
            .file_name(f.name.clone());
            p.mime_str(f.mime)
                .unwrap_or_else(|_| reqwest::multipart::Part::bytes(f.bytes.to_vec()))
        };
        let mut form = reqwest::multipart::Form::new()
            .part("person_image", part(&self.person))
            .part("cloth_image", part(&self.cloth));
        if let Some(m) = &self.mask {
            form = form.part("cloth_mask", part(m));
        }
        for (name, value) in fields {
            form = form.text(name.clone(), value.clone());
        }
        form
    }
}

/// The pairs of a folder laid out like assets/samples: `pairs.txt` lines `person cloth`, or, without it,
/// person/ and cloth/ matched in name order.
pub fn load_dataset(dir: &Path, with_masks: bool) -> Result<Vec<Payload>, BenchError> {
    let pairs_file = dir.join("pairs.txt");
    let pairs: Vec<(String, String)> = if pairs_file.exists() {
        let text = std::fs::read_to_string(&pairs_file).map_err(|source| BenchError::Read {
            path: pairs_file.clone(),
            source,
        })?;
        text.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                Some((it.next()?.to_string(), it.next()?.to_string()))
            })
            .collect()
    } else {
        let people = list(&dir.join("person"))?;
        let cloths = list(&dir.join("cloth"))?;
        people.into_iter().zip(cloths).collect()
    };
    if pairs.is_empty() {
        return Err(BenchError::Usage(format!(
            "{} has no person/garment pairs",
            dir.display()
        )));
    }
    pairs
        .iter()
        .map(|(p, c)| {
            let mask_path = dir.join("cloth-mask").join(c);
            Ok(Payload {
                person: ImageFile::read(&dir.join("person").join(p))?,
                cloth: ImageFile::read(&dir.join("cloth").join(c))?,
                mask: if with_masks && mask_path.is_file() {
                    Some(ImageFile::read(&mask_path)?)
                } else {
                    None
                },
            })
        })
        .collect()
}

fn list(dir: &Path) -> Result<Vec<String>, BenchError> {
    let entries = std::fs::read_dir(dir).map_err(|source| BenchError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// Writes a value as pretty JSON.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)
}

/// Runs `virtualfit bench ...`.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    match args.command {
        BenchCommand::Http(a) => {
            let rt = runtime()?;
            let run = rt.block_on(http::run(&a.load, a.mode()?))?;
            println!("{}", run.report.summary());
            if let Some(path) = &a.json {
                write_json(path, &run.report)?;
            }
            if let Some(path) = &a.plot {
                plot::http_plot(path, &run)?;
            }
            Ok(())
        }
        BenchCommand::Sweep(a) => {
            let rt = runtime()?;
            rt.block_on(sweep::run(&a))
        }
        BenchCommand::Model(a) => model::run(&a),
        BenchCommand::Stages(a) => {
            crate::models::run_stage_bench(&a).map_err(|e| BenchError::Usage(format!("{e:#}")))
        }
    }
}
