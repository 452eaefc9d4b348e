//! Image conversions at the device boundary: 8-bit `N×H×W×C` batches in, model tensors
//! `N×C×H×W` f32 out, and back. On a GPU they run there, so only bytes cross the bus.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// How 8-bit input values map to model values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Photos: `v / 255 · 2 − 1`, in [-1, 1].
    Image,
    /// Masks: 1 where `v / 255 > 0.5`, else 0.
    Mask,
}

/// `N×H×W×C` u8 → `N×C×H×W` f32, as [`InputKind`] says.
pub fn to_model_input(images: &Tensor, kind: InputKind) -> Result<Tensor> {
    if images.dtype() != DType::U8 || images.rank() != 4 {
        candle_core::bail!(
            "to_model_input: expected an N×H×W×C u8 tensor, got {:?} {:?}",
            images.dtype(),
            images.dims()
        );
    }
    images
        .contiguous()?
        .apply_op1_no_bwd(&ToModelInput { kind })
}

/// `N×C×H×W` f32 in [-1, 1] → `N×H×W×C` u8 with `trunc(clamp((x + 1) / 2, 0, 1) · 255 + 0.5)`.
pub fn to_u8_images(x: &Tensor) -> Result<Tensor> {
    if x.rank() != 4 {
        candle_core::bail!("to_u8_images: expected N×C×H×W, got {:?}", x.dims());
    }
    x.to_dtype(DType::F32)?
        .contiguous()?
        .apply_op1_no_bwd(&ToU8Images)
}

/// The op behind [`to_model_input`].
#[derive(Debug, Clone, Copy)]
pub struct ToModelInput {
    pub kind: InputKind,
}

/// The op behind [`to_u8_images`].
#[derive(Debug, Clone, Copy)]
pub struct ToU8Images;

#[inline]
pub fn u8_to_model(v: u8, kind: InputKind) -> f32 {
    match kind {
        InputKind::Image => v as f32 / 255.0 * 2.0 - 1.0,
        InputKind::Mask => {
            if v as f32 / 255.0 > 0.5 {
                1.0
            } else {
                0.0
            }
        }
    }
}

#[inline]
pub fn model_to_u8(x: f32) -> u8 {
    (((x + 1.0) * 0.5).clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

impl CustomOp1 for ToModelInput {
    fn name(&self) -> &'static str {
        "to_model_input"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = layout.shape().dims4()?;
        let src = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::U8(data), Some((a, b))) => &data[a..b],
            _ => candle_core::bail!("to_model_input: contiguous u8 input expected"),
        };
        let plane = h * w;
        let mut out = vec![0f32; n * c * plane];
        let kind = self.kind;
        out.par_chunks_mut(plane).enumerate().for_each(|(bc, dst)| {
            let (b, ch) = (bc / c, bc % c);
            let img = &src[b * plane * c..(b + 1) * plane * c];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = u8_to_model(img[i * c + ch], kind);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{launch, Scalar::I32, U8_HWC_TO_F32_NCHW};
        let (n, h, w, c) = layout.shape().dims4()?;
        let mask = usize::from(self.kind == InputKind::Mask);
        let total = n * h * w * c;
        // SAFETY: the arguments of `u8_hwc_to_f32_nchw`, in its order; one thread per output
        // element.
        let out = unsafe {
            launch::<f32>(
                "to_model_input",
                &U8_HWC_TO_F32_NCHW,
                &[(storage, layout)],
                total,
                total,
                &[n, h, w, c, mask].map(|v| I32(v as i32)),
            )
        }?;
        Ok((out, Shape::from((n, c, h, w))))
    }
}

impl CustomOp1 for ToU8Images {
    fn name(&self) -> &'static str {
        "to_u8_images"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let src = super::contiguous_f32(storage, layout, "to_u8_images")?;
        let plane = h * w;
        let mut out = vec![0u8; n * c * plane];
        out.par_chunks_mut(plane * c)
            .enumerate()
            .for_each(|(b, dst)| {
                let img = &src[b * c * plane..(b + 1) * c * plane];
                for i in 0..plane {
                    for ch in 0..c {
                        dst[i * c + ch] = model_to_u8(img[ch * plane + i]);
                    }
                }
            });
        Ok((CpuStorage::U8(out), Shape::from((n, h, w, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{launch, Scalar::I32, F32_NCHW_TO_U8_HWC};
        let (n, c, h, w) = layout.shape().dims4()?;
        let total = n * c * h * w;
        // SAFETY: the arguments of `f32_nchw_to_u8_hwc`, in its order; one thread per output
        // element.
        let out = unsafe {
            launch::<u8>(
                "to_u8_images",
                &F32_NCHW_TO_U8_HWC,
                &[(storage, layout)],
                total,
                total,
                &[n, c, h, w].map(|v| I32(v as i32)),
            )
        }?;
        Ok((out, Shape::from((n, h, w, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn round_trip_and_mask_threshold() {
        let data: Vec<u8> = (0..2 * 3 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let t = Tensor::from_vec(data.clone(), (2, 3, 4, 3), &Device::Cpu).expect("t");
        let x = to_model_input(&t, InputKind::Image).expect("in");
        assert_eq!(x.dims(), &[2, 3, 3, 4]);
        // Element (b=1, c=2, y=1, x=3) comes from (b=1, y=1, x=3, c=2).
        let v = x
            .get(1)
            .and_then(|t| t.get(2))
            .and_then(|t| t.get(1))
            .and_then(|t| t.get(3));
        let v = v.and_then(|t| t.to_scalar::<f32>()).expect("scalar");
        let src = data[((4 + 3) * 3 + 2) + 36];
        assert_eq!(v, src as f32 / 255.0 * 2.0 - 1.0);
        let back = to_u8_images(&x).expect("out");
        assert_eq!(back.dims(), &[2, 3, 4, 3]);
        assert_eq!(
            back.flatten_all()
                .and_then(|t| t.to_vec1::<u8>())
                .expect("v"),
            data
        );

        let m = Tensor::from_vec(vec![0u8, 127, 128, 255], (1, 2, 2, 1), &Device::Cpu).expect("m");
        let m = to_model_input(&m, InputKind::Mask).expect("mask");
        assert_eq!(
            m.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v"),
            vec![0.0, 0.0, 1.0, 1.0]
        );
    }
}
