//! diffusers' `Attention` module as CatVTON uses it: the UNet's self-attention (`attn1`, no
//! bias on the projections) and the VAE's mid-block attention (one head, biases, a group norm
//! in front and a residual connection). The full `N×N` score matrix never exists: at 1024×768
//! the UNet's first level has 24,576 tokens, whose score matrix alone would take 2.4 GB per
//! head in f32. In f32 on the CPU the fused op of `fused_attention.rs` never writes scores at
//! all; elsewhere scores are computed in query chunks ([`chunked_attention`], also the fused
//! op's reference in tests). On CUDA in f16/bf16, `--flash-attention on` runs the UNet's heads
//! through the flash kernel of `ops::flash_attention` instead ([`attention_path`]); it stays off
//! by default until a card has verified it (`scripts/gpu-check.sh`).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::GroupNorm;

use super::fused_attention::fused_attention;
use crate::ops::flash_attention;

/// `--flash-attention`: set once at start-up by [`enable_flash_attention`].
static FLASH_ATTENTION: AtomicBool = AtomicBool::new(false);

/// How one attention call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPath {
    /// f32 on the CPU: the fused op, one pass over the keys.
    FusedCpu,
    /// f16/bf16 on CUDA with flash attention enabled, for the head sizes it has kernels for.
    Flash,
    /// Everything else: query chunks under the score budget.
    Chunked,
}

/// The path for tensors of `dtype` with heads of `head_dim` on a CPU or CUDA device, with
/// flash attention `flash` enabled or not.
pub fn attention_path(is_cpu: bool, dtype: DType, head_dim: usize, flash: bool) -> AttentionPath {
    if is_cpu {
        if dtype == DType::F32 {
            AttentionPath::FusedCpu
        } else {
            AttentionPath::Chunked
        }
    } else if flash && flash_attention::supports(dtype, head_dim) {
        AttentionPath::Flash
    } else {
        AttentionPath::Chunked
    }
}

/// Applies `--flash-attention` for the models that run on `device` in `dtype`: turning it on
/// where this build or set-up cannot honour it is an error, said at start-up.
pub fn enable_flash_attention(
    on: bool,
    device: &Device,
    dtype: DType,
) -> std::result::Result<(), String> {
    if on {
        flash_attention_usable(cfg!(feature = "cuda"), device.is_cuda(), dtype)?;
    }
    FLASH_ATTENTION.store(on, Ordering::Relaxed);
    Ok(())
}

/// Why `--flash-attention on` cannot be honoured, if it cannot.
pub fn flash_attention_usable(
    built_with_cuda: bool,
    on_cuda: bool,
    dtype: DType,
) -> std::result::Result<(), String> {
    if !built_with_cuda {
        return Err("--flash-attention on needs a binary built with `--features cuda`".into());
    }
    if !on_cuda {
        return Err("--flash-attention on runs on a CUDA device only (--device cuda:N)".into());
    }
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return Err(format!(
            "--flash-attention on needs --dtype f16 or bf16, not {}",
            dtype.as_str()
        ));
    }
    Ok(())
}

/// Whether `--flash-attention on` is in effect.
pub fn flash_attention_enabled() -> bool {
    FLASH_ATTENTION.load(Ordering::Relaxed)
}

/// The most score elements one chunk may hold (all batch rows and heads together) on a GPU:
/// 2^27, 512 MiB in f32. Larger inputs are cut into query chunks under this bound.
pub const MAX_SCORE_ELEMENTS: usize = 1 << 27;
/// On the CPU, chunks stay small enough (16 MiB in f32) to be reused from the heap and to stay
/// mostly in cache: scores are written and read four times, and memory traffic, not
/// arithmetic, is what attention costs there.
pub const MAX_SCORE_ELEMENTS_CPU: usize = 1 << 22;

/// The score budget for tensors on `device`.
pub fn score_budget(device: &candle_core::Device) -> usize {
    if device.is_cpu() {
        MAX_SCORE_ELEMENTS_CPU
    } else {
        MAX_SCORE_ELEMENTS
    }
}

/// `softmax(q·kᵀ·scale)·v` for `q: G×Nq×d`, `k, v: G×Nk×d` (G = batch × heads), computed over
/// query chunks so that at most `max_scores` score elements exist at once.
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    max_scores: usize,
) -> Result<Tensor> {
    let (groups, n_q, _) = q.dims3()?;
    let n_k = k.dim(1)?;
    let k_t = k.t()?.contiguous()?;
    // Scaling the queries is cheaper than scaling every score.
    let q = (q * scale)?;
    let per_query = (groups * n_k).max(1);
    let chunk = (max_scores / per_query).clamp(1, n_q.max(1));
    let mut outputs = Vec::with_capacity(n_q.div_ceil(chunk));
    let mut start = 0;
    while start < n_q {
        let len = chunk.min(n_q - start);
        let q_chunk = q.narrow(1, start, len)?;
        let scores = q_chunk.matmul(&k_t)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        outputs.push(weights.matmul(v)?);
        start += len;
    }
    if outputs.len() == 1 {
        Ok(outputs.remove(0))
    } else {
        Tensor::cat(&outputs, 1)
    }
}

/// One multi-head attention layer with diffusers' parameter names (`to_q`, `to_k`, `to_v`,
/// `to_out.0`, and `group_norm` where present).
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    group_norm: Option<GroupNorm>,
    heads: usize,
    scale: f64,
    residual: bool,
}

/// Reads a linear layer under the first of `names` that the checkpoint holds: old VAE files
/// name the attention projections `query`, `key`, `value` and `proj_attn`.
fn linear_named(
    dim_in: usize,
    dim_out: usize,
    bias: bool,
    names: &[&str],
    vb: &VarBuilder,
) -> Result<Linear> {
    let name = names
        .iter()
        .find(|n| vb.contains_tensor(&format!("{n}.weight")))
        .unwrap_or(&names[0]);
    if bias {
        candle_nn::linear(dim_in, dim_out, vb.pp(name))
    } else {
        candle_nn::linear_no_bias(dim_in, dim_out, vb.pp(name))
    }
}

impl Attention {
    /// The UNet's self-attention over `dim` channels in `heads` heads.
    pub fn self_attention(vb: VarBuilder, dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            to_q: candle_nn::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(dim, dim, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(dim, dim, vb.pp("to_v"))?,
            to_out: candle_nn::linear(dim, dim, vb.pp("to_out").pp("0"))?,
            group_norm: None,
            heads,
            scale: 1.0 / ((dim / heads.max(1)) as f64).sqrt(),
            residual: false,
        })
    }

    /// The VAE mid block's attention: one head over `channels`, with a group norm in front
    /// and the input added back.
    pub fn vae_attention(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            to_q: linear_named(channels, channels, true, &["to_q", "query"], &vb)?,
            to_k: linear_named(channels, channels, true, &["to_k", "key"], &vb)?,
            to_v: linear_named(channels, channels, true, &["to_v", "value"], &vb)?,
            to_out: linear_named(channels, channels, true, &["to_out.0", "proj_attn"], &vb)?,
            group_norm: Some(GroupNorm::new(vb.pp("group_norm"), groups, channels, 1e-6)?),
            heads: 1,
            scale: 1.0 / (channels as f64).sqrt(),
            residual: true,
        })
    }

    /// Splits `B×N×C` into `(B·heads)×N×(C/heads)`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let d = c / self.heads;
        x.reshape((b, n, self.heads, d))?
            .transpose(1, 2)?
            .reshape((b * self.heads, n, d))
    }

    /// Self-attention over tokens `x: B×N×C`.
    pub fn forward_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(x)?)?;
        let v = self.split_heads(&self.to_v.forward(x)?)?;
        let path = attention_path(
            x.device().is_cpu(),
            x.dtype(),
            c / self.heads,
            flash_attention_enabled(),
        );
        let out = match path {
            AttentionPath::FusedCpu => fused_attention(&q, &k, &v, self.scale)?,
            AttentionPath::Flash => flash_attention::flash_attention(&q, &k, &v, self.scale)?,
            AttentionPath::Chunked => {
                chunked_attention(&q, &k, &v, self.scale, score_budget(x.device()))?
            }
        };
        let out = out
            .reshape((b, self.heads, n, c / self.heads))?
            .transpose(1, 2)?
            .reshape((b, n, c))?;
        self.to_out.forward(&out)
    }

    /// The VAE form: `x: B×C×H×W`, normalised, attended over its `H·W` positions, projected
    /// and added back.
    pub fn forward_image(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = match &self.group_norm {
            Some(norm) => norm.forward(x)?,
            None => x.clone(),
        };
        let tokens = normed
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let out = self.forward_tokens(&tokens)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        if self.residual {
            out + x
        } else {
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let max = scores.max_keepdim(D::Minus1)?;
        let e = scores.broadcast_sub(&max)?.exp()?;
        let w = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        w.matmul(v)
    }

    #[test]
    fn chunks_give_the_same_result_as_the_whole_score_matrix() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (3, 37, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (3, 29, 8), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (3, 29, 8), &dev)?;
        let whole = naive(&q, &k, &v, 0.35)?;
        // 3 groups × 29 keys per query: 100 elements allow one query per chunk.
        for budget in [1, 100, 3 * 29 * 5, usize::MAX] {
            let chunked = chunked_attention(&q, &k, &v, 0.35, budget)?;
            assert_eq!(chunked.dims(), whole.dims());
            let diff = (chunked - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "budget {budget}: max difference {diff}");
        }
        Ok(())
    }

    #[test]
    fn flash_attention_runs_only_on_cuda_in_half_precision_for_the_unet_heads() {
        use AttentionPath::*;
        for d in [40, 80, 160] {
            for dtype in [DType::F16, DType::BF16] {
                assert_eq!(attention_path(false, dtype, d, true), Flash);
                assert_eq!(attention_path(false, dtype, d, false), Chunked);
                assert_eq!(attention_path(true, dtype, d, true), Chunked);
            }
            assert_eq!(attention_path(false, DType::F32, d, true), Chunked);
            assert_eq!(attention_path(true, DType::F32, d, true), FusedCpu);
            assert_eq!(attention_path(true, DType::F32, d, false), FusedCpu);
        }
        // The VAE's single head of 512 channels has no flash kernel.
        assert_eq!(attention_path(false, DType::BF16, 512, true), Chunked);
    }

    #[test]
    fn flash_attention_that_cannot_be_honoured_is_refused_with_the_reason() {
        let no_build = flash_attention_usable(false, true, DType::BF16).expect_err("no cuda");
        assert!(no_build.contains("--features cuda"), "{no_build}");
        let cpu = flash_attention_usable(true, false, DType::BF16).expect_err("cpu");
        assert!(cpu.contains("CUDA device"), "{cpu}");
        let f32 = flash_attention_usable(true, true, DType::F32).expect_err("f32");
        assert!(f32.contains("f16 or bf16") && f32.contains("f32"), "{f32}");
        assert!(flash_attention_usable(true, true, DType::BF16).is_ok());
        assert!(flash_attention_usable(true, true, DType::F16).is_ok());
        // Off is always accepted, on any device and dtype.
        assert!(enable_flash_attention(false, &Device::Cpu, DType::F32).is_ok());
        assert!(!flash_attention_enabled());
        let on_cpu = enable_flash_attention(true, &Device::Cpu, DType::BF16).expect_err("cpu");
        assert!(on_cpu.contains("--flash-attention on"), "{on_cpu}");
        assert!(!flash_attention_enabled());
    }

    #[test]
    fn one_head_vae_attention_reads_old_and_new_names() -> Result<()> {
        let dev = Device::Cpu;
        for names in [
            ["to_q", "to_k", "to_v", "to_out.0"],
            ["query", "key", "value", "proj_attn"],
        ] {
            let mut tensors = std::collections::HashMap::new();
            for n in names {
                tensors.insert(format!("{n}.weight"), Tensor::eye(8, DType::F32, &dev)?);
                tensors.insert(format!("{n}.bias"), Tensor::zeros(8, DType::F32, &dev)?);
            }
            tensors.insert(
                "group_norm.weight".into(),
                Tensor::ones(8, DType::F32, &dev)?,
            );
            tensors.insert(
                "group_norm.bias".into(),
                Tensor::zeros(8, DType::F32, &dev)?,
            );
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
            let attn = Attention::vae_attention(vb, 8, 2)?;
            let x = Tensor::randn(0f32, 1.0, (1, 8, 3, 2), &dev)?;
            assert_eq!(attn.forward_image(&x)?.dims(), &[1, 8, 3, 2]);
        }
        Ok(())
    }
}
