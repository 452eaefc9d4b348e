//! Staging whole batches on the device (`--overlap on`): while the device computes a batch, the
//! inputs of the requests queued next are stacked into a pinned buffer and copied on a second
//! stream ([`crate::ops::transfer::CopyStream`]); when the next batch is formed, as the batcher
//! always forms it, rows that were staged for exactly those requests are used as they are, and
//! otherwise the batch is staged then. Only 8-bit bytes cross the bus, and they become model
//! values on the device. The output comes back the same way, through a pinned buffer.
//!
//! On the CPU the same logic stacks on the host, which is how it is tested.

use candle_core::{Device, Tensor, TensorId};

use super::{ModelError, ModelInput, TryOnBatch};
use crate::ops::convert::{to_model_input, InputKind};
use crate::ops::transfer::CopyStream;

/// A request's inputs, by the identity of their tensors (a request's tensors are never
/// rewritten, so the same ids are the same bytes).
type RowKey = [TensorId; 3];

fn key(input: &ModelInput) -> Option<RowKey> {
    Some([
        input.person.id(),
        input.cloth.id(),
        input.garment_mask.as_ref()?.id(),
    ])
}

/// Staged 8-bit inputs `N×H×W×C` on the device, for the requests `keys`.
struct Staged {
    keys: Vec<RowKey>,
    person: Tensor,
    cloth: Tensor,
    mask: Tensor,
}

/// How a batch was staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staging {
    /// Its rows had been staged while the previous batch ran.
    Ahead,
    /// It was staged when it was formed.
    Now,
}

/// Stages whole batches' inputs and brings their outputs back.
pub struct Stager {
    device: Device,
    copy: Option<CopyStream>,
    ahead: Option<Staged>,
    /// Uploaded bytes that the device may still be reading: freed after the batch is answered.
    in_flight: Vec<Staged>,
}

impl Stager {
    /// A stager for `device`: on a CUDA device with its copy stream, on the CPU on the host.
    pub fn new(device: &Device) -> Result<Self, ModelError> {
        let copy = if device.is_cuda() {
            Some(CopyStream::new(device)?)
        } else {
            None
        };
        Ok(Self {
            device: device.clone(),
            copy,
            ahead: None,
            in_flight: Vec::new(),
        })
    }

    fn stage(&mut self, inputs: &[&ModelInput]) -> Result<Staged, ModelError> {
        let keys = inputs
            .iter()
            .map(|i| key(i).ok_or_else(|| ModelError::WrongInput("a garment mask".into())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows = |f: &dyn Fn(&ModelInput) -> &Tensor| -> Result<Tensor, ModelError> {
            let rows: Vec<&Tensor> = inputs.iter().map(|i| f(i)).collect();
            Ok(match &mut self.copy {
                Some(copy) => {
                    let contiguous = rows
                        .iter()
                        .map(|r| r.contiguous())
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    copy.upload(&contiguous.iter().collect::<Vec<_>>())?
                }
                None => Tensor::stack(&rows, 0)?.to_device(&self.device)?,
            })
        };
        Ok(Staged {
            keys,
            person: rows(&|i| &i.person)?,
            cloth: rows(&|i| &i.cloth)?,
            mask: rows(&|i| i.garment_mask.as_ref().unwrap_or(&i.cloth))?,
        })
    }

    /// Stages the inputs of the requests expected next (at most a batch), while the device
    /// computes the current one. Requests without a garment mask end the list.
    pub fn prestage(&mut self, next: &[ModelInput]) -> Result<(), ModelError> {
        let next: Vec<&ModelInput> = next.iter().take_while(|i| key(i).is_some()).collect();
        self.ahead = if next.is_empty() {
            None
        } else {
            Some(self.stage(&next)?)
        };
        Ok(())
    }

    /// The batch of `inputs` as model values on the device: the rows staged ahead when they
    /// are these requests in this order (or begin with them), else staged now.
    pub fn batch(&mut self, inputs: &[&ModelInput]) -> Result<(TryOnBatch, Staging), ModelError> {
        let wanted: Option<Vec<RowKey>> = inputs.iter().map(|i| key(i)).collect();
        let ahead = self.ahead.take();
        let (staged, how) = match (ahead, wanted) {
            (Some(a), Some(w)) if !w.is_empty() && a.keys.starts_with(&w) => (a, Staging::Ahead),
            _ => (self.stage(inputs)?, Staging::Now),
        };
        let n = inputs.len();
        let convert = |t: &Tensor, kind| -> Result<Tensor, ModelError> {
            Ok(to_model_input(&t.narrow(0, 0, n)?, kind)?)
        };
        let batch = TryOnBatch {
            person: convert(&staged.person, InputKind::Image)?,
            cloth: convert(&staged.cloth, InputKind::Image)?,
            cloth_mask: convert(&staged.mask, InputKind::Mask)?,
        };
        self.in_flight.push(staged);
        Ok((batch, how))
    }

    /// The 8-bit output images back on the CPU (through the pinned buffer on a GPU). The host
    /// has waited for the device's work when this returns, so the batch's staged bytes are
    /// freed.
    pub fn download(&mut self, images: &Tensor) -> Result<Tensor, ModelError> {
        let host = match &mut self.copy {
            Some(copy) => copy.download(images)?,
            None => images.to_device(&Device::Cpu)?,
        };
        self.in_flight.clear();
        Ok(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn input(seed: u8) -> ModelInput {
        let image = |s: u8, c: usize| {
            let data: Vec<u8> = (0..4 * 3 * c)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(s))
                .collect();
            Tensor::from_vec(data, (4, 3, c), &Device::Cpu).expect("test data")
        };
        ModelInput {
            person: image(seed, 3),
            cloth: image(seed.wrapping_add(7), 3),
            garment_mask: Some(image(seed.wrapping_add(99), 1)),
            person_mask: None,
            content: None,
            options: Default::default(),
        }
    }

    fn same(a: &TryOnBatch, b: &TryOnBatch) {
        for (x, y) in [
            (&a.person, &b.person),
            (&a.cloth, &b.cloth),
            (&a.cloth_mask, &b.cloth_mask),
        ] {
            assert_eq!(x.dims(), y.dims());
            let d = (x - y)
                .expect("test data")
                .abs()
                .expect("test data")
                .max_all()
                .expect("test data");
            assert_eq!(
                d.to_dtype(DType::F32)
                    .expect("test data")
                    .to_scalar::<f32>()
                    .expect("test data"),
                0.0
            );
        }
    }

    #[test]
    fn a_batch_staged_ahead_is_used_when_it_is_the_batch_formed() {
        let inputs: Vec<ModelInput> = (0..3).map(|s| input(s * 40)).collect();
        let refs: Vec<&ModelInput> = inputs.iter().collect();
        let mut stager = Stager::new(&Device::Cpu).expect("test data");
        stager.prestage(&inputs).expect("test data");
        // The first two requests form the batch: a prefix of what was staged.
        let (batch, how) = stager.batch(&refs[..2]).expect("test data");
        assert_eq!(how, Staging::Ahead);
        same(
            &batch,
            &TryOnBatch::from_inputs(&refs[..2], &Device::Cpu).expect("test data"),
        );
        // Staged rows serve one batch only.
        let (_, how) = stager.batch(&refs[..2]).expect("test data");
        assert_eq!(how, Staging::Now);
    }

    #[test]
    fn another_batch_than_the_one_staged_is_staged_anew() {
        let inputs: Vec<ModelInput> = (0..3).map(|s| input(s * 40)).collect();
        let refs: Vec<&ModelInput> = inputs.iter().collect();
        let mut stager = Stager::new(&Device::Cpu).expect("test data");
        stager.prestage(&inputs[..2]).expect("test data");
        // Another order, and a request that was not staged.
        let formed = [refs[1], refs[0]];
        let (batch, how) = stager.batch(&formed).expect("test data");
        assert_eq!(how, Staging::Now);
        same(
            &batch,
            &TryOnBatch::from_inputs(&formed, &Device::Cpu).expect("test data"),
        );
        stager.prestage(&inputs[..2]).expect("test data");
        let (batch, how) = stager.batch(&refs).expect("test data");
        assert_eq!(how, Staging::Now);
        same(
            &batch,
            &TryOnBatch::from_inputs(&refs, &Device::Cpu).expect("test data"),
        );
        // Equal bytes in other tensors are other requests: not taken for staged ones.
        let copy = ModelInput {
            person: inputs[0].person.copy().expect("test data"),
            ..inputs[0].clone()
        };
        stager.prestage(&inputs[..1]).expect("test data");
        let (_, how) = stager.batch(&[&copy]).expect("test data");
        assert_eq!(how, Staging::Now);
    }

    #[test]
    fn a_request_without_a_garment_mask_is_refused_and_not_staged_ahead() {
        let mut no_mask = input(3);
        no_mask.garment_mask = None;
        let mut stager = Stager::new(&Device::Cpu).expect("test data");
        stager
            .prestage(std::slice::from_ref(&no_mask))
            .expect("test data");
        assert!(matches!(
            stager.batch(&[&no_mask]),
            Err(ModelError::WrongInput(_))
        ));
    }

    #[test]
    fn the_output_comes_back_to_the_cpu() {
        let mut stager = Stager::new(&Device::Cpu).expect("test data");
        let images = Tensor::zeros((2, 4, 3, 3), DType::U8, &Device::Cpu).expect("test data");
        let back = stager.download(&images).expect("test data");
        assert!(back.device().is_cpu());
        assert_eq!(back.dims(), &[2, 4, 3, 3]);
    }
}
