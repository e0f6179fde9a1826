/* moe_cuda.cu: one MoE layer on the GPU (backend.h moe; the CPU backend's cpu_moe is the same function), with
 * no host round trip: the router's choice stays on the device.
 *   1. router logits [n, E] by the fp32 GEMV kernel (exact fp32 arithmetic: a near-tie must break as on the CPU);
 *   2. route_k: ops_moe_route per row (bf16-rounded logits in bf16 mode, fp32 softmax, greedy top-k, lowest index
 *      on ties), one thread a row;
 *   3. bucket_k: counts per expert, offsets, each (row, slot) pair's place in the expert-sorted pair list, and
 *      the list of experts that got rows; for up to 64 rows (decode) 2 and 3 are one kernel, route_bucket_k, with
 *      a warp a row;
 *   4. gateup_k / down_k: grouped products over a grid of (output columns, expert with rows), min(n·k, E) expert
 *      slots, so only the selected experts' weights are read; one warp per output column, up to 4 of the
 *      expert's rows per pass over the weight row; the SwiGLU rounding points of ops_expert_ffn;
 *   5. the shared experts: for up to 8 rows one more expert slot of the same two kernels (every row, their own
 *      width; the arithmetic of the SwiGLU block's GEMV path), otherwise the SwiGLU block;
 *   6. combine_k: per row, Σ w·y over its experts in ascending expert order, fp32, as the CPU accumulates;
 *      rounded in bf16 mode; plus the shared output.
 * One token, bf16 or block-quantised (Q8_0 / Q4_0) experts: route1_k, gateup1_k, down1_k or qdown1_k (3 launches,
 * below); otherwise GEMV, route_bucket_k, gateup_k, down_k, combine_k (5 launches).
 * The expert weight pointers travel as kernel parameters (up to 256 experts; > 4 KiB of parameters needs
 * Volta+ and CUDA 12.1+, which every target here has). */
#include "cuda/quant_cuda.h"

enum { MAXE = 256, MAXK = 16, MW = 8, MR = 4, FUSE_SHARED_ROWS = 8 };

struct MoeSlots {
    float *logits, *wts, *h, *ysl, *shared, *sw;
    int32_t *idx, *off, *pair_row, *pos_of, *act;
};

static size_t up4(size_t n) { return (n + 3) & ~(size_t)3; }

/* Scratch layout (float offsets, each part 16-byte aligned): logits [n, E] | idx [n·k] | wts [n·k] | off [E + 1] |
 * pair_row [n·k] | pos_of [n·k] | act [E] (the experts with rows, ascending, then −1s) | h [n·k, F] | ysl [n·k, D] | shared [n, D] | sw [2·n·S] (shared SwiGLU). */
static size_t moe_layout(float *p, int n, const BackendMoe *m, MoeSlots *s) {
    size_t nk = (size_t)n * m->top_k, o = 0;
    s->logits = p + o, o += up4((size_t)n * m->n_experts);
    s->idx = (int32_t *)(p + o), o += up4(nk);
    s->wts = p + o, o += up4(nk);
    s->off = (int32_t *)(p + o), o += up4((size_t)m->n_experts + 1);
    s->pair_row = (int32_t *)(p + o), o += up4(nk);
    s->pos_of = (int32_t *)(p + o), o += up4(nk);
    s->act = (int32_t *)(p + o), o += up4((size_t)m->n_experts);
    s->h = p + o, o += up4(nk * m->d_ff);
    s->ysl = p + o, o += up4(nk * m->d_model);
    s->shared = p + o, o += up4((size_t)n * m->d_model);
    s->sw = p + o;
    return o + (m->shared.gate.data ? 2 * (size_t)n * m->d_shared : 0);
}

size_t cu_moe_scratch_floats(int n, const BackendMoe *m) {
    static float dummy[4];
    MoeSlots s;
    return moe_layout(dummy, n, m, &s);
}

__global__ void route_k(const float *logits, int n, int E, int K, int bf, int32_t *idx, float *wts, float *out_logits,
                        int32_t *out_experts) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const float *l = logits + (size_t)r * E;
    float p[MAXE];
    unsigned char taken[MAXE];
    float mx = -INFINITY, sum = 0.f;
    for (int e = 0; e < E; e++) {
        p[e] = bf ? rbf(l[e]) : l[e];
        if (out_logits) out_logits[(size_t)r * E + e] = p[e];
        mx = p[e] > mx ? p[e] : mx;
    }
    for (int e = 0; e < E; e++) {
        p[e] = expf(p[e] - mx);
        sum += p[e];
    }
    for (int e = 0; e < E; e++) {
        p[e] /= sum;
        taken[e] = 0;
    }
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
        taken[best] = 1;
        idx[(size_t)r * K + j] = best;
        wts[(size_t)r * K + j] = p[best];
        if (out_experts) out_experts[(size_t)r * K + j] = best;
    }
}

/* One row's routing by one warp (route_k's arithmetic): the logits l [E] (rounded to bf16 with bf, copied to
 * out_logits when given), softmax with the exponentials in p [E] (shared memory) and their sum in expert order by
 * one lane, then greedy top-K by warp argmax with the lowest index on ties into idx, wts, out_experts [K].
 * coherent: l was written by other blocks of this kernel (read through L2). */
static __device__ void route_warp(const float *l, int coherent, float *p, int E, int K, int bf, float *out_logits,
                                  int32_t *idx, float *wts, int32_t *out_experts) {
    const int lane = threadIdx.x & 31;
    float mx = -INFINITY;
    for (int e = lane; e < E; e += 32) {
        const float le = coherent ? __ldcg(l + e) : l[e];
        const float v = bf ? rbf(le) : le;
        if (out_logits) out_logits[e] = v;
        p[e] = v;
        mx = v > mx ? v : mx;
    }
    mx = warp_max(mx);
    __syncwarp();
    for (int e = lane; e < E; e += 32) p[e] = expf(p[e] - mx);
    __syncwarp();
    float sum = 0.f;
    if (lane == 0)
        for (int e = 0; e < E; e++) sum += p[e];
    sum = __shfl_sync(0xffffffffu, sum, 0);
    for (int e = lane; e < E; e += 32) p[e] /= sum;
    __syncwarp();
    /* greedy top-K (largest first, the lowest index on ties) as ranks: expert e's rank is the number of experts
     * ahead of it in that order, and the j-th pick is the expert of rank j. Every lane ranks its experts against all
     * E at once (no chain of K dependent warp reductions). A NaN counts as below every number, so the ranks stay a
     * permutation and every slot j < K is written. */
    for (int e = lane; e < E; e += 32) {
        const float pe = p[e] == p[e] ? p[e] : -INFINITY;
        int rank = 0;
        for (int o = 0; o < E; o++) {
            const float po = p[o] == p[o] ? p[o] : -INFINITY;
            rank += po > pe || (po == pe && o < e);
        }
        if (rank < K) {
            idx[rank] = e;
            wts[rank] = p[e];
            if (out_experts) out_experts[rank] = e;
        }
    }
}

/* route_k and bucket_k in one block for few rows (decode): one warp a row (warp max, the exponentials in shared
 * memory, their sum in expert order by one lane as route_k, greedy top-k by warp argmax with the lowest index on
 * ties), then the bucketing of bucket_k. Bit for bit what route_k + bucket_k give. (Taking it up to 256 rows left
 * batch.moe.route at B = 128 where it was, 55 against 52 us a layer on an H200: bench/results/batch-h200-session12.txt.) */
enum { RB_MAX_ROWS = 64 };
__global__ void __launch_bounds__(1024) route_bucket_k(const float *logits, int n, int E, int K, int bf, int32_t *idx,
                                                       float *wts, float *out_logits, int32_t *out_experts,
                                                       int32_t *off, int32_t *pair_row, int32_t *pos_of,
                                                       int32_t *act) {
    __shared__ float ex[32][MAXE];
    __shared__ int cnt[MAXE + 1], cur[MAXE];
    const int warp = threadIdx.x / 32;
    for (int e = threadIdx.x; e <= E; e += blockDim.x) cnt[e] = 0;
    for (int r = warp; r < n; r += blockDim.x / 32) {
        route_warp(logits + (size_t)r * E, 0, ex[warp], E, K, bf, out_logits ? out_logits + (size_t)r * E : NULL,
                   idx + (size_t)r * K, wts + (size_t)r * K, out_experts ? out_experts + (size_t)r * K : NULL);
        __syncwarp();
    }
    __syncthreads();
    const int nk = n * K;
    for (int i = threadIdx.x; i < nk; i += blockDim.x) atomicAdd(&cnt[idx[i]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0, na = 0;
        for (int e = 0; e < E; e++) {
            cur[e] = acc;
            off[e] = acc;
            acc += cnt[e];
            if (cnt[e]) act[na++] = e;
        }
        off[E] = acc;
        while (na < E) act[na++] = -1;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nk; i += blockDim.x) {
        int p = atomicAdd(&cur[idx[i]], 1);
        pair_row[p] = i / K;
        pos_of[i] = p;
    }
}

__global__ void bucket_k(const int32_t *idx, int nk, int K, int E, int32_t *off, int32_t *pair_row, int32_t *pos_of,
                         int32_t *act) {
    __shared__ int cnt[MAXE + 1], cur[MAXE];
    for (int e = threadIdx.x; e <= E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < nk; i += blockDim.x) atomicAdd(&cnt[idx[i]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0, na = 0;
        for (int e = 0; e < E; e++) {
            int c = cnt[e];
            cur[e] = acc;
            off[e] = acc;
            acc += c;
            if (c) act[na++] = e;
        }
        off[E] = acc;
        while (na < E) act[na++] = -1;
    }
    __syncthreads();
    /* the order inside an expert's range does not matter: each pair's product depends only on its own row */
    for (int i = threadIdx.x; i < nk; i += blockDim.x) {
        int p = atomicAdd(&cur[idx[i]], 1);
        pair_row[p] = i / K;
        pos_of[i] = p;
    }
}

struct UpPtrs {
    const void *gate[MAXE], *up[MAXE];
    const void *sgate, *sup; /* the shared experts (blockIdx.y == E when fused) */
};
struct DownPtrs {
    const void *down[MAXE];
    const void *sdown;
};
/* With fused shared experts (few rows), the grid has one more expert index, E, that runs the shared SwiGLU over
 * every row: gate/up from x into sy [n, sN]; down from sx [n, sK] into sy [n, N]. */
struct GroupArgs {
    const float *x;           /* gate/up: the layer input [n, D]; down: h [n·k, F] */
    float *y;                 /* gate/up: h [n·k, F]; down: ysl [n·k, D] */
    const int32_t *off, *pair_row;
    const int32_t *act;       /* blockIdx.y -> expert (the experts with rows first; −1: nothing to do) */
    int K, N, wdt, bf, vec;   /* K: reduction length, N: output columns; wdt: routed experts' dtype */
    int swdt;                 /* the shared experts' dtype (4-bit models keep them Q8_0) */
    int E, n, sK, sN;         /* E: the shared experts' blockIdx.y (−1: not fused); their rows, reduction length
                                 and output columns */
    const float *sx;
    float *sy;
};

/* acc[r] += x_r · w over K for up to MR rows (rows r >= nr skipped). */
static __device__ __forceinline__ void dot_rows(float *acc, const float *const *xr, int nr, const void *w, int wdt,
                                                int K, int vec, int lane) {
    if (vec && wdt == DS_BF16) {
        const uint4 *wr = (const uint4 *)w;
#pragma unroll 4
        for (int k8 = lane; k8 < K / 8; k8 += 32) {
            uint4 q = __ldg(wr + k8);
            float wv[8] = {__uint_as_float(q.x << 16), __uint_as_float(q.x & 0xffff0000u),
                           __uint_as_float(q.y << 16), __uint_as_float(q.y & 0xffff0000u),
                           __uint_as_float(q.z << 16), __uint_as_float(q.z & 0xffff0000u),
                           __uint_as_float(q.w << 16), __uint_as_float(q.w & 0xffff0000u)};
#pragma unroll
            for (int r = 0; r < MR; r++)
                if (r < nr) {
                    const float4 *x4 = (const float4 *)xr[r] + 2 * k8;
                    float4 u = x4[0], v = x4[1];
                    acc[r] += u.x * wv[0] + u.y * wv[1] + u.z * wv[2] + u.w * wv[3] + v.x * wv[4] + v.y * wv[5] +
                              v.z * wv[6] + v.w * wv[7];
                }
        }
    } else if (is_block(wdt)) { /* Q8_0 / Q4_0: quant_cuda.h */
        qdot_dt<MR>(acc, xr, nr, w, wdt, K, lane);
    } else {
        for (int k = lane; k < K; k += 32) {
            float wv = wget(w, wdt, k);
#pragma unroll
            for (int r = 0; r < MR; r++)
                if (r < nr) acc[r] += xr[r][k] * wv;
        }
    }
}

/* g[r] += x_r · wg and u[r] += x_r · wu over K: dot_rows for two weight rows in one loop (bf16, vectorised). */
static __device__ __forceinline__ void dot_rows2(float *g, float *u, const float *const *xr, int nr, const void *wg,
                                                 const void *wu, int K, int lane) {
    const uint4 *gr = (const uint4 *)wg, *ur = (const uint4 *)wu;
#pragma unroll 4
    for (int k8 = lane; k8 < K / 8; k8 += 32) {
        uint4 qg = __ldg(gr + k8), qu = __ldg(ur + k8);
        float gv[8] = {__uint_as_float(qg.x << 16), __uint_as_float(qg.x & 0xffff0000u),
                       __uint_as_float(qg.y << 16), __uint_as_float(qg.y & 0xffff0000u),
                       __uint_as_float(qg.z << 16), __uint_as_float(qg.z & 0xffff0000u),
                       __uint_as_float(qg.w << 16), __uint_as_float(qg.w & 0xffff0000u)};
        float uv[8] = {__uint_as_float(qu.x << 16), __uint_as_float(qu.x & 0xffff0000u),
                       __uint_as_float(qu.y << 16), __uint_as_float(qu.y & 0xffff0000u),
                       __uint_as_float(qu.z << 16), __uint_as_float(qu.z & 0xffff0000u),
                       __uint_as_float(qu.w << 16), __uint_as_float(qu.w & 0xffff0000u)};
#pragma unroll
        for (int r = 0; r < MR; r++)
            if (r < nr) {
                const float4 *x4 = (const float4 *)xr[r] + 2 * k8;
                float4 p = x4[0], q = x4[1];
                g[r] += p.x * gv[0] + p.y * gv[1] + p.z * gv[2] + p.w * gv[3] + q.x * gv[4] + q.y * gv[5] +
                        q.z * gv[6] + q.w * gv[7];
                u[r] += p.x * uv[0] + p.y * uv[1] + p.z * uv[2] + p.w * uv[3] + q.x * uv[4] + q.y * uv[5] +
                        q.z * uv[6] + q.w * uv[7];
            }
    }
}

__global__ void __launch_bounds__(MW * 32) gateup_k(GroupArgs a, UpPtrs w) {
    const int sh = (int)blockIdx.y == a.E, e = sh ? 0 : a.act[blockIdx.y];
    const int f = blockIdx.x * MW + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (e < 0) return;
    const int N = sh ? a.sN : a.N, p0 = sh ? 0 : a.off[e], cnt = sh ? a.n : a.off[e + 1] - p0;
    if (cnt == 0 || f >= N) return;
    const int wdt = sh ? a.swdt : a.wdt;
    size_t wo = (size_t)f * wrow_bytes(wdt, a.K);
    const void *wg = (const char *)(sh ? w.sgate : w.gate[e]) + wo, *wu = (const char *)(sh ? w.sup : w.up[e]) + wo;
    float *y = sh ? a.sy : a.y;
    for (int i0 = 0; i0 < cnt; i0 += MR) {
        int nr = min(MR, cnt - i0);
        const float *xr[MR];
#pragma unroll
        for (int r = 0; r < MR; r++) {
            int i = p0 + i0 + min(r, nr - 1);
            xr[r] = a.x + (size_t)(sh ? i : a.pair_row[i]) * a.K;
        }
        float g[MR] = {0.f, 0.f, 0.f, 0.f}, u[MR] = {0.f, 0.f, 0.f, 0.f};
        if (a.vec && wdt == DS_BF16) {
            dot_rows2(g, u, xr, nr, wg, wu, a.K, lane);
        } else {
            dot_rows(g, xr, nr, wg, wdt, a.K, a.vec, lane);
            dot_rows(u, xr, nr, wu, wdt, a.K, a.vec, lane);
        }
#pragma unroll
        for (int r = 0; r < MR; r++) {
            float gv = warp_sum(g[r]), uv = warp_sum(u[r]);
            if (lane == 0 && r < nr) {
                if (a.bf) {
                    gv = rbf(gv);
                    uv = rbf(uv);
                }
                float s = gv / (1.f + expf(-gv));
                if (a.bf) s = rbf(s);
                float v = s * uv;
                y[(size_t)(p0 + i0 + r) * N + f] = a.bf ? rbf(v) : v;
            }
        }
    }
}

__global__ void __launch_bounds__(MW * 32) down_k(GroupArgs a, DownPtrs w) {
    const int sh = (int)blockIdx.y == a.E, e = sh ? 0 : a.act[blockIdx.y];
    const int d = blockIdx.x * MW + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (e < 0) return;
    const int p0 = sh ? 0 : a.off[e], cnt = sh ? a.n : a.off[e + 1] - p0, K = sh ? a.sK : a.K;
    if (cnt == 0 || d >= a.N) return;
    const int wdt = sh ? a.swdt : a.wdt;
    const void *wd = (const char *)(sh ? w.sdown : w.down[e]) + (size_t)d * wrow_bytes(wdt, K);
    const float *x = sh ? a.sx : a.x;
    float *y = sh ? a.sy : a.y;
    for (int i0 = 0; i0 < cnt; i0 += MR) {
        int nr = min(MR, cnt - i0);
        const float *xr[MR];
#pragma unroll
        for (int r = 0; r < MR; r++) xr[r] = x + (size_t)(p0 + i0 + min(r, nr - 1)) * K;
        float acc[MR] = {0.f, 0.f, 0.f, 0.f};
        dot_rows(acc, xr, nr, wd, wdt, K, a.vec, lane);
#pragma unroll
        for (int r = 0; r < MR; r++) {
            float v = warp_sum(acc[r]);
            if (lane == 0 && r < nr) y[(size_t)(p0 + i0 + r) * a.N + d] = a.bf ? rbf(v) : v;
        }
    }
}

/* Tensor-core grouped products (many rows: a batch's decode step; the caller's BE_FP32_SUMS off): the same
 * (output columns, expert) grid as gateup_k / down_k, bf16 or Q8_0 weights read in place, mma.sync m16n8k16 with
 * fp32 accumulation. A block of GW warps; a warp takes GN = 16 output columns (two n8 tiles) of one expert and
 * that expert's rows 32 at a time (two m16 tiles). Per 32-wide step of the reduction, lane (g = lane / 4,
 * t = lane % 4) loads weights 8t..8t+7 of its two weight rows (one 16-byte load each in bf16; a Q8_0 row's step
 * is exactly one block) and x values 8t..8t+7 of its four rows (rows g, g + 8, g + 16, g + 24), rounded to bf16
 * (exact in bf16 mode, where this kernel runs: the inputs are bf16 values). The reduction index within a step is
 * permuted the same way for both operands (an mma's k pair 2t, 2t + 1 is the step's 8t + 4s, +1 and its pair
 * 2t + 8, 2t + 9 the step's 8t + 4s + 2, +3, for its half s), so the loads are contiguous. Q8_0: the int8
 * weights enter the mma as bf16 (exact), each block's sums are scaled by the block's scale and added in fp32.
 * The sums' order and the tensor cores' accumulation differ from one row's GEMV: the batch's rule is the
 * teacher-forced margins one, not bit equality. SwiGLU rounding points as gateup_k's. The grid's z blocks share an
 * expert's 32-row groups (round robin), so that an expert chosen by many rows (pages alike) is not one block's
 * long loop. */
enum { GW = 4, GN = 16 };


template <int DT, bool GATEUP>
__global__ void __launch_bounds__(GW * 32) group_mma_k(GroupArgs a, UpPtrs wu, DownPtrs wd) {
    const int e = a.act[blockIdx.y];
    if (e < 0) return;
    const int p0 = a.off[e], cnt = a.off[e + 1] - p0, K = a.K, N = a.N;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int c0 = ((int)blockIdx.x * GW + (int)(threadIdx.x >> 5)) * GN;
    if (cnt == 0 || c0 >= N) return;
    constexpr int NM = GATEUP ? 2 : 1; /* weight matrices: gate and up, or down */
    const size_t rb = DT == DS_Q8_0 ? (size_t)(K / 32) * 34 : (size_t)K * 2;
    const uint8_t *wr[NM][2]; /* this lane's weight rows: columns c0 + g and c0 + 8 + g */
#pragma unroll
    for (int mi = 0; mi < NM; mi++) {
        const uint8_t *w = (const uint8_t *)(GATEUP ? (mi ? wu.up[e] : wu.gate[e]) : wd.down[e]);
        wr[mi][0] = w + (size_t)(c0 + g) * rb;
        wr[mi][1] = w + (size_t)(c0 + 8 + g) * rb;
    }
    for (int m0 = 32 * (int)blockIdx.z; m0 < cnt; m0 += 32 * (int)gridDim.z) {
        const bool two = cnt - m0 > 16; /* the second m16 tile has rows (warp-uniform) */
        const float *xr[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int p = p0 + min(m0 + 8 * i + g, cnt - 1);
            xr[i] = a.x + (size_t)(GATEUP ? a.pair_row[p] : p) * K + 8 * t;
        }
        float acc[NM][2][2][4];
#pragma unroll
        for (int mi = 0; mi < NM; mi++)
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int q = 0; q < 4; q++) acc[mi][mt][j][q] = 0.f;
#pragma unroll 2
        for (int kb = 0; kb < K; kb += 32) {
            uint32_t A[4][4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (i >= 2 && !two) break;
                const float4 u = __ldg((const float4 *)(xr[i] + kb)), v = __ldg((const float4 *)(xr[i] + kb + 4));
                A[i][0] = pack_bf16(u.x, u.y), A[i][1] = pack_bf16(u.z, u.w);
                A[i][2] = pack_bf16(v.x, v.y), A[i][3] = pack_bf16(v.z, v.w);
            }
#pragma unroll
            for (int mi = 0; mi < NM; mi++)
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    uint32_t B[4];
                    float sc0 = 1.f, sc1 = 1.f;
                    if (DT == DS_Q8_0) {
                        const QRaw r = qload<DS_Q8_0>(wr[mi][j] + (size_t)(kb / 32) * 34, t);
                        B[0] = q8_pair(r.w0, 0), B[1] = q8_pair(r.w0, 1), B[2] = q8_pair(r.w1, 0), B[3] = q8_pair(r.w1, 1);
                        const float d = __half2float(__ushort_as_half(r.d));
                        /* the scales of this lane's accumulator columns 2t and 2t + 1 (rows of lanes 8t, 8t + 4) */
                        sc0 = __shfl_sync(0xffffffffu, d, 8 * t), sc1 = __shfl_sync(0xffffffffu, d, 8 * t + 4);
                    } else {
                        const uint4 q = __ldg((const uint4 *)(wr[mi][j] + (size_t)kb * 2) + t);
                        B[0] = q.x, B[1] = q.y, B[2] = q.z, B[3] = q.w;
                    }
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) {
                        if (mt && !two) break;
                        float c[4] = {0.f, 0.f, 0.f, 0.f};
                        float *cc = DT == DS_Q8_0 ? c : acc[mi][mt][j];
#pragma unroll
                        for (int s = 0; s < 2; s++) {
                            const uint32_t af[4] = {A[2 * mt][2 * s], A[2 * mt + 1][2 * s], A[2 * mt][2 * s + 1],
                                                    A[2 * mt + 1][2 * s + 1]};
                            mma_bf16(cc, af, B[2 * s], B[2 * s + 1]);
                        }
                        if (DT == DS_Q8_0) {
                            acc[mi][mt][j][0] += c[0] * sc0, acc[mi][mt][j][1] += c[1] * sc1;
                            acc[mi][mt][j][2] += c[2] * sc0, acc[mi][mt][j][3] += c[3] * sc1;
                        }
                    }
                }
        }
        /* accumulator q of (mt, j): row m0 + 16 mt + g (+ 8 for q >= 2), column c0 + 8 j + 2t (+ 1 for odd q) */
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    const int row = m0 + 16 * mt + g + (q >= 2 ? 8 : 0), col = c0 + 8 * j + 2 * t + (q & 1);
                    if (row >= cnt) continue;
                    float v = acc[0][mt][j][q];
                    if (GATEUP) {
                        float gv = v, uv = acc[NM - 1][mt][j][q];
                        if (a.bf) gv = rbf(gv), uv = rbf(uv);
                        float sv = gv / (1.f + expf(-gv));
                        if (a.bf) sv = rbf(sv);
                        v = sv * uv;
                    }
                    a.y[(size_t)(p0 + row) * N + col] = a.bf ? rbf(v) : v;
                }
    }
}

static int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* Whether group_mma_k takes a layer's grouped products: many rows without BE_FP32_SUMS, bf16 mode, sm_80+, sizes
 * of whole 32-wide steps, 16-byte aligned rows, bf16 (vectorisable) or Q8_0 experts, shared experts not fused */
static bool group_mma_ok(const CudaCtx *c, int flags, int fuse, int D, int F, const float *x, const float *h, int wdt,
                         int vec) {
    return !(flags & BE_FP32_SUMS) && (flags & OPS_BF16) && !fuse && c->cc >= 80 && D % 32 == 0 && F % 32 == 0 &&
           aligned16(x) && aligned16(h) && ((wdt == DS_BF16 && vec) || wdt == DS_Q8_0);
}

/* group_mma_k's z blocks for n rows (an expert has at most n) */
static int mma_z(int n) { return n > 32 * 16 ? 16 : (n + 31) / 32; }

/* The grouped products over ny expert slots (+ the fused shared experts' slot): GATEUP, gate/up from g's x into y
 * (reduction g.K, outputs g.N); else, once the caller has pointed g at h, the down products; by the tensor-core
 * kernel or the SIMT ones */
template <bool GATEUP>
static void group_products(CudaCtx *c, const GroupArgs &g, const UpPtrs &up, const DownPtrs &down, int ny, int fuse,
                           bool mma) {
    const dim3 grid(cdiv(g.N, GW * GN), ny, mma_z(g.n)), blk(GW * 32);
    if (mma && g.wdt == DS_Q8_0)
        group_mma_k<DS_Q8_0, GATEUP><<<grid, blk, 0, c->stream>>>(g, up, down);
    else if (mma)
        group_mma_k<DS_BF16, GATEUP><<<grid, blk, 0, c->stream>>>(g, up, down);
    else if (GATEUP)
        gateup_k<<<dim3(cdiv(fuse && g.sN > g.N ? g.sN : g.N, MW), ny + fuse), MW * 32, 0, c->stream>>>(g, up);
    else
        down_k<<<dim3(cdiv(g.N, MW), ny + fuse), MW * 32, 0, c->stream>>>(g, down);
    CU_LAUNCHED();
}

__global__ void combine_k(float *y, const float *ysl, const float *shared, const int32_t *idx, const float *wts,
                          const int32_t *pos_of, int n, int D, int K, int bf) {
    size_t total = (size_t)n * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int r = (int)(i / D), d = (int)(i % D);
        int ord[MAXK];
        for (int j = 0; j < K; j++) { /* insertion sort of the row's slots by expert id */
            int t = j;
            while (t > 0 && idx[(size_t)r * K + ord[t - 1]] > idx[(size_t)r * K + j]) {
                ord[t] = ord[t - 1];
                t--;
            }
            ord[t] = j;
        }
        float acc = 0.f;
        for (int j = 0; j < K; j++) {
            size_t s = (size_t)r * K + ord[j];
            acc = __fadd_rn(acc, __fmul_rn(wts[s], ysl[(size_t)pos_of[s] * D + d]));
        }
        if (bf) acc = rbf(acc);
        if (shared) {
            acc = shared[i] + acc;
            if (bf) acc = rbf(acc);
        }
        y[i] = acc;
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * One token (decode), bf16 or block weights: three kernels instead of five, the same arithmetic as the general path
 * (block weights: quant_cuda.h's dot products, up to the order of the sums).
 *   route1_k:   the router products (R1B blocks of R1W warps, each expert's dot as gemv_k<1> sums it) and, in
 *               more blocks meanwhile, the shared experts' gate/up; the last block to finish (an atomic count) runs
 *               route_warp;
 *   gateup1_k:  gateup_k's grid over (columns, slot) with slot = the j-th chosen expert;
 *   down1_k:    a warp per output column computes every slot's down product (all slots' weight loads in flight
 *               together) and combines them in ascending expert order as combine_k does, plus the shared output;
 *               qdown1_k is its block-weight twin. */

/* One column of a gate/up pair for one row x: *out = SiLU(x·wg)·(x·wu) with gateup_k's arithmetic (lane 0 writes).
 * QW 0: bf16 rows (x and the rows 16-byte aligned, D % 8 == 0); QW 1: rows of block type wdt (D % 32 == 0). The
 * single-token kernels are instantiated once for each, so that the bf16 path keeps its own registers. */
/* gateup_col's last step: the lanes' shares g and u summed, then *out = SiLU(g)·u (lane 0 writes) */
static __device__ __forceinline__ void gateup_finish(float g, float u, int lane, int bf, float *out) {
    float gv = warp_sum(g), uv = warp_sum(u);
    if (lane == 0) {
        if (bf) {
            gv = rbf(gv);
            uv = rbf(uv);
        }
        float sv = gv / (1.f + expf(-gv));
        if (bf) sv = rbf(sv);
        float v = sv * uv;
        *out = bf ? rbf(v) : v;
    }
}
template <int QW>
static __device__ __forceinline__ void gateup_col(const float *x, const void *wg, const void *wu, int wdt, int D,
                                                  int lane, int bf, float *out) {
    const float *xr[MR] = {x, x, x, x};
    float g[MR] = {0.f, 0.f, 0.f, 0.f}, u[MR] = {0.f, 0.f, 0.f, 0.f};
    if (QW)
        qdot2_dt(g[0], u[0], x, wg, wu, wdt, D, lane);
    else
        dot_rows2(g, u, xr, 1, wg, wu, D, lane);
    gateup_finish(g[0], u[0], lane, bf, out);
}

enum { R1B = 8, R1W = 8 }; /* route1_k: blocks, warps per block (a warp per expert's router dot) */
/* route1_k's optional first step, add_rmsnorm_k's arithmetic with the same 256 threads: x + res (rounded with bf)
 * and its RMSNorm computed by every block into shared memory (xs, then the normed a in xs + D), the router reading
 * a from there; the last block writes the new x and a (every block has read x by then). */
struct PreNorm {
    float *x, *a;
    const float *res;
    const void *w;
    int wdt;
    float eps;
};
/* route1_k's blocks past R1B compute the shared experts' gate/up columns (SharedUp) meanwhile: they need no routing. */
struct SharedUp {
    const void *gate, *up;
    int wdt; /* bf16 or a block type */
    int S;
    float *out; /* [S] */
};
template <int QW>
__global__ void __launch_bounds__(R1W * 32) route1_k(const float *x, const void *rw, int rdt, int E, int D, int K,
                                                     int bf, float *lg, int *count, int32_t *idx, float *wts,
                                                     float *out_logits, int32_t *out_experts, PreNorm pn,
                                                     SharedUp su) {
    /* bf16 weights (rows of at most 2,048): the warp's router row or shared gate and up rows loaded before the wait */
    const int wp = threadIdx.x / 32, ln = threadIdx.x & 31, fsh = ((int)blockIdx.x - R1B) * R1W + wp;
    const bool pre_sh = QW == 0 && blockIdx.x >= R1B && fsh < su.S && su.wdt == DS_BF16 && D % 8 == 0 &&
                        D / 8 <= PRE_U * 32;
    const bool pre_r = QW == 0 && blockIdx.x < R1B && E <= R1B * R1W && (int)blockIdx.x * R1W + wp < E &&
                       rdt == DS_BF16 && D % 8 == 0 && D / 8 <= PRE_U * 32;
    uint4 pg[PRE_U], pu[PRE_U];
    if (pre_sh) {
        pre_load(pg, (const uint16_t *)su.gate + (size_t)fsh * D, D / 8, ln);
        pre_load(pu, (const uint16_t *)su.up + (size_t)fsh * D, D / 8, ln);
    } else if (pre_r) {
        pre_load(pg, (const uint16_t *)rw + (size_t)(blockIdx.x * R1W + wp) * D, D / 8, ln);
    }
    pdl_wait();
    __shared__ float p[MAXE];
    __shared__ float sh[32];
    __shared__ int last;
    extern __shared__ float4 pre4[];
    float *xs = (float *)pre4;
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (pn.res) {
        float ss = 0.f;
#pragma unroll 8
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            float v = __ldg(pn.x + i) + __ldg(pn.res + i);
            if (bf) v = rbf(v);
            xs[i] = v;
            ss += v * v;
        }
        const float r = (float)(1.0 / sqrt((double)block_sum(ss, sh) / D + pn.eps));
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            float v = xs[i] * r;
            if (bf) v = rbf(v);
            v *= wget(pn.w, pn.wdt, i);
            if (bf) v = rbf(v);
            xs[D + i] = v;
        }
        __syncthreads();
        x = xs + D;
    }
    if (blockIdx.x >= R1B) { /* a shared-expert block */
        const int f = (blockIdx.x - R1B) * R1W + warp;
        const size_t wo = (size_t)f * wrow_bytes(su.wdt, D);
        if (pre_sh) {
            float g = 0.f, u = 0.f;
            pre_dot2(g, u, pg, pu, x, D / 8, lane);
            gateup_finish(g, u, lane, bf, su.out + f);
        } else if (f < su.S) {
            gateup_col<QW>(x, (const char *)su.gate + wo, (const char *)su.up + wo, su.wdt, D, lane, bf, su.out + f);
        }
    }
    for (int e = blockIdx.x * R1W + warp; blockIdx.x < R1B && e < E; e += R1B * R1W) {
        float acc = 0.f;
        if (pre_r) {
            pre_dot(acc, pg, x, D / 8, lane);
        } else if (rdt == DS_BF16 && D % 8 == 0) {
            const uint4 *wr = (const uint4 *)((const uint16_t *)rw + (size_t)e * D);
#pragma unroll 4
            for (int k8 = lane; k8 < D / 8; k8 += 32) {
                uint4 q = __ldg(wr + k8);
                float wv[8] = {__uint_as_float(q.x << 16), __uint_as_float(q.x & 0xffff0000u),
                               __uint_as_float(q.y << 16), __uint_as_float(q.y & 0xffff0000u),
                               __uint_as_float(q.z << 16), __uint_as_float(q.z & 0xffff0000u),
                               __uint_as_float(q.w << 16), __uint_as_float(q.w & 0xffff0000u)};
                const float4 *xr = (const float4 *)x + 2 * k8;
                float4 u = xr[0], v = xr[1];
                acc += u.x * wv[0] + u.y * wv[1] + u.z * wv[2] + u.w * wv[3] + v.x * wv[4] + v.y * wv[5] +
                       v.z * wv[6] + v.w * wv[7];
            }
        } else {
            for (int k = lane; k < D; k += 32) acc += x[k] * wget(rw, rdt, (size_t)e * D + k);
        }
        acc = warp_sum(acc);
        if (lane == 0) lg[e] = acc;
    }
    /* The last router block to finish routes (its first warp) over the router blocks' logits, while shared-expert
     * blocks may still run (count[1] counts router blocks); the last block of all writes the new x and a, every
     * block having read x by then (count[0]). */
    __threadfence();
    __syncthreads();
    __shared__ int last_router;
    if (threadIdx.x == 0) {
        last_router = blockIdx.x < R1B && atomicAdd(count + 1, 1) == R1B - 1;
        last = atomicAdd(count, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (last && pn.res)
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            pn.x[i] = xs[i];
            pn.a[i] = xs[D + i];
        }
    if (warp) return;
    if (last && lane == 0) count[0] = 0;
    if (!last_router) return;
    __threadfence();
    if (lane == 0) count[1] = 0;
    route_warp(lg, 1, p, E, K, bf, out_logits, idx, wts, out_experts);
}

/* What gateup1_k's slot K does when the grid has it: the shared experts' gate/up (sdo NULL: from x into sh), or,
 * their gate/up being done already (route1_k), the shared down product over sh into sdo [D] (unrounded). */
struct SharedDown {
    const void *down; /* [D, S] */
    float *sdo;
};
/* grid (max(F, D) / MW, slots): slot < K the j-th chosen expert, slot == K (when the grid has it) the shared experts;
 * h [K, F] routed, sh [S] shared; wdt, swdt: the routed and the shared experts' dtypes (bf16 or block types) */
/* (block weights: at most 64 registers, 4 blocks a multiprocessor, for more rows' loads in flight) */
template <int QW>
__global__ void __launch_bounds__(MW * 32, QW ? 4 : 0) gateup1_k(const float *x, const int32_t *idx, int K, int D, int F, int S,
                                                     int bf, float *h, float *sh, UpPtrs w, SharedDown sd, int wdt,
                                                     int swdt) {
    pdl_wait();
    const int slot = blockIdx.y, shared = slot == K, f = blockIdx.x * MW + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (shared && sd.sdo) {
        if (f >= D) return;
        float acc[MR] = {0.f, 0.f, 0.f, 0.f};
        const float *xr[MR] = {sh, sh, sh, sh};
        const void *wd = (const char *)sd.down + (size_t)f * wrow_bytes(swdt, S);
        if (QW)
            qdot_dt<1>(acc, xr, 1, wd, swdt, S, lane);
        else
            dot_rows(acc, xr, 1, wd, DS_BF16, S, 1, lane);
        const float v = warp_sum(acc[0]);
        if (lane == 0) sd.sdo[f] = v;
        return;
    }
    const int N = shared ? S : F, dt = shared ? swdt : wdt;
    if (f >= N) return;
    const int e = shared ? 0 : idx[slot];
    size_t wo = (size_t)f * wrow_bytes(dt, D);
    const void *wg = (const char *)(shared ? w.sgate : w.gate[e]) + wo, *wu = (const char *)(shared ? w.sup : w.up[e]) + wo;
    gateup_col<QW>(x, wg, wu, dt, D, lane, bf, (shared ? sh : h + (size_t)slot * F) + f);
}

enum { MAXK1 = 8, MAXS1 = 8, D1W = 4, D1IT = 2, D1SU = 8, D1_SMEM = 48 * 1024 };
/* down1_k's slots: the K routed experts (input h + j·F, weight row d of down[idx[j]]) then the shared experts as
 * S / F slots of F (input sh + t·F, weight row d of sdown at t·F; the dense MLP's one slot: cu_swiglu1); S % F == 0
 * and K + S / F <= MAXS1 (host check). The MoE path gives the shared down product to gateup1_k instead. */
static bool down1_fits(int K, int F, int S, int has_shared) {
    const int ns = K + (has_shared ? S / F : 0);
    return F % 8 == 0 && (!has_shared || S % F == 0) && K <= MAXK1 && ns >= 1 && ns <= MAXS1 &&
           (size_t)ns * F * sizeof(float) <= D1_SMEM;
}

/* One output column's last step of the single-token MoE (combine_k's arithmetic): the K routed outputs v [K] of the
 * experts ex [K] (unrounded; rounded to bf16 here with bf) summed in ascending expert order with weights wts, then,
 * with shared, plus the shared output sv. v is indexed by compile-time indices only (it stays in registers). */
static __device__ __forceinline__ float combine1(float *v, const int *ex, const float *wts, int K, int bf, bool shared,
                                                 float sv) {
#pragma unroll
    for (int j = 0; j < MAXK1; j++)
        if (bf) v[j] = rbf(v[j]);
    int ord[MAXK1];
    for (int j = 0; j < K; j++) {
        int t = j;
        while (t > 0 && ex[ord[t - 1]] > ex[j]) {
            ord[t] = ord[t - 1];
            t--;
        }
        ord[t] = j;
    }
    float out = 0.f;
    for (int j = 0; j < K; j++) {
        float vj = 0.f;
#pragma unroll
        for (int t = 0; t < MAXK1; t++)
            if (t == ord[j]) vj = v[t];
        out = __fadd_rn(out, __fmul_rn(wts[ord[j]], vj));
    }
    if (bf) out = rbf(out);
    if (shared) {
        out = (bf ? rbf(sv) : sv) + out;
        if (bf) out = rbf(out);
    }
    return out;
}

/* grid (D / D1W), D1W warps, dynamic smem ns·F floats; y [D]. A warp per output column: every slot's inputs are
 * staged in shared memory once per block, then each lane keeps D1IT × ns 16-byte weight loads in flight (the
 * decode step is latency-bound: one round trip per D1IT·32·8 weights of a row). Routed outputs combine in
 * ascending expert order as combine_k does, plus the shared output (its slots summed first). */
/* dst[0..n4) = a[0..na) followed by b[0..n4 − na) (float4s, into shared memory), D1SU loads in flight a thread
 * (a loop of dependent load-store pairs would wait one round trip each); the block's NT threads stride it */
template <int NT>
static __device__ __forceinline__ void stage4(float4 *dst, const float4 *a, int na, const float4 *b, int n4) {
    for (int i0 = threadIdx.x; i0 < n4; i0 += D1SU * NT) {
        float4 t[D1SU];
#pragma unroll
        for (int u = 0; u < D1SU; u++) {
            const int i = i0 + u * NT;
            if (i < n4) t[u] = __ldg(i < na ? a + i : b + (i - na));
        }
#pragma unroll
        for (int u = 0; u < D1SU; u++)
            if (i0 + u * NT < n4) dst[i0 + u * NT] = t[u];
    }
}

__global__ void __launch_bounds__(D1W * 32) down1_k(float *y, const float *h, const float *sh, const int32_t *idx,
                                                   const float *wts, int K, int D, int F, int S, int bf, DownPtrs w,
                                                   const float *sdo) {
    pdl_wait();
    extern __shared__ float4 xs4[];
    const int nsh = sh ? S / F : 0, ns = K + nsh, F8 = F / 8;
    const int d0 = blockIdx.x * D1W + threadIdx.x / 32, lane = threadIdx.x & 31, d = d0 < D ? d0 : D - 1;
    int ex[MAXK1];
    const uint4 *wr[MAXS1];
#pragma unroll
    for (int j = 0; j < MAXS1; j++) {
        const int e = j < K ? idx[j] : 0;
        if (j < MAXK1) ex[j] = e;
        wr[j] = j < K ? (const uint4 *)((const uint16_t *)w.down[e] + (size_t)d * F)
                      : (const uint4 *)((const uint16_t *)w.sdown + (size_t)d * S + (size_t)(j < ns ? j - K : 0) * F);
    }
    /* the first loads go out before the inputs are staged */
    uint4 q[D1IT][MAXS1];
#pragma unroll
    for (int it = 0; it < D1IT; it++)
#pragma unroll
        for (int j = 0; j < MAXS1; j++)
            if (j < ns && it * 32 + lane < F8) q[it][j] = __ldg(wr[j] + it * 32 + lane);
    stage4<D1W * 32>(xs4, (const float4 *)h, K * F / 4, (const float4 *)sh, ns * F / 4);
    __syncthreads();
    float acc[MAXS1];
#pragma unroll
    for (int j = 0; j < MAXS1; j++) acc[j] = 0.f;
    for (int base = 0; base < F8; base += D1IT * 32) {
#pragma unroll
        for (int it = 0; it < D1IT; it++) {
            const int k8 = base + it * 32 + lane;
            if (k8 < F8) {
#pragma unroll
                for (int j = 0; j < MAXS1; j++)
                    if (j < ns) {
                        const uint4 qq = q[it][j];
                        const float4 u = xs4[(j * F) / 4 + 2 * k8], v = xs4[(j * F) / 4 + 2 * k8 + 1];
                        acc[j] += u.x * __uint_as_float(qq.x << 16) + u.y * __uint_as_float(qq.x & 0xffff0000u) +
                                  u.z * __uint_as_float(qq.y << 16) + u.w * __uint_as_float(qq.y & 0xffff0000u) +
                                  v.x * __uint_as_float(qq.z << 16) + v.y * __uint_as_float(qq.z & 0xffff0000u) +
                                  v.z * __uint_as_float(qq.w << 16) + v.w * __uint_as_float(qq.w & 0xffff0000u);
                    }
            }
        }
        const int nb = base + D1IT * 32;
        if (nb < F8) {
#pragma unroll
            for (int it = 0; it < D1IT; it++)
#pragma unroll
                for (int j = 0; j < MAXS1; j++)
                    if (j < ns && nb + it * 32 + lane < F8) q[it][j] = __ldg(wr[j] + nb + it * 32 + lane);
        }
    }
    float v[MAXS1];
#pragma unroll
    for (int j = 0; j < MAXS1; j++) v[j] = warp_sum(acc[j]);
    if (lane || d0 >= D) return;
    float svv = 0.f;
    for (int j = K; j < ns; j++) {
        float vj = 0.f;
#pragma unroll
        for (int t = 0; t < MAXS1; t++)
            if (t == j) vj = v[t];
        svv += vj;
    }
    y[d] = combine1(v, ex, wts, K, bf, sh || sdo, sdo ? sdo[d] : svv);
}

/* sdo: the shared down product already done (gateup1_k), else sh's S / F slots (or none without sh) */
static void down1(CudaCtx *c, float *y, const float *h, const float *sh, const int32_t *idx, const float *wts, int K,
                  int D, int F, int S, int bf, const DownPtrs &d, const float *sdo) {
    const int ns = K + (sh ? S / F : 0);
    launch_pdl(c, down1_k, dim3(cdiv(D, D1W)), dim3(D1W * 32), (size_t)ns * F * sizeof(float), y, h, sh, idx, wts, K,
               D, F, S, bf, d, sdo);
    CU_LAUNCHED();
}

/* down1_k for block-quantised weights (Q8_0 / Q4_0, quant_cuda.h): grid (D / QD_W), QD_W warps, a warp per output
 * column d, dynamic smem K·F floats. The K routed slots (input h + j·F, weight row d of down[idx[j]], type DT) go
 * 8 blocks a round, four lanes a block, QD_U rounds a batch: every slot's weight loads of a batch are issued
 * first (for the first batch, before the inputs h are staged in shared memory), then used, so a row of up to
 * 256·QD_U weights (F = 896: 28 blocks) costs one memory round trip for all slots together. The shared part is
 * either sdo [D] (done by gateup1_k) or, with sh, one more row: sdown's row d of S weights of type sdt against
 * sh [S] (the dense MLP: K = 0, S = F). The outputs combine as down1_k's (combine1). */
enum { QD_W = 4, QD_U = 4 };
template <int DT, bool SMEM>
static __device__ __forceinline__ void qdown_issue(QRaw (&q)[QD_U][MAXK1], const uint8_t *const *wr, int K, int b0,
                                                   int g, int t, int nb) {
#pragma unroll
    for (int u = 0; u < QD_U; u++)
#pragma unroll
        for (int j = 0; j < MAXK1; j++)
            if (j < K && b0 + g + 8 * u < nb)
                q[u][j] = qload<DT, SMEM>(wr[j] + (size_t)(b0 + g + 8 * u) * qbytes(DT), t);
}
/* QD_SU: 8-byte words a lane loads per slot and round when the rows are staged (ST) */
enum { QD_SU = 4 };
template <int DT, bool ST>
__global__ void __launch_bounds__(QD_W * 32) qdown1_k(float *y, const float *h, const float *sh, const int32_t *idx,
                                                     const float *wts, int K, int D, int F, int S, int sdt, int bf,
                                                     DownPtrs w, const float *sdo) {
    pdl_wait();
    extern __shared__ float4 hs4[];
    const float *hs = (const float *)hs4;
    const int d0 = blockIdx.x * QD_W + threadIdx.x / 32, lane = threadIdx.x & 31, d = d0 < D ? d0 : D - 1;
    const int g = lane >> 2, t = lane & 3, nb = F / 32;
    int ex[MAXK1];
    const uint8_t *wr[MAXK1];
#pragma unroll
    for (int j = 0; j < MAXK1; j++) {
        ex[j] = j < K ? idx[j] : 0;
        wr[j] = j < K ? (const uint8_t *)w.down[ex[j]] + (size_t)d * nb * qbytes(DT) : NULL;
    }
    QRaw q[QD_U][MAXK1];
    if (ST) {
        /* The warp's K rows go to its part of shared memory first, read front to back in 8-byte words (every
         * sector of a load instruction used by it once; read in place, each 2-byte load instruction of the warp
         * spans 8 blocks, and the sectors came from L2 about three times over), then the blocks are read from
         * there as in place. The h staging overlaps the first round's loads. */
        const int rb = nb * qbytes(DT), nw = rb / 8;
        uint8_t *ws = (uint8_t *)(hs4 + K * F / 4) + (size_t)(threadIdx.x / 32) * K * rb;
        for (int w0 = 0; w0 < nw; w0 += 32 * QD_SU) {
            uint2 v[MAXK1][QD_SU];
#pragma unroll
            for (int j = 0; j < MAXK1; j++)
#pragma unroll
                for (int u = 0; u < QD_SU; u++)
                    if (j < K && w0 + 32 * u + lane < nw) v[j][u] = __ldg((const uint2 *)wr[j] + w0 + 32 * u + lane);
            if (w0 == 0) stage4<QD_W * 32>(hs4, (const float4 *)h, K * F / 4, NULL, K * F / 4);
#pragma unroll
            for (int j = 0; j < MAXK1; j++)
#pragma unroll
                for (int u = 0; u < QD_SU; u++)
                    if (j < K && w0 + 32 * u + lane < nw) ((uint2 *)(ws + (size_t)j * rb))[w0 + 32 * u + lane] = v[j][u];
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < MAXK1; j++) wr[j] = j < K ? ws + (size_t)j * rb : NULL;
        qdown_issue<DT, true>(q, wr, K, 0, g, t, nb);
    } else {
        qdown_issue<DT, false>(q, wr, K, 0, g, t, nb);
        stage4<QD_W * 32>(hs4, (const float4 *)h, K * F / 4, NULL, K * F / 4); /* h into shared memory */
        __syncthreads();
    }
    float acc[MAXK1];
#pragma unroll
    for (int j = 0; j < MAXK1; j++) acc[j] = 0.f;
    for (int b0 = 0; b0 < nb; b0 += 8 * QD_U) {
#pragma unroll
        for (int u = 0; u < QD_U; u++)
#pragma unroll
            for (int j = 0; j < MAXK1; j++) {
                const int kb = b0 + g + 8 * u;
                if (j < K && kb < nb) acc[j] += qfma<DT>(q[u][j], qxload<DT>(hs + (size_t)j * F + 32 * kb, t, true));
            }
        if (b0 + 8 * QD_U < nb) qdown_issue<DT, ST>(q, wr, K, b0 + 8 * QD_U, g, t, nb);
    }
    float v[MAXK1];
#pragma unroll
    for (int j = 0; j < MAXK1; j++) v[j] = warp_sum(acc[j]);
    float sv = 0.f;
    if (sh) {
        float a[1] = {0.f};
        const float *xr[1] = {sh};
        qdot_dt<1>(a, xr, 1, (const char *)w.sdown + (size_t)d * wrow_bytes(sdt, S), sdt, S, lane);
        sv = warp_sum(a[0]);
    } else if (sdo) {
        sv = sdo[d];
    }
    if (lane == 0 && d0 < D) y[d] = combine1(v, ex, wts, K, bf, sh || sdo, sv);
}

/* qdown1_k for routed experts of type wdt (any block type when K == 0) */
static void qdown1(CudaCtx *c, float *y, const float *h, const float *sh, const int32_t *idx, const float *wts, int K,
                   int D, int F, int S, int wdt, int sdt, int bf, const DownPtrs &d, const float *sdo) {
    DS_ASSERT(K <= MAXK1 && F % 32 == 0 && (size_t)K * F * sizeof(float) <= D1_SMEM && ((uintptr_t)h & 15) == 0 &&
              (!sh || (is_block(sdt) && S % 32 == 0)));
    /* staged rows (qdown1_k ST) when they are whole 8-byte words at 8-byte alignment and fit beside h */
    const size_t rb = (size_t)F / 32 * (wdt == DS_Q4_0 ? QB4 : QB8), hb = (size_t)K * F * sizeof(float);
    bool st = K > 0 && rb % 8 == 0 && hb + (size_t)QD_W * K * rb <= D1_SMEM;
    for (int e = 0; st && e < MAXE && d.down[e]; e++) st = ((uintptr_t)d.down[e] & 7) == 0;
    const size_t smem = st ? hb + (size_t)QD_W * K * rb : hb;
    if (wdt == DS_Q4_0)
        launch_pdl(c, st ? qdown1_k<DS_Q4_0, true> : qdown1_k<DS_Q4_0, false>, dim3(cdiv(D, QD_W)), dim3(QD_W * 32),
                   smem, y, h, sh, idx, wts, K, D, F, S, sdt, bf, d, sdo);
    else
        launch_pdl(c, st ? qdown1_k<DS_Q8_0, true> : qdown1_k<DS_Q8_0, false>, dim3(cdiv(D, QD_W)), dim3(QD_W * 32),
                   smem, y, h, sh, idx, wts, K, D, F, S, sdt, bf, d, sdo);
    CU_LAUNCHED();
}


bool cu_swiglu1(Backend *b, float *y, const float *x, int D, int F, DsW gate, DsW up, DsW down, int flags,
                float *scratch) {
    if (is_block(gate.dtype) && up.dtype == gate.dtype && is_block(down.dtype)) {
        /* block weights: gateup1_k's one shared slot into scratch [F], then qdown1_k with no routed slots */
        if (D % 32 || F % 32 || !aligned16(x) || !aligned16(scratch)) return false;
        CudaCtx *c = cctx(b);
        const int bf = flags & OPS_BF16;
        UpPtrs u;
        DownPtrs d;
        memset(&u, 0, sizeof u);
        memset(&d, 0, sizeof d);
        u.sgate = gate.data;
        u.sup = up.data;
        d.sdown = down.data;
        launch_pdl(c, gateup1_k<1>, dim3(cdiv(F, MW), 1), dim3(MW * 32), 0, x, NULL, 0, D, F, F, bf, NULL, scratch, u,
                   SharedDown{NULL, NULL}, (int)gate.dtype, (int)gate.dtype);
        CU_LAUNCHED();
        qdown1(c, y, NULL, scratch, NULL, NULL, 0, D, F, F, DS_Q8_0, (int)down.dtype, bf, d, NULL);
        return true;
    }
    if (gate.dtype != DS_BF16 || up.dtype != DS_BF16 || down.dtype != DS_BF16 || D % 8 || D * 4 > 48 * 1024 ||
        !down1_fits(0, F, F, 1))
        return false;
    if (!aligned16(x) || !aligned16(scratch) || !aligned16(gate.data) || !aligned16(up.data) || !aligned16(down.data))
        return false;
    CudaCtx *c = cctx(b);
    const int bf = flags & OPS_BF16;
    UpPtrs u;
    DownPtrs d;
    memset(&u, 0, sizeof u);
    memset(&d, 0, sizeof d);
    u.sgate = gate.data;
    u.sup = up.data;
    d.sdown = down.data;
    /* no routed slots: the "shared" slot is the whole MLP */
    launch_pdl(c, gateup1_k<0>, dim3(dim3(cdiv(F, MW), 1)), dim3(MW * 32), 0, x, NULL, 0, D, F, F, bf, NULL, scratch, u,
               SharedDown{NULL, NULL}, (int)DS_BF16, (int)DS_BF16);
    CU_LAUNCHED();
    down1(c, y, NULL, scratch, NULL, NULL, 0, D, F, F, bf, d, NULL);
    return true;
}

/* DSOCR_PROFILE's sections inside a MoE call of many rows: the part's label under the decoder's current section's
 * prefix ("batch.moe" -> "batch.moe.gateup"; prefill "dec.", one row "step."; "_simt": the grouped products on the
 * SIMT kernels, not group_mma_k); nothing when not profiling. */
enum { MP_ROUTE, MP_GATEUP, MP_DOWN, MP_SHARED, MP_COMBINE, MP_GATEUP_SIMT, MP_DOWN_SIMT, MP_N };
static void moe_mark(Backend *b, int part) {
    const CudaCtx *c = cctx(b);
    if (!c->prof || !c->prof_last || !b->mark) return;
    static const char *const lab[3][MP_N] = {
        {"batch.moe.route", "batch.moe.gateup", "batch.moe.down", "batch.moe.shared", "batch.moe.combine",
         "batch.moe.gateup_simt", "batch.moe.down_simt"},
        {"dec.moe.route", "dec.moe.gateup", "dec.moe.down", "dec.moe.shared", "dec.moe.combine", "dec.moe.gateup_simt",
         "dec.moe.down_simt"},
        {"step.moe.route", "step.moe.gateup", "step.moe.down", "step.moe.shared", "step.moe.combine",
         "step.moe.gateup_simt", "step.moe.down_simt"}};
    const char *l = c->prof_last;
    const int pre = !strncmp(l, "batch.", 6) ? 0 : !strncmp(l, "dec.", 4) ? 1 : !strncmp(l, "step.", 5) ? 2 : -1;
    if (pre >= 0) b->mark(b, lab[pre][part]);
}

/* The many-row path's routing: the router's logits, each row's top-k (idx, wts) and the rows bucketed by expert
 * (off, pair_row, pos_of, and act: the experts with rows, ascending). */
static void route_rows(Backend *b, const MoeSlots *s, const float *x, int n, const BackendMoe *m, int bf,
                       float *router_logits, int32_t *experts) {
    CudaCtx *c = cctx(b);
    const int D = m->d_model, E = m->n_experts, K = m->top_k;
    cu_gemv(b, s->logits, E, x, D, n, D, m->router, E, ds_w_none(), 0, 0);
    if (n <= RB_MAX_ROWS) {
        route_bucket_k<<<1, 1024, 0, c->stream>>>(s->logits, n, E, K, bf, s->idx, s->wts, router_logits, experts,
                                                  s->off, s->pair_row, s->pos_of, s->act);
        CU_LAUNCHED();
    } else {
        route_k<<<cdiv(n, 64), 64, 0, c->stream>>>(s->logits, n, E, K, bf, s->idx, s->wts, router_logits, experts);
        CU_LAUNCHED();
        bucket_k<<<1, 1024, 0, c->stream>>>(s->idx, n * K, K, E, s->off, s->pair_row, s->pos_of, s->act);
        CU_LAUNCHED();
    }
}

static size_t up256(size_t n) { return (n + 255) & ~(size_t)255; }

/* The hybrid MoE for many rows (n >= CU_MOE_STREAM_ROWS, a prefill chunk): the routed experts that have rows are
 * copied from host memory into the GPU's staging cache (cu_stage_get), as many as it holds at a time, and each
 * group goes through the all-GPU path's grouped products (gateup_k and down_k over those experts' rows), then
 * combine_k. The same kernels on the same weights as with the experts on the GPU: the same bits (the shared
 * experts unfused, as there for n > FUSE_SHARED_ROWS). false, with nothing queued: not one expert fits. */
static bool moe_stream(Backend *b, float *y, const float *x, int n, const BackendMoe *m, int flags,
                       float *router_logits, int32_t *experts, float *scratch) {
    const int D = m->d_model, E = m->n_experts, K = m->top_k, F = m->d_ff, bf = flags & OPS_BF16;
    CudaCtx *c = cctx(b);
    const int wdt = m->experts[0].gate.dtype, has_shared = m->shared.gate.data != NULL;
    const int swdt = has_shared ? (int)m->shared.gate.dtype : wdt;
    const size_t gb = wrow_bytes(wdt, D) * F, db = wrow_bytes(wdt, F) * D, per = 2 * up256(gb) + up256(db);
    size_t got = 0;
    char *st = (char *)cu_stage_get(c, per * (size_t)E, per, &got);
    if (!st) return false;
    MoeSlots s;
    moe_layout(scratch, n, m, &s);
    route_rows(b, &s, x, n, m, bf, router_logits, experts);
    int32_t act[MAXE];
    CU_CHECK(cudaMemcpyAsync(act, s.act, sizeof(int32_t) * (size_t)E, cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
    int na = 0;
    while (na < E && act[na] >= 0) na++;
    const int cap = (int)(got / per);
    UpPtrs up;
    DownPtrs down;
    memset(&up, 0, sizeof up);
    memset(&down, 0, sizeof down);
    GroupArgs g;
    memset(&g, 0, sizeof g);
    g.off = s.off;
    g.pair_row = s.pair_row;
    g.wdt = wdt;
    g.swdt = swdt;
    g.bf = bf;
    g.vec = !is_block(wdt) && (wdt == DS_BF16 ? D % 8 == 0 && F % 8 == 0 : D % 4 == 0 && F % 4 == 0) &&
            aligned16(x) && aligned16(s.h);
    g.E = -1;
    g.n = n;
    /* the all-GPU path's choice of kernels, so that both give the same bits */
    const bool mma = group_mma_ok(c, flags, 0, D, F, x, s.h, wdt, g.vec);
    for (int c0 = 0; c0 < na; c0 += cap) {
        const int cn = na - c0 < cap ? na - c0 : cap;
        for (int i = 0; i < cn; i++) {
            const int e = act[c0 + i];
            const BackendExpert *ex = &m->experts[e];
            char *p = st + (size_t)i * per;
            CU_CHECK(cudaMemcpyAsync(p, ex->gate.data, gb, cudaMemcpyHostToDevice, c->stream));
            CU_CHECK(cudaMemcpyAsync(p + up256(gb), ex->up.data, gb, cudaMemcpyHostToDevice, c->stream));
            CU_CHECK(cudaMemcpyAsync(p + 2 * up256(gb), ex->down.data, db, cudaMemcpyHostToDevice, c->stream));
            up.gate[e] = p;
            up.up[e] = p + up256(gb);
            down.down[e] = p + 2 * up256(gb);
        }
        g.act = s.act + c0;
        g.x = x;
        g.y = s.h;
        g.K = D;
        g.N = F;
        group_products<true>(c, g, up, down, cn, 0, mma);
        g.x = s.h;
        g.y = s.ysl;
        g.K = F;
        g.N = D;
        group_products<false>(c, g, up, down, cn, 0, mma);
    }
    if (has_shared)
        cu_swiglu(b, s.shared, x, n, D, m->d_shared, m->shared.gate, m->shared.up, m->shared.down, flags, s.sw);
    size_t total = (size_t)n * D;
    unsigned grid = cdiv(total, 256);
    if (grid > 65535 * 8) grid = 65535 * 8;
    combine_k<<<grid, 256, 0, c->stream>>>(y, s.ysl, has_shared ? s.shared : NULL, s.idx, s.wts, s.pos_of, n, D, K,
                                           bf);
    CU_LAUNCHED();
    return true;
}

/* The hybrid MoE (BackendMoe.experts_host: the routed experts in host memory, plan.h). The router and its top-k
 * run on the GPU (the many-row path's kernels); the rows x and their choices go to the host; the shared experts
 * are launched on the GPU and run while the CPU computes the routed experts (backend_cpu_moe_routed); their sum
 * comes back and y = shared + routed (rounded in bf16 mode), the CPU backend's order. Only hidden states and
 * choices cross the bus. The stream is waited on once a layer, so a recorded graph cannot hold it: the engine runs
 * hybrid models without graphs. */
static void moe_hybrid(Backend *b, float *y, const float *x, int n, const BackendMoe *m, int flags,
                       float *router_logits, int32_t *experts, float *scratch) {
    if (n >= CU_MOE_STREAM_ROWS && !ds_env_on("DSOCR_NO_STREAM") &&
        moe_stream(b, y, x, n, m, flags, router_logits, experts, scratch))
        return;
    const int D = m->d_model, E = m->n_experts, K = m->top_k, bf = flags & OPS_BF16;
    CudaCtx *c = cctx(b);
    MoeSlots s;
    moe_layout(scratch, n, m, &s);
    cu_gemv(b, s.logits, E, x, D, n, D, m->router, E, ds_w_none(), 0, 0);
    route_k<<<cdiv(n, 64), 64, 0, c->stream>>>(s.logits, n, E, K, bf, s.idx, s.wts, router_logits, experts);
    CU_LAUNCHED();
    /* host: x [n, D] | wts [n, K] | idx [n, K] | acc [n, D] | the CPU's scratch */
    const size_t nd = (size_t)n * D, nk = (size_t)n * K;
    float *hx = cu_host_scratch(b, 2 * nd + 2 * nk + backend_cpu_moe_routed_scratch(n, m));
    float *hw = hx + nd, *hacc = hw + 2 * nk;
    int32_t *hidx = (int32_t *)(hw + nk);
    CU_CHECK(cudaMemcpyAsync(hx, x, nd * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaMemcpyAsync(hw, s.wts, nk * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaMemcpyAsync(hidx, s.idx, nk * sizeof(int32_t), cudaMemcpyDeviceToHost, c->stream));
    if (!c->hyb_ev) CU_CHECK(cudaEventCreateWithFlags(&c->hyb_ev, cudaEventDisableTiming));
    CU_CHECK(cudaEventRecord(c->hyb_ev, c->stream));
    const int has_shared = m->shared.gate.data != NULL;
    if (has_shared)
        cu_swiglu(b, s.shared, x, n, D, m->d_shared, m->shared.gate, m->shared.up, m->shared.down, flags, s.sw);
    CU_CHECK(cudaEventSynchronize(c->hyb_ev));
    backend_cpu_moe_routed(hacc, hx, n, hidx, hw, m, bf, hacc + nd);
    CU_CHECK(cudaMemcpyAsync(has_shared ? s.ysl : y, hacc, nd * sizeof(float), cudaMemcpyHostToDevice, c->stream));
    if (has_shared) {
        b->add(b, y, s.shared, s.ysl, nd);
        if (bf) cu_round_bf16(b, y, nd);
    }
}

/* cu_moe, after add_rmsnorm(a = rmsnorm(x += r)) when pn.res: fused into the router kernel on the one-row path,
 * else the norm's own kernel first. x is then pn.a. */
static void moe_impl(Backend *b, float *y, const float *x, int n, const BackendMoe *m, int flags, float *router_logits,
                     int32_t *experts, float *scratch, PreNorm pn, DsW norm) {
    const int D = m->d_model, E = m->n_experts, K = m->top_k, F = m->d_ff, bf = flags & OPS_BF16;
    DS_ASSERT(E > 0 && E <= MAXE && K > 0 && K <= E && K <= MAXK && D > 0 && F > 0 && n >= 0);
    if (n == 0) return;
    if (m->experts_host) {
        if (pn.res) cu_add_rmsnorm(b, pn.a, pn.x, pn.res, n, D, norm, pn.eps, flags);
        moe_hybrid(b, y, x, n, m, flags, router_logits, experts, scratch);
        return;
    }
    CudaCtx *c = cctx(b);
    MoeSlots s;
    moe_layout(scratch, n, m, &s);
    const int S = m->d_shared, has_shared = m->shared.gate.data != NULL;
    const int fuse = has_shared && n <= FUSE_SHARED_ROWS; /* shared experts as one more group in the products */

    int wdt = m->experts[0].gate.dtype, swdt = has_shared ? (int)m->shared.gate.dtype : wdt;
    DS_ASSERT(wdt == DS_BF16 || wdt == DS_F32 || (is_block(wdt) && D % 32 == 0 && F % 32 == 0));
    DS_ASSERT(!has_shared || swdt == DS_BF16 || swdt == DS_F32 || (is_block(swdt) && S % 32 == 0));
    int vec_ok = !is_block(wdt) && (wdt == DS_BF16 ? D % 8 == 0 && F % 8 == 0 : D % 4 == 0 && F % 4 == 0) &&
                 aligned16(x) && aligned16(s.h);
    UpPtrs up;
    DownPtrs down;
    memset(&up, 0, sizeof up);
    memset(&down, 0, sizeof down);
    for (int e = 0; e < E; e++) {
        const BackendExpert *ex = &m->experts[e];
        DS_ASSERT(ex->gate.data && ex->up.data && ex->down.data);
        DS_ASSERT((int)ex->gate.dtype == wdt && (int)ex->up.dtype == wdt && (int)ex->down.dtype == wdt);
        up.gate[e] = ex->gate.data;
        up.up[e] = ex->up.data;
        down.down[e] = ex->down.data;
        vec_ok = vec_ok && aligned16(ex->gate.data) && aligned16(ex->up.data) && aligned16(ex->down.data);
    }
    if (fuse) {
        const BackendExpert *sx = &m->shared;
        DS_ASSERT((int)sx->gate.dtype == swdt && (int)sx->up.dtype == swdt && (int)sx->down.dtype == swdt);
        up.sgate = sx->gate.data;
        up.sup = sx->up.data;
        down.sdown = sx->down.data;
        vec_ok = vec_ok && (swdt == DS_BF16 ? S % 8 == 0 : S % 4 == 0) && aligned16(s.sw) &&
                 aligned16(sx->gate.data) && aligned16(sx->up.data) && aligned16(sx->down.data);
    }
    /* one row: route1_k, gateup1_k, then down1_k (bf16 weights) or qdown1_k (block weights) */
    const bool one_bf16 = n == 1 && vec_ok && wdt == DS_BF16 && (!has_shared || swdt == DS_BF16) &&
                          (!has_shared || fuse) && down1_fits(K, F, S, has_shared);
    const bool one_q = n == 1 && is_block(wdt) && (!has_shared || (fuse && is_block(swdt))) && K <= MAXK1 &&
                       (size_t)K * F * sizeof(float) <= D1_SMEM && aligned16(s.h) && aligned16(s.sw);
    if ((one_bf16 || one_q) && D % 8 == 0 && D * 4 <= 48 * 1024 && aligned16(s.ysl) && aligned16(x)) {
        const bool fuse_norm = pn.res && D >= 1024 && (size_t)2 * D * sizeof(float) <= 48 * 1024;
        if (pn.res && !fuse_norm) {
            cu_add_rmsnorm(b, pn.a, pn.x, pn.res, 1, D, norm, pn.eps, flags);
            pn.res = NULL;
        }
        SharedUp su = {up.sgate, up.sup, swdt, has_shared ? S : 0, s.sw};
        launch_pdl(c, one_q ? route1_k<1> : route1_k<0>, dim3(R1B + (has_shared ? cdiv(S, R1W) : 0)), dim3(R1W * 32),
                   pn.res ? (size_t)2 * D * sizeof(float) : 0, x, m->router.data, m->router.dtype, E, D, K, bf,
                   s.logits, c->moe_count, s.idx, s.wts, router_logits, experts, pn, su);
        CU_LAUNCHED();
        /* h for the K routed slots in s.h, the shared hidden in s.sw */
        /* the routed gate/up, and with them the shared down (its gate/up came with the router) */
        SharedDown sdn = {has_shared ? down.sdown : NULL, has_shared ? s.shared : NULL};
        launch_pdl(c, one_q ? gateup1_k<1> : gateup1_k<0>, dim3(dim3(cdiv(has_shared && D > F ? D : F, MW), K + has_shared)), dim3(MW * 32), 0,
                   x, s.idx, K, D, F, S, bf, s.h, s.sw, up, sdn, wdt, swdt);
        CU_LAUNCHED();
        if (one_q)
            qdown1(c, y, s.h, NULL, s.idx, s.wts, K, D, F, S, wdt, swdt, bf, down, has_shared ? s.shared : NULL);
        else
            down1(c, y, s.h, NULL, s.idx, s.wts, K, D, F, S, bf, down, has_shared ? s.shared : NULL);
        return;
    }
    if (pn.res) cu_add_rmsnorm(b, pn.a, pn.x, pn.res, n, D, norm, pn.eps, flags);
    const int nk = n * K;
    moe_mark(b, MP_ROUTE);
    route_rows(b, &s, x, n, m, bf, router_logits, experts);
    GroupArgs g;
    g.off = s.off;
    g.pair_row = s.pair_row;
    g.wdt = wdt;
    g.swdt = swdt;
    g.bf = bf;
    g.vec = vec_ok;
    const int ny = nk < E ? nk : E; /* at most nk experts have rows: the grid covers only those */
    g.act = s.act;
    g.E = fuse ? ny : -1;
    g.n = n;
    g.x = x;
    g.y = s.h;
    g.K = D;
    g.N = F;
    g.sN = S;
    g.sy = s.sw;
    const bool mma = group_mma_ok(c, flags, fuse, D, F, x, s.h, wdt, vec_ok);
    moe_mark(b, mma ? MP_GATEUP : MP_GATEUP_SIMT);
    group_products<true>(c, g, up, down, ny, fuse, mma);
    g.x = s.h;
    g.y = s.ysl;
    g.K = F;
    g.N = D;
    g.sK = S;
    g.sx = s.sw;
    g.sy = s.shared;
    moe_mark(b, mma ? MP_DOWN : MP_DOWN_SIMT);
    group_products<false>(c, g, up, down, ny, fuse, mma);
    const float *shared = fuse ? s.shared : NULL;
    if (has_shared && !fuse) {
        moe_mark(b, MP_SHARED);
        cu_swiglu(b, s.shared, x, n, D, m->d_shared, m->shared.gate, m->shared.up, m->shared.down, flags, s.sw);
        shared = s.shared;
    }
    size_t total = (size_t)n * D;
    unsigned grid = cdiv(total, 256);
    if (grid > 65535 * 8) grid = 65535 * 8;
    moe_mark(b, MP_COMBINE);
    combine_k<<<grid, 256, 0, c->stream>>>(y, s.ysl, shared, s.idx, s.wts, s.pos_of, n, D, K, bf);
    CU_LAUNCHED();
}

void cu_moe(Backend *b, float *y, const float *x, int n, const BackendMoe *m, int flags, float *router_logits,
            int32_t *experts, float *scratch) {
    PreNorm pn;
    memset(&pn, 0, sizeof pn);
    moe_impl(b, y, x, n, m, flags, router_logits, experts, scratch, pn, ds_w_none());
}

void cu_add_rmsnorm_moe(Backend *b, float *y, float *a, float *x, const float *r, int n, DsW norm, float eps,
                        const BackendMoe *m, int flags, float *router_logits, int32_t *experts, float *scratch) {
    PreNorm pn = {x, a, r, norm.data, (int)norm.dtype, eps};
    moe_impl(b, y, a, n, m, flags, router_logits, experts, scratch, pn, norm);
}
