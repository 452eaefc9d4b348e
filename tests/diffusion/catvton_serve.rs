//! `serve --model catvton` with the tiny fixture weights: real requests on the CPU, step-level
//! batching through the worker, the request fields and their errors, jobs, and the metrics.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{client, image_part, metric, metrics_text, pair_form, start};
use reqwest::multipart::Form;

/// A client that waits as long as CPU sampling takes.
pub(crate) fn patient() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .expect("client")
}

pub(crate) async fn post_form(base: &str, path: &str, form: Form) -> reqwest::Response {
    patient()
        .post(format!("{base}{path}"))
        .multipart(form)
        .send()
        .await
        .expect("the server answers")
}

async fn post_tryon(base: &str, form: Form) -> reqwest::Response {
    post_form(base, "/tryon", form).await
}

/// Each test here runs a CatVTON server that keeps both cores busy, and several hold timing
/// bounds (a drain, a deadline): they take turns, as they did when each file was a binary of
/// its own and still two of them could meet.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn model_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/catvton/model").to_string()
}

pub(crate) async fn catvton_server(extra: &[&str]) -> (virtualfit::server::Server, String) {
    let dir = model_dir();
    let mut args = vec!["--model", "catvton", "--model-dir", dir.as_str()];
    if !extra.contains(&"--request-timeout-s") {
        args.extend_from_slice(&["--request-timeout-s", "300"]);
    }
    if !extra.contains(&"--max-steps") {
        args.extend_from_slice(&["--max-steps", "8"]);
    }
    args.extend_from_slice(extra);
    start(&args).await
}

/// A form for sample pair `index` at 512×384 with `steps` steps and `seed`.
fn form(index: usize, steps: u32, seed: u64) -> Form {
    pair_form(index)
        .text("resolution", "512x384")
        .text("steps", steps.to_string())
        .text("seed", seed.to_string())
}

async fn png(base: &str, form: Form) -> image::RgbImage {
    let r = post_form(base, "/tryon?format=png", form).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let bytes = r.bytes().await.expect("body");
    image::load_from_memory(&bytes).expect("a PNG").to_rgb8()
}

/// How many 8-bit values of two same-sized images differ by more than one level (batched
/// matrix products may round differently in the last bit), and the largest difference.
fn differences(a: &image::RgbImage, b: &image::RgbImage) -> (usize, u8) {
    assert_eq!(a.dimensions(), b.dimensions(), "sizes");
    let diffs = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y));
    diffs.fold((0, 0), |(n, m), d| (n + usize::from(d > 1), m.max(d)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catvton_serves_real_requests_and_batching_does_not_change_them() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_server, base) = catvton_server(&["--max-batch-size", "8"]).await;

    let r = post_form(&base, "/tryon?format=png", form(0, 2, 42)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-model"], "catvton");
    assert_eq!(r.headers()["x-seed"], "42");
    let alone = image::load_from_memory(&r.bytes().await.expect("body"))
        .expect("a PNG")
        .to_rgb8();
    assert_eq!(alone.dimensions(), (384, 512), "the requested size");

    // The same request among others started before and after it, at other steps and with
    // other settings (one without guidance), gives the same bytes.
    let early = tokio::spawn({
        let base = base.clone();
        async move { png(&base, form(1, 4, 7).text("guidance", "1.0")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let same = tokio::spawn({
        let base = base.clone();
        async move { png(&base, form(0, 2, 42)).await }
    });
    let late = tokio::spawn({
        let base = base.clone();
        async move { png(&base, form(2, 1, 8).text("category", "overall")).await }
    });
    let batched = same.await.expect("task");
    let early = early.await.expect("task");
    let late = late.await.expect("task");
    let (off, largest) = differences(&batched, &alone);
    println!("batched vs alone: {off} values off by more than one level, largest {largest}");
    assert!(
        off * 1000 <= alone.as_raw().len(),
        "batching changed the image ({off} values)"
    );
    // Other requests give other images: the comparison above can fail.
    for other in [&early, &late] {
        let (off, _) = differences(other, &alone);
        assert!(
            off * 10 > alone.as_raw().len(),
            "another request gave the same image"
        );
    }

    let text = metrics_text(&base).await;
    // 2 + 4 + 2 + 1 steps, each counted once however it was batched.
    assert_eq!(metric(&text, "virtualfit_unet_steps_total", ""), 9.0);
    let calls = metric(&text, "virtualfit_unet_batch_rows_count", "");
    let rows = metric(&text, "virtualfit_unet_batch_rows_sum", "");
    // Rows: guidance pairs count two (2·2 + 4·1 + 2·2 + 1·2 = 14).
    assert_eq!(rows, 14.0);
    assert!(calls < 9.0, "some steps shared a UNet call ({calls} calls)");
    assert_eq!(metric(&text, "virtualfit_queue_length", ""), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_requests_in_every_mode_share_the_worker_with_others_unchanged() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_server, base) = catvton_server(&["--max-batch-size", "8"]).await;
    // `fast`: DPM-Solver++ with a full pass every 3 steps (6 steps here, as sent).
    let cached = || form(0, 6, 42).text("mode", "fast");
    let alone = png(&base, cached()).await;
    let uncached_alone = png(&base, form(0, 6, 42)).await;
    // Caching changes the image: the comparisons below can fail.
    let (off, _) = differences(&alone, &uncached_alone);
    assert!(off * 10 > alone.as_raw().len(), "caching changed nothing");

    // Started beside an uncached UniPC request and a `balanced` one caching every 2 steps on
    // another branch, at other steps: full and shallow passes, and each request's own solver,
    // run as separate calls of one running set.
    let early = tokio::spawn({
        let base = base.clone();
        async move { png(&base, form(1, 5, 7).text("scheduler", "unipc")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = tokio::spawn({
        let base = base.clone();
        async move {
            let f = form(2, 4, 8)
                .text("mode", "balanced")
                .text("cache_interval", "2")
                .text("cache_branch", "4");
            png(&base, f).await
        }
    });
    let same = tokio::spawn({
        let base = base.clone();
        async move { png(&base, cached()).await }
    });
    let batched = same.await.expect("task");
    early.await.expect("task");
    other.await.expect("task");
    let (off, largest) = differences(&batched, &alone);
    println!(
        "cached, batched vs alone: {off} values off by more than one level, largest {largest}"
    );
    assert!(
        off * 1000 <= alone.as_raw().len(),
        "batching changed the cached image ({off} values)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fields_are_refused_and_the_server_keeps_serving() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_server, base) = catvton_server(&[]).await;
    for (name, value) in [
        ("steps", "0"),
        ("steps", "9"),
        ("steps", "two"),
        ("guidance", "NaN"),
        ("guidance", "1e9"),
        ("seed", "-1"),
        ("category", "hat"),
        ("resolution", "2048x1536"),
        ("scheduler", "unipc3"),
        ("mode", "turbo"),
        ("mode", "Fast"),
        ("cache_interval", "0"),
        ("cache_interval", "11"),
        ("cache_branch", "12"),
        ("cache_branch", "x"),
    ] {
        let r = post_tryon(&base, pair_form(0).text(name, value)).await;
        assert_eq!(r.status(), 400, "{name}={value}");
        let body: serde_json::Value = r.json().await.expect("JSON error");
        assert_eq!(body["error"], "bad_request", "{name}={value}: {body}");
    }
    // A person mask of another size than the photo.
    let small = {
        let mut out = Vec::new();
        image::GrayImage::new(10, 10)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    };
    let r = post_tryon(
        &base,
        form(0, 1, 1).part("person_mask", image_part(small, "image/png")),
    )
    .await;
    assert_eq!(r.status(), 422);
    // A person mask of the right size is used: an all-black mask repaints nothing.
    let (w, h) = {
        let p = common::pairs();
        let bytes = common::fixture(&format!("person/{}", p[0].0));
        image::load_from_memory(&bytes)
            .expect("person")
            .to_rgb8()
            .dimensions()
    };
    let black = {
        let mut out = Vec::new();
        image::GrayImage::new(w, h)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    };
    let r = post_tryon(
        &base,
        form(0, 1, 1).part("person_mask", image_part(black, "image/png")),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post_tryon(&base, form(0, 1, 1)).await;
    assert_eq!(r.status(), 200, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catvton_job_runs_with_its_options_and_seed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_server, base) = catvton_server(&[]).await;
    let r = post_form(&base, "/v1/jobs", form(0, 2, 5).text("format", "png")).await;
    assert_eq!(r.status(), 202);
    let job: serde_json::Value = r.json().await.expect("job");
    let id = job["id"].as_str().expect("id").to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status: serde_json::Value = client()
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("JSON");
        match status["status"].as_str() {
            Some("succeeded") => break,
            Some("queued" | "running") => {}
            other => panic!("job ended {other:?}: {status}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "job did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = client()
        .get(format!("{base}/v1/jobs/{id}/result"))
        .send()
        .await
        .expect("result")
        .bytes()
        .await
        .expect("bytes");
    let from_job = image::load_from_memory(&result).expect("a PNG").to_rgb8();
    let direct = png(&base, form(0, 2, 5)).await;
    let (off, largest) = differences(&from_job, &direct);
    assert!(
        largest <= 1,
        "the job and /tryon differ ({off} values, up to {largest})"
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_virtualfit");

fn run(args: &[&str]) -> std::process::Output {
    let o = std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs");
    assert!(
        o.status.success(),
        "virtualfit {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

#[test]
fn the_cli_tries_on_benchmarks_and_simulates_catvton() {
    let _one = ONE_AT_A_TIME.blocking_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let pairs = common::pairs();
    let samples = common::demo_dir();
    let person = samples.join("person").join(&pairs[0].0);
    let cloth = samples.join("cloth").join(&pairs[0].1);
    let out = dir.path().join("out.png");
    let model = model_dir();
    let s = |p: &std::path::Path| p.display().to_string();
    let o = run(&[
        "tryon",
        "--model",
        "catvton",
        "--model-dir",
        &model,
        "--person",
        &s(&person),
        "--cloth",
        &s(&cloth),
        "--output",
        &s(&out),
        "--resolution",
        "512x384",
        "--steps",
        "1",
        "--seed",
        "3",
        "--category",
        "overall",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("seed 3"));
    let img = image::open(&out).expect("the answer").to_rgb8();
    assert_eq!(img.dimensions(), (384, 512));

    // `bench model` reports seconds per image and steps per second; `simulate` takes it.
    let o = run(&[
        "bench",
        "model",
        "--model",
        "catvton",
        "--model-dir",
        &model,
        "--resolution",
        "512x384",
        "--steps",
        "2",
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(report["model"], "catvton");
    assert_eq!(report["steps"], 2);
    let per_image = report["median_batch_s"].as_f64().expect("seconds");
    let steps_per_s = report["unet_steps_per_s"].as_f64().expect("steps/s");
    assert!((steps_per_s * per_image - 2.0).abs() < 1e-6, "{report}");
    let profile = dir.path().join("catvton.json");
    std::fs::write(&profile, &o.stdout).expect("profile");
    let trace = dir.path().join("trace.csv");
    std::fs::write(&trace, "seconds,requests_per_second\n0,0.2\n").expect("trace");
    let so = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keda-gpu-scaler.yaml");
    let o = run(&[
        "simulate",
        "--scaledobject",
        &s(&so),
        "--trace",
        &s(&trace),
        "--profile",
        &s(&profile),
        "--out",
        &s(&dir.path().join("sim")),
        "--duration-s",
        "120",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("catvton"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_http_sends_the_diffusion_fields() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_server, base) = catvton_server(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let args: Vec<String> = [
        "bench",
        "http",
        "--url",
        &base,
        "--data",
        &common::demo_dir().display().to_string(),
        "--concurrency",
        "2",
        "--requests",
        "2",
        "--timeout",
        "300s",
        "--field",
        "steps=1",
        "--field",
        "resolution=512x384",
        "--json",
        &json.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .output()
            .expect("runs")
    })
    .await
    .expect("task");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("JSON");
    assert_eq!(report["status_counts"]["200"], 2, "{report}");
    let text = metrics_text(&base).await;
    assert_eq!(
        metric(&text, "virtualfit_unet_steps_total", ""),
        2.0,
        "one step each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_leaves_stops_sampling() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (_server, base) = catvton_server(&["--max-steps", "40"]).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(6))
        .build()
        .expect("client");
    let sent = impatient
        .post(format!("{base}/tryon"))
        .multipart(form(0, 40, 1))
        .send()
        .await;
    assert!(sent.is_err(), "40 steps take longer than the client waits");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let cancelled = loop {
        let text = metrics_text(&base).await;
        if metric(
            &text,
            "virtualfit_rejected_requests_total",
            "reason=\"cancelled\"",
        ) >= 1.0
        {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "never cancelled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let steps = metric(&cancelled, "virtualfit_unet_steps_total", "");
    assert!(steps < 40.0, "sampling stopped early ({steps} steps)");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = metric(
        &metrics_text(&base).await,
        "virtualfit_unet_steps_total",
        "",
    );
    assert_eq!(later, steps, "no step after the cancellation");
    assert_eq!(
        metric(&metrics_text(&base).await, "virtualfit_active_requests", ""),
        0.0
    );
}

/// Polls /metrics until `name` (with `label`) reaches `at_least`, for up to two minutes.
async fn wait_for_metric(base: &str, name: &str, label: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while metric(&metrics_text(base).await, name, label) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{{{label}}} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_past_its_deadline_gets_504_while_a_long_running_one_finishes() {
    let _one = ONE_AT_A_TIME.lock().await;
    // One request with guidance fills the two rows; the second waits in the queue past the
    // 0.5 s request timeout, which bounds the wait for the device, not the sampling: the first
    // request's six steps take longer than the handler's stall bound (2 × 0.5 s + 10 s on this
    // CPU), and it is answered because every step is progress.
    let (_server, base) =
        catvton_server(&["--max-batch-size", "2", "--request-timeout-s", "0.5"]).await;
    let started = std::time::Instant::now();
    let running = {
        let base = base.clone();
        tokio::spawn(async move { post_tryon(&base, form(0, 6, 1)).await.status() })
    };
    wait_for_metric(&base, "virtualfit_unet_steps_total", "", 1.0).await;
    let queued = post_tryon(&base, form(1, 2, 2)).await;
    assert_eq!(queued.status(), 504);
    let body: serde_json::Value = queued.json().await.expect("json");
    assert_eq!(body["error"], "deadline_exceeded", "{body}");
    assert_eq!(running.await.expect("task"), 200);
    println!(
        "the six-step request was answered after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let text = metrics_text(&base).await;
    // The expired request never took a UNet step: six steps, of the first request only.
    assert_eq!(metric(&text, "virtualfit_unet_steps_total", ""), 6.0);
    assert_eq!(metric(&text, "virtualfit_active_requests", ""), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_sampling_request_finish_and_refuses_new_ones() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = model_dir();
    let mut child = common::child::ChildServer::start(&[
        "--model",
        "catvton",
        "--model-dir",
        dir.as_str(),
        "--max-steps",
        "8",
        "--request-timeout-s",
        "300",
        "--drain-timeout-s",
        "300",
    ]);
    child.wait_ready().await;
    let base = child.base.clone();
    let sampling = {
        let base = base.clone();
        tokio::spawn(async move { post_tryon(&base, form(0, 3, 1)).await.status() })
    };
    wait_for_metric(&base, "virtualfit_unet_steps_total", "", 1.0).await;
    child.sigterm();
    // A request sent before the signal is handled is still admitted, and may be the last one
    // answered before the process exits: wait until the server reports the drain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("still up while draining")
        .status()
        == 200
    {
        assert!(tokio::time::Instant::now() < deadline, "never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New work is refused at once while the admitted request keeps sampling.
    loop {
        let r = client()
            .post(format!("{base}/tryon"))
            .multipart(form(1, 1, 2))
            .send()
            .await
            .expect("still up while draining");
        if r.status() == 503 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sampling.await.expect("task"),
        200,
        "the admitted request is answered"
    );
    let status = child
        .wait_exit(Duration::from_secs(60))
        .expect("the process exits after the drain");
    assert!(status.success(), "exit status {status:?}");
}
