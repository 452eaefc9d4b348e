//! The worker thread and what both of its loops share: its life (spawned with the model,
//! warmed up, stopped, joined by [`WorkerThread`]), its progress for liveness (model calls,
//! the longest call, the `--debug-stall-model-after` hook), each model call guarded against
//! panics, the out-of-memory split that lowers the batch cap, and the moving average of
//! seconds per item behind `Retry-After` and the backlog gauge. The loops themselves are in
//! `whole_batch.rs` and `steps.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::queue::{Job, State};
use super::{steps, whole_batch};
use super::{
    AdmitError, BatcherConfig, BesideTask, JobError, Priority, ProgressSender, Receiver,
    WorkerProgress,
};
use crate::metrics::{Metrics, RejectReason};
use crate::models::{LoadedModel, ModelError, ModelInput};

/// Weight of the newest batch in the moving average of seconds per item: about the last five
/// batches count, so the backlog estimate follows a change of load within a second or two.
const PER_ITEM_SMOOTHING: f64 = 0.2;

/// What the handles and the worker thread share.
pub(super) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    pub(super) config: BatcherConfig,
    pub(super) metrics: Metrics,
    /// Model calls finished (batches, UNet steps, VAE passes), whatever their outcome: how a
    /// handler tells a worker that is slow from one that is stalled.
    model_calls: AtomicU64,
}

/// Starts the worker thread for `model`: it warms the model up, calls `on_ready`, then runs
/// the loop that fits the model (whole batches, or step by step for a diffusion model).
pub(super) fn spawn(
    model: LoadedModel,
    config: BatcherConfig,
    metrics: Metrics,
    on_ready: impl FnOnce(Result<(), ModelError>) + Send + 'static,
) -> (Arc<Shared>, WorkerThread) {
    let cap = config.max_batch_size.max(1);
    metrics.batch_cap.set(cap as i64);
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new(config.queue_capacity, cap)),
        wake: Condvar::new(),
        config,
        metrics,
        model_calls: Default::default(),
    });
    let worker_shared = shared.clone();
    let handle = std::thread::Builder::new()
        .name("virtualfit-worker".into())
        .spawn(move || {
            match model {
                LoadedModel::Batch(model) => {
                    let warm = whole_batch::warm_up(model.as_ref(), &worker_shared);
                    let ok = warm.is_ok();
                    on_ready(warm);
                    if ok {
                        whole_batch::worker_loop(model.as_ref(), &worker_shared);
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
            }
            // No worker runs what is still queued beside the model: let its waiters go.
            worker_shared.lock().stop = true;
            worker_shared.drop_beside();
        })
        .expect("spawning the worker thread");
    let worker = WorkerThread {
        shared: shared.clone(),
        handle: Some(handle),
    };
    (shared, worker)
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until work is admitted or the batcher is stopped.
    pub(super) fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.wake.wait(state).unwrap_or_else(|p| p.into_inner())
    }

    /// [`Shared::wait`], for at most `timeout`.
    pub(super) fn wait_timeout<'a>(
        &self,
        state: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        self.wake
            .wait_timeout(state, timeout)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Queues an item (see [`State::admit`]) and wakes the worker.
    pub(super) fn admit(
        &self,
        inputs: ModelInput,
        priority: Priority,
        promote_at: Option<Instant>,
        deadline: Option<Instant>,
        progress: Option<ProgressSender>,
    ) -> Result<Receiver, AdmitError> {
        let mut state = self.lock();
        let receiver = state.admit(
            inputs,
            priority,
            promote_at,
            deadline,
            self.config.queue_capacity,
            progress,
        )?;
        state.publish(&self.metrics);
        drop(state);
        self.wake.notify_one();
        Ok(receiver)
    }

    /// Queues work beside the model's (see [`super::Batcher::run_beside`]) and wakes the
    /// worker.
    pub(super) fn beside(&self, task: BesideTask) -> Result<(), AdmitError> {
        let mut state = self.lock();
        if state.stop {
            return Err(AdmitError::Draining {
                retry_after_s: state.retry_after_s(),
            });
        }
        state.beside.push_back(task);
        drop(state);
        self.wake.notify_all();
        Ok(())
    }

    /// Runs the work queued beside the model's, each task guarded against panics and counted
    /// as a call of the device for liveness and the busy-time metrics.
    pub(super) fn run_beside(&self) {
        loop {
            let Some(task) = self.lock().beside.pop_front() else {
                return;
            };
            let started = Instant::now();
            if let Err(e) = guarded(|| {
                task();
                Ok(())
            }) {
                tracing::error!(error = %e, "work beside the model failed");
            }
            self.model_worked(started.elapsed(), []);
        }
    }

    /// Drops the work queued beside the model's unrun, once the worker has stopped: each
    /// waiter sees its channel closed.
    fn drop_beside(&self) {
        let dropped = std::mem::take(&mut self.lock().beside);
        drop(dropped);
    }

    /// Stops admitting new requests; queued ones still run.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Answers every queued request with [`JobError::ShutDown`] and lets the worker exit.
    pub(super) fn abort_pending(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.stop = true;
        for job in state.drain() {
            // The handler counts what it answers; a request whose client left is counted here.
            if !job.answer(Err(JobError::ShutDown)) {
                self.metrics.reject(RejectReason::Cancelled);
            }
        }
        state.publish(&self.metrics);
        drop(state);
        self.wake.notify_all();
    }

    /// Where the worker stands, for liveness.
    pub(super) fn progress(&self) -> WorkerProgress {
        let state = self.lock();
        WorkerProgress {
            pending: state.pending(),
            since_progress: state.last_progress.elapsed(),
            longest_call: state.longest_call.max(state.call_estimate),
            max_batch_delay: self.config.max_batch_delay,
        }
    }

    /// Model calls finished so far.
    pub(super) fn model_calls(&self) -> u64 {
        self.model_calls.load(Ordering::Relaxed)
    }

    /// Answers expired requests and forgets those whose client has gone (see
    /// [`super::queue::drop_dead_jobs`]); returns what is left to run.
    pub(super) fn drop_dead_jobs(&self, jobs: Vec<Job>) -> Vec<Job> {
        super::queue::drop_dead_jobs(jobs, self.config.request_timeout, &self.metrics)
    }

    /// `n` items taken by the worker are answered or dropped: they no longer count as running.
    pub(super) fn done_running(&self, n: usize) {
        self.lock().running -= n;
    }

    /// Runs one model call, turning a panic into an error (see [`guarded`]); the test hook
    /// `debug_stall_after_calls` makes it block for ever instead.
    pub(super) fn model_call<T>(
        &self,
        f: impl FnOnce() -> Result<T, ModelError>,
    ) -> Result<T, ModelError> {
        if let Some(after) = self.config.debug_stall_after_calls {
            if self.model_calls() >= after {
                tracing::warn!(after, "test hook: the model worker stalls for ever");
                loop {
                    std::thread::park();
                }
            }
        }
        guarded(f)
    }

    /// Records a finished model call that kept the device busy for `elapsed`, shared out over
    /// the priorities of its work by `weights` (items, or UNet rows, of each priority).
    pub(super) fn model_worked(
        &self,
        elapsed: Duration,
        weights: impl IntoIterator<Item = (Priority, f64)>,
    ) {
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
        self.model_calls.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        state.last_progress = Instant::now();
        state.longest_call = state.longest_call.max(elapsed);
    }

    /// Records the warm-up: its estimate of seconds per item, its longest call, and the
    /// estimate of the longest call to come.
    pub(super) fn warmed_up(&self, seconds_per_item: f64, longest: Duration, estimate: Duration) {
        let mut state = self.lock();
        state.seconds_per_item = seconds_per_item;
        state.longest_call = state.longest_call.max(longest);
        state.call_estimate = estimate;
    }

    /// Folds the device seconds one item took into the moving average behind `Retry-After`
    /// and the backlog gauge.
    pub(super) fn item_took(&self, seconds: f64) {
        let mut state = self.lock();
        state.seconds_per_item = if state.seconds_per_item == 0.0 {
            seconds
        } else {
            (1.0 - PER_ITEM_SMOOTHING) * state.seconds_per_item + PER_ITEM_SMOOTHING * seconds
        };
        state.publish(&self.metrics);
    }

    /// The current batch cap (items, or UNet rows for step batching).
    pub(super) fn batch_cap(&self) -> usize {
        self.lock().batch_cap
    }

    /// After a device out-of-memory error on a call over `items` items taking `rows` rows
    /// (the same for whole batches): lowers the cap to half the rows, counts the recovery, and
    /// returns how many items go into the first half; the caller retries each half.
    pub(super) fn split_after_out_of_memory(&self, items: usize, rows: usize) -> usize {
        let cap = {
            let mut state = self.lock();
            state.batch_cap = state.batch_cap.min(rows / 2).max(1);
            self.metrics.batch_cap.set(state.batch_cap as i64);
            state.batch_cap
        };
        self.metrics.oom_recoveries_total.inc();
        tracing::warn!(
            batch = items,
            rows,
            cap,
            "device out of memory: splitting the batch"
        );
        items / 2
    }
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

/// The worker thread, owned by whoever started the batcher: dropping it answers what is still
/// queued with [`JobError::ShutDown`] and joins the thread once its current batch is done.
pub struct WorkerThread {
    shared: Arc<Shared>,
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
        self.shared.abort_pending();
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("the model worker thread panicked");
            }
        }
    }
}
