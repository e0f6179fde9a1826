/* bench.c: `dsocr bench`: speed and memory of whole pages in one warm process, printed as JSON. The model is
 * loaded once; each mode's page runs --warmup times unmeasured, then --repeat times measured; figures are
 * medians with every sample listed. Stage times come from the engine (preprocessing on the host; the vision
 * encoder until the device is done; prefill; decode) and the page time is from reading the file to the last
 * token. Memory: the process's peak RSS, and on a GPU dsocr's allocator (now and peak) and the driver's view of
 * the card minus what it showed right after the CUDA context was created. --ceilings adds what the machine can do,
 * measured by the same run: on a GPU the cuBLAS bf16 GEMM rate and device copy bandwidth; on the CPU, with the
 * run's threads, OpenBLAS fp32 GEMM at the encoder's own shapes (figures_vision_gemms, summed over each mode's
 * views) and the memory read bandwidth, and the vision, prefill (figures_prefill_flops) and decode rates as
 * fractions of them. The CPU's read bandwidth moves with the rest of the host (a shared VM's by 2x within
 * seconds), so it is also measured right after each measured page, next to that page's decode, and each decode
 * sample is given as a fraction of its own neighbour too. Those probes' buffers are kept out of the peak RSS
 * (Linux: clear_refs 5 resets the high-water mark; elsewhere they are skipped). DSOCR_PROFILE=1 adds per-section
 * device times (stderr). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli/cli.h"
#include "cuda/backend_cuda.h"
#include "engine.h"
#include "figures.h"
#include "hwinfo.h"
#include "ops.h"

#define MAX_REPEAT 1000 /* --repeat at most (issue 8's flat-memory check runs 1,000 requests) */

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsocr bench [options]\n\n"
            "Times whole pages in one warm process and prints JSON (stdout).\n\n"
            "  --model DIR        model folder (default $DSOCR_MODEL, else ./models/deepseek-ocr)\n"
            "  --image FILE       the page (default tests/images/portrait.jpg)\n"
            "  --mode LIST        comma-separated modes (default base,gundam)\n"
            "  --tokens N         tokens generated per page, past end-of-sequence (default 1000)\n"
            "  --repeat N         measured runs per mode (default 3)\n"
            "  --warmup N         unmeasured runs first (default 1)\n"
            "  --device D         cpu, cuda or auto (default auto)\n"
            "  --precision P      bf16 (default), fp32, or f16 (CUDA: fp16 matrix products, fp32 elsewhere)\n"
            "  --quant Q          q8_0 or q4: quantise the decoder's weights at load\n"
            "  --gpu-mem SIZE     GPU memory to use (plan.h: what does not fit stays on the CPU)\n"
            "  --threads N        CPU threads (default all)\n"
            "  --ceilings         also measure what the machine can do, by the same run: CUDA, the card's bf16 GEMM\n"
            "                     rate and copy bandwidth; CPU, fp32 GEMM at the encoder's own shapes and the read\n"
            "                     bandwidth, with the run's thread count (the latter also right after each measured\n"
            "                     page, next to its decode)\n"
            "  --note TEXT        a note copied into the JSON (e.g. the command that ran it)\n");
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
    double t[256];
    if (n <= 0) return 0;
    if (n > 256) n = 256;
    memcpy(t, v, sizeof(double) * (size_t)n);
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void print_samples(const char *name, const double *v, int n, int last) {
    printf("      \"%s\": {\"median\": %.6f, \"samples\": [", name, median(v, n));
    for (int i = 0; i < n; i++) printf("%s%.6f", i ? ", " : "", v[i]);
    printf("]}%s\n", last ? "" : ",");
}

static void json_str(const char *s) {
    putchar('"');
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (len < cap) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    *n = len;
    return buf;
}

/* the process's peak RSS so far, and a reset of it to the current RSS (Linux's clear_refs 5); the reset
 * returns nonzero where it cannot be done */
static long long peak_rss_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (long long)ru.ru_maxrss * 1024;
}
static void note_peak_rss(long long *peak) {
    const long long now = peak_rss_bytes();
    if (now > *peak) *peak = now;
}
static int reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return 1;
    const int bad = fputs("5", f) < 0;
    return fclose(f) || bad;
}

/* the engine's messages (the placement plan) to stderr: stdout is the JSON */
static void bench_log(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "dsocr: %s\n", line);
}

int cli_bench(int argc, char **argv) {
    const char *model_dir = NULL, *image = "tests/images/portrait.jpg", *modes = "base,gundam", *device = "auto";
    const char *precision = "bf16", *note = NULL, *quant = NULL;
    uint64_t gpu_mem = 0;
    int tokens = 1000, repeat = 3, warmup = 1, threads = 0, ceilings = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--model") && more) {
            model_dir = argv[++i];
        } else if (!strcmp(a, "--image") && more) {
            image = argv[++i];
        } else if (!strcmp(a, "--mode") && more) {
            modes = argv[++i];
        } else if (!strcmp(a, "--tokens") && more) {
            tokens = atoi(argv[++i]);
        } else if (!strcmp(a, "--repeat") && more) {
            repeat = atoi(argv[++i]);
        } else if (!strcmp(a, "--warmup") && more) {
            warmup = atoi(argv[++i]);
        } else if (!strcmp(a, "--device") && more) {
            device = argv[++i];
        } else if (!strcmp(a, "--precision") && more) {
            precision = argv[++i];
        } else if (!strcmp(a, "--threads") && more) {
            threads = atoi(argv[++i]);
        } else if (!strcmp(a, "--quant") && more) {
            quant = argv[++i];
        } else if (!strcmp(a, "--gpu-mem") && more) {
            if (cli_gpu_mem("bench", argv[++i], &gpu_mem)) return 2;
        } else if (!strcmp(a, "--note") && more) {
            note = argv[++i];
        } else if (!strcmp(a, "--ceilings")) {
            ceilings = 1;
        } else {
            fprintf(stderr, "dsocr bench: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (tokens < 1 || repeat < 1 || repeat > MAX_REPEAT || warmup < 0 || threads < 0) {
        fprintf(stderr, "dsocr bench: --tokens >= 1, --repeat 1..%d, --warmup >= 0, --threads >= 0\n", MAX_REPEAT);
        return 2;
    }
    DsocrPrecision prec;
    if (!strcmp(precision, "bf16"))
        prec = DSOCR_PRECISION_BF16;
    else if (!strcmp(precision, "fp32"))
        prec = DSOCR_PRECISION_FP32;
    else if (!strcmp(precision, "f16"))
        prec = DSOCR_PRECISION_F16;
    else {
        fprintf(stderr, "dsocr bench: --precision bf16, fp32 or f16\n");
        return 2;
    }
    if (!model_dir) model_dir = cli_default_model_dir();
    size_t img_len = 0;
    void *img = read_file(image, &img_len);
    if (!img) {
        fprintf(stderr, "dsocr bench: cannot read %s\n", image);
        return 1;
    }
    free(img);

    DsocrModelOptions mo;
    dsocr_model_options_default(&mo);
    mo.device = device;
    mo.threads = threads;
    mo.quant = quant;
    mo.gpu_mem = gpu_mem;
    mo.log = bench_log;
    DsocrModel *model = NULL;
    DsocrSession *sess = NULL;
    char err[1024];
    double t_load = ds_now();
    if (dsocr_model_load(model_dir, &mo, &model, err, sizeof err)) {
        fprintf(stderr, "dsocr bench: %s\n", err);
        return 1;
    }
    t_load = ds_now() - t_load;
    if (engine_precision_check(model, prec, err, sizeof err) || dsocr_session_new(model, NULL, &sess, err, sizeof err)) {
        fprintf(stderr, "dsocr bench: %s\n", err);
        dsocr_model_free(model);
        return 1;
    }
    Backend *be = engine_model_backend(model);
    HwInfo hw;
    hwinfo_probe(&hw, 0);
    DsocrDeviceInfo di, di10;
    memset(&di10, 0, sizeof di10);
    dsocr_model_device_info(model, &di);

    printf("{\n  \"what\": \"dsocr bench: whole pages in one warm process (medians of --repeat runs after --warmup)\",\n");
    printf("  \"machine\": {\"cpu\": ");
    json_str(hw.cpu_model);
    printf(", \"cpus\": %d, \"device\": \"%s\", \"gpu\": ", hw.cpus, di.device);
    json_str(di.gpu_name);
    printf("},\n  \"model\": ");
    json_str(model_dir);
    printf(",\n  \"image\": ");
    json_str(image);
    printf(",\n  \"quant\": \"%s\"", quant ? quant : "none");
    printf(",\n  \"precision\": \"%s\", \"tokens\": %d, \"repeat\": %d, \"warmup\": %d,\n", precision, tokens, repeat,
           warmup);
    if (note) {
        printf("  \"note\": ");
        json_str(note);
        printf(",\n");
    }
    printf("  \"load_s\": %.3f,\n  \"runs\": [\n", t_load);
    fflush(stdout);

    const char *rate_mode[16];
    double rate_tflops[16], rate_gbps[16], rate_prefill[16]; /* prefill: TFLOP/s */
    ImageMode rate_im[16];
    int rate_views[16];
    int n_rates = 0;
    double ceil_tf[16] = {0}, adj_ratio[16] = {0}, adj_best = 0;
    /* the read probes next to each decode (CPU --ceilings): where the peak RSS cannot be reset they are skipped */
    const int cpu_ceilings = ceilings && strcmp(di.device, "cuda");
    const int adjacent = cpu_ceilings && reset_peak_rss() == 0;
    const int probe_threads = threads > 0 ? threads : engine_model_threads(model);
    long long engine_peak = 0;
    int rc = 0, first = 1;
    char list[256];
    snprintf(list, sizeof list, "%s", modes);
    for (char *save = NULL, *mode = strtok_r(list, ",", &save); mode; mode = strtok_r(NULL, ",", &save)) {
        static double pre[MAX_REPEAT], vis[MAX_REPEAT], pf[MAX_REPEAT], dec[MAX_REPEAT], tps[MAX_REPEAT],
            page[MAX_REPEAT], adj[MAX_REPEAT];
        int n_prompt = 0, n_tok = 0, n_views = 0;
        for (int r = 0; r < warmup + repeat && !rc; r++) {
            DsocrOcrOptions o;
            dsocr_ocr_options_default(&o);
            o.mode = mode;
            o.max_tokens = tokens;
            o.ignore_eos = 1;
            o.precision = prec;
            DsocrResult res;
            double t0 = ds_now();
            void *bytes = read_file(image, &img_len);
            DsocrStatus st = bytes ? dsocr_ocr(sess, bytes, img_len, &o, &res) : DSOCR_E_IO;
            double dt = ds_now() - t0;
            free(bytes);
            if (st) {
                fprintf(stderr, "dsocr bench: %s: %s\n", mode, bytes ? dsocr_session_error(sess) : "cannot read");
                rc = 1;
                break;
            }
            if (r == warmup - 1 && be->profile_report) be->profile_report(be, stderr); /* drop warm-up sections */
            if (r >= warmup) {
                int k = r - warmup;
                pre[k] = res.seconds_preprocess;
                vis[k] = res.seconds_vision;
                pf[k] = res.seconds_prefill;
                dec[k] = res.seconds_decode;
                tps[k] = res.seconds_decode > 0 ? res.n_tokens / res.seconds_decode : 0;
                page[k] = dt;
                if (adjacent) { /* 512 MiB, best of 3: well past the caches, about 0.1 s */
                    note_peak_rss(&engine_peak);
                    adj[k] = ops_cpu_read_gbps((size_t)512 << 20, probe_threads, 3);
                    if (adj[k] > adj_best) adj_best = adj[k];
                    if (reset_peak_rss()) { /* it worked before: not expected */
                        fprintf(stderr, "dsocr bench: cannot reset the peak RSS after a read probe\n");
                        rc = 1;
                    }
                }
            }
            n_prompt = res.n_prompt;
            n_tok = res.n_tokens;
            n_views = res.n_views;
            dsocr_result_free(&res);
            if (first && r == 9) dsocr_model_device_info(model, &di10); /* after 10 requests: the flatness check */
        }
        if (rc) break;
        if (be->profile_report) {
            fprintf(stderr, "profile: mode %s, %d measured runs\n", mode, repeat);
            be->profile_report(be, stderr);
        }
        printf("%s    {\n      \"mode\": \"%s\", \"views\": %d, \"prompt_tokens\": %d, \"generated\": %d,\n",
               first ? "" : ",\n", mode, n_views, n_prompt, n_tok);
        /* work from the spec's formulas (figures.h): the views' encoder FLOPs (the global view at base_size,
         * tiles at image_size), and the bytes a decode step reads at the run's mean context */
        ImageMode im;
        if (image_mode_by_name(mode, &im) == 0) {
            const ModelConfig *cf = engine_model_config(model);
            double vf = figures_vision_flops(cf, im.base_size) +
                        (n_views - 1) * figures_vision_flops(cf, im.image_size);
            /* bytes per weight as held: bf16, or quant_choose's blocks (Q8_0 34/32; 4-bit experts Q4_0 18/32);
             * per KV element: 2 in bf16, 4 in fp32 and f16 (an fp32 pool) */
            const double wb = quant ? 34.0 / 32 : 2, eb = quant && !strcmp(quant, "q4") ? 18.0 / 32 : wb;
            double db = figures_decode_bytes_split(cf, n_prompt + n_tok / 2, wb, eb, prec == DSOCR_PRECISION_BF16 ? 2 : 4);
            double vs = median(vis, repeat), ts = median(tps, repeat);
            printf("      \"vision_flops\": %.4g, \"vision_tflops\": %.2f, \"decode_bytes_per_token\": %.4g, "
                   "\"decode_gbps\": %.1f,\n",
                   vf, vs > 0 ? vf / vs / 1e12 : 0.0, db, db * ts / 1e9);
            const double pfs = median(pf, repeat);
            if (adjacent && n_rates < 16) { /* each decode sample against the probe right after it */
                double rt[MAX_REPEAT];
                for (int k = 0; k < repeat; k++) rt[k] = adj[k] > 0 ? db * tps[k] / 1e9 / adj[k] : 0;
                adj_ratio[n_rates] = median(rt, repeat);
            }
            if (n_rates < 16) {
                rate_mode[n_rates] = mode;
                rate_im[n_rates] = im;
                rate_views[n_rates] = n_views;
                rate_tflops[n_rates] = vs > 0 ? vf / vs / 1e12 : 0.0;
                rate_prefill[n_rates] = pfs > 0 ? figures_prefill_flops(cf, n_prompt) / pfs / 1e12 : 0.0;
                rate_gbps[n_rates++] = db * ts / 1e9;
            }
        }
        print_samples("preprocess_s", pre, repeat, 0);
        print_samples("vision_s", vis, repeat, 0);
        print_samples("prefill_s", pf, repeat, 0);
        print_samples("decode_s", dec, repeat, 0);
        print_samples("decode_tok_s", tps, repeat, 0);
        print_samples("page_s", page, repeat, !adjacent);
        if (adjacent) print_samples("read_gbps_after_run", adj, repeat, 1);
        printf("    }");
        fflush(stdout);
        first = 0;
    }
    printf("\n  ],\n");
    note_peak_rss(&engine_peak);
    dsocr_model_device_info(model, &di);
    printf("  \"memory\": {\"peak_rss_bytes\": %lld", engine_peak);
    if (!strcmp(di.device, "cuda")) {
        printf(",\n    \"device_allocated_bytes\": %llu, \"device_peak_bytes\": %llu,\n"
               "    \"driver_used_bytes\": %llu, \"driver_context_bytes\": %llu, \"driver_used_minus_context_gib\": "
               "%.3f, \"gpu_total_bytes\": %llu",
               (unsigned long long)di.allocated, (unsigned long long)di.peak, (unsigned long long)di.gpu_used,
               (unsigned long long)di.gpu_baseline, (double)(di.gpu_used - di.gpu_baseline) / (1 << 30),
               (unsigned long long)di.gpu_total);
        /* the plan (plan.h) and whether its budget held: our allocator's peak, and the driver's view less the
         * context (which also holds what cuBLAS and the loaded kernels take outside the allocator) */
        printf(",\n    \"placement\": \"%s\", \"gpu_budget_bytes\": %llu, \"budget_exceeded_allocator\": %s, "
               "\"budget_exceeded_driver_view\": %s",
               di.placement, (unsigned long long)di.gpu_budget, di.peak > di.gpu_budget ? "true" : "false",
               di.gpu_used - di.gpu_baseline > di.gpu_budget ? "true" : "false");
    }
    if (!strcmp(di.device, "cuda") && warmup + repeat >= 10) /* memory after 10 requests, against the end's */
        printf(",\n    \"driver_used_after_10_requests_minus_context_gib\": %.3f, "
               "\"device_allocated_after_10_requests_bytes\": %llu",
               (double)(di10.gpu_used - di10.gpu_baseline) / (1 << 30), (unsigned long long)di10.allocated);
    printf("}");
    if (ceilings && !strcmp(di.device, "cuda")) { /* measured last: their buffers would count in the peaks */
        double tf = 0, gb = 0;
        if (backend_cuda_gemm_ceiling(be, 8192, 10, &tf)) tf = 0;
        if (backend_cuda_copy_ceiling(be, (size_t)1 << 30, 10, &gb)) gb = 0;
        printf(",\n  \"ceilings\": {\"bf16_gemm_8192_tflops\": %.1f, \"copy_gbps_read_plus_write\": %.1f}", tf, gb);
        printf(",\n  \"of_ceilings\": [");
        for (int i = 0; i < n_rates; i++)
            printf("%s\n    {\"mode\": \"%s\", \"vision_of_gemm_ceiling\": %.3f, \"decode_of_copy_ceiling\": %.3f}",
                   i ? "," : "", rate_mode[i], tf > 0 ? rate_tflops[i] / tf : 0.0, gb > 0 ? rate_gbps[i] / gb : 0.0);
        printf("\n  ]");
    }
    if (cpu_ceilings) { /* the CPU's: GEMM at the encoder's own shapes, read bandwidth */
        const int nt = probe_threads;
        const ModelConfig *cf = engine_model_config(model);
        /* the best the run saw: this 1 GiB probe or any of those next to the decodes */
        const double gb_end = ops_cpu_read_gbps((size_t)1 << 30, nt, 5), gb = gb_end > adj_best ? gb_end : adj_best;
        printf(",\n  \"ceilings\": {\"threads\": %d, \"read_gbps\": %.2f, \"read_gbps_at_end\": %.2f, "
               "\"read_probes_after_runs\": %s, \"fp32_gemm_at_encoder_shapes\": [",
               nt, gb, gb_end, adjacent ? "true" : "false");
        const double sq = ops_cpu_sgemm_seconds(2048, 2048, 2048, nt, 3); /* one square product for scale */
        for (int i = 0; i < n_rates; i++) {
            /* the mode's views: the global view at base_size, the tiles at image_size */
            FigGemm g[2 * FIG_VISION_GEMMS];
            int k = figures_vision_gemms(cf, rate_im[i].base_size, g, FIG_VISION_GEMMS);
            if (rate_views[i] > 1) {
                const int kt = figures_vision_gemms(cf, rate_im[i].image_size, g + k, FIG_VISION_GEMMS);
                for (int j = k; j < k + kt; j++) g[j].count *= rate_views[i] - 1;
                k += kt;
            }
            double fl = 0, sec = 0;
            for (int j = 0; j < k; j++) {
                const double s1 = ops_cpu_sgemm_seconds(g[j].M, g[j].K, g[j].N, nt, 3);
                fl += 2.0 * g[j].M * g[j].K * g[j].N * g[j].count;
                sec += s1 * g[j].count;
            }
            ceil_tf[i] = sec > 0 ? fl / sec / 1e12 : 0;
            printf("%s\n    {\"mode\": \"%s\", \"shapes\": %d, \"gflops\": %.1f}", i ? "," : "", rate_mode[i], k,
                   ceil_tf[i] * 1e3);
        }
        printf("\n  ], \"fp32_gemm_2048_gflops\": %.1f}", sq > 0 ? 2.0 * 2048 * 2048 * 2048 / sq / 1e9 : 0.0);
        printf(",\n  \"of_ceilings\": [");
        for (int i = 0; i < n_rates; i++)
            printf("%s\n    {\"mode\": \"%s\", \"vision_of_gemm_ceiling\": %.3f, \"prefill_of_gemm_ceiling\": %.3f, "
                   "\"decode_of_read_ceiling\": %.3f, \"decode_of_read_after_run\": %.3f}",
                   i ? "," : "", rate_mode[i], ceil_tf[i] > 0 ? rate_tflops[i] / ceil_tf[i] : 0.0,
                   ceil_tf[i] > 0 ? rate_prefill[i] / ceil_tf[i] : 0.0, gb > 0 ? rate_gbps[i] / gb : 0.0,
                   adj_ratio[i]);
        printf("\n  ]");
    }
    printf("\n}\n");
    dsocr_session_free(sess);
    dsocr_model_free(model);
    return rc;
}
