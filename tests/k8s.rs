//! Checks of the Kubernetes manifests in `k8s/`.
//!
//! - Every manifest parses and every kustomization renders (with a small renderer for the subset
//!   of kustomize that `k8s/` uses; `kustomize_renderer_matches_kubectl` compares it with
//!   `kubectl kustomize` where kubectl exists).
//! - The core kinds validate against the Kubernetes schemas (`kubernetes-validate`), every
//!   ScaledObject against KEDA's CRD schema (`../shared/schemas/keda.sh_scaledobjects.yaml`),
//!   plus the checks a schema misses.
//! - Metric contract: every `DCGM_FI_*` name is one the DCGM exporter exports; every
//!   `virtualfit_*` name is exported by a live server (see `live_prometheus_*`).
//! - PromQL semantics: `promtool test rules` on k8s/tests/*.test.yaml, whose trigger queries must
//!   be the shipped ones.
//! - A real Prometheus scraping two live replicas under a bounded load, with the shipped scrape
//!   configuration, answers every trigger query with exactly one finite sample.
//!
//! External tools: `promtool` and `prometheus` (Debian package `prometheus`), `python3` with
//! `kubernetes-validate` (PyPI; brings `jsonschema` and `PyYAML`). See k8s/CI-REQUIREMENTS.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

// ---------------------------------------------------------------------------------------------
// Paths and tools

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_dir() -> PathBuf {
    root().join("k8s")
}

fn shared() -> PathBuf {
    root().join("../shared")
}

/// Runs `program args`, panicking with an install hint if the program is missing.
fn run_tool(program: &str, args: &[&str], stdin: Option<&str>, hint: &str) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("`{program}` is required for this test and could not be started ({e}); {hint}")
    });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes())
            .expect("write to the tool's stdin");
    }
    child.wait_with_output().expect("wait for the tool")
}

const PROMETHEUS_HINT: &str =
    "install it with `apt-get install -y prometheus` (k8s/CI-REQUIREMENTS.md)";
const PYTHON_HINT: &str =
    "install it with `pip install kubernetes-validate==1.37.0` (k8s/CI-REQUIREMENTS.md)";

fn promtool(args: &[&str]) -> Output {
    run_tool("promtool", args, None, PROMETHEUS_HINT)
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a Python snippet; fails clearly when python3 or the modules it imports are missing.
fn python(script: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let probe = run_tool(
        "python3",
        &["-c", "import jsonschema, yaml, kubernetes_validate"],
        None,
        PYTHON_HINT,
    );
    assert!(
        probe.status.success(),
        "python3 lacks jsonschema/PyYAML/kubernetes-validate; {PYTHON_HINT}\n{}",
        text(&probe)
    );
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    run_tool("python3", &all, stdin, PYTHON_HINT)
}

// ---------------------------------------------------------------------------------------------
// Loading manifests

fn load_docs(path: &Path) -> Vec<Value> {
    let content =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(&content) {
        let v = Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

fn load_one(path: &Path) -> Value {
    let mut docs = load_docs(path);
    assert_eq!(docs.len(), 1, "{} should hold one document", path.display());
    docs.remove(0)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_str()
}

fn kind(v: &Value) -> &str {
    str_at(v, &["kind"]).unwrap_or("")
}

fn name(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or("")
}

fn namespace(v: &Value) -> &str {
    str_at(v, &["metadata", "namespace"]).unwrap_or("")
}

fn seq(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Sequence(s)) => s.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(other) => panic!("expected a list, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A renderer for the subset of kustomize used in k8s/: resources (files and directories),
// components, namespace, JSON 6902 patches with a target, configMapGenerator with files.
// Anything else fails the test, so the renderer cannot silently ignore a feature.

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "APIService",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
];

fn build(dir: &Path, files: &mut BTreeSet<PathBuf>, mut acc: Vec<Value>) -> Vec<Value> {
    let kpath = dir.join("kustomization.yaml");
    files.insert(canonical(&kpath));
    let k = load_one(&kpath);
    let map = k
        .as_mapping()
        .unwrap_or_else(|| panic!("{} is not a mapping", kpath.display()));
    let allowed = [
        "apiVersion",
        "kind",
        "resources",
        "components",
        "namespace",
        "patches",
        "configMapGenerator",
        "generatorOptions",
    ];
    for key in map.keys() {
        let key = key.as_str().unwrap_or("");
        assert!(
            allowed.contains(&key),
            "{}: `{key}` is not supported by the test renderer",
            kpath.display()
        );
    }
    for r in seq(k.get("resources")) {
        let p = dir.join(r.as_str().expect("resource path"));
        if p.is_dir() {
            acc.extend(build(&p, files, Vec::new()));
        } else {
            files.insert(canonical(&p));
            acc.extend(load_docs(&p));
        }
    }
    for c in seq(k.get("components")) {
        let p = dir.join(c.as_str().expect("component path"));
        let comp = load_one(&p.join("kustomization.yaml"));
        assert_eq!(
            kind(&comp),
            "Component",
            "{} is not a Component",
            p.display()
        );
        acc = build(&p, files, acc);
    }
    let generators = seq(k.get("configMapGenerator"));
    if !generators.is_empty() {
        assert_eq!(
            k.get("generatorOptions")
                .and_then(|o| o.get("disableNameSuffixHash"))
                .and_then(Value::as_bool),
            Some(true),
            "{}: the test renderer needs disableNameSuffixHash: true",
            kpath.display()
        );
    }
    for g in generators {
        let mut data = Mapping::new();
        for f in seq(g.get("files")) {
            let p = dir.join(f.as_str().expect("file name"));
            files.insert(canonical(&p));
            let content = fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            let key = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .to_string();
            data.insert(Value::from(key), Value::from(content));
        }
        let mut meta = Mapping::new();
        meta.insert(
            "name".into(),
            g.get("name").expect("generator name").clone(),
        );
        if let Some(labels) = g.get("options").and_then(|o| o.get("labels")) {
            meta.insert("labels".into(), labels.clone());
        }
        let mut cm = Mapping::new();
        cm.insert("apiVersion".into(), "v1".into());
        cm.insert("kind".into(), "ConfigMap".into());
        cm.insert("metadata".into(), Value::Mapping(meta));
        cm.insert("data".into(), Value::Mapping(data));
        acc.push(Value::Mapping(cm));
    }
    for p in seq(k.get("patches")) {
        apply_patch(&mut acc, &p, &kpath);
    }
    if let Some(ns) = k.get("namespace").and_then(Value::as_str) {
        for obj in &mut acc {
            let kind = kind(obj).to_string();
            let meta = obj
                .get_mut("metadata")
                .and_then(Value::as_mapping_mut)
                .expect("metadata");
            if kind == "Namespace" {
                meta.insert("name".into(), ns.into());
            } else if !CLUSTER_SCOPED.contains(&kind.as_str()) {
                meta.insert("namespace".into(), ns.into());
            }
        }
    }
    acc
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize()
        .unwrap_or_else(|e| panic!("{} is referenced but missing: {e}", p.display()))
}

fn apply_patch(objs: &mut [Value], patch: &Value, kpath: &Path) {
    let target = patch.get("target").expect("patch target");
    let want = |key: &str| target.get(key).and_then(Value::as_str);
    let matches: Vec<usize> = objs
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            let api = str_at(o, &["apiVersion"]).unwrap_or("");
            let (group, version) = api.rsplit_once('/').unwrap_or(("", api));
            want("kind").is_none_or(|k| k == kind(o))
                && want("name").is_none_or(|n| n == name(o))
                && want("group").is_none_or(|g| g == group)
                && want("version").is_none_or(|v| v == version)
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        matches.len(),
        1,
        "{}: a patch target must match exactly one object: {target:?}",
        kpath.display()
    );
    let ops: Vec<Value> = serde_yaml::from_str(
        patch
            .get("patch")
            .and_then(Value::as_str)
            .expect("inline JSON 6902 patch"),
    )
    .unwrap_or_else(|e| panic!("{}: patch does not parse: {e}", kpath.display()));
    let obj = &mut objs[matches[0]];
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).expect("op");
        let path = op.get("path").and_then(Value::as_str).expect("path");
        let tokens: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let value = op.get("value").cloned();
        let ctx = format!("{}: {kind} {path}", kpath.display());
        match kind {
            "test" => assert_eq!(pointer(obj, &tokens, &ctx), &value.expect("value"), "{ctx}"),
            "replace" => *pointer_mut(obj, &tokens, &ctx) = value.expect("value"),
            "add" | "remove" => {
                let (last, parent) = tokens.split_last().expect("non-empty path");
                let parent = pointer_mut(obj, parent, &ctx);
                match (parent, kind) {
                    (Value::Sequence(s), "add") if last == "-" => s.push(value.expect("value")),
                    (Value::Sequence(s), "add") => {
                        s.insert(last.parse().expect("index"), value.expect("value"))
                    }
                    (Value::Sequence(s), _) => {
                        s.remove(last.parse::<usize>().expect("index"));
                    }
                    (Value::Mapping(m), "add") => {
                        m.insert(last.as_str().into(), value.expect("value"));
                    }
                    (Value::Mapping(m), _) => {
                        assert!(
                            m.remove(last.as_str()).is_some(),
                            "{ctx}: nothing to remove"
                        );
                    }
                    _ => panic!("{ctx}: parent is not a container"),
                }
            }
            other => panic!("{ctx}: op `{other}` is not supported by the test renderer"),
        }
    }
}

fn pointer<'a>(v: &'a Value, tokens: &[String], ctx: &str) -> &'a Value {
    tokens.iter().fold(v, |cur, t| {
        match cur {
            Value::Sequence(s) => t.parse::<usize>().ok().and_then(|i| s.get(i)),
            Value::Mapping(m) => m.get(t.as_str()),
            _ => None,
        }
        .unwrap_or_else(|| panic!("{ctx}: path does not exist"))
    })
}

fn pointer_mut<'a>(v: &'a mut Value, tokens: &[String], ctx: &str) -> &'a mut Value {
    tokens.iter().fold(v, |cur, t| {
        match cur {
            Value::Sequence(s) => t.parse::<usize>().ok().and_then(|i| s.get_mut(i)),
            Value::Mapping(m) => m.get_mut(t.as_str()),
            _ => None,
        }
        .unwrap_or_else(|| panic!("{ctx}: path does not exist"))
    })
}

/// The kustomizations that `kubectl apply -k` is pointed at.
const TARGETS: &[&str] = &["", "overlays/dev", "overlays/spot", "overlays/eu-west"];

/// Every directory holding a kustomization.yaml.
fn kustomization_dirs() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(&k8s_dir(), &mut files);
    files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .map(|p| p.parent().expect("parent").to_path_buf())
        .collect()
}

fn render(rel: &str) -> Vec<Value> {
    build(&k8s_dir().join(rel), &mut BTreeSet::new(), Vec::new())
}

fn find<'a>(objs: &'a [Value], k: &str, n: &str) -> &'a Value {
    objs.iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} {n}"))
}

fn to_yaml_stream(objs: &[Value]) -> String {
    objs.iter()
        .map(|o| serde_yaml::to_string(o).expect("serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

// ---------------------------------------------------------------------------------------------
// Manifests parse, kustomizations render, nothing is orphaned

#[test]
fn every_manifest_parses_and_is_applied_by_a_kustomization() {
    let mut all = Vec::new();
    files_under(&k8s_dir(), &mut all);
    let mut referenced = BTreeSet::new();
    for dir in kustomization_dirs() {
        let k = load_one(&dir.join("kustomization.yaml"));
        if kind(&k) == "Component" {
            continue;
        }
        let objs = build(&dir, &mut referenced, Vec::new());
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
        if rel.starts_with("tests") {
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
        ("APIService", "v1beta1.custom.metrics.k8s.io"),
    ] {
        find(&top, k, n);
    }
}

/// Compares the test renderer with the real kustomize (kubectl's). Needs kubectl, which CI does
/// not install: run it with `cargo test --release --test k8s -- --ignored`.
#[test]
#[ignore = "needs kubectl"]
fn kustomize_renderer_matches_kubectl() {
    for dir in kustomization_dirs() {
        let k = load_one(&dir.join("kustomization.yaml"));
        if kind(&k) == "Component" {
            continue;
        }
        let out = run_tool(
            "kubectl",
            &["kustomize", dir.to_str().expect("utf-8 path")],
            None,
            "install kubectl",
        );
        assert!(out.status.success(), "{}", text(&out));
        let real: Vec<Value> = serde_yaml::Deserializer::from_slice(&out.stdout)
            .map(|d| Value::deserialize(d).expect("kubectl output parses"))
            .collect();
        let ours = build(&dir, &mut BTreeSet::new(), Vec::new());
        let key = |o: &Value| {
            (
                kind(o).to_string(),
                namespace(o).to_string(),
                name(o).to_string(),
            )
        };
        let real: BTreeMap<_, _> = real.iter().map(|o| (key(o), o)).collect();
        let ours: BTreeMap<_, _> = ours.iter().map(|o| (key(o), o)).collect();
        assert_eq!(
            real.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>(),
            "{}",
            dir.display()
        );
        for (k, v) in &real {
            assert_eq!(*v, ours[k], "{}: {k:?} differs", dir.display());
        }
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
    "ServiceAccount",
    "NetworkPolicy",
    "ConfigMap",
    "PersistentVolumeClaim",
    "ClusterRole",
    "ClusterRoleBinding",
    "RoleBinding",
    "APIService",
];

fn kubernetes_validate(objs: &[Value]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("manifests.yaml");
    fs::write(&file, to_yaml_stream(objs)).expect("write manifests");
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
    for target in TARGETS {
        let objs: Vec<Value> = render(target)
            .into_iter()
            .filter(|o| kind(o) != "ScaledObject")
            .collect();
        for o in &objs {
            assert!(
                CORE_KINDS.contains(&kind(o)),
                "{target}: {} is neither a core kind nor a ScaledObject",
                kind(o)
            );
        }
        let out = kubernetes_validate(&objs);
        assert!(out.status.success(), "k8s/{target}:\n{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let passed = stdout
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        assert_eq!(
            passed,
            objs.len(),
            "k8s/{target}: not every object validated:\n{stdout}"
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
assert crd["spec"]["names"]["kind"] == "ScaledObject"
schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"]
validator = jsonschema.Draft7Validator(schema)
bad = 0
for doc in json.load(sys.stdin):
    for e in sorted(validator.iter_errors(doc), key=str):
        print(doc["metadata"]["name"], "/".join(map(str, e.path)), e.message)
        bad += 1
print("validated", bad, "errors")
sys.exit(1 if bad else 0)
"#;

fn keda_validate(objs: &[&Value]) -> Output {
    let json = serde_json::to_string(objs).expect("to JSON");
    let crd = shared().join("schemas/keda.sh_scaledobjects.yaml");
    python(
        KEDA_VALIDATE,
        &[crd.to_str().expect("utf-8 path")],
        Some(&json),
    )
}

/// The ScaledObjects of every target, with the objects rendered beside them.
fn scaled_objects() -> Vec<(String, Vec<Value>)> {
    TARGETS.iter().map(|t| (t.to_string(), render(t))).collect()
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
    assert_eq!(count, TARGETS.len());
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

// Which of the query forms a trigger uses: the forms the autoscaling simulator reads, told apart
// on the PromQL syntax tree.
use virtualfit::simulate::promql::{query_form, QueryForm};

fn triggers(so: &Value) -> Vec<Value> {
    seq(so.get("spec").and_then(|s| s.get("triggers")))
}

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
        assert_eq!(
            down["stabilizationWindowSeconds"].as_u64(),
            Some(300),
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
            "{ctx}: GPU, queue, active requests and P95 triggers"
        );
        for want in [
            "gpu-utilization",
            "queue-length",
            "active-requests",
            "p95-latency",
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
// Deployment, Service, NetworkPolicy, scrape configuration, adapter

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

#[test]
fn deployment_drains_within_its_grace_period_and_runs_locked_down() {
    for target in TARGETS {
        let objs = render(target);
        let dep = objs
            .iter()
            .find(|o| kind(o) == "Deployment" && name(o) == "virtualfit-inference")
            .expect("Deployment");
        let ctx = format!("k8s/{target}");
        let pod = &dep["spec"]["template"]["spec"];
        let c = &seq(pod.get("containers"))[0];
        let env = env_of(c);
        let drain: f64 = env["VIRTUALFIT_DRAIN_TIMEOUT_S"]
            .parse()
            .expect("drain timeout");
        let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_f64()
            .expect("preStop sleep");
        let grace = pod["terminationGracePeriodSeconds"]
            .as_f64()
            .expect("grace period");
        assert!(pre_stop > 0.0, "{ctx}");
        assert!(
            grace > pre_stop + drain,
            "{ctx}: grace {grace} s must exceed preStop {pre_stop} s + drain {drain} s"
        );
        // Probes.
        assert_eq!(
            c["startupProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz"),
            "{ctx}"
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz"),
            "{ctx}"
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/livez"),
            "{ctx}"
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
        for k in env.keys() {
            assert!(k.starts_with("VIRTUALFIT_"), "{ctx}: {k}");
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

fn prometheus_config() -> Value {
    let objs = render("");
    let cm = find(&objs, "ConfigMap", "virtualfit-prometheus");
    serde_yaml::from_str(
        cm["data"]["prometheus.yml"]
            .as_str()
            .expect("prometheus.yml"),
    )
    .expect("prometheus.yml parses")
}

fn job<'a>(config: &'a Value, job_name: &str) -> &'a Value {
    seq(config.get("scrape_configs"))
        .iter()
        .position(|j| j["job_name"].as_str() == Some(job_name))
        .map(|i| &config["scrape_configs"][i])
        .unwrap_or_else(|| panic!("no scrape job {job_name}"))
}

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

#[test]
fn prometheus_adapter_serves_the_custom_metrics_api_only() {
    let objs = render("");
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
    // The adapter's RBAC only reads.
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
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metric names

fn names_in(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // A bare prefix (`virtualfit_*` in prose) is a pattern, not a name.
        if end > prefix.len() && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn names_in_k8s(prefix: &str) -> BTreeMap<String, Vec<PathBuf>> {
    let mut files = Vec::new();
    files_under(&k8s_dir(), &mut files);
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in files {
        let content = fs::read_to_string(&f).expect("read");
        for n in names_in(&content, prefix) {
            out.entry(n).or_default().push(f.clone());
        }
    }
    out
}

/// The DCGM fields that dcgm-exporter exports with its default and DCP counter lists
/// (../shared/docs/autoscaling.md: GPU_UTIL, FB_USED/FREE/RESERVED, GPU_TEMP, POWER_USAGE,
/// PROF_GR_ENGINE_ACTIVE).
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
        "the GPU trigger's metric"
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
// promtool: alert rules and trigger semantics

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
    ] {
        assert!(alerts.contains(want), "alert {want}");
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
    for n in [1, 3, 8] {
        for q in shipped.keys() {
            assert!(
                covered.contains(&(n, q.clone())),
                "no case with {n} pods for {q}"
            );
        }
        assert!(
            p95_zero.contains(&n),
            "no zero-traffic P95 case with {n} pods"
        );
    }
    let out = promtool(&["test", "rules", path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
}

// ---------------------------------------------------------------------------------------------
// Live: two server replicas, a bounded load, a real Prometheus

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `virtualfit serve` replica on 127.0.0.1.
struct Replica {
    _proc: Proc,
    addr: String,
    metrics_addr: String,
}

fn start_replica(extra: &[&str]) -> Replica {
    let mut args = vec![
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--metrics-bind",
        "127.0.0.1:0",
        "--model",
        "overlay",
        "--device",
        "cpu",
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .args(&args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start virtualfit serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut addr = None;
        let mut metrics = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            match v["message"].as_str() {
                Some("listening") => addr = v["addr"].as_str().map(str::to_string),
                Some("metrics listening") => metrics = v["addr"].as_str().map(str::to_string),
                _ => {}
            }
            if let (Some(a), Some(m)) = (&addr, &metrics) {
                let _ = tx.send((a.clone(), m.clone()));
                addr = None;
            }
        }
    });
    let proc = Proc(child);
    let (addr, metrics_addr) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server logs its bound addresses");
    Replica {
        _proc: proc,
        addr,
        metrics_addr,
    }
}

async fn wait_ready(client: &reqwest::Client, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fixture_pairs() -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = shared().join("fixtures/viton-demo");
    let pairs = fs::read_to_string(dir.join("pairs.txt")).expect("viton-demo/pairs.txt");
    pairs
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(p, c)| {
            (
                fs::read(dir.join("person").join(p.trim())).expect("person image"),
                fs::read(dir.join("cloth").join(c.trim())).expect("cloth image"),
            )
        })
        .collect()
}

async fn tryon(client: &reqwest::Client, addr: &str, person: &[u8], cloth: &[u8]) -> u16 {
    let form = reqwest::multipart::Form::new()
        .part(
            "person_image",
            reqwest::multipart::Part::bytes(person.to_vec())
                .file_name("person.jpg")
                .mime_str("image/jpeg")
                .expect("mime"),
        )
        .part(
            "cloth_image",
            reqwest::multipart::Part::bytes(cloth.to_vec())
                .file_name("cloth.jpg")
                .mime_str("image/jpeg")
                .expect("mime"),
        );
    match client
        .post(format!("http://{addr}/tryon"))
        .multipart(form)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            status
        }
        Err(_) => 0,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The shipped Prometheus configuration, with the Kubernetes service discovery replaced by
/// static targets that carry the same `__meta_kubernetes_*` labels, so that the shipped
/// relabelling runs unchanged. Each replica is offered on both of its ports, as Kubernetes pod
/// discovery does: the relabelling must keep only the `metrics` port.
fn static_prometheus_config(replicas: &[Replica], scrape_interval: &str) -> String {
    let mut config = prometheus_config();
    config["global"]["scrape_interval"] = Value::from(scrape_interval);
    config["global"]["evaluation_interval"] = Value::from(scrape_interval);
    config
        .as_mapping_mut()
        .expect("config")
        .remove("rule_files");
    let jobs = config["scrape_configs"].as_sequence_mut().expect("jobs");
    jobs.retain(|j| j["job_name"].as_str() == Some("virtualfit-pods"));
    assert_eq!(jobs.len(), 1, "the virtualfit-pods job");
    let pod_job = &mut jobs[0];
    pod_job["scrape_interval"] = Value::from(scrape_interval);
    let mut statics = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        for (addr, port_name) in [(&r.metrics_addr, "metrics"), (&r.addr, "http")] {
            let labels: Mapping = [
                ("__meta_kubernetes_namespace", "virtualfit".to_string()),
                (
                    "__meta_kubernetes_pod_name",
                    format!("virtualfit-inference-{i}"),
                ),
                ("__meta_kubernetes_pod_node_name", "node-0".to_string()),
                ("__meta_kubernetes_pod_phase", "Running".to_string()),
                (
                    "__meta_kubernetes_pod_label_app_kubernetes_io_name",
                    "virtualfit".to_string(),
                ),
                (
                    "__meta_kubernetes_pod_label_app_kubernetes_io_component",
                    "inference".to_string(),
                ),
                (
                    "__meta_kubernetes_pod_container_port_name",
                    port_name.to_string(),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (Value::from(k), Value::from(v)))
            .collect();
            let mut entry = Mapping::new();
            entry.insert(
                "targets".into(),
                Value::Sequence(vec![Value::from(addr.as_str())]),
            );
            entry.insert("labels".into(), Value::Mapping(labels));
            statics.push(Value::Mapping(entry));
        }
    }
    let pod_job = pod_job.as_mapping_mut().expect("job");
    assert!(pod_job.remove("kubernetes_sd_configs").is_some());
    pod_job.insert("static_configs".into(), Value::Sequence(statics));
    serde_yaml::to_string(&config).expect("yaml")
}

async fn prom_query(client: &reqwest::Client, base: &str, query: &str) -> serde_json::Value {
    let r = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .expect("query Prometheus");
    let body: serde_json::Value = r.json().await.expect("JSON answer");
    assert_eq!(body["status"], "success", "{query}: {body}");
    body
}

/// The one finite sample of a query's answer.
fn single_value(body: &serde_json::Value, query: &str) -> f64 {
    let result = body["data"]["result"].as_array().expect("vector result");
    assert_eq!(
        result.len(),
        1,
        "{query} must return exactly one sample: {body}"
    );
    let v: f64 = result[0]["value"][1]
        .as_str()
        .expect("sample value")
        .parse()
        .expect("numeric sample");
    assert!(v.is_finite(), "{query} returned {v}");
    v
}

/// Every PromQL expression shipped in k8s/ (alert rules, dashboard), with the Grafana
/// variables substituted.
fn shipped_expressions() -> Vec<String> {
    let mut out = Vec::new();
    let rules = load_one(&k8s_dir().join("monitoring/alerts.rules.yaml"));
    for g in seq(rules.get("groups")) {
        for r in seq(g.get("rules")) {
            out.push(r["expr"].as_str().expect("expr").to_string());
        }
    }
    let dash: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(k8s_dir().join("monitoring/virtualfit-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let e = t["expr"].as_str().expect("expr");
            out.push(
                e.replace("$namespace", "virtualfit")
                    .replace("$__rate_interval", "1m"),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_prometheus_reads_every_trigger_from_two_replicas_under_load() {
    // Overload on purpose: batches of up to 8 that wait up to 1 s for company, a queue of 4 per
    // replica, and 6 concurrent clients per replica. Requests queue (queue length > 0), the
    // others find the queue full (429), and the latency histogram fills.
    let replica_args = [
        "--max-batch-size",
        "8",
        "--max-batch-delay-ms",
        "1000",
        "--queue-capacity",
        "4",
    ];
    let replicas = [start_replica(&replica_args), start_replica(&replica_args)];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    for r in &replicas {
        wait_ready(&client, &r.addr).await;
    }

    // Prometheus with the shipped scrape job.
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("prometheus.yml");
    fs::write(&config_path, static_prometheus_config(&replicas, "1s")).expect("config");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let prom = Command::new("prometheus")
        .args([
            &format!("--config.file={}", config_path.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            &format!("--web.listen-address={listen}"),
            "--log.level=warn",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `prometheus` ({e}); {PROMETHEUS_HINT}"));
    let _prom = Proc(prom);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/-/ready")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "Prometheus never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bounded load: 6 clients per replica, 40 s at most, 2000 requests at most.
    let pairs = std::sync::Arc::new(fixture_pairs());
    assert!(!pairs.is_empty(), "viton-demo pairs");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        for w in 0..6 {
            let (client, addr, pairs, stop, sent) = (
                client.clone(),
                r.addr.clone(),
                pairs.clone(),
                stop.clone(),
                sent.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
                let mut k = i * 6 + w;
                let load_end = Instant::now() + Duration::from_secs(40);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && Instant::now() < load_end
                    && sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 2000
                {
                    let (p, c) = &pairs[k % pairs.len()];
                    let code = tryon(&client, &addr, p, c).await;
                    *codes.entry(code).or_default() += 1;
                    k += 1;
                    if code != 200 {
                        // Back off as a client honouring Retry-After would.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                codes
            }));
        }
    }

    // While the load runs: both replicas are up, and the queue query reads > 0.
    let objs = render("");
    let so = find(&objs, "ScaledObject", "virtualfit-inference-gpu-scaler");
    let queries: BTreeMap<String, String> = triggers(so)
        .iter()
        .filter(|t| t["type"].as_str() == Some("prometheus"))
        .map(|t| {
            (
                t["name"].as_str().expect("name").to_string(),
                t["metadata"]["query"].as_str().expect("query").to_string(),
            )
        })
        .collect();
    let app_triggers = ["queue-length", "active-requests", "p95-latency"];
    let mut max_seen: BTreeMap<&str, f64> = BTreeMap::new();
    let mut up_both = false;
    let watch_end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < watch_end {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let up = prom_query(
            &client,
            &base,
            "sum(up{job=\"virtualfit-pods\",namespace=\"virtualfit\"})",
        )
        .await;
        let targets = prom_query(&client, &base, "count(up{job=\"virtualfit-pods\"})").await;
        let scraped = |b: &serde_json::Value| {
            b["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
        };
        if scraped(&up) == Some(2.0) && scraped(&targets) == Some(2.0) {
            up_both = true;
        }
        for t in app_triggers {
            let body = prom_query(&client, &base, &queries[t]).await;
            if body["data"]["result"]
                .as_array()
                .is_some_and(|r| r.is_empty())
            {
                continue; // not scraped yet
            }
            let v = single_value(&body, &queries[t]);
            let m = max_seen.entry(t).or_insert(f64::MIN);
            *m = m.max(v);
        }
        if up_both
            && max_seen.get("queue-length").is_some_and(|v| *v > 0.0)
            && max_seen.get("p95-latency").is_some_and(|v| *v > 0.0)
        {
            break;
        }
    }
    // Final reading of every trigger while the load still runs.
    let mut last = BTreeMap::new();
    for t in app_triggers {
        let body = prom_query(&client, &base, &queries[t]).await;
        last.insert(t, single_value(&body, &queries[t]));
    }
    // The GPU query: no DCGM exporter here, so an empty result (KEDA reads 0).
    let gpu = prom_query(&client, &base, &queries["gpu-utilization"]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    for w in workers {
        for (k, v) in w.await.expect("load worker") {
            *codes.entry(k).or_default() += v;
        }
    }
    eprintln!("load answers by status: {codes:?}");
    eprintln!("trigger maxima while loaded: {max_seen:?}");
    eprintln!("trigger values at the end of the load: {last:?}");
    eprintln!("gpu-utilization query: {}", gpu["data"]["result"]);

    assert!(
        up_both,
        "Prometheus scraped both replicas (and only their metrics ports)"
    );
    assert!(codes.get(&200).copied().unwrap_or(0) > 0, "{codes:?}");
    assert!(
        max_seen.get("queue-length").is_some_and(|v| *v > 0.0),
        "the queue-length trigger reads > 0 while the replicas are overloaded: {max_seen:?}"
    );
    assert!(
        max_seen.get("active-requests").is_some_and(|v| *v > 0.0),
        "{max_seen:?}"
    );
    assert!(
        max_seen.get("p95-latency").is_some_and(|v| *v > 0.0),
        "{max_seen:?}"
    );
    assert!(
        gpu["data"]["result"]
            .as_array()
            .is_some_and(|r| r.is_empty()),
        "no DCGM series on a CPU-only test: {gpu}"
    );

    // Every virtualfit_* name used in k8s/ is exported by a live replica.
    let exposition = client
        .get(format!("http://{}/metrics", replicas[0].metrics_addr))
        .send()
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("metrics text");
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect();
    let used = names_in_k8s("virtualfit_");
    assert!(used.len() >= 10, "{used:?}");
    for (n, files) in &used {
        assert!(
            exported.contains(n),
            "{n} (used in {files:?}) is not exported by the server"
        );
    }
    // Every alert and dashboard expression is valid PromQL for this Prometheus.
    for e in shipped_expressions() {
        prom_query(&client, &base, &e).await;
    }
}
