// The element types of the kernels that come in every precision: each is written once as a
// template over its element type T, computes in f32 (loads convert to float, stores round back)
// and is instantiated by an extern "C" entry per type, `<name>_f32`, `<name>_f16`, `<name>_bf16`.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
    return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// ENTRY(suffix, type) once per precision.
#define FOR_EACH_PRECISION(ENTRY) ENTRY(f32, float) ENTRY(f16, __half) ENTRY(bf16, __nv_bfloat16)
