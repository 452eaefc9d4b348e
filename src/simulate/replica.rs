//! One replica as the server behaves (`src/batcher/mod.rs`): a bounded queue that answers 429
//! when full, one worker that runs a batch of up to `max_batch_size` as soon as it is full or
//! its oldest request has waited `max_batch_delay`, the next batch accumulating while one
//! runs, and requests past their deadline answered 504 when their batch is taken.
//!
//! Time is in seconds. A replica is advanced explicitly to a time before anything is admitted
//! or scraped, so that the state at that time is exact.

use std::collections::{BTreeMap, VecDeque};

use crate::batcher::Priority;
use crate::metrics::LATENCY_BUCKETS;

/// The server settings and the timing of one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaConfig {
    /// Batch time t(n) = a·n + b: seconds per image.
    pub a_s: f64,
    /// Batch time t(n) = a·n + b: fixed seconds per batch.
    pub b_s: f64,
    pub max_batch_size: usize,
    pub max_batch_delay_s: f64,
    pub queue_capacity: usize,
    pub request_timeout_s: f64,
    /// Decoding and preparing before admission (CPU), part of the request time.
    pub pre_s: f64,
    /// Encoding after the batch (CPU), part of the request time.
    pub post_s: f64,
    /// From pod creation to ready (node, image pull, model load, warm-up).
    pub startup_s: f64,
    /// `--drain-timeout-s`.
    pub drain_timeout_s: f64,
    /// GPU memory the replica holds, and the GPU's total, in MiB.
    pub fb_used_mib: f64,
    pub fb_total_mib: f64,
}

impl ReplicaConfig {
    pub fn batch_time(&self, n: usize) -> f64 {
        self.a_s * n as f64 + self.b_s
    }

    /// Requests per second one replica serves with full batches.
    pub fn capacity_rps(&self) -> f64 {
        self.max_batch_size as f64 / self.batch_time(self.max_batch_size)
    }
}

/// What became of a request, for the caller's accounting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// 200 with the whole request time.
    Served(f64),
    /// 429 queue full.
    QueueFull,
    /// 504 deadline exceeded.
    Deadline,
    /// Lost when the drain timeout ended the process.
    DrainLost,
}

#[derive(Debug, Clone)]
struct Batch {
    start: f64,
    end: f64,
    admitted: Vec<(f64, Priority)>,
}

/// The request-duration histogram of one status code: cumulative bucket counts (the last is
/// +Inf), as the Prometheus client exports them.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub buckets: Vec<u64>,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: vec![0; LATENCY_BUCKETS.len() + 1],
        }
    }

    fn observe(&mut self, seconds: f64) {
        let first = LATENCY_BUCKETS.partition_point(|&le| le < seconds);
        for b in &mut self.buckets[first..] {
            *b += 1;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Replica {
    pub id: usize,
    pub created_at: f64,
    pub ready_at: f64,
    pub draining_since: Option<f64>,
    pub gone_at: Option<f64>,
    cfg: ReplicaConfig,
    /// Admission times and priorities, in admission order (the simulated worker takes them in
    /// that order; the server fills a batch from interactive work first, which only differs
    /// when both priorities wait on one replica).
    queue: VecDeque<(f64, Priority)>,
    running: Option<Batch>,
    free_at: f64,
    busy_s: f64,
    /// `busy_s` shared out by the priorities of each batch's items.
    busy_share_s: [f64; 2],
    /// The server's estimate of the seconds per item: the last batch's time over its size.
    seconds_per_item: f64,
    /// Request-duration histograms of the `/tryon` requests (interactive items) by status code.
    pub histograms: BTreeMap<u16, Histogram>,
}

impl Replica {
    pub fn new(id: usize, created_at: f64, startup_s: f64, cfg: ReplicaConfig) -> Self {
        Replica {
            id,
            created_at,
            ready_at: created_at + startup_s,
            draining_since: None,
            gone_at: None,
            free_at: created_at + startup_s,
            queue: VecDeque::new(),
            running: None,
            busy_s: 0.0,
            busy_share_s: [0.0; 2],
            seconds_per_item: cfg_per_item(&cfg),
            cfg,
            histograms: BTreeMap::new(),
        }
    }

    /// Ready and not draining: an endpoint of the Service.
    pub fn serving(&self, t: f64) -> bool {
        self.ready_at <= t && self.draining_since.is_none() && self.gone_at.is_none()
    }

    /// Ready, not draining (counted as a ready pod by the HPA).
    pub fn is_ready(&self, t: f64) -> bool {
        self.serving(t)
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Queued items of one priority.
    pub fn queued_of(&self, p: Priority) -> usize {
        self.queue.iter().filter(|(_, q)| *q == p).count()
    }

    /// Admitted and not answered: queued plus running.
    pub fn active(&self) -> usize {
        self.queue.len() + self.running.as_ref().map_or(0, |b| b.admitted.len())
    }

    /// Admitted and not answered items of one priority.
    pub fn active_of(&self, p: Priority) -> usize {
        self.queued_of(p)
            + self
                .running
                .as_ref()
                .map_or(0, |b| b.admitted.iter().filter(|(_, q)| *q == p).count())
    }

    /// The server's `virtualfit_queued_seconds{priority}`: queued items times the estimate.
    pub fn queued_seconds_of(&self, p: Priority) -> f64 {
        self.queued_of(p) as f64 * self.seconds_per_item
    }

    /// Busy seconds up to `t` attributed to priority `p` (call after `advance_to(t)`).
    pub fn busy_share_until(&self, t: f64, p: Priority) -> f64 {
        self.busy_share_s[p as usize]
            + self.running.as_ref().map_or(0.0, |b| {
                let share = b.admitted.iter().filter(|(_, q)| *q == p).count() as f64
                    / b.admitted.len().max(1) as f64;
                (t.min(b.end) - b.start).max(0.0) * share
            })
    }

    /// GPU-busy seconds up to `t` (call after `advance_to(t)`).
    pub fn busy_until(&self, t: f64) -> f64 {
        self.busy_s
            + self
                .running
                .as_ref()
                .map_or(0.0, |b| (t.min(b.end) - b.start).max(0.0))
    }

    fn observe(&mut self, code: u16, seconds: f64) {
        self.histograms
            .entry(code)
            .or_insert_with(Histogram::new)
            .observe(seconds);
    }

    /// Runs the batcher up to time `t`, reporting each answered request to `out`.
    pub fn advance_to(&mut self, t: f64, out: &mut impl FnMut(f64, Outcome)) {
        loop {
            if let Some(batch) = self.running.as_ref() {
                if batch.end > t {
                    return;
                }
                let Batch {
                    start,
                    end,
                    admitted,
                } = self.running.take().expect("checked above");
                self.busy_s += end - start;
                self.share_busy(end - start, &admitted);
                self.seconds_per_item = (end - start) / admitted.len().max(1) as f64;
                self.free_at = end;
                for (a, priority) in admitted {
                    let seconds = end - a + self.cfg.pre_s + self.cfg.post_s;
                    if priority == Priority::Interactive {
                        self.observe(200, seconds);
                    }
                    out(end + self.cfg.post_s, Outcome::Served(seconds));
                }
                continue;
            }
            let Some(start) = self.next_start() else {
                return;
            };
            if start > t {
                return;
            }
            let take = self.queue.len().min(self.cfg.max_batch_size.max(1));
            let taken: Vec<(f64, Priority)> = self.queue.drain(..take).collect();
            let mut admitted = Vec::with_capacity(take);
            for (a, priority) in taken {
                if start - a > self.cfg.request_timeout_s {
                    if priority == Priority::Interactive {
                        self.observe(504, start - a + self.cfg.pre_s);
                    }
                    out(start, Outcome::Deadline);
                } else {
                    admitted.push((a, priority));
                }
            }
            if admitted.is_empty() {
                self.free_at = start;
                continue;
            }
            let end = start + self.cfg.batch_time(admitted.len());
            self.running = Some(Batch {
                start,
                end,
                admitted,
            });
        }
    }

    /// When the next batch starts, if none runs and requests are queued: once the worker is
    /// free and the batch is full or its oldest request has waited `max_batch_delay` (at once
    /// when draining).
    fn next_start(&self) -> Option<f64> {
        if self.running.is_some() {
            return None;
        }
        let &(oldest, _) = self.queue.front()?;
        let cap = self.cfg.max_batch_size.max(1);
        let full_at = self.queue.get(cap - 1).map_or(f64::INFINITY, |&(a, _)| a);
        let mut due = (oldest + self.cfg.max_batch_delay_s).min(full_at);
        if let Some(d) = self.draining_since {
            due = due.min(d);
        }
        Some(self.free_at.max(due))
    }

    /// The first time after `t` when the replica changes by itself: it becomes ready, or a
    /// batch starts or ends.
    pub fn next_event(&self, t: f64) -> Option<f64> {
        [
            Some(self.ready_at),
            self.running.as_ref().map(|b| b.end),
            self.next_start(),
        ]
        .into_iter()
        .flatten()
        .filter(|&e| e > t)
        .reduce(f64::min)
    }

    /// A `/tryon` request arriving at `t` (after `advance_to(t)`): admitted, or 429 at once.
    pub fn admit(&mut self, t: f64, out: &mut impl FnMut(f64, Outcome)) {
        self.admit_as(t, Priority::Interactive, out);
    }

    /// An item of priority `p` arriving at `t` (after `advance_to(t)`): admitted, or refused
    /// at once (429 for a request; a job's runner only offers what the queue has room for).
    pub fn admit_as(&mut self, t: f64, p: Priority, out: &mut impl FnMut(f64, Outcome)) {
        if self.queue.len() >= self.cfg.queue_capacity {
            if p == Priority::Interactive {
                self.observe(429, self.cfg.pre_s);
            }
            out(t, Outcome::QueueFull);
            return;
        }
        self.queue.push_back((t, p));
    }

    fn share_busy(&mut self, seconds: f64, items: &[(f64, Priority)]) {
        let n = items.len().max(1) as f64;
        for (_, p) in items {
            self.busy_share_s[*p as usize] += seconds / n;
        }
    }

    /// SIGTERM at `t`: no new requests; what is admitted still runs. A pod that was not
    /// ready yet goes at once.
    pub fn terminate(&mut self, t: f64) {
        if self.ready_at > t {
            self.gone_at = Some(t);
        }
        self.draining_since = Some(t);
    }

    /// Ends a draining replica once its queue is empty, or at the drain timeout, losing what
    /// it still holds. Call after `advance_to(t)`.
    pub fn settle_drain(&mut self, t: f64, out: &mut impl FnMut(f64, Outcome)) {
        let Some(since) = self.draining_since else {
            return;
        };
        if self.gone_at.is_some() {
            return;
        }
        if self.active() == 0 {
            self.gone_at = Some(self.free_at.max(since).min(t));
        } else if t >= since + self.cfg.drain_timeout_s {
            for _ in 0..self.active() {
                out(t, Outcome::DrainLost);
            }
            self.queue.clear();
            if let Some(b) = self.running.take() {
                self.busy_s += (t - b.start).max(0.0);
                self.share_busy((t - b.start).max(0.0), &b.admitted);
            }
            self.gone_at = Some(since + self.cfg.drain_timeout_s);
        }
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }
}

/// The seconds per item a replica reports before its first batch: a full batch's time over its
/// size, as the server's warm-up measures it.
fn cfg_per_item(cfg: &ReplicaConfig) -> f64 {
    let b = cfg.max_batch_size.max(1);
    cfg.batch_time(b) / b as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ReplicaConfig {
        ReplicaConfig {
            a_s: 0.01,
            b_s: 0.02,
            max_batch_size: 4,
            max_batch_delay_s: 0.002,
            queue_capacity: 6,
            request_timeout_s: 30.0,
            pre_s: 0.0,
            post_s: 0.0,
            startup_s: 0.0,
            drain_timeout_s: 25.0,
            fb_used_mib: 1000.0,
            fb_total_mib: 4000.0,
        }
    }

    #[test]
    fn a_lone_request_waits_the_batch_delay() {
        let mut r = Replica::new(0, 0.0, 0.0, cfg());
        let mut outcomes = Vec::new();
        let mut out = |t, o| outcomes.push((t, o));
        r.advance_to(1.0, &mut out);
        r.admit(1.0, &mut out);
        r.advance_to(10.0, &mut out);
        assert_eq!(outcomes.len(), 1);
        let (_, Outcome::Served(s)) = outcomes[0] else {
            panic!("served expected");
        };
        // 2 ms delay, then t(1) = 30 ms.
        assert!((s - 0.032).abs() < 1e-9, "{s}");
        assert_eq!(r.histograms[&200].buckets[4], 1); // le 0.1
        assert_eq!(r.histograms[&200].buckets[2], 0); // le 0.025
    }

    #[test]
    fn next_event_is_ready_then_a_batch_start_then_its_end() {
        let mut r = Replica::new(0, 0.0, 0.5, cfg());
        let mut out = |_t: f64, _o: Outcome| {};
        assert_eq!(r.next_event(0.0), Some(0.5));
        assert_eq!(r.next_event(0.5), None);
        r.advance_to(1.0, &mut out);
        r.admit(1.0, &mut out);
        // The lone request waits the 2 ms delay, then t(1) = 30 ms.
        let start = r.next_event(1.0).expect("a batch start");
        assert!((start - 1.002).abs() < 1e-9, "{start}");
        r.advance_to(start, &mut out);
        let end = r.next_event(start).expect("the batch's end");
        assert!((end - 1.032).abs() < 1e-9, "{end}");
        r.advance_to(end, &mut out);
        assert_eq!(r.next_event(end), None);
    }

    #[test]
    fn full_queue_answers_429_and_batches_accumulate() {
        let mut r = Replica::new(0, 0.0, 0.0, cfg());
        let mut served = Vec::new();
        let mut rejected = 0;
        let mut out = |_t: f64, o: Outcome| match o {
            Outcome::Served(s) => served.push(s),
            _ => rejected += 1,
        };
        // 12 requests at once: the 4th fills a batch, which starts at once; 6 more wait in
        // the queue and the last 2 are rejected.
        for _ in 0..12 {
            r.advance_to(0.0, &mut out);
            r.admit(0.0, &mut out);
        }
        r.advance_to(100.0, &mut out);
        assert_eq!(rejected, 2);
        // Batches of 4 (0 to 0.06), 4 (0.06 to 0.12, accumulated meanwhile) and 2 (to 0.16).
        assert_eq!(served.len(), 10);
        assert!((served[0] - 0.06).abs() < 1e-9);
        assert!((served[4] - 0.12).abs() < 1e-9);
        assert!((served[9] - 0.16).abs() < 1e-9);
        assert!((r.busy_until(100.0) - 0.16).abs() < 1e-9);
    }

    #[test]
    fn deadline_passes_in_the_queue() {
        let mut c = cfg();
        c.request_timeout_s = 0.05;
        c.a_s = 0.1;
        c.max_batch_size = 1;
        let mut r = Replica::new(0, 0.0, 0.0, c);
        let mut deadline = 0;
        let mut out = |_t: f64, o: Outcome| {
            if o == Outcome::Deadline {
                deadline += 1
            }
        };
        for _ in 0..3 {
            r.advance_to(0.0, &mut out);
            r.admit(0.0, &mut out);
        }
        r.advance_to(10.0, &mut out);
        // The first runs at once (0.12 s); the others have waited 0.12 s > 0.05 s.
        assert_eq!(deadline, 2);
        assert_eq!(r.histograms[&504].buckets.last(), Some(&2));
    }
}
