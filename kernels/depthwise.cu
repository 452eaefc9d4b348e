// Depthwise 3×3 convolution, zero padding 1, stride 1 or 2, with the folded-BatchNorm bias and
// an optional ReLU6. input N×C×H×W, weight C×9, bias C, out N×C×Ho×Wo. One thread per output.
#include "precision.cuh"

template <typename T>
__device__ __forceinline__ void depthwise3x3(
    const T* __restrict__ input, const T* __restrict__ weight, const T* __restrict__ bias,
    T* __restrict__ out, int n, int c, int h, int w, int ho, int wo, int stride, int relu6) {
    const long plane_out = (long)ho * wo;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n * c * plane_out) return;
    const long bc = idx / plane_out;
    const long p = idx - bc * plane_out;
    const int ch = (int)(bc % c);
    const int oy = (int)(p / wo);
    const int ox = (int)(p - (long)oy * wo);
    const T* src = input + bc * (long)h * w;
    const T* k = weight + ch * 9;
    float acc = to_float(bias[ch]);
    #pragma unroll
    for (int ky = 0; ky < 3; ++ky) {
        const int iy = oy * stride + ky - 1;
        if (iy < 0 || iy >= h) continue;
        float row = 0.0f;
        #pragma unroll
        for (int kx = 0; kx < 3; ++kx) {
            const int ix = ox * stride + kx - 1;
            if (ix < 0 || ix >= w) continue;
            row += to_float(k[ky * 3 + kx]) * to_float(src[(long)iy * w + ix]);
        }
        acc += row;
    }
    if (relu6) acc = fminf(fmaxf(acc, 0.0f), 6.0f);
    out[idx] = from_float<T>(acc);
}

#define DEPTHWISE_ENTRY(suffix, T)                                                            \
    extern "C" __global__ void depthwise3x3_##suffix(                                         \
        const T* __restrict__ input, const T* __restrict__ weight, const T* __restrict__ bias, \
        T* __restrict__ out, int n, int c, int h, int w, int ho, int wo, int stride,          \
        int relu6) {                                                                          \
        depthwise3x3<T>(input, weight, bias, out, n, c, h, w, ho, wo, stride, relu6);         \
    }
FOR_EACH_PRECISION(DEPTHWISE_ENTRY)
