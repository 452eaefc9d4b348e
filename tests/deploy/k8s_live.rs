//! A real Prometheus, with the shipped `virtualfit-pods` scrape job and relabelling over static
//! targets, scrapes two live `virtualfit serve` replicas (CPU, `overlay` model) under a bounded
//! overload on 127.0.0.1, and answers every application trigger query of the shipped ScaledObject
//! with exactly one finite sample; every `virtualfit_*` name used in k8s/ is exported by the
//! server, and every alert and dashboard expression is valid PromQL for this Prometheus.
//!
//! Needs `prometheus` (Debian package `prometheus`) and `kubectl` (tests/common/k8s.rs).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::k8s::*;
use serde_yaml::{Mapping, Value};

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `virtualfit serve` replica on 127.0.0.1, with its metrics port, killed on drop.
struct Replica {
    _server: ChildServer,
    addr: String,
    metrics_addr: String,
}

fn start_replica(extra: &[&str]) -> Replica {
    let mut args = vec![
        "--metrics-bind",
        "127.0.0.1:0",
        "--model",
        "overlay",
        "--device",
        "cpu",
        // The dashboard's cost panels read the price each replica publishes.
        "--gpu-hour-price",
        "3",
    ];
    args.extend_from_slice(extra);
    let server = ChildServer::start(&args);
    let metrics_base = server.metrics_base.clone().expect("the metrics port");
    Replica {
        addr: server.addr().to_string(),
        metrics_addr: metrics_base.trim_start_matches("http://").to_string(),
        _server: server,
    }
}

/// The sample (person, garment) photo pairs of assets/samples/.
fn fixture_pairs() -> Vec<(Vec<u8>, Vec<u8>)> {
    common::pairs()
        .iter()
        .map(|(p, c)| {
            (
                common::fixture(&format!("person/{p}")),
                common::fixture(&format!("cloth/{c}")),
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
        r._server.wait_ready().await;
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
    assert!(!pairs.is_empty(), "sample pairs");
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
    let app_triggers = [
        "gpu-busy",
        "queue-length",
        "active-requests",
        "backlog-seconds",
    ];
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
            && max_seen.get("gpu-busy").is_some_and(|v| *v > 0.0)
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
    // The model's interactive busy time reads on the CPU too (the server's own counter).
    assert!(
        max_seen.get("gpu-busy").is_some_and(|v| *v > 0.0),
        "{max_seen:?}"
    );
    // Queued items at the measured seconds per item: positive whenever the queue is.
    assert!(
        max_seen.get("backlog-seconds").is_some_and(|v| *v > 0.0),
        "{max_seen:?}"
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
    let exported: BTreeSet<String> = virtualfit::metrics_text::samples(&exposition)
        .map(|s| s.name)
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
