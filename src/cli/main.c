/* main.c: the dsocr command line: dispatches to the verbs in src/cli/. */
#include <errno.h> /* program_invocation_name */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "dsocr.h"
#include "hwinfo.h"
#include "ops.h"
#include "pull.h"

typedef struct Verb {
    const char *name;
    int (*fn)(int argc, char **argv); /* NULL: not built yet */
    const char *help;
} Verb;

static const Verb VERBS[] = {
    {"ocr", cli_ocr, "image or PDF in, markdown / text / JSON out"},
    {"serve", cli_serve, "HTTP API on 127.0.0.1:8031 (seed API, OpenAI-compatible API, web page)"},
    {"pull", cli_pull, "download the official checkpoint from Hugging Face, resumable and verified"},
    {"quantize", cli_quantize, "write a smaller checkpoint (GGUF, Q8_0 / 4-bit)"},
    {"check", cli_check, "what hardware is here and which settings fit it"},
    {"check-model", cli_check_model, "validate a model folder and print a summary of its tensors"},
    {"bench", cli_bench, "speed and memory figures as JSON"},
    {"tokenize", cli_tokenize, "encode JSON strings to token ids (or --decode ids), one per line"},
};
#define N_VERBS (sizeof VERBS / sizeof VERBS[0])

int cli_gpu_mem(const char *verb, const char *v, uint64_t *out) {
    uint64_t b = 0;
    if (v && !hwinfo_parse_size(v, &b) && b) {
        *out = b;
        return 0;
    }
    fprintf(stderr, "dsocr %s: --gpu-mem wants a size like 2G, 1.5GiB or 512M, not '%s'\n", verb, v ? v : "");
    return -1;
}

const char *cli_default_model_dir(void) {
    static char cache[4096];
    const char *d = getenv("DSOCR_MODEL");
    if (d && *d) return d;
    if (pull_folder_state("models/deepseek-ocr", NULL, 0) != PULL_ABSENT) return "models/deepseek-ocr";
    char why[512];
    if (!pull_cache_dir(NULL, cache, sizeof cache)) {
        PullState st = pull_folder_state(cache, why, sizeof why);
        if (st == PULL_COMPLETE) return cache;
        if (st == PULL_INCOMPLETE) {
            fprintf(stderr, "dsocr: the model in %s is incomplete (%s); '%s pull' finishes the download\n", cache,
                    why, program_invocation_name);
            return cache;
        }
    }
    fprintf(stderr,
            "dsocr: no model found ($DSOCR_MODEL is not set; ./models/deepseek-ocr and %s hold none).\n"
            "dsocr: '%s pull' downloads %s (6.7 GB) to where ocr, serve and check find it; or give --model DIR.\n",
            cache[0] ? cache : "the cache folder", program_invocation_name, PULL_DEFAULT_REPO);
    return "models/deepseek-ocr";
}

static void usage(FILE *f) {
    fprintf(f, "dsocr %s: DeepSeek-OCR on CPUs and NVIDIA GPUs\n\nusage: dsocr VERB [options]\n\nverbs:\n",
            DSOCR_VERSION);
    for (size_t i = 0; i < N_VERBS; i++)
        fprintf(f, "  %-12s %s%s\n", VERBS[i].name, VERBS[i].help, VERBS[i].fn ? "" : " (not built yet)");
    fprintf(f, "\n'dsocr VERB --help' describes a verb's options. The model folder defaults to $DSOCR_MODEL,\n"
               "else ./models/deepseek-ocr.\n");
}

int main(int argc, char **argv) {
    ops_blas_reexec_if_better(argv); /* OpenBLAS picks weak kernels on some virtual CPUs */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("dsocr %s\n", DSOCR_VERSION);
        return 0;
    }
    for (size_t i = 0; i < N_VERBS; i++) {
        if (strcmp(argv[1], VERBS[i].name) != 0) continue;
        if (!VERBS[i].fn) {
            fprintf(stderr, "dsocr: '%s' is not built yet in this version (%s)\n", VERBS[i].name, DSOCR_VERSION);
            return 2;
        }
        return VERBS[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "dsocr: unknown verb '%s'; 'dsocr --help' lists the verbs\n", argv[1]);
    return 2;
}
