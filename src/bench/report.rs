//! The `bench http` report: its JSON is a stable schema (fields are only ever added), built
//! from a phase's samples and, when `/metrics` could be read, the server-side figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::load::{Load, LoadConfig, Outcome, Phase, Sample};
use super::Arrival;

/// Bumped only when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// Latency summary in milliseconds (nearest-rank percentiles).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Summarises values (any order).
    pub fn of(values: &[f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Percentiles {
            count: v.len() as u64,
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: rank(0.50),
            p90: rank(0.90),
            p95: rank(0.95),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// Answers completed in one slice of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Slice start, seconds from the start of the measured phase.
    pub start_s: f64,
    /// Slice length, seconds.
    pub width_s: f64,
    /// Answers (any status) and errors completed in the slice.
    pub answers: u64,
    /// 2xx answers completed in the slice.
    pub ok: u64,
    /// `ok / width_s`.
    pub ok_rps: f64,
    /// Median latency of the slice's 2xx answers, ms (0 when none).
    pub p50_ms: f64,
}

/// Server-side figures: the difference of two /metrics scrapes around the measured phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Batches the model ran.
    pub batches: u64,
    /// Requests per batch, on average.
    pub mean_batch_size: Option<f64>,
    /// Mean time from admission to the start of the request's batch, ms.
    pub mean_queue_ms: Option<f64>,
    /// Mean model forward time per batch, ms.
    pub mean_batch_ms: Option<f64>,
    /// Seconds the model spent running batches.
    pub busy_s: f64,
    /// `busy_s` over the measured wall time: how close the run came to keeping the model busy
    /// (at saturation, the serving efficiency measured inside the server).
    pub busy_ratio: Option<f64>,
    /// Requests not run, by reason (`queue_full`, `deadline`, ...).
    pub rejections: BTreeMap<String, u64>,
    /// /tryon answers counted by the server, by HTTP status.
    pub answers_by_code: BTreeMap<String, u64>,
}

/// The `bench http` report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpReport {
    pub schema_version: u32,
    /// The server's base URL.
    pub url: String,
    /// `closed` (N clients) or `open` (arrival rate).
    pub mode: String,
    /// Closed loop: the number of clients.
    pub concurrency: Option<u64>,
    /// Open loop: the scheduled arrival rate, requests per second.
    pub rate_rps: Option<f64>,
    /// Open loop: `constant` or `poisson`.
    pub arrival: Option<Arrival>,
    /// Open loop: the most requests in flight at once.
    pub max_in_flight: Option<u64>,
    /// The unmeasured warm-up before the run, seconds.
    pub warmup_s: f64,
    /// Person/garment pairs cycled through.
    pub pairs: u64,
    /// Requests sent in the measured phase; equals the sum of `status_counts` and `errors`.
    pub requests_sent: u64,
    /// Answers by HTTP status (`"200"`, `"429"`, ...).
    pub status_counts: BTreeMap<String, u64>,
    /// Requests with no answer, by kind (`timeout`, `connect`, `body`, `other`).
    pub errors: BTreeMap<String, u64>,
    /// Measured wall time: from the first send to the last answer, seconds.
    pub duration_s: f64,
    /// 2xx answers per second.
    pub throughput_rps: f64,
    /// Answers of any status (and errors) per second.
    pub answer_rate_rps: f64,
    /// Latency of 2xx answers, ms, from the scheduled send time.
    pub latency_ms: Percentiles,
    /// Latency of every request (any status or error), ms.
    pub latency_all_ms: Percentiles,
    /// How late requests were sent after their scheduled time, ms (open loop: waiting for an
    /// in-flight slot or for the scheduler; closed loop: 0).
    pub send_delay_ms: Percentiles,
    /// From /metrics, scraped before and after; absent when it could not be read.
    pub server: Option<ServerStats>,
    /// Completed answers over time.
    pub timeline: Vec<TimelinePoint>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl HttpReport {
    pub fn build(config: &LoadConfig, phase: &Phase, server: Option<ServerStats>) -> HttpReport {
        let samples = &phase.samples;
        let server = server.map(|mut s| {
            let secs = phase.elapsed.as_secs_f64();
            s.busy_ratio = (secs > 0.0).then(|| s.busy_s / secs);
            s
        });
        let mut status_counts = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for s in samples {
            match s.outcome {
                Outcome::Status(code) => {
                    *status_counts.entry(code.to_string()).or_insert(0) += 1;
                }
                Outcome::Error(kind) => *errors.entry(kind.label().to_string()).or_insert(0) += 1,
            }
        }
        let ok: Vec<f64> = samples
            .iter()
            .filter(|s| s.is_ok())
            .map(|s| ms(s.latency()))
            .collect();
        let all: Vec<f64> = samples.iter().map(|s| ms(s.latency())).collect();
        let delays: Vec<f64> = samples
            .iter()
            .map(|s| ms(s.sent.saturating_sub(s.scheduled)))
            .collect();
        let secs = phase.elapsed.as_secs_f64().max(1e-9);
        let (mode, concurrency, rate_rps, arrival, max_in_flight) = match config.load {
            Load::Closed { concurrency } => ("closed", Some(concurrency as u64), None, None, None),
            Load::Open { rate, arrival } => (
                "open",
                None,
                Some(rate),
                Some(arrival),
                Some(config.max_in_flight),
            ),
        };
        HttpReport {
            schema_version: SCHEMA_VERSION,
            url: config.url.clone(),
            mode: mode.to_string(),
            concurrency,
            rate_rps,
            arrival,
            max_in_flight,
            warmup_s: config.warmup.as_secs_f64(),
            pairs: config.pairs as u64,
            requests_sent: samples.len() as u64,
            status_counts,
            errors,
            duration_s: phase.elapsed.as_secs_f64(),
            throughput_rps: ok.len() as f64 / secs,
            answer_rate_rps: samples.len() as f64 / secs,
            latency_ms: Percentiles::of(&ok),
            latency_all_ms: Percentiles::of(&all),
            send_delay_ms: Percentiles::of(&delays),
            server,
            timeline: timeline(samples, phase.elapsed),
        }
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let load = match (self.concurrency, self.rate_rps) {
            (Some(c), _) => format!("closed loop, {c} clients"),
            (_, Some(r)) => format!(
                "open loop, {r} req/s ({})",
                match self.arrival {
                    Some(Arrival::Constant) => "constant",
                    _ => "poisson",
                }
            ),
            _ => self.mode.clone(),
        };
        let _ = writeln!(out, "{} — {load}", self.url);
        let codes: Vec<String> = self
            .status_counts
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .chain(self.errors.iter().map(|(k, v)| format!("{k} errors: {v}")))
            .collect();
        let _ = writeln!(
            out,
            "requests   {} in {:.2} s  [{}]",
            self.requests_sent,
            self.duration_s,
            codes.join(", ")
        );
        let _ = writeln!(
            out,
            "throughput {:.2} ok/s ({:.2} answers/s)",
            self.throughput_rps, self.answer_rate_rps
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "latency ms p50 {:.1}  p90 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}  (mean {:.1}, {} ok)",
            l.p50, l.p90, l.p95, l.p99, l.max, l.mean, l.count
        );
        match &self.server {
            Some(s) => {
                let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
                let rejections: Vec<String> = s
                    .rejections
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                let _ = write!(
                    out,
                    "server     {} batches, mean batch size {}, mean queue {} ms, mean forward {} ms, model busy {}, rejections [{}]",
                    s.batches,
                    f(s.mean_batch_size),
                    f(s.mean_queue_ms),
                    f(s.mean_batch_ms),
                    f(s.busy_ratio),
                    rejections.join(", ")
                );
            }
            None => {
                let _ = write!(out, "server     (no /metrics figures)");
            }
        }
        out
    }
}

/// Answers per time slice: 1 s slices, or finer for runs under 10 s.
fn timeline(samples: &[Sample], elapsed: Duration) -> Vec<TimelinePoint> {
    let total = elapsed.as_secs_f64();
    if samples.is_empty() || total <= 0.0 {
        return Vec::new();
    }
    let width = if total >= 10.0 {
        1.0
    } else {
        (total / 10.0).max(0.01)
    };
    // A short remainder joins the last slice, so no slice is a sliver with a noisy rate.
    let slices = ((total / width + 0.5).floor() as usize).max(1);
    let mut answers = vec![0u64; slices];
    let mut ok_latency: Vec<Vec<f64>> = vec![Vec::new(); slices];
    for s in samples {
        let i = ((s.done.as_secs_f64() / width) as usize).min(slices - 1);
        answers[i] += 1;
        if s.is_ok() {
            ok_latency[i].push(ms(s.latency()));
        }
    }
    (0..slices)
        .map(|i| {
            let start_s = i as f64 * width;
            let width_s = if i + 1 == slices {
                (total - start_s).max(1e-9)
            } else {
                width
            };
            TimelinePoint {
                start_s,
                width_s,
                answers: answers[i],
                ok: ok_latency[i].len() as u64,
                ok_rps: ok_latency[i].len() as f64 / width_s,
                p50_ms: Percentiles::of(&ok_latency[i]).p50,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!(
            (p.p50, p.p90, p.p95, p.p99, p.max),
            (50.0, 90.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(p.count, 100);
        assert!((p.mean - 50.5).abs() < 1e-9);
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
        let one = Percentiles::of(&[7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
    }

    fn sample(done_ms: u64, status: u16) -> Sample {
        Sample {
            scheduled: Duration::ZERO,
            sent: Duration::ZERO,
            done: Duration::from_millis(done_ms),
            outcome: Outcome::Status(status),
        }
    }

    #[test]
    fn timeline_slices_cover_the_run_and_count_every_answer() {
        // 10.3 s: ten slices, the last one 1.3 s long.
        let samples: Vec<Sample> = (0..103)
            .map(|i| sample(i * 100, if i % 10 == 0 { 429 } else { 200 }))
            .collect();
        let t = timeline(&samples, Duration::from_millis(10_300));
        assert_eq!(t.len(), 10);
        let last = &t[9];
        assert!((last.start_s - 9.0).abs() < 1e-9 && (last.width_s - 1.3).abs() < 1e-9);
        assert_eq!(t.iter().map(|p| p.answers).sum::<u64>(), 103);
        assert_eq!(t.iter().map(|p| p.ok).sum::<u64>(), 92);
        assert_eq!((t[0].answers, t[0].ok), (10, 9));
        assert!((t[0].ok_rps - 9.0).abs() < 1e-9);
        assert_eq!(last.answers, 13);
        assert!((last.ok_rps - 11.0 / 1.3).abs() < 1e-9);
    }
}
