/* ops.h: the CPU operations the model is built from.
 *
 * Every op has two implementations with the same signature:
 *   ops_X_ref   scalar, simple, obviously right: the specification (src/cpu/ops_ref.c);
 *   ops_X_cpu   fast: OpenMP threads, SIMD-friendly loops, OpenBLAS sgemm on weight tiles (src/cpu/ops_cpu.c).
 * tests/test_ops.c checks every _cpu op against its _ref on random inputs, odd sizes included.
 *
 * Conventions
 *   - Activations are fp32, row-major. A "row stride" (ld*) is counted in floats and is >= the row width, so
 *     q/k/v may be strided views into one fused qkv buffer.
 *   - Weights stay as stored in the checkpoint (bf16, or f32) and are widened inside the kernels, never converted
 *     wholesale. Linear weights are [N, K] row-major (out, in); Conv2d weights are [O, I, kh, kw].
 *   - Results never depend on the number of threads: work is split over output rows/columns (or independent
 *     heads/query blocks), a reduction is never split across threads, and blockings are fixed constants.
 *   - Nothing here calls malloc except kvcache_new/kvcache_free. Scratch is either a bounded stack tile
 *     (<= 256 KiB per thread, documented per op; layernorm/rmsnorm keep the widened weights, <= 128 KiB, on the
 *     calling thread's stack) or caller-provided with a function telling its size.
 *   - Internal invariants (shapes, dtypes the caller promised) are checked with DS_ASSERT; these ops never see
 *     outside input directly.
 *   - The first _cpu call that uses OpenBLAS sets OpenBLAS to one thread (openblas_set_num_threads(1)): our
 *     OpenMP threads call it on independent tiles, and its own threads would fight ours.
 *
 * Not here: the model (sam.c, clip.c, decoder.c ...), image preprocessing, tokenization. */
#ifndef DSOCR_OPS_H
#define DSOCR_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h" /* DsDtype */
#include "util.h"

/* A weight (or bias) operand: data as stored, and its element type. data == NULL means "absent" (for biases).
 * Supported dtypes: DS_BF16 and DS_F32; a linear weight (ops_linear_*, hence expert_ffn) may also be DS_Q8_0 or
 * DS_Q4_0 (src/quant.h): [N, K] as N rows of K/32 blocks, K a multiple of 32. Element i of a block-type weight is
 * element i % 32 of block i / 32 (rows hold whole blocks), so ds_w_get works on them too. */
typedef struct DsW {
    const void *data;
    DsDtype dtype;
} DsW;

static inline DsW ds_w(const void *data, DsDtype dtype) {
    DsW w = {data, dtype};
    return w;
}
static inline DsW ds_w_none(void) {
    DsW w = {NULL, DS_F32};
    return w;
}
/* Element i of a weight, widened to float (for reference code and small vectors such as norm weights). */
float ds_w_get(DsW w, size_t i);

/* OpenBLAS (Debian's DYNAMIC_ARCH build) picks its kernels when it loads, from the CPUID model. Under some
 * hypervisors the model is generic and it falls back to its "Prescott" (SSE3) kernels, 4-5x slower than this
 * CPU allows; only the OPENBLAS_CORETYPE environment variable, read at load time, changes that.
 * ops_blas_coretype: the core OpenBLAS uses (e.g. "SkylakeX", "Prescott").
 * ops_blas_better_coretype: the OPENBLAS_CORETYPE value this CPU's features allow ("SkylakeX" with AVX-512
 *   F/BW/DQ/VL, "Haswell" with AVX2+FMA) when OpenBLAS chose something weaker and the variable is unset; else
 *   NULL. A program's main may set it and re-exec itself (bench_ops does; so could the CLI). */
const char *ops_blas_coretype(void);

/* The CPU's ceilings for `dsocr bench --device cpu --ceilings`, measured with `threads` threads:
 * ops_cpu_sgemm_seconds: the best of `reps` runs of fp32 C[M, N] = A[M, K]·B[N, K]ᵀ through OpenBLAS's own
 *   threading (set to `threads` for the call, back to one after: the engine runs it single-threaded in its own
 *   threads), operands fresh in memory;
 * ops_cpu_read_gbps: the best of `reps` parallel passes summing a `bytes` array (AVX2 with 8 independent sums
 *   where the CPU has it): the rate a decode step could read its weights at. */
double ops_cpu_sgemm_seconds(int M, int K, int N, int threads, int reps);
double ops_cpu_read_gbps(size_t bytes, int threads, int reps);
const char *ops_blas_better_coretype(void);
/* For a program's main: when ops_blas_better_coretype() names a better core type, sets OPENBLAS_CORETYPE and
 * re-executes the program with the same argv (OpenBLAS reads the variable only when it loads); returns when
 * there is nothing better or the re-exec failed. */
void ops_blas_reexec_if_better(char **argv);

/* ---------------------------------------------------------------------------------------------------------
 * Linear: Y[M, N] = X[M, K] · W[N, K]^T (+ bias[N]) (+ Y if flags & OPS_ACCUM).
 *   x: [M, ldx] (ldx >= K), y: [M, ldy] (ldy >= N), W: [N, K] contiguous, bias: [N] bf16 or f32 or absent.
 *   W may be Q8_0 / Q4_0 (K a multiple of 32): Y = X · dequant(W)^T with fp32 activations (X is never quantised).
 *   y must not overlap x. M may be 0.
 * _cpu: M < 16 uses a direct GEMV on the stored weights (bf16/f32, or on the blocks: int8 / nibbles widened in
 *   registers, one fp32 FMA per weight, scaled once per block; weights read once per 4 rows); larger M widens
 *   (dequantises) 256x256 weight tiles into a stack buffer (256 KiB per thread) and calls sgemm on them.
 *   Summation order inside one output differs from _ref (K is summed in 256-wide tiles, or per 32-block), but
 *   never depends on the thread count. */
enum { OPS_ACCUM = 1 };
void ops_linear_ref(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags);
void ops_linear_cpu(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags);
/* For tests: on != 0 makes ops_linear_cpu's GEMV, and ops_attention_kv_cpu's sums of values, use their portable
 * loops instead of the AVX2 ones (not to be toggled while ops run). */
void ops_cpu_force_scalar(int on);
/* The Q8_0 GEMV's quantised x (ops_cpu.c): rows [0, M) of x (stride ldx, K a multiple of 32) into q [M·K] and
 * s [M·K/32], per block of 32 q = rint(x·2^e) with 2^e the power of two that puts the block's largest magnitude
 * just under 2^15, s = 2^-e. portable != 0: the portable loop (for tests: the AVX2 one gives the same bits). */
void ops_cpu_xq_quantize(int16_t *q, float *s, const float *x, int ldx, int M, int K, int portable);

/* ---------------------------------------------------------------------------------------------------------
 * Norms. x, y: [M, ld] rows of width n; y may equal x (in place). Weights [n] bf16 or f32.
 *
 * layernorm: y = (x − mean) / sqrt(var + eps) · w + b, var biased (mean of squared deviations), b optional.
 *   LayerNorm2d (SAM neck: per spatial position over the channel axis) on HWC data is exactly this op with
 *   M = H·W rows of n = C channels: call ops_layernorm_*(y, C, x, C, H*W, C, w, b, 1e-6f).
 * rmsnorm: y = x · rsqrt(mean(x²) + eps) · w. With flags & OPS_BF16 (the official bf16 rounding points, spec §7.2):
 *   the normalised x is rounded to bf16 before the multiply, and the product is rounded to bf16. */
enum { OPS_BF16 = 1 };
void ops_layernorm_ref(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW b, float eps);
void ops_layernorm_cpu(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW b, float eps);
void ops_rmsnorm_ref(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, float eps, int flags);
void ops_rmsnorm_cpu(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, float eps, int flags);

/* ---------------------------------------------------------------------------------------------------------
 * Elementwise, on n contiguous floats; out may equal the input (in place).
 *   gelu:       exact erf GELU, 0.5·x·(1 + erf(x/√2))           (SAM MLP)
 *   quick_gelu: x·sigmoid(1.702·x)                               (CLIP MLP)
 *   silu_mul:   out = SiLU(g)·u = g/(1+e^−g)·u                   (SwiGLU combine; out may equal g or u)
 *               flags & OPS_BF16: SiLU(g) rounded to bf16, then the product rounded to bf16 (torch bf16 order).
 *   add:        out = a + b;   scale_add: y += s·x;   scale: x *= s
 *   round_bf16: x = bf16(x), round to nearest even (NaN kept). */
void ops_gelu_ref(float *out, const float *x, size_t n);
void ops_gelu_cpu(float *out, const float *x, size_t n);
void ops_quick_gelu_ref(float *out, const float *x, size_t n);
void ops_quick_gelu_cpu(float *out, const float *x, size_t n);
/* y[0..n) holding bf16 values (BE_ROUND's output) = rbf(gelu(y)) (quick: rbf(quick_gelu(y))) by a table over all
 * 2^16 bf16 inputs made with ops_gelu_cpu's / ops_quick_gelu_cpu's own arithmetic: bit for bit those, rounded. */
void ops_act_bf16_table_cpu(float *y, size_t n, int quick);
void ops_silu_mul_ref(float *out, const float *g, const float *u, size_t n, int flags);
void ops_silu_mul_cpu(float *out, const float *g, const float *u, size_t n, int flags);
void ops_add_ref(float *out, const float *a, const float *b, size_t n);
void ops_add_cpu(float *out, const float *a, const float *b, size_t n);
void ops_scale_add_ref(float *y, float s, const float *x, size_t n);
void ops_scale_add_cpu(float *y, float s, const float *x, size_t n);
void ops_round_bf16_ref(float *x, size_t n);
void ops_round_bf16_cpu(float *x, size_t n);
/* rows [M, N] of stride ldy rounded to bf16 in place */
void ops_round_bf16_rows_cpu(float *y, int ldy, int M, int N);

/* Softmax over each of M rows of width n (in place allowed), max-subtracted, fp32. */
void ops_softmax_ref(float *y, int ldy, const float *x, int ldx, int M, int n);
void ops_softmax_cpu(float *y, int ldy, const float *x, int ldx, int M, int n);

/* Index of the largest of x[0..n-1]; the lowest index wins ties; NaNs are never chosen (returns 0 if all NaN or
 * n == 0). */
int ops_argmax(const float *x, int n);

/* ---------------------------------------------------------------------------------------------------------
 * Attention over fp32 q/k/v (SAM, CLIP, decoder prefill without a cache).
 * Per batch b, head h, query i:   out[i] = Σ_j softmax_j(score(i, j)) · v[j]
 *   score(i, j) = scale · (q[i]·k[j]) + bias(i, j)   (+ −inf where causal masks j)
 * Layout: batch b's query rows are rows b·tq .. b·tq+tq−1 of q and out, its key/value rows b·tk .. of k and v;
 *   head h uses columns h·head_dim .. h·head_dim+head_dim−1 of every row (head-major, as the checkpoints' qkv).
 * Causal (causal != 0): query i sees keys 0 .. q_offset + i (decoder prefill: q_offset = 0 when tq == tk).
 * SAM decomposed relative position (relpos_h != NULL): tokens lie on a grid_h × grid_w grid (tq == tk ==
 *   grid_h·grid_w, token t = (t / grid_w, t % grid_w)), and with q UNSCALED
 *     bias((i1,j1), (i2,j2)) = Σ_c q[c]·relpos_h[(i1 − i2) + grid_h − 1][c] + Σ_c q[c]·relpos_w[(j1 − j2) + grid_w − 1][c]
 *   relpos_h: [2·grid_h − 1, head_dim], relpos_w: [2·grid_w − 1, head_dim], fp32 (already resized, spec §5.1),
 *   shared by all heads. The bias is computed on the fly, never as a dense [T, T] array.
 * _ref: two passes with the full score row; _cpu: flash-style streaming softmax over 128-key blocks, 64-query
 *   blocks, sgemm for q·kᵀ and p·v, ~160 KiB of stack per thread; threads split over (batch, head, query block).
 *   (_cpu falls back to _ref for head_dim > 256 or a grid side > 128.) */
typedef struct OpsAttention {
    float *out;                /* [n_batch·tq, ldo] */
    const float *q, *k, *v;    /* [n_batch·tq, ldq], [n_batch·tk, ldk], [n_batch·tk, ldv] */
    int ldo, ldq, ldk, ldv;    /* row strides in floats (>= n_heads·head_dim) */
    int n_batch, tq, tk;       /* independent sequences (e.g. SAM windows), query and key rows per sequence */
    int n_heads, head_dim;
    float scale;               /* usually 1/sqrt(head_dim) */
    int causal, q_offset;      /* causal mask: query i sees keys 0..q_offset+i */
    const float *relpos_h;     /* [2·grid_h−1, head_dim] or NULL */
    const float *relpos_w;     /* [2·grid_w−1, head_dim] (with relpos_h) */
    int grid_h, grid_w;        /* with relpos_h: tq == tk == grid_h·grid_w */
    int bf16_bias;             /* with relpos_h: round each of the two terms, then their sum, to bf16 (the
                                  official bf16 run builds the bias as a bf16 tensor) */
    int io_bf16;               /* q, k, v and out hold bf16 values (uint16_t bits behind the float pointers,
                                  strides in elements; out rounded to bf16): only on a backend whose
                                  attention_bf16 (backend.h) accepts the call; the ops.h functions never take it */
} OpsAttention;
void ops_attention_ref(const OpsAttention *a);
void ops_attention_cpu(const OpsAttention *a);

/* ---------------------------------------------------------------------------------------------------------
 * KV cache in bf16 blocks (spec §10: 60 KiB/token for the full decoder in bf16).
 * A pool of n_blocks blocks; each block holds block_size consecutive token positions of one sequence, for every
 * layer, keys and values:   k(layer, block, slot) = data[((block·n_layers + layer)·2 + 0)·block_size + slot][width]
 *                           v(layer, block, slot) = data[((block·n_layers + layer)·2 + 1)·block_size + slot][width]
 * width = n_heads·head_dim. A sequence owns a block table: int32 physical block ids; position p lives in block
 * table[p / block_size], slot p % block_size. Allocating blocks to sequences is the caller's business (a free
 * list in the session); the cache itself is a plain pool. */
typedef struct KvCache {
    void *data;      /* [n_blocks][n_layers][2][block_size][width] of dtype */
    DsDtype dtype;   /* DS_BF16 (the default) or DS_F32 (the exact yardstick for --precision fp32) */
    int n_layers, width, block_size, n_blocks;
} KvCache;

/* Allocates a bf16 pool (the only malloc in this module); DSOCR_E_NOMEM / DSOCR_E_INVALID_ARG with a message. */
DsocrStatus kvcache_new(KvCache *kv, int n_layers, int width, int block_size, int n_blocks, DsError *e);
/* The same with an element type: DS_BF16 or DS_F32. */
DsocrStatus kvcache_new_typed(KvCache *kv, int n_layers, int width, int block_size, int n_blocks, DsDtype dtype,
                              DsError *e);
void kvcache_free(KvCache *kv);
/* Bytes a bf16 pool of this shape takes (0 on overflow); twice that for DS_F32. */
size_t kvcache_bytes(int n_layers, int width, int block_size, int n_blocks);

/* Writes n rows of k and v (fp32 [n, ldk] / [n, ldv], post-RoPE) for positions pos0 .. pos0+n−1 of the sequence
 * with block table `table`, rounding to bf16 in a bf16 pool. */
void kv_write(KvCache *kv, int layer, const int32_t *table, int pos0, int n, const float *k, int ldk, const float *v,
              int ldv);

/* Attention of n query rows against the cache (decode steps, and prefill after kv_write):
 *   row r belongs to sequence seq[r] (seq == NULL: all rows in sequence 0), whose block table is tables[seq[r]],
 *   sits at position pos[r], and sees the cached keys at positions 0 .. pos[r] (causal).
 *   out[r] = Σ_j softmax_j(scale · q[r]·k[j]) · v[j], per head; q: [n, ldq] fp32, out: [n, ldo] fp32.
 * _cpu: streaming softmax per key block within chunks of two blocks, the chunks' sums merged in order (so the bits
 * depend neither on the thread count nor on the other rows); a decode step's threads share out its chunks, many rows
 * share out (row, head group); keys and values widened from bf16 in registers. */
typedef struct OpsAttentionKv {
    float *out;
    const float *q;
    int ldo, ldq;
    int n;                          /* query rows */
    const int32_t *pos;             /* [n] */
    const int32_t *seq;             /* [n] or NULL */
    const int32_t *const *tables;   /* [n_seqs] block tables */
    const KvCache *kv;
    int layer, n_heads, head_dim;   /* n_heads·head_dim == kv->width */
    float scale;
    int round_bf16;                 /* 1: each output rounded to bf16 (as attention then round_bf16) */
} OpsAttentionKv;
void ops_attention_kv_ref(const OpsAttentionKv *a);
void ops_attention_kv_cpu(const OpsAttentionKv *a);

/* ---------------------------------------------------------------------------------------------------------
 * NeoX (rotate-half) RoPE, in place on T rows of n_heads·head_dim (row stride ld), row t at position pos[t]:
 *   inv_freq[i] = 1 / theta^(2i/head_dim) (fp32, as torch), angle = pos·inv_freq[i], i < head_dim/2
 *   x'[d] = x[d]·cos − x[d+half]·sin;  x'[d+half] = x[d+half]·cos + x[d]·sin      (d < half, per head)
 * flags & OPS_BF16 (spec §7.3 HF bf16): cos/sin rounded to bf16, each product rounded to bf16, the sum rounded
 * to bf16. head_dim must be even. */
void ops_rope_neox_ref(float *x, int ld, int T, int n_heads, int head_dim, const int32_t *pos, float theta, int flags);
void ops_rope_neox_cpu(float *x, int ld, int T, int n_heads, int head_dim, const int32_t *pos, float theta, int flags);

/* ---------------------------------------------------------------------------------------------------------
 * Conv2d on HWC data: x [in_h, in_w, in_c] fp32 → y [Ho, Wo, out_c] fp32, Ho = (in_h + 2·pad − kh)/stride + 1,
 *   Wo likewise; zero padding, weights [out_c, in_c, kh, kw] (bf16 or f32), bias [out_c] optional.
 *   y[oy, ox, o] = b[o] + Σ_{i,ky,kx} w[o,i,ky,kx] · x[oy·stride − pad + ky, ox·stride − pad + kx, i]
 * _cpu: im2col (rows in (i, ky, kx) order, matching the weight rows) of as many output pixels as fit in the
 *   caller's scratch, then ops_linear_cpu. A 1×1 stride-1 unpadded conv needs no scratch (scratch may be NULL).
 *   ops_conv2d_scratch_floats gives the size that does everything in one pass (Ho·Wo·in_c·kh·kw floats, 0 for 1×1);
 *   any size >= in_c·kh·kw floats works (smaller = more passes). _ref ignores scratch. */
typedef struct OpsConv2d {
    int in_h, in_w, in_c, out_c; /* input [in_h, in_w, in_c] HWC, output channels */
    int kh, kw, stride, pad;
} OpsConv2d;
int ops_conv2d_out_h(const OpsConv2d *c);
int ops_conv2d_out_w(const OpsConv2d *c);
size_t ops_conv2d_scratch_floats(const OpsConv2d *c);
void ops_conv2d_ref(float *y, const float *x, const OpsConv2d *c, DsW w, DsW bias, float *scratch, size_t scratch_n);
void ops_conv2d_cpu(float *y, const float *x, const OpsConv2d *c, DsW w, DsW bias, float *scratch, size_t scratch_n);

/* ---------------------------------------------------------------------------------------------------------
 * Resampling (spec §5.6). Bicubic is computed in double, linear in fp32 as torch does; results are fp32.
 * resample_bicubic_aa: torch F.interpolate(mode="bicubic", antialias=True, align_corners=False) on a grid of
 *   C channels: element (c, y, x) of the input at in[c·cs + y·ys + x·xs] (HWC: cs=1, ys=W·C, xs=C; CHW:
 *   cs=H·W, ys=W, xs=1), output with the same layout kind (HWC when hwc != 0, else CHW) and out_h × out_w.
 *   Separable (width pass first, as torch), Keys a = −0.5, support 2·max(scale, 1), weights normalised,
 *   boundary taps dropped. Uses no scratch: each output value is a 2-D weighted sum of the input.
 * resample_linear_1d: torch F.interpolate(mode="linear", align_corners=False) along the rows of a [in_len, C]
 *   table → [out_len, C] (rel-pos tables 127 → 2g−1): src = max((o+0.5)·in/out − 0.5, 0), i0 = floor(src),
 *   i1 = min(i0+1, in−1), λ = src − i0, out = (1−λ)·t[i0] + λ·t[i1]. */
void ops_resample_bicubic_aa(float *out, const float *in, int C, int in_h, int in_w, int out_h, int out_w, int hwc);
void ops_resample_linear_1d(float *out, const float *in, int in_len, int out_len, int C);

/* ---------------------------------------------------------------------------------------------------------
 * MoE.
 * moe_route: for each of M rows of router logits [M, n_experts] (row stride ld): optionally round the logits to
 *   bf16 (flags & OPS_BF16, spec §16 R2), softmax in fp32, then the top k probabilities by greedy selection
 *   (largest first; the lowest index wins ties). idx: [M, k] int32 expert ids, wts: [M, k] the raw softmax
 *   probabilities (no renormalisation). k <= n_experts <= 256.
 * expert_ffn: y[M, d_model] = down(SiLU(gate(x)) ⊙ up(x)) for M gathered rows x [M, d_model] (ld = d_model),
 *   gate/up [d_ff, d_model], down [d_model, d_ff]. scratch: 2·M·d_ff floats. flags & OPS_BF16 rounds gate and up
 *   outputs, the SwiGLU combine (as ops_silu_mul) and y to bf16. Only these three weights are read, so the model
 *   groups the rows routed to one expert and calls this once per selected expert. */
void ops_moe_route(const float *logits, int ld, int M, int n_experts, int k, int flags, int32_t *idx, float *wts);
size_t ops_expert_ffn_scratch_floats(int M, int d_ff);
void ops_expert_ffn_ref(float *y, const float *x, int M, int d_model, int d_ff, DsW gate, DsW up, DsW down,
                        int flags, float *scratch);
void ops_expert_ffn_cpu(float *y, const float *x, int M, int d_model, int d_ff, DsW gate, DsW up, DsW down,
                        int flags, float *scratch);
/* n (at most 17) expert FFNs of one row x [d_model] (decode: the routed experts and the shared ones), y[i] [d_model]
 * = ops_expert_ffn_cpu(x, 1, d_model, d_ff[i], gate[i], up[i], down[i], flags) bit for bit, with every gate/up
 * product in one parallel region and every down product in a second (not 3n). Scratch of its own (per thread). */
void ops_expert_ffn1_many_cpu(float *const *y, const float *x, int d_model, const int *d_ff, const DsW *gate,
                              const DsW *up, const DsW *down, int n, int flags);
/* n expert FFNs, each over its own M rows (a prefill chunk's experts and the shared ones): e[i].y [M, d_model] =
 * ops_expert_ffn_cpu(e[i].x [M, d_model], ...) with the same rounding points, every gate/up product in one parallel
 * region and every down product in a second, each product's tiles shared out among the threads (an expert's few
 * rows alone would keep most threads idle). A product of several row tiles may part from ops_expert_ffn_cpu's in
 * the last bits (its tiles widen their own weights). Scratch of its own (per thread). */
typedef struct {
    float *y;
    const float *x;
    int M, d_ff;
    DsW gate, up, down;
} OpsExpertJob;
void ops_expert_ffn_jobs_cpu(const OpsExpertJob *e, int n, int d_model, int flags);

#endif
