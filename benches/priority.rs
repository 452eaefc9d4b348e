//! Interactive latency with and without a saturating batch-job load, at the same interactive
//! rate: `cargo bench --bench priority [-- RATE SECONDS]` (default 10 requests/s for 20 s).
//!
//! A server on 127.0.0.1 serves the overlay model. Phase 1 sends only `/tryon` requests at a
//! fixed rate (open loop). Phase 2 first queues more batch jobs than the phase can finish, then
//! sends the same `/tryon` load. It prints interactive p50/p95 of both phases, their ratio, and
//! the batch jobs finished per second meanwhile.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::multipart::{Form, Part};
use virtualfit::config::ServeArgs;
use virtualfit::server::Server;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
}

fn sample(rel: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/samples")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn form(person: &[u8], cloth: &[u8]) -> Form {
    let part = |b: &[u8]| {
        Part::bytes(b.to_vec())
            .file_name("image.jpg")
            .mime_str("image/jpeg")
            .expect("mime")
    };
    Form::new()
        .part("person_image", part(person))
        .part("cloth_image", part(cloth))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

/// Sends `/tryon` at `rate` per second for `seconds`; answers the sorted latencies in ms of
/// the 200s and the count of other answers.
async fn interactive(
    base: &str,
    rate: f64,
    seconds: f64,
    person: &[u8],
    cloth: &[u8],
) -> (Vec<f64>, Vec<f64>, usize) {
    let client = reqwest::Client::new();
    let n = (rate * seconds) as usize;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, f) = (client.clone(), format!("{base}/tryon"), form(person, cloth));
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = client
                .post(url)
                .multipart(f)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200);
            let queue_ms = ok
                .as_ref()
                .and_then(|r| r.headers().get("x-queue-time-ms"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            let ok = match ok {
                Some(r) => r.bytes().await.is_ok(),
                None => false,
            };
            (ok, sent.elapsed().as_secs_f64() * 1e3, queue_ms)
        }));
    }
    let (mut latencies, mut queued) = (Vec::new(), Vec::new());
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok((true, ms, queue_ms)) => {
                latencies.push(ms);
                queued.push(queue_ms);
            }
            _ => failed += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    queued.sort_by(f64::total_cmp);
    (latencies, queued, failed)
}

/// The sum of a metric's samples.
async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    virtualfit::metrics_text::samples(&text)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Counters read at the start of a phase.
struct Counters {
    batches: f64,
    items: f64,
    forward_s: f64,
}

impl Counters {
    async fn read(base: &str) -> Counters {
        Counters {
            batches: metric(base, "virtualfit_batch_size_count").await,
            items: metric(base, "virtualfit_batch_size_sum").await,
            forward_s: metric(base, "virtualfit_batch_duration_seconds_sum").await,
        }
    }

    /// Mean batch size and mean forward ms per batch since `self`.
    async fn since(&self, base: &str) -> (f64, f64) {
        let now = Counters::read(base).await;
        let batches = (now.batches - self.batches).max(1.0);
        (
            (now.items - self.items) / batches,
            (now.forward_s - self.forward_s) * 1e3 / batches,
        )
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rate: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let seconds: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20.0);
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = data.path().display().to_string();
    let flags = Flags::try_parse_from([
        "virtualfit",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--max-queued-jobs",
        "100000",
    ])
    .expect("flags");
    let mut server = Server::start(flags.serve).await.expect("server");
    server.ready().await.expect("warm-up");
    let base = format!("http://{}", server.addr);
    let pairs = String::from_utf8(sample("pairs.txt")).expect("utf-8");
    let (p, c) = pairs
        .lines()
        .find_map(|l| l.split_once(' '))
        .expect("a pair");
    let (person, cloth) = (
        sample(&format!("person/{p}")),
        sample(&format!("cloth/{c}")),
    );

    let counters = Counters::read(&base).await;
    let (alone, alone_queued, alone_failed) =
        interactive(&base, rate, seconds, &person, &cloth).await;
    let (size_a, forward_a) = counters.since(&base).await;

    // More batch jobs than the phase can finish, so the GPU (here, the CPU) never idles.
    let client = reqwest::Client::new();
    let jobs = (seconds * 80.0).max(200.0) as usize;
    for _ in 0..jobs {
        let r = client
            .post(format!("{base}/v1/jobs"))
            .multipart(form(&person, &cloth))
            .send()
            .await
            .expect("submitted");
        assert_eq!(r.status(), 202);
    }
    let before = metric(&base, "virtualfit_jobs_finished_total").await;
    let counters = Counters::read(&base).await;
    let started = Instant::now();
    let (loaded, loaded_queued, loaded_failed) =
        interactive(&base, rate, seconds, &person, &cloth).await;
    let batch_rate = (metric(&base, "virtualfit_jobs_finished_total").await - before)
        / started.elapsed().as_secs_f64();
    let (size_b, forward_b) = counters.since(&base).await;

    let (p50a, p95a) = (percentile(&alone, 0.5), percentile(&alone, 0.95));
    let (p50b, p95b) = (percentile(&loaded, 0.5), percentile(&loaded, 0.95));
    println!("interactive rate {rate}/s for {seconds} s, overlay model, {jobs} batch jobs queued");
    let (q95a, q95b) = (
        percentile(&alone_queued, 0.95),
        percentile(&loaded_queued, 0.95),
    );
    println!("| phase | interactive p50 ms | interactive p95 ms | queue-time p95 ms | refused or failed | batch jobs/s | mean batch | forward ms/batch |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!("| interactive only | {p50a:.1} | {p95a:.1} | {q95a:.1} | {alone_failed} | 0 | {size_a:.2} | {forward_a:.2} |");
    println!("| with batch load | {p50b:.1} | {p95b:.1} | {q95b:.1} | {loaded_failed} | {batch_rate:.1} | {size_b:.2} | {forward_b:.2} |");
    println!("p95 ratio (loaded / alone): {:.2}", p95b / p95a);
    server.drain(Duration::from_secs(5)).await.expect("drain");
}
