//! `virtualfit bench sweep`: `bench http` at each of a list of concurrencies or rates, written as
//! the throughput–latency curve (JSON and plot).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args};
use serde::{Deserialize, Serialize};

use super::http;
use super::load::Load;
use super::report::{HttpReport, SCHEMA_VERSION};
use super::{plot, write_json, BenchError, LoadArgs};

/// `virtualfit bench sweep`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("levels").required(true).args(["concurrency", "rate"])))]
pub struct SweepArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Closed-loop levels, e.g. `1,2,4,8,16`.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: Vec<u64>,
    /// Open-loop levels in requests per second, e.g. `5,10,20,40`.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Idle time between levels, so one level's queue does not spill into the next.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub pause: Duration,
    /// Write the curve (every level's full report) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw latency percentiles against throughput (`.png` or `.svg`).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// The `bench sweep` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub schema_version: u32,
    pub url: String,
    /// `closed` or `open`.
    pub mode: String,
    /// One `bench http` report per level, in the order given.
    pub points: Vec<HttpReport>,
}

impl SweepArgs {
    fn levels(&self) -> Result<Vec<Load>, BenchError> {
        if !self.rate.is_empty() {
            self.rate
                .iter()
                .map(|&r| Load::open(r, self.load.arrival))
                .collect()
        } else {
            Ok(self
                .concurrency
                .iter()
                .map(|&c| Load::Closed {
                    concurrency: c as usize,
                })
                .collect())
        }
    }
}

/// Runs every level, printing one line each, then writes the JSON and the plot.
pub async fn run(args: &SweepArgs) -> Result<(), BenchError> {
    let levels = args.levels()?;
    let mut points = Vec::with_capacity(levels.len());
    println!(
        "{:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
        "level", "ok/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "batch", "non-2xx"
    );
    for (i, load) in levels.iter().enumerate() {
        if i > 0 && !args.pause.is_zero() {
            tokio::time::sleep(args.pause).await;
        }
        let run = http::run(&args.load, *load).await?;
        let r = run.report;
        let level = match load {
            Load::Closed { concurrency } => format!("c={concurrency}"),
            Load::Open { rate, .. } => format!("r={rate}"),
        };
        let ok: u64 = r
            .status_counts
            .iter()
            .filter(|(k, _)| k.starts_with('2'))
            .map(|(_, v)| v)
            .sum();
        println!(
            "{:>10} {:>10.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>8}",
            level,
            r.throughput_rps,
            r.latency_ms.p50,
            r.latency_ms.p95,
            r.latency_ms.p99,
            r.latency_ms.max,
            r.server
                .as_ref()
                .and_then(|s| s.mean_batch_size)
                .map_or("-".to_string(), |b| format!("{b:.2}")),
            r.requests_sent - ok
        );
        points.push(r);
    }
    let report = SweepReport {
        schema_version: SCHEMA_VERSION,
        url: args.load.url.clone(),
        mode: if args.rate.is_empty() {
            "closed"
        } else {
            "open"
        }
        .to_string(),
        points,
    };
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if let Some(path) = &args.plot {
        plot::sweep_plot(path, &report.points)?;
    }
    Ok(())
}
