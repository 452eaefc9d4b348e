// out = act(x + bias[c]) over N×C×(H·W): the bias and activation after a convolution in one
// pass. act: 0 identity, 1 ReLU6, 2 leaky ReLU with `slope`.
#include "precision.cuh"

template <typename T>
__device__ __forceinline__ void bias_act(
    const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out,
    long total, int c, long plane, int act, float slope) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int ch = (int)((idx / plane) % c);
    float v = to_float(x[idx]) + to_float(bias[ch]);
    if (act == 1) v = fminf(fmaxf(v, 0.0f), 6.0f);
    else if (act == 2) v = v >= 0.0f ? v : v * slope;
    out[idx] = from_float<T>(v);
}

#define BIAS_ACT_ENTRY(suffix, T)                                                             \
    extern "C" __global__ void bias_act_##suffix(                                             \
        const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out, long total, \
        int c, long plane, int act, float slope) {                                            \
        bias_act<T>(x, bias, out, total, c, plane, act, slope);                               \
    }
FOR_EACH_PRECISION(BIAS_ACT_ENTRY)
