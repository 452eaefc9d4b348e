//! `virtualfit plan`: from a measured replica and a load to the replicas it needs, the
//! ScaledObject that scales them, and what they cost; checked by simulating the load.
//!
//! The formulas (docs/capacity.md has them with a worked case):
//! - A replica runs batches of up to B requests in t_B = a·B + b seconds: its capacity is
//!   μ = B / t_B requests per second.
//! - A request that finds q requests queued on its replica waits for the batch in progress
//!   (at most t_B), then for ⌈(q+1)/B⌉ batches, its own included:
//!   L(q) = pre + t_B·(1 + ⌈(q+1)/B⌉) + post. The longest queue that keeps L under the SLO is
//!   Q_slo = B·⌊(SLO − pre − post)/t_B − 1⌋ − 1 (and below the queue capacity).
//! - Triggers, per replica: queue length Q_slo/2, so that a replica at the threshold can take
//!   as much again while a new one starts; active requests u·μ·(1.5·t_B + post) (Little's law
//!   at the target utilisation u: the requests a replica holds while serving u·μ); backlog
//!   seconds (SLO − pre − post − t_B)/2: the queued work a request may wait behind and still
//!   meet the SLO after its own batch, halved as the queue threshold is.
//! - Replicas at peak: ⌈λ_peak / (u·μ)⌉. A new replica serves R = start-up + 30 s (KEDA's poll
//!   and the HPA's sync) after the load calls for it; minReplicaCount is the least count whose
//!   full capacity covers, at every moment t, the load at t + R (when the replicas that the
//!   load at t calls for would not).

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::cost::{Cost, Prices};
use super::engine::{self, Run, SimConfig, Summary};
use super::keda::ScaledObject;
use super::profile::Profile;
use super::replica::ReplicaConfig;
use super::trace::Trace;

/// The ScaledObject that plans start from: the one `kubectl apply -k k8s/` installs.
const BASE_SCALEDOBJECT: &str = include_str!("../../k8s/autoscaling/keda-gpu-scaler.yaml");
/// Seconds between a load change and the HPA acting on it: KEDA's poll, then the HPA's sync.
const REACTION_S: f64 = 30.0;
/// How many times the plan adds headroom when its simulation misses the SLO.
const REVISIONS: usize = 6;
/// The `--peak-rps` load: a ramp from zero to the peak over this many seconds, then the peak
/// for as long again twice.
const RAMP_S: f64 = 1800.0;

/// `virtualfit plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// The peak load in requests per second (planned as a 30-minute ramp to it, then an hour
    /// at it).
    #[arg(
        long,
        value_name = "N",
        required_unless_present = "trace",
        conflicts_with = "trace"
    )]
    pub peak_rps: Option<f64>,
    /// The load as a CSV `seconds,requests_per_second` (as for `simulate`).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// The latency objective: p95 of the whole request, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub p95: f64,
    #[command(flatten)]
    pub prices: super::PriceArgs,
    /// The share of its capacity a replica is planned to run at.
    #[arg(long, default_value_t = 0.75)]
    pub target_utilization: f64,
    /// The largest share of requests the plan may refuse (429, 503, 504) in its simulation.
    #[arg(long, default_value_t = 0.001)]
    pub max_refused_share: f64,
    /// The replicas: `--profile` (`bench sweep` or `bench model` JSON; default DM-VTON on an
    /// H100), start-up, batching and the simulation's seed.
    #[command(flatten)]
    pub replica: super::ReplicaArgs,
    /// Output directory: scaledobject.yaml, plan.json, timeline.json and the plot.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// The per-replica figures the triggers are set from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// t_B: the time of a full batch.
    pub batch_time_s: f64,
    /// μ: requests per second at full batches.
    pub capacity_rps: f64,
    /// u·μ: the load one replica is planned for.
    pub target_rps: f64,
    /// Q_slo: the longest queue whose last request still meets the SLO.
    pub queue_for_slo: u64,
    /// The queue-length trigger's threshold.
    pub queue: u64,
    /// The active-requests trigger's threshold.
    pub active: u64,
    /// The backlog-seconds trigger's threshold.
    pub backlog_s: f64,
}

/// The thresholds that keep a replica's p95 under `slo_s` at utilisation `u`.
pub fn thresholds(rc: &ReplicaConfig, slo_s: f64, u: f64) -> Result<Thresholds, String> {
    if !(u > 0.0 && u <= 1.0) {
        return Err(format!("the target utilisation must be in (0, 1], not {u}"));
    }
    let b = rc.max_batch_size.max(1);
    let t_b = rc.batch_time(b);
    let mu = b as f64 / t_b;
    let fixed = rc.pre_s + rc.post_s;
    // The epsilon keeps a whole number of batches whole despite rounding.
    let batches = ((slo_s - fixed) / t_b - 1.0 + 1e-9).floor();
    if batches < 1.0 {
        return Err(format!(
            "a p95 of {slo_s} s is out of reach: even with an empty queue a request takes {:.3} s \
             (decoding and encoding {fixed:.3} s, the batch in progress and its own, {t_b:.3} s each)",
            fixed + 2.0 * t_b
        ));
    }
    let queue_for_slo = ((b as f64 * batches) as u64 - 1).min(rc.queue_capacity.max(1) as u64 - 1);
    let active = (u * mu * (1.5 * t_b + rc.post_s)).round().max(1.0) as u64;
    Ok(Thresholds {
        batch_time_s: t_b,
        capacity_rps: mu,
        target_rps: u * mu,
        queue_for_slo,
        queue: (queue_for_slo / 2).max(1),
        active,
        backlog_s: (slo_s - fixed - t_b) / 2.0,
    })
}

/// Replica counts for a load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Replicas {
    pub at_peak: i64,
    pub min: i64,
    pub max: i64,
}

/// The replicas `trace` needs at `t` per replica rate `target_rps`, and the minimum that covers
/// the rise of the load within `reaction_s` (checked every second over the trace).
pub fn replicas(trace: &Trace, th: &Thresholds, reaction_s: f64) -> Replicas {
    let need = |rate: f64| (rate / th.target_rps).ceil().max(1.0) as i64;
    let at_peak = need(trace.peak_rps());
    let mut min = 1;
    let end = trace.last_row_s() + reaction_s;
    let mut t = 0.0;
    while t <= end {
        let later = trace.rate_at(t + reaction_s);
        let covers = (later / th.capacity_rps).ceil() as i64;
        if need(trace.rate_at(t)) < covers {
            min = min.max(covers);
        }
        t += 1.0;
    }
    let min = min.min(at_peak);
    let spare = ((at_peak as f64) * 0.2).ceil() as i64;
    Replicas {
        at_peak,
        min,
        max: (at_peak + spare.max(1)).max(min),
    }
}

/// The base ScaledObject with the plan's replica bounds and thresholds.
pub fn scaledobject_yaml(th: &Thresholds, r: &Replicas) -> anyhow::Result<String> {
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(BASE_SCALEDOBJECT).context("the base ScaledObject")?;
    let spec = doc
        .get_mut("spec")
        .and_then(|s| s.as_mapping_mut())
        .context("the base ScaledObject has no spec")?;
    spec.insert("minReplicaCount".into(), r.min.into());
    spec.insert("maxReplicaCount".into(), r.max.into());
    let triggers = spec
        .get_mut("triggers")
        .and_then(|t| t.as_sequence_mut())
        .context("the base ScaledObject has no triggers")?;
    for trigger in triggers {
        let name = trigger
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        let threshold = match name.as_str() {
            "queue-length" => th.queue.to_string(),
            "active-requests" => th.active.to_string(),
            "backlog-seconds" => format_seconds(th.backlog_s),
            _ => continue,
        };
        if let Some(meta) = trigger.get_mut("metadata").and_then(|m| m.as_mapping_mut()) {
            meta.insert("threshold".into(), threshold.into());
        }
    }
    let body = serde_yaml::to_string(&doc)?;
    Ok(format!(
        "# Written by `virtualfit plan` from k8s/autoscaling/keda-gpu-scaler.yaml: replicas \
         {min}..{max} ({peak} at peak), per replica queue-length {q}, active-requests {a}, \
         backlog-seconds {p} s.\n{body}",
        min = r.min,
        max = r.max,
        peak = r.at_peak,
        q = th.queue,
        a = th.active,
        p = format_seconds(th.backlog_s),
    ))
}

fn format_seconds(s: f64) -> String {
    let text = format!("{s:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The `--peak-rps` load: a ramp to the peak, then the peak.
pub fn peak_trace(peak: f64) -> Option<Trace> {
    let steps = 30;
    let mut rows: Vec<(f64, f64)> = (0..steps)
        .map(|i| {
            let t = RAMP_S * i as f64 / steps as f64;
            (t, peak * (i + 1) as f64 / steps as f64)
        })
        .collect();
    rows.push((RAMP_S, peak));
    rows.push((3.0 * RAMP_S, peak));
    Trace::from_rows(rows)
}

/// What `plan.json` holds.
#[derive(Serialize)]
struct PlanFile<'a> {
    profile: &'a str,
    slo_p95_s: f64,
    target_utilization: f64,
    reaction_s: f64,
    thresholds: &'a Thresholds,
    replicas: &'a Replicas,
    summary: &'a Summary,
    prices: &'a Prices,
    on_demand: Cost,
    spot: Option<Cost>,
    holds: bool,
}

/// Whether a run holds the SLO with few enough refusals.
fn holds(s: &Summary, slo_s: f64, max_refused: f64) -> bool {
    let refused = s.rejected as f64 / s.requests.max(1) as f64;
    s.p95_s.is_some_and(|p| p <= slo_s) && refused <= max_refused
}

fn simulate(
    th: &Thresholds,
    r: &Replicas,
    trace: &Trace,
    cfg: &SimConfig,
) -> anyhow::Result<(String, Run)> {
    let yaml = scaledobject_yaml(th, r)?;
    let so = ScaledObject::from_yaml("plan", &yaml)?;
    Ok((yaml, engine::simulate(&so, trace, cfg)))
}

pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.p95 > 0.0 && args.p95.is_finite(),
        "--p95 must be seconds above 0"
    );
    let (profile, rc) = args.replica.load()?;
    let prices = args.prices.prices()?;
    let trace = match (&args.trace, args.peak_rps) {
        (Some(path), _) => Trace::parse(
            &path.display().to_string(),
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        (None, Some(peak)) => {
            anyhow::ensure!(peak > 0.0 && peak.is_finite(), "--peak-rps must be above 0");
            peak_trace(peak).context("the peak load")?
        }
        (None, None) => anyhow::bail!("give --peak-rps or --trace"),
    };
    let th = thresholds(&rc, args.p95, args.target_utilization).map_err(anyhow::Error::msg)?;
    let reaction_s = args.replica.startup_s + REACTION_S;
    let mut plan = replicas(&trace, &th, reaction_s);
    let cfg = SimConfig {
        replica: rc.clone(),
        duration_s: trace.last_row_s().ceil() as i64 + 900,
        seed: args.replica.seed,
        slo_p95_s: args.p95,
    };
    let mut th_used = th.clone();
    let (mut yaml, mut run) = simulate(&th_used, &plan, &trace, &cfg)?;
    let mut revisions = 0;
    // Missed: start more replicas, and react to smaller queues.
    while !holds(&run.summary, args.p95, args.max_refused_share) && revisions < REVISIONS {
        revisions += 1;
        let step = ((plan.at_peak as f64) * 0.25).ceil().max(1.0) as i64;
        plan.min = (plan.min + step).min(plan.at_peak);
        plan.max = plan.max.max(plan.min) + 1;
        th_used.queue = (th_used.queue / 2).max(1);
        th_used.active = (th_used.active * 3 / 4).max(1);
        (yaml, run) = simulate(&th_used, &plan, &trace, &cfg)?;
    }
    let ok = holds(&run.summary, args.p95, args.max_refused_share);

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let so_path = args.out.join("scaledobject.yaml");
    std::fs::write(&so_path, &yaml).with_context(|| format!("writing {}", so_path.display()))?;
    super::write_timeline(&args.out.join("timeline.json"), &run, &profile, &rc)?;
    let plot = super::plot::write_plot(&args.out, &[("plan", &run)])?;
    let on_demand = Cost::of(&run.summary, prices.on_demand_usd);
    let spot = prices.spot_usd.map(|p| Cost::of(&run.summary, p));
    let file = PlanFile {
        profile: &profile.source,
        slo_p95_s: args.p95,
        target_utilization: args.target_utilization,
        reaction_s,
        thresholds: &th_used,
        replicas: &plan,
        summary: &run.summary,
        prices: &prices,
        on_demand,
        spot,
        holds: ok,
    };
    let plan_path = args.out.join("plan.json");
    std::fs::write(&plan_path, serde_json::to_string_pretty(&file)?)
        .with_context(|| format!("writing {}", plan_path.display()))?;

    print!(
        "{}",
        report(
            &profile,
            &rc,
            &th_used,
            &plan,
            &run.summary,
            &prices,
            args,
            revisions
        )
    );
    println!(
        "wrote {}, {}, {} and {}",
        so_path.display(),
        plan_path.display(),
        args.out.join("timeline.json").display(),
        plot.display()
    );
    anyhow::ensure!(
        ok,
        "no plan within {REVISIONS} revisions holds a p95 of {} s with at most {:.2} % refused; \
         see the timeline, or allow a higher --p95",
        args.p95,
        args.max_refused_share * 100.0
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    profile: &Profile,
    rc: &ReplicaConfig,
    th: &Thresholds,
    plan: &Replicas,
    s: &Summary,
    prices: &Prices,
    args: &PlanArgs,
    revisions: usize,
) -> String {
    let b = rc.max_batch_size;
    let refused = s.rejected as f64 / s.requests.max(1) as f64 * 100.0;
    let mut out = format!(
        "profile: {} on {} ({})\n\
         replica: a batch of {b} in {:.1} ms, {:.0} requests/s; planned at {:.0} % = {:.0} requests/s\n\
         p95 ≤ {} s holds while at most {} requests wait per replica\n\
         replicas: {} at peak; minReplicaCount {}, maxReplicaCount {} (start-up {} s + 30 s to react)\n\
         triggers per replica: queue-length {}, active-requests {}, backlog-seconds {} s (gpu-busy 0.7, as shipped)\n",
        profile.model,
        profile.device,
        profile.source,
        th.batch_time_s * 1e3,
        th.capacity_rps,
        args.target_utilization * 100.0,
        th.target_rps,
        args.p95,
        th.queue_for_slo,
        plan.at_peak,
        plan.min,
        plan.max,
        args.replica.startup_s,
        th.queue,
        th.active,
        format_seconds(th.backlog_s),
    );
    out.push_str(&format!(
        "simulated: {} requests, p95 {} s, {refused:.3} % refused (at most {:.2} %), {} s over the p95 objective, {}{}\n\n",
        s.requests,
        s.p95_s.map_or("-".into(), |p| format!("{p:.3}")),
        args.max_refused_share * 100.0,
        s.slo_violation_s,
        if holds(s, args.p95, args.max_refused_share) { "holds" } else { "MISSES" },
        if revisions > 0 { format!(" (after {revisions} revisions adding headroom)") } else { String::new() },
    ));
    let on_demand = Cost::of(s, prices.on_demand_usd);
    let spot = prices.spot_usd.map(|p| (p, Cost::of(s, p)));
    let money = |v: Option<f64>| {
        v.map_or("-".to_string(), |v| {
            if v < 1.0 {
                format!("{v:.4}")
            } else {
                format!("{v:.2}")
            }
        })
    };
    let mut header = format!("| | on demand ({:.2} USD/GPU-hour) |", prices.on_demand_usd);
    let mut rule = "| --- | --- |".to_string();
    if let Some((p, _)) = spot {
        header.push_str(&format!(" spot ({p:.2} USD/GPU-hour) |"));
        rule.push_str(" --- |");
    }
    out.push_str(&header);
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    let share = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0} %", v * 100.0));
    type Row = (&'static str, fn(&Cost) -> Option<f64>, bool);
    let rows: [Row; 5] = [
        (
            "GPU-hours per day (the simulated load, repeated)",
            |c| Some(c.gpu_hours_per_day),
            false,
        ),
        ("USD per day", |c| Some(c.usd_per_day), false),
        ("USD per month (30 days)", |c| Some(c.usd_per_month), false),
        ("USD per 1,000 try-ons", |c| c.usd_per_1000_tryons, false),
        ("utilisation (busy / GPU time)", |c| c.utilisation, true),
    ];
    for (label, f, is_share) in rows {
        let cell = |c: &Cost| if is_share { share(f(c)) } else { money(f(c)) };
        out.push_str(&format!("| {label} | {} |", cell(&on_demand)));
        if let Some((_, c)) = &spot {
            out.push_str(&format!(" {} |", cell(c)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(a_s: f64, b_s: f64, batch: usize, pre_s: f64, post_s: f64) -> ReplicaConfig {
        ReplicaConfig {
            a_s,
            b_s,
            max_batch_size: batch,
            max_batch_delay_s: 0.002,
            queue_capacity: 1000,
            request_timeout_s: 30.0,
            pre_s,
            post_s,
            startup_s: 60.0,
            drain_timeout_s: 25.0,
            fb_used_mib: 0.0,
            fb_total_mib: 0.0,
        }
    }

    #[test]
    fn thresholds_match_hand_computed_cases() {
        // t_8 = 0.1·8 + 0.2 = 1 s, μ = 8/s. SLO 5 s, pre + post = 0.5 s:
        // ⌊(5 − 0.5)/1 − 1⌋ = 3 batches → Q_slo = 8·3 − 1 = 23, queue threshold 11.
        // Active at u = 0.5: 0.5·8·(1.5·1 + 0.25) = 7.
        let th = thresholds(&replica(0.1, 0.2, 8, 0.25, 0.25), 5.0, 0.5).expect("reachable");
        assert_eq!(th.batch_time_s, 1.0);
        assert_eq!(th.capacity_rps, 8.0);
        assert_eq!(th.target_rps, 4.0);
        assert_eq!((th.queue_for_slo, th.queue, th.active), (23, 11, 7));
        // Check L(q) at the bound and one past it: 0.5 + 1·(1 + ⌈24/8⌉) = 4.5 ≤ 5, and
        // 0.5 + 1·(1 + ⌈25/8⌉) = 5.5 > 5.
        let l = |q: u64| 0.5 + 1.0 * (1.0 + ((q + 1) as f64 / 8.0).ceil());
        assert!(l(th.queue_for_slo) <= 5.0 && l(th.queue_for_slo + 1) > 5.0);

        // Batch 1: t_1 = 0.03 + 0.02 = 0.05 s, μ = 20/s; SLO 0.5 s, pre + post = 0.1 s:
        // ⌊0.4/0.05 − 1⌋ = 7 → Q_slo = 6, queue 3; active at 0.75: 0.75·20·(0.075 + 0.05) = 1.875 → 2.
        let th = thresholds(&replica(0.03, 0.02, 1, 0.05, 0.05), 0.5, 0.75).expect("reachable");
        assert_eq!((th.queue_for_slo, th.queue, th.active), (6, 3, 2));

        // The queue capacity bounds the queue: past it requests get 429, whatever the SLO.
        let mut rc = replica(0.1, 0.2, 8, 0.25, 0.25);
        rc.queue_capacity = 10;
        assert_eq!(thresholds(&rc, 60.0, 0.5).expect("ok").queue_for_slo, 9);

        // Out of reach: pre + post + two batches = 0.5 + 2 > 2 s.
        let err = thresholds(&replica(0.1, 0.2, 8, 0.25, 0.25), 2.0, 0.5).unwrap_err();
        assert!(err.contains("out of reach"), "{err}");
        assert!(thresholds(&replica(0.1, 0.2, 8, 0.25, 0.25), 5.0, 1.5).is_err());
    }

    #[test]
    fn replicas_cover_the_peak_and_the_rise_within_the_reaction_time() {
        let th = thresholds(&replica(0.1, 0.2, 8, 0.25, 0.25), 5.0, 0.5).expect("ok");
        // 4 requests/s per replica planned, 8 at most.
        // Steady 20/s: 5 at peak, no rise: min 1, max 5 + 1.
        let flat = Trace::from_rows(vec![(0.0, 20.0)]).expect("trace");
        assert_eq!(
            replicas(&flat, &th, 90.0),
            Replicas {
                at_peak: 5,
                min: 1,
                max: 6
            }
        );
        // A step from 4/s to 40/s: one replica runs before it (4/s planned), and the 40/s
        // must be served by full capacity until new ones come: ⌈40/8⌉ = 5 at minimum.
        let step = Trace::from_rows(vec![(0.0, 4.0), (600.0, 40.0)]).expect("trace");
        assert_eq!(
            replicas(&step, &th, 90.0),
            Replicas {
                at_peak: 10,
                min: 5,
                max: 12
            }
        );
        // A slow ramp (0 to 40/s over an hour) rises 1/s in 90 s: the planned headroom
        // absorbs it, so the minimum stays 1.
        let rows: Vec<(f64, f64)> = (0..=60)
            .map(|i| (i as f64 * 60.0, i as f64 * 40.0 / 60.0))
            .collect();
        let ramp = Trace::from_rows(rows).expect("trace");
        assert_eq!(replicas(&ramp, &th, 90.0).min, 1);
    }

    #[test]
    fn the_scaledobject_carries_the_plan_and_parses() {
        let th = thresholds(&replica(0.1, 0.2, 8, 0.25, 0.25), 2.5, 0.5).expect("ok");
        let r = Replicas {
            at_peak: 5,
            min: 2,
            max: 6,
        };
        let yaml = scaledobject_yaml(&th, &r).expect("yaml");
        let so = ScaledObject::from_yaml("plan", &yaml).expect("parses");
        assert_eq!((so.min_replica_count, so.max_replica_count), (2, 6));
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
        let threshold = |name: &str| {
            doc["spec"]["triggers"]
                .as_sequence()
                .and_then(|ts| ts.iter().find(|t| t["name"] == name))
                .and_then(|t| t["metadata"]["threshold"].as_str())
                .map(str::to_string)
        };
        assert_eq!(threshold("queue-length").as_deref(), Some("3"));
        assert_eq!(
            threshold("active-requests").as_deref(),
            Some(th.active.to_string().as_str())
        );
        // (2.5 − 0.5 − 1) / 2.
        assert_eq!(threshold("backlog-seconds").as_deref(), Some("0.5"));
        assert_eq!(threshold("gpu-busy").as_deref(), Some("0.7"));
    }
}
