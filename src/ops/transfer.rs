//! Host↔device copies of 8-bit images through pinned buffers on a second stream (`--overlap
//! on`), so that the next batch's inputs cross the bus while candle's stream computes the
//! current one. Only bytes cross: the conversion to the model's values runs on the device
//! (`ops::convert`).
//!
//! Ordering, with cudarc's per-use event tracking off (it would add an event record and wait to
//! every kernel launch):
//! - an upload allocates its device buffer on the copy stream, copies into it there, and makes
//!   candle's stream wait for that copy before anything enqueued later;
//! - the uploaded tensor is freed (on the copy stream) only after the host has waited for the
//!   batch that read it, so the free cannot overtake the reads;
//! - a download copies on the copy stream after an event that candle's stream records once the
//!   output is written, into a pinned buffer that the host reads after the copy's event.

use candle_core::{Device, Result, Tensor};

/// The copy stream and its pinned buffers, for one CUDA device.
pub struct CopyStream {
    #[cfg(feature = "cuda")]
    inner: imp::Inner,
}

impl std::fmt::Debug for CopyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CopyStream")
    }
}

impl CopyStream {
    /// A copy stream beside `device`'s stream; a CUDA device only. Call [`prepare_device`]
    /// on the device before the model is loaded.
    pub fn new(device: &Device) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            Ok(Self {
                inner: imp::Inner::new(device)?,
            })
        }
        #[cfg(not(feature = "cuda"))]
        candle_core::bail!("a copy stream needs a CUDA device, not {device:?}")
    }

    /// The rows (contiguous `H×W×C` u8 CPU tensors of one shape) as one `N×H×W×C` u8 tensor on
    /// the device, copied through a pinned buffer on the copy stream; candle's stream waits for
    /// the copy before any work enqueued after this call.
    pub fn upload(&mut self, rows: &[&Tensor]) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        {
            self.inner.upload(rows)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = rows;
            candle_core::bail!("a copy stream needs a CUDA device")
        }
    }

    /// A u8 device tensor back on the CPU, copied on the copy stream through a pinned buffer
    /// once candle's stream has written it.
    pub fn download(&mut self, images: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        {
            self.inner.download(images)
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = images;
            candle_core::bail!("a copy stream needs a CUDA device")
        }
    }
}

/// Readies a freshly opened device for a copy stream: turns cudarc's per-use event tracking
/// off (the ordering is explicit, see the module's comment). Does nothing on the CPU.
pub fn prepare_device(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        // SAFETY: every cross-stream use is ordered by the explicit events of this module: the
        // copy stream only touches its own pinned buffers and the device buffers it allocates,
        // candle's stream waits for each upload, and a download waits for candle's stream.
        unsafe { dev.disable_event_tracking() };
    }
    let _ = device;
}

/// The bytes of `rows` (contiguous u8 tensors of one shape) one after another into `out`,
/// which must hold exactly their total; answers the shape of one row.
pub fn stack_bytes(rows: &[&Tensor], out: &mut [u8]) -> Result<Vec<usize>> {
    let Some(first) = rows.first() else {
        candle_core::bail!("stack_bytes: no rows");
    };
    let row_dims = first.dims().to_vec();
    let row_len = first.elem_count();
    if out.len() != row_len * rows.len() {
        candle_core::bail!(
            "stack_bytes: {} bytes for {} rows of {row_len}",
            out.len(),
            rows.len()
        );
    }
    for (row, dst) in rows.iter().zip(out.chunks_exact_mut(row_len.max(1))) {
        if row.dims() != row_dims.as_slice() || row.dtype() != candle_core::DType::U8 {
            candle_core::bail!(
                "stack_bytes: rows differ: {:?} {:?} and {row_dims:?} u8",
                row.dims(),
                row.dtype()
            );
        }
        let (storage, layout) = row.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("stack_bytes: rows must be on the CPU");
        };
        let data = cpu.as_slice::<u8>()?;
        match layout.contiguous_offsets() {
            Some((a, b)) => dst.copy_from_slice(&data[a..b]),
            None => candle_core::bail!("stack_bytes: rows must be contiguous"),
        }
    }
    Ok(row_dims)
}

#[cfg(feature = "cuda")]
mod imp {
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::driver::{
        result, sys, CudaEvent, CudaStream, DevicePtr, PinnedHostSlice,
    };
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, CudaStorage, Device, Result, Storage, Tensor};

    /// An upload buffer and the event of the last copy out of it.
    #[derive(Default)]
    struct UpSlot {
        host: Option<PinnedHostSlice<u8>>,
        copied: Option<CudaEvent>,
    }

    pub struct Inner {
        dev: CudaDevice,
        copy: Arc<CudaStream>,
        /// Two upload buffers, used in turn, so that filling one does not wait for the copy
        /// out of the other.
        up: [UpSlot; 2],
        turn: usize,
        down: Option<PinnedHostSlice<u8>>,
    }

    /// A pinned buffer of at least `len` bytes in `slot`, grown (never shrunk) when too small.
    fn pinned<'a>(
        dev: &CudaDevice,
        slot: &'a mut Option<PinnedHostSlice<u8>>,
        len: usize,
        flags: u32,
    ) -> Result<&'a mut PinnedHostSlice<u8>> {
        if slot.as_ref().is_none_or(|p| p.len() < len) {
            *slot = None;
            let context = dev.cuda_stream().context().clone();
            // SAFETY: the buffer is written (uploads) or copied into (downloads) before it is
            // read, and only its first `len` bytes are read.
            let fresh = unsafe { context.alloc_pinned_with_flags::<u8>(len, flags) }.w()?;
            *slot = Some(fresh);
        }
        slot.as_mut()
            .ok_or_else(|| candle_core::Error::Msg("pinned buffer missing".into()))
    }

    impl Inner {
        pub fn new(device: &Device) -> Result<Self> {
            let Device::Cuda(dev) = device else {
                candle_core::bail!("a copy stream needs a CUDA device, not {device:?}");
            };
            let copy = dev.cuda_stream().context().new_stream().w()?;
            Ok(Self {
                dev: dev.clone(),
                copy,
                up: Default::default(),
                turn: 0,
                down: None,
            })
        }

        pub fn upload(&mut self, rows: &[&Tensor]) -> Result<Tensor> {
            let len: usize = rows.iter().map(|r| r.elem_count()).sum();
            let slot = &mut self.up[self.turn];
            self.turn = 1 - self.turn;
            // This buffer's previous copy (two uploads ago) must be done before it is refilled.
            if let Some(copied) = slot.copied.take() {
                copied.synchronize().w()?;
            }
            let host = pinned(
                &self.dev,
                &mut slot.host,
                len,
                sys::CU_MEMHOSTALLOC_WRITECOMBINED,
            )?;
            let bytes = host.as_mut_slice().w()?;
            let row_dims = super::stack_bytes(rows, &mut bytes[..len])?;
            // SAFETY: the copy below writes all `len` bytes before any read.
            let device = unsafe { self.copy.alloc::<u8>(len) }.w()?;
            {
                let (dst, _no_tracking) = device.device_ptr(&self.copy);
                // SAFETY: `dst` holds `len` bytes; the pinned source stays alive and unwritten
                // until `copied` completes (checked above before the next fill).
                unsafe { result::memcpy_htod_async(dst, &bytes[..len], self.copy.cu_stream()) }
                    .w()?;
            }
            let copied = self.copy.record_event(None).w()?;
            // candle's stream reads the bytes only after the copy.
            self.dev.cuda_stream().wait(&copied).w()?;
            slot.copied = Some(copied);
            let mut shape = vec![rows.len()];
            shape.extend(row_dims);
            let storage = CudaStorage::wrap_cuda_slice(device, self.dev.clone());
            Ok(Tensor::from_storage(
                Storage::Cuda(storage),
                shape,
                candle_core::op::BackpropOp::none(),
                false,
            ))
        }

        pub fn download(&mut self, images: &Tensor) -> Result<Tensor> {
            let images = images.contiguous()?;
            let len = images.elem_count();
            let written = self.dev.cuda_stream().record_event(None).w()?;
            self.copy.wait(&written).w()?;
            let host = pinned(&self.dev, &mut self.down, len, 0)?;
            {
                let (storage, layout) = images.storage_and_layout();
                let Storage::Cuda(cuda) = &*storage else {
                    candle_core::bail!("download: the images are not on the device");
                };
                let slice = cuda.as_cuda_slice::<u8>()?;
                let start = layout.start_offset();
                let view = slice.slice(start..start + len);
                // Records the pinned buffer's event, which `as_slice` below waits for.
                self.copy.memcpy_dtoh(&view, host).w()?;
            }
            // Waits for the copy (the pinned buffer's own event).
            let bytes = host.as_slice().w()?;
            Tensor::from_slice(&bytes[..len], images.dims(), &Device::Cpu)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_stack_into_one_buffer_in_order() {
        let a =
            Tensor::from_slice(&[1u8, 2, 3, 4, 5, 6], (1, 2, 3), &Device::Cpu).expect("test data");
        let b = Tensor::from_slice(&[7u8, 8, 9, 10, 11, 12], (1, 2, 3), &Device::Cpu)
            .expect("test data");
        let mut out = vec![0u8; 12];
        let dims = stack_bytes(&[&a, &b], &mut out).expect("test data");
        assert_eq!(dims, vec![1, 2, 3]);
        assert_eq!(out, (1u8..=12).collect::<Vec<_>>());
    }

    #[test]
    fn rows_of_another_shape_or_a_wrong_buffer_are_errors() {
        let a = Tensor::zeros((2, 3), candle_core::DType::U8, &Device::Cpu).expect("test data");
        let b = Tensor::zeros((3, 2), candle_core::DType::U8, &Device::Cpu).expect("test data");
        let mut out = vec![0u8; 12];
        assert!(stack_bytes(&[&a, &b], &mut out).is_err());
        let mut short = vec![0u8; 11];
        assert!(stack_bytes(&[&a, &a], &mut short).is_err());
        let f = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).expect("test data");
        assert!(stack_bytes(&[&a, &f], &mut out).is_err());
        assert!(stack_bytes(&[], &mut []).is_err());
    }

    #[test]
    fn a_copy_stream_needs_a_cuda_device() {
        assert!(CopyStream::new(&Device::Cpu).is_err());
    }
}
