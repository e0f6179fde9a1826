/* ocr.c: `dsocr ocr`: images and PDFs (files, folders searched recursively, `-` for a list of paths on stdin)
 * in; without -o the model's raw text streamed to stdout, with -o DIR the outputs of document.h (markdown,
 * JSON, text, raw, drawn pages, crops) written there, resumably. Progress: a bar on stderr when it is a
 * terminal, log lines otherwise. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "document.h"
#include "dump.h"
#include "engine.h"
#include "pagequeue.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: dsocr ocr [options] FILE|FOLDER|- ...\n\n"
            "Runs DeepSeek-OCR on images and PDFs. Without -o, the raw text (grounding tags included) of every\n"
            "page is streamed to stdout; with -o DIR, results are written there (resumable: pages already done\n"
            "are not redone). Folders are searched recursively for PDFs and images; '-' reads paths from stdin,\n"
            "one per line.\n\n"
            "  -o DIR               write results to DIR: NAME.md, NAME.json, ... (see --format)\n"
            "  --format LIST        md,json,txt,raw,boxes,crops (default md,json; md writes the crops it links)\n"
            "  --pages SPEC         PDF pages to process, e.g. 1-3,7,10- (default all)\n"
            "  --dpi N              PDF rendering resolution (default 144)\n"
            "  --force              redo pages whose results are already complete\n"
            "  --retries N          0-2 further attempts for a page that loops or hits the token limit\n"
            "                       (default 2 with -o, 0 when streaming to stdout)\n"
            "  --render-timeout S   seconds a PDF page may take to render (default 60)\n"
            "  --loop-span N        tokens a repetition must cover to count as a loop (default 200)\n"
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
            "  --max-tokens N       new tokens at most per page (default: until the context is full)\n"
            "  --ignore-eos         keep generating past end-of-sequence (turns the loop detector off)\n"
            "  --threads N          CPU threads (default: all cores)\n"
            "  --device D           cpu, cuda, or auto (default: a GPU when there is one, else the CPU)\n"
            "  --precision P        fp32 (default on the CPU), bf16 (the official rounding points) or f16\n"
            "                       (GPU only: fp16 matrix products, fp32 elsewhere, as cards without bf16 run)\n"
            "  --quant Q            quantise the weights at load: q8_0 (the decoder's linear weights and\n"
            "                       lm_head as 8-bit) or q4 (routed experts 4-bit, the rest 8-bit)\n"
            "  --gpu-mem SIZE       GPU memory to use, e.g. 1.5G (default: the free memory less 5 %%); what does not\n"
            "                       fit stays on the CPU (embeddings, routed experts); the plan is printed\n"
            "  --dump DIR           write every stage in the reference's dump format\n"
            "  --force-ids FILE     teacher forcing: feed the ids of this i32 dump (e.g. a reference's\n"
            "                       generated.bin) instead of the model's choices\n"
            "  --force-embeds FILE  feed the decoder these image embeddings (an f32 [slots, hidden] dump,\n"
            "                       e.g. another run's image_embeds.bin; same image, mode and model)\n"
            "                       instead of this run's vision output; vision still runs and dumps\n"
            "  --batch N            decode up to N pages together (continuous batching: a page joins when\n"
            "                       another ends; on a big GPU many times the pages per second of one at a\n"
            "                       time): the pages of a PDF, and with -o several files at once (without -o files\n"
            "                       go one after another). Results and stdout keep page order\n"
            "                       (without -o each page's raw text is printed when it ends, not token by\n"
            "                       token). Not with --dump / --force-ids / --force-embeds\n"
            "  --quiet              no progress on stderr\n");
}

/* ---- inputs ---- */

typedef struct Input {
    char *path;
    char *stem; /* output name under -o: the base name, or the path relative to a folder given, without extension */
} Input;

typedef struct Inputs {
    Input *v;
    int n, cap;
} Inputs;

static int known_ext(const char *name) {
    static const char *E[] = {".pdf", ".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"};
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (size_t i = 0; i < sizeof E / sizeof E[0]; i++)
        if (!strcasecmp(dot, E[i])) return 1;
    return 0;
}

static int stem_used(const Inputs *in, const char *s) {
    for (int i = 0; i < in->n; i++)
        if (!strcmp(in->v[i].stem, s)) return 1;
    return 0;
}

static int add_input(Inputs *in, const char *path, const char *rel) {
    if (in->n == in->cap) {
        int nc = in->cap ? in->cap * 2 : 64;
        Input *nv = realloc(in->v, sizeof *nv * (size_t)nc);
        if (!nv) return -1;
        in->v = nv;
        in->cap = nc;
    }
    char stem[4096];
    snprintf(stem, sizeof stem, "%s", rel);
    char *dot = strrchr(stem, '.'), *sl = strrchr(stem, '/');
    if (dot && (!sl || dot > sl) && dot != stem && (!sl || dot > sl + 1)) *dot = 0;
    char uniq[4200];
    snprintf(uniq, sizeof uniq, "%s", stem);
    for (int k = 2; stem_used(in, uniq); k++) snprintf(uniq, sizeof uniq, "%s-%d", stem, k);
    Input *x = &in->v[in->n];
    if (!(x->path = strdup(path)) || !(x->stem = strdup(uniq))) {
        free(x->path);
        return -1;
    }
    in->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Adds the PDFs and images under dir (sorted, recursive, hidden entries and skip_dir left out). */
static int walk(Inputs *in, const char *dir, const char *rel, const char *skip_dir, int depth) {
    if (depth > 64) return 0;
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "dsocr ocr: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char **names = NULL;
    int n = 0, cap = 0, bad = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, sizeof *nn * (size_t)cap);
            if (!nn) break;
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name))) break;
        n++;
    }
    closedir(d);
    if (n) qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n; i++) {
        char p[4096], r[4096];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        snprintf(r, sizeof r, "%s%s%s", rel, *rel ? "/" : "", names[i]);
        struct stat st;
        if (stat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                char rp[4096];
                if (!(skip_dir && realpath(p, rp) && !strcmp(rp, skip_dir))) bad |= walk(in, p, r, skip_dir, depth + 1);
            } else if (S_ISREG(st.st_mode) && known_ext(names[i])) {
                if (add_input(in, p, r)) bad = 1;
            }
        }
        free(names[i]);
    }
    free(names);
    return bad;
}

static int collect(Inputs *in, const char *arg, const char *skip_dir) {
    struct stat st;
    if (stat(arg, &st)) {
        fprintf(stderr, "dsocr ocr: %s: %s\n", arg, strerror(errno));
        return 1;
    }
    if (S_ISDIR(st.st_mode)) {
        char a[4096];
        snprintf(a, sizeof a, "%s", arg);
        size_t l = strlen(a);
        while (l > 1 && a[l - 1] == '/') a[--l] = 0;
        return walk(in, a, "", skip_dir, 0);
    }
    const char *b = strrchr(arg, '/');
    return add_input(in, arg, b ? b + 1 : arg) ? 1 : 0;
}

/* ---- progress ---- */

typedef struct Prog {
    int tty, quiet, stream;
    int batch; /* --batch: pages print whole at their DONE event */
    int total, done, cached, pages_run, tokens;
    double decode_s, work_s, t0;
    const char *doc;
    int page;
    char stage[80];
    int any_page; /* stream mode: a page was printed */
} Prog;

static void fmt_eta(double s, char *b, size_t n) {
    if (s < 0 || s > 1e7) snprintf(b, n, "?");
    else if (s >= 3600) snprintf(b, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    else if (s >= 60) snprintf(b, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(b, n, "%ds", (int)s);
}

static void draw_bar(Prog *p) {
    if (!p->tty || p->quiet) return;
    int w = 24, fill = p->total ? (int)((long)w * p->done / p->total) : 0;
    char bar[32];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    double rate = p->decode_s > 0 ? p->tokens / p->decode_s : 0;
    char eta[32];
    int left = p->total - p->done;
    fmt_eta(p->pages_run ? p->work_s / p->pages_run * left : -1, eta, sizeof eta);
    const char *b = p->doc ? strrchr(p->doc, '/') : NULL;
    fprintf(stderr, "\r\033[K[%s] %d/%d pages  %.1f tok/s  ETA %s  %.30s p%d %s", bar, p->done, p->total, rate,
            eta, b ? b + 1 : p->doc ? p->doc : "", p->page, p->stage);
    fflush(stderr);
}

static void clear_bar(Prog *p) {
    if (p->tty && !p->quiet) fprintf(stderr, "\r\033[K");
}

static void on_event_locked(void *user, const DocEvent *ev) {
    Prog *p = user;
    p->doc = ev->source;
    p->page = ev->page;
    if (ev->kind == DOC_EV_PAGE_START) {
        p->stage[0] = 0;
        if (p->stream && p->any_page && !p->batch) {
            fputs("\n<--- Page Split --->\n\n", stdout);
            fflush(stdout);
        }
        draw_bar(p);
        return;
    }
    if (ev->kind == DOC_EV_RETRY) {
        clear_bar(p);
        if (!p->quiet) fprintf(stderr, "dsocr: %s page %d: %s\n", ev->source, ev->page, ev->message);
        if (p->stream && !p->batch) fputs("\n<--- Retry --->\n\n", stdout);
        draw_bar(p);
        return;
    }
    p->done++;
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(ev->page_json, "timings");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(tm, "decode");
    if (ev->cached) {
        p->cached++;
    } else {
        p->pages_run++;
        p->work_s += ev->seconds;
        p->tokens += ev->tokens;
        p->decode_s += cJSON_IsNumber(dec) ? dec->valuedouble : 0;
    }
    if (p->stream && p->batch) { /* the page's raw text whole, in page order */
        const cJSON *raw = cJSON_GetObjectItemCaseSensitive(ev->page_json, "raw");
        if (p->any_page) fputs("\n<--- Page Split --->\n\n", stdout);
        if (cJSON_IsString(raw)) fputs(raw->valuestring, stdout);
    }
    if (p->stream) {
        fputs("\n", stdout);
        fflush(stdout);
        p->any_page = 1;
    }
    if (p->quiet) { /* quiet drops progress, never errors */
        if (!strcmp(ev->status, "failed"))
            fprintf(stderr, "dsocr: %s page %d: failed%s%s\n", ev->source, ev->page, ev->message ? ": " : "",
                    ev->message ? ev->message : "");
        return;
    }
    if (p->tty) {
        if (ev->message || strcmp(ev->status, "ok") != 0) {
            clear_bar(p);
            fprintf(stderr, "dsocr: %s page %d: %s%s%s\n", ev->source, ev->page, ev->status, ev->message ? ": " : "",
                    ev->message ? ev->message : "");
        }
        draw_bar(p);
        return;
    }
    if (ev->cached)
        fprintf(stderr, "dsocr: %s page %d/%d: cached (%s)\n", ev->source, ev->page, ev->n_pages, ev->status);
    else
        fprintf(stderr, "dsocr: %s page %d/%d: %s, %d tokens, %.2f s%s%s [%d/%d pages]\n", ev->source, ev->page,
                ev->n_pages, ev->status, ev->tokens, ev->seconds, ev->message ? ": " : "",
                ev->message ? ev->message : "", p->done, p->total);
}

/* Documents may run at once (--batch with -o): their events one at a time */
static pthread_mutex_t g_ev_mu = PTHREAD_MUTEX_INITIALIZER;
static void on_event(void *user, const DocEvent *ev) {
    pthread_mutex_lock(&g_ev_mu);
    on_event_locked(user, ev);
    pthread_mutex_unlock(&g_ev_mu);
}

static void on_progress(void *user, const char *line) {
    Prog *p = user;
    if (p->quiet) return;
    if (p->tty) {
        snprintf(p->stage, sizeof p->stage, "%s", line);
        draw_bar(p);
    } else if (p->stream) {
        fprintf(stderr, "\rdsocr: %-60s", line);
        fflush(stderr);
    }
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

static volatile int g_cancel;

/* --batch with -o: documents run at once on W threads (each its pages through the one queue); the results are
 * taken in input order. */
typedef struct DocRun {
    DsocrStatus st;
    cJSON *js;
    DsError e;
    int done;
} DocRun;
typedef struct DocPool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int next, n;
    DocRun *runs;
    const Inputs *in;
    const DocOptions *d;
    DsocrSession *s;
} DocPool;

/* Input i as a document: its status and JSON into r. */
static void run_one(DsocrSession *s, const DocOptions *d0, const Input *in, DocRun *r) {
    DocOptions d = *d0;
    Document *doc = NULL;
    d.out_stem = in->stem;
    r->js = NULL;
    r->st = document_open(in->path, &d, &doc, &r->e);
    if (!r->st) r->st = document_run(s, doc, &d, &r->js, &r->e);
    document_close(doc);
}

static void *pool_main(void *arg) {
    DocPool *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int i = g_cancel ? p->n : p->next++;
        if (i >= p->n) pthread_cond_broadcast(&p->cv); /* the reader may wait for an input no one will take */
        pthread_mutex_unlock(&p->mu);
        if (i >= p->n) return NULL;
        DocRun r = {0};
        run_one(p->s, p->d, &p->in->v[i], &r);
        pthread_mutex_lock(&p->mu);
        p->runs[i] = r;
        p->runs[i].done = 1;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
}
static void on_sigint(int sig) {
    (void)sig;
    g_cancel = 1;
    signal(SIGINT, SIG_DFL); /* a second ^C ends the process at once */
}

int cli_ocr(int argc, char **argv) {
    DocOptions d;
    document_options_default(&d);
    DsocrOcrOptions *o = &d.ocr;
    const char *model = NULL, *dump = NULL, *force = NULL, *force_emb = NULL, *out_dir = NULL, *formats = NULL;
    int threads = 0, quiet = 0, custom = 0, retries = -1, loop_span = 0, timeout = 0, batch = 1;
    const char *device = "auto", *quant = NULL;
    uint64_t gpu_mem = 0;
    const char **args = calloc((size_t)argc + 1, sizeof *args);
    int n_args = 0;
    if (!args) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED()                                                                                                \
    do {                                                                                                      \
        if (!v) {                                                                                             \
            fprintf(stderr, "dsocr ocr: %s needs a value\n", a);                                              \
            free(args);                                                                                       \
            return 2;                                                                                         \
        }                                                                                                     \
        i++;                                                                                                  \
    } while (0)
#define INT(dst)                                                                                              \
    do {                                                                                                      \
        NEED();                                                                                               \
        if (parse_int(v, &(dst))) {                                                                           \
            fprintf(stderr, "dsocr ocr: %s: '%s' is not a number\n", a, v);                                  \
            free(args);                                                                                       \
            return 2;                                                                                         \
        }                                                                                                     \
    } while (0)
#define BAD(...)                                                                                              \
    do {                                                                                                      \
        fprintf(stderr, "dsocr ocr: " __VA_ARGS__);                                                           \
        fputc('\n', stderr);                                                                                  \
        free(args);                                                                                           \
        return 2;                                                                                             \
    } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(args);
            return 0;
        } else if (!strcmp(a, "--model")) {
            NEED();
            model = v;
        } else if (!strcmp(a, "--mode")) {
            NEED();
            o->mode = v;
        } else if (!strcmp(a, "--base-size")) {
            INT(o->base_size);
            custom = 1;
        } else if (!strcmp(a, "--image-size")) {
            INT(o->image_size);
            custom = 1;
        } else if (!strcmp(a, "--crop-mode")) {
            INT(o->crop_mode);
            custom = 1;
        } else if (!strcmp(a, "--prompt")) {
            NEED();
            o->prompt = v;
        } else if (!strcmp(a, "--compat")) {
            NEED();
            if (!strcmp(v, "hf")) o->compat = DSOCR_COMPAT_HF;
            else if (!strcmp(v, "vllm")) o->compat = DSOCR_COMPAT_VLLM;
            else BAD("--compat must be hf or vllm");
        } else if (!strcmp(a, "--no-repeat-ngram")) {
            INT(o->no_repeat_ngram);
        } else if (!strcmp(a, "--ngram-window")) {
            INT(o->ngram_window);
        } else if (!strcmp(a, "--max-tokens")) {
            INT(o->max_tokens);
        } else if (!strcmp(a, "--ignore-eos")) {
            o->ignore_eos = 1;
        } else if (!strcmp(a, "--threads")) {
            INT(threads);
        } else if (!strcmp(a, "--device")) {
            NEED();
            if (strcmp(v, "cpu") && strcmp(v, "cuda") && strcmp(v, "auto")) BAD("--device must be cpu, cuda or auto");
            device = v;
        } else if (!strcmp(a, "--quant")) {
            NEED();
            if (strcmp(v, "q8_0") && strcmp(v, "q4")) BAD("--quant must be q8_0 or q4");
            quant = v;
        } else if (!strcmp(a, "--gpu-mem")) {
            NEED();
            if (cli_gpu_mem("ocr", v, &gpu_mem)) {
                free(args);
                return 2;
            }
        } else if (!strcmp(a, "--precision")) {
            NEED();
            if (!strcmp(v, "fp32")) o->precision = DSOCR_PRECISION_FP32;
            else if (!strcmp(v, "bf16")) o->precision = DSOCR_PRECISION_BF16;
            else if (!strcmp(v, "f16")) o->precision = DSOCR_PRECISION_F16;
            else BAD("--precision must be fp32, bf16 or f16");
        } else if (!strcmp(a, "--dump")) {
            NEED();
            dump = v;
        } else if (!strcmp(a, "--force-ids")) {
            NEED();
            force = v;
        } else if (!strcmp(a, "--force-embeds")) {
            NEED();
            force_emb = v;
        } else if (!strcmp(a, "--batch")) {
            INT(batch);
            if (batch < 1 || batch > 4096) BAD("--batch must be within 1..4096");
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            NEED();
            out_dir = v;
        } else if (!strcmp(a, "--format")) {
            NEED();
            formats = v;
        } else if (!strcmp(a, "--pages")) {
            NEED();
            d.pages = v;
        } else if (!strcmp(a, "--dpi")) {
            INT(d.dpi);
            if (d.dpi < 18 || d.dpi > 1200) BAD("--dpi must be within 18..1200");
        } else if (!strcmp(a, "--force")) {
            d.force = 1;
        } else if (!strcmp(a, "--retries")) {
            INT(retries);
            if (retries < 0 || retries > 2) BAD("--retries must be 0, 1 or 2");
        } else if (!strcmp(a, "--loop-span")) {
            INT(loop_span);
            if (loop_span < 2) BAD("--loop-span must be at least 2");
        } else if (!strcmp(a, "--render-timeout")) {
            INT(timeout);
            if (timeout < 1) BAD("--render-timeout must be at least 1 second");
        } else if (a[0] == '-' && a[1]) {
            BAD("unexpected argument '%s' (see --help)", a);
        } else {
            args[n_args++] = a;
        }
    }
    if (!n_args) {
        usage(stderr);
        free(args);
        return 2;
    }
    if (custom) {
        if (!o->base_size || !o->image_size) BAD("custom sizes need both --base-size and --image-size");
        o->mode = NULL;
    }
    char err[1024];
    if (formats && document_parse_formats(formats, &d.formats, err, sizeof err)) BAD("--format: %s", err);
    if (formats && !out_dir) BAD("--format needs -o DIR (without it the raw text goes to stdout)");
    if (batch > 1 && (dump || force || force_emb))
        BAD("--dump, --force-ids and --force-embeds run one page at a time: not with --batch");
    {
        ImageMode m;
        if (engine_mode(o, &m, err, sizeof err)) BAD("%s", err);
        if (engine_prompt_text(o->prompt, err, sizeof err)) BAD("unknown prompt \"%s\"", o->prompt);
    }
    if (d.pages) {
        unsigned char one[1];
        char e2[256];
        if (document_parse_pages(d.pages, 1, one, e2, sizeof e2) < 0 && strstr(e2, "bad page")) BAD("%s", e2);
    }
    d.retries = retries >= 0 ? retries : out_dir ? 2 : 0;
    d.loop_stop = out_dir && !o->ignore_eos;
    if (loop_span) d.loop.min_span = loop_span;
    if (timeout) d.pdf.timeout_s = timeout;

    /* inputs */
    char skip[4096], *skip_dir = NULL;
    if (out_dir && realpath(out_dir, skip)) skip_dir = skip;
    Inputs in = {0};
    int rc = 0;
    for (int i = 0; i < n_args; i++) {
        if (strcmp(args[i], "-") != 0) {
            rc |= collect(&in, args[i], skip_dir);
            continue;
        }
        char *line = NULL;
        size_t cap = 0;
        ssize_t l;
        while ((l = getline(&line, &cap, stdin)) > 0) {
            while (l && (line[l - 1] == '\n' || line[l - 1] == '\r')) line[--l] = 0;
            if (l) rc |= collect(&in, line, skip_dir);
        }
        free(line);
    }
    free(args);
    if (!in.n) {
        fprintf(stderr, "dsocr ocr: no PDF or image to process\n");
        free(in.v);
        return 1;
    }
    Prog prog = {.tty = isatty(2), .quiet = quiet, .stream = !out_dir, .t0 = ds_now()};
    if (prog.stream) prog.tty = 0; /* streaming keeps the original one-line progress */

    int32_t *force_ids = NULL;
    int64_t n_force = 0, emb_shape[8] = {0};
    float *emb = NULL;
    int emb_nd = 0;
    DsError e = {0};
    DsocrModel *m = NULL;
    DsocrSession *s = NULL;
    PageQueue *pq = NULL;
    if (force && dump_read_i32(force, &force_ids, &n_force, &e)) {
        fprintf(stderr, "dsocr ocr: %s\n", e.msg);
        rc = 1;
        goto out;
    }
    if (force_emb && dump_read_f32(force_emb, &emb, emb_shape, &emb_nd, &e)) {
        fprintf(stderr, "dsocr ocr: --force-embeds %s\n", e.msg);
        rc = 1;
        goto out;
    }
    if (force_emb && emb_nd != 2) {
        fprintf(stderr, "dsocr ocr: --force-embeds %s: %d dimensions; image embeddings are [slots, hidden]\n",
                force_emb, emb_nd);
        rc = 1;
        goto out;
    }
    EngineDebug dbg = {.dump_dir = dump, .force_ids = force_ids, .n_force = (int)n_force, .force_embeds = emb,
                       .embeds_rows = emb_shape[0], .embeds_cols = emb_shape[1], .embeds_path = force_emb};
    d.dbg = &dbg;

    /* pages to do, for the progress bar (PDFs are listed now; images count one) */
    for (int i = 0; i < in.n; i++) {
        Document *doc = NULL;
        const char *ext = strrchr(in.v[i].path, '.');
        if (!ext || strcasecmp(ext, ".pdf")) {
            prog.total++;
            continue;
        }
        if (document_open(in.v[i].path, &d, &doc, NULL) == DSOCR_OK) {
            int np = document_page_count(doc);
            unsigned char *sel = malloc((size_t)np);
            int k = sel ? document_parse_pages(d.pages, np, sel, err, sizeof err) : -1;
            prog.total += k > 0 ? k : 0;
            free(sel);
            document_close(doc);
        }
    }

    DsocrModelOptions mo;
    dsocr_model_options_default(&mo);
    mo.threads = threads;
    mo.device = device;
    mo.quant = quant;
    mo.gpu_mem = gpu_mem;
    mo.log = log_line;
    if (!model) model = cli_default_model_dir();
    d.model_id = model;
    if (dsocr_model_load(model, &mo, &m, err, sizeof err) ||
        engine_precision_check(m, o->precision, err, sizeof err) || dsocr_session_new(m, NULL, &s, err, sizeof err)) {
        fprintf(stderr, "dsocr ocr: %s\n", err);
        rc = 1;
        goto out;
    }
    const int vllm = o->compat == DSOCR_COMPAT_VLLM;
    int ng = o->no_repeat_ngram >= 0 ? o->no_repeat_ngram : (vllm ? 30 : 20);
    int win = o->ngram_window >= 0 ? o->ngram_window : (vllm ? 90 : 0);
    if (!quiet) {
        fprintf(stderr, "dsocr: profile %s: up to %d tiles, no-repeat %d-grams %s, %s, precision %s\n",
                engine_compat_name(o->compat), vllm ? 6 : 9, ng,
                vllm ? "over the output" : "over prompt and output", vllm ? "alpha on white" : "alpha dropped",
                engine_precision_name(o->precision));
        if (win > 0) fprintf(stderr, "dsocr: n-gram window %d tokens\n", win);
    }
    if (out_dir) {
        if (mkdir(out_dir, 0755) && errno != EEXIST) {
            fprintf(stderr, "dsocr ocr: cannot create %s: %s\n", out_dir, strerror(errno));
            rc = 1;
            goto out;
        }
        d.out_dir = out_dir;
    } else {
        o->on_token = on_token;
    }
    o->on_progress = on_progress;
    o->user = &prog;
    o->cancel = &g_cancel;
    if (batch > 1) { /* pages from every thread go through one queue, decoded together */
        if (pq_start(s, batch, &pq, &e)) {
            fprintf(stderr, "dsocr ocr: %s\n", e.msg);
            rc = 1;
            goto out;
        }
        d.recognize = pq_recognize;
        d.recognize_user = pq;
        d.recognize_error = pq_error;
        d.parallel = batch + 2; /* a page or two rendered and waiting when a row frees */
        o->on_token = NULL;     /* pages print whole at their end (on_event) */
        o->on_progress = NULL;  /* stage lines of many pages at once say nothing */
        prog.batch = 1;
    }
    d.on_event = on_event;
    d.event_user = &prog;
    void (*old)(int) = signal(SIGINT, on_sigint);
    int n_failed_docs = 0, counts[4] = {0};
    /* --batch with -o: up to N documents at once, their pages in flight N + 2 at most in all (DocOptions.slots) */
    DocPool pool = {.n = in.n, .in = &in, .d = &d, .s = s};
    pthread_t *pth = NULL;
    const int n_workers = in.n < batch ? in.n : batch;
    int n_pth = 0;
    sem_t slots;
    if (pq && out_dir && in.n > 1 && (pool.runs = calloc((size_t)in.n, sizeof *pool.runs)) &&
        (pth = calloc((size_t)n_workers, sizeof *pth)) && !sem_init(&slots, 0, (unsigned)d.parallel)) {
        d.slots = &slots;
        pthread_mutex_init(&pool.mu, NULL);
        pthread_cond_init(&pool.cv, NULL);
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, (size_t)2 << 20);
        for (int t = 0; t < n_workers; t++)
            if (!pthread_create(&pth[n_pth], &at, pool_main, &pool)) n_pth++;
        pthread_attr_destroy(&at);
    }
    for (int i = 0; i < in.n && !g_cancel; i++) {
        cJSON *js = NULL;
        DsocrStatus st;
        if (n_pth) { /* the pool's result for input i */
            pthread_mutex_lock(&pool.mu);
            while (!pool.runs[i].done && !(g_cancel && i >= pool.next)) pthread_cond_wait(&pool.cv, &pool.mu);
            int done = pool.runs[i].done;
            pthread_mutex_unlock(&pool.mu);
            if (!done) break;
            st = pool.runs[i].st;
            js = pool.runs[i].js;
            pool.runs[i].js = NULL;
            e = pool.runs[i].e;
        } else {
            DocRun r = {0};
            run_one(s, &d, &in.v[i], &r);
            st = r.st, js = r.js, e = r.e;
        }
        if (st == DSOCR_E_CANCELLED) break;
        if (st) {
            clear_bar(&prog);
            fprintf(stderr, "dsocr ocr: %s\n", e.msg);
            n_failed_docs++;
            rc = 1;
            continue;
        }
        const cJSON *sm = cJSON_GetObjectItemCaseSensitive(js, "summary");
        static const char *K[4] = {"ok", "retried", "incomplete", "failed"};
        for (int k = 0; k < 4; k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(sm, K[k]);
            counts[k] += cJSON_IsNumber(v) ? v->valueint : 0;
        }
        if (prog.stream && !quiet) {
            const cJSON *pg;
            cJSON_ArrayForEach(pg, cJSON_GetObjectItemCaseSensitive(js, "pages")) {
                const cJSON *tk = cJSON_GetObjectItemCaseSensitive(pg, "tokens");
                const cJSON *tm = cJSON_GetObjectItemCaseSensitive(pg, "timings");
#define NUM(o, k) (cJSON_GetObjectItemCaseSensitive(o, k) ? cJSON_GetObjectItemCaseSensitive(o, k)->valuedouble : 0)
                double dec = NUM(tm, "decode");
                fprintf(stderr,
                        "\ndsocr: %d prompt tokens, %d generated; vision %.2fs, prefill %.2fs, decode %.2fs "
                        "(%.1f tok/s); stop: %s; status %s; profile %s\n",
                        (int)NUM(tk, "prompt"), (int)NUM(tk, "generated"), NUM(tm, "vision"), NUM(tm, "prefill"), dec,
                        dec > 0 ? NUM(tk, "generated") / dec : 0.0,
                        cJSON_GetObjectItemCaseSensitive(pg, "stop")->valuestring,
                        cJSON_GetObjectItemCaseSensitive(pg, "status")->valuestring, engine_compat_name(o->compat));
#undef NUM
            }
        }
        cJSON_Delete(js);
    }
    if (n_pth) {
        pthread_mutex_lock(&pool.mu);
        pool.next = pool.n; /* no more documents: the threads finish theirs (cancelled ones quickly) */
        pthread_mutex_unlock(&pool.mu);
        for (int t = 0; t < n_pth; t++) pthread_join(pth[t], NULL);
        for (int i = 0; i < in.n; i++) cJSON_Delete(pool.runs[i].js);
        pthread_mutex_destroy(&pool.mu);
        pthread_cond_destroy(&pool.cv);
    }
    if (d.slots) sem_destroy(d.slots);
    d.slots = NULL;
    free(pool.runs);
    free(pth);
    signal(SIGINT, old);
    clear_bar(&prog);
    if (pq) {
        int np = 0, most = 0;
        pq_stats(pq, &np, &most);
        if (!quiet) fprintf(stderr, "dsocr: batch: %d pages decoded, at most %d at once\n", np, most);
    }
    if (g_cancel) {
        fprintf(stderr, "dsocr ocr: interrupted%s\n", out_dir ? "; run the same command again to resume" : "");
        rc = 130;
    } else if (counts[3]) {
        rc = 1;
    }
    if (!quiet && (out_dir || in.n > 1))
        fprintf(stderr,
                "dsocr: %d document%s, %d pages (%d ok, %d retried, %d incomplete, %d failed; %d cached), "
                "%d document%s could not be read, %.1f s\n",
                in.n, in.n == 1 ? "" : "s", prog.done, counts[0], counts[1], counts[2], counts[3], prog.cached,
                n_failed_docs, n_failed_docs == 1 ? "" : "s", ds_now() - prog.t0);
out:
    pq_stop(pq);
    dsocr_session_free(s);
    dsocr_model_free(m);
    free(force_ids);
    free(emb);
    for (int i = 0; i < in.n; i++) free(in.v[i].path), free(in.v[i].stem);
    free(in.v);
    return rc;
}
