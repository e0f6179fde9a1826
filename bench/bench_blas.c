/* bench_blas: how fast OpenBLAS's sgemm runs on tiles shaped like the vision encoder's, depending on what its
 * per-call buffers went through first; JSON on stdout (not a test). Each case is a fresh process, because the
 * effect lasts for the process's life.
 *   build/bench/bench_blas [--rounds R]
 * Cases (tiles of 512 rows x 256 outputs x K 768 of a 4096 x 3072 x 768 product, shared out among the OpenMP
 * threads with schedule(dynamic, 1), as ops_cpu.c's linear_gemm does):
 *   cold: nothing before the tiles
 *   main: one 512-cubed sgemm on the calling thread first (what ops_cpu.c did up to session 13)
 *   team: one 512-cubed sgemm on every thread of the team at once, after a barrier (ops_cpu.c's blas_ready
 *         does the same with four calls a thread)
 * and on one thread, sgemm 512 x 256 x 768 repeated before and after one call of 512 x 512 x 512. Each case runs
 * twice: with 4 KiB pages under OpenBLAS's buffers (DSOCR_BLAS_HUGEPAGES=0: "_4k") and with ops_cpu.c's mmap hook
 * hinting them for transparent huge pages (what the engine does), which this program links in. Each case runs in a
 * program of its own (the driver re-executes itself with --case NAME). */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hwinfo.h"
#include "ops.h"
#include "util.h"

void openblas_set_num_threads(int num_threads);

enum { M = 4096, K = 768, N = 3072, MB = 512, NB = 256, W = 512 };

static void square(void) {
    float *a = calloc((size_t)W * W, sizeof(float)), *c = malloc(sizeof(float) * (size_t)W * W);
    if (a && c) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, W, W, W, 1.0f, a, W, a, W, 0.0f, c, W);
    free(a), free(c);
}

static double tiles(const float *a, const float *b, float *c) {
    const int mt = M / MB, nt = N / NB;
    const double t0 = ds_now();
#pragma omp parallel for schedule(dynamic, 1)
    for (int t = 0; t < mt * nt; t++) {
        const int m0 = (t / nt) * MB, n0 = (t % nt) * NB;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, MB, NB, K, 1.0f, a + (size_t)m0 * K, K,
                    b + (size_t)n0 * K, K, 0.0f, c + (size_t)m0 * N + n0, N);
    }
    return 2.0 * M * N * K / (ds_now() - t0) / 1e9;
}

static double one_thread(const float *a, const float *b, float *c, int reps) {
    const double t0 = ds_now();
    for (int r = 0; r < reps; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, MB, NB, K, 1.0f, a, K, b, K, 0.0f, c, NB);
    return 2.0 * MB * NB * K * reps / (ds_now() - t0) / 1e9;
}

/* the process's transparent huge pages in anonymous memory (smaps_rollup), in KiB; -1 where not known */
static long anon_huge_kib(void) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld", &kib) == 1) break;
    if (f) fclose(f);
    return kib;
}

/* one case in this process (its name, "_4k" and all): its figures as a JSON object on out */
static void run_case(const char *name, int rounds, FILE *out) {
    float *a = malloc(sizeof(float) * (size_t)M * K), *b = malloc(sizeof(float) * (size_t)N * K),
          *c = malloc(sizeof(float) * (size_t)M * N);
    if (!a || !b || !c) exit(1);
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 13) * 0.1f - 0.6f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)(i % 11) * 0.01f - 0.05f;
    openblas_set_num_threads(1);
    fprintf(out, "{\"case\": \"%s\", ", name);
    if (!strncmp(name, "one_thread", 10)) {
        const double before = one_thread(a, b, c, 10);
        square();
        fprintf(out, "\"gflops_before_square\": %.1f, \"gflops_after_square\": %.1f", before,
                one_thread(a, b, c, 10));
    } else {
        if (!strncmp(name, "main", 4)) square();
        if (!strncmp(name, "team", 4)) {
#pragma omp parallel
            {
#pragma omp barrier
                square();
            }
        }
        fprintf(out, "\"tiles_gflops\": [");
        for (int r = 0; r < rounds; r++) fprintf(out, "%s%.1f", r ? ", " : "", tiles(a, b, c));
        fprintf(out, "]");
    }
    fprintf(out, ", \"anon_huge_kib\": %ld}", anon_huge_kib());
    free(a), free(b), free(c);
}

int main(int argc, char **argv) {
    int rounds = 3;
    const char *only = NULL; /* --case NAME: run that case alone (the driver re-executes itself for each) */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--case") && i + 1 < argc) only = argv[++i];
        else {
            fprintf(stderr, "usage: bench_blas [--rounds R]\n");
            return 2;
        }
    if (rounds < 1) rounds = 1;
    if (only) {
        run_case(only, rounds, stdout);
        return 0;
    }
    char cpu[128];
    hwinfo_cpu_name(cpu, sizeof cpu);
    printf("{\n  \"what\": \"bench_blas: sgemm tiles %dx%dx%d of a %dx%dx%d product, GFLOPS, per case a fresh "
           "process\",\n",
           MB, NB, K, M, N, K);
    printf("  \"machine\": {\"cpu\": \"%s\", \"threads\": %d, \"openblas_core\": \"%s\"},\n  \"cases\": [",
           cpu, omp_get_max_threads(), ops_blas_coretype());
    /* Each case is a new program (fork, exec): OpenBLAS maps a buffer as it loads, from a thread of its own, so the
     * hint's switch must be in the environment before the library loads. */
    const char *cases[] = {"cold_4k", "main_4k", "team_4k", "one_thread_4k", "cold", "main", "team", "one_thread"};
    char rounds_s[16];
    snprintf(rounds_s, sizeof rounds_s, "%d", rounds);
    for (int k = 0; k < 8; k++) {
        printf("%s\n    ", k ? "," : "");
        fflush(stdout);
        const pid_t pid = fork();
        if (pid == 0) {
            if (strstr(cases[k], "_4k")) setenv("DSOCR_BLAS_HUGEPAGES", "0", 1);
            else unsetenv("DSOCR_BLAS_HUGEPAGES");
            execl("/proc/self/exe", argv[0], "--case", cases[k], "--rounds", rounds_s, (char *)NULL);
            _exit(127);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "bench_blas: case %s failed\n", cases[k]);
            return 1;
        }
    }
    printf("\n  ]\n}\n");
    return 0;
}
