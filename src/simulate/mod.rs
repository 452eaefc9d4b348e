//! `virtualfit simulate`: replays a load trace against a KEDA ScaledObject with the HPA's
//! algorithm, replicas that batch like the server, and Prometheus scrapes of their metrics.

pub mod engine;
pub mod hpa;
pub mod keda;
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
    /// Replica profile: `virtualfit bench model --json` output (one object or an array), a
    /// sweep `{"points": [...]}`, or `{"a_s", "b_s", ...}`. Default: dmvton on an H100.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// A second ScaledObject run on the same trace; both summaries are printed side by side.
    #[arg(long, value_name = "FILE2")]
    pub compare: Option<PathBuf>,
    /// Seconds from pod creation to ready (GPU node, image pull, model load, warm-up).
    #[arg(long, default_value_t = 60.0)]
    pub startup_s: f64,
    /// The replicas' batching and admission, the same flags (and defaults) as `serve`.
    #[command(flatten)]
    pub batching: crate::config::BatchingArgs,
    /// The server's `--drain-timeout-s`.
    #[arg(long, default_value_t = 25.0)]
    pub drain_timeout_s: f64,
    /// Simulated seconds (default: the trace's last row plus 900 s).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Seed of the Poisson arrivals and of the routing.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
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

/// The summaries as a table, one column per run.
pub fn format_summaries(summaries: &[&Summary]) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let rows: Vec<(&str, Vec<String>)> = vec![
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
            "SLO violation s (p95 > 5 s)",
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
    ];
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

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let so = load_scaledobject(&args.scaledobject)?;
    let other = args.compare.as_deref().map(load_scaledobject).transpose()?;
    let trace = Trace::parse(&args.trace.display().to_string(), &read(&args.trace)?)?;
    let profile = match &args.profile {
        Some(p) => Profile::from_json(&p.display().to_string(), &read(p)?)?,
        None => Profile::default(),
    };
    // The batching flags are range-checked by their parsers, as for `serve`.
    anyhow::ensure!(args.startup_s >= 0.0, "--startup-s must not be negative");
    let batching = &args.batching;
    let rc = ReplicaConfig {
        a_s: profile.a_s,
        b_s: profile.b_s,
        max_batch_size: batching.max_batch_size as usize,
        max_batch_delay_s: batching.max_batch_delay_ms as f64 / 1000.0,
        queue_capacity: batching.queue_capacity as usize,
        request_timeout_s: batching.request_timeout_s,
        pre_s: profile.pre_s,
        post_s: profile.post_s,
        startup_s: args.startup_s,
        drain_timeout_s: args.drain_timeout_s,
        fb_used_mib: profile.fb_used_mib,
        fb_total_mib: profile.fb_total_mib,
    };
    let duration_s = match args.duration_s {
        Some(d) => i64::try_from(d).context("--duration-s too large")?,
        None => trace.last_row_s().ceil() as i64 + 900,
    };
    let cfg = SimConfig {
        replica: rc.clone(),
        duration_s,
        seed: args.seed,
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
    print!("{}", format_summaries(&summaries));
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
