/* bench_cuda.c: figures for the CUDA backend as JSON on stdout: the card, its measured ceilings (cuBLAS bf16 GEMM
 * rate, device-to-device copy bandwidth), then each op at the model's shapes (full DeepSeek-OCR config) with its
 * time (CUDA events, mean over repetitions after a warm-up), achieved rate and the fraction of the ceiling.
 * Random data (never zeros). A benchmark, not a test: it asserts nothing. Built by `make bench`; needs a GPU.
 * Usage: build/bench/bench_cuda [--quick] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "quant.h"
#ifdef DSOCR_CUDA
#include "cuda/backend_cuda.h"
#endif

#ifndef DSOCR_CUDA
int main(void) {
    printf("{\"error\": \"built without CUDA\"}\n");
    return 0;
}
#else

static Backend *B;
static uint16_t *g_rand; /* host random bf16 pool */
static size_t g_rand_n;
static float *g_randf;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / (1ull << 23)) - 1.0);
}
static void *dalloc(size_t bytes) {
    void *p = B->alloc(B, bytes);
    if (!p) {
        fprintf(stderr, "bench_cuda: device allocation of %zu bytes failed\n", bytes);
        exit(1);
    }
    return p;
}
/* Device buffer of n random bf16 / fp32 values (uploaded in slices of the host pool). */
static void *drand_bf16(size_t n, float scale) {
    (void)scale;
    uint16_t *d = dalloc(n * 2);
    for (size_t o = 0; o < n; o += g_rand_n) B->upload(B, d + o, g_rand, (n - o < g_rand_n ? n - o : g_rand_n) * 2);
    return d;
}
/* Device buffer of n random weights (n % 32 == 0) of a block type: the fp32 pool quantised once per type on the
 * host, uploaded in slices as drand_bf16 does. */
static void *g_randq[2];
static void *drand_q(size_t n, DsDtype dt) {
    const int k = dt == DS_Q4_0;
    const size_t pool_bytes = quant_row_bytes(dt, (int64_t)g_rand_n);
    if (!g_randq[k]) {
        g_randq[k] = malloc(pool_bytes);
        float *f = malloc(g_rand_n * 4);
        for (size_t i = 0; i < g_rand_n; i++) f[i] = 0.05f * g_randf[i];
        quant_row_ref(dt, g_randq[k], f, (int64_t)g_rand_n);
        free(f);
    }
    char *d = dalloc(quant_row_bytes(dt, (int64_t)n));
    for (size_t o = 0; o < n; o += g_rand_n) {
        const size_t c = n - o < g_rand_n ? n - o : g_rand_n;
        B->upload(B, d + quant_row_bytes(dt, (int64_t)o), g_randq[k], quant_row_bytes(dt, (int64_t)c));
    }
    return d;
}
/* n random weights of type dt (bf16 or a block type) */
static void *drand_w(size_t n, DsDtype dt) { return dt == DS_BF16 ? drand_bf16(n, 1) : drand_q(n, dt); }
static const char *dt_label(DsDtype dt) { return dt == DS_BF16 ? "bf16" : dt == DS_Q8_0 ? "q8_0" : "q4_0"; }
static float *drand_f32(size_t n) {
    float *d = dalloc(n * 4);
    for (size_t o = 0; o < n; o += g_rand_n) B->upload(B, d + o, g_randf, (n - o < g_rand_n ? n - o : g_rand_n) * 4);
    return d;
}

typedef struct Op {
    int kind;
    float *y, *x, *scratch;
    void *w, *w2, *w3;
    int M, K, N;
    DsDtype wdt; /* linear and swiglu weights */
    OpsAttention att;
    OpsAttentionKv akv;
    BackendMoe moe;
    int moe_flags;
    int lin_flags;
} Op;

enum { OP_LINEAR, OP_ATT, OP_ATT_KV, OP_MOE, OP_RMSNORM, OP_LAYERNORM, OP_SWIGLU };

static void run_op(void *arg) {
    Op *o = arg;
    switch (o->kind) {
    case OP_LINEAR:
        B->linear(B, o->y, o->N, o->x, o->K, o->M, o->K, ds_w(o->w, o->wdt), o->N, ds_w_none(), o->lin_flags);
        break;
    case OP_ATT: B->attention(B, &o->att); break;
    case OP_ATT_KV: B->attention_kv(B, &o->akv); break;
    case OP_MOE: B->moe(B, o->y, o->x, o->M, &o->moe, OPS_BF16 | o->moe_flags, NULL, NULL, o->scratch); break;
    case OP_RMSNORM: B->rmsnorm(B, o->y, o->N, o->x, o->N, o->M, o->N, ds_w(o->w, DS_BF16), 1e-6f, OPS_BF16); break;
    case OP_LAYERNORM:
        B->layernorm(B, o->y, o->N, o->x, o->N, o->M, o->N, ds_w(o->w, DS_BF16), ds_w(o->w, DS_BF16), 1e-6f, 0);
        break;
    case OP_SWIGLU:
        B->swiglu(B, o->y, o->x, o->M, o->K, o->N, ds_w(o->w, o->wdt), ds_w(o->w2, o->wdt), ds_w(o->w3, o->wdt),
                  OPS_BF16, o->scratch);
        break;
    }
}

static int g_first = 1;
static void emit(const char *name, double sec, double flops, double bytes, double peak_tflops, double peak_gbps) {
    printf("%s    {\"op\": \"%s\", \"us\": %.2f", g_first ? "" : ",\n", name, sec * 1e6);
    if (flops > 0) printf(", \"tflops\": %.2f, \"of_gemm_ceiling\": %.3f", flops / sec * 1e-12, flops / sec * 1e-12 / peak_tflops);
    if (bytes > 0) printf(", \"gbps\": %.1f, \"of_copy_ceiling\": %.3f", bytes / sec * 1e-9, bytes / sec * 1e-9 / peak_gbps);
    printf("}");
    g_first = 0;
    fflush(stdout);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    DsError e = {0};
    B = backend_cuda_new(0, &e);
    if (!B) {
        printf("{\"error\": \"%s\"}\n", e.msg);
        return 1;
    }
    g_rand_n = (size_t)16 << 20;
    g_rand = malloc(g_rand_n * 2);
    g_randf = malloc(g_rand_n * 4);
    for (size_t i = 0; i < g_rand_n; i++) {
        g_randf[i] = frand();
        g_rand[i] = f32_to_bf16(0.05f * g_randf[i]);
    }
    double tf = 0, bw = 0;
    backend_cuda_gemm_ceiling(B, 8192, quick ? 5 : 20, &tf);
    backend_cuda_copy_ceiling(B, (size_t)1 << 30, quick ? 5 : 20, &bw);
    printf("{\n  \"bench\": \"bench_cuda\",\n  \"device\": \"%s\",\n  \"sm_count\": %d,\n  \"compute_capability\": %d,\n",
           backend_cuda_device_name(B), backend_cuda_sm_count(B), backend_cuda_compute_capability(B));
    printf("  \"ceilings\": {\"gemm_bf16_tflops_8192\": %.1f, \"copy_gbps_1GiB\": %.1f},\n", tf, bw);
    printf("  \"ops\": [\n");
    int reps = quick ? 5 : 20;
    Op o;

    /* ---- linear */
    /* fl BE_ROUND: bf16 outputs, as the decoder's products in bf16 mode (a decode batch's Q8_0 rows then take
     * cu_linear_q8_rows; DSOCR_NO_Q8_ROWS=1: the dequantised chunks) */
    static const struct { const char *name; int M, K, N; DsDtype dt; int fl; } lin[] = {
        {"linear decode q/k/v/o M1 1280x1280", 1, 1280, 1280, DS_BF16, 0},
        {"linear lm_head M1 1280x129280", 1, 1280, 129280, DS_BF16, 0},
        {"linear router M1 1280x64", 1, 1280, 64, DS_BF16, 0},
        {"linear M4 1280x1280", 4, 1280, 1280, DS_BF16, 0},
        {"linear decode q/k/v/o M1 1280x1280 q8_0", 1, 1280, 1280, DS_Q8_0, 0},
        {"linear decode q/k/v/o M1 1280x1280 q4_0", 1, 1280, 1280, DS_Q4_0, 0},
        {"linear decode qkv M1 1280x3840 q8_0", 1, 1280, 3840, DS_Q8_0, 0},
        {"linear lm_head M1 1280x129280 q8_0", 1, 1280, 129280, DS_Q8_0, 0},
        {"linear lm_head M1 1280x129280 q4_0", 1, 1280, 129280, DS_Q4_0, 0},
        {"linear M4 1280x1280 q8_0", 4, 1280, 1280, DS_Q8_0, 0},
        {"linear SAM qkv M4096 768x2304", 4096, 768, 2304, DS_BF16, 0},
        {"linear SAM mlp1 M4096 768x3072", 4096, 768, 3072, DS_BF16, 0},
        {"linear CLIP fc1 M257 1024x4096", 257, 1024, 4096, DS_BF16, 0},
        {"linear prefill q M1000 1280x1280", 1000, 1280, 1280, DS_BF16, 0},
        {"linear lm_head M128 1280x129280 bf16 out", 128, 1280, 129280, DS_BF16, BE_ROUND},
        {"linear lm_head M128 1280x129280 q8_0 bf16 out", 128, 1280, 129280, DS_Q8_0, BE_ROUND},
        {"linear qkv M128 1280x3840 bf16 out", 128, 1280, 3840, DS_BF16, BE_ROUND},
        {"linear qkv M128 1280x3840 q8_0 bf16 out", 128, 1280, 3840, DS_Q8_0, BE_ROUND},
        {"linear o M128 1280x1280 bf16 out", 128, 1280, 1280, DS_BF16, BE_ROUND},
        {"linear o M128 1280x1280 q8_0 bf16 out", 128, 1280, 1280, DS_Q8_0, BE_ROUND},
        {"linear dense down M128 6848x1280 bf16 out", 128, 6848, 1280, DS_BF16, BE_ROUND},
        {"linear dense down M128 6848x1280 q8_0 bf16 out", 128, 6848, 1280, DS_Q8_0, BE_ROUND},
        {"linear lm_head M64 1280x129280 q8_0 bf16 out", 64, 1280, 129280, DS_Q8_0, BE_ROUND},
        {"linear lm_head M256 1280x129280 q8_0 bf16 out", 256, 1280, 129280, DS_Q8_0, BE_ROUND},
    };
    for (size_t i = 0; i < sizeof lin / sizeof lin[0]; i++) {
        memset(&o, 0, sizeof o);
        o.kind = OP_LINEAR;
        o.M = lin[i].M, o.K = lin[i].K, o.N = lin[i].N;
        o.wdt = lin[i].dt;
        o.lin_flags = lin[i].fl;
        o.x = drand_f32((size_t)o.M * o.K);
        o.y = dalloc((size_t)o.M * o.N * 4);
        o.w = drand_w((size_t)o.N * o.K, o.wdt);
        double t = backend_cuda_time(B, run_op, &o, reps);
        double fl = 2.0 * o.M * o.K * o.N,
               by = (double)quant_row_bytes(o.wdt, o.K) * o.N + 4.0 * o.M * (o.K + o.N);
        emit(lin[i].name, t, o.M > 8 ? fl : 0, o.M <= 8 ? by : 0, tf, bw);
        B->free(B, o.x), B->free(B, o.y), B->free(B, o.w);
    }

    /* ---- attention */
    static const struct { const char *name; int nb, T, H, D, g, causal; } att[] = {
        {"attention SAM global 1024px (64x64 grid, 12x64, rel-pos)", 1, 4096, 12, 64, 64, 0},
        {"attention SAM windows 1024px (25x196, 12x64, rel-pos)", 25, 196, 12, 64, 14, 0},
        {"attention SAM global 640px (40x40 grid, rel-pos)", 1, 1600, 12, 64, 40, 0},
        {"attention CLIP 257 tokens 16x64", 1, 257, 16, 64, 0, 0},
        {"attention decoder prefill causal 1000 tokens 10x128", 1, 1000, 10, 128, 0, 1},
    };
    for (size_t i = 0; i < sizeof att / sizeof att[0]; i++) {
        memset(&o, 0, sizeof o);
        o.kind = OP_ATT;
        int W = att[i].H * att[i].D, T = att[i].T;
        size_t rows = (size_t)att[i].nb * T;
        o.x = drand_f32(rows * 3 * W);
        o.y = dalloc(rows * W * 4);
        float *rel = att[i].g ? drand_f32((size_t)2 * (2 * att[i].g - 1) * att[i].D) : NULL;
        o.att = (OpsAttention){.out = o.y, .q = o.x, .k = o.x + W, .v = o.x + 2 * W, .ldo = W, .ldq = 3 * W,
                               .ldk = 3 * W, .ldv = 3 * W, .n_batch = att[i].nb, .tq = T, .tk = T,
                               .n_heads = att[i].H, .head_dim = att[i].D, .scale = 1.0f / sqrtf((float)att[i].D),
                               .causal = att[i].causal, .relpos_h = rel,
                               .relpos_w = rel ? rel + (size_t)(2 * att[i].g - 1) * att[i].D : NULL,
                               .grid_h = att[i].g, .grid_w = att[i].g, .bf16_bias = att[i].g != 0 /* as bf16 runs */};
        double t = backend_cuda_time(B, run_op, &o, quick ? 2 : 5);
        double fl = 4.0 * att[i].nb * (double)T * T * att[i].D * att[i].H * (att[i].causal ? 0.5 : 1.0);
        emit(att[i].name, t, fl, 0, tf, bw);
        B->free(B, o.x), B->free(B, o.y);
        if (rel) B->free(B, rel);
    }

    /* ---- attention over the KV cache: one decode row at a 1,000-token context, and a 1,000-row prefill */
    {
        KvCache kv = {.dtype = DS_BF16, .n_layers = 12, .width = 1280, .block_size = 64, .n_blocks = 128};
        size_t pool = (size_t)kv.n_blocks * kv.n_layers * 2 * kv.block_size * kv.width;
        kv.data = drand_bf16(pool, 1);
        int32_t table[128], pos[1000];
        for (int i = 0; i < 128; i++) table[i] = (i * 37) % 128;
        for (int i = 0; i < 1000; i++) pos[i] = i;
        int32_t *dtab = dalloc(sizeof table), *dpos = dalloc(sizeof pos), *dlast = dalloc(4);
        B->upload(B, dtab, table, sizeof table);
        B->upload(B, dpos, pos, sizeof pos);
        B->upload(B, dlast, &pos[999], 4);
        const int32_t **dtabs = dalloc(sizeof(void *));
        B->upload(B, dtabs, &dtab, sizeof(void *));
        memset(&o, 0, sizeof o);
        o.kind = OP_ATT_KV;
        o.x = drand_f32(1000 * 1280);
        o.y = dalloc(1000 * 1280 * 4);
        o.akv = (OpsAttentionKv){.out = o.y, .q = o.x, .ldo = 1280, .ldq = 1280, .n = 1, .pos = dlast,
                                 .tables = (const int32_t *const *)dtabs, .kv = &kv, .layer = 5, .n_heads = 10,
                                 .head_dim = 128, .scale = 0.0883883f};
        double t = backend_cuda_time(B, run_op, &o, reps);
        emit("attention_kv decode 1 row ctx 1000 (10x128, bf16 cache)", t, 0, 1000.0 * 1280 * 2 * 2, tf, bw);
        o.akv.n = 1000;
        o.akv.pos = dpos;
        t = backend_cuda_time(B, run_op, &o, quick ? 2 : 5);
        emit("attention_kv prefill 1000 rows (10x128, bf16 cache)", t, 2.0 * 1000 * 1000 * 1280 * 2, 0, tf, bw);
        B->free(B, kv.data), B->free(B, dtab), B->free(B, dpos), B->free(B, dlast), B->free(B, (void *)dtabs);
        B->free(B, o.x), B->free(B, o.y);
    }

    /* ---- MoE layer (64 experts, top 6, 1280 -> 896, shared 1792), bf16 mode; bf16 weights, then the Q8_0 model's
     * (Q8_0 everywhere) and the 4-bit model's (Q4_0 routed experts, Q8_0 shared experts), the router bf16 */
    static const DsDtype moe_dt[3][2] = {{DS_BF16, DS_BF16}, {DS_Q8_0, DS_Q8_0}, {DS_Q4_0, DS_Q8_0}};
    for (int v = 0; v < 3; v++) {
        const int E = 64, D = 1280, F = 896, S = 1792;
        const DsDtype wdt = moe_dt[v][0], sdt = moe_dt[v][1];
        BackendExpert *ex = calloc(E, sizeof *ex);
        for (int i = 0; i < E; i++) {
            ex[i].gate = ds_w(drand_w((size_t)F * D, wdt), wdt);
            ex[i].up = ds_w(drand_w((size_t)F * D, wdt), wdt);
            ex[i].down = ds_w(drand_w((size_t)D * F, wdt), wdt);
        }
        memset(&o, 0, sizeof o);
        o.kind = OP_MOE;
        o.wdt = wdt;
        o.moe = (BackendMoe){.router = ds_w(drand_bf16((size_t)E * D, 1), DS_BF16), .experts = ex,
                             .shared = {ds_w(drand_w((size_t)S * D, sdt), sdt), ds_w(drand_w((size_t)S * D, sdt), sdt),
                                        ds_w(drand_w((size_t)D * S, sdt), sdt)},
                             .n_experts = E, .top_k = 6, .d_model = D, .d_ff = F, .d_shared = S};
        static const int ns[] = {1, 4, 128, 128, 1000};
        for (int i = 0; i < 5; i++) {
            o.M = ns[i];
            /* the second n128: with BE_FP32_SUMS (the SIMT grouped kernels, as a prefill), the first without (a
             * batch's step: the tensor-core ones for bf16 and Q8_0) */
            o.moe_flags = i == 3 ? BE_FP32_SUMS : 0;
            if (v == 2 && o.M > 8) continue; /* 4-bit experts, many rows: not this benchmark's concern */
            o.x = drand_f32((size_t)o.M * D);
            o.y = dalloc((size_t)o.M * D * 4);
            o.scratch = dalloc(B->moe_scratch_floats(o.M, &o.moe) * 4);
            double t = backend_cuda_time(B, run_op, &o, o.M > 8 ? (quick ? 2 : 5) : reps);
            char name[96];
            if (v)
                snprintf(name, sizeof name, "moe layer n%d (E64 k6 1280x896 + shared 1792, %s/%s%s)", o.M,
                         dt_label(wdt), dt_label(sdt), o.moe_flags ? ", fp32 sums" : "");
            else
                snprintf(name, sizeof name, "moe layer n%d (E64 k6 1280x896 + shared 1792, bf16%s)", o.M,
                         o.moe_flags ? ", fp32 sums" : "");
            double by = o.M == 1 ? 6.0 * 3 * F * quant_row_bytes(wdt, D) + 3.0 * S * quant_row_bytes(sdt, D) +
                                       (double)E * D * 2
                                 : 0;
            double fl = o.M > 8 ? 2.0 * o.M * (6.0 * 3 * F * D + 3.0 * S * D + (double)E * D) : 0;
            emit(name, t, fl, by, tf, bw);
            B->free(B, o.x), B->free(B, o.y), B->free(B, o.scratch);
        }
        for (int i = 0; i < E; i++)
            B->free(B, (void *)ex[i].gate.data), B->free(B, (void *)ex[i].up.data), B->free(B, (void *)ex[i].down.data);
        B->free(B, (void *)o.moe.router.data);
        B->free(B, (void *)o.moe.shared.gate.data), B->free(B, (void *)o.moe.shared.up.data),
            B->free(B, (void *)o.moe.shared.down.data);
        free(ex);
    }

    /* ---- dense MLP (layer 0), bf16 and Q8_0, and norms */
    for (int v = 0; v < 2; v++) {
        memset(&o, 0, sizeof o);
        o.kind = OP_SWIGLU;
        o.wdt = v ? DS_Q8_0 : DS_BF16;
        o.M = 1, o.K = 1280, o.N = 6848;
        o.x = drand_f32(1280);
        o.y = dalloc(1280 * 4);
        o.w = drand_w((size_t)6848 * 1280, o.wdt), o.w2 = drand_w((size_t)6848 * 1280, o.wdt),
        o.w3 = drand_w((size_t)6848 * 1280, o.wdt);
        o.scratch = dalloc(2 * 6848 * 4);
        double t = backend_cuda_time(B, run_op, &o, reps);
        emit(v ? "swiglu dense MLP n1 1280x6848 (q8_0)" : "swiglu dense MLP n1 1280x6848 (bf16)", t, 0,
             3.0 * 6848 * quant_row_bytes(o.wdt, 1280), tf, bw);
        B->free(B, o.x), B->free(B, o.y), B->free(B, o.w), B->free(B, o.w2), B->free(B, o.w3), B->free(B, o.scratch);
    }
    {
        double t;
        memset(&o, 0, sizeof o);
        o.kind = OP_RMSNORM;
        o.M = 1, o.N = 1280;
        o.x = drand_f32(4096 * 1280);
        o.y = dalloc(4096 * 1280 * 4);
        o.w = drand_bf16(1280, 1);
        t = backend_cuda_time(B, run_op, &o, reps);
        emit("rmsnorm M1 1280", t, 0, 0, tf, bw);
        o.kind = OP_LAYERNORM;
        o.M = 4096, o.N = 768;
        t = backend_cuda_time(B, run_op, &o, reps);
        emit("layernorm M4096 768", t, 0, 2.0 * 4096 * 768 * 4, tf, bw);
        B->free(B, o.x), B->free(B, o.y), B->free(B, o.w);
    }
    size_t used = 0, total = 0;
    backend_cuda_mem_info(B, &used, &total);
    printf("\n  ],\n  \"device_memory_peak_bytes\": %zu,\n  \"driver_used_bytes\": %zu\n}\n", B->peak(B), used);
    backend_cuda_free(B);
    free(g_rand), free(g_randf), free(g_randq[0]), free(g_randq[1]);
    return 0;
}
#endif
