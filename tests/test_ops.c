/* test_ops.c: every fast op (_cpu) against its scalar reference (_ref) on random inputs with odd sizes, bf16 and
 * f32 weights; the reference itself against independent computations written here from the formulas (dense
 * rel-pos bias attention, resampling weights, RoPE, routing); the bf16 KV cache through a shuffled block table
 * against contiguous attention; and bit-identical results with 1, 2 and 3 threads. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "backend.h"
#include "check.h"
#include "ops.h"
#include "quant.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / (1ull << 23)) - 1.0);
}
static float *rnd(size_t n, float s) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = s * frand();
    return p;
}
static uint16_t *rnd_bf16(size_t n, float s) {
    uint16_t *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = f32_to_bf16(s * frand());
    return p;
}
static float *fill(size_t n, float v) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = v;
    return p;
}
/* Largest |a − b| / (atol + rtol·|b|) over n elements (<= 1 passes). */
static double err_ratio(const float *a, const float *b, size_t n, double atol, double rtol) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / (atol + rtol * fabs(b[i]));
        if (!(d <= worst)) worst = d; /* NaN counts as failure */
    }
    return worst;
}

/* ---------------------------------------------------------------------------------------------------------- */

static void test_linear_vs_ref(void) {
    static const int shapes[][3] = {{1, 1, 1},     {1, 37, 5},     {2, 100, 33},   {3, 64, 17},  {4, 16, 300},
                                    {5, 129, 31},  {15, 300, 19},  {16, 300, 257}, {17, 513, 300}, {130, 40, 7},
                                    {200, 257, 513}, {1, 1280, 70}, {33, 1, 9}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int M = shapes[si][0], K = shapes[si][1], N = shapes[si][2];
        for (int variant = 0; variant < 4; variant++) {
            int wdt = variant & 1 ? DS_F32 : DS_BF16, accum = variant & 2;
            int ldx = K + 3, ldy = N + 2;
            float *x = rnd((size_t)M * ldx, 1.0f);
            void *wd = wdt == DS_BF16 ? (void *)rnd_bf16((size_t)N * K, 0.5f) : (void *)rnd((size_t)N * K, 0.5f);
            void *bd = variant & 1 ? (void *)rnd_bf16(N, 1.0f) : (void *)rnd(N, 1.0f);
            DsW w = ds_w(wd, wdt), b = variant == 3 ? ds_w_none() : ds_w(bd, variant & 1 ? DS_BF16 : DS_F32);
            float *y0 = rnd((size_t)M * ldy, 1.0f), *y1 = malloc((size_t)M * ldy * sizeof(float));
            memcpy(y1, y0, (size_t)M * ldy * sizeof(float));
            ops_linear_ref(y0, ldy, x, ldx, M, K, w, N, b, accum ? OPS_ACCUM : 0);
            ops_linear_cpu(y1, ldy, x, ldx, M, K, w, N, b, accum ? OPS_ACCUM : 0);
            double worst = 0;
            int pad_ok = 1;
            for (int m = 0; m < M; m++) {
                double e = err_ratio(y1 + (size_t)m * ldy, y0 + (size_t)m * ldy, N, 2e-6 * K + 1e-6, 1e-5);
                worst = e > worst ? e : worst;
                pad_ok &= memcmp(y1 + (size_t)m * ldy + N, y0 + (size_t)m * ldy + N, 2 * sizeof(float)) == 0;
            }
            CHECKF(worst <= 1, "M=%d K=%d N=%d variant %d: error ratio %g", M, K, N, variant, worst);
            CHECKF(pad_ok, "M=%d K=%d N=%d: wrote past N in a row", M, K, N);
            free(x), free(wd), free(bd), free(y0), free(y1);
        }
    }
}

/* decode's grouped kernels (4 weight rows a pass, M = 1) give each output exactly what the one-row kernels give:
 * an M = 1 product equals row 0 of the same product over two copies of the row, bit for bit (bf16, Q8_0, Q4_0;
 * N not a multiple of 4, K with a tail past 16; 41 blocks a row: the Q8_0 kernel's odd block) */
static void test_gemv_grouping_exact(void) {
    const int dts[3] = {DS_BF16, DS_Q8_0, DS_Q4_0};
    for (int d = 0; d < 3; d++) {
        const int K = dts[d] == DS_BF16 ? 1288 + 5 : 1312, N = 70;
        float *x = rnd((size_t)2 * K, 1.0f), *wf = rnd((size_t)N * K, 0.5f), *y1 = fill(N, 0), *y2 = fill(2 * (size_t)N, 0);
        memcpy(x + K, x, sizeof(float) * K);
        void *wd = NULL;
        if (dts[d] == DS_BF16) {
            uint16_t *h = malloc(sizeof(uint16_t) * (size_t)N * K);
            for (size_t i = 0; i < (size_t)N * K; i++) h[i] = f32_to_bf16(wf[i]);
            wd = h;
        } else {
            wd = malloc(quant_row_bytes((DsDtype)dts[d], K) * N);
            for (int n = 0; n < N; n++)
                quant_row_ref((DsDtype)dts[d], (char *)wd + quant_row_bytes((DsDtype)dts[d], K) * n, wf + (size_t)n * K, K);
        }
        DsW w = ds_w(wd, (DsDtype)dts[d]);
        ops_linear_cpu(y1, N, x, K, 1, K, w, N, ds_w_none(), 0);
        ops_linear_cpu(y2, N, x, K, 2, K, w, N, ds_w_none(), 0);
        CHECKF(!memcmp(y1, y2, sizeof(float) * N), "dtype %d: the M = 1 product differs from the 2-row one", dts[d]);
        free(x), free(wf), free(y1), free(y2), free(wd);
    }
}

static void test_linear_ref_small_exact(void) {
    /* Y = X·Wᵀ + b by hand: X = [[1,2],[3,4]], W = [[1,0],[0,1],[1,1]] (bf16 exact), b = [0.5, -1, 2]. */
    float x[4] = {1, 2, 3, 4}, y[6], yc[6];
    uint16_t w[6];
    float wf[6] = {1, 0, 0, 1, 1, 1}, b[3] = {0.5f, -1, 2};
    for (int i = 0; i < 6; i++) w[i] = f32_to_bf16(wf[i]);
    float want[6] = {1.5f, 1, 5, 3.5f, 3, 9};
    ops_linear_ref(y, 3, x, 2, 2, 2, ds_w(w, DS_BF16), 3, ds_w(b, DS_F32), 0);
    ops_linear_cpu(yc, 3, x, 2, 2, 2, ds_w(w, DS_BF16), 3, ds_w(b, DS_F32), 0);
    for (int i = 0; i < 6; i++) {
        CHECKF(y[i] == want[i], "ref y[%d] = %g, want %g", i, y[i], want[i]);
        CHECKF(yc[i] == want[i], "cpu y[%d] = %g, want %g", i, yc[i], want[i]);
    }
}

static void test_norms(void) {
    static const int shapes[][2] = {{1, 1}, {3, 7}, {17, 768}, {5, 1280}, {64, 33}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int M = shapes[si][0], n = shapes[si][1], ld = n + 1;
        float *x = rnd((size_t)M * ld, 3.0f), *y0 = fill((size_t)M * ld, 0), *y1 = fill((size_t)M * ld, 0);
        for (size_t i = 0; i < (size_t)M * ld; i++) x[i] += 0.7f; /* non-zero mean */
        uint16_t *w = rnd_bf16(n, 1.0f), *b = rnd_bf16(n, 1.0f);
        ops_layernorm_ref(y0, ld, x, ld, M, n, ds_w(w, DS_BF16), ds_w(b, DS_BF16), 1e-6f);
        ops_layernorm_cpu(y1, ld, x, ld, M, n, ds_w(w, DS_BF16), ds_w(b, DS_BF16), 1e-6f);
        CHECKF(err_ratio(y1, y0, (size_t)M * ld, 1e-5, 1e-5) <= 1, "layernorm M=%d n=%d", M, n);
        for (int fl = 0; fl < 2; fl++) {
            ops_rmsnorm_ref(y0, ld, x, ld, M, n, ds_w(w, DS_BF16), 1e-6f, fl);
            ops_rmsnorm_cpu(y1, ld, x, ld, M, n, ds_w(w, DS_BF16), 1e-6f, fl);
            CHECKF(err_ratio(y1, y0, (size_t)M * ld, 1e-6, fl ? 1e-2 : 1e-5) <= 1, "rmsnorm M=%d n=%d flags %d", M, n,
                   fl);
            if (fl)
                for (size_t i = 0; i < (size_t)M * ld; i++) CHECK(y1[i] == bf16_round(y1[i]));
        }
        free(x), free(y0), free(y1), free(w), free(b);
    }
    /* Properties: unit weights, no bias → each row has mean 0 and variance 1 (up to eps); in place works. */
    int n = 300;
    float *x = rnd(n, 5.0f), *one = fill(n, 1.0f);
    ops_layernorm_cpu(x, n, x, n, 1, n, ds_w(one, DS_F32), ds_w_none(), 1e-6f);
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    CHECKF(fabs(mean) < 1e-5 && fabs(var - 1) < 1e-4, "layernorm mean %g var %g", mean, var);
    float *z = rnd(n, 5.0f);
    ops_rmsnorm_ref(z, n, z, n, 1, n, ds_w(one, DS_F32), 0.0f, 0);
    double ms = 0;
    for (int i = 0; i < n; i++) ms += (double)z[i] * z[i];
    CHECKF(fabs(ms / n - 1) < 1e-5, "rmsnorm mean square %g", ms / n);
    free(x), free(one), free(z);
}

static void test_elementwise(void) {
    size_t n = 40000 + 13;
    float *x = rnd(n, 6.0f), *u = rnd(n, 2.0f), *a = malloc(n * 4), *b = malloc(n * 4);
    ops_gelu_ref(a, x, n);
    ops_gelu_cpu(b, x, n);
    CHECK(err_ratio(b, a, n, 1e-7, 1e-6) <= 1);
    ops_quick_gelu_ref(a, x, n);
    ops_quick_gelu_cpu(b, x, n);
    CHECK(err_ratio(b, a, n, 1e-7, 1e-6) <= 1);
    for (int fl = 0; fl < 2; fl++) {
        ops_silu_mul_ref(a, x, u, n, fl);
        ops_silu_mul_cpu(b, x, u, n, fl);
        CHECKF(err_ratio(b, a, n, 1e-7, fl ? 8e-3 : 1e-6) <= 1, "silu_mul flags %d", fl);
    }
    ops_add_ref(a, x, u, n);
    ops_add_cpu(b, x, u, n);
    CHECK(memcmp(a, b, n * 4) == 0);
    memcpy(a, u, n * 4);
    memcpy(b, u, n * 4);
    ops_scale_add_ref(a, 0.3f, x, n);
    ops_scale_add_cpu(b, 0.3f, x, n);
    CHECK(err_ratio(b, a, n, 1e-7, 1e-6) <= 1);
    memcpy(a, x, n * 4);
    memcpy(b, x, n * 4);
    ops_round_bf16_ref(a, n);
    ops_round_bf16_cpu(b, n);
    CHECK(memcmp(a, b, n * 4) == 0);
    /* Values from the definitions. */
    float g[3] = {1.0f, -1.0f, 0.0f}, go[3];
    ops_gelu_cpu(go, g, 3);
    CHECK(fabs(go[0] - 0.5 * (1 + erf(M_SQRT1_2))) < 1e-6 && fabs(go[1] + 0.5 * (1 - erf(M_SQRT1_2))) < 1e-6);
    CHECK(go[2] == 0);
    ops_quick_gelu_cpu(go, g, 3);
    CHECK(fabs(go[0] - 1 / (1 + exp(-1.702))) < 1e-6 && go[2] == 0);
    /* bf16 rounding: ties to even; 1 + 2^-8 is halfway between 1 and 1 + 2^-7. */
    float r[4] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -1.0f - 1.0f / 128, 1.0f + 1.0f / 256 + 1.0f / 65536};
    ops_round_bf16_cpu(r, 4);
    CHECK(r[0] == 1.0f && r[1] == 1.0f + 1.0f / 64 && r[2] == -1.0f - 1.0f / 128 && r[3] == 1.0f + 1.0f / 128);
    /* every kind of float bits (NaNs quiet and signalling, infinities, the largest finite value that rounds up to
     * infinity, subnormals, ties): the vector and scalar paths as bf16_round, element by element; then rows of a
     * strided matrix (ops_round_bf16_rows_cpu) leave the gaps alone */
    {
        const size_t nb = (size_t)1 << 20;
        uint32_t *bits = malloc(nb * 4), *want = malloc(nb * 4);
        for (size_t i = 0; i < nb; i++) bits[i] = (uint32_t)(i * 4099u) ^ (uint32_t)(i << 12);
        const uint32_t special[] = {0x7f800000u, 0xff800000u, 0x7f800001u, 0x7fc00000u, 0xffffffffu, 0x7f7fffffu,
                                    0x7f7f8000u, 0x00000001u, 0x80008000u, 0x3f808000u, 0x3f818000u, 0};
        memcpy(bits, special, sizeof special);
        for (size_t i = 0; i < nb; i++) {
            float f;
            memcpy(&f, &bits[i], 4);
            f = bf16_round(f);
            memcpy(&want[i], &f, 4);
        }
        for (int scalar = 0; scalar < 2; scalar++) {
            uint32_t *got = malloc(nb * 4);
            memcpy(got, bits, nb * 4);
            ops_cpu_force_scalar(scalar);
            ops_round_bf16_cpu((float *)got, nb - 3); /* a tail past the last 8 */
            ops_cpu_force_scalar(0);
            long bad = 0;
            for (size_t i = 0; i < nb - 3; i++) bad += got[i] != want[i];
            for (size_t i = nb - 3; i < nb; i++) bad += got[i] != bits[i];
            CHECKF(bad == 0, "round_bf16 (%s): %ld of %zu floats differ from bf16_round", scalar ? "scalar" : "vector",
                   bad, nb);
            free(got);
        }
        const int M = 300, N = 1000, ld = 1003;
        uint32_t *got = malloc((size_t)M * ld * 4);
        memcpy(got, bits, (size_t)M * ld * 4);
        ops_round_bf16_rows_cpu((float *)got, ld, M, N);
        long bad = 0;
        for (size_t i = 0; i < (size_t)M * ld; i++) bad += got[i] != ((i % ld) < (size_t)N ? want[i] : bits[i]);
        CHECKF(bad == 0, "round_bf16_rows: %ld elements wrong", bad);
        free(got), free(bits), free(want);
    }
    free(x), free(u), free(a), free(b);
}

/* The activation tables of bf16 linears (ops_act_bf16_table_cpu) over every bf16 input: bit for bit the computed
 * activation, rounded (NaN stays NaN). */
static void test_act_tables(void) {
    const size_t n = 65536;
    float *x = malloc(n * sizeof *x), *t = malloc(n * sizeof *t), *want = malloc(n * sizeof *want);
    for (int quick = 0; quick < 2; quick++) {
        for (size_t i = 0; i < n; i++) x[i] = t[i] = bf16_to_f32((uint16_t)i);
        if (quick)
            ops_quick_gelu_cpu(want, x, n);
        else
            ops_gelu_cpu(want, x, n);
        ops_round_bf16_cpu(want, n);
        ops_act_bf16_table_cpu(t, n, quick);
        long bad = 0;
        for (size_t i = 0; i < n; i++) bad += want[i] == want[i] ? memcmp(&want[i], &t[i], 4) != 0 : t[i] == t[i];
        CHECKF(bad == 0, "%s table: %ld of 65536 bf16 inputs differ", quick ? "quick_gelu" : "gelu", bad);
    }
    free(x), free(t), free(want);
}

static void test_softmax_argmax(void) {
    int M = 7, n = 1001;
    float *x = rnd((size_t)M * n, 20.0f), *a = malloc((size_t)M * n * 4), *b = malloc((size_t)M * n * 4);
    ops_softmax_ref(a, n, x, n, M, n);
    ops_softmax_cpu(b, n, x, n, M, n);
    CHECK(err_ratio(b, a, (size_t)M * n, 1e-9, 1e-5) <= 1);
    for (int m = 0; m < M; m++) {
        double s = 0;
        for (int i = 0; i < n; i++) s += b[(size_t)m * n + i];
        CHECKF(fabs(s - 1) < 1e-5, "row %d sums to %g", m, s);
    }
    float t[6] = {1, 3, NAN, 3, -INFINITY, 2};
    CHECK(ops_argmax(t, 6) == 1);
    float t2[3] = {NAN, -INFINITY, -INFINITY};
    CHECK(ops_argmax(t2, 3) == 1);
    free(x), free(a), free(b);
}

/* ---------------------------------------------------------------------------------------------------------- */

/* Straightforward attention with a dense bias, written here independently: out = softmax(s·QKᵀ + B)·V, one
 * sequence, causal by q_offset when causal. bias may be NULL, else [H][tq][tk]. */
static void dense_attention(float *out, int ldo, const float *q, int ldq, const float *k, int ldk, const float *v,
                            int ldv, int tq, int tk, int H, int D, float scale, const double *bias, int causal,
                            int q_offset) {
    double *s = malloc(sizeof(double) * tk);
    for (int h = 0; h < H; h++)
        for (int i = 0; i < tq; i++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < tk; j++) {
                double d = 0;
                for (int c = 0; c < D; c++) d += (double)q[(size_t)i * ldq + h * D + c] * k[(size_t)j * ldk + h * D + c];
                s[j] = scale * d + (bias ? bias[((size_t)h * tq + i) * tk + j] : 0);
                if (causal && j > q_offset + i) s[j] = -INFINITY;
                if (s[j] > mx) mx = s[j];
            }
            for (int j = 0; j < tk; j++) sum += s[j] = exp(s[j] - mx);
            for (int c = 0; c < D; c++) {
                double o = 0;
                for (int j = 0; j < tk; j++) o += s[j] * v[(size_t)j * ldv + h * D + c];
                out[(size_t)i * ldo + h * D + c] = (float)(o / sum);
            }
        }
    free(s);
}

/* Dense [H][T][T] SAM bias from the formula of spec §5.1 step 4 (q unscaled). */
static double *dense_relpos_bias(const float *q, int ldq, int H, int D, int gh, int gw, const float *rh,
                                 const float *rw) {
    int T = gh * gw;
    double *B = malloc(sizeof(double) * H * T * T);
    for (int h = 0; h < H; h++)
        for (int a = 0; a < T; a++)
            for (int b = 0; b < T; b++) {
                int i1 = a / gw, j1 = a % gw, i2 = b / gw, j2 = b % gw;
                double s = 0;
                for (int c = 0; c < D; c++)
                    s += (double)q[(size_t)a * ldq + h * D + c] *
                         ((double)rh[(size_t)(i1 - i2 + gh - 1) * D + c] + rw[(size_t)(j1 - j2 + gw - 1) * D + c]);
                B[((size_t)h * T + a) * T + b] = s;
            }
    return B;
}

static void test_attention_relpos(void) {
    /* (grid_h, grid_w, batch, heads, head_dim): a 14×14 window batch, a non-square grid, 1 token, a 9×15 grid */
    static const int cases[][5] = {{14, 14, 3, 2, 16}, {7, 10, 1, 3, 8}, {1, 1, 2, 2, 4}, {9, 15, 1, 1, 64}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int gh = cases[ci][0], gw = cases[ci][1], B = cases[ci][2], H = cases[ci][3], D = cases[ci][4];
        int T = gh * gw, W = H * D, ld = 3 * W; /* fused qkv rows */
        float *qkv = rnd((size_t)B * T * ld, 1.0f), *rh = rnd((size_t)(2 * gh - 1) * D, 0.5f),
              *rw = rnd((size_t)(2 * gw - 1) * D, 0.5f);
        /* the last rows of the first window repeat one vector, as zero-padded tokens after LN1 + qkv bias */
        for (int t = T - T / 5; t < T; t++) memcpy(qkv + (size_t)t * ld, qkv + (size_t)(T - 1) * ld, ld * 4);
        float *o0 = fill((size_t)B * T * W, 0), *o1 = fill((size_t)B * T * W, 0), *od = fill((size_t)B * T * W, 0);
        float scale = 1.0f / sqrtf((float)D);
        OpsAttention a = {.out = o0, .q = qkv, .k = qkv + W, .v = qkv + 2 * W, .ldo = W, .ldq = ld, .ldk = ld,
                          .ldv = ld, .n_batch = B, .tq = T, .tk = T, .n_heads = H, .head_dim = D, .scale = scale,
                          .relpos_h = rh, .relpos_w = rw, .grid_h = gh, .grid_w = gw};
        ops_attention_ref(&a);
        a.out = o1;
        ops_attention_cpu(&a);
        for (int b = 0; b < B; b++) {
            const float *qb = qkv + (size_t)b * T * ld;
            double *bias = dense_relpos_bias(qb, ld, H, D, gh, gw, rh, rw);
            dense_attention(od + (size_t)b * T * W, W, qb, ld, qb + W, ld, qb + 2 * W, ld, T, T, H, D, scale, bias, 0, 0);
            free(bias);
        }
        CHECKF(err_ratio(o0, od, (size_t)B * T * W, 1e-6, 1e-5) <= 1, "ref vs dense, case %zu", ci);
        CHECKF(err_ratio(o1, od, (size_t)B * T * W, 2e-6, 2e-5) <= 1, "cpu vs dense, case %zu: %g", ci,
               err_ratio(o1, od, (size_t)B * T * W, 2e-6, 2e-5));
        free(qkv), free(rh), free(rw), free(o0), free(o1), free(od);
    }
}

/* the bf16 rule for the relative-position bias (bf16_bias: each term and their sum rounded to bf16, as the
 * official bf16 run): on inputs that are multiples of 1/8 (every dot product exact in any order, so both
 * implementations round the same sums) the CPU kernel's rounding, vectorised or not, must match the reference's
 * to fp32 noise; a rounding off by one bf16 step somewhere would move the output by ~1e-3 */
static void test_attention_relpos_bf16_bias(void) {
    static const int cases[][5] = {{14, 14, 3, 2, 16}, {9, 15, 1, 1, 64}, {64, 64, 1, 1, 16}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int gh = cases[ci][0], gw = cases[ci][1], B = cases[ci][2], H = cases[ci][3], D = cases[ci][4];
        int T = gh * gw, W = H * D, ld = 3 * W;
        float *qkv = rnd((size_t)B * T * ld, 1.0f), *rh = rnd((size_t)(2 * gh - 1) * D, 2.0f),
              *rw = rnd((size_t)(2 * gw - 1) * D, 2.0f);
        for (size_t i = 0; i < (size_t)B * T * ld; i++) qkv[i] = roundf(qkv[i] * 8) / 8;
        for (size_t i = 0; i < (size_t)(2 * gh - 1) * D; i++) rh[i] = roundf(rh[i] * 8) / 8;
        for (size_t i = 0; i < (size_t)(2 * gw - 1) * D; i++) rw[i] = roundf(rw[i] * 8) / 8;
        float *o0 = fill((size_t)B * T * W, 0), *o1 = fill((size_t)B * T * W, 0);
        OpsAttention a = {.out = o0, .q = qkv, .k = qkv + W, .v = qkv + 2 * W, .ldo = W, .ldq = ld, .ldk = ld,
                          .ldv = ld, .n_batch = B, .tq = T, .tk = T, .n_heads = H, .head_dim = D,
                          .scale = 1.0f / sqrtf((float)D), .relpos_h = rh, .relpos_w = rw, .grid_h = gh, .grid_w = gw,
                          .bf16_bias = 1};
        ops_attention_ref(&a);
        a.out = o1;
        ops_attention_cpu(&a);
        CHECKF(err_ratio(o1, o0, (size_t)B * T * W, 2e-6, 2e-5) <= 1, "bf16 bias, cpu vs ref, case %zu: %g", ci,
               err_ratio(o1, o0, (size_t)B * T * W, 2e-6, 2e-5));
        free(qkv), free(rh), free(rw), free(o0), free(o1);
    }
}

static void test_attention_causal(void) {
    /* (tq, tk, q_offset, causal, heads, head_dim) */
    static const int cases[][6] = {{150, 150, 0, 1, 2, 32}, {5, 200, 195, 1, 3, 16}, {1, 1, 0, 1, 1, 8},
                                   {3, 130, 0, 0, 2, 24},   {70, 90, 20, 1, 1, 128}, {1, 300, 299, 1, 2, 64}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int tq = cases[ci][0], tk = cases[ci][1], off = cases[ci][2], causal = cases[ci][3], H = cases[ci][4],
            D = cases[ci][5], W = H * D;
        float *q = rnd((size_t)tq * (W + 5), 2.0f), *k = rnd((size_t)tk * W, 2.0f), *v = rnd((size_t)tk * (W + 1), 1.0f);
        float *o0 = fill((size_t)tq * W, 0), *o1 = fill((size_t)tq * W, 0), *od = fill((size_t)tq * W, 0);
        float scale = 1.0f / sqrtf((float)D);
        OpsAttention a = {.out = o0, .q = q, .k = k, .v = v, .ldo = W, .ldq = W + 5, .ldk = W, .ldv = W + 1,
                          .n_batch = 1, .tq = tq, .tk = tk, .n_heads = H, .head_dim = D, .scale = scale,
                          .causal = causal, .q_offset = off};
        ops_attention_ref(&a);
        a.out = o1;
        ops_attention_cpu(&a);
        dense_attention(od, W, q, W + 5, k, W, v, W + 1, tq, tk, H, D, scale, NULL, causal, off);
        CHECKF(err_ratio(o0, od, (size_t)tq * W, 1e-6, 1e-5) <= 1, "ref vs dense, case %zu", ci);
        CHECKF(err_ratio(o1, od, (size_t)tq * W, 2e-6, 2e-5) <= 1, "cpu vs dense, case %zu", ci);
        free(q), free(k), free(v), free(o0), free(o1), free(od);
    }
}

/* D = 40: a 32-column SIMD part and a tail; D = 104: a 64-column AVX-512 part, then both of those */
static void kv_case(DsDtype dt, int D) {
    int L = 2, H = 2, W = H * D, bs = 16, T = 75, layer = 1;
    KvCache kv;
    DsError e = {0};
    REQUIRE(kvcache_new_typed(&kv, L, W, bs, 12, dt, &e) == DSOCR_OK);
    CHECK(kv.dtype == dt);
    CHECK(kvcache_new(&(KvCache){0}, 0, W, bs, 1, &e) == DSOCR_E_INVALID_ARG && strstr(e.msg, "KV cache"));
    int32_t tab0[5] = {7, 2, 9, 0, 4}, tab1[5] = {1, 11, 3, 5, 6};
    const int32_t *tables[2] = {tab0, tab1};
    float *k0 = rnd((size_t)T * W, 1.0f), *v0 = rnd((size_t)T * W, 1.0f), *k1 = rnd((size_t)T * W, 1.0f),
          *v1 = rnd((size_t)T * W, 1.0f);
    kv_write(&kv, layer, tab0, 0, 40, k0, W, v0, W); /* two chunks for sequence 0, one for sequence 1 */
    kv_write(&kv, layer, tab0, 40, T - 40, k0 + (size_t)40 * W, W, v0 + (size_t)40 * W, W);
    kv_write(&kv, layer, tab1, 0, T, k1, W, v1, W);
    kv_write(&kv, 0, tab0, 0, T, v1, W, k1, W); /* another layer's data must not leak in */
    if (dt == DS_BF16) { /* the bf16 pool rounds what it stores; the fp32 pool keeps it exactly */
        ops_round_bf16_ref(k0, (size_t)T * W), ops_round_bf16_ref(v0, (size_t)T * W);
        ops_round_bf16_ref(k1, (size_t)T * W), ops_round_bf16_ref(v1, (size_t)T * W);
    }
    /* decode-style rows of both sequences */
    enum { R = 5 };
    int32_t pos[R] = {0, 15, 16, 74, 40}, seq[R] = {0, 1, 0, 1, 0};
    float *q = rnd((size_t)R * W, 2.0f), *o0 = fill((size_t)R * W, 0), *o1 = fill((size_t)R * W, 0),
          *od = fill((size_t)R * W, 0);
    float scale = 1.0f / sqrtf((float)D);
    OpsAttentionKv a = {.out = o0, .q = q, .ldo = W, .ldq = W, .n = R, .pos = pos, .seq = seq, .tables = tables,
                        .kv = &kv, .layer = layer, .n_heads = H, .head_dim = D, .scale = scale};
    ops_attention_kv_ref(&a);
    a.out = o1;
    ops_attention_kv_cpu(&a);
    for (int r = 0; r < R; r++) {
        const float *k = seq[r] ? k1 : k0, *v = seq[r] ? v1 : v0;
        dense_attention(od + (size_t)r * W, W, q + (size_t)r * W, W, k, W, v, W, 1, pos[r] + 1, H, D, scale, NULL, 0, 0);
    }
    CHECKF(err_ratio(o0, od, (size_t)R * W, 1e-6, 1e-5) <= 1, "kv ref vs contiguous");
    CHECKF(err_ratio(o1, od, (size_t)R * W, 2e-6, 2e-5) <= 1, "kv cpu vs contiguous");
    /* the SIMD value accumulation does the portable loop's operations: the same bits */
    float *os = fill((size_t)R * W, 0);
    a.out = os;
    ops_cpu_force_scalar(1);
    ops_attention_kv_cpu(&a);
    ops_cpu_force_scalar(0);
    CHECKF(!memcmp(os, o1, sizeof(float) * (size_t)R * W), "kv cpu: SIMD and portable loops agree bit for bit");
    /* one row a call (a decode step: its key chunks spread over the threads when there are more threads than rows),
     * with 1, 2 and 3 threads: the same bits as the rows above (whichever way they were shared out) */
    const int saved = omp_get_max_threads();
    for (int th = 1; th <= 3; th++) {
        omp_set_num_threads(th);
        int same = 1;
        for (int r = 0; r < R; r++) {
            OpsAttentionKv one = a;
            one.out = os + (size_t)r * W, one.q = q + (size_t)r * W, one.n = 1, one.pos = pos + r, one.seq = seq + r;
            ops_attention_kv_cpu(&one);
            same &= !memcmp(os + (size_t)r * W, o1 + (size_t)r * W, sizeof(float) * W);
        }
        CHECKF(same, "kv cpu: one row a call with %d threads = the same rows in one call", th);
    }
    omp_set_num_threads(saved);
    free(os);
    /* round_bf16: the same outputs rounded to bf16 (ref and cpu) */
    float *or0 = fill((size_t)R * W, 0), *or1 = fill((size_t)R * W, 0);
    a.round_bf16 = 1;
    a.out = or0;
    ops_attention_kv_ref(&a);
    a.out = or1;
    ops_attention_kv_cpu(&a);
    a.round_bf16 = 0;
    int rounded = 1, near = 1;
    for (size_t i = 0; i < (size_t)R * W; i++) {
        float t = or0[i], u = or1[i];
        ops_round_bf16_ref(&t, 1), ops_round_bf16_ref(&u, 1);
        rounded = rounded && t == or0[i] && u == or1[i];
        near = near && fabsf(or0[i] - o0[i]) <= 4e-3f * fabsf(o0[i]) + 1e-30f;
    }
    CHECKF(rounded && near, "kv attention round_bf16: outputs are bf16 values within a bf16 step");
    free(or0), free(or1);
    /* prefill through the cache == causal contiguous attention */
    int32_t *pp = malloc(sizeof(int32_t) * T);
    for (int t = 0; t < T; t++) pp[t] = t;
    float *qp = rnd((size_t)T * W, 2.0f), *p0 = fill((size_t)T * W, 0), *p1 = fill((size_t)T * W, 0);
    OpsAttentionKv b = {.out = p1, .q = qp, .ldo = W, .ldq = W, .n = T, .pos = pp, .tables = tables, .kv = &kv,
                        .layer = layer, .n_heads = H, .head_dim = D, .scale = scale};
    ops_attention_kv_cpu(&b);
    OpsAttention c = {.out = p0, .q = qp, .k = k0, .v = v0, .ldo = W, .ldq = W, .ldk = W, .ldv = W, .n_batch = 1,
                      .tq = T, .tk = T, .n_heads = H, .head_dim = D, .scale = scale, .causal = 1};
    ops_attention_ref(&c);
    CHECKF(err_ratio(p1, p0, (size_t)T * W, 2e-6, 2e-5) <= 1, "kv prefill vs causal attention");
    kvcache_free(&kv);
    CHECK(kv.data == NULL);
    free(k0), free(v0), free(k1), free(v1), free(q), free(o0), free(o1), free(od), free(pp), free(qp), free(p0),
        free(p1);
}

static void test_kv_cache(void) { kv_case(DS_BF16, 40), kv_case(DS_BF16, 104); }
static void test_kv_cache_f32(void) {
    kv_case(DS_F32, 40);
    KvCache kv;
    DsError e = {0};
    CHECK(kvcache_new_typed(&kv, 1, 8, 4, 2, DS_I32, &e) == DSOCR_E_INVALID_ARG);
    CHECK_STR_CONTAINS(e.msg, "element type");
}

/* ---------------------------------------------------------------------------------------------------------- */

static void test_rope(void) {
    int T = 6, H = 3, D = 128, ld = H * D + 4;
    int32_t pos[6] = {0, 1, 7, 100, 4095, 8191};
    float *x = rnd((size_t)T * ld, 2.0f), *a = malloc((size_t)T * ld * 4), *b = malloc((size_t)T * ld * 4);
    memcpy(a, x, (size_t)T * ld * 4);
    memcpy(b, x, (size_t)T * ld * 4);
    ops_rope_neox_ref(a, ld, T, H, D, pos, 10000.0f, 0);
    ops_rope_neox_cpu(b, ld, T, H, D, pos, 10000.0f, 0);
    CHECK(err_ratio(b, a, (size_t)T * ld, 1e-7, 1e-6) <= 1);
    /* independent: angle in fp32 as torch (pos · inv_freq), cos/sin in double */
    double worst = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < D / 2; i++) {
                float inv = 1.0f / powf(10000.0f, (float)(2 * i) / D), ang = (float)pos[t] * inv;
                const float *r = x + (size_t)t * ld + h * D;
                double x1 = r[i], x2 = r[i + D / 2];
                double e1 = x1 * cos(ang) - x2 * sin(ang), e2 = x2 * cos(ang) + x1 * sin(ang);
                double d1 = fabs(a[(size_t)t * ld + h * D + i] - e1), d2 = fabs(a[(size_t)t * ld + h * D + i + D / 2] - e2);
                worst = fmax(worst, fmax(d1, d2));
            }
    CHECKF(worst < 2e-6, "rope vs formula: %g", worst);
    for (int t = 0; t < T; t++) /* untouched padding */
        CHECK(memcmp(a + (size_t)t * ld + H * D, x + (size_t)t * ld + H * D, 16) == 0);
    /* bf16 mode on bf16 inputs */
    ops_round_bf16_ref(x, (size_t)T * ld);
    memcpy(a, x, (size_t)T * ld * 4);
    memcpy(b, x, (size_t)T * ld * 4);
    ops_rope_neox_ref(a, ld, T, H, D, pos, 10000.0f, OPS_BF16);
    ops_rope_neox_cpu(b, ld, T, H, D, pos, 10000.0f, OPS_BF16);
    CHECK(memcmp(a, b, (size_t)T * ld * 4) == 0);
    for (size_t i = 0; i < (size_t)T * ld; i++) CHECK(a[i] == bf16_round(a[i]));
    free(x), free(a), free(b);
}

static void test_conv2d(void) {
    /* (H, W, I, O, k, stride, pad) */
    static const int cases[][7] = {{32, 48, 3, 8, 16, 16, 0}, {5, 7, 24, 10, 1, 1, 0}, {7, 9, 5, 6, 3, 1, 1},
                                   {9, 7, 4, 5, 3, 2, 1},    {8, 8, 6, 20, 3, 2, 1},  {1, 1, 3, 2, 3, 1, 1}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        OpsConv2d c = {.in_h = cases[ci][0], .in_w = cases[ci][1], .in_c = cases[ci][2], .out_c = cases[ci][3],
                       .kh = cases[ci][4], .kw = cases[ci][4], .stride = cases[ci][5], .pad = cases[ci][6]};
        int Ho = ops_conv2d_out_h(&c), Wo = ops_conv2d_out_w(&c);
        CHECK(Ho == (c.in_h + 2 * c.pad - c.kh) / c.stride + 1);
        size_t ny = (size_t)Ho * Wo * c.out_c, kc = (size_t)c.in_c * c.kh * c.kw;
        float *x = rnd((size_t)c.in_h * c.in_w * c.in_c, 1.0f), *y0 = fill(ny, 0), *y1 = fill(ny, 0),
              *y2 = fill(ny, 0);
        uint16_t *w = rnd_bf16((size_t)c.out_c * kc, 0.3f), *b = rnd_bf16(c.out_c, 1.0f);
        size_t sn = ops_conv2d_scratch_floats(&c);
        float *scratch = malloc((sn ? sn : 1) * 4), *small = malloc(kc * 3 * 4);
        ops_conv2d_ref(y0, x, &c, ds_w(w, DS_BF16), ds_w(b, DS_BF16), NULL, 0);
        ops_conv2d_cpu(y1, x, &c, ds_w(w, DS_BF16), ds_w(b, DS_BF16), sn ? scratch : NULL, sn);
        ops_conv2d_cpu(y2, x, &c, ds_w(w, DS_BF16), ds_w(b, DS_BF16), small, kc * 3);
        CHECKF(err_ratio(y1, y0, ny, 2e-6 * kc, 1e-5) <= 1, "conv case %zu (full scratch)", ci);
        CHECKF(err_ratio(y2, y0, ny, 2e-6 * kc, 1e-5) <= 1, "conv case %zu (small scratch)", ci);
        free(x), free(y0), free(y1), free(y2), free(w), free(b), free(scratch), free(small);
    }
    /* by hand: 3×3 pad 1 on a 1×1 image sees only the centre tap */
    float x1[2] = {2, 3}, y[1];
    float wt[18] = {0};
    wt[4] = 10, wt[9 + 4] = 100, wt[0] = 1e6f;
    OpsConv2d c = {.in_h = 1, .in_w = 1, .in_c = 2, .out_c = 1, .kh = 3, .kw = 3, .stride = 1, .pad = 1};
    ops_conv2d_ref(y, x1, &c, ds_w(wt, DS_F32), ds_w_none(), NULL, 0);
    CHECK(y[0] == 320);
}

/* ---------------------------------------------------------------------------------------------------------- */

/* Independent AA-bicubic: dense per-axis weight matrices [out][in] from the formula, applied as Wy·X·Wxᵀ. */
static double keys_half(double x) {
    x = fabs(x);
    return x < 1 ? 1.5 * x * x * x - 2.5 * x * x + 1 : x < 2 ? -0.5 * x * x * x + 2.5 * x * x - 4 * x + 2 : 0;
}
static double *aa_matrix(int in, int out) {
    double *m = calloc((size_t)in * out, sizeof(double));
    double sc = (double)in / out, f = sc > 1 ? sc : 1;
    for (int o = 0; o < out; o++) {
        double c = (o + 0.5) * sc, tot = 0;
        long lo = (long)(c - 2 * f + 0.5), hi = (long)(c + 2 * f + 0.5);
        for (long x = lo < 0 ? 0 : lo; x < (hi > in ? in : hi); x++) tot += m[(size_t)o * in + x] = keys_half((x - c + 0.5) / f);
        for (int x = 0; x < in; x++) m[(size_t)o * in + x] /= tot;
    }
    return m;
}

static void test_resample(void) {
    static const int cases[][4] = {{16, 16, 10, 10}, {16, 16, 20, 20}, {16, 16, 8, 8}, {64, 64, 40, 40},
                                   {12, 20, 7, 30},  {5, 5, 5, 5}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int ih = cases[ci][0], iw = cases[ci][1], oh = cases[ci][2], ow = cases[ci][3], C = 3;
        float *in = rnd((size_t)ih * iw * C, 1.0f), *out = malloc((size_t)oh * ow * C * 4),
              *chw_in = malloc((size_t)ih * iw * C * 4), *chw_out = malloc((size_t)oh * ow * C * 4);
        ops_resample_bicubic_aa(out, in, C, ih, iw, oh, ow, 1);
        for (int c = 0; c < C; c++)
            for (int p = 0; p < ih * iw; p++) chw_in[(size_t)c * ih * iw + p] = in[(size_t)p * C + c];
        ops_resample_bicubic_aa(chw_out, chw_in, C, ih, iw, oh, ow, 0);
        double *my = aa_matrix(ih, oh), *mx = aa_matrix(iw, ow), worst = 0, worst_layout = 0;
        for (int c = 0; c < C; c++)
            for (int y = 0; y < oh; y++)
                for (int x = 0; x < ow; x++) {
                    double s = 0;
                    for (int a = 0; a < ih; a++)
                        for (int b = 0; b < iw; b++)
                            s += my[(size_t)y * ih + a] * mx[(size_t)x * iw + b] * in[((size_t)a * iw + b) * C + c];
                    float got = out[((size_t)y * ow + x) * C + c];
                    worst = fmax(worst, fabs(got - s));
                    worst_layout = fmax(worst_layout, fabs(got - chw_out[(size_t)c * oh * ow + y * ow + x]));
                }
        CHECKF(worst < 2e-6, "bicubic AA %dx%d -> %dx%d: %g", ih, iw, oh, ow, worst);
        CHECK(worst_layout == 0);
        if (ih == oh && iw == ow) CHECK(memcmp(in, out, (size_t)ih * iw * C * 4) == 0);
        free(in), free(out), free(chw_in), free(chw_out), free(my), free(mx);
    }
    static const int lin[][2] = {{127, 79}, {127, 159}, {27, 27}, {3, 10}};
    for (size_t ci = 0; ci < sizeof lin / sizeof lin[0]; ci++) {
        int in = lin[ci][0], out = lin[ci][1], C = 5;
        float *t = rnd((size_t)in * C, 1.0f), *o = malloc((size_t)out * C * 4);
        ops_resample_linear_1d(o, t, in, out, C);
        double worst = 0;
        for (int i = 0; i < out; i++) {
            double src = fmax((i + 0.5) * in / out - 0.5, 0);
            int i0 = (int)floor(src), i1 = i0 + 1 < in ? i0 + 1 : in - 1;
            double l = src - i0;
            for (int c = 0; c < C; c++)
                worst = fmax(worst, fabs(o[(size_t)i * C + c] - ((1 - l) * t[(size_t)i0 * C + c] + l * t[(size_t)i1 * C + c])));
        }
        CHECKF(worst < 3e-5, "linear %d -> %d: %g", in, out, worst); /* src and λ are fp32, as torch */
        if (in == out) CHECK(memcmp(t, o, (size_t)in * C * 4) == 0);
        free(t), free(o);
    }
}

/* ---------------------------------------------------------------------------------------------------------- */

static void test_moe(void) {
    int M = 4, E = 64, k = 6;
    float *lg = rnd((size_t)M * E, 3.0f);
    for (int e = 0; e < E; e++) lg[(size_t)2 * E + e] = 0.25f; /* row 2: all tied */
    for (int e = 0; e < E; e++) lg[(size_t)3 * E + e] = e < 32 ? 1.0f + e * 1e-5f : 0; /* ties only in bf16 */
    int32_t idx[4 * 6];
    float w[4 * 6];
    ops_moe_route(lg, E, M, E, k, 0, idx, w);
    for (int m = 0; m < 2; m++) {
        double mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++) mx = fmax(mx, lg[(size_t)m * E + e]);
        for (int e = 0; e < E; e++) sum += exp(lg[(size_t)m * E + e] - mx);
        for (int j = 0; j < k; j++) {
            int id = idx[m * k + j];
            CHECK(fabs(w[m * k + j] - exp(lg[(size_t)m * E + id] - mx) / sum) < 1e-6);
            if (j) CHECK(w[m * k + j] <= w[m * k + j - 1]);
            int beaten = 0; /* no unselected expert has a larger logit */
            for (int e = 0; e < E; e++) beaten += lg[(size_t)m * E + e] > lg[(size_t)m * E + idx[m * k + k - 1]];
            CHECK(beaten == k - 1);
        }
    }
    for (int j = 0; j < k; j++) CHECK(idx[2 * k + j] == j && fabs(w[2 * k + j] - 1.0 / E) < 1e-7);
    for (int j = 0; j < k; j++) CHECK(idx[3 * k + j] == 31 - j); /* fp32: distinct, largest last */
    ops_moe_route(lg, E, M, E, k, OPS_BF16, idx, w);
    for (int j = 0; j < k; j++) CHECK(idx[3 * k + j] == j); /* bf16 logits tie: lowest index wins */
    free(lg);

    int d = 40, ff = 24;
    uint16_t *g = rnd_bf16((size_t)ff * d, 0.3f), *u = rnd_bf16((size_t)ff * d, 0.3f), *dn = rnd_bf16((size_t)d * ff, 0.3f);
    for (int rows = 1; rows <= 21; rows += 10)
        for (int fl = 0; fl < 2; fl++) {
            float *x = rnd((size_t)rows * d, 1.0f), *y0 = fill((size_t)rows * d, 0), *y1 = fill((size_t)rows * d, 0);
            float *s = malloc(ops_expert_ffn_scratch_floats(rows, ff) * 4);
            ops_expert_ffn_ref(y0, x, rows, d, ff, ds_w(g, DS_BF16), ds_w(u, DS_BF16), ds_w(dn, DS_BF16), fl, s);
            ops_expert_ffn_cpu(y1, x, rows, d, ff, ds_w(g, DS_BF16), ds_w(u, DS_BF16), ds_w(dn, DS_BF16), fl, s);
            /* in bf16 mode an intermediate may round the other way: allow a few bf16 steps */
            CHECKF(err_ratio(y1, y0, (size_t)rows * d, fl ? 2e-2 : 1e-5, fl ? 2e-2 : 1e-5) <= 1, "ffn rows %d flags %d",
                   rows, fl);
            free(x), free(y0), free(y1), free(s);
        }
    free(g), free(u), free(dn);
}

/* ops_expert_ffn1_many_cpu (decode: several experts' FFNs of one row in two parallel regions) == one
 * ops_expert_ffn_cpu a expert, bit for bit: bf16, Q8_0 and Q4_0 weights, experts of two widths (routed and shared),
 * fp32 and bf16 rounding, with 1 and 2 threads */
static void test_ffn1_many_exact(void) {
    const int dts[3] = {DS_BF16, DS_Q8_0, DS_Q4_0}, D = 160, n = 4, F[4] = {96, 96, 64, 224};
    for (int di = 0; di < 3; di++)
        for (int fl = 0; fl < 2; fl++)
            for (int th = 1; th <= 2; th++) {
                omp_set_num_threads(th);
                float *x = rnd(D, 1.0f);
                DsW g[4], u[4], dn[4];
                void *bufs[12];
                float *y1[4], *y2[4];
                for (int i = 0; i < n; i++) {
                    const size_t cnt = (size_t)F[i] * D;
                    for (int k = 0; k < 3; k++) {
                        float *wf = rnd(cnt, 0.3f);
                        void *wd;
                        if (dts[di] == DS_BF16) {
                            uint16_t *h = malloc(sizeof(uint16_t) * cnt);
                            for (size_t j = 0; j < cnt; j++) h[j] = f32_to_bf16(wf[j]);
                            wd = h;
                        } else {
                            wd = malloc(quant_row_bytes((DsDtype)dts[di], (int64_t)cnt));
                            quant_row_ref((DsDtype)dts[di], wd, wf, (int64_t)cnt); /* rows hold whole blocks */
                        }
                        free(wf);
                        bufs[3 * i + k] = wd;
                    }
                    g[i] = ds_w(bufs[3 * i], (DsDtype)dts[di]);
                    u[i] = ds_w(bufs[3 * i + 1], (DsDtype)dts[di]);
                    dn[i] = ds_w(bufs[3 * i + 2], (DsDtype)dts[di]);
                    y1[i] = fill(D, 0), y2[i] = fill(D, 0);
                    float *s = malloc(ops_expert_ffn_scratch_floats(1, F[i]) * 4);
                    ops_expert_ffn_cpu(y1[i], x, 1, D, F[i], g[i], u[i], dn[i], fl ? OPS_BF16 : 0, s);
                    free(s);
                }
                ops_expert_ffn1_many_cpu(y2, x, D, F, g, u, dn, n, fl ? OPS_BF16 : 0);
                for (int i = 0; i < n; i++)
                    CHECKF(!memcmp(y1[i], y2[i], sizeof(float) * D), "dtype %d bf16 %d threads %d expert %d differs",
                           dts[di], fl, th, i);
                for (int i = 0; i < n; i++) free(y1[i]), free(y2[i]);
                for (int i = 0; i < 3 * n; i++) free(bufs[i]);
                free(x);
            }
    omp_set_num_threads(omp_get_num_procs());
}

/* ---------------------------------------------------------------------------------------------------------- */

/* Runs the thread-sensitive fast ops with n threads; the outputs are concatenated into out (caller compares). */
static size_t run_all(float *out, int nthreads) {
    omp_set_num_threads(nthreads);
    rng_state = 12345;
    size_t off = 0;
    { /* linear: GEMV and GEMM paths, bf16 */
        int Ms[2] = {3, 300}, K = 777, N = 530;
        uint16_t *w = rnd_bf16((size_t)N * K, 0.5f);
        for (int i = 0; i < 2; i++) {
            float *x = rnd((size_t)Ms[i] * K, 1.0f);
            ops_linear_cpu(out + off, N, x, K, Ms[i], K, ds_w(w, DS_BF16), N, ds_w_none(), 0);
            off += (size_t)Ms[i] * N;
            free(x);
        }
        free(w);
    }
    { /* attention with rel-pos (global-like) and causal */
        int gh = 12, gw = 11, T = gh * gw, H = 3, D = 32, W = H * D;
        float *q = rnd((size_t)T * W, 1.0f), *k = rnd((size_t)T * W, 1.0f), *v = rnd((size_t)T * W, 1.0f);
        float *rh = rnd((size_t)(2 * gh - 1) * D, 0.5f), *rw = rnd((size_t)(2 * gw - 1) * D, 0.5f);
        OpsAttention a = {.out = out + off, .q = q, .k = k, .v = v, .ldo = W, .ldq = W, .ldk = W, .ldv = W,
                          .n_batch = 1, .tq = T, .tk = T, .n_heads = H, .head_dim = D, .scale = 0.17f,
                          .relpos_h = rh, .relpos_w = rw, .grid_h = gh, .grid_w = gw};
        ops_attention_cpu(&a);
        off += (size_t)T * W;
        OpsAttention c = {.out = out + off, .q = q, .k = k, .v = v, .ldo = W, .ldq = W, .ldk = W, .ldv = W,
                          .n_batch = 1, .tq = T, .tk = T, .n_heads = H, .head_dim = D, .scale = 0.17f, .causal = 1};
        ops_attention_cpu(&c);
        off += (size_t)T * W;
        free(q), free(k), free(v), free(rh), free(rw);
    }
    { /* KV-cache attention */
        int H = 4, D = 32, W = H * D, T = 100;
        KvCache kv;
        if (kvcache_new(&kv, 1, W, 16, 8, NULL) != DSOCR_OK) return 0;
        int32_t tab[7] = {6, 1, 4, 0, 3, 7, 2}, pos[T];
        const int32_t *tables[1] = {tab};
        float *k = rnd((size_t)T * W, 1.0f), *v = rnd((size_t)T * W, 1.0f), *q = rnd((size_t)T * W, 1.0f);
        kv_write(&kv, 0, tab, 0, T, k, W, v, W);
        for (int t = 0; t < T; t++) pos[t] = t;
        OpsAttentionKv a = {.out = out + off, .q = q, .ldo = W, .ldq = W, .n = T, .pos = pos, .tables = tables,
                            .kv = &kv, .layer = 0, .n_heads = H, .head_dim = D, .scale = 0.2f};
        ops_attention_kv_cpu(&a);
        off += (size_t)T * W;
        kvcache_free(&kv);
        free(k), free(v), free(q);
    }
    { /* conv 3×3 stride 2, norms, softmax, rope */
        OpsConv2d c = {.in_h = 20, .in_w = 18, .in_c = 16, .out_c = 40, .kh = 3, .kw = 3, .stride = 2, .pad = 1};
        float *x = rnd((size_t)20 * 18 * 16, 1.0f), *s = malloc(ops_conv2d_scratch_floats(&c) * 4);
        uint16_t *w = rnd_bf16((size_t)40 * 16 * 9, 0.3f);
        ops_conv2d_cpu(out + off, x, &c, ds_w(w, DS_BF16), ds_w_none(), s, ops_conv2d_scratch_floats(&c));
        off += (size_t)ops_conv2d_out_h(&c) * ops_conv2d_out_w(&c) * 40;
        uint16_t *nw = rnd_bf16(16, 1.0f);
        ops_layernorm_cpu(out + off, 16, x, 16, 20 * 18, 16, ds_w(nw, DS_BF16), ds_w(nw, DS_BF16), 1e-6f);
        off += 20 * 18 * 16;
        ops_rmsnorm_cpu(out + off, 16, x, 16, 20 * 18, 16, ds_w(nw, DS_BF16), 1e-6f, 0);
        off += 20 * 18 * 16;
        ops_softmax_cpu(out + off, 16, x, 16, 20 * 18, 16);
        off += 20 * 18 * 16;
        int32_t pos[20 * 18];
        for (int t = 0; t < 20 * 18; t++) pos[t] = 3 * t;
        memcpy(out + off, x, 20 * 18 * 16 * 4);
        ops_rope_neox_cpu(out + off, 16, 20 * 18, 2, 8, pos, 10000.0f, 0);
        off += 20 * 18 * 16;
        free(x), free(s), free(w), free(nw);
    }
    return off;
}

static void test_thread_determinism(void) {
    size_t cap = 1 << 20;
    float *a = calloc(cap, 4), *b = calloc(cap, 4), *c = calloc(cap, 4);
    int saved = omp_get_max_threads();
    size_t na = run_all(a, 1), nb = run_all(b, 2), nc = run_all(c, 3);
    omp_set_num_threads(saved);
    REQUIRE(na > 0 && na <= cap && na == nb && na == nc);
    CHECK(memcmp(a, b, na * 4) == 0);
    CHECK(memcmp(a, c, na * 4) == 0);
    free(a), free(b), free(c);
}

/* ops_cpu.c's mmap: OpenBLAS's own buffers (anonymous, 4 MiB or more) come out hinted for transparent huge pages
 * (VmFlags "hg" in /proc/self/smaps) once a product has run through sgemm; a mapping of ours of the same kind is left
 * as asked; errors pass through. Skipped where the kernel has no transparent huge pages. */
static int smaps_hinted(const void *only) { /* hinted mappings of 4 MiB or more; with only, 1 if it is one */
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    unsigned long lo = 0, hi = 0;
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' ')) lo = a, hi = b;
        else if (!strncmp(line, "VmFlags:", 8) && strstr(line, " hg") && hi - lo >= (4ul << 20) &&
                 (!only || (unsigned long)only == lo))
            n++;
    }
    if (f) fclose(f);
    return n;
}
static void test_blas_hugepage_hint(void) {
    FILE *thp = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!thp) {
        printf("  (skipped: no transparent huge pages here)\n");
        return;
    }
    fclose(thp);
    const int M = 600, K = 256, N = 256;
    float *x = rnd((size_t)M * K, 1), *w = rnd((size_t)N * K, 1), *y = malloc(sizeof(float) * M * N);
    ops_linear_cpu(y, N, x, K, M, K, ds_w(w, DS_F32), N, ds_w_none(), 0);
    CHECK(smaps_hinted(NULL) >= 1);
    const size_t len = 8u << 20;
    void *own = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(own != MAP_FAILED);
    ((char *)own)[0] = 1;
    CHECK(smaps_hinted(own) == 0);
    munmap(own, len);
    errno = 0;
    CHECK(mmap(NULL, len, PROT_READ, MAP_PRIVATE, -1, 0) == MAP_FAILED && errno == EBADF);
    free(x), free(w), free(y);
}

/* The CPU backend's fused flags: linear with BE_ROUND | BE_GELU / BE_QGELU equals linear, round, act, round; layernorm
 * with BE_ROUND equals layernorm then round (both exactly: the same functions in the same order). */
static void test_backend_flags(void) {
    Backend *b = backend_cpu();
    enum { M = 5, K = 24, N = 19 };
    float *x = rnd((size_t)M * K, 1.0f), *wf = rnd((size_t)N * K, 0.5f), *bias = rnd(N, 0.2f);
    DsW w = ds_w(wf, DS_F32), bw = ds_w(bias, DS_F32);
    float *y0 = fill((size_t)M * K, 0), *y1 = fill((size_t)M * K, 0); /* K > N: room for the layernorm case */
    const int acts[2] = {BE_GELU, BE_QGELU};
    for (int a = 0; a < 2; a++)
        for (int r = 0; r < 2; r++) {
            const int rf = r ? BE_ROUND : 0;
            b->linear(b, y0, N, x, K, M, K, w, N, bw, rf | acts[a]);
            b->linear(b, y1, N, x, K, M, K, w, N, bw, rf);
            if (acts[a] == BE_GELU)
                b->gelu(b, y1, y1, (size_t)M * N);
            else
                b->quick_gelu(b, y1, y1, (size_t)M * N);
            if (r) b->round_bf16(b, y1, (size_t)M * N);
            CHECKF(memcmp(y0, y1, sizeof(float) * M * N) == 0, "linear with act %d round %d differs", a, r);
        }
    b->layernorm(b, y0, K, x, K, M, K, ds_w(wf, DS_F32), ds_w(bias, DS_F32), 1e-6f, OPS_BF16 | BE_ROUND);
    b->layernorm(b, y1, K, x, K, M, K, ds_w(wf, DS_F32), ds_w(bias, DS_F32), 1e-6f, OPS_BF16);
    b->round_bf16(b, y1, (size_t)M * K);
    CHECKF(memcmp(y0, y1, sizeof(float) * M * K) == 0, "layernorm with BE_ROUND differs from layernorm + round");
    free(x), free(wf), free(bias), free(y0), free(y1);
}

/* The CPU backend's MoE for one row (decode: routed and shared experts in one ops_expert_ffn1_many_cpu call) equals
 * the step by step sequence: router, route, each chosen expert alone in ascending order weighted into acc, (round),
 * the shared experts, add, (round); bit for bit. */
static void test_backend_moe1(void) {
    Backend *b = backend_cpu();
    enum { D = 64, E = 8, K = 3, F = 32, S = 64 };
    for (int fl = 0; fl < 2; fl++) {
        const int flags = fl ? OPS_BF16 : 0;
        BackendExpert ex[E];
        void *bufs[3 * E + 4];
        int nb = 0;
        for (int e = 0; e < E; e++) {
            ex[e].gate = ds_w(bufs[nb++] = rnd_bf16((size_t)F * D, 0.3f), DS_BF16);
            ex[e].up = ds_w(bufs[nb++] = rnd_bf16((size_t)F * D, 0.3f), DS_BF16);
            ex[e].down = ds_w(bufs[nb++] = rnd_bf16((size_t)D * F, 0.3f), DS_BF16);
        }
        BackendMoe m = {.router = ds_w(bufs[nb++] = rnd_bf16((size_t)E * D, 0.5f), DS_BF16), .experts = ex,
                        .n_experts = E, .top_k = K, .d_model = D, .d_ff = F, .d_shared = S};
        m.shared.gate = ds_w(bufs[nb++] = rnd_bf16((size_t)S * D, 0.3f), DS_BF16);
        m.shared.up = ds_w(bufs[nb++] = rnd_bf16((size_t)S * D, 0.3f), DS_BF16);
        m.shared.down = ds_w(bufs[nb++] = rnd_bf16((size_t)D * S, 0.3f), DS_BF16);
        float *x = rnd(D, 1.0f), *y = fill(D, 0), *want = fill(D, 0), *acc = fill(D, 0), *ye = fill(D, 0);
        float *scr = malloc(b->moe_scratch_floats(1, &m) * 4), *fs = malloc(ops_expert_ffn_scratch_floats(1, S) * 4);
        float logits[E], rl[E], wts[K];
        int32_t idx[K], got[K];
        b->moe(b, y, x, 1, &m, flags, rl, got, scr);
        ops_linear_cpu(logits, E, x, D, 1, D, m.router, E, ds_w_none(), 0);
        ops_moe_route(logits, E, 1, E, K, flags, idx, wts);
        for (int e = 0; e < E; e++)
            for (int j = 0; j < K; j++)
                if (idx[j] == e) {
                    ops_expert_ffn_cpu(ye, x, 1, D, F, ex[e].gate, ex[e].up, ex[e].down, flags, fs);
                    ops_scale_add_cpu(acc, wts[j], ye, D);
                }
        if (fl) ops_round_bf16_cpu(acc, D);
        ops_expert_ffn_cpu(want, x, 1, D, S, m.shared.gate, m.shared.up, m.shared.down, flags, fs);
        ops_add_cpu(want, want, acc, D);
        if (fl) ops_round_bf16_cpu(want, D);
        CHECKF(!memcmp(idx, got, sizeof idx), "moe1 bf16 %d: experts differ", fl);
        CHECKF(!memcmp(y, want, sizeof(float) * D), "moe1 bf16 %d: output differs from the step by step sequence", fl);
        for (int i = 0; i < nb; i++) free(bufs[i]);
        free(x), free(y), free(want), free(acc), free(ye), free(scr), free(fs);
    }
}

int main(void) {
    RUN(test_linear_ref_small_exact);
    RUN(test_backend_moe1);
    RUN(test_linear_vs_ref);
    RUN(test_gemv_grouping_exact);
    RUN(test_norms);
    RUN(test_elementwise);
    RUN(test_act_tables);
    RUN(test_softmax_argmax);
    RUN(test_attention_relpos);
    RUN(test_attention_relpos_bf16_bias);
    RUN(test_attention_causal);
    RUN(test_kv_cache);
    RUN(test_kv_cache_f32);
    RUN(test_rope);
    RUN(test_conv2d);
    RUN(test_resample);
    RUN(test_moe);
    RUN(test_ffn1_many_exact);
    RUN(test_thread_determinism);
    RUN(test_blas_hugepage_hint);
    RUN(test_backend_flags);
    return check_summary();
}
