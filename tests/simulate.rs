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
