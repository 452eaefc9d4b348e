//! CUDA graphs over candle's stream: a forward pass captured once and replayed, so a batch costs
//! one launch instead of hundreds. candle takes part: with its host-to-device cache on
//! ([`warm`]), the small parameter copies that its kernels make are cached by content in an
//! eager run, so a capture finds them on the device and copies nothing from the host.
//! Allocations inside a capture become graph memory nodes (candle allocates on the stream,
//! from the device's pool), freed again on each launch; nothing is allocated at a replay.
//!
//! Without the `cuda` feature every entry is a clear error, and the model code that uses them
//! still compiles.

use candle_core::{Device, Result};

/// A captured, instantiated graph, replayed on the stream it was captured from.
pub struct Graph {
    #[cfg(feature = "cuda")]
    graph: candle_core::cuda_backend::cudarc::driver::CudaGraph,
}

// SAFETY: a graph is only ever used by the thread that owns the model holding it (the
// worker), which may be another thread than the one that built the model; CUDA forbids
// concurrent use of one graph, not its use from another thread, and `&mut`-free replays are
// serialised by the owner's lock.
unsafe impl Send for Graph {}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Graph")
    }
}

/// Lets the device's memory pool keep what it reserves (see `ops::cuda::keep_pool_memory`), so
/// that the eager passes around the graphs ask the driver for no memory in the steady state.
/// Nothing to do on the CPU.
pub fn keep_pool_memory(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return super::cuda::keep_pool_memory(dev);
    }
    let _ = device;
    Ok(())
}

/// Runs `f` with candle's host-to-device cache on: an eager run this way fills the cache that a
/// capture of the same work needs. On the CPU it simply runs `f`.
pub fn warm<T>(device: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let _cache = dev.enable_cuda_graph_htod_cache();
        return f();
    }
    let _ = device;
    f()
}

/// Captures the work that `f` launches on `device`'s stream into a graph (thread-local capture
/// mode: other threads' CUDA calls go on). `f` must not copy between host and device or
/// synchronise; run it once through [`warm`] first. Answers the graph and what `f` answered,
/// whose device memory belongs to the graph: a replay writes it again at the same address.
pub fn capture<T>(device: &Device, f: impl FnOnce() -> Result<T>) -> Result<(Graph, T)> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::sys;
        use candle_core::cuda_backend::WrapErr;
        let Device::Cuda(dev) = device else {
            candle_core::bail!("CUDA graphs need a CUDA device, not {device:?}");
        };
        let stream = dev.cuda_stream();
        stream.synchronize().w()?;
        let _cache = dev.enable_cuda_graph_htod_cache();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .w()?;
        let produced = f();
        // The capture ends whatever `f` answered, so that the stream is usable again.
        let ended = stream.end_capture(
            sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
        );
        let produced = produced.map_err(|e| {
            candle_core::Error::Msg(format!("CUDA graph capture: the pass failed: {e}"))
        })?;
        let graph = ended
            .map_err(|e| candle_core::Error::Msg(format!("CUDA graph capture: {e}")))?
            .ok_or_else(|| candle_core::Error::Msg("CUDA graph capture recorded nothing".into()))?;
        graph.upload().w()?;
        Ok((Graph { graph }, produced))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = f;
        candle_core::bail!("CUDA graphs need a build with --features cuda, not {device:?}")
    }
}

impl Graph {
    /// Launches the graph on its stream (asynchronously, like any kernel).
    pub fn replay(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            use candle_core::cuda_backend::WrapErr;
            self.graph.launch().w()
        }
        #[cfg(not(feature = "cuda"))]
        candle_core::bail!("CUDA graphs need a build with --features cuda")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_runs_the_work_on_the_cpu() {
        let out = warm(&Device::Cpu, || Ok(41 + 1)).expect("runs");
        assert_eq!(out, 42);
    }

    #[test]
    fn capture_on_the_cpu_is_a_clear_error() {
        let e = capture(&Device::Cpu, || Ok(())).expect_err("no graphs on the CPU");
        let text = e.to_string();
        assert!(text.contains("CUDA"), "{text}");
    }
}
