/* backend_cuda.cu: the CUDA backend object (backend.h): one stream, one cuBLAS handle, one counting allocator,
 * and the dense ops: linear (cuBLAS tensor cores for many rows, with bf16 inputs, or fp16 ones in f16 mode
 * (set_gemm_f16: cards without bf16); cuBLASLt for bf16 outputs (BE_OUT_BF16); a bf16-reading GEMV kernel for
 * few rows), norms,
 * elementwise ops, RoPE, conv2d (im2col + linear), the SwiGLU block and the data-movement ops.
 * Attention lives in attention_cuda.cu, the MoE layer in moe_cuda.cu.
 * Semantics are those of the ops.h functions of the same name (tests/cuda/test_cuda.c checks them against the
 * _ref ops). Ops are queued on the stream; download and sync wait. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda_common.h"
#include "cuda/quant_cuda.h"

/* Q8_ROWS_MAX: cu_linear's rows on a Q8_0 weight up to which cu_linear_q8_rows takes them (a decode batch; a prefill
 * chunk keeps the dequantised weight and cuBLAS); Q8_ROWS_MIN_N: its outputs from which it does (the lm_head: 434
 * against 1,584 us at 128 rows on an H200; at N of 1,280 to 6,848 the dequantised chunks and cuBLAS were faster,
 * 28-66 against 43-213 us: bench/results/batch-h200-session13.txt) */
enum { Q8_ROWS_MAX = 256, Q8_ROWS_MIN_N = 16384 };
enum { XB_ELEMS = 16 << 20, WQ_ELEMS = 8 << 20, PART_FLOATS = 4 << 20, GEMV_ROWS = 8, WARPS = 8, BLAS_WS_BYTES = 32 << 20 };
enum { LT_PLANS = 64 }; /* cuBLASLt products kept planned (bf16-output linears: a dozen shapes per view side) */

void cuda_fatal(const char *file, int line, const char *what, const char *why) {
    fprintf(stderr, "dsocr: CUDA error at %s:%d: %s: %s\n", file, line, what, why);
    abort();
}

#define GRID_STRIDE(i, n)                                                                                     \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* ---------------------------------------------------------------------------------------------------------
 * Memory: every device byte goes through cu_alloc, which keeps a pointer -> size table for the counters. */

static size_t ptr_hash(const void *p, size_t cap) { return (size_t)(((uintptr_t)p >> 8) * 0x9e3779b97f4a7c15ull) & (cap - 1); }

static int table_put(CudaCtx *c, void *p, size_t bytes) {
    if ((c->alloc_n + 1) * 2 > c->alloc_cap) {
        size_t ncap = c->alloc_cap ? c->alloc_cap * 2 : 256;
        CudaAlloc *t = (CudaAlloc *)calloc(ncap, sizeof *t);
        if (!t) return -1;
        for (size_t i = 0; i < c->alloc_cap; i++) {
            if (!c->allocs[i].p) continue;
            size_t h = ptr_hash(c->allocs[i].p, ncap);
            while (t[h].p) h = (h + 1) & (ncap - 1);
            t[h] = c->allocs[i];
        }
        free(c->allocs);
        c->allocs = t;
        c->alloc_cap = ncap;
    }
    size_t h = ptr_hash(p, c->alloc_cap);
    while (c->allocs[h].p) h = (h + 1) & (c->alloc_cap - 1);
    c->allocs[h].p = p;
    c->allocs[h].bytes = bytes;
    c->alloc_n++;
    return 0;
}

/* Removes p from the table (backward-shift deletion); returns its size, or (size_t)-1 when unknown. */
static size_t table_take(CudaCtx *c, void *p) {
    if (!c->alloc_cap) return (size_t)-1;
    size_t h = ptr_hash(p, c->alloc_cap);
    while (c->allocs[h].p && c->allocs[h].p != p) h = (h + 1) & (c->alloc_cap - 1);
    if (!c->allocs[h].p) return (size_t)-1;
    size_t bytes = c->allocs[h].bytes;
    size_t i = h;
    for (size_t j = (i + 1) & (c->alloc_cap - 1); c->allocs[j].p; j = (j + 1) & (c->alloc_cap - 1)) {
        size_t k = ptr_hash(c->allocs[j].p, c->alloc_cap);
        /* move j into the hole at i when its home k is not cyclically in (i, j] */
        if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
            c->allocs[i] = c->allocs[j];
            i = j;
        }
    }
    c->allocs[i].p = NULL;
    c->allocs[i].bytes = 0;
    c->alloc_n--;
    return bytes;
}

/* cudaMalloc, counted in allocated and peak; NULL when the driver refuses */
static void *tracked_malloc(CudaCtx *c, size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is not sticky: clear it */
        return NULL;
    }
    pthread_mutex_lock(&c->mu);
    int bad = table_put(c, p, bytes);
    if (!bad) {
        c->allocated += bytes;
        if (c->allocated > c->peak) c->peak = c->allocated;
    }
    pthread_mutex_unlock(&c->mu);
    if (bad) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

/* Drops the expert staging cache (its work is done: cudaFree waits for the device). */
static void stage_drop(CudaCtx *c) {
    if (!c->stage) return;
    pthread_mutex_lock(&c->mu);
    size_t bytes = table_take(c, c->stage);
    if (bytes != (size_t)-1) c->allocated -= bytes;
    pthread_mutex_unlock(&c->mu);
    CU_CHECK(cudaFree(c->stage));
    c->stage = NULL;
    c->stage_bytes = 0;
}

static void *cu_alloc(Backend *b, size_t bytes) {
    CudaCtx *c = cctx(b);
    if (bytes == 0) bytes = 1;
    pthread_mutex_lock(&c->mu);
    int over = c->budget && c->allocated + bytes > c->budget;
    pthread_mutex_unlock(&c->mu);
    if (over && c->stage) { /* the staging cache yields */
        stage_drop(c);
        pthread_mutex_lock(&c->mu);
        over = c->budget && c->allocated + bytes > c->budget;
        pthread_mutex_unlock(&c->mu);
    }
    if (over) return NULL; /* past --gpu-mem: the caller reports it as out of memory */
    return tracked_malloc(c, bytes);
}

static void cu_free(Backend *b, void *p) {
    if (!p) return;
    CudaCtx *c = cctx(b);
    pthread_mutex_lock(&c->mu);
    size_t bytes = table_take(c, p);
    if (bytes != (size_t)-1) c->allocated -= bytes;
    pthread_mutex_unlock(&c->mu);
    DS_ASSERT(bytes != (size_t)-1 && "cuda free of a pointer this backend did not allocate");
    CU_CHECK(cudaFree(p));
}

/* Keeps the largest staging buffer up to want bytes that the budget leaves room for, less 32 MiB for the small
 * allocations ops make on their own (cuBLAS plans; nothing else allocates after a session's start). */
void *cu_stage_get(CudaCtx *c, size_t want, size_t min, size_t *got) {
    if (c->stage && c->stage_bytes >= want) {
        *got = c->stage_bytes;
        return c->stage;
    }
    stage_drop(c);
    pthread_mutex_lock(&c->mu);
    const size_t margin = (size_t)32 << 20, used = c->allocated;
    size_t room = !c->budget ? want : c->budget > used + margin ? c->budget - used - margin : 0;
    pthread_mutex_unlock(&c->mu);
    size_t bytes = want < room ? want : room;
    *got = 0;
    if (bytes < min || bytes == 0) return NULL;
    void *p = tracked_malloc(c, bytes);
    if (!p) return NULL;
    c->stage = p;
    c->stage_bytes = bytes;
    *got = bytes;
    return p;
}

static void cu_upload(Backend *b, void *dst, const void *src, size_t bytes) {
    if (bytes) CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cctx(b)->stream));
}
static void cu_download(Backend *b, void *dst, const void *src, size_t bytes) {
    CudaCtx *c = cctx(b);
    if (bytes) CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
}
static void cu_copy(Backend *b, void *dst, const void *src, size_t bytes) {
    if (bytes) CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cctx(b)->stream));
}
static void cu_memset0(Backend *b, void *dst, size_t bytes) {
    if (bytes) CU_CHECK(cudaMemsetAsync(dst, 0, bytes, cctx(b)->stream));
}
static void *cu_host_alloc(Backend *b, size_t bytes) {
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();
        return malloc(bytes); /* pinned memory refused: pageable works too, only slower */
    }
    return p;
}
static void cu_host_free(Backend *b, void *p) {
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) == cudaSuccess && at.type == cudaMemoryTypeHost)
        CU_CHECK(cudaFreeHost(p));
    else {
        (void)cudaGetLastError();
        free(p);
    }
}
static void cu_sync(Backend *b) { CU_CHECK(cudaStreamSynchronize(cctx(b)->stream)); }
static size_t cu_allocated(const Backend *b) {
    CudaCtx *c = (CudaCtx *)b->ctx;
    pthread_mutex_lock(&c->mu);
    size_t v = c->allocated - c->stage_bytes; /* the staging cache yields to anything (cu_alloc) */
    pthread_mutex_unlock(&c->mu);
    return v;
}
static size_t cu_peak(const Backend *b) {
    CudaCtx *c = (CudaCtx *)b->ctx;
    pthread_mutex_lock(&c->mu);
    size_t v = c->peak;
    pthread_mutex_unlock(&c->mu);
    return v;
}

/* ---------------------------------------------------------------------------------------------------------
 * GEMV: y[m, n] (+)= x[m, :]·w[n, :] (+ bias[n]) for few rows. One warp per output column n reads the weight row
 * once per GEMV_ROWS rows, 16 bytes per lane per step when K and the pointers allow; fp32 arithmetic. Block-quantised
 * weights (Q8_0 / Q4_0) go to quant_cuda.cu's kernel. */

struct GemvArgs {
    float *y;
    const float *x;
    const void *w, *bias;
    int ldy, ldx, M, K, N, wdt, bdt, accum, round, vec;
};

template <int R>
__global__ void __launch_bounds__(WARPS * 32) gemv_k(GemvArgs a) {
    int n = blockIdx.x * WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    /* one row of x (decode), bf16 rows of up to 2,048: the lane's weights loaded before the wait (pre_load) */
    const bool pre = R == 1 && a.vec && a.wdt == DS_BF16 && n < a.N && a.K / 8 <= PRE_U * 32;
    uint4 pq[PRE_U];
    if (pre) pre_load(pq, (const uint16_t *)a.w + (size_t)n * a.K, a.K / 8, lane);
    pdl_wait();
    if (n >= a.N) return;
    int m0 = blockIdx.y * R, nr = min(R, a.M - m0);
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    const float *x0 = a.x + (size_t)m0 * a.ldx;
    if (pre) {
        pre_dot(acc[0], pq, x0, a.K / 8, lane);
    } else if (a.vec && a.wdt == DS_BF16) {
        const uint4 *wr = (const uint4 *)((const uint16_t *)a.w + (size_t)n * a.K);
#pragma unroll 4
        for (int k8 = lane; k8 < a.K / 8; k8 += 32) {
            const uint4 q = __ldg(wr + k8);
#pragma unroll
            for (int r = 0; r < R; r++)
                if (r < nr) acc[r] += bf16x8_dot(q, x0 + (size_t)r * a.ldx + 8 * k8);
        }
    } else if (a.vec) {
        const float4 *wr = (const float4 *)((const float *)a.w + (size_t)n * a.K);
        for (int k4 = lane; k4 < a.K / 4; k4 += 32) {
            float4 q = __ldg(wr + k4);
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (r < nr) {
                    float4 u = ((const float4 *)(x0 + (size_t)r * a.ldx))[k4];
                    acc[r] += u.x * q.x + u.y * q.y + u.z * q.z + u.w * q.w;
                }
            }
        }
    } else {
        for (int k = lane; k < a.K; k += 32) {
            float wv = wget(a.w, a.wdt, (size_t)n * a.K + k);
#pragma unroll
            for (int r = 0; r < R; r++)
                if (r < nr) acc[r] += x0[(size_t)r * a.ldx + k] * wv;
        }
    }
    gemv_rows_store<R>(acc, nr, lane, a.y, a.ldy, m0, n, a.bias, a.bdt, a.accum, a.round);
}

void cu_gemv(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags,
             int round_bf16) {
    DS_ASSERT(M >= 0 && K > 0 && N > 0 && ldx >= K && ldy >= N && w.data);
    DS_ASSERT(w.dtype == DS_BF16 || w.dtype == DS_F32 || (is_block(w.dtype) && K % 32 == 0));
    if (M == 0) return;
    GemvArgs a;
    a.y = y;
    a.x = x;
    a.w = w.data;
    a.bias = bias.data;
    a.ldy = ldy;
    a.ldx = ldx;
    a.M = M;
    a.K = K;
    a.N = N;
    a.wdt = w.dtype;
    a.bdt = bias.dtype;
    a.accum = flags & OPS_ACCUM;
    a.round = round_bf16;
    int step = w.dtype == DS_BF16 ? 8 : 4;
    a.vec = !is_block(w.dtype) && K % step == 0 && ldx % 4 == 0 && ((uintptr_t)x & 15) == 0 &&
            ((uintptr_t)w.data & 15) == 0;
    for (int m0 = 0; m0 < M; m0 += 65535 * GEMV_ROWS) {
        GemvArgs c = a;
        c.x = x + (size_t)m0 * ldx;
        c.y = y + (size_t)m0 * ldy;
        c.M = M - m0 < 65535 * GEMV_ROWS ? M - m0 : 65535 * GEMV_ROWS;
        if (is_block(w.dtype)) { /* Q8_0 / Q4_0: quant_cuda.cu */
            cu_gemv_q(b, c.y, ldy, c.x, ldx, c.M, K, w, N, bias, flags, round_bf16);
            continue;
        }
        dim3 grid(cdiv(N, WARPS), cdiv(c.M, GEMV_ROWS));
        if (c.M == 1)
            launch_pdl(cctx(b), gemv_k<1>, dim3(grid), dim3(WARPS * 32), 0, c);
        else if (c.M <= 4)
            launch_pdl(cctx(b), gemv_k<4>, dim3(dim3(grid.x, cdiv(c.M, 4))), dim3(WARPS * 32), 0, c);
        else
            launch_pdl(cctx(b), gemv_k<GEMV_ROWS>, dim3(grid), dim3(WARPS * 32), 0, c);
        CU_LAUNCHED();
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Linear through cuBLAS. */

/* n weights of dtype dt (a block type, or bf16) -> bf16, or fp16 when f16 (saturating, f2h_sat). A block's value
 * d·q is exact in fp32 and rounded here, which a Q8_0 value may need (8 + 11 significant bits); a bf16 weight is
 * exact in fp16 from 2^-14 to 65504. */
__global__ void dequant_half_k(uint16_t *dst, const uint8_t *src, int dt, size_t n, int f16) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = wget(src, dt, i);
        dst[i] = f16 ? f2h_sat(v) : f2bf(v);
    }
}

static __device__ __forceinline__ float gelu_f(float v) {
    return 0.5f * v * erfcf(v * -0.70710678118654752f); /* 1 + erf(x) without cancellation for x << 0 */
}
static __device__ __forceinline__ float quick_gelu_f(float v) { return v / (1.f + expf(-1.702f * v)); }

/* y += bias (when given), then rounded to bf16 (when round), then act (1 gelu, 2 quick_gelu; rounded again when
 * round): one pass over the output; rows via blockIdx.y. */
__global__ void bias_round_k(float *y, int ldy, int M, int N, const void *bias, int bdt, int round, int act) {
    for (int m = blockIdx.y; m < M; m += gridDim.y) {
        float *r = y + (size_t)m * ldy;
        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < N; c += gridDim.x * blockDim.x) {
            float v = r[c];
            if (bias) v += wget(bias, bdt, c);
            if (round) v = rbf(v);
            if (act) {
                v = act == 1 ? gelu_f(v) : quick_gelu_f(v);
                if (round) v = rbf(v);
            }
            r[c] = v;
        }
    }
}
static int act_of(int flags) { return flags & BE_GELU ? 1 : flags & BE_QGELU ? 2 : 0; }

/* A float to the 16-bit input of a tensor-core product: bf16, or (F16) fp16 saturating (f2h_sat). */
template <bool F16> static __device__ __forceinline__ uint16_t to_half(float v) { return F16 ? f2h_sat(v) : f2bf(v); }

/* x [M, K] (row stride ldx) -> bf16 or (F16) fp16 hi [M, K] contiguous, and for bf16 the remainder lo when given. */
template <bool F16>
__global__ void to_half_rows_k(uint16_t *hi, uint16_t *lo, const float *x, int ldx, int M, int K) {
    for (int m = blockIdx.y; m < M; m += gridDim.y) {
        const float *r = x + (size_t)m * ldx;
        uint16_t *h = hi + (size_t)m * K, *l = lo && !F16 ? lo + (size_t)m * K : NULL;
        if (!l && (K & 3) == 0 && (ldx & 3) == 0 && ((uintptr_t)x & 15) == 0) {
            for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < K / 4; c += gridDim.x * blockDim.x) {
                float4 v = ((const float4 *)r)[c];
                uint2 o;
                o.x = (uint32_t)to_half<F16>(v.x) | ((uint32_t)to_half<F16>(v.y) << 16);
                o.y = (uint32_t)to_half<F16>(v.z) | ((uint32_t)to_half<F16>(v.w) << 16);
                ((uint2 *)h)[c] = o;
            }
        } else {
            for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < K; c += gridDim.x * blockDim.x) {
                float v = r[c];
                uint16_t b = to_half<F16>(v);
                h[c] = b;
                if (l) l[c] = f2bf(v - bf2f(b));
            }
        }
    }
}

static dim3 rows_grid(int M, int cols) {
    unsigned gx = cdiv((size_t)cols, 256);
    if (gx > 64) gx = 64;
    unsigned gy = M < 65535 ? (unsigned)(M > 0 ? M : 1) : 65535;
    return dim3(gx, gy);
}

static unsigned grid_for(size_t n) {
    size_t g = (n + 255) / 256;
    return (unsigned)(g < 1 ? 1 : g > 65535 * 8 ? 65535 * 8 : g);
}

/* y += bias, then rounded to bf16, as linear's flags ask (nothing to do without either). */
static void bias_round(CudaCtx *c, float *y, int ldy, int M, int N, DsW bias, int flags) {
    if (bias.data || (flags & (BE_ROUND | BE_GELU | BE_QGELU))) {
        bias_round_k<<<rows_grid(M, N), 256, 0, c->stream>>>(y, ldy, M, N, bias.data, bias.dtype,
                                                              (flags & BE_ROUND) != 0, act_of(flags));
        CU_LAUNCHED();
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * bf16 activation storage (backend.h BE_IN_BF16 / BE_OUT_BF16). */

/* dst [M, N] (row stride ldd) = src [M, N] (stride lds) as floats: exact */
__global__ void bf16_to_f32_rows_k(float *dst, int ldd, const uint16_t *src, int lds, int M, int N) {
    GRID_STRIDE(i, (size_t)M * N) {
        const size_t m = i / N, n = i % N;
        dst[m * ldd + n] = bf2f(src[m * lds + n]);
    }
}
/* dst [M, N] (stride ldd) = src [M, N] (stride lds) as bf16: lossless for bf16 values (what BE_ROUND leaves) */
__global__ void f32_to_bf16_rows_k(uint16_t *dst, int ldd, const float *src, int lds, int M, int N) {
    GRID_STRIDE(i, (size_t)M * N) {
        const size_t m = i / N, n = i % N;
        dst[m * ldd + n] = f2bf(src[m * lds + n]);
    }
}

static __device__ __forceinline__ uint32_t act_bf16_pair(uint32_t u, int act) {
    float lo = __uint_as_float(u << 16), hi = __uint_as_float(u & 0xffff0000u);
    lo = act == 1 ? gelu_f(lo) : quick_gelu_f(lo);
    hi = act == 1 ? gelu_f(hi) : quick_gelu_f(hi);
    return (uint32_t)f2bf(lo) | (uint32_t)f2bf(hi) << 16;
}
/* GELU of bf16 values by table: a bf16 input has only 2^16 values, so rbf(gelu_f(v)) is computed once per value
 * (gelu_tab_k, at start) for the inputs of exponent 2^-15 .. 2^4 (both signs: where activations lie) and looked up
 * from shared memory; the rest (zero, tiny, huge, inf, NaN) is computed. Bit for bit the arithmetic of
 * act_bf16_pair, at a fraction of erfc's instructions (the pass is then bound by memory). */
enum { GT_E0 = 112, GT_NE = 20, GT_N = 2 * GT_NE * 128 };
__device__ __align__(16) uint16_t g_gelu_tab[GT_N];
__global__ void gelu_tab_k() {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= GT_N) return;
    const int sgn = i / (GT_NE * 128), r = i % (GT_NE * 128);
    const uint16_t h = (uint16_t)(sgn << 15 | (GT_E0 + r / 128) << 7 | (r % 128));
    g_gelu_tab[i] = f2bf(gelu_f(bf2f(h)));
}
static __device__ __forceinline__ uint32_t gelu_tab_1(uint32_t h, const uint16_t *tab) {
    const uint32_t e = ((h >> 7) & 0xffu) - GT_E0; /* unsigned: below GT_E0 wraps past GT_NE */
    if (e < GT_NE) return tab[((h >> 15) * GT_NE + e) * 128 + (h & 127u)];
    return f2bf(gelu_f(bf2f((uint16_t)h)));
}
static __device__ __forceinline__ uint32_t gelu_tab_pair(uint32_t u, const uint16_t *tab) {
    return gelu_tab_1(u & 0xffffu, tab) | gelu_tab_1(u >> 16, tab) << 16;
}
/* y[0 .. 8·n8) bf16 (16-byte aligned) = rbf(gelu(y)) in place through the table */
__global__ void __launch_bounds__(256) gelu_bf16_tab_k(uint16_t *y, size_t n8) {
    __shared__ __align__(16) uint16_t tab[GT_N];
    for (int i = threadIdx.x; i < GT_N / 8; i += blockDim.x) ((uint4 *)tab)[i] = ((const uint4 *)g_gelu_tab)[i];
    __syncthreads();
    GRID_STRIDE(i, n8) {
        uint4 q = ((uint4 *)y)[i];
        q.x = gelu_tab_pair(q.x, tab), q.y = gelu_tab_pair(q.y, tab);
        q.z = gelu_tab_pair(q.z, tab), q.w = gelu_tab_pair(q.w, tab);
        ((uint4 *)y)[i] = q;
    }
}

/* y [M, N] bf16 (stride ldy) = rbf(act(y)) (1 gelu, 2 quick_gelu): linear's BE_GELU / BE_QGELU step after
 * BE_ROUND, on bf16 storage; vec: 8 values (16 bytes) a step (N, ldy multiples of 8, y 16-byte aligned). */
__global__ void act_bf16_rows_k(uint16_t *y, int ldy, int M, int N, int act, int vec) {
    for (int m = blockIdx.y; m < M; m += gridDim.y) {
        uint16_t *r = y + (size_t)m * ldy;
        if (vec) {
            for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < N / 8; c += gridDim.x * blockDim.x) {
                uint4 q = ((uint4 *)r)[c];
                q.x = act_bf16_pair(q.x, act);
                q.y = act_bf16_pair(q.y, act);
                q.z = act_bf16_pair(q.z, act);
                q.w = act_bf16_pair(q.w, act);
                ((uint4 *)r)[c] = q;
            }
        } else {
            for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < N; c += gridDim.x * blockDim.x) {
                float v = bf2f(r[c]);
                r[c] = f2bf(act == 1 ? gelu_f(v) : quick_gelu_f(v));
            }
        }
    }
}

/* One cached cuBLASLt product for linear with bf16 output: D [N, M] (column-major, ldd) = op(W) · X + bias with W
 * [K, N] (ld K) transposed and X [K, M] (ldb), bf16 in and out, fp32 accumulation and epilogue (the bias added to
 * the fp32 sum, one rounding to bf16). Keyed by the shape, the bias dtype and the pointers' alignments (the
 * heuristic reads them; a plan then serves every pointer aligned as well). ok 0: cuBLASLt has no algorithm for it. */
struct LtPlan {
    int used, ok;
    int M, N, K, ldb, ldd, bdt; /* bdt: the bias dtype, -1 without one */
    unsigned align;             /* log2 alignments (up to 256 bytes) of W, X, D, bias: 4 bits each */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
};

static unsigned align_log2(const void *p) {
    unsigned l = 0;
    while (l < 8 && !(((uintptr_t)p >> l) & 1)) l++;
    return l;
}

static void lt_plan_clear(LtPlan *p) {
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->d) cublasLtMatrixLayoutDestroy(p->d);
    memset(p, 0, sizeof *p);
}

/* The plan for this product: found in the table, or made (descriptors, layouts and the heuristic's first
 * algorithm; host work only, so it may run while a graph records). Split-K reductions are limited to fp32
 * partials: an in-place or output-type reduction would add partial sums in bf16. */
static LtPlan *lt_plan(CudaCtx *c, int M, int N, int K, const void *w, const uint16_t *x, int ldb, const uint16_t *y,
                       int ldd, DsW bias) {
    const int bdt = bias.data ? (int)bias.dtype : -1;
    const unsigned al = align_log2(w) | align_log2(x) << 4 | align_log2(y) << 8 |
                        (bias.data ? align_log2(bias.data) : 0u) << 12;
    LtPlan *p = NULL;
    for (int i = 0; i < LT_PLANS; i++) {
        LtPlan *q = &c->lt_plans[i];
        if (q->used && q->M == M && q->N == N && q->K == K && q->ldb == ldb && q->ldd == ldd && q->bdt == bdt &&
            q->align == al)
            return q;
        if (!q->used && !p) p = q;
    }
    if (!p) { /* full: replace the slots in turn (recorded graphs keep what cuBLASLt launched, not the plan) */
        p = &c->lt_plans[c->lt_next];
        c->lt_next = (c->lt_next + 1) % LT_PLANS;
    }
    lt_plan_clear(p);
    p->used = 1;
    p->M = M, p->N = N, p->K = K, p->ldb = ldb, p->ldd = ldd, p->bdt = bdt, p->align = al;
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cublasLtEpilogue_t ep = bias.data ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    const int32_t bt = bias.dtype == DS_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    const uint64_t ws = BLAS_WS_BYTES;
    const uint32_t red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE; /* and NONE, which no mask excludes */
    const uint32_t aw = 1u << (al & 15), ax = 1u << (al >> 4 & 15), ay = 1u << (al >> 8 & 15);
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
#define LT_OK(x) ((x) == CUBLAS_STATUS_SUCCESS)
#define DESC(attr, v) LT_OK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_##attr, &(v), sizeof(v)))
#define PREF(attr, v) LT_OK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_##attr, &(v), sizeof(v)))
    bool ok = LT_OK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F)) && DESC(TRANSA, ta) &&
              DESC(TRANSB, tb) && DESC(EPILOGUE, ep) &&
              (!bias.data || (DESC(BIAS_DATA_TYPE, bt) && DESC(BIAS_POINTER, bias.data))) &&
              LT_OK(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, K, N, K)) &&
              LT_OK(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, K, M, ldb)) &&
              LT_OK(cublasLtMatrixLayoutCreate(&p->d, CUDA_R_16BF, N, M, ldd)) &&
              LT_OK(cublasLtMatmulPreferenceCreate(&pref)) && PREF(MAX_WORKSPACE_BYTES, ws) &&
              PREF(REDUCTION_SCHEME_MASK, red) && PREF(MIN_ALIGNMENT_A_BYTES, aw) && PREF(MIN_ALIGNMENT_B_BYTES, ax) &&
              PREF(MIN_ALIGNMENT_C_BYTES, ay) && PREF(MIN_ALIGNMENT_D_BYTES, ay) &&
              LT_OK(cublasLtMatmulAlgoGetHeuristic(c->blaslt, p->op, p->a, p->b, p->d, p->d, pref, 1, &res, &n)) &&
              n > 0 && LT_OK(res.state) && res.workspaceSize <= BLAS_WS_BYTES;
#undef PREF
#undef DESC
#undef LT_OK
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ok) p->algo = res.algo;
    p->ok = ok;
    return p;
}

/* y [M, N] bf16 (ldy) = rbf(x [M, K] bf16 (ldx) · wᵀ + bias) through cuBLASLt; false when it has no plan (nothing
 * queued then). */
static bool lt_linear(CudaCtx *c, uint16_t *y, int ldy, const uint16_t *x, int ldx, int M, int K, DsW w, int N,
                      DsW bias) {
    if (bias.data && bias.dtype != DS_BF16 && bias.dtype != DS_F32) return false;
    LtPlan *p = lt_plan(c, M, N, K, w.data, x, ldx, y, ldy, bias);
    if (!p->ok) return false;
    if (bias.data) /* the plan's pointer was one of this alignment; this call's own goes in */
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias.data,
                                                    sizeof bias.data));
    const float one = 1.f, zero = 0.f;
    CUBLAS_CHECK(cublasLtMatmul(c->blaslt, p->op, &one, w.data, p->a, x, p->b, &zero, y, p->d, y, p->d, &p->algo,
                                c->blas_ws, BLAS_WS_BYTES, c->stream));
    return true;
}

/* linear with BE_OUT_BF16 on bf16 weights, many rows: cuBLASLt writes rbf(x·wᵀ + bias) in bf16 (x as given with
 * BE_IN_BF16, else converted in row chunks into xb), then one pass applies BE_GELU / BE_QGELU on the bf16 rows.
 * false when cuBLASLt has no algorithm (rows already written are then written again by the caller's fallback). */
static bool linear_lt(CudaCtx *c, uint16_t *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias,
                      int flags) {
    if (flags & BE_IN_BF16) {
        if (!lt_linear(c, y, ldy, (const uint16_t *)x, ldx, M, K, w, N, bias)) return false;
    } else {
        const int rows = (int)(c->xb_elems / (size_t)K);
        DS_ASSERT(rows >= 1);
        for (int m0 = 0; m0 < M; m0 += rows) {
            const int mc = M - m0 < rows ? M - m0 : rows;
            to_half_rows_k<false><<<rows_grid(mc, (K & 3) == 0 ? K / 4 : K), 256, 0, c->stream>>>(
                c->xb, NULL, x + (size_t)m0 * ldx, ldx, mc, K);
            CU_LAUNCHED();
            if (!lt_linear(c, y + (size_t)m0 * ldy, ldy, c->xb, K, mc, K, w, N, bias)) return false;
        }
    }
    if (act_of(flags)) {
        const int vec = (N & 7) == 0 && (ldy & 7) == 0 && ((uintptr_t)y & 15) == 0;
        const unsigned blocks = cdiv((size_t)M * N / 8, 256), cap = (unsigned)c->n_sm * 8;
        if (vec && ldy == N && act_of(flags) == 1) { /* contiguous rows: one grid-stride pass, SMs full */
            gelu_bf16_tab_k<<<dim3(blocks < cap ? blocks : cap), 256, 0, c->stream>>>(y, (size_t)M * N / 8);
        } else if (vec && ldy == N && (size_t)M * N < INT_MAX) {
            act_bf16_rows_k<<<dim3(blocks < cap ? blocks : cap), 256, 0, c->stream>>>(y, M * N, 1, M * N,
                                                                                     act_of(flags), 1);
        } else {
            act_bf16_rows_k<<<rows_grid(M, vec ? N / 8 : N), 256, 0, c->stream>>>(y, ldy, M, N, act_of(flags), vec);
        }
        CU_LAUNCHED();
    }
    return true;
}

/* linear with bf16 storage on a path that reads and writes floats (the GEMV, f16 mode, fp32 weights, or no
 * cuBLASLt algorithm): rows in chunks through c->part, bf16 inputs widened (exact) and the fp32 outputs narrowed
 * (lossless: BE_ROUND made them bf16 values), so the arithmetic is the float call's. */
static void linear_staged(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N,
                          DsW bias, int flags) {
    CudaCtx *c = cctx(b);
    const int in16 = flags & BE_IN_BF16, out16 = flags & BE_OUT_BF16;
    c->io_staged++;
    const size_t per = (in16 ? (size_t)K : 0) + (out16 ? (size_t)N : 0);
    const size_t cap = per ? (c->part_floats - 64) / per : (size_t)M;
    DS_ASSERT(cap >= 1);
    const int rows = cap < (size_t)M ? (int)cap : M;
    for (int m0 = 0; m0 < M; m0 += rows) {
        const int mc = M - m0 < rows ? M - m0 : rows;
        float *xs = c->part, *ys = c->part + (in16 ? ((size_t)mc * K + 63) / 64 * 64 : 0); /* 256-byte aligned */
        const float *xin = xs;
        float *yout = ys;
        if (in16) { /* x is bf16 storage: element offsets in uint16_t */
            const uint16_t *x16 = (const uint16_t *)x + (size_t)m0 * ldx;
            bf16_to_f32_rows_k<<<grid_for((size_t)mc * K), 256, 0, c->stream>>>(xs, K, x16, ldx, mc, K);
            CU_LAUNCHED();
        } else {
            xin = x + (size_t)m0 * ldx;
        }
        if (!out16) yout = y + (size_t)m0 * ldy;
        cu_linear(b, yout, out16 ? N : ldy, xin, in16 ? K : ldx, mc, K, w, N, bias,
                  flags & ~(BE_IN_BF16 | BE_OUT_BF16));
        if (out16) { /* y is bf16 storage */
            f32_to_bf16_rows_k<<<grid_for((size_t)mc * N), 256, 0, c->stream>>>((uint16_t *)y + (size_t)m0 * ldy, ldy,
                                                                                ys, N, mc, N);
            CU_LAUNCHED();
        }
    }
}

/* Many rows in f16 mode (set_gemm_f16), bf16 or block weights: the activations as fp16 in chunks of rows (xb),
 * the weight as fp16 in chunks of output columns (wq; converted once when it fits whole), each pair one cuBLAS
 * fp16 × fp16 product with fp32 accumulation into y (beta: 0, or 1 for OPS_ACCUM). */
static void linear_f16(CudaCtx *c, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N,
                       const float *beta) {
    const float one = 1.f;
    const int rows = (int)(c->xb_elems / (size_t)K), cols = (int)(c->wq_elems / (size_t)K);
    DS_ASSERT(rows >= 1 && cols >= 1);
    const size_t wrow = wrow_bytes(w.dtype, K);
    for (int m0 = 0; m0 < M; m0 += rows) {
        const int mc = M - m0 < rows ? M - m0 : rows;
        to_half_rows_k<true><<<rows_grid(mc, (K & 3) == 0 ? K / 4 : K), 256, 0, c->stream>>>(
            c->xb, NULL, x + (size_t)m0 * ldx, ldx, mc, K);
        CU_LAUNCHED();
        for (int n0 = 0; n0 < N; n0 += cols) {
            const int cn = N - n0 < cols ? N - n0 : cols;
            if (m0 == 0 || N > cols) {
                dequant_half_k<<<grid_for((size_t)cn * K), 256, 0, c->stream>>>(
                    c->wq, (const uint8_t *)w.data + (size_t)n0 * wrow, w.dtype, (size_t)cn * K, 1);
                CU_LAUNCHED();
            }
            CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, cn, mc, K, &one, c->wq, CUDA_R_16F, K, c->xb,
                                      CUDA_R_16F, K, beta, y + (size_t)m0 * ldy + n0, CUDA_R_32F, ldy,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
    }
}

/* flags & BE_IN_BF16 / BE_OUT_BF16 (backend.h): with bf16 weights and many rows (not f16 mode), x goes to the
 * tensor cores as it is, and a bf16 y comes from cuBLASLt (bias in its epilogue); block-quantised weights reach that
 * path through their dequantised chunks; every other path runs on fp32 copies of the rows (linear_staged). */
void cu_linear(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias,
               int flags) {
    DS_ASSERT(M >= 0 && K > 0 && N > 0 && ldx >= K && ldy >= N && w.data);
    DS_ASSERT(w.dtype == DS_BF16 || w.dtype == DS_F32 || (is_block(w.dtype) && K % 32 == 0));
    const int in16 = flags & BE_IN_BF16, out16 = flags & BE_OUT_BF16;
    DS_ASSERT(!out16 || ((flags & BE_ROUND) && !(flags & OPS_ACCUM)));
    if (M == 0) return;
    if ((in16 || out16) && !(M > GEMV_ROWS && w.dtype != DS_F32 && !cctx(b)->gemm_f16)) {
        linear_staged(b, y, ldy, x, ldx, M, K, w, N, bias, flags);
        return;
    }
    if ((in16 || out16) && !is_block(w.dtype)) cctx(b)->io_direct++; /* linear_staged takes it back on a miss */
    if (M > GEMV_ROWS && w.dtype != DS_F32 && cctx(b)->gemm_f16) {
        CudaCtx *c = cctx(b);
        const float one = 1.f, zero = 0.f;
        linear_f16(c, y, ldy, x, ldx, M, K, w, N, (flags & OPS_ACCUM) ? &one : &zero);
        bias_round(c, y, ldy, M, N, bias, flags);
        return;
    }
    /* a decode batch's rows on a Q8_0 weight in bf16 mode: the tensor-core kernel that reads the blocks as they are
     * (DSOCR_NO_Q8_ROWS=1: the dequantised chunks below, for comparison) */
    if (!cctx(b)->no_q8_rows && w.dtype == DS_Q8_0 && M > GEMV_ROWS && M <= Q8_ROWS_MAX && N >= Q8_ROWS_MIN_N &&
        (flags & BE_ROUND) && !act_of(flags) && !(flags & (OPS_ACCUM | BE_FP32_SUMS | BE_IN_BF16 | BE_OUT_BF16)) &&
        !bias.data && !cctx(b)->exact_gemm && cu_linear_q8_rows(b, y, ldy, x, ldx, M, K, N, w.data, 1))
        return;
    if (is_block(w.dtype) && M > GEMV_ROWS) {
        /* many rows: the weight in bf16 chunks of output columns (dequantised into wq), then the bf16 path */
        CudaCtx *c = cctx(b);
        int nc = (int)(c->wq_elems / (size_t)K);
        DS_ASSERT(nc >= 1);
        for (int n0 = 0; n0 < N; n0 += nc) {
            int cn = N - n0 < nc ? N - n0 : nc;
            dequant_half_k<<<grid_for((size_t)cn * K), 256, 0, c->stream>>>(
                c->wq, (const uint8_t *)w.data + (size_t)n0 * wrow_bytes(w.dtype, K), w.dtype, (size_t)cn * K, 0);
            CU_LAUNCHED();
            DsW part = ds_w(c->wq, DS_BF16);
            DsW pb = bias.data ? ds_w((const char *)bias.data + (size_t)n0 * (bias.dtype == DS_BF16 ? 2 : 4), bias.dtype)
                               : ds_w_none();
            /* columns n0.. of y: bf16 elements with BE_OUT_BF16 */
            float *yc = out16 ? (float *)((uint16_t *)y + n0) : y + n0;
            cu_linear(b, yc, ldy, x, ldx, M, K, part, cn, pb, flags);
        }
        return;
    }
    if (M <= GEMV_ROWS || ((flags & BE_FP32_SUMS) && !in16 && !out16)) { /* GEMV kernels: fp32 sums */
        cu_gemv(b, y, ldy, x, ldx, M, K, w, N, bias, flags & ~(BE_ROUND | BE_GELU | BE_QGELU | BE_FP32_SUMS),
                (flags & BE_ROUND) != 0);
        if (act_of(flags)) bias_round(cctx(b), y, ldy, M, N, ds_w_none(), flags);
        return;
    }
    CudaCtx *c = cctx(b);
    const float one = 1.f, zero = 0.f;
    const float *beta0 = (flags & OPS_ACCUM) ? &one : &zero;
    if (w.dtype == DS_F32) {
        /* fp32 GEMM, TF32 off (the handle's math mode is CUBLAS_DEFAULT_MATH, the compute type pedantic-free 32F) */
        CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w.data, CUDA_R_32F, K, x,
                                  CUDA_R_32F, ldx, beta0, y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    } else if (out16) {
        /* x·wᵀ + bias rounded to bf16 by cuBLASLt (with exact_gemm, only for bf16 x: its lo part is zero) */
        if ((in16 || !c->exact_gemm) && linear_lt(c, (uint16_t *)y, ldy, x, ldx, M, K, w, N, bias, flags)) return;
        c->io_direct--;
        linear_staged(b, y, ldy, x, ldx, M, K, w, N, bias, flags);
        return;
    } else if (in16) { /* bf16 x as it is (exact_gemm's lo part would be zero) */
        CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w.data, CUDA_R_16BF, K, x,
                                  CUDA_R_16BF, ldx, beta0, y, CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    } else {
        size_t per = c->exact_gemm ? c->xb_elems / 2 : c->xb_elems;
        int rows = (int)(per / (size_t)K);
        DS_ASSERT(rows >= 1);
        for (int m0 = 0; m0 < M; m0 += rows) {
            int mc = M - m0 < rows ? M - m0 : rows;
            uint16_t *hi = c->xb, *lo = c->exact_gemm ? c->xb + per : NULL;
            to_half_rows_k<false><<<rows_grid(mc, (K & 3) == 0 ? K / 4 : K), 256, 0, c->stream>>>(
                hi, lo, x + (size_t)m0 * ldx, ldx, mc, K);
            CU_LAUNCHED();
            CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, mc, K, &one, w.data, CUDA_R_16BF, K, hi,
                                      CUDA_R_16BF, K, beta0, y + (size_t)m0 * ldy, CUDA_R_32F, ldy,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            if (lo)
                CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, N, mc, K, &one, w.data, CUDA_R_16BF, K,
                                          lo, CUDA_R_16BF, K, &one, y + (size_t)m0 * ldy, CUDA_R_32F, ldy,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
    }
    bias_round(c, y, ldy, M, N, bias, flags);
}

/* bf16 activation storage pays only where bf16 products read it: f16 mode would convert it to floats and back */
static void cu_set_gemm_f16(Backend *b, int on) {
    cctx(b)->gemm_f16 = on != 0;
    b->act_bf16 = !on;
}

/* ---------------------------------------------------------------------------------------------------------
 * Norms: one block per row. */


/* flags & OPS_BF16: the autocast LayerNorm2d rule of backend.h (mean and x − mean rounded to bf16). O16: y is bf16
 * storage (BE_OUT_BF16; the output rounded as with round). */
template <bool O16>
__global__ void layernorm_k(void *y, int ldy, const float *x, int ldx, int n, const void *w, int wdt,
                            const void *bias, int bdt, float eps, int bf, int round) {
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * ldx;
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i];
    float mean = block_sum(s, sh) / n;
    if (bf) mean = rbf(mean);
    float v = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float d = xr[i] - mean;
        if (bf) d = rbf(d);
        v += d * d;
    }
    float var = block_sum(v, sh) / n;
    float inv = 1.f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float d = xr[i] - mean;
        if (bf) d = rbf(d);
        float o = __fmul_rn(__fmul_rn(d, inv), wget(w, wdt, i));
        if (bias) o = __fadd_rn(o, wget(bias, bdt, i));
        if (O16)
            ((uint16_t *)y)[(size_t)blockIdx.x * ldy + i] = f2bf(o); /* the bits of rbf(o) */
        else
            ((float *)y)[(size_t)blockIdx.x * ldy + i] = round ? rbf(o) : o;
    }
}

__global__ void rmsnorm_k(float *y, int ldy, const float *x, int ldx, int n, const void *w, int wdt, float eps,
                          int bf) {
    pdl_wait();
    __shared__ float sh[32];
    const float *xr = x + (size_t)blockIdx.x * ldx;
    float *yr = y + (size_t)blockIdx.x * ldy;
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
    float r = (float)(1.0 / sqrt((double)block_sum(s, sh) / n + eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i] * r;
        if (bf) v = rbf(v);
        v *= wget(w, wdt, i);
        if (bf) v = rbf(v);
        yr[i] = v;
    }
}

/* x = x + r (bf16-rounded with bf), then rmsnorm_k's arithmetic on the new row: the same thread owns the same
 * elements in both passes, so no barrier is needed between the write of x and its reads. */
__global__ void add_rmsnorm_k(float *y, float *x, const float *res, int n, const void *w, int wdt, float eps, int bf) {
    enum { WPRE = 8 }; /* the thread's norm weights (at most 8) read before the wait: they are not the kernel before's */
    float wp[WPRE];
#pragma unroll
    for (int k = 0; k < WPRE; k++) {
        const int i = threadIdx.x + k * blockDim.x;
        wp[k] = i < n ? wget(w, wdt, i) : 0.f;
    }
    pdl_wait();
    __shared__ float sh[32];
    float *xr = x + (size_t)blockIdx.x * n;
    const float *rr = res + (size_t)blockIdx.x * n;
    float *yr = y + (size_t)blockIdx.x * n;
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i] + rr[i];
        if (bf) v = rbf(v);
        xr[i] = v;
        s += v * v;
    }
    float r = (float)(1.0 / sqrt((double)block_sum(s, sh) / n + eps));
    for (int i = threadIdx.x, k = 0; i < n; i += blockDim.x, k++) {
        float v = xr[i] * r;
        if (bf) v = rbf(v);
        v *= k < WPRE ? wp[k] : wget(w, wdt, i);
        if (bf) v = rbf(v);
        yr[i] = v;
    }
}

static int norm_threads(int n) { return n >= 1024 ? 256 : n >= 256 ? 128 : 64; }

/* Rows of at most 1,024 floats (the vision encoder's 768 and 1,024, the neck's 256): a block a row, four elements
 * a thread (thread t owns 4t .. 4t + 3: one load of x, one of the residual), the two sums by shuffles and one
 * shared-memory step, in a fixed order (the arithmetic of layernorm_k but for the order of the sums). Optionally
 * (backend.h residual_layernorm) the residual step first: x += r (bf16 storage, rows of n), rounded when rround, x
 * written back; and the output split into ws × ws windows of the g × g map (output row o of window o / ws², zero
 * rows where a window passes the edge). VEC: x, y, r, w, bias aligned for 4-wide access (n, ldx, ldy multiples of
 * 4), else element by element. BF: the bf16 rounding rule (OPS_BF16: rounded mean and x − mean). Weights bf16 or
 * fp32. The code is short on purpose: a one-warp-a-row version fully unrolled over the row was 30 to 120 KB of
 * code, and such a kernel spends its time in instruction-cache misses (a 257-row norm took 10 to 16 µs). */
enum { LN_MAXW = 8 }; /* warps of a block: 1,024 / 4 / 32 */
struct LnArgs {
    void *y;
    int ldy;
    float *x;
    int ldx;
    const uint16_t *r; /* residual (bf16 storage) or NULL */
    int M, n, Mout;    /* Mout: output rows (M, or nw²·ws² windowed) */
    const void *w, *bias;
    int wdt, bdt;
    float eps;
    int bf, round, rround;
    int g, ws, nw; /* ws 0: output rows are x's */
};
/* element i of a bf16 or fp32 vector */
static __device__ __forceinline__ float wf(const void *w, int dt, int i) {
    return dt == DS_BF16 ? bf2f(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}
/* 4 values of a bf16 or fp32 vector from element c (zeros past n): one load when VEC */
template <bool VEC> static __device__ __forceinline__ float4 ln_ld4(const void *w, int dt, int c, int n) {
    if (VEC && c < n) {
        if (dt == DS_F32) return *(const float4 *)((const float *)w + c);
        const uint2 u = *(const uint2 *)((const uint16_t *)w + c);
        return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                           __uint_as_float(u.y & 0xffff0000u));
    }
    float e[4];
#pragma unroll
    for (int j = 0; j < 4; j++) e[j] = !VEC && c + j < n ? wf(w, dt, c + j) : 0.f;
    return make_float4(e[0], e[1], e[2], e[3]);
}
/* the block's sum of v, the same in every thread (warp sums, then the warps' in order) */
static __device__ __forceinline__ float ln_block_sum(float v, float *part) {
    v = warp_sum(v);
    const int nw = (blockDim.x + 31) >> 5;
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.f;
    for (int i = 0; i < nw; i++) t += part[i];
    return t;
}
template <bool O16, bool VEC, bool BF> __global__ void __launch_bounds__(LN_MAXW * 32) layernorm_row_k(LnArgs a) {
    __shared__ float part[2][LN_MAXW];
    const int n = a.n, c = threadIdx.x * 4, o = blockIdx.x;
    int row = o;
    if (a.ws) { /* the output row's place in the map; -1 in a window's padding */
        const int ws2 = a.ws * a.ws, win = o / ws2, p = o % ws2;
        const int i = win / a.nw * a.ws + p / a.ws, j = win % a.nw * a.ws + p % a.ws;
        row = i < a.g && j < a.g ? i * a.g + j : -1;
    }
    if (row < 0) { /* uniform over the block */
        for (int j = 0; j < 4; j++)
            if (c + j < n) {
                if (O16)
                    ((uint16_t *)a.y)[(size_t)o * a.ldy + c + j] = 0;
                else
                    ((float *)a.y)[(size_t)o * a.ldy + c + j] = 0.f;
            }
        return;
    }
    float *xr = a.x + (size_t)row * a.ldx;
    float4 v = ln_ld4<VEC>(xr, DS_F32, c, n);
    if (a.r) {
        const float4 r = ln_ld4<VEC>(a.r + (size_t)row * n, DS_BF16, c, n);
        v = make_float4(v.x + r.x, v.y + r.y, v.z + r.z, v.w + r.w);
        if (a.rround) v = make_float4(rbf(v.x), rbf(v.y), rbf(v.z), rbf(v.w));
        if (VEC) {
            if (c < n) *(float4 *)(xr + c) = v;
        } else {
            const float *e = &v.x;
            for (int j = 0; j < 4; j++)
                if (c + j < n) xr[c + j] = e[j];
        }
    }
    float mean = ln_block_sum((v.x + v.y) + (v.z + v.w), part[0]) / n; /* zeros past n */
    if (BF) mean = rbf(mean);
    float d[4] = {v.x - mean, v.y - mean, v.z - mean, v.w - mean}, q = 0.f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        if (BF) d[j] = rbf(d[j]);
        if (c + j < n) q += d[j] * d[j];
    }
    const float inv = 1.f / sqrtf(ln_block_sum(q, part[1]) / n + a.eps);
    if (c >= n) return;
    const float4 w4 = ln_ld4<VEC>(a.w, a.wdt, c, n);
    const float4 b4 = a.bias ? ln_ld4<VEC>(a.bias, a.bdt, c, n) : make_float4(0.f, 0.f, 0.f, 0.f);
    const float wj[4] = {w4.x, w4.y, w4.z, w4.w}, bj[4] = {b4.x, b4.y, b4.z, b4.w};
    float t[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        t[j] = __fmul_rn(__fmul_rn(d[j], inv), wj[j]);
        if (a.bias) t[j] = __fadd_rn(t[j], bj[j]);
        if (!O16 && a.round) t[j] = rbf(t[j]);
    }
    if (O16 && VEC) {
        uint2 p;
        p.x = (uint32_t)f2bf(t[0]) | (uint32_t)f2bf(t[1]) << 16;
        p.y = (uint32_t)f2bf(t[2]) | (uint32_t)f2bf(t[3]) << 16;
        *(uint2 *)((uint16_t *)a.y + (size_t)o * a.ldy + c) = p;
    } else if (VEC) {
        *(float4 *)((float *)a.y + (size_t)o * a.ldy + c) = make_float4(t[0], t[1], t[2], t[3]);
    } else {
        for (int j = 0; j < 4; j++)
            if (c + j < n) {
                if (O16)
                    ((uint16_t *)a.y)[(size_t)o * a.ldy + c + j] = f2bf(t[j]);
                else
                    ((float *)a.y)[(size_t)o * a.ldy + c + j] = t[j];
            }
    }
}

/* The row kernel for rows of n <= 1,024 */
template <bool O16, bool BF> static void layernorm_row_b(CudaCtx *c, const LnArgs &a, bool vec) {
    const dim3 grid((unsigned)a.Mout), block((unsigned)(a.n + 127) / 128 * 32);
    if (vec)
        layernorm_row_k<O16, true, BF><<<grid, block, 0, c->stream>>>(a);
    else
        layernorm_row_k<O16, false, BF><<<grid, block, 0, c->stream>>>(a);
    CU_LAUNCHED();
}
template <bool O16> static void layernorm_row(CudaCtx *c, const LnArgs &a, bool vec) {
    if (a.bf)
        layernorm_row_b<O16, true>(c, a, vec);
    else
        layernorm_row_b<O16, false>(c, a, vec);
}
static bool ln_wdt(DsW w) { return !w.data || w.dtype == DS_BF16 || w.dtype == DS_F32; }
static bool al(const void *p, unsigned bytes) { return ((uintptr_t)p & (bytes - 1)) == 0; }

static void cu_layernorm(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW bias,
                         float eps, int flags) {
    DS_ASSERT(M >= 0 && n > 0 && w.data);
    DS_ASSERT(!(flags & BE_OUT_BF16) || (flags & BE_ROUND));
    if (M == 0) return;
    const bool o16 = (flags & BE_OUT_BF16) != 0;
    const int bf = flags & OPS_BF16, round = (flags & BE_ROUND) != 0;
    if (n <= 1024 && M <= INT_MAX && ln_wdt(w) && ln_wdt(bias)) { /* the row kernel */
        const LnArgs a = {y, ldy, (float *)x, ldx, NULL, M, n, M, w.data, bias.data, (int)w.dtype, (int)bias.dtype, eps,
                          bf, round, 0, 0, 0, 0};
        const bool vec = n % 4 == 0 && ldx % 4 == 0 && ldy % 4 == 0 && al(x, 16) && al(y, o16 ? 8 : 16) &&
                         al(w.data, w.dtype == DS_F32 ? 16 : 8) &&
                         (!bias.data || al(bias.data, bias.dtype == DS_F32 ? 16 : 8));
        if (o16)
            layernorm_row<true>(cctx(b), a, vec);
        else
            layernorm_row<false>(cctx(b), a, vec);
        return;
    }
    if (o16)
        layernorm_k<true><<<M, norm_threads(n), 0, cctx(b)->stream>>>(y, ldy, x, ldx, n, w.data, w.dtype, bias.data,
                                                                      bias.dtype, eps, bf, 1);
    else
        layernorm_k<false><<<M, norm_threads(n), 0, cctx(b)->stream>>>(y, ldy, x, ldx, n, w.data, w.dtype, bias.data,
                                                                       bias.dtype, eps, bf, round);
    CU_LAUNCHED();
}

/* backend.h residual_layernorm: the warp kernel with its residual step and window layout */
static void cu_residual_layernorm(Backend *b, void *y, float *x, const void *r, int M, int n, int g, int ws, DsW w,
                                  DsW bias, float eps, int flags) {
    DS_ASSERT(M >= 0 && n > 0 && n <= 1024 && w.data && ln_wdt(w) && ln_wdt(bias) && (!ws || M == g * g));
    if (M == 0) return;
    const int nw = ws ? (g + ws - 1) / ws : 0;
    const LnArgs a = {y, n, x, n, (const uint16_t *)r, M, n, ws ? nw * nw * ws * ws : M, w.data, bias.data,
                      (int)w.dtype, (int)bias.dtype, eps, 0, 1, (flags & BE_ROUND) != 0, g, ws, nw};
    const bool vec = n % 4 == 0 && al(x, 16) && al(y, 8) && (!r || al(r, 8)) && al(w.data, w.dtype == DS_F32 ? 16 : 8) &&
                     (!bias.data || al(bias.data, bias.dtype == DS_F32 ? 16 : 8));
    layernorm_row<true>(cctx(b), a, vec);
}

static void cu_rmsnorm(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, float eps,
                       int flags) {
    DS_ASSERT(M >= 0 && n > 0 && w.data);
    if (M == 0) return;
    launch_pdl(cctx(b), rmsnorm_k, dim3(M), dim3(norm_threads(n)), 0, y, ldy, x, ldx, n, w.data, w.dtype, eps, flags & OPS_BF16);
    CU_LAUNCHED();
}

void cu_add_rmsnorm(Backend *b, float *y, float *x, const float *r, int M, int n, DsW w, float eps,
                           int flags) {
    DS_ASSERT(M >= 0 && n > 0 && w.data);
    if (M == 0) return;
    launch_pdl(cctx(b), add_rmsnorm_k, dim3(M), dim3(norm_threads(n)), 0, y, x, r, n, w.data, w.dtype, eps, flags & OPS_BF16);
    CU_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------------------
 * Elementwise. */

__global__ void gelu_k(float *o, const float *x, size_t n) {
    GRID_STRIDE(i, n) o[i] = gelu_f(x[i]);
}
__global__ void quick_gelu_k(float *o, const float *x, size_t n) {
    GRID_STRIDE(i, n) o[i] = quick_gelu_f(x[i]);
}
/* elementwise kernels: 16 bytes a step where the pointers allow (vec), the tail (n % 4) one by one */
__global__ void add_k(float *o, const float *a, const float *c, size_t n, int vec) {
    pdl_wait();
    size_t done = 0;
    if (vec) {
        GRID_STRIDE(i, n / 4) {
            const float4 x = ((const float4 *)a)[i], y = ((const float4 *)c)[i];
            ((float4 *)o)[i] = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
        }
        done = n / 4 * 4;
    }
    GRID_STRIDE(i, n - done) o[done + i] = a[done + i] + c[done + i];
}
__global__ void round_k(float *x, size_t n, int vec) {
    pdl_wait();
    size_t done = 0;
    if (vec) {
        GRID_STRIDE(i, n / 4) {
            const float4 v = ((const float4 *)x)[i];
            ((float4 *)x)[i] = make_float4(rbf(v.x), rbf(v.y), rbf(v.z), rbf(v.w));
        }
        done = n / 4 * 4;
    }
    GRID_STRIDE(i, n - done) x[done + i] = rbf(x[done + i]);
}
/* Four (load4: index i of float4 / uint2 steps) or one (load1) residual inputs: floats, or R16 bf16 storage */
template <bool R16> static __device__ __forceinline__ float4 load4(const void *r, size_t i) {
    if (!R16) return ((const float4 *)r)[i];
    const uint2 p = ((const uint2 *)r)[i];
    return make_float4(__uint_as_float(p.x << 16), __uint_as_float(p.x & 0xffff0000u), __uint_as_float(p.y << 16),
                       __uint_as_float(p.y & 0xffff0000u));
}
template <bool R16> static __device__ __forceinline__ float load1(const void *r, size_t i) {
    return R16 ? bf2f(((const uint16_t *)r)[i]) : ((const float *)r)[i];
}
/* x + a, each value rounded to bf16 when round */
static __device__ __forceinline__ float4 add4(float4 x, float4 a, int round) {
    x = make_float4(x.x + a.x, x.y + a.y, x.z + a.z, x.w + a.w);
    return round ? make_float4(rbf(x.x), rbf(x.y), rbf(x.z), rbf(x.w)) : x;
}

/* x += r (r: floats, or R16: bf16 storage), rounded to bf16 when round: backend.h residual_add */
template <bool R16> __global__ void residual_add_k(float *x, const void *r, size_t n, int round, int vec) {
    size_t done = 0;
    if (vec) {
        GRID_STRIDE(i, n / 4) ((float4 *)x)[i] = add4(((float4 *)x)[i], load4<R16>(r, i), round);
        done = n / 4 * 4;
    }
    GRID_STRIDE(i, n - done) {
        const size_t k = done + i;
        const float v = x[k] + load1<R16>(r, k);
        x[k] = round ? rbf(v) : v;
    }
}
static int vec16(const void *a, const void *b, const void *c) { return (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) & 15) == 0; }
/* SwiGLU combine (ops_silu_mul): g = SiLU(g)·u with the optional bf16 rounding points. */
__global__ void silu_mul_k(float *g, const float *u, size_t n, int bf) {
    GRID_STRIDE(i, n) {
        float gv = g[i];
        float s = gv / (1.f + expf(-gv));
        if (bf) s = rbf(s);
        float v = s * u[i];
        g[i] = bf ? rbf(v) : v;
    }
}

static void cu_gelu(Backend *b, float *out, const float *x, size_t n) {
    if (!n) return;
    gelu_k<<<grid_for(n), 256, 0, cctx(b)->stream>>>(out, x, n);
    CU_LAUNCHED();
}
static void cu_quick_gelu(Backend *b, float *out, const float *x, size_t n) {
    if (!n) return;
    quick_gelu_k<<<grid_for(n), 256, 0, cctx(b)->stream>>>(out, x, n);
    CU_LAUNCHED();
}
static void cu_add(Backend *b, float *out, const float *a, const float *c, size_t n) {
    if (!n) return;
    const int vec = vec16(out, a, c);
    launch_pdl(cctx(b), add_k, dim3(grid_for(vec ? n / 4 + 1 : n)), dim3(256), 0, out, a, c, n, vec);
    CU_LAUNCHED();
}
void cu_round_bf16(Backend *b, float *x, size_t n) {
    if (!n) return;
    const int vec = vec16(x, x, x);
    launch_pdl(cctx(b), round_k, dim3(grid_for(vec ? n / 4 + 1 : n)), dim3(256), 0, x, n, vec);
    CU_LAUNCHED();
}
static void cu_residual_add(Backend *b, float *x, const void *r, size_t n, int flags) {
    if (!n) return;
    const int r16 = (flags & BE_IN_BF16) != 0, round = (flags & BE_ROUND) != 0;
    const int vec = ((uintptr_t)x & 15) == 0 && ((uintptr_t)r & (r16 ? 7 : 15)) == 0;
    const dim3 grid(grid_for(vec ? n / 4 + 1 : n));
    if (r16)
        residual_add_k<true><<<grid, 256, 0, cctx(b)->stream>>>(x, r, n, round, vec);
    else
        residual_add_k<false><<<grid, 256, 0, cctx(b)->stream>>>(x, r, n, round, vec);
    CU_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------------------
 * RoPE (NeoX). One thread per (row, frequency); angles as the reference computes them in fp32, with cos/sin and
 * the power taken in double so they round to the nearest float as glibc's do; the products are not fused into
 * FMAs (the C reference rounds each one). */

/* The cos and sin of rotation pair i at position p (the arithmetic of ops_rope_neox_ref). They depend on the
 * positions only, which no kernel of a decode step or a prefill chunk writes (the host uploads them, or the previous
 * step's last kernel advances them), so the RoPE kernels compute them before pdl_wait(), while the product before
 * them finishes: the double-precision pow, cos and sin are then off the step's critical path. */
static __device__ __forceinline__ float2 rope_cs(int i, int hd, int p, float theta, int bf) {
    float inv = 1.0f / (float)pow((double)theta, (double)((float)(2 * i) / (float)hd));
    float ang = (float)p * inv;
    float c = (float)cos((double)ang), s = (float)sin((double)ang);
    if (bf) {
        c = rbf(c);
        s = rbf(s);
    }
    return make_float2(c, s);
}
/* The rotation of one pair (x1, x2) by (c, s) = cs, in place. */
static __device__ __forceinline__ void rope_rot(float &x1, float &x2, float2 cs, int bf) {
    const float c = cs.x, s = cs.y, a = x1, b = x2;
    if (bf) {
        x1 = rbf(rbf(a * c) + rbf(-b * s));
        x2 = rbf(rbf(b * c) + rbf(a * s));
    } else {
        x1 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        x2 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
    }
}
/* One rotation pair (i, i + half) of a head row r by cs. */
static __device__ __forceinline__ void rope_pair(float *r, int i, int hd, float2 cs, int bf) {
    rope_rot(r[i], r[i + hd / 2], cs, bf);
}

__global__ void rope_k(float *x, int ld, int T, int n_heads, int hd, const int32_t *pos, float theta, int bf) {
    int half = hd / 2;
    size_t n = (size_t)T * n_heads * half; /* a thread per (row, head, pair): every head in parallel */
    const size_t first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    float2 cs0 = make_float2(0.f, 0.f);
    if (first < n) cs0 = rope_cs((int)(first % half), hd, pos[first / ((size_t)half * n_heads)], theta, bf);
    pdl_wait();
    GRID_STRIDE(idx, n) {
        int i = (int)(idx % half), h = (int)((idx / half) % n_heads), t = (int)(idx / ((size_t)half * n_heads));
        rope_pair(x + (size_t)t * ld + (size_t)h * hd, i, hd, idx == first ? cs0 : rope_cs(i, hd, pos[t], theta, bf), bf);
    }
}

/* rope_k over the 2H q and k heads of each row, then the k heads' rotated pairs and the v row stored into the
 * cache (kv_put, as kv_write_dev_k stores them): threads [0, T·2H·half) rotate, [that, + T·W) copy v. */
__global__ void rope_kv_k(float *x, int ld, int T, int H, int hd, const int32_t *pos, float theta, int bf, KvDst d,
                          const int32_t *const *tables, const int32_t *seq, const float *v, int ldv) {
    const int half = hd / 2;
    const size_t nr = (size_t)T * 2 * H * half, n = nr + (size_t)T * d.width;
    const size_t first = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    float2 cs0 = make_float2(0.f, 0.f);
    if (first < nr) cs0 = rope_cs((int)(first % half), hd, pos[first / ((size_t)half * 2 * H)], theta, bf);
    pdl_wait();
    GRID_STRIDE(idx, n) {
        if (idx < nr) {
            const int i = (int)(idx % half), h = (int)((idx / half) % (2 * H)), t = (int)(idx / ((size_t)half * 2 * H));
            float *r = x + (size_t)t * ld + (size_t)h * hd;
            rope_pair(r, i, hd, idx == first ? cs0 : rope_cs(i, hd, pos[t], theta, bf), bf);
            if (h < H) continue;
            const int32_t *table = tables[seq ? seq[t] : 0];
            kv_put(d, table, pos[t], (h - H) * hd + i, 0, r[i]);
            kv_put(d, table, pos[t], (h - H) * hd + i + half, 0, r[i + half]);
        } else {
            const int t = (int)((idx - nr) / d.width), c = (int)((idx - nr) % d.width);
            kv_put(d, tables[seq ? seq[t] : 0], pos[t], c, 1, v[(size_t)t * ldv + c]);
        }
    }
}

/* One row x [D] (decode) times the fused [q; k; v] weights w [3·H·hd, D] (bf16, D ≤ 8·32·PRE_U) summed as gemv_k<1>
 * sums it (the lane's weights loaded before the wait, the warp's sum, rounded with round), then rope_kv_k's work on
 * the result, in one kernel of 8 warps a block. Blocks [0, nqk) each hold 4 rotation pairs of one q or k head (warps
 * 0-3 the columns i .. i + 3 of the head, warps 4-7 those half further on): the sums meet in shared memory, warp j's
 * lane 0 rotates pair j and stores it (and a k pair into the cache). The blocks after hold 8 v columns each, stored
 * and copied into the cache. The same arithmetic as linear then rope_kv_write_dev, bit for bit. */
__global__ void __launch_bounds__(256, 4) qkv_rope_k(float *y, const float *x, const uint16_t *w, int D, int H, int hd,
                                                  const int32_t *pos, float theta, int round, int bf, KvDst d,
                                                  const int32_t *const *tables) {
    const int half = hd / 2, warp = threadIdx.x / 32, lane = threadIdx.x & 31, N = 3 * H * hd;
    const int nqk = H * half / 2, b = blockIdx.x; /* 2H heads, half / 4 blocks a head */
    int col, h = 0, i = 0;
    if (b < nqk) {
        h = b / (half / 4);
        i = (b % (half / 4)) * 4 + (warp & 3);
        col = h * hd + i + (warp >= 4 ? half : 0);
    } else {
        col = 2 * H * hd + (b - nqk) * 8 + warp;
    }
    /* pair j's cos and sin into shared memory first (no registers held across the loads and sums), then the
     * lane's weights; both before the wait */
    const int p = pos[0];
    __shared__ float2 cs[4];
    if (b < nqk && warp < 4 && lane == 0) cs[warp] = rope_cs(i, hd, p, theta, bf);
    uint4 pq[PRE_U];
    if (col < N) pre_load(pq, w + (size_t)col * D, D / 8, lane);
    pdl_wait();
    float acc = 0.f;
    if (col < N) pre_dot(acc, pq, x, D / 8, lane);
    acc = warp_sum(acc);
    if (round) acc = rbf(acc);
    __shared__ float sv[8];
    if (b >= nqk) {
        if (lane == 0 && col < N) {
            y[col] = acc;
            kv_put(d, tables[0], p, col - 2 * H * hd, 1, acc);
        }
        return;
    }
    if (lane == 0) sv[warp] = acc;
    __syncthreads();
    if (warp < 4 && lane == 0) {
        float x1 = sv[warp], x2 = sv[warp + 4];
        rope_rot(x1, x2, cs[warp], bf);
        y[col] = x1;
        y[col + half] = x2;
        if (h >= H) {
            kv_put(d, tables[0], p, (h - H) * hd + i, 0, x1);
            kv_put(d, tables[0], p, (h - H) * hd + i + half, 0, x2);
        }
    }
}

/* qkv_rope_k for block-type weights (Q8_0 / Q4_0, D % 32 == 0): gemvq1_k's sums, a warp two columns with the
 * first batch of loads before the wait. Warps [0, H·hd) take the two columns of one rotation pair (i, i + half) of
 * a q or k head, which lane 0 then rotates and stores (a k pair into the cache too); the warps after take two
 * adjacent v columns as gemvq1_k pairs them, stored and copied into the cache. */
template <int DT>
__global__ void __launch_bounds__(256, 4) qkv_rope_q_k(float *y, const float *x, const uint8_t *w, int D, int H, int hd,
                                                       const int32_t *pos, float theta, int round, int bf, KvDst d,
                                                       const int32_t *const *tables) {
    const int half = hd / 2, lane = threadIdx.x & 31, warp = threadIdx.x / 32, wg = blockIdx.x * 8 + warp;
    const int W = H * hd, N = 3 * W, nb = D / 32;
    const bool pair = wg < W; /* 2H heads of half pairs */
    const int h = pair ? wg / half : 0, i = pair ? wg % half : 0;
    const int c0 = pair ? h * hd + i : 2 * W + 2 * (wg - W), c1 = pair ? c0 + half : (c0 + 1 < N ? c0 + 1 : c0);
    const int p = pos[0];
    __shared__ float2 cs[8]; /* the warp's cos and sin, first (no registers held across the loads) */
    if (pair && lane == 0) cs[warp] = rope_cs(i, hd, p, theta, bf);
    const size_t rb = (size_t)nb * qbytes(DT);
    Q2Batch<DT> q;
    if (c0 < N) qdot2_first<DT>(q, w + (size_t)c0 * rb, w + (size_t)c1 * rb, D, lane);
    pdl_wait();
    if (c0 >= N) return;
    float g = 0.f, u = 0.f;
    qdot2_rest<DT>(g, u, q, x, w + (size_t)c0 * rb, w + (size_t)c1 * rb, D, lane);
    g = warp_sum(g);
    u = warp_sum(u);
    if (lane) return;
    if (round) {
        g = rbf(g);
        u = rbf(u);
    }
    if (pair) {
        rope_rot(g, u, cs[warp], bf);
        y[c0] = g;
        y[c1] = u;
        if (h >= H) {
            kv_put(d, tables[0], p, c0 - W, 0, g);
            kv_put(d, tables[0], p, c1 - W, 0, u);
        }
    } else {
        y[c0] = g;
        kv_put(d, tables[0], p, c0 - 2 * W, 1, g);
        if (c1 != c0) {
            y[c1] = u;
            kv_put(d, tables[0], p, c1 - 2 * W, 1, u);
        }
    }
}

static void cu_rope_kv_write_dev(Backend *b, float *qk, int ld, int n, int H, int hd, const int32_t *pos, float theta,
                                 int flags, KvCache *kv, int layer, const int32_t *const *tables, const int32_t *seq,
                                 const float *v, int ldv) {
    DS_ASSERT(hd > 0 && hd % 2 == 0 && ld >= 2 * H * hd && H * hd == kv->width && tables && pos);
    DS_ASSERT((kv->dtype == DS_BF16 || kv->dtype == DS_F32) && layer >= 0 && layer < kv->n_layers);
    if (n <= 0) return;
    size_t total = (size_t)n * 2 * H * (hd / 2) + (size_t)n * kv->width;
    launch_pdl(cctx(b), rope_kv_k, dim3(grid_for(total)), dim3(256), 0, qk, ld, n, H, hd, pos, theta,
               flags & OPS_BF16, kv_dst(kv, layer), tables, seq, v, ldv);
    CU_LAUNCHED();
}

static int cu_qkv_rope_kv_dev(Backend *b, float *qkv, const float *x, int D, DsW w, int H, int hd, const int32_t *pos,
                              float theta, int lin_flags, int rope_flags, KvCache *kv, int layer,
                              const int32_t *const *tables) {
    if ((lin_flags & ~(BE_ROUND | BE_FP32_SUMS)) || hd % 2 || H * hd != kv->width ||
        (kv->dtype != DS_BF16 && kv->dtype != DS_F32) || layer < 0 || layer >= kv->n_layers || !tables || !pos)
        return 0;
    const int round = (lin_flags & BE_ROUND) != 0, bf = rope_flags & OPS_BF16, W = H * hd;
    if (is_block(w.dtype) && D % 32 == 0) {
        const dim3 grid(cdiv((size_t)W + cdiv(W, 2), 8));
        if (w.dtype == DS_Q8_0)
            launch_pdl(cctx(b), qkv_rope_q_k<DS_Q8_0>, grid, dim3(256), 0, qkv, x, (const uint8_t *)w.data, D, H, hd,
                       pos, theta, round, bf, kv_dst(kv, layer), tables);
        else
            launch_pdl(cctx(b), qkv_rope_q_k<DS_Q4_0>, grid, dim3(256), 0, qkv, x, (const uint8_t *)w.data, D, H, hd,
                       pos, theta, round, bf, kv_dst(kv, layer), tables);
        CU_LAUNCHED();
        return 1;
    }
    if (w.dtype != DS_BF16 || D % 8 || D / 8 > PRE_U * 32 || hd % 8 || ((uintptr_t)x & 15) || ((uintptr_t)w.data & 15))
        return 0;
    const int nqk = H * (hd / 2) / 2, nv = (int)cdiv(W, 8);
    launch_pdl(cctx(b), qkv_rope_k, dim3(nqk + nv), dim3(256), 0, qkv, x, (const uint16_t *)w.data, D, H, hd, pos, theta,
               round, bf, kv_dst(kv, layer), tables);
    CU_LAUNCHED();
    return 1;
}

static void cu_rope(Backend *b, float *x, int ld, int T, int n_heads, int head_dim, const int32_t *pos, float theta,
                    int flags) {
    DS_ASSERT(head_dim > 0 && head_dim % 2 == 0 && ld >= n_heads * head_dim);
    if (T <= 0) return;
    size_t n = (size_t)T * n_heads * (head_dim / 2);
    launch_pdl(cctx(b), rope_k, dim3(grid_for(n)), dim3(256), 0, x, ld, T, n_heads, head_dim, pos, theta, flags & OPS_BF16);
    CU_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------------------
 * Conv2d: im2col into the caller's scratch (rows in (i, ky, kx) order), then linear. */

/* col [np, K] (K = in_c·kh·kw, PyTorch's weight order i, ky, kx) for output pixels p0 .. p0 + np − 1: a pixel per
 * blockIdx.y step, its K values over the threads (32-bit index arithmetic); O16: bf16 storage (f2bf, as the bf16
 * product's own conversion of the fp32 values) */
template <bool O16>
__global__ void im2col_k(void *col, const float *x, int in_h, int in_w, int in_c, int kh, int kw, int stride, int pad,
                         int Wo, int p0, int np) {
    const int khw = kh * kw, K = in_c * khw;
    for (int r = blockIdx.y; r < np; r += gridDim.y) {
        const int p = p0 + r, oy = p / Wo, ox = p - oy * Wo;
        for (int kk = blockIdx.x * blockDim.x + threadIdx.x; kk < K; kk += gridDim.x * blockDim.x) {
            const int i = kk / khw, t = kk - i * khw, ky = t / kw, kx = t - ky * kw;
            const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
            const float v = iy >= 0 && iy < in_h && ix >= 0 && ix < in_w ? x[((size_t)iy * in_w + ix) * in_c + i] : 0.f;
            if (O16)
                ((uint16_t *)col)[(size_t)r * K + kk] = f2bf(v);
            else
                ((float *)col)[(size_t)r * K + kk] = v;
        }
    }
}

static void cu_conv2d(Backend *b, float *y, const float *x, const OpsConv2d *c, DsW w, DsW bias, float *scratch,
                      size_t scratch_n) {
    DS_ASSERT(c->in_h > 0 && c->in_w > 0 && c->in_c > 0 && c->out_c > 0 && c->kh > 0 && c->kw > 0 && c->stride > 0 &&
              c->pad >= 0);
    int Ho = ops_conv2d_out_h(c), Wo = ops_conv2d_out_w(c), P = Ho * Wo, K = c->in_c * c->kh * c->kw;
    DS_ASSERT(Ho > 0 && Wo > 0);
    if (c->kh == 1 && c->kw == 1 && c->stride == 1 && c->pad == 0) {
        cu_linear(b, y, c->out_c, x, c->in_c, P, K, w, c->out_c, bias, 0);
        return;
    }
    DS_ASSERT(scratch && scratch_n >= (size_t)K);
    /* where the product converts the columns to bf16 itself (bf16 weight, many rows, bf16 inputs), im2col writes them
     * as bf16 (the same values; half the traffic, twice the pixels a chunk) */
    const CudaCtx *cc = cctx(b);
    const bool o16 = w.dtype == DS_BF16 && !cc->gemm_f16 && !cc->exact_gemm && scratch_n / K > GEMV_ROWS;
    size_t chunk = (o16 ? 2 * scratch_n : scratch_n) / K;
    if (chunk > (size_t)P) chunk = P;
    for (int p0 = 0; p0 < P; p0 += (int)chunk) {
        /* a chunk of GEMV_ROWS pixels or fewer goes to the GEMV on fp32 columns, as linear would (it fits: o16 asks
         * for room for more than GEMV_ROWS fp32 rows) */
        const int np = P - p0 < (int)chunk ? P - p0 : (int)chunk, b16 = o16 && np > GEMV_ROWS;
        if (b16)
            im2col_k<true><<<rows_grid(np, K), 256, 0, cctx(b)->stream>>>(scratch, x, c->in_h, c->in_w, c->in_c, c->kh,
                                                                          c->kw, c->stride, c->pad, Wo, p0, np);
        else
            im2col_k<false><<<rows_grid(np, K), 256, 0, cctx(b)->stream>>>(scratch, x, c->in_h, c->in_w, c->in_c, c->kh,
                                                                           c->kw, c->stride, c->pad, Wo, p0, np);
        CU_LAUNCHED();
        cu_linear(b, y + (size_t)p0 * c->out_c, c->out_c, scratch, K, np, K, w, c->out_c, bias, b16 ? BE_IN_BF16 : 0);
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * SwiGLU block (ops_expert_ffn semantics). */

void cu_swiglu(Backend *b, float *y, const float *x, int n, int D, int F, DsW gate, DsW up, DsW down, int flags,
               float *scratch) {
    if (n <= 0) return;
    int bf = flags & OPS_BF16;
    float *g = scratch, *u = scratch + (size_t)n * F;
    if (n == 1 && cu_swiglu1(b, y, x, D, F, gate, up, down, flags, scratch)) return;
    if (n <= GEMV_ROWS) { /* decode: the GEMV kernels round their outputs themselves */
        cu_gemv(b, g, F, x, D, n, D, gate, F, ds_w_none(), 0, bf);
        cu_gemv(b, u, F, x, D, n, D, up, F, ds_w_none(), 0, bf);
        silu_mul_k<<<grid_for((size_t)n * F), 256, 0, cctx(b)->stream>>>(g, u, (size_t)n * F, bf);
        CU_LAUNCHED();
        cu_gemv(b, y, D, g, F, n, F, down, D, ds_w_none(), 0, bf);
        return;
    }
    const int sums = flags & BE_FP32_SUMS;
    cu_linear(b, g, F, x, D, n, D, gate, F, ds_w_none(), sums);
    cu_linear(b, u, F, x, D, n, D, up, F, ds_w_none(), sums);
    if (bf) {
        cu_round_bf16(b, g, (size_t)n * F);
        cu_round_bf16(b, u, (size_t)n * F);
    }
    silu_mul_k<<<grid_for((size_t)n * F), 256, 0, cctx(b)->stream>>>(g, u, (size_t)n * F, bf);
    CU_LAUNCHED();
    cu_linear(b, y, D, g, F, n, F, down, D, ds_w_none(), sums);
    if (bf) cu_round_bf16(b, y, (size_t)n * D);
}

static size_t cu_moe_scratch(int n, const BackendMoe *m) { return cu_moe_scratch_floats(n, m); }

/* ---------------------------------------------------------------------------------------------------------
 * Data movement. */

__global__ void chw_to_hwc_k(float *dst, const float *src, int S) {
    size_t n = (size_t)3 * S * S;
    GRID_STRIDE(i, n) {
        size_t pix = i / 3;
        int c = (int)(i % 3);
        dst[i] = src[(size_t)c * S * S + pix];
    }
}

/* SAM windows: one (window) row per blockIdx.y step, its source pixel computed once; columns 4 at a time when C
 * allows (vec) */
__global__ void window_partition_k(float *dst, const float *src, int g, int C, int ws, int nw, int vec) {
    const int rows = nw * nw * ws * ws;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        const int win = r / (ws * ws), t = r % (ws * ws);
        const int gy = (win / nw) * ws + t / ws, gx = (win % nw) * ws + t % ws;
        const bool in = gy < g && gx < g;
        const float *s = src + ((size_t)(in ? gy : 0) * g + (in ? gx : 0)) * C;
        float *d = dst + (size_t)r * C;
        if (vec) {
            for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C / 4; c += gridDim.x * blockDim.x)
                ((float4 *)d)[c] = in ? ((const float4 *)s)[c] : make_float4(0.f, 0.f, 0.f, 0.f);
        } else {
            for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) d[c] = in ? s[c] : 0.f;
        }
    }
}

/* x [g, g, C] += its rows of win (floats, or R16: bf16 storage), rounded to bf16 when round; a pixel per blockIdx.y
 * step */
template <bool R16>
__global__ void window_unpartition_add_k(float *x, const void *win, int g, int C, int ws, int nw, int round, int vec) {
    for (int pix = blockIdx.y; pix < g * g; pix += gridDim.y) {
        const int gy = pix / g, gx = pix % g;
        const size_t r = ((size_t)(gy / ws) * nw + gx / ws) * ws * ws + (size_t)(gy % ws) * ws + gx % ws;
        float *xr = x + (size_t)pix * C;
        if (vec) {
            for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C / 4; c += gridDim.x * blockDim.x)
                ((float4 *)xr)[c] = add4(((float4 *)xr)[c], load4<R16>(win, r * C / 4 + c), round);
        } else {
            for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
                const float v = xr[c] + load1<R16>(win, r * C + c);
                xr[c] = round ? rbf(v) : v;
            }
        }
    }
}

enum { EMBED_IDS = 512 };
struct EmbedIds {
    int32_t id[EMBED_IDS];
};

__global__ void embed_k(float *dst, EmbedIds ids, int n, const void *table, int dt, int D) {
    size_t total = (size_t)n * D;
    GRID_STRIDE(i, total) {
        int r = (int)(i / D), c = (int)(i % D);
        dst[i] = wget(table, dt, (size_t)ids.id[r] * D + c);
    }
}

__global__ void embed_dev_k(float *dst, const int32_t *ids, int n, const void *table, int dt, int D) {
    pdl_wait();
    size_t total = (size_t)n * D;
    GRID_STRIDE(i, total) {
        int r = (int)(i / D), c = (int)(i % D);
        dst[i] = wget(table, dt, (size_t)ids[r] * D + c);
    }
}

__global__ void fill_rows_k(float *dst, int n, const void *vec, int dt, int D) {
    size_t total = (size_t)n * D;
    GRID_STRIDE(i, total) dst[i] = wget(vec, dt, i % D);
}

static void cu_chw_to_hwc(Backend *b, float *dst, const float *src, int S) {
    DS_ASSERT(S > 0);
    chw_to_hwc_k<<<grid_for((size_t)3 * S * S), 256, 0, cctx(b)->stream>>>(dst, src, S);
    CU_LAUNCHED();
}
static void cu_window_partition(Backend *b, float *dst, const float *src, int g, int C, int ws) {
    DS_ASSERT(g > 0 && C > 0 && ws > 0);
    const int nw = (g + ws - 1) / ws, vec = C % 4 == 0 && vec16(dst, src, src);
    window_partition_k<<<rows_grid(nw * nw * ws * ws, vec ? C / 4 : C), 256, 0, cctx(b)->stream>>>(dst, src, g, C, ws,
                                                                                                  nw, vec);
    CU_LAUNCHED();
}
static void cu_window_unpartition_residual(Backend *b, float *x, const void *win, int g, int C, int ws, int flags) {
    DS_ASSERT(g > 0 && C > 0 && ws > 0);
    const int nw = (g + ws - 1) / ws, r16 = (flags & BE_IN_BF16) != 0, round = (flags & BE_ROUND) != 0;
    const int vec = C % 4 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)win & (r16 ? 7 : 15)) == 0;
    const dim3 grid = rows_grid(g * g, vec ? C / 4 : C);
    if (r16)
        window_unpartition_add_k<true><<<grid, 256, 0, cctx(b)->stream>>>(x, win, g, C, ws, nw, round, vec);
    else
        window_unpartition_add_k<false><<<grid, 256, 0, cctx(b)->stream>>>(x, win, g, C, ws, nw, round, vec);
    CU_LAUNCHED();
}
static void cu_window_unpartition_add(Backend *b, float *x, const float *win, int g, int C, int ws) {
    cu_window_unpartition_residual(b, x, win, g, C, ws, 0);
}
float *cu_host_scratch(Backend *b, size_t n) {
    CudaCtx *c = cctx(b);
    if (n > c->host_floats) {
        if (c->host_buf) {
            CU_CHECK(cudaStreamSynchronize(c->stream)); /* copies from it may be in flight */
            cu_host_free(b, c->host_buf);
        }
        c->host_buf = (float *)cu_host_alloc(b, n * sizeof(float));
        DS_ASSERT(c->host_buf && "out of host memory for the hybrid MoE's rows");
        c->host_floats = n;
    }
    return c->host_buf;
}

/* Whether p is host memory (a weight plan.h left on the host), not a device allocation. Never while the stream
 * records a graph (a pointer query is no stream work, but the engine records only all-GPU models). */
static bool host_ptr(Backend *b, const void *p) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(cctx(b)->stream, &cs) == cudaSuccess && cs != cudaStreamCaptureStatusNone) return false;
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return true;
    }
    return at.type != cudaMemoryTypeDevice && at.type != cudaMemoryTypeManaged;
}

/* Rows ids[0..n) of a table in host memory, widened on the host and uploaded (embed_k's values). */
static void embed_host(Backend *b, float *dst, const int32_t *ids, int n, DsW table, int D) {
    CU_CHECK(cudaStreamSynchronize(cctx(b)->stream)); /* an earlier copy from the buffer may be in flight */
    float *h = cu_host_scratch(b, (size_t)n * D);
    for (int r = 0; r < n; r++) {
        DS_ASSERT(ids[r] >= 0);
        for (int i = 0; i < D; i++) h[(size_t)r * D + i] = ds_w_get(table, (size_t)ids[r] * D + i);
    }
    CU_CHECK(cudaMemcpyAsync(dst, h, sizeof(float) * (size_t)n * D, cudaMemcpyHostToDevice, cctx(b)->stream));
}

static void cu_linear_host(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N,
                           DsW bias, int flags) {
    if (M <= 0) return;
    CudaCtx *c = cctx(b);
    CU_CHECK(cudaStreamSynchronize(c->stream)); /* an earlier copy from the buffer may be in flight */
    float *hx = cu_host_scratch(b, (size_t)M * K + (size_t)M * N), *hy = hx + (size_t)M * K;
    CU_CHECK(cudaMemcpy2DAsync(hx, (size_t)K * 4, x, (size_t)ldx * 4, (size_t)K * 4, (size_t)M, cudaMemcpyDeviceToHost,
                               c->stream));
    if (flags & OPS_ACCUM)
        CU_CHECK(cudaMemcpy2DAsync(hy, (size_t)N * 4, y, (size_t)ldy * 4, (size_t)N * 4, (size_t)M,
                                   cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
    Backend *cpu = backend_cpu();
    cpu->linear(cpu, hy, N, hx, K, M, K, w, N, bias, flags);
    CU_CHECK(cudaMemcpy2DAsync(y, (size_t)ldy * 4, hy, (size_t)N * 4, (size_t)N * 4, (size_t)M, cudaMemcpyHostToDevice,
                               c->stream));
}

static void cu_embed(Backend *b, float *dst, const int32_t *ids_host, int n, DsW table, int D) {
    DS_ASSERT(n >= 0 && D > 0 && table.data);
    if (n && host_ptr(b, table.data)) {
        for (int r0 = 0; r0 < n; r0 += 1024) /* bounded host rows */
            embed_host(b, dst + (size_t)r0 * D, ids_host + r0, n - r0 < 1024 ? n - r0 : 1024, table, D);
        return;
    }
    for (int r0 = 0; r0 < n; r0 += EMBED_IDS) {
        int nc = n - r0 < EMBED_IDS ? n - r0 : EMBED_IDS;
        EmbedIds ids;
        memset(&ids, 0, sizeof ids);
        for (int i = 0; i < nc; i++) {
            DS_ASSERT(ids_host[r0 + i] >= 0);
            ids.id[i] = ids_host[r0 + i];
        }
        embed_k<<<grid_for((size_t)nc * D), 256, 0, cctx(b)->stream>>>(dst + (size_t)r0 * D, ids, nc, table.data,
                                                                       table.dtype, D);
        CU_LAUNCHED();
    }
}
static void cu_embed_dev(Backend *b, float *dst, const int32_t *ids, int n, DsW table, int D) {
    DS_ASSERT(n >= 0 && D > 0 && table.data && ids);
    if (!n) return;
    if (host_ptr(b, table.data)) { /* the ids come to the host first (not capturable: hybrid runs without graphs) */
        int32_t few[64], *hid = n <= 64 ? few : (int32_t *)malloc(sizeof(int32_t) * (size_t)n);
        DS_ASSERT(hid);
        CU_CHECK(cudaMemcpyAsync(hid, ids, sizeof(int32_t) * (size_t)n, cudaMemcpyDeviceToHost, cctx(b)->stream));
        CU_CHECK(cudaStreamSynchronize(cctx(b)->stream));
        cu_embed(b, dst, hid, n, table, D);
        if (hid != few) free(hid);
        return;
    }
    launch_pdl(cctx(b), embed_dev_k, dim3(grid_for((size_t)n * D)), dim3(256), 0, dst, ids, n, table.data, table.dtype, D);
    CU_LAUNCHED();
}
static void cu_fill_rows(Backend *b, float *dst, int n, DsW vec, int D) {
    DS_ASSERT(n >= 0 && D > 0 && vec.data);
    if (!n) return;
    fill_rows_k<<<grid_for((size_t)n * D), 256, 0, cctx(b)->stream>>>(dst, n, vec.data, vec.dtype, D);
    CU_LAUNCHED();
}
static void copy2d(Backend *b, float *dst, int ldd, const float *src, int lds, int n, int w) {
    if (n <= 0 || w <= 0) return;
    CU_CHECK(cudaMemcpy2DAsync(dst, (size_t)ldd * 4, src, (size_t)lds * 4, (size_t)w * 4, (size_t)n,
                               cudaMemcpyDeviceToDevice, cctx(b)->stream));
}
static void cu_concat_cols(Backend *b, float *dst, const float *a, int lda, int wa, const float *c, int ldc, int wc,
                           int n) {
    copy2d(b, dst, wa + wc, a, lda, n, wa);
    copy2d(b, dst + wa, wa + wc, c, ldc, n, wc);
}
static void cu_copy_rows(Backend *b, float *dst, int ldd, const float *src, int lds, int n, int w) {
    DS_ASSERT(ldd >= w && lds >= w);
    copy2d(b, dst, ldd, src, lds, n, w);
}

/* ---------------------------------------------------------------------------------------------------------
 * Graphs: stream capture (this thread's calls only) into an instantiated cudaGraphExec_t. */

static int cu_graph_begin(Backend *b) {
    if (cudaStreamBeginCapture(cctx(b)->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    return 0;
}
static void *cu_graph_end(Backend *b) {
    cudaGraph_t g = NULL;
    cudaGraphExec_t x = NULL;
    if (cudaStreamEndCapture(cctx(b)->stream, &g) != cudaSuccess || !g) {
        (void)cudaGetLastError();
        if (g) cudaGraphDestroy(g);
        return NULL;
    }
    cudaError_t err = cudaGraphInstantiate(&x, g, 0);
    cudaGraphDestroy(g);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return (void *)x;
}
static void cu_graph_launch(Backend *b, void *g) { CU_CHECK(cudaGraphLaunch((cudaGraphExec_t)g, cctx(b)->stream)); }
static void cu_graph_free(Backend *b, void *g) {
    (void)b;
    if (g) CU_CHECK(cudaGraphExecDestroy((cudaGraphExec_t)g));
}

/* ---------------------------------------------------------------------------------------------------------
 * Argmax over one row: AMAX_BLOCKS blocks scan contiguous chunks (float4 loads), the last block to finish
 * reduces their candidates; the first index among equal maxima, NaNs skipped, 0 when all are NaN. */

enum { AMAX_BLOCKS = 128, AMAX_THREADS = 256 };

static __device__ __forceinline__ void amax_take(float &bv, int &bi, float v, int i) {
    if (v != v || i < 0) return;
    if (bi < 0 || v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

/* block-wide (value, index) reduction; every thread gets the result */
static __device__ void amax_block(float &bv, int &bi, float *sv, int *si) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        amax_take(bv, bi, ov, oi);
    }
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sv[wid] = bv, si[wid] = bi;
    __syncthreads();
    bv = -INFINITY, bi = -1;
    for (int w = 0; w < nw; w++) amax_take(bv, bi, sv[w], si[w]);
}

/* This thread's share of x[lo, hi) (lo a multiple of 4) into its best (bv, bi): float4 loads where x is 16-byte
 * aligned */
static __device__ __forceinline__ void amax_range(const float *x, int lo, int hi, float &bv, int &bi) {
    if (((uintptr_t)x & 15) == 0) {
        const int lo4 = lo / 4, hi4 = hi / 4;
        for (int q = lo4 + threadIdx.x; q < hi4; q += blockDim.x) {
            float4 v = ((const float4 *)x)[q];
            amax_take(bv, bi, v.x, 4 * q);
            amax_take(bv, bi, v.y, 4 * q + 1);
            amax_take(bv, bi, v.z, 4 * q + 2);
            amax_take(bv, bi, v.w, 4 * q + 3);
        }
        for (int i = max(lo, hi4 * 4) + threadIdx.x; i < hi; i += blockDim.x) amax_take(bv, bi, x[i], i);
    } else {
        for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) amax_take(bv, bi, x[i], i);
    }
}

__global__ void __launch_bounds__(AMAX_THREADS) argmax_k(int32_t *out, const float *x, int n, int32_t *step,
                                                        float *pv, int *pi, int *count) {
    pdl_wait();
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ int last;
    const int chunk = ((n + AMAX_BLOCKS - 1) / AMAX_BLOCKS + 3) & ~3;
    const int lo = blockIdx.x * chunk, hi = min(n, lo + chunk);
    float bv = -INFINITY;
    int bi = -1;
    amax_range(x, lo, hi, bv, bi);
    amax_block(bv, bi, sv, si);
    if (threadIdx.x == 0) {
        pv[blockIdx.x] = bv;
        pi[blockIdx.x] = bi;
        __threadfence();
        last = atomicAdd(count, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    bv = -INFINITY, bi = -1;
    for (int b = threadIdx.x; b < (int)gridDim.x; b += blockDim.x) amax_take(bv, bi, __ldcg(pv + b), __ldcg(pi + b));
    amax_block(bv, bi, sv, si);
    if (threadIdx.x == 0) {
        *count = 0;
        out[0] = bi < 0 ? 0 : bi;
        if (step) {
            step[0] = out[0];
            step[1]++;
        }
    }
}

static void cu_argmax(Backend *b, int32_t *out, const float *x, int n, int32_t *step) {
    DS_ASSERT(n > 0);
    CudaCtx *c = cctx(b);
    launch_pdl(c, argmax_k, dim3(AMAX_BLOCKS), dim3(AMAX_THREADS), 0, out, x, n, step, c->amax_v, c->amax_i, c->amax_count);
    CU_LAUNCHED();
}

/* argmax_rows: a block per row, argmax_k's scan and comparisons (amax_range, amax_block) */
__global__ void __launch_bounds__(AMAX_THREADS) argmax_rows_k(int32_t *out, const float *x, size_t ld, int n) {
    __shared__ float sv[32];
    __shared__ int si[32];
    float bv = -INFINITY;
    int bi = -1;
    amax_range(x + (size_t)blockIdx.x * ld, 0, n, bv, bi);
    amax_block(bv, bi, sv, si);
    if (threadIdx.x == 0) out[blockIdx.x] = bi < 0 ? 0 : bi;
}

__global__ void mask_ids_k(float *x, const int32_t *idx, int n) {
    GRID_STRIDE(i, (size_t)n) x[idx[i]] = -INFINITY;
}

static void cu_mask_ids(Backend *b, float *x, const int32_t *idx, int n) {
    if (n <= 0) return;
    mask_ids_k<<<grid_for((size_t)n), 256, 0, cctx(b)->stream>>>(x, idx, n);
    CU_LAUNCHED();
}

static void cu_argmax_rows(Backend *b, int32_t *out, const float *x, size_t ld, int rows, int n) {
    DS_ASSERT(n > 0 && rows >= 0);
    if (!rows) return;
    argmax_rows_k<<<rows, AMAX_THREADS, 0, cctx(b)->stream>>>(out, x, ld, n);
    CU_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------------------
 * Profiling: an event per mark (not while a graph is being recorded); gaps summed per label when the pool fills
 * or at the report. */

static void prof_flush(CudaCtx *c) {
    if (c->prof_n < 2) return;
    CU_CHECK(cudaEventSynchronize(c->prof_ev[c->prof_n - 1]));
    for (int i = 0; i + 1 < c->prof_n; i++) {
        float ms = 0.f;
        CU_CHECK(cudaEventElapsedTime(&ms, c->prof_ev[i], c->prof_ev[i + 1]));
        prof_add(&c->prof_tab, c->prof_lab[i], ms);
    }
    /* keep the last event as the start of the open section */
    cudaEvent_t t = c->prof_ev[0];
    c->prof_ev[0] = c->prof_ev[c->prof_n - 1];
    c->prof_ev[c->prof_n - 1] = t;
    c->prof_lab[0] = c->prof_lab[c->prof_n - 1];
    c->prof_n = 1;
}

static void cu_mark(Backend *b, const char *label) {
    CudaCtx *c = cctx(b);
    if (!c->prof) return;
    cudaStreamCaptureStatus cs;
    if (cudaStreamIsCapturing(c->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) return;
    if (c->prof_n == c->prof_cap) prof_flush(c);
    CU_CHECK(cudaEventRecord(c->prof_ev[c->prof_n], c->stream));
    c->prof_lab[c->prof_n++] = label;
    c->prof_last = label;
}

static void cu_profile_report(Backend *b, void *file) {
    CudaCtx *c = cctx(b);
    if (!c->prof) return;
    cu_mark(b, "(end)");
    prof_flush(c);
    prof_report(&c->prof_tab, (FILE *)file);
    c->prof_n = 0;
}

/* ---------------------------------------------------------------------------------------------------------
 * The backend object. */

extern "C" Backend *backend_cuda_new(int device, DsError *e) {
    int n_dev = 0;
    cudaError_t err = cudaGetDeviceCount(&n_dev);
    if (err != cudaSuccess || n_dev == 0) {
        (void)cudaGetLastError();
        ds_fail(e, DSOCR_E_UNSUPPORTED, "no CUDA device (%s)", err != cudaSuccess ? cudaGetErrorString(err) : "none found");
        return NULL;
    }
    if (device < 0 || device >= n_dev) {
        ds_fail(e, DSOCR_E_INVALID_ARG, "CUDA device %d: there are %d", device, n_dev);
        return NULL;
    }
    Backend *b = (Backend *)calloc(1, sizeof *b);
    CudaCtx *c = (CudaCtx *)calloc(1, sizeof *c);
    cudaDeviceProp prop;
    if (!b || !c) goto nomem;
    b->ctx = c;
    pthread_mutex_init(&c->mu, NULL);
    c->device = device;
    if (cudaSetDevice(device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess) goto cuda_fail;
    snprintf(c->name, sizeof c->name, "%s", prop.name);
    c->cc = prop.major * 10 + prop.minor;
    c->pdl = c->cc >= 90 && !ds_env_on("DSOCR_NO_PDL");
    c->no_q8_rows = ds_env_on("DSOCR_NO_Q8_ROWS");
    c->n_sm = prop.multiProcessorCount;
    c->smem_optin = (int)prop.sharedMemPerBlockOptin;
    if (c->cc < 75) {
        ds_fail(e, DSOCR_E_UNSUPPORTED, "CUDA device %d (%s) has compute capability %d.%d; this build needs 7.5+",
                device, prop.name, prop.major, prop.minor);
        goto fail;
    }
    if (cudaFree(0) != cudaSuccess) goto cuda_fail; /* creates the context */
    {
        size_t f = 0, t = 0;
        if (cudaMemGetInfo(&f, &t) == cudaSuccess) c->base_used = t - f;
    }
    if (cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess) goto cuda_fail;
    gelu_tab_k<<<cdiv(GT_N, 256), 256, 0, c->stream>>>(); /* before any product that reads it, on the stream */
    if (cudaGetLastError() != cudaSuccess) goto cuda_fail;
    {
        if (ds_env_on("DSOCR_PROFILE")) {
            c->prof_cap = 4096;
            c->prof_ev = (cudaEvent_t *)calloc((size_t)c->prof_cap, sizeof *c->prof_ev);
            c->prof_lab = (const char **)calloc((size_t)c->prof_cap, sizeof *c->prof_lab);
            if (!c->prof_ev || !c->prof_lab) goto nomem;
            for (int i = 0; i < c->prof_cap; i++)
                if (cudaEventCreate(&c->prof_ev[i]) != cudaSuccess) goto cuda_fail;
            c->prof = 1;
        }
    }
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        ds_fail(e, DSOCR_E_NOMEM, "cuBLAS could not start on CUDA device %d", device);
        goto fail;
    }
    cublasSetStream(c->blas, c->stream);
    cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH);
    if (cublasLtCreate(&c->blaslt) != CUBLAS_STATUS_SUCCESS) {
        ds_fail(e, DSOCR_E_NOMEM, "cuBLASLt could not start on CUDA device %d", device);
        goto fail;
    }
    c->lt_plans = (LtPlan *)calloc(LT_PLANS, sizeof *c->lt_plans);
    if (!c->lt_plans) goto nomem;
    b->name = "cuda";
    b->act_bf16 = 1;
    b->alloc = cu_alloc;
    b->free = cu_free;
    b->upload = cu_upload;
    b->download = cu_download;
    b->copy = cu_copy;
    b->memset0 = cu_memset0;
    b->sync = cu_sync;
    b->host_alloc = cu_host_alloc;
    b->host_free = cu_host_free;
    b->allocated = cu_allocated;
    b->peak = cu_peak;
    b->linear = cu_linear;
    b->layernorm = cu_layernorm;
    b->rmsnorm = cu_rmsnorm;
    b->add_rmsnorm = cu_add_rmsnorm;
    b->gelu = cu_gelu;
    b->quick_gelu = cu_quick_gelu;
    b->add = cu_add;
    b->round_bf16 = cu_round_bf16;
    b->attention = cu_attention;
    b->attention_bf16 = cu_attention_bf16;
    b->residual_add = cu_residual_add;
    b->residual_layernorm = cu_residual_layernorm;
    b->window_unpartition_residual = cu_window_unpartition_residual;
    b->attention_kv = cu_attention_kv;
    b->kv_write = cu_kv_write;
    b->rope_neox = cu_rope;
    b->conv2d = cu_conv2d;
    b->swiglu = cu_swiglu;
    b->moe = cu_moe;
    b->add_rmsnorm_moe = cu_add_rmsnorm_moe;
    b->rope_kv_write_dev = cu_rope_kv_write_dev;
    b->qkv_rope_kv_dev = cu_qkv_rope_kv_dev;
    b->moe_scratch_floats = cu_moe_scratch;
    b->chw_to_hwc = cu_chw_to_hwc;
    b->window_partition = cu_window_partition;
    b->window_unpartition_add = cu_window_unpartition_add;
    b->embed = cu_embed;
    b->linear_host = cu_linear_host;
    b->fill_rows = cu_fill_rows;
    b->concat_cols = cu_concat_cols;
    b->copy_rows = cu_copy_rows;
    b->embed_dev = cu_embed_dev;
    b->kv_write_dev = cu_kv_write_dev;
    b->set_gemm_f16 = cu_set_gemm_f16;
    b->graph_begin = cu_graph_begin;
    b->graph_end = cu_graph_end;
    b->graph_launch = cu_graph_launch;
    b->graph_free = cu_graph_free;
    b->argmax = cu_argmax;
    b->argmax_rows = cu_argmax_rows;
    b->mask_ids = cu_mask_ids;
    b->mark = cu_mark;
    b->profile_report = cu_profile_report;
    c->wq_elems = WQ_ELEMS;
    c->wq = (uint16_t *)cu_alloc(b, c->wq_elems * sizeof(uint16_t));
    c->xb_elems = XB_ELEMS;
    c->xb = (uint16_t *)cu_alloc(b, c->xb_elems * sizeof(uint16_t));
    c->part_floats = PART_FLOATS;
    c->part = (float *)cu_alloc(b, c->part_floats * sizeof(float));
    c->kv_count = (int *)cu_alloc(b, 1056 * sizeof(int));
    if (c->kv_count) CU_CHECK(cudaMemset(c->kv_count, 0, 1056 * sizeof(int)));
    c->moe_count = c->kv_count ? c->kv_count + 1024 : NULL;
    /* cuBLAS's workspace, ours: nothing is allocated while a graph records (vision views, decode) */
    c->blas_ws = cu_alloc(b, BLAS_WS_BYTES);
    if (c->blas_ws && cublasSetWorkspace(c->blas, c->blas_ws, BLAS_WS_BYTES) != CUBLAS_STATUS_SUCCESS) {
        ds_fail(e, DSOCR_E_DEVICE, "cuBLAS refused its workspace on CUDA device %d", device);
        goto fail;
    }
    c->amax_v = (float *)cu_alloc(b, AMAX_BLOCKS * sizeof(float));
    c->amax_i = (int *)cu_alloc(b, (AMAX_BLOCKS + 1) * sizeof(int));
    c->amax_count = c->amax_i ? c->amax_i + AMAX_BLOCKS : NULL;
    if (c->amax_count) CU_CHECK(cudaMemset(c->amax_count, 0, sizeof(int)));
    if (!c->xb || !c->wq || !c->part || !c->kv_count || !c->amax_v || !c->amax_i || !c->blas_ws) {
        ds_fail(e, DSOCR_E_NOMEM, "CUDA device %d: cannot allocate %zu MiB of scratch", device,
                (c->xb_elems * 2 + c->wq_elems * 2 + c->part_floats * 4 + BLAS_WS_BYTES) >> 20);
        goto fail;
    }
    return b;
nomem:
    ds_fail(e, DSOCR_E_NOMEM, "out of host memory");
    goto fail;
cuda_fail:
    ds_fail(e, DSOCR_E_UNSUPPORTED, "CUDA device %d: %s", device, cudaGetErrorString(cudaGetLastError()));
fail:
    backend_cuda_free(b);
    if (!b) free(c);
    return NULL;
}

extern "C" void backend_cuda_set_budget(Backend *b, size_t bytes) { cctx(b)->budget = bytes; }

extern "C" void backend_cuda_free(Backend *b) {
    if (!b) return;
    CudaCtx *c = cctx(b);
    if (c) {
        if (c->stream) cudaStreamSynchronize(c->stream);
        if (c->host_buf) cu_host_free(b, c->host_buf);
        if (c->hyb_ev) cudaEventDestroy(c->hyb_ev);
        for (size_t i = 0; i < c->alloc_cap; i++)
            if (c->allocs[i].p) cudaFree(c->allocs[i].p);
        free(c->allocs);
        if (c->blas) cublasDestroy(c->blas);
        if (c->lt_plans)
            for (int i = 0; i < LT_PLANS; i++) lt_plan_clear(&c->lt_plans[i]);
        free(c->lt_plans);
        if (c->blaslt) cublasLtDestroy(c->blaslt);
        if (c->prof_ev)
            for (int i = 0; i < c->prof_cap; i++)
                if (c->prof_ev[i]) cudaEventDestroy(c->prof_ev[i]);
        free(c->prof_ev);
        free(c->prof_lab);
        if (c->stream) cudaStreamDestroy(c->stream);
        pthread_mutex_destroy(&c->mu);
        free(c);
    }
    free(b);
}

extern "C" void backend_cuda_set_exact_gemm(Backend *b, int on) { cctx(b)->exact_gemm = on != 0; }
extern "C" void backend_cuda_gelu_bf16(Backend *b, uint16_t *y, size_t n) {
    CudaCtx *c = cctx(b);
    DS_ASSERT(n % 8 == 0 && ((uintptr_t)y & 15) == 0);
    const unsigned blocks = cdiv(n / 8, 256), cap = (unsigned)c->n_sm * 8;
    gelu_bf16_tab_k<<<dim3(blocks < cap ? blocks ? blocks : 1 : cap), 256, 0, c->stream>>>(y, n / 8);
    CU_LAUNCHED();
}
extern "C" void backend_cuda_bf16_io_counts(const Backend *b, long *direct, long *staged) {
    const CudaCtx *c = (const CudaCtx *)b->ctx;
    *direct = c->io_direct;
    *staged = c->io_staged;
}
extern "C" const char *backend_cuda_device_name(const Backend *b) { return ((CudaCtx *)b->ctx)->name; }
extern "C" int backend_cuda_sm_count(const Backend *b) { return ((CudaCtx *)b->ctx)->n_sm; }
extern "C" int backend_cuda_compute_capability(const Backend *b) { return ((CudaCtx *)b->ctx)->cc; }
extern "C" void backend_cuda_mem_info(const Backend *b, size_t *used, size_t *total) {
    size_t f = 0, t = 0;
    CU_CHECK(cudaSetDevice(((CudaCtx *)b->ctx)->device));
    CU_CHECK(cudaMemGetInfo(&f, &t));
    *used = t - f;
    *total = t;
}

extern "C" size_t backend_cuda_context_used(const Backend *b) { return ((CudaCtx *)b->ctx)->base_used; }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

extern "C" double backend_cuda_time(Backend *b, void (*fn)(void *), void *arg, int reps) {
    CudaCtx *c = cctx(b);
    cudaEvent_t e0, e1;
    CU_CHECK(cudaEventCreate(&e0));
    CU_CHECK(cudaEventCreate(&e1));
    fn(arg);
    CU_CHECK(cudaEventRecord(e0, c->stream));
    for (int i = 0; i < reps; i++) fn(arg);
    CU_CHECK(cudaEventRecord(e1, c->stream));
    CU_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CU_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms * 1e-3 / (reps > 0 ? reps : 1);
}

__global__ void fill_rand_bf16_k(uint16_t *p, size_t n, uint32_t seed) {
    GRID_STRIDE(i, n) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = f2bf(((h & 0xffff) / 32768.f - 1.f));
    }
}

extern "C" int backend_cuda_gemm_ceiling(Backend *b, int n, int reps, double *tflops) {
    CudaCtx *c = cctx(b);
    size_t el = (size_t)n * n;
    uint16_t *A = (uint16_t *)cu_alloc(b, el * 2), *B = (uint16_t *)cu_alloc(b, el * 2),
             *C = (uint16_t *)cu_alloc(b, el * 2);
    if (!A || !B || !C) {
        cu_free(b, A), cu_free(b, B), cu_free(b, C);
        return -1;
    }
    fill_rand_bf16_k<<<grid_for(el), 256, 0, c->stream>>>(A, el, 1);
    fill_rand_bf16_k<<<grid_for(el), 256, 0, c->stream>>>(B, el, 2);
    CU_LAUNCHED();
    const float one = 1.f, zero = 0.f;
    double *t = (double *)calloc(reps, sizeof *t);
    cudaEvent_t e0, e1;
    CU_CHECK(cudaEventCreate(&e0));
    CU_CHECK(cudaEventCreate(&e1));
    for (int i = -2; i < reps; i++) {
        CU_CHECK(cudaEventRecord(e0, c->stream));
        CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, A, CUDA_R_16BF, n, B, CUDA_R_16BF,
                                  n, &zero, C, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        CU_CHECK(cudaEventRecord(e1, c->stream));
        CU_CHECK(cudaEventSynchronize(e1));
        float ms;
        CU_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 0) t[i] = ms * 1e-3;
    }
    qsort(t, reps, sizeof *t, cmp_double);
    *tflops = 2.0 * n * (double)n * n / t[reps / 2] * 1e-12;
    free(t);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cu_free(b, A), cu_free(b, B), cu_free(b, C);
    cu_sync(b);
    return 0;
}

extern "C" int backend_cuda_copy_ceiling(Backend *b, size_t bytes, int reps, double *gbps) {
    CudaCtx *c = cctx(b);
    void *A = cu_alloc(b, bytes), *B = cu_alloc(b, bytes);
    if (!A || !B) {
        cu_free(b, A), cu_free(b, B);
        return -1;
    }
    CU_CHECK(cudaMemsetAsync(A, 1, bytes, c->stream));
    double *t = (double *)calloc(reps, sizeof *t);
    cudaEvent_t e0, e1;
    CU_CHECK(cudaEventCreate(&e0));
    CU_CHECK(cudaEventCreate(&e1));
    for (int i = -2; i < reps; i++) {
        CU_CHECK(cudaEventRecord(e0, c->stream));
        CU_CHECK(cudaMemcpyAsync(B, A, bytes, cudaMemcpyDeviceToDevice, c->stream));
        CU_CHECK(cudaEventRecord(e1, c->stream));
        CU_CHECK(cudaEventSynchronize(e1));
        float ms;
        CU_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 0) t[i] = ms * 1e-3;
    }
    qsort(t, reps, sizeof *t, cmp_double);
    *gbps = 2.0 * bytes / t[reps / 2] * 1e-9;
    free(t);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cu_free(b, A), cu_free(b, B);
    cu_sync(b);
    return 0;
}

extern "C" int backend_cuda_built(void) { return 1; }
