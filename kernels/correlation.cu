// 7×7 correlation (max displacement 3, stride 1): out[b, (dy+3)·7 + dx+3, y, x] =
// mean over channels of first[b, c, y, x] · second[b, c, y+dy, x+dx], zero outside.
// One thread per (b, y, x) keeps the 49 sums in registers (f32) and reads `first` once.
#include "precision.cuh"

#define MAX_DISP 3
#define SPAN (2 * MAX_DISP + 1)
#define DISPLACEMENTS (SPAN * SPAN)

template <typename T>
__device__ __forceinline__ void correlation7(
    const T* __restrict__ first, const T* __restrict__ second, T* __restrict__ out,
    int n, int c, int h, int w) {
    const long plane = (long)h * w;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n * plane) return;
    const long b = idx / plane;
    const long p = idx - b * plane;
    const int y = (int)(p / w);
    const int x = (int)(p - (long)y * w);
    float acc[DISPLACEMENTS];
    #pragma unroll
    for (int d = 0; d < DISPLACEMENTS; ++d) acc[d] = 0.0f;
    const T* f = first + b * c * plane;
    const T* s = second + b * c * plane;
    for (int ch = 0; ch < c; ++ch) {
        const float a = to_float(f[ch * plane + p]);
        const T* sp = s + ch * plane;
        #pragma unroll
        for (int dy = -MAX_DISP; dy <= MAX_DISP; ++dy) {
            const int sy = y + dy;
            if (sy < 0 || sy >= h) continue;
            #pragma unroll
            for (int dx = -MAX_DISP; dx <= MAX_DISP; ++dx) {
                const int sx = x + dx;
                if (sx < 0 || sx >= w) continue;
                acc[(dy + MAX_DISP) * SPAN + dx + MAX_DISP] += a * to_float(sp[(long)sy * w + sx]);
            }
        }
    }
    const float scale = 1.0f / (float)c;
    T* o = out + b * DISPLACEMENTS * plane + p;
    #pragma unroll
    for (int d = 0; d < DISPLACEMENTS; ++d) o[d * plane] = from_float<T>(acc[d] * scale);
}

#define CORRELATION_ENTRY(suffix, T)                                                          \
    extern "C" __global__ void __launch_bounds__(256) correlation7_##suffix(                  \
        const T* __restrict__ first, const T* __restrict__ second, T* __restrict__ out, int n, \
        int c, int h, int w) {                                                                \
        correlation7<T>(first, second, out, n, c, h, w);                                      \
    }
FOR_EACH_PRECISION(CORRELATION_ENTRY)
