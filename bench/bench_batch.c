/* bench_batch.c: aggregate decode throughput of pages decoded together (engine.h engine_ocr_batch, issue 13): for
 * each batch size B, B copies of one page go through the batch (every page's views and prefill alone, then one
 * decoder pass a step for all of them), --tokens each past end-of-sequence; prints JSON with the decode seconds,
 * the aggregate tokens per second (B x tokens / decode seconds), the whole batch's seconds and pages per second
 * (and per day), and the machine. --check: every batch's pages also run alone (dsocr_ocr, the same options), and
 * the JSON says how many pages gave the same tokens and where the first one that did not parted from its run alone
 * (issue 13: "output of each sequence in a batch equals its output run alone"; on a GPU the products of a batch
 * may round differently from one row's, so a divergence is then to be judged by the teacher-forced margins rule).
 * Usage: bench_batch --model DIR [--device cpu|cuda] [--quant q8_0|q4] [--gpu-mem SIZE] [--image FILE]
 *                    [--mode base|gundam|...] [--tokens N] [--batches 1,8,32] [--check] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsocr.h"
#include "engine.h"
#include "hwinfo.h"
#include "util.h"

int main(int argc, char **argv) {
    const char *model = NULL, *device = "cpu", *quant = NULL, *image = "tests/images/portrait.jpg", *mode = "base";
    const char *batches = "1,8,32", *gpu_mem = NULL;
    int tokens = 1000, check = 0;
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
        else {
            fprintf(stderr, "bench_batch: unknown or incomplete option %s (see the file's header)\n", a);
            return 2;
        }
    }
    if (!model || tokens < 1) {
        fprintf(stderr, "bench_batch: --model DIR is needed, --tokens >= 1\n");
        return 2;
    }
    char *bytes = NULL, err[1024];
    size_t len = 0;
    DsError e = {0};
    if (ds_read_file(image, 1 << 26, &bytes, &len, &e)) {
        fprintf(stderr, "bench_batch: %s\n", e.msg);
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
    printf("{\n  \"what\": \"bench_batch: B copies of one page decoded together (engine_ocr_batch), %d tokens each\",\n",
           tokens);
    HwInfo hw;
    hwinfo_probe(&hw, 0);
    printf("  \"machine\": {\"cpu\": \"%s\", \"cpus\": %d, \"device\": \"%s\", \"gpu\": \"%s\"},\n", hw.cpu_model,
           hw.cpus, di.device, di.gpu_name);
    printf("  \"model\": \"%s\", \"quant\": \"%s\", \"image\": \"%s\", \"mode\": \"%s\",\n  \"runs\": [", model,
           quant ? quant : "bf16", image, mode);
    int rc = 0, first = 1;
    for (const char *p = batches; *p && !rc;) {
        const int B = atoi(p);
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
        if (B < 1) continue;
        EnginePage *pages = malloc(sizeof *pages * (size_t)B);
        DsocrResult *res = calloc((size_t)B, sizeof *res);
        if (!pages || !res) return 1;
        for (int i = 0; i < B; i++) pages[i] = (EnginePage){.image = bytes, .len = len};
        DsocrOcrOptions o;
        dsocr_ocr_options_default(&o);
        o.mode = mode;
        o.max_tokens = tokens;
        o.ignore_eos = 1;
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
            if (check) { /* the pages are copies of one: one run alone is every page's reference */
                DsocrResult alone;
                int same = 0, first_diff = -1;
                if (dsocr_ocr(s, bytes, len, &o, &alone) == DSOCR_OK) {
                    for (int i = 0; i < B; i++) {
                        int k = 0;
                        while (k < res[i].n_tokens && k < alone.n_tokens && res[i].tokens[k] == alone.tokens[k]) k++;
                        if (k == alone.n_tokens && k == res[i].n_tokens)
                            same++;
                        else if (first_diff < 0 || k < first_diff)
                            first_diff = k;
                    }
                    dsocr_result_free(&alone);
                }
                printf(", \"pages_same_as_alone\": %d, \"first_divergence\": %d", same, first_diff);
            }
            printf("}");
            first = 0;
            fflush(stdout);
        }
        for (int i = 0; i < B; i++) dsocr_result_free(&res[i]);
        free(res), free(pages);
    }
    printf("\n  ]\n}\n");
    dsocr_session_free(s);
    dsocr_model_free(m);
    free(bytes);
    return rc;
}
