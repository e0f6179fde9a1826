/* test_quant.c: the Q8_0 / Q4_0 reference quantisers and dequantisers (src/quant.c): row sizes, blocks worked
 * out by hand (scales, rounding of halves, Q4_0's clamp and nibble order), zero blocks, error bounds on random
 * data, odd numbers of rows and blocks, and re-quantising dequantised weights giving the same bytes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
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

int main(void) {
    RUN(test_row_bytes);
    RUN(test_q8_0_known);
    RUN(test_q4_0_known);
    RUN(test_zero_blocks);
    RUN(test_error_bounds);
    RUN(test_rows_dispatch_idempotent);
    return check_summary();
}
