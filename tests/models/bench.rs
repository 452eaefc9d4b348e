//! `virtualfit bench`: the load generator against a live server on 127.0.0.1, its report's
//! schema, the sweep and the model timing. The binary runs as a child process.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use common::demo_dir;
use virtualfit::bench::model::ModelReport;
use virtualfit::bench::report::HttpReport;
use virtualfit::bench::sweep::SweepReport;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_virtualfit"))
        .arg("bench")
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs `bench` off the async runtime, so the in-process server keeps serving.
async fn bench_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args)
    })
    .await
    .expect("bench task")
}

fn assert_success(o: &Output) {
    assert!(
        o.status.success(),
        "bench failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn demo() -> String {
    demo_dir().to_string_lossy().into_owned()
}

fn read_report(path: &Path) -> HttpReport {
    let text = std::fs::read_to_string(path).expect("report written");
    serde_json::from_str(&text).expect("the report reads back")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn assert_ordered(report: &HttpReport) {
    let l = &report.latency_ms;
    assert!(l.p50 > 0.0, "{l:?}");
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max,
        "percentiles out of order: {l:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_counts_add_up_and_percentiles_are_ordered() {
    let (server, base) = common::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let plot = dir.path().join("report.png");
    let o = bench_async(args(&[
        "http",
        "--url",
        &base,
        "--data",
        &demo(),
        "--concurrency",
        "4",
        "--duration",
        "2s",
        "--json",
        &json.to_string_lossy(),
        "--plot",
        &plot.to_string_lossy(),
    ]))
    .await;
    assert_success(&o);
    let r = read_report(&json);
    assert_eq!(r.mode, "closed");
    assert_eq!(r.concurrency, Some(4));
    assert!(r.requests_sent > 0);
    let answered: u64 = r.status_counts.values().sum();
    let failed: u64 = r.errors.values().sum();
    assert_eq!(r.requests_sent, answered + failed, "{r:?}");
    assert_eq!(failed, 0, "a healthy server answers every request: {r:?}");
    assert_eq!(r.status_counts.get("200"), Some(&r.requests_sent));
    assert_eq!(r.latency_ms.count, r.requests_sent);
    assert_ordered(&r);
    assert!(r.throughput_rps > 0.0);
    let timeline_answers: u64 = r.timeline.iter().map(|p| p.answers).sum();
    assert_eq!(timeline_answers, r.requests_sent);

    // The server counted the same answers between the two scrapes.
    let s = r.server.as_ref().expect("server-side figures");
    assert_eq!(s.answers_by_code.get("200"), Some(&r.requests_sent));
    assert!(s.batches > 0);
    let mean_batch = s.mean_batch_size.expect("mean batch size");
    assert!((1.0..=8.0).contains(&mean_batch), "{mean_batch}");
    assert!(s.rejections.values().all(|&n| n == 0), "{s:?}");
    // The model ran for part of the run: its busy time is the batches' forward time.
    let forward_s = s.batches as f64 * s.mean_batch_ms.expect("forward time") / 1e3;
    assert!((s.busy_s - forward_s).abs() < 1e-6, "{s:?}");
    let busy = s.busy_ratio.expect("busy ratio");
    assert!(busy > 0.0 && busy <= 1.0, "{busy}");

    let png = image::open(&plot).expect("the plot is an image");
    assert_eq!((png.width(), png.height()), (1280, 520));
    server
        .drain(std::time::Duration::from_secs(5))
        .await
        .expect("drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_schema_is_stable() {
    let (server, base) = common::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let o = bench_async(args(&[
        "http",
        "--url",
        &base,
        "--data",
        &demo(),
        "--rate",
        "50",
        "--arrival",
        "constant",
        "--requests",
        "12",
        "--json",
        &json.to_string_lossy(),
    ]))
    .await;
    assert_success(&o);
    let text = std::fs::read_to_string(&json).expect("written");
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().expect("an object").keys().cloned().collect()
    };
    let expected: BTreeSet<String> = [
        "schema_version",
        "url",
        "mode",
        "concurrency",
        "rate_rps",
        "arrival",
        "max_in_flight",
        "warmup_s",
        "pairs",
        "requests_sent",
        "status_counts",
        "errors",
        "duration_s",
        "throughput_rps",
        "answer_rate_rps",
        "latency_ms",
        "latency_all_ms",
        "send_delay_ms",
        "server",
        "timeline",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(keys(&value), expected);
    let percentile_keys: BTreeSet<String> = ["count", "mean", "p50", "p90", "p95", "p99", "max"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(keys(&value["latency_ms"]), percentile_keys);
    let server_keys: BTreeSet<String> = [
        "batches",
        "mean_batch_size",
        "mean_queue_ms",
        "mean_batch_ms",
        "busy_s",
        "busy_ratio",
        "rejections",
        "answers_by_code",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(keys(&value["server"]), server_keys);
    assert_eq!(value["schema_version"], 1);
    assert_eq!(value["mode"], "open");
    assert_eq!(value["arrival"], "constant");
    assert_eq!(value["status_counts"]["200"], 12);

    // And it reads back into the report type, unchanged when written again.
    let r: HttpReport = serde_json::from_value(value.clone()).expect("reads back");
    assert_eq!(r.requests_sent, 12, "--requests sends exactly that many");
    assert_eq!(r.rate_rps, Some(50.0));
    assert_ordered(&r);
    assert_eq!(serde_json::to_value(&r).expect("serialises"), value);
    server
        .drain(std::time::Duration::from_secs(5))
        .await
        .expect("drain");
}

/// A server that holds every request ~50 ms (its batch waits to fill, and one request at a time
/// never fills it) gets 100 requests/s with at most one in flight: the answers fall further
/// and further behind the schedule. Latency counted from the scheduled send time shows that
/// queue; a client that timed only its own sends would see about 50 ms each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_includes_the_queue_behind_a_slow_server() {
    let (server, base) =
        common::start(&["--max-batch-size", "8", "--max-batch-delay-ms", "50"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let o = bench_async(args(&[
        "http",
        "--url",
        &base,
        "--data",
        &demo(),
        "--rate",
        "100",
        "--arrival",
        "constant",
        "--requests",
        "40",
        "--max-in-flight",
        "1",
        "--json",
        &json.to_string_lossy(),
    ]))
    .await;
    assert_success(&o);
    let r = read_report(&json);
    assert_eq!(r.status_counts.get("200"), Some(&40), "{r:?}");
    let s = r.server.as_ref().expect("server-side figures");
    assert_eq!(
        s.mean_batch_size,
        Some(1.0),
        "one request in flight at a time"
    );
    let queue = s.mean_queue_ms.expect("queue time");
    let forward = s.mean_batch_ms.expect("forward time");
    assert!(
        queue >= 45.0,
        "each request waited for its batch: {queue} ms"
    );
    let service = queue + forward;
    // Request i is scheduled at 10·i ms and cannot finish before 50·(i+1) ms.
    assert!(
        r.latency_ms.p50 > 5.0 * service,
        "p50 {} ms vs service {service} ms: {r:?}",
        r.latency_ms.p50
    );
    assert!(
        r.send_delay_ms.max > 10.0 * service,
        "later requests were sent well after their schedule: {:?}",
        r.send_delay_ms
    );
    assert_ordered(&r);
    server
        .drain(std::time::Duration::from_secs(5))
        .await
        .expect("drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_writes_one_point_per_level_and_a_plot() {
    let (server, base) = common::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("sweep.json");
    let plot = dir.path().join("sweep.svg");
    let o = bench_async(args(&[
        "sweep",
        "--url",
        &base,
        "--person",
        &demo_dir().join("person/000066_0.jpg").to_string_lossy(),
        "--cloth",
        &demo_dir().join("cloth/017575_1.jpg").to_string_lossy(),
        "--concurrency",
        "1,3",
        "--requests",
        "9",
        "--pause",
        "0s",
        "--json",
        &json.to_string_lossy(),
        "--plot",
        &plot.to_string_lossy(),
    ]))
    .await;
    assert_success(&o);
    let text = std::fs::read_to_string(&json).expect("written");
    let sweep: SweepReport = serde_json::from_str(&text).expect("reads back");
    assert_eq!(sweep.mode, "closed");
    let levels: Vec<Option<u64>> = sweep.points.iter().map(|p| p.concurrency).collect();
    assert_eq!(levels, vec![Some(1), Some(3)]);
    for p in &sweep.points {
        assert_eq!(p.requests_sent, 9);
        assert_eq!(p.status_counts.get("200"), Some(&9));
        assert_eq!(p.pairs, 1);
        assert_ordered(p);
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.trim_start().starts_with("<svg"), "an SVG file");
    server
        .drain(std::time::Duration::from_secs(5))
        .await
        .expect("drain");
}

#[test]
fn model_timing_prints_one_json_object() {
    let o = bench(&[
        "model",
        "--model",
        "overlay",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--iterations",
        "3",
        "--warmup",
        "1",
        "--json",
    ]);
    assert_success(&o);
    let text = String::from_utf8(o.stdout).expect("utf-8");
    let r: ModelReport = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!((r.model.as_str(), r.device.as_str()), ("overlay", "cpu"));
    assert_eq!((r.batch_size, r.iterations), (2, 3));
    assert!(r.min_batch_s <= r.median_batch_s && r.median_batch_s <= r.max_batch_s);
    assert!((r.per_image_ms - r.median_batch_s * 1e3 / 2.0).abs() < 1e-9);
}

#[test]
fn model_timing_refuses_an_unusable_model_with_a_message() {
    let o = bench(&["model", "--model", "no-such-model", "--iterations", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("invalid value 'no-such-model' for '--model"),
        "{err}"
    );

    let o = bench(&["model", "--model", "dmvton", "--iterations", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--model-dir"), "{err}");

    let o = bench(&["model", "--random-weights", "--iterations", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--random-weights is for --model catvton"),
        "{err}"
    );
}

#[test]
fn step_model_timing_splits_a_batch_into_its_phases() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/catvton/model");
    let o = bench(&[
        "model",
        "--model",
        "catvton",
        "--model-dir",
        model.to_str().expect("utf-8 path"),
        "--device",
        "cpu",
        "--resolution",
        "512x384",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--iterations",
        "2",
        "--warmup",
        "0",
        "--flash-attention",
        "off",
        "--json",
    ]);
    assert_success(&o);
    let r: ModelReport =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).expect("one JSON object");
    assert_eq!(r.steps, Some(3));
    let p = r.phases.expect("a step model's phases");
    assert!(
        p.begin_s > 0.0 && p.step_s > 0.0 && p.finish_s > 0.0,
        "{p:?}"
    );
    // The phases are parts of each timed pass: together they make up (nearly all of) the
    // mean pass, and never more.
    let whole = p.at_steps(3);
    assert!(
        whole <= r.mean_batch_s * 1.0001 && whole >= 0.5 * r.mean_batch_s,
        "{p:?} against a mean pass of {} s",
        r.mean_batch_s
    );
}

#[test]
fn flash_attention_that_cannot_run_here_is_a_start_up_error() {
    // A CPU build on the CPU: the flag is refused before any model loads, with the reason.
    for dtype in ["f32", "bf16"] {
        let o = bench(&[
            "model",
            "--model",
            "catvton",
            "--random-weights",
            "--device",
            "cpu",
            "--dtype",
            dtype,
            "--flash-attention",
            "on",
            "--iterations",
            "1",
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        let reason = if cfg!(feature = "cuda") {
            "runs on a CUDA device only"
        } else {
            "needs a binary built with `--features cuda`"
        };
        assert!(
            err.contains("--flash-attention on") && err.contains(reason),
            "{err}"
        );
    }
    let o = bench(&["model", "--model", "overlay", "--flash-attention", "yes"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("use on or off"), "{err}");
    // Off is the default and accepted anywhere.
    let o = bench(&[
        "model",
        "--model",
        "overlay",
        "--device",
        "cpu",
        "--flash-attention",
        "off",
        "--iterations",
        "1",
        "--warmup",
        "0",
    ]);
    assert_success(&o);
}

#[test]
fn gpu_paths_that_cannot_run_here_are_start_up_errors() {
    // `--cuda-graphs on`, `--cudnn-conv on` and `--overlap on` on the CPU: refused before any
    // model loads.
    for flag in ["--cuda-graphs", "--cudnn-conv", "--overlap"] {
        let o = bench(&[
            "model",
            "--model",
            "overlay",
            "--device",
            "cpu",
            flag,
            "on",
            "--iterations",
            "1",
        ]);
        assert!(!o.status.success(), "{flag} on ran on the CPU");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{flag} on needs a CUDA device")) && err.contains("cpu"),
            "{err}"
        );
        let o = bench(&["model", "--model", "overlay", flag, "maybe"]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("use on or off"));
    }
    // Off is the default and runs anywhere.
    let o = bench(&[
        "model",
        "--model",
        "overlay",
        "--device",
        "cpu",
        "--cuda-graphs",
        "off",
        "--cudnn-conv",
        "off",
        "--overlap",
        "off",
        "--iterations",
        "1",
        "--warmup",
        "0",
    ]);
    assert_success(&o);
}

#[test]
fn http_needs_inputs_and_one_load_shape() {
    let o = bench(&["http", "--url", "http://127.0.0.1:9"]);
    assert!(!o.status.success(), "no --data or --person/--cloth");
    let o = bench(&[
        "http",
        "--data",
        &demo(),
        "--concurrency",
        "2",
        "--rate",
        "5",
    ]);
    assert!(!o.status.success(), "--concurrency and --rate conflict");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}
