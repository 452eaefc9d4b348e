//! Checks of the Kubernetes manifests in `k8s/`, as `kubectl kustomize` renders them.
//!
//! - Every manifest parses, every kustomization renders, every manifest is applied by some
//!   kustomization (except the one-off pods of k8s/jobs/).
//! - The core kinds validate against the Kubernetes 1.37 schemas (`kubernetes-validate`), every
//!   ScaledObject against KEDA's CRD schema (k8s/tests/schemas/), plus the checks a schema misses:
//!   what the triggers mean, the drain budget, the restricted Pod Security Standard, the GPUs the
//!   image supports, the spot overlay, the pre-pull DaemonSet, the opt-in prometheus-adapter, the
//!   jobs store (its folder, the opt-in Redis and its NetworkPolicy, the batch pool's
//!   redis-streams trigger on the server's stream and group), the catvton overlay's timeouts
//!   and thresholds for a model of seconds per request, every Deployment's progress deadline
//!   against its image pull and startup allowance, the liveness probe against the server's
//!   stall bound, the dashboard's units, the Dockerfile's shell.
//! - Closed by default: the servers require the API key from its Secret; the NetworkPolicies,
//!   evaluated for every pod, admit the API port from the ingress controller's namespace only and
//!   let pods reach DNS, Redis where it runs and public HTTPS only with webhooks on, never the
//!   metadata endpoint or the Kubernetes API; Redis' password is on no command line (its pod's
//!   commands run against a real redis-server).
//! - The DCGM exporter runs under the NVIDIA runtime on every GPU node the servers admit, in a
//!   release for the 580 driver; every `DCGM_FI_*` name is one it exports.
//!
//! PromQL: tests/k8s_promql.rs; a real Prometheus and live servers: tests/k8s_live.rs. Tools
//! (from PATH): tests/common/k8s.rs.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::Output;

use common::k8s::*;
use serde_yaml::Value;

// ---------------------------------------------------------------------------------------------
// Manifests parse, kustomizations render, nothing is orphaned

/// Where the one-off pods that k8s/README.md has users create live (`kubectl apply -f`).
const JOBS: &str = "jobs";

fn job_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    files_under(&k8s_dir().join(JOBS), &mut files);
    files.retain(|f| f.extension().is_some_and(|e| e == "yaml"));
    assert!(files.len() >= 2, "the models loader and the load test");
    files
}

#[test]
fn every_manifest_parses_and_is_applied_by_a_kustomization() {
    let mut all = Vec::new();
    files_under(&k8s_dir(), &mut all);
    let mut referenced = BTreeSet::new();
    for dir in kustomization_dirs() {
        referenced_files(&dir, &mut referenced);
        // Every kustomization renders, components included (they also apply on their own).
        let objs = render_dir(&dir);
        assert!(!objs.is_empty(), "{} renders nothing", dir.display());
        let mut seen = BTreeSet::new();
        for o in &objs {
            assert!(!kind(o).is_empty() && !name(o).is_empty(), "{o:?}");
            assert!(
                seen.insert((
                    kind(o).to_string(),
                    namespace(o).to_string(),
                    name(o).to_string()
                )),
                "{}: duplicate {} {}/{}",
                dir.display(),
                kind(o),
                namespace(o),
                name(o)
            );
        }
    }
    let mut manifests = 0;
    for f in &all {
        let rel = f.strip_prefix(k8s_dir()).expect("under k8s/");
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "yaml" | "yml" => {
                let docs = load_docs(f);
                assert!(!docs.is_empty(), "{} is empty", f.display());
            }
            "json" => {
                let content = fs::read_to_string(f).expect("read");
                serde_json::from_str::<serde_json::Value>(&content)
                    .unwrap_or_else(|e| panic!("{} does not parse: {e}", f.display()));
            }
            _ => continue,
        }
        if rel.starts_with("tests") || rel.starts_with(JOBS) {
            continue;
        }
        manifests += 1;
        assert!(
            referenced.contains(&canonical(f)),
            "{} is not applied by any kustomization",
            rel.display()
        );
    }
    assert!(
        manifests >= 15,
        "expected the k8s/ manifests, found {manifests}"
    );
    // The top level applies the whole setup.
    let top = render("");
    for (k, n) in [
        ("Namespace", "virtualfit"),
        ("Deployment", "virtualfit-inference"),
        ("Service", "inference-service"),
        ("PodDisruptionBudget", "virtualfit-inference"),
        ("NetworkPolicy", "virtualfit-inference"),
        ("ScaledObject", "virtualfit-inference-gpu-scaler"),
        ("DaemonSet", "nvidia-dcgm-exporter"),
        ("Service", "nvidia-dcgm-exporter"),
        ("ConfigMap", "virtualfit-prometheus"),
        ("ConfigMap", "virtualfit-alert-rules"),
        ("ConfigMap", "virtualfit-grafana-dashboard"),
    ] {
        find(&top, k, n);
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas

const CORE_KINDS: &[&str] = &[
    "Namespace",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "DaemonSet",
    "StatefulSet",
    "ServiceAccount",
    "NetworkPolicy",
    "ConfigMap",
    "PersistentVolumeClaim",
    "ClusterRole",
    "ClusterRoleBinding",
    "RoleBinding",
    "APIService",
    "Pod",
    "PriorityClass",
    "Ingress",
];

fn kubernetes_validate(objs: &[Value]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("manifests.yaml");
    // As JSON documents: the validator reads YAML 1.1, where an unquoted `yes` (which a YAML
    // 1.2 writer leaves unquoted, as in Redis' `--appendonly yes`) would be a boolean.
    let stream = objs
        .iter()
        .map(|o| serde_json::to_string(o).expect("to JSON"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    fs::write(&file, stream).expect("write manifests");
    // Make sure the module is there before reading its verdict.
    python("import kubernetes_validate", &[], None);
    run_tool(
        "kubernetes-validate",
        &["--strict", "--no-warn", file.to_str().expect("utf-8 path")],
        None,
        PYTHON_HINT,
    )
}

#[test]
fn core_kinds_validate_against_the_kubernetes_schemas() {
    let mut sets: Vec<(String, Vec<Value>)> = TARGETS
        .iter()
        .chain(OPTIONAL_COMPONENTS)
        .map(|t| (format!("k8s/{t}"), render(t)))
        .collect();
    for f in job_files() {
        sets.push((f.display().to_string(), load_docs(&f)));
    }
    for (what, objs) in sets {
        let objs: Vec<Value> = objs
            .into_iter()
            .filter(|o| kind(o) != "ScaledObject")
            .collect();
        for o in &objs {
            assert!(
                CORE_KINDS.contains(&kind(o)),
                "{what}: {} is neither a core kind nor a ScaledObject",
                kind(o)
            );
        }
        let out = kubernetes_validate(&objs);
        assert!(out.status.success(), "{what}:\n{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let passed = stdout
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(
            passed,
            objs.len(),
            "{what}: not every object validated:\n{stdout}"
        );
    }
    // The validator does reject a broken Deployment (a misspelt field).
    let mut broken = find(&render("base"), "Deployment", "virtualfit-inference").clone();
    let container = &mut broken["spec"]["template"]["spec"]["containers"][0];
    let resources = container
        .as_mapping_mut()
        .expect("container")
        .remove("resources")
        .expect("resources");
    container
        .as_mapping_mut()
        .expect("container")
        .insert("resource".into(), resources);
    let out = kubernetes_validate(&[broken]);
    assert!(
        !out.status.success(),
        "a misspelt field must fail:\n{}",
        text(&out)
    );
}

const KEDA_VALIDATE: &str = r#"
import json, sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
kind = crd["spec"]["names"]["kind"]
assert kind == sys.argv[2], (kind, sys.argv[2])
schema = next(v for v in crd["spec"]["versions"] if v["name"] == sys.argv[3])["schema"]["openAPIV3Schema"]
validator = jsonschema.Draft7Validator(schema)
bad = 0
for doc in json.load(sys.stdin):
    assert doc["kind"] == kind, (doc["kind"], kind)
    for e in sorted(validator.iter_errors(doc), key=str):
        print(doc["metadata"]["name"], "/".join(map(str, e.path)), e.message)
        bad += 1
print("validated", bad, "errors")
sys.exit(1 if bad else 0)
"#;

fn keda_validate(objs: &[&Value]) -> Output {
    keda_validate_kind(objs, "keda.sh_scaledobjects.yaml", "ScaledObject")
}

/// Validates KEDA objects of one kind against the CRD in `file` (k8s/tests/schemas/).
fn keda_validate_kind(objs: &[&Value], file: &str, crd_kind: &str) -> Output {
    crd_validate(objs, file, crd_kind, "v1alpha1")
}

/// Validates objects of one kind against version `version` of the CRD in `file`
/// (k8s/tests/schemas/).
fn crd_validate(objs: &[&Value], file: &str, crd_kind: &str, version: &str) -> Output {
    let json = serde_json::to_string(objs).expect("to JSON");
    let crd = keda_schema(file);
    python(
        KEDA_VALIDATE,
        &[crd.to_str().expect("utf-8 path"), crd_kind, version],
        Some(&json),
    )
}

/// The ScaledObjects of every target, with the objects rendered beside them, and the one
/// `virtualfit plan` writes for a step trace, in place of the shipped one.
fn scaled_objects() -> Vec<(String, Vec<Value>)> {
    let mut sets: Vec<(String, Vec<Value>)> =
        TARGETS.iter().map(|t| (t.to_string(), render(t))).collect();
    let mut planned = render("");
    let so = planned
        .iter_mut()
        .find(|o| kind(o) == "ScaledObject")
        .expect("the shipped ScaledObject");
    *so = plan_scaledobject();
    sets.push(("(virtualfit plan)".into(), planned));
    sets
}

/// The ScaledObject `virtualfit plan` writes for the step trace of tests/data.
fn plan_scaledobject() -> Value {
    let dir = tempfile::tempdir().expect("dir");
    let trace = root().join("tests/data/step-trace.csv");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args(["plan", "--p95", "1", "--trace"])
        .arg(&trace)
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("virtualfit plan runs");
    assert!(out.status.success(), "virtualfit plan: {}", text(&out));
    load_one(&dir.path().join("scaledobject.yaml"))
}

#[test]
fn the_keda_schemas_in_the_repository_are_keda_crds() {
    for (file, crd_kind) in [
        ("keda.sh_scaledobjects.yaml", "ScaledObject"),
        (
            "keda.sh_triggerauthentications.yaml",
            "TriggerAuthentication",
        ),
    ] {
        let crd = load_one(&keda_schema(file));
        assert_crd(&crd, file, "keda.sh", crd_kind, "v1alpha1");
    }
}

/// `crd` is the CustomResourceDefinition of `group`'s `crd_kind`, with an OpenAPI schema of its
/// spec at `version`.
fn assert_crd(crd: &Value, file: &str, group: &str, crd_kind: &str, version: &str) {
    assert_eq!(kind(crd), "CustomResourceDefinition", "{file}");
    assert_eq!(str_at(crd, &["spec", "group"]), Some(group), "{file}");
    assert_eq!(
        str_at(crd, &["spec", "names", "kind"]),
        Some(crd_kind),
        "{file}"
    );
    let served = seq(crd["spec"].get("versions"))
        .into_iter()
        .find(|v| v["name"].as_str() == Some(version))
        .unwrap_or_else(|| panic!("{file}: no {version}"));
    assert!(
        served["schema"]["openAPIV3Schema"]["properties"]["spec"].is_mapping(),
        "{file}: an OpenAPI schema"
    );
}

#[test]
fn scaled_objects_validate_against_the_keda_crd_schema() {
    let mut count = 0;
    for (target, objs) in scaled_objects() {
        let sos: Vec<&Value> = objs.iter().filter(|o| kind(o) == "ScaledObject").collect();
        assert_eq!(sos.len(), 1, "k8s/{target}: one ScaledObject");
        let out = keda_validate(&sos);
        assert!(out.status.success(), "k8s/{target}:\n{}", text(&out));
        count += 1;
    }
    assert_eq!(count, TARGETS.len() + 1, "and the planned one");
    // The schema check is live: a numeric threshold is rejected.
    let objs = render("");
    let mut so = find(&objs, "ScaledObject", "virtualfit-inference-gpu-scaler").clone();
    so["spec"]["triggers"][1]["metadata"]["threshold"] = Value::from(10);
    let out = keda_validate(&[&so]);
    assert!(
        !out.status.success(),
        "a numeric threshold must fail:\n{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// ScaledObjects

// Which of the query forms a trigger uses: the forms the autoscaling simulator reads, told apart
// on the PromQL syntax tree.
use virtualfit::simulate::promql::{query_form, QueryForm};

#[test]
fn scaled_objects_mean_what_they_say() {
    for (target, objs) in scaled_objects() {
        let so = objs
            .iter()
            .find(|o| kind(o) == "ScaledObject")
            .expect("a ScaledObject");
        let ctx = format!("k8s/{target} ScaledObject {}", name(so));
        let spec = &so["spec"];
        let min = spec["minReplicaCount"].as_u64().expect("minReplicaCount");
        let max = spec["maxReplicaCount"].as_u64().expect("maxReplicaCount");
        assert!(min <= max && max >= 1, "{ctx}: min {min} max {max}");
        // The target exists, in the same namespace.
        let target_ref = &spec["scaleTargetRef"];
        let dep_kind = target_ref["kind"].as_str().unwrap_or("Deployment");
        let dep = objs
            .iter()
            .find(|o| {
                kind(o) == dep_kind
                    && name(o) == target_ref["name"].as_str().unwrap_or("")
                    && namespace(o) == namespace(so)
            })
            .unwrap_or_else(|| panic!("{ctx}: scaleTargetRef names no object in its namespace"));
        assert!(
            dep["spec"].get("replicas").is_none(),
            "{ctx}: the Deployment must leave `replicas` to the autoscaler"
        );
        // The guide's behavior.
        let behavior = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
        let up = &behavior["scaleUp"];
        assert_eq!(up["stabilizationWindowSeconds"].as_u64(), Some(0), "{ctx}");
        assert_eq!(up["selectPolicy"].as_str(), Some("Max"), "{ctx}");
        let policies = |v: &Value| -> BTreeSet<(String, u64, u64)> {
            seq(v.get("policies"))
                .iter()
                .map(|p| {
                    (
                        p["type"].as_str().expect("type").to_string(),
                        p["value"].as_u64().expect("value"),
                        p["periodSeconds"].as_u64().expect("periodSeconds"),
                    )
                })
                .collect()
        };
        assert_eq!(
            policies(up),
            [
                ("Percent".to_string(), 100, 30),
                ("Pods".to_string(), 2, 30)
            ]
            .into(),
            "{ctx}"
        );
        let down = &behavior["scaleDown"];
        // Replicas that take minutes to start are kept longer (overlays/catvton, docs/catvton.md).
        let window = if target.starts_with(CATVTON) {
            900
        } else {
            300
        };
        assert_eq!(
            down["stabilizationWindowSeconds"].as_u64(),
            Some(window),
            "{ctx}"
        );
        assert_eq!(
            policies(down),
            [("Percent".to_string(), 50, 60)].into(),
            "{ctx}"
        );

        let mut names = BTreeSet::new();
        let mut prometheus = 0;
        for t in triggers(so) {
            let tname = t["name"]
                .as_str()
                .expect("every trigger is named")
                .to_string();
            assert!(
                names.insert(tname.clone()),
                "{ctx}: duplicate trigger {tname}"
            );
            let meta = t["metadata"].as_mapping().expect("metadata");
            for (k, v) in meta {
                assert!(
                    v.is_string(),
                    "{ctx} {tname}: metadata {k:?} must be a string: {v:?}"
                );
            }
            match t["type"].as_str() {
                Some("prometheus") => {
                    prometheus += 1;
                    let query = meta["query"].as_str().expect("query");
                    let threshold: f64 = meta["threshold"]
                        .as_str()
                        .expect("threshold")
                        .parse()
                        .expect("numeric threshold");
                    assert!(threshold > 0.0, "{ctx} {tname}");
                    assert!(
                        meta["serverAddress"]
                            .as_str()
                            .is_some_and(|a| a.starts_with("http")),
                        "{ctx} {tname}: serverAddress"
                    );
                    assert!(
                        query.contains(&format!("namespace=\"{}\"", namespace(so))),
                        "{ctx} {tname}: the query must read this namespace only: {query}"
                    );
                    let metric_type = t["metricType"].as_str().unwrap_or("AverageValue");
                    match query_form(query) {
                        Some(QueryForm::Sum) => assert_eq!(
                            metric_type, "AverageValue",
                            "{ctx} {tname}: a cluster-wide sum divides by a per-replica threshold"
                        ),
                        Some(QueryForm::Quantile) => assert_eq!(
                            metric_type, "Value",
                            "{ctx} {tname}: a percentile is compared as a value"
                        ),
                        None => panic!("{ctx} {tname}: unsupported query form: {query}"),
                    }
                    assert!(
                        !query.contains("avg("),
                        "{ctx} {tname}: avg under AverageValue"
                    );
                }
                Some("cron") => {
                    for key in ["timezone", "start", "end", "desiredReplicas"] {
                        assert!(meta.contains_key(key), "{ctx} {tname}: cron needs {key}");
                    }
                    let desired: u64 = meta["desiredReplicas"]
                        .as_str()
                        .and_then(|d| d.parse().ok())
                        .expect("desiredReplicas");
                    assert!(desired >= 1 && desired <= max, "{ctx} {tname}");
                }
                other => panic!("{ctx}: unexpected trigger type {other:?}"),
            }
        }
        assert_eq!(
            prometheus, 4,
            "{ctx}: GPU busy, queue, active requests and backlog triggers"
        );
        for want in [
            "gpu-busy",
            "queue-length",
            "active-requests",
            "backlog-seconds",
        ] {
            assert!(names.contains(want), "{ctx}: trigger {want} missing");
        }
        if target == "overlays/dev" {
            assert_eq!(min, 0, "{ctx}: dev scales to zero");
            assert!(names.contains("peak-hours"), "{ctx}: the cron trigger");
        } else {
            assert!(min >= 1, "{ctx}");
        }
    }
    // Thresholds are quoted strings in the shipped file itself (not only after parsing).
    let raw = fs::read_to_string(k8s_dir().join("autoscaling/keda-gpu-scaler.yaml"))
        .expect("read ScaledObject");
    for line in raw
        .lines()
        .filter(|l| l.trim_start().starts_with("threshold:"))
    {
        assert!(line.contains('"'), "unquoted threshold: {line}");
    }
    // The regional ScaledObject is a separate object in a separate namespace.
    let eu = render("overlays/eu-west");
    let so = eu
        .iter()
        .find(|o| kind(o) == "ScaledObject")
        .expect("ScaledObject");
    assert_eq!(namespace(so), "virtualfit-eu-west");
    assert_ne!(name(so), "virtualfit-inference-gpu-scaler");
    find(&eu, "Namespace", "virtualfit-eu-west");
}

#[test]
fn query_form_recognises_only_the_supported_forms() {
    assert_eq!(query_form("sum(m{a=\"b\"})"), Some(QueryForm::Sum));
    assert_eq!(query_form("avg(m{a=\"b\"})"), None);
    assert_eq!(query_form("sum(m{a=\"b\"}) by (pod)"), None);
    let p95 =
        "(histogram_quantile(0.95, sum by (le) (rate(m_bucket{a=\"b\"}[2m]))) >= 0) or vector(0)";
    assert_eq!(query_form(p95), Some(QueryForm::Quantile));
    let per_pod = "histogram_quantile(0.95, rate(m_bucket{a=\"b\"}[2m])) * 1000";
    assert_eq!(query_form(per_pod), None);
}

// ---------------------------------------------------------------------------------------------
// Deployment, Service, NetworkPolicy

fn env_of(container: &Value) -> BTreeMap<String, String> {
    seq(container.get("env"))
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn port_named(container: &Value, port_name: &str) -> u64 {
    seq(container.get("ports"))
        .iter()
        .find(|p| p["name"].as_str() == Some(port_name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {port_name}"))
}

fn inference_deployment(objs: &[Value]) -> &Value {
    objs.iter()
        .find(|o| kind(o) == "Deployment" && name(o) == "virtualfit-inference")
        .expect("Deployment virtualfit-inference")
}

/// (preStop sleep, drain timeout, grace period) of the inference Deployment, in seconds.
fn shutdown_budget(dep: &Value) -> (f64, f64, f64) {
    let pod = &dep["spec"]["template"]["spec"];
    let c = &seq(pod.get("containers"))[0];
    let drain: f64 = env_of(c)["VIRTUALFIT_DRAIN_TIMEOUT_S"]
        .parse()
        .expect("drain timeout");
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_f64()
        .expect("preStop sleep");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("grace period");
    (pre_stop, drain, grace)
}

#[test]
fn deployment_drains_within_its_grace_period_and_runs_locked_down() {
    for target in TARGETS {
        let objs = render(target);
        let dep = inference_deployment(&objs);
        let ctx = format!("k8s/{target}");
        let pod = &dep["spec"]["template"]["spec"];
        let c = &seq(pod.get("containers"))[0];
        let env = env_of(c);
        let (pre_stop, drain, grace) = shutdown_budget(dep);
        assert!(pre_stop > 0.0, "{ctx}");
        assert!(
            grace > pre_stop + drain,
            "{ctx}: grace {grace} s must exceed preStop {pre_stop} s + drain {drain} s"
        );
        // Probes. Liveness is on the metrics port, which a connection flood on the API port
        // cannot fill; the server serves /livez there because VIRTUALFIT_METRICS_BIND is set.
        for (probe, path, port) in [
            ("startupProbe", "/readyz", None),
            ("readinessProbe", "/readyz", None),
            ("livenessProbe", "/livez", Some("metrics")),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{ctx}: {probe}");
            if port.is_some() {
                assert_eq!(get["port"].as_str(), port, "{ctx}: {probe}");
            }
        }
        assert!(
            env_of(c).contains_key("VIRTUALFIT_METRICS_BIND"),
            "{ctx}: the metrics port is bound"
        );
        // One GPU.
        assert_eq!(
            c["resources"]["limits"]["nvidia.com/gpu"].as_str(),
            Some("1"),
            "{ctx}"
        );
        // Locked down.
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{ctx}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{ctx}"
        );
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{ctx}"
        );
        // Configuration through the environment; the ports match the bind addresses.
        let http = port_named(c, "http");
        let metrics = port_named(c, "metrics");
        assert_eq!(http, 8000, "{ctx}");
        assert_eq!(env["VIRTUALFIT_BIND"], format!("0.0.0.0:{http}"), "{ctx}");
        assert_eq!(
            env["VIRTUALFIT_METRICS_BIND"],
            format!("0.0.0.0:{metrics}"),
            "{ctx}"
        );
        // (and the hub cache's standard variables, for a server reading the hub's cache)
        for k in env.keys() {
            assert!(
                k.starts_with("VIRTUALFIT_")
                    || ["HF_HUB_CACHE", "HF_HUB_OFFLINE"].contains(&k.as_str()),
                "{ctx}: {k}"
            );
        }
        // The Service reaches port 8000.
        let svc = find(&objs, "Service", "inference-service");
        let sp = &seq(svc["spec"].get("ports"))[0];
        assert_eq!(sp["port"].as_u64(), Some(8000), "{ctx}");
        assert_eq!(sp["targetPort"].as_str(), Some("http"), "{ctx}");
        let labels = dep["spec"]["template"]["metadata"]["labels"]
            .as_mapping()
            .expect("labels");
        for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
            assert_eq!(labels.get(k), Some(v), "{ctx}: Service selector");
        }
        let pdb = find(&objs, "PodDisruptionBudget", "virtualfit-inference");
        assert_eq!(
            &pdb["spec"]["selector"]["matchLabels"], &dep["spec"]["selector"]["matchLabels"],
            "{ctx}"
        );
        // The metrics port is open to the monitoring namespace only.
        let np = find(&objs, "NetworkPolicy", "virtualfit-inference");
        let mut metrics_rules = 0;
        for rule in seq(np["spec"].get("ingress")) {
            let ports: Vec<String> = seq(rule.get("ports"))
                .iter()
                .map(|p| match &p["port"] {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => panic!("{other:?}"),
                })
                .collect();
            if ports
                .iter()
                .any(|p| p == "metrics" || *p == metrics.to_string())
            {
                metrics_rules += 1;
                let from = seq(rule.get("from"));
                assert_eq!(from.len(), 1, "{ctx}: metrics reachable from one peer");
                assert_eq!(
                    from[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                        .as_str(),
                    Some("monitoring"),
                    "{ctx}"
                );
                assert!(from[0].get("podSelector").is_none() && from[0].get("ipBlock").is_none());
            } else {
                assert!(
                    !ports.is_empty(),
                    "{ctx}: a rule without ports opens every port"
                );
            }
        }
        assert_eq!(metrics_rules, 1, "{ctx}");
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up and liveness: the rollout deadline and the liveness probe against the server's bounds

use virtualfit::server::liveness::STALL_FLOOR;

/// What pulling the inference image may take on a node that lacks it: the CUDA runtime image
/// is several GB, a few minutes at the tens of MB/s a registry gives one node.
const IMAGE_PULL_ALLOWANCE_S: u64 = 300;
/// Margin of the rollout deadline over a new pod's pull, start-up and first readiness check.
const ROLLOUT_MARGIN_S: u64 = 120;
/// Kubernetes's progressDeadlineSeconds when a Deployment sets none.
const DEFAULT_PROGRESS_DEADLINE_S: u64 = 600;

/// A probe's field, or Kubernetes's default for it.
fn probe_s(probe: &Value, field: &str) -> u64 {
    let default = match field {
        "initialDelaySeconds" => 0,
        "periodSeconds" => 10,
        "timeoutSeconds" => 1,
        "failureThreshold" => 3,
        other => panic!("no default for {other}"),
    };
    match probe.get(field) {
        None => default,
        Some(v) => v
            .as_u64()
            .unwrap_or_else(|| panic!("{field} is not a count: {v:?}")),
    }
}

/// The targets and the batch pool, rendered: (where, objects).
fn targets_and_batch_pool() -> Vec<(String, Vec<Value>)> {
    TARGETS
        .iter()
        .chain([&BATCH_POOL])
        .map(|t| (format!("k8s/{t}"), render(t)))
        .collect()
}

/// Every Deployment that the kustomizations users apply render, as (where, Deployment): the
/// targets' inference Deployments and the batch pool's two.
fn every_deployment() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for target in TARGETS.iter().chain([&BATCH_POOL]) {
        for o in render(target) {
            if kind(&o) == "Deployment" {
                let dir = format!("k8s/{target}");
                out.push((format!("{}: {}", dir.trim_end_matches('/'), name(&o)), o));
            }
        }
    }
    for want in ["virtualfit-inference", "virtualfit-batch-worker"] {
        assert!(
            out.iter().any(|(_, d)| name(d) == want),
            "no Deployment {want} rendered"
        );
    }
    out
}

#[test]
fn rollouts_allow_an_image_pull_and_the_startup_probe_before_their_progress_deadline() {
    for (ctx, dep) in every_deployment() {
        let spec = &dep["spec"];
        let pod = &spec["template"]["spec"];
        // Init containers run before the probes: the weights' first download is the only one,
        // at the hub bandwidth the catvton overlay assumes (the f32 files, the larger set).
        let mut init_s = 0;
        for c in seq(pod.get("initContainers")) {
            assert_eq!(
                c["name"].as_str(),
                Some("weights"),
                "{ctx}: an init container whose time is not in this sum"
            );
            init_s += (CATVTON_DOWNLOAD_F32_GB * 1000.0 / HUB_MB_PER_S).ceil() as u64;
        }
        // The slowest container: its startupProbe's whole allowance, then its first readiness
        // check, then minReadySeconds before the pod counts as available.
        let mut slowest = 0;
        for c in seq(pod.get("containers")) {
            let startup = c.get("startupProbe").unwrap_or_else(|| {
                panic!(
                    "{ctx}: container {} has no startupProbe",
                    c["name"].as_str().unwrap_or("?")
                )
            });
            let allowance = probe_s(startup, "initialDelaySeconds")
                + probe_s(startup, "failureThreshold") * probe_s(startup, "periodSeconds");
            let first_ready = c
                .get("readinessProbe")
                .map_or(0, |r| probe_s(r, "periodSeconds"));
            slowest = slowest.max(allowance + first_ready);
        }
        let min_ready = spec["minReadySeconds"].as_u64().unwrap_or(0);
        let needed = IMAGE_PULL_ALLOWANCE_S + init_s + slowest + min_ready + ROLLOUT_MARGIN_S;
        let deadline = spec["progressDeadlineSeconds"]
            .as_u64()
            .unwrap_or(DEFAULT_PROGRESS_DEADLINE_S);
        assert!(
            deadline >= needed,
            "{ctx}: progressDeadlineSeconds {deadline} must cover the image pull \
             ({IMAGE_PULL_ALLOWANCE_S} s), init containers ({init_s} s), the start-up and first \
             readiness check ({slowest} s), minReadySeconds ({min_ready} s) and \
             {ROLLOUT_MARGIN_S} s of margin: {needed} s"
        );
    }
}

#[test]
fn liveness_restarts_a_pod_only_after_the_servers_stall_bound_and_within_twice_it() {
    for (ctx, dep) in every_deployment() {
        let pod = &dep["spec"]["template"]["spec"];
        for c in seq(pod.get("containers")) {
            let ctx = format!("{ctx}/{}", c["name"].as_str().unwrap_or("?"));
            let probe = c
                .get("livenessProbe")
                .unwrap_or_else(|| panic!("{ctx}: no livenessProbe"));
            assert_eq!(probe["httpGet"]["path"].as_str(), Some("/livez"), "{ctx}");
            // /livez fails only once work has been pending for the bound B without a finished
            // model call: the flag's value, else at least the floor the server derives from.
            let bound = env_of(&c)
                .get("VIRTUALFIT_LIVENESS_STALL_S")
                .map(|v| v.parse::<f64>().expect("VIRTUALFIT_LIVENESS_STALL_S"))
                .unwrap_or(STALL_FLOOR.as_secs_f64());
            let (period, timeout, failures) = (
                probe_s(probe, "periodSeconds") as f64,
                probe_s(probe, "timeoutSeconds") as f64,
                probe_s(probe, "failureThreshold") as f64,
            );
            // The kubelet restarts after `failures` failed probes in a row, `period` apart: from
            // B + (failures - 1) x period to B + failures x period + timeout after the last call,
            // so never before B; and one late or lost answer alone restarts nothing.
            let latest = bound + failures * period + timeout;
            assert!(
                failures >= 2.0 && timeout < period,
                "{ctx}: one late or lost answer must not restart a pod (failureThreshold \
                 {failures}, timeoutSeconds {timeout} under periodSeconds {period})"
            );
            assert!(
                latest <= 2.0 * bound,
                "{ctx}: a stalled pod must restart within twice the {bound} s bound, not at \
                 {latest} s"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A model of seconds per request: the catvton overlay

/// The overlay serving the diffusion model catvton (docs/catvton.md).
const CATVTON: &str = "overlays/catvton";
/// The figure the overlay's arithmetic starts from: seconds per 1024x768 CatVTON image sampled
/// alone, 50 steps, on an A100 (published, diffusers). With no batching gain assumed, a
/// sampling slot frees every this many seconds whatever the number of requests sampled at once.
const CATVTON_A100_S_PER_REQUEST: f64 = 9.0;
/// `virtualfit plan`'s target utilisation (docs/capacity.md).
const TARGET_UTILIZATION: f64 = 0.75;
/// Decoding before admission and encoding after, at most (seconds).
const CATVTON_PRE_POST_S: f64 = 1.0;
/// The overlay's latency objective: a request answered within a minute (docs/catvton.md).
const CATVTON_OBJECTIVE_S: f64 = 60.0;

/// The threshold of the trigger named `trigger`.
fn threshold(so: &Value, trigger: &str) -> f64 {
    let list = triggers(so);
    let raw = list
        .iter()
        .find(|t| t["name"].as_str() == Some(trigger))
        .and_then(|t| t["metadata"]["threshold"].as_str())
        .unwrap_or_else(|| panic!("{}: no threshold for {trigger}", name(so)));
    let value: f64 = raw
        .parse()
        .unwrap_or_else(|_| panic!("{}: {trigger} threshold {raw:?}", name(so)));
    value
}

#[test]
fn inference_triggers_read_interactive_work_do_not_compound_and_survive_a_broken_scrape() {
    for target in TARGETS {
        let objs = render(target);
        let so = objs
            .iter()
            .find(|o| kind(o) == "ScaledObject")
            .expect("a ScaledObject");
        let ctx = format!("k8s/{target} ScaledObject {}", name(so));
        for t in triggers(so)
            .iter()
            .filter(|t| t["type"].as_str() == Some("prometheus"))
        {
            let tname = t["name"].as_str().unwrap_or("?");
            let meta = &t["metadata"];
            let query = meta["query"].as_str().expect("query");
            // Batch jobs never scale the interactive Deployment (k8s/README.md).
            assert!(
                query.contains("priority=\"interactive\""),
                "{ctx} {tname}: reads interactive work only: {query}"
            );
            // A latency percentile as a Value compounds (ceil(ready x p95 / threshold) grows
            // with every wave of new pods); a sum under AverageValue does not.
            assert_eq!(
                t["metricType"].as_str().unwrap_or("AverageValue"),
                "AverageValue",
                "{ctx} {tname}"
            );
            assert!(!query.contains("histogram_quantile"), "{ctx} {tname}");
            // None of the sums is legitimately empty while a replica runs: an empty result is
            // a broken scrape, not an idle cluster.
            assert_eq!(
                meta["ignoreNullValues"].as_str(),
                Some("false"),
                "{ctx} {tname}"
            );
        }
        // KEDA's fallback after a few failed reads, never below the current count.
        let fallback = &so["spec"]["fallback"];
        assert_eq!(
            fallback["behavior"].as_str(),
            Some("currentReplicasIfHigher"),
            "{ctx}: {fallback:?}"
        );
        let failures = fallback["failureThreshold"]
            .as_u64()
            .expect("failureThreshold");
        assert!((1..=5).contains(&failures), "{ctx}: {failures}");
        assert!(fallback["replicas"].as_u64().is_some(), "{ctx}");
        assert!(
            !triggers(so).iter().any(|t| t["metadata"]["query"]
                .as_str()
                .is_some_and(|q| q.contains("DCGM_FI_DEV_GPU_UTIL"))),
            "{ctx}: one instantaneous DCGM sample is not a trigger"
        );
    }
}

#[test]
fn catvton_overlay_fits_a_model_of_seconds_per_request() {
    let objs = render(CATVTON);
    let ctx = format!("k8s/{CATVTON}");
    let dep = inference_deployment(&objs);
    let pod = &dep["spec"]["template"]["spec"];
    let c = &seq(pod.get("containers"))[0];
    let env = env_of(c);
    let num = |k: &str| -> f64 {
        env.get(k)
            .unwrap_or_else(|| panic!("{ctx}: {k} is not set"))
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{ctx}: {k} is not a number"))
    };
    assert_eq!(env["VIRTUALFIT_MODEL"], "catvton", "{ctx}");
    assert_eq!(env["VIRTUALFIT_DEVICE"], "cuda", "{ctx}");
    assert_eq!(env["VIRTUALFIT_DTYPE"], "bf16", "{ctx}: half precision");
    // The weights: the model folder lies in the claim catvton-weights, mounted read-only; the
    // dmvton claim is not rendered.
    find(&objs, "PersistentVolumeClaim", "catvton-weights");
    assert!(
        !objs.iter().any(|o| name(o) == "virtualfit-models"),
        "{ctx}: no pod mounts the dmvton claim"
    );
    let volume = seq(pod.get("volumes"))
        .into_iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"].as_str() == Some("catvton-weights"))
        .unwrap_or_else(|| panic!("{ctx}: no volume of the claim catvton-weights"));
    let mount = seq(c.get("volumeMounts"))
        .into_iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap_or_else(|| panic!("{ctx}: the weights are not mounted"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true), "{ctx}");
    let mount_path = mount["mountPath"].as_str().expect("mountPath");
    let dir = &env["VIRTUALFIT_MODEL_DIR"];
    assert!(
        dir.starts_with(&format!("{}/", mount_path.trim_end_matches('/'))),
        "{ctx}: VIRTUALFIT_MODEL_DIR {dir} is not in the claim mounted at {mount_path}"
    );

    // Timeouts, from the published figure: a slot frees every t1 seconds.
    let t1 = CATVTON_A100_S_PER_REQUEST;
    let k = num("VIRTUALFIT_MAX_BATCH_SIZE") / 2.0; // requests with guidance: 2 rows each
    let queue = num("VIRTUALFIT_QUEUE_CAPACITY");
    let timeout = num("VIRTUALFIT_REQUEST_TIMEOUT_S");
    assert!(
        num("VIRTUALFIT_MAX_STEPS") <= 50.0,
        "{ctx}: the figure is for 50 steps"
    );
    assert!(
        queue * t1 <= timeout / 2.0,
        "{ctx}: the last of a full queue ({queue} x {t1} s) must start within half the request timeout {timeout} s"
    );
    let (pre_stop, drain, grace) = shutdown_budget(dep);
    assert!(
        drain >= (queue + k) * t1,
        "{ctx}: the drain {drain} s must answer a full queue and the running set, ({queue} + {k}) x {t1} s"
    );
    assert!(pre_stop + drain < grace, "{ctx}");
    let patch = fs::read_to_string(k8s_dir().join(CATVTON).join("deployment-patch.yaml"))
        .expect("catvton deployment patch");
    for fact in [
        format!("preStop sleep {pre_stop} s"),
        format!("drain {drain} s"),
        format!("= {} s", pre_stop + drain),
        format!("SIGKILL at {grace} s"),
    ] {
        assert!(
            patch.contains(&fact),
            "{CATVTON}/deployment-patch.yaml must state the budget: `{fact}`"
        );
    }
    // Start-up: loading 4 GB of weights and compiling the kernels takes minutes.
    let startup = &c["startupProbe"];
    let allowance = startup["periodSeconds"].as_u64().expect("periodSeconds")
        * startup["failureThreshold"]
            .as_u64()
            .expect("failureThreshold");
    assert!(
        allowance >= 600,
        "{ctx}: the startup probe allows {allowance} s"
    );

    // Thresholds (docs/catvton.md), from the 60 s objective.
    let so = find(&objs, "ScaledObject", "virtualfit-inference-gpu-scaler");
    let s = CATVTON_OBJECTIVE_S;
    assert!(
        k * t1 + CATVTON_PRE_POST_S < s && s <= timeout,
        "{ctx}: the objective {s} s must allow a full running set ({k} x {t1} s)"
    );
    // The queued work a request may wait behind and still answer within the objective after
    // its own sampling, halved: between the A100 figure and a GPU twice as fast.
    let backlog = threshold(so, "backlog-seconds");
    let bound = |t1: f64| (s - CATVTON_PRE_POST_S - k * t1) / 2.0;
    assert!(
        bound(t1) <= backlog && backlog <= bound(t1 / 2.0),
        "{ctx}: backlog-seconds {backlog} outside [{}, {}]",
        bound(t1),
        bound(t1 / 2.0)
    );
    // Little's law at the target utilisation: u x k requests active per replica.
    assert_eq!(
        threshold(so, "active-requests"),
        (TARGET_UTILIZATION * k).round(),
        "{ctx}: active-requests"
    );
    // Half the longest queue the objective allows (at least 1), between the A100 figure and
    // a GPU twice as fast.
    let q_s = |t1: f64| ((s - CATVTON_PRE_POST_S - k * t1) / t1).floor() - 1.0;
    let slowest = (q_s(t1) / 2.0).floor().max(1.0);
    let fastest = (q_s(t1 / 2.0) / 2.0).floor().max(1.0);
    let q = threshold(so, "queue-length");
    assert!(
        slowest <= q && q <= fastest,
        "{ctx}: queue-length {q} outside [{slowest}, {fastest}]"
    );
    assert!(
        q < queue,
        "{ctx}: the queue trigger must fire before the queue is full"
    );

    // The overlay is documented.
    let readme = fs::read_to_string(k8s_dir().join("README.md")).expect("k8s/README.md");
    for want in [
        format!("kubectl apply -k k8s/{CATVTON}"),
        "docs/catvton.md".to_string(),
    ] {
        assert!(readme.contains(&want), "k8s/README.md must show `{want}`");
    }
    let doc = fs::read_to_string(root().join("docs/catvton.md")).expect("docs/catvton.md");
    assert!(doc.contains("Thresholds for a model of seconds per request"));
}

// ---------------------------------------------------------------------------------------------
// CatVTON's weights from the Hugging Face Hub

const CATVTON_OFFLINE: &str = "overlays/catvton-offline";
/// The first download with bf16 (the fp16 UNet, the VAE, the attention weights) and in f32.
const CATVTON_DOWNLOAD_BF16_GB: f64 = 2.25;
const CATVTON_DOWNLOAD_F32_GB: f64 = 3.97;
/// The download's egress policy (k8s/components/hub-download).
const HUB_EGRESS: &str = "virtualfit-inference-hub-egress";
/// The bandwidth the startup allowance assumes for the hub, and for the share when verifying.
const HUB_MB_PER_S: f64 = 25.0;
const SHARE_MB_PER_S: f64 = 50.0;

/// Whether an IPv4 address lies in a `a.b.c.d/n` block (false for an IPv6 block).
fn in_block(ip: std::net::Ipv4Addr, cidr: &str) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<std::net::Ipv4Addr>(), bits.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Whether the NetworkPolicy's egress rules let its pods reach `ip` on TCP `port` through an
/// `ipBlock` peer.
fn egress_reaches(np: &Value, ip: &str, port: u64) -> bool {
    let ip: std::net::Ipv4Addr = ip.parse().expect("an IPv4 address");
    seq(np["spec"].get("egress")).iter().any(|rule| {
        let port_ok = seq(rule.get("ports")).iter().any(|p| {
            p["port"].as_u64() == Some(port) && p["protocol"].as_str().unwrap_or("TCP") == "TCP"
        });
        let peer_ok = seq(rule.get("to")).iter().any(|peer| {
            let block = &peer["ipBlock"];
            block["cidr"].as_str().is_some_and(|c| in_block(ip, c))
                && !seq(block.get("except"))
                    .iter()
                    .any(|e| e.as_str().is_some_and(|e| in_block(ip, e)))
        });
        port_ok && peer_ok
    })
}

fn mount_of<'a>(container: &'a Value, volume: &str) -> &'a Value {
    container["volumeMounts"]
        .as_sequence()
        .and_then(|ms| ms.iter().find(|m| m["name"].as_str() == Some(volume)))
        .unwrap_or_else(|| panic!("no mount of volume {volume}"))
}

#[test]
fn catvton_fetches_its_weights_in_an_init_container_with_egress_to_the_hub_only() {
    let objs = render(CATVTON);
    let ctx = format!("k8s/{CATVTON}");
    let dep = inference_deployment(&objs);
    let pod = &dep["spec"]["template"]["spec"];
    let server = &seq(pod.get("containers"))[0];
    let init = seq(pod.get("initContainers"))
        .into_iter()
        .find(|c| c["name"].as_str() == Some("weights"))
        .unwrap_or_else(|| panic!("{ctx}: no init container `weights`"));

    // `virtualfit download` of the server's own image, for the server's model and precision,
    // into the cache the server reads offline.
    assert_eq!(init["image"], server["image"], "{ctx}");
    assert_eq!(seq(init.get("args")), [Value::from("download")], "{ctx}");
    let (ie, se) = (env_of(&init), env_of(server));
    for k in ["VIRTUALFIT_MODEL", "VIRTUALFIT_DTYPE", "HF_HUB_CACHE"] {
        assert_eq!(
            ie.get(k),
            se.get(k),
            "{ctx}: {k} of the download and the server"
        );
    }
    assert_eq!(se["VIRTUALFIT_MODEL"], "catvton");
    assert_eq!(se["VIRTUALFIT_MODEL_SOURCE"], "hub", "{ctx}");
    assert_eq!(
        se["HF_HUB_OFFLINE"], "1",
        "{ctx}: the server never calls the hub"
    );
    assert!(!ie.contains_key("HF_HUB_OFFLINE"), "{ctx}");
    assert_eq!(
        ie["NVIDIA_VISIBLE_DEVICES"], "void",
        "{ctx}: no GPU for a download"
    );
    assert!(init["resources"]["limits"].get("nvidia.com/gpu").is_none());
    // HF_TOKEN from an optional Secret, never a literal; the server has none.
    let token = seq(init.get("env"))
        .into_iter()
        .find(|e| e["name"].as_str() == Some("HF_TOKEN"))
        .unwrap_or_else(|| panic!("{ctx}: HF_TOKEN"));
    assert!(token.get("value").is_none());
    let secret = &token["valueFrom"]["secretKeyRef"];
    assert_eq!(secret["name"].as_str(), Some("huggingface-token"));
    assert_eq!(secret["optional"].as_bool(), Some(true), "{ctx}: optional");
    assert!(!secret_env(server).contains_key("HF_TOKEN"));
    // The cache lies on the models volume: written by the download, read-only for the server.
    let volume = seq(pod.get("volumes"))
        .into_iter()
        .find(|v| v["name"].as_str() == Some("models"))
        .expect("models volume");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        "catvton-weights"
    );
    assert_ne!(
        volume["persistentVolumeClaim"]["readOnly"].as_bool(),
        Some(true)
    );
    assert_ne!(mount_of(&init, "models")["readOnly"].as_bool(), Some(true));
    assert_eq!(mount_of(server, "models")["readOnly"].as_bool(), Some(true));
    for (c, mount) in [
        (&init, mount_of(&init, "models")),
        (server, mount_of(server, "models")),
    ] {
        let path = mount["mountPath"].as_str().expect("mountPath");
        assert!(
            env_of(c)["HF_HUB_CACHE"].starts_with(&format!("{}/", path.trim_end_matches('/'))),
            "{ctx}: the hub cache is on the volume"
        );
    }

    // Egress: DNS, and HTTPS to public addresses only. A pod may go wherever any egress policy
    // that selects it allows (the namespace's default gives DNS, the component the download).
    let labels = pod_labels(dep);
    let policies: Vec<&Value> = objs
        .iter()
        .filter(|o| {
            kind(o) == "NetworkPolicy"
                && selects(&o["spec"]["podSelector"], labels)
                && seq(o["spec"].get("policyTypes")).contains(&Value::from("Egress"))
        })
        .collect();
    assert!(
        policies.iter().any(|np| name(np) == HUB_EGRESS),
        "{ctx}: no egress policy for the download"
    );
    for np in &policies {
        for rule in seq(np["spec"].get("egress")) {
            assert!(
                !seq(rule.get("ports")).is_empty(),
                "an egress rule without ports"
            );
        }
    }
    let reaches = |ip: &str, port: u64| policies.iter().any(|np| egress_reaches(np, ip, port));
    assert!(reaches("18.244.28.70", 443), "the hub's CDN");
    for (ip, port) in [
        ("18.244.28.70", 80),
        ("10.0.0.12", 443),
        ("172.20.1.1", 443),
        ("192.168.1.1", 443),
        ("169.254.169.254", 443),
    ] {
        assert!(!reaches(ip, port), "{ctx}: egress to {ip}:{port}");
    }
    let dns = policies.iter().any(|np| {
        seq(np["spec"].get("egress")).into_iter().any(|rule| {
            seq(rule.get("ports"))
                .iter()
                .any(|p| p["port"].as_u64() == Some(53) && p["protocol"].as_str() == Some("UDP"))
        })
    });
    assert!(dns, "{ctx}: DNS");

    // The startup allowance covers a first download and the verification.
    let startup = &server["startupProbe"];
    let allowance = startup["periodSeconds"].as_f64().expect("periodSeconds")
        * startup["failureThreshold"]
            .as_f64()
            .expect("failureThreshold");
    let download = CATVTON_DOWNLOAD_F32_GB * 1000.0 / HUB_MB_PER_S;
    let verify = CATVTON_DOWNLOAD_F32_GB * 1000.0 / SHARE_MB_PER_S;
    assert!(
        allowance >= 600.0 + download + verify,
        "{ctx}: the startup probe allows {allowance} s"
    );
    let patch = fs::read_to_string(k8s_dir().join(CATVTON).join("deployment-patch.yaml"))
        .expect("catvton deployment patch");
    for fact in [
        format!("{CATVTON_DOWNLOAD_BF16_GB} GB"),
        format!("{CATVTON_DOWNLOAD_F32_GB} GB"),
        format!("{HUB_MB_PER_S} MB/s"),
    ] {
        assert!(
            patch.contains(&fact),
            "{CATVTON}/deployment-patch.yaml must state the first download: `{fact}`"
        );
    }

    // Air-gapped: the same without the download and its egress, the cache read-only.
    let offline = render(CATVTON_OFFLINE);
    let ctx = format!("k8s/{CATVTON_OFFLINE}");
    let odep = inference_deployment(&offline);
    let opod = &odep["spec"]["template"]["spec"];
    assert!(opod.get("initContainers").is_none(), "{ctx}");
    let oserver = &seq(opod.get("containers"))[0];
    assert_eq!(env_of(oserver), se, "{ctx}: the server is configured alike");
    let ovolume = &seq(opod.get("volumes"))[0];
    assert_eq!(
        ovolume["persistentVolumeClaim"]["readOnly"].as_bool(),
        Some(true)
    );
    assert!(
        !offline
            .iter()
            .any(|o| name(o) == HUB_EGRESS && kind(o) == "NetworkPolicy"),
        "{ctx}: no egress"
    );
    let others = |objs: &[Value], skip: &str| -> Vec<Value> {
        objs.iter()
            .filter(|o| kind(o) != "Deployment" && name(o) != skip)
            .cloned()
            .collect()
    };
    assert_eq!(
        others(&offline, ""),
        others(&objs, HUB_EGRESS),
        "{ctx}: nothing else differs"
    );

    let readme = fs::read_to_string(k8s_dir().join("README.md")).expect("k8s/README.md");
    for want in [
        format!("kubectl apply -k k8s/{CATVTON_OFFLINE}"),
        "huggingface-token".to_string(),
        "HF_HUB_OFFLINE".to_string(),
    ] {
        assert!(readme.contains(&want), "k8s/README.md must show `{want}`");
    }
}

// ---------------------------------------------------------------------------------------------
// Spot nodes and the image pre-pull

/// GKE's graceful node shutdown on Spot VM preemption: non-system pods get 15 s of the 30 s
/// notice, and a longer terminationGracePeriodSeconds has no effect
/// (https://cloud.google.com/kubernetes-engine/docs/concepts/spot-vms).
const GKE_SPOT_POD_SHUTDOWN_S: f64 = 15.0;

/// The node labels that mark spot capacity, per provider (with the value the overlay requires).
const SPOT_LABELS: &[(&str, &str)] = &[
    ("cloud.google.com/gke-spot", "true"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("karpenter.sh/capacity-type", "spot"),
];

fn tolerations(pod_spec: &Value) -> BTreeSet<String> {
    seq(pod_spec.get("tolerations"))
        .iter()
        .map(|t| serde_json::to_string(t).expect("JSON"))
        .collect()
}

#[test]
fn spot_overlay_shuts_down_within_gke_preemption_budget() {
    let objs = render("overlays/spot");
    let (pre_stop, drain, grace) = shutdown_budget(inference_deployment(&objs));
    assert!(
        grace <= GKE_SPOT_POD_SHUTDOWN_S,
        "grace {grace} s: GKE kills ordinary pods {GKE_SPOT_POD_SHUTDOWN_S} s after a preemption notice"
    );
    assert!(
        pre_stop + drain < grace,
        "preStop {pre_stop} s + drain {drain} s must end before the grace period {grace} s, so that the process exits on its own"
    );
    // The arithmetic is written down next to the numbers.
    let k = fs::read_to_string(k8s_dir().join("overlays/spot/kustomization.yaml"))
        .expect("spot kustomization");
    for fact in [
        format!("preStop sleep {pre_stop} s"),
        format!("drain {drain} s"),
        format!("= {} s", pre_stop + drain),
        format!("SIGKILL at {grace} s"),
    ] {
        assert!(
            k.contains(&fact),
            "overlays/spot/kustomization.yaml must state the budget: `{fact}`"
        );
    }
}

#[test]
fn spot_overlay_pins_spot_gpu_nodes_and_prepulls_there() {
    let objs = render("overlays/spot");
    let dep = inference_deployment(&objs);
    let ds = find(&objs, "DaemonSet", "virtualfit-image-prepull");
    let dep_pod = &dep["spec"]["template"]["spec"];
    let ds_pod = &ds["spec"]["template"]["spec"];
    // Every node-affinity term requires spot capacity.
    for term in node_affinity_terms(dep_pod) {
        assert!(
            SPOT_LABELS.iter().any(|(key, value)| term
                .iter()
                .any(|e| e.key == *key && e.operator == "In" && e.values == [value.to_string()])),
            "a node-affinity term of the spot Deployment does not require spot capacity: {term:?}"
        );
    }
    // The spot taints are tolerated.
    let dep_tol = tolerations(dep_pod);
    for (key, value) in SPOT_LABELS {
        assert!(
            seq(dep_pod.get("tolerations"))
                .iter()
                .any(|t| t["key"].as_str() == Some(key)
                    && t["value"].as_str() == Some(value)
                    && t["effect"].as_str() == Some("NoSchedule")),
            "the spot Deployment must tolerate {key}={value}:NoSchedule"
        );
    }
    // The pre-pull DaemonSet runs wherever the Deployment may run: the same node affinity, at
    // least the same tolerations, and no nodeSelector of its own.
    assert_eq!(ds_pod["affinity"], dep_pod["affinity"]);
    assert!(ds_pod.get("nodeSelector").is_none());
    let ds_tol = tolerations(ds_pod);
    assert!(
        dep_tol.is_subset(&ds_tol),
        "the pre-pull DaemonSet lacks tolerations of the Deployment: {:?}",
        dep_tol.difference(&ds_tol).collect::<Vec<_>>()
    );
    // Same image.
    assert_eq!(
        seq(ds_pod.get("initContainers"))[0]["image"],
        seq(dep_pod.get("containers"))[0]["image"]
    );
}

#[test]
fn prepull_init_container_loads_no_gpu_library_and_sees_no_gpu() {
    for (what, objs) in [
        ("k8s/base/prepull", render("base/prepull")),
        ("k8s/overlays/spot", render("overlays/spot")),
    ] {
        let ds = find(&objs, "DaemonSet", "virtualfit-image-prepull");
        let pod = &ds["spec"]["template"]["spec"];
        let inits = seq(pod.get("initContainers"));
        assert_eq!(inits.len(), 1, "{what}");
        let init = &inits[0];
        let command: Vec<String> = seq(init.get("command"))
            .iter()
            .chain(seq(init.get("args")).iter())
            .map(|a| a.as_str().expect("string argument").to_string())
            .collect();
        // Not the image's entrypoint (the virtualfit binary links libcuda.so.1): an explicit
        // program of the base system.
        assert!(!command.is_empty(), "{what}: an explicit command");
        assert!(
            command[0].starts_with("/bin/") || command[0].starts_with("/usr/bin/"),
            "{what}: {command:?} must be a program of the image's base system"
        );
        assert!(
            !command.iter().any(|a| a.contains("virtualfit")),
            "{what}: {command:?} runs the CUDA binary"
        );
        // The GPUs are hidden from it, and it requests none.
        assert_eq!(
            env_of(init)
                .get("NVIDIA_VISIBLE_DEVICES")
                .map(String::as_str),
            Some("void"),
            "{what}: NVIDIA_VISIBLE_DEVICES=void hides the node's GPUs"
        );
        for c in inits.iter().chain(seq(pod.get("containers")).iter()) {
            let r = serde_json::to_string(&c["resources"]).expect("JSON");
            assert!(!r.contains("nvidia.com/gpu"), "{what}: {r}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GPUs the image supports

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    operator: String,
    values: Vec<String>,
}

fn node_affinity_terms(pod_spec: &Value) -> Vec<Vec<Requirement>> {
    let terms = seq(pod_spec["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]
        .get("nodeSelectorTerms"));
    assert!(!terms.is_empty(), "a required node affinity");
    terms
        .iter()
        .map(|t| {
            assert!(t.get("matchFields").is_none());
            seq(t.get("matchExpressions"))
                .iter()
                .map(|e| Requirement {
                    key: e["key"].as_str().expect("key").to_string(),
                    operator: e["operator"].as_str().expect("operator").to_string(),
                    values: seq(e.get("values"))
                        .iter()
                        .map(|v| v.as_str().expect("string value").to_string())
                        .collect(),
                })
                .collect()
        })
        .collect()
}

/// GKE accelerator types and their compute capability (major × 10 + minor).
const GKE_ACCELERATORS: &[(&str, u32)] = &[
    ("nvidia-tesla-t4", 75),
    ("nvidia-tesla-a100", 80),
    ("nvidia-a100-80gb", 80),
    ("nvidia-l4", 89),
    ("nvidia-h100-80gb", 90),
    ("nvidia-h100-mega-80gb", 90),
    ("nvidia-h200-141gb", 90),
    ("nvidia-b200", 100),
];

/// `ARG NAME=VALUE` in the Dockerfile.
fn dockerfile_arg(dockerfile: &str, arg: &str) -> String {
    dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("ARG {arg}=")))
        .unwrap_or_else(|| panic!("Dockerfile: no `ARG {arg}=`"))
        .trim()
        .to_string()
}

#[test]
fn inference_pods_schedule_only_on_gpus_the_image_runs_on() {
    let dockerfile = fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    // The image's kernels: PTX for this compute capability, which the driver compiles for the
    // same or any later architecture (a suffixed `90a` would load on 9.0 only).
    let cap = dockerfile_arg(&dockerfile, "CUDA_COMPUTE_CAP");
    let cap: u32 = cap.parse().unwrap_or_else(|_| {
        panic!("CUDA_COMPUTE_CAP={cap}: a plain number, so that it is PTX for every later GPU")
    });
    assert!(
        cap <= 80,
        "CUDA_COMPUTE_CAP={cap}: the default image must run on A100 (8.0) and L4 (8.9)"
    );
    // CUDA 13 needs a driver of the 580 branch or newer.
    let cuda_major: u32 = dockerfile_arg(&dockerfile, "CUDA_VERSION")
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("CUDA_VERSION");
    assert_eq!(cuda_major, 13, "the driver minimum below is CUDA 13's");
    let min_driver = 580;
    // The highest architecture the image is documented and checked on (H100/H200).
    let max_cap = 90;

    let mut sets: Vec<(String, Vec<Value>)> = TARGETS
        .iter()
        .map(|t| (format!("k8s/{t}"), render(t)))
        .collect();
    sets.push(("k8s/base/prepull".into(), render("base/prepull")));
    for (what, objs) in sets {
        for o in objs.iter().filter(|o| {
            matches!(kind(o), "Deployment" | "DaemonSet") && namespace(o).starts_with("virtualfit")
        }) {
            let ctx = format!("{what} {} {}", kind(o), name(o));
            for term in node_affinity_terms(&o["spec"]["template"]["spec"]) {
                let get = |key: &str| term.iter().find(|e| e.key == key);
                if let Some(gke) = get("cloud.google.com/gke-accelerator") {
                    assert_eq!(gke.operator, "In", "{ctx}");
                    for v in &gke.values {
                        let c = GKE_ACCELERATORS
                            .iter()
                            .find(|(n, _)| n == v)
                            .unwrap_or_else(|| panic!("{ctx}: unknown GKE accelerator {v}"))
                            .1;
                        assert!(
                            (cap..=max_cap).contains(&c),
                            "{ctx}: {v} (compute capability {c}) cannot run PTX for {cap}"
                        );
                    }
                    for want in [
                        "nvidia-tesla-a100",
                        "nvidia-l4",
                        "nvidia-h100-80gb",
                        "nvidia-h200-141gb",
                    ] {
                        assert!(gke.values.iter().any(|v| v == want), "{ctx}: {want}");
                    }
                } else {
                    let major = get("nvidia.com/gpu.compute.major").unwrap_or_else(|| {
                        panic!("{ctx}: a term without a GPU requirement: {term:?}")
                    });
                    assert_eq!(major.operator, "In", "{ctx}");
                    let majors: BTreeSet<u32> = major
                        .values
                        .iter()
                        .map(|v| v.parse().expect("integer"))
                        .collect();
                    assert!(
                        majors
                            .iter()
                            .all(|m| m * 10 >= cap / 10 * 10 && m * 10 <= max_cap),
                        "{ctx}: compute capability majors {majors:?} against PTX for {cap}"
                    );
                    assert_eq!(
                        majors,
                        [8, 9].into(),
                        "{ctx}: A100/L4 (8.x) and H100/H200 (9.0)"
                    );
                    let driver = get("nvidia.com/cuda.driver-version.major")
                        .unwrap_or_else(|| panic!("{ctx}: no driver requirement: {term:?}"));
                    assert_eq!(driver.operator, "Gt", "{ctx}");
                    assert_eq!(
                        driver.values,
                        [(min_driver - 1).to_string()],
                        "{ctx}: a driver of the {min_driver} branch or newer"
                    );
                }
            }
        }
    }
    // The base Deployment admits both kinds of nodes; the README states the driver minimum.
    let base = render("base");
    let terms = node_affinity_terms(&inference_deployment(&base)["spec"]["template"]["spec"]);
    assert_eq!(
        terms.len(),
        2,
        "GPU feature discovery labels, or a GKE accelerator type"
    );
    for readme in ["README.md", "k8s/README.md"] {
        let t = fs::read_to_string(root().join(readme)).expect("README");
        assert!(
            t.contains(&format!("{min_driver} branch or newer")),
            "{readme} must state the driver minimum (the {min_driver} branch or newer)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Pod Security Standard `restricted` (the namespace enforces it)

/// The `restricted` Pod Security Standard's requirements
/// (https://kubernetes.io/docs/concepts/security/pod-security-standards/), for one pod spec.
fn restricted_violations(spec: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let psc = &spec["securityContext"];
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host].as_bool() == Some(true) {
            bad.push(format!("{host}: true"));
        }
    }
    let allowed_volumes = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in seq(spec.get("volumes")) {
        for key in v.as_mapping().expect("volume").keys() {
            let key = key.as_str().expect("key");
            if key != "name" && !allowed_volumes.contains(&key) {
                bad.push(format!("volume type {key}"));
            }
        }
    }
    let seccomp_ok = |sc: &Value| {
        matches!(
            sc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault") | Some("Localhost")
        )
    };
    let containers: Vec<Value> = seq(spec.get("initContainers"))
        .into_iter()
        .chain(seq(spec.get("containers")))
        .collect();
    assert!(!containers.is_empty());
    for c in &containers {
        let cname = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["privileged"].as_bool() == Some(true) {
            bad.push(format!("{cname}: privileged"));
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            bad.push(format!("{cname}: allowPrivilegeEscalation must be false"));
        }
        let non_root = sc["runAsNonRoot"]
            .as_bool()
            .or(psc["runAsNonRoot"].as_bool());
        if non_root != Some(true) {
            bad.push(format!("{cname}: runAsNonRoot must be true"));
        }
        if sc["runAsUser"].as_u64().or(psc["runAsUser"].as_u64()) == Some(0) {
            bad.push(format!("{cname}: runAsUser 0"));
        }
        if !(seccomp_ok(sc) || (sc["seccompProfile"].is_null() && seccomp_ok(psc))) {
            bad.push(format!(
                "{cname}: seccompProfile RuntimeDefault or Localhost"
            ));
        }
        let caps = &sc["capabilities"];
        if !seq(caps.get("drop"))
            .iter()
            .any(|d| d.as_str() == Some("ALL"))
        {
            bad.push(format!("{cname}: capabilities must drop ALL"));
        }
        for add in seq(caps.get("add")) {
            if add.as_str() != Some("NET_BIND_SERVICE") {
                bad.push(format!("{cname}: adds capability {add:?}"));
            }
        }
        for p in seq(c.get("ports")) {
            if p.get("hostPort").is_some_and(|h| h.as_u64() != Some(0)) {
                bad.push(format!("{cname}: hostPort"));
            }
        }
    }
    bad
}

#[test]
fn readme_pods_are_manifests_that_pass_the_restricted_pod_security_standard() {
    let readme = fs::read_to_string(k8s_dir().join("README.md")).expect("k8s/README.md");
    assert!(
        !readme.contains("kubectl -n virtualfit run"),
        "k8s/README.md must not have users create pods with `kubectl run` (refused by the restricted level)"
    );
    let base = render("base");
    let ns = find(&base, "Namespace", "virtualfit");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str(),
        Some("restricted")
    );
    let claim = name(
        base.iter()
            .find(|o| kind(o) == "PersistentVolumeClaim")
            .expect("the model claim"),
    );
    let mut pods = 0;
    for f in job_files() {
        let rel = f.strip_prefix(root()).expect("in the repository");
        assert!(
            readme.contains(&format!("kubectl apply -f {}", rel.display())),
            "k8s/README.md must use {}",
            rel.display()
        );
        for o in load_docs(&f) {
            assert_eq!(namespace(&o), "virtualfit", "{}", rel.display());
            if kind(&o) != "Pod" {
                continue;
            }
            pods += 1;
            let bad = restricted_violations(&o["spec"]);
            assert!(bad.is_empty(), "{} {}: {bad:?}", rel.display(), name(&o));
            assert_eq!(o["spec"]["restartPolicy"].as_str(), Some("Never"));
            assert!(
                o["spec"]["activeDeadlineSeconds"].as_u64().is_some(),
                "{}: a one-off pod ends by itself",
                rel.display()
            );
            for v in seq(o["spec"].get("volumes")) {
                if let Some(c) = v["persistentVolumeClaim"]["claimName"].as_str() {
                    assert_eq!(c, claim, "{}", rel.display());
                }
            }
            // The pod's name is the one the README's `kubectl cp` / `exec` use.
            assert!(
                readme.contains(&format!("{}:/", name(&o))),
                "k8s/README.md must copy files into pod {}",
                name(&o)
            );
        }
    }
    assert_eq!(pods, 2, "the models loader and the load-test client");
    // Every pod the kustomizations put in the restricted namespaces passes too.
    for target in TARGETS {
        for o in render(target) {
            if !matches!(kind(&o), "Deployment" | "DaemonSet")
                || !namespace(&o).starts_with("virtualfit")
            {
                continue;
            }
            let bad = restricted_violations(&o["spec"]["template"]["spec"]);
            assert!(
                bad.is_empty(),
                "k8s/{target} {} {}: {bad:?}",
                kind(&o),
                name(&o)
            );
        }
    }
    // The check is live.
    let mut root_pod = load_docs(&job_files()[0])
        .into_iter()
        .find(|o| kind(o) == "Pod")
        .expect("a pod");
    root_pod["spec"]["securityContext"]["runAsNonRoot"] = Value::from(false);
    root_pod["spec"]["containers"][0]["securityContext"]["capabilities"] =
        serde_yaml::from_str("{add: [SYS_ADMIN]}").expect("yaml");
    assert_eq!(restricted_violations(&root_pod["spec"]).len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Scrape configuration, prometheus-adapter, exporter

#[test]
fn scrape_jobs_label_pods_and_gpus_with_their_namespace() {
    let config = prometheus_config();
    let pods = job(&config, "virtualfit-pods");
    let relabel = seq(pods.get("relabel_configs"));
    assert!(
        relabel.iter().any(|r| {
            r["target_label"].as_str() == Some("namespace")
                && seq(r.get("source_labels")) == vec![Value::from("__meta_kubernetes_namespace")]
        }),
        "the pod job must add `namespace` from __meta_kubernetes_namespace"
    );
    assert_ne!(pods["honor_labels"].as_bool(), Some(true));
    let dcgm = job(&config, "dcgm-exporter");
    assert_eq!(
        dcgm["honor_labels"].as_bool(),
        Some(true),
        "the exporter's namespace/pod labels describe the GPU's user: keep them"
    );
    assert!(
        !seq(dcgm.get("relabel_configs"))
            .iter()
            .any(|r| r["target_label"].as_str() == Some("namespace")),
        "the dcgm job must not overwrite `namespace` with the exporter's own"
    );
    // The scrape interval keeps up with the HPA's 15 s sync.
    let interval = config["global"]["scrape_interval"]
        .as_str()
        .expect("interval");
    assert_eq!(interval, "15s");
    // Service discovery: pods for the app, the exporter's Service endpoints in gpu-operator.
    let sd = |j: &Value| seq(j.get("kubernetes_sd_configs"));
    assert_eq!(sd(pods).len(), 1);
    assert_eq!(sd(pods)[0]["role"].as_str(), Some("pod"));
    assert_eq!(sd(dcgm)[0]["role"].as_str(), Some("endpoints"));
    assert_eq!(
        seq(sd(dcgm)[0]["namespaces"].get("names")),
        vec![Value::from("gpu-operator")]
    );
    // promtool accepts the configuration, with the Kubernetes discovery swapped for static
    // targets (Debian's Prometheus is built without Kubernetes discovery; the relabelling,
    // which is what matters here, is kept as shipped).
    let mut checked = config.clone();
    for j in checked["scrape_configs"].as_sequence_mut().expect("jobs") {
        let j = j.as_mapping_mut().expect("job");
        assert!(j.remove("kubernetes_sd_configs").is_some());
        let target: Value = serde_yaml::from_str("[{targets: ['127.0.0.1:9090']}]").expect("yaml");
        j.insert("static_configs".into(), target);
    }
    checked
        .as_mapping_mut()
        .expect("config")
        .remove("rule_files");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("prometheus.yml");
    fs::write(&file, serde_yaml::to_string(&checked).expect("yaml")).expect("write");
    let out = promtool(&["check", "config", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
}

/// k8s/ rendered with the component at `dir` (relative to k8s/), as a kustomization of one's
/// own would list it.
fn render_with_component(dir: &str) -> Vec<Value> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let own = tmp.path().canonicalize().expect("temp dir");
    let k8s = relative_path(&own, &canonical(&k8s_dir()));
    fs::write(
        own.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
            k8s.display(),
            k8s.join(dir).display()
        ),
    )
    .expect("write kustomization");
    render_dir(&own)
}

#[test]
fn prometheus_adapter_is_an_opt_in_component_serving_the_custom_metrics_api_only() {
    // Not applied by default: it would replace an existing custom metrics API registration.
    for target in TARGETS {
        for o in render(target) {
            assert!(
                kind(&o) != "APIService" && !name(&o).contains("prometheus-adapter"),
                "k8s/{target} applies {} {}: the adapter is opt-in",
                kind(&o),
                name(&o)
            );
        }
    }
    let dir = "autoscaling/prometheus-adapter";
    let k = load_one(&k8s_dir().join(dir).join("kustomization.yaml"));
    assert_eq!(kind(&k), "Component");
    let objs = render(dir);
    let services: Vec<&Value> = objs.iter().filter(|o| kind(o) == "APIService").collect();
    assert_eq!(services.len(), 1);
    assert_eq!(
        services[0]["spec"]["group"].as_str(),
        Some("custom.metrics.k8s.io")
    );
    for o in &objs {
        let s = serde_yaml::to_string(o).expect("yaml");
        assert!(
            !s.contains("external.metrics.k8s.io"),
            "{} {} touches the external metrics API, which KEDA owns",
            kind(o),
            name(o)
        );
    }
    let cm = find(&objs, "ConfigMap", "prometheus-adapter");
    let config: Value =
        serde_yaml::from_str(cm["data"]["config.yaml"].as_str().expect("config.yaml"))
            .expect("adapter config parses");
    assert!(config.get("externalRules").is_none());
    assert!(config.get("resourceRules").is_none());
    assert!(!seq(config.get("rules")).is_empty());
    // The adapter's RBAC only reads, without wildcards.
    for o in objs.iter().filter(|o| kind(o) == "ClusterRole") {
        for rule in seq(o.get("rules")) {
            for verb in seq(rule.get("verbs")) {
                let verb = verb.as_str().expect("verb");
                assert!(
                    ["get", "list", "watch"].contains(&verb),
                    "{}: {verb}",
                    name(o)
                );
            }
            for r in seq(rule.get("resources")) {
                assert_ne!(r.as_str(), Some("*"), "{}", name(o));
            }
        }
    }
    // A NetworkPolicy closes the adapter's pods but for its serving port.
    let dep = find(&objs, "Deployment", "prometheus-adapter");
    let pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .expect("pod labels");
    let np = objs
        .iter()
        .find(|o| {
            kind(o) == "NetworkPolicy"
                && namespace(o) == namespace(dep)
                && o["spec"]["podSelector"]["matchLabels"]
                    .as_mapping()
                    .is_some_and(|m| {
                        !m.is_empty() && m.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
                    })
        })
        .expect("a NetworkPolicy selecting the adapter's pods");
    let types: BTreeSet<String> = seq(np["spec"].get("policyTypes"))
        .iter()
        .map(|t| t.as_str().expect("type").to_string())
        .collect();
    assert_eq!(types, ["Egress".to_string(), "Ingress".to_string()].into());
    let ingress = seq(np["spec"].get("ingress"));
    assert_eq!(ingress.len(), 1);
    let ports = seq(ingress[0].get("ports"));
    assert_eq!(ports.len(), 1, "only the serving port");
    let container = &seq(dep["spec"]["template"]["spec"].get("containers"))[0];
    assert_eq!(ports[0]["port"].as_str(), Some("https"));
    port_named(container, "https");
    for rule in seq(np["spec"].get("egress")) {
        assert!(
            !seq(rule.get("ports")).is_empty(),
            "an egress rule without ports"
        );
    }
    // It composes with the whole setup as a component of a kustomization of one's own.
    let both = render_with_component(dir);
    assert_eq!(both.len(), render("").len() + objs.len());
    find(&both, "APIService", "v1beta1.custom.metrics.k8s.io");
}

/// The DCGM fields that dcgm-exporter exports with its default and DCP counter lists
/// (NVIDIA/dcgm-exporter, etc/default-counters.csv and etc/dcp-metrics-included.csv).
const DCGM_EXPORTED: &[&str] = &[
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_RESERVED",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
];

#[test]
fn every_dcgm_name_is_exported_by_the_dcgm_exporter() {
    let used = names_in_k8s("DCGM_FI_");
    assert!(
        used.contains_key("DCGM_FI_DEV_GPU_UTIL"),
        "the dashboards' GPU utilisation"
    );
    for (n, files) in &used {
        assert!(
            DCGM_EXPORTED.contains(&n.as_str()),
            "{n} (in {files:?}) is not exported"
        );
    }
}

#[test]
fn names_in_finds_whole_identifiers() {
    let found = names_in(
        "sum(virtualfit_a{x}) + virtualfit_b_bucket, my_virtualfit_c, any virtualfit_*",
        "virtualfit_",
    );
    assert_eq!(
        found,
        [
            "virtualfit_a".to_string(),
            "virtualfit_b_bucket".to_string()
        ]
        .into()
    );
}

// ---------------------------------------------------------------------------------------------
// Jobs: the store's folder, Redis, the batch worker pool

use virtualfit::jobs::redis_store::{BATCH_STREAM, GROUP};

/// The opt-in Redis for the jobs API, with the wiring (base/jobs-redis, which it includes).
const REDIS: &str = "base/redis";
/// The wiring alone: the server pods and KEDA read a Redis named by the Secret.
const JOBS_REDIS: &str = "base/jobs-redis";
/// The batch workers that scale to zero on the job stream.
const BATCH_POOL: &str = "overlays/batch-pool";
/// The Secret the wiring reads (k8s/README.md shows how to create it; it is not shipped).
const JOBS_SECRET: &str = "virtualfit-jobs-redis";
const REDIS_PORT: u64 = 6379;

/// The container's variables taken from Secrets: name -> (Secret, key).
fn secret_env(container: &Value) -> BTreeMap<String, (String, String)> {
    seq(container.get("env"))
        .iter()
        .filter_map(|e| {
            let r = &e["valueFrom"]["secretKeyRef"];
            Some((
                e["name"].as_str()?.to_string(),
                (
                    r["name"].as_str()?.to_string(),
                    r["key"].as_str()?.to_string(),
                ),
            ))
        })
        .collect()
}

fn containers(pod_spec: &Value) -> Vec<Value> {
    seq(pod_spec.get("initContainers"))
        .into_iter()
        .chain(seq(pod_spec.get("containers")))
        .collect()
}

fn workloads(objs: &[Value]) -> impl Iterator<Item = &Value> {
    objs.iter()
        .filter(|o| matches!(kind(o), "Deployment" | "DaemonSet" | "StatefulSet"))
}

fn pod_labels(workload: &Value) -> &Value {
    &workload["spec"]["template"]["metadata"]["labels"]
}

/// Whether a label selector (`matchLabels` and `matchExpressions`) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = selector["matchLabels"].as_mapping().is_none_or(|m| {
        m.iter()
            .all(|(k, v)| label(k.as_str().expect("label key")) == v.as_str())
    });
    let by_expressions = seq(selector.get("matchExpressions")).iter().all(|e| {
        let key = e["key"].as_str().expect("key");
        let values: Vec<String> = seq(e.get("values"))
            .iter()
            .map(|v| v.as_str().expect("string value").to_string())
            .collect();
        let is_in = label(key).is_some_and(|v| values.iter().any(|w| w == v));
        match e["operator"].as_str() {
            Some("In") => is_in,
            Some("NotIn") => !is_in,
            Some("Exists") => label(key).is_some(),
            Some("DoesNotExist") => label(key).is_none(),
            other => panic!("selector operator {other:?}"),
        }
    });
    by_labels && by_expressions
}

/// Whether the NetworkPolicy `np` lets a pod with `labels` in namespace `ns` connect to `port`
/// of the pods it selects (named ports resolved on `container`, theirs).
fn admits(np: &Value, container: &Value, ns: &str, labels: &Value, port: u64) -> bool {
    let mut ns_labels = serde_yaml::Mapping::new();
    ns_labels.insert("kubernetes.io/metadata.name".into(), ns.into());
    let ns_labels = Value::Mapping(ns_labels);
    seq(np["spec"].get("ingress")).iter().any(|rule| {
        let ports = seq(rule.get("ports"));
        let port_ok = ports.is_empty()
            || ports.iter().any(|p| match &p["port"] {
                Value::Number(n) => n.as_u64() == Some(port),
                Value::String(n) => port_named(container, n) == port,
                Value::Null => true,
                other => panic!("port {other:?}"),
            });
        let from = seq(rule.get("from"));
        let peer_ok = from.is_empty()
            || from.iter().any(|peer| {
                if peer.get("ipBlock").is_some() {
                    return false;
                }
                let ns_ok = match peer.get("namespaceSelector") {
                    None => ns == namespace(np),
                    Some(sel) => selects(sel, &ns_labels),
                };
                ns_ok
                    && peer
                        .get("podSelector")
                        .is_none_or(|sel| selects(sel, labels))
            });
        port_ok && peer_ok
    })
}

/// `redis:7.2.16-alpine` -> (7, 2, 16); panics unless the tag is a full version.
fn redis_version(image: &str) -> (u32, u32, u32) {
    let tag = image
        .strip_prefix("redis:")
        .unwrap_or_else(|| panic!("{image}: the official `redis` image"));
    let version = tag.split('-').next().expect("version");
    let parts: Vec<u32> = version
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("{image}: a pinned version"))
        })
        .collect();
    assert_eq!(parts.len(), 3, "{image}: pinned to a patch release");
    (parts[0], parts[1], parts[2])
}

/// Kubernetes quantities and Redis sizes in bytes: `2Gi`, `1536mb`, `512Mi`, `1gb`.
fn bytes(q: &str) -> u64 {
    let units: [(&str, u64); 6] = [
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
        ("gb", 1 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().expect("a number") * factor;
        }
    }
    q.parse().expect("plain bytes")
}

/// The one object of `k` selecting the pods of `workload`, if any.
fn selecting<'a>(objs: &'a [Value], k: &str, workload: &Value) -> Vec<&'a Value> {
    objs.iter()
        .filter(|o| kind(o) == k && namespace(o) == namespace(workload))
        .filter(|o| {
            let sel = match k {
                "Service" => {
                    let mut m = serde_yaml::Mapping::new();
                    m.insert("matchLabels".into(), o["spec"]["selector"].clone());
                    Value::Mapping(m)
                }
                "NetworkPolicy" => o["spec"]["podSelector"].clone(),
                _ => o["spec"]["selector"].clone(),
            };
            selects(&sel, pod_labels(workload))
        })
        .collect()
}

fn validate_core(what: &str, objs: &[Value]) {
    let core: Vec<Value> = objs
        .iter()
        .filter(|o| !str_at(o, &["apiVersion"]).is_some_and(|a| a.starts_with("keda.sh/")))
        .cloned()
        .collect();
    for o in &core {
        assert!(CORE_KINDS.contains(&kind(o)), "{what}: {}", kind(o));
    }
    let out = kubernetes_validate(&core);
    assert!(out.status.success(), "{what}:\n{}", text(&out));
    let passed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert_eq!(passed, core.len(), "{what}: not every object validated");
}

fn validate_trigger_authentications(what: &str, objs: &[Value]) -> usize {
    let auths: Vec<&Value> = objs
        .iter()
        .filter(|o| kind(o) == "TriggerAuthentication")
        .collect();
    if !auths.is_empty() {
        let out = keda_validate_kind(
            &auths,
            "keda.sh_triggerauthentications.yaml",
            "TriggerAuthentication",
        );
        assert!(out.status.success(), "{what}:\n{}", text(&out));
    }
    auths.len()
}

#[test]
fn the_jobs_store_folder_is_a_writable_volume_on_a_read_only_root() {
    let sets = targets_and_batch_pool();
    for (what, objs) in sets {
        for dep in objs.iter().filter(|o| {
            kind(o) == "Deployment"
                && str_at(pod_labels(o), &["app.kubernetes.io/name"]) == Some("virtualfit")
        }) {
            let ctx = format!("{what} {}", name(dep));
            let pod = &dep["spec"]["template"]["spec"];
            let c = &seq(pod.get("containers"))[0];
            assert_eq!(
                c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{ctx}"
            );
            let dir = env_of(c)
                .get("VIRTUALFIT_DATA_DIR")
                .cloned()
                .unwrap_or_else(|| {
                    panic!("{ctx}: VIRTUALFIT_DATA_DIR (default ./data is read-only)")
                });
            let mount = seq(c.get("volumeMounts"))
                .into_iter()
                .find(|m| m["mountPath"].as_str() == Some(dir.as_str()))
                .unwrap_or_else(|| panic!("{ctx}: nothing mounted at {dir}"));
            assert_ne!(mount["readOnly"].as_bool(), Some(true), "{ctx}");
            let volume = seq(pod.get("volumes"))
                .into_iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{ctx}: no volume for {dir}"));
            assert!(
                volume["emptyDir"]["sizeLimit"].is_string(),
                "{ctx}: a bounded emptyDir at {dir}: {volume:?}"
            );
        }
    }
}

#[test]
fn redis_is_an_opt_in_component_locked_down_like_the_app() {
    for dir in [REDIS, JOBS_REDIS] {
        let k = load_one(&k8s_dir().join(dir).join("kustomization.yaml"));
        assert_eq!(kind(&k), "Component", "k8s/{dir}");
    }
    // Not applied by default: without the Secret the pods would not start.
    for target in TARGETS {
        for o in render(target) {
            let text = serde_yaml::to_string(&o).expect("yaml");
            assert!(
                !text.contains(JOBS_SECRET) && !name(&o).contains("redis"),
                "k8s/{target} applies {} {}: Redis is opt-in",
                kind(&o),
                name(&o)
            );
        }
    }
    let objs = render(REDIS);
    validate_core(REDIS, &objs);
    assert_eq!(validate_trigger_authentications(REDIS, &objs), 1);
    let sts = find(&objs, "StatefulSet", "virtualfit-redis");
    let pod = &sts["spec"]["template"]["spec"];
    let bad = restricted_violations(pod);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    let c = &seq(pod.get("containers"))[0];
    let image = c["image"].as_str().expect("image");
    // KEDA's lagCount reads XINFO GROUPS' lag, which Redis 7 introduced.
    assert!(redis_version(image).0 >= 7, "{image}");
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(c[probe].is_mapping(), "{probe}");
    }
    for r in ["requests", "limits"] {
        assert!(c["resources"][r]["memory"].is_string(), "{r}.memory");
        assert!(c["resources"][r]["cpu"].is_string(), "{r}.cpu");
    }
    // Persisted in its volume, never evicting a job, within its memory limit: an append-only
    // file rewrite forks Redis, and under writes the child may copy every page of the data
    // set, so maxmemory is at most half the limit.
    let config = redis_config(&objs);
    let setting = |k: &str| {
        config
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("redis.conf: no {k}"))
    };
    let data = setting("dir");
    assert_eq!(setting("appendonly"), "yes");
    assert_eq!(setting("maxmemory-policy"), "noeviction");
    let maxmemory = bytes(setting("maxmemory"));
    let limit = bytes(c["resources"]["limits"]["memory"].as_str().expect("limit"));
    assert!(
        2 * maxmemory <= limit,
        "maxmemory {maxmemory} must be at most half the limit {limit}, for the rewrite's copy"
    );
    let mount = seq(c.get("volumeMounts"))
        .into_iter()
        .find(|m| m["mountPath"].as_str() == Some(data))
        .expect("the data folder is mounted");
    assert!(seq(sts["spec"].get("volumeClaimTemplates"))
        .iter()
        .any(|t| t["metadata"]["name"] == mount["name"]));
    // Its password comes from the Secret, mounted as a file (the next test runs it).
    let secret_volumes: Vec<Value> = seq(pod.get("volumes"))
        .into_iter()
        .filter(|v| v["secret"]["secretName"].as_str() == Some(JOBS_SECRET))
        .collect();
    assert_eq!(secret_volumes.len(), 1);
    assert!(seq(secret_volumes[0]["secret"].get("items"))
        .iter()
        .any(|i| i["key"].as_str() == Some("password")));
    // The Service reaches the Redis port.
    let svc = find(&objs, "Service", "virtualfit-redis");
    assert_eq!(selecting(&objs, "Service", sts).len(), 1);
    let sp = &seq(svc["spec"].get("ports"))[0];
    assert_eq!(sp["port"].as_u64(), Some(REDIS_PORT));
    assert_eq!(
        port_named(c, sp["targetPort"].as_str().expect("named target port")),
        REDIS_PORT
    );
    // The NetworkPolicy admits the server pods and KEDA's operator on 6379, nobody else.
    let nps = selecting(&objs, "NetworkPolicy", sts);
    assert_eq!(nps.len(), 1);
    let np = nps[0];
    let types: BTreeSet<&str> = seq(np["spec"].get("policyTypes"))
        .iter()
        .map(|t| {
            if t.as_str() == Some("Ingress") {
                "Ingress"
            } else {
                "Egress"
            }
        })
        .collect();
    assert_eq!(types, ["Egress", "Ingress"].into(), "closed both ways");
    assert!(
        seq(np["spec"].get("egress")).is_empty(),
        "Redis calls nothing"
    );
    let pool = render(BATCH_POOL);
    let servers: Vec<&Value> = workloads(&pool)
        .filter(|w| kind(w) == "Deployment")
        .collect();
    assert_eq!(
        servers.len(),
        2,
        "the inference Deployment and the batch workers"
    );
    for w in &servers {
        assert!(
            admits(np, c, namespace(w), pod_labels(w), REDIS_PORT),
            "{} must reach Redis",
            name(w)
        );
        assert!(!admits(np, c, namespace(w), pod_labels(w), 16379));
        assert!(!admits(np, c, "monitoring", pod_labels(w), REDIS_PORT));
    }
    let keda: Value =
        serde_yaml::from_str("{app.kubernetes.io/name: keda-operator}").expect("yaml");
    assert!(admits(np, c, "keda", &keda, REDIS_PORT), "KEDA's scaler");
    assert!(!admits(np, c, "virtualfit", &keda, REDIS_PORT));
    let mut others: Vec<(String, Value)> = workloads(&render("base/prepull"))
        .map(|w| (name(w).to_string(), pod_labels(w).clone()))
        .collect();
    for f in job_files() {
        for o in load_docs(&f).iter().filter(|o| kind(o) == "Pod") {
            others.push((name(o).to_string(), o["metadata"]["labels"].clone()));
        }
    }
    assert!(others.len() >= 3);
    for (n, labels) in others {
        assert!(
            !admits(np, c, "virtualfit", &labels, REDIS_PORT),
            "{n} must not reach Redis"
        );
    }
    // It composes with the whole setup as a component of a kustomization of one's own, and
    // base/jobs-redis alone wires the pods to a Redis of one's own.
    let top = render("");
    for (component, added) in [(REDIS, objs.len()), (JOBS_REDIS, 1)] {
        let both = render_with_component(component);
        assert_eq!(both.len(), top.len() + added, "{component}");
        let c = &seq(inference_deployment(&both)["spec"]["template"]["spec"].get("containers"))[0];
        assert_eq!(
            secret_env(c).get("VIRTUALFIT_JOBS_REDIS"),
            Some(&(JOBS_SECRET.to_string(), "url".to_string())),
            "{component}"
        );
    }
}

#[test]
fn batch_pool_scales_from_zero_on_the_servers_job_stream() {
    let objs = render(BATCH_POOL);
    validate_core(BATCH_POOL, &objs);
    assert_eq!(validate_trigger_authentications(BATCH_POOL, &objs), 1);
    let sos: Vec<&Value> = objs.iter().filter(|o| kind(o) == "ScaledObject").collect();
    assert_eq!(sos.len(), 2, "the inference and the batch workers");
    let out = keda_validate(&sos);
    assert!(out.status.success(), "{}", text(&out));
    let so = find(&objs, "ScaledObject", "virtualfit-batch-worker-scaler");
    let spec = &so["spec"];
    // It scales the batch workers, from zero.
    let target = &spec["scaleTargetRef"];
    assert_eq!(target["kind"].as_str(), Some("Deployment"));
    let worker = find(&objs, "Deployment", target["name"].as_str().expect("name"));
    assert_eq!(namespace(worker), namespace(so));
    assert!(worker["spec"].get("replicas").is_none());
    assert_eq!(spec["minReplicaCount"].as_u64(), Some(0));
    assert!(spec["maxReplicaCount"].as_u64().is_some_and(|m| m >= 1));
    // On the lag of the consumer group on the batch stream, as the server names them.
    let trigger_list = triggers(so);
    assert_eq!(trigger_list.len(), 1);
    let t = &trigger_list[0];
    assert_eq!(t["type"].as_str(), Some("redis-streams"));
    let meta = t["metadata"].as_mapping().expect("metadata");
    for (k, v) in meta {
        assert!(v.is_string(), "metadata {k:?} must be a string: {v:?}");
    }
    let get = |k: &str| meta.get(k).and_then(Value::as_str);
    assert_eq!(get("stream"), Some(BATCH_STREAM));
    assert_eq!(get("consumerGroup"), Some(GROUP));
    let lag: i64 = get("lagCount")
        .and_then(|v| v.parse().ok())
        .expect("lagCount, an integer");
    assert!(lag > 0);
    let activation: i64 = get("activationLagCount")
        .and_then(|v| v.parse().ok())
        .expect("activationLagCount, an integer");
    assert!(activation >= 0);
    for ignored in ["pendingEntriesCount", "streamLength"] {
        assert!(
            get(ignored).is_none(),
            "{ignored} is ignored beside lagCount"
        );
    }
    // Connection from the TriggerAuthentication, i.e. the Secret the servers read too.
    assert!(get("address").is_none() && get("host").is_none());
    let auth = find(
        &objs,
        "TriggerAuthentication",
        t["authenticationRef"]["name"]
            .as_str()
            .expect("authenticationRef"),
    );
    assert_eq!(namespace(auth), namespace(so));
    let params: BTreeMap<String, (String, String)> = seq(auth["spec"].get("secretTargetRef"))
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().expect(k).to_string();
            (s("parameter"), (s("name"), s("key")))
        })
        .collect();
    for p in ["address", "password"] {
        assert_eq!(
            params.get(p).map(|(s, _)| s.as_str()),
            Some(JOBS_SECRET),
            "{p}"
        );
    }
    // The Redis of the component, at a version with the lag.
    let sts = find(&objs, "StatefulSet", "virtualfit-redis");
    let image = seq(sts["spec"]["template"]["spec"].get("containers"))[0]["image"]
        .as_str()
        .expect("image")
        .to_string();
    assert!(
        redis_version(&image).0 >= 7,
        "lagCount needs Redis 7+: {image}"
    );
    // The simulator runs it.
    let parsed = virtualfit::simulate::keda::ScaledObject::from_yaml(
        "batch-pool",
        &serde_yaml::to_string(so).expect("yaml"),
    )
    .expect("`virtualfit simulate` reads the batch pool's ScaledObject");
    assert!(parsed.reads_job_stream() && parsed.min_replica_count == 0);

    // The workers: the inference pods under another component label and container name.
    let inference = inference_deployment(&objs);
    let relabel = |w: &Value| {
        let mut t = w["spec"]["template"].clone();
        t["metadata"]["labels"]["app.kubernetes.io/component"] = Value::from("x");
        for c in t["spec"]["topologySpreadConstraints"]
            .as_sequence_mut()
            .expect("spread constraints")
        {
            c["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] = Value::from("x");
        }
        t["spec"]["containers"][0]["name"] = Value::from("x");
        // The one setting that differs: which job priorities the replicas take (below).
        if let Some(env) = t["spec"]["containers"][0]["env"].as_sequence_mut() {
            env.retain(|e| e["name"].as_str() != Some("VIRTUALFIT_JOB_PRIORITIES"));
        }
        t
    };
    assert_eq!(relabel(worker), relabel(inference), "the same pods");
    let worker_container = &seq(worker["spec"]["template"]["spec"].get("containers"))[0];
    let inference_container = &seq(inference["spec"]["template"]["spec"].get("containers"))[0];
    assert_ne!(worker_container["name"], inference_container["name"]);
    for w in [inference, worker] {
        let c = &seq(w["spec"]["template"]["spec"].get("containers"))[0];
        assert_eq!(
            secret_env(c).get("VIRTUALFIT_JOBS_REDIS"),
            Some(&(JOBS_SECRET.to_string(), "url".to_string())),
            "{}",
            name(w)
        );
    }
    // No client traffic, no share of the inference triggers' sums: the workers are behind no
    // Service, outside the inference PDB and NetworkPolicy and the `virtualfit-pods` scrape
    // job (it keeps component=inference), and the inference GPU trigger counts the inference
    // container's GPUs only.
    assert_ne!(
        str_at(pod_labels(worker), &["app.kubernetes.io/component"]),
        Some("inference")
    );
    assert!(selecting(&objs, "Service", worker).is_empty());
    assert!(selecting(&objs, "PodDisruptionBudget", worker).is_empty());
    // Of the policies selecting the workers (the namespace's default, Redis' clients and their
    // own), only their own admits anything.
    let worker_nps: Vec<&Value> = selecting(&objs, "NetworkPolicy", worker)
        .into_iter()
        .filter(|np| !seq(np["spec"].get("ingress")).is_empty())
        .collect();
    assert_eq!(worker_nps.len(), 1);
    for rule in seq(worker_nps[0]["spec"].get("ingress")) {
        assert_eq!(
            seq(rule.get("ports"))
                .iter()
                .map(|p| p["port"].as_str().expect("named port"))
                .collect::<Vec<_>>(),
            ["metrics"]
        );
    }
    // The inference replicas leave batch jobs to the pool: their triggers see interactive work
    // only (tests/deploy/simulate.rs runs a backlog through both ScaledObjects).
    assert_eq!(
        env_of(inference_container)
            .get("VIRTUALFIT_JOB_PRIORITIES")
            .map(String::as_str),
        Some("interactive"),
        "the inference replicas take interactive jobs only"
    );
    assert!(
        !env_of(worker_container).contains_key("VIRTUALFIT_JOB_PRIORITIES"),
        "the workers take every priority"
    );
    let gpu = triggers(find(
        &objs,
        "ScaledObject",
        "virtualfit-inference-gpu-scaler",
    ))
    .into_iter()
    .find(|t| t["name"].as_str() == Some("gpu-busy"))
    .expect("the GPU trigger");
    let query = gpu["metadata"]["query"].as_str().expect("query");
    assert_eq!(query_form(query), Some(QueryForm::Sum), "{query}");
    // Every pod of the namespace passes the restricted Pod Security Standard.
    for w in workloads(&objs) {
        let bad = restricted_violations(&w["spec"]["template"]["spec"]);
        assert!(bad.is_empty(), "{} {}: {bad:?}", kind(w), name(w));
        for c in containers(&w["spec"]["template"]["spec"]) {
            assert_eq!(
                c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{}",
                name(w)
            );
        }
    }
    // The README says how to create the Secret, with the address KEDA's operator (another
    // namespace) resolves.
    let readme = fs::read_to_string(k8s_dir().join("README.md")).expect("k8s/README.md");
    let svc = find(&objs, "Service", "virtualfit-redis");
    let address = format!(
        "{}.{}.svc.cluster.local:{REDIS_PORT}",
        name(svc),
        namespace(svc)
    );
    for want in [
        format!("kubectl apply -k k8s/{BATCH_POOL}"),
        format!("create secret generic {JOBS_SECRET}"),
        format!("address={address}"),
        format!("@{address}/"),
    ] {
        assert!(readme.contains(&want), "k8s/README.md must show `{want}`");
    }
}

// ---------------------------------------------------------------------------------------------
// Dashboard and Dockerfile

/// The Grafana unit each metric is plotted in.
const METRIC_UNITS: &[(&str, &str)] = &[
    ("DCGM_FI_DEV_GPU_TEMP", "celsius"),
    ("DCGM_FI_DEV_POWER_USAGE", "watt"),
    ("DCGM_FI_DEV_GPU_UTIL", "percent"),
    ("DCGM_FI_DEV_FB_USED", "percent"),
    ("virtualfit_request_duration_seconds", "s"),
    ("virtualfit_queue_duration_seconds", "s"),
    ("virtualfit_batch_duration_seconds", "s"),
    ("virtualfit_requests_total", "reqps"),
    ("virtualfit_rejected_requests_total", "reqps"),
];

#[test]
fn every_dashboard_panel_plots_one_unit() {
    let dash = dashboard();
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut seen = BTreeSet::new();
    // The Cost row's panels plot figures derived from several metrics (a price per try-on, an
    // idle share, try-ons per GPU-hour): their units are those of the figures.
    let cost_row_y = panels
        .iter()
        .find(|p| p["type"] == "row" && p["title"] == "Cost")
        .and_then(|p| p["gridPos"]["y"].as_u64())
        .expect("a Cost row");
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: duplicate id"
        );
        // A row only heads the panels below it.
        if p["type"] == "row" {
            continue;
        }
        let unit = p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or_else(|| panic!("{title}: a unit"));
        if p["gridPos"]["y"].as_u64().is_some_and(|y| y > cost_row_y) {
            assert!(
                ["currencyUSD", "percentunit", "short"].contains(&unit),
                "{title}: a cost figure on a `{unit}` axis"
            );
            continue;
        }
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for (metric, want) in METRIC_UNITS {
                if names_in(expr, metric.split('_').next().expect("prefix"))
                    .iter()
                    .any(|n| {
                        n == metric || n.strip_prefix(metric).is_some_and(|s| s.starts_with('_'))
                    })
                {
                    seen.insert(*metric);
                    assert_eq!(
                        unit, *want,
                        "panel `{title}` plots {metric} on a `{unit}` axis"
                    );
                }
            }
        }
    }
    for m in ["DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"] {
        assert!(seen.contains(m), "the dashboard plots {m}");
    }
    // No two panels overlap.
    let cells: Vec<(u64, u64, u64, u64, &str)> = panels
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            (
                g["x"].as_u64().expect("x"),
                g["y"].as_u64().expect("y"),
                g["w"].as_u64().expect("w"),
                g["h"].as_u64().expect("h"),
                p["title"].as_str().expect("title"),
            )
        })
        .collect();
    for (i, a) in cells.iter().enumerate() {
        assert!(a.0 + a.2 <= 24, "{}: wider than the grid", a.4);
        for b in &cells[i + 1..] {
            let apart =
                a.0 + a.2 <= b.0 || b.0 + b.2 <= a.0 || a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1;
            assert!(apart, "panels `{}` and `{}` overlap", a.4, b.4);
        }
    }
}

#[test]
fn dockerfile_pipes_fail_when_a_command_in_them_fails() {
    let dockerfile = fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    // Logical instructions: continuation lines joined, comments dropped.
    let mut instructions = Vec::new();
    let mut cur = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') && cur.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(t);
                if !cur.trim().is_empty() {
                    instructions.push(std::mem::take(&mut cur));
                }
                cur.clear();
            }
        }
    }
    let mut pipefail = false;
    let mut piped_runs = 0;
    for i in &instructions {
        if i.starts_with("FROM ") {
            pipefail = false; // SHELL does not carry over into a new stage
        } else if let Some(shell) = i.strip_prefix("SHELL ") {
            let argv: Vec<String> = serde_json::from_str(shell).expect("SHELL takes JSON");
            pipefail = argv.windows(2).any(|w| w[0] == "-o" && w[1] == "pipefail")
                && argv[0].ends_with("bash");
        } else if let Some(run) = i.strip_prefix("RUN ") {
            if run.contains(" | ") {
                piped_runs += 1;
                assert!(pipefail, "a RUN with a pipe needs SHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"] first: {run}");
            }
        }
    }
    assert!(piped_runs >= 1, "the rustup download is piped");
}

// ---------------------------------------------------------------------------------------------
// Closed by default: the API key, the API port for the ingress controller only, egress

/// The Secret with the API key, which k8s/README.md has the operator create (not shipped).
const API_KEY_SECRET: &str = "virtualfit-api-key";
const API_KEY_SECRET_KEY: &str = "api-key";
/// The label of the ingress controller's namespace that opens the API port (k8s/README.md).
const INGRESS_NAMESPACE_LABEL: &str = "virtualfit.io/ingress";
/// The opt-in component that turns webhooks on, with their egress.
const WEBHOOKS: &str = "components/webhooks";

/// The environment variable `virtualfit serve` reads the flag `id` from (src/config.rs).
fn serve_env_name(id: &str) -> String {
    use clap::Args;
    let cmd = virtualfit::config::ServeArgs::augment_args(clap::Command::new("serve"));
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_id() == id)
        .unwrap_or_else(|| panic!("`virtualfit serve` has no {id}"));
    arg.get_env()
        .and_then(|e| e.to_str())
        .unwrap_or_else(|| panic!("{id} has no environment variable"))
        .to_string()
}

/// The default of the `virtualfit serve` flag `id`.
fn serve_default(id: &str) -> String {
    use clap::Args;
    let cmd = virtualfit::config::ServeArgs::augment_args(clap::Command::new("serve"));
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_id() == id)
        .unwrap_or_else(|| panic!("`virtualfit serve` has no {id}"));
    arg.get_default_values()
        .first()
        .and_then(|v| v.to_str())
        .unwrap_or_else(|| panic!("{id} has no default"))
        .to_string()
}

/// One end of a connection, as a NetworkPolicy sees it.
#[derive(Clone, Debug)]
enum Endpoint {
    /// A pod: its namespace, the namespace's labels and its own labels.
    Pod {
        ns: String,
        ns_labels: Value,
        labels: Value,
    },
    /// An address that is no pod: the metadata endpoint, the API server, the Internet.
    Ip(std::net::IpAddr),
}

fn label_map(pairs: &[(&str, &str)]) -> Value {
    let mut m = serde_yaml::Mapping::new();
    for (k, v) in pairs {
        m.insert((*k).into(), (*v).into());
    }
    Value::Mapping(m)
}

/// A pod in namespace `ns` (labelled with its name, as the API server does, plus `ns_extra`).
fn pod_in(ns: &str, ns_extra: &[(&str, &str)], labels: &[(&str, &str)]) -> Endpoint {
    let mut ns_pairs = vec![("kubernetes.io/metadata.name", ns)];
    ns_pairs.extend_from_slice(ns_extra);
    Endpoint::Pod {
        ns: ns.to_string(),
        ns_labels: label_map(&ns_pairs),
        labels: label_map(labels),
    }
}

fn ip(addr: &str) -> Endpoint {
    Endpoint::Ip(addr.parse().expect("an IP address"))
}

/// The pods of a workload, as an endpoint.
fn workload_pod(w: &Value) -> Endpoint {
    let ns = namespace(w);
    Endpoint::Pod {
        ns: ns.to_string(),
        ns_labels: label_map(&[("kubernetes.io/metadata.name", ns)]),
        labels: pod_labels(w).clone(),
    }
}

/// Whether an `ipBlock` holds the address.
fn in_ip_block(block: &Value, addr: std::net::IpAddr) -> bool {
    let net = |s: &Value| -> ipnet::IpNet {
        s.as_str()
            .expect("a CIDR")
            .parse()
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
    };
    net(&block["cidr"]).contains(&addr)
        && !seq(block.get("except"))
            .iter()
            .any(|e| net(e).contains(&addr))
}

/// Whether one peer (an entry of `from` or `to`) of a policy in `policy_ns` matches `end`.
fn peer_matches(peer: &Value, policy_ns: &str, end: &Endpoint) -> bool {
    if let Some(block) = peer.get("ipBlock") {
        // Pod addresses are the cluster's private ranges, which the ipBlocks exclude; the
        // addresses the tests name are checked as Endpoint::Ip.
        return matches!(end, Endpoint::Ip(a) if in_ip_block(block, *a));
    }
    match end {
        Endpoint::Ip(_) => false,
        Endpoint::Pod {
            ns,
            ns_labels,
            labels,
        } => {
            let ns_ok = match peer.get("namespaceSelector") {
                None => ns == policy_ns,
                Some(sel) => selects(sel, ns_labels),
            };
            ns_ok
                && peer
                    .get("podSelector")
                    .is_none_or(|sel| selects(sel, labels))
        }
    }
}

/// A policy's types: as written, or Ingress plus Egress when it has egress rules.
fn policy_types(np: &Value) -> BTreeSet<String> {
    let listed: BTreeSet<String> = seq(np["spec"].get("policyTypes"))
        .iter()
        .map(|t| t.as_str().expect("policy type").to_string())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    let mut types = BTreeSet::from(["Ingress".to_string()]);
    if np["spec"].get("egress").is_some() {
        types.insert("Egress".to_string());
    }
    types
}

/// Whether the policies that select `subject` for `direction` ("Ingress" or "Egress") let it
/// exchange a connection with `other` on `port`/`protocol`. Named ports are resolved with
/// `named` (the destination's container ports). A pod no policy selects for that direction, and
/// anything that is not a pod, is not restricted.
fn direction_allows(
    objs: &[Value],
    subject: &Endpoint,
    other: &Endpoint,
    direction: &str,
    port: u64,
    protocol: &str,
    named: &dyn Fn(&str) -> u64,
) -> bool {
    let Endpoint::Pod { ns, labels, .. } = subject else {
        return true;
    };
    let policies: Vec<&Value> = objs
        .iter()
        .filter(|o| {
            kind(o) == "NetworkPolicy"
                && namespace(o) == ns
                && selects(&o["spec"]["podSelector"], labels)
                && policy_types(o).contains(direction)
        })
        .collect();
    if policies.is_empty() {
        return true;
    }
    let (rules, peers) = if direction == "Egress" {
        ("egress", "to")
    } else {
        ("ingress", "from")
    };
    policies.iter().any(|np| {
        seq(np["spec"].get(rules)).iter().any(|rule| {
            let ports = seq(rule.get("ports"));
            let port_ok = ports.is_empty()
                || ports.iter().any(|p| {
                    p["protocol"].as_str().unwrap_or("TCP") == protocol
                        && match &p["port"] {
                            Value::Null => true,
                            Value::Number(n) => {
                                let lo = n.as_u64().expect("port");
                                let hi = p["endPort"].as_u64().unwrap_or(lo);
                                (lo..=hi).contains(&port)
                            }
                            Value::String(s) => named(s) == port,
                            other => panic!("port {other:?}"),
                        }
                });
            let peer_list = seq(rule.get(peers));
            port_ok
                && (peer_list.is_empty()
                    || peer_list
                        .iter()
                        .any(|peer| peer_matches(peer, namespace(np), other)))
        })
    })
}

/// Whether `from` may open a connection to `to` on `port`/`protocol` under the policies in
/// `objs`: the source's egress and the destination's ingress must both allow it. `named`
/// resolves the destination's named ports.
fn connects(
    objs: &[Value],
    from: &Endpoint,
    to: &Endpoint,
    port: u64,
    protocol: &str,
    named: &dyn Fn(&str) -> u64,
) -> bool {
    direction_allows(objs, from, to, "Egress", port, protocol, named)
        && direction_allows(objs, to, from, "Ingress", port, protocol, named)
}

fn no_named_ports(name: &str) -> u64 {
    panic!("egress rules name ports by number here, not `{name}`")
}

/// k8s/`resource` rendered in a kustomization of one's own with the components at
/// `components` (all relative to k8s/).
fn render_with(resource: &str, components: &[&str]) -> Vec<Value> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let own = tmp.path().canonicalize().expect("temp dir");
    let rel = |d: &str| relative_path(&own, &canonical(&k8s_dir().join(d)));
    let mut k = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n",
        rel(resource).display()
    );
    if !components.is_empty() {
        k.push_str("components:\n");
        for c in components {
            k.push_str(&format!("  - {}\n", rel(c).display()));
        }
    }
    fs::write(own.join("kustomization.yaml"), k).expect("write kustomization");
    render_dir(&own)
}

/// The server Deployments (`virtualfit serve`: inference and batch workers) of a rendering.
fn server_deployments(objs: &[Value]) -> Vec<&Value> {
    objs.iter()
        .filter(|o| {
            kind(o) == "Deployment"
                && str_at(pod_labels(o), &["app.kubernetes.io/name"]) == Some("virtualfit")
                && matches!(
                    str_at(pod_labels(o), &["app.kubernetes.io/component"]),
                    Some("inference" | "batch-worker")
                )
        })
        .collect()
}

#[test]
fn servers_require_the_api_key_from_the_secret_the_readme_creates() {
    let env_name = serve_env_name("api_key");
    assert_eq!(env_name, "VIRTUALFIT_API_KEY");
    let sets = targets_and_batch_pool();
    for (what, objs) in &sets {
        let servers = server_deployments(objs);
        assert!(!servers.is_empty(), "{what}");
        for dep in servers {
            let ctx = format!("{what} {}", name(dep));
            let c = &seq(dep["spec"]["template"]["spec"].get("containers"))[0];
            assert_eq!(
                secret_env(c).get(&env_name),
                Some(&(API_KEY_SECRET.to_string(), API_KEY_SECRET_KEY.to_string())),
                "{ctx}: {env_name} from the Secret"
            );
            // Not optional: without the Secret the container does not start, rather than
            // serve without authentication.
            let entry = seq(c.get("env"))
                .into_iter()
                .find(|e| e["name"].as_str() == Some(env_name.as_str()))
                .expect("the entry");
            assert_ne!(
                entry["valueFrom"]["secretKeyRef"]["optional"].as_bool(),
                Some(true),
                "{ctx}"
            );
        }
    }
    // The README has the operator create it, with that name and key.
    let readme = fs::read_to_string(k8s_dir().join("README.md")).expect("k8s/README.md");
    assert!(
        readme.contains(&format!(
            "kubectl -n virtualfit create secret generic {API_KEY_SECRET} --from-literal={API_KEY_SECRET_KEY}="
        )),
        "k8s/README.md must show how to create the Secret {API_KEY_SECRET}"
    );
    // The load-test client sends it: it mounts the Secret.
    let load = job_files()
        .iter()
        .flat_map(|f| load_docs(f))
        .find(|o| kind(o) == "Pod" && name(o) == "load")
        .expect("the load-test pod");
    assert!(seq(load["spec"].get("volumes"))
        .iter()
        .any(|v| v["secret"]["secretName"].as_str() == Some(API_KEY_SECRET)));
}

#[test]
fn the_api_port_is_open_to_the_ingress_namespace_only_and_metrics_to_monitoring() {
    assert_eq!(serve_env_name("metrics_bind"), "VIRTUALFIT_METRICS_BIND");
    let ingress_ns = pod_in(
        "ingress-nginx",
        &[(INGRESS_NAMESPACE_LABEL, "true")],
        &[("app.kubernetes.io/name", "ingress-nginx")],
    );
    let unlabelled_ingress_ns = pod_in(
        "ingress-nginx",
        &[],
        &[("app.kubernetes.io/name", "ingress-nginx")],
    );
    let monitoring = pod_in(
        "monitoring",
        &[],
        &[("app.kubernetes.io/name", "prometheus")],
    );
    let elsewhere = pod_in("default", &[], &[("app", "client")]);
    let sets = targets_and_batch_pool();
    for (what, objs) in &sets {
        for w in workloads(objs).filter(|w| namespace(w).starts_with("virtualfit")) {
            let ctx = format!("{what} {} {}", kind(w), name(w));
            let c = &seq(w["spec"]["template"]["spec"].get("containers"))[0];
            let named = |n: &str| port_named(c, n);
            let pod = workload_pod(w);
            let component = str_at(pod_labels(w), &["app.kubernetes.io/component"]);
            let api = c["ports"]
                .as_sequence()
                .is_some_and(|ps| ps.iter().any(|p| p["name"].as_str() == Some("http")));
            let metrics = c["ports"]
                .as_sequence()
                .is_some_and(|ps| ps.iter().any(|p| p["name"].as_str() == Some("metrics")));
            let same_ns = |labels: &[(&str, &str)]| {
                let ns = namespace(w);
                pod_in(ns, &[], labels)
            };
            let load_test = same_ns(&[
                ("app.kubernetes.io/name", "virtualfit"),
                ("app.kubernetes.io/component", "load-test"),
            ]);
            let prepull = same_ns(&[
                ("app.kubernetes.io/name", "virtualfit"),
                ("app.kubernetes.io/component", "image-prepull"),
            ]);
            if component == Some("inference") {
                assert!(api, "{ctx}");
                let port = port_named(c, "http");
                assert!(
                    connects(objs, &ingress_ns, &pod, port, "TCP", &named),
                    "{ctx}: the ingress controller reaches the API"
                );
                // (Its own way out is its pod's policy, k8s/jobs/load-test.yaml: checked with
                // the egress below.)
                assert!(
                    direction_allows(objs, &pod, &load_test, "Ingress", port, "TCP", &named),
                    "{ctx}: the load-test client reaches the API"
                );
                for (who, from) in [
                    ("an unlabelled ingress namespace", &unlabelled_ingress_ns),
                    ("monitoring", &monitoring),
                    ("another namespace", &elsewhere),
                    ("the pre-pull pods", &prepull),
                ] {
                    assert!(
                        !connects(objs, from, &pod, port, "TCP", &named),
                        "{ctx}: {who} must not reach the API port"
                    );
                }
            }
            if metrics {
                let port = port_named(c, "metrics");
                assert!(
                    connects(objs, &monitoring, &pod, port, "TCP", &named),
                    "{ctx}: Prometheus reaches the metrics port"
                );
                for from in [&ingress_ns, &elsewhere, &load_test] {
                    assert!(
                        !direction_allows(objs, &pod, from, "Ingress", port, "TCP", &named),
                        "{ctx}: only monitoring reaches the metrics port, not {from:?}"
                    );
                }
            }
            // Nothing else reaches any pod of the namespace: a port of its own, or any port of
            // a pod that serves nothing.
            for from in [&ingress_ns, &monitoring, &elsewhere, &load_test] {
                assert!(
                    !direction_allows(objs, &pod, from, "Ingress", 2222, "TCP", &named),
                    "{ctx}: port 2222 from {from:?}"
                );
            }
            if component == Some("batch-worker") && api {
                let port = port_named(c, "http");
                assert!(
                    !connects(objs, &ingress_ns, &pod, port, "TCP", &named),
                    "{ctx}: the batch workers take no API traffic"
                );
            }
        }
    }
    // The README tells how to mark the ingress controller's namespace.
    let readme = fs::read_to_string(k8s_dir().join("README.md")).expect("k8s/README.md");
    assert!(
        readme.contains("kubectl label namespace")
            && readme.contains(&format!("{INGRESS_NAMESPACE_LABEL}=true")),
        "k8s/README.md must show how to label the ingress controller's namespace"
    );
}

/// Where the tests send the pods: the addresses they must never reach, with a port.
const METADATA_AND_API_SERVER: &[(&str, u64)] = &[
    // Cloud metadata: AWS, GCP, Azure, OpenStack; Alibaba; AWS's and GCP's IPv6 endpoints.
    ("169.254.169.254", 80),
    ("169.254.169.254", 443),
    ("100.100.100.200", 80),
    ("fd00:ec2::254", 80),
    ("fd20:ce::254", 80),
    // The Kubernetes API: the `kubernetes` Service (kubeadm, GKE, EKS) and private endpoints.
    ("10.96.0.1", 443),
    ("172.20.0.1", 443),
    ("10.0.0.1", 443),
    ("10.0.0.1", 6443),
    ("172.16.0.2", 443),
    ("192.168.1.10", 6443),
    ("100.64.0.1", 443),
    ("127.0.0.1", 6443),
];

#[test]
fn pods_reach_only_dns_and_what_they_call() {
    let kube_dns = pod_in("kube-system", &[], &[("k8s-app", "kube-dns")]);
    let api_server_pod = pod_in(
        "kube-system",
        &[],
        &[("component", "kube-apiserver"), ("tier", "control-plane")],
    );
    let other_pod = pod_in("default", &[], &[("app", "other")]);
    let public_v4 = ip("93.184.215.14");
    let public_v6 = ip("2606:2800:21f:cb07:6820:80da:af6b:8b2c");
    // (what, rendering, Redis in the cluster, webhooks on)
    let mut sets: Vec<(String, Vec<Value>, bool, bool)> = TARGETS
        .iter()
        .map(|t| (format!("k8s/{t}"), render(t), false, false))
        .collect();
    sets.push((format!("k8s/{BATCH_POOL}"), render(BATCH_POOL), true, false));
    sets.push((
        format!("k8s/ + {REDIS}"),
        render_with("", &[REDIS]),
        true,
        false,
    ));
    sets.push((
        format!("k8s/ + {WEBHOOKS}"),
        render_with("", &[WEBHOOKS]),
        false,
        true,
    ));
    sets.push((
        format!("k8s/{BATCH_POOL} + {WEBHOOKS}"),
        render_with(BATCH_POOL, &[WEBHOOKS]),
        true,
        true,
    ));
    let mut checked = 0;
    for (what, objs, redis, webhooks) in &sets {
        // The workloads of the app's namespaces, and the one-off pods of jobs/ with the
        // application's policies (they share its namespace, in k8s/ itself).
        let mut pods: Vec<(String, Endpoint, Vec<Value>)> = workloads(objs)
            .filter(|w| namespace(w).starts_with("virtualfit"))
            .map(|w| {
                (
                    format!("{} {}", kind(w), name(w)),
                    workload_pod(w),
                    objs.clone(),
                )
            })
            .collect();
        if what == "k8s/" {
            for f in job_files() {
                let docs = load_docs(&f);
                let mut with_jobs = objs.clone();
                with_jobs.extend(docs.iter().filter(|o| kind(o) == "NetworkPolicy").cloned());
                for p in docs.iter().filter(|o| kind(o) == "Pod") {
                    let end = Endpoint::Pod {
                        ns: namespace(p).to_string(),
                        ns_labels: label_map(&[("kubernetes.io/metadata.name", namespace(p))]),
                        labels: p["metadata"]["labels"].clone(),
                    };
                    pods.push((format!("Pod {}", name(p)), end, with_jobs.clone()));
                }
            }
        }
        let redis_pod = pod_in(
            "virtualfit",
            &[],
            &[
                ("app.kubernetes.io/name", "virtualfit"),
                ("app.kubernetes.io/component", "redis"),
            ],
        );
        for (who, pod, policies) in &pods {
            let ctx = format!("{what} {who}");
            let Endpoint::Pod { labels, .. } = pod else {
                unreachable!()
            };
            let component = str_at(labels, &["app.kubernetes.io/component"]);
            let server = matches!(component, Some("inference" | "batch-worker"));
            let reaches = |to: &Endpoint, port: u64, protocol: &str| {
                direction_allows(policies, pod, to, "Egress", port, protocol, &no_named_ports)
            };
            // The cluster DNS, both protocols.
            for protocol in ["UDP", "TCP"] {
                assert!(
                    reaches(&kube_dns, 53, protocol),
                    "{ctx}: DNS over {protocol}"
                );
            }
            // Never the metadata endpoint or the Kubernetes API.
            for (addr, port) in METADATA_AND_API_SERVER {
                assert!(
                    !reaches(&ip(addr), *port, "TCP"),
                    "{ctx} reaches {addr}:{port}"
                );
            }
            for port in [443, 6443] {
                assert!(
                    !reaches(&api_server_pod, port, "TCP"),
                    "{ctx} reaches the API server's pod on {port}"
                );
            }
            assert!(
                !reaches(&other_pod, 8080, "TCP"),
                "{ctx}: another namespace"
            );
            assert!(!reaches(&kube_dns, 8080, "TCP"), "{ctx}: kube-dns on 8080");
            // Redis: the servers, where Redis runs in the cluster.
            assert_eq!(
                reaches(&redis_pod, REDIS_PORT, "TCP"),
                *redis && server,
                "{ctx}: Redis"
            );
            // The Internet: HTTPS for the servers' webhooks, only with webhooks on, and for the
            // inference pods' weights download from the hub (components/hub-download).
            let hub = what.as_str() == format!("k8s/{CATVTON}") && component == Some("inference");
            for public in [&public_v4, &public_v6] {
                assert_eq!(
                    reaches(public, 443, "TCP"),
                    (*webhooks && server) || hub,
                    "{ctx}: HTTPS to {public:?}"
                );
                assert!(!reaches(public, 80, "TCP"), "{ctx}: HTTP to {public:?}");
            }
            // The load-test client reaches the API port of the inference pods.
            if component == Some("load-test") {
                let inference = workloads(policies)
                    .find(|w| name(w) == "virtualfit-inference")
                    .expect("the inference Deployment");
                let c = &seq(inference["spec"]["template"]["spec"].get("containers"))[0];
                assert!(connects(
                    policies,
                    pod,
                    &workload_pod(inference),
                    port_named(c, "http"),
                    "TCP",
                    &|n| port_named(c, n)
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 17, "{checked} pods checked");
    // The analysis is live: a policy that opens everything is caught.
    let mut open = render("");
    let mut wide = find(&open, "NetworkPolicy", "virtualfit-default").clone();
    wide["spec"]["egress"] = serde_yaml::from_str("[{}]").expect("yaml");
    open.retain(|o| name(o) != "virtualfit-default");
    open.push(wide);
    let inference = workload_pod(inference_deployment(&open));
    assert!(direction_allows(
        &open,
        &inference,
        &ip("169.254.169.254"),
        "Egress",
        80,
        "TCP",
        &no_named_ports
    ));
}

#[test]
fn webhooks_are_an_opt_in_component_with_their_secret_and_egress() {
    let k = load_one(&k8s_dir().join(WEBHOOKS).join("kustomization.yaml"));
    assert_eq!(kind(&k), "Component");
    let (secret, allow) = (
        serve_env_name("webhook_secret"),
        serve_env_name("webhook_allow_hosts"),
    );
    for target in TARGETS.iter().chain(&[BATCH_POOL]) {
        for dep in server_deployments(&render(target)) {
            let c = &seq(dep["spec"]["template"]["spec"].get("containers"))[0];
            let env = secret_env(c);
            assert!(
                !env.contains_key(&secret) && !env.contains_key(&allow),
                "k8s/{target}: webhooks are opt-in"
            );
        }
    }
    let objs = render_with(BATCH_POOL, &[WEBHOOKS]);
    validate_core(WEBHOOKS, &objs);
    let servers = server_deployments(&objs);
    assert_eq!(servers.len(), 2);
    for dep in servers {
        let c = &seq(dep["spec"]["template"]["spec"].get("containers"))[0];
        let env = secret_env(c);
        assert_eq!(
            env.get(&secret),
            Some(&("virtualfit-webhooks".to_string(), "secret".to_string()))
        );
        assert_eq!(
            env.get(&allow),
            Some(&("virtualfit-webhooks".to_string(), "allow-hosts".to_string()))
        );
    }
    let readme = fs::read_to_string(k8s_dir().join("README.md")).expect("k8s/README.md");
    assert!(readme.contains(
        "kubectl -n virtualfit create secret generic virtualfit-webhooks --from-literal=secret="
    ));
    assert!(readme.contains("--from-literal=allow-hosts="));
}

/// redis.conf of base/redis as rendered (ConfigMap virtualfit-redis-config).
fn redis_config_text(objs: &[Value]) -> String {
    find(objs, "ConfigMap", "virtualfit-redis-config")["data"]["redis.conf"]
        .as_str()
        .expect("redis.conf")
        .to_string()
}

/// redis.conf's settings: name -> value (unquoted).
fn redis_config(objs: &[Value]) -> BTreeMap<String, String> {
    redis_config_text(objs)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            (k.to_string(), v.trim().trim_matches('"').to_string())
        })
        .collect()
}

/// A container's command and arguments, with each mount path of the container replaced by the
/// local folder standing for its volume (longest paths first: /etc/redis-secret before
/// /etc/redis).
fn localised_argv(c: &Value, folders: &BTreeMap<String, std::path::PathBuf>) -> Vec<String> {
    seq(c.get("command"))
        .iter()
        .chain(seq(c.get("args")).iter())
        .map(|a| localised(a.as_str().expect("string argument"), c, folders))
        .collect()
}

/// `text` with each mount path of the container `c` replaced by its volume's local folder.
fn localised(text: &str, c: &Value, folders: &BTreeMap<String, std::path::PathBuf>) -> String {
    let mut mounts: Vec<(String, String)> = seq(c.get("volumeMounts"))
        .iter()
        .map(|m| {
            let volume = m["name"].as_str().expect("volume");
            let local = folders
                .get(volume)
                .unwrap_or_else(|| panic!("no local folder for volume {volume}"));
            (
                m["mountPath"].as_str().expect("mountPath").to_string(),
                local.display().to_string(),
            )
        })
        .collect();
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let mut out = text.to_string();
    for (path, local) in &mounts {
        out = out.replace(path.as_str(), local);
    }
    out
}

fn run_argv(argv: &[String]) -> Output {
    std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0]))
}

#[test]
fn redis_reads_its_password_from_the_secret_file_not_its_command_line() {
    let objs = render(REDIS);
    let sts = find(&objs, "StatefulSet", "virtualfit-redis");
    let pod = &sts["spec"]["template"]["spec"];
    // No container takes the password from the environment: nothing for the kubelet to expand
    // into a command line, nothing in /proc/PID/environ.
    for c in containers(pod) {
        let cname = c["name"].as_str().expect("name");
        assert!(secret_env(&c).is_empty(), "{cname}: {:?}", secret_env(&c));
        assert!(
            !seq(c.get("envFrom"))
                .iter()
                .any(|e| e.get("secretRef").is_some()),
            "{cname}"
        );
        for a in seq(c.get("command"))
            .iter()
            .chain(seq(c.get("args")).iter())
        {
            let a = a.as_str().expect("string argument");
            assert!(
                !a.contains("--requirepass") && !a.contains("REDIS_PASSWORD"),
                "{cname}: {a}"
            );
        }
    }
    // Run what the pod runs, with local folders for its volumes: the init container writes the
    // configuration, redis-server starts from it as the Redis container does.
    const PASSWORD: &str = "0123abcd-Secret_value.9";
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = &seq(pod.get("containers"))[0];
    let mut folders = BTreeMap::new();
    let data = dir.path().join("data-volume");
    fs::create_dir(&data).expect("folder");
    folders.insert("data".to_string(), data.clone());
    for v in seq(pod.get("volumes")) {
        let vname = v["name"].as_str().expect("volume name").to_string();
        let local = dir.path().join(&vname);
        fs::create_dir(&local).expect("folder");
        folders.insert(vname, local);
    }
    for v in seq(pod.get("volumes")) {
        let local = &folders[v["name"].as_str().expect("volume name")];
        if let Some(cm) = v["configMap"]["name"].as_str() {
            assert_eq!(cm, "virtualfit-redis-config");
            // The file names the Redis container's folders (`dir /data`).
            let conf = localised(&redis_config_text(&objs), redis, &folders);
            fs::write(local.join("redis.conf"), conf).expect("write");
        }
        if v["secret"]["secretName"].as_str() == Some(JOBS_SECRET) {
            for item in seq(v["secret"].get("items")) {
                assert_eq!(item["key"].as_str(), Some("password"));
                let path = item["path"].as_str().expect("path");
                fs::write(local.join(path), PASSWORD).expect("write");
            }
        }
    }
    let inits = seq(pod.get("initContainers"));
    assert_eq!(inits.len(), 1, "the configuration writer");
    let init_argv = localised_argv(&inits[0], &folders);
    let out = run_argv(&init_argv);
    assert!(out.status.success(), "init container: {}", text(&out));
    let server_argv = localised_argv(redis, &folders);
    let config_file = server_argv
        .iter()
        .find(|a| a.ends_with(".conf"))
        .expect("redis-server's configuration file");
    let written = fs::read_to_string(config_file).expect("the written configuration");
    assert!(written.contains(PASSWORD));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(config_file)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only the Redis user reads it: {mode:o}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = std::process::Command::new(&server_argv[0])
        .args(&server_argv[1..])
        // The address: loopback and a free port.
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): apt-get install redis-server (scripts/test.sh does)")
        });
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let server = Kill(child);
    let pid = server.0.id();
    let authed = format!("redis://:{PASSWORD}@127.0.0.1:{port}/");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut conn = loop {
        match redis::Client::open(authed.as_str())
            .and_then(|c| c.get_connection_with_timeout(std::time::Duration::from_secs(1)))
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "redis-server: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    };
    let pong: String = redis::cmd("PING").query(&mut conn).expect("PING");
    assert_eq!(pong, "PONG");
    // It runs with the file's settings.
    let maxmemory: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut conn)
        .expect("CONFIG GET");
    assert_eq!(
        maxmemory[1].parse::<u64>().expect("bytes"),
        bytes(&redis_config(&objs)["maxmemory"])
    );
    // Without the password: refused.
    let mut anon = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("client")
        .get_connection()
        .expect("connection");
    let refused: redis::RedisResult<String> = redis::cmd("PING").query(&mut anon);
    assert!(refused.is_err(), "{refused:?}");
    // The password is neither on its command line nor in its environment.
    for what in ["cmdline", "environ"] {
        let raw = fs::read(format!("/proc/{pid}/{what}")).expect("/proc");
        assert!(
            !String::from_utf8_lossy(&raw).contains(PASSWORD),
            "redis-server's {what} holds the password"
        );
    }
    // The readiness probe passes with the Secret's password and fails with another one.
    let probe_argv: Vec<String> = {
        let mut c = redis.clone();
        c["command"] = c["readinessProbe"]["exec"]["command"].clone();
        c.as_mapping_mut().expect("container").remove("args");
        localised_argv(&c, &folders)
            .into_iter()
            .map(|a| a.replace("redis-cli", &format!("redis-cli -p {port}")))
            .collect()
    };
    let probe = run_argv(&probe_argv);
    assert!(probe.status.success(), "readiness: {}", text(&probe));
    fs::write(folders["credentials"].join("password"), "wrong").expect("write");
    let probe = run_argv(&probe_argv);
    assert!(!probe.status.success(), "readiness with a wrong password");
    // A password that is not a plain token is refused at start, with the reason.
    fs::write(folders["credentials"].join("password"), "pa\"ss word").expect("write");
    let out = run_argv(&init_argv);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password"));
}

// ---------------------------------------------------------------------------------------------
// The DCGM exporter: the NVIDIA runtime, every GPU node, a release for the 580 driver

/// Whether a node with `labels` satisfies one node selector term.
fn term_matches(term: &[Requirement], labels: &BTreeMap<String, String>) -> bool {
    term.iter().all(|r| {
        let v = labels.get(&r.key);
        let num = |s: &str| s.parse::<i64>().ok();
        match r.operator.as_str() {
            "In" => v.is_some_and(|v| r.values.contains(v)),
            "NotIn" => !v.is_some_and(|v| r.values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            "Gt" => v
                .and_then(|v| num(v))
                .zip(num(&r.values[0]))
                .is_some_and(|(a, b)| a > b),
            "Lt" => v
                .and_then(|v| num(v))
                .zip(num(&r.values[0]))
                .is_some_and(|(a, b)| a < b),
            other => panic!("operator {other}"),
        }
    })
}

/// The labels of the least node that satisfies `term`.
fn node_for(term: &[Requirement]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for r in term {
        let value = match r.operator.as_str() {
            "In" => r.values[0].clone(),
            "Exists" => "true".to_string(),
            "Gt" => (r.values[0].parse::<i64>().expect("number") + 1).to_string(),
            "Lt" => (r.values[0].parse::<i64>().expect("number") - 1).to_string(),
            "NotIn" | "DoesNotExist" => continue,
            other => panic!("operator {other}"),
        };
        labels.insert(r.key.clone(), value);
    }
    assert!(term_matches(term, &labels), "{term:?}");
    labels
}

/// Whether `tolerations` tolerate a taint (key, value, effect).
fn tolerates(tolerations: &[Value], taint: &(String, String, String)) -> bool {
    tolerations.iter().any(|t| {
        let key_ok = match t["key"].as_str() {
            None | Some("") => t["operator"].as_str() == Some("Exists"),
            Some(k) => k == taint.0,
        };
        let value_ok = t["operator"].as_str() == Some("Exists")
            || t["value"].as_str().unwrap_or("") == taint.1;
        let effect_ok = t["effect"]
            .as_str()
            .is_none_or(|e| e.is_empty() || e == taint.2);
        key_ok && value_ok && effect_ok
    })
}

/// `4.4.2-4.7.1-ubuntu22.04` -> ((4, 4, 2), (4, 7, 1)): the DCGM and exporter versions.
fn dcgm_exporter_versions(image: &str) -> ((u32, u32, u32), (u32, u32, u32)) {
    let tag = image
        .strip_prefix("nvcr.io/nvidia/k8s/dcgm-exporter:")
        .unwrap_or_else(|| panic!("{image}: NVIDIA's dcgm-exporter image"));
    let parts: Vec<&str> = tag.splitn(3, '-').collect();
    assert_eq!(parts.len(), 3, "{tag}: DCGM-EXPORTER-OS");
    let version = |s: &str| {
        let v: Vec<u32> = s
            .split('.')
            .map(|p| {
                p.parse()
                    .unwrap_or_else(|_| panic!("{tag}: a pinned version"))
            })
            .collect();
        assert_eq!(v.len(), 3, "{tag}");
        (v[0], v[1], v[2])
    };
    (version(parts[0]), version(parts[1]))
}

#[test]
fn dcgm_exporter_runs_on_every_gpu_node_the_servers_admit() {
    let top = render("");
    let ds = find(&top, "DaemonSet", "nvidia-dcgm-exporter");
    let pod = &ds["spec"]["template"]["spec"];
    // The NVIDIA runtime gives it the driver's libraries and the GPUs (it requests none).
    assert_eq!(pod["runtimeClassName"].as_str(), Some("nvidia"));
    // DCGM 4.4, the line made for CUDA 13 and the 580 driver (the 4.5 releases are built on
    // the CUDA of later drivers).
    let image = seq(pod.get("containers"))[0]["image"]
        .as_str()
        .expect("image")
        .to_string();
    let (dcgm, _exporter) = dcgm_exporter_versions(&image);
    assert!(
        (dcgm.0, dcgm.1) == (4, 4),
        "{image}: DCGM 4.4.x supports CUDA 13 and the 580 driver"
    );
    assert!(image.ends_with("-ubuntu22.04"), "{image}");
    let exporter_terms = if pod["nodeSelector"].is_mapping() {
        panic!("a nodeSelector ANDs its labels: use node affinity terms, which OR")
    } else {
        node_affinity_terms(pod)
    };
    let exporter_tolerations = seq(pod.get("tolerations"));
    // Every node a server pod may be scheduled on, in every target: a node with the labels of
    // one of its affinity terms and the taints it tolerates.
    let mut nodes = 0;
    for target in TARGETS.iter().chain(&[BATCH_POOL]) {
        let objs = render(target);
        for dep in server_deployments(&objs) {
            let spec = &dep["spec"]["template"]["spec"];
            let taints: Vec<(String, String, String)> = seq(spec.get("tolerations"))
                .iter()
                .map(|t| {
                    (
                        t["key"]
                            .as_str()
                            .expect("a toleration of one key")
                            .to_string(),
                        t["value"].as_str().unwrap_or("present").to_string(),
                        t["effect"].as_str().unwrap_or("NoSchedule").to_string(),
                    )
                })
                .collect();
            for term in node_affinity_terms(spec) {
                let labels = node_for(&term);
                assert!(
                    exporter_terms.iter().any(|t| term_matches(t, &labels)),
                    "k8s/{target} {}: the exporter does not run on a node labelled {labels:?}",
                    name(dep)
                );
                for taint in &taints {
                    assert!(
                        tolerates(&exporter_tolerations, taint),
                        "k8s/{target} {}: the exporter does not tolerate {taint:?}",
                        name(dep)
                    );
                }
                nodes += 1;
            }
        }
    }
    assert!(nodes >= 10, "{nodes}");
    // Not on nodes without a GPU.
    let cpu_node: BTreeMap<String, String> =
        [("kubernetes.io/os".to_string(), "linux".to_string())].into();
    assert!(!exporter_terms.iter().any(|t| term_matches(t, &cpu_node)));
    // The checks are live: the former selector of feature discovery's label alone misses the
    // GKE nodes.
    let gfd_only = [vec![Requirement {
        key: "nvidia.com/gpu.present".into(),
        operator: "In".into(),
        values: vec!["true".into()],
    }]];
    let gke: BTreeMap<String, String> = [(
        "cloud.google.com/gke-accelerator".to_string(),
        "nvidia-l4".to_string(),
    )]
    .into();
    assert!(!gfd_only.iter().any(|t| term_matches(t, &gke)));
}

// ---------------------------------------------------------------------------------------------
// What operators expect beside it: Prometheus Operator objects, a PriorityClass, zone spread,
// disk requests, an example Ingress

/// The opt-in component for the Prometheus Operator.
const PROMETHEUS_OPERATOR: &str = "components/prometheus-operator";
/// The opt-in example Ingress for ingress-nginx.
const INGRESS_NGINX: &str = "components/ingress-nginx";

/// The Prometheus Operator objects of a rendering, each validated against its CRD.
fn validate_monitoring_coreos(what: &str, objs: &[Value]) -> usize {
    let mut count = 0;
    for (crd_kind, file) in [
        ("PodMonitor", "monitoring.coreos.com_podmonitors.yaml"),
        (
            "PrometheusRule",
            "monitoring.coreos.com_prometheusrules.yaml",
        ),
    ] {
        let of_kind: Vec<&Value> = objs.iter().filter(|o| kind(o) == crd_kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        for o in &of_kind {
            assert_eq!(
                str_at(o, &["apiVersion"]),
                Some("monitoring.coreos.com/v1"),
                "{what}"
            );
        }
        let out = crd_validate(&of_kind, file, crd_kind, "v1");
        assert!(out.status.success(), "{what}:\n{}", text(&out));
        count += of_kind.len();
    }
    count
}

#[test]
fn the_prometheus_operator_schemas_in_the_repository_are_its_crds() {
    for (file, crd_kind) in [
        ("monitoring.coreos.com_podmonitors.yaml", "PodMonitor"),
        (
            "monitoring.coreos.com_prometheusrules.yaml",
            "PrometheusRule",
        ),
    ] {
        let crd = load_one(&keda_schema(file));
        assert_crd(&crd, file, "monitoring.coreos.com", crd_kind, "v1");
    }
}

#[test]
fn the_prometheus_operator_component_scrapes_and_alerts_as_the_shipped_config() {
    let k = load_one(
        &k8s_dir()
            .join(PROMETHEUS_OPERATOR)
            .join("kustomization.yaml"),
    );
    assert_eq!(kind(&k), "Component");
    // Opt-in: a second scrape of the same pods would double the triggers' sums.
    for target in TARGETS.iter().chain(&[BATCH_POOL]) {
        for o in render(target) {
            assert!(
                !str_at(&o, &["apiVersion"])
                    .is_some_and(|a| a.starts_with("monitoring.coreos.com")),
                "k8s/{target} applies {} {}: the Prometheus Operator objects are opt-in",
                kind(&o),
                name(&o)
            );
        }
    }
    let objs = render(PROMETHEUS_OPERATOR);
    assert_eq!(validate_monitoring_coreos(PROMETHEUS_OPERATOR, &objs), 3);
    assert_eq!(objs.len(), 3, "two PodMonitors and the PrometheusRule");
    // The schema check is live: a number where the CRD wants a duration string fails.
    let mut broken = find(&objs, "PodMonitor", "virtualfit-inference").clone();
    broken["spec"]["podMetricsEndpoints"][0]["interval"] = Value::from(15);
    let out = crd_validate(
        &[&broken],
        "monitoring.coreos.com_podmonitors.yaml",
        "PodMonitor",
        "v1",
    );
    assert!(!out.status.success(), "{}", text(&out));

    let monitors = |o: &&Value| kind(o) == "PodMonitor";
    let config = prometheus_config();
    let top = render("");
    let regional = render("overlays/eu-west");
    for (pm, job_name, workloads) in [
        (
            find(&objs, "PodMonitor", "virtualfit-inference"),
            "virtualfit-pods",
            vec![
                inference_deployment(&top).clone(),
                inference_deployment(&regional).clone(),
            ],
        ),
        (
            find(&objs, "PodMonitor", "nvidia-dcgm-exporter"),
            "dcgm-exporter",
            vec![find(&top, "DaemonSet", "nvidia-dcgm-exporter").clone()],
        ),
    ] {
        let ctx = format!("PodMonitor {}", name(pm));
        // Selecting the workload's pods (in every region), in their namespaces (a PodMonitor
        // looks in its own namespace unless its namespaceSelector says otherwise).
        for workload in &workloads {
            let ns = &pm["spec"]["namespaceSelector"];
            let in_ns = (namespace(pm) == namespace(workload) && ns.is_null())
                || ns["any"].as_bool() == Some(true)
                || seq(ns.get("matchNames")).contains(&Value::from(namespace(workload)));
            assert!(in_ns, "{ctx}: namespace {}", namespace(workload));
            assert!(
                selects(&pm["spec"]["selector"], pod_labels(workload)),
                "{ctx}"
            );
        }
        let workload = &workloads[0];
        let endpoints = seq(pm["spec"].get("podMetricsEndpoints"));
        assert_eq!(endpoints.len(), 1, "{ctx}");
        let ep = &endpoints[0];
        let c = &seq(workload["spec"]["template"]["spec"].get("containers"))[0];
        let port = ep["port"].as_str().expect("a named port");
        port_named(c, port);
        let job = job(&config, job_name);
        assert_eq!(
            ep["path"].as_str().unwrap_or("/metrics"),
            job["metrics_path"].as_str().unwrap_or("/metrics"),
            "{ctx}"
        );
        assert_eq!(
            ep["interval"].as_str(),
            Some(
                job["scrape_interval"]
                    .as_str()
                    .or(config["global"]["scrape_interval"].as_str())
                    .expect("interval")
            ),
            "{ctx}"
        );
        // The namespace labelling the KEDA queries filter on: the operator labels each target
        // with its pod's namespace; the exporter's own labels (the GPU user's namespace) are
        // kept only with honorLabels, as the shipped job does.
        assert_eq!(
            ep["honorLabels"].as_bool().unwrap_or(false),
            job["honor_labels"].as_bool().unwrap_or(false),
            "{ctx}: honorLabels as the `{job_name}` job's honor_labels"
        );
        for r in seq(ep.get("relabelings")) {
            assert_ne!(r["targetLabel"].as_str(), Some("namespace"), "{ctx}");
        }
    }
    // The PodMonitors leave the batch workers out, as the `virtualfit-pods` job does.
    let pool = render(BATCH_POOL);
    let worker = find(&pool, "Deployment", "virtualfit-batch-worker");
    assert!(!objs
        .iter()
        .filter(monitors)
        .any(|pm| selects(&pm["spec"]["selector"], pod_labels(worker))));
    // The PrometheusRule holds exactly the rule groups of monitoring/alerts.rules.yaml (which
    // the promtool cases of tests/k8s_promql.rs test).
    let rule = find(&objs, "PrometheusRule", "virtualfit-alert-rules");
    let file = load_one(&k8s_dir().join("monitoring/alerts.rules.yaml"));
    assert!(!seq(file.get("groups")).is_empty());
    assert_eq!(
        rule["spec"]["groups"], file["groups"],
        "prometheusrule.yaml differs from monitoring/alerts.rules.yaml: run scripts/prometheus-operator-rules.sh"
    );
    assert_eq!(
        namespace(rule),
        namespace(find(&render(""), "ConfigMap", "virtualfit-alert-rules"))
    );
    // It composes with the whole setup.
    let both = render_with("", &[PROMETHEUS_OPERATOR]);
    assert_eq!(both.len(), render("").len() + objs.len());
}

#[test]
fn gpu_server_pods_run_at_their_priority_class() {
    let sets = targets_and_batch_pool();
    for (what, objs) in &sets {
        let classes: Vec<&Value> = objs.iter().filter(|o| kind(o) == "PriorityClass").collect();
        assert_eq!(classes.len(), 1, "{what}: one PriorityClass");
        let class = classes[0];
        // Above ordinary pods (0), within what user classes may use (system classes start at
        // two billion), never the cluster's default.
        let value = class["value"].as_i64().expect("value");
        assert!(value > 0 && value <= 1_000_000_000, "{what}: {value}");
        assert_eq!(class["globalDefault"].as_bool(), Some(false), "{what}");
        assert!(namespace(class).is_empty(), "{what}: cluster-scoped");
        let servers = server_deployments(objs);
        assert!(!servers.is_empty());
        for dep in servers {
            let pod = &dep["spec"]["template"]["spec"];
            // A GPU pod, at the class's priority (the class itself is validated with the
            // core kinds).
            assert!(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"].is_string());
            assert_eq!(
                pod["priorityClassName"].as_str(),
                Some(name(class)),
                "{what} {}",
                name(dep)
            );
        }
    }
}

#[test]
fn gpu_server_pods_spread_over_zones_but_schedule_in_one() {
    let sets = targets_and_batch_pool();
    for (what, objs) in &sets {
        let servers = server_deployments(objs);
        for dep in &servers {
            let ctx = format!("{what} {}", name(dep));
            let pod = &dep["spec"]["template"]["spec"];
            let constraints = seq(pod.get("topologySpreadConstraints"));
            for key in ["topology.kubernetes.io/zone", "kubernetes.io/hostname"] {
                let c = constraints
                    .iter()
                    .find(|c| c["topologyKey"].as_str() == Some(key))
                    .unwrap_or_else(|| panic!("{ctx}: no spread over {key}"));
                // A preference: a single-zone cluster (or a zone out of GPUs) still schedules.
                assert_eq!(
                    c["whenUnsatisfiable"].as_str(),
                    Some("ScheduleAnyway"),
                    "{ctx}: {key}"
                );
                assert_eq!(c["maxSkew"].as_u64(), Some(1), "{ctx}: {key}");
                // Counts this Deployment's pods, not the other one's.
                assert!(
                    selects(&c["labelSelector"], pod_labels(dep)),
                    "{ctx}: {key}"
                );
                for other in servers.iter().filter(|o| name(o) != name(dep)) {
                    assert!(
                        !selects(&c["labelSelector"], pod_labels(other)),
                        "{ctx}: {key} also counts {}",
                        name(other)
                    );
                }
            }
        }
    }
}

#[test]
fn ephemeral_storage_requests_cover_the_empty_dirs() {
    let sets = targets_and_batch_pool();
    for (what, objs) in &sets {
        for dep in server_deployments(objs) {
            let ctx = format!("{what} {}", name(dep));
            let pod = &dep["spec"]["template"]["spec"];
            let c = &seq(pod.get("containers"))[0];
            // The node-disk emptyDirs (not memory-backed) the container mounts: /data and /tmp.
            let mut on_disk = 0;
            let mut mounted = BTreeSet::new();
            for m in seq(c.get("volumeMounts")) {
                let v = seq(pod.get("volumes"))
                    .into_iter()
                    .find(|v| v["name"] == m["name"])
                    .expect("volume");
                if v.get("emptyDir").is_none() || v["emptyDir"]["medium"].as_str() == Some("Memory")
                {
                    continue;
                }
                let limit = v["emptyDir"]["sizeLimit"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{ctx}: {:?} without sizeLimit", m["mountPath"]));
                on_disk += bytes(limit);
                mounted.insert(m["mountPath"].as_str().expect("path").to_string());
            }
            assert!(
                mounted.contains("/data") && mounted.contains("/tmp"),
                "{ctx}: {mounted:?}"
            );
            let quantity = |k: &str| {
                bytes(
                    c["resources"][k]["ephemeral-storage"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{ctx}: no ephemeral-storage {k}")),
                )
            };
            let (request, limit) = (quantity("requests"), quantity("limits"));
            // The scheduler reserves the disk the emptyDirs may fill; the limit (over which
            // the kubelet evicts the pod) leaves room beyond them for the container's logs.
            assert!(
                request >= on_disk,
                "{ctx}: request {request} below the emptyDirs' {on_disk}"
            );
            assert!(
                limit > request && limit > on_disk,
                "{ctx}: limit {limit}, request {request}, emptyDirs {on_disk}"
            );
        }
    }
}

/// An ingress-nginx annotation of `ing`.
fn nginx_annotation<'a>(ing: &'a Value, key: &str) -> &'a str {
    ing["metadata"]["annotations"][format!("nginx.ingress.kubernetes.io/{key}")]
        .as_str()
        .unwrap_or_else(|| panic!("no nginx.ingress.kubernetes.io/{key}"))
}

/// nginx sizes (`16m`, `1g`, `512k`, bytes) in bytes.
fn nginx_size(s: &str) -> u64 {
    let s = s.to_ascii_lowercase();
    let (n, factor) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s.as_str(), 1),
    };
    n.parse::<u64>().expect("an nginx size") * factor
}

#[test]
fn the_example_ingress_outlasts_the_longest_request_and_takes_the_largest_body() {
    let k = load_one(&k8s_dir().join(INGRESS_NGINX).join("kustomization.yaml"));
    assert_eq!(kind(&k), "Component");
    for target in TARGETS.iter().chain(&[BATCH_POOL]) {
        assert!(
            !render(target).iter().any(|o| kind(o) == "Ingress"),
            "k8s/{target}: the Ingress is an opt-in example"
        );
    }
    assert_eq!(nginx_size("16m"), 16 << 20);
    let default_body: u64 = serve_default("max_body_bytes").parse().expect("bytes");
    let body_env = serve_env_name("max_body_bytes");
    for target in ["", CATVTON] {
        let objs = render_with(target, &[INGRESS_NGINX]);
        validate_core(
            &format!("k8s/{target} + {INGRESS_NGINX}"),
            &objs
                .iter()
                .filter(|o| !str_at(o, &["apiVersion"]).is_some_and(|a| a.starts_with("keda.sh/")))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let ing = objs
            .iter()
            .find(|o| kind(o) == "Ingress")
            .expect("the Ingress");
        let dep = inference_deployment(&objs);
        let ctx = format!("k8s/{target}");
        assert_eq!(namespace(ing), namespace(dep), "{ctx}");
        assert_eq!(ing["spec"]["ingressClassName"].as_str(), Some("nginx"));
        // Every path goes to the inference Service's API port.
        let svc = find(&objs, "Service", "inference-service");
        let c = &seq(dep["spec"]["template"]["spec"].get("containers"))[0];
        for rule in seq(ing["spec"].get("rules")) {
            for path in seq(rule["http"].get("paths")) {
                let backend = &path["backend"]["service"];
                assert_eq!(backend["name"].as_str(), Some(name(svc)), "{ctx}");
                let sp = seq(svc["spec"].get("ports"))
                    .into_iter()
                    .find(|p| {
                        p["name"] == backend["port"]["name"]
                            || p["port"] == backend["port"]["number"]
                    })
                    .expect("a port of the Service");
                assert_eq!(
                    port_named(c, sp["targetPort"].as_str().expect("named target port")),
                    8000,
                    "{ctx}"
                );
            }
        }
        // The timeouts outlast the longest the server may take to answer: the handler's bound
        // on a request, 2 x VIRTUALFIT_REQUEST_TIMEOUT_S + 10 s (src/server/tryon.rs), and an
        // answer during the drain.
        let env = env_of(c);
        let seconds = |k: &str| env[k].parse::<f64>().expect("seconds");
        let handler_bound = 2.0 * seconds("VIRTUALFIT_REQUEST_TIMEOUT_S") + 10.0;
        let drain = seconds("VIRTUALFIT_DRAIN_TIMEOUT_S");
        for key in ["proxy-read-timeout", "proxy-send-timeout"] {
            let t: f64 = nginx_annotation(ing, key).parse().expect("seconds");
            assert!(
                t > handler_bound && t > drain,
                "{ctx}: {key} {t} s must outlast the handler's {handler_bound} s and the drain's {drain} s"
            );
        }
        // The body limit is the server's (413 from the server), never nginx's first.
        let max_body = env
            .get(&body_env)
            .map(|v| v.parse::<u64>().expect("bytes"))
            .unwrap_or(default_body);
        let nginx_body = nginx_size(nginx_annotation(ing, "proxy-body-size"));
        assert!(
            nginx_body >= max_body,
            "{ctx}: proxy-body-size {nginx_body} below --max-body-bytes {max_body}"
        );
    }
}
