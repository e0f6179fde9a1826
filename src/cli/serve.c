/* serve.c: `dsocr serve`: options into a ServeConfig, then the server (src/serve/serve.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "serve/serve.h"
#include "serve/worker.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsocr serve [options]\n\n"
            "Serves one model over HTTP: the seed API (/ocr, /ocr-base64, /health, /cleanup, /results/FILE, /),\n"
            "an OpenAI-compatible API (/v1/chat/completions, /v1/models) and a web page at / for browsers.\n"
            "docs/api.md describes every endpoint.\n\n"
            "  --model DIR          model folder (default $DSOCR_MODEL, else ./models/deepseek-ocr)\n"
            "  --model-name NAME    the model id /v1/models shows (default: the --model argument)\n"
            "  --host ADDR          address to bind (default 127.0.0.1; 0.0.0.0 or :: for every interface)\n"
            "  --port N             port (default 8031; 0 = any free port, printed at start)\n"
            "  --device D           cpu (default), cuda or auto\n"
            "  --threads N          CPU threads for the engine (default: all cores)\n"
            "  --quant Q            quantise the weights at load: q8_0 or q4 (routed experts 4-bit)\n"
            "  --gpu-mem SIZE       GPU memory to use, e.g. 1.5G (default: the free memory less 5 %%); what does not\n"
            "                       fit stays on the CPU (embeddings, routed experts), requests past it get 507\n"
            "  --queue N            requests waiting at most (default 16); more get 429 with Retry-After\n"
            "  --max-batch N        image requests decoded together at most (default 1, up to 128): each joins\n"
            "                       the running batch at a token boundary and leaves when it is done\n"
            "  --max-connections N  open connections at most (default 128)\n"
            "  --max-upload BYTES   request body size limit (default 50000000; K, M, G suffixes); 413 above\n"
            "  --max-pixels N       decoded image pixels at most (default 50000000); 400 above\n"
            "  --max-prompt BYTES   prompt length limit (default 4000)\n"
            "  --max-tokens N       default max_tokens when a request names none (default 0: until the\n"
            "                       context is full)\n"
            "  --max-tokens-cap N   refuse requests asking for more (default 8192)\n"
            "  --timeout S          per-request time limit in seconds (default 600); 504 after it\n"
            "  --drain S            on SIGTERM, how long running and queued requests may take (default 60)\n"
            "  --results-dir DIR    where save_to_file results go (default $XDG_CACHE_HOME/dsocr/results,\n"
            "                       else ~/.cache/dsocr/results; '' = never save)\n"
            "  --results-max N      saved results kept at most, oldest removed first (default 1000)\n"
            "  --api-key KEY        require 'Authorization: Bearer KEY' (default $DSOCR_API_KEY; / and\n"
            "                       /health stay open)\n"
            "  --fake-engine        tests only: no model; every request answers a short fixed text\n");
}

static int parse_size(const char *s, size_t *out) {
    char *end;
    double v = strtod(s, &end);
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1e3, end++;
    else if (*end == 'M' || *end == 'm') mul = 1e6, end++;
    else if (*end == 'G' || *end == 'g') mul = 1e9, end++;
    if (end == s || *end || v < 0 || v * mul > 1e12) return -1;
    *out = (size_t)(v * mul);
    return 0;
}

static int parse_num(const char *s, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cli_serve(int argc, char **argv) {
    ServeConfig c;
    serve_config_default(&c);
    c.api_key = getenv("DSOCR_API_KEY");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        double x;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--fake-engine")) {
            c.fake_engine = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "dsocr serve: %s needs a value (see --help)\n", a);
            return 2;
        }
        i++;
#define NUM(name, lo, hi, dst)                                                                                \
    else if (!strcmp(a, name)) {                                                                              \
        if (parse_num(v, lo, hi, &x)) {                                                                       \
            fprintf(stderr, "dsocr serve: %s: '%s' is not a number from %g to %g\n", a, v, (double)(lo),      \
                    (double)(hi));                                                                            \
            return 2;                                                                                         \
        }                                                                                                     \
        dst = x;                                                                                              \
    }
        if (!strcmp(a, "--model")) c.model_dir = v;
        else if (!strcmp(a, "--model-name")) c.model_name = v;
        else if (!strcmp(a, "--host")) c.host = v;
        else if (!strcmp(a, "--device")) c.device = v;
        else if (!strcmp(a, "--quant")) {
            if (strcmp(v, "q8_0") && strcmp(v, "q4")) {
                fprintf(stderr, "dsocr serve: --quant must be q8_0 or q4\n");
                return 2;
            }
            c.quant = v;
        }
        else if (!strcmp(a, "--gpu-mem")) {
            if (cli_gpu_mem("serve", v, &c.gpu_mem)) return 2;
        }
        else if (!strcmp(a, "--results-dir")) c.results_dir = v;
        else if (!strcmp(a, "--api-key")) c.api_key = v;
        else if (!strcmp(a, "--max-upload") || !strcmp(a, "--max-prompt")) {
            size_t n;
            if (parse_size(v, &n) || n == 0) {
                fprintf(stderr, "dsocr serve: %s: '%s' is not a size\n", a, v);
                return 2;
            }
            if (a[6] == 'u') c.max_upload = n;
            else c.max_prompt = n;
        }
        NUM("--port", 0, 65535, c.port)
        NUM("--threads", 0, 4096, c.threads)
        NUM("--queue", 1, 100000, c.queue_max)
        NUM("--max-batch", 1, WORKER_MAX_BATCH, c.max_batch)
        NUM("--max-connections", 2, 100000, c.max_connections)
        NUM("--max-pixels", 1, 1e9, c.max_pixels)
        NUM("--max-tokens", 0, 1e6, c.default_max_tokens)
        NUM("--max-tokens-cap", 0, 1e6, c.max_tokens_cap)
        NUM("--timeout", 0.1, 1e6, c.timeout_s)
        NUM("--drain", 0, 1e6, c.drain_s)
        NUM("--results-max", 1, 1e7, c.results_max)
        else {
            fprintf(stderr, "dsocr serve: unknown option '%s' (see --help)\n", a);
            return 2;
        }
#undef NUM
    }
    if (!c.model_dir) c.model_dir = cli_default_model_dir();
    if (c.max_prompt > 4000) {
        fprintf(stderr, "dsocr serve: --max-prompt is at most 4000 bytes (the engine's prompt buffer)\n");
        return 2;
    }
    return serve_run(&c);
}
