/* test_quant.c: the Q8_0 / Q4_0 reference quantisers and dequantisers (src/quant.c): row sizes, blocks worked
 * out by hand (scales, rounding of halves, Q4_0's clamp and nibble order), zero blocks, error bounds on random
 * data, odd numbers of rows and blocks, and re-quantising dequantised weights giving the same bytes.
 * Then the kernels on blocks: ops_linear_cpu (AVX2 and portable GEMV, dequantised-tile GEMM) and expert_ffn
 * against their _ref on random inputs with odd shapes, a product worked out by hand, and bit-identical results
 * with 1, 2 and 3 threads. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ops.h"
#include "quant.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / (1ull << 23)) - 1.0);
}

static void test_row_bytes(void) {
    CHECK(quant_is_block(DS_Q8_0) && quant_is_block(DS_Q4_0));
    CHECK(!quant_is_block(DS_BF16) && !quant_is_block(DS_F32) && !quant_is_block(DS_DTYPE_UNKNOWN));
    CHECK(quant_row_bytes(DS_Q8_0, 32) == 34);
    CHECK(quant_row_bytes(DS_Q4_0, 32) == 18);
    CHECK(quant_row_bytes(DS_Q8_0, 1280) == 40 * 34);
    CHECK(quant_row_bytes(DS_Q4_0, 896) == 28 * 18);
    CHECK(quant_row_bytes(DS_Q8_0, 0) == 0);
    CHECK(quant_row_bytes(DS_Q8_0, 33) == 0);
    CHECK(quant_row_bytes(DS_Q4_0, 48) == 0);
    CHECK(quant_row_bytes(DS_Q8_0, -32) == 0);
    CHECK(quant_row_bytes(DS_BF16, 7) == 14);
    CHECK(quant_row_bytes(DS_F32, 7) == 28);
    CHECK(quant_row_bytes(DS_DTYPE_UNKNOWN, 7) == 0);
    CHECK(ds_dtype_size(DS_Q8_0) == 0 && ds_dtype_size(DS_Q4_0) == 0);
    CHECK(!strcmp(ds_dtype_name(DS_Q8_0), "Q8_0") && !strcmp(ds_dtype_name(DS_Q4_0), "Q4_0"));
    CHECK(ds_dtype_parse("Q8_0") == DS_DTYPE_UNKNOWN); /* never a safetensors dtype */
}

/* amax = 127 makes d = 1 exactly, so q = round(x): halves go away from zero. */
static void test_q8_0_known(void) {
    float x[QK];
    for (int j = 0; j < QK; j++) x[j] = (float)(j * 7 - 100);
    x[0] = 127.0f;
    x[1] = 2.5f;
    x[2] = -2.5f;
    x[3] = 0.49f;
    x[4] = -126.5f;
    BlockQ8_0 b;
    quant_q8_0_ref(&b, x, QK);
    CHECK(b.d == 0x3c00); /* fp16 1.0 */
    CHECK(b.q[0] == 127 && b.q[1] == 3 && b.q[2] == -3 && b.q[3] == 0 && b.q[4] == -127);
    for (int j = 5; j < QK; j++) CHECKF(b.q[j] == j * 7 - 100, "q[%d] = %d", j, b.q[j]);
    float y[QK];
    dequant_q8_0_ref(y, &b, QK);
    for (int j = 0; j < QK; j++) CHECK(y[j] == (float)b.q[j]);

    /* a scale that is not exact in fp16: amax = 1 → d = 1/127, stored as the nearest fp16 */
    for (int j = 0; j < QK; j++) x[j] = (float)j / 31.0f;
    quant_q8_0_ref(&b, x, QK);
    CHECK(b.d == f32_to_fp16(1.0f / 127.0f));
    CHECK(b.q[31] == 127 && b.q[0] == 0);
    CHECK(b.q[1] == (int8_t)roundf((1.0f / 31.0f) * (1.0f / (1.0f / 127.0f))));
    dequant_q8_0_ref(y, &b, QK);
    CHECK(y[31] == 127.0f * fp16_to_f32(b.d));
}

/* quant_q8_0_ref rounds without libm (round_half_away): its bytes equal the formula written with fmaxf and roundf,
 * on random blocks of several magnitudes and on blocks whose x·id land on and next to halves. */
static void test_q8_0_matches_libm(void) {
    uint64_t s = 0x243f6a8885a308d3ull;
    int bad = 0;
    for (int blk = 0; blk < 4000; blk++) {
        float x[QK];
        const float scale = blk % 4 == 0 ? 1e-3f : blk % 4 == 1 ? 1.0f : blk % 4 == 2 ? 300.0f : 1e-30f;
        for (int j = 0; j < QK; j++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            x[j] = scale * (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        }
        if (blk % 5 == 0) { /* d = 1: halves, and the floats just inside and outside them */
            x[0] = 127.0f;
            for (int j = 1; j < QK; j++) {
                const float h = (float)(j * 4 - 62) + 0.5f;
                x[j] = j % 3 == 0 ? h : j % 3 == 1 ? nextafterf(h, 0.0f) : nextafterf(h, 1000.0f * h);
            }
        }
        BlockQ8_0 got;
        quant_q8_0_ref(&got, x, QK);
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        bad += got.d != f32_to_fp16(d);
        for (int j = 0; j < QK; j++) bad += got.q[j] != (int8_t)roundf(x[j] * id);
    }
    CHECKF(bad == 0, "%d bytes differ", bad);
}

/* The Q8_0 GEMV's quantised x: the AVX2 loop gives the portable loop's bits, on random blocks of several
 * magnitudes, on blocks whose x·2^e land on halves (nearest even), on the block that rounds up to 2^15 (clamped),
 * and on blocks of zeros, of an infinity and of a NaN (scale 0, NaN, NaN); and a known block. */
static void test_xq_simd_matches_portable(void) {
    enum { M = 3, K = 40 * QK, NB = K / QK };
    float *x = malloc(sizeof(float) * (M * K + 7));
    int16_t *qa = malloc(sizeof(int16_t) * M * K), *qb = malloc(sizeof(int16_t) * M * K);
    float sa[M * NB], sb[M * NB];
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < M * K + 7; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        const int blk = i / QK;
        const float scale = blk % 4 == 0 ? 1e-3f : blk % 4 == 1 ? 1.0f : blk % 4 == 2 ? 3e4f : 1e-30f;
        x[i] = scale * (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    float *b5 = x + 5 * QK; /* largest 1 < 2^1: 2^e = 2^14, and (k + 0.5) / 2^14 lands on halves */
    b5[0] = 1.0f;
    for (int j = 1; j < QK; j++) b5[j] = ((float)(j * 37 % 1000) + 0.5f) / 16384.0f * (j % 2 ? 1.0f : -1.0f);
    float *b6 = x + 6 * QK; /* just under 2^ex: the product rounds up to 2^15 and is clamped to 32767 */
    b6[0] = nextafterf(1.0f, 0.0f), b6[1] = -nextafterf(1.0f, 0.0f);
    for (int j = 2; j < QK; j++) b6[j] = 0.25f;
    memset(x + 7 * QK, 0, sizeof(float) * QK);
    x[8 * QK + 3] = INFINITY;
    x[9 * QK + 30] = NAN;
    x[10 * QK + 1] = -0.0f;
    ops_cpu_xq_quantize(qa, sa, x + 7, K, 1, K, 1); /* an unaligned row */
    ops_cpu_xq_quantize(qb, sb, x + 7, K, 1, K, 0);
    CHECK(!memcmp(qa, qb, sizeof(int16_t) * K) && !memcmp(sa, sb, sizeof(float) * NB));
    ops_cpu_xq_quantize(qa, sa, x, K, M, K, 1);
    ops_cpu_xq_quantize(qb, sb, x, K, M, K, 0);
    CHECK(!memcmp(qa, qb, sizeof(int16_t) * M * K));
    int same = 1;
    for (int i = 0; i < M * NB; i++) same &= sa[i] == sb[i] || (isnan(sa[i]) && isnan(sb[i]));
    CHECK(same);
    CHECK(qa[6 * QK] == 32767 && qa[6 * QK + 1] == -32767 && sa[6] == 1.0f / 32768.0f);
    CHECK(sa[7] == 0.0f && qa[7 * QK] == 0);
    CHECK(isnan(sa[8]) && isnan(sa[9]));
    CHECK(sa[5] == 1.0f / 16384.0f && qa[5 * QK] == 16384 && qa[5 * QK + 1] == (int16_t)rintf(b5[1] * 16384.0f));
    free(x), free(qa), free(qb);
}

/* max = −8 makes d = 1: q = trunc(x + 8.5) clamped to 15; byte j holds element j (low) and j + 16 (high). */
static void test_q4_0_known(void) {
    float x[QK] = {0};
    x[0] = -8.0f;  /* max (largest magnitude, negative) → nibble 0 */
    x[1] = 7.0f;   /* → 15 */
    x[2] = 0.5f;   /* 9.0 → 9 (a half rounds up) */
    x[3] = -0.5f;  /* 8.0 → 8 */
    x[4] = 2.4f;   /* 10.9 → 10 */
    x[5] = -7.6f;  /* 0.9 → 0 */
    x[16] = 3.0f;  /* → 11, high nibble of byte 0 */
    x[17] = 7.9f;  /* 16.4 → 16 → clamped to 15 */
    x[31] = -1.0f; /* → 7, high nibble of byte 15 */
    BlockQ4_0 b;
    quant_q4_0_ref(&b, x, QK);
    CHECK(b.d == 0x3c00);
    CHECK(b.q[0] == (0 | 11 << 4));
    CHECK(b.q[1] == (15 | 15 << 4));
    CHECK(b.q[2] == (9 | 8 << 4));
    CHECK(b.q[3] == (8 | 8 << 4));
    CHECK(b.q[4] == (10 | 8 << 4));
    CHECK(b.q[5] == (0 | 8 << 4));
    CHECK(b.q[15] == (8 | 7 << 4));
    float y[QK];
    dequant_q4_0_ref(y, &b, QK);
    CHECK(y[0] == -8 && y[1] == 7 && y[2] == 1 && y[3] == 0 && y[4] == 2 && y[5] == -8);
    CHECK(y[16] == 3 && y[17] == 7 && y[31] == -1 && y[30] == 0);

    /* the first element of largest magnitude decides the sign: +8 first → d = −1; then −8 maps to 16 → 15 → −7 */
    memset(x, 0, sizeof x);
    x[3] = 8.0f;
    x[9] = -8.0f;
    x[20] = 1.0f;
    quant_q4_0_ref(&b, x, QK);
    CHECK(b.d == 0xbc00); /* fp16 −1.0 */
    dequant_q4_0_ref(y, &b, QK);
    CHECK(y[3] == 8.0f && y[9] == -7.0f && y[20] == 1.0f && y[0] == 0.0f);
}

static void test_zero_blocks(void) {
    float x[3 * QK] = {0}, y[3 * QK];
    x[QK + 5] = 1.0f; /* the middle block is not zero */
    BlockQ8_0 b8[3];
    BlockQ4_0 b4[3];
    quant_q8_0_ref(b8, x, 3 * QK);
    quant_q4_0_ref(b4, x, 3 * QK);
    for (int k = 0; k < 3; k += 2) {
        CHECK(fp16_to_f32(b8[k].d) == 0.0f);
        CHECK(fp16_to_f32(b4[k].d) == 0.0f);
        for (int j = 0; j < QK; j++) CHECK(b8[k].q[j] == 0);
        for (int j = 0; j < QK / 2; j++) CHECK(b4[k].q[j] == 0x88);
    }
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 3 * QK; j++) y[j] = NAN;
        dequant_row_ref(i ? DS_Q4_0 : DS_Q8_0, y, i ? (const void *)b4 : (const void *)b8, 3 * QK);
        for (int j = 0; j < 3 * QK; j++)
            if (j / QK != 1) CHECKF(y[j] == 0.0f, "%s y[%d] = %g", i ? "q4" : "q8", j, y[j]);
        CHECK(fabsf(y[QK + 5] - 1.0f) < 1e-3f && y[QK + 4] == 0.0f);
    }
}

/* Per element: |x − deq| <= d/2 (plus what storing d as fp16 moves, |q|·|d16 − d|); Q4_0's clamped element
 * (x·id > 7.5, only the one opposite the max at nearly full magnitude) may be off by up to d. */
static void test_error_bounds(void) {
    enum { N = 7, K = 160 }; /* odd row count, 5 blocks a row */
    float *x = malloc(sizeof(float) * N * K), *y = malloc(sizeof(float) * N * K);
    BlockQ8_0 *b8 = malloc(sizeof(BlockQ8_0) * N * K / QK);
    BlockQ4_0 *b4 = malloc(sizeof(BlockQ4_0) * N * K / QK);
    for (int rep = 0; rep < 20; rep++) {
        float scale = powf(10.0f, (float)(rep % 7) - 4.0f); /* 1e-4 .. 1e2 */
        for (int i = 0; i < N * K; i++) {
            float r = frand();
            x[i] = scale * (rep & 1 ? r * r * r : r); /* uniform, and heavy centre */
        }
        quant_q8_0_ref(b8, x, N * K);
        dequant_q8_0_ref(y, b8, N * K);
        for (int b = 0; b < N * K / QK; b++) {
            float amax = 0;
            for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[b * QK + j]));
            double d = amax / 127.0, d16 = fp16_to_f32(b8[b].d);
            CHECK(fabs(d16 - d) <= fmax(d * 0x1p-11, 0x1p-25)); /* half an ulp; fp16 subnormals below 2^-14 */
            double bound = 0.5 * d + 127 * fabs(d16 - d) + 1e-6 * d;
            for (int j = 0; j < QK; j++)
                CHECKF(fabs(y[b * QK + j] - x[b * QK + j]) <= bound, "q8 rep %d block %d elt %d: %g vs %g", rep,
                       b, j, y[b * QK + j], x[b * QK + j]);
        }
        quant_q4_0_ref(b4, x, N * K);
        dequant_q4_0_ref(y, b4, N * K);
        for (int b = 0; b < N * K / QK; b++) {
            float amax = 0;
            for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[b * QK + j]));
            double d = amax / 8.0, d16 = fabs(fp16_to_f32(b4[b].d));
            double slack = 8 * fabs(d16 - d) + 1e-6 * d;
            for (int j = 0; j < QK; j++) {
                double xv = x[b * QK + j], err = fabs(y[b * QK + j] - xv);
                double bound = (fabs(xv) > 7.5 * d ? d : 0.5 * d) + slack;
                CHECKF(err <= bound, "q4 rep %d block %d elt %d: %g vs %g", rep, b, j, y[b * QK + j], xv);
            }
        }
    }
    free(x), free(y), free(b8), free(b4);
}

/* Quantising a matrix of N rows at once equals quantising it row by row (blocks never span rows), the typed
 * entry points equal the specific ones, and dequantised weights quantise back to the same bytes (a GGUF written
 * from dequantised weights reproduces the original blocks). */
static void test_rows_dispatch_idempotent(void) {
    static const int shapes[][2] = {{1, 32}, {3, 96}, {5, 1280}, {37, 64}, {2, 896}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int N = shapes[s][0], K = shapes[s][1];
        float *x = malloc(sizeof(float) * N * K), *y = malloc(sizeof(float) * N * K);
        for (int i = 0; i < N * K; i++) x[i] = 0.05f * frand();
        for (int t = 0; t < 2; t++) {
            DsDtype dt = t ? DS_Q4_0 : DS_Q8_0;
            size_t rb = quant_row_bytes(dt, K);
            uint8_t *a = malloc(rb * N), *b = malloc(rb * N), *c = malloc(rb * N);
            if (dt == DS_Q8_0)
                quant_q8_0_ref((BlockQ8_0 *)a, x, (int64_t)N * K);
            else
                quant_q4_0_ref((BlockQ4_0 *)a, x, (int64_t)N * K);
            for (int r = 0; r < N; r++) quant_row_ref(dt, b + r * rb, x + (size_t)r * K, K);
            CHECKF(!memcmp(a, b, rb * N), "%s %dx%d: rows differ from the whole", ds_dtype_name(dt), N, K);
            for (int r = 0; r < N; r++) dequant_row_ref(dt, y + (size_t)r * K, b + r * rb, K);
            quant_row_ref(dt, c, y, (int64_t)N * K);
            CHECKF(!memcmp(b, c, rb * N), "%s %dx%d: re-quantising changed the bytes", ds_dtype_name(dt), N, K);
            free(a), free(b), free(c);
        }
        free(x), free(y);
    }
}

/* ---------------------------------------------------------------------------------------------------------- */

static float *rnd(size_t n, float s) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = s * frand();
    return p;
}
/* An [N, K] weight of random floats (scale s), quantised to dt; caller frees. */
static void *rnd_q(DsDtype dt, int N, int K, float s) {
    float *f = rnd((size_t)N * K, s);
    void *q = malloc(quant_row_bytes(dt, K) * N);
    quant_row_ref(dt, q, f, (int64_t)N * K);
    free(f);
    return q;
}
/* Largest |a − b| / (atol + rtol·|b|) over n elements (<= 1 passes; NaN fails). */
static double err_ratio(const float *a, const float *b, size_t n, double atol, double rtol) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / (atol + rtol * fabs(b[i]));
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

/* x = 1 and w with known integer values: y is exact in every path (sums of small integers). */
static void test_linear_q_exact(void) {
    enum { K = 64, N = 3 };
    float wf[N * K], x[2 * K], y[2 * N], want[2 * N];
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) wf[n * K + k] = (float)((n * 5 + k * 3) % 15 - 7); /* in [−7, 7] */
    for (int n = 0; n < N; n++) wf[n * K] = -8.0f, wf[n * K + 32] = -8.0f; /* Q4_0 d = 1, Q8_0 d = 8/127 */
    for (int k = 0; k < K; k++) x[k] = 1.0f, x[K + k] = (float)(k % 4) - 1.5f;
    for (int m = 0; m < 2; m++)
        for (int n = 0; n < N; n++) {
            double a = 0;
            for (int k = 0; k < K; k++) a += (double)x[m * K + k] * wf[n * K + k];
            want[m * N + n] = (float)a;
        }
    BlockQ4_0 q4[N * K / QK];
    quant_q4_0_ref(q4, wf, N * K);
    for (int scalar = 0; scalar < 2; scalar++) {
        ops_cpu_force_scalar(scalar);
        for (int M = 1; M <= 2; M++) {
            ops_linear_cpu(y, N, x, K, M, K, ds_w(q4, DS_Q4_0), N, ds_w_none(), 0);
            for (int i = 0; i < M * N; i++) CHECKF(y[i] == want[i], "q4 scalar %d y[%d] = %g, want %g", scalar, i, y[i], want[i]);
        }
    }
    ops_cpu_force_scalar(0);
    ops_linear_ref(y, N, x, K, 2, K, ds_w(q4, DS_Q4_0), N, ds_w_none(), 0);
    for (int i = 0; i < 2 * N; i++) CHECKF(y[i] == want[i], "q4 ref y[%d] = %g, want %g", i, y[i], want[i]);
    /* Q8_0 with d = 1: amax 127 in each block */
    for (int n = 0; n < N; n++) wf[n * K] = 127.0f, wf[n * K + 32] = -127.0f;
    BlockQ8_0 q8[N * K / QK];
    quant_q8_0_ref(q8, wf, N * K);
    for (int m = 0; m < 2; m++)
        for (int n = 0; n < N; n++) {
            double a = 0;
            for (int k = 0; k < K; k++) a += (double)x[m * K + k] * wf[n * K + k];
            want[m * N + n] = (float)a;
        }
    for (int scalar = 0; scalar < 2; scalar++) {
        ops_cpu_force_scalar(scalar);
        ops_linear_cpu(y, N, x, K, 2, K, ds_w(q8, DS_Q8_0), N, ds_w_none(), 0);
        for (int i = 0; i < 2 * N; i++) CHECKF(y[i] == want[i], "q8 scalar %d y[%d] = %g, want %g", scalar, i, y[i], want[i]);
    }
    ops_cpu_force_scalar(0);
}

/* ops_linear_cpu on Q8_0 / Q4_0 weights against ops_linear_ref: GEMV (M < 16, AVX2 and portable) and GEMM
 * (M >= 16: dequantised tiles + sgemm), with and without bias and OPS_ACCUM, padded row strides. */
static void test_linear_q_vs_ref(void) {
    static const int shapes[][3] = {{1, 32, 1},    {1, 96, 7},     {1, 1280, 33},  {2, 160, 19},  {3, 64, 257},
                                    {4, 320, 5},   {5, 896, 31},   {15, 288, 300}, {16, 32, 9},   {37, 544, 130},
                                    {130, 96, 17}, {3, 1280, 1},   {17, 2048, 3}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int M = shapes[si][0], K = shapes[si][1], N = shapes[si][2];
        for (int variant = 0; variant < 8; variant++) {
            DsDtype dt = variant & 1 ? DS_Q4_0 : DS_Q8_0;
            int accum = variant & 2, with_bias = variant & 4;
            int ldx = K + 3, ldy = N + 2;
            float *x = rnd((size_t)M * ldx, 1.0f), *bd = rnd(N, 1.0f);
            void *wd = rnd_q(dt, N, K, 0.5f);
            DsW w = ds_w(wd, dt), b = with_bias ? ds_w(bd, DS_F32) : ds_w_none();
            float *y0 = rnd((size_t)M * ldy, 1.0f), *y1 = malloc((size_t)M * ldy * sizeof(float));
            float *y2 = malloc((size_t)M * ldy * sizeof(float));
            memcpy(y1, y0, (size_t)M * ldy * sizeof(float));
            memcpy(y2, y0, (size_t)M * ldy * sizeof(float));
            ops_linear_ref(y0, ldy, x, ldx, M, K, w, N, b, accum ? OPS_ACCUM : 0);
            ops_linear_cpu(y1, ldy, x, ldx, M, K, w, N, b, accum ? OPS_ACCUM : 0);
            ops_cpu_force_scalar(1);
            ops_linear_cpu(y2, ldy, x, ldx, M, K, w, N, b, accum ? OPS_ACCUM : 0);
            ops_cpu_force_scalar(0);
            double worst = 0, worst2 = 0;
            int pad_ok = 1;
            for (int m = 0; m < M; m++) {
                double e = err_ratio(y1 + (size_t)m * ldy, y0 + (size_t)m * ldy, N, 2e-6 * K + 1e-6, 1e-5);
                double e2 = err_ratio(y2 + (size_t)m * ldy, y0 + (size_t)m * ldy, N, 2e-6 * K + 1e-6, 1e-5);
                worst = e > worst ? e : worst;
                worst2 = e2 > worst2 ? e2 : worst2;
                pad_ok &= memcmp(y1 + (size_t)m * ldy + N, y0 + (size_t)m * ldy + N, 2 * sizeof(float)) == 0;
            }
            CHECKF(worst <= 1, "%s M=%d K=%d N=%d variant %d: error ratio %g", ds_dtype_name(dt), M, K, N, variant,
                   worst);
            CHECKF(worst2 <= 1, "%s M=%d K=%d N=%d variant %d (portable): error ratio %g", ds_dtype_name(dt), M, K, N,
                   variant, worst2);
            CHECKF(pad_ok, "M=%d K=%d N=%d: wrote past N in a row", M, K, N);
            free(x), free(bd), free(wd), free(y0), free(y1), free(y2);
        }
    }
}

/* The dense MLP / expert block (swiglu and moe run it) on quantised weights, both rounding modes. */
static void test_expert_ffn_q(void) {
    int d = 96, ff = 64;
    for (int t = 0; t < 2; t++) {
        DsDtype dt = t ? DS_Q4_0 : DS_Q8_0;
        void *g = rnd_q(dt, ff, d, 0.3f), *u = rnd_q(dt, ff, d, 0.3f), *dn = rnd_q(dt, d, ff, 0.3f);
        for (int rows = 1; rows <= 37; rows += 18)
            for (int fl = 0; fl < 2; fl++) {
                float *x = rnd((size_t)rows * d, 1.0f), *y0 = calloc((size_t)rows * d, 4), *y1 = calloc((size_t)rows * d, 4);
                float *s = malloc(ops_expert_ffn_scratch_floats(rows, ff) * 4);
                ops_expert_ffn_ref(y0, x, rows, d, ff, ds_w(g, dt), ds_w(u, dt), ds_w(dn, dt), fl, s);
                ops_expert_ffn_cpu(y1, x, rows, d, ff, ds_w(g, dt), ds_w(u, dt), ds_w(dn, dt), fl, s);
                /* fp32: 1e-5, but the Q8_0 decode kernels (AVX-512 and AVX2) round x to 15 bits of its block's largest
                 * magnitude first (ops_cpu.c, ops_cpu_xq_quantize): up to 2^-15 · 1 per element here, through gate/up
                 * and down, measured 9e-5 at most */
                const double atol = fl ? 2e-2 : dt == DS_Q8_0 ? 2e-4 : 1e-5;
                CHECKF(err_ratio(y1, y0, (size_t)rows * d, atol, fl ? 2e-2 : 1e-5) <= 1,
                       "%s ffn rows %d flags %d", ds_dtype_name(dt), rows, fl);
                if (fl)
                    for (int i = 0; i < rows * d; i++) CHECK(y1[i] == bf16_round(y1[i]));
                free(x), free(y0), free(y1), free(s);
            }
        free(g), free(u), free(dn);
    }
}

/* Q8_0 and Q4_0 GEMV and GEMM outputs with n threads, concatenated into out. */
static size_t run_q(float *out, int nthreads) {
    omp_set_num_threads(nthreads);
    rng_state = 777;
    size_t off = 0;
    int Ms[3] = {1, 5, 150}, K = 800, N = 530;
    for (int t = 0; t < 2; t++) {
        DsDtype dt = t ? DS_Q4_0 : DS_Q8_0;
        void *w = rnd_q(dt, N, K, 0.5f);
        for (int i = 0; i < 3; i++) {
            float *x = rnd((size_t)Ms[i] * K, 1.0f);
            ops_linear_cpu(out + off, N, x, K, Ms[i], K, ds_w(w, dt), N, ds_w_none(), 0);
            off += (size_t)Ms[i] * N;
            free(x);
        }
        free(w);
    }
    return off;
}

static void test_q_thread_determinism(void) {
    size_t cap = 1 << 20;
    float *a = calloc(cap, 4), *b = calloc(cap, 4), *c = calloc(cap, 4);
    int saved = omp_get_max_threads();
    size_t na = run_q(a, 1), nb = run_q(b, 2), nc = run_q(c, 3);
    omp_set_num_threads(saved);
    REQUIRE(na > 0 && na <= cap && na == nb && na == nc);
    CHECK(memcmp(a, b, na * 4) == 0);
    CHECK(memcmp(a, c, na * 4) == 0);
    free(a), free(b), free(c);
}

int main(void) {
    RUN(test_row_bytes);
    RUN(test_q8_0_known);
    RUN(test_q8_0_matches_libm);
    RUN(test_xq_simd_matches_portable);
    RUN(test_q4_0_known);
    RUN(test_zero_blocks);
    RUN(test_error_bounds);
    RUN(test_rows_dispatch_idempotent);
    RUN(test_linear_q_exact);
    RUN(test_linear_q_vs_ref);
    RUN(test_expert_ffn_q);
    RUN(test_q_thread_determinism);
    return check_summary();
}
