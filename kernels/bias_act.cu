// out = act(x + bias[c]) over N×C×(H·W): the bias and activation after a convolution in one
// pass. act: 0 identity, 1 ReLU6, 2 leaky ReLU with `slope`.

extern "C" __global__ void bias_act_f32(
    const float* __restrict__ x, const float* __restrict__ bias, float* __restrict__ out,
    long total, int c, long plane, int act, float slope) {
    const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    const int ch = (int)((idx / plane) % c);
    float v = x[idx] + bias[ch];
    if (act == 1) v = fminf(fmaxf(v, 0.0f), 6.0f);
    else if (act == 2) v = v >= 0.0f ? v : v * slope;
    out[idx] = v;
}
