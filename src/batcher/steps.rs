//! Step-level batching for diffusion models. A request is dozens of UNet calls; instead of
//! running a batch of requests from first step to last, the worker keeps a running set and
//! makes one UNet call per iteration over everything in it. A new request joins at the next
//! iteration and a finished one leaves at once, each at its own timestep.
//!
//! `--max-batch-size` caps the UNet rows of one call; a request with classifier-free guidance
//! takes two. Queue order, priorities, deadlines (checked when a request is taken from the
//! queue) and the queue metrics are the whole-batch loop's (`queue.rs`); the out-of-memory
//! split and the per-item estimate are the worker's (`worker.rs`).
//!
//! The loop drives any [`StepModel`]: `warm_up`, `begin`, `step` and `finish` are the only
//! functions that call it, and `rows_of` the only one that asks about a request's inputs.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::Tensor;

use super::queue::{Job, BATCH_ONLY_SHARE};
use super::worker::Shared;
use super::{JobError, JobOutput, Priority, Stage};
use crate::metrics::RejectReason;
use crate::models::{ModelError, StepGroup, StepModel, StepState};

/// One request in the running set.
struct Running {
    job: Job,
    sample: Box<dyn StepState>,
    /// Why sampling stopped early, if it did: the request is answered with it.
    failure: Option<String>,
    /// When the request left the queue.
    started: Instant,
    /// Its share of the device time spent so far (each call's time split by rows).
    device_seconds: f64,
    /// Requests in each UNet call it took part in, summed (for its mean batch size).
    batch_sum: usize,
}

impl Running {
    fn rows(&self) -> usize {
        self.sample.rows()
    }
}

/// Runs the model's warm-up, so that the first request meets warm kernels, and keeps its
/// estimate of a request's device time for `Retry-After`.
pub(super) fn warm_up(model: &dyn StepModel, shared: &Shared) -> Result<(), ModelError> {
    let warm = model.warm_up(shared.batch_cap())?;
    shared.warmed_up(
        warm.seconds_per_request,
        warm.longest_call,
        warm.longest_call_estimate,
    );
    Ok(())
}

pub(super) fn worker_loop(model: &dyn StepModel, shared: &Shared) {
    let mut running: Vec<Running> = Vec::new();
    loop {
        shared.run_beside();
        let Some(new_jobs) = admit(model, shared, &running) else {
            fail_all(running, shared);
            return;
        };
        for job in live_jobs(new_jobs, shared) {
            let started = Instant::now();
            job.report(0, 1, Stage::Encode);
            match begin(model, shared, &job) {
                Ok(sample) => {
                    let (done, total) = sample.progress();
                    job.report(done, total, Stage::Sampling);
                    shared.model_worked(started.elapsed(), [(job.priority, 1.0)]);
                    running.push(Running {
                        job,
                        sample,
                        failure: None,
                        started,
                        device_seconds: started.elapsed().as_secs_f64(),
                        batch_sum: 0,
                    });
                }
                Err(e) => {
                    shared.model_worked(started.elapsed(), [(job.priority, 1.0)]);
                    tracing::error!(error = %e, "encoding a diffusion request failed");
                    answer(shared, job, Err(JobError::Model(e.to_string())));
                }
            }
        }
        running = drop_abandoned(running, shared);
        if running.is_empty() {
            continue;
        }
        step_all(model, shared, &mut running);
        running = finish_done(model, shared, running);
    }
}

/// Waits for work when nothing runs, then takes queued requests into the free rows. Answers
/// `None` once the batcher is stopped.
fn admit(model: &dyn StepModel, shared: &Shared, running: &[Running]) -> Option<Vec<Job>> {
    let mut state = shared.lock();
    if state.stop {
        return None;
    }
    while running.is_empty() && state.queued() == 0 {
        if state.stop {
            return None;
        }
        if !state.beside.is_empty() {
            return Some(Vec::new());
        }
        state = shared.wait(state);
    }
    let cap = state.batch_cap;
    let mut used: usize = running.iter().map(Running::rows).sum();
    let mut batch_rows: usize = running
        .iter()
        .filter(|r| r.job.priority == Priority::Batch)
        .map(Running::rows)
        .sum();
    let now = Instant::now();
    let batch_share = (cap / BATCH_ONLY_SHARE).max(2);
    let mut taken = Vec::new();
    loop {
        let Some(job) = state.take_batch(1, now).pop() else {
            break;
        };
        let rows = rows_of(model, &job);
        // A request wider than the cap still runs, alone.
        let fits = used + rows <= cap || (used == 0 && taken.is_empty());
        // While interactive requests arrive, batch work keeps to a share of the rows, so a
        // request arriving meanwhile finds room at the next step.
        let plain_batch = job.priority == Priority::Batch && !job.promoted(now);
        let within_share =
            !plain_batch || !state.interactive_flows(now) || batch_rows + rows <= batch_share;
        if !fits || !within_share {
            state.put_back(job);
            break;
        }
        used += rows;
        if plain_batch {
            batch_rows += rows;
        }
        taken.push(job);
    }
    state.running += taken.len();
    state.publish(&shared.metrics);
    Some(taken)
}

/// A request's rows; one when the model cannot tell (its error comes at `begin`).
fn rows_of(model: &dyn StepModel, job: &Job) -> usize {
    model.rows(&job.inputs).unwrap_or(1)
}

/// Answers expired requests and forgets those whose client has gone (see
/// [`Shared::drop_dead_jobs`]); what is left starts sampling.
fn live_jobs(jobs: Vec<Job>, shared: &Shared) -> Vec<Job> {
    let taken = jobs.len();
    let live = shared.drop_dead_jobs(jobs);
    shared.done_running(taken - live.len());
    live
}

/// Encodes a request and draws its noise: its first call, before any step.
fn begin(
    model: &dyn StepModel,
    shared: &Shared,
    job: &Job,
) -> Result<Box<dyn StepState>, ModelError> {
    shared.model_call(|| model.begin(&job.inputs))
}

/// One model call over `samples`.
fn step(
    model: &dyn StepModel,
    shared: &Shared,
    samples: &mut [&mut Box<dyn StepState>],
) -> Result<(), ModelError> {
    shared.model_call(|| model.step(samples))
}

/// Decodes a sample that has taken its last step into the request's image.
fn finish(
    model: &dyn StepModel,
    shared: &Shared,
    sample: &dyn StepState,
) -> Result<Tensor, ModelError> {
    shared.model_call(|| model.finish(sample))
}

/// Sends a request its answer; it no longer counts as running.
fn answer(shared: &Shared, job: Job, result: Result<JobOutput, JobError>) {
    shared.done_running(1);
    if !job.answer(result) {
        shared.metrics.reject(RejectReason::Cancelled);
    }
}

/// Stops sampling requests whose client has gone: the rest of their steps would be wasted.
fn drop_abandoned(running: Vec<Running>, shared: &Shared) -> Vec<Running> {
    let mut kept = Vec::with_capacity(running.len());
    for r in running {
        if r.job.abandoned() {
            shared.metrics.reject(RejectReason::Cancelled);
            shared.done_running(1);
        } else {
            kept.push(r);
        }
    }
    kept
}

/// Answers everything still running with [`JobError::ShutDown`] (the batcher was stopped).
fn fail_all(running: Vec<Running>, shared: &Shared) {
    for r in running {
        answer(shared, r.job, Err(JobError::ShutDown));
    }
}

/// One model call per group present (e.g. requests of one resolution step together, and a
/// model's full and cached passes apart).
fn step_all(model: &dyn StepModel, shared: &Shared, running: &mut [Running]) {
    let mut groups: BTreeMap<StepGroup, Vec<usize>> = BTreeMap::new();
    for (i, r) in running.iter().enumerate() {
        groups.entry(r.sample.group()).or_default().push(i);
    }
    for indices in groups.into_values() {
        step_group(model, shared, running, &indices);
    }
}

/// Steps the requests at `indices`; on a device out-of-memory error it halves the group and
/// lowers the row cap, as whole-batch workers do.
fn step_group(model: &dyn StepModel, shared: &Shared, running: &mut [Running], indices: &[usize]) {
    let started = Instant::now();
    let result = {
        let mut picked: Vec<&mut Box<dyn StepState>> = running
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| indices.contains(i))
            .map(|(_, r)| &mut r.sample)
            .collect();
        step(model, shared, &mut picked)
    };
    let elapsed = started.elapsed();
    shared.model_worked(
        elapsed,
        indices
            .iter()
            .map(|&i| (running[i].job.priority, running[i].rows() as f64)),
    );
    let rows: usize = indices.iter().map(|&i| running[i].rows()).sum();
    match result {
        Ok(()) => {
            let m = &shared.metrics;
            m.unet_steps_total.inc_by(indices.len() as u64);
            m.unet_batch_rows.observe(rows as f64);
            m.batch_size.observe(indices.len() as f64);
            m.batch_duration.observe(elapsed.as_secs_f64());
            for &i in indices {
                let r = &mut running[i];
                r.device_seconds += elapsed.as_secs_f64() * r.rows() as f64 / rows as f64;
                r.batch_sum += indices.len();
                let (done, total) = r.sample.progress();
                r.job.report(done, total, Stage::Sampling);
            }
        }
        Err(e) if e.is_out_of_memory() && indices.len() > 1 => {
            let half = shared.split_after_out_of_memory(indices.len(), rows);
            let (first, second) = indices.split_at(half);
            step_group(model, shared, running, first);
            step_group(model, shared, running, second);
        }
        Err(e) => {
            tracing::error!(requests = indices.len(), error = %e, "a step failed");
            let message = e.to_string();
            for &i in indices {
                // Marked failed; finish_done answers it.
                running[i].failure = Some(message.clone());
            }
        }
    }
}

/// Decodes and answers the requests that have taken their last step, and those that failed.
fn finish_done(model: &dyn StepModel, shared: &Shared, running: Vec<Running>) -> Vec<Running> {
    let mut kept = Vec::with_capacity(running.len());
    for mut r in running {
        if let Some(message) = r.failure.take() {
            answer(shared, r.job, Err(JobError::Model(message)));
            continue;
        }
        if !r.sample.is_done() {
            kept.push(r);
            continue;
        }
        let (done, total) = r.sample.progress();
        r.job.report(done, total, Stage::Decode);
        let decode_started = Instant::now();
        let image = finish(model, shared, r.sample.as_ref());
        let decode = decode_started.elapsed();
        shared.model_worked(decode, [(r.job.priority, 1.0)]);
        r.device_seconds += decode.as_secs_f64();
        match image {
            Ok(image) => {
                shared.item_took(r.device_seconds);
                let queue_time = r.started.saturating_duration_since(r.job.admitted_at);
                let priority = r.job.priority.label();
                let m = &shared.metrics;
                m.queue_duration
                    .with_label_values(&[priority])
                    .observe(queue_time.as_secs_f64());
                m.batch_items_total.with_label_values(&[priority]).inc();
                let (steps, _) = r.sample.progress();
                let output = JobOutput {
                    image,
                    batch_size: r.batch_sum.div_ceil(steps.max(1)).max(1),
                    queue_time,
                    inference_time: r.started.elapsed(),
                };
                answer(shared, r.job, Ok(output));
            }
            Err(e) => {
                tracing::error!(error = %e, "decoding a diffusion request failed");
                answer(shared, r.job, Err(JobError::Model(e.to_string())));
            }
        }
    }
    kept
}
