//! Batch-size buckets for whole-batch models, and the CUDA graphs behind `--cuda-graphs on`.
//!
//! A CUDA graph replays one fixed batch size, so batch sizes are rounded up to a few buckets
//! (powers of two up to `--max-batch-size`, and that size): a batch of 5 runs as 8, with three
//! rows of padding whose outputs are dropped. Each row of a whole-batch model is computed from
//! its own inputs only, so the real rows' outputs do not depend on the padding
//! (`tests/models/buckets.rs` checks it on the CPU). With graphs, each bucket is captured once at
//! warm-up into static input and output tensors; a batch is copied into the inputs, the graph
//! replayed and the output rows copied out. Without them ([`Bucketed::padding`]) the same padding
//! runs eagerly, which is how the CPU tests it.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use super::{LoadedModel, ModelError, TryOnBatch, TryOnModel, MODEL_HEIGHT, MODEL_WIDTH};
use crate::ops::cuda_graph::{self, Graph};

/// The bucket sizes for batches of up to `max_batch`: 1, 2, 4, … below it, and `max_batch`.
pub fn buckets(max_batch: usize) -> Vec<usize> {
    let max_batch = max_batch.max(1);
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| b.checked_mul(2))
        .take_while(|&b| b < max_batch)
        .collect();
    sizes.push(max_batch);
    sizes
}

/// The smallest bucket that holds `n` rows; `None` past the largest (or for an empty batch).
pub fn bucket_for(buckets: &[usize], n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    buckets.iter().copied().filter(|&b| b >= n).min()
}

/// `--cuda-graphs`: the model as loaded when off; on, a whole-batch model that replays a graph
/// per bucket of batches up to `max_batch`. A step model is refused: its calls change shape
/// from step to step.
pub fn with_cuda_graphs(
    model: LoadedModel,
    on: bool,
    max_batch: usize,
) -> Result<LoadedModel, ModelError> {
    if !on {
        return Ok(model);
    }
    model.require_whole_batch("--cuda-graphs on")?;
    Ok(LoadedModel::Batch(Box::new(Bucketed::graphed(
        model.into_batch()?,
        max_batch,
    )?)))
}

/// One bucket's captured pass: the inputs it reads, the output it writes, and the graph.
struct Captured {
    inputs: TryOnBatch,
    output: Tensor,
    graph: Graph,
}

/// A whole-batch model whose batches run at bucket sizes, replayed from CUDA graphs or padded
/// eagerly.
pub struct Bucketed {
    inner: Box<dyn TryOnModel>,
    buckets: Vec<usize>,
    /// `Some` with `--cuda-graphs on`: the captured bucket passes, by bucket (filled at warm-up).
    graphs: Option<Mutex<Vec<(usize, Captured)>>>,
}

impl Bucketed {
    /// Pads every batch to its bucket and runs it eagerly (no graphs): the padding alone.
    pub fn padding(inner: Box<dyn TryOnModel>, max_batch: usize) -> Self {
        Self {
            inner,
            buckets: buckets(max_batch),
            graphs: None,
        }
    }

    /// `--cuda-graphs on`: each bucket is captured as a CUDA graph at warm-up and replayed. The
    /// model must run on a CUDA device.
    pub fn graphed(inner: Box<dyn TryOnModel>, max_batch: usize) -> Result<Self, ModelError> {
        if !inner.device().is_cuda() {
            return Err(ModelError::Candle(candle_core::Error::Msg(format!(
                "--cuda-graphs on needs a CUDA device; the model runs on {:?}",
                inner.device()
            ))));
        }
        cuda_graph::keep_pool_memory(inner.device())?;
        Ok(Self {
            inner,
            buckets: buckets(max_batch),
            graphs: Some(Mutex::new(Vec::new())),
        })
    }

    /// The bucket sizes.
    pub fn bucket_sizes(&self) -> &[usize] {
        &self.buckets
    }

    /// Bucket `b`'s static inputs and output, after two eager passes on them that fill candle's
    /// caches and any per-shape plans of the ops.
    fn warm_bucket(&self, b: usize) -> Result<(TryOnBatch, Tensor), ModelError> {
        let device = self.inner.device();
        let zeros = |c: usize| Tensor::zeros((b, c, MODEL_HEIGHT, MODEL_WIDTH), DType::F32, device);
        let inputs = TryOnBatch {
            person: zeros(3)?,
            cloth: zeros(3)?,
            cloth_mask: zeros(1)?,
        };
        let output = zeros(3)?;
        for _ in 0..2 {
            cuda_graph::warm(device, || {
                self.inner
                    .forward(&inputs)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            })?;
        }
        Ok((inputs, output))
    }

    /// Captures bucket `b`'s pass over its warmed static tensors.
    fn capture(&self, inputs: TryOnBatch, output: Tensor) -> Result<Captured, ModelError> {
        let (graph, ()) = cuda_graph::capture(self.inner.device(), || {
            let y = self
                .inner
                .forward(&inputs)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            // Into the static output, so that no allocation made in the graph outlives it.
            output.slice_set(&y.to_dtype(DType::F32)?.contiguous()?, 0, 0)
        })?;
        Ok(Captured {
            inputs,
            output,
            graph,
        })
    }

    /// Replays bucket `b`'s graph for `batch` (at most `b` rows of the capture's shape).
    fn replay(&self, captured: &Captured, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
        let n = batch.len();
        let fill = |dst: &Tensor, src: &Tensor| dst.slice_set(&src.contiguous()?, 0, 0);
        // Rows past `n` keep an earlier batch's inputs: valid images whose outputs are dropped.
        fill(&captured.inputs.person, &batch.person)?;
        fill(&captured.inputs.cloth, &batch.cloth)?;
        fill(&captured.inputs.cloth_mask, &batch.cloth_mask)?;
        captured.graph.replay()?;
        // A copy: the next replay writes the static output again.
        Ok(captured.output.narrow(0, 0, n)?.copy()?)
    }

    /// The eager pass at bucket size: the batch padded with zero rows, the padding dropped.
    fn padded_forward(&self, batch: &TryOnBatch, b: usize) -> Result<Tensor, ModelError> {
        let n = batch.len();
        if n == b {
            return self.inner.forward(batch);
        }
        let pad = |t: &Tensor| -> candle_core::Result<Tensor> {
            let mut dims = t.dims().to_vec();
            dims[0] = b - n;
            Tensor::cat(&[t, &Tensor::zeros(dims, t.dtype(), t.device())?], 0)
        };
        let padded = TryOnBatch {
            person: pad(&batch.person)?,
            cloth: pad(&batch.cloth)?,
            cloth_mask: pad(&batch.cloth_mask)?,
        };
        Ok(self.inner.forward(&padded)?.narrow(0, 0, n)?)
    }

    /// Whether `batch` has the shape the graphs were captured at.
    fn fits_capture(captured: &Captured, batch: &TryOnBatch) -> bool {
        let rest = |t: &Tensor| t.dims().get(1..).map(<[usize]>::to_vec);
        rest(&captured.inputs.person) == rest(&batch.person)
            && rest(&captured.inputs.cloth_mask) == rest(&batch.cloth_mask)
            && batch.person.dtype() == DType::F32
    }
}

impl TryOnModel for Bucketed {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn device(&self) -> &Device {
        self.inner.device()
    }

    fn prepare_batches(&self, max_batch: usize) -> Result<(), ModelError> {
        self.inner.prepare_batches(max_batch)?;
        let Some(graphs) = &self.graphs else {
            return Ok(());
        };
        let mut graphs = graphs.lock().unwrap_or_else(|p| p.into_inner());
        let failed = |b: usize, e: ModelError| {
            ModelError::Candle(candle_core::Error::Msg(format!(
                "capturing the CUDA graph of batch size {b} failed ({e}); run with --cuda-graphs off"
            )))
        };
        // Every bucket runs eagerly before any is captured: the ops' per-shape plans and
        // workspaces (cuDNN's) are final before a graph records their addresses.
        let started = std::time::Instant::now();
        let mut warmed = Vec::new();
        for &b in &self.buckets {
            if !graphs.iter().any(|(size, _)| *size == b) {
                warmed.push((b, self.warm_bucket(b).map_err(|e| failed(b, e))?));
            }
        }
        for (b, (inputs, output)) in warmed {
            let captured = self.capture(inputs, output).map_err(|e| failed(b, e))?;
            graphs.push((b, captured));
        }
        tracing::info!(
            buckets = ?self.buckets,
            seconds = started.elapsed().as_secs_f64(),
            "CUDA graphs captured, one per batch-size bucket"
        );
        Ok(())
    }

    fn forward(&self, batch: &TryOnBatch) -> Result<Tensor, ModelError> {
        let Some(b) = bucket_for(&self.buckets, batch.len()) else {
            return self.inner.forward(batch);
        };
        if let Some(graphs) = &self.graphs {
            let graphs = graphs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, captured)) = graphs.iter().find(|(size, _)| *size == b) {
                if Self::fits_capture(captured, batch) {
                    return self.replay(captured, batch);
                }
            }
        }
        self.padded_forward(batch, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_and_overlap_refuse_a_step_model_and_graphs_need_a_gpu() {
        let steps = LoadedModel::Steps(Box::new(crate::models::identity_steps::IdentitySteps));
        let e = steps
            .require_whole_batch("--overlap on")
            .expect_err("a step model");
        assert!(
            e.to_string()
                .contains("--overlap on applies to whole-batch models"),
            "{e}"
        );
        let Err(e) = with_cuda_graphs(steps, true, 8) else {
            panic!("a step model with graphs");
        };
        assert!(e.to_string().contains("--cuda-graphs on applies"), "{e}");
        // Off: the model as loaded, whatever it is.
        let steps = LoadedModel::Steps(Box::new(crate::models::identity_steps::IdentitySteps));
        assert!(matches!(
            with_cuda_graphs(steps, false, 8),
            Ok(LoadedModel::Steps(_))
        ));
        // On the CPU a whole-batch model cannot have graphs.
        let overlay = || {
            LoadedModel::Batch(Box::new(crate::models::overlay::OverlayModel::new(
                Device::Cpu,
            )))
        };
        assert!(overlay().require_whole_batch("--overlap on").is_ok());
        let Err(e) = with_cuda_graphs(overlay(), true, 8) else {
            panic!("graphs on the CPU");
        };
        assert!(e.to_string().contains("needs a CUDA device"), "{e}");
    }

    #[test]
    fn buckets_are_powers_of_two_and_the_cap() {
        assert_eq!(buckets(1), vec![1]);
        assert_eq!(buckets(8), vec![1, 2, 4, 8]);
        assert_eq!(buckets(32), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(buckets(12), vec![1, 2, 4, 8, 12]);
        assert_eq!(buckets(0), vec![1]);
    }

    #[test]
    fn a_batch_goes_to_the_smallest_bucket_that_holds_it() {
        let b = buckets(12);
        assert_eq!(bucket_for(&b, 1), Some(1));
        assert_eq!(bucket_for(&b, 3), Some(4));
        assert_eq!(bucket_for(&b, 5), Some(8));
        assert_eq!(bucket_for(&b, 8), Some(8));
        assert_eq!(bucket_for(&b, 9), Some(12));
        assert_eq!(bucket_for(&b, 13), None);
        assert_eq!(bucket_for(&b, 0), None);
    }
}
