//! Person masks on the worker: [`WorkerMasker`] wraps the model's masker so that its device
//! work (the human parsers and DensePose) runs on the worker thread between model calls, on
//! the model's device, instead of on a thread of its own that would contend for it. Photos that
//! arrive while the worker is busy wait together and go through the masker as one batch.
//!
//! The callers (the decode threads of `/tryon`, jobs and `/v1/masks`) block until their answer
//! comes back. At most one masker call is queued beside the model at a time; when it finishes
//! with photos still waiting, it queues the next, so the model gets a call in between.

use std::sync::mpsc::{sync_channel, Receiver as AnswerReceiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};

use image::{GrayImage, RgbImage};

use super::Batcher;
use crate::metrics::Metrics;
use crate::models::{MaskQuery, PersonMasker, RequestOptions};

/// The most photos one masker call takes. The call holds the worker (and with it every running
/// diffusion step) for its whole length, and on a CPU the parsers take seconds per photo, so
/// a call stays well under the liveness bound's floor.
pub const MASK_BATCH_MAX: usize = 4;

type Answer = Result<GrayImage, String>;

/// The model's masker, run on the batcher's worker.
pub struct WorkerMasker {
    inner: Arc<dyn PersonMasker>,
    batcher: Batcher,
    waiting: Arc<Mutex<Waiting>>,
    metrics: Metrics,
}

/// Photos waiting for the masker, and whether a call for them is queued on the worker.
#[derive(Default)]
struct Waiting {
    queries: Vec<(MaskQuery, SyncSender<Answer>)>,
    scheduled: bool,
}

impl WorkerMasker {
    pub fn new(inner: Arc<dyn PersonMasker>, batcher: Batcher, metrics: Metrics) -> Self {
        WorkerMasker {
            inner,
            batcher,
            waiting: Arc::default(),
            metrics,
        }
    }

    /// Queues `queries` for the worker and waits for their answers.
    fn ask(&self, queries: Vec<MaskQuery>) -> Vec<Answer> {
        if queries.is_empty() {
            return Vec::new();
        }
        let receivers: Vec<AnswerReceiver<Answer>> = {
            let mut waiting = lock(&self.waiting);
            let receivers = queries
                .into_iter()
                .map(|query| {
                    let (tx, rx) = sync_channel(1);
                    waiting.queries.push((query, tx));
                    rx
                })
                .collect();
            let schedule = !waiting.scheduled;
            waiting.scheduled = true;
            drop(waiting);
            if schedule {
                self.call().schedule();
            }
            receivers
        };
        receivers
            .into_iter()
            .map(|rx| {
                rx.recv().unwrap_or_else(|_| {
                    Err("the model worker stopped before the mask was made".into())
                })
            })
            .collect()
    }

    fn call(&self) -> MaskerCall {
        MaskerCall {
            inner: self.inner.clone(),
            batcher: self.batcher.clone(),
            waiting: self.waiting.clone(),
            metrics: self.metrics.clone(),
            finished: false,
        }
    }
}

/// One masker call's worth of state, moved into the task the worker runs. Dropped without
/// having run (the worker stopped, or refused it, or the masker panicked), it answers every
/// waiting photo with an error, so that no caller waits for ever.
struct MaskerCall {
    inner: Arc<dyn PersonMasker>,
    batcher: Batcher,
    waiting: Arc<Mutex<Waiting>>,
    metrics: Metrics,
    finished: bool,
}

impl MaskerCall {
    /// Queues this call on the worker.
    fn schedule(self) {
        let batcher = self.batcher.clone();
        // Refused only when the worker is stopping: the dropped call answers the waiters.
        let _ = batcher.run_beside(Box::new(move || self.run()));
    }

    /// On the worker: runs the masker over up to [`MASK_BATCH_MAX`] waiting photos, answers
    /// them, and queues the next call if more are waiting.
    fn run(mut self) {
        let batch: Vec<(MaskQuery, SyncSender<Answer>)> = {
            let mut waiting = lock(&self.waiting);
            let n = waiting.queries.len().min(MASK_BATCH_MAX);
            waiting.queries.drain(..n).collect()
        };
        if !batch.is_empty() {
            let (queries, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            self.metrics.mask_batch_size.observe(queries.len() as f64);
            let _span = tracing::debug_span!("masks", photos = queries.len()).entered();
            let answers = self.inner.masks(&queries);
            // A masker that answers fewer drops the other senders: their waiters get an error.
            for (tx, answer) in senders.into_iter().zip(answers) {
                // The waiter may have gone; nothing to answer then.
                let _ = tx.send(answer);
            }
        }
        let more = {
            let mut waiting = lock(&self.waiting);
            waiting.scheduled = !waiting.queries.is_empty();
            waiting.scheduled
        };
        if more {
            self.schedule();
        } else {
            self.finished = true;
        }
    }
}

impl Drop for MaskerCall {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut waiting = lock(&self.waiting);
        waiting.scheduled = false;
        for (_, tx) in waiting.queries.drain(..) {
            let _ = tx.send(Err(
                "the model worker stopped before the mask was made".into()
            ));
        }
    }
}

fn lock(waiting: &Mutex<Waiting>) -> MutexGuard<'_, Waiting> {
    // The lock guards plain data; a panic elsewhere leaves it usable.
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

impl PersonMasker for WorkerMasker {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn mask(&self, person: &RgbImage, options: &RequestOptions) -> Result<GrayImage, String> {
        self.ask(vec![MaskQuery {
            person: person.clone(),
            options: options.clone(),
            labels: None,
        }])
        .pop()
        .unwrap_or_else(|| Err("no answer from the masker".into()))
    }

    fn label_maps(&self) -> &'static [&'static str] {
        self.inner.label_maps()
    }

    fn label_map(&self, person: &RgbImage, name: &str) -> Result<Option<GrayImage>, String> {
        if !self.label_maps().contains(&name) {
            return Ok(None);
        }
        self.ask(vec![MaskQuery {
            person: person.clone(),
            options: RequestOptions::default(),
            labels: Some(name.to_string()),
        }])
        .pop()
        .unwrap_or_else(|| Err("no answer from the masker".into()))
        .map(Some)
    }

    fn masks(&self, queries: &[MaskQuery]) -> Vec<Answer> {
        self.ask(queries.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::{BatcherConfig, WorkerThread};
    use crate::models::{ModelError, TryOnBatch, TryOnModel};
    use candle_core::{Device, Tensor};
    use std::sync::mpsc::channel;
    use std::time::Duration;

    /// A whole-batch model that answers its input, so that the worker has a model to own.
    struct Echo(Device);

    impl TryOnModel for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn device(&self) -> &Device {
            &self.0
        }
        fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
            Ok(batch.person.clone())
        }
    }

    /// A masker whose mask is the photo's first red value everywhere; it records the size and
    /// thread of each call, and panics on a photo whose red value is 13.
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<(usize, Option<String>)>>,
    }

    impl PersonMasker for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn mask(&self, person: &RgbImage, _: &RequestOptions) -> Result<GrayImage, String> {
            assert_ne!(
                person.get_pixel(0, 0)[0],
                13,
                "the photo the masker cannot take"
            );
            Ok(GrayImage::from_pixel(
                2,
                2,
                image::Luma([person.get_pixel(0, 0)[0]]),
            ))
        }
        fn label_maps(&self) -> &'static [&'static str] {
            &["parts"]
        }
        fn label_map(&self, _: &RgbImage, _: &str) -> Result<Option<GrayImage>, String> {
            Ok(Some(GrayImage::from_pixel(2, 2, image::Luma([200]))))
        }
        fn masks(&self, queries: &[MaskQuery]) -> Vec<Result<GrayImage, String>> {
            let thread = std::thread::current().name().map(str::to_string);
            self.calls
                .lock()
                .expect("lock")
                .push((queries.len(), thread));
            queries.iter().map(|q| q.answer_with(self)).collect()
        }
    }

    fn photo(red: u8) -> RgbImage {
        RgbImage::from_pixel(3, 3, image::Rgb([red, 0, 0]))
    }

    fn start(inner: Arc<Recording>) -> (Arc<WorkerMasker>, Batcher, WorkerThread, Metrics) {
        let metrics = Metrics::new();
        let config = BatcherConfig {
            max_batch_size: 2,
            max_batch_delay: Duration::from_millis(1),
            queue_capacity: 8,
            request_timeout: Duration::from_secs(30),
            batch_max_wait: Duration::from_secs(60),
            debug_stall_after_calls: None,
            overlap: false,
        };
        let (ready_tx, ready_rx) = channel();
        let (batcher, worker) = Batcher::start(
            Box::new(Echo(Device::Cpu)),
            config,
            metrics.clone(),
            move |r| {
                let _ = ready_tx.send(r.is_ok());
            },
        );
        assert!(ready_rx.recv().expect("warm-up result"));
        let masker = WorkerMasker::new(inner, batcher.clone(), metrics.clone());
        (Arc::new(masker), batcher, worker, metrics)
    }

    /// Holds the worker in a task until the returned sender is dropped or sent to.
    fn hold_worker(batcher: &Batcher) -> std::sync::mpsc::Sender<()> {
        let (release, held) = channel::<()>();
        let (started_tx, started_rx) = channel();
        batcher
            .run_beside(Box::new(move || {
                let _ = started_tx.send(());
                let _ = held.recv();
            }))
            .expect("queued");
        started_rx.recv().expect("the worker took the task");
        release
    }

    fn wait_until_waiting(masker: &WorkerMasker, n: usize) {
        for _ in 0..2_000 {
            if lock(&masker.waiting).queries.len() == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{n} photos never waited together");
    }

    /// Asks for a mask of each photo from a thread of its own.
    fn ask_each(
        masker: &Arc<WorkerMasker>,
        reds: &[u8],
    ) -> Vec<std::thread::JoinHandle<Result<GrayImage, String>>> {
        reds.iter()
            .map(|&red| {
                let masker = masker.clone();
                std::thread::spawn(move || masker.mask(&photo(red), &RequestOptions::default()))
            })
            .collect()
    }

    #[test]
    fn photos_that_wait_together_go_through_one_call_on_the_worker() {
        let inner = Arc::new(Recording::default());
        let (masker, batcher, _worker, metrics) = start(inner.clone());
        let release = hold_worker(&batcher);
        let reds = [10, 20, 30, 40, 50, 60];
        let askers = ask_each(&masker, &reds);
        wait_until_waiting(&masker, reds.len());
        drop(release);
        for (asker, red) in askers.into_iter().zip(reds) {
            let mask = asker.join().expect("no panic").expect("a mask");
            assert_eq!(
                mask.get_pixel(1, 1)[0],
                red,
                "each photo gets its own answer"
            );
        }
        let calls = inner.calls.lock().expect("lock").clone();
        let worker = Some("virtualfit-worker".to_string());
        assert_eq!(
            calls,
            vec![(MASK_BATCH_MAX, worker.clone()), (2, worker)],
            "six waiting photos: one full call, then the rest, both on the worker"
        );
        assert_eq!(metrics.mask_batch_size.get_sample_count(), 2);
        assert_eq!(metrics.mask_batch_size.get_sample_sum(), 6.0);

        // Label maps go the same way.
        let map = masker.label_map(&photo(1), "parts").expect("answered");
        assert_eq!(map.map(|m| m.get_pixel(0, 0)[0]), Some(200));
        assert_eq!(masker.label_map(&photo(1), "depth"), Ok(None));
    }

    #[test]
    fn a_panicking_masker_fails_its_photos_and_the_worker_keeps_serving() {
        let inner = Arc::new(Recording::default());
        let (masker, batcher, _worker, _metrics) = start(inner.clone());
        let release = hold_worker(&batcher);
        let askers = ask_each(&masker, &[13, 14]);
        wait_until_waiting(&masker, 2);
        drop(release);
        for asker in askers {
            assert!(asker.join().expect("no panic").is_err());
        }
        // The worker survived: the next photo is served, on it.
        let mask = masker.mask(&photo(7), &RequestOptions::default());
        assert_eq!(mask.map(|m| m.get_pixel(0, 0)[0]), Ok(7));
        let calls = inner.calls.lock().expect("lock").clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].1.as_deref(), Some("virtualfit-worker"));
    }

    #[test]
    fn once_the_worker_has_stopped_a_mask_is_an_error_not_a_wait() {
        let inner = Arc::new(Recording::default());
        let (masker, batcher, worker, _metrics) = start(inner.clone());
        // A photo queued beside the model before the stop still runs before the worker leaves.
        let release = hold_worker(&batcher);
        let askers = ask_each(&masker, &[5]);
        wait_until_waiting(&masker, 1);
        batcher.abort_pending();
        drop(release);
        let answer = askers.into_iter().next().expect("one").join();
        assert_eq!(
            answer.expect("no panic").map(|m| m.get_pixel(0, 0)[0]),
            Ok(5)
        );
        for _ in 0..2_000 {
            if worker.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(worker.is_finished());
        // After it, the masker refuses at once.
        let late = masker.mask(&photo(6), &RequestOptions::default());
        assert!(late.is_err_and(|e| e.contains("stopped")));
        assert_eq!(inner.calls.lock().expect("lock").len(), 1);
        assert!(
            !lock(&masker.waiting).scheduled,
            "a later photo schedules anew"
        );
    }

    #[test]
    fn a_call_dropped_unrun_answers_every_waiting_photo() {
        let inner = Arc::new(Recording::default());
        let (masker, _batcher, _worker, _metrics) = start(inner.clone());
        let (tx, rx) = sync_channel(1);
        {
            let mut waiting = lock(&masker.waiting);
            let query = MaskQuery {
                person: photo(3),
                options: RequestOptions::default(),
                labels: None,
            };
            waiting.queries.push((query, tx));
            waiting.scheduled = true;
        }
        // What the worker does with the tasks still queued when it exits.
        drop(masker.call());
        assert!(rx.recv().expect("answered").is_err());
        assert!(!lock(&masker.waiting).scheduled);
        assert!(inner.calls.lock().expect("lock").is_empty());
    }
}
