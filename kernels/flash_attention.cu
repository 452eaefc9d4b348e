// Flash attention for f16 and bf16: softmax(q·kᵀ·scale)·v for q: G×Nq×d, k, v: G×Nk×d
// (contiguous), with f32 accumulation and an online softmax over blocks of 64 keys. The score
// matrix is never written: each warp holds a 16-query × 64-key tile of scores in registers.
//
// A block of 8 warps takes 128 queries of one group (blockIdx.x = group · query_blocks + block);
// the key and value tiles go through shared memory, zero-padded to DP columns (d rounded up to a
// multiple of 16) and past the last key. The products run on the tensor cores with
// `mma.sync.m16n8k16` (sm_80 and later), whose fragment layouts are fixed by PTX: the score
// accumulator of two adjacent 8-key tiles is, element for element, the A operand of the
// probabilities × values product, so the probabilities never leave the registers either.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#define FA_WARPS 8
#define FA_BK 64

__device__ __forceinline__ uint32_t fa_pack(unsigned short lo, unsigned short hi) {
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

template <bool BF16>
__device__ __forceinline__ unsigned short fa_from_float(float x) {
    if (BF16) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(x));
    } else {
        return __half_as_ushort(__float2half_rn(x));
    }
}

// c += a·b for a 16×16 A (4 registers), a 16×8 B (2 registers) and a 16×8 f32 C.
template <bool BF16>
__device__ __forceinline__ void fa_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#else
    __trap();  // the tensor-core path needs sm_80; the op refuses older cards before launching
#endif
}

// One block: 128 queries of one group against all keys. DP: the head dimension padded to a
// multiple of 16 (d ≤ DP).
template <int DP, bool BF16>
__device__ __forceinline__ void flash_attention_block(
    const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,
    const unsigned short* __restrict__ v, unsigned short* __restrict__ out,
    int groups, int nq, int nk, int d, float scale) {
    // Rows padded by 8 halves: the 32-bit fragment loads of a warp fall in distinct banks.
    constexpr int STRIDE = DP + 8;
    __shared__ __align__(16) unsigned short ks[FA_BK * STRIDE];
    __shared__ __align__(16) unsigned short vs[FA_BK * STRIDE];

    const int q_blocks = (nq + FA_WARPS * 16 - 1) / (FA_WARPS * 16);
    const int g = blockIdx.x / q_blocks;
    const int qb = blockIdx.x - g * q_blocks;
    if (g >= groups) return;  // the whole block, before any barrier
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, t4 = lane & 3;  // the fragment row and column pair of this lane
    const int row0 = qb * FA_WARPS * 16 + warp * 16 + gid, row1 = row0 + 8;
    const unsigned short* qg = q + (long)g * nq * d;
    const unsigned short* kg = k + (long)g * nk * d;
    const unsigned short* vg = v + (long)g * nk * d;

    // The warp's 16 queries as A fragments, one per 16 columns of d.
    uint32_t qf[DP / 16][4];
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
        const int c = kk * 16 + t4 * 2;
#define FA_Q(r, col) ((r) < nq && (col) < d ? qg[(long)(r) * d + (col)] : (unsigned short)0)
        qf[kk][0] = fa_pack(FA_Q(row0, c), FA_Q(row0, c + 1));
        qf[kk][1] = fa_pack(FA_Q(row1, c), FA_Q(row1, c + 1));
        qf[kk][2] = fa_pack(FA_Q(row0, c + 8), FA_Q(row0, c + 9));
        qf[kk][3] = fa_pack(FA_Q(row1, c + 8), FA_Q(row1, c + 9));
#undef FA_Q
    }

    float o[DP / 8][4];
#pragma unroll
    for (int t = 0; t < DP / 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    // Running maximum (in log2 units) and this lane's share of the running sum, per row.
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const float scale_log2 = scale * 1.4426950408889634f;

    for (int kb = 0; kb < nk; kb += FA_BK) {
        __syncthreads();  // the previous tiles are no longer read
        for (int i = threadIdx.x; i < FA_BK * DP; i += FA_WARPS * 32) {
            const int r = i / DP, c = i - r * DP;
            const int key = kb + r;
            const bool in = key < nk && c < d;
            ks[r * STRIDE + c] = in ? kg[(long)key * d + c] : (unsigned short)0;
            vs[r * STRIDE + c] = in ? vg[(long)key * d + c] : (unsigned short)0;
        }
        __syncthreads();

        // Scores of the 16 × 64 tile: 8 tiles of 8 keys.
        float s[FA_BK / 8][4];
#pragma unroll
        for (int n = 0; n < FA_BK / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const unsigned short* krow = ks + (n * 8 + gid) * STRIDE + t4 * 2;
#pragma unroll
            for (int kk = 0; kk < DP / 16; ++kk) {
                const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + kk * 16);
                const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + kk * 16 + 8);
                fa_mma<BF16>(s[n], qf[kk], b0, b1);
            }
        }

        // Online softmax: the tile's row maxima over the 4 lanes that share a row.
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < FA_BK / 8; ++n) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const bool valid = kb + n * 8 + t4 * 2 + j < nk;
                s[n][j] = valid ? s[n][j] * scale_log2 : -INFINITY;
                s[n][2 + j] = valid ? s[n][2 + j] * scale_log2 : -INFINITY;
                mx0 = fmaxf(mx0, s[n][j]);
                mx1 = fmaxf(mx1, s[n][2 + j]);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        // Every tile holds at least one key, so the new maxima are finite.
        const float new0 = fmaxf(m0, mx0), new1 = fmaxf(m1, mx1);
        const float alpha0 = exp2f(m0 - new0), alpha1 = exp2f(m1 - new1);
        m0 = new0;
        m1 = new1;
        l0 *= alpha0;
        l1 *= alpha1;
#pragma unroll
        for (int t = 0; t < DP / 8; ++t) {
            o[t][0] *= alpha0;
            o[t][1] *= alpha0;
            o[t][2] *= alpha1;
            o[t][3] *= alpha1;
        }
#pragma unroll
        for (int n = 0; n < FA_BK / 8; ++n) {
            s[n][0] = exp2f(s[n][0] - m0);
            s[n][1] = exp2f(s[n][1] - m0);
            s[n][2] = exp2f(s[n][2] - m1);
            s[n][3] = exp2f(s[n][3] - m1);
            l0 += s[n][0] + s[n][1];
            l1 += s[n][2] + s[n][3];
        }

        // o += p·v, 16 keys at a time: tiles 2j and 2j+1 of p form the A fragment.
#pragma unroll
        for (int j = 0; j < FA_BK / 16; ++j) {
            uint32_t pa[4];
            pa[0] = fa_pack(fa_from_float<BF16>(s[2 * j][0]), fa_from_float<BF16>(s[2 * j][1]));
            pa[1] = fa_pack(fa_from_float<BF16>(s[2 * j][2]), fa_from_float<BF16>(s[2 * j][3]));
            pa[2] = fa_pack(fa_from_float<BF16>(s[2 * j + 1][0]), fa_from_float<BF16>(s[2 * j + 1][1]));
            pa[3] = fa_pack(fa_from_float<BF16>(s[2 * j + 1][2]), fa_from_float<BF16>(s[2 * j + 1][3]));
            const unsigned short* vrow = vs + (j * 16 + t4 * 2) * STRIDE + gid;
#pragma unroll
            for (int t = 0; t < DP / 8; ++t) {
                const unsigned short* vc = vrow + t * 8;
                const uint32_t b0 = fa_pack(vc[0], vc[STRIDE]);
                const uint32_t b1 = fa_pack(vc[8 * STRIDE], vc[9 * STRIDE]);
                fa_mma<BF16>(o[t], pa, b0, b1);
            }
        }
    }

    // The full row sums, then the normalised rows.
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
    unsigned short* og = out + (long)g * nq * d;
#pragma unroll
    for (int t = 0; t < DP / 8; ++t) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const int c = t * 8 + t4 * 2 + j;
            if (c < d && row0 < nq) og[(long)row0 * d + c] = fa_from_float<BF16>(o[t][j] * inv0);
            if (c < d && row1 < nq) og[(long)row1 * d + c] = fa_from_float<BF16>(o[t][2 + j] * inv1);
        }
    }
}

// One entry point per element type and padded head dimension; launched with 256 threads a
// block and groups · ceil(nq / 128) blocks.
#define FA_ENTRY(name, DP, BF16)                                                              \
    extern "C" __global__ void __launch_bounds__(FA_WARPS * 32) name(                         \
        const unsigned short* __restrict__ q, const unsigned short* __restrict__ k,          \
        const unsigned short* __restrict__ v, unsigned short* __restrict__ out, int groups,  \
        int nq, int nk, int d, float scale) {                                                \
        flash_attention_block<DP, BF16>(q, k, v, out, groups, nq, nk, d, scale);              \
    }

FA_ENTRY(flash_attention_f16_d48, 48, false)
FA_ENTRY(flash_attention_f16_d64, 64, false)
FA_ENTRY(flash_attention_f16_d80, 80, false)
FA_ENTRY(flash_attention_f16_d128, 128, false)
FA_ENTRY(flash_attention_f16_d160, 160, false)
FA_ENTRY(flash_attention_bf16_d48, 48, true)
FA_ENTRY(flash_attention_bf16_d64, 64, true)
FA_ENTRY(flash_attention_bf16_d80, 80, true)
FA_ENTRY(flash_attention_bf16_d128, 128, true)
FA_ENTRY(flash_attention_bf16_d160, 160, true)
