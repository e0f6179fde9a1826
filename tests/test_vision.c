/* test_vision.c: vision.c's bf16 activation storage (backend.h act_bf16: the norm outputs and MLP hiddens that
 * only feed a linear, held as bf16 in bf16 mode) on the small random model (tests/ckpt_fixture.h), without a GPU:
 * a CPU backend wrapped to honour BE_IN_BF16 / BE_OUT_BF16 (it widens bf16 input rows, runs the CPU op on floats,
 * checks that every output is a bf16 value and narrows it) must give every view bit for bit what the plain CPU
 * backend gives. A bf16 buffer read as floats anywhere (or a row offset counted in the wrong unit) would not.
 * Attention with io_bf16 (q/k/v and output in bf16 storage) is honoured the same way.
 * Views of 512 px (one MLP pass) and 1,280 px (6,400 SAM rows: two MLP passes), in bf16 mode (storage used) and
 * fp32 mode (never used). */
#include <math.h>
#include <stdlib.h>

#include "backend.h"
#include "check.h"
#include "ckpt_fixture.h"
#include "model.h"
#include "vision.h"

static Backend g_io; /* the CPU backend with act_bf16 and the storage flags */
static long g_in16, g_out16, g_not_bf16;

/* rows × w values of bf16 storage (row stride ld) widened into floats at the same places */
static float *widen_rows(const void *p16, int rows, int ld, int w) {
    float *f = malloc(sizeof(float) * ((size_t)rows * ld + 1));
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < w; i++) f[(size_t)r * ld + i] = bf16_to_f32(((const uint16_t *)p16)[(size_t)r * ld + i]);
    return f;
}
/* rows × w floats (stride lds) narrowed into bf16 storage (stride ldd); count: the values that were not bf16
 * values already are counted in g_not_bf16 (outputs the flags promise to be rounded) */
static void narrow_rows(void *d16, int ldd, const float *s, int lds, int rows, int w, int count) {
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < w; i++) {
            const float v = s[(size_t)r * lds + i];
            if (count) g_not_bf16 += bf16_round(v) != v && v == v;
            ((uint16_t *)d16)[(size_t)r * ldd + i] = f32_to_bf16(v);
        }
}

static void io_linear(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias,
                      int flags) {
    Backend *cpu = backend_cpu();
    float *xs = NULL, *ys = NULL;
    if (flags & BE_IN_BF16) { /* x: bf16 storage, ldx in elements */
        g_in16++;
        xs = widen_rows(x, M, ldx, K);
    }
    if (flags & BE_OUT_BF16) {
        g_out16++;
        CHECK((flags & BE_ROUND) && !(flags & OPS_ACCUM));
        ys = malloc(sizeof(float) * ((size_t)M * N + 1));
    }
    cpu->linear(cpu, ys ? ys : y, ys ? N : ldy, xs ? xs : x, ldx, M, K, w, N, bias, flags & ~(BE_IN_BF16 | BE_OUT_BF16));
    if (ys) narrow_rows(y, ldy, ys, N, M, N, 1); /* y: bf16 storage, ldy in elements */
    free(xs);
    free(ys);
}

static void io_layernorm(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW bias,
                         float eps, int flags) {
    Backend *cpu = backend_cpu();
    if (!(flags & BE_OUT_BF16)) {
        cpu->layernorm(cpu, y, ldy, x, ldx, M, n, w, bias, eps, flags);
        return;
    }
    g_out16++;
    CHECK(flags & BE_ROUND);
    float *ys = malloc(sizeof(float) * ((size_t)M * n + 1));
    cpu->layernorm(cpu, ys, n, x, ldx, M, n, w, bias, eps, flags & ~BE_OUT_BF16);
    narrow_rows(y, ldy, ys, n, M, n, 1);
    free(ys);
}

/* attention with io_bf16: q, k, v widened into float copies (same strides), the CPU op, the output narrowed (the
 * plain path rounds it to bf16 after the op: the same values) */
static long g_att16;
static int io_attention_bf16(Backend *b, const OpsAttention *a) { return a->io_bf16 != 0; }
static void io_attention(Backend *b, const OpsAttention *a) {
    Backend *cpu = backend_cpu();
    if (!a->io_bf16) {
        cpu->attention(cpu, a);
        return;
    }
    g_att16++;
    const int W = a->n_heads * a->head_dim, qr = a->n_batch * a->tq, kr = a->n_batch * a->tk;
    OpsAttention t = *a;
    float *q = widen_rows(a->q, qr, a->ldq, W), *k = widen_rows(a->k, kr, a->ldk, W), *v = widen_rows(a->v, kr, a->ldv, W);
    float *o = malloc(sizeof(float) * ((size_t)qr * a->ldo + 1));
    t.io_bf16 = 0, t.q = q, t.k = k, t.v = v, t.out = o;
    cpu->attention(cpu, &t);
    narrow_rows(a->out, a->ldo, o, a->ldo, qr, W, 0);
    free(q), free(k), free(v), free(o);
}

/* residual_add / window_unpartition_residual: r widened, the CPU add, then the rounding */
static void io_residual_add(Backend *b, float *x, const void *r, size_t n, int flags) {
    Backend *cpu = backend_cpu();
    float *w = flags & BE_IN_BF16 ? widen_rows(r, 1, (int)n, (int)n) : NULL;
    g_in16 += w != NULL;
    cpu->add(cpu, x, x, w ? w : (const float *)r, n);
    if (flags & BE_ROUND) cpu->round_bf16(cpu, x, n);
    free(w);
}
static void io_unpartition_residual(Backend *b, float *x, const void *win, int g, int C, int ws, int flags) {
    Backend *cpu = backend_cpu();
    const int nw = (g + ws - 1) / ws;
    float *w = flags & BE_IN_BF16 ? widen_rows(win, nw * nw * ws * ws, C, C) : NULL;
    g_in16 += w != NULL;
    cpu->window_unpartition_add(cpu, x, w ? w : (const float *)win, g, C, ws);
    if (flags & BE_ROUND) cpu->round_bf16(cpu, x, (size_t)g * g * C);
    free(w);
}

/* residual_layernorm: the residual step as above, the CPU layernorm (BE_ROUND), the windows, then narrowed */
static long g_fused;
static void io_residual_layernorm(Backend *b, void *y, float *x, const void *r, int M, int n, int g, int ws, DsW w,
                                  DsW bias, float eps, int flags) {
    Backend *cpu = backend_cpu();
    g_fused++;
    if (r) io_residual_add(b, x, r, (size_t)M * n, BE_IN_BF16 | (flags & BE_ROUND));
    const int nw = ws ? (g + ws - 1) / ws : 0, Mo = ws ? nw * nw * ws * ws : M;
    float *ys = malloc(sizeof(float) * ((size_t)M * n + 1)), *yw = ws ? malloc(sizeof(float) * ((size_t)Mo * n + 1)) : NULL;
    cpu->layernorm(cpu, ys, n, x, n, M, n, w, bias, eps, BE_ROUND);
    if (ws) cpu->window_partition(cpu, yw, ys, g, n, ws);
    g_out16++;
    narrow_rows(y, n, ws ? yw : ys, n, Mo, n, 1);
    free(ys), free(yw);
}

static char *g_dir;
static Model *g_m;

static int setup(void) {
    if (fixture_tiny_model(&g_dir, &g_m)) return -1;
    g_io = *backend_cpu(); /* same memory and other ops; the CPU backend's weights are host memory too */
    g_io.name = "cpu-bf16-io";
    g_io.act_bf16 = 1;
    g_io.linear = io_linear;
    g_io.layernorm = io_layernorm;
    g_io.attention = io_attention;
    g_io.attention_bf16 = io_attention_bf16;
    g_io.residual_add = io_residual_add;
    g_io.window_unpartition_residual = io_unpartition_residual;
    g_io.residual_layernorm = io_residual_layernorm;
    return 0;
}

static void test_bf16_storage_same(void) {
    REQUIRE(backend_cpu()->act_bf16 == 0);
    const int sides[2] = {512, 1280};
    for (int si = 0; si < 2; si++)
        for (int bf = 0; bf < 2; bf++) {
            const int side = sides[si], n = side / 64, D = g_m->cfg.hidden_size;
            const size_t np = (size_t)3 * side * side, no = (size_t)n * n * D;
            float *chw = malloc(sizeof(float) * np), *a = malloc(sizeof(float) * no), *b = malloc(sizeof(float) * no);
            uint64_t s = 0x9e3779b97f4a7c15ull ^ (uint64_t)side;
            for (size_t i = 0; i < np; i++) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                chw[i] = (float)((s >> 40) * (2.0 / (1ull << 24)) - 1.0);
            }
            VisionOptions o = {.bf16 = bf};
            DsError e = {0};
            VisionWork *wa = NULL, *wb = NULL;
            g_m->be = backend_cpu();
            REQUIRE(vision_work_new(g_m, side, NULL, &wa, &e) == DSOCR_OK);
            g_m->be = &g_io;
            REQUIRE(vision_work_new(g_m, side, NULL, &wb, &e) == DSOCR_OK);
            g_m->be = backend_cpu();
            g_in16 = g_out16 = g_not_bf16 = g_att16 = g_fused = 0;
            CHECK(vision_encode(g_m, wa, chw, side, &o, a, &e) == DSOCR_OK);
            CHECK(g_in16 == 0 && g_out16 == 0);
            CHECK(vision_encode(g_m, wb, chw, side, &o, b, &e) == DSOCR_OK);
            CHECKF(!memcmp(a, b, sizeof(float) * no), "side %d bf16 %d: bf16 storage changed the output", side, bf);
            CHECKF(g_not_bf16 == 0, "side %d: %ld values in bf16 storage were not bf16 values", side, g_not_bf16);
            if (bf)
                CHECKF(g_in16 > 0 && g_out16 > 0 && g_att16 > 0 && g_fused > 0,
                       "side %d: bf16 mode used no bf16 storage or no fused norm", side);
            else
                CHECKF(g_in16 == 0 && g_out16 == 0 && g_att16 == 0 && g_fused == 0, "side %d: fp32 mode used bf16 storage",
                       side);
            printf("  side %d bf16 %d: same output (%ld bf16-input, %ld bf16-output linear/norm calls, %ld bf16 "
                   "attention calls, %ld fused norms)\n", side, bf, g_in16, g_out16, g_att16, g_fused);
            vision_work_free(wa);
            vision_work_free(wb);
            free(chw), free(a), free(b);
        }
}

/* The lean working memory (Model.lean, a model placed under a GPU budget: the MLP in passes of 1,024 rows, one
 * position-table slot), with its view buffers in a shared scratch region that is garbage
 * before each view, gives every view bit for bit what the usual one gives: 1,024-px views (4,096 SAM rows: four
 * MLP passes instead of one) alternating with 640-px tiles (the one slot rebuilt each time), in fp32 on the CPU
 * backend and in bf16 with bf16 storage (the deferred residual only in one pass). In fp32 "bit for bit" holds where
 * sgemm's sums do not depend on M (below), else to 1e-5 of the outputs' scale. */
static void test_lean_same(void) {
    const int sides[3] = {1024, 640, 1024};
    for (int bf = 0; bf < 2; bf++) {
        Backend *be = bf ? &g_io : backend_cpu();
        VisionWork *w[2] = {NULL, NULL};
        DsError e = {0};
        /* the lean work's view buffers in one scratch region, overwritten with NaN bytes before every view (as
         * the session's KV pool overwrites it): nothing a view reads may outlive the view before it */
        const size_t scratch_n = vision_scratch_bytes(g_m, 1024, 1);
        void *scratch = be->alloc(be, scratch_n);
        REQUIRE(scratch != NULL);
        for (int lean = 0; lean < 2; lean++) {
            g_m->lean = lean;
            g_m->be = be;
            REQUIRE(vision_work_new(g_m, 1024, lean ? scratch : NULL, &w[lean], &e) == DSOCR_OK);
        }
        g_m->lean = 0;
        CHECK(vision_work_bytes(g_m, 1024, 1) < vision_work_bytes(g_m, 1024, 0));
        for (int k = 0; k < 3; k++) {
            const int side = sides[k], n = side / 64, D = g_m->cfg.hidden_size;
            const size_t np = (size_t)3 * side * side, no = (size_t)n * n * D;
            float *chw = malloc(sizeof(float) * np), *out[2] = {malloc(sizeof(float) * no), malloc(sizeof(float) * no)};
            uint64_t s = 0x2545f4914f6cdd1dull ^ (uint64_t)(side + k);
            for (size_t i = 0; i < np; i++) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                chw[i] = (float)((s >> 40) * (2.0 / (1ull << 24)) - 1.0);
            }
            VisionOptions o = {.bf16 = bf};
            memset(scratch, 0xff, scratch_n); /* CPU backends: backend memory is host memory */
            for (int lean = 0; lean < 2; lean++) {
                g_m->lean = lean;
                CHECK(vision_encode(g_m, w[lean], chw, side, &o, out[lean], &e) == DSOCR_OK);
            }
            g_m->lean = 0;
            if (bf) {
                CHECKF(!memcmp(out[0], out[1], sizeof(float) * no), "view %d (%d px, bf16 %d): lean differs", k,
                       side, bf);
            } else {
                /* fp32: sgemm's bits may depend on the product's M (OpenBLAS 0.3.21's Haswell / Zen kernels, which
                 * a CPU without AVX-512 gets, sum a tile's last 8 rows or outputs in another order: the lean
                 * passes' 1,024 rows tile differently from one pass of 4,096). A read of anything stale (NaN bytes
                 * above) still shows: every output finite and within 1e-5 of the scale of the usual one's. */
                double amax = 0, dmax = 0;
                int finite = 1;
                for (size_t i = 0; i < no; i++) {
                    finite &= isfinite(out[1][i]);
                    amax = fmax(amax, fabs(out[0][i]));
                    dmax = fmax(dmax, fabs((double)out[0][i] - out[1][i]));
                }
                CHECKF(finite && dmax <= 1e-5 * amax, "view %d (%d px, fp32): lean differs by %g (scale %g)", k,
                       side, dmax, amax);
            }
            free(chw), free(out[0]), free(out[1]);
        }
        vision_work_free(w[0]);
        vision_work_free(w[1]);
        be->free(be, scratch);
        g_m->be = backend_cpu();
    }
}

int main(void) {
    SETUP_OR_FAIL(setup() == 0);
    RUN(test_bf16_storage_same);
    RUN(test_lean_same);
    g_m->be = backend_cpu();
    model_free(g_m);
    fixture_rmdir(g_dir);
    return check_summary();
}
