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
//! What is particular to the model is kept together: `warm_up`, `begin`, `step` and `finish`
//! are the only functions that call CatVTON, and `rows_of` the only one that reads its inputs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::queue::{Job, BATCH_ONLY_SHARE};
use super::worker::Shared;
use super::{JobError, JobOutput, Priority};
use crate::metrics::RejectReason;
use crate::models::catvton::{
    CatVton, DiffusionInput, Noise, Resolution, Sample, SamplingParams, DEFAULT_STEPS,
};
use crate::models::{ModelError, WorkItem};

/// One request in the running set.
struct Running {
    job: Job,
    sample: Sample,
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

/// Encodes and samples one step of a small request, so that the first request meets warm
/// kernels, and estimates a request's device time for `Retry-After`.
pub(super) fn warm_up(model: &CatVton, shared: &Shared) -> Result<(), ModelError> {
    let (h, w) = Resolution::Half.size();
    let blank =
        |c: usize| Tensor::zeros((h, w, c), candle_core::DType::U8, &candle_core::Device::Cpu);
    let input = DiffusionInput {
        person: blank(3)?,
        cloth: blank(3)?,
        mask: blank(1)?,
        params: SamplingParams {
            steps: 1,
            guidance: 2.0,
            seed: 0,
        },
    };
    let start = Instant::now();
    let mut sample = model.begin(&input, Noise::seeded(0))?;
    let encoded = start.elapsed();
    model.step(&mut [&mut sample])?;
    let stepped = start.elapsed() - encoded;
    model.finish(&sample)?;
    let coded = start.elapsed() - stepped;
    let decoded = coded.saturating_sub(encoded);
    let estimate = coded.as_secs_f64() + stepped.as_secs_f64() * DEFAULT_STEPS as f64;
    let cap = shared.batch_cap();
    let longest = encoded.max(stepped).max(decoded);
    shared.warmed_up(
        estimate,
        longest,
        longest_call_estimate(encoded, stepped, decoded, sample.rows(), cap),
    );
    Ok(())
}

/// The longest call to expect from a warm-up at half size with `warm_rows` UNet rows: a step
/// of a full row cap (a request wider than the cap runs alone), or a VAE pass, at full size.
/// Both are scaled by the square of the area ratio, the pessimistic end (attention's cost grows
/// with the square of the tokens), and a step by its rows.
fn longest_call_estimate(
    encoded: Duration,
    stepped: Duration,
    decoded: Duration,
    warm_rows: usize,
    cap: usize,
) -> Duration {
    let area = |r: Resolution| {
        let (h, w) = r.size();
        (h * w) as f64
    };
    let size_factor = (area(Resolution::Full) / area(Resolution::Half)).powi(2);
    let row_factor = cap.max(warm_rows) as f64 / warm_rows.max(1) as f64;
    let step = stepped.as_secs_f64() * row_factor;
    let vae = encoded.max(decoded).as_secs_f64();
    Duration::from_secs_f64(step.max(vae) * size_factor)
}

pub(super) fn worker_loop(model: &CatVton, shared: &Shared) {
    let mut running: Vec<Running> = Vec::new();
    loop {
        let Some(new_jobs) = admit(shared, &running) else {
            fail_all(running, shared);
            return;
        };
        for job in live_jobs(new_jobs, shared) {
            let started = Instant::now();
            match begin(model, shared, &job) {
                Ok(sample) => {
                    shared.model_worked(started.elapsed(), [(job.priority, 1.0)]);
                    running.push(Running {
                        job,
                        sample,
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
fn admit(shared: &Shared, running: &[Running]) -> Option<Vec<Job>> {
    let mut state = shared.lock();
    if state.stop {
        return None;
    }
    while running.is_empty() && state.queued() == 0 {
        if state.stop {
            return None;
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
        let rows = rows_of(&job);
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

fn rows_of(job: &Job) -> usize {
    match &job.inputs {
        WorkItem::Diffusion(d) => d.rows(),
        WorkItem::Pair(_) => 1,
    }
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
fn begin(model: &CatVton, shared: &Shared, job: &Job) -> Result<Sample, ModelError> {
    match &job.inputs {
        WorkItem::Diffusion(input) => {
            shared.model_call(|| model.begin(input, Noise::seeded(input.params.seed)))
        }
        WorkItem::Pair(_) => Err(ModelError::WrongInput("catvton".into())),
    }
}

/// One UNet call over `samples`.
fn step(model: &CatVton, shared: &Shared, samples: &mut [&mut Sample]) -> Result<(), ModelError> {
    shared.model_call(|| model.step(samples))
}

/// Decodes a sample that has taken its last step into the request's image.
fn finish(model: &CatVton, shared: &Shared, sample: &Sample) -> Result<Tensor, ModelError> {
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

/// One UNet call per latent size present (requests of one resolution batch together).
fn step_all(model: &CatVton, shared: &Shared, running: &mut [Running]) {
    let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, r) in running.iter().enumerate() {
        groups.entry(r.sample.latent_size()).or_default().push(i);
    }
    for indices in groups.into_values() {
        step_group(model, shared, running, &indices);
    }
}

/// Steps the requests at `indices`; on a device out-of-memory error it halves the group and
/// lowers the row cap, as whole-batch workers do.
fn step_group(model: &CatVton, shared: &Shared, running: &mut [Running], indices: &[usize]) {
    let started = Instant::now();
    let result = {
        let mut picked: Vec<&mut Sample> = running
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
            }
        }
        Err(e) if e.is_out_of_memory() && indices.len() > 1 => {
            let half = shared.split_after_out_of_memory(indices.len(), rows);
            let (first, second) = indices.split_at(half);
            step_group(model, shared, running, first);
            step_group(model, shared, running, second);
        }
        Err(e) => {
            tracing::error!(requests = indices.len(), error = %e, "a UNet step failed");
            let message = e.to_string();
            for &i in indices {
                // Marked failed by exhausting its steps; finish_done answers it.
                running[i].sample.fail(message.clone());
            }
        }
    }
}

/// Decodes and answers the requests that have taken their last step, and those that failed.
fn finish_done(model: &CatVton, shared: &Shared, running: Vec<Running>) -> Vec<Running> {
    let mut kept = Vec::with_capacity(running.len());
    for mut r in running {
        if let Some(message) = r.sample.take_failure() {
            answer(shared, r.job, Err(JobError::Model(message)));
            continue;
        }
        if !r.sample.is_done() {
            kept.push(r);
            continue;
        }
        let decode_started = Instant::now();
        let image = finish(model, shared, &r.sample);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_call_estimate_scales_a_half_size_warm_up_to_a_full_row_cap_at_full_size() {
        let ms = Duration::from_millis;
        // 2 rows warmed up, a cap of 8: a step of 4 times the rows at 4 times the area,
        // counted as 16 times the cost: 100 ms x 4 x 16.
        assert_eq!(
            longest_call_estimate(ms(10), ms(100), ms(20), 2, 8),
            ms(6400)
        );
        // A cap under a request's rows: the request runs alone, at its own rows.
        assert_eq!(
            longest_call_estimate(ms(10), ms(100), ms(20), 2, 1),
            ms(1600)
        );
        // A VAE pass longer than the scaled step sets it.
        assert_eq!(
            longest_call_estimate(ms(500), ms(10), ms(300), 2, 2),
            ms(8000)
        );
    }
}
