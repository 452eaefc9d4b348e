//! Flash attention on CUDA for f16 and bf16 (`kernels/flash_attention.cu`): `softmax(q·kᵀ·scale)·v`
//! with f32 accumulation and an online softmax over key blocks, the score matrix never written.
//! It has no CPU form (the CPU's is the models' fused attention, in f32): on the CPU, or
//! in a build without the `cuda` feature, the op answers an error, and [`supports`] says
//! beforehand which inputs it takes.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// The head dimensions the kernel is instantiated for; a head of `d` runs in the smallest one
/// that holds it (the diffusion UNet's: 40, 80 and 160).
pub const PADDED_HEAD_DIMS: [usize; 5] = [48, 64, 80, 128, 160];

/// Queries one CUDA block takes (8 warps of 16), and its threads.
pub const QUERIES_PER_BLOCK: usize = 128;
pub const THREADS_PER_BLOCK: usize = 256;

/// The index in [`PADDED_HEAD_DIMS`] of the kernel for heads of `head_dim`, if one fits.
pub fn padded_head_dim(head_dim: usize) -> Option<usize> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        // The kernel reads the head's columns in pairs.
        return None;
    }
    PADDED_HEAD_DIMS.iter().position(|&p| head_dim <= p)
}

/// Whether the kernel takes inputs of `dtype` with heads of `head_dim` (the device aside).
pub fn supports(dtype: DType, head_dim: usize) -> bool {
    matches!(dtype, DType::F16 | DType::BF16) && padded_head_dim(head_dim).is_some()
}

/// `softmax(q·kᵀ·scale)·v` for `q: G×Nq×d`, `k, v: G×Nk×d` of one half dtype on a CUDA device.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let _span = super::profile::op("flash attention", q.device());
    let (groups, _, d) = q.dims3()?;
    let (kg, n_k, kd) = k.dims3()?;
    if (kg, kd) != (groups, d) || v.dims3()? != (groups, n_k, d) {
        candle_core::bail!(
            "flash_attention: q {:?}, k {:?}, v {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if n_k == 0 {
        candle_core::bail!("flash_attention: no keys");
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        candle_core::bail!("flash_attention: q, k and v must share one dtype");
    }
    if !supports(q.dtype(), d) {
        candle_core::bail!(
            "flash_attention: {:?} with heads of {d} is not supported (f16 or bf16, an even \
             head dimension up to {})",
            q.dtype(),
            PADDED_HEAD_DIMS[PADDED_HEAD_DIMS.len() - 1]
        );
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3_no_bwd(&k, &v, &FlashAttention { scale })
}

/// The custom op behind [`flash_attention`]; CUDA only.
#[derive(Debug, Clone, Copy)]
struct FlashAttention {
    /// Read by the CUDA launch only.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    scale: f64,
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash_attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("flash_attention runs on CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sq: &candle_core::CudaStorage,
        lq: &Layout,
        sk: &candle_core::CudaStorage,
        lk: &Layout,
        sv: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{
            launch, Scalar::F32, Scalar::I32, FLASH_ATTENTION_BF16, FLASH_ATTENTION_F16,
        };
        use candle_core::backend::BackendStorage;
        let (groups, n_q, d) = lq.shape().dims3()?;
        let n_k = lk.shape().dims()[1];
        let shape = Shape::from((groups, n_q, d));
        let Some(variant) = padded_head_dim(d) else {
            candle_core::bail!("flash_attention: no kernel for heads of {d}");
        };
        let blocks = groups * n_q.div_ceil(QUERIES_PER_BLOCK);
        let inputs = [(sq, lq), (sk, lk), (sv, lv)];
        let scalars = [
            I32(groups as i32),
            I32(n_q as i32),
            I32(n_k as i32),
            I32(d as i32),
            F32(self.scale as f32),
        ];
        let out_len = groups * n_q * d;
        if out_len == 0 {
            candle_core::bail!("flash_attention: no queries");
        }
        // SAFETY: the arguments of `flash_attention_*` in its order (q, k, v, out, groups, nq,
        // nk, d, scale); `flash_attention` checked the shapes and dtypes, each block of 256
        // threads reads its group's `n_q·d` queries and `n_k·d` keys and values, and the blocks
        // together write every output element once.
        let out = unsafe {
            match sq.dtype() {
                DType::F16 => launch::<half::f16>(
                    "flash_attention",
                    &FLASH_ATTENTION_F16[variant],
                    &inputs,
                    out_len,
                    blocks * THREADS_PER_BLOCK,
                    &scalars,
                ),
                DType::BF16 => launch::<half::bf16>(
                    "flash_attention",
                    &FLASH_ATTENTION_BF16[variant],
                    &inputs,
                    out_len,
                    blocks * THREADS_PER_BLOCK,
                    &scalars,
                ),
                other => candle_core::bail!("flash_attention: {other:?} is not supported"),
            }
        }?;
        Ok((out, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn every_unet_head_dimension_has_a_kernel_and_the_vae_head_has_none() {
        // The diffusion UNet: 8 heads of 40, 80 and 160; its VAE: one head of 512.
        assert_eq!(padded_head_dim(40), Some(0));
        assert_eq!(padded_head_dim(80), Some(2));
        assert_eq!(padded_head_dim(160), Some(4));
        assert_eq!(padded_head_dim(64), Some(1));
        assert_eq!(padded_head_dim(2), Some(0));
        assert_eq!(padded_head_dim(162), None);
        assert_eq!(padded_head_dim(512), None);
        assert_eq!(padded_head_dim(41), None);
        assert_eq!(padded_head_dim(0), None);
        for d in [40, 80, 160] {
            assert!(supports(DType::BF16, d) && supports(DType::F16, d));
            assert!(!supports(DType::F32, d));
        }
        assert!(!supports(DType::BF16, 512));
    }

    #[test]
    fn on_the_cpu_it_answers_an_error_not_a_result() -> Result<()> {
        let q = Tensor::zeros((2, 5, 40), DType::BF16, &Device::Cpu)?;
        let err = flash_attention(&q, &q, &q, 0.1).expect_err("no CPU form");
        assert!(err.to_string().contains("CUDA only"), "{err}");
        let f = q.to_dtype(DType::F32)?;
        let err = flash_attention(&f, &f, &f, 0.1).expect_err("f32");
        assert!(err.to_string().contains("not supported"), "{err}");
        let short = Tensor::zeros((2, 5, 8), DType::BF16, &Device::Cpu)?;
        assert!(flash_attention(&q, &short, &short, 0.1).is_err());
        Ok(())
    }
}
