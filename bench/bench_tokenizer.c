/* bench_tokenizer.c: tokenizer speed as JSON: load time of tokenizer.json (median of N loads) and single-thread
 * encode throughput over every text of encode.jsonl (median of N passes), plus one 1 MB text with no spaces.
 * bench/tokenizer_hf.py runs this and Hugging Face `tokenizers` on the same text and writes both to one file.
 *
 *   build/bench/bench_tokenizer [--tokenizer FILE] [--texts FILE.jsonl] [--runs N] */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tokenizer.h"
#include "util.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* "host: CPU model (N cores)" */
static void machine_name(char *out, size_t cap) {
    char host[256] = "unknown", cpu[256] = "unknown CPU";
    gethostname(host, sizeof host - 1);
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10)) continue;
            char *c = strchr(line, ':');
            if (c) {
                c++;
                while (*c == ' ') c++;
                c[strcspn(c, "\n")] = 0;
                snprintf(cpu, sizeof cpu, "%s", c);
            }
            break;
        }
        fclose(f);
    }
    snprintf(out, cap, "%s: %s (%ld cores)", host, cpu, sysconf(_SC_NPROCESSORS_ONLN));
}

/* CPU seconds of this process: unlike wall time, not stretched by other processes waiting for the cores. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct Text {
    char *s;
    size_t n;
} Text;

int main(int argc, char **argv) {
    const char *tok_path = "data/tokenizer/tokenizer.json", *texts_path = "data/tokenizer/encode.jsonl";
    int runs = 10;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tok_path = argv[++i];
        else if (!strcmp(argv[i], "--texts") && i + 1 < argc) texts_path = argv[++i];
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--tokenizer FILE] [--texts FILE.jsonl] [--runs N]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1 || runs > 1000) runs = 10;
    DsError e = {0};
    double *load_ms = calloc((size_t)runs, sizeof *load_ms), *mbs = calloc((size_t)runs, sizeof *mbs);
    double *load_cpu_ms = calloc((size_t)runs, sizeof *load_cpu_ms);
    Tokenizer *t = NULL;
    for (int r = 0; r < runs; r++) {
        tokenizer_free(t);
        t = NULL;
        double t0 = ds_now(), c0 = cpu_now();
        if (tokenizer_load_json(tok_path, &t, &e)) {
            fprintf(stderr, "bench_tokenizer: %s\n", e.msg);
            return 1;
        }
        load_ms[r] = (ds_now() - t0) * 1e3;
        load_cpu_ms[r] = (cpu_now() - c0) * 1e3;
    }
    double load_runs[1000];
    memcpy(load_runs, load_ms, (size_t)runs * sizeof *load_ms);

    char *data = NULL;
    size_t len = 0;
    if (ds_read_file(texts_path, 256u << 20, &data, &len, &e)) {
        fprintf(stderr, "bench_tokenizer: %s\n", e.msg);
        return 1;
    }
    Text *texts = NULL;
    size_t nt = 0, cap = 0, bytes = 0;
    for (char *p = data, *nl; p < data + len; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(data + len - p));
        if (!nl) nl = data + len;
        cJSON *o = cJSON_ParseWithLength(p, (size_t)(nl - p));
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(o, "text"));
        if (s) {
            if (nt == cap) texts = realloc(texts, (cap = cap ? cap * 2 : 1024) * sizeof *texts);
            texts[nt].n = strlen(s);
            texts[nt].s = strdup(s);
            bytes += texts[nt++].n;
        }
        cJSON_Delete(o);
    }
    free(data);
    size_t tokens = 0;
    for (int r = 0; r < runs; r++) {
        size_t ntok = 0;
        double t0 = ds_now();
        for (size_t i = 0; i < nt; i++) {
            int32_t *ids = NULL;
            size_t n = 0;
            if (tokenizer_encode(t, texts[i].s, texts[i].n, &ids, &n, &e)) {
                fprintf(stderr, "bench_tokenizer: text %zu: %s\n", i, e.msg);
                return 1;
            }
            ntok += n;
            free(ids);
        }
        mbs[r] = (double)bytes / 1e6 / (ds_now() - t0);
        tokens = ntok;
    }
    double mbs_best = 0;
    for (int r = 0; r < runs; r++)
        if (mbs[r] > mbs_best) mbs_best = mbs[r];

    /* 1 MB of letters with no space: one piece of a million bytes through BPE */
    size_t big_n = 1 << 20;
    char *big = malloc(big_n);
    for (size_t i = 0; i < big_n; i++) big[i] = (char)('a' + (i * 7 + i / 26) % 26);
    double t0 = ds_now();
    int32_t *ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(t, big, big_n, &ids, &n, &e)) {
        fprintf(stderr, "bench_tokenizer: %s\n", e.msg);
        return 1;
    }
    double big_s = ds_now() - t0;
    free(ids);
    free(big);

    char machine[700];
    machine_name(machine, sizeof machine);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "bench", "tokenizer");
    cJSON_AddStringToObject(o, "impl", "dsocr C (src/tokenizer.c, PCRE2 JIT)");
    cJSON_AddStringToObject(o, "machine", machine);
    cJSON_AddStringToObject(o, "tokenizer", tok_path);
    cJSON_AddStringToObject(o, "texts", texts_path);
    cJSON_AddNumberToObject(o, "runs", runs);
    cJSON_AddNumberToObject(o, "load_ms_median", median(load_ms, runs));
    cJSON_AddItemToObject(o, "load_ms_runs", cJSON_CreateDoubleArray(load_runs, runs));
    cJSON_AddNumberToObject(o, "load_cpu_ms_median", median(load_cpu_ms, runs));
    double la[3] = {0};
    if (getloadavg(la, 3) > 0) cJSON_AddNumberToObject(o, "loadavg_1min_at_end", la[0]);
    cJSON_AddNumberToObject(o, "encode_texts", (double)nt);
    cJSON_AddNumberToObject(o, "encode_bytes", (double)bytes);
    cJSON_AddNumberToObject(o, "encode_tokens", (double)tokens);
    cJSON_AddNumberToObject(o, "encode_threads", 1);
    cJSON_AddNumberToObject(o, "encode_mb_s_median", median(mbs, runs));
    cJSON_AddNumberToObject(o, "encode_mb_s_best", mbs_best);
    cJSON_AddNumberToObject(o, "encode_1mb_no_spaces_s", big_s);
    char *s = cJSON_Print(o);
    puts(s);
    free(s);
    cJSON_Delete(o);
    for (size_t i = 0; i < nt; i++) free(texts[i].s);
    free(texts);
    free(load_ms);
    free(load_cpu_ms);
    free(mbs);
    tokenizer_free(t);
    return 0;
}
