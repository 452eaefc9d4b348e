//! Dense convolutions through cuDNN, with what can be decided once per shape decided once
//! (`cudnn` feature; off unless [`enable_cudnn_conv`] turns it on). Candle's own
//! `Tensor::conv2d` also calls cuDNN under that feature, but on every call it recreates the
//! descriptors, picks the algorithm by heuristic and allocates a zeroed workspace. Here each
//! CUDA device (candle's `CudaDevice`, keyed by its id) holds one cuDNN handle on candle's
//! stream, one workspace grown to the largest size any plan needs, and a plan per convolution
//! shape: the descriptors, created once, and the algorithm that a timed search
//! (`cudnnFindConvolutionForwardAlgorithmEx` on the real buffers) chose the first time the
//! shape was seen. That first call is the warm-up: the server's warm-up and the CUDA-graph
//! warm-up run every shape, so steady-state calls neither search nor grow the workspace, and a
//! CUDA graph can capture them (a shape first seen during a capture is an error, not a search).
//! Strict f32 runs FMA kernels only; TF32 (`--allow-tf32`) and f16/bf16 use tensor cores, the
//! halves accumulating in f32.
//!
//! The bias and the activation follow in one of two ways ([`epilogue`]): cuDNN's fused
//! `cudnnConvolutionBiasActivationForward` supports only ReLU, and the identity only with the
//! implicit precomputed GEMM algorithm, so a convolution without activation fuses its bias
//! when that algorithm is (within [`FUSED_SLACK`] of) the fastest; everything else runs
//! `cudnnConvolutionForward` and then our fused bias and activation kernel. The decisions
//! (plan key, epilogue, choice among the timed algorithms, workspace growth, math type) are
//! pure functions, tested on the CPU; the GPU part is checked by `self_check`, which
//! `virtualfit gpu-check` runs.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::DType;
use serde::Serialize;

use super::conv::ConvActivation;

/// The run-time switch: set once at start-up by [`enable_cudnn_conv`].
static CUDNN_CONV: AtomicBool = AtomicBool::new(false);

/// Routes the dense convolutions of CUDA tensors through this module (`on`) or through
/// candle's convolution and a matrix product (`off`, the default). Turning it on in a build
/// without the `cudnn` feature is an error for the caller to report.
pub fn enable_cudnn_conv(on: bool) -> std::result::Result<(), String> {
    if on && !cfg!(feature = "cudnn") {
        return Err(
            "--cudnn-conv on (cuDNN convolutions) needs a build with --features cudnn".into(),
        );
    }
    CUDNN_CONV.store(on, Ordering::Relaxed);
    Ok(())
}

/// Whether [`enable_cudnn_conv`] turned cuDNN convolutions on.
pub fn cudnn_conv_enabled() -> bool {
    CUDNN_CONV.load(Ordering::Relaxed)
}

/// Whether a convolution of tensors on `device` goes through this module.
pub fn applies(device: &candle_core::Device) -> bool {
    cfg!(feature = "cudnn") && device.is_cuda() && cudnn_conv_enabled()
}

/// [`ConvActivation`] as a hashable key (the slope by its bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivationKey {
    None,
    Relu6,
    LeakyRelu(u32),
}

impl From<ConvActivation> for ActivationKey {
    fn from(a: ConvActivation) -> Self {
        match a {
            ConvActivation::None => ActivationKey::None,
            ConvActivation::Relu6 => ActivationKey::Relu6,
            ConvActivation::LeakyRelu(s) => ActivationKey::LeakyRelu(s.to_bits()),
        }
    }
}

/// Everything a plan depends on: two convolutions share a plan exactly when their keys are
/// equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanKey {
    pub n: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub dtype: DType,
    pub activation: ActivationKey,
    /// Whether f32 convolutions may use TF32 (`--allow-tf32`): it changes the math type.
    pub tf32: bool,
    pub policy: Policy,
}

/// How a plan's algorithm is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The timed search and [`choose`]: what the model runs.
    #[default]
    Search,
    /// The implicit precomputed GEMM with the bias fused, no search: the self-check runs it
    /// so that the fused call is verified whatever the search picks. Only without activation.
    FusedPrecompGemm,
}

impl PlanKey {
    /// The output's height and width.
    pub fn output_hw(&self) -> (usize, usize) {
        let out = |x: usize| (x + 2 * self.padding).saturating_sub(self.k) / self.stride.max(1) + 1;
        (out(self.h), out(self.w))
    }
}

impl std::fmt::Display for PlanKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{}x{} -> {} k{} s{} p{} {}{}{}",
            self.n,
            self.ci,
            self.h,
            self.w,
            self.co,
            self.k,
            self.stride,
            self.padding,
            self.dtype.as_str(),
            if self.tf32 { " tf32" } else { "" },
            match self.policy {
                Policy::Search => "",
                Policy::FusedPrecompGemm => " forced-fused",
            }
        )
    }
}

/// cuDNN's forward convolution algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    ImplicitGemm,
    ImplicitPrecompGemm,
    Gemm,
    Direct,
    Fft,
    FftTiling,
    Winograd,
    WinogradNonfused,
}

impl std::fmt::Display for Algo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Algo::ImplicitGemm => "implicit_gemm",
            Algo::ImplicitPrecompGemm => "implicit_precomp_gemm",
            Algo::Gemm => "gemm",
            Algo::Direct => "direct",
            Algo::Fft => "fft",
            Algo::FftTiling => "fft_tiling",
            Algo::Winograd => "winograd",
            Algo::WinogradNonfused => "winograd_nonfused",
        };
        f.write_str(name)
    }
}

/// How the bias and the activation follow the convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Epilogue {
    /// `cudnnConvolutionBiasActivationForward` with the identity: bias added by cuDNN.
    FusedBias,
    /// `cudnnConvolutionForward`, then our fused bias and activation kernel.
    Separate,
}

/// The epilogue that `algo` allows for `activation`: cuDNN fuses the identity only with the
/// implicit precomputed GEMM, and none of our activations (ReLU6, leaky ReLU) at all.
pub fn epilogue(activation: ConvActivation, algo: Algo) -> Epilogue {
    match (activation, algo) {
        (ConvActivation::None, Algo::ImplicitPrecompGemm) => Epilogue::FusedBias,
        _ => Epilogue::Separate,
    }
}

/// One algorithm as the timed search measured it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub algo: Algo,
    pub ms: f32,
    /// Workspace it needs, in bytes.
    pub workspace: usize,
}

/// How much slower than the fastest algorithm the implicit precomputed GEMM may be and still be
/// chosen for a convolution without activation: fusing the bias saves a pass over the output.
pub const FUSED_SLACK: f32 = 1.05;

/// The algorithm and epilogue for `activation` among the candidates that ran (any order):
/// the fastest, except that a convolution without activation takes the implicit precomputed
/// GEMM with the bias fused when it is within [`FUSED_SLACK`] of the fastest. `None` when no
/// candidate ran.
pub fn choose(
    candidates: &[Candidate],
    activation: ConvActivation,
) -> Option<(Candidate, Epilogue)> {
    let best = candidates
        .iter()
        .copied()
        .filter(|c| c.ms.is_finite())
        .min_by(|a, b| a.ms.total_cmp(&b.ms))?;
    if activation == ConvActivation::None {
        let fused = candidates
            .iter()
            .copied()
            .filter(|c| c.algo == Algo::ImplicitPrecompGemm && c.ms.is_finite())
            .min_by(|a, b| a.ms.total_cmp(&b.ms));
        if let Some(f) = fused.filter(|f| f.ms <= best.ms * FUSED_SLACK) {
            return Some((f, Epilogue::FusedBias));
        }
    }
    Some((best, epilogue(activation, best.algo)))
}

/// Granularity of the workspace's growth, so that plans needing a little more each do not
/// each reallocate it.
pub const WORKSPACE_GRANULE: usize = 1 << 20;

/// The new size of a workspace of `current` bytes that must hold `needed`: `None` when it
/// already does (it never shrinks), else `needed` rounded up to [`WORKSPACE_GRANULE`].
pub fn grown(current: usize, needed: usize) -> Option<usize> {
    (needed > current).then(|| needed.div_ceil(WORKSPACE_GRANULE) * WORKSPACE_GRANULE)
}

/// cuDNN's math type for a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MathType {
    /// FMA kernels only: strict f32. (`CUDNN_DEFAULT_MATH` would let cuDNN use TF32 on
    /// Ampere and later, which `--allow-tf32` off must exclude.)
    Fma,
    /// Tensor cores: TF32 for f32, f32 accumulation for f16/bf16.
    TensorOp,
}

/// The math type for `dtype` with TF32 allowed or not.
pub fn math_type(dtype: DType, tf32: bool) -> MathType {
    match dtype {
        DType::F32 if !tf32 => MathType::Fma,
        _ => MathType::TensorOp,
    }
}

/// One row of [`self_check`]: a model's convolution shape in one precision, the new op against
/// a strict f32 reference on the CPU (the old path too, for comparison) and both timed.
#[derive(Debug, Clone, Serialize)]
pub struct ConvCheck {
    /// Where the shape occurs in the model.
    pub layer: &'static str,
    /// `N×Ci×H×W -> Co kK sS pP dtype`.
    pub shape: String,
    pub dtype: String,
    pub activation: String,
    pub algo: String,
    pub fused: bool,
    /// The algorithm was not searched but forced ([`Policy::FusedPrecompGemm`]).
    pub forced: bool,
    pub workspace_bytes: usize,
    /// The new op against the f32 reference: relative L2 and max abs error.
    pub rel_l2: f64,
    pub max_abs: f64,
    /// The old path (candle's convolution or matrix product, then the bias kernel) against the
    /// same reference.
    pub rel_l2_old: f64,
    pub nan: bool,
    pub pass: bool,
    /// Mean milliseconds per call over the timed iterations.
    pub ms_old: f64,
    pub ms_new: f64,
}

impl std::fmt::Display for ConvCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {:<20} {:<36} {:<10} {:<22} {:<17} rel_l2 {:>9.2e} (old {:>9.2e}) max_abs {:>9.2e}  ms old {:>8.3} new {:>8.3}{}",
            if self.pass { "ok" } else { "FAIL" },
            self.layer,
            self.shape,
            self.activation,
            self.algo,
            match (self.fused, self.forced) {
                (true, true) => "forced fused",
                (false, true) => "forced, not fused",
                (true, false) => "fused",
                (false, false) => "",
            },
            self.rel_l2,
            self.rel_l2_old,
            self.max_abs,
            self.ms_old,
            self.ms_new,
            if self.nan { "  NaN!" } else { "" }
        )
    }
}

/// A dense convolution of a model (batch 1): `(layer, Ci, H, W, Co, K, stride, padding,
/// activation)`.
pub type CheckShape = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    ConvActivation,
);

/// Batch sizes of [`self_check`].
pub const CHECK_BATCHES: [usize; 2] = [1, 8];
/// Timed calls per path and row of [`self_check`], after the warm-up.
pub const CHECK_ITERATIONS: usize = 20;

/// Largest relative L2 error of the new op against the f32 reference: strict f32 (algorithms
/// such as Winograd and FFT round differently from a direct sum), TF32, and the half types,
/// whose outputs are rounded once (f16: 2^-11, bf16: 2^-8 relative) from an f32 accumulation.
pub fn check_tolerance(dtype: DType, tf32: bool) -> f64 {
    match dtype {
        DType::F32 if tf32 => 5e-3,
        DType::F32 => 1e-4,
        DType::F16 => 2e-3,
        _ => 1.6e-2,
    }
}

/// The activation as the check table prints it.
pub fn activation_name(a: ConvActivation) -> String {
    match a {
        ConvActivation::None => "none".into(),
        ConvActivation::Relu6 => "relu6".into(),
        ConvActivation::LeakyRelu(s) => format!("leaky({s})"),
    }
}

#[cfg(feature = "cudnn")]
pub use gpu::{conv2d_cudnn, self_check, Conv2dCudnn};

#[cfg(feature = "cudnn")]
mod gpu {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cudnn::{result as dnn, sys, CudnnError};
    use candle_core::cuda_backend::cudarc::driver::{
        sys::CUstreamCaptureStatus, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
        ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
    use candle_core::{
        CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Device, Layout, Result, Shape,
        Tensor,
    };

    use super::*;
    use crate::ops::conv::{conv2d_candle, BiasActivation, Conv2dFused};

    /// Workspace the search may give an algorithm, at most: FFT algorithms can ask for
    /// gigabytes, and one that needs more is simply not a candidate.
    const SEARCH_WORKSPACE_CAP: usize = 1 << 30;

    /// A cuDNN status as a candle error naming the op, the shape and the call.
    fn ck<T>(r: std::result::Result<T, CudnnError>, key: &PlanKey, call: &str) -> Result<T> {
        r.map_err(|e| candle_core::Error::Msg(format!("cudnn_conv {key}: {call}: {e}")))
    }

    fn data_type(dtype: DType) -> Result<sys::cudnnDataType_t> {
        Ok(match dtype {
            DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
            DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
            other => candle_core::bail!("cudnn_conv: no convolution in {other:?}"),
        })
    }

    fn to_sys(algo: Algo) -> sys::cudnnConvolutionFwdAlgo_t {
        use sys::cudnnConvolutionFwdAlgo_t as A;
        match algo {
            Algo::ImplicitGemm => A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            Algo::ImplicitPrecompGemm => A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            Algo::Gemm => A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
            Algo::Direct => A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
            Algo::Fft => A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
            Algo::FftTiling => A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
            Algo::Winograd => A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
            Algo::WinogradNonfused => A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        }
    }

    fn from_sys(algo: sys::cudnnConvolutionFwdAlgo_t) -> Option<Algo> {
        use sys::cudnnConvolutionFwdAlgo_t as A;
        Some(match algo {
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM => Algo::ImplicitGemm,
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM => Algo::ImplicitPrecompGemm,
            A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM => Algo::Gemm,
            A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT => Algo::Direct,
            A::CUDNN_CONVOLUTION_FWD_ALGO_FFT => Algo::Fft,
            A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING => Algo::FftTiling,
            A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD => Algo::Winograd,
            A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED => Algo::WinogradNonfused,
            _ => return None,
        })
    }

    const ALL_ALGOS: [Algo; 8] = [
        Algo::ImplicitGemm,
        Algo::ImplicitPrecompGemm,
        Algo::Gemm,
        Algo::Direct,
        Algo::Fft,
        Algo::FftTiling,
        Algo::Winograd,
        Algo::WinogradNonfused,
    ];

    fn c_int(v: usize, key: &PlanKey) -> Result<std::ffi::c_int> {
        std::ffi::c_int::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("cudnn_conv {key}: {v} exceeds a C int")))
    }

    /// The descriptors of one plan; each is destroyed on drop (null ones were never created).
    struct Descriptors {
        x: sys::cudnnTensorDescriptor_t,
        w: sys::cudnnFilterDescriptor_t,
        conv: sys::cudnnConvolutionDescriptor_t,
        y: sys::cudnnTensorDescriptor_t,
        bias: sys::cudnnTensorDescriptor_t,
        identity: sys::cudnnActivationDescriptor_t,
    }

    impl Descriptors {
        /// The descriptors of `key`'s convolution (NCHW, cross-correlation, f32 compute).
        fn new(key: &PlanKey) -> Result<Self> {
            use sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
            let data = data_type(key.dtype)?;
            let (ho, wo) = key.output_hw();
            let int = |v: usize| c_int(v, key);
            let (n, ci, h, w) = (int(key.n)?, int(key.ci)?, int(key.h)?, int(key.w)?);
            let (co, k, ho, wo) = (int(key.co)?, int(key.k)?, int(ho)?, int(wo)?);
            let (stride, pad) = (int(key.stride)?, int(key.padding)?);
            let math = match math_type(key.dtype, key.tf32) {
                MathType::Fma => sys::cudnnMathType_t::CUDNN_FMA_MATH,
                MathType::TensorOp => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
            };
            // Created one by one into `d`, so that a failure half-way destroys what exists.
            let mut d = Descriptors {
                x: std::ptr::null_mut(),
                w: std::ptr::null_mut(),
                conv: std::ptr::null_mut(),
                y: std::ptr::null_mut(),
                bias: std::ptr::null_mut(),
                identity: std::ptr::null_mut(),
            };
            d.x = ck(dnn::create_tensor_descriptor(), key, "create x")?;
            d.w = ck(dnn::create_filter_descriptor(), key, "create w")?;
            d.conv = ck(dnn::create_convolution_descriptor(), key, "create conv")?;
            d.y = ck(dnn::create_tensor_descriptor(), key, "create y")?;
            d.bias = ck(dnn::create_tensor_descriptor(), key, "create bias")?;
            d.identity = ck(dnn::create_activation_descriptor(), key, "create act")?;
            // SAFETY: each descriptor was just created and is set once, with the dimensions of
            // `key` (checked to fit a C int).
            unsafe {
                ck(
                    dnn::set_tensor4d_descriptor(d.x, CUDNN_TENSOR_NCHW, data, [n, ci, h, w]),
                    key,
                    "set x",
                )?;
                ck(
                    dnn::set_filter4d_descriptor(d.w, data, CUDNN_TENSOR_NCHW, [co, ci, k, k]),
                    key,
                    "set w",
                )?;
                ck(
                    dnn::set_convolution2d_descriptor(
                        d.conv,
                        pad,
                        pad,
                        stride,
                        stride,
                        1,
                        1,
                        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                        sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                    ),
                    key,
                    "set conv",
                )?;
                ck(
                    dnn::set_convolution_math_type(d.conv, math),
                    key,
                    "set math type",
                )?;
                ck(
                    dnn::set_tensor4d_descriptor(d.y, CUDNN_TENSOR_NCHW, data, [n, co, ho, wo]),
                    key,
                    "set y",
                )?;
                ck(
                    dnn::set_tensor4d_descriptor(d.bias, CUDNN_TENSOR_NCHW, data, [1, co, 1, 1]),
                    key,
                    "set bias",
                )?;
                ck(
                    dnn::set_activation_descriptor(
                        d.identity,
                        sys::cudnnActivationMode_t::CUDNN_ACTIVATION_IDENTITY,
                        sys::cudnnNanPropagation_t::CUDNN_NOT_PROPAGATE_NAN,
                        0.0,
                    ),
                    key,
                    "set activation",
                )?;
            }
            Ok(d)
        }
    }

    impl Drop for Descriptors {
        fn drop(&mut self) {
            // SAFETY: each non-null descriptor was created by `Descriptors::new`, is owned by
            // this value alone and is destroyed once, here. A failure cannot be reported from
            // a drop and leaks at most the descriptor.
            unsafe {
                if !self.x.is_null() {
                    let _ = dnn::destroy_tensor_descriptor(self.x);
                }
                if !self.w.is_null() {
                    let _ = dnn::destroy_filter_descriptor(self.w);
                }
                if !self.conv.is_null() {
                    let _ = dnn::destroy_convolution_descriptor(self.conv);
                }
                if !self.y.is_null() {
                    let _ = dnn::destroy_tensor_descriptor(self.y);
                }
                if !self.bias.is_null() {
                    let _ = dnn::destroy_tensor_descriptor(self.bias);
                }
                if !self.identity.is_null() {
                    let _ = sys::cudnnDestroyActivationDescriptor(self.identity);
                }
            }
        }
    }

    /// A shape's descriptors and the algorithm the search chose for it.
    struct Plan {
        desc: Descriptors,
        algo: Algo,
        epilogue: Epilogue,
        workspace: usize,
    }

    /// A cuDNN handle, destroyed on drop.
    struct Handle(sys::cudnnHandle_t);

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle was created by `DeviceState::new`, is owned by this value
            // alone, and every plan using it was dropped before it (field order of
            // `DeviceState`).
            let _ = unsafe { dnn::destroy_handle(self.0) };
        }
    }

    /// What one CUDA device keeps. Fields drop in order: plans, workspace, then the handle.
    struct DeviceState {
        plans: HashMap<PlanKey, Plan>,
        workspace: Option<CudaSlice<u8>>,
        handle: Handle,
        stream: Arc<CudaStream>,
    }

    // SAFETY: the handle and the descriptors are raw pointers that cuDNN lets any host thread
    // use, though not two at once; a `DeviceState` is only reached through the `STATES` mutex,
    // so one thread at a time uses it.
    unsafe impl Send for DeviceState {}

    impl DeviceState {
        fn new(dev: &CudaDevice) -> Result<Self> {
            let stream = dev.cuda_stream();
            stream.context().bind_to_thread().w()?;
            let handle = dnn::create_handle().map_err(|e| {
                candle_core::Error::Msg(format!(
                    "cudnn_conv: cannot create a cuDNN handle ({e}); is libcudnn.so.9 loadable?"
                ))
            })?;
            let handle = Handle(handle);
            // SAFETY: the handle was just created, and candle's stream outlives it (the state
            // holds an `Arc` of it).
            unsafe { dnn::set_stream(handle.0, stream.cu_stream().cast()) }
                .map_err(|e| candle_core::Error::Msg(format!("cudnn_conv: cudnnSetStream: {e}")))?;
            Ok(Self {
                plans: HashMap::new(),
                workspace: None,
                handle,
                stream,
            })
        }
    }

    type States = Mutex<HashMap<DeviceId, DeviceState>>;

    /// The state of every CUDA device that has run a cuDNN convolution.
    fn states() -> &'static States {
        static STATES: OnceLock<States> = OnceLock::new();
        STATES.get_or_init(|| Mutex::new(HashMap::new()))
    }

    /// What a caller learns about the plan of a shape.
    #[derive(Debug, Clone, Copy)]
    pub struct PlanInfo {
        pub algo: Algo,
        pub epilogue: Epilogue,
        pub workspace: usize,
    }

    /// The plan of `key` on `dev`, if one was made.
    pub fn plan_info(dev: &CudaDevice, key: &PlanKey) -> Option<PlanInfo> {
        let states = states().lock().ok()?;
        let p = states.get(&dev.id())?.plans.get(key)?;
        Some(PlanInfo {
            algo: p.algo,
            epilogue: p.epilogue,
            workspace: p.workspace,
        })
    }

    /// `act(conv2d(input, weight) + bias)` through cuDNN: `input` `N×Ci×H×W` on a CUDA device,
    /// `weight` `Co×Ci×K×K`, `bias` `Co`, all of one dtype (f32, f16 or bf16).
    pub fn conv2d_cudnn(
        input: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: usize,
        activation: ConvActivation,
    ) -> Result<Tensor> {
        conv2d_with(
            input,
            weight,
            bias,
            Conv2dCudnn {
                stride,
                padding,
                activation,
                policy: Policy::Search,
            },
        )
    }

    fn conv2d_with(
        input: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        op: Conv2dCudnn,
    ) -> Result<Tensor> {
        let input = input.contiguous()?;
        let weight = weight.contiguous()?;
        let bias = bias.flatten_all()?.contiguous()?;
        input.apply_op3_no_bwd(&weight, &bias, &op)
    }

    /// The custom op behind [`conv2d_cudnn`].
    #[derive(Debug, Clone, Copy)]
    pub struct Conv2dCudnn {
        pub stride: usize,
        pub padding: usize,
        pub activation: ConvActivation,
        pub policy: Policy,
    }

    /// The contiguous elements of a CUDA tensor of element type `T`; `what` names it in errors.
    fn view<'a, T: CudaDType>(
        s: &'a CudaStorage,
        l: &Layout,
        what: &str,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("cudnn_conv: the {what} must be contiguous");
        };
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    impl Conv2dCudnn {
        fn key(&self, l1: &Layout, l2: &Layout, dtype: DType) -> Result<PlanKey> {
            let (n, ci, h, w) = l1.shape().dims4()?;
            let (co, wci, kh, kw) = l2.shape().dims4()?;
            if wci != ci
                || kh != kw
                || self.stride == 0
                || h + 2 * self.padding < kh
                || w + 2 * self.padding < kw
            {
                candle_core::bail!(
                    "cudnn_conv: input {:?}, weight {:?}, stride {}, padding {} do not fit",
                    l1.dims(),
                    l2.dims(),
                    self.stride,
                    self.padding
                );
            }
            Ok(PlanKey {
                n,
                ci,
                h,
                w,
                co,
                k: kh,
                stride: self.stride,
                padding: self.padding,
                dtype,
                activation: self.activation.into(),
                tf32: candle_core::cuda::gemm_reduced_precision_f32(),
                policy: self.policy,
            })
        }

        fn run<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
            &self,
            key: &PlanKey,
            (s1, l1): (&CudaStorage, &Layout),
            (s2, l2): (&CudaStorage, &Layout),
            (s3, l3): (&CudaStorage, &Layout),
        ) -> Result<CudaStorage> {
            let dev = s1.device().clone();
            let x = view::<T>(s1, l1, "input")?;
            let w = view::<T>(s2, l2, "weight")?;
            let b = view::<T>(s3, l3, "bias")?;
            if b.len() != key.co {
                candle_core::bail!(
                    "cudnn_conv {key}: bias of {} for {} channels",
                    b.len(),
                    key.co
                );
            }
            let (ho, wo) = key.output_hw();
            let out_len = key.n * key.co * ho * wo;
            let mut states = states()
                .lock()
                .map_err(|_| candle_core::Error::Msg("cudnn_conv: state lock poisoned".into()))?;
            let state = match states.entry(dev.id()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(DeviceState::new(&dev)?),
            };
            let stream = state.stream.clone();
            stream.context().bind_to_thread().w()?;
            // Unplanned shapes may plan to fuse when there is no activation.
            let fused = self.activation == ConvActivation::None
                && state
                    .plans
                    .get(key)
                    .is_none_or(|p| p.epilogue == Epilogue::FusedBias);
            let mut y = if fused {
                // The fused call blends `alpha2 · z` in with z = y and alpha2 = 0; cuDNN does
                // not promise to skip reading z as it does for beta, and 0 · NaN is NaN, so y
                // starts at zero whenever the plan may fuse.
                dev.alloc_zeros::<T>(out_len)?
            } else {
                // SAFETY: the convolution below writes every element of its output before
                // anything reads it (beta is 0, so cuDNN does not read it either).
                unsafe { dev.alloc::<T>(out_len) }?
            };

            let (x_ptr, _x_read) = x.device_ptr(&stream);
            let (w_ptr, _w_read) = w.device_ptr(&stream);
            let (b_ptr, _b_read) = b.device_ptr(&stream);
            let (y_ptr, _y_write) = y.device_ptr_mut(&stream);
            let fresh = !state.plans.contains_key(key);
            if fresh {
                let capturing = stream.capture_status().w()?;
                if capturing != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
                    candle_core::bail!(
                        "cudnn_conv {key}: first seen during CUDA graph capture; run it once \
                         before capturing (the warm-up plans every shape)"
                    );
                }
                let plan = plan(state, key, x_ptr, w_ptr, y_ptr)?;
                if let Some(size) = grown(
                    state.workspace.as_ref().map_or(0, |w| w.len()),
                    plan.workspace,
                ) {
                    // The old buffer is freed in stream order, after the work queued on it.
                    state.workspace = None;
                    // SAFETY: a workspace is scratch space: cuDNN never reads what it did not
                    // write in the same call.
                    state.workspace = Some(unsafe { stream.alloc::<u8>(size) }.w()?);
                }
                tracing::debug!(
                    shape = %key,
                    algo = %plan.algo,
                    epilogue = ?plan.epilogue,
                    workspace = plan.workspace,
                    "cuDNN convolution planned"
                );
                state.plans.insert(*key, plan);
            }
            let handle = state.handle.0;
            let ws_len = state.workspace.as_ref().map_or(0, |w| w.len());
            let (ws_ptr, _ws_use) = match state.workspace.as_mut() {
                Some(ws) => {
                    let (p, guard) = ws.device_ptr_mut(&stream);
                    (p, Some(guard))
                }
                None => (0, None),
            };
            let buffers = Buffers {
                x: x_ptr,
                w: w_ptr,
                b: b_ptr,
                y: y_ptr,
                workspace: ws_ptr,
                workspace_len: ws_len,
            };
            let Some(plan) = state.plans.get_mut(key) else {
                candle_core::bail!("cudnn_conv {key}: no plan");
            };
            // SAFETY: the handle is bound to `stream`, on which every buffer is ordered (the
            // read/write guards above); `x`, `w` and `b` hold the contiguous elements of the
            // input, weight and bias of `key`'s shape, `y` was allocated for its output (zeroed
            // where the bias may be fused), and the workspace holds at least the plan's size
            // (grown when the plan was made).
            let mut status = unsafe { launch(handle, plan, plan.epilogue, &buffers) };
            if status.is_err() && fresh && plan.epilogue == Epilogue::FusedBias {
                // A configuration without a fused kernel: keep the bias separate from now on.
                plan.epilogue = Epilogue::Separate;
                // SAFETY: as above.
                status = unsafe { launch(handle, plan, Epilogue::Separate, &buffers) };
            }
            let call = match plan.epilogue {
                Epilogue::FusedBias => "cudnnConvolutionBiasActivationForward",
                Epilogue::Separate => "cudnnConvolutionForward",
            };
            ck(status, key, call)?;
            let epilogue = plan.epilogue;
            drop((_x_read, _w_read, _b_read, _y_write, _ws_use));
            drop(states);
            let y = CudaStorage::wrap_cuda_slice(y, dev);
            match epilogue {
                Epilogue::FusedBias => Ok(y),
                Epilogue::Separate => {
                    let layout = Layout::contiguous((key.n, key.co, ho, wo));
                    let (out, _) = candle_core::CustomOp2::cuda_fwd(
                        &BiasActivation {
                            activation: self.activation,
                        },
                        &y,
                        &layout,
                        s3,
                        l3,
                    )?;
                    Ok(out)
                }
            }
        }
    }

    /// The device pointers of one call.
    struct Buffers {
        x: u64,
        w: u64,
        b: u64,
        y: u64,
        workspace: u64,
        workspace_len: usize,
    }

    /// Queues `plan`'s convolution with `epilogue` on the handle's stream: the bias fused by
    /// cuDNN, or the convolution alone.
    ///
    /// # Safety
    ///
    /// `handle` must be the live handle `plan` was made with; the buffers must be device
    /// memory ordered on its stream, of the sizes and element type of the plan's descriptors
    /// (`b` one element per output channel), the workspace at least the plan's size, and `y`
    /// initialised when the bias is fused (its `alpha2 · z` term, with z = y and alpha2 = 0).
    unsafe fn launch(
        handle: sys::cudnnHandle_t,
        plan: &Plan,
        epilogue: Epilogue,
        p: &Buffers,
    ) -> std::result::Result<(), CudnnError> {
        // Scaling factors are f32 for f32, f16 and bf16 data.
        let (one, zero) = (1f32, 0f32);
        let d = &plan.desc;
        let algo = to_sys(plan.algo);
        let ws = p.workspace as *mut std::ffi::c_void;
        // SAFETY: the caller answers for the handle, descriptors and buffers.
        unsafe {
            match epilogue {
                Epilogue::FusedBias => dnn::convolution_bias_activation_forward(
                    handle,
                    (&one as *const f32).cast(),
                    d.x,
                    p.x as *const std::ffi::c_void,
                    d.w,
                    p.w as *const std::ffi::c_void,
                    d.conv,
                    algo,
                    ws,
                    p.workspace_len,
                    (&zero as *const f32).cast(),
                    d.y,
                    p.y as *const std::ffi::c_void,
                    d.bias,
                    p.b as *const std::ffi::c_void,
                    d.identity,
                    d.y,
                    p.y as *mut std::ffi::c_void,
                ),
                Epilogue::Separate => dnn::convolution_forward(
                    handle,
                    (&one as *const f32).cast(),
                    d.x,
                    p.x as *const std::ffi::c_void,
                    d.w,
                    p.w as *const std::ffi::c_void,
                    d.conv,
                    algo,
                    ws,
                    p.workspace_len,
                    (&zero as *const f32).cast(),
                    d.y,
                    p.y as *mut std::ffi::c_void,
                ),
            }
        }
    }

    /// Makes `key`'s plan: its descriptors, and the algorithm chosen by timing every one that
    /// fits [`SEARCH_WORKSPACE_CAP`] on the real buffers (`y` is overwritten; the convolution
    /// runs after). Runs on `state`'s stream and waits for it.
    fn plan(state: &DeviceState, key: &PlanKey, x: u64, w: u64, y: u64) -> Result<Plan> {
        let desc = Descriptors::new(key)?;
        let handle = state.handle.0;
        let activation = match key.activation {
            ActivationKey::None => ConvActivation::None,
            ActivationKey::Relu6 => ConvActivation::Relu6,
            ActivationKey::LeakyRelu(bits) => ConvActivation::LeakyRelu(f32::from_bits(bits)),
        };
        if key.policy == Policy::FusedPrecompGemm {
            if activation != ConvActivation::None {
                candle_core::bail!("cudnn_conv {key}: cuDNN fuses no activation but the identity");
            }
            let algo = Algo::ImplicitPrecompGemm;
            // SAFETY: the handle and descriptors are live.
            let workspace = ck(
                unsafe {
                    dnn::get_convolution_forward_workspace_size(
                        handle,
                        desc.x,
                        desc.w,
                        desc.conv,
                        desc.y,
                        to_sys(algo),
                    )
                },
                key,
                "cudnnGetConvolutionForwardWorkspaceSize",
            )?;
            return Ok(Plan {
                desc,
                algo,
                epilogue: Epilogue::FusedBias,
                workspace,
            });
        }
        let mut search_ws = 0usize;
        for algo in ALL_ALGOS {
            // SAFETY: the handle and descriptors are live; an algorithm that does not support
            // the shape answers an error, which only leaves it out.
            let size = unsafe {
                dnn::get_convolution_forward_workspace_size(
                    handle,
                    desc.x,
                    desc.w,
                    desc.conv,
                    desc.y,
                    to_sys(algo),
                )
            };
            if let Ok(size) = size {
                if size <= SEARCH_WORKSPACE_CAP {
                    search_ws = search_ws.max(size);
                }
            }
        }
        let stream = &state.stream;
        // SAFETY: scratch space, as the workspace.
        let mut ws = unsafe { stream.alloc::<u8>(search_ws.max(1)) }.w()?;
        const REQUESTED: usize = ALL_ALGOS.len();
        // SAFETY: the perf structs hold enums whose value 0 is a valid variant (IMPLICIT_GEMM,
        // SUCCESS, NON_DETERMINISTIC, DEFAULT_MATH), an f32 and integers.
        let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; REQUESTED] =
            unsafe { std::mem::zeroed() };
        let mut returned: std::ffi::c_int = 0;
        {
            let (ws_ptr, _ws_use) = ws.device_ptr_mut(stream);
            // SAFETY: `x`, `w` and `y` are the device buffers of `key`'s shape (the caller's
            // input, weight and output), the workspace holds `search_ws` bytes, `perf` has room
            // for `REQUESTED` results and `returned` receives their number.
            let status = unsafe {
                sys::cudnnFindConvolutionForwardAlgorithmEx(
                    handle,
                    desc.x,
                    x as *const std::ffi::c_void,
                    desc.w,
                    w as *const std::ffi::c_void,
                    desc.conv,
                    desc.y,
                    y as *mut std::ffi::c_void,
                    REQUESTED as std::ffi::c_int,
                    &mut returned,
                    perf.as_mut_ptr(),
                    ws_ptr as *mut std::ffi::c_void,
                    search_ws,
                )
            };
            ck(
                status.result(),
                key,
                "cudnnFindConvolutionForwardAlgorithmEx",
            )?;
        }
        drop(ws);
        let returned = usize::try_from(returned).unwrap_or(0).min(REQUESTED);
        let candidates: Vec<Candidate> = perf[..returned]
            .iter()
            .filter(|p| p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
            .filter(|p| p.memory <= SEARCH_WORKSPACE_CAP)
            .filter_map(|p| {
                Some(Candidate {
                    algo: from_sys(p.algo)?,
                    ms: p.time,
                    workspace: p.memory,
                })
            })
            .collect();
        // With tensor cores allowed, cuDNN times each algorithm with and without them: run
        // the chosen one as it was timed (strict f32 keeps its FMA-only math).
        let math_of = |algo: Algo, ms: f32| {
            perf[..returned]
                .iter()
                .find(|p| from_sys(p.algo) == Some(algo) && p.time == ms)
                .map(|p| p.mathType)
        };
        let Some((chosen, epilogue)) = choose(&candidates, activation) else {
            candle_core::bail!("cudnn_conv {key}: no cuDNN algorithm runs this convolution");
        };
        if math_type(key.dtype, key.tf32) == MathType::TensorOp {
            if let Some(math) = math_of(chosen.algo, chosen.ms) {
                // SAFETY: the descriptor is live and owned by this plan.
                ck(
                    unsafe { dnn::set_convolution_math_type(desc.conv, math) },
                    key,
                    "set math type",
                )?;
            }
        }
        // The fused call's workspace is the forward's for the same algorithm.
        // SAFETY: the handle and descriptors are live.
        let workspace = ck(
            unsafe {
                dnn::get_convolution_forward_workspace_size(
                    handle,
                    desc.x,
                    desc.w,
                    desc.conv,
                    desc.y,
                    to_sys(chosen.algo),
                )
            },
            key,
            "cudnnGetConvolutionForwardWorkspaceSize",
        )?;
        Ok(Plan {
            desc,
            algo: chosen.algo,
            epilogue,
            workspace: workspace.max(chosen.workspace),
        })
    }

    impl CustomOp3 for Conv2dCudnn {
        fn name(&self) -> &'static str {
            "conv2d_cudnn"
        }

        /// The same convolution on the CPU, as `conv2d_fused` runs it there.
        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            s3: &CpuStorage,
            l3: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            Conv2dFused {
                stride: self.stride,
                padding: self.padding,
                activation: self.activation,
                winograd_weights: false,
            }
            .cpu_fwd(s1, l1, s2, l2, s3, l3)
        }

        fn cuda_fwd(
            &self,
            s1: &CudaStorage,
            l1: &Layout,
            s2: &CudaStorage,
            l2: &Layout,
            s3: &CudaStorage,
            l3: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let dtype = s1.dtype();
            if s2.dtype() != dtype || s3.dtype() != dtype {
                candle_core::bail!(
                    "cudnn_conv: input {dtype:?}, weight {:?} and bias {:?} differ",
                    s2.dtype(),
                    s3.dtype()
                );
            }
            let key = self.key(l1, l2, dtype)?;
            let args = ((s1, l1), (s2, l2), (s3, l3));
            let out = match dtype {
                DType::F32 => self.run::<f32>(&key, args.0, args.1, args.2)?,
                DType::F16 => self.run::<half::f16>(&key, args.0, args.1, args.2)?,
                DType::BF16 => self.run::<half::bf16>(&key, args.0, args.1, args.2)?,
                other => candle_core::bail!("cudnn_conv: no convolution in {other:?}"),
            };
            let (ho, wo) = key.output_hw();
            Ok((out, Shape::from((key.n, key.co, ho, wo))))
        }
    }

    /// Runs every one of `shapes` at each of [`CHECK_BATCHES`] in f32, f16 and bf16
    /// through the new op and the old path (candle's convolution or matrix product, then the
    /// bias kernel), compares both with a strict f32 reference computed on the CPU from the
    /// same values, and times both ([`CHECK_ITERATIONS`] calls after a warm-up that makes the
    /// plan). Inputs are random, rounded to bf16 so that every precision sees the same values.
    /// Shapes without activation also run, at the first batch size, with the fused call forced
    /// ([`Policy::FusedPrecompGemm`]), so that it is verified whatever the search picks.
    pub fn self_check(device: &Device, shapes: &[CheckShape]) -> Result<Vec<ConvCheck>> {
        let Device::Cuda(cuda) = device else {
            candle_core::bail!("cudnn_conv self-check needs a CUDA device");
        };
        let mut rows = Vec::new();
        for &shape in shapes {
            let (_, ci, h, w, co, k, stride, padding, activation) = shape;
            for (i, &n) in CHECK_BATCHES.iter().enumerate() {
                let exact = |t: Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
                let x = exact(Tensor::randn(0f32, 1.0, (n, ci, h, w), &Device::Cpu)?)?;
                let scale = 1.0 / ((ci * k * k) as f64).sqrt();
                let wt = exact((Tensor::randn(0f32, 1.0, (co, ci, k, k), &Device::Cpu)? * scale)?)?;
                let b = exact((Tensor::randn(0f32, 1.0, co, &Device::Cpu)? * 0.1)?)?;
                let reference = crate::ops::conv2d_fused(&x, &wt, &b, stride, padding, activation)?;
                for dtype in [DType::F32, DType::F16, DType::BF16] {
                    let on = |t: &Tensor| t.to_dtype(dtype)?.to_device(device);
                    let inputs = [on(&x)?, on(&wt)?, on(&b)?];
                    rows.push(check_row(cuda, shape, &inputs, &reference, Policy::Search)?);
                    if i == 0 && activation == ConvActivation::None {
                        let forced = Policy::FusedPrecompGemm;
                        rows.push(check_row(cuda, shape, &inputs, &reference, forced)?);
                    }
                }
            }
        }
        Ok(rows)
    }

    /// One row of [`self_check`]: `inputs` (input, weight, bias on the GPU) through the new op
    /// with `policy` and through the old path, against `reference`.
    fn check_row(
        cuda: &CudaDevice,
        shape: CheckShape,
        inputs: &[Tensor; 3],
        reference: &Tensor,
        policy: Policy,
    ) -> Result<ConvCheck> {
        let (layer, ci, h, w, co, k, stride, padding, activation) = shape;
        let [x, wt, b] = inputs;
        let (n, dtype) = (x.dim(0)?, x.dtype());
        let tf32 = candle_core::cuda::gemm_reduced_precision_f32();
        let op = Conv2dCudnn {
            stride,
            padding,
            activation,
            policy,
        };
        let new = || conv2d_with(x, wt, b, op);
        let old = || conv2d_candle(x, wt, b, stride, padding, activation);
        let (rel_l2, max_abs, nan) = compare(&new()?, reference)?;
        let (rel_l2_old, _, _) = compare(&old()?, reference)?;
        let ms_old = time(cuda, old)?;
        let ms_new = time(cuda, new)?;
        let key = PlanKey {
            n,
            ci,
            h,
            w,
            co,
            k,
            stride,
            padding,
            dtype,
            activation: activation.into(),
            tf32,
            policy,
        };
        let info = plan_info(cuda, &key);
        Ok(ConvCheck {
            layer,
            shape: key.to_string(),
            dtype: dtype.as_str().to_string(),
            activation: activation_name(activation),
            algo: info.map_or("-".into(), |i| i.algo.to_string()),
            fused: info.is_some_and(|i| i.epilogue == Epilogue::FusedBias),
            forced: policy != Policy::Search,
            workspace_bytes: info.map_or(0, |i| i.workspace),
            rel_l2,
            max_abs,
            rel_l2_old,
            nan,
            pass: !nan && rel_l2 <= check_tolerance(dtype, tf32),
            ms_old,
            ms_new,
        })
    }

    /// Mean milliseconds of `f` over [`CHECK_ITERATIONS`] calls after two warm-up calls,
    /// between CUDA events on candle's stream.
    fn time(dev: &CudaDevice, f: impl Fn() -> Result<Tensor>) -> Result<f64> {
        use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
        for _ in 0..2 {
            f()?;
        }
        let stream = dev.cuda_stream();
        let start = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .w()?;
        for _ in 0..CHECK_ITERATIONS {
            f()?;
        }
        let end = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .w()?;
        Ok(start.elapsed_ms(&end).w()? as f64 / CHECK_ITERATIONS as f64)
    }

    /// ‖a − b‖ / ‖b‖, max |a − b| and whether `a` holds a NaN, in f64 on the CPU.
    fn compare(a: &Tensor, b: &Tensor) -> Result<(f64, f64, bool)> {
        if a.dims() != b.dims() {
            candle_core::bail!(
                "cudnn_conv check: shapes differ: {:?} vs {:?}",
                a.dims(),
                b.dims()
            );
        }
        let flat = |t: &Tensor| -> Result<Vec<f32>> {
            t.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let (a, b) = (flat(a)?, flat(b)?);
        let (mut diff, mut norm, mut max_abs, mut nan) = (0f64, 0f64, 0f64, false);
        for (x, y) in a.iter().zip(&b) {
            nan |= x.is_nan();
            let d = f64::from(*x) - f64::from(*y);
            diff += d * d;
            norm += f64::from(*y) * f64::from(*y);
            max_abs = max_abs.max(d.abs());
        }
        let rel = if norm > 0.0 {
            (diff / norm).sqrt()
        } else {
            diff.sqrt()
        };
        Ok((rel, max_abs, nan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PlanKey {
        PlanKey {
            n: 8,
            ci: 256,
            h: 128,
            w: 96,
            co: 256,
            k: 3,
            stride: 1,
            padding: 1,
            dtype: DType::F32,
            activation: ConvActivation::None.into(),
            tf32: false,
            policy: Policy::Search,
        }
    }

    #[test]
    fn equal_shapes_share_a_plan_and_any_differing_field_does_not() {
        use std::collections::HashMap;
        let mut plans: HashMap<PlanKey, &str> = HashMap::new();
        plans.insert(key(), "first");
        // The same shape built again finds the plan.
        assert_eq!(plans.get(&key()), Some(&"first"));
        let variants: Vec<PlanKey> = vec![
            PlanKey { n: 1, ..key() },
            PlanKey { ci: 128, ..key() },
            PlanKey { h: 64, ..key() },
            PlanKey { w: 48, ..key() },
            PlanKey { co: 128, ..key() },
            PlanKey { k: 1, ..key() },
            PlanKey { stride: 2, ..key() },
            PlanKey {
                padding: 0,
                ..key()
            },
            PlanKey {
                dtype: DType::F16,
                ..key()
            },
            PlanKey {
                dtype: DType::BF16,
                ..key()
            },
            PlanKey {
                activation: ConvActivation::Relu6.into(),
                ..key()
            },
            PlanKey {
                activation: ConvActivation::LeakyRelu(0.1).into(),
                ..key()
            },
            PlanKey {
                activation: ConvActivation::LeakyRelu(0.2).into(),
                ..key()
            },
            PlanKey {
                tf32: true,
                ..key()
            },
            PlanKey {
                policy: Policy::FusedPrecompGemm,
                ..key()
            },
        ];
        for v in &variants {
            assert!(!plans.contains_key(v), "{v:?} must not share the plan");
            plans.insert(*v, "other");
        }
        // Every variant is its own plan, and the first is untouched.
        assert_eq!(plans.len(), variants.len() + 1);
        assert_eq!(plans.get(&key()), Some(&"first"));
    }

    #[test]
    fn a_forced_plan_says_so_in_its_name() {
        assert_eq!(key().to_string(), "8x256x128x96 -> 256 k3 s1 p1 f32");
        let forced = PlanKey {
            policy: Policy::FusedPrecompGemm,
            tf32: true,
            ..key()
        };
        assert_eq!(
            forced.to_string(),
            "8x256x128x96 -> 256 k3 s1 p1 f32 tf32 forced-fused"
        );
    }

    #[cfg(feature = "cudnn")]
    #[test]
    fn on_the_cpu_the_op_computes_what_conv2d_fused_does() {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Tensor::randn(0f32, 1.0, (2, 5, 9, 7), &dev).expect("x");
        let wt = candle_core::Tensor::randn(0f32, 1.0, (3, 5, 3, 3), &dev).expect("w");
        let b = candle_core::Tensor::randn(0f32, 1.0, 3, &dev).expect("b");
        let act = ConvActivation::LeakyRelu(0.1);
        let want = crate::ops::conv2d_fused(&x, &wt, &b, 2, 1, act).expect("fused");
        let got = conv2d_cudnn(&x, &wt, &b, 2, 1, act).expect("cudnn op on the cpu");
        let diff = (got - want)
            .expect("diff")
            .abs()
            .expect("abs")
            .max_all()
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn output_size_follows_stride_and_padding() {
        assert_eq!(key().output_hw(), (128, 96));
        let stem = PlanKey {
            ci: 7,
            h: 256,
            w: 192,
            co: 32,
            stride: 2,
            ..key()
        };
        assert_eq!(stem.output_hw(), (128, 96));
        let pointwise = PlanKey {
            k: 1,
            padding: 0,
            h: 9,
            w: 7,
            ..key()
        };
        assert_eq!(pointwise.output_hw(), (9, 7));
        // Odd size, stride 2, 3×3, padding 1: (9 + 2 − 3) / 2 + 1 = 5.
        assert_eq!(
            PlanKey {
                h: 9,
                w: 7,
                stride: 2,
                ..key()
            }
            .output_hw(),
            (5, 4)
        );
    }

    #[test]
    fn only_the_identity_with_implicit_precomp_gemm_fuses() {
        let all = [
            Algo::ImplicitGemm,
            Algo::ImplicitPrecompGemm,
            Algo::Gemm,
            Algo::Direct,
            Algo::Fft,
            Algo::FftTiling,
            Algo::Winograd,
            Algo::WinogradNonfused,
        ];
        for algo in all {
            let want = if algo == Algo::ImplicitPrecompGemm {
                Epilogue::FusedBias
            } else {
                Epilogue::Separate
            };
            assert_eq!(epilogue(ConvActivation::None, algo), want, "{algo}");
            // cuDNN fuses no clipped or leaky ReLU.
            assert_eq!(epilogue(ConvActivation::Relu6, algo), Epilogue::Separate);
            assert_eq!(
                epilogue(ConvActivation::LeakyRelu(0.1), algo),
                Epilogue::Separate
            );
        }
    }

    fn cand(algo: Algo, ms: f32) -> Candidate {
        Candidate {
            algo,
            ms,
            workspace: 0,
        }
    }

    #[test]
    fn choice_is_the_fastest_unless_the_fused_gemm_is_close() {
        // Precomputed GEMM 4 % slower than Winograd: fused for the identity...
        let close = [
            cand(Algo::Winograd, 1.0),
            cand(Algo::ImplicitPrecompGemm, 1.04),
        ];
        let (c, e) = choose(&close, ConvActivation::None).expect("choice");
        assert_eq!(
            (c.algo, e),
            (Algo::ImplicitPrecompGemm, Epilogue::FusedBias)
        );
        // ...but not with an activation cuDNN cannot fuse.
        let (c, e) = choose(&close, ConvActivation::Relu6).expect("choice");
        assert_eq!((c.algo, e), (Algo::Winograd, Epilogue::Separate));
        // 10 % slower: the fastest wins, bias separate.
        let far = [
            cand(Algo::ImplicitPrecompGemm, 1.10),
            cand(Algo::Winograd, 1.0),
        ];
        let (c, e) = choose(&far, ConvActivation::None).expect("choice");
        assert_eq!((c.algo, e), (Algo::Winograd, Epilogue::Separate));
        // The fastest being the precomputed GEMM fuses it.
        let best = [cand(Algo::Gemm, 2.0), cand(Algo::ImplicitPrecompGemm, 0.5)];
        let (c, e) = choose(&best, ConvActivation::None).expect("choice");
        assert_eq!(
            (c.algo, e),
            (Algo::ImplicitPrecompGemm, Epilogue::FusedBias)
        );
        let (c, e) = choose(&best, ConvActivation::LeakyRelu(0.1)).expect("choice");
        assert_eq!((c.algo, e), (Algo::ImplicitPrecompGemm, Epilogue::Separate));
        // Unmeasured times never win; nothing measured, no choice.
        let nan = [cand(Algo::Fft, f32::NAN), cand(Algo::Gemm, 3.0)];
        assert_eq!(
            choose(&nan, ConvActivation::Relu6).map(|(c, _)| c.algo),
            Some(Algo::Gemm)
        );
        assert!(choose(&[], ConvActivation::None).is_none());
    }

    #[test]
    fn workspace_only_grows_in_whole_granules() {
        const MIB: usize = WORKSPACE_GRANULE;
        // Nothing needed, or already large enough: no reallocation.
        assert_eq!(grown(0, 0), None);
        assert_eq!(grown(4 * MIB, 4 * MIB), None);
        assert_eq!(grown(4 * MIB, 1), None);
        // Larger: rounded up to the granule.
        assert_eq!(grown(0, 1), Some(MIB));
        assert_eq!(grown(MIB, MIB + 1), Some(2 * MIB));
        assert_eq!(grown(2 * MIB, 3 * MIB), Some(3 * MIB));
        // A sequence of plans: the size is the largest need so far, never less.
        let mut size = 0;
        for need in [3 * MIB / 2, MIB, 5 * MIB, 0, 2 * MIB] {
            if let Some(s) = grown(size, need) {
                assert!(s > size && s >= need);
                size = s;
            }
            assert!(size >= need);
        }
        assert_eq!(size, 5 * MIB);
    }

    #[test]
    fn strict_f32_excludes_tensor_cores_and_halves_use_them() {
        assert_eq!(math_type(DType::F32, false), MathType::Fma);
        assert_eq!(math_type(DType::F32, true), MathType::TensorOp);
        for tf32 in [false, true] {
            assert_eq!(math_type(DType::F16, tf32), MathType::TensorOp);
            assert_eq!(math_type(DType::BF16, tf32), MathType::TensorOp);
        }
    }

    #[cfg(not(feature = "cudnn"))]
    #[test]
    fn turning_it_on_without_cudnn_is_an_error_and_changes_nothing() {
        let err = enable_cudnn_conv(true).expect_err("no cudnn in this build");
        assert!(err.contains("needs a build with --features cudnn"), "{err}");
        assert!(!cudnn_conv_enabled());
        assert!(!applies(&candle_core::Device::Cpu));
        // Off is always accepted.
        assert_eq!(enable_cudnn_conv(false), Ok(()));
        assert!(!cudnn_conv_enabled());
    }

    #[cfg(feature = "cudnn")]
    #[test]
    fn a_cudnn_build_turns_it_on_and_off() {
        assert_eq!(enable_cudnn_conv(true), Ok(()));
        assert!(cudnn_conv_enabled());
        // The CPU never takes it, switch or not.
        assert!(!applies(&candle_core::Device::Cpu));
        assert_eq!(enable_cudnn_conv(false), Ok(()));
        assert!(!cudnn_conv_enabled());
    }

    #[test]
    fn check_rows_print_one_line_with_their_figures() {
        let row = ConvCheck {
            layer: "fpn.smooth@128x96",
            shape: key().to_string(),
            dtype: "f32".into(),
            activation: activation_name(ConvActivation::None),
            algo: Algo::ImplicitPrecompGemm.to_string(),
            fused: true,
            forced: false,
            workspace_bytes: 0,
            rel_l2: 1.5e-6,
            max_abs: 2e-5,
            rel_l2_old: 3e-6,
            nan: false,
            pass: true,
            ms_old: 2.5,
            ms_new: 1.25,
        };
        let line = row.to_string();
        assert!(line.starts_with("ok "), "{line}");
        for part in [
            "8x256x128x96 -> 256 k3 s1 p1 f32",
            "implicit_precomp_gemm",
            "fused",
            "2.500",
            "1.250",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        assert!(!line.contains('\n'));
        let json = serde_json::to_value(&row).expect("json");
        assert_eq!(json["ms_new"], 1.25);
        assert_eq!(json["fused"], true);
        assert_eq!(json["algo"], "implicit_precomp_gemm");
    }
}
