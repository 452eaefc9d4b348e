// Bilinear grid_sample (PyTorch semantics), one thread per output pixel, looping over channels.
// input: N×C×H×W, grid: N×Ho×Wo×2 (x, y in [-1, 1]), out: N×C×Ho×Wo. The grid is f32 in every
// precision: a half-precision coordinate would be pixels off at these sizes (bf16 has half-pixel
// steps past 64); coordinates and weights are computed in f32.
#include "precision.cuh"

__device__ __forceinline__ float unnormalize(float coord, int size, int align_corners) {
    return align_corners ? (coord + 1.0f) * 0.5f * (float)(size - 1)
                         : ((coord + 1.0f) * (float)size - 1.0f) * 0.5f;
}

template <typename T>
__device__ __forceinline__ void grid_sample_bilinear(
    const T* __restrict__ input, const float* __restrict__ grid, T* __restrict__ out,
    int n, int c, int h, int w, int ho, int wo, int border, int align_corners) {
    const long plane_out = (long)ho * wo;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)n * plane_out) return;
    const long b = idx / plane_out;
    const long p = idx - b * plane_out;
    float x = unnormalize(grid[idx * 2], w, align_corners);
    float y = unnormalize(grid[idx * 2 + 1], h, align_corners);
    if (border) {
        x = fminf(fmaxf(x, 0.0f), (float)(w - 1));
        y = fminf(fmaxf(y, 0.0f), (float)(h - 1));
    }
    const float x0f = floorf(x);
    const float y0f = floorf(y);
    const float fx = x - x0f;
    const float fy = y - y0f;
    const int x0 = (int)x0f;
    const int y0 = (int)y0f;
    const float wts[4] = {(1.0f - fx) * (1.0f - fy), fx * (1.0f - fy), (1.0f - fx) * fy, fx * fy};
    const int xs[4] = {x0, x0 + 1, x0, x0 + 1};
    const int ys[4] = {y0, y0, y0 + 1, y0 + 1};
    long offs[4];
    bool inside[4];
    for (int k = 0; k < 4; ++k) {
        inside[k] = xs[k] >= 0 && ys[k] >= 0 && xs[k] < w && ys[k] < h;
        offs[k] = inside[k] ? (long)ys[k] * w + xs[k] : 0;
    }
    const long plane_in = (long)h * w;
    for (int ch = 0; ch < c; ++ch) {
        const T* src = input + (b * c + ch) * plane_in;
        float acc = 0.0f;
        for (int k = 0; k < 4; ++k) {
            if (inside[k]) acc += to_float(src[offs[k]]) * wts[k];
        }
        out[(b * c + ch) * plane_out + p] = from_float<T>(acc);
    }
}

#define GRID_SAMPLE_ENTRY(suffix, T)                                                          \
    extern "C" __global__ void grid_sample_bilinear_##suffix(                                 \
        const T* __restrict__ input, const float* __restrict__ grid, T* __restrict__ out,      \
        int n, int c, int h, int w, int ho, int wo, int border, int align_corners) {          \
        grid_sample_bilinear<T>(input, grid, out, n, c, h, w, ho, wo, border, align_corners); \
    }
FOR_EACH_PRECISION(GRID_SAMPLE_ENTRY)
