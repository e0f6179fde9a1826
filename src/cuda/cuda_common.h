/* cuda_common.h: what the CUDA backend's .cu files share: the context behind Backend.ctx, error checks, bf16 bit
 * helpers and the entry points each file provides to the table in backend_cuda.cu. Included only by .cu files.
 * Errors: a failed CUDA or cuBLAS call inside an op is a broken invariant (sticky device error) and aborts with
 * file:line; allocation failures are not (alloc returns NULL). */
#ifndef DSOCR_CUDA_COMMON_H
#define DSOCR_CUDA_COMMON_H

#ifndef _Noreturn
#define _Noreturn [[noreturn]] /* util.h is C17; this is its C++ spelling */
#endif
extern "C" {
#include "backend.h"
#include "prof.h"
#include "cuda/backend_cuda.h"
}
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdint.h>

[[noreturn]] void cuda_fatal(const char *file, int line, const char *what, const char *why);
#define CU_CHECK(x)                                                                                           \
    do {                                                                                                      \
        cudaError_t err_ = (x);                                                                               \
        if (err_ != cudaSuccess) cuda_fatal(__FILE__, __LINE__, #x, cudaGetErrorString(err_));               \
    } while (0)
#define CU_LAUNCHED() CU_CHECK(cudaGetLastError())
#define CUBLAS_CHECK(x)                                                                                       \
    do {                                                                                                      \
        cublasStatus_t st_ = (x);                                                                             \
        if (st_ != CUBLAS_STATUS_SUCCESS) cuda_fatal(__FILE__, __LINE__, #x, cublasGetStatusString(st_));    \
    } while (0)

typedef struct CudaAlloc {
    void *p;
    size_t bytes;
} CudaAlloc;

typedef struct CudaCtx CudaCtx;
/* The expert staging buffer of at least min and up to want bytes, within the budget (stage_get in
 * backend_cuda.cu); NULL when not even min fits. */
void *cu_stage_get(CudaCtx *c, size_t want, size_t min, size_t *got);
typedef struct CudaCtx {
    int device, cc, n_sm, smem_optin;
    char name[256];
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t blaslt; /* the bf16-output products (linear with BE_OUT_BF16) */
    struct LtPlan *lt_plans; /* [LT_PLANS] their cached descriptors and algorithms (backend_cuda.cu) */
    int lt_next;             /* the plan slot taken next when all are used */
    long io_direct, io_staged; /* backend_cuda_bf16_io_counts */
    pthread_mutex_t mu;     /* guards the allocation table and counters */
    CudaAlloc *allocs;      /* open-addressing table keyed by pointer */
    size_t alloc_cap, alloc_n, allocated, peak;
    uint16_t *xb;           /* [xb_elems] bf16 (fp16 with gemm_f16) activations for tensor-core GEMMs */
    uint16_t *wq;           /* [wq_elems] a weight's columns as bf16 / fp16 for a many-row product: block-quantised
                               weights dequantised, or (gemm_f16) bf16 weights converted */
    size_t wq_elems;
    size_t xb_elems;
    float *part;            /* [part_floats] attention_kv split partials; also linear's fp32 staging of bf16
                               rows (BE_IN_BF16 / BE_OUT_BF16 off the bf16 cuBLASLt path), within one op */
    size_t part_floats;
    int *kv_count;          /* [1024] zeroed counters for attention_kv's split merge */
    void *blas_ws;          /* [BLAS_WS_BYTES] cuBLAS workspace (cuBLASLt's too) */
    int *moe_count;         /* [2] zeroed counters: route1_k's blocks done, its router blocks done (kv_count's
                             * allocation, after it) */
    float *amax_v;          /* argmax: per-block candidates, and a zeroed counter after amax_i's */
    int *amax_i, *amax_count;
    int exact_gemm;
    int no_q8_rows;         /* DSOCR_NO_Q8_ROWS=1: a decode batch's Q8_0 lm_head by dequantised chunks, not
                             * cu_linear_q8_rows */
    int pdl;                /* programmatic dependent launch for the decode-path kernels (sm_90+, not DSOCR_NO_PDL) */
    int gemm_f16;           /* backend.h set_gemm_f16: fp16 inputs to the tensor-core products (wins over exact_gemm) */
    size_t base_used;       /* the driver's used bytes right after context creation (before any allocation) */
    size_t budget;          /* backend_cuda_set_budget: cu_alloc refuses past it (0: no limit) */
    /* host memory (pinned when it can be) for the hybrid MoE's rows and the host-table embedding lookups, grown
     * to the largest call (at most the decoder's chunk of rows), and the event the hybrid MoE waits on */
    float *host_buf;
    size_t host_floats;
    cudaEvent_t hyb_ev;
    /* the hybrid MoE's expert staging (moe_stream): a cache of device memory that holds a layer's routed experts
     * while many rows go through them on the GPU. It is not counted in allocated (the engine's admission) and
     * cu_alloc drops it when an allocation would pass the budget, so it never keeps anything else out. */
    void *stage;
    size_t stage_bytes;
    /* profiling (DSOCR_PROFILE=1): events recorded at marks; their gaps summed per label */
    int prof;
    cudaEvent_t *prof_ev;
    const char **prof_lab;  /* label of the section each event starts */
    int prof_n, prof_cap;
    const char *prof_last;  /* the label of the last mark (moe_mark names its parts after it) */
    ProfTable prof_tab;
} CudaCtx;

static inline CudaCtx *cctx(Backend *b) { return (CudaCtx *)b->ctx; }

/* Programmatic dependent launch (sm_90+). A kernel launched by launch_pdl may start while the kernel before it in
 * the stream is still finishing (its launch and block scheduling overlap that kernel's tail, which matters for the
 * decode step's ~130 short kernels). Such a kernel must call pdl_wait() before it reads or writes any memory: the
 * wait returns once the previous kernel has completed and its writes are visible; it then lets the next kernel
 * launch. On older cards, or launched normally, pdl_wait() does nothing. */
static __device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
template <typename... P, typename... A>
static void launch_pdl(const CudaCtx *c, void (*k)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = c->stream;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = c->pdl ? 1 : 0;
    CU_CHECK(cudaLaunchKernelEx(&cfg, k, ((P)args)...));
}

/* Widening and rounding on raw bits (no bf16 arithmetic: sm_75 has none). */
static __device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
static __device__ __forceinline__ uint16_t f2bf(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static __device__ __forceinline__ float rbf(float f) { return bf2f(f2bf(f)); }
/* Two floats to a bf16 pair, round to nearest even (one cvt on sm_80+, where this kernel runs; f2bf's result for
 * every finite value) */
static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (uint32_t)f2bf(lo) | ((uint32_t)f2bf(hi) << 16);
#endif
}
static __device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

/* 16 bytes global -> shared, asynchronously; zero-filled (nothing read) when !ok */
static __device__ __forceinline__ void cp16(void *dst, const void *src, bool ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 16 : 0));
#else
    __trap();
#endif
}
static __device__ __forceinline__ void cp_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
static __device__ __forceinline__ void cp_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}
/* float to fp16 bits, round to nearest even, saturating: beyond ±65504 gives ±65504 (never inf); NaN stays NaN.
 * (A conversion instruction every target has; no half arithmetic.) */
static __device__ __forceinline__ uint16_t f2h_sat(float f) {
    if (fabsf(f) > 65504.f) f = copysignf(65504.f, f); /* false for NaN */
    return __half_as_ushort(__float2half_rn(f));
}
/* fp16 bits to float (no half arithmetic needed: sm_75 has it, but this keeps to integer and fp32 ops) */
static __device__ __forceinline__ float h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 0x3ffu;
    if (e == 0) return __uint_as_float(s) + (s ? -1.f : 1.f) * (float)m * 5.9604644775390625e-8f; /* subnormal */
    if (e == 31) return __uint_as_float(s | 0x7f800000u | (m << 13));
    return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
}
/* Q8_0 / Q4_0 blocks (src/quant.h): 34 / 18 bytes for 32 weights, the fp16 scale first */
enum { QB8 = 34, QB4 = 18 };
/* Element i of a weight of dtype dt (DS_BF16, DS_F32, or a block type: rows are whole blocks, so the flat index
 * names block i / 32, element i % 32). */
static __device__ __forceinline__ float wget(const void *w, int dt, size_t i) {
    if (dt == DS_BF16) return bf2f(((const uint16_t *)w)[i]);
    if (dt == DS_F32) return ((const float *)w)[i];
    const uint8_t *b = (const uint8_t *)w + (i / 32) * (dt == DS_Q8_0 ? QB8 : QB4);
    const float d = h2f((uint16_t)(b[0] | (b[1] << 8)));
    const int j = (int)(i % 32);
    if (dt == DS_Q8_0) return d * (float)(int8_t)b[2 + j];
    const int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
    return d * (float)(q - 8);
}
static __host__ __device__ inline int is_block(int dt) { return dt == DS_Q8_0 || dt == DS_Q4_0; }
/* x[0..8) · the 8 bf16 weights of q (one 16-byte piece of a bf16 row), summed as every bf16 GEMV here sums them */
static __device__ __forceinline__ float bf16x8_dot(uint4 q, const float *x) {
    const float4 u = ((const float4 *)x)[0], v = ((const float4 *)x)[1];
    return u.x * __uint_as_float(q.x << 16) + u.y * __uint_as_float(q.x & 0xffff0000u) +
           u.z * __uint_as_float(q.y << 16) + u.w * __uint_as_float(q.y & 0xffff0000u) +
           v.x * __uint_as_float(q.z << 16) + v.y * __uint_as_float(q.z & 0xffff0000u) +
           v.z * __uint_as_float(q.w << 16) + v.w * __uint_as_float(q.w & 0xffff0000u);
}
/* A decode kernel's weights do not depend on the kernel before it, so a lane can load its share of a bf16 row
 * (pieces lane, lane + 32, ..., at most PRE_U) into registers before pdl_wait(): the row's DRAM round trip then
 * overlaps the previous kernel's tail instead of following it. */
enum { PRE_U = 8 };
static __device__ __forceinline__ void pre_load(uint4 (&q)[PRE_U], const void *row, int n8, int lane) {
#pragma unroll
    for (int i = 0; i < PRE_U; i++)
        if (lane + 32 * i < n8) q[i] = __ldg((const uint4 *)row + lane + 32 * i);
}
/* acc += this lane's share of x · the row pre_load loaded (its pieces in order, as the bf16 GEMV loops sum them);
 * pre_dot2: two rows against the same x, in one loop (a gate and an up row) */
static __device__ __forceinline__ void pre_dot(float &acc, const uint4 (&q)[PRE_U], const float *x, int n8, int lane) {
#pragma unroll
    for (int i = 0; i < PRE_U; i++)
        if (lane + 32 * i < n8) acc += bf16x8_dot(q[i], x + 8 * (lane + 32 * i));
}
static __device__ __forceinline__ void pre_dot2(float &a, float &b, const uint4 (&qa)[PRE_U], const uint4 (&qb)[PRE_U],
                                                const float *x, int n8, int lane) {
#pragma unroll
    for (int i = 0; i < PRE_U; i++)
        if (lane + 32 * i < n8) {
            a += bf16x8_dot(qa[i], x + 8 * (lane + 32 * i));
            b += bf16x8_dot(qb[i], x + 8 * (lane + 32 * i));
        }
}
/* One layer of the block-laid KV cache (backend.h KvCache) as the kernels that write it take it. */
struct KvDst {
    void *data;
    int bf16, L, width, bs, layer, n_blocks;
};
static inline KvDst kv_dst(const KvCache *kv, int layer) {
    KvDst d = {kv->data, kv->dtype == DS_BF16, kv->n_layers, kv->width, kv->block_size, layer, kv->n_blocks};
    return d;
}
/* Column c of the k (is_v 0) or v row at position p, in block blk of the pool */
static __device__ __forceinline__ void kv_store(const KvDst &d, int blk, int p, int c, int is_v, float v) {
    const size_t e = ((size_t)(blk * d.L + d.layer) * 2 * d.bs + p % d.bs) * d.width +
                     (is_v ? (size_t)d.bs * d.width : 0) + c;
    if (d.bf16)
        ((uint16_t *)d.data)[e] = f2bf(v);
    else
        ((float *)d.data)[e] = v;
}
/* kv_store at position p through the sequence's block table; nothing where the position's block is outside the
 * pool (the host checks positions; never write outside) */
static __device__ __forceinline__ void kv_put(const KvDst &d, const int32_t *table, int p, int c, int is_v, float v) {
    const int blk = p >= 0 ? table[p / d.bs] : -1;
    if (blk < 0 || blk >= d.n_blocks) return;
    kv_store(d, blk, p, c, is_v, v);
}
static __host__ __device__ inline size_t wrow_bytes(int dt, int K) {
    return dt == DS_Q8_0 ? (size_t)K / 32 * QB8 : dt == DS_Q4_0 ? (size_t)K / 32 * QB4 : (size_t)K * (dt == DS_BF16 ? 2 : 4);
}
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
/* The sum of v over the block (every thread gets it); sh: [32] shared floats. A fixed order: warp sums, then the
 * warps' partials in warp order. */
static __device__ float block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float t = 0.f;
    for (int i = 0; i < nw; i++) t += sh[i];
    return t;
}
static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* cu_gemv's epilogue, shared by its kernels: output y[m, n] at o gets v + bias[n] (when given), plus what it held
 * (accum), rounded to bf16 (round) */
static __device__ __forceinline__ void gemv_store(float *o, float v, const void *bias, int bdt, int n, int accum,
                                                  int round) {
    if (bias) v += wget(bias, bdt, n);
    if (accum) v += *o;
    if (round) v = rbf(v);
    *o = v;
}
/* a warp's R row sums (rows m0 .. m0 + nr − 1 of one output column n) reduced, lane r storing row r */
template <int R>
static __device__ __forceinline__ void gemv_rows_store(float *acc, int nr, int lane, float *y, int ldy, int m0, int n,
                                                       const void *bias, int bdt, int accum, int round) {
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
    if (lane < nr) {
        float v = 0.f;
#pragma unroll
        for (int r = 0; r < R; r++)
            if (r == lane) v = acc[r];
        gemv_store(y + (size_t)(m0 + lane) * ldy + n, v, bias, bdt, n, accum, round);
    }
}

static inline unsigned cdiv(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

/* backend_cuda.cu */
void cu_linear(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias,
               int flags);
/* y [M, N] = x [M, K] · wᵀ (rounded to bf16 when round) on a Q8_0 weight by the tensor cores, the blocks read as
 * stored (quant_cuda.cu); x of bf16 values. false, with nothing launched, where the card (sm_80+) or the shapes
 * (K % 32, N % 16, ldx % 4, ldy % 2, x 16-byte and y 8-byte aligned) do not fit it. */
bool cu_linear_q8_rows(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, int N, const void *w,
                       int round);
/* The GEMV path (fp32 arithmetic, weights read once per 8 rows) for any M; optional row gathers. */
void cu_gemv(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags,
             int round_bf16);
void cu_round_bf16(Backend *b, float *x, size_t n);
/* ctx's host_buf with room for n floats (grown, never shrunk) */
float *cu_host_scratch(Backend *b, size_t n);
void cu_swiglu(Backend *b, float *y, const float *x, int n, int D, int F, DsW gate, DsW up, DsW down, int flags,
               float *scratch);
/* attention_cuda.cu */
void cu_attention(Backend *b, const OpsAttention *a);
int cu_attention_bf16(Backend *b, const OpsAttention *a); /* attention_mma.cu: whether cu_attention_mma takes a with io_bf16 */
/* attention_mma.cu: the tensor-core flash kernel; false when it does not apply (then the SIMT kernels run). */
bool cu_attention_mma(Backend *b, const OpsAttention *a);
void cu_attention_kv(Backend *b, const OpsAttentionKv *a);
void cu_kv_write(Backend *b, KvCache *kv, int layer, const int32_t *table_host, int pos0, int n, const float *k,
                 int ldk, const float *v, int ldv);
void cu_kv_write_dev(Backend *b, KvCache *kv, int layer, const int32_t *const *tables, const int32_t *seq,
                     const int32_t *pos, int n,
                     const float *k, int ldk, const float *v, int ldv);
/* moe_cuda.cu */
void cu_add_rmsnorm(Backend *b, float *y, float *x, const float *r, int M, int n, DsW w, float eps, int flags);
void cu_add_rmsnorm_moe(Backend *b, float *y, float *a, float *x, const float *r, int n, DsW norm, float eps,
                        const BackendMoe *m, int flags, float *router_logits, int32_t *experts, float *scratch);
void cu_moe(Backend *b, float *y, const float *x, int n, const BackendMoe *m, int flags, float *router_logits,
            int32_t *experts, float *scratch);
size_t cu_moe_scratch_floats(int n, const BackendMoe *m);
/* The SwiGLU block for one row with bf16 weights in two kernels (the single-token MoE's); false when it does
 * not apply. scratch: F floats. */
bool cu_swiglu1(Backend *b, float *y, const float *x, int D, int F, DsW gate, DsW up, DsW down, int flags,
                float *scratch);

#endif
