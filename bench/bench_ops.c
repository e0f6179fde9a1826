/* bench_ops: speed of the fast CPU ops at the model's shapes, printed as JSON (not a test).
 *   build/bench/bench_ops [--quick]
 *   build/bench/bench_ops --read-trace N   N samples of the read ceiling of `dsocr bench --ceilings` (512 MiB, best of
 *                                          3 passes, all threads) one after another: how much it moves over time
 * Linear: GFLOP/s (2·M·N·K per call) and, for decode (M = 1), the weight-read rate in GB/s. Attention: GFLOP/s
 * counting q·kᵀ and p·v (4·T²·D per head). Each figure is the best of several timed calls after a warm-up.
 * The machine (CPU model from /proc/cpuinfo) and the OpenMP thread count are part of the output. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "hwinfo.h"
#include "util.h"
#include "ops.h"

static uint32_t seed = 1;
static float frand(void) {
    seed = seed * 1664525u + 1013904223u;
    return (float)(seed >> 8) * (1.0f / 8388608.0f) - 1.0f;
}
static float *rnd(size_t n, float s) {
    float *p = malloc(n * sizeof *p);
    if (!p) exit(1);
    for (size_t i = 0; i < n; i++) p[i] = s * frand();
    return p;
}
static uint16_t *rnd_bf16(size_t n, float s) {
    uint16_t *p = malloc(n * sizeof *p);
    if (!p) exit(1);
    for (size_t i = 0; i < n; i++) p[i] = f32_to_bf16(s * frand());
    return p;
}

static int quick;
static int first = 1;
static void item_begin(void) {
    printf("%s\n    ", first ? "" : ",");
    first = 0;
}

/* Best seconds per call over calls totalling at least min_s (at least 2 calls after one warm-up). */
#define TIME_BEST(best, stmt)                                                                                  \
    do {                                                                                                       \
        stmt;                                                                                                  \
        double total_ = 0, min_s_ = quick ? 0.1 : 0.5;                                                         \
        best = 1e30;                                                                                           \
        for (int rep_ = 0; rep_ < 2 || total_ < min_s_; rep_++) {                                              \
            double t0_ = ds_now();                                                                             \
            stmt;                                                                                              \
            double dt_ = ds_now() - t0_;                                                                       \
            total_ += dt_;                                                                                     \
            if (dt_ < best) best = dt_;                                                                        \
            if (rep_ > 200) break;                                                                             \
        }                                                                                                      \
    } while (0)

static void bench_linear(const char *what, int M, int K, int N, DsDtype dt) {
    float *x = rnd((size_t)M * K, 1.0f), *y = malloc((size_t)M * N * sizeof(float));
    void *w = dt == DS_BF16 ? (void *)rnd_bf16((size_t)N * K, 0.05f) : (void *)rnd((size_t)N * K, 0.05f);
    double best;
    TIME_BEST(best, ops_linear_cpu(y, N, x, K, M, K, ds_w(w, dt), N, ds_w_none(), 0));
    double gflops = 2.0 * M * N * K / best * 1e-9, wbytes = (double)N * K * (dt == DS_BF16 ? 2 : 4);
    item_begin();
    printf("{\"op\": \"linear\", \"what\": \"%s\", \"M\": %d, \"K\": %d, \"N\": %d, \"weights\": \"%s\", "
           "\"ms\": %.3f, \"gflops\": %.1f, \"weight_gbps\": %.1f}",
           what, M, K, N, dt == DS_BF16 ? "bf16" : "f32", best * 1e3, gflops, wbytes / best * 1e-9);
    fflush(stdout);
    free(x), free(y), free(w);
}

static void bench_attention(const char *what, int n_batch, int gh, int gw, int H, int D, int relpos) {
    int T = gh * gw, W = H * D, ld = 3 * W;
    float *qkv = rnd((size_t)n_batch * T * ld, 1.0f), *out = malloc((size_t)n_batch * T * W * sizeof(float));
    float *rh = rnd((size_t)(2 * gh - 1) * D, 0.1f), *rw = rnd((size_t)(2 * gw - 1) * D, 0.1f);
    OpsAttention a = {.out = out, .q = qkv, .k = qkv + W, .v = qkv + 2 * W, .ldo = W, .ldq = ld, .ldk = ld,
                      .ldv = ld, .n_batch = n_batch, .tq = T, .tk = T, .n_heads = H, .head_dim = D,
                      .scale = 0.125f, .relpos_h = relpos ? rh : NULL, .relpos_w = relpos ? rw : NULL,
                      .grid_h = gh, .grid_w = gw};
    double best;
    TIME_BEST(best, ops_attention_cpu(&a));
    double flops = 4.0 * T * (double)T * D * H * n_batch;
    item_begin();
    printf("{\"op\": \"attention\", \"what\": \"%s\", \"batch\": %d, \"tokens\": %d, \"heads\": %d, \"head_dim\": %d, "
           "\"relpos\": %s, \"ms\": %.3f, \"gflops\": %.1f}",
           what, n_batch, T, H, D, relpos ? "true" : "false", best * 1e3, flops / best * 1e-9);
    fflush(stdout);
    free(qkv), free(out), free(rh), free(rw);
}

static void bench_attention_kv(int ctx, int H, int D) {
    int W = H * D, bs = 32, nb = (ctx + bs - 1) / bs;
    KvCache kv;
    if (kvcache_new(&kv, 1, W, bs, nb, NULL) != DSOCR_OK) return;
    int32_t *tab = malloc(sizeof(int32_t) * nb);
    for (int i = 0; i < nb; i++) tab[i] = nb - 1 - i;
    float *k = rnd((size_t)ctx * W, 1.0f), *q = rnd(W, 1.0f), *o = malloc(W * sizeof(float));
    kv_write(&kv, 0, tab, 0, ctx, k, W, k, W);
    int32_t pos = ctx - 1;
    const int32_t *tables[1] = {tab};
    OpsAttentionKv a = {.out = o, .q = q, .ldo = W, .ldq = W, .n = 1, .pos = &pos, .tables = tables, .kv = &kv,
                        .layer = 0, .n_heads = H, .head_dim = D, .scale = 0.088f};
    double best;
    TIME_BEST(best, ops_attention_kv_cpu(&a));
    item_begin();
    printf("{\"op\": \"attention_kv\", \"what\": \"decode step\", \"context\": %d, \"heads\": %d, \"head_dim\": %d, "
           "\"ms\": %.4f, \"kv_gbps\": %.1f}",
           ctx, H, D, best * 1e3, 2.0 * ctx * W * 2 / best * 1e-9);
    fflush(stdout);
    kvcache_free(&kv);
    free(tab), free(k), free(q), free(o);
}

static void bench_conv(const char *what, OpsConv2d c) {
    size_t kc = (size_t)c.in_c * c.kh * c.kw, sn = ops_conv2d_scratch_floats(&c);
    int Ho = ops_conv2d_out_h(&c), Wo = ops_conv2d_out_w(&c);
    float *x = rnd((size_t)c.in_h * c.in_w * c.in_c, 1.0f), *y = malloc((size_t)Ho * Wo * c.out_c * sizeof(float));
    float *s = malloc((sn ? sn : 1) * sizeof(float));
    uint16_t *w = rnd_bf16(c.out_c * kc, 0.05f);
    double best;
    TIME_BEST(best, ops_conv2d_cpu(y, x, &c, ds_w(w, DS_BF16), ds_w_none(), s, sn));
    item_begin();
    printf("{\"op\": \"conv2d\", \"what\": \"%s\", \"in\": [%d, %d, %d], \"out_c\": %d, \"k\": %d, \"stride\": %d, "
           "\"ms\": %.3f, \"gflops\": %.1f}",
           what, c.in_h, c.in_w, c.in_c, c.out_c, c.kh, c.stride, best * 1e3,
           2.0 * Ho * Wo * c.out_c * kc / best * 1e-9);
    fflush(stdout);
    free(x), free(y), free(s), free(w);
}

/* The host work of preparing a view side's position tables (vision.c prepare_tables): SAM's absolute position
 * table resampled from G × G to g × g and CLIP's from np × np to n × n (bicubic with antialias, then bf16). */
static void bench_view_tables(const char *what, int W, int G, int g, int CW, int np, int n) {
    float *ps = rnd((size_t)G * G * W, 0.05f), *pd = malloc((size_t)g * g * W * sizeof(float));
    float *cs = rnd((size_t)np * np * CW, 0.05f), *cd = malloc((size_t)n * n * CW * sizeof(float));
    double best;
    TIME_BEST(best, {
        ops_resample_bicubic_aa(pd, ps, W, G, G, g, g, 1);
        ops_round_bf16_cpu(pd, (size_t)g * g * W);
        ops_resample_bicubic_aa(cd, cs, CW, np, np, n, n, 1);
        ops_round_bf16_cpu(cd, (size_t)n * n * CW);
    });
    item_begin();
    printf("{\"op\": \"%s\", \"ms\": %.3f}", what, best * 1e3);
    free(ps), free(pd), free(cs), free(cd);
}

int main(int argc, char **argv) {
    ops_blas_reexec_if_better(argv);
    quick = argc > 1 && !strcmp(argv[1], "--quick");
    char cpu[256];
    hwinfo_cpu_name(cpu, sizeof cpu);
    if (argc > 2 && !strcmp(argv[1], "--read-trace")) {
        const int n = atoi(argv[2]);
        if (n < 1 || n > 100000) {
            fprintf(stderr, "bench_ops: --read-trace N, 1 <= N <= 100000\n");
            return 2;
        }
        printf("{\"bench\": \"read trace\", \"machine\": \"%s\", \"threads\": %d, \"bytes\": %d, \"gbps\": [", cpu,
               omp_get_max_threads(), 512 << 20);
        const double t0 = ds_now();
        for (int i = 0; i < n; i++) {
            printf("%s%.1f", i ? ", " : "", ops_cpu_read_gbps((size_t)512 << 20, omp_get_max_threads(), 3));
            fflush(stdout);
        }
        printf("], \"seconds\": %.1f}\n", ds_now() - t0);
        return 0;
    }
    printf("{\"bench\": \"ops\", \"machine\": \"%s\", \"threads\": %d, \"openblas_core\": \"%s\", \"results\": [", cpu,
           omp_get_max_threads(), ops_blas_coretype());
    /* decode: one token through the decoder's projections and the head */
    bench_linear("decode expert gate/up", 1, 1280, 896, DS_BF16);
    bench_linear("decode shared gate/up", 1, 1280, 1792, DS_BF16);
    bench_linear("decode dense MLP gate/up", 1, 1280, 6848, DS_BF16);
    bench_linear("decode dense MLP down", 1, 6848, 1280, DS_BF16);
    bench_linear("decode lm_head", 1, 1280, 129280, DS_BF16);
    bench_linear("4-row expert gate/up", 4, 1280, 896, DS_BF16);
    /* prefill and vision */
    bench_linear("SAM qkv (1024 px, global)", 4096, 768, 2304, DS_BF16);
    bench_linear("SAM mlp lin1", 4096, 768, 3072, DS_BF16);
    bench_linear("SAM mlp lin2", 4096, 3072, 768, DS_BF16);
    bench_linear("CLIP fc1 (257 rows)", 257, 1024, 4096, DS_BF16);
    bench_linear("decoder prefill dense gate/up", 1024, 1280, 6848, DS_BF16);
    bench_linear("SAM qkv with f32 weights (sgemm ceiling)", 4096, 768, 2304, DS_F32);
    bench_conv("SAM patch embed 1024 px", (OpsConv2d){1024, 1024, 3, 768, 16, 16, 16, 0});
    bench_conv("SAM neck 3x3", (OpsConv2d){64, 64, 256, 256, 3, 3, 1, 1});
    bench_conv("net_3 3x3 stride 2", (OpsConv2d){32, 32, 512, 1024, 3, 3, 2, 1});
    bench_attention("SAM window blocks (1024 px: 25 windows)", 25, 14, 14, 12, 64, 1);
    if (!quick) bench_attention("SAM global block (1024 px)", 1, 64, 64, 12, 64, 1);
    bench_attention("CLIP (257 tokens)", 1, 1, 257, 16, 64, 0);
    bench_attention_kv(1024, 10, 128);
    bench_attention_kv(4096, 10, 128);
    bench_view_tables("position tables of the 640-px tile side (SAM 64->40, CLIP 16->10)", 768, 64, 40, 1024, 16, 10);
    printf("\n]}\n");
    return 0;
}
