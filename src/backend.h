/* backend.h: the table of operations the model code (vision.c, decoder.c, engine.c) runs on, so that the model
 * is written once for the CPU and CUDA backends. Every pointer an op takes is in the backend's memory space
 * (host memory for the CPU backend, device memory for CUDA), weights included: a model placed on a backend
 * holds DsW whose data are the backend's copies (the CPU backend uses the checkpoint's mmap directly).
 *
 * Ops have the semantics of the ops.h functions of the same name (shapes, strides, flags, rounding) and run in
 * order on the backend's stream; only download (and sync) waits for them. The unit is the block where fusion pays:
 * a whole MoE layer and a whole dense MLP are one op each, so a GPU backend keeps the router's choice on the
 * device. Small data-movement ops (window partition, row gathers) exist so that the model code never touches
 * activations directly.
 *
 * What it is not: no allocation policy (session code sizes buffers once), no model knowledge beyond the MoE
 * layer's weights. */
#ifndef DSOCR_BACKEND_H
#define DSOCR_BACKEND_H

#include <stdlib.h>

#include "ops.h"

typedef struct Backend Backend;

/* linear flags: BE_ROUND rounds the output to bf16; BE_GELU / BE_QGELU then apply gelu / quick_gelu to it (and
 * round again with BE_ROUND), as linear, [round_bf16], gelu, [round_bf16] (see linear).
 * Storage flags (only on a backend whose act_bf16 is nonzero): BE_IN_BF16: linear's x holds bf16 values (uint16_t
 * bits, ldx in elements) instead of floats; BE_OUT_BF16: linear's or layernorm's y receives bf16 values (ldy in
 * elements), only with BE_ROUND (the values are bf16 then, so the narrower storage loses nothing) and never with
 * OPS_ACCUM. The arithmetic is that of the same call with fp32 buffers holding the same values. (ops.h flags use
 * the low bits: OPS_ACCUM, OPS_BF16 = 1.) */
enum { BE_ROUND = 1 << 8, BE_GELU = 1 << 9, BE_QGELU = 1 << 10, BE_IN_BF16 = 1 << 11, BE_OUT_BF16 = 1 << 12 };
/* BE_FP32_SUMS (linear, and swiglu / moe, which pass it to their products): the sums of a product of many rows in
 * fp32 with round-to-nearest, as the CPU computes them (up to their order), not on tensor cores, whose
 * accumulation inside a matrix instruction truncates. The decoder sets it: on the H100 those sums doubled the GPU
 * decoder's distance from the CPU engine, past the parity rule at the logits (bench/results/gpu-vs-cpu-*.json).
 * A backend whose sums are fp32 already ignores it. */
enum { BE_FP32_SUMS = 1 << 13 };

/* One MoE layer's weights, in the backend's memory (see model.h DecLayer). */
typedef struct BackendExpert {
    DsW gate, up, down; /* [F, D], [F, D], [D, F] */
} BackendExpert;

typedef struct BackendMoe {
    DsW router;                  /* [E, D] */
    const BackendExpert *experts; /* [E] host array of device weight handles */
    BackendExpert shared;        /* gate.data NULL when there are no shared experts */
    int n_experts, top_k, d_model, d_ff, d_shared;
    /* 1: the routed experts' weights are in host memory (plan.h hybrid): a GPU backend computes them on the CPU
     * (backend_cpu_moe_routed) while it runs the router and the shared experts itself */
    int experts_host;
} BackendMoe;

struct Backend {
    const char *name; /* "cpu", "cuda" */
    void *ctx;        /* the backend's own state (streams, handles, scratch) */
    /* Nonzero when linear and layernorm take the storage flags BE_IN_BF16 / BE_OUT_BF16 (bf16 activations in
     * backend memory: half the traffic where every value is bf16 anyway) and they pay. CUDA: 1, and 0 while
     * set_gemm_f16 is on (its products read floats: bf16 storage would only add conversions; the flags still work);
     * the CPU backends: 0 (model code then keeps every activation in fp32). Read it when issuing the ops. */
    int act_bf16;

    /* ---- memory (sizes in bytes). alloc returns NULL when the memory is not there (never aborts). */
    void *(*alloc)(Backend *b, size_t bytes);
    void (*free)(Backend *b, void *p);
    void (*upload)(Backend *b, void *dst, const void *host_src, size_t bytes);
    void (*download)(Backend *b, void *host_dst, const void *src, size_t bytes); /* waits for queued work */
    void (*copy)(Backend *b, void *dst, const void *src, size_t bytes);          /* within the backend */
    void (*memset0)(Backend *b, void *dst, size_t bytes);
    void (*sync)(Backend *b);
    /* Host memory that uploads read fastest from (CUDA: pinned); NULL members = use malloc/free. */
    void *(*host_alloc)(Backend *b, size_t bytes);
    void (*host_free)(Backend *b, void *p);
    /* Bytes currently allocated through alloc, and the peak. */
    size_t (*allocated)(const Backend *b);
    size_t (*peak)(const Backend *b);

    /* ---- dense ops (ops.h semantics) */
    /* flags: OPS_ACCUM (ops.h), and BE_ROUND: the result (after bias and accumulation) rounded to bf16, as
     * linear followed by round_bf16 over the M × N outputs; BE_GELU / BE_QGELU: then the activation over them (and
     * round_bf16 again with BE_ROUND); BE_IN_BF16 / BE_OUT_BF16 (act_bf16 backends): x / y in bf16 storage, the
     * pointers cast to float * (see the flags) */
    void (*linear)(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias,
                   int flags);
    /* linear with w (and bias) in host memory (plan.h hybrid+head: lm_head): x's rows go to the host, the CPU
     * backend computes, y comes back. NULL on backends whose memory is the host's. */
    void (*linear_host)(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N,
                        DsW bias, int flags);
    /* flags & OPS_BF16: the HF autocast LayerNorm2d rule (spec §16 R4): the mean is rounded to bf16, x − mean is
     * rounded to bf16, the variance and the output stay fp32. Without it, ops_layernorm semantics. flags & BE_ROUND:
     * the output then rounded to bf16 (as layernorm followed by round_bf16); with BE_OUT_BF16 as well (act_bf16
     * backends), y is bf16 storage (ldy in elements). */
    void (*layernorm)(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW bias,
                      float eps, int flags);
    void (*rmsnorm)(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, float eps,
                    int flags);
    /* The residual step and the next norm in one: x[M, n] = x + r (rounded to bf16 when flags & OPS_BF16, as add
     * then round_bf16), then y[M, n] = rmsnorm(x) (rows contiguous, ld = n). */
    void (*add_rmsnorm)(Backend *b, float *y, float *x, const float *r, int M, int n, DsW w, float eps, int flags);
    void (*gelu)(Backend *b, float *out, const float *x, size_t n);
    void (*quick_gelu)(Backend *b, float *out, const float *x, size_t n);
    void (*add)(Backend *b, float *out, const float *a, const float *c, size_t n);
    void (*round_bf16)(Backend *b, float *x, size_t n);
    /* The residual step of an act_bf16 backend (NULL elsewhere): x[0..n) += r, r floats or (flags & BE_IN_BF16)
     * bf16 storage, then rounded to bf16 with flags & BE_ROUND (as add then round_bf16). */
    void (*residual_add)(Backend *b, float *x, const void *r, size_t n, int flags);
    /* The residual step and the LayerNorm after it in one pass, into bf16 storage (act_bf16 backends, NULL
     * elsewhere; rows of n <= 1,024): when r is non-NULL, x [M, n] += r (bf16 storage, rows of n), rounded to bf16
     * when (flags & BE_ROUND), as residual_add; then y = layernorm(x) rounded to bf16, in bf16 storage, as
     * layernorm with BE_ROUND | BE_OUT_BF16. ws 0: y's rows are x's (row stride n); ws > 0: x is a g × g map
     * (M = g·g) and y its ws × ws windows as window_partition lays them out (nw·nw·ws·ws rows, zero rows where a
     * window passes the edge). */
    void (*residual_layernorm)(Backend *b, void *y, float *x, const void *r, int M, int n, int g, int ws, DsW w,
                               DsW bias, float eps, int flags);
    void (*attention)(Backend *b, const OpsAttention *a);     /* pointers inside a are backend memory */
    /* Nonzero when attention runs a with io_bf16 (q, k, v, out in bf16 storage; the other fields as given). NULL
     * (the CPU) or 0: keep those buffers fp32. */
    int (*attention_bf16)(Backend *b, const OpsAttention *a);
    void (*attention_kv)(Backend *b, const OpsAttentionKv *a); /* pos/seq/tables: backend memory too */
    void (*kv_write)(Backend *b, KvCache *kv, int layer, const int32_t *table_host, int pos0, int n, const float *k,
                     int ldk, const float *v, int ldv);         /* table on the host; kv->data backend memory */
    void (*rope_neox)(Backend *b, float *x, int ld, int T, int n_heads, int head_dim, const int32_t *pos,
                      float theta, int flags);                  /* pos: backend memory */
    void (*conv2d)(Backend *b, float *y, const float *x, const OpsConv2d *c, DsW w, DsW bias, float *scratch,
                   size_t scratch_n);

    /* ---- blocks */
    /* y[n, D] = down(SiLU(gate(x)) ⊙ up(x)) (the dense MLP and the shared experts); scratch: 2·n·F floats. */
    void (*swiglu)(Backend *b, float *y, const float *x, int n, int D, int F, DsW gate, DsW up, DsW down, int flags,
                   float *scratch);
    /* y[n, D] = Σ_top-k w·Expert(x) + Shared(x) for one MoE layer (spec §7.5; flags & OPS_BF16: router logits and
     * outputs rounded as the reference). router_logits / experts: when non-NULL, backend buffers [n, E] / [n, k]
     * that receive the router logits (rounded in bf16 mode) and chosen experts (for dumps). scratch: the floats
     * moe_scratch_floats(n, m) says. */
    void (*moe)(Backend *b, float *y, const float *x, int n, const BackendMoe *m, int flags, float *router_logits,
                int32_t *experts, float *scratch);
    size_t (*moe_scratch_floats)(int n, const BackendMoe *m);
    /* add_rmsnorm(a, x, r, n, D, norm, eps, flags) then moe(y, a, n, m, ...), as one call so that a backend can
     * fuse them (CUDA: the norm inside the router kernel for one row). NULL: the caller makes the two calls. */
    void (*add_rmsnorm_moe)(Backend *b, float *y, float *a, float *x, const float *r, int n, DsW norm, float eps,
                            const BackendMoe *m, int flags, float *router_logits, int32_t *experts, float *scratch);

    /* ---- data movement (row-major fp32 unless said) */
    /* dst [3, S, S] CHW -> [S, S, 3] HWC */
    void (*chw_to_hwc)(Backend *b, float *dst, const float *src, int S);
    /* SAM windows: src [g, g, C] -> dst [nw·nw·ws·ws, C] (zero rows where the window passes the edge, nw = ⌈g/ws⌉) */
    void (*window_partition)(Backend *b, float *dst, const float *src, int g, int C, int ws);
    /* x [g, g, C] += the in-image rows of win [nw·nw·ws·ws, C] */
    void (*window_unpartition_add)(Backend *b, float *x, const float *win, int g, int C, int ws);
    /* the same with residual_add's flags (win in bf16 storage, the sums rounded); act_bf16 backends only */
    void (*window_unpartition_residual)(Backend *b, float *x, const void *win, int g, int C, int ws, int flags);
    /* dst[r] = widen(table[ids[r]]) for r < n; ids on the host; table [V, D] */
    void (*embed)(Backend *b, float *dst, const int32_t *ids_host, int n, DsW table, int D);
    /* dst[r] = widen(vec) for r < n rows of width D (image_newline, view_seperator, CLS) */
    void (*fill_rows)(Backend *b, float *dst, int n, DsW vec, int D);
    /* dst [n, wa + wc]: row r = [a[r] (wa) | c[r] (wc)] with row strides lda, ldc */
    void (*concat_cols)(Backend *b, float *dst, const float *a, int lda, int wa, const float *c, int ldc, int wc,
                        int n);
    /* rows [i, n, rows of width w] copied with strides: dst[r·ldd ..] = src[r·lds ..] */
    void (*copy_rows)(Backend *b, float *dst, int ldd, const float *src, int lds, int n, int w);

    /* ---- device-position variants (capturable: nothing about the step is read on the host) */
    /* embed with ids [n] in backend memory */
    void (*embed_dev)(Backend *b, float *dst, const int32_t *ids, int n, DsW table, int D);
    /* kv_write of n rows at positions pos[0..n) (backend memory), row t into the sequence whose block table is
     * tables[seq[t]] (seq NULL: tables[0] for every row; tables a backend array of backend pointers, seq backend
     * memory, as attention_kv's) */
    void (*kv_write_dev)(Backend *b, KvCache *kv, int layer, const int32_t *const *tables, const int32_t *seq,
                         const int32_t *pos, int n, const float *k, int ldk, const float *v, int ldv);
    /* rope_neox(qk, ld, n, 2·n_heads, head_dim, pos, theta, flags) over rows holding the q heads then the k heads,
     * then kv_write_dev(kv, layer, tables, seq, pos, n, qk + n_heads·head_dim, ld, v, ldv), as one call a backend
     * may fuse. NULL: the caller makes the two calls. */
    void (*rope_kv_write_dev)(Backend *b, float *qk, int ld, int n, int n_heads, int head_dim, const int32_t *pos,
                              float theta, int flags, KvCache *kv, int layer, const int32_t *const *tables,
                              const int32_t *seq, const float *v, int ldv);
    /* For ONE row: linear(qkv, 3·n_heads·head_dim, x, D, 1, D, w, 3·n_heads·head_dim, none, lin_flags) of the fused
     * [q; k; v] weights, then rope_kv_write_dev(qkv, 3·n_heads·head_dim, 1, n_heads, head_dim, pos, theta,
     * rope_flags, kv, layer, tables, qkv + 2·n_heads·head_dim, ...), as one call a backend may fuse. Returns 1 when
     * it did both, 0 when it did nothing (the caller then makes the calls). NULL: always the calls. */
    int (*qkv_rope_kv_dev)(Backend *b, float *qkv, const float *x, int D, DsW w, int n_heads, int head_dim,
                           const int32_t *pos, float theta, int lin_flags, int rope_flags, KvCache *kv, int layer,
                           const int32_t *const *tables);

    /* out[0] = the index of the largest of x[0..n) (backend memory; the first one on ties, NaNs skipped, 0 when
     * all are NaN), as ops_argmax. step, when non-NULL: also step[0] = that index and step[1] += 1 (a decode
     * step's input id and position advanced on the device). Capturable. */
    void (*argmax)(Backend *b, int32_t *out, const float *x, int n, int32_t *step);
    /* out[r] = argmax of row r of x (rows of n at stride ld floats), r < rows, each as argmax (one launch on a GPU:
     * a batch's step) */
    void (*argmax_rows)(Backend *b, int32_t *out, const float *x, size_t ld, int rows, int n);
    /* x[idx[i]] = −inf for i < n (idx in backend memory): a batch's n-gram bans applied on the device */
    void (*mask_ids)(Backend *b, float *x, const int32_t *idx, int n);

    /* ---- profiling (optional, NULL when the backend has none): mark starts a section named label (a string
     * literal); the time until the next mark is added to label's total. Only active when the backend was
     * created with profiling on (DSOCR_PROFILE=1; CUDA: device time between events, CPU: wall time between marks,
     * its ops being synchronous; src/prof.h); profile_report prints the totals (milliseconds, calls)
     * to f in descending order and clears them. */
    void (*mark)(Backend *b, const char *label);
    void (*profile_report)(Backend *b, void *file);

    /* ---- inputs of the tensor-core products (optional, NULL on backends without them: the CPU). on != 0: from
     * now on, linear's many-row products (and the ops built on it: conv2d, swiglu) take fp16 inputs: activations
     * and weights converted to fp16 with saturation to ±65504 (never inf; NaN stays NaN), fp32 accumulation and
     * output; fp32 weights keep the fp32 product; attention uses no bf16 tensor-core kernel. on == 0 (the
     * default): bf16 inputs. For cards without bf16 arithmetic (sm_75), and to exercise their path on newer
     * ones. Ops already queued or recorded (graph_*) keep the mode they were issued with. */
    void (*set_gemm_f16)(Backend *b, int on);

    /* ---- replay of a recorded op sequence (CUDA graphs). NULL on backends without it (the CPU): callers then
     * run the ops directly. Between graph_begin and graph_end, ops are recorded, not run (no download or sync in
     * between); graph_end returns a replayable handle, or NULL when recording failed (then nothing ran: run the
     * ops directly). A recording keeps every pointer and scalar it saw: only the contents of buffers may change
     * between replays. graph_begin returns 0 when recording started. */
    int (*graph_begin)(Backend *b);
    void *(*graph_end)(Backend *b);
    void (*graph_launch)(Backend *b, void *graph);
    void (*graph_free)(Backend *b, void *graph);
};

static inline void *be_host_alloc(Backend *b, size_t bytes) {
    return b->host_alloc ? b->host_alloc(b, bytes) : malloc(bytes);
}
static inline void be_host_free(Backend *b, void *p) {
    if (b->host_free)
        b->host_free(b, p);
    else
        free(p);
}

/* Starts a profiling section (backend.h mark) when the backend has profiling. */
static inline void be_mark(Backend *b, const char *label) {
    if (b->mark) b->mark(b, label);
}

/* The CPU backend (src/cpu/backend_cpu.c): host memory, the ops_*_cpu functions. Never NULL. */
Backend *backend_cpu(void);
/* The routed part of the CPU backend's moe for experts in host memory (the CUDA backend's hybrid MoE): acc [n, D]
 * = Σ_j wts[r, j]·Expert_idx[r, j](x_r) over host rows x [n, D], rounded in bf16 mode (flags OPS_BF16); scratch:
 * backend_cpu_moe_routed_scratch(n, m) floats. */
size_t backend_cpu_moe_routed_scratch(int n, const BackendMoe *m);
void backend_cpu_moe_routed(float *acc, const float *x, int n, const int32_t *idx, const float *wts,
                            const BackendMoe *m, int flags, float *scratch);

/* The CPU backend with the scalar _ref ops' arithmetic (double accumulation): slow, for testing how far two
 * correct summation orders drift apart (DSOCR_BACKEND=cpu-ref selects it in dsocr_model_load). */
Backend *backend_cpu_ref(void);

/* The CUDA backend (src/cuda/, built when nvcc is found): NULL with a message when no usable GPU is there
 * (or the build has no CUDA). device: the CUDA device index. */
Backend *backend_cuda_new(int device, DsError *e);
void backend_cuda_free(Backend *b);
/* 1 when this build has the CUDA backend compiled in (src/cuda/), 0 otherwise (src/nocuda/cuda_stub.c). */
int backend_cuda_built(void);

#endif
