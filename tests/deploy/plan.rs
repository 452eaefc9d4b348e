//! `virtualfit plan`: from the default profile (or a `bench` JSON) and a load to a
//! ScaledObject whose simulation holds the objective, with its cost.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn virtualfit(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args(args)
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn plan_on_a_step_trace_holds_the_objective_and_prices_it() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().to_str().expect("utf-8");
    let trace = repo("tests/data/step-trace.csv");
    let (ok, text) = virtualfit(&[
        "plan",
        "--trace",
        trace.to_str().expect("utf-8"),
        "--p95",
        "1",
        "--gpu-hour-price",
        "4",
        "--spot-price",
        "1.5",
        "--out",
        out,
    ]);
    assert!(ok, "{text}");
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("plan.json")).expect("plan"))
            .expect("json");
    assert_eq!(plan["holds"], true, "{text}");
    let s = &plan["summary"];
    assert!(s["p95_s"].as_f64().is_some_and(|p| p <= 1.0), "{s}");
    let refused = s["rejected"].as_f64().expect("n") / s["requests"].as_f64().expect("n");
    assert!(refused <= 0.001, "{refused}");
    assert_eq!(s["slo_p95_s"], 1.0);
    // The step from 50 to 400 requests/s comes faster than a replica starts: the plan keeps
    // enough replicas running before it (400 / 133 per replica at full batches → 4).
    let r = &plan["replicas"];
    assert!(r["min"].as_i64().expect("min") >= 3, "{r}");
    assert!(r["max"].as_i64() >= r["at_peak"].as_i64(), "{r}");
    // Cost: spot is cheaper by the price ratio, and the table says so.
    let on_demand = plan["on_demand"]["usd_per_day"].as_f64().expect("usd");
    let spot = plan["spot"]["usd_per_day"].as_f64().expect("usd");
    assert!((spot / on_demand - 1.5 / 4.0).abs() < 1e-9);
    for row in [
        "GPU-hours per day",
        "USD per month (30 days)",
        "USD per 1,000 try-ons",
        "utilisation",
        "spot (1.50 USD/GPU-hour)",
    ] {
        assert!(text.contains(row), "{row} in:\n{text}");
    }
    assert!(dir.path().join("plot.png").is_file());

    // The written ScaledObject, simulated again by `simulate`, serves the same load as well.
    let so = dir.path().join("scaledobject.yaml");
    let again = dir.path().join("again");
    let (ok, text) = virtualfit(&[
        "simulate",
        "--scaledobject",
        so.to_str().expect("utf-8"),
        "--trace",
        trace.to_str().expect("utf-8"),
        "--out",
        again.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("USD per 1000 try-ons"), "{text}");
}

#[test]
fn plan_from_a_bench_profile_and_a_peak_and_an_unreachable_objective() {
    let dir = tempfile::tempdir().expect("dir");
    // A `bench model` point: a batch of 8 in 0.4 s on some GPU.
    let profile = dir.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"[{"model":"dmvton","device":"test GPU","batch_size":1,"median_batch_s":0.1},
            {"model":"dmvton","device":"test GPU","batch_size":8,"median_batch_s":0.4}]"#,
    )
    .expect("write");
    let out = dir.path().join("peak");
    let plan_peak_50 = |p95: &str| {
        virtualfit(&[
            "plan",
            "--profile",
            profile.to_str().expect("utf-8"),
            "--peak-rps",
            "50",
            "--p95",
            p95,
            "--out",
            out.to_str().expect("utf-8"),
        ])
    };
    let (ok, text) = plan_peak_50("3");
    assert!(ok, "{text}");
    assert!(text.contains("test GPU"), "{text}");
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).expect("plan"))
            .expect("json");
    // t(8) = 0.4 s → 20 requests/s; at 75 %, 15 per replica: 50 / 15 → 4 at peak.
    assert_eq!(
        plan["thresholds"]["capacity_rps"]
            .as_f64()
            .map(|c| c.round()),
        Some(20.0)
    );
    assert_eq!(plan["replicas"]["at_peak"], 4);

    let (ok, text) = plan_peak_50("0.5");
    assert!(!ok);
    assert!(text.contains("out of reach"), "{text}");
}
