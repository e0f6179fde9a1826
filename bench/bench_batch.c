/* bench_batch.c: aggregate decode throughput of pages decoded together (engine.h engine_ocr_batch, issue 13): for
 * each batch size B, B pages (variants of one image, below) go through the batch (every page's views and prefill alone, then one
 * decoder pass a step for all of them), --tokens each past end-of-sequence; prints JSON with the decode seconds,
 * the aggregate tokens per second (B x tokens / decode seconds), the whole batch's seconds and pages per second
 * (and per day), and the machine. --check: a batch's first pages also run alone (dsocr_ocr, the same options), and
 * the JSON says how many of them gave the same tokens and where the first one that did not parted from its run alone
 * (issue 13: "output of each sequence in a batch equals its output run alone"; on a GPU a batch's products run on
 * the tensor cores and round differently from one row's, so a divergence is then judged by the teacher-forced
 * margins rule: max_divergence_margin, see divergence_margin; DSOCR_BATCH_EXACT=1 keeps one row's fp32 sums).
 * Usage: bench_batch --model DIR [--device cpu|cuda] [--quant q8_0|q4] [--gpu-mem SIZE] [--image FILE]
 *                    [--mode base|gundam|...] [--tokens N] [--batches 1,8,32] [--check] [--check-pages N]
 *                    [--ngram N] [--copies] [--precision bf16|fp32]
 * The B pages are the image with a small square of its own XOR-ed into each (page_variant), so that they decode to
 * different tokens and route to different experts as a batch of real documents does; --copies: B identical
 * copies (every row then picks the same 6 experts: the MoE's worst case). --check-pages: how many of each batch's
 * first pages run alone for --check (default 4).
 * --precision: bf16 (default, as `dsocr bench` and the GPU's default; the official rounding points, and the
 * batch's products on the tensor cores) or fp32 (every product with fp32 inputs: the grouped MoE products on the
 * SIMT kernels; issue 13's session-9 tables ran so, unnamed).
 * --ngram N: the n-gram guard's size (0 = off; default the profile's). With DSOCR_PROFILE=1 the backend's
 * sections of each batch go to stderr (batch.*: the batch's steps; dec.*: the pages' prefills; (idle): the host's
 * work between them). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dsocr.h"
#include "dump.h"
#include "engine.h"
#include "image.h"
#include "hwinfo.h"
#include "util.h"

/* Page i of a batch: the page with a 48-pixel square XOR-ed at a place and with a value of i's own, as a 24-bit BMP
 * in fresh memory (*len bytes), so that the pages of a batch differ (their tokens, hence the experts they route to,
 * as different documents' do); NULL when out of memory. */
static uint8_t *page_variant(const DsImage *im, int i, size_t *len) {
    const int w = im->w, h = im->h, stride = (3 * w + 3) & ~3;
    const size_t n = 54 + (size_t)stride * h;
    uint8_t *b = calloc(1, n);
    if (!b) return NULL;
    const uint32_t hdr[] = {(uint32_t)n, 0, 54, 40, (uint32_t)w, (uint32_t)h, 1u | (24u << 16), 0,
                            (uint32_t)(stride * h), 2835, 2835, 0, 0};
    b[0] = 'B', b[1] = 'M';
    memcpy(b + 2, hdr, sizeof hdr); /* little-endian fields from offset 2: the file and info headers */
    const int sq = 48 < w && 48 < h ? 48 : 0, x0 = sq ? (i * 97) % (w - sq) : 0, y0 = sq ? (i * 61) % (h - sq) : 0;
    const uint8_t v = (uint8_t)(0x5a ^ (i * 29));
    for (int y = 0; y < h; y++) {
        uint8_t *row = b + 54 + (size_t)stride * (h - 1 - y);
        for (int x = 0; x < w; x++) {
            const uint8_t *px = im->rgb + ((size_t)y * w + x) * 3;
            const uint8_t f = x >= x0 && x < x0 + sq && y >= y0 && y < y0 + sq ? v : 0;
            row[3 * x] = px[2] ^ f, row[3 * x + 1] = px[1] ^ f, row[3 * x + 2] = px[0] ^ f;
        }
    }
    *len = n;
    return b;
}

/* The teacher-forced margins rule for pages that parted from their run alone: at a page's first differing step k,
 * the run alone's logits there (its own prefix, which the page shared up to k) give margin = logit(alone's token)
 * − logit(the page's token), >= 0; a small one means the two picks were a near tie that the batch's sums (tensor
 * cores, another order) could tip. Returns page res's margin at its first differing step k, or −1 when the
 * logits could not be had. The run alone is repeated teacher-forced on its own tokens with its logits dumped
 * (engine.h EngineDebug) to a temporary folder, removed after. */
static double divergence_margin(DsocrSession *s, const void *bytes, size_t len, const DsocrOcrOptions *o,
                                const DsocrResult *alone, const DsocrResult *res, int k) {
    if (k >= alone->n_tokens || k >= res->n_tokens) return -1; /* a page shorter than its run alone: none */
    char dir[] = "/tmp/bench_batch.XXXXXX", path[4096];
    if (!mkdtemp(dir)) return -1;
    EngineDebug dbg = {.dump_dir = dir, .force_ids = alone->tokens, .n_force = k + 1};
    DsocrResult r;
    double margin = -1;
    if (engine_ocr(s, bytes, len, o, &dbg, &r) == DSOCR_OK) {
        dsocr_result_free(&r);
        float *lg = NULL;
        int64_t shape[8];
        int nd = 0;
        DsError e = {0};
        snprintf(path, sizeof path, "%s/logits.bin", dir);
        if (dump_read_f32(path, &lg, shape, &nd, &e) == DSOCR_OK && nd == 2 && shape[0] > k) {
            const float *row = lg + (size_t)k * (size_t)shape[1];
            margin = (double)row[alone->tokens[k]] - (double)row[res->tokens[k]];
        }
        free(lg);
    }
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d));)
        if (de->d_name[0] != '.') {
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            unlink(path);
        }
    if (d) closedir(d);
    rmdir(dir);
    return margin;
}

int main(int argc, char **argv) {
    const char *model = NULL, *device = "cpu", *quant = NULL, *image = "tests/images/portrait.jpg", *mode = "base";
    const char *batches = "1,8,32", *gpu_mem = NULL, *precision = "bf16";
    int tokens = 1000, check = 0, ngram = -1, copies = 0, check_pages = 4;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int more = i + 1 < argc;
        if (!strcmp(a, "--model") && more) model = argv[++i];
        else if (!strcmp(a, "--device") && more) device = argv[++i];
        else if (!strcmp(a, "--quant") && more) quant = argv[++i];
        else if (!strcmp(a, "--gpu-mem") && more) gpu_mem = argv[++i];
        else if (!strcmp(a, "--image") && more) image = argv[++i];
        else if (!strcmp(a, "--mode") && more) mode = argv[++i];
        else if (!strcmp(a, "--tokens") && more) tokens = atoi(argv[++i]);
        else if (!strcmp(a, "--batches") && more) batches = argv[++i];
        else if (!strcmp(a, "--check")) check = 1;
        else if (!strcmp(a, "--check-pages") && more) check_pages = atoi(argv[++i]);
        else if (!strcmp(a, "--copies")) copies = 1;
        else if (!strcmp(a, "--ngram") && more) ngram = atoi(argv[++i]);
        else if (!strcmp(a, "--precision") && more) precision = argv[++i];
        else {
            fprintf(stderr, "bench_batch: unknown or incomplete option %s (see the file's header)\n", a);
            return 2;
        }
    }
    if (!model || tokens < 1 || (strcmp(precision, "bf16") && strcmp(precision, "fp32"))) {
        fprintf(stderr, "bench_batch: --model DIR is needed, --tokens >= 1, --precision bf16 or fp32\n");
        return 2;
    }
    char *bytes = NULL, err[1024];
    size_t len = 0;
    DsError e = {0};
    DsImage img = {0};
    if (ds_read_file(image, 1 << 26, &bytes, &len, &e) ||
        image_decode((const uint8_t *)bytes, len, NULL, &img, &e)) {
        fprintf(stderr, "bench_batch: %s: %s\n", image, e.msg);
        return 1;
    }
    DsocrModelOptions mo;
    dsocr_model_options_default(&mo);
    mo.device = device;
    mo.quant = quant;
    if (gpu_mem && (hwinfo_parse_size(gpu_mem, &mo.gpu_mem) || !mo.gpu_mem)) {
        fprintf(stderr, "bench_batch: --gpu-mem %s: not a size\n", gpu_mem);
        return 2;
    }
    DsocrModel *m = NULL;
    DsocrSession *s = NULL;
    if (dsocr_model_load(model, &mo, &m, err, sizeof err) || dsocr_session_new(m, NULL, &s, err, sizeof err)) {
        fprintf(stderr, "bench_batch: %s\n", err);
        return 1;
    }
    DsocrDeviceInfo di;
    dsocr_model_device_info(m, &di);
    printf("{\n  \"what\": \"bench_batch: B %s decoded together (engine_ocr_batch), %d tokens each\",\n",
           copies ? "copies of one page" : "variants of one page", tokens);
    HwInfo hw;
    hwinfo_probe(&hw, 0);
    printf("  \"machine\": {\"cpu\": \"%s\", \"cpus\": %d, \"device\": \"%s\", \"gpu\": \"%s\"},\n", hw.cpu_model,
           hw.cpus, di.device, di.gpu_name);
    printf("  \"model\": \"%s\", \"quant\": \"%s\", \"precision\": \"%s\", \"image\": \"%s\", \"mode\": \"%s\",\n"
           "  \"runs\": [", model, quant ? quant : "bf16", precision, image, mode);
    int rc = 0, first = 1;
    for (const char *p = batches; *p && !rc;) {
        const int B = atoi(p);
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
        if (B < 1) continue;
        EnginePage *pages = malloc(sizeof *pages * (size_t)B);
        DsocrResult *res = calloc((size_t)B, sizeof *res);
        if (!pages || !res) return 1;
        uint8_t **var = calloc((size_t)B, sizeof *var);
        if (!var) return 1;
        for (int i = 0; i < B; i++) {
            size_t vl = len;
            if (!copies && !(var[i] = page_variant(&img, i, &vl))) return 1;
            pages[i] = (EnginePage){.image = copies ? (const void *)bytes : var[i], .len = vl};
        }
        DsocrOcrOptions o;
        dsocr_ocr_options_default(&o);
        o.mode = mode;
        o.max_tokens = tokens;
        o.ignore_eos = 1;
        o.no_repeat_ngram = ngram;
        o.precision = strcmp(precision, "fp32") ? DSOCR_PRECISION_BF16 : DSOCR_PRECISION_FP32;
        Backend *be = engine_model_backend(m);
        if (be->profile_report) be->profile_report(be, NULL); /* forget the sections before this batch */
        const double t0 = ds_now();
        DsocrStatus st = engine_ocr_batch(s, pages, B, &o, res);
        const double total = ds_now() - t0;
        if (st) {
            fprintf(stderr, "bench_batch: batch %d: %s\n", B, dsocr_session_error(s));
            rc = 1;
        } else {
            long gen = 0;
            for (int i = 0; i < B; i++) gen += res[i].n_tokens;
            const double dec = res[0].seconds_decode;
            printf("%s\n    {\"batch\": %d, \"prompt_tokens\": %d, \"generated\": %ld, \"decode_s\": %.3f, "
                   "\"decode_tok_s\": %.1f, \"batch_s\": %.3f, \"pages_per_s\": %.3f, \"pages_per_day\": %.0f",
                   first ? "" : ",", B, res[0].n_prompt, gen, dec, dec > 0 ? gen / dec : 0.0, total, B / total,
                   B / total * 86400.0);
            if (be->profile_report && ds_env_on("DSOCR_PROFILE")) {
                fprintf(stderr, "profile: batch %d\n", B);
                be->profile_report(be, stderr);
            }
            if (check) { /* the first few pages each against its run alone */
                int same = 0, first_diff = -1, last_diff = -1, checked = B < check_pages ? B : check_pages;
                double margin = -1;
                for (int i = 0; i < checked; i++) {
                    DsocrResult alone;
                    if (dsocr_ocr(s, pages[i].image, pages[i].len, &o, &alone) != DSOCR_OK) {
                        checked = i;
                        break;
                    }
                    int k = 0;
                    while (k < res[i].n_tokens && k < alone.n_tokens && res[i].tokens[k] == alone.tokens[k]) k++;
                    if (k == alone.n_tokens && k == res[i].n_tokens) {
                        same++;
                    } else {
                        if (first_diff < 0 || k < first_diff) first_diff = k;
                        if (k > last_diff) last_diff = k;
                        const double mg = divergence_margin(s, pages[i].image, pages[i].len, &o, &alone, &res[i], k);
                        if (mg > margin) margin = mg;
                    }
                    dsocr_result_free(&alone);
                }
                printf(", \"pages_checked\": %d, \"pages_same_as_alone\": %d, \"first_divergence\": %d, "
                       "\"last_divergence\": %d, \"max_divergence_margin\": %.4f",
                       checked, same, first_diff, last_diff, margin);
            }
            printf("}");
            first = 0;
            fflush(stdout);
        }
        for (int i = 0; i < B; i++) dsocr_result_free(&res[i]), free(var[i]);
        free(res), free(pages), free(var);
    }
    printf("\n  ]\n}\n");
    dsocr_session_free(s);
    dsocr_model_free(m);
    free(bytes);
    image_free(&img);
    return rc;
}
