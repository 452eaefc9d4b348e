//! The queue and its admission policy: the two priority queues ([`State`]), who is admitted
//! (`QueueFull`, `Draining`), the order items leave in (interactive first, aged batch items
//! promoted, batch-only batches kept short while interactive traffic flows), the queue
//! metrics, the `Retry-After` estimate, and answering items past their deadline or whose
//! client has gone. Both worker loops take their work through this file.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::BesideTask;
use super::{
    AdmitError, JobError, JobOutput, Priority, Progress, ProgressSender, Receiver, Stage,
    MIN_RETRY_AFTER_S,
};
use crate::metrics::{Metrics, RejectReason};
use crate::models::ModelInput;

/// While interactive requests arrived this recently, a batch with no interactive request
/// takes at most [`BATCH_ONLY_SHARE`] of the cap, so that a request arriving meanwhile waits
/// for a short batch, not a full one. With no interactive traffic, batch work fills whole batches.
const INTERACTIVE_RECENT: Duration = Duration::from_secs(2);
/// The share (1/n) of the batch cap that batch-only batches take while interactive traffic flows.
pub(super) const BATCH_ONLY_SHARE: usize = 4;

type Reply = oneshot::Sender<Result<JobOutput, JobError>>;

/// One admitted item, waiting in the queue or taken by the worker.
pub(super) struct Job {
    pub(super) inputs: ModelInput,
    pub(super) admitted_at: Instant,
    pub(super) priority: Priority,
    /// When a batch item is served as interactive.
    promote_at: Option<Instant>,
    /// Past it, the item is answered with [`JobError::Deadline`] instead of running; `None`
    /// for asynchronous jobs, which have no client waiting on the connection.
    deadline: Option<Instant>,
    reply: Reply,
    /// Where the item's progress goes, for a job that reports it.
    progress: Option<ProgressSender>,
}

impl Job {
    pub(super) fn promoted(&self, now: Instant) -> bool {
        self.promote_at.is_some_and(|t| t <= now)
    }

    /// Whether the client waiting for the answer has gone.
    pub(super) fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    /// Reports how far the item has got, to whoever watches it.
    pub(super) fn report(&self, done: usize, total: usize, stage: Stage) {
        if let Some(tx) = &self.progress {
            tx.send_replace(Progress { done, total, stage });
        }
    }

    /// Sends the item its answer; `false` when its client has gone.
    pub(super) fn answer(self, result: Result<JobOutput, JobError>) -> bool {
        self.reply.send(result).is_ok()
    }
}

/// The queues and the worker's figures, behind one lock.
pub(super) struct State {
    /// Interactive requests, oldest first.
    interactive: VecDeque<Job>,
    /// Batch items, oldest first.
    batch: VecDeque<Job>,
    /// No new admissions (draining).
    pub(super) closed: bool,
    /// The worker should exit once the queue is empty.
    pub(super) stop: bool,
    /// Measured forward seconds per item (moving average), for the backlog estimate.
    pub(super) seconds_per_item: f64,
    /// The current batch cap, lowered after out-of-memory errors.
    pub(super) batch_cap: usize,
    /// Requests taken by the worker and not yet answered.
    pub(super) running: usize,
    /// When the last interactive request was admitted.
    last_interactive: Option<Instant>,
    /// When the worker last finished a model call, or work arrived while nothing was pending,
    /// whichever is later: what liveness measures a stall from.
    pub(super) last_progress: Instant,
    /// The longest model call so far, warm-up included.
    pub(super) longest_call: Duration,
    /// The warm-up's estimate of the longest call the worker may make (a full batch; for a
    /// diffusion model a full-size step or VAE pass), before any such call is seen.
    pub(super) call_estimate: Duration,
    /// Work beside the model's own (person masks), run by the worker between its calls in
    /// arrival order; whoever queued it waits for its answer.
    pub(super) beside: VecDeque<BesideTask>,
}

impl State {
    /// Empty queues, with room reserved for `queue_capacity` interactive requests.
    pub(super) fn new(queue_capacity: usize, batch_cap: usize) -> State {
        State {
            interactive: VecDeque::with_capacity(queue_capacity),
            batch: VecDeque::new(),
            closed: false,
            stop: false,
            seconds_per_item: 0.0,
            batch_cap,
            running: 0,
            last_interactive: None,
            last_progress: Instant::now(),
            longest_call: Duration::ZERO,
            call_estimate: Duration::ZERO,
            beside: VecDeque::new(),
        }
    }

    /// Queues an item, or refuses it when the queue is closed or the item's priority already
    /// has `queue_capacity` items waiting.
    pub(super) fn admit(
        &mut self,
        inputs: ModelInput,
        priority: Priority,
        promote_at: Option<Instant>,
        deadline: Option<Instant>,
        queue_capacity: usize,
        progress: Option<ProgressSender>,
    ) -> Result<Receiver, AdmitError> {
        if self.closed {
            return Err(AdmitError::Draining {
                retry_after_s: self.retry_after_s(),
            });
        }
        let queue_len = match priority {
            Priority::Interactive => self.interactive.len(),
            Priority::Batch => self.batch.len(),
        };
        if queue_len >= queue_capacity {
            return Err(AdmitError::QueueFull {
                retry_after_s: self.retry_after_s(),
            });
        }
        let (reply, receiver) = oneshot::channel();
        let now = Instant::now();
        if self.pending() == 0 {
            // An idle worker has nothing to catch up on: a stall counts from this work.
            self.last_progress = now;
        }
        let job = Job {
            inputs,
            admitted_at: now,
            priority,
            promote_at,
            deadline,
            reply,
            progress,
        };
        match priority {
            Priority::Interactive => {
                self.last_interactive = Some(job.admitted_at);
                self.interactive.push_back(job)
            }
            Priority::Batch => self.batch.push_back(job),
        }
        Ok(receiver)
    }

    /// Empties both queues, oldest interactive requests first.
    pub(super) fn drain(&mut self) -> Vec<Job> {
        self.interactive
            .drain(..)
            .chain(self.batch.drain(..))
            .collect()
    }

    /// The estimated seconds to finish what is queued and running, at least
    /// [`MIN_RETRY_AFTER_S`].
    pub(super) fn retry_after_s(&self) -> u64 {
        let backlog = self.pending() as f64 * self.seconds_per_item;
        (backlog.ceil() as u64).max(MIN_RETRY_AFTER_S)
    }

    /// Interactive and batch items waiting, together (the KEDA gauge's meaning).
    pub(super) fn queued(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    /// Queued plus running items.
    pub(super) fn pending(&self) -> usize {
        self.queued() + self.running
    }

    /// When the oldest waiting item was admitted.
    pub(super) fn oldest_admission(&self) -> Option<Instant> {
        let a = self.interactive.front().map(|j| j.admitted_at);
        let b = self.batch.front().map(|j| j.admitted_at);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes up to `cap` items: interactive requests and promoted batch items, in the order
    /// they were admitted, then batch items in the room that is left.
    /// The inputs of up to `cap` queued items, interactive ones first: a guess at the next
    /// batch, for staging it early. [`State::take_batch`] decides what the batch really is.
    pub(super) fn upcoming(&self, cap: usize) -> Vec<crate::models::ModelInput> {
        self.interactive
            .iter()
            .chain(self.batch.iter())
            .take(cap)
            .map(|job| job.inputs.clone())
            .collect()
    }

    pub(super) fn take_batch(&mut self, cap: usize, now: Instant) -> Vec<Job> {
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

    /// Returns an item taken by [`State::take_batch`] to the front of its queue, where it was.
    pub(super) fn put_back(&mut self, job: Job) {
        match job.priority {
            Priority::Interactive => self.interactive.push_front(job),
            Priority::Batch => self.batch.push_front(job),
        }
    }

    /// Whether interactive requests arrived within [`INTERACTIVE_RECENT`].
    pub(super) fn interactive_flows(&self, now: Instant) -> bool {
        self.last_interactive
            .is_some_and(|t| now.saturating_duration_since(t) < INTERACTIVE_RECENT)
    }

    /// Sets the queue gauges: lengths, and the backlog at the current seconds per item.
    pub(super) fn publish(&self, metrics: &Metrics) {
        let queued = self.queued();
        metrics.queue_length.set(queued as i64);
        metrics
            .backlog_seconds
            .set(queued as f64 * self.seconds_per_item);
        for (priority, queue) in [
            (Priority::Interactive, &self.interactive),
            (Priority::Batch, &self.batch),
        ] {
            metrics
                .queued_by_priority
                .with_label_values(&[priority.label()])
                .set(queue.len() as i64);
            metrics
                .queued_seconds_by_priority
                .with_label_values(&[priority.label()])
                .set(queue.len() as f64 * self.seconds_per_item);
        }
    }
}

/// Answers expired requests with 504 and forgets those whose client has gone; returns what
/// is left to run.
pub(super) fn drop_dead_jobs(jobs: Vec<Job>, timeout: Duration, metrics: &Metrics) -> Vec<Job> {
    let now = Instant::now();
    let mut live = Vec::with_capacity(jobs.len());
    for job in jobs {
        let waited = now.saturating_duration_since(job.admitted_at);
        if job.reply.is_closed() {
            metrics.reject(RejectReason::Cancelled);
        } else if job.deadline.is_some_and(|d| now > d) {
            // The handler counts the 504 it answers; a client gone meanwhile is a cancellation.
            if job
                .reply
                .send(Err(JobError::Deadline { waited, timeout }))
                .is_err()
            {
                metrics.reject(RejectReason::Cancelled);
            }
        } else {
            live.push(job);
        }
    }
    live
}
