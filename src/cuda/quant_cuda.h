/* quant_cuda.h: warp dot products on Q8_0 / Q4_0 weight rows (src/quant.h) as they are stored, for the decode
 * kernels (quant_cuda.cu's block GEMV, moe_cuda.cu's single-token MoE and SwiGLU). Included only by .cu files.
 * What it is not: no many-row product (those dequantise chunks to bf16 for the tensor cores: cu_linear).
 *
 * Why the stored layout, read in place, and no repacking at upload: a row of K weights is K/32 blocks of 34 (Q8_0)
 * or 18 (Q4_0) bytes, so blocks sit at 2-byte alignment only and no wide load lines up with them. Repacking at
 * upload (quants contiguous, scales apart) would allow 16-byte loads, but every other reader of block weights on
 * the device (the dequantising many-row path, wget, tests, the GGUF bytes uploaded as they are) would have to know
 * a second layout, and a DsW carries no shape to find the scales by. Read in place, the loads are 2-byte but
 * dense: a warp works on 8 consecutive blocks at a time, four lanes a block, so one load instruction of the warp
 * touches 8 × 34 = 272 (or 144) consecutive bytes, every byte of every sector it fetches is used by the warp, and
 * DRAM sees the row read once, front to back. The price is L1 and L2 traffic: 64 useful bytes per load
 * instruction that spans 272, and the loads of a quarter, issued together, each fetch those sectors from L2 again
 * (ncu counted 66 % of qdown1_k's sectors as excessive). So qdown1_k, the largest of these products, first copies
 * its rows into shared memory with 8-byte loads and reads the blocks from there (qload<DT, true>);
 * bench/results/decode-quant-staged-h100.txt measures it. The GEMV and gate/up kernels still read in place. The lane's share of a block is 8 weights (Q8_0: weights 8t..8t+7;
 * Q4_0: the two nibbles of bytes 4t..4t+3, weights 4t..4t+3 and 16+4t..16+4t+3), so its x values are two aligned
 * float4 loads. The int8 / nibble to float step is a byte permute into the mantissa of 2^23 and one fp32 subtract
 * (exact, and on full-rate units: the int-to-float conversion instruction has a fraction of the fp32 rate).
 * Arithmetic: per block d · Σ q·x over the lane's 8 weights, summed over the lane's blocks, then over the warp
 * (warp_sum); fp32 throughout, as ops_linear_ref's block path up to the order of the sums. */
#ifndef DSOCR_QUANT_CUDA_H
#define DSOCR_QUANT_CUDA_H

#include "cuda/cuda_common.h"

/* Byte i of u as float, plus 2^23, minus bias (bias 2^23 + 128 for a biased int8, 2^23 + 8 for a Q4_0 nibble). */
template <int I>
static __device__ __forceinline__ float qbyte(uint32_t u, float bias) {
    return __int_as_float((int)__byte_perm(u, 0x4B000000u, 0x7540u | I)) - bias;
}

/* Quarter t of one block as loaded: its scale's fp16 bits and its bytes (Q8_0: 8 bytes in w0, w1; Q4_0: 4 bytes in
 * w0). Loading and using are apart so that a kernel can put the loads of several rows in flight before it waits. */
struct QRaw {
    uint32_t w0, w1;
    uint16_t d;
};
/* SMEM: the block is in shared memory (a warp staged its rows there with wide loads, qdown1_k), read with plain
 * loads; else global memory, through the read-only path. */
template <int DT, bool SMEM = false>
static __device__ __forceinline__ QRaw qload(const uint8_t *blk, int t) {
    const uint16_t *h = (const uint16_t *)blk; /* blocks are 2-byte aligned */
    auto ld = [](const uint16_t *p) -> uint32_t { return SMEM ? *p : __ldg(p); };
    QRaw r;
    r.d = (uint16_t)ld(h);
    if (DT == DS_Q8_0) {
        r.w0 = ld(h + 1 + 4 * t) | (ld(h + 2 + 4 * t) << 16);
        r.w1 = ld(h + 3 + 4 * t) | (ld(h + 4 + 4 * t) << 16);
    } else {
        r.w0 = ld(h + 1 + 2 * t) | (ld(h + 2 + 2 * t) << 16);
        r.w1 = 0;
    }
    return r;
}
/* int8 bytes 2i, 2i + 1 of u (a QRaw's w0 or w1) as a bf16 pair for the tensor cores (exact: |q| <= 128) */
static __device__ __forceinline__ uint32_t q8_pair(uint32_t u, int i) {
    return pack_bf16((float)(int8_t)(u >> (16 * i)), (float)(int8_t)(u >> (16 * i + 8)));
}
/* The x values quarter t multiplies, from the block's 32 (xb; vec: 16-byte aligned): Q8_0 xb[8t..8t+7], Q4_0
 * xb[4t..4t+3] and xb[16+4t..16+4t+3]. */
struct QX {
    float4 a, c;
};
template <int DT>
static __device__ __forceinline__ QX qxload(const float *xb, int t, bool vec) {
    const int o0 = DT == DS_Q8_0 ? 8 * t : 4 * t, o1 = DT == DS_Q8_0 ? 8 * t + 4 : 16 + 4 * t;
    QX v;
    if (vec) {
        v.a = *(const float4 *)(xb + o0);
        v.c = *(const float4 *)(xb + o1);
    } else {
        v.a = make_float4(xb[o0], xb[o0 + 1], xb[o0 + 2], xb[o0 + 3]);
        v.c = make_float4(xb[o1], xb[o1 + 1], xb[o1 + 2], xb[o1 + 3]);
    }
    return v;
}
/* d · Σ q·x over the quarter's 8 weights */
template <int DT>
static __device__ __forceinline__ float qfma(const QRaw &r, const QX &x) {
    float q[8];
    if (DT == DS_Q8_0) {
        const uint32_t w0 = r.w0 ^ 0x80808080u, w1 = r.w1 ^ 0x80808080u;
        const float b = 8388736.f; /* 2^23 + 128 */
        q[0] = qbyte<0>(w0, b), q[1] = qbyte<1>(w0, b), q[2] = qbyte<2>(w0, b), q[3] = qbyte<3>(w0, b);
        q[4] = qbyte<0>(w1, b), q[5] = qbyte<1>(w1, b), q[6] = qbyte<2>(w1, b), q[7] = qbyte<3>(w1, b);
    } else {
        const uint32_t lo = r.w0 & 0x0f0f0f0fu, hi = (r.w0 >> 4) & 0x0f0f0f0fu;
        const float b = 8388616.f; /* 2^23 + 8 */
        q[0] = qbyte<0>(lo, b), q[1] = qbyte<1>(lo, b), q[2] = qbyte<2>(lo, b), q[3] = qbyte<3>(lo, b);
        q[4] = qbyte<0>(hi, b), q[5] = qbyte<1>(hi, b), q[6] = qbyte<2>(hi, b), q[7] = qbyte<3>(hi, b);
    }
    const float s = q[0] * x.a.x + q[1] * x.a.y + q[2] * x.a.z + q[3] * x.a.w + q[4] * x.c.x + q[5] * x.c.y +
                    q[6] * x.c.z + q[7] * x.c.w;
    return __half2float(__ushort_as_half(r.d)) * s;
}

static __device__ __forceinline__ constexpr int qbytes(int dt) { return dt == DS_Q8_0 ? QB8 : QB4; }

/* The decode products are latency-bound: what counts is how many DRAM round trips a warp waits for per weight row.
 * So the loops below go in batches of U rounds (8·U blocks): every weight load of a batch is issued, predicated,
 * before any of them is used, and a row of up to 256·U weights costs one round trip (a plain `#pragma unroll` of a
 * loop with a runtime count would leave a remainder loop of dependent iterations, a round trip each). */
enum { QU1 = 8, QU2 = 6 }; /* rounds per batch: one row of x (1,280 = 5 rounds in one batch), gate and up rows */

/* acc[r] += this lane's share of x_r · w over one weight row w of K weights (K % 32 == 0) of block type DT, for
 * the first nr <= R rows x_r; a whole warp calls it, then warp_sum gives each row's dot. */
template <int DT, int R>
static __device__ __forceinline__ void qdot(float *acc, const float *const *x, int nr, const uint8_t *w, int K,
                                            int lane) {
    constexpr int U = R == 1 ? QU1 : 2;
    const int g = lane >> 2, t = lane & 3, nb = K / 32;
    bool vec = true;
#pragma unroll
    for (int r = 0; r < R; r++)
        if (r < nr) vec = vec && ((uintptr_t)x[r] & 15) == 0;
    for (int kb0 = g; kb0 < nb; kb0 += 8 * U) {
        QRaw q[U];
#pragma unroll
        for (int u = 0; u < U; u++)
            if (kb0 + 8 * u < nb) q[u] = qload<DT>(w + (size_t)(kb0 + 8 * u) * qbytes(DT), t);
#pragma unroll
        for (int u = 0; u < U; u++)
            if (kb0 + 8 * u < nb) {
#pragma unroll
                for (int r = 0; r < R; r++)
                    if (r < nr) acc[r] += qfma<DT>(q[u], qxload<DT>(x[r] + 32 * (kb0 + 8 * u), t, vec));
            }
    }
}

/* qdot2's batch from block kb0 (the lane's blocks kb0, kb0 + 8, ...): its loads, then its sums. Apart so that a
 * kernel can issue the first batch's loads before pdl_wait (weights are no kernel's output). */
template <int DT> struct Q2Batch {
    QRaw g[QU2], u[QU2];
};
template <int DT>
static __device__ __forceinline__ void qdot2_load(Q2Batch<DT> &q, const uint8_t *wg, const uint8_t *wu, int kb0,
                                                  int nb, int t) {
#pragma unroll
    for (int i = 0; i < QU2; i++)
        if (kb0 + 8 * i < nb) {
            q.g[i] = qload<DT>(wg + (size_t)(kb0 + 8 * i) * qbytes(DT), t);
            q.u[i] = qload<DT>(wu + (size_t)(kb0 + 8 * i) * qbytes(DT), t);
        }
}
template <int DT>
static __device__ __forceinline__ void qdot2_use(float &g, float &u, const Q2Batch<DT> &q, const float *x, int kb0,
                                                 int nb, int t, bool vec) {
#pragma unroll
    for (int i = 0; i < QU2; i++)
        if (kb0 + 8 * i < nb) {
            const QX xv = qxload<DT>(x + 32 * (kb0 + 8 * i), t, vec);
            g += qfma<DT>(q.g[i], xv);
            u += qfma<DT>(q.u[i], xv);
        }
}
/* g += x · wg and u += x · wu (this lane's shares): one row x against a gate row and an up row of type DT, from
 * block `from` on (a multiple of 8·QU2: a kernel that did the first batch itself with qdot2_load / qdot2_use
 * passes 8·QU2). */
template <int DT>
static __device__ __forceinline__ void qdot2(float &g, float &u, const float *x, const uint8_t *wg, const uint8_t *wu,
                                             int K, int lane, int from = 0) {
    const int gi = lane >> 2, t = lane & 3, nb = K / 32;
    const bool vec = ((uintptr_t)x & 15) == 0;
    for (int kb0 = gi + from; kb0 < nb; kb0 += 8 * QU2) {
        Q2Batch<DT> q;
        qdot2_load<DT>(q, wg, wu, kb0, nb, t);
        qdot2_use<DT>(g, u, q, x, kb0, nb, t, vec);
    }
}

/* qdot2 in two halves for a kernel that loads before pdl_wait: qdot2_first issues the lane's first batch of loads,
 * qdot2_rest (after the wait) sums it and does the rest of the row */
template <int DT>
static __device__ __forceinline__ void qdot2_first(Q2Batch<DT> &q, const uint8_t *wg, const uint8_t *wu, int K,
                                                   int lane) {
    qdot2_load<DT>(q, wg, wu, lane >> 2, K / 32, lane & 3);
}
template <int DT>
static __device__ __forceinline__ void qdot2_rest(float &g, float &u, const Q2Batch<DT> &q, const float *x,
                                                  const uint8_t *wg, const uint8_t *wu, int K, int lane) {
    qdot2_use<DT>(g, u, q, x, lane >> 2, K / 32, lane & 3, ((uintptr_t)x & 15) == 0);
    qdot2<DT>(g, u, x, wg, wu, K, lane, 8 * QU2);
}

/* qdot / qdot2 by a runtime block type dt (DS_Q8_0 or DS_Q4_0) */
template <int R>
static __device__ __forceinline__ void qdot_dt(float *acc, const float *const *x, int nr, const void *w, int dt, int K,
                                               int lane) {
    if (dt == DS_Q8_0)
        qdot<DS_Q8_0, R>(acc, x, nr, (const uint8_t *)w, K, lane);
    else
        qdot<DS_Q4_0, R>(acc, x, nr, (const uint8_t *)w, K, lane);
}
static __device__ __forceinline__ void qdot2_dt(float &g, float &u, const float *x, const void *wg, const void *wu,
                                                int dt, int K, int lane) {
    if (dt == DS_Q8_0)
        qdot2<DS_Q8_0>(g, u, x, (const uint8_t *)wg, (const uint8_t *)wu, K, lane);
    else
        qdot2<DS_Q4_0>(g, u, x, (const uint8_t *)wg, (const uint8_t *)wu, K, lane);
}

/* quant_cuda.cu: y[m, n] (+)= x[m, :]·w[n, :] (+ bias[n]) on block weights, weights read once per 8 rows of x, for
 * M <= 65535 · 8 (cu_gemv's contract: flags OPS_ACCUM only; round_bf16 rounds the outputs). */
void cu_gemv_q(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags,
               int round_bf16);

#endif
