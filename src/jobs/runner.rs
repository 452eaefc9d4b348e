//! Runs asynchronous jobs: takes them from the store while the batcher has room for them,
//! decodes their stored images through the pipeline, hands them to the batcher at their
//! priority, and stores each result with its final status. Writes each job's progress, as the
//! batcher reports it, to the store at a bounded rate. Renews the claims' leases while they
//! run, and sweeps expired results. It speaks no HTTP: the server gives it its parts and tells
//! it, through [`Gate`], whether work is taken.
//!
//! A job taken but not run (the server drains first) is put back in the store; a job whose
//! server dies is queued again when the store reopens (SQLite) or taken over after the lease
//! (Redis).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{now_ms, ClaimedJob, JobFailure, JobStore, JobsSettings, Outcome, StoreError};
use crate::batcher::{AdmitError, Batcher, JobError, Priority, Progress, ProgressSender, Stage};
use crate::imaging::{ImageError, OutputFormat};
use crate::metrics::{ActiveGuard, Metrics};
use crate::pipeline::cpu::Cpu;
use crate::pipeline::{ImageParts, OutputChoice, Pipeline, PrepareError};

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
/// The least time between two progress writes of one job: a step model reports every step,
/// and the store (Redis, which every replica's event streams read) gets the latest at most
/// this often.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Runs of a job that never ended (its server died each time) before it fails.
const MAX_ATTEMPTS: u32 = 5;
/// Tries at storing a job's end, the wait before the next growing by this each time.
const FINISH_ATTEMPTS: u32 = 4;
const FINISH_BACKOFF: Duration = Duration::from_millis(500);

/// Whether the server takes work now.
pub trait Gate: Send + Sync {
    /// New jobs may be taken.
    fn accepting(&self) -> bool;
    /// Nothing more will be taken: the runner stops once its jobs are done.
    fn stopping(&self) -> bool;
}

/// What the runner works with, given by the server.
pub struct Runner {
    pub store: Arc<dyn JobStore>,
    pub batcher: Batcher,
    pub pipeline: Pipeline,
    pub metrics: Metrics,
    pub settings: JobsSettings,
    /// Jobs in hand at once.
    pub capacity: usize,
    /// The answer's encoding when a stored job's format cannot be read.
    pub output_defaults: OutputChoice,
    /// This replica's name in the store.
    pub worker: String,
    /// Wakes the runner when a job arrives.
    pub wake: Arc<Notify>,
    /// Where each job's task is tracked (the drain waits for them).
    pub tracker: TaskTracker,
    /// Where batch jobs decode and encode.
    pub background_cpu: Cpu,
    /// Held by the batch jobs that are decoding, one per background thread.
    pub preparing: Arc<Semaphore>,
    pub gate: Arc<dyn Gate>,
    /// Why the store cannot record jobs now, if it cannot (checked every second).
    pub store_fault: Arc<Mutex<Option<String>>>,
}

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
pub async fn run(runner: Arc<Runner>, shutdown: CancellationToken) {
    let inner = &runner;
    let capacity = inner.capacity.max(1);
    let running: Running = Arc::default();
    let renew_every = inner.settings.store.lease / 3;
    let mut last_renew = Instant::now();
    let mut last_sweep: Option<Instant> = None;
    let mut last_check: Option<Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        if inner.gate.accepting() {
            let free = capacity.saturating_sub(lock(&running).len());
            if free > 0 {
                claim(&runner, &running, free).await;
            }
        }
        if last_renew.elapsed() >= renew_every {
            last_renew = Instant::now();
            let leases: Vec<String> = lock(&running).values().cloned().collect();
            if !leases.is_empty() {
                let store = inner.store.clone();
                let worker = inner.worker.clone();
                if let Err(e) = call(move || store.renew(&worker, &leases)).await {
                    tracing::warn!(error = %e, "cannot renew the leases of running jobs");
                }
            }
        }
        if last_check.is_none_or(|t| t.elapsed() >= STORE_CHECK) {
            last_check = Some(Instant::now());
            check_store(&runner).await;
        }
        if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP) {
            last_sweep = Some(Instant::now());
            sweep(&runner).await;
        }
        if inner.gate.stopping() && lock(&running).is_empty() {
            // Nothing more will be taken; wait for the end.
            shutdown.cancelled().await;
            return;
        }
        tokio::select! {
            _ = inner.wake.notified() => {}
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

async fn sweep(runner: &Runner) {
    let store = runner.store.clone();
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
            runner.metrics.jobs_queued.set(queued as i64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot sweep the job store"),
    }
}

/// Records whether the store can write (for `/readyz` and submissions), and the bytes it
/// holds.
async fn check_store(runner: &Runner) {
    let store = runner.store.clone();
    let checked = call(move || {
        store.health()?;
        store.bytes_held()
    })
    .await;
    let fault = match checked {
        Ok(bytes) => {
            runner
                .metrics
                .job_store_bytes
                .set(bytes.min(i64::MAX as u64) as i64);
            None
        }
        Err(e) => Some(e.to_string()),
    };
    let mut slot = runner.store_fault.lock().unwrap_or_else(|p| p.into_inner());
    match (&*slot, &fault) {
        (None, Some(e)) => {
            tracing::error!(error = %e, "the job store cannot record jobs; not ready")
        }
        (Some(_), None) => tracing::info!("the job store records jobs again; ready"),
        _ => {}
    }
    *slot = fault;
}

async fn claim(runner: &Arc<Runner>, running: &Running, free: usize) {
    let store = runner.store.clone();
    let worker = runner.worker.clone();
    let priorities = runner.settings.priorities.clone();
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
        if !runner.gate.accepting() {
            release(runner, &job.record.id, &job.lease).await;
            continue;
        }
        let slot = RunningSlot::new(running, &job);
        let runner = runner.clone();
        let tracker = runner.tracker.clone();
        tracker.spawn(async move {
            let _slot = slot;
            run_one(&runner, job).await;
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

async fn release(runner: &Runner, id: &str, lease: &str) {
    let store = runner.store.clone();
    let retention = runner.settings.retention;
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
async fn finish(runner: &Runner, id: &str, lease: &str, outcome: Outcome) {
    let inner = runner;
    let retention = inner.settings.retention;
    let mut outcome = outcome;
    for attempt in 1..=FINISH_ATTEMPTS {
        let store = inner.store.clone();
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
    release(runner, id, lease).await;
}

/// What became of one job's run.
enum Ran {
    Done(Outcome),
    /// Not run: the server is stopping. The job goes back to the queue.
    NotRun,
}

async fn run_one(runner: &Runner, job: ClaimedJob) {
    let inner = runner;
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
        let _active = ActiveGuard::new(&inner.metrics, job.record.priority.label());
        let (progress, watched) = watch::channel(Progress::QUEUED);
        let publisher = tokio::spawn(publish_progress(
            inner.store.clone(),
            job.record.id.clone(),
            job.lease.clone(),
            watched,
        ));
        let ran = execute(runner, &job, &progress).await;
        // The last progress is stored before the final status, so that it reads complete.
        drop(progress);
        let _ = publisher.await;
        ran
    };
    match ran {
        Ran::NotRun => release(runner, &job.record.id, &job.lease).await,
        Ran::Done(outcome) => finish(runner, &job.record.id, &job.lease, outcome).await,
    }
}

/// Writes a job's progress to the store as it changes, at most every [`PROGRESS_EVERY`]
/// (only the latest value), until the run drops its sender; the last value is written too.
async fn publish_progress(
    store: Arc<dyn JobStore>,
    id: String,
    lease: String,
    mut watched: watch::Receiver<Progress>,
) {
    let mut written = None;
    loop {
        let closed = watched.changed().await.is_err();
        let latest = *watched.borrow_and_update();
        if written != Some(latest) {
            let (store, id2, lease2) = (store.clone(), id.clone(), lease.clone());
            match call(move || store.set_progress(&id2, &lease2, latest)).await {
                Ok(()) => written = Some(latest),
                Err(e) => tracing::debug!(job = %id, error = %e, "cannot store the progress"),
            }
        }
        if closed {
            return;
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

fn failure(code: &str, message: impl Into<String>) -> Ran {
    Ran::Done(Outcome::Failed(JobFailure {
        code: code.into(),
        message: message.into(),
    }))
}

async fn execute(runner: &Runner, job: &ClaimedJob, progress: &ProgressSender) -> Ran {
    let record = &job.record;
    let options = match runner
        .pipeline
        .stored_options(record.options.as_ref().unwrap_or(&serde_json::Value::Null))
    {
        Ok(o) => o,
        Err(e) => return failure("bad_request", e),
    };
    let parts = ImageParts {
        person: job.inputs.person.clone(),
        cloth: job.inputs.cloth.clone(),
        garment_mask: job.inputs.garment_mask.clone(),
        person_mask: job.inputs.person_mask.clone(),
    };
    // Batch work decodes and encodes at a lower CPU priority than interactive work.
    let cpu = match record.priority {
        Priority::Interactive => Cpu::Blocking,
        Priority::Batch => runner.background_cpu.clone(),
    };
    // Only as many batch jobs as there are background threads take the decode budget, so
    // that those waiting for a thread hold none of it while interactive requests decode.
    let _preparing = match record.priority {
        Priority::Batch => runner.preparing.acquire().await.ok(),
        Priority::Interactive => None,
    };
    let prepared = match runner
        .pipeline
        .prepare(parts, options, Instant::now() + DECODE_WAIT, &cpu)
        .await
    {
        Ok(p) => p,
        // The decode budget stayed busy: a later run may find room.
        Err(PrepareError::Busy) => return Ran::NotRun,
        Err(PrepareError::Image(ImageError::Unsupported(m))) => {
            return failure("unsupported_media_type", m)
        }
        Err(PrepareError::Image(ImageError::Invalid(m))) => return failure("invalid_image", m),
        Err(e @ PrepareError::Internal(_)) => return failure("internal", e.to_string()),
    };
    drop(_preparing);
    let content = prepared.content;
    let receiver = loop {
        let age = record.age(now_ms());
        match runner.batcher.submit_job(
            prepared.clone(),
            record.priority,
            age,
            Some(progress.clone()),
        ) {
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
    let choice = OutputChoice {
        format: record
            .format
            .parse::<OutputFormat>()
            .unwrap_or(runner.output_defaults.format),
        quality: record.quality,
    };
    progress.send_modify(|p| {
        p.done = p.total;
        p.stage = Stage::EncodeOutput;
    });
    let image = output.image;
    let encoded = cpu
        .run(move || crate::pipeline::encode_answer(&image, content, choice))
        .await;
    match encoded {
        Ok(Ok(image)) => Ran::Done(Outcome::Succeeded {
            image,
            content_type: choice.format.mime().to_string(),
        }),
        Ok(Err(e)) => failure("internal", format!("encoding failed: {e}")),
        Err(e) => failure("internal", format!("encoding failed: {e}")),
    }
}
