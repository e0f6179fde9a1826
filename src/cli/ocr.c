/* ocr.c: `dsocr ocr`: one image in, the model's raw text (grounding tags included) streamed to stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "dump.h"
#include "engine.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsocr ocr [options] FILE\n\n"
            "Runs DeepSeek-OCR on one image and streams the raw text (grounding tags included) to stdout.\n\n"
            "  --model DIR          model folder (default $DSOCR_MODEL, else ./models/deepseek-ocr)\n"
            "  --mode M             tiny (512), small (640), base (1024), large (1280), gundam (default:\n"
            "                       640-px tiles + 1024 global)\n"
            "  --base-size N --image-size N --crop-mode 0|1\n"
            "                       custom sizes instead of --mode (multiples of 64, 512..1280; image-size\n"
            "                       is the tile side in crop mode)\n"
            "  --prompt P           markdown (default), ocr, free, figure, describe, locate:TEXT, raw:TEXT\n"
            "  --compat C           hf (default: up to 9 tiles, no-repeat 20-grams over prompt and output)\n"
            "                       or vllm (6 tiles, 30-grams in a 90-token window, RGBA on white)\n"
            "  --no-repeat-ngram N  override the profile's n (0 = off)\n"
            "  --ngram-window W     override the profile's window (0 = whole sequence)\n"
            "  --max-tokens N       new tokens at most (default: until the context is full)\n"
            "  --ignore-eos         keep generating past end-of-sequence\n"
            "  --threads N          CPU threads (default: all cores)\n"
            "  --precision P        fp32 (default on the CPU) or bf16 (the official rounding points)\n"
            "  --dump DIR           write every stage in the reference's dump format\n"
            "  --force-ids FILE     teacher forcing: feed the ids of this i32 dump (e.g. a reference's\n"
            "                       generated.bin) instead of the model's choices\n"
            "  --quiet              no progress line on stderr\n");
}

static void on_progress(void *user, const char *line) {
    if (*(int *)user) return;
    fprintf(stderr, "\rdsocr: %-60s", line);
    fflush(stderr);
}

static int on_token(void *user, int id, const char *text, size_t len) {
    (void)user;
    (void)id;
    if (len) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

static void log_line(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "dsocr: %s\n", line);
}

static int parse_int(const char *s, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < -1 || v > 1000000000) return -1;
    *out = (int)v;
    return 0;
}

int cli_ocr(int argc, char **argv) {
    DsocrOcrOptions o;
    dsocr_ocr_options_default(&o);
    const char *model = NULL, *file = NULL, *dump = NULL, *force = NULL;
    int threads = 0, quiet = 0, custom = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED()                                                                                                \
    do {                                                                                                      \
        if (!v) {                                                                                             \
            fprintf(stderr, "dsocr ocr: %s needs a value\n", a);                                              \
            return 2;                                                                                         \
        }                                                                                                     \
        i++;                                                                                                  \
    } while (0)
#define INT(dst)                                                                                              \
    do {                                                                                                      \
        NEED();                                                                                               \
        if (parse_int(v, &(dst))) {                                                                           \
            fprintf(stderr, "dsocr ocr: %s: '%s' is not a number\n", a, v);                                  \
            return 2;                                                                                         \
        }                                                                                                     \
    } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--model")) {
            NEED();
            model = v;
        } else if (!strcmp(a, "--mode")) {
            NEED();
            o.mode = v;
        } else if (!strcmp(a, "--base-size")) {
            INT(o.base_size);
            custom = 1;
        } else if (!strcmp(a, "--image-size")) {
            INT(o.image_size);
            custom = 1;
        } else if (!strcmp(a, "--crop-mode")) {
            INT(o.crop_mode);
            custom = 1;
        } else if (!strcmp(a, "--prompt")) {
            NEED();
            o.prompt = v;
        } else if (!strcmp(a, "--compat")) {
            NEED();
            if (!strcmp(v, "hf"))
                o.compat = DSOCR_COMPAT_HF;
            else if (!strcmp(v, "vllm"))
                o.compat = DSOCR_COMPAT_VLLM;
            else {
                fprintf(stderr, "dsocr ocr: --compat must be hf or vllm\n");
                return 2;
            }
        } else if (!strcmp(a, "--no-repeat-ngram")) {
            INT(o.no_repeat_ngram);
        } else if (!strcmp(a, "--ngram-window")) {
            INT(o.ngram_window);
        } else if (!strcmp(a, "--max-tokens")) {
            INT(o.max_tokens);
        } else if (!strcmp(a, "--ignore-eos")) {
            o.ignore_eos = 1;
        } else if (!strcmp(a, "--threads")) {
            INT(threads);
        } else if (!strcmp(a, "--precision")) {
            NEED();
            if (!strcmp(v, "fp32"))
                o.precision = DSOCR_PRECISION_FP32;
            else if (!strcmp(v, "bf16"))
                o.precision = DSOCR_PRECISION_BF16;
            else {
                fprintf(stderr, "dsocr ocr: --precision must be fp32 or bf16\n");
                return 2;
            }
        } else if (!strcmp(a, "--dump")) {
            NEED();
            dump = v;
        } else if (!strcmp(a, "--force-ids")) {
            NEED();
            force = v;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (a[0] == '-' || file) {
            fprintf(stderr, "dsocr ocr: unexpected argument '%s' (see --help)\n", a);
            return 2;
        } else {
            file = a;
        }
    }
    if (!file) {
        usage(stderr);
        return 2;
    }
    if (custom) {
        if (!o.base_size || !o.image_size) {
            fprintf(stderr, "dsocr ocr: custom sizes need both --base-size and --image-size\n");
            return 2;
        }
        o.mode = NULL;
    }
    if (!model) model = cli_default_model_dir();
    char err[1024];
    char *img = NULL;
    size_t img_len = 0;
    DsError e = {0};
    if (ds_read_file(file, 1u << 30, &img, &img_len, &e)) {
        fprintf(stderr, "dsocr ocr: %s\n", e.msg);
        return 1;
    }
    int32_t *force_ids = NULL;
    int64_t n_force = 0;
    if (force && dump_read_i32(force, &force_ids, &n_force, &e)) {
        fprintf(stderr, "dsocr ocr: %s\n", e.msg);
        free(img);
        return 1;
    }
    DsocrModelOptions mo;
    dsocr_model_options_default(&mo);
    mo.threads = threads;
    mo.log = log_line;
    DsocrModel *m = NULL;
    DsocrSession *s = NULL;
    int rc = 1;
    if (dsocr_model_load(model, &mo, &m, err, sizeof err)) {
        fprintf(stderr, "dsocr ocr: %s\n", err);
        goto out;
    }
    if (dsocr_session_new(m, NULL, &s, err, sizeof err)) {
        fprintf(stderr, "dsocr ocr: %s\n", err);
        goto out;
    }
    int vllm = o.compat == DSOCR_COMPAT_VLLM;
    int ng = o.no_repeat_ngram >= 0 ? o.no_repeat_ngram : (vllm ? 30 : 20);
    int win = o.ngram_window >= 0 ? o.ngram_window : (vllm ? 90 : 0);
    fprintf(stderr, "dsocr: profile %s: up to %d tiles, no-repeat %d-grams %s, %s, precision %s\n",
            engine_compat_name(o.compat), vllm ? 6 : 9, ng,
            vllm ? "over the output" : "over prompt and output", vllm ? "alpha on white" : "alpha dropped",
            o.precision == DSOCR_PRECISION_BF16 ? "bf16" : "fp32");
    if (win > 0) fprintf(stderr, "dsocr: n-gram window %d tokens\n", win);
    o.on_token = on_token;
    o.on_progress = on_progress;
    o.user = &quiet;
    EngineDebug dbg = {.dump_dir = dump, .force_ids = force_ids, .n_force = (int)n_force};
    DsocrResult r;
    if (engine_ocr(s, img, img_len, &o, &dbg, &r)) {
        fprintf(stderr, "%sdsocr ocr: %s: %s\n", quiet ? "" : "\n", file, dsocr_session_error(s));
        goto out;
    }
    printf("\n");
    if (!quiet)
        fprintf(stderr,
                "\ndsocr: %d prompt tokens (%d views), %d generated; vision %.2fs, prefill %.2fs, decode %.2fs "
                "(%.1f tok/s); stop: %s; profile %s\n",
                r.n_prompt, r.n_views, r.n_tokens, r.seconds_vision, r.seconds_prefill, r.seconds_decode,
                r.seconds_decode > 0 ? r.n_tokens / r.seconds_decode : 0.0,
                r.stop == DSOCR_STOP_EOS ? "end of sequence" : r.stop == DSOCR_STOP_LENGTH ? "length" : "cancelled",
                engine_compat_name(o.compat));
    dsocr_result_free(&r);
    rc = 0;
out:
    dsocr_session_free(s);
    dsocr_model_free(m);
    free(img);
    free(force_ids);
    return rc;
}
