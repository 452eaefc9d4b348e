// Image conversions at the device boundary.

// N×H×W×C u8 → N×C×H×W f32: photos to v/255·2−1, masks to (v/255 > 0.5).
extern "C" __global__ void u8_hwc_to_f32_nchw(
    const unsigned char* __restrict__ src, float* __restrict__ dst,
    int n, int h, int w, int c, int mask) {
    const long total = (long)n * h * w * c;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    // idx walks the output: ((b·C + ch)·H + y)·W + x.
    const long plane = (long)h * w;
    const long bc = idx / plane;
    const long i = idx - bc * plane;
    const long b = bc / c;
    const long ch = bc - b * c;
    const float v = (float)src[(b * plane + i) * c + ch] / 255.0f;
    dst[idx] = mask ? (v > 0.5f ? 1.0f : 0.0f) : v * 2.0f - 1.0f;
}

// N×C×H×W f32 in [-1, 1] → N×H×W×C u8: trunc(clamp((x+1)/2, 0, 1)·255 + 0.5).
extern "C" __global__ void f32_nchw_to_u8_hwc(
    const float* __restrict__ src, unsigned char* __restrict__ dst, int n, int c, int h, int w) {
    const long total = (long)n * c * h * w;
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    // idx walks the output: ((b·H·W + i)·C + ch).
    const long plane = (long)h * w;
    const long ch = idx % c;
    const long bi = idx / c;
    const long b = bi / plane;
    const long i = bi - b * plane;
    const float x = src[(b * c + ch) * plane + i];
    const float v = fminf(fmaxf((x + 1.0f) * 0.5f, 0.0f), 1.0f) * 255.0f + 0.5f;
    dst[idx] = (unsigned char)v;
}
