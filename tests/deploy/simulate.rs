//! `virtualfit simulate` end to end: files written, the A/B comparison, errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_virtualfit");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn simulate(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("simulate")
        .args(args)
        .output()
        .expect("running virtualfit simulate")
}

/// Runs `virtualfit simulate`, which must succeed, and answers its standard output.
fn simulate_ok(args: &[&str]) -> String {
    let o = simulate(args);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a test input");
    p.display().to_string()
}

const GUIDE_TRACE: &str = "seconds,requests_per_second\n0,0\n60,2000\n660,0\n";

#[test]
fn writes_timeline_and_plot_for_the_shipped_scaledobject() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = write(dir.path(), "trace.csv", GUIDE_TRACE);
    let out = dir.path().join("out");
    let so = repo("k8s/autoscaling/keda-gpu-scaler.yaml");
    let stdout = simulate_ok(&[
        "--scaledobject",
        so.to_str().expect("utf-8 path"),
        "--trace",
        &trace,
        "--out",
        out.to_str().expect("utf-8 path"),
        "--duration-s",
        "1500",
    ]);
    assert!(stdout.contains("GPU-seconds"), "{stdout}");

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("timeline.json")).expect("timeline.json written"),
    )
    .expect("timeline.json is JSON");
    let timeline = json["timeline"].as_array().expect("timeline array");
    // One point per 15 s sync from 0 to 1500 s.
    assert_eq!(timeline.len(), 1500 / 15 + 1);
    for key in [
        "t", "replicas", "desired", "ready", "queue", "p95_s", "rejected", "served",
    ] {
        assert!(timeline[0].get(key).is_some(), "point lacks {key}");
    }
    assert_eq!(timeline[1]["t"].as_f64(), Some(15.0));
    let max = timeline.iter().filter_map(|p| p["replicas"].as_i64()).max();
    assert_eq!(max, Some(10));
    let summary = &json["summary"];
    for key in [
        "slo_violation_s",
        "rejected",
        "gpu_seconds",
        "served",
        "requests",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}");
    }
    let requests = summary["requests"].as_u64().expect("requests");
    let served = summary["served"].as_u64().expect("served");
    let rejected = summary["rejected"].as_u64().expect("rejected");
    let in_flight = summary["in_flight_at_end"].as_u64().expect("in flight");
    assert_eq!(requests, served + rejected + in_flight);
    // About 2000 requests/s for 600 s.
    assert!((1_100_000..1_300_000).contains(&requests), "{requests}");
    let gpu_s = summary["gpu_seconds"].as_f64().expect("gpu_seconds");
    assert!(gpu_s > 1500.0 && gpu_s < 15000.0, "{gpu_s}");

    let plot = ["plot.png", "plot.svg"]
        .iter()
        .map(|f| out.join(f))
        .find(|p| p.exists())
        .expect("a plot is written");
    assert!(std::fs::metadata(&plot).expect("plot metadata").len() > 1000);
}

#[test]
fn compare_prints_two_summaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = write(dir.path(), "trace.csv", GUIDE_TRACE);
    let base = std::fs::read_to_string(repo("tests/data/keda-gpu-scaler.yaml"))
        .expect("test ScaledObject");
    let small = base
        .replace("maxReplicaCount: 10", "maxReplicaCount: 4")
        .replace("name: virtualfit-gpu-scaler", "name: capped-at-four");
    assert_ne!(small, base);
    let b = write(dir.path(), "small.yaml", &small);
    let out = dir.path().join("out");
    let stdout = simulate_ok(&[
        "--scaledobject",
        repo("tests/data/keda-gpu-scaler.yaml")
            .to_str()
            .expect("utf-8"),
        "--compare",
        &b,
        "--trace",
        &trace,
        "--out",
        out.to_str().expect("utf-8"),
        "--gpu-hour-price",
        "4",
        "--spot-price",
        "1",
    ]);
    let line = |label: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in\n{stdout}"))[label.len()..]
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(
        line("scaledobject"),
        ["virtualfit-gpu-scaler", "capped-at-four"]
    );
    assert_eq!(line("max replicas"), ["10", "4"]);
    let rejected: Vec<u64> = line("rejected")
        .iter()
        .map(|v| v.parse().expect("a count"))
        .collect();
    // Fewer replicas refuse more of the same load.
    assert!(rejected[1] > rejected[0], "{rejected:?}");
    // Each policy's cost beside its refusals: GPU-seconds at the price, spot at a quarter.
    let gpu_seconds: Vec<f64> = line("GPU-seconds")
        .iter()
        .map(|v| v.parse().expect("seconds"))
        .collect();
    let usd: Vec<f64> = line("cost USD, on demand")
        .iter()
        .map(|v| v.parse().expect("dollars"))
        .collect();
    let spot: Vec<f64> = line("cost USD, spot")
        .iter()
        .map(|v| v.parse().expect("dollars"))
        .collect();
    for i in 0..2 {
        assert!(
            (usd[i] - gpu_seconds[i] / 3600.0 * 4.0).abs() < 0.01,
            "{usd:?} {gpu_seconds:?}"
        );
        assert!((spot[i] - usd[i] / 4.0).abs() < 0.01, "{spot:?}");
    }
    assert!(usd[1] < usd[0], "the capped policy costs less: {usd:?}");
    assert_eq!(line("  USD per 1000 try-ons").len(), 2);
    assert!(out.join("timeline-compare.json").exists());
}

#[test]
fn unsupported_query_is_refused_with_its_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = write(dir.path(), "trace.csv", GUIDE_TRACE);
    let so = write(
        dir.path(),
        "guide.yaml",
        r#"apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: original-guide
spec:
  triggers:
  - type: prometheus
    metadata:
      query: avg(DCGM_FI_DEV_GPU_UTIL{namespace="virtualfit"})
      threshold: "70"
"#,
    );
    let out = dir.path().join("out");
    let o = simulate(&[
        "--scaledobject",
        &so,
        "--trace",
        &trace,
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(r#"avg(DCGM_FI_DEV_GPU_UTIL{namespace="virtualfit"})"#)
            && stderr.contains("avg"),
        "{stderr}"
    );
}

#[test]
fn a_measured_profile_changes_the_capacity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = write(
        dir.path(),
        "trace.csv",
        "seconds,requests_per_second\n0,50\n",
    );
    // A slow replica: t(n) = 0.1 n + 0.05 s, 7.3 requests/s at batch 8.
    let profile = write(
        dir.path(),
        "bench.json",
        r#"[{"model":"dmvton","device":"cuda:0","batch_size":1,"median_batch_s":0.15,"per_image_ms":150.0},
            {"model":"dmvton","device":"cuda:0","batch_size":8,"median_batch_s":0.85,"per_image_ms":106.25}]"#,
    );
    let out = dir.path().join("out");
    let stdout = simulate_ok(&[
        "--scaledobject",
        repo("tests/data/keda-gpu-scaler.yaml")
            .to_str()
            .expect("utf-8"),
        "--trace",
        &trace,
        "--out",
        out.to_str().expect("utf-8"),
        "--profile",
        &profile,
        "--duration-s",
        "600",
    ]);
    assert!(stdout.contains("t(n) = 0.1000·n + 0.0500 s"), "{stdout}");
    // 50 requests/s needs 7 such replicas; the default profile would need one.
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("timeline.json")).expect("timeline.json"),
    )
    .expect("JSON");
    let last = json["timeline"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(|p| p["replicas"].as_i64())
        .expect("replicas");
    assert!(last >= 7, "{last}");
}

#[test]
fn the_batch_pool_scaledobject_wakes_on_the_job_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 6000 batch jobs in a minute from 30 s, none before.
    let trace = write(
        dir.path(),
        "jobs.csv",
        "seconds,requests_per_second\n0,0\n30,100\n90,0\n",
    );
    let out = dir.path().join("out");
    let so = repo("k8s/overlays/batch-pool/scaledobject.yaml");
    simulate_ok(&[
        "--scaledobject",
        so.to_str().expect("utf-8 path"),
        "--trace",
        &trace,
        "--out",
        out.to_str().expect("utf-8 path"),
        "--duration-s",
        "900",
    ]);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("timeline.json")).expect("timeline.json written"),
    )
    .expect("timeline.json is JSON");
    let timeline = json["timeline"].as_array().expect("timeline array");
    let replicas: Vec<i64> = timeline
        .iter()
        .map(|p| p["replicas"].as_i64().expect("replicas"))
        .collect();
    // From zero, woken by the jobs waiting in the stream, and back to zero.
    assert_eq!(replicas.first(), Some(&0));
    assert!(replicas.iter().any(|&r| r > 0), "{replicas:?}");
    assert_eq!(replicas.last(), Some(&0), "{replicas:?}");
    assert!(timeline
        .iter()
        .any(|p| p["backlog"].as_i64().is_some_and(|b| b > 0)));
    let summary = &json["summary"];
    assert_eq!(summary["rejected"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["served"], summary["requests"], "{summary}");
}

// ---------------------------------------------------------------------------------------------
// The shipped ScaledObjects, rendered by `kubectl kustomize`, in the simulator: batch work
// against the interactive Deployment, a step load, and a broken scrape.

use crate::common;

use common::k8s::{kind, name, render, seq};
use virtualfit::batcher::Priority;
use virtualfit::simulate::engine::{simulate_cluster, Faults, Load, PoolSpec, Run, SimConfig};
use virtualfit::simulate::keda::ScaledObject;
use virtualfit::simulate::profile::Profile;
use virtualfit::simulate::replica::ReplicaConfig;
use virtualfit::simulate::trace::Trace;

/// The ScaledObject `so_name` of a rendered overlay.
fn rendered_scaledobject(objs: &[serde_yaml::Value], so_name: &str) -> ScaledObject {
    let doc = objs
        .iter()
        .find(|o| kind(o) == "ScaledObject" && name(o) == so_name)
        .unwrap_or_else(|| panic!("no ScaledObject {so_name}"));
    let text = serde_yaml::to_string(doc).expect("YAML");
    ScaledObject::from_yaml(so_name, &text).expect("the simulator reads it")
}

/// The job priorities a rendered Deployment's replicas take (`VIRTUALFIT_JOB_PRIORITIES`, the
/// server's default when unset).
fn job_priorities(objs: &[serde_yaml::Value], deployment: &str) -> Vec<Priority> {
    let dep = objs
        .iter()
        .find(|o| kind(o) == "Deployment" && name(o) == deployment)
        .unwrap_or_else(|| panic!("no Deployment {deployment}"));
    let container = &seq(dep["spec"]["template"]["spec"].get("containers"))[0];
    let value = seq(container.get("env"))
        .iter()
        .find(|e| e["name"].as_str() == Some("VIRTUALFIT_JOB_PRIORITIES"))
        .and_then(|e| e["value"].as_str().map(str::to_string))
        .unwrap_or_else(|| "interactive,batch".into());
    value
        .split(',')
        .map(|p| p.trim().parse().expect("a priority"))
        .collect()
}

/// A replica of `Profile::default()` (dmvton on an H100) with the server's default batching,
/// or a slower one (`per_item_s` a job) where a backlog must outlast pod start-ups.
fn sim_config(duration_s: i64, per_item_s: Option<f64>) -> SimConfig {
    let mut profile = Profile::default();
    if let Some(a) = per_item_s {
        profile.a_s = a;
    }
    SimConfig::server_defaults(&profile, duration_s, 11)
}

/// The inference Deployment and the batch pool of `k8s/overlays/batch-pool`, as rendered.
fn batch_pool_cluster() -> (Vec<PoolSpec>, ScaledObject) {
    let objs = render("overlays/batch-pool");
    let inference = rendered_scaledobject(&objs, "virtualfit-inference-gpu-scaler");
    let pool = rendered_scaledobject(&objs, "virtualfit-batch-worker-scaler");
    let specs = vec![
        PoolSpec {
            scaledobject: inference,
            serves_requests: true,
            takes_batch_jobs: job_priorities(&objs, "virtualfit-inference")
                .contains(&Priority::Batch),
            scraped: true,
            container: "virtualfit".into(),
            pod_prefix: "virtualfit-inference".into(),
        },
        PoolSpec {
            scaledobject: pool.clone(),
            serves_requests: false,
            takes_batch_jobs: job_priorities(&objs, "virtualfit-batch-worker")
                .contains(&Priority::Batch),
            scraped: false,
            container: "batch-worker".into(),
            pod_prefix: "virtualfit-batch-worker".into(),
        },
    ];
    (specs, pool)
}

/// The replica count at each change: (time, count).
fn replicas_over_time(run: &Run) -> Vec<(f64, i64)> {
    let mut out: Vec<(f64, i64)> = Vec::new();
    for p in &run.timeline {
        if out.last().is_none_or(|&(_, r)| r != p.replicas) {
            out.push((p.t, p.replicas));
        }
    }
    out
}

/// `jobs` batch jobs submitted within a minute from 60 s, and no `/tryon` traffic.
fn batch_backlog(jobs: f64) -> Load {
    Load {
        requests: None,
        batch_jobs: Some(
            Trace::from_rows(vec![(0.0, 0.0), (60.0, jobs / 60.0), (120.0, 0.0)]).expect("trace"),
        ),
    }
}

#[test]
fn a_batch_backlog_leaves_the_inference_deployment_at_its_minimum_and_wakes_the_pool() {
    let (specs, pool_so) = batch_pool_cluster();
    assert!(
        !specs[0].takes_batch_jobs && specs[1].takes_batch_jobs,
        "beside the pool, inference replicas leave batch jobs to the workers"
    );
    let lag_target = match pool_so.triggers[0].target {
        virtualfit::simulate::hpa::MetricTarget::AverageValue(v) => v,
        other => panic!("the pool's trigger is an AverageValue: {other:?}"),
    };
    // A worker runs 12.5 jobs per second (80 ms each at full batches), so a backlog outlasts
    // the workers' start-up; 3 hours is time enough to drain it and return to zero.
    let cfg = sim_config(3 * 3600, Some(0.08));
    for jobs in [5000.0, 20000.0] {
        let runs = simulate_cluster(&specs, &batch_backlog(jobs), &cfg, &Faults::default());
        let (inference, pool) = (&runs[0], &runs[1]);
        let min = specs[0].scaledobject.min_replica_count;
        assert!(
            inference.timeline.iter().all(|p| p.replicas == min),
            "{jobs} jobs: the inference Deployment stays at {min}: {:?}",
            replicas_over_time(inference)
        );
        assert_eq!(inference.summary.requests, 0, "no batch job ran on it");
        // The pool goes as far as the HPA's proposal for the backlog, ceil(lag / lagCount),
        // within its maximum (5000 jobs: 3 workers; 20000: the maximum of 4), then back to 0.
        let want = ((jobs / lag_target).ceil() as i64).min(pool_so.max_replica_count);
        assert_eq!(
            pool.summary.max_replicas,
            want,
            "{jobs} jobs: {:?}",
            replicas_over_time(pool)
        );
        assert_eq!(pool.timeline.last().map(|p| p.replicas), Some(0));
        assert_eq!(pool.summary.rejected, 0, "{:?}", pool.summary);
        assert_eq!(
            pool.summary.served as f64, pool.summary.requests as f64,
            "every job ran on the pool"
        );
        assert_eq!(pool.summary.in_flight_at_end, 0);
        eprintln!(
            "{jobs} batch jobs: inference max {} replicas, pool max {}, pool GPU-hours {:.2}",
            inference.summary.max_replicas,
            pool.summary.max_replicas,
            pool.summary.gpu_seconds / 3600.0
        );
    }
    // Interactive load alone scales the inference Deployment as before, and no worker wakes.
    let interactive = Load {
        requests: Some(
            Trace::from_rows(vec![(0.0, 0.0), (60.0, 600.0), (900.0, 0.0)]).expect("trace"),
        ),
        batch_jobs: None,
    };
    let runs = simulate_cluster(
        &specs,
        &interactive,
        &sim_config(1800, None),
        &Faults::default(),
    );
    assert!(runs[0].summary.max_replicas >= 4, "{:?}", runs[0].summary);
    assert_eq!(runs[1].summary.max_replicas, 0);
}

/// The base ScaledObject alone, as `kubectl apply -k k8s/` installs it.
fn base_scaledobject() -> ScaledObject {
    rendered_scaledobject(&render(""), "virtualfit-inference-gpu-scaler")
}

fn inference_only(so: ScaledObject) -> Vec<PoolSpec> {
    vec![PoolSpec::single(&so)]
}

/// A replica of k8s/overlays/catvton as the simulator's whole-batch model sees it: 4 requests
/// sampled together (8 UNet rows with guidance) in T_k = 36 s, the published A100 figure with no
/// batching gain (docs/catvton.md), with the overlay's queue, timeout, drain and start-up.
fn catvton_config(duration_s: i64) -> SimConfig {
    SimConfig {
        replica: ReplicaConfig {
            a_s: 9.0,
            b_s: 0.0,
            max_batch_size: 4,
            max_batch_delay_s: 0.002,
            queue_capacity: 16,
            request_timeout_s: 300.0,
            pre_s: 0.5,
            post_s: 0.5,
            startup_s: 240.0,
            drain_timeout_s: 180.0,
            fb_used_mib: 20_000.0,
            fb_total_mib: 81_559.0,
        },
        duration_s,
        seed: 5,
        slo_p95_s: 60.0,
    }
}

/// The catvton overlay's ScaledObject under a step load, and the replicas over time.
pub fn catvton_step(so: ScaledObject) -> Run {
    let cfg = catvton_config(2 * 3600);
    // From 0.01 to 0.25 requests/s at 10 minutes: 2.25 replicas' capacity, 3 replicas at the
    // 75 % target.
    let load = Load {
        requests: Some(Trace::from_rows(vec![(0.0, 0.01), (600.0, 0.25)]).expect("trace")),
        batch_jobs: None,
    };
    simulate_cluster(&inference_only(so), &load, &cfg, &Faults::default()).remove(0)
}

#[test]
fn a_step_load_settles_instead_of_ratcheting_to_the_maximum() {
    let so = rendered_scaledobject(
        &render("overlays/catvton"),
        "virtualfit-inference-gpu-scaler",
    );
    let max = so.max_replica_count;
    let run = catvton_step(so);
    let counts = replicas_over_time(&run);
    assert!(
        run.summary.max_replicas < max,
        "the step asks for a few replicas, not the maximum {max}: {counts:?}"
    );
    // Over the last half hour: at least what the load needs at full capacity (0.25 / (4 / 36 s)
    // = 2.25) and no more than twice what it needs at the target (3).
    let tail: Vec<i64> = run
        .timeline
        .iter()
        .filter(|p| p.t >= 5400.0)
        .map(|p| p.replicas)
        .collect();
    assert!(tail.iter().all(|&r| (3..=6).contains(&r)), "{counts:?}");
}

#[test]
fn a_broken_scrape_holds_the_replicas_and_the_scaledobject_keeps_working() {
    let so = base_scaledobject();
    assert!(
        so.fallback.is_some(),
        "the base ScaledObject has a fallback"
    );
    let cfg = sim_config(2400, None);
    let capacity = cfg.replica.capacity_rps();
    let load = Load {
        requests: Some(Trace::from_rows(vec![(0.0, 3.0 * capacity)]).expect("trace")),
        batch_jobs: None,
    };
    // Prometheus scrapes nothing for 15 minutes from 600 s, while the load goes on.
    let faults = Faults {
        scrape_outages: vec![(600.0, 1500.0)],
    };
    let run = &simulate_cluster(&inference_only(so), &load, &cfg, &faults)[0];
    let before = run
        .timeline
        .iter()
        .rfind(|p| p.t < 600.0)
        .map(|p| p.replicas)
        .expect("a point before the outage");
    assert!(before >= 3, "the load needs replicas: {before}");
    let during: Vec<&virtualfit::simulate::engine::Point> = run
        .timeline
        .iter()
        .filter(|p| (600.0..1500.0).contains(&p.t))
        .collect();
    assert!(
        during.iter().all(|p| p.replicas >= before),
        "no scale-down while the metrics are missing: {:?}",
        replicas_over_time(run)
    );
    // The triggers fail during the outage (no series), then KEDA's fallback stands in: the
    // ScaledObject keeps answering the HPA.
    assert!(during
        .iter()
        .any(|p| p.metrics.values().all(|v| v.is_some())));
    // After it, scaling follows the load again, and every request was answered or refused
    // with a status, none lost.
    assert!(run.timeline.last().is_some_and(|p| p.replicas >= 3));
    let s = &run.summary;
    assert_eq!(
        s.requests,
        s.served + s.rejected + s.in_flight_at_end,
        "{s:?}"
    );
}
