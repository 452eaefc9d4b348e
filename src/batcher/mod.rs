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
//! A job's item reports its [`Progress`] (stage, steps done) to a watch channel as it runs.
//!
//! The worker's progress (model calls finished, the last one's time, the longest call) is what
//! tells a stalled device from a slow one: the handler's stall bound and `/livez` read it.
//!
//! This file is the public interface. The rest is split by concern:
//! - `queue.rs`: the two queues and the admission policy (priorities, promotion, deadlines,
//!   the `Retry-After` estimate);
//! - `worker.rs`: the worker thread's life and what both loops share (progress for liveness,
//!   guarded model calls, the out-of-memory split, the per-item time estimate);
//! - `whole_batch.rs`: the loop for models that answer a batch in one call;
//! - `steps.rs`: the loop that batches diffusion models step by step;
//! - `masks.rs`: the model's person masker run on the worker between model calls, the photos
//!   of concurrent requests batched (work queued with [`Batcher::run_beside`]).
//!
//! The two loops use only what `queue.rs` and `worker.rs` expose.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use tokio::sync::oneshot;

use crate::metrics::{Metrics, PRIORITY_LABELS};
use crate::models::{LoadedModel, ModelError, ModelInput, TryOnModel};

pub mod masks;
mod queue;
mod steps;
mod whole_batch;
mod worker;

pub use worker::WorkerThread;

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
    /// `--overlap on` (whole-batch models): the next batch's inputs are staged while the device
    /// computes the current one ([`crate::models::staging`]).
    pub overlap: bool,
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

/// Where a job is in its run, as its status reports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Waiting in the store or the batcher's queue.
    Queued,
    /// The model encodes the inputs (a step model's first call).
    Encode,
    /// The model runs: a step model's UNet steps, or a whole-batch model's one call.
    Sampling,
    /// A step model decodes the last step's latents.
    Decode,
    /// The image is encoded as JPEG or PNG.
    EncodeOutput,
}

/// How far a job has got: `done` of `total` model steps (a whole-batch model has one), in
/// `stage`. Before a step model has begun, the total is not known and reads 1.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub stage: Stage,
}

impl Progress {
    /// Waiting to run: nothing done.
    pub const QUEUED: Progress = Progress {
        done: 0,
        total: 1,
        stage: Stage::Queued,
    };
}

/// Where an admitted job's progress goes: the latest value wins, so a slow reader never holds
/// the worker back.
pub type ProgressSender = tokio::sync::watch::Sender<Progress>;

/// Work queued to run on the worker thread between model calls, on the model's device (see
/// [`Batcher::run_beside`]). It answers through its own channel; dropped unrun when the worker
/// stops, which its waiter sees as a closed channel.
pub type BesideTask = Box<dyn FnOnce() + Send>;

/// Where an admitted item's answer arrives.
pub type Receiver = oneshot::Receiver<Result<JobOutput, JobError>>;

/// Handle to the batching queue; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    shared: Arc<worker::Shared>,
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
        let (shared, worker) = worker::spawn(model, config, metrics, on_ready);
        (Batcher { shared }, worker)
    }

    /// Model calls the worker has finished so far. A handler waiting for its answer sees the
    /// worker progress through other requests' work (or its own steps) by this count.
    pub fn model_calls(&self) -> u64 {
        self.shared.model_calls()
    }

    /// Admits an interactive request with the request timeout as its deadline, or refuses it
    /// at once when the queue is full or closed.
    pub fn submit(&self, inputs: impl Into<ModelInput>) -> Result<Receiver, AdmitError> {
        let deadline = Instant::now() + self.shared.config.request_timeout;
        self.shared.admit(
            inputs.into(),
            Priority::Interactive,
            None,
            Some(deadline),
            None,
        )
    }

    /// Admits the work of an asynchronous job, submitted `age` ago: no deadline, and a batch
    /// item is promoted once its job has waited `batch_max_wait` in all. Each priority has its
    /// own queue of `queue_capacity` items. The item reports its stages and steps to
    /// `progress`.
    pub fn submit_job(
        &self,
        inputs: impl Into<ModelInput>,
        priority: Priority,
        age: Duration,
        progress: Option<ProgressSender>,
    ) -> Result<Receiver, AdmitError> {
        let promote_at = match priority {
            Priority::Interactive => None,
            Priority::Batch => {
                Some(Instant::now() + self.shared.config.batch_max_wait.saturating_sub(age))
            }
        };
        self.shared
            .admit(inputs.into(), priority, promote_at, None, progress)
    }

    /// Queues `task` to run on the worker thread between model calls (between two UNet steps
    /// of the running requests), so that it shares the device with the model instead of
    /// contending for it. Refused only once the worker is stopping; while draining it still
    /// runs, for requests admitted before.
    pub fn run_beside(&self, task: BesideTask) -> Result<(), AdmitError> {
        self.shared.beside(task)
    }

    /// Stops admitting new requests; queued ones still run.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Answers every queued request with [`JobError::ShutDown`] and lets the worker exit.
    pub fn abort_pending(&self) {
        self.shared.abort_pending();
    }

    /// Queued plus running requests.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending()
    }

    /// The estimated seconds to drain what is queued now, at least 1 (for `Retry-After`).
    pub fn retry_after_s(&self) -> u64 {
        self.shared.lock().retry_after_s()
    }

    /// The current batch cap (lowered after out-of-memory errors).
    pub fn batch_cap(&self) -> usize {
        self.shared.batch_cap()
    }

    /// Where the worker stands, for liveness.
    pub fn progress(&self) -> WorkerProgress {
        self.shared.progress()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RejectReason;
    use crate::models::{PreparedPair, Rect, TryOnBatch, MODEL_HEIGHT, MODEL_WIDTH};
    use candle_core::Device;
    use std::sync::Mutex;

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
            overlap: false,
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

    /// The answers to items `i` submitted as `pair(i · 20)`, each checked: the model negates
    /// its input, v ↦ 255 − v on the 8-bit scale.
    async fn negated_answers(receivers: Vec<Receiver>) -> Vec<JobOutput> {
        let mut answers = Vec::new();
        for (i, rx) in receivers.into_iter().enumerate() {
            let out = rx.await.expect("answered").expect("image");
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
            answers.push(out);
        }
        answers
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
        for out in negated_answers(receivers).await {
            assert!(out.batch_size <= 2);
        }
        assert_eq!(batcher.batch_cap(), 2);
        assert_eq!(metrics.oom_recoveries_total.get(), 3, "8 -> 4+4 -> 2+2+2+2");
        let sizes = calls.lock().expect("lock").clone();
        assert_eq!(sizes, vec![2, 8, 4, 2, 2, 4, 2, 2]);
    }

    #[tokio::test]
    async fn with_overlap_every_request_gets_its_own_answer() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let model = FlakyModel {
            device: Device::Cpu,
            max_ok: 64,
            calls: calls.clone(),
        };
        let config = BatcherConfig {
            overlap: true,
            ..config(3, 1)
        };
        let (batcher, _worker) = start(model, config, Metrics::new());
        // Ten requests at once: while one batch runs, the next is staged from the queue.
        let receivers: Vec<_> = (0..10)
            .map(|i| batcher.submit(pair(i as u8 * 20)).expect("admitted"))
            .collect();
        negated_answers(receivers).await;
        let sizes = calls.lock().expect("lock").clone();
        assert_eq!(sizes.iter().skip(1).sum::<usize>(), 10, "{sizes:?}");
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
                .submit_job(pair(1), Priority::Batch, fresh, None)
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
                .submit_job(pair(5), Priority::Batch, fresh, None)
                .expect("admitted"),
        );
        f.watch(
            "aged",
            batcher
                .submit_job(pair(6), Priority::Batch, Duration::from_secs(5), None)
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
                    .submit_job(pair(0), Priority::Batch, Duration::ZERO, None)
                    .expect("batch admitted")
            })
            .collect();
        assert!(matches!(
            batcher.submit_job(pair(0), Priority::Batch, Duration::ZERO, None),
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
