//! PromQL semantics of k8s/ with `promtool` (Debian package `prometheus`): the alert rules and
//! their unit tests (k8s/tests/alerts.test.yaml), and the shipped KEDA trigger queries with 1, 3
//! and 8 pods (k8s/tests/triggers.test.yaml, written by k8s/tests/make_triggers_test.py), and the dashboard's cost row
//! (k8s/tests/cost.test.yaml).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::k8s::*;

#[test]
fn alert_rules_pass_promtool() {
    let rules = k8s_dir().join("monitoring/alerts.rules.yaml");
    let out = promtool(&["check", "rules", rules.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    let tests = k8s_dir().join("tests/alerts.test.yaml");
    let out = promtool(&["test", "rules", tests.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    // Each alert has a test case in which it fires.
    let rules_doc = load_one(&rules);
    let alerts: BTreeSet<String> = seq(rules_doc.get("groups"))
        .iter()
        .flat_map(|g| seq(g.get("rules")))
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    let tests_doc = load_one(&tests);
    let firing: BTreeSet<String> = seq(tests_doc.get("tests"))
        .iter()
        .flat_map(|t| seq(t.get("alert_rule_test")))
        .filter(|c| !seq(c.get("exp_alerts")).is_empty())
        .filter_map(|c| c["alertname"].as_str().map(str::to_string))
        .collect();
    assert_eq!(alerts, firing, "every alert needs a firing test case");
    for want in [
        "VirtualFitGPUMemoryHigh",
        "VirtualFitGPUTemperatureHigh",
        "VirtualFitQueueBacklog",
        "VirtualFitHighErrorRate",
        "VirtualFitAtMaxReplicas",
        "VirtualFitOOMRecoveries",
        "VirtualFitBatchCapLowered",
        "VirtualFitGPUsIdleAtMinReplicas",
        "VirtualFitGPUsIdleAboveMinReplicas",
    ] {
        assert!(alerts.contains(want), "alert {want}");
    }
}

#[test]
fn the_dashboards_cost_row_computes_cost_idle_share_and_throughput() {
    let path = k8s_dir().join("tests/cost.test.yaml");
    let out = promtool(&["test", "rules", path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    // The expressions tested are the dashboard's own, and every panel of the row is tested.
    let shipped = shipped_expressions();
    let doc = load_one(&path);
    let tested: BTreeSet<String> = seq(doc.get("tests"))
        .iter()
        .flat_map(|t| seq(t.get("promql_expr_test")))
        .map(|c| c["expr"].as_str().expect("expr").to_string())
        .collect();
    for expr in &tested {
        assert!(shipped.contains(expr), "not a dashboard expression: {expr}");
    }
    let cost_panels: Vec<String> = shipped
        .iter()
        .filter(|e| {
            e.contains("virtualfit_price_per_gpu_hour_usd")
                || e.contains("virtualfit_model_busy_seconds_total")
        })
        .filter(|e| !e.contains("10m"))
        .cloned()
        .collect();
    assert!(cost_panels.len() >= 2, "{cost_panels:?}");
    for e in &cost_panels {
        assert!(tested.contains(e), "untested cost expression: {e}");
    }
}

#[test]
fn trigger_queries_pass_promtool_with_one_three_and_eight_pods() {
    let objs = render("");
    let so = find(&objs, "ScaledObject", "virtualfit-inference-gpu-scaler");
    let shipped: BTreeMap<String, String> = triggers(so)
        .iter()
        .filter(|t| t["type"].as_str() == Some("prometheus"))
        .map(|t| {
            (
                t["metadata"]["query"].as_str().expect("query").to_string(),
                t["metricType"]
                    .as_str()
                    .unwrap_or("AverageValue")
                    .to_string(),
            )
        })
        .collect();
    let path = k8s_dir().join("tests/triggers.test.yaml");
    let doc = load_one(&path);
    // (pods, query) -> expected sample counts, and the P95 values expected.
    let mut covered: BTreeSet<(usize, String)> = BTreeSet::new();
    let mut p95_zero = BTreeSet::new();
    for group in seq(doc.get("tests")) {
        let pods: BTreeSet<String> = seq(group.get("input_series"))
            .iter()
            .map(|s| s["series"].as_str().expect("series").to_string())
            .filter(|s| s.contains("namespace=\"virtualfit\""))
            .filter_map(|s| {
                let i = s.find("pod=\"")? + 5;
                Some(s[i..i + s[i..].find('"')?].to_string())
            })
            .collect();
        for case in seq(group.get("promql_expr_test")) {
            let expr = case["expr"].as_str().expect("expr").to_string();
            assert!(
                shipped.contains_key(&expr),
                "{}: `{expr}` is not a shipped trigger query",
                path.display()
            );
            let samples = seq(case.get("exp_samples"));
            if !pods.is_empty() {
                assert_eq!(
                    samples.len(),
                    1,
                    "{expr}: exactly one sample with {} pods",
                    pods.len()
                );
                covered.insert((pods.len(), expr.clone()));
            }
            if shipped[&expr] == "Value" {
                assert_eq!(samples.len(), 1, "{expr}: a P95 result even with no pods");
                if samples[0]["value"].as_f64() == Some(0.0) {
                    p95_zero.insert(pods.len());
                }
            }
        }
    }
    let percentiles = shipped.values().any(|t| t == "Value");
    for n in [1, 3, 8] {
        for q in shipped.keys() {
            assert!(
                covered.contains(&(n, q.clone())),
                "no case with {n} pods for {q}"
            );
        }
        assert!(
            !percentiles || p95_zero.contains(&n),
            "no zero-traffic P95 case with {n} pods"
        );
    }
    let out = promtool(&["test", "rules", path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
}
