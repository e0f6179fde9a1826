/* bench_moe1.c: the decode step's routed experts on the CPU, the two ways the CPU backend can run them: six
 * one-row expert FFNs (gate, up, SiLU, down; 1,280 x 896, the model's shapes) as six ops_expert_ffn_cpu calls
 * (three parallel regions each), and as one ops_expert_ffn1_many_cpu call (two regions for all six). The weights
 * come from memory, as in decode: 64 sets of six experts (1.3 GB in Q8_0, 2.6 GB in bf16) are cycled, and the two
 * ways alternate, each call timed. Prints JSON: the median milliseconds and the weight bytes per second of each,
 * for Q8_0 and bf16, with the machine and thread count. Usage: bench_moe1 [passes] (default 3). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hwinfo.h"
#include "ops.h"
#include "quant.h"
#include "util.h"

enum { D = 1280, F = 896, K = 6, SETS = 64 };

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* one dtype: the two medians in ms and the bytes of weights one call reads */
static int run(int dt, int passes, double *ms_each, double *ms_many, double *bytes) {
    const size_t cnt = (size_t)F * D, rb = dt == DS_BF16 ? cnt * 2 : quant_row_bytes(DS_Q8_0, (int64_t)cnt);
    float *wf = malloc(sizeof(float) * cnt);
    DsW(*g)[K] = calloc(SETS, sizeof *g), (*u)[K] = calloc(SETS, sizeof *u), (*d)[K] = calloc(SETS, sizeof *d);
    const int n = passes * SETS;
    double *ta = malloc(sizeof(double) * n), *tb = malloc(sizeof(double) * n);
    float *scr = malloc(ops_expert_ffn_scratch_floats(1, F) * sizeof(float));
    if (!wf || !g || !u || !d || !ta || !tb || !scr) return -1;
    for (size_t i = 0; i < cnt; i++) wf[i] = (float)((i * 7919u) % 1000u) / 1000.0f - 0.5f;
    for (int s = 0; s < SETS; s++)
        for (int k = 0; k < K; k++) {
            DsW *ws[3] = {&g[s][k], &u[s][k], &d[s][k]};
            for (int t = 0; t < 3; t++) {
                void *p = malloc(rb);
                if (!p) return -1;
                if (dt == DS_BF16)
                    for (size_t i = 0; i < cnt; i++) ((uint16_t *)p)[i] = f32_to_bf16(wf[i] * (float)(1 + t + k));
                else
                    quant_row_ref(DS_Q8_0, p, wf, (int64_t)cnt);
                *ws[t] = ds_w(p, (DsDtype)dt);
            }
        }
    float x[D], y[K][D], *ys[K];
    int fs[K];
    for (int i = 0; i < D; i++) x[i] = (float)(i % 17) / 17.0f;
    for (int k = 0; k < K; k++) ys[k] = y[k], fs[k] = F;
    for (int it = 0; it < n; it++) {
        const int s = it % SETS, s2 = (it + SETS / 2) % SETS;
        const double t0 = ds_now();
        for (int k = 0; k < K; k++) ops_expert_ffn_cpu(y[k], x, 1, D, F, g[s][k], u[s][k], d[s][k], 0, scr);
        const double t1 = ds_now();
        ops_expert_ffn1_many_cpu(ys, x, D, fs, g[s2], u[s2], d[s2], K, 0);
        ta[it] = t1 - t0, tb[it] = ds_now() - t1;
    }
    qsort(ta, (size_t)n, sizeof(double), cmp_d);
    qsort(tb, (size_t)n, sizeof(double), cmp_d);
    *ms_each = ta[n / 2] * 1e3, *ms_many = tb[n / 2] * 1e3, *bytes = 3.0 * K * (double)rb;
    for (int s = 0; s < SETS; s++)
        for (int k = 0; k < K; k++) free((void *)g[s][k].data), free((void *)u[s][k].data), free((void *)d[s][k].data);
    free(wf), free(g), free(u), free(d), free(ta), free(tb), free(scr);
    return 0;
}

int main(int argc, char **argv) {
    const int passes = argc > 1 && atoi(argv[1]) > 0 ? atoi(argv[1]) : 3;
    char cpu[128];
    hwinfo_cpu_name(cpu, sizeof cpu);
    printf("{\n  \"what\": \"six one-row expert FFNs (1280 x 896) from memory: 6 x ops_expert_ffn_cpu against one "
           "ops_expert_ffn1_many_cpu, alternating, medians over %d calls each\",\n", passes * SETS);
    printf("  \"machine\": {\"cpu\": \"%s\", \"threads\": %d},\n  \"results\": [", cpu, omp_get_max_threads());
    const int dts[2] = {DS_Q8_0, DS_BF16};
    for (int i = 0; i < 2; i++) {
        double a, b, by;
        if (run(dts[i], passes, &a, &b, &by)) {
            fprintf(stderr, "bench_moe1: out of memory\n");
            return 1;
        }
        printf("%s\n    {\"dtype\": \"%s\", \"each_ms\": %.3f, \"each_gbps\": %.2f, \"many_ms\": %.3f, \"many_gbps\": %.2f}",
               i ? "," : "", dts[i] == DS_BF16 ? "bf16" : "q8_0", a, by / a / 1e6, b, by / b / 1e6);
        fflush(stdout);
    }
    printf("\n  ]\n}\n");
    return 0;
}
