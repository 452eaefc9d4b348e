//! The batcher's own cost per request, with a model that does nothing: admission, the wait for
//! the worker, stacking and converting the batch, converting the answer to 8 bits, splitting it
//! and the reply.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use virtualfit::batcher::{Batcher, BatcherConfig, WorkerThread};
use virtualfit::imaging::{PreparedPair, Rect};
use virtualfit::metrics::Metrics;
use virtualfit::models::{ModelError, TryOnBatch, TryOnModel, MODEL_HEIGHT, MODEL_WIDTH};

/// Answers the person images unchanged.
struct Noop(Device);

impl TryOnModel for Noop {
    fn name(&self) -> &str {
        "noop"
    }
    fn device(&self) -> &Device {
        &self.0
    }
    fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
        Ok(batch.person.clone())
    }
}

fn pair() -> PreparedPair {
    let image =
        Tensor::zeros((MODEL_HEIGHT, MODEL_WIDTH, 3), DType::U8, &Device::Cpu).expect("tensor");
    let mask =
        Tensor::zeros((MODEL_HEIGHT, MODEL_WIDTH, 1), DType::U8, &Device::Cpu).expect("tensor");
    PreparedPair {
        person: image.clone(),
        cloth: image,
        cloth_mask: mask,
        content: Rect {
            x: 0,
            y: 0,
            width: MODEL_WIDTH as u32,
            height: MODEL_HEIGHT as u32,
        },
    }
}

fn start(max_batch_size: usize) -> (Batcher, WorkerThread) {
    let config = BatcherConfig {
        max_batch_size,
        max_batch_delay: Duration::ZERO,
        queue_capacity: 1024,
        request_timeout: Duration::from_secs(30),
        batch_max_wait: Duration::from_secs(600),
        debug_stall_after_calls: None,
        overlap: false,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (batcher, worker) = Batcher::start(
        Box::new(Noop(Device::Cpu)),
        config,
        Metrics::new(),
        move |r| {
            let _ = tx.send(r.is_ok());
        },
    );
    assert!(rx.recv().expect("warm-up"), "warm-up");
    (batcher, worker)
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let input = pair();
    let mut g = c.benchmark_group("batcher");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // `burst` requests submitted at once, answered in batches of up to `max_batch` (1 request:
    // the round trip of a lone request).
    for (max_batch, burst) in [(1usize, 1u64), (1, 32), (8, 32)] {
        let (batcher, _worker) = start(max_batch);
        g.throughput(Throughput::Elements(burst));
        g.bench_with_input(
            BenchmarkId::new(format!("max_batch_{max_batch}"), format!("burst_{burst}")),
            &burst,
            |b, &burst| {
                b.iter(|| {
                    rt.block_on(async {
                        let receivers: Vec<_> = (0..burst)
                            .map(|_| batcher.submit(input.clone()).expect("admitted"))
                            .collect();
                        for rx in receivers {
                            rx.await.expect("answered").expect("image");
                        }
                    })
                })
            },
        );
        batcher.abort_pending();
    }
    g.finish();
}

criterion_group!(batcher_benches, benches);
criterion_main!(batcher_benches);
