//! `virtualfit simulate`: replays a load trace against a KEDA ScaledObject with the HPA's
//! algorithm, replicas that batch like the server, and Prometheus scrapes of their metrics.

pub mod cost;
pub mod engine;
pub mod hpa;
pub mod keda;
pub mod plan;
pub mod plot;
pub mod profile;
pub mod promql;
pub mod replica;
pub mod trace;
pub mod tsdb;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use engine::{Run, SimConfig, Summary};
use keda::ScaledObject;
use profile::Profile;
use replica::ReplicaConfig;
use trace::Trace;

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The KEDA ScaledObject (YAML; the first document of kind ScaledObject is used).
    #[arg(long, value_name = "FILE")]
    pub scaledobject: PathBuf,
    /// CSV `seconds,requests_per_second`, the rate constant from each row to the next. With a
    /// `redis-streams` trigger the requests are batch jobs, which wait in the job stream.
    #[arg(long, value_name = "FILE")]
    pub trace: PathBuf,
    /// Output directory for timeline.json and the plot.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A second ScaledObject run on the same trace; both summaries are printed side by side.
    #[arg(long, value_name = "FILE2", conflicts_with_all = ["pool", "jobs_trace"])]
    pub compare: Option<PathBuf>,
    /// A worker pool's ScaledObject, run beside --scaledobject in the same cluster: its replicas
    /// take the batch jobs of --jobs-trace from the job stream, and, as the workers of
    /// k8s/overlays/batch-pool, no `/tryon` traffic and no scrape of their metrics.
    #[arg(long, value_name = "FILE")]
    pub pool: Option<PathBuf>,
    /// Batch jobs submitted to the job stream (a CSV as --trace), beside the `/tryon` requests
    /// of --trace.
    #[arg(long, value_name = "FILE")]
    pub jobs_trace: Option<PathBuf>,
    /// The job priorities the --scaledobject replicas take from the stream, as the server's
    /// --job-priorities (`interactive` beside a pool).
    #[arg(long, value_delimiter = ',', default_value = "interactive,batch")]
    pub job_priorities: Vec<crate::batcher::Priority>,
    /// `START:END` in seconds: Prometheus scrapes nothing then (a broken scrape). Repeatable.
    #[arg(long, value_name = "START:END", value_parser = parse_outage)]
    pub scrape_outage: Vec<(f64, f64)>,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    /// Simulated seconds (default: the trace's last row plus 900 s).
    #[arg(long)]
    pub duration_s: Option<u64>,
    #[command(flatten)]
    pub prices: PriceArgs,
}

/// The simulated replicas: what one costs, how it batches and starts, and the arrivals' seed
/// (shared by `simulate` and `plan`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicaArgs {
    /// Replica profile: `virtualfit bench model --json` output (one object or an array), a
    /// sweep `{"points": [...]}`, or `{"a_s", "b_s", ...}`. Default: DM-VTON on an H100.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Seconds from pod creation to ready (GPU node, image pull, model load, warm-up).
    #[arg(long, default_value_t = 60.0)]
    pub startup_s: f64,
    /// The replicas' batching and admission, the same flags (and defaults) as `serve`.
    #[command(flatten)]
    pub batching: crate::config::BatchingArgs,
    /// The server's `--drain-timeout-s`.
    #[arg(long, default_value_t = 25.0)]
    pub drain_timeout_s: f64,
    /// Seed of the Poisson arrivals and of the routing.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl ReplicaArgs {
    /// The profile, and a simulated replica with it under these flags.
    pub fn load(&self) -> anyhow::Result<(Profile, ReplicaConfig)> {
        anyhow::ensure!(self.startup_s >= 0.0, "--startup-s must not be negative");
        let profile = load_profile(self.profile.as_deref())?;
        let rc = replica_config(
            &profile,
            &self.batching,
            self.startup_s,
            self.drain_timeout_s,
        );
        Ok((profile, rc))
    }
}

/// The price of a GPU-hour, for the cost figures.
#[derive(Debug, Clone, clap::Args)]
pub struct PriceArgs {
    /// USD per GPU-hour on demand (default: an assumed on-demand H100 price; set your
    /// provider's).
    #[arg(long, value_name = "USD", default_value_t = cost::DEFAULT_GPU_HOUR_PRICE_USD)]
    pub gpu_hour_price: f64,
    /// USD per GPU-hour on spot (or preemptible) capacity, for a second cost column.
    #[arg(long, value_name = "USD")]
    pub spot_price: Option<f64>,
}

impl PriceArgs {
    pub fn prices(&self) -> anyhow::Result<cost::Prices> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        anyhow::ensure!(
            ok(self.gpu_hour_price) && self.spot_price.is_none_or(ok),
            "prices must be dollars, 0 or more"
        );
        Ok(cost::Prices {
            on_demand_usd: self.gpu_hour_price,
            spot_usd: self.spot_price,
        })
    }
}

#[derive(Serialize)]
struct ProfileOut<'a> {
    model: &'a str,
    device: &'a str,
    source: &'a str,
    a_s: f64,
    b_s: f64,
    pre_s: f64,
    post_s: f64,
    capacity_rps: f64,
}

#[derive(Serialize)]
struct TimelineFile<'a> {
    timeline: &'a [engine::Point],
    summary: &'a Summary,
    profile: ProfileOut<'a>,
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn load_scaledobject(path: &Path) -> anyhow::Result<ScaledObject> {
    Ok(ScaledObject::from_yaml(
        &path.display().to_string(),
        &read(path)?,
    )?)
}

/// The summaries as a table, one column per run, with their cost at `prices`.
pub fn format_summaries(summaries: &[&Summary], prices: &cost::Prices) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let money = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let costs: Vec<cost::Cost> = summaries
        .iter()
        .map(|s| cost::Cost::of(s, prices.on_demand_usd))
        .collect();
    let spot: Option<Vec<cost::Cost>> = prices
        .spot_usd
        .map(|p| summaries.iter().map(|s| cost::Cost::of(s, p)).collect());
    let slo_label = format!(
        "SLO violation s (p95 > {} s)",
        summaries.first().map_or(engine::SLO_P95_S, |s| s.slo_p95_s)
    );
    let mut rows: Vec<(&str, Vec<String>)> = vec![
        (
            "scaledobject",
            summaries.iter().map(|s| s.scaledobject.clone()).collect(),
        ),
        (
            "requests",
            summaries.iter().map(|s| s.requests.to_string()).collect(),
        ),
        (
            "served",
            summaries.iter().map(|s| s.served.to_string()).collect(),
        ),
        (
            "rejected",
            summaries.iter().map(|s| s.rejected.to_string()).collect(),
        ),
        (
            "  429 queue full",
            summaries
                .iter()
                .map(|s| s.rejected_queue_full.to_string())
                .collect(),
        ),
        (
            "  504 deadline",
            summaries
                .iter()
                .map(|s| s.rejected_deadline.to_string())
                .collect(),
        ),
        (
            "  503 no endpoint",
            summaries
                .iter()
                .map(|s| s.rejected_unavailable.to_string())
                .collect(),
        ),
        (
            "  lost in drain",
            summaries
                .iter()
                .map(|s| s.lost_in_drain.to_string())
                .collect(),
        ),
        (
            &slo_label,
            summaries
                .iter()
                .map(|s| s.slo_violation_s.to_string())
                .collect(),
        ),
        (
            "p95 s (served)",
            summaries.iter().map(|s| opt(s.p95_s)).collect(),
        ),
        (
            "GPU-seconds",
            summaries
                .iter()
                .map(|s| format!("{:.0}", s.gpu_seconds))
                .collect(),
        ),
        (
            "max replicas",
            summaries
                .iter()
                .map(|s| s.max_replicas.to_string())
                .collect(),
        ),
        (
            "scale events",
            summaries
                .iter()
                .map(|s| s.scale_events.to_string())
                .collect(),
        ),
        (
            "utilisation (busy / GPU time)",
            costs.iter().map(|c| opt(c.utilisation)).collect(),
        ),
        (
            "cost USD, on demand",
            costs.iter().map(|c| money(Some(c.usd))).collect(),
        ),
        (
            "  USD per 1000 try-ons",
            costs.iter().map(|c| money(c.usd_per_1000_tryons)).collect(),
        ),
    ];
    if let Some(spot) = &spot {
        rows.push((
            "cost USD, spot",
            spot.iter().map(|c| money(Some(c.usd))).collect(),
        ));
        rows.push((
            "  USD per 1000 try-ons",
            spot.iter().map(|c| money(c.usd_per_1000_tryons)).collect(),
        ));
    }
    let label_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let col_w: Vec<usize> = (0..summaries.len())
        .map(|i| rows.iter().map(|r| r.1[i].len()).max().unwrap_or(0).max(8))
        .collect();
    let mut out = String::new();
    for (label, values) in rows {
        out.push_str(&format!("{label:<label_w$}"));
        for (v, w) in values.iter().zip(&col_w) {
            out.push_str(&format!("  {v:>w$}"));
        }
        out.push('\n');
    }
    out
}

fn write_timeline(
    path: &Path,
    run: &Run,
    profile: &Profile,
    rc: &ReplicaConfig,
) -> anyhow::Result<()> {
    let file = TimelineFile {
        timeline: &run.timeline,
        summary: &run.summary,
        profile: ProfileOut {
            model: &profile.model,
            device: &profile.device,
            source: &profile.source,
            a_s: profile.a_s,
            b_s: profile.b_s,
            pre_s: profile.pre_s,
            post_s: profile.post_s,
            capacity_rps: rc.capacity_rps(),
        },
    };
    let json = serde_json::to_string_pretty(&file)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// A simulated replica: the profile's timing under the server's batching flags.
pub fn replica_config(
    profile: &Profile,
    batching: &crate::config::BatchingArgs,
    startup_s: f64,
    drain_timeout_s: f64,
) -> ReplicaConfig {
    ReplicaConfig {
        a_s: profile.a_s,
        b_s: profile.b_s,
        max_batch_size: batching.max_batch_size as usize,
        max_batch_delay_s: batching.max_batch_delay_ms as f64 / 1000.0,
        queue_capacity: batching.queue_capacity as usize,
        request_timeout_s: batching.request_timeout_s,
        pre_s: profile.pre_s,
        post_s: profile.post_s,
        startup_s,
        drain_timeout_s,
        fb_used_mib: profile.fb_used_mib,
        fb_total_mib: profile.fb_total_mib,
    }
}

/// Reads `--profile`, or the default profile.
pub fn load_profile(path: Option<&Path>) -> anyhow::Result<Profile> {
    Ok(match path {
        Some(p) => Profile::from_json(&p.display().to_string(), &read(p)?)?,
        None => Profile::default(),
    })
}

fn parse_outage(text: &str) -> Result<(f64, f64), String> {
    let (a, b) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not START:END"))?;
    let number = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| format!("`{v}` is not a number of seconds"))
    };
    let (a, b) = (number(a)?, number(b)?);
    if a >= b {
        return Err(format!("`{text}`: the outage must end after it starts"));
    }
    Ok((a, b))
}

/// `simulate` with `--pool`, `--jobs-trace` or `--scrape-outage`: the inference Deployment and
/// a worker pool in one cluster.
fn run_cluster(
    args: &SimulateArgs,
    so: ScaledObject,
    trace: Trace,
    cfg: &SimConfig,
    profile: &Profile,
    prices: &cost::Prices,
) -> anyhow::Result<()> {
    let jobs = args
        .jobs_trace
        .as_deref()
        .map(|p| -> anyhow::Result<Trace> {
            Ok(Trace::parse(&p.display().to_string(), &read(p)?)?)
        })
        .transpose()?;
    let mut specs = vec![engine::PoolSpec {
        scaledobject: so,
        serves_requests: true,
        takes_batch_jobs: args
            .job_priorities
            .contains(&crate::batcher::Priority::Batch),
        scraped: true,
        container: "virtualfit".into(),
        pod_prefix: "virtualfit-inference".into(),
    }];
    if let Some(pool) = &args.pool {
        specs.push(engine::PoolSpec {
            scaledobject: load_scaledobject(pool)?,
            serves_requests: false,
            takes_batch_jobs: true,
            scraped: false,
            container: "batch-worker".into(),
            pod_prefix: "virtualfit-batch-worker".into(),
        });
    }
    let load = engine::Load {
        requests: Some(trace),
        batch_jobs: jobs,
    };
    let faults = engine::Faults {
        scrape_outages: args.scrape_outage.clone(),
    };
    let runs = engine::simulate_cluster(&specs, &load, cfg, &faults);
    let names = ["timeline.json", "timeline-pool.json"];
    for (run, file) in runs.iter().zip(names) {
        write_timeline(&args.out.join(file), run, profile, &cfg.replica)?;
    }
    let labelled: Vec<(&str, &Run)> = runs
        .iter()
        .zip(["inference", "pool"])
        .map(|(r, n)| (n, r))
        .collect();
    let plot = plot::write_plot(&args.out, &labelled)?;
    let summaries: Vec<&Summary> = runs.iter().map(|r| &r.summary).collect();
    print!("{}", format_summaries(&summaries, prices));
    println!(
        "wrote {}{} and {}",
        args.out.join(names[0]).display(),
        if runs.len() > 1 {
            " (+ timeline-pool.json)"
        } else {
            ""
        },
        plot.display()
    );
    Ok(())
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let so = load_scaledobject(&args.scaledobject)?;
    let other = args.compare.as_deref().map(load_scaledobject).transpose()?;
    let trace = Trace::parse(&args.trace.display().to_string(), &read(&args.trace)?)?;
    // The batching flags are range-checked by their parsers, as for `serve`.
    let (profile, rc) = args.replica.load()?;
    let duration_s = match args.duration_s {
        Some(d) => i64::try_from(d).context("--duration-s too large")?,
        None => trace.last_row_s().ceil() as i64 + 900,
    };
    let prices = args.prices.prices()?;
    let cfg = SimConfig {
        replica: rc.clone(),
        duration_s,
        seed: args.replica.seed,
        slo_p95_s: engine::SLO_P95_S,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    println!(
        "profile: {} on {} ({}): t(n) = {:.4}·n + {:.4} s, {:.0} requests/s per replica at batch {}",
        profile.model,
        profile.device,
        profile.source,
        profile.a_s,
        profile.b_s,
        rc.capacity_rps(),
        rc.max_batch_size
    );
    if args.pool.is_some() || args.jobs_trace.is_some() || !args.scrape_outage.is_empty() {
        return run_cluster(args, so, trace, &cfg, &profile, &prices);
    }
    let a = engine::simulate(&so, &trace, &cfg);
    write_timeline(&args.out.join("timeline.json"), &a, &profile, &rc)?;
    let b = other.as_ref().map(|so| engine::simulate(so, &trace, &cfg));
    let plot = match &b {
        Some(b) => {
            write_timeline(&args.out.join("timeline-compare.json"), b, &profile, &rc)?;
            plot::write_plot(&args.out, &[("A", &a), ("B", b)])?
        }
        None => plot::write_plot(&args.out, &[(so.name.as_str(), &a)])?,
    };
    let summaries: Vec<&Summary> = std::iter::once(&a.summary)
        .chain(b.as_ref().map(|b| &b.summary))
        .collect();
    println!(
        "prices: {:.2} USD per GPU-hour on demand{}",
        prices.on_demand_usd,
        prices
            .spot_usd
            .map_or(String::new(), |p| format!(", {p:.2} on spot"))
    );
    print!("{}", format_summaries(&summaries, &prices));
    println!(
        "wrote {}{} and {}",
        args.out.join("timeline.json").display(),
        if b.is_some() {
            " (+ timeline-compare.json)"
        } else {
            ""
        },
        plot.display()
    );
    Ok(())
}
