// Bilinear resize, PyTorch `F.interpolate(mode="bilinear", align_corners=False)`: half-pixel
// centres, source index clamped at 0 and at the last row/column. One thread per output.
#include "precision.cuh"

__device__ __forceinline__ void axis_tap(int d, int in, int outn, int* i0, int* i1, float* l) {
    const float scale = (float)in / (float)outn;
    float src = scale * ((float)d + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int a = (int)src;
    if (a > in - 1) a = in - 1;
    *i0 = a;
    *i1 = a < in - 1 ? a + 1 : a;
    *l = src - (float)a;
}

template <typename T>
__device__ __forceinline__ void resize_bilinear(
    const T* __restrict__ input, T* __restrict__ out, int planes, int h, int w, int out_h,
    int out_w) {
    const long plane_out = (long)out_h * out_w;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)planes * plane_out) return;
    const long p = idx / plane_out;
    const long q = idx - p * plane_out;
    const int oy = (int)(q / out_w);
    const int ox = (int)(q - (long)oy * out_w);
    int y0, y1, x0, x1;
    float ly, lx;
    axis_tap(oy, h, out_h, &y0, &y1, &ly);
    axis_tap(ox, w, out_w, &x0, &x1, &lx);
    const T* src = input + p * (long)h * w;
    const T* r0 = src + (long)y0 * w;
    const T* r1 = src + (long)y1 * w;
    out[idx] = from_float<T>(
        (1.0f - ly) * ((1.0f - lx) * to_float(r0[x0]) + lx * to_float(r0[x1]))
        + ly * ((1.0f - lx) * to_float(r1[x0]) + lx * to_float(r1[x1])));
}

#define RESIZE_ENTRY(suffix, T)                                                               \
    extern "C" __global__ void resize_bilinear_##suffix(                                      \
        const T* __restrict__ input, T* __restrict__ out, int planes, int h, int w, int out_h, \
        int out_w) {                                                                          \
        resize_bilinear<T>(input, out, planes, h, w, out_h, out_w);                           \
    }
FOR_EACH_PRECISION(RESIZE_ENTRY)
