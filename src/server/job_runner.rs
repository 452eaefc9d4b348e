//! Runs asynchronous jobs: takes them from the store while the batcher has room for them,
//! decodes their stored images, hands them to the batcher at their priority, and stores each
//! result with its final status. Renews the claims' leases while they run, and sweeps expired
//! results.
//!
//! A job taken but not run (the server drains first) is put back in the store; a job whose
//! server dies is queued again when the store reopens (SQLite) or taken over after the lease
//! (Redis).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cpu::Cpu;
use super::{upload, ActiveGuard, AppState, Phase};
use crate::batcher::{AdmitError, JobError, Priority};
use crate::error::ApiError;
use crate::imaging::{self, OutputFormat};
use crate::jobs::{now_ms, ClaimedJob, JobFailure, JobStore, Outcome, StoreError};

/// How often the runner looks for work when nobody wakes it.
const POLL: Duration = Duration::from_millis(200);
/// How often expired results are swept and the queued gauge refreshed.
const SWEEP: Duration = Duration::from_secs(10);
/// How often the store is checked for writes (readiness reports its faults).
const STORE_CHECK: Duration = Duration::from_secs(1);
/// How long to wait before offering an item again to a full batch queue.
const FULL_QUEUE_BACKOFF: Duration = Duration::from_millis(20);
/// How long a stored image may wait for the decode budget.
const DECODE_WAIT: Duration = Duration::from_secs(600);
/// Runs of a job that never ended (its server died each time) before it fails.
const MAX_ATTEMPTS: u32 = 5;
/// Tries at storing a job's end, the wait before the next growing by this each time.
const FINISH_ATTEMPTS: u32 = 4;
const FINISH_BACKOFF: Duration = Duration::from_millis(500);

/// The jobs this replica runs now, by id, with their leases.
type Running = Arc<Mutex<HashMap<String, String>>>;

/// The store's name for this replica: unique per process, readable in Redis.
pub fn worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(64)
        .collect();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &crate::jobs::new_id()[..8]
    )
}

/// The runner's loop, until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let inner = &state.inner;
    // Enough jobs in hand for the batch that runs and the next one; more would only wait in
    // memory instead of in the store.
    let capacity = (inner.args.batching.max_batch_size as usize * 2)
        .min(inner.args.batching.queue_capacity as usize)
        .max(1);
    let running: Running = Arc::default();
    let renew_every = inner.args.jobs.job_lease / 3;
    let mut last_renew = Instant::now();
    let mut last_sweep: Option<Instant> = None;
    let mut last_check: Option<Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let phase = inner.readiness.phase();
        if phase == Phase::Ready {
            let free = capacity.saturating_sub(lock(&running).len());
            if free > 0 {
                claim(&state, &running, free).await;
            }
        }
        if last_renew.elapsed() >= renew_every {
            last_renew = Instant::now();
            let leases: Vec<String> = lock(&running).values().cloned().collect();
            if !leases.is_empty() {
                let store = inner.jobs.clone();
                let worker = inner.worker.clone();
                if let Err(e) = call(move || store.renew(&worker, &leases)).await {
                    tracing::warn!(error = %e, "cannot renew the leases of running jobs");
                }
            }
        }
        if last_check.is_none_or(|t| t.elapsed() >= STORE_CHECK) {
            last_check = Some(Instant::now());
            check_store(&state).await;
        }
        if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP) {
            last_sweep = Some(Instant::now());
            sweep(&state).await;
        }
        if matches!(phase, Phase::Draining | Phase::Failed(_)) && lock(&running).is_empty() {
            // Nothing more will be taken; wait for the end.
            shutdown.cancelled().await;
            return;
        }
        tokio::select! {
            _ = inner.job_wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn lock(running: &Running) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
    running.lock().unwrap_or_else(|p| p.into_inner())
}

async fn call<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("a job store call panicked: {e}")))?
}

async fn sweep(state: &AppState) {
    let store = state.inner.jobs.clone();
    match call(move || {
        let expired = store.expire(now_ms())?;
        Ok((expired, store.queued()?))
    })
    .await
    {
        Ok((expired, queued)) => {
            if expired > 0 {
                tracing::info!(jobs = expired, "deleted the results of expired jobs");
            }
            state.inner.metrics.jobs_queued.set(queued as i64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot sweep the job store"),
    }
}

/// Records whether the store can write (for `/readyz` and submissions), and the bytes it
/// holds.
async fn check_store(state: &AppState) {
    let store = state.inner.jobs.clone();
    let checked = call(move || {
        store.health()?;
        store.bytes_held()
    })
    .await;
    let fault = match checked {
        Ok(bytes) => {
            state
                .inner
                .metrics
                .job_store_bytes
                .set(bytes.min(i64::MAX as u64) as i64);
            None
        }
        Err(e) => Some(e.to_string()),
    };
    let mut slot = state
        .inner
        .store_fault
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match (&*slot, &fault) {
        (None, Some(e)) => {
            tracing::error!(error = %e, "the job store cannot record jobs; not ready")
        }
        (Some(_), None) => tracing::info!("the job store records jobs again; ready"),
        _ => {}
    }
    *slot = fault;
}

async fn claim(state: &AppState, running: &Running, free: usize) {
    let store = state.inner.jobs.clone();
    let worker = state.inner.worker.clone();
    let priorities = state.inner.args.jobs.job_priorities.clone();
    let claimed = match call(move || store.claim_from(&worker, free, now_ms(), &priorities)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take jobs from the store");
            return;
        }
    };
    for job in claimed {
        // Taken while the drain began: back to the queue at once, for another replica or the
        // restart.
        if state.inner.readiness.phase() != Phase::Ready {
            release(state, &job.record.id, &job.lease).await;
            continue;
        }
        let slot = RunningSlot::new(running, &job);
        let state = state.clone();
        let tracker = state.inner.in_flight.clone();
        tracker.spawn(async move {
            let _slot = slot;
            run_one(&state, job).await;
        });
    }
}

/// A job's place in the runner's map while it runs: freed when its task ends, even by a panic.
struct RunningSlot {
    running: Running,
    id: String,
}

impl RunningSlot {
    fn new(running: &Running, job: &ClaimedJob) -> Self {
        lock(running).insert(job.record.id.clone(), job.lease.clone());
        RunningSlot {
            running: running.clone(),
            id: job.record.id.clone(),
        }
    }
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.id);
    }
}

async fn release(state: &AppState, id: &str, lease: &str) {
    let store = state.inner.jobs.clone();
    let retention = state.inner.args.jobs.job_retention;
    let (id2, lease2) = (id.to_string(), lease.to_string());
    match call(move || store.release(&id2, &lease2, now_ms(), retention)).await {
        Ok(()) => tracing::info!(job = %id, "job put back in the queue"),
        Err(e) => tracing::warn!(
            job = %id,
            error = %e,
            "cannot put the job back; it runs again after the restart or the lease"
        ),
    }
}

/// Stores a job's end, retrying a failing store; if the result itself cannot be stored, the
/// job ends failed without it, and if even that fails it goes back to the queue. A job never
/// stays running behind a store error.
async fn finish(state: &AppState, id: &str, lease: &str, outcome: Outcome) {
    let inner = &state.inner;
    let retention = inner.args.jobs.job_retention;
    let mut outcome = outcome;
    for attempt in 1..=FINISH_ATTEMPTS {
        let store = inner.jobs.clone();
        let (id2, lease2, this) = (id.to_string(), lease.to_string(), outcome.clone());
        match call(move || store.finish(&id2, &lease2, this, now_ms(), retention)).await {
            Ok(Some(record)) => {
                inner
                    .metrics
                    .jobs_finished_total
                    .with_label_values(&[record.status.as_str()])
                    .inc();
                tracing::info!(job = %id, status = record.status.as_str(), "job ended");
                return;
            }
            Ok(None) => {
                tracing::info!(job = %id, "job had already ended, or another worker runs it");
                return;
            }
            Err(e) => {
                tracing::warn!(job = %id, attempt, error = %e, "cannot store the job's end");
                if attempt + 1 == FINISH_ATTEMPTS {
                    outcome = Outcome::Failed(JobFailure {
                        code: "internal".into(),
                        message: format!("the result could not be stored: {e}"),
                    });
                }
                tokio::time::sleep(FINISH_BACKOFF * attempt).await;
            }
        }
    }
    release(state, id, lease).await;
}

/// What became of one job's run.
enum Ran {
    Done(Outcome),
    /// Not run: the server is stopping. The job goes back to the queue.
    NotRun,
}

async fn run_one(state: &AppState, job: ClaimedJob) {
    let inner = &state.inner;
    let ran = if job.record.attempts > MAX_ATTEMPTS {
        // Started this often without ending: each run took its server down with it.
        failure(
            "internal",
            format!(
                "the job was started {} times and never finished; it is not run again",
                job.record.attempts - 1
            ),
        )
    } else {
        // Counted like a /tryon request from here: the KEDA gauges see all the work.
        let _active = ActiveGuard::new(&inner.metrics, job.record.priority);
        execute(state, &job).await
    };
    match ran {
        Ran::NotRun => release(state, &job.record.id, &job.lease).await,
        Ran::Done(outcome) => finish(state, &job.record.id, &job.lease, outcome).await,
    }
}

fn failure(code: &str, message: impl Into<String>) -> Ran {
    Ran::Done(Outcome::Failed(JobFailure {
        code: code.into(),
        message: message.into(),
    }))
}

async fn execute(state: &AppState, job: &ClaimedJob) -> Ran {
    let inner = &state.inner;
    let args = &inner.args;
    let record = &job.record;
    let (person, cloth, mask) = (
        job.inputs.person.clone(),
        job.inputs.cloth.clone(),
        job.inputs.mask.clone(),
    );
    let upload = match record.diffusion {
        Some(_) => upload::Upload::stored_diffusion(person, cloth, mask),
        None => upload::Upload::stored(person, cloth, mask),
    };
    // Batch work decodes and encodes at a lower CPU priority than interactive work.
    let cpu = match record.priority {
        Priority::Interactive => Cpu::Blocking,
        Priority::Batch => inner.background_cpu.clone(),
    };
    // Only as many batch jobs as there are background threads take the decode budget, so
    // that those waiting for a thread hold none of it while interactive requests decode.
    let _preparing = match record.priority {
        Priority::Batch => inner.batch_preparing.acquire().await.ok(),
        Priority::Interactive => None,
    };
    let prepared = match upload::prepare(
        upload,
        args.max_image_pixels,
        &inner.budgets,
        Instant::now() + DECODE_WAIT,
        &cpu,
        record.diffusion,
    )
    .await
    {
        Ok(p) => p,
        // The decode budget stayed busy: a later run may find room.
        Err(ApiError::Overloaded { .. }) => return Ran::NotRun,
        Err(e) => return failure(e.code(), e.to_string()),
    };
    drop(_preparing);
    let content = prepared.content();
    let receiver = loop {
        let age = record.age(now_ms());
        match inner
            .batcher
            .submit_job(prepared.clone(), record.priority, age)
        {
            Ok(rx) => break rx,
            Err(AdmitError::QueueFull { .. }) => tokio::time::sleep(FULL_QUEUE_BACKOFF).await,
            Err(AdmitError::Draining { .. }) => return Ran::NotRun,
        }
    };
    let output = match receiver.await {
        Ok(Ok(output)) => output,
        Ok(Err(JobError::ShutDown)) | Err(_) => return Ran::NotRun,
        Ok(Err(e @ JobError::Deadline { .. })) => {
            return failure("deadline_exceeded", e.to_string())
        }
        Ok(Err(JobError::Model(m))) => return failure("internal", format!("model failure: {m}")),
    };
    let format = record
        .format
        .parse::<OutputFormat>()
        .unwrap_or(args.output_format);
    let quality = record.quality;
    let image = output.image;
    let encoded = cpu
        .run(move || -> Result<Vec<u8>, String> {
            let rgb = imaging::tensor_to_rgb(&image).map_err(|e| e.to_string())?;
            imaging::encode(&imaging::crop_to(rgb, content), format, quality)
        })
        .await;
    match encoded {
        Ok(Ok(image)) => Ran::Done(Outcome::Succeeded {
            image,
            content_type: format.mime().to_string(),
        }),
        Ok(Err(e)) => failure("internal", format!("encoding failed: {e}")),
        Err(e) => failure("internal", format!("encoding failed: {e}")),
    }
}

/// Opens the store the flags name.
pub fn open_store(args: &crate::config::JobsArgs) -> anyhow::Result<Arc<dyn JobStore>> {
    Ok(match &args.jobs_redis {
        Some(url) => Arc::new(crate::jobs::RedisStore::open(url, args.job_lease)?),
        None => Arc::new(crate::jobs::SqliteStore::open(
            &args.data_dir,
            args.job_lease,
        )?),
    })
}
