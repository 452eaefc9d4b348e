//! The load generator. Closed loop: N clients, each sending its next request when the last one
//! is answered. Open loop: requests are scheduled at a constant or Poisson rate whatever the
//! answers, and each latency counts from the scheduled send time, so time spent waiting behind
//! a slow server is part of the latency (no coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::load::{ErrorKind, Load, LoadConfig, Outcome, Phase, Sample, Stop};
use super::report::HttpReport;
use super::scrape::ServerSnapshot;
use super::{Arrival, BenchError, LoadArgs, Payload};

/// A finished `bench http` run: the report and the raw samples behind it (for plots).
#[derive(Debug, Clone)]
pub struct Run {
    pub report: HttpReport,
    pub samples: Vec<Sample>,
}

fn error_kind(e: &reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() {
        ErrorKind::Connect
    } else if e.is_body() || e.is_decode() {
        ErrorKind::Body
    } else {
        ErrorKind::Other
    }
}

struct Target {
    client: reqwest::Client,
    url: String,
    payloads: Vec<Payload>,
    fields: Vec<(String, String)>,
    done: AtomicU64,
    ok: AtomicU64,
}

impl Target {
    async fn send(&self, index: u64, start: Instant, scheduled: Duration) -> Sample {
        let payload = &self.payloads[(index % self.payloads.len() as u64) as usize];
        let sent = start.elapsed();
        let outcome = match self
            .client
            .post(&self.url)
            .multipart(payload.form(&self.fields))
            .send()
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(_) => Outcome::Status(status),
                    Err(e) => Outcome::Error(error_kind(&e)),
                }
            }
            Err(e) => Outcome::Error(error_kind(&e)),
        };
        let sample = Sample {
            scheduled,
            sent,
            done: start.elapsed(),
            outcome,
        };
        self.done.fetch_add(1, Ordering::Relaxed);
        if sample.is_ok() {
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
        sample
    }
}

/// Runs `bench http`: the warm-up phase (not counted), a /metrics scrape, the measured phase and
/// a second scrape.
pub async fn run(args: &LoadArgs, load: Load) -> Result<Run, BenchError> {
    let payloads = args.payloads()?;
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .build()?;
    let metrics_url = args.metrics_url();
    let target = Arc::new(Target {
        client: client.clone(),
        url: args.tryon_url(),
        payloads,
        fields: args.fields.clone(),
        done: AtomicU64::new(0),
        ok: AtomicU64::new(0),
    });
    let in_flight = args.max_in_flight as usize;
    let seed = args.seed.unwrap_or_else(rand::random);
    if !args.warmup.is_zero() {
        run_phase(
            &target,
            load,
            Stop::Duration(args.warmup),
            in_flight,
            seed ^ 0x5eed,
            "warm-up",
        )
        .await;
    }
    let before = ServerSnapshot::scrape(&client, &metrics_url).await;
    let stop = args.stop();
    let phase = run_phase(&target, load, stop, in_flight, seed, "measuring").await;
    let after = ServerSnapshot::scrape(&client, &metrics_url).await;
    let server = match (before, after) {
        (Ok(b), Ok(a)) => Some(a.since(&b)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("warning: no server-side figures ({metrics_url}: {e})");
            None
        }
    };
    let config = LoadConfig {
        url: args.url.clone(),
        load,
        warmup: args.warmup,
        stop,
        max_in_flight: args.max_in_flight,
        pairs: target.payloads.len(),
    };
    let report = HttpReport::build(&config, &phase, server);
    Ok(Run {
        report,
        samples: phase.samples,
    })
}

/// Sends one phase of load and waits for every answer.
async fn run_phase(
    target: &Arc<Target>,
    load: Load,
    stop: Stop,
    max_in_flight: usize,
    seed: u64,
    label: &'static str,
) -> Phase {
    target.done.store(0, Ordering::Relaxed);
    target.ok.store(0, Ordering::Relaxed);
    let start = Instant::now();
    let progress = progress_bar(stop, label);
    let ticker = {
        let target = target.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                let done = target.done.load(Ordering::Relaxed);
                let ok = target.ok.load(Ordering::Relaxed);
                match stop {
                    Stop::Duration(d) => {
                        progress.set_position(start.elapsed().min(d).as_millis() as u64)
                    }
                    Stop::Requests(_) => progress.set_position(done),
                }
                progress.set_message(format!("{done} answered, {ok} ok"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut samples = match load {
        Load::Closed { concurrency } => closed_loop(target, concurrency, stop, start).await,
        Load::Open { rate, arrival } => {
            open_loop(target, rate, arrival, stop, start, max_in_flight, seed).await
        }
    };
    ticker.abort();
    progress.finish_and_clear();
    let elapsed = samples
        .iter()
        .map(|s| s.done)
        .max()
        .unwrap_or_else(|| start.elapsed());
    samples.sort_by_key(|s| s.scheduled);
    Phase { samples, elapsed }
}

fn progress_bar(stop: Stop, label: &'static str) -> ProgressBar {
    let (len, template) = match stop {
        Stop::Duration(d) => (
            d.as_millis() as u64,
            "{prefix} [{elapsed_precise}] {wide_bar} {msg}",
        ),
        Stop::Requests(n) => (
            n,
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
        ),
    };
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_prefix(label);
    bar
}

async fn closed_loop(
    target: &Arc<Target>,
    concurrency: usize,
    stop: Stop,
    start: Instant,
) -> Vec<Sample> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let target = target.clone();
        let issued = issued.clone();
        clients.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let index = issued.fetch_add(1, Ordering::Relaxed);
                let now = start.elapsed();
                let more = match stop {
                    Stop::Duration(d) => now < d,
                    Stop::Requests(n) => index < n,
                };
                if !more {
                    break;
                }
                samples.push(target.send(index, start, now).await);
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(result) = clients.join_next().await {
        if let Ok(mut s) = result {
            samples.append(&mut s);
        }
    }
    samples
}

async fn open_loop(
    target: &Arc<Target>,
    rate: f64,
    arrival: Arrival,
    stop: Stop,
    start: Instant,
    max_in_flight: usize,
    seed: u64,
) -> Vec<Sample> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exp = Exp::new(rate).ok();
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut requests = JoinSet::new();
    let mut samples = Vec::new();
    let mut next = Duration::ZERO;
    let mut index = 0u64;
    loop {
        let more = match stop {
            Stop::Duration(d) => next < d,
            Stop::Requests(n) => index < n,
        };
        if !more {
            break;
        }
        tokio::time::sleep_until(start + next).await;
        // Waiting for a slot delays the send, not the scheduled time the latency counts from.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let target = target.clone();
        let scheduled = next;
        requests.spawn(async move {
            let sample = target.send(index, start, scheduled).await;
            drop(permit);
            sample
        });
        // Collect what has finished, so a long run does not hold every task.
        while let Some(Ok(s)) = requests.try_join_next() {
            samples.push(s);
        }
        index += 1;
        let gap = match (arrival, &exp) {
            (Arrival::Poisson, Some(exp)) => exp.sample(&mut rng),
            _ => 1.0 / rate,
        };
        next += Duration::from_secs_f64(gap);
    }
    while let Some(result) = requests.join_next().await {
        if let Ok(s) = result {
            samples.push(s);
        }
    }
    samples
}
