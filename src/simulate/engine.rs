//! The simulation: Poisson arrivals from the trace, routed at random over the ready
//! replicas (kube-proxy), Prometheus scrapes every 15 s, the HPA sync every 15 s and KEDA's
//! poll every `pollingInterval`, with pods that need their start-up time before they serve.
//!
//! With a `redis-streams` trigger the arrivals are batch jobs instead: they wait in the job
//! stream, with or without replicas, and each ready replica takes the oldest whenever it holds
//! fewer than its runner's two batches.

use std::collections::{BTreeMap, HashSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::hpa::Hpa;
use super::keda::{Activation, JobStream, ScaledObject};
use super::profile::Profile;
use super::replica::{Outcome, Replica, ReplicaConfig};
use super::trace::Trace;
use super::tsdb::{Labels, Tsdb};
use crate::batcher::Priority;
use crate::metrics::{
    ACTIVE_BY_PRIORITY, ACTIVE_REQUESTS, LATENCY_BUCKETS, MODEL_BUSY_SECONDS_TOTAL,
    MODEL_BUSY_SHARE_SECONDS_TOTAL, QUEUED_BY_PRIORITY, QUEUED_SECONDS_BY_PRIORITY, QUEUE_LENGTH,
    REQUEST_DURATION,
};

/// Prometheus' scrape interval and the HPA's sync period.
pub const SCRAPE_S: i64 = 15;
pub const SYNC_S: i64 = 15;
/// The latency objective: a second is a violation when its p95 is over this.
pub const SLO_P95_S: f64 = 5.0;
const NAMESPACE: &str = "virtualfit";

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub replica: ReplicaConfig,
    /// Simulated seconds (whole).
    pub duration_s: i64,
    pub seed: u64,
    /// The latency objective: a second is a violation when its p95 is over this
    /// ([`SLO_P95_S`], the P95 trigger's threshold, unless a plan sets its own).
    pub slo_p95_s: f64,
}

impl SimConfig {
    /// Replicas of `profile` with the server's default batching and admission (`serve`'s
    /// defaults: batches of 8, 2 ms, a queue of 64, 30 s timeout, 25 s drain, 60 s start-up).
    pub fn server_defaults(profile: &Profile, duration_s: i64, seed: u64) -> SimConfig {
        SimConfig {
            replica: ReplicaConfig {
                a_s: profile.a_s,
                b_s: profile.b_s,
                max_batch_size: 8,
                max_batch_delay_s: 0.002,
                queue_capacity: 64,
                request_timeout_s: 30.0,
                pre_s: profile.pre_s,
                post_s: profile.post_s,
                startup_s: 60.0,
                drain_timeout_s: 25.0,
                fb_used_mib: profile.fb_used_mib,
                fb_total_mib: profile.fb_total_mib,
            },
            duration_s,
            seed,
            slo_p95_s: SLO_P95_S,
        }
    }
}

/// One HPA sync.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub t: f64,
    pub load_rps: f64,
    /// spec.replicas after this sync.
    pub replicas: i64,
    /// What the HPA (or KEDA at 0 <-> 1) asked for at this sync.
    pub desired: i64,
    /// The max over the trigger proposals before stabilization and policies.
    pub raw_desired: Option<i64>,
    pub ready: i64,
    /// Requests waiting in the replicas' queues.
    pub queue: i64,
    /// Jobs waiting in the job stream, taken by no replica (0 without a redis-streams trigger).
    pub backlog: i64,
    /// p95 of the whole request time of the requests served in the last 15 s.
    pub p95_s: Option<f64>,
    /// Requests refused in the last 15 s (429, 504, 503, lost in a drain).
    pub rejected: u64,
    /// Requests answered 200 in the last 15 s.
    pub served: u64,
    /// Each trigger's value as the HPA read it (None: the query failed).
    pub metrics: BTreeMap<String, Option<f64>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub scaledobject: String,
    pub duration_s: i64,
    pub requests: u64,
    pub served: u64,
    pub rejected: u64,
    pub rejected_queue_full: u64,
    pub rejected_deadline: u64,
    /// Arrivals with no ready replica (503 from the Service).
    pub rejected_unavailable: u64,
    pub lost_in_drain: u64,
    /// Admitted and not answered at the end, with the jobs still waiting in the stream.
    pub in_flight_at_end: u64,
    /// The objective of `slo_violation_s`.
    pub slo_p95_s: f64,
    /// Seconds whose p95 (of the requests served in that second) is over `slo_p95_s`.
    pub slo_violation_s: u64,
    pub p95_s: Option<f64>,
    /// Replica-seconds from pod creation to exit.
    pub gpu_seconds: f64,
    /// Seconds the replicas' GPUs spent in forward passes.
    pub busy_seconds: f64,
    pub max_replicas: i64,
    pub scale_events: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub timeline: Vec<Point>,
    pub summary: Summary,
}

#[derive(Default, Clone)]
struct SecondBin {
    latencies: Vec<f32>,
    rejected: u64,
}

fn p95(values: &mut [f32]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let idx = ((values.len() as f64 * 0.95).ceil() as usize).clamp(1, values.len()) - 1;
    Some(values[idx] as f64)
}

struct Counters {
    bins: Vec<SecondBin>,
    served: u64,
    queue_full: u64,
    deadline: u64,
    unavailable: u64,
    drain_lost: u64,
}

impl Counters {
    fn bin(&mut self, t: f64) -> &mut SecondBin {
        let i = (t.max(0.0) as usize).min(self.bins.len() - 1);
        &mut self.bins[i]
    }

    fn record(&mut self, t: f64, o: Outcome) {
        match o {
            Outcome::Served(s) => {
                self.served += 1;
                self.bin(t).latencies.push(s as f32);
            }
            Outcome::QueueFull => {
                self.queue_full += 1;
                self.bin(t).rejected += 1;
            }
            Outcome::Deadline => {
                self.deadline += 1;
                self.bin(t).rejected += 1;
            }
            Outcome::DrainLost => {
                self.drain_lost += 1;
                self.bin(t).rejected += 1;
            }
        }
    }
}

/// One Deployment of a simulated cluster, with the ScaledObject that scales it.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub scaledobject: ScaledObject,
    /// Its pods are endpoints of the Service: `/tryon` requests are routed to them.
    pub serves_requests: bool,
    /// Its replicas take batch jobs from the job stream (`--job-priorities` includes batch).
    pub takes_batch_jobs: bool,
    /// Its pods are targets of the `virtualfit-pods` scrape job (the inference component); a
    /// worker pool's are not, and only its GPUs are seen, under its container's name.
    pub scraped: bool,
    /// The container name on its GPUs' DCGM series.
    pub container: String,
    /// Pod names are this prefix and a number.
    pub pod_prefix: String,
}

impl PoolSpec {
    /// The single Deployment `simulate` runs: the inference Deployment, or with a
    /// `redis-streams` trigger a pool that takes the trace's load as batch jobs.
    pub fn single(so: &ScaledObject) -> PoolSpec {
        let jobs = so.reads_job_stream();
        PoolSpec {
            scaledobject: so.clone(),
            serves_requests: !jobs,
            takes_batch_jobs: jobs,
            scraped: true,
            container: "virtualfit".into(),
            pod_prefix: "virtualfit".into(),
        }
    }
}

/// The load of a cluster run: `/tryon` requests through the Service and batch jobs into the
/// job stream.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub requests: Option<Trace>,
    pub batch_jobs: Option<Trace>,
}

/// Times during which Prometheus scrapes nothing (a broken scrape): the pods' series go stale,
/// so sums over them are empty.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub scrape_outages: Vec<(f64, f64)>,
}

impl Faults {
    fn scrape_fails(&self, t: f64) -> bool {
        self.scrape_outages.iter().any(|&(a, b)| a <= t && t < b)
    }
}

fn pod_name(pool: &PoolSpec, r: &Replica) -> String {
    format!("{}-{}", pool.pod_prefix, r.id)
}

fn pod_labels(pool: &PoolSpec, r: &Replica) -> Labels {
    [
        ("namespace".to_string(), NAMESPACE.to_string()),
        ("pod".to_string(), pod_name(pool, r)),
    ]
    .into()
}

fn scrape(
    db: &mut Tsdb,
    pool: &PoolSpec,
    replicas: &[Replica],
    t: f64,
    busy_prev: &mut BTreeMap<usize, (f64, f64)>,
) {
    for r in replicas.iter().filter(|r| r.serving(t)) {
        let base = pod_labels(pool, r);
        if pool.scraped {
            db.push(QUEUE_LENGTH, base.clone(), t, r.queue_len() as f64);
            db.push(ACTIVE_REQUESTS, base.clone(), t, r.active() as f64);
            db.push(MODEL_BUSY_SECONDS_TOTAL, base.clone(), t, r.busy_until(t));
            for p in Priority::ALL {
                let mut l = base.clone();
                l.insert("priority".into(), p.label().into());
                db.push(QUEUED_BY_PRIORITY, l.clone(), t, r.queued_of(p) as f64);
                db.push(ACTIVE_BY_PRIORITY, l.clone(), t, r.active_of(p) as f64);
                db.push(
                    QUEUED_SECONDS_BY_PRIORITY,
                    l.clone(),
                    t,
                    r.queued_seconds_of(p),
                );
                db.push(
                    MODEL_BUSY_SHARE_SECONDS_TOTAL,
                    l,
                    t,
                    r.busy_share_until(t, p),
                );
            }
            let bucket_name = format!("{REQUEST_DURATION}_bucket");
            for (code, h) in &r.histograms {
                for (i, count) in h.buckets.iter().enumerate() {
                    let le = LATENCY_BUCKETS
                        .get(i)
                        .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                    let mut l = base.clone();
                    l.insert("code".into(), code.to_string());
                    l.insert("le".into(), le);
                    db.push(&bucket_name, l, t, *count as f64);
                }
            }
        }
        // dcgm-exporter for the replica's GPU: busy share since the previous scrape.
        let busy = r.busy_until(t);
        let (prev_t, prev_busy) = busy_prev.get(&r.id).copied().unwrap_or((r.ready_at, 0.0));
        busy_prev.insert(r.id, (t, busy));
        let util = if t > prev_t {
            ((busy - prev_busy) / (t - prev_t) * 100.0).clamp(0.0, 100.0)
        } else {
            0.0
        };
        let mut g = base.clone();
        g.insert("exported_namespace".into(), NAMESPACE.into());
        g.insert("exported_pod".into(), pod_name(pool, r));
        g.insert("container".into(), pool.container.clone());
        g.insert("gpu".into(), "0".into());
        db.push("DCGM_FI_DEV_GPU_UTIL", g.clone(), t, util.round());
        let cfg = r.config();
        db.push("DCGM_FI_DEV_FB_USED", g.clone(), t, cfg.fb_used_mib);
        db.push(
            "DCGM_FI_DEV_FB_FREE",
            g,
            t,
            cfg.fb_total_mib - cfg.fb_used_mib,
        );
    }
}

/// The jobs a replica's runner holds at most: enough for two batches, one running and one
/// gathering (src/server/job_runner.rs), within the queue's capacity.
fn jobs_in_hand(rc: &ReplicaConfig) -> usize {
    (rc.max_batch_size * 2).min(rc.queue_capacity).max(1)
}

/// One Deployment's state during a run.
struct Pool {
    spec: PoolSpec,
    replicas: Vec<Replica>,
    next_id: usize,
    hpa: Hpa,
    activation: Activation,
    counters: Counters,
    /// Failed reads in a row, per trigger (KEDA's fallback counts them).
    failures: Vec<i64>,
    busy_prev: BTreeMap<usize, (f64, f64)>,
    scraped: HashSet<usize>,
    timeline: Vec<Point>,
    scale_events: u64,
    max_replicas: i64,
    requests: u64,
}

impl Pool {
    fn new(spec: PoolSpec, rc: &ReplicaConfig, end: i64) -> Pool {
        let so = &spec.scaledobject;
        // The initial pods are warm: created a start-up time before 0.
        let initial = so.min_replica_count.min(so.max_replica_count);
        let replicas: Vec<Replica> = (0..initial as usize)
            .map(|id| Replica::new(id, -rc.startup_s, rc.startup_s, rc.clone()))
            .collect();
        Pool {
            hpa: Hpa::new(so.hpa_min(), so.max_replica_count, so.behavior.clone()),
            activation: Activation::new(0.0),
            counters: Counters {
                bins: vec![SecondBin::default(); end as usize + 2],
                served: 0,
                queue_full: 0,
                deadline: 0,
                unavailable: 0,
                drain_lost: 0,
            },
            failures: vec![0; so.triggers.len()],
            next_id: replicas.len(),
            replicas,
            busy_prev: BTreeMap::new(),
            scraped: HashSet::new(),
            timeline: Vec::new(),
            scale_events: 0,
            max_replicas: initial,
            requests: 0,
            spec,
        }
    }

    /// spec.replicas: the pods not terminating.
    fn spec_replicas(&self) -> i64 {
        self.replicas
            .iter()
            .filter(|r| r.draining_since.is_none())
            .count() as i64
    }

    fn ready(&self, now: f64) -> i64 {
        self.replicas.iter().filter(|r| r.is_ready(now)).count() as i64
    }
}

/// The ready job runners over the second before `now`, in time order: whenever one holds fewer
/// than `in_hand` jobs it takes the oldest waiting ones at once (the server's runner is woken
/// when a batch ends).
fn take_jobs(pools: &mut [Pool], stream: &mut VecDeque<f64>, now: f64, in_hand: usize) {
    let mut t = now - 1.0;
    loop {
        for pool in pools.iter_mut().filter(|p| p.spec.takes_batch_jobs) {
            let counters = &mut pool.counters;
            for r in pool.replicas.iter_mut().filter(|r| r.serving(t)) {
                let mut out = |at, o| counters.record(at, o);
                r.advance_to(t, &mut out);
                while r.active() < in_hand && stream.front().is_some_and(|&s| s <= t) {
                    stream.pop_front();
                    pool.requests += 1;
                    r.admit_as(t, Priority::Batch, &mut out);
                }
                // A batch filled by these starts now.
                r.advance_to(t, &mut out);
            }
        }
        // The next moment a replica may take a job: a job is submitted, or a replica becomes
        // ready or starts or ends a batch.
        let next = pools
            .iter()
            .filter(|p| p.spec.takes_batch_jobs)
            .flat_map(|p| p.replicas.iter())
            .filter(|r| r.gone_at.is_none())
            .filter_map(|r| r.next_event(t))
            .chain(stream.front().copied().filter(|&s| s > t))
            .fold(f64::INFINITY, f64::min);
        if next >= now {
            return;
        }
        t = next;
    }
}

/// Runs the ScaledObject against the trace: one Deployment (see [`PoolSpec::single`]).
pub fn simulate(so: &ScaledObject, trace: &Trace, cfg: &SimConfig) -> Run {
    simulate_with_faults(so, trace, cfg, &Faults::default())
}

/// [`simulate`] with injected faults.
pub fn simulate_with_faults(
    so: &ScaledObject,
    trace: &Trace,
    cfg: &SimConfig,
    faults: &Faults,
) -> Run {
    let spec = PoolSpec::single(so);
    let load = if spec.takes_batch_jobs {
        Load {
            requests: None,
            batch_jobs: Some(trace.clone()),
        }
    } else {
        Load {
            requests: Some(trace.clone()),
            batch_jobs: None,
        }
    };
    let mut runs = simulate_cluster(&[spec], &load, cfg, faults);
    runs.remove(0)
}

/// Runs several Deployments side by side: one Prometheus, one Service, one job stream. Returns
/// one run per pool, in order. Each pool counts the requests routed to it and the jobs it took;
/// the jobs still waiting at the end count in every job-taking pool's `in_flight_at_end`.
pub fn simulate_cluster(
    pools: &[PoolSpec],
    load: &Load,
    cfg: &SimConfig,
    faults: &Faults,
) -> Vec<Run> {
    let rc = &cfg.replica;
    let end = cfg.duration_s.max(0);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut db = Tsdb::new();
    let mut pools: Vec<Pool> = pools
        .iter()
        .map(|p| Pool::new(p.clone(), rc, end))
        .collect();
    let no_trace = Trace::from_rows(vec![(0.0, 0.0)]).expect("a constant zero trace");
    let requests_trace = load.requests.as_ref().unwrap_or(&no_trace);
    let jobs_trace = load.batch_jobs.as_ref().unwrap_or(&no_trace);
    let mut next_request = next_arrival_after(requests_trace, 0.0, &mut rng);
    let mut next_job = next_arrival_after(jobs_trace, 0.0, &mut rng);
    // (pool, replica) of the Service's endpoints.
    let mut serving: Vec<(usize, usize)> = Vec::new();
    // Batch jobs: the submission times of the jobs waiting in the stream.
    let in_hand = jobs_in_hand(rc);
    let mut stream: VecDeque<f64> = VecDeque::new();
    let service_pool = pools.iter().position(|p| p.spec.serves_requests);
    for s in 0..=end {
        let now = s as f64;
        // Arrivals in [now - 1, now): the endpoints are those of the start of the second.
        while let Some(a) = next_job.filter(|&a| a < now) {
            stream.push_back(a);
            next_job = next_arrival_after(jobs_trace, a, &mut rng);
        }
        while let Some(a) = next_request.filter(|&a| a < now) {
            if serving.is_empty() {
                if let Some(p) = service_pool {
                    let pool = &mut pools[p];
                    pool.requests += 1;
                    pool.counters.unavailable += 1;
                    pool.counters.bin(a).rejected += 1;
                }
            } else {
                let (p, i) = serving[rng.random_range(0..serving.len())];
                let pool = &mut pools[p];
                pool.requests += 1;
                let counters = &mut pool.counters;
                let r = &mut pool.replicas[i];
                let mut out = |t, o| counters.record(t, o);
                r.advance_to(a, &mut out);
                r.admit(a, &mut out);
            }
            next_request = next_arrival_after(requests_trace, a, &mut rng);
        }
        take_jobs(&mut pools, &mut stream, now, in_hand);
        for pool in pools.iter_mut() {
            let counters = &mut pool.counters;
            for r in pool.replicas.iter_mut().filter(|r| r.gone_at.is_none()) {
                let mut out = |t, o| counters.record(t, o);
                r.advance_to(now, &mut out);
                r.settle_drain(now, &mut out);
            }
        }
        if s % SCRAPE_S == 0 {
            let broken = faults.scrape_fails(now);
            for pool in pools.iter_mut() {
                let now_scraped: HashSet<usize> = if broken {
                    HashSet::new()
                } else {
                    pool.replicas
                        .iter()
                        .filter(|r| r.serving(now))
                        .map(|r| r.id)
                        .collect()
                };
                for gone in pool.scraped.difference(&now_scraped) {
                    db.mark_stale("pod", &format!("{}-{gone}", pool.spec.pod_prefix), now);
                }
                pool.scraped = now_scraped;
                if !broken {
                    scrape(
                        &mut db,
                        &pool.spec,
                        &pool.replicas,
                        now,
                        &mut pool.busy_prev,
                    );
                }
            }
        }
        let taken: u64 = pools
            .iter()
            .filter(|p| p.spec.takes_batch_jobs)
            .flat_map(|p| p.replicas.iter())
            .filter(|r| r.gone_at.is_none())
            .map(|r| r.active_of(Priority::Batch) as u64)
            .sum();
        let job_stream = JobStream {
            waiting: stream.len() as u64,
            taken,
        };
        for pool in pools.iter_mut() {
            let so = pool.spec.scaledobject.clone();
            let mut keda_desired = None;
            if s % so.polling_interval_s == 0 {
                let active = so
                    .triggers
                    .iter()
                    .any(|t| t.read(&db, &job_stream, now).active);
                let current = pool.spec_replicas();
                if let Some(n) = pool.activation.poll(&so, now, current, active) {
                    keda_desired = Some(n);
                    if n != current {
                        scale_to(&mut pool.replicas, &mut pool.next_id, n, now, rc);
                        pool.scale_events += 1;
                    }
                }
            }
            if s % SYNC_S == 0 {
                let readings: Vec<_> = so
                    .triggers
                    .iter()
                    .map(|t| (t, t.read(&db, &job_stream, now)))
                    .collect();
                let current = pool.spec_replicas();
                let ready = pool.ready(now);
                let metric_readings: Vec<_> = readings
                    .iter()
                    .zip(pool.failures.iter_mut())
                    .map(|((t, r), failures)| {
                        t.reading_with_fallback(r, so.fallback.as_ref(), failures, current, ready)
                    })
                    .collect();
                let outcome = pool.hpa.sync(now, current, ready, &metric_readings);
                if outcome.desired != current {
                    scale_to(
                        &mut pool.replicas,
                        &mut pool.next_id,
                        outcome.desired,
                        now,
                        rc,
                    );
                    pool.scale_events += 1;
                }
                let replicas_now = pool.spec_replicas();
                pool.max_replicas = pool.max_replicas.max(replicas_now);
                let point = Point {
                    t: now,
                    load_rps: if pool.spec.serves_requests {
                        requests_trace.rate_at(now)
                    } else {
                        jobs_trace.rate_at(now)
                    },
                    replicas: replicas_now,
                    desired: keda_desired.unwrap_or(outcome.desired),
                    raw_desired: outcome.raw,
                    ready: pool.ready(now),
                    queue: pool
                        .replicas
                        .iter()
                        .filter(|r| r.gone_at.is_none())
                        .map(|r| r.queue_len() as i64)
                        .sum(),
                    backlog: stream.len() as i64,
                    p95_s: None,
                    rejected: 0,
                    served: 0,
                    metrics: readings
                        .iter()
                        .zip(&metric_readings)
                        .map(|((t, _), m)| (t.name.clone(), m.value.clone().ok()))
                        .collect(),
                };
                pool.timeline.push(point);
            }
        }
        serving = pools
            .iter()
            .enumerate()
            .filter(|(_, p)| p.spec.serves_requests)
            .flat_map(|(pi, p)| {
                p.replicas
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.serving(now))
                    .map(move |(i, _)| (pi, i))
            })
            .collect();
    }
    let end_f = end as f64;
    pools
        .into_iter()
        .map(|pool| finish_pool(pool, stream.len() as u64, end, end_f, cfg))
        .collect()
}

fn finish_pool(mut pool: Pool, waiting: u64, end: i64, end_f: f64, cfg: &SimConfig) -> Run {
    let in_flight: u64 = pool
        .replicas
        .iter()
        .filter(|r| r.gone_at.is_none())
        .map(|r| r.active() as u64)
        .sum::<u64>()
        + if pool.spec.takes_batch_jobs {
            waiting
        } else {
            0
        };
    let gpu_seconds: f64 = pool
        .replicas
        .iter()
        .map(|r| (r.gone_at.unwrap_or(end_f).min(end_f) - r.created_at.max(0.0)).max(0.0))
        .sum();
    let busy_seconds: f64 = pool.replicas.iter().map(|r| r.busy_until(end_f)).sum();
    let counters = &mut pool.counters;
    // Per-sync figures over the 15 s before each point, and the per-second SLO.
    let mut slo_violation_s = 0;
    for bin in counters.bins.iter_mut().take(end as usize) {
        if p95(&mut bin.latencies).is_some_and(|p| p > cfg.slo_p95_s) {
            slo_violation_s += 1;
        }
    }
    for p in &mut pool.timeline {
        let hi = p.t as usize;
        let lo = hi.saturating_sub(SYNC_S as usize);
        let mut lat: Vec<f32> = Vec::new();
        for bin in &counters.bins[lo..hi] {
            lat.extend_from_slice(&bin.latencies);
            p.rejected += bin.rejected;
        }
        p.served = lat.len() as u64;
        p.p95_s = p95(&mut lat);
    }
    let mut all: Vec<f32> = counters
        .bins
        .iter()
        .flat_map(|b| b.latencies.iter().copied())
        .collect();
    let rejected =
        counters.queue_full + counters.deadline + counters.unavailable + counters.drain_lost;
    let summary = Summary {
        scaledobject: pool.spec.scaledobject.name.clone(),
        duration_s: end,
        requests: pool.requests,
        served: counters.served,
        rejected,
        rejected_queue_full: counters.queue_full,
        rejected_deadline: counters.deadline,
        rejected_unavailable: counters.unavailable,
        lost_in_drain: counters.drain_lost,
        in_flight_at_end: in_flight,
        slo_p95_s: cfg.slo_p95_s,
        slo_violation_s,
        p95_s: p95(&mut all),
        gpu_seconds,
        busy_seconds,
        max_replicas: pool.max_replicas,
        scale_events: pool.scale_events,
    };
    Run {
        timeline: pool.timeline,
        summary,
    }
}

/// The next Poisson arrival after `t` at the trace's piecewise rate (None when the rate stays
/// zero to the end).
fn next_arrival_after(trace: &Trace, mut t: f64, rng: &mut StdRng) -> Option<f64> {
    loop {
        let rate = trace.rate_at(t);
        let change = trace.next_change(t);
        if rate <= 0.0 {
            t = change?;
            continue;
        }
        let u: f64 = rng.random::<f64>();
        let dt = -(1.0 - u).ln() / rate;
        match change {
            Some(c) if t + dt >= c => t = c,
            _ => return Some(t + dt),
        }
    }
}

/// Sets spec.replicas to `n`: new pods start, or pods are deleted the way a ReplicaSet picks
/// them (not ready before ready, then the most recently ready).
fn scale_to(
    replicas: &mut Vec<Replica>,
    next_id: &mut usize,
    n: i64,
    now: f64,
    rc: &ReplicaConfig,
) {
    let mut alive: Vec<usize> = replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.draining_since.is_none() && r.gone_at.is_none())
        .map(|(i, _)| i)
        .collect();
    let current = alive.len() as i64;
    if n > current {
        for _ in current..n {
            replicas.push(Replica::new(*next_id, now, rc.startup_s, rc.clone()));
            *next_id += 1;
        }
    } else if n < current {
        alive.sort_by(|&a, &b| {
            let (ra, rb) = (&replicas[a], &replicas[b]);
            ra.is_ready(now)
                .cmp(&rb.is_ready(now))
                .then(rb.ready_at.total_cmp(&ra.ready_at))
        });
        for &i in alive.iter().take((current - n) as usize) {
            replicas[i].terminate(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn default_config(duration_s: i64) -> SimConfig {
        SimConfig::server_defaults(&Profile::default(), duration_s, 7)
    }

    fn guide_scenario(file: &str, text: &str) {
        let so = ScaledObject::from_yaml(file, text).expect("ScaledObject parses");
        let cfg = default_config(1800);
        let capacity = cfg.replica.capacity_rps();
        // 15 times one replica's capacity from 60 s to 660 s, then nothing.
        let load = 15.0 * capacity;
        let stop = 660.0;
        let trace = Trace::from_rows(vec![(0.0, 0.0), (60.0, load), (stop, 0.0)]).expect("trace");
        let run = simulate(&so, &trace, &cfg);
        let tl = &run.timeline;
        // Reaches 10 replicas while the load lasts.
        let at_max = tl
            .iter()
            .find(|p| p.replicas == 10)
            .expect("reaches 10 replicas");
        assert!(at_max.t < stop, "reached 10 only at {}", at_max.t);
        // Scale-up steps follow the policy: at most max(2x, +2) per 30 s.
        for w in tl.windows(3) {
            let before = w[0].replicas;
            assert!(w[2].replicas <= (2 * before).max(before + 2), "{:?}", w);
        }
        // No scale-down for 300 s after the load stops.
        let first_down = tl
            .windows(2)
            .find(|w| w[1].replicas < w[0].replicas)
            .map(|w| w[1].t)
            .expect("scales down eventually");
        assert!(first_down >= stop + 300.0, "scale-down at {first_down}");
        // Then each step at most halves the count per 60 s, down to 1.
        let downs: Vec<(f64, i64, i64)> = tl
            .windows(2)
            .filter(|w| w[1].replicas < w[0].replicas)
            .map(|w| (w[1].t, w[0].replicas, w[1].replicas))
            .collect();
        for (t, from, to) in &downs {
            // The count 60 s earlier bounds the step: at least half of it remains.
            let earlier = tl
                .iter()
                .rev()
                .find(|p| p.t <= t - 60.0)
                .map_or(*from, |p| p.replicas);
            let start = earlier.max(*from);
            assert!(
                *to >= start / 2,
                "{from} -> {to} at {t} (60 s before: {earlier})"
            );
        }
        assert_eq!(tl.last().map(|p| p.replicas), Some(1));
        assert!(downs.len() >= 3, "gradual scale-down: {downs:?}");
        assert!(run.summary.served > 0 && run.summary.gpu_seconds > 0.0);
    }

    #[test]
    fn guide_scenario_on_the_test_scaledobject() {
        guide_scenario(
            "tests/data/keda-gpu-scaler.yaml",
            include_str!("../../tests/data/keda-gpu-scaler.yaml"),
        );
    }

    #[test]
    fn guide_scenario_on_the_shipped_scaledobject() {
        guide_scenario(
            "k8s/autoscaling/keda-gpu-scaler.yaml",
            include_str!("../../k8s/autoscaling/keda-gpu-scaler.yaml"),
        );
    }

    #[test]
    fn light_load_stays_at_one_replica() {
        let so = ScaledObject::from_yaml(
            "t",
            include_str!("../../k8s/autoscaling/keda-gpu-scaler.yaml"),
        )
        .expect("parses");
        let cfg = default_config(600);
        let trace = Trace::from_rows(vec![(0.0, 0.1 * cfg.replica.capacity_rps())]).expect("trace");
        let run = simulate(&so, &trace, &cfg);
        assert!(run.timeline.iter().all(|p| p.replicas == 1));
        assert_eq!(run.summary.rejected, 0);
        assert!(run.summary.served > 0);
        // One replica the whole time.
        assert!((run.summary.gpu_seconds - 600.0).abs() < 1e-9);
    }

    #[test]
    fn an_unbounded_queue_turns_overload_into_latency_and_504s() {
        let so = ScaledObject::from_yaml(
            "t",
            include_str!("../../k8s/autoscaling/keda-gpu-scaler.yaml"),
        )
        .expect("parses");
        let mut cfg = default_config(900);
        cfg.replica.queue_capacity = 1_000_000;
        let load = 3.0 * cfg.replica.capacity_rps();
        let trace = Trace::from_rows(vec![(0.0, load), (300.0, 0.0)]).expect("trace");
        let run = simulate(&so, &trace, &cfg);
        let s = &run.summary;
        assert_eq!(s.rejected_queue_full, 0);
        // Waits beyond --request-timeout-s 30 are answered 504 when their batch is taken.
        assert!(s.rejected_deadline > 0, "{s:?}");
        assert!(s.slo_violation_s > 0, "{s:?}");
        // The backlog trigger sees the queued work, in seconds.
        let backlog_seen = run
            .timeline
            .iter()
            .filter_map(|p| p.metrics.get("backlog-seconds").copied().flatten())
            .fold(0.0, f64::max);
        assert!(backlog_seen > 5.0, "{backlog_seen}");
        assert!(s.max_replicas >= 3);
        assert_eq!(s.requests, s.served + s.rejected + s.in_flight_at_end);
    }

    const ZERO: &str = r#"
kind: ScaledObject
metadata:
  name: zero
spec:
  minReplicaCount: 0
  maxReplicaCount: 3
  pollingInterval: 30
  cooldownPeriod: 120
  triggers:
  - type: prometheus
    metadata:
      query: sum(virtualfit_active_requests{namespace="virtualfit"})
      threshold: "5"
"#;

    #[test]
    fn pod_metrics_cannot_wake_a_deployment_at_zero() {
        let so = ScaledObject::from_yaml("zero.yaml", ZERO).expect("parses");
        let cfg = default_config(600);
        let trace = Trace::from_rows(vec![(0.0, 0.0), (100.0, 50.0), (400.0, 0.0)]).expect("trace");
        let run = simulate(&so, &trace, &cfg);
        // With no pods there are no series: the trigger reads 0 and KEDA never activates;
        // every request meets a Service without endpoints.
        assert!(run.timeline.iter().all(|p| p.replicas == 0));
        assert!(run.summary.requests > 0);
        assert_eq!(run.summary.rejected_unavailable, run.summary.requests);
    }

    #[test]
    fn the_job_stream_wakes_the_batch_pool_from_zero_and_it_returns_to_zero() {
        let so = ScaledObject::from_yaml(
            "k8s/overlays/batch-pool/scaledobject.yaml",
            include_str!("../../k8s/overlays/batch-pool/scaledobject.yaml"),
        )
        .expect("parses");
        let cfg = default_config(1500);
        // 12 000 batch jobs in a minute from 100 s: 1.5 times what one replica runs.
        let rate = 1.5 * cfg.replica.capacity_rps();
        let trace = Trace::from_rows(vec![(0.0, 0.0), (100.0, rate), (160.0, 0.0)]).expect("trace");
        let run = simulate(&so, &trace, &cfg);
        let tl = &run.timeline;
        let s = &run.summary;
        assert!(tl
            .iter()
            .take_while(|p| p.t < 100.0)
            .all(|p| p.replicas == 0));
        // The first poll that sees a job waiting activates the pool; the HPA adds more for the
        // backlog.
        let woken = tl.iter().find(|p| p.replicas > 0).expect("wakes up");
        assert!(woken.t <= 100.0 + so.polling_interval_s as f64, "{woken:?}");
        assert!(tl.iter().any(|p| p.backlog > 1000), "a backlog builds");
        assert!(s.max_replicas >= 2 && s.max_replicas <= so.max_replica_count);
        // Every job waits for a worker instead of meeting a Service without endpoints, and
        // all are run.
        assert_eq!(s.rejected, 0, "{s:?}");
        assert!(s.requests > 5000, "{s:?}");
        assert_eq!(s.served, s.requests, "{s:?}");
        assert_eq!(s.in_flight_at_end, 0);
        // Back to zero after the cooldown once the backlog is gone.
        let cleared = tl
            .iter()
            .find(|p| p.t > 160.0 && p.backlog == 0)
            .expect("the backlog clears")
            .t;
        let zero = tl
            .iter()
            .find(|p| p.t > cleared && p.replicas == 0)
            .expect("returns to zero")
            .t;
        assert!(
            zero >= cleared + so.cooldown_period_s as f64 - 15.0,
            "{cleared} {zero}"
        );
        assert_eq!(tl.last().map(|p| p.replicas), Some(0));
    }

    #[test]
    fn cron_activates_from_zero_and_cooldown_returns_to_zero() {
        let text = format!(
            "{ZERO}  - type: cron\n    metadata:\n      timezone: UTC\n      start: 2 * * * *\n      end: 10 * * * *\n      desiredReplicas: \"3\"\n"
        );
        let so = ScaledObject::from_yaml("zero.yaml", &text).expect("parses");
        let cfg = default_config(1200);
        let trace = Trace::from_rows(vec![(0.0, 0.0)]).expect("trace");
        let run = simulate(&so, &trace, &cfg);
        let at = |t: f64| {
            run.timeline
                .iter()
                .find(|p| p.t == t)
                .map(|p| p.replicas)
                .expect("a sync at that time")
        };
        assert_eq!(at(105.0), 0);
        // Active from minute 2: KEDA's poll at 120 s activates 1, the HPA takes it to 3.
        assert_eq!(at(120.0), 3);
        assert_eq!(at(590.0 - 5.0), 3);
        // Inactive from 600 s (last active at the 570 s poll); the 120 s cooldown ends at the
        // 690 s poll, which goes to 0.
        assert_eq!(at(675.0), 3);
        assert_eq!(at(690.0), 0);
        assert_eq!(at(1200.0), 0);
    }
}
