//! Dynamic batching: one worker thread owns the model and the device; requests wait in a bounded
//! queue and run together, up to `max_batch_size`, as soon as the batch is full or its oldest
//! request has waited `max_batch_delay`. While a batch runs, the next one accumulates.
//!
//! Two priorities share the worker: `interactive` work (every `/tryon`) fills each batch first,
//! and `batch` work (asynchronous jobs, unless they ask otherwise) takes the room it leaves. A
//! batch item whose job has waited `batch_max_wait` since it was submitted is promoted: it
//! takes its turn with interactive requests in the order they were admitted, so a busy
//! interactive load never starves it. The two have separate queues, so batch work never
//! takes an interactive request's place in the queue.
//!
//! The worker's progress (model calls finished, the last one's time, the longest call) is what
//! tells a stalled device from a slow one: the handler's stall bound and `/livez` read it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokio::sync::oneshot;

use crate::metrics::{Metrics, RejectReason, PRIORITY_LABELS};
use crate::models::{
    LoadedModel, ModelError, ModelInput, TryOnBatch, TryOnModel, MODEL_HEIGHT, MODEL_WIDTH,
};

mod steps;

/// Batching and admission settings.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    pub max_batch_delay: Duration,
    pub queue_capacity: usize,
    pub request_timeout: Duration,
    /// A batch item waiting this long since its job was submitted is served as interactive.
    pub batch_max_wait: Duration,
    /// Test hook (`--debug-stall-model-after`): after this many finished model calls, the
    /// worker blocks for ever inside the next one, as on a hung device. `None` in service.
    pub debug_stall_after_calls: Option<u64>,
}

/// Whose work an item is: interactive requests go first, batch jobs fill the room left.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Interactive,
    Batch,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Interactive, Priority::Batch];

    pub fn label(self) -> &'static str {
        match self {
            Priority::Interactive => PRIORITY_LABELS[0],
            Priority::Batch => PRIORITY_LABELS[1],
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "interactive" => Ok(Priority::Interactive),
            "batch" => Ok(Priority::Batch),
            _ => Err("the priority is `interactive` or `batch`".into()),
        }
    }
}

/// What a request gets back from its batch.
#[derive(Debug)]
pub struct JobOutput {
    /// The try-on image, 8-bit `H×W×3`, on the CPU.
    pub image: Tensor,
    pub batch_size: usize,
    pub queue_time: Duration,
    pub inference_time: Duration,
}

/// Why an admitted request got no image.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    #[error("deadline exceeded after waiting {waited:?}")]
    Deadline { waited: Duration, timeout: Duration },
    #[error("model failure: {0}")]
    Model(String),
    #[error("the server shut down before the request ran")]
    ShutDown,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmitError {
    #[error("queue full")]
    QueueFull { retry_after_s: u64 },
    #[error("draining")]
    Draining { retry_after_s: u64 },
}

/// The shortest `Retry-After` the server gives: HTTP counts in whole seconds, and 0 would invite
/// an immediate retry.
pub const MIN_RETRY_AFTER_S: u64 = 1;

/// While interactive requests arrived this recently, a batch with no interactive request
/// takes at most [`BATCH_ONLY_SHARE`] of the cap, so that a request arriving meanwhile waits
/// for a short batch, not a full one. With no interactive traffic, batch work fills whole batches.
const INTERACTIVE_RECENT: Duration = Duration::from_secs(2);
/// The share (1/n) of the batch cap that batch-only batches take while interactive traffic flows.
const BATCH_ONLY_SHARE: usize = 4;

/// Weight of the newest batch in the moving average of seconds per item: about the last five
/// batches count, so the backlog estimate follows a change of load within a second or two.
const PER_ITEM_SMOOTHING: f64 = 0.2;

type Reply = oneshot::Sender<Result<JobOutput, JobError>>;
/// Where an admitted item's answer arrives.
pub type Receiver = oneshot::Receiver<Result<JobOutput, JobError>>;

struct Job {
    inputs: ModelInput,
    admitted_at: Instant,
    priority: Priority,
    /// When a batch item is served as interactive.
    promote_at: Option<Instant>,
    /// Past it, the item is answered with [`JobError::Deadline`] instead of running; `None`
    /// for asynchronous jobs, which have no client waiting on the connection.
    deadline: Option<Instant>,
    reply: Reply,
}

impl Job {
    fn promoted(&self, now: Instant) -> bool {
        self.promote_at.is_some_and(|t| t <= now)
    }
}

struct State {
    /// Interactive requests, oldest first.
    interactive: VecDeque<Job>,
    /// Batch items, oldest first.
    batch: VecDeque<Job>,
    /// No new admissions (draining).
    closed: bool,
    /// The worker should exit once the queue is empty.
    stop: bool,
    /// Measured forward seconds per item (moving average), for the backlog estimate.
    seconds_per_item: f64,
    /// The current batch cap, lowered after out-of-memory errors.
    batch_cap: usize,
    /// Requests taken by the worker and not yet answered.
    running: usize,
    /// When the last interactive request was admitted.
    last_interactive: Option<Instant>,
    /// When the worker last finished a model call, or work arrived while nothing was pending,
    /// whichever is later: what liveness measures a stall from.
    last_progress: Instant,
    /// The longest model call so far, warm-up included.
    longest_call: Duration,
    /// The warm-up's estimate of the longest call the worker may make (a full batch; for a
    /// diffusion model a full-size step or VAE pass), before any such call is seen.
    call_estimate: Duration,
}

impl State {
    /// The estimated seconds to finish what is queued and running, at least
    /// [`MIN_RETRY_AFTER_S`].
    fn retry_after_s(&self) -> u64 {
        let backlog = (self.queued() + self.running) as f64 * self.seconds_per_item;
        (backlog.ceil() as u64).max(MIN_RETRY_AFTER_S)
    }

    /// Interactive and batch items waiting, together (the KEDA gauge's meaning).
    fn queued(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    /// When the oldest waiting item was admitted.
    fn oldest_admission(&self) -> Option<Instant> {
        let a = self.interactive.front().map(|j| j.admitted_at);
        let b = self.batch.front().map(|j| j.admitted_at);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes up to `cap` items: interactive requests and promoted batch items, in the order
    /// they were admitted, then batch items in the room that is left.
    fn take_batch(&mut self, cap: usize, now: Instant) -> Vec<Job> {
        let mut taken = Vec::with_capacity(cap.min(self.queued()));
        let (mut promoted, mut waiting): (VecDeque<Job>, VecDeque<Job>) =
            self.batch.drain(..).partition(|j| j.promoted(now));
        while taken.len() < cap {
            let promoted_first = match (promoted.front(), self.interactive.front()) {
                (Some(p), Some(i)) => p.admitted_at <= i.admitted_at,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if promoted_first {
                promoted.pop_front()
            } else {
                self.interactive.pop_front()
            };
            taken.extend(next);
        }
        // What was not taken keeps its place, oldest first.
        let mut merged = VecDeque::with_capacity(promoted.len() + waiting.len());
        while let (Some(p), Some(w)) = (promoted.front(), waiting.front()) {
            let next = if p.admitted_at <= w.admitted_at {
                promoted.pop_front()
            } else {
                waiting.pop_front()
            };
            merged.extend(next);
        }
        merged.extend(promoted);
        merged.extend(waiting);
        self.batch = merged;
        let cap = if taken.is_empty() && self.interactive_flows(now) {
            (cap / BATCH_ONLY_SHARE).max(1)
        } else {
            cap
        };
        while taken.len() < cap {
            match self.batch.pop_front() {
                Some(job) => taken.push(job),
                None => break,
            }
        }
        taken
    }
}

impl State {
    /// Returns an item taken by [`State::take_batch`] to the front of its queue, where it was.
    fn put_back(&mut self, job: Job) {
        match job.priority {
            Priority::Interactive => self.interactive.push_front(job),
            Priority::Batch => self.batch.push_front(job),
        }
    }

    /// Whether interactive requests arrived within [`INTERACTIVE_RECENT`].
    fn interactive_flows(&self, now: Instant) -> bool {
        self.last_interactive
            .is_some_and(|t| now.saturating_duration_since(t) < INTERACTIVE_RECENT)
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    config: BatcherConfig,
    metrics: Metrics,
    /// Model calls finished (batches, UNet steps, VAE passes), whatever their outcome: how a
    /// handler tells a worker that is slow from one that is stalled.
    model_calls: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a finished model call that kept the device busy for `elapsed`, shared out over
    /// the priorities of its work by `weights` (items, or UNet rows, of each priority).
    fn model_worked(&self, elapsed: Duration, weights: impl IntoIterator<Item = (Priority, f64)>) {
        let seconds = elapsed.as_secs_f64();
        self.metrics.model_busy_seconds_total.inc_by(seconds);
        let mut shares = [0.0f64; 2];
        for (priority, weight) in weights {
            shares[priority as usize] += weight;
        }
        let total: f64 = shares.iter().sum();
        if total > 0.0 {
            for priority in Priority::ALL {
                let share = shares[priority as usize];
                if share > 0.0 {
                    self.metrics
                        .model_busy_share_seconds_total
                        .with_label_values(&[priority.label()])
                        .inc_by(seconds * share / total);
                }
            }
        }
        self.model_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.lock();
        state.last_progress = Instant::now();
        state.longest_call = state.longest_call.max(elapsed);
    }

    /// Records the warm-up: its longest call, and the estimate of the longest call to come.
    fn warmed_up(&self, longest: Duration, estimate: Duration) {
        let mut state = self.lock();
        state.longest_call = state.longest_call.max(longest);
        state.call_estimate = estimate;
    }

    /// Runs one model call, turning a panic into an error (see [`guarded`]); the test hook
    /// `debug_stall_after_calls` makes it block for ever instead.
    fn model_call<T>(&self, f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
        if let Some(after) = self.config.debug_stall_after_calls {
            if self.model_calls.load(std::sync::atomic::Ordering::Relaxed) >= after {
                tracing::warn!(after, "test hook: the model worker stalls for ever");
                loop {
                    std::thread::park();
                }
            }
        }
        guarded(f)
    }

    fn publish_queue(&self, state: &State) {
        let queued = state.queued();
        self.metrics.queue_length.set(queued as i64);
        self.metrics
            .backlog_seconds
            .set(queued as f64 * state.seconds_per_item);
        for (priority, queue) in [
            (Priority::Interactive, &state.interactive),
            (Priority::Batch, &state.batch),
        ] {
            self.metrics
                .queued_by_priority
                .with_label_values(&[priority.label()])
                .set(queue.len() as i64);
            self.metrics
                .queued_seconds_by_priority
                .with_label_values(&[priority.label()])
                .set(queue.len() as f64 * state.seconds_per_item);
        }
    }
}

/// Handle to the batching queue; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    /// Starts the worker thread for a whole-batch model. It first runs one full warm-up
    /// batch, then calls `on_ready`.
    pub fn start(
        model: Box<dyn TryOnModel>,
        config: BatcherConfig,
        metrics: Metrics,
        on_ready: impl FnOnce(Result<(), ModelError>) + Send + 'static,
    ) -> (Batcher, WorkerThread) {
        Self::start_model(LoadedModel::Batch(model), config, metrics, on_ready)
    }

    /// Starts the worker thread for any model: whole batches, or step-level batching for a
    /// diffusion model (see [`steps`]). It warms the model up, then calls `on_ready`.
    pub fn start_model(
        model: LoadedModel,
        config: BatcherConfig,
        metrics: Metrics,
        on_ready: impl FnOnce(Result<(), ModelError>) + Send + 'static,
    ) -> (Batcher, WorkerThread) {
        let cap = config.max_batch_size.max(1);
        metrics.batch_cap.set(cap as i64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                interactive: VecDeque::with_capacity(config.queue_capacity),
                batch: VecDeque::new(),
                closed: false,
                stop: false,
                seconds_per_item: 0.0,
                batch_cap: cap,
                running: 0,
                last_interactive: None,
                last_progress: Instant::now(),
                longest_call: Duration::ZERO,
                call_estimate: Duration::ZERO,
            }),
            wake: Condvar::new(),
            config,
            metrics,
            model_calls: Default::default(),
        });
        let worker_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("virtualfit-worker".into())
            .spawn(move || match model {
                LoadedModel::Batch(model) => {
                    let warm = warm_up(model.as_ref(), &worker_shared);
                    let ok = warm.is_ok();
                    on_ready(warm);
                    if ok {
                        worker_loop(model.as_ref(), &worker_shared);
                    }
                }
                LoadedModel::Steps(model) => {
                    let warm = steps::warm_up(model.as_ref(), &worker_shared);
                    let ok = warm.is_ok();
                    on_ready(warm);
                    if ok {
                        steps::worker_loop(model.as_ref(), &worker_shared);
                    }
                }
            })
            .expect("spawning the worker thread");
        let batcher = Batcher { shared };
        let worker = WorkerThread {
            batcher: batcher.clone(),
            handle: Some(handle),
        };
        (batcher, worker)
    }

    /// Model calls the worker has finished so far. A handler waiting for its answer sees the
    /// worker progress through other requests' work (or its own steps) by this count.
    pub fn model_calls(&self) -> u64 {
        self.shared
            .model_calls
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Admits an interactive request with the request timeout as its deadline, or refuses it
    /// at once when the queue is full or closed.
    pub fn submit(&self, inputs: impl Into<ModelInput>) -> Result<Receiver, AdmitError> {
        let deadline = Instant::now() + self.shared.config.request_timeout;
        self.admit(inputs.into(), Priority::Interactive, None, Some(deadline))
    }

    /// Admits the work of an asynchronous job, submitted `age` ago: no deadline, and a batch
    /// item is promoted once its job has waited `batch_max_wait` in all. Each priority has its
    /// own queue of `queue_capacity` items.
    pub fn submit_job(
        &self,
        inputs: impl Into<ModelInput>,
        priority: Priority,
        age: Duration,
    ) -> Result<Receiver, AdmitError> {
        let promote_at = match priority {
            Priority::Interactive => None,
            Priority::Batch => {
                Some(Instant::now() + self.shared.config.batch_max_wait.saturating_sub(age))
            }
        };
        self.admit(inputs.into(), priority, promote_at, None)
    }

    fn admit(
        &self,
        inputs: ModelInput,
        priority: Priority,
        promote_at: Option<Instant>,
        deadline: Option<Instant>,
    ) -> Result<Receiver, AdmitError> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.shared.lock();
        if state.closed {
            return Err(AdmitError::Draining {
                retry_after_s: state.retry_after_s(),
            });
        }
        let queue_len = match priority {
            Priority::Interactive => state.interactive.len(),
            Priority::Batch => state.batch.len(),
        };
        if queue_len >= self.shared.config.queue_capacity {
            return Err(AdmitError::QueueFull {
                retry_after_s: state.retry_after_s(),
            });
        }
        let now = Instant::now();
        if state.queued() + state.running == 0 {
            // An idle worker has nothing to catch up on: a stall counts from this work.
            state.last_progress = now;
        }
        let job = Job {
            inputs,
            admitted_at: now,
            priority,
            promote_at,
            deadline,
            reply: tx,
        };
        match priority {
            Priority::Interactive => {
                state.last_interactive = Some(job.admitted_at);
                state.interactive.push_back(job)
            }
            Priority::Batch => state.batch.push_back(job),
        }
        self.shared.publish_queue(&state);
        drop(state);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Stops admitting new requests; queued ones still run.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }

    /// Answers every queued request with [`JobError::ShutDown`] and lets the worker exit.
    pub fn abort_pending(&self) {
        let mut state = self.shared.lock();
        state.closed = true;
        state.stop = true;
        let queues = &mut *state;
        let queued: Vec<Job> = queues
            .interactive
            .drain(..)
            .chain(queues.batch.drain(..))
            .collect();
        for job in queued {
            // The handler counts what it answers; a request whose client left is counted here.
            if job.reply.send(Err(JobError::ShutDown)).is_err() {
                self.shared.metrics.reject(RejectReason::Cancelled);
            }
        }
        self.shared.publish_queue(&state);
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Queued plus running requests.
    pub fn pending(&self) -> usize {
        let state = self.shared.lock();
        state.queued() + state.running
    }

    /// The estimated seconds to drain what is queued now, at least 1 (for `Retry-After`).
    pub fn retry_after_s(&self) -> u64 {
        self.shared.lock().retry_after_s()
    }

    /// The current batch cap (lowered after out-of-memory errors).
    pub fn batch_cap(&self) -> usize {
        self.shared.lock().batch_cap
    }

    /// Where the worker stands, for liveness.
    pub fn progress(&self) -> WorkerProgress {
        let state = self.shared.lock();
        WorkerProgress {
            pending: state.queued() + state.running,
            since_progress: state.last_progress.elapsed(),
            longest_call: state.longest_call.max(state.call_estimate),
            max_batch_delay: self.shared.config.max_batch_delay,
        }
    }
}

/// The worker's progress, as liveness reads it ([`Batcher::progress`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerProgress {
    /// Items admitted and not answered yet: queued, or taken by the worker.
    pub pending: usize,
    /// Time since the worker last finished a model call, or since work arrived while nothing
    /// was pending, whichever is later.
    pub since_progress: Duration,
    /// The longest model call to expect: the longest one so far (warm-up included) or the
    /// warm-up's estimate for a full batch, a full-size step or VAE pass, whichever is longer.
    pub longest_call: Duration,
    /// How long the oldest queued item may wait for its batch to fill, with no call running.
    pub max_batch_delay: Duration,
}

/// The worker thread, owned by whoever started the batcher: dropping it answers what is still
/// queued with [`JobError::ShutDown`] and joins the thread once its current batch is done.
pub struct WorkerThread {
    batcher: Batcher,
    handle: Option<JoinHandle<()>>,
}

impl WorkerThread {
    /// Whether the thread has exited (after a failed warm-up, or once stopped).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        self.batcher.abort_pending();
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("the model worker thread panicked");
            }
        }
    }
}

/// Runs one full batch of blank inputs so that the first request meets a warm model.
fn warm_up(model: &dyn TryOnModel, shared: &Shared) -> Result<(), ModelError> {
    let n = shared.config.max_batch_size.max(1);
    let device = model.device();
    let image = Tensor::zeros(
        (n, 3, MODEL_HEIGHT, MODEL_WIDTH),
        candle_core::DType::F32,
        device,
    )?;
    let mask = Tensor::zeros(
        (n, 1, MODEL_HEIGHT, MODEL_WIDTH),
        candle_core::DType::F32,
        device,
    )?;
    let batch = TryOnBatch {
        person: image.clone(),
        cloth: image,
        cloth_mask: mask,
    };
    let start = Instant::now();
    model.forward(&batch)?;
    let elapsed = start.elapsed();
    shared.lock().seconds_per_item = elapsed.as_secs_f64() / n as f64;
    // A full batch: the longest call there is.
    shared.warmed_up(elapsed, elapsed);
    Ok(())
}

fn worker_loop(model: &dyn TryOnModel, shared: &Shared) {
    let config = &shared.config;
    loop {
        let jobs = {
            let mut state = shared.lock();
            while state.queued() == 0 {
                if state.stop {
                    return;
                }
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            // Let the batch fill until it is full or its oldest request has waited long enough.
            while let Some(oldest) = state.oldest_admission() {
                let waited = oldest.elapsed();
                if state.queued() >= state.batch_cap || waited >= config.max_batch_delay {
                    break;
                }
                state = shared
                    .wake
                    .wait_timeout(state, config.max_batch_delay - waited)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let cap = state.batch_cap;
            let jobs = state.take_batch(cap, Instant::now());
            state.running += jobs.len();
            shared.publish_queue(&state);
            jobs
        };
        let taken = jobs.len();
        let live = drop_dead_jobs(jobs, shared);
        if !live.is_empty() {
            run_batch(model, shared, live);
        }
        shared.lock().running -= taken;
    }
}

/// Answers expired requests with 504 and forgets those whose client has gone.
fn drop_dead_jobs(jobs: Vec<Job>, shared: &Shared) -> Vec<Job> {
    let timeout = shared.config.request_timeout;
    let now = Instant::now();
    let mut live = Vec::with_capacity(jobs.len());
    for job in jobs {
        let waited = now.saturating_duration_since(job.admitted_at);
        if job.reply.is_closed() {
            shared.metrics.reject(RejectReason::Cancelled);
        } else if job.deadline.is_some_and(|d| now > d) {
            // The handler counts the 504 it answers; a client gone meanwhile is a cancellation.
            if job
                .reply
                .send(Err(JobError::Deadline { waited, timeout }))
                .is_err()
            {
                shared.metrics.reject(RejectReason::Cancelled);
            }
        } else {
            live.push(job);
        }
    }
    live
}

/// Runs `f`, turning a panic inside the model into [`ModelError::Panicked`]: a panic must not
/// take the worker (and every later request) with it.
fn guarded<T>(f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(ModelError::Panicked(what))
    })
}

/// Runs a batch; on a device out-of-memory error it splits the batch in half, lowers the cap
/// and retries each half.
fn run_batch(model: &dyn TryOnModel, shared: &Shared, jobs: Vec<Job>) {
    let started = Instant::now();
    let n = jobs.len();
    let result = shared.model_call(|| forward(model, &jobs));
    // The device was busy for this batch whatever its outcome.
    shared.model_worked(started.elapsed(), jobs.iter().map(|j| (j.priority, 1.0)));
    match result {
        Ok(images) => {
            let elapsed = started.elapsed();
            let m = &shared.metrics;
            m.batch_size.observe(n as f64);
            m.batch_duration.observe(elapsed.as_secs_f64());
            {
                let mut state = shared.lock();
                let per_item = elapsed.as_secs_f64() / n as f64;
                state.seconds_per_item = if state.seconds_per_item == 0.0 {
                    per_item
                } else {
                    (1.0 - PER_ITEM_SMOOTHING) * state.seconds_per_item
                        + PER_ITEM_SMOOTHING * per_item
                };
                shared.publish_queue(&state);
            }
            for (job, image) in jobs.into_iter().zip(images) {
                let queue_time = started.saturating_duration_since(job.admitted_at);
                let priority = job.priority.label();
                m.queue_duration
                    .with_label_values(&[priority])
                    .observe(queue_time.as_secs_f64());
                m.batch_items_total.with_label_values(&[priority]).inc();
                let output = JobOutput {
                    image,
                    batch_size: n,
                    queue_time,
                    inference_time: elapsed,
                };
                if job.reply.send(Ok(output)).is_err() {
                    m.reject(RejectReason::Cancelled);
                }
            }
        }
        Err(e) if e.is_out_of_memory() && n > 1 => {
            let half = n / 2;
            {
                let mut state = shared.lock();
                state.batch_cap = state.batch_cap.min(half).max(1);
                shared.metrics.batch_cap.set(state.batch_cap as i64);
            }
            shared.metrics.oom_recoveries_total.inc();
            tracing::warn!(
                batch = n,
                cap = half,
                "device out of memory: splitting the batch"
            );
            let mut first = jobs;
            let second = first.split_off(half);
            run_batch(model, shared, first);
            run_batch(model, shared, second);
        }
        Err(e) => {
            tracing::error!(batch = n, error = %e, "batch failed");
            let message = e.to_string();
            for job in jobs {
                let _ = job.reply.send(Err(JobError::Model(message.clone())));
            }
        }
    }
}

fn forward(model: &dyn TryOnModel, jobs: &[Job]) -> Result<Vec<Tensor>, ModelError> {
    let inputs: Vec<&ModelInput> = jobs.iter().map(|j| &j.inputs).collect();
    let batch = TryOnBatch::from_inputs(&inputs, model.device())?;
    crate::models::forward_u8(model, &batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::PreparedPair;
    use crate::models::Rect;
    use candle_core::Device;

    /// A model that fails with out-of-memory above `max_ok` items and records batch sizes.
    struct FlakyModel {
        device: Device,
        max_ok: usize,
        calls: Arc<Mutex<Vec<usize>>>,
    }

    impl TryOnModel for FlakyModel {
        fn name(&self) -> &str {
            "flaky"
        }
        fn device(&self) -> &Device {
            &self.device
        }
        fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
            let n = batch.len();
            self.calls.lock().expect("lock").push(n);
            if n > self.max_ok {
                return Err(ModelError::OutOfMemory(format!("{n} items")));
            }
            Ok((batch.person.clone() * -1.0)?)
        }
    }

    fn pair(value: u8) -> PreparedPair {
        let t = Tensor::full(value, (MODEL_HEIGHT, MODEL_WIDTH, 3), &Device::Cpu).expect("t");
        let m = Tensor::full(255u8, (MODEL_HEIGHT, MODEL_WIDTH, 1), &Device::Cpu).expect("m");
        PreparedPair {
            person: t.clone(),
            cloth: t,
            cloth_mask: m,
            content: Rect {
                x: 0,
                y: 0,
                width: MODEL_WIDTH as u32,
                height: MODEL_HEIGHT as u32,
            },
        }
    }

    fn config(max_batch: usize, delay_ms: u64) -> BatcherConfig {
        BatcherConfig {
            max_batch_size: max_batch,
            max_batch_delay: Duration::from_millis(delay_ms),
            queue_capacity: 64,
            request_timeout: Duration::from_secs(30),
            batch_max_wait: Duration::from_secs(600),
            debug_stall_after_calls: None,
        }
    }

    fn start(
        model: FlakyModel,
        config: BatcherConfig,
        metrics: Metrics,
    ) -> (Batcher, WorkerThread) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (batcher, worker) = Batcher::start(Box::new(model), config, metrics, move |r| {
            let _ = tx.send(r.is_ok());
        });
        assert!(rx.recv().expect("warm-up result"));
        (batcher, worker)
    }

    #[tokio::test]
    async fn out_of_memory_splits_the_batch_and_lowers_the_cap() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let metrics = Metrics::new();
        let model = FlakyModel {
            device: Device::Cpu,
            max_ok: 2,
            calls: calls.clone(),
        };
        // The warm-up runs at the configured 2 and succeeds.
        let (batcher, _worker) = start(model, config(2, 200), metrics.clone());
        // Raise the cap to 8 to provoke the failure, as if the device's free memory had shrunk.
        batcher.shared.lock().batch_cap = 8;
        let receivers: Vec<_> = (0..8)
            .map(|i| batcher.submit(pair(i as u8 * 20)).expect("admitted"))
            .collect();
        for (i, rx) in receivers.into_iter().enumerate() {
            let out = rx.await.expect("answered").expect("image");
            // The model negates its input: v ↦ 255 − v on the 8-bit scale.
            let v: Vec<u8> = out
                .image
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .expect("pixels");
            assert!(
                v.iter().all(|&p| p == 255 - i as u8 * 20),
                "item {i} got {}",
                v[0]
            );
            assert!(out.batch_size <= 2);
        }
        assert_eq!(batcher.batch_cap(), 2);
        assert_eq!(metrics.oom_recoveries_total.get(), 3, "8 -> 4+4 -> 2+2+2+2");
        let sizes = calls.lock().expect("lock").clone();
        assert_eq!(sizes, vec![2, 8, 4, 2, 2, 4, 2, 2]);
    }

    /// A model that panics on all-white person images.
    struct PanickyModel(Device);

    impl TryOnModel for PanickyModel {
        fn name(&self) -> &str {
            "panicky"
        }
        fn device(&self) -> &Device {
            &self.0
        }
        fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
            let max = batch.person.max_all()?.to_scalar::<f32>()?;
            assert!(max < 1.0, "white input");
            Ok(batch.person.clone())
        }
    }

    #[tokio::test]
    async fn a_panicking_model_fails_its_batch_and_the_worker_keeps_serving() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (batcher, _worker) = Batcher::start(
            Box::new(PanickyModel(Device::Cpu)),
            config(1, 1),
            Metrics::new(),
            move |r| {
                let _ = tx.send(r.is_ok());
            },
        );
        assert!(rx.recv().expect("warm-up"));
        let failed = batcher
            .submit(pair(255))
            .expect("admitted")
            .await
            .expect("answered");
        match failed {
            Err(JobError::Model(m)) => assert!(m.contains("panicked"), "{m}"),
            other => panic!("expected a model error, got {other:?}"),
        }
        let ok = batcher
            .submit(pair(10))
            .expect("admitted")
            .await
            .expect("answered");
        assert!(ok.is_ok(), "the worker still serves");
    }

    /// A model that takes `delay` per batch.
    struct SlowModel(Device, Duration);

    impl TryOnModel for SlowModel {
        fn name(&self) -> &str {
            "slow"
        }
        fn device(&self) -> &Device {
            &self.0
        }
        fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
            std::thread::sleep(self.1);
            Ok(batch.person.clone())
        }
    }

    /// Submits items and records when each answer arrives.
    struct Finishes {
        started: Instant,
        done: Arc<Mutex<Vec<(&'static str, Duration)>>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Finishes {
        fn watch(&mut self, name: &'static str, rx: Receiver) {
            let (done, started) = (self.done.clone(), self.started);
            self.tasks.push(tokio::spawn(async move {
                let out = rx.await.expect("answered").expect("ran");
                assert!(out.batch_size <= 2);
                done.lock().expect("lock").push((name, started.elapsed()));
            }));
        }

        async fn times(self) -> std::collections::HashMap<&'static str, Duration> {
            for t in self.tasks {
                t.await.expect("task");
            }
            self.done.lock().expect("lock").iter().copied().collect()
        }
    }

    #[tokio::test]
    async fn interactive_requests_run_before_queued_batch_items_and_aged_items_are_promoted() {
        let mut cfg = config(2, 0);
        cfg.batch_max_wait = Duration::from_secs(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let (batcher, _worker) = Batcher::start(
            Box::new(SlowModel(Device::Cpu, Duration::from_millis(150))),
            cfg,
            Metrics::new(),
            move |r| {
                let _ = tx.send(r.is_ok());
            },
        );
        assert!(rx.recv().expect("warm-up"));
        let fresh = Duration::ZERO;
        let mut f = Finishes {
            started: Instant::now(),
            done: Arc::default(),
            tasks: Vec::new(),
        };

        // Six batch items fill the queue; while the first batch runs, two interactive
        // requests arrive and must run next.
        let batch: [&'static str; 6] = ["b1", "b2", "b3", "b4", "b5", "b6"];
        for name in batch {
            let rx = batcher
                .submit_job(pair(1), Priority::Batch, fresh)
                .expect("admitted");
            f.watch(name, rx);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        for name in ["i1", "i2"] {
            f.watch(name, batcher.submit(pair(2)).expect("admitted"));
        }
        let t = f.times().await;
        for late in ["b3", "b4", "b5", "b6"] {
            for i in ["i1", "i2"] {
                assert!(t[i] < t[late], "{i} ran before {late}: {t:?}");
            }
        }

        // A batch item whose job has waited past --batch-max-wait goes before interactive
        // requests that arrived with it; fresh batch items still wait for them.
        let mut f = Finishes {
            started: Instant::now(),
            done: Arc::default(),
            tasks: Vec::new(),
        };
        f.watch("blocker", batcher.submit(pair(3)).expect("admitted"));
        tokio::time::sleep(Duration::from_millis(40)).await;
        f.watch(
            "new",
            batcher
                .submit_job(pair(5), Priority::Batch, fresh)
                .expect("admitted"),
        );
        f.watch(
            "aged",
            batcher
                .submit_job(pair(6), Priority::Batch, Duration::from_secs(5))
                .expect("admitted"),
        );
        for name in ["i3", "i4", "i5"] {
            f.watch(name, batcher.submit(pair(4)).expect("admitted"));
        }
        let t = f.times().await;
        // The aged item takes its turn in admission order with the interactive requests
        // that came after it; the fresh one waits for all of them.
        assert!(t["aged"] < t["i4"] && t["aged"] < t["i5"], "{t:?}");
        for i in ["i3", "i4", "i5"] {
            assert!(t[i] < t["new"], "{i} before the fresh batch item: {t:?}");
        }
    }

    #[tokio::test]
    async fn progress_counts_pending_work_from_its_arrival_or_the_last_finished_call() {
        let warm = Duration::from_millis(150);
        // Batches wait up to 3 s to fill, so a lone request stays queued with no call running.
        let cfg = config(8, 3_000);
        let (tx, rx) = std::sync::mpsc::channel();
        let (batcher, _worker) = Batcher::start(
            Box::new(SlowModel(Device::Cpu, warm)),
            cfg,
            Metrics::new(),
            move |r| {
                let _ = tx.send(r.is_ok());
            },
        );
        assert!(rx.recv().expect("warm-up"));
        // The warm-up's full batch is the longest call so far.
        let idle = batcher.progress();
        assert_eq!(idle.pending, 0);
        assert!(idle.longest_call >= warm, "{idle:?}");
        assert_eq!(idle.max_batch_delay, Duration::from_secs(3));
        // Idle for a while: the time since the last call grows, but nothing is pending.
        std::thread::sleep(Duration::from_millis(1_200));
        assert!(batcher.progress().since_progress >= Duration::from_millis(1_200));
        // Work arriving at an idle worker starts the count afresh.
        let rx = batcher.submit(pair(1)).expect("admitted");
        let waiting = batcher.progress();
        assert_eq!(waiting.pending, 1);
        assert!(
            waiting.since_progress < Duration::from_millis(1_200),
            "{waiting:?}"
        );
        rx.await.expect("answered").expect("ran");
        let done = batcher.progress();
        assert_eq!(done.pending, 0);
        // The count ran from the admission, through the batch delay, to the end of the call.
        assert!(
            done.since_progress < Duration::from_millis(1_200),
            "{done:?}"
        );
    }

    #[tokio::test]
    async fn batch_items_take_no_interactive_queue_room() {
        let mut cfg = config(8, 5_000);
        cfg.queue_capacity = 2;
        let (batcher, _worker) = start(
            FlakyModel {
                device: Device::Cpu,
                max_ok: 64,
                calls: Arc::default(),
            },
            cfg,
            Metrics::new(),
        );
        let _b: Vec<_> = (0..2)
            .map(|_| {
                batcher
                    .submit_job(pair(0), Priority::Batch, Duration::ZERO)
                    .expect("batch admitted")
            })
            .collect();
        assert!(matches!(
            batcher.submit_job(pair(0), Priority::Batch, Duration::ZERO),
            Err(AdmitError::QueueFull { .. })
        ));
        let _i: Vec<_> = (0..2)
            .map(|_| batcher.submit(pair(0)).expect("interactive admitted"))
            .collect();
        assert_eq!(batcher.pending(), 4);
    }

    #[tokio::test]
    async fn full_queue_refuses_with_retry_after_and_closed_queue_refuses_as_draining() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let model = FlakyModel {
            device: Device::Cpu,
            max_ok: 64,
            calls,
        };
        let mut cfg = config(8, 5_000);
        cfg.queue_capacity = 2;
        let (batcher, _worker) = start(model, cfg, Metrics::new());
        let _a = batcher.submit(pair(0)).expect("first");
        let _b = batcher.submit(pair(0)).expect("second");
        match batcher.submit(pair(0)) {
            Err(AdmitError::QueueFull { retry_after_s }) => assert!(retry_after_s >= 1),
            other => panic!("expected QueueFull, got {:?}", other.map(|_| ())),
        }
        batcher.close();
        assert!(matches!(
            batcher.submit(pair(0)).map(|_| ()),
            Err(AdmitError::Draining { .. })
        ));
    }

    #[tokio::test]
    async fn expired_requests_are_answered_without_running() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let model = FlakyModel {
            device: Device::Cpu,
            max_ok: 64,
            calls: calls.clone(),
        };
        let mut cfg = config(8, 100);
        cfg.request_timeout = Duration::from_millis(20);
        let metrics = Metrics::new();
        let (batcher, _worker) = start(model, cfg, metrics.clone());
        let before = calls.lock().expect("lock").len();
        let rx = batcher.submit(pair(0)).expect("admitted");
        match rx.await.expect("answered") {
            Err(JobError::Deadline { .. }) => {}
            other => panic!("expected deadline, got {other:?}"),
        }
        assert_eq!(
            calls.lock().expect("lock").len(),
            before,
            "the model never ran"
        );
        // The answered 504 is counted by the handler that answers it, not twice here.
        let counted =
            |r: RejectReason| metrics.rejected_total.with_label_values(&[r.label()]).get();
        assert_eq!(counted(RejectReason::Deadline), 0);
        assert_eq!(counted(RejectReason::Cancelled), 0);
    }
}
