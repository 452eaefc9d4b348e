//! The whole-batch loop, for models that answer a batch in one call: the worker lets a batch
//! fill until it is full or its oldest request has waited `max_batch_delay`, runs it, and
//! answers each request with its image. While a batch runs, the next one accumulates; with
//! `--overlap on` the inputs of the requests queued next are also staged on the device then
//! ([`Stager`]), which leaves what the next batch is to the usual rules.

use std::time::Instant;

use candle_core::Tensor;

use super::queue::Job;
use super::worker::Shared;
use super::{JobError, JobOutput, Stage};
use crate::metrics::RejectReason;
use crate::models::staging::Stager;
use crate::models::{ModelError, ModelInput, TryOnBatch, TryOnModel, MODEL_HEIGHT, MODEL_WIDTH};
use crate::ops::convert::to_u8_images;

/// Runs one full batch of blank inputs so that the first request meets a warm model.
pub(super) fn warm_up(model: &dyn TryOnModel, shared: &Shared) -> Result<(), ModelError> {
    let n = shared.config.max_batch_size.max(1);
    model.prepare_batches(n)?;
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
    // A full batch: the longest call there is.
    shared.warmed_up(elapsed.as_secs_f64() / n as f64, elapsed, elapsed);
    Ok(())
}

pub(super) fn worker_loop(model: &dyn TryOnModel, shared: &Shared) {
    let config = &shared.config;
    let mut stager = if config.overlap {
        match Stager::new(model.device()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "--overlap: no copy stream; staging each batch when it is formed");
                None
            }
        }
    } else {
        None
    };
    loop {
        shared.run_beside();
        let jobs = {
            let mut state = shared.lock();
            while state.queued() == 0 {
                if state.stop {
                    return;
                }
                if !state.beside.is_empty() {
                    break;
                }
                state = shared.wait(state);
            }
            // Let the batch fill until it is full or its oldest request has waited long enough.
            while let Some(oldest) = state.oldest_admission() {
                let waited = oldest.elapsed();
                if state.queued() >= state.batch_cap || waited >= config.max_batch_delay {
                    break;
                }
                state = shared.wait_timeout(state, config.max_batch_delay - waited);
            }
            let cap = state.batch_cap;
            let jobs = state.take_batch(cap, Instant::now());
            state.running += jobs.len();
            state.publish(&shared.metrics);
            jobs
        };
        let taken = jobs.len();
        let live = shared.drop_dead_jobs(jobs);
        if !live.is_empty() {
            run_batch(model, shared, live, stager.as_mut());
        }
        shared.done_running(taken);
    }
}

/// Runs a batch; on a device out-of-memory error it splits the batch in half, lowers the cap
/// and retries each half.
fn run_batch(
    model: &dyn TryOnModel,
    shared: &Shared,
    jobs: Vec<Job>,
    mut stager: Option<&mut Stager>,
) {
    let started = Instant::now();
    let n = jobs.len();
    for job in &jobs {
        job.report(0, 1, Stage::Sampling);
    }
    let result = shared.model_call(|| match stager.as_deref_mut() {
        Some(stager) => forward_staged(model, shared, &jobs, stager),
        None => forward(model, &jobs),
    });
    // The device was busy for this batch whatever its outcome.
    shared.model_worked(started.elapsed(), jobs.iter().map(|j| (j.priority, 1.0)));
    match result {
        Ok(images) => {
            let elapsed = started.elapsed();
            let m = &shared.metrics;
            m.batch_size.observe(n as f64);
            m.batch_duration.observe(elapsed.as_secs_f64());
            shared.item_took(elapsed.as_secs_f64() / n as f64);
            for (job, image) in jobs.into_iter().zip(images) {
                job.report(1, 1, Stage::Sampling);
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
                if !job.answer(Ok(output)) {
                    m.reject(RejectReason::Cancelled);
                }
            }
        }
        Err(e) if e.is_out_of_memory() && n > 1 => {
            let half = shared.split_after_out_of_memory(n, n);
            let mut first = jobs;
            let second = first.split_off(half);
            run_batch(model, shared, first, stager.as_deref_mut());
            run_batch(model, shared, second, stager);
        }
        Err(e) => {
            tracing::error!(batch = n, error = %e, "batch failed");
            let message = e.to_string();
            for job in jobs {
                job.answer(Err(JobError::Model(message.clone())));
            }
        }
    }
}

/// [`forward`] with the inputs staged: while the device computes this batch, the inputs of
/// the requests queued next are staged for the next batch.
fn forward_staged(
    model: &dyn TryOnModel,
    shared: &Shared,
    jobs: &[Job],
    stager: &mut Stager,
) -> Result<Vec<Tensor>, ModelError> {
    let inputs: Vec<&ModelInput> = jobs.iter().map(|j| &j.inputs).collect();
    let (batch, _staging) = stager.batch(&inputs)?;
    // Queued on the device; on a GPU this returns before the device is done.
    let images = to_u8_images(&model.forward(&batch)?)?;
    let upcoming = {
        let state = shared.lock();
        state.upcoming(state.batch_cap)
    };
    if let Err(e) = stager.prestage(&upcoming) {
        // Only an optimisation: the next batch is staged when it is formed instead.
        tracing::debug!(error = %e, "staging the next batch early failed");
    }
    let images = stager.download(&images)?;
    (0..batch.len())
        .map(|i| images.get(i).map_err(ModelError::from))
        .collect()
}

fn forward(model: &dyn TryOnModel, jobs: &[Job]) -> Result<Vec<Tensor>, ModelError> {
    let inputs: Vec<&ModelInput> = jobs.iter().map(|j| &j.inputs).collect();
    let batch = TryOnBatch::from_inputs(&inputs, model.device())?;
    crate::models::forward_u8(model, &batch)
}
