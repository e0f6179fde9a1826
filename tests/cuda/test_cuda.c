/* test_cuda.c: every op of the CUDA backend against the CPU reference (_ref ops of ops.h, or the CPU backend's
 * table for the ops that only exist there) on random inputs, odd sizes included. Outputs are poisoned with NaN
 * before each op, so an element the GPU never wrote fails. Each case prints its error; the thresholds are:
 *   fp32 arithmetic (GEMV, fp32 GEMM, norms, attention, data movement): relative L2 <= 2e-5 (exact for copies);
 *   bf16 tensor-core GEMMs with fp32 activations rounded to bf16: relative L2 <= 6e-3; split hi+lo: <= 1e-4;
 *   f16 mode (set_gemm_f16: fp16 inputs, fp32 accumulation): <= 5e-4 (test_f16 says why);
 *   ops with bf16 rounding points (OPS_BF16): relative L2 <= 4e-3 (a 1-ulp bf16 flip where a value sits on a
 *   rounding boundary is allowed; a wrong rounding rule gives errors far larger).
 * Needs a CUDA GPU; prints "N passed, N failed" (N counts test functions). Built by `make test-cuda`. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "quant.h"
#include "check.h"
#include "cuda/backend_cuda.h"
#include "ops.h"

static Backend *B;

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / (1ull << 23)) - 1.0);
}
static float *rnd(size_t n, float s) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = s * frand();
    return p;
}
static uint16_t *rnd_bf16(size_t n, float s) {
    uint16_t *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = f32_to_bf16(s * frand());
    return p;
}
/* A device copy of n bytes of host memory. */
static void *dev(const void *h, size_t bytes) {
    void *d = B->alloc(B, bytes ? bytes : 4);
    if (!d) {
        fprintf(stderr, "device allocation of %zu bytes failed\n", bytes);
        exit(2);
    }
    if (bytes) B->upload(B, d, h, bytes);
    return d;
}
/* A device buffer of n floats filled with NaN (poison). */
static float *dev_nan(size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    float *d = dev(h, n * sizeof *h);
    free(h);
    return d;
}
static float *down(const float *d, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    B->download(B, h, d, n * sizeof *h);
    return h;
}
/* ‖a − b‖ / ‖b‖ (NaN anywhere gives +inf). */
static double rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i] != a[i] || b[i] != b[i]) return INFINITY;
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
/* Relative L2 over rows of width w taken from buffers with row strides lda/ldb. */
static double rel_l2_rows(const float *a, int lda, const float *b, int ldb, int rows, int w) {
    double num = 0, den = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < w; c++) {
            float x = a[(size_t)r * lda + c], y = b[(size_t)r * ldb + c];
            if (x != x || y != y) return INFINITY;
            num += ((double)x - y) * ((double)x - y);
            den += (double)y * y;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
/* 1 when every value is a bf16 value (its low 16 bits zero) */
static int all_bf16(const float *g, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &g[i], 4);
        if (u & 0xffffu) return 0;
    }
    return 1;
}
static int exact_eq(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof *a) == 0;
}
#define EXPECT_ERR(err, tol, ...)                                                                             \
    do {                                                                                                      \
        char what_[200];                                                                                      \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                           \
        double e_ = (err);                                                                                    \
        printf("  %-60s rel_l2 %.3g%s\n", what_, e_, e_ <= (tol) ? "" : "  <-- FAIL");                        \
        CHECKF(e_ <= (tol), "%s: %.3g > %.3g", what_, e_, (double)(tol));                                     \
    } while (0)

/* ---------------------------------------------------------------------------------------------------------- */

static void test_memory(void) {
    size_t a0 = B->allocated(B), p0 = B->peak(B);
    void *p = B->alloc(B, 1000), *q = B->alloc(B, 3 << 20);
    REQUIRE(p && q);
    CHECK(B->allocated(B) == a0 + 1000 + (3 << 20));
    CHECK(B->peak(B) >= B->allocated(B) && B->peak(B) >= p0);
    B->free(B, p);
    CHECK(B->allocated(B) == a0 + (3 << 20));
    size_t pk = B->peak(B);
    void *huge = B->alloc(B, (size_t)1 << 50); /* a petabyte: must fail cleanly */
    CHECK(huge == NULL);
    CHECK(B->allocated(B) == a0 + (3 << 20) && B->peak(B) == pk);
    /* the backend still works after a failed allocation */
    float h[5] = {1, 2, 3, 4, 5}, r[5];
    B->upload(B, q, h, sizeof h);
    B->round_bf16(B, q, 5);
    B->download(B, r, q, sizeof r);
    CHECK(exact_eq(h, r, 5));
    B->free(B, q);
    CHECK(B->allocated(B) == a0);
    /* a budget (--gpu-mem): allocations past it fail cleanly, those within it succeed, none is counted twice */
    backend_cuda_set_budget(B, a0 + (4 << 20));
    void *in = B->alloc(B, 3 << 20), *out = B->alloc(B, 2 << 20);
    CHECK(in && !out && B->allocated(B) == a0 + (3 << 20));
    B->free(B, in);
    backend_cuda_set_budget(B, 0);
    CHECK(B->allocated(B) == a0 && (out = B->alloc(B, 2 << 20)) != NULL);
    B->free(B, out);
    /* the embedding lookup from a table left in host memory (plan.h hybrid) == from the device copy */
    {
        const int V = 50, Dm = 24;
        uint16_t *tab = rnd_bf16((size_t)V * Dm, 1.0f);
        DsW ht = ds_w(tab, DS_BF16), dt = ds_w(dev(tab, (size_t)V * Dm * 2), DS_BF16);
        int32_t ids[4] = {7, 0, 49, 7};
        int32_t *dids = dev(ids, sizeof ids);
        float *e1 = dev_nan(4 * Dm), *e2 = dev_nan(4 * Dm), *e3 = dev_nan(4 * Dm);
        B->embed(B, e1, ids, 4, dt, Dm);
        B->embed(B, e2, ids, 4, ht, Dm);
        B->embed_dev(B, e3, dids, 4, ht, Dm);
        float *a = down(e1, 4 * Dm), *b2 = down(e2, 4 * Dm), *c3 = down(e3, 4 * Dm);
        CHECK(exact_eq(a, b2, 4 * Dm) && exact_eq(a, c3, 4 * Dm));
        /* linear with the weights in host memory (plan.h hybrid+head) against the device copy: the CPU's sums, so
         * the fp32 tolerance; rows with strides, rounded outputs */
        const int M = 3, N = V, ldy = N + 3;
        float *y1 = dev_nan((size_t)M * ldy), *y2 = dev_nan((size_t)M * ldy);
        B->linear(B, y1, ldy, e1, Dm, M, Dm, dt, N, ds_w_none(), BE_ROUND | BE_FP32_SUMS);
        B->linear_host(B, y2, ldy, e1, Dm, M, Dm, ht, N, ds_w_none(), BE_ROUND | BE_FP32_SUMS);
        float *l1 = down(y1, (size_t)M * ldy), *l2 = down(y2, (size_t)M * ldy);
        double err = 0, ref = 0;
        for (int r = 0; r < M; r++)
            for (int i = 0; i < N; i++) {
                const double d = l1[r * ldy + i] - l2[r * ldy + i];
                err += d * d, ref += (double)l1[r * ldy + i] * l1[r * ldy + i];
            }
        CHECKF(sqrt(err / ref) < 8e-3, "linear_host differs from linear: %.2e", sqrt(err / ref));
        free(l1), free(l2);
        B->free(B, y1), B->free(B, y2);
        free(a), free(b2), free(c3), free(tab);
        B->free(B, (void *)dt.data), B->free(B, dids), B->free(B, e1), B->free(B, e2), B->free(B, e3);
    }
    size_t used = 0, total = 0;
    backend_cuda_mem_info(B, &used, &total);
    CHECK(total > 0 && used > 0 && used <= total);
    printf("  device %s, %d SMs, cc %d, %zu MiB used of %zu\n", backend_cuda_device_name(B), backend_cuda_sm_count(B),
           backend_cuda_compute_capability(B), used >> 20, total >> 20);
}

/* sums: BE_FP32_SUMS (the decoder's products of many rows: the GEMV kernels' fp32 sums, so the fp32 tolerance) */
static void linear_case(int M, int K, int N, int wdt, int bias_kind, int accum, int exact, int x_bf16, int sums) {
    int ldx = K % 8 == 0 ? K + 8 : K + 3, ldy = N + 2; /* K % 8 == 0: the GEMV's 16-byte loads */
    float *x = rnd((size_t)M * ldx, 1.0f);
    if (x_bf16)
        for (size_t i = 0; i < (size_t)M * ldx; i++) x[i] = bf16_round(x[i]);
    size_t wbytes = (size_t)N * K * (wdt == DS_BF16 ? 2 : 4);
    void *wh = wdt == DS_BF16 ? (void *)rnd_bf16((size_t)N * K, 0.5f) : (void *)rnd((size_t)N * K, 0.5f);
    void *bh = bias_kind == 1 ? (void *)rnd_bf16(N, 1.0f) : (void *)rnd(N, 1.0f);
    DsW w = ds_w(wh, wdt), bias = bias_kind ? ds_w(bh, bias_kind == 1 ? DS_BF16 : DS_F32) : ds_w_none();
    float *y0 = rnd((size_t)M * ldy, 1.0f);
    float *yr = malloc((size_t)M * ldy * sizeof(float) + 4);
    memcpy(yr, y0, (size_t)M * ldy * sizeof(float));
    ops_linear_ref(yr, ldy, x, ldx, M, K, w, N, bias, accum ? OPS_ACCUM : 0);
    float *dx = dev(x, (size_t)M * ldx * 4), *dy = dev(y0, (size_t)M * ldy * 4);
    void *dw = dev(wh, wbytes), *db = dev(bh, (size_t)N * (bias_kind == 1 ? 2 : 4));
    if (!accum) { /* poison the outputs (the gaps between rows keep y0) */
        float *nanrow = malloc((size_t)N * 4);
        for (int i = 0; i < N; i++) nanrow[i] = NAN;
        for (int m = 0; m < M; m++) B->upload(B, dy + (size_t)m * ldy, nanrow, (size_t)N * 4);
        free(nanrow);
    }
    backend_cuda_set_exact_gemm(B, exact);
    B->linear(B, dy, ldy, dx, ldx, M, K, ds_w(dw, wdt), N, bias_kind ? ds_w(db, bias.dtype) : ds_w_none(),
              (accum ? OPS_ACCUM : 0) | (sums ? BE_FP32_SUMS : 0));
    backend_cuda_set_exact_gemm(B, 0);
    float *yg = down(dy, (size_t)M * ldy);
    double tol = 2e-5;
    if (wdt == DS_BF16 && M > 8 && !x_bf16 && !sums) tol = exact ? 1e-4 : 6e-3;
    EXPECT_ERR(rel_l2(yg, yr, (size_t)M * ldy), tol, "linear M%d K%d N%d %s bias%d accum%d exact%d xbf16%d sums%d", M,
               K, N, wdt == DS_BF16 ? "bf16" : "f32", bias_kind, accum, exact, x_bf16, sums);
    B->free(B, dx), B->free(B, dy), B->free(B, dw), B->free(B, db);
    free(x), free(wh), free(bh), free(y0), free(yr), free(yg);
}

/* host weights of dtype dt (bf16, f32, or a block type quantised from random floats) and their device copy */
static void *mk_weight(size_t count, float scale, int dt, size_t *bytes) {
    if (dt == DS_BF16 || dt == DS_F32) {
        *bytes = count * (dt == DS_BF16 ? 2 : 4);
        return dt == DS_BF16 ? (void *)rnd_bf16(count, scale) : (void *)rnd(count, scale);
    }
    float *f = rnd(count, scale);
    *bytes = quant_row_bytes((DsDtype)dt, (int64_t)count);
    void *q = malloc(*bytes);
    quant_row_ref((DsDtype)dt, q, f, (int64_t)count);
    free(f);
    return q;
}

static const char *dt_name(int dt) {
    return dt == DS_BF16 ? "bf16" : dt == DS_F32 ? "f32" : dt == DS_Q8_0 ? "q8_0" : "q4_0";
}

/* linear on Q8_0 / Q4_0 weights against ops_linear_ref on the same blocks: few rows run the block GEMV (fp32
 * arithmetic; quant_cuda.cu), more rows the GEMM on the weights dequantised to bf16 with bf16 activations.
 * xpad: ldx = K + xpad (an odd pad puts rows of x off 16-byte alignment: the GEMV's scalar loads of x). */
static void qlinear_case_pad(int M, int K, int N, int qdt, int with_bias, int xpad);
static void qlinear_case(int M, int K, int N, int qdt, int with_bias) { qlinear_case_pad(M, K, N, qdt, with_bias, 4); }
static void qlinear_case_pad(int M, int K, int N, int qdt, int with_bias, int xpad) {
    int ldx = K + xpad, ldy = N + 2;
    float *x = rnd((size_t)M * ldx, 1.0f);
    size_t wbytes;
    void *wh = mk_weight((size_t)N * K, 0.5f, qdt, &wbytes);
    uint16_t *bh = rnd_bf16(N, 1.0f);
    float *yr = malloc((size_t)M * ldy * 4 + 4);
    for (size_t i = 0; i < (size_t)M * ldy; i++) yr[i] = 0.f;
    ops_linear_ref(yr, ldy, x, ldx, M, K, ds_w(wh, (DsDtype)qdt), N, with_bias ? ds_w(bh, DS_BF16) : ds_w_none(), 0);
    float *dx = dev(x, (size_t)M * ldx * 4), *dy = dev(yr, (size_t)M * ldy * 4);
    void *dw = dev(wh, wbytes), *db = dev(bh, (size_t)N * 2);
    B->memset0(B, dy, (size_t)M * ldy * 4);
    B->linear(B, dy, ldy, dx, ldx, M, K, ds_w(dw, (DsDtype)qdt), N, with_bias ? ds_w(db, DS_BF16) : ds_w_none(), 0);
    float *yg = down(dy, (size_t)M * ldy);
    EXPECT_ERR(rel_l2(yg, yr, (size_t)M * ldy), M > 8 ? 8e-3 : 2e-5, "linear %s M%d K%d N%d bias%d ldx%d",
               dt_name(qdt), M, K, N, with_bias, ldx);
    B->free(B, dx), B->free(B, dy), B->free(B, dw), B->free(B, db);
    free(x), free(wh), free(bh), free(yr), free(yg);
}

/* a decode batch's rows on a Q8_0 weight in bf16 mode (BE_ROUND: cu_linear_q8_rows's tensor-core kernel, 9 to 256
 * rows, N >= 16384; other shapes take the dequantised weight): x of bf16 values, rows ldx = K + 4·pad and
 * ldy = N + 2·pad apart, against the reference on the same blocks with its outputs rounded to bf16; y's padding
 * stays untouched */
static void q8_rows_case(int M, int K, int N, int pad) {
    const int ldx = K + 4 * pad, ldy = N + 2 * pad;
    float *x = rnd((size_t)M * ldx, 1.0f);
    for (size_t i = 0; i < (size_t)M * ldx; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i]));
    size_t wbytes;
    void *wh = mk_weight((size_t)N * K, 0.5f, DS_Q8_0, &wbytes);
    float *yr = malloc((size_t)M * ldy * 4 + 4), *y7 = malloc((size_t)M * ldy * 4 + 4);
    for (size_t i = 0; i < (size_t)M * ldy; i++) yr[i] = y7[i] = 7.f;
    ops_linear_ref(yr, ldy, x, ldx, M, K, ds_w(wh, DS_Q8_0), N, ds_w_none(), 0);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) yr[(size_t)m * ldy + n] = bf16_to_f32(f32_to_bf16(yr[(size_t)m * ldy + n]));
    float *dx = dev(x, (size_t)M * ldx * 4), *dy = dev(y7, (size_t)M * ldy * 4); /* the padding keeps its 7s */
    void *dw = dev(wh, wbytes);
    B->linear(B, dy, ldy, dx, ldx, M, K, ds_w(dw, DS_Q8_0), N, ds_w_none(), BE_ROUND);
    float *yg = down(dy, (size_t)M * ldy);
    for (int m = 0; m < M; m++)
        for (int n = N; n < ldy; n++)
            CHECKF(yg[(size_t)m * ldy + n] == 7.f, "q8_0 rows M%d N%d: padding column %d of row %d written", M, N, n,
                   m);
    EXPECT_ERR(rel_l2(yg, yr, (size_t)M * ldy), 4e-3, "linear q8_0 rows M%d K%d N%d pad%d bf16 out", M, K, N, pad);
    B->free(B, dx), B->free(B, dy), B->free(B, dw);
    free(x), free(wh), free(yr), free(yg), free(y7);
}

static void test_linear(void) {
    /* cu_linear_q8_rows takes N >= 16384 (Q8_ROWS_MIN_N); the narrower ones check the dequantised chunks' path */
    static const int q8rows[][4] = {{9, 64, 16, 0},        {37, 1280, 3840, 0},  {128, 64, 40, 0},
                                    {129, 160, 16400, 1},  {256, 96, 16384, 2},  {200, 1056, 16384, 3},
                                    {17, 1280, 129280, 0}, {9, 32, 16384, 0}};
    for (size_t s = 0; s < sizeof q8rows / sizeof q8rows[0]; s++)
        q8_rows_case(q8rows[s][0], q8rows[s][1], q8rows[s][2], q8rows[s][3]);
    static const int qshapes[][3] = {{1, 32, 1}, {1, 1280, 1280}, {3, 96, 37}, {8, 1280, 70}, {9, 64, 64},
                                     {37, 1280, 300}, {1, 1280, 129}};
    for (size_t s = 0; s < sizeof qshapes / sizeof qshapes[0]; s++)
        for (int q = 0; q < 2; q++)
            qlinear_case(qshapes[s][0], qshapes[s][1], qshapes[s][2], q ? DS_Q4_0 : DS_Q8_0, (int)(s & 1));
    /* the block GEMV (quant_cuda.cu) at decode's shapes and odd ones: K/32 odd (rows at 2-byte alignment), fewer
     * blocks than a warp's 8 at a time, 1 to 8 rows, x rows off 16-byte alignment */
    static const int gshapes[][4] = {{1, 896, 1281, 4}, {1, 6848, 33, 4}, {2, 224, 33, 4}, {4, 160, 17, 1},
                                     {5, 96, 65, 3},    {7, 1792, 41, 4}, {1, 64, 3, 1},   {1, 1280, 3840, 4}};
    for (size_t s = 0; s < sizeof gshapes / sizeof gshapes[0]; s++)
        for (int q = 0; q < 2; q++)
            qlinear_case_pad(gshapes[s][0], gshapes[s][1], gshapes[s][2], q ? DS_Q4_0 : DS_Q8_0, (int)(s & 1),
                             gshapes[s][3]);
    static const int shapes[][3] = {{1, 1, 1},    {1, 37, 5},     {2, 100, 33},  {3, 64, 17},    {4, 16, 300},
                                    {5, 129, 31}, {8, 1280, 70},  {9, 64, 64},   {15, 300, 19},  {16, 300, 257},
                                    {17, 513, 300}, {130, 40, 7}, {200, 257, 513}, {33, 1, 9},   {64, 768, 256}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int v = 0; v < 4; v++) {
            int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
            linear_case(M, K, N, v & 1 ? DS_F32 : DS_BF16, v == 3 ? 0 : (v & 1) + 1, v & 2, 0, 0, 0);
        }
    linear_case(130, 256, 96, DS_BF16, 1, 0, 1, 0, 0);
    linear_case(77, 1280, 200, DS_BF16, 0, 1, 1, 0, 0);
    linear_case(77, 1280, 200, DS_BF16, 0, 0, 0, 1, 0); /* bf16 activations: tensor cores are exact up to sum order */
    /* BE_FP32_SUMS: many rows on the GEMV kernels, fp32 sums (bf16 and fp32 weights, bias, accumulation) */
    linear_case(283, 1280, 200, DS_BF16, 0, 0, 0, 0, 1);
    linear_case(77, 1280, 200, DS_BF16, 1, 1, 0, 1, 1);
    linear_case(130, 257, 96, DS_F32, 2, 0, 0, 0, 1);
}

/* linear's activation epilogue (BE_GELU / BE_QGELU, with and without BE_ROUND) and layernorm's BE_ROUND against the
 * CPU backend given the same flags, on the GEMV (1 row) and the cuBLAS (many rows) paths; bf16-exact inputs, so only
 * the sum order differs (a bf16 rounding step at most where a value sits on a boundary). */
static void test_fused_epilogues(void) {
    const int rows[2] = {1, 37}, K = 96, N = 70;
    const int acts[2] = {BE_GELU, BE_QGELU};
    for (int ri = 0; ri < 2; ri++)
        for (int a = 0; a < 2; a++)
            for (int r = 0; r < 2; r++) {
                const int M = rows[ri], fl = acts[a] | (r ? BE_ROUND : 0);
                float *x = rnd((size_t)M * K, 1.0f);
                ops_round_bf16_ref(x, (size_t)M * K);
                uint16_t *wh = rnd_bf16((size_t)N * K, 0.3f);
                float *bh = rnd(N, 0.2f), *ref = malloc((size_t)M * N * 4);
                backend_cpu()->linear(backend_cpu(), ref, N, x, K, M, K, ds_w(wh, DS_BF16), N, ds_w(bh, DS_F32), fl);
                float *dx = dev(x, (size_t)M * K * 4), *dy = dev_nan((size_t)M * N), *db = dev(bh, N * 4);
                void *dw = dev(wh, (size_t)N * K * 2);
                B->linear(B, dy, N, dx, K, M, K, ds_w(dw, DS_BF16), N, ds_w(db, DS_F32), fl);
                float *g = down(dy, (size_t)M * N);
                EXPECT_ERR(rel_l2(g, ref, (size_t)M * N), r ? 4e-3 : 2e-5, "linear M%d act %s round %d", M,
                           acts[a] == BE_GELU ? "gelu" : "quick_gelu", r);
                B->free(B, dx), B->free(B, dy), B->free(B, db), B->free(B, dw);
                free(x), free(wh), free(bh), free(ref), free(g);
            }
    for (int bf = 0; bf < 2; bf++) {
        const int M = 9, n = 768, fl = BE_ROUND | (bf ? OPS_BF16 : 0);
        float *x = rnd((size_t)M * n, 2.0f), *wh = rnd(n, 1.0f), *bh = rnd(n, 0.5f), *ref = malloc((size_t)M * n * 4);
        backend_cpu()->layernorm(backend_cpu(), ref, n, x, n, M, n, ds_w(wh, DS_F32), ds_w(bh, DS_F32), 1e-6f, fl);
        float *dx = dev(x, (size_t)M * n * 4), *dy = dev_nan((size_t)M * n), *dw = dev(wh, n * 4), *db = dev(bh, n * 4);
        B->layernorm(B, dy, n, dx, n, M, n, ds_w(dw, DS_F32), ds_w(db, DS_F32), 1e-6f, fl);
        float *g = down(dy, (size_t)M * n);
        CHECKF(all_bf16(g, (size_t)M * n), "layernorm BE_ROUND: an output is not a bf16 value (bf16 rule %d)", bf);
        EXPECT_ERR(rel_l2(g, ref, (size_t)M * n), 4e-3, "layernorm BE_ROUND bf16 rule %d", bf);
        B->free(B, dx), B->free(B, dy), B->free(B, dw), B->free(B, db);
        free(x), free(wh), free(bh), free(ref), free(g);
    }
}

/* linear and layernorm with bf16 storage (backend.h BE_IN_BF16 / BE_OUT_BF16) against the same op on fp32 buffers
 * holding the same bf16 values. Paths: bf16 weights with many rows (bf16 x straight to cuBLAS, a bf16 y from
 * cuBLASLt with the bias in its epilogue), block weights through their dequantised chunks (the same), and the fp32
 * copies every other path runs on (GEMV rows, f16 mode, fp32 weights, exact_gemm with fp32 x). Both sides round
 * to bf16 (BE_ROUND), so a different summation order can flip a value sitting on a rounding boundary by one bf16
 * step: the bound is the rounding one, 4e-3. Every output must be a bf16 value, the gaps between output rows
 * must keep what they held, and the shapes the vision encoder runs must take the direct path (counted by
 * backend_cuda_bf16_io_counts). */
typedef struct IoCase {
    int M, K, N, wdt, bias; /* bias: 0 none, 1 bf16, 2 fp32 */
    int act, in16, out16, f16, exact;
    int direct; /* 1: must run on the direct path; 0: either (printed) */
    int contig; /* 1: output rows without gaps (ldy = N), as the model's MLP hiddens are */
} IoCase;

static void bf16_io_case(IoCase t) {
    const int M = t.M, K = t.K, N = t.N, ldx = K % 8 == 0 ? K + 8 : K + 3;
    const int ldy = t.contig ? N : N % 8 == 0 ? N + 8 : N + 1;
    const size_t nx = (size_t)M * ldx, ny = (size_t)M * ldy;
    float *x = rnd(nx, 1.0f);
    uint16_t *x16 = malloc(nx * 2), *y16 = malloc(ny * 2);
    for (size_t i = 0; i < nx; i++) {
        x16[i] = f32_to_bf16(x[i]);
        x[i] = bf16_to_f32(x16[i]);
    }
    const uint16_t poison = 0x7fc1; /* a bf16 NaN */
    for (size_t i = 0; i < ny; i++) y16[i] = poison;
    size_t wbytes;
    void *wh = mk_weight((size_t)N * K, 0.5f, t.wdt, &wbytes);
    void *bh = t.bias == 1 ? (void *)rnd_bf16(N, 1.0f) : (void *)rnd(N, 1.0f);
    float *dx = dev(x, nx * 4), *dref = dev_nan(ny);
    uint16_t *dx16 = dev(x16, nx * 2);
    void *dw = dev(wh, wbytes), *db = dev(bh, (size_t)N * (t.bias == 1 ? 2 : 4));
    void *dy = t.out16 ? dev(y16, ny * 2) : (void *)dev_nan(ny);
    const DsW w = ds_w(dw, (DsDtype)t.wdt), bias = t.bias ? ds_w(db, t.bias == 1 ? DS_BF16 : DS_F32) : ds_w_none();
    const int fl = BE_ROUND | t.act, io = (t.in16 ? BE_IN_BF16 : 0) | (t.out16 ? BE_OUT_BF16 : 0);
    long d0, s0, d1, s1;
    if (t.f16) B->set_gemm_f16(B, 1);
    backend_cuda_set_exact_gemm(B, t.exact);
    B->linear(B, dref, ldy, dx, ldx, M, K, w, N, bias, fl);
    backend_cuda_bf16_io_counts(B, &d0, &s0);
    /* bf16 storage behind float pointers, as the model passes it */
    B->linear(B, (float *)dy, ldy, t.in16 ? (const float *)dx16 : dx, ldx, M, K, w, N, bias, fl | io);
    backend_cuda_bf16_io_counts(B, &d1, &s1);
    backend_cuda_set_exact_gemm(B, 0);
    if (t.f16) B->set_gemm_f16(B, 0);
    float *ref = down(dref, ny), *got = malloc(ny * 4);
    int gaps = 1, bf = 1;
    if (t.out16) {
        B->download(B, y16, dy, ny * 2);
        for (size_t i = 0; i < ny; i++) {
            got[i] = bf16_to_f32(y16[i]);
            if ((int)(i % ldy) >= N && y16[i] != poison) gaps = 0;
        }
    } else {
        B->download(B, got, dy, ny * 4);
        for (int m = 0; m < M; m++) bf &= all_bf16(got + (size_t)m * ldy, N);
    }
    const char *path = d1 > d0 && s1 == s0 ? "direct" : s1 > s0 && d1 == d0 ? "staged" : "?";
    char what[200];
    snprintf(what, sizeof what, "bf16 io M%d K%d N%d %s bias%d %s in%d out%d f16%d exact%d contig%d: %s", M, K, N,
             dt_name(t.wdt), t.bias, t.act == BE_GELU ? "gelu" : t.act == BE_QGELU ? "quick_gelu" : "-", t.in16,
             t.out16, t.f16, t.exact, t.contig, path);
    EXPECT_ERR(rel_l2_rows(got, ldy, ref, ldy, M, N), 4e-3, "%s", what);
    CHECKF(bf, "%s: an output is not a bf16 value", what);
    CHECKF(gaps, "%s: wrote between output rows", what);
    CHECKF(!t.direct || !strcmp(path, "direct"), "%s: expected the direct path (cuBLASLt found no algorithm?)",
           what);
    B->free(B, dx), B->free(B, dref), B->free(B, dx16), B->free(B, dw), B->free(B, db), B->free(B, dy);
    free(x), free(x16), free(y16), free(wh), free(bh), free(ref), free(got);
}

/* layernorm with BE_OUT_BF16 against BE_ROUND on floats: the same values, bit for bit; gaps between rows kept */
static void bf16_layernorm_case(int M, int n, int bf_rule) {
    const int ldx = n + 5, ldy = n + 8, fl = BE_ROUND | (bf_rule ? OPS_BF16 : 0);
    const size_t ny = (size_t)M * ldy;
    float *x = rnd((size_t)M * ldx, 2.0f), *wh = rnd(n, 1.0f), *bh = rnd(n, 0.5f);
    uint16_t *y16 = malloc(ny * 2);
    for (size_t i = 0; i < ny; i++) y16[i] = 0x7fc1;
    float *dx = dev(x, (size_t)M * ldx * 4), *dw = dev(wh, n * 4), *db = dev(bh, n * 4), *dref = dev_nan(ny);
    uint16_t *dy = dev(y16, ny * 2);
    B->layernorm(B, dref, ldy, dx, ldx, M, n, ds_w(dw, DS_F32), ds_w(db, DS_F32), 1e-6f, fl);
    B->layernorm(B, (float *)dy, ldy, dx, ldx, M, n, ds_w(dw, DS_F32), ds_w(db, DS_F32), 1e-6f, fl | BE_OUT_BF16);
    float *ref = down(dref, ny);
    B->download(B, y16, dy, ny * 2);
    int same = 1, gaps = 1;
    for (size_t i = 0; i < ny; i++) {
        if ((int)(i % ldy) >= n) {
            gaps &= y16[i] == 0x7fc1;
        } else {
            uint32_t u;
            memcpy(&u, &ref[i], 4);
            same &= (u & 0xffffu) == 0 && (uint16_t)(u >> 16) == y16[i];
        }
    }
    CHECKF(same, "layernorm BE_OUT_BF16 M%d n%d bf16 rule %d differs from BE_ROUND on floats", M, n, bf_rule);
    CHECKF(gaps, "layernorm BE_OUT_BF16 M%d n%d: wrote between output rows", M, n);
    printf("  layernorm BE_OUT_BF16 M%d n%d bf16 rule %d: bit-exact\n", M, n, bf_rule);
    B->free(B, dx), B->free(B, dw), B->free(B, db), B->free(B, dref), B->free(B, dy);
    free(x), free(wh), free(bh), free(y16), free(ref);
}

static void test_bf16_storage(void) {
    REQUIRE(B->act_bf16);
    B->set_gemm_f16(B, 1); /* f16 products read floats: bf16 storage would not pay (the flags still work) */
    CHECK(B->act_bf16 == 0);
    B->set_gemm_f16(B, 0);
    REQUIRE(B->act_bf16);
    const int bf = DS_BF16, f32 = DS_F32, q8 = DS_Q8_0, q4 = DS_Q4_0, G = BE_GELU, Q = BE_QGELU;
    const IoCase cases[] = {
        /* M, K, N, weight, bias, act, in16, out16, f16, exact, direct, contig */
        {4096, 768, 3072, bf, 1, G, 1, 1, 0, 0, 1, 0}, /* SAM fc1 at 1,024 px */
        {4096, 768, 3072, bf, 1, G, 1, 1, 0, 0, 1, 1}, /* the same without gaps: the activation in one pass */
        {257, 1024, 4096, bf, 1, Q, 1, 1, 0, 0, 1, 1},
        {37, 96, 72, bf, 0, G, 0, 1, 0, 0, 0, 1},
        {4096, 3072, 768, bf, 1, 0, 1, 0, 0, 0, 1, 0}, /* SAM fc2 */
        {257, 1024, 4096, bf, 1, Q, 1, 1, 0, 0, 1, 0}, /* CLIP fc1 */
        {257, 4096, 1024, bf, 1, 0, 1, 0, 0, 0, 1, 0}, /* CLIP fc2 */
        {257, 1024, 3072, bf, 1, 0, 1, 0, 0, 0, 1, 0}, /* CLIP qkv */
        {257, 1024, 1000, bf, 1, G, 1, 1, 0, 0, 1, 0},
        {257, 1024, 1000, bf, 2, G, 1, 1, 0, 0, 0, 0}, /* fp32 bias: cuBLASLt's bias type, or the fallback */
        {4096, 768, 3072, bf, 2, G, 1, 1, 0, 0, 0, 0},
        {257, 1024, 1000, bf, 0, Q, 1, 1, 0, 0, 1, 0},
        {300, 512, 384, bf, 0, Q, 0, 1, 0, 0, 1, 0},   /* fp32 x converted, bf16 y */
        {300, 512, 384, bf, 1, 0, 0, 1, 0, 0, 1, 0},
        {300, 512, 384, bf, 0, G, 1, 0, 0, 0, 1, 0},   /* bf16 x, fp32 y */
        {257, 1001, 999, bf, 1, G, 1, 1, 0, 0, 0, 0},  /* odd strides: 2- and 8-byte aligned rows */
        {37, 1001, 999, bf, 2, 0, 0, 1, 0, 0, 0, 0},
        {9, 1024, 1000, bf, 1, G, 1, 1, 0, 0, 1, 0},   /* the fewest rows of the product */
        {1, 768, 3072, bf, 1, G, 1, 1, 0, 0, 0, 0},    /* GEMV rows */
        {8, 1024, 1000, bf, 2, Q, 1, 1, 0, 0, 0, 0},
        {5, 1001, 37, bf, 0, 0, 1, 0, 0, 0, 0, 0},
        {3, 96, 70, bf, 1, G, 0, 1, 0, 0, 0, 0},
        {257, 1024, 1000, q8, 1, G, 1, 1, 0, 0, 1, 0}, /* block weights: dequantised chunks, then the direct path */
        {64, 256, 96, q4, 2, 0, 1, 0, 0, 0, 1, 0},
        {3, 1024, 100, q8, 1, Q, 1, 1, 0, 0, 0, 0},    /* block GEMV */
        {130, 256, 96, f32, 2, G, 1, 1, 0, 0, 0, 0},   /* fp32 weights */
        {6, 256, 96, f32, 1, 0, 1, 1, 0, 0, 0, 0},
        {257, 1024, 1000, bf, 1, G, 1, 1, 1, 0, 0, 0}, /* f16 mode */
        {64, 768, 256, q8, 0, Q, 1, 0, 1, 0, 0, 0},
        {4096, 768, 3072, bf, 1, G, 1, 1, 1, 0, 0, 0}, /* f16 mode, staged in several chunks of rows */
        {130, 256, 96, bf, 1, 0, 0, 1, 0, 1, 0, 0},    /* exact_gemm with fp32 x: hi + lo products */
        {130, 256, 96, bf, 1, G, 1, 1, 0, 1, 1, 0},    /* exact_gemm with bf16 x: lo is zero */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) bf16_io_case(cases[i]);
    for (int r = 0; r < 2; r++) {
        bf16_layernorm_case(9, 768, r);
        bf16_layernorm_case(257, 1024, r);
        bf16_layernorm_case(3, 37, r);
    }
    /* recorded as the vision encoder records it: a new cuBLASLt plan made while the graph records, replayed, and
     * the same op run directly after it, bit for bit */
    {
        const int M = 200, K = 640, N = 512;
        float *x = rnd((size_t)M * K, 1.0f);
        uint16_t *x16 = malloc((size_t)M * K * 2), *wh = rnd_bf16((size_t)N * K, 0.3f), *bh = rnd_bf16(N, 1.0f);
        for (size_t i = 0; i < (size_t)M * K; i++) x16[i] = f32_to_bf16(x[i]);
        uint16_t *dx = dev(x16, (size_t)M * K * 2), *dw = dev(wh, (size_t)N * K * 2), *db = dev(bh, N * 2);
        uint16_t *dg = (uint16_t *)dev_nan((size_t)M * N / 2 + 1), *dd = (uint16_t *)dev_nan((size_t)M * N / 2 + 1);
        const int fl = BE_ROUND | BE_GELU | BE_IN_BF16 | BE_OUT_BF16;
        REQUIRE(B->graph_begin(B) == 0);
        B->linear(B, (float *)dg, N, (const float *)dx, K, M, K, ds_w(dw, DS_BF16), N, ds_w(db, DS_BF16), fl);
        void *g = B->graph_end(B);
        REQUIRE(g);
        B->graph_launch(B, g);
        B->linear(B, (float *)dd, N, (const float *)dx, K, M, K, ds_w(dw, DS_BF16), N, ds_w(db, DS_BF16), fl);
        uint16_t *a = malloc((size_t)M * N * 2), *c = malloc((size_t)M * N * 2);
        B->download(B, a, dg, (size_t)M * N * 2);
        B->download(B, c, dd, (size_t)M * N * 2);
        int nan = 0;
        for (size_t i = 0; i < (size_t)M * N; i++) nan |= (a[i] & 0x7f80) == 0x7f80;
        CHECKF(!nan && !memcmp(a, c, (size_t)M * N * 2), "a recorded bf16-storage linear differs from the direct run");
        printf("  recorded bf16-storage linear M%d K%d N%d: replay matches the direct run%s\n", M, K, N,
               nan ? " (NaN/inf seen)" : "");
        B->graph_free(B, g);
        B->free(B, dx), B->free(B, dw), B->free(B, db), B->free(B, dg), B->free(B, dd);
        free(x), free(x16), free(wh), free(bh), free(a), free(c);
    }
}

static void test_norms(void) {
    /* n % 4 == 0 up to 1,024 with aligned rows: layernorm's one-warp-a-row kernel; the rest its block kernel */
    static const int shapes[][2] = {{1, 1}, {3, 7}, {17, 768}, {5, 1025}, {2, 1280}, {40, 256}, {9, 1024}, {4, 12}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int v = 0; v < 4; v++) {
            int M = shapes[s][0], n = shapes[s][1], ld = n % 4 ? n + 5 : n + 4, bf = v & 1, wbf = v & 2;
            float *x = rnd((size_t)M * ld, 2.0f);
            for (size_t i = 0; i < (size_t)M * ld; i++) x[i] += 0.3f;
            void *wh = wbf ? (void *)rnd_bf16(n, 1.0f) : (void *)rnd(n, 1.0f);
            void *bh = wbf ? (void *)rnd_bf16(n, 0.5f) : (void *)rnd(n, 0.5f);
            DsW w = ds_w(wh, wbf ? DS_BF16 : DS_F32), bb = ds_w(bh, w.dtype);
            size_t wb = (size_t)n * (wbf ? 2 : 4);
            float *dx = dev(x, (size_t)M * ld * 4), *dyl = dev_nan((size_t)M * ld), *dyr = dev_nan((size_t)M * ld);
            void *dw = dev(wh, wb), *db = dev(bh, wb);
            float *yl = malloc((size_t)M * ld * 4), *yr = malloc((size_t)M * ld * 4);
            if (bf)
                backend_cpu()->layernorm(backend_cpu(), yl, ld, x, ld, M, n, w, bb, 1e-6f, OPS_BF16);
            else
                ops_layernorm_ref(yl, ld, x, ld, M, n, w, bb, 1e-6f);
            ops_rmsnorm_ref(yr, ld, x, ld, M, n, w, 1e-6f, bf ? OPS_BF16 : 0);
            B->layernorm(B, dyl, ld, dx, ld, M, n, ds_w(dw, w.dtype), ds_w(db, w.dtype), 1e-6f, bf ? OPS_BF16 : 0);
            B->rmsnorm(B, dyr, ld, dx, ld, M, n, ds_w(dw, w.dtype), 1e-6f, bf ? OPS_BF16 : 0);
            float *gl = down(dyl, (size_t)M * ld), *gr = down(dyr, (size_t)M * ld);
            double tol = bf ? 4e-3 : 2e-5;
            EXPECT_ERR(rel_l2_rows(gl, ld, yl, ld, M, n), tol, "layernorm M%d n%d bf16rule%d wbf16%d", M, n, bf, !!wbf);
            EXPECT_ERR(rel_l2_rows(gr, ld, yr, ld, M, n), tol, "rmsnorm M%d n%d bf16%d wbf16%d", M, n, bf, !!wbf);
            /* in place */
            B->rmsnorm(B, dx, ld, dx, ld, M, n, ds_w(dw, w.dtype), 1e-6f, bf ? OPS_BF16 : 0);
            float *gi = down(dx, (size_t)M * ld);
            EXPECT_ERR(rel_l2_rows(gi, ld, yr, ld, M, n), tol, "rmsnorm in place M%d n%d", M, n);
            B->free(B, dx), B->free(B, dyl), B->free(B, dyr), B->free(B, dw), B->free(B, db);
            free(x), free(wh), free(bh), free(yl), free(yr), free(gl), free(gr), free(gi);
        }
}

static void test_elementwise(void) {
    static const size_t sizes[] = {1, 31, 1000, 100003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        float *x = rnd(n, 4.0f), *c = rnd(n, 3.0f), *r = malloc(n * 4);
        float *dx = dev(x, n * 4), *dc = dev(c, n * 4), *dout = dev_nan(n);
        ops_gelu_ref(r, x, n);
        B->gelu(B, dout, dx, n);
        float *g = down(dout, n);
        EXPECT_ERR(rel_l2(g, r, n), 2e-6, "gelu n%zu", n);
        free(g);
        ops_quick_gelu_ref(r, x, n);
        B->quick_gelu(B, dout, dx, n);
        g = down(dout, n);
        EXPECT_ERR(rel_l2(g, r, n), 2e-6, "quick_gelu n%zu", n);
        free(g);
        ops_add_ref(r, x, c, n);
        B->add(B, dc, dx, dc, n); /* in place on the second operand */
        g = down(dc, n);
        CHECKF(exact_eq(g, r, n), "add n%zu", n);
        free(g);
        memcpy(r, x, n * 4);
        r[0] = NAN;
        if (n > 2) r[1] = INFINITY, r[2] = 3.0e38f;
        B->upload(B, dx, r, n * 4);
        ops_round_bf16_ref(r, n);
        B->round_bf16(B, dx, n);
        g = down(dx, n);
        int same = 1;
        for (size_t i = 0; i < n; i++) same &= (g[i] == r[i]) || (g[i] != g[i] && r[i] != r[i]);
        CHECKF(same, "round_bf16 n%zu", n);
        printf("  add/round_bf16 n%zu exact\n", n);
        free(g);
        B->free(B, dx), B->free(B, dc), B->free(B, dout);
        free(x), free(c), free(r);
    }
}

/* argmax against ops_argmax: ties (first index), NaNs, all-NaN, an unaligned start, the step advance */
static void test_argmax(void) {
    static const int sizes[] = {1, 5, 131, 4096, 129280, 1000003};
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++)
        for (int kind = 0; kind < 4; kind++) {
            int n = sizes[t];
            float *x = rnd((size_t)n + 1, 1.0f);
            if (kind == 1 && n > 3) { /* a tie of the maximum, late then early */
                x[n - 2] = 7.f;
                x[n / 3] = 7.f;
            }
            if (kind == 2)
                for (int i = 0; i < n; i += 3) x[i] = NAN;
            if (kind == 3)
                for (int i = 0; i < n + 1; i++) x[i] = NAN;
            const int off = t % 2; /* odd sizes also start one float in: no 16-byte alignment */
            int want = ops_argmax(x + off, n);
            float *dx = dev(x, ((size_t)n + 1) * 4);
            int32_t step_h[4] = {0, 41, 0, 0}, got[4];
            int32_t *dstep = dev(step_h, sizeof step_h);
            B->argmax(B, dstep + 2, dx + off, n, dstep);
            B->download(B, got, dstep, sizeof got);
            CHECKF(got[2] == want && got[0] == want && got[1] == 42, "argmax n%d kind%d off%d: %d (step %d %d), want %d",
                   n, kind, off, got[2], got[0], got[1], want);
            B->argmax(B, dstep + 2, dx + off, n, NULL); /* again: the block counter was reset */
            B->download(B, got, dstep, sizeof got);
            CHECKF(got[2] == want && got[1] == 42, "argmax again n%d kind%d: %d, want %d", n, kind, got[2], want);
            B->free(B, dx), B->free(B, dstep);
            free(x);
        }
    printf("  argmax: 24 cases against ops_argmax\n");
    /* argmax_rows: rows of a tie, NaNs, all NaN and plain values, an odd stride (unaligned rows) and a round one */
    for (int odd = 0; odd < 2; odd++) {
        const int rows = 9, n = 129280 + odd;
        const size_t ld = (size_t)n + (odd ? 3 : 4);
        float *x = rnd(ld * rows, 1.0f);
        for (int r = 0; r < rows; r++) {
            float *xr = x + ld * r;
            if (r % 4 == 1) xr[n - 2] = 9.f, xr[r * 7] = 9.f;
            if (r % 4 == 2)
                for (int i = 0; i < n; i += 3) xr[i] = NAN;
            if (r % 4 == 3)
                for (int i = 0; i < n; i++) xr[i] = NAN;
        }
        float *dx = dev(x, ld * rows * 4);
        int32_t *dout = B->alloc(B, sizeof(int32_t) * rows), got[9];
        B->argmax_rows(B, dout, dx, ld, rows, n);
        B->download(B, got, dout, sizeof got);
        for (int r = 0; r < rows; r++) {
            const int want = ops_argmax(x + ld * r, n);
            CHECKF(got[r] == want, "argmax_rows odd%d row %d: %d, want %d", odd, r, got[r], want);
        }
        B->free(B, dx), B->free(B, dout);
        free(x);
    }
    printf("  argmax_rows: 18 rows against ops_argmax\n");
}

static void test_rope(void) {
    static const int cases[][3] = {{1, 1, 2}, {7, 3, 128}, {33, 10, 128}, {5, 2, 6}};
    for (size_t s = 0; s < sizeof cases / sizeof cases[0]; s++)
        for (int bf = 0; bf < 2; bf++) {
            int T = cases[s][0], H = cases[s][1], hd = cases[s][2], ld = H * hd + 4;
            float *x = rnd((size_t)T * ld, 2.0f);
            if (bf)
                for (size_t i = 0; i < (size_t)T * ld; i++) x[i] = bf16_round(x[i]);
            int32_t *pos = malloc(T * sizeof *pos);
            for (int t = 0; t < T; t++) pos[t] = t == 0 ? 0 : (int)((frand() + 1) * 4000);
            float *dx = dev(x, (size_t)T * ld * 4);
            int32_t *dp = dev(pos, T * sizeof *pos);
            ops_rope_neox_ref(x, ld, T, H, hd, pos, 10000.f, bf ? OPS_BF16 : 0);
            B->rope_neox(B, dx, ld, T, H, hd, dp, 10000.f, bf ? OPS_BF16 : 0);
            float *g = down(dx, (size_t)T * ld);
            EXPECT_ERR(rel_l2(g, x, (size_t)T * ld), bf ? 4e-3 : 2e-5, "rope T%d H%d hd%d bf16%d", T, H, hd, bf);
            B->free(B, dx), B->free(B, dp);
            free(x), free(pos), free(g);
        }
}

typedef struct AttCase {
    int nb, tq, tk, H, D, causal, q_off, gh, gw, fused, bf16_bias;
    int mma; /* 1: aligned strides and bf16-valued inputs, as the vision encoder calls it: the tensor-core kernel
                on sm_80+ (P enters the second product in bf16, so the tolerance is that of a bf16 product) */
} AttCase;

/* f16: run with the backend in f16 mode (set_gemm_f16), where the bf16 tensor-core kernel must not run: the SIMT
 * kernels' tolerance applies even to mma cases. */
static void attention_case(AttCase c, int f16) {
    int W = c.H * c.D, ld = c.fused ? 3 * W + (c.mma ? 4 : 1) : W + (c.mma ? 4 : 3);
    size_t qrows = (size_t)c.nb * c.tq, krows = (size_t)c.nb * c.tk;
    /* fused: q, k, v are column slices of one [rows, 3W+1] buffer (tq == tk) */
    float *qkv = rnd((c.fused ? qrows : qrows + 2 * krows) * ld, 1.5f);
    if (c.mma)
        for (size_t i = 0; i < (c.fused ? qrows : qrows + 2 * krows) * ld; i++) qkv[i] = bf16_round(qkv[i]);
    float *q = qkv, *k = c.fused ? qkv + W : qkv + qrows * ld, *v = c.fused ? qkv + 2 * W : k + krows * ld;
    float *rh = c.gh ? rnd((size_t)(2 * c.gh - 1) * c.D, 0.5f) : NULL, *rw = c.gh ? rnd((size_t)(2 * c.gw - 1) * c.D, 0.5f) : NULL;
    int ldo = W + (c.mma ? 2 : 1);
    float *ref = malloc(qrows * ldo * 4);
    for (size_t i = 0; i < qrows * ldo; i++) ref[i] = 0;
    OpsAttention a = {.out = ref, .q = q, .k = k, .v = v, .ldo = ldo, .ldq = ld, .ldk = ld, .ldv = ld,
                      .n_batch = c.nb, .tq = c.tq, .tk = c.tk, .n_heads = c.H, .head_dim = c.D,
                      .scale = 1.0f / sqrtf((float)c.D), .causal = c.causal, .q_offset = c.q_off,
                      .relpos_h = rh, .relpos_w = rw, .grid_h = c.gh, .grid_w = c.gw, .bf16_bias = c.bf16_bias};
    ops_attention_ref(&a);
    size_t qkv_n = (c.fused ? qrows : qrows + 2 * krows) * ld;
    float *dqkv = dev(qkv, qkv_n * 4), *dout = dev_nan(qrows * ldo);
    float *drh = c.gh ? dev(rh, (size_t)(2 * c.gh - 1) * c.D * 4) : NULL;
    float *drw = c.gh ? dev(rw, (size_t)(2 * c.gw - 1) * c.D * 4) : NULL;
    OpsAttention d = a;
    d.out = dout;
    d.q = dqkv;
    d.k = dqkv + (k - qkv);
    d.v = dqkv + (v - qkv);
    d.relpos_h = drh;
    d.relpos_w = drw;
    if (f16) B->set_gemm_f16(B, 1);
    B->attention(B, &d);
    if (f16) B->set_gemm_f16(B, 0);
    float *g = down(dout, qrows * ldo);
    /* bf16 bias: a term on a bf16 rounding boundary may round the other way (fp32 vs double sums) */
    EXPECT_ERR(rel_l2_rows(g, ldo, ref, ldo, (int)qrows, W), c.mma && !f16 ? 8e-3 : c.bf16_bias ? 1e-3 : 2e-5,
               "attention nb%d tq%d tk%d H%d D%d causal%d off%d grid%dx%d bf16bias%d mma%d f16%d", c.nb, c.tq, c.tk,
               c.H, c.D, c.causal, c.q_off, c.gh, c.gw, c.bf16_bias, c.mma, f16);
    /* bf16 storage (io_bf16, where the backend takes it): the same call on bf16 copies of q, k, v (rows 16-byte
     * aligned) gives the fp32 call's output rounded to bf16, bit for bit */
    OpsAttention e = d;
    e.io_bf16 = 1;
    e.ldq = e.ldk = e.ldv = ld + 4; /* ld ≡ 4 (mod 8) in the mma cases */
    if (c.mma && !f16 && B->attention_bf16 && B->attention_bf16(B, &e)) {
        const int ld16 = ld + 4;
        const size_t nrows = qkv_n / ld;
        uint16_t *h16 = calloc(nrows * ld16, 2), *o16 = malloc(qrows * ldo * 2);
        for (size_t r = 0; r < nrows; r++)
            for (int j = 0; j < ld; j++) h16[r * ld16 + j] = f32_to_bf16(qkv[r * ld + j]);
        for (size_t i = 0; i < qrows * ldo; i++) o16[i] = 0xffffu; /* NaN: poison */
        uint16_t *d16 = dev(h16, nrows * ld16 * 2), *do16 = dev(o16, qrows * ldo * 2);
#define AT16(p) (float *)(d16 + (size_t)((p) - qkv) / ld * ld16 + (size_t)((p) - qkv) % ld)
        e.q = AT16(q);
        e.k = AT16(k);
        e.v = AT16(v);
#undef AT16
        e.out = (float *)do16;
        B->attention(B, &e);
        B->download(B, o16, do16, qrows * ldo * 2);
        size_t bad = 0;
        for (size_t r = 0; r < qrows; r++)
            for (int j = 0; j < W; j++) bad += o16[r * ldo + j] != f32_to_bf16(g[r * ldo + j]);
        printf("  %-60s %zu of %zu differ from the fp32 call's\n", "  io_bf16", bad, qrows * (size_t)W);
        CHECKF(bad == 0, "attention io_bf16 nb%d tq%d grid%dx%d: %zu outputs differ", c.nb, c.tq, c.gh, c.gw, bad);
        B->free(B, d16), B->free(B, do16);
        free(h16), free(o16);
    }
    B->free(B, dqkv), B->free(B, dout);
    if (drh) B->free(B, drh), B->free(B, drw);
    free(qkv), free(rh), free(rw), free(ref), free(g);
}

static void test_attention(void) {
    AttCase cases[] = {
        {1, 257, 257, 3, 64, 0, 0, 0, 0, 1, 0, 0},   /* CLIP-like, fused qkv */
        {3, 196, 196, 2, 64, 0, 0, 14, 14, 1, 0, 0}, /* SAM windows with rel-pos */
        {1, 63, 63, 2, 64, 0, 0, 9, 7, 1, 0, 0},     /* rel-pos on an odd, non-square grid */
        {2, 37, 50, 2, 128, 1, 13, 0, 0, 0, 0, 0},   /* causal with offset, decoder head size */
        {1, 70, 70, 2, 128, 1, 0, 0, 0, 1, 0, 0},    /* causal prefill */
        {2, 5, 300, 1, 40, 0, 0, 0, 0, 0, 0, 0},     /* odd head_dim */
        {1, 33, 33, 3, 20, 0, 0, 0, 0, 0, 0, 0},     /* one thread a query */
        {1, 17, 9, 2, 200, 0, 0, 0, 0, 0, 0, 0},     /* head_dim > 128: plain kernel */
        {1, 1, 1, 1, 64, 0, 0, 0, 0, 0, 0, 0},
        {1, 1600, 1600, 1, 64, 0, 0, 40, 40, 1, 0, 0}, /* SAM global at 640 px, one head */
        {2, 196, 196, 2, 64, 0, 0, 14, 14, 1, 1, 0}, /* bf16 bias (the official bf16 run) */
        {1, 63, 63, 1, 200, 0, 0, 7, 9, 0, 1, 0},    /* bf16 bias in the plain kernel */
        {1, 63, 63, 1, 200, 0, 0, 7, 9, 0, 0, 0},
        /* the tensor-core kernel (sm_80+; elsewhere these run the SIMT kernel, well inside the tolerance) */
        {1, 4096, 4096, 2, 64, 0, 0, 64, 64, 1, 1, 1}, /* SAM global block at 1024 px, bf16 bias */
        {25, 196, 196, 2, 64, 0, 0, 14, 14, 1, 1, 1},  /* SAM windows */
        {1, 1600, 1600, 1, 64, 0, 0, 40, 40, 1, 0, 1}, /* SAM global at 640 px, fp32 bias (the SIMT kernel) */
        {1, 1600, 1600, 2, 64, 0, 0, 40, 40, 1, 1, 1}, /* SAM global at 640 px, bf16 bias */
        {2, 192, 192, 2, 64, 0, 0, 3, 64, 1, 1, 1},    /* key tiles = grid rows, odd grid height */
        {1, 15, 15, 2, 64, 0, 0, 5, 3, 1, 1, 1},       /* a small grid: key table past tk */
        {3, 130, 130, 1, 64, 0, 0, 13, 10, 0, 1, 1},   /* separate q/k/v, bf16 bias, partial query tile */
        {1, 257, 257, 3, 64, 0, 0, 0, 0, 1, 0, 1},     /* CLIP */
        {1, 63, 63, 2, 64, 0, 0, 9, 7, 1, 0, 1},       /* odd, non-square grid */
        {2, 5, 300, 1, 64, 0, 0, 0, 0, 0, 0, 1},       /* separate q/k/v, more keys than queries */
        {1, 130, 70, 1, 64, 0, 0, 0, 0, 0, 0, 1},      /* more queries than keys, partial tiles */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) attention_case(cases[i], 0);
}

static void kv_case(int dtype, int H, int D, int bs, int n_blocks, int n_rows, int two_seqs) {
    int L = 2, width = H * D, layer = 1;
    KvCache host;
    DsError e;
    REQUIRE(kvcache_new_typed(&host, L, width, bs, n_blocks, dtype, &e) == DSOCR_OK);
    size_t pool = kvcache_bytes(L, width, bs, n_blocks) * (dtype == DS_F32 ? 2 : 1);
    /* two sequences over a shuffled block list */
    int32_t *perm = malloc(n_blocks * sizeof *perm);
    for (int i = 0; i < n_blocks; i++) perm[i] = i;
    for (int i = n_blocks - 1; i > 0; i--) {
        int j = (int)((frand() + 1) * 0.5 * (i + 1)) % (i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int half = two_seqs ? n_blocks / 2 : n_blocks;
    const int32_t *tab0 = perm, *tab1 = two_seqs ? perm + half : perm;
    int cap0 = half * bs, cap1 = (n_blocks - half) * bs;
    /* fill every position of both sequences: seq 0 in two writes, seq 1 in one */
    int capm = cap0 > cap1 ? cap0 : cap1;
    float *kk = rnd((size_t)capm * width, 1.0f), *vv = rnd((size_t)capm * width, 1.0f);
    void *dkvdata = B->alloc(B, pool);
    REQUIRE(dkvdata);
    B->memset0(B, dkvdata, pool);
    KvCache dkv = host;
    dkv.data = dkvdata;
    float *dk = dev(kk, (size_t)capm * width * 4), *dv = dev(vv, (size_t)capm * width * 4);
    int split = cap0 / 3;
    kv_write(&host, layer, tab0, 0, split, kk, width, vv, width);
    kv_write(&host, layer, tab0, split, cap0 - split, kk + (size_t)split * width, width, vv + (size_t)split * width, width);
    B->kv_write(B, &dkv, layer, tab0, 0, split, dk, width, dv, width);
    B->kv_write(B, &dkv, layer, tab0, split, cap0 - split, dk + (size_t)split * width, width, dv + (size_t)split * width,
                width);
    if (two_seqs) {
        kv_write(&host, layer, tab1, 0, cap1, kk, width, vv, width);
        B->kv_write(B, &dkv, layer, tab1, 0, cap1, dk, width, dv, width);
    }
    void *pool_back = malloc(pool);
    B->download(B, pool_back, dkvdata, pool);
    CHECKF(memcmp(pool_back, host.data, pool) == 0, "kv_write pool differs (%s H%d D%d bs%d)",
           dtype == DS_BF16 ? "bf16" : "f32", H, D, bs);
    /* queries: rows at random positions of random sequences, the last row at the end of sequence 0 */
    int ldq = width + 3;
    float *q = rnd((size_t)n_rows * ldq, 1.0f);
    int32_t *pos = malloc(n_rows * sizeof *pos), *seq = malloc(n_rows * sizeof *seq);
    for (int r = 0; r < n_rows; r++) {
        seq[r] = two_seqs && r % 2;
        int cap = seq[r] ? cap1 : cap0;
        pos[r] = r == n_rows - 1 ? cap - 1 : (int)((frand() + 1) * 0.5 * cap) % cap;
    }
    if (!two_seqs) seq[0] = 0;
    const int32_t *tables[2] = {tab0, tab1};
    float *ref = malloc((size_t)n_rows * width * 4);
    OpsAttentionKv a = {.out = ref, .q = q, .ldo = width, .ldq = ldq, .n = n_rows, .pos = pos,
                        .seq = two_seqs ? seq : NULL, .tables = tables, .kv = &host, .layer = layer,
                        .n_heads = H, .head_dim = D, .scale = 1.0f / sqrtf((float)D)};
    ops_attention_kv_ref(&a);
    int32_t *dt0 = dev(tab0, half * 4), *dt1 = two_seqs ? dev(tab1, (n_blocks - half) * 4) : dt0;
    const int32_t *dtabs_h[2] = {dt0, dt1};
    void *dtabs = dev(dtabs_h, sizeof dtabs_h);
    float *dq = dev(q, (size_t)n_rows * ldq * 4), *dout = dev_nan((size_t)n_rows * width);
    int32_t *dpos = dev(pos, n_rows * 4), *dseq = dev(seq, n_rows * 4);
    OpsAttentionKv d = a;
    d.out = dout;
    d.q = dq;
    d.pos = dpos;
    d.seq = two_seqs ? dseq : NULL;
    d.tables = (const int32_t *const *)dtabs;
    d.kv = &dkv;
    B->attention_kv(B, &d);
    float *g = down(dout, (size_t)n_rows * width);
    EXPECT_ERR(rel_l2(g, ref, (size_t)n_rows * width), 2e-5, "attention_kv %s H%d D%d bs%d blocks%d rows%d seqs%d",
               dtype == DS_BF16 ? "bf16" : "f32", H, D, bs, n_blocks, n_rows, two_seqs + 1);
    free(g);
    /* outputs rounded to bf16 inside the kernel (round_bf16): bf16 values, a rounding step from the reference */
    a.round_bf16 = d.round_bf16 = 1;
    ops_attention_kv_ref(&a);
    B->attention_kv(B, &d);
    g = down(dout, (size_t)n_rows * width);
    CHECKF(all_bf16(g, (size_t)n_rows * width), "attention_kv round_bf16: an output is not a bf16 value");
    EXPECT_ERR(rel_l2(g, ref, (size_t)n_rows * width), 4e-3, "attention_kv round %s H%d D%d bs%d rows%d",
               dtype == DS_BF16 ? "bf16" : "f32", H, D, bs, n_rows);
    B->free(B, dkvdata), B->free(B, dk), B->free(B, dv), B->free(B, dt0), B->free(B, dtabs);
    if (two_seqs) B->free(B, dt1);
    B->free(B, dq), B->free(B, dout), B->free(B, dpos), B->free(B, dseq);
    kvcache_free(&host);
    free(perm), free(kk), free(vv), free(pool_back), free(q), free(pos), free(seq), free(ref), free(g);
}

static void test_kv(void) {
    kv_case(DS_BF16, 3, 128, 16, 7, 5, 1);
    kv_case(DS_F32, 3, 128, 16, 7, 5, 1);
    kv_case(DS_BF16, 10, 128, 64, 32, 1, 0);   /* decode at ~2000 tokens: split keys */
    kv_case(DS_BF16, 10, 128, 64, 128, 1, 0);  /* decode in an 8192-token pool */
    kv_case(DS_BF16, 10, 128, 64, 16, 3, 0);   /* a few rows, split keys */
    kv_case(DS_BF16, 2, 40, 5, 9, 300, 1);     /* many rows (prefill-like), odd head_dim and block size */
    kv_case(DS_F32, 2, 64, 16, 40, 7, 1);      /* split keys, two sequences */
    kv_case(DS_F32, 1, 256, 3, 11, 2, 0);
    kv_case(DS_BF16, 1, 300, 8, 4, 3, 1);      /* head_dim > 256 */
}

static void conv_case(int in_h, int in_w, int in_c, int out_c, int k, int stride, int pad, int wdt, int with_bias,
                      size_t scratch_n, int exact) {
    OpsConv2d c = {in_h, in_w, in_c, out_c, k, k, stride, pad};
    int Ho = ops_conv2d_out_h(&c), Wo = ops_conv2d_out_w(&c);
    size_t xn = (size_t)in_h * in_w * in_c, wn = (size_t)out_c * in_c * k * k, yn = (size_t)Ho * Wo * out_c;
    float *x = rnd(xn, 1.0f);
    void *wh = wdt == DS_BF16 ? (void *)rnd_bf16(wn, 0.3f) : (void *)rnd(wn, 0.3f);
    float *bh = rnd(out_c, 1.0f), *ref = malloc(yn * 4);
    ops_conv2d_ref(ref, x, &c, ds_w(wh, wdt), with_bias ? ds_w(bh, DS_F32) : ds_w_none(), NULL, 0);
    float *dx = dev(x, xn * 4), *dy = dev_nan(yn), *db = dev(bh, out_c * 4), *ds = dev_nan(scratch_n ? scratch_n : 1);
    void *dw = dev(wh, wn * (wdt == DS_BF16 ? 2 : 4));
    backend_cuda_set_exact_gemm(B, exact);
    B->conv2d(B, dy, dx, &c, ds_w(dw, wdt), with_bias ? ds_w(db, DS_F32) : ds_w_none(), scratch_n ? ds : NULL, scratch_n);
    backend_cuda_set_exact_gemm(B, 0);
    float *g = down(dy, yn);
    double tol = wdt == DS_BF16 && Ho * Wo > 8 ? (exact ? 1e-4 : 6e-3) : 2e-5;
    EXPECT_ERR(rel_l2(g, ref, yn), tol, "conv2d %dx%dx%d->%d k%d s%d p%d %s bias%d scratch%zu exact%d", in_h, in_w, in_c,
               out_c, k, stride, pad, wdt == DS_BF16 ? "bf16" : "f32", with_bias, scratch_n, exact);
    B->free(B, dx), B->free(B, dy), B->free(B, db), B->free(B, ds), B->free(B, dw);
    free(x), free(wh), free(bh), free(ref), free(g);
}

static void test_conv2d(void) {
    conv_case(48, 32, 3, 24, 16, 16, 0, DS_BF16, 1, 6 * 768, 0); /* patch embed */
    conv_case(48, 32, 3, 24, 16, 16, 0, DS_F32, 1, 768, 0);      /* one pixel a pass */
    conv_case(9, 7, 5, 6, 3, 1, 1, DS_BF16, 0, 63 * 45, 0);
    conv_case(9, 7, 5, 6, 3, 1, 1, DS_BF16, 0, 100, 1);
    conv_case(11, 13, 8, 16, 3, 2, 1, DS_F32, 0, 1000, 0);
    conv_case(6, 5, 12, 7, 1, 1, 0, DS_BF16, 1, 0, 0);           /* 1x1: no scratch */
    conv_case(2, 2, 4, 3, 3, 2, 1, DS_BF16, 0, 36, 0);           /* one output pixel: GEMV */
}

static void test_swiglu(void) {
    static const int cases[][3] = {{1, 40, 24}, {5, 64, 48}, {37, 40, 24}, {3, 1280, 896}, {1, 1280, 6848}};
    for (size_t s = 0; s < sizeof cases / sizeof cases[0]; s++)
        for (int bf = 0; bf < 2; bf++) {
            int n = cases[s][0], D = cases[s][1], F = cases[s][2];
            float *x = rnd((size_t)n * D, 1.0f);
            if (bf)
                for (size_t i = 0; i < (size_t)n * D; i++) x[i] = bf16_round(x[i]);
            uint16_t *g = rnd_bf16((size_t)F * D, 0.2f), *u = rnd_bf16((size_t)F * D, 0.2f), *dn = rnd_bf16((size_t)D * F, 0.2f);
            float *ref = malloc((size_t)n * D * 4), *scr = malloc(2 * (size_t)n * F * 4);
            ops_expert_ffn_ref(ref, x, n, D, F, ds_w(g, DS_BF16), ds_w(u, DS_BF16), ds_w(dn, DS_BF16), bf ? OPS_BF16 : 0, scr);
            float *dx = dev(x, (size_t)n * D * 4), *dy = dev_nan((size_t)n * D), *ds = dev_nan(2 * (size_t)n * F);
            void *dg = dev(g, (size_t)F * D * 2), *du = dev(u, (size_t)F * D * 2), *dd = dev(dn, (size_t)F * D * 2);
            B->swiglu(B, dy, dx, n, D, F, ds_w(dg, DS_BF16), ds_w(du, DS_BF16), ds_w(dd, DS_BF16), bf ? OPS_BF16 : 0, ds);
            float *out = down(dy, (size_t)n * D);
            double tol = bf ? 4e-3 : n > 8 ? 6e-3 : 2e-5;
            EXPECT_ERR(rel_l2(out, ref, (size_t)n * D), tol, "swiglu n%d D%d F%d bf16%d", n, D, F, bf);
            B->free(B, dx), B->free(B, dy), B->free(B, ds), B->free(B, dg), B->free(B, du), B->free(B, dd);
            free(x), free(g), free(u), free(dn), free(ref), free(scr), free(out);
        }
}

/* The SwiGLU block on block-quantised weights (the dense MLP of a Q8_0 / 4-bit model) against ops_expert_ffn_ref on
 * the same blocks: one row runs gateup1_k + qdown1_k (moe_cuda.cu), a few rows the block GEMV. */
static void test_swiglu_q(void) {
    static const int cases[][4] = {{1, 1280, 6848, DS_Q8_0}, {1, 96, 160, DS_Q8_0}, {1, 64, 96, DS_Q4_0},
                                   {3, 1280, 896, DS_Q8_0},  {2, 160, 96, DS_Q4_0}, {1, 32, 32, DS_Q4_0}};
    for (size_t s = 0; s < sizeof cases / sizeof cases[0]; s++)
        for (int bf = 0; bf < 2; bf++) {
            const int n = cases[s][0], D = cases[s][1], F = cases[s][2], dt = cases[s][3];
            float *x = rnd((size_t)n * D, 1.0f);
            if (bf)
                for (size_t i = 0; i < (size_t)n * D; i++) x[i] = bf16_round(x[i]);
            size_t gb, ub, db;
            void *g = mk_weight((size_t)F * D, 0.2f, dt, &gb), *u = mk_weight((size_t)F * D, 0.2f, dt, &ub);
            void *dn = mk_weight((size_t)D * F, 0.2f, dt, &db);
            float *ref = malloc((size_t)n * D * 4), *scr = malloc(2 * (size_t)n * F * 4);
            ops_expert_ffn_ref(ref, x, n, D, F, ds_w(g, (DsDtype)dt), ds_w(u, (DsDtype)dt), ds_w(dn, (DsDtype)dt),
                               bf ? OPS_BF16 : 0, scr);
            float *dx = dev(x, (size_t)n * D * 4), *dy = dev_nan((size_t)n * D), *ds = dev_nan(2 * (size_t)n * F);
            void *dg = dev(g, gb), *du = dev(u, ub), *dd = dev(dn, db);
            B->swiglu(B, dy, dx, n, D, F, ds_w(dg, (DsDtype)dt), ds_w(du, (DsDtype)dt), ds_w(dd, (DsDtype)dt),
                      bf ? OPS_BF16 : 0, ds);
            float *out = down(dy, (size_t)n * D);
            EXPECT_ERR(rel_l2(out, ref, (size_t)n * D), bf ? 4e-3 : 2e-5, "swiglu %s n%d D%d F%d bf16%d", dt_name(dt), n,
                       D, F, bf);
            B->free(B, dx), B->free(B, dy), B->free(B, ds), B->free(B, dg), B->free(B, du), B->free(B, dd);
            free(x), free(g), free(u), free(dn), free(ref), free(scr), free(out);
        }
}

/* f16 mode (backend.h set_gemm_f16), what a card without bf16 (sm_75) runs: linear on bf16, Q8_0 or fp32 weights
 * against ops_linear_ref on the exact values. Many rows take fp16 inputs: the activations rounded to fp16 (11
 * significant bits: a relative error of at most 2^-11 each), bf16 weights exact in fp16, a Q8_0 value d·q rounded
 * to fp16; fp32 accumulation. Over random terms that is about 1.9e-4 relative L2 (2.6e-4 with Q8_0; numpy
 * simulation of these shapes), so the bound is 5e-4, which the bf16 path (8 bits: about 1.5e-3) would fail: a pass
 * also says the fp16 path ran. SwiGLU (three products, simulated 3.4e-4) gets 1e-3. fp32 weights (fp32 GEMM) and few rows (the GEMV) keep fp32 arithmetic: 2e-5.
 * sat: activations up to ±1e6 and ±inf in row 0 must saturate to ±65504 (never inf): the reference sees the
 * saturated values; a NaN in row 1 makes that row NaN and leaves the others finite. */
static void f16_linear_case(int M, int K, int N, int wdt, int with_bias, int accum, int sat) {
    int ldx = K + 3, ldy = N + 1;
    float *x = rnd((size_t)M * ldx, sat ? 1e6f : 1.0f);
    if (sat && K >= 2) x[0] = INFINITY, x[1] = -INFINITY;
    if (sat && M >= 2) x[ldx] = NAN;
    float *xs = malloc((size_t)M * ldx * 4); /* what the fp16 inputs hold, before rounding */
    for (size_t i = 0; i < (size_t)M * ldx; i++) xs[i] = fabsf(x[i]) > 65504.f ? copysignf(65504.f, x[i]) : x[i];
    size_t wbytes;
    void *wh = mk_weight((size_t)N * K, 0.5f, wdt, &wbytes);
    uint16_t *bh = rnd_bf16(N, 1.0f);
    float *y0 = rnd((size_t)M * ldy, 1.0f), *yr = malloc((size_t)M * ldy * 4);
    memcpy(yr, y0, (size_t)M * ldy * 4);
    DsW bias = with_bias ? ds_w(bh, DS_BF16) : ds_w_none();
    ops_linear_ref(yr, ldy, xs, ldx, M, K, ds_w(wh, (DsDtype)wdt), N, bias, accum ? OPS_ACCUM : 0);
    float *dx = dev(x, (size_t)M * ldx * 4), *dy = accum ? dev(y0, (size_t)M * ldy * 4) : dev_nan((size_t)M * ldy);
    void *dw = dev(wh, wbytes), *db = dev(bh, (size_t)N * 2);
    B->set_gemm_f16(B, 1);
    B->linear(B, dy, ldy, dx, ldx, M, K, ds_w(dw, (DsDtype)wdt), N, with_bias ? ds_w(db, DS_BF16) : ds_w_none(),
              accum ? OPS_ACCUM : 0);
    B->set_gemm_f16(B, 0);
    float *yg = down(dy, (size_t)M * ldy);
    const double tol = wdt != DS_F32 && M > 8 ? 5e-4 : 2e-5;
    char what[160];
    snprintf(what, sizeof what, "f16 linear M%d K%d N%d %s bias%d accum%d sat%d", M, K, N, dt_name(wdt), with_bias,
             accum, sat);
    if (sat && M >= 2) {
        int nan_row = 1, finite = 1;
        for (int n = 0; n < N; n++) nan_row = nan_row && yg[(size_t)ldy + n] != yg[(size_t)ldy + n];
        for (int m = 0; m < M; m++)
            for (int n = 0; m != 1 && n < N; n++) finite = finite && isfinite(yg[(size_t)m * ldy + n]);
        CHECKF(nan_row, "%s: a NaN input did not give a NaN row", what);
        CHECKF(finite, "%s: an output is inf or NaN", what);
        /* the other rows: row 0, then rows 2.. */
        EXPECT_ERR(rel_l2_rows(yg, ldy, yr, ldy, 1, N), tol, "%s row 0", what);
        EXPECT_ERR(rel_l2_rows(yg + 2 * (size_t)ldy, ldy, yr + 2 * (size_t)ldy, ldy, M - 2, N), tol, "%s rows 2..", what);
    } else {
        EXPECT_ERR(rel_l2_rows(yg, ldy, yr, ldy, M, N), tol, "%s", what);
    }
    B->free(B, dx), B->free(B, dy), B->free(B, dw), B->free(B, db);
    free(x), free(xs), free(wh), free(bh), free(y0), free(yr), free(yg);
}

static void test_f16(void) {
    REQUIRE(B->set_gemm_f16 != NULL);
    static const int shapes[][3] = {{9, 64, 64},     {17, 513, 300}, {33, 1, 9},      {130, 40, 7},
                                    {200, 257, 513}, {64, 768, 256}, {77, 1280, 200}, {3, 96, 37}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        f16_linear_case(M, K, N, DS_BF16, (int)(s & 1), (int)(s >> 1 & 1), 0);
        f16_linear_case(M, K, N, DS_F32, 1, 0, 0);
        if (K % 32 == 0) {
            f16_linear_case(M, K, N, DS_Q8_0, (int)(s & 1), 0, 0);
            f16_linear_case(M, K, N, DS_Q4_0, 0, (int)(s & 1), 0);
        }
    }
    /* the scratch holds 16M activations (xb) and 8M weights (wq): long rows make the chunked loops cheap to test */
    f16_linear_case(9, 64000, 140, DS_BF16, 1, 0, 0);  /* the weight in two column chunks */
    f16_linear_case(12, 64000, 140, DS_Q8_0, 0, 1, 0);
    f16_linear_case(90, 200000, 4, DS_BF16, 1, 0, 0);  /* two row chunks, the weight converted once */
    f16_linear_case(17, 1000000, 9, DS_BF16, 0, 0, 0); /* row chunks and column chunks */
    f16_linear_case(37, 300, 65, DS_BF16, 1, 0, 1);    /* saturation (many rows only: the GEMV has no fp16) */
    f16_linear_case(64, 1280, 96, DS_Q8_0, 0, 0, 1);
    /* the SwiGLU block and conv2d are built on linear (SwiGLU: three fp16 products, errors compounding) */
    {
        const int n = 37, D = 64, F = 96;
        float *x = rnd((size_t)n * D, 1.0f), *ref = malloc((size_t)n * D * 4), *scr = malloc(2 * (size_t)n * F * 4);
        uint16_t *g = rnd_bf16((size_t)F * D, 0.2f), *u = rnd_bf16((size_t)F * D, 0.2f), *dn = rnd_bf16((size_t)D * F, 0.2f);
        ops_expert_ffn_ref(ref, x, n, D, F, ds_w(g, DS_BF16), ds_w(u, DS_BF16), ds_w(dn, DS_BF16), 0, scr);
        float *dx = dev(x, (size_t)n * D * 4), *dy = dev_nan((size_t)n * D), *ds = dev_nan(2 * (size_t)n * F);
        void *dg = dev(g, (size_t)F * D * 2), *du = dev(u, (size_t)F * D * 2), *dd = dev(dn, (size_t)F * D * 2);
        B->set_gemm_f16(B, 1);
        B->swiglu(B, dy, dx, n, D, F, ds_w(dg, DS_BF16), ds_w(du, DS_BF16), ds_w(dd, DS_BF16), 0, ds);
        B->set_gemm_f16(B, 0);
        float *out = down(dy, (size_t)n * D);
        EXPECT_ERR(rel_l2(out, ref, (size_t)n * D), 1e-3, "f16 swiglu n%d D%d F%d", n, D, F);
        B->free(B, dx), B->free(B, dy), B->free(B, ds), B->free(B, dg), B->free(B, du), B->free(B, dd);
        free(x), free(g), free(u), free(dn), free(ref), free(scr), free(out);
    }
    {
        OpsConv2d c = {64, 48, 3, 24, 16, 16, 16, 0}; /* the patch embedding: 12 pixels, one pass */
        const int Ho = ops_conv2d_out_h(&c), Wo = ops_conv2d_out_w(&c);
        size_t xn = (size_t)c.in_h * c.in_w * c.in_c, wn = (size_t)c.out_c * c.in_c * c.kh * c.kw,
               yn = (size_t)Ho * Wo * c.out_c, sn = (size_t)Ho * Wo * (wn / c.out_c);
        float *x = rnd(xn, 1.0f), *bh = rnd(c.out_c, 1.0f), *ref = malloc(yn * 4);
        uint16_t *wh = rnd_bf16(wn, 0.3f);
        ops_conv2d_ref(ref, x, &c, ds_w(wh, DS_BF16), ds_w(bh, DS_F32), NULL, 0);
        float *dx = dev(x, xn * 4), *dy = dev_nan(yn), *db = dev(bh, c.out_c * 4), *ds = dev_nan(sn);
        void *dw = dev(wh, wn * 2);
        B->set_gemm_f16(B, 1);
        B->conv2d(B, dy, dx, &c, ds_w(dw, DS_BF16), ds_w(db, DS_F32), ds, sn);
        B->set_gemm_f16(B, 0);
        float *out = down(dy, yn);
        EXPECT_ERR(rel_l2(out, ref, yn), 5e-4, "f16 conv2d %dx%dx%d->%d k%d", c.in_h, c.in_w, c.in_c, c.out_c, c.kh);
        B->free(B, dx), B->free(B, dy), B->free(B, db), B->free(B, ds), B->free(B, dw);
        free(x), free(bh), free(ref), free(wh), free(out);
    }
    /* attention: no bf16 tensor-core kernel in f16 mode (sm_75 has no bf16 mma), so cases the mma kernel takes on
     * sm_80+ meet the SIMT kernels' fp32 tolerance */
    AttCase att[] = {
        {1, 1600, 1600, 1, 64, 0, 0, 40, 40, 1, 0, 1}, /* SAM global at 640 px, fp32 bias (the SIMT kernel) */
        {1, 1600, 1600, 2, 64, 0, 0, 40, 40, 1, 1, 1}, /* SAM global at 640 px, bf16 bias */
        {2, 192, 192, 2, 64, 0, 0, 3, 64, 1, 1, 1},    /* key tiles = grid rows, odd grid height */
        {1, 15, 15, 2, 64, 0, 0, 5, 3, 1, 1, 1},       /* a small grid: key table past tk */
        {3, 130, 130, 1, 64, 0, 0, 13, 10, 0, 1, 1},   /* separate q/k/v, bf16 bias, partial query tile */
        {1, 257, 257, 3, 64, 0, 0, 0, 0, 1, 0, 1},     /* CLIP */
        {25, 196, 196, 2, 64, 0, 0, 14, 14, 1, 1, 1},  /* SAM windows, bf16 bias */
    };
    for (size_t i = 0; i < sizeof att / sizeof att[0]; i++) attention_case(att[i], 1);
}

/* The MoE layer on the host from _ref ops (the cpu_moe recipe): returns y, logits (rounded in bf16 mode), idx. */
static void moe_ref(float *y, float *logits, int32_t *idx, const float *x, int n, const BackendMoe *m, int flags) {
    int D = m->d_model, E = m->n_experts, K = m->top_k;
    float *wts = malloc((size_t)n * K * 4), *acc = calloc((size_t)n * D, 4), *yg = malloc((size_t)D * 4);
    float *scr = malloc(2 * (size_t)(m->d_ff > m->d_shared ? m->d_ff : m->d_shared) * n * 4);
    ops_linear_ref(logits, E, x, D, n, D, m->router, E, ds_w_none(), 0);
    ops_moe_route(logits, E, n, E, K, flags, idx, wts);
    if (flags & OPS_BF16) ops_round_bf16_ref(logits, (size_t)n * E);
    for (int e = 0; e < E; e++)
        for (int r = 0; r < n; r++)
            for (int j = 0; j < K; j++)
                if (idx[r * K + j] == e) {
                    ops_expert_ffn_ref(yg, x + (size_t)r * D, 1, D, m->d_ff, m->experts[e].gate, m->experts[e].up,
                                       m->experts[e].down, flags, scr);
                    ops_scale_add_ref(acc + (size_t)r * D, wts[r * K + j], yg, D);
                }
    if (flags & OPS_BF16) ops_round_bf16_ref(acc, (size_t)n * D);
    if (m->shared.gate.data) {
        ops_expert_ffn_ref(y, x, n, D, m->d_shared, m->shared.gate, m->shared.up, m->shared.down, flags, scr);
        ops_add_ref(y, y, acc, (size_t)n * D);
        if (flags & OPS_BF16) ops_round_bf16_ref(y, (size_t)n * D);
    } else {
        memcpy(y, acc, (size_t)n * D * 4);
    }
    free(wts), free(acc), free(yg), free(scr);
}

static void moe_case_dt(int n, int E, int K, int D, int F, int S, int bf, int wdt, int swdt);
/* > 0: the hybrid MoE runs under a budget that leaves its staging cache room for this many bytes (a streamed
 * layer then goes through it in several groups of experts) */
static size_t g_stage_room;
static void moe_case(int n, int E, int K, int D, int F, int S, int bf, int wdt) {
    moe_case_dt(n, E, K, D, F, S, bf, wdt, wdt);
}

/* wdt: routed experts; swdt: shared experts; the router is bf16 when the experts are block-quantised */
static void moe_case_dt(int n, int E, int K, int D, int F, int S, int bf, int wdt, int swdt) {
    BackendMoe hm = {.n_experts = E, .top_k = K, .d_model = D, .d_ff = F, .d_shared = S};
    BackendMoe dm = hm;
    BackendExpert *he = calloc(E, sizeof *he), *de = calloc(E, sizeof *de);
    void *bufs[1024];
    int nb = 0;
#define MKW(hw, dw, count, scale, dt)                                                                         \
    do {                                                                                                      \
        size_t by_;                                                                                           \
        void *h_ = mk_weight((count), (scale), (dt), &by_);                                                   \
        bufs[nb++] = h_;                                                                                      \
        hw = ds_w(h_, (DsDtype)(dt));                                                                         \
        dw = ds_w(dev(h_, by_), (DsDtype)(dt));                                                               \
    } while (0)
    const int rdt = wdt == DS_Q8_0 || wdt == DS_Q4_0 ? DS_BF16 : wdt;
    MKW(hm.router, dm.router, (size_t)E * D, 0.5f, rdt);
    for (int e = 0; e < E; e++) {
        MKW(he[e].gate, de[e].gate, (size_t)F * D, 0.2f, wdt);
        MKW(he[e].up, de[e].up, (size_t)F * D, 0.2f, wdt);
        MKW(he[e].down, de[e].down, (size_t)D * F, 0.2f, wdt);
    }
    if (S) {
        MKW(hm.shared.gate, dm.shared.gate, (size_t)S * D, 0.2f, swdt);
        MKW(hm.shared.up, dm.shared.up, (size_t)S * D, 0.2f, swdt);
        MKW(hm.shared.down, dm.shared.down, (size_t)D * S, 0.2f, swdt);
    }
#undef MKW
    hm.experts = he;
    dm.experts = de;
    float *x = rnd((size_t)n * D, 1.0f);
    if (bf)
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] = bf16_round(x[i]);
    float *y = malloc((size_t)n * D * 4), *lg = malloc((size_t)n * E * 4);
    int32_t *idx = malloc((size_t)n * K * 4);
    moe_ref(y, lg, idx, x, n, &hm, bf ? OPS_BF16 : 0);
    size_t sn = B->moe_scratch_floats(n, &dm);
    float *dx = dev(x, (size_t)n * D * 4), *dy = dev_nan((size_t)n * D), *dl = dev_nan((size_t)n * E), *ds = dev_nan(sn);
    int32_t *di = (int32_t *)dev_nan((size_t)n * K);
    B->moe(B, dy, dx, n, &dm, bf ? OPS_BF16 : 0, dl, di, ds);
    float *gy = down(dy, (size_t)n * D), *gl = down(dl, (size_t)n * E);
    int32_t *gi = malloc((size_t)n * K * 4);
    B->download(B, gi, di, (size_t)n * K * 4);
    int same = memcmp(gi, idx, (size_t)n * K * 4) == 0;
    /* many rows: the shared experts go through the GEMM path (bf16 activations, block weights dequantised to
     * bf16) */
    double tol = bf ? 4e-3 : (S && n > 8 && wdt != DS_F32) ? 8e-3 : 2e-5;
    EXPECT_ERR(rel_l2(gy, y, (size_t)n * D), tol, "moe n%d E%d k%d D%d F%d shared%d bf16%d %s/%s", n, E, K, D, F, S,
               bf, dt_name(wdt), dt_name(swdt));
    EXPECT_ERR(rel_l2(gl, lg, (size_t)n * E), bf ? 4e-3 : 2e-5, "moe router logits n%d", n);
    CHECKF(same, "moe expert choice differs (n%d E%d k%d)", n, E, K);
    /* the hybrid MoE (plan.h): the same layer with its routed experts in host memory, computed on the CPU while
     * the GPU runs the router and the shared experts; the same rules against the reference */
    {
        BackendMoe xm = dm;
        xm.experts = he;
        xm.experts_host = 1;
        float *hy = dev_nan((size_t)n * D), *hl = dev_nan((size_t)n * E);
        int32_t *hi = (int32_t *)dev_nan((size_t)n * K);
        if (g_stage_room) backend_cuda_set_budget(B, B->allocated(B) + ((size_t)32 << 20) + g_stage_room);
        B->moe(B, hy, dx, n, &xm, bf ? OPS_BF16 : 0, hl, hi, ds);
        backend_cuda_set_budget(B, 0);
        float *gh = down(hy, (size_t)n * D);
        int32_t *ghi = malloc((size_t)n * K * 4);
        B->download(B, ghi, hi, (size_t)n * K * 4);
        /* the CPU's Q8_0 products round x to 16 bits a 32-block (cpu/ops_cpu.c xq_quantize): a relative
         * error up to 2^-15 an element, a few 1e-5 over a layer in fp32 */
        const double htol = !bf && wdt == DS_Q8_0 && tol < 1e-4 ? 1e-4 : tol;
        EXPECT_ERR(rel_l2(gh, y, (size_t)n * D), htol, "hybrid moe n%d E%d k%d D%d F%d shared%d bf16%d %s/%s", n, E, K,
                   D, F, S, bf, dt_name(wdt), dt_name(swdt));
        CHECKF(!memcmp(ghi, idx, (size_t)n * K * 4), "hybrid moe expert choice differs (n%d E%d k%d)", n, E, K);
        /* from CU_MOE_STREAM_ROWS rows the host's experts are copied to the GPU and go through the all-GPU
         * path's kernels: the all-GPU result bit for bit */
        if (n >= CU_MOE_STREAM_ROWS)
            CHECKF(!memcmp(gh, gy, (size_t)n * D * 4), "streamed hybrid moe differs from the all-GPU one (n%d E%d k%d "
                   "%s)", n, E, K, dt_name(wdt));
        free(gh), free(ghi);
        B->free(B, hy), B->free(B, hl), B->free(B, hi);
    }
    /* add_rmsnorm_moe (the norm fused into the router kernel on the one-row path) == add_rmsnorm then moe, bit for
     * bit: y, the normed a, the updated residual x */
    {
        float *r = rnd((size_t)n * D, 0.5f), *nw = rnd((size_t)D, 1.0f);
        DsW dnw = ds_w(dev(nw, (size_t)D * 4), DS_F32);
        float *dr = dev(r, (size_t)n * D * 4), *x1 = dev(x, (size_t)n * D * 4), *x2 = dev(x, (size_t)n * D * 4);
        float *a1 = dev_nan((size_t)n * D), *a2 = dev_nan((size_t)n * D), *y2 = dev_nan((size_t)n * D);
        const int fl = bf ? OPS_BF16 : 0;
        B->add_rmsnorm(B, a1, x1, dr, n, D, dnw, 1e-6f, fl);
        B->moe(B, dy, a1, n, &dm, fl, NULL, NULL, ds);
        B->add_rmsnorm_moe(B, y2, a2, x2, dr, n, dnw, 1e-6f, &dm, fl, NULL, NULL, ds);
        float *h[6] = {down(dy, (size_t)n * D), down(y2, (size_t)n * D), down(a1, (size_t)n * D),
                       down(a2, (size_t)n * D), down(x1, (size_t)n * D), down(x2, (size_t)n * D)};
        CHECKF(!memcmp(h[0], h[1], (size_t)n * D * 4) && !memcmp(h[2], h[3], (size_t)n * D * 4) &&
                   !memcmp(h[4], h[5], (size_t)n * D * 4),
               "add_rmsnorm_moe differs from add_rmsnorm + moe (n%d E%d k%d D%d bf16%d %s)", n, E, K, D, bf,
               dt_name(wdt));
        for (int i = 0; i < 6; i++) free(h[i]);
        B->free(B, (void *)dnw.data), B->free(B, dr), B->free(B, x1), B->free(B, x2), B->free(B, a1), B->free(B, a2),
            B->free(B, y2);
        free(r), free(nw);
    }
    B->free(B, dx), B->free(B, dy), B->free(B, dl), B->free(B, ds), B->free(B, di);
    B->free(B, (void *)dm.router.data);
    for (int e = 0; e < E; e++)
        B->free(B, (void *)de[e].gate.data), B->free(B, (void *)de[e].up.data), B->free(B, (void *)de[e].down.data);
    if (S)
        B->free(B, (void *)dm.shared.gate.data), B->free(B, (void *)dm.shared.up.data),
            B->free(B, (void *)dm.shared.down.data);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    free(he), free(de), free(x), free(y), free(lg), free(idx), free(gy), free(gl), free(gi);
}

static void test_moe(void) {
    moe_case(1, 13, 4, 40, 24, 48, 0, DS_BF16);
    moe_case(1, 13, 4, 40, 24, 48, 1, DS_BF16);
    moe_case(3, 16, 6, 64, 32, 0, 0, DS_BF16);
    moe_case(50, 13, 4, 40, 24, 48, 1, DS_BF16);
    moe_case(50, 13, 4, 40, 24, 48, 0, DS_BF16);
    moe_case(7, 9, 2, 33, 17, 20, 0, DS_F32); /* odd sizes: scalar loads */
    moe_case(2, 64, 6, 1280, 896, 1792, 1, DS_BF16); /* the model's shapes */
    moe_case(128, 64, 6, 1280, 896, 1792, 1, DS_BF16); /* a decode batch of 128 pages (route_k + bucket_k) */
    moe_case(300, 13, 4, 40, 24, 48, 1, DS_BF16);
    moe_case(1, 64, 6, 1280, 896, 1792, 1, DS_BF16); /* decode: the single-token kernels */
    moe_case(1, 64, 6, 1280, 896, 1792, 0, DS_BF16);
    moe_case(1, 16, 6, 64, 32, 0, 1, DS_BF16);       /* single token, no shared experts */
    /* block-quantised experts (the 4-bit model keeps its shared experts Q8_0) */
    moe_case(1, 64, 6, 1280, 896, 1792, 1, DS_Q8_0);
    moe_case(1, 64, 6, 1280, 896, 1792, 0, DS_Q8_0);
    moe_case_dt(1, 64, 6, 1280, 896, 1792, 1, DS_Q4_0, DS_Q8_0);
    moe_case_dt(3, 16, 6, 64, 32, 96, 0, DS_Q4_0, DS_Q8_0);
    moe_case_dt(50, 13, 4, 64, 32, 64, 0, DS_Q8_0, DS_Q8_0);
    /* a prefill chunk of the hybrid MoE: its experts streamed to the GPU, all at once, then (a staging cache of
     * 2.5 experts) two at a time */
    moe_case(64, 64, 6, 1280, 896, 1792, 0, DS_Q8_0);
    moe_case_dt(128, 64, 6, 1280, 896, 1792, 0, DS_Q4_0, DS_Q8_0);
    g_stage_room = (size_t)5 * 896 * 1280 * 34 / 32 * 3 / 2;
    moe_case(64, 64, 6, 1280, 896, 1792, 0, DS_Q8_0);
    moe_case(40, 13, 4, 40, 24, 48, 1, DS_BF16);
    g_stage_room = 0;
    /* one token on block weights (route1_k, gateup1_k, qdown1_k) at odd sizes: K/32 odd (rows at 2-byte alignment),
     * fewer blocks than a warp takes at a time, top-8 (the most slots), no shared experts; then a few tokens (the
     * general path's block dot products) */
    moe_case_dt(1, 13, 4, 160, 96, 224, 0, DS_Q4_0, DS_Q8_0);
    moe_case_dt(1, 13, 4, 160, 96, 224, 1, DS_Q4_0, DS_Q8_0);
    moe_case_dt(1, 9, 8, 96, 32, 64, 0, DS_Q8_0, DS_Q8_0);
    moe_case_dt(1, 17, 3, 64, 160, 0, 1, DS_Q4_0, DS_Q4_0);
    moe_case_dt(1, 64, 6, 1280, 896, 1792, 0, DS_Q4_0, DS_Q8_0);
    moe_case_dt(2, 64, 6, 1280, 896, 1792, 0, DS_Q4_0, DS_Q8_0);
    moe_case_dt(5, 13, 4, 160, 96, 224, 1, DS_Q8_0, DS_Q8_0);
    /* many rows in bf16 mode without BE_FP32_SUMS (a batch's decode step): the tensor-core grouped kernels, with
     * experts of 1 to 30-odd rows (two m16 tiles and a partial one) */
    moe_case(64, 64, 6, 1280, 896, 1792, 1, DS_BF16);
    moe_case(128, 64, 6, 1280, 896, 0, 1, DS_Q8_0);
    moe_case(300, 16, 6, 256, 96, 0, 1, DS_BF16);
}

/* The vectorised elementwise and window ops (16 bytes a step where aligned, the rest one by one) and the residual
 * steps of bf16 storage (residual_add, window_unpartition_residual) against the CPU ops, bit for bit. */
static void test_residual_ops(void) {
    Backend *C = backend_cpu();
    const size_t ns[] = {4096, 1003};
    for (int k = 0; k < 2; k++)
        for (int off = 0; off < 2; off++) { /* off: pointers one float past 16-byte alignment */
            const size_t n = ns[k];
            float *a = rnd(n + 1, 2.0f), *c = rnd(n + 1, 2.0f), *want = malloc((n + 1) * 4);
            uint16_t *c16 = malloc((n + 1) * 2);
            for (size_t i = 0; i <= n; i++) c16[i] = f32_to_bf16(c[i]);
            float *da = dev(a, (n + 1) * 4), *dc = dev(c, (n + 1) * 4), *dout = dev_nan(n + 1);
            uint16_t *dc16 = dev(c16, (n + 1) * 2);
            C->add(C, want + off, a + off, c + off, n);
            B->add(B, dout + off, da + off, dc + off, n);
            float *g = down(dout, n + 1);
            CHECKF(exact_eq(g + off, want + off, n), "add n%zu off%d", n, off);
            free(g);
            C->round_bf16(C, want + off, n);
            B->round_bf16(B, dout + off, n);
            g = down(dout, n + 1);
            CHECKF(exact_eq(g + off, want + off, n), "round_bf16 n%zu off%d", n, off);
            free(g);
            if (B->residual_add)
                for (int v = 0; v < 4; v++) { /* v & 1: r in bf16 storage; v & 2: rounded */
                    const int r16 = v & 1, round = (v & 2) != 0;
                    float *x = malloc((n + 1) * 4), *rr = malloc((n + 1) * 4);
                    for (size_t i = 0; i <= n; i++) rr[i] = r16 ? bf16_to_f32(c16[i]) : c[i];
                    memcpy(x, a, (n + 1) * 4);
                    C->add(C, x + off, x + off, rr + off, n);
                    if (round) C->round_bf16(C, x + off, n);
                    B->upload(B, da, a, (n + 1) * 4);
                    B->residual_add(B, da + off, r16 ? (const void *)(dc16 + off) : (const void *)(dc + off), n,
                                    (r16 ? BE_IN_BF16 : 0) | (round ? BE_ROUND : 0));
                    g = down(da, n + 1);
                    CHECKF(exact_eq(g + off, x + off, n), "residual_add n%zu off%d r16 %d round %d", n, off, r16, round);
                    free(g), free(x), free(rr);
                }
            B->free(B, da), B->free(B, dc), B->free(B, dout), B->free(B, dc16);
            free(a), free(c), free(want), free(c16);
        }
    /* windows: C a multiple of 4 (16-byte steps) and not */
    const int Cs[] = {8, 3};
    for (int k = 0; k < 2; k++) {
        const int gsz = 9, Cc = Cs[k], ws = 4, nw = 3;
        const size_t wn = (size_t)nw * nw * ws * ws * Cc, xn = (size_t)gsz * gsz * Cc;
        float *x = rnd(xn, 1.0f), *win = malloc(wn * 4), *wr = rnd(wn, 1.0f);
        uint16_t *w16 = malloc(wn * 2);
        for (size_t i = 0; i < wn; i++) w16[i] = f32_to_bf16(wr[i]);
        C->window_partition(C, win, x, gsz, Cc, ws);
        float *dx = dev(x, xn * 4), *dw = dev_nan(wn);
        B->window_partition(B, dw, dx, gsz, Cc, ws);
        float *g = down(dw, wn);
        CHECKF(exact_eq(g, win, wn), "window_partition C%d", Cc);
        free(g);
        uint16_t *dw16 = dev(w16, wn * 2);
        for (int v = 0; v < (B->window_unpartition_residual ? 5 : 1); v++) {
            /* v 0: window_unpartition_add; 1..4: window_unpartition_residual, (v-1) & 1 bf16 win, & 2 rounded */
            const int r16 = v && ((v - 1) & 1), round = v && ((v - 1) & 2);
            float *want = malloc(xn * 4), *ww = malloc(wn * 4);
            for (size_t i = 0; i < wn; i++) ww[i] = r16 ? bf16_to_f32(w16[i]) : wr[i];
            memcpy(want, x, xn * 4);
            C->window_unpartition_add(C, want, ww, gsz, Cc, ws);
            if (round) C->round_bf16(C, want, xn);
            B->upload(B, dx, x, xn * 4);
            B->upload(B, dw, wr, wn * 4);
            if (v == 0)
                B->window_unpartition_add(B, dx, dw, gsz, Cc, ws);
            else
                B->window_unpartition_residual(B, dx, r16 ? (const void *)dw16 : (const void *)dw, gsz, Cc, ws,
                                               (r16 ? BE_IN_BF16 : 0) | (round ? BE_ROUND : 0));
            g = down(dx, xn);
            CHECKF(exact_eq(g, want, xn), "window unpartition C%d variant %d", Cc, v);
            free(g), free(want), free(ww);
        }
        B->free(B, dx), B->free(B, dw), B->free(B, dw16);
        free(x), free(win), free(wr), free(w16);
    }
    printf("  add, round_bf16, residual_add, window_partition, window_unpartition_add/_residual: bit for bit, aligned "
           "and not\n");
}

/* The GELU table of bf16 products (backend_cuda_gelu_bf16) over every bf16 value: bit for bit gelu on floats
 * (the same device arithmetic) rounded to bf16; NaN stays NaN. */
static void test_gelu_table(void) {
    const size_t n = 65536;
    uint16_t *h = malloc(n * 2), *got = malloc(n * 2);
    float *f = malloc(n * 4);
    for (size_t i = 0; i < n; i++) h[i] = (uint16_t)i, f[i] = bf16_to_f32((uint16_t)i);
    uint16_t *dy = dev(h, n * 2);
    float *dx = dev(f, n * 4), *dref = dev_nan(n);
    backend_cuda_gelu_bf16(B, dy, n);
    B->gelu(B, dref, dx, n);
    float *ref = down(dref, n);
    B->download(B, got, dy, n * 2);
    long bad = 0;
    for (size_t i = 0; i < n; i++) {
        const float g = bf16_to_f32(got[i]);
        const int same = ref[i] != ref[i] ? g != g : got[i] == f32_to_bf16(ref[i]);
        if (!same && bad++ < 4) printf("  gelu table: input 0x%04zx gives 0x%04x, want 0x%04x\n", i, got[i], f32_to_bf16(ref[i]));
    }
    CHECKF(bad == 0, "gelu table: %ld of 65536 bf16 inputs differ from gelu on floats", bad);
    printf("  gelu table: all 65,536 bf16 inputs bit for bit\n");
    B->free(B, dy), B->free(B, dx), B->free(B, dref);
    free(h), free(got), free(f), free(ref);
}

/* residual_layernorm (the residual step, the LayerNorm, bf16 storage, windows) against the ops it fuses on this
 * backend (residual_add, layernorm with BE_ROUND, window_partition), bit for bit: x after the step and every output
 * value, padding rows zero. Shapes of the encoder (768 and 1,024 wide), a 4-wide-unaligned row (37), pointers off
 * 16-byte alignment, bf16 and fp32 weights, with and without the residual and its rounding. */
static void residual_layernorm_case(int g, int ws, int n, int with_r, int round, int wbf16, int off) {
    const int M = g * g, nw = ws ? (g + ws - 1) / ws : 0, Mo = ws ? nw * nw * ws * ws : M;
    const size_t xn = (size_t)M * n + off, yn = (size_t)Mo * n + off;
    float *x = rnd(xn, 2.0f), *wh = rnd(n, 1.0f), *bh = rnd(n, 0.5f);
    uint16_t *r16 = rnd_bf16(xn, 1.0f), *w16 = malloc((size_t)n * 2), *b16 = malloc((size_t)n * 2);
    for (int i = 0; i < n; i++) w16[i] = f32_to_bf16(wh[i]), b16[i] = f32_to_bf16(bh[i]);
    float *dx = dev(x, xn * 4), *dx2 = dev(x, xn * 4), *dyf = dev_nan(yn), *dyw = dev_nan(yn + 1);
    uint16_t *dr = dev(r16, xn * 2);
    void *dw = wbf16 ? dev(w16, (size_t)n * 2) : (void *)dev(wh, (size_t)n * 4);
    void *db = wbf16 ? dev(b16, (size_t)n * 2) : (void *)dev(bh, (size_t)n * 4);
    const DsW W = ds_w(dw, wbf16 ? DS_BF16 : DS_F32), Bi = ds_w(db, wbf16 ? DS_BF16 : DS_F32);
    uint16_t *fill = malloc(yn * 2);
    for (size_t i = 0; i < yn; i++) fill[i] = 0x7fc1;
    uint16_t *dy = dev(fill, yn * 2);
    /* the ops it fuses */
    if (with_r) B->residual_add(B, dx2 + off, dr + off, (size_t)M * n, BE_IN_BF16 | (round ? BE_ROUND : 0));
    B->layernorm(B, dyf + off, n, dx2 + off, n, M, n, W, Bi, 1e-6f, BE_ROUND);
    const float *want_d = dyf;
    if (ws) {
        B->window_partition(B, dyw + off, dyf + off, g, n, ws);
        want_d = dyw;
    }
    float *want = down(want_d, yn), *xw = down(dx2, xn);
    B->residual_layernorm(B, dy + off, dx + off, with_r ? (const void *)(dr + off) : NULL, M, n, g, ws, W, Bi, 1e-6f,
                          round ? BE_ROUND : 0);
    uint16_t *got = malloc(yn * 2);
    B->download(B, got, dy, yn * 2);
    float *xg = down(dx, xn);
    int same = 1;
    for (size_t i = off; i < yn; i++) {
        uint32_t u;
        memcpy(&u, &want[i], 4);
        same &= (u & 0xffffu) == 0 && (uint16_t)(u >> 16) == got[i];
    }
    CHECKF(same, "residual_layernorm g%d ws%d n%d r%d round%d wbf16 %d off%d: output differs", g, ws, n, with_r,
           round, wbf16, off);
    CHECKF(exact_eq(xg + off, xw + off, (size_t)M * n), "residual_layernorm g%d ws%d n%d r%d round%d: x differs", g,
           ws, n, with_r, round);
    B->free(B, dx), B->free(B, dx2), B->free(B, dyf), B->free(B, dyw), B->free(B, dr), B->free(B, dw);
    B->free(B, db), B->free(B, dy);
    free(x), free(wh), free(bh), free(r16), free(w16), free(b16), free(fill), free(want), free(xw), free(got), free(xg);
}
static void test_residual_layernorm(void) {
    if (!B->residual_layernorm) {
        printf("  (no residual_layernorm on this backend)\n");
        return;
    }
    for (int v = 0; v < 8; v++) { /* v & 1: residual; & 2: rounded; & 4: bf16 weights */
        const int r = v & 1, round = (v >> 1) & 1, wb = (v >> 2) & 1;
        residual_layernorm_case(16, 0, 1024, r, round, wb, 0); /* CLIP-like rows (257 in the model) */
        residual_layernorm_case(9, 4, 768, r, round, wb, 0);   /* windows with padding (SAM: 64 in 14s) */
        residual_layernorm_case(8, 0, 768, r, round, wb, 1);   /* off alignment: element by element */
        residual_layernorm_case(7, 3, 37, r, round, wb, 0);    /* n not a multiple of 4 */
    }
    residual_layernorm_case(17, 0, 1024, 1, 0, 1, 0);
    residual_layernorm_case(14, 14, 256, 1, 1, 1, 0); /* one window, no padding */
    printf("  residual_layernorm: bit for bit against residual_add, layernorm BE_ROUND and window_partition\n");
}

static void test_data_movement(void) {
    Backend *C = backend_cpu();
    /* chw_to_hwc */
    int S = 5;
    float *src = rnd(3 * S * S, 1.0f), *r = malloc(3 * S * S * 4);
    C->chw_to_hwc(C, r, src, S);
    float *ds = dev(src, 3 * S * S * 4), *dd = dev_nan(3 * S * S);
    B->chw_to_hwc(B, dd, ds, S);
    float *g = down(dd, 3 * S * S);
    CHECKF(exact_eq(g, r, 3 * S * S), "chw_to_hwc");
    B->free(B, ds), B->free(B, dd), free(src), free(r), free(g);
    /* window partition / unpartition */
    int gsz = 9, Cc = 3, ws = 4, nw = 3;
    size_t wn = (size_t)nw * nw * ws * ws * Cc, xn = (size_t)gsz * gsz * Cc;
    float *x = rnd(xn, 1.0f), *win = malloc(wn * 4), *win2 = rnd(wn, 1.0f), *x2 = malloc(xn * 4);
    C->window_partition(C, win, x, gsz, Cc, ws);
    float *dx = dev(x, xn * 4), *dw = dev_nan(wn);
    B->window_partition(B, dw, dx, gsz, Cc, ws);
    g = down(dw, wn);
    CHECKF(exact_eq(g, win, wn), "window_partition");
    free(g);
    memcpy(x2, x, xn * 4);
    C->window_unpartition_add(C, x2, win2, gsz, Cc, ws);
    B->upload(B, dw, win2, wn * 4);
    B->window_unpartition_add(B, dx, dw, gsz, Cc, ws);
    g = down(dx, xn);
    CHECKF(exact_eq(g, x2, xn), "window_unpartition_add");
    B->free(B, dx), B->free(B, dw), free(x), free(win), free(win2), free(x2), free(g);
    /* embed (more ids than one launch carries) and fill_rows */
    int V = 50, D = 7, n = 1100;
    uint16_t *tab = rnd_bf16((size_t)V * D, 1.0f);
    int32_t *ids = malloc(n * 4);
    for (int i = 0; i < n; i++) ids[i] = (int)((frand() + 1) * 0.5 * V) % V;
    float *e1 = malloc((size_t)n * D * 4);
    C->embed(C, e1, ids, n, ds_w(tab, DS_BF16), D);
    void *dtab = dev(tab, (size_t)V * D * 2);
    float *de = dev_nan((size_t)n * D);
    B->embed(B, de, ids, n, ds_w(dtab, DS_BF16), D);
    g = down(de, (size_t)n * D);
    CHECKF(exact_eq(g, e1, (size_t)n * D), "embed");
    free(g);
    C->fill_rows(C, e1, 13, ds_w(tab + 3 * D, DS_BF16), D);
    B->fill_rows(B, de, 13, ds_w((uint16_t *)dtab + 3 * D, DS_BF16), D);
    g = down(de, (size_t)13 * D);
    CHECKF(exact_eq(g, e1, (size_t)13 * D), "fill_rows");
    free(g);
    B->free(B, dtab), B->free(B, de), free(tab), free(ids), free(e1);
    /* concat_cols and copy_rows with strides */
    int rows = 17, wa = 5, wc = 3, lda = 9, ldc = 4;
    float *a = rnd((size_t)rows * lda, 1.0f), *c = rnd((size_t)rows * ldc, 1.0f), *o = malloc((size_t)rows * (wa + wc) * 4);
    C->concat_cols(C, o, a, lda, wa, c, ldc, wc, rows);
    float *da = dev(a, (size_t)rows * lda * 4), *dc = dev(c, (size_t)rows * ldc * 4), *dout = dev_nan((size_t)rows * (wa + wc));
    B->concat_cols(B, dout, da, lda, wa, dc, ldc, wc, rows);
    g = down(dout, (size_t)rows * (wa + wc));
    CHECKF(exact_eq(g, o, (size_t)rows * (wa + wc)), "concat_cols");
    free(g);
    float *cr = malloc((size_t)rows * lda * 4);
    memcpy(cr, a, (size_t)rows * lda * 4);
    C->copy_rows(C, cr, lda, c, ldc, rows, 3);
    B->copy_rows(B, da, lda, dc, ldc, rows, 3);
    g = down(da, (size_t)rows * lda);
    CHECKF(exact_eq(g, cr, (size_t)rows * lda), "copy_rows");
    printf("  data movement: chw_to_hwc, window_partition, window_unpartition_add, embed, fill_rows, concat_cols, "
           "copy_rows compared bit for bit\n");
    B->free(B, da), B->free(B, dc), B->free(B, dout), free(a), free(c), free(o), free(cr), free(g);
}

/* add_rmsnorm against the CPU backend's (add, round, rmsnorm): the updated residual and the normed rows. */
static void test_add_rmsnorm(void) {
    Backend *C = backend_cpu();
    static const int shapes[][2] = {{1, 1280}, {3, 7}, {5, 1025}, {40, 256}};
    for (size_t sidx = 0; sidx < sizeof shapes / sizeof shapes[0]; sidx++)
        for (int bf = 0; bf < 2; bf++) {
            int M = shapes[sidx][0], n = shapes[sidx][1];
            size_t N = (size_t)M * n;
            float *x = rnd(N, 2.0f), *r = rnd(N, 1.0f), *w = rnd(n, 1.0f), *y = malloc(N * 4);
            float *dx = dev(x, N * 4), *dr = dev(r, N * 4), *dy = dev_nan(N);
            DsW hw = ds_w(w, DS_F32), dw = ds_w(dev(w, (size_t)n * 4), DS_F32);
            C->add_rmsnorm(C, y, x, r, M, n, hw, 1e-6f, bf ? OPS_BF16 : 0);
            B->add_rmsnorm(B, dy, dx, dr, M, n, dw, 1e-6f, bf ? OPS_BF16 : 0);
            float *gx = down(dx, N), *gy = down(dy, N);
            CHECKF(exact_eq(gx, x, N), "add_rmsnorm residual M%d n%d bf16%d", M, n, bf);
            EXPECT_ERR(rel_l2(gy, y, N), bf ? 4e-3 : 2e-5, "add_rmsnorm M%d n%d bf16%d", M, n, bf);
            B->free(B, dx), B->free(B, dr), B->free(B, dy), B->free(B, (void *)dw.data);
            free(x), free(r), free(w), free(y), free(gx), free(gy);
        }
}

/* The device-position ops (embed_dev, kv_write_dev) against their host-argument versions, and a recorded graph of
 * a small decode-like step (embed from a device id, rmsnorm, kv_write at a device position) replayed for several
 * (id, position) pairs uploaded in between, against the same ops run directly. */
static void test_decode_graph(void) {
    const int V = 37, Dm = 24, L = 2, bs = 4, nb = 5, layer = 1, steps = 6;
    const DsDtype dtypes[2] = {DS_BF16, DS_F32};
    for (int di = 0; di < 2; di++) {
        const DsDtype dtype = dtypes[di];
        const char *dn = dtype == DS_BF16 ? "bf16" : "f32";
        uint16_t *tab_h = rnd_bf16((size_t)V * Dm, 1.0f);
        DsW table = {.data = dev(tab_h, (size_t)V * Dm * 2), .dtype = DS_BF16};
        DsW nw = {.data = dev(rnd(Dm, 1.0f), Dm * 4), .dtype = DS_F32};
        int32_t perm[5] = {3, 0, 4, 1, 2};
        int32_t *dperm = dev(perm, sizeof perm);
        void *dtabs = dev(&dperm, sizeof dperm);
        size_t pool = kvcache_bytes(L, Dm, bs, nb) * (dtype == DS_F32 ? 2 : 1);
        KvCache kg = {.data = B->alloc(B, pool), .dtype = dtype, .n_layers = L, .width = Dm, .block_size = bs,
                      .n_blocks = nb};
        KvCache kd = kg;
        kd.data = B->alloc(B, pool);
        REQUIRE(kg.data && kd.data);
        B->memset0(B, kg.data, pool);
        B->memset0(B, kd.data, pool);
        int32_t *step = B->alloc(B, 8);
        float *xg = dev_nan(Dm), *yg = dev_nan(Dm), *xd = dev_nan(Dm), *yd = dev_nan(Dm);
        void *g = NULL;
        int ok_embed = 1, ok_norm = 1;
        for (int t = 0; t < steps; t++) {
            int32_t h[2] = {(int32_t)((frand() + 1) * 0.5 * V) % V, (t * 7 + 3) % (nb * bs)};
            B->upload(B, step, h, sizeof h);
            if (!g) {
                CHECK(B->graph_begin(B) == 0);
                B->embed_dev(B, xg, step, 1, table, Dm);
                B->rmsnorm(B, yg, Dm, xg, Dm, 1, Dm, nw, 1e-6f, OPS_BF16);
                B->kv_write_dev(B, &kg, layer, (const int32_t *const *)dtabs, NULL, step + 1, 1, yg, Dm, xg, Dm);
                g = B->graph_end(B);
                REQUIRE(g);
            }
            B->graph_launch(B, g);
            B->embed(B, xd, &h[0], 1, table, Dm);
            B->rmsnorm(B, yd, Dm, xd, Dm, 1, Dm, nw, 1e-6f, OPS_BF16);
            B->kv_write(B, &kd, layer, perm, h[1], 1, yd, Dm, xd, Dm);
            float *a = down(xg, Dm), *b = down(xd, Dm), *c = down(yg, Dm), *d = down(yd, Dm);
            ok_embed &= exact_eq(a, b, Dm);
            ok_norm &= exact_eq(c, d, Dm);
            free(a), free(b), free(c), free(d);
        }
        void *pg = malloc(pool), *pd = malloc(pool);
        B->download(B, pg, kg.data, pool);
        B->download(B, pd, kd.data, pool);
        CHECKF(ok_embed && ok_norm, "replayed embed_dev/rmsnorm differ from direct runs (%s)", dn);
        CHECKF(memcmp(pg, pd, pool) == 0, "replayed kv_write_dev pool differs from kv_write (%s)",
               dn);
        /* kv_write_dev of several rows at scattered positions, run directly */
        int32_t pos[3] = {17, 2, 9};
        float *k = rnd(3 * Dm, 1.0f), *v = rnd(3 * Dm, 1.0f);
        float *dk = dev(k, 3 * Dm * 4), *dv = dev(v, 3 * Dm * 4);
        int32_t *dpos = dev(pos, sizeof pos);
        B->kv_write_dev(B, &kg, 0, (const int32_t *const *)dtabs, NULL, dpos, 3, dk, Dm, dv, Dm);
        for (int r = 0; r < 3; r++) B->kv_write(B, &kd, 0, perm, pos[r], 1, dk + r * Dm, Dm, dv + r * Dm, Dm);
        B->download(B, pg, kg.data, pool);
        B->download(B, pd, kd.data, pool);
        CHECKF(memcmp(pg, pd, pool) == 0, "kv_write_dev of 3 scattered rows differs (%s)", dn);
        /* rows of two sequences (seq {1, 0, 1}; sequence 1's table maps block b to perm2[b]) */
        {
            int32_t perm2[5] = {1, 4, 2, 0, 3}, seq[3] = {1, 0, 1};
            int32_t *dperm2 = dev(perm2, sizeof perm2), *dseq = dev(seq, sizeof seq);
            const int32_t *tabs2_h[2] = {dperm, dperm2};
            void *dtabs2 = dev(tabs2_h, sizeof tabs2_h);
            B->kv_write_dev(B, &kg, 1, (const int32_t *const *)dtabs2, dseq, dpos, 3, dk, Dm, dv, Dm);
            for (int r = 0; r < 3; r++)
                B->kv_write(B, &kd, 1, seq[r] ? perm2 : perm, pos[r], 1, dk + r * Dm, Dm, dv + r * Dm, Dm);
            B->download(B, pg, kg.data, pool);
            B->download(B, pd, kd.data, pool);
            CHECKF(memcmp(pg, pd, pool) == 0, "kv_write_dev of rows of two sequences differs (%s)", dn);
            B->free(B, dperm2), B->free(B, dseq), B->free(B, dtabs2);
        }
        /* rope_kv_write_dev == rope_neox over the q and k heads then kv_write_dev, bit for bit (rows [q | k | v]) */
        for (int fl = 0; fl <= OPS_BF16; fl += OPS_BF16) {
            const int H = 2, hd = Dm / H, ld = 3 * Dm;
            float *qkv = rnd((size_t)3 * ld, 2.0f);
            float *q1 = dev(qkv, (size_t)3 * ld * 4), *q2 = dev(qkv, (size_t)3 * ld * 4);
            B->rope_kv_write_dev(B, q1, ld, 3, H, hd, dpos, 10000.f, fl, &kg, 1, (const int32_t *const *)dtabs, NULL,
                                 q1 + 2 * Dm, ld);
            B->rope_neox(B, q2, ld, 3, 2 * H, hd, dpos, 10000.f, fl);
            B->kv_write_dev(B, &kd, 1, (const int32_t *const *)dtabs, NULL, dpos, 3, q2 + Dm, ld, q2 + 2 * Dm, ld);
            float *a = down(q1, (size_t)3 * ld), *c = down(q2, (size_t)3 * ld);
            B->download(B, pg, kg.data, pool);
            B->download(B, pd, kd.data, pool);
            CHECKF(exact_eq(a, c, (size_t)3 * ld) && memcmp(pg, pd, pool) == 0,
                   "rope_kv_write_dev differs from rope_neox + kv_write_dev (%s, bf16 %d)", dn, fl);
            free(a), free(c), free(qkv);
            B->free(B, q1), B->free(B, q2);
        }
        /* qkv_rope_kv_dev (one row: the fused [q; k; v] product, RoPE and the cache write in one kernel) ==
         * linear then rope_kv_write_dev, bit for bit: heads of 8 (one block of pairs a head) and of 24 (three),
         * inputs of 40 and of 1,288 (a partial last load round); heads of 12 are refused (0, nothing done) */
        for (int cse = 0; cse < 10; cse++) {
            /* cases 4 to 9: block-type weights (Q8_0, Q4_0; a warp a rotation pair), K of 64, 1,280 and 2,080
             * (more than one batch of loads) */
            const int wdt = cse < 4 ? DS_BF16 : cse < 7 ? DS_Q8_0 : DS_Q4_0;
            const int H = cse & 1 ? 1 : 3, hd = Dm / H, N = 3 * Dm;
            const int D = cse < 4 ? (cse & 2 ? 1288 : 40) : (cse % 3 == 0 ? 64 : cse % 3 == 1 ? 1280 : 2080);
            const int fl = cse == 1 || cse == 5 ? 0 : OPS_BF16, lf = (fl ? BE_ROUND : 0) | BE_FP32_SUMS;
            size_t wbytes;
            void *wq = mk_weight((size_t)N * D, 1.0f, wdt, &wbytes);
            float *xq = rnd(D, 1.0f);
            DsW W = {.data = dev(wq, wbytes), .dtype = (DsDtype)wdt};
            float *dx = dev(xq, (size_t)D * 4), *y1 = dev_nan(N), *y2 = dev_nan(N);
            B->memset0(B, kg.data, pool);
            B->memset0(B, kd.data, pool);
            const int did = B->qkv_rope_kv_dev(B, y1, dx, D, W, H, hd, dpos, 10000.f, lf, fl, &kg, 1,
                                               (const int32_t *const *)dtabs);
            B->linear(B, y2, N, dx, D, 1, D, W, N, ds_w_none(), lf);
            B->rope_kv_write_dev(B, y2, N, 1, H, hd, dpos, 10000.f, fl, &kd, 1, (const int32_t *const *)dtabs, NULL,
                                 y2 + 2 * Dm, N);
            float *a = down(y1, N), *c = down(y2, N);
            B->download(B, pg, kg.data, pool);
            B->download(B, pd, kd.data, pool);
            CHECKF(did == 1 && exact_eq(a, c, N) && memcmp(pg, pd, pool) == 0,
                   "qkv_rope_kv_dev differs from linear + rope_kv_write_dev (%s, %s, H %d, hd %d, D %d, bf16 %d)",
                   dn, dt_name(wdt), H, hd, D, fl);
            if (wdt == DS_BF16)
                CHECKF(B->qkv_rope_kv_dev(B, y1, dx, D, W, 2, 12, dpos, 10000.f, lf, fl, &kg, 1,
                                          (const int32_t *const *)dtabs) == 0,
                       "qkv_rope_kv_dev took bf16 heads of 12 (its kernel needs head_dim %% 8 == 0)");
            free(a), free(c), free(wq), free(xq);
            B->free(B, (void *)W.data), B->free(B, dx), B->free(B, y1), B->free(B, y2);
        }
        printf("  decode graph (%s): %d replays match direct runs bit for bit\n", dn, steps);
        B->graph_free(B, g);
        free(pg), free(pd), free(k), free(v), free(tab_h);
        void *bufs[] = {(void *)table.data, (void *)nw.data, dperm, dtabs, kg.data, kd.data, step, xg, yg, xd, yd,
                        dk, dv, dpos};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) B->free(B, bufs[i]);
    }
}

int main(void) {
    DsError e = {0};
    B = backend_cuda_new(0, &e);
    if (!B) {
        fprintf(stderr, "test_cuda: no CUDA backend: %s\n", e.msg);
        printf("0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_memory);
    RUN(test_linear);
    RUN(test_fused_epilogues);
    RUN(test_bf16_storage);
    RUN(test_norms);
    RUN(test_elementwise);
    RUN(test_rope);
    RUN(test_argmax);
    RUN(test_attention);
    RUN(test_kv);
    RUN(test_conv2d);
    RUN(test_swiglu);
    RUN(test_swiglu_q);
    RUN(test_f16);
    RUN(test_moe);
    RUN(test_data_movement);
    RUN(test_residual_ops);
    RUN(test_residual_layernorm);
    RUN(test_gelu_table);
    RUN(test_decode_graph);
    RUN(test_add_rmsnorm);
    printf("  device memory: %zu bytes allocated at the end (scratch), peak %zu\n", B->allocated(B), B->peak(B));
    backend_cuda_free(B);
    return check_summary();
}
