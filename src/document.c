/* document.c: documents page by page: render, recognise with retries, post-process, resumable atomic outputs
 * (contract in document.h). */
#include "document.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "postprocess.h"

#define DOC_MAX_IMAGE_BYTES ((size_t)1 << 30)
#define DOC_MAX_RECORD_BYTES ((size_t)64 << 20)
#define DOC_PAGE_SPLIT "\n\n<--- Page Split --->\n\n"
#define DOC_SCHEMA "dsocr.document.v1"

struct Document {
    char *name;     /* for messages and "source" */
    char *path;     /* the file read (a private temporary copy for buffers holding PDFs) */
    int tmp_path;   /* 1: path is ours to remove */
    PdfDoc *pdf;    /* NULL for images */
    char *bytes;    /* images: the encoded bytes */
    size_t n_bytes;
    long long src_size, src_mtime;
};

void document_options_default(DocOptions *o) {
    memset(o, 0, sizeof *o);
    dsocr_ocr_options_default(&o->ocr);
    o->dpi = 144;
    o->formats = DOC_FMT_DEFAULT;
    o->retries = 2;
    o->loop_stop = 1;
    loop_options_default(&o->loop);
    pdf_options_default(&o->pdf);
}

int document_parse_formats(const char *list, unsigned *out, char *err, size_t n) {
    static const struct {
        const char *name;
        unsigned bit;
    } F[] = {{"md", DOC_FMT_MD},      {"json", DOC_FMT_JSON},   {"txt", DOC_FMT_TXT},
             {"raw", DOC_FMT_RAW},    {"boxes", DOC_FMT_BOXES}, {"crops", DOC_FMT_CROPS}};
    unsigned f = 0;
    const char *p = list ? list : "";
    while (*p) {
        const char *c = strchr(p, ',');
        size_t l = c ? (size_t)(c - p) : strlen(p);
        size_t i;
        for (i = 0; i < sizeof F / sizeof F[0]; i++)
            if (strlen(F[i].name) == l && !strncmp(p, F[i].name, l)) break;
        if (i == sizeof F / sizeof F[0]) {
            snprintf(err, n, "unknown format \"%.*s\" (md, json, txt, raw, boxes, crops)", (int)(l > 40 ? 40 : l), p);
            return -1;
        }
        f |= F[i].bit;
        p += l + (c ? 1 : 0);
    }
    if (!f) {
        snprintf(err, n, "no format given (md, json, txt, raw, boxes, crops)");
        return -1;
    }
    *out = f;
    return 0;
}

int document_parse_pages(const char *spec, int n_pages, unsigned char *sel, char *err, size_t n) {
    memset(sel, 0, (size_t)n_pages);
    if (!spec || !*spec) {
        memset(sel, 1, (size_t)n_pages);
        return n_pages;
    }
    const char *p = spec;
    while (*p) {
        char *end;
        long a, b;
        if (*p < '0' || *p > '9') goto bad;
        a = strtol(p, &end, 10);
        b = a;
        if (*end == '-') {
            if (end[1] >= '0' && end[1] <= '9') b = strtol(end + 1, &end, 10);
            else end++, b = n_pages;
        }
        if (a < 1 || b < a) goto bad;
        for (long k = a; k <= b && k <= n_pages; k++) sel[k - 1] = 1;
        p = end;
        if (*p == ',') p++;
        else if (*p) goto bad;
    }
    int c = 0;
    for (int i = 0; i < n_pages; i++) c += sel[i];
    if (!c) {
        snprintf(err, n, "--pages %s selects no page of a document with %d page%s", spec, n_pages,
                 n_pages == 1 ? "" : "s");
        return -1;
    }
    return c;
bad:
    snprintf(err, n, "bad page selection \"%.60s\" (e.g. 1-3,7,10-)", spec);
    return -1;
}

/* ---- files ---- */

DsocrStatus document_write_file(const char *path, const void *data, size_t len, DsError *e) {
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid()) >= sizeof tmp)
        return ds_fail(e, DSOCR_E_IO, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", path, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int er = errno;
            close(fd);
            unlink(tmp);
            return ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", path, strerror(er));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) || close(fd)) {
        int er = errno;
        unlink(tmp);
        return ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", path, strerror(er));
    }
    if (rename(tmp, path)) {
        int er = errno;
        unlink(tmp);
        return ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", path, strerror(er));
    }
    return DSOCR_OK;
}

/* mkdir -p of path's folders (and of path itself when dir_too). */
static DsocrStatus make_dirs(const char *path, int dir_too, DsError *e) {
    if (ds_mkdirs(path, dir_too))
        return ds_fail(e, DSOCR_E_IO, "cannot create the folders of %s: %s", path, strerror(errno));
    return DSOCR_OK;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- opening ---- */

static DsocrStatus open_common(Document *d, const uint8_t *head, size_t hn, const DocOptions *o, DsError *e) {
    DocOptions def;
    document_options_default(&def);
    if (!o) o = &def;
    if (pdf_sniff(head, hn)) {
        DsocrStatus st = pdf_open(d->path, &o->pdf, &d->pdf, e);
        if (st && d->tmp_path && e) {
            /* messages name the document, not the temporary copy */
            char *at = strstr(e->msg, d->path);
            if (at) {
                char rest[512];
                snprintf(rest, sizeof rest, "%s", at + strlen(d->path));
                snprintf(e->msg, sizeof e->msg, "%s%s", d->name, rest);
            }
        }
        return st;
    }
    if (image_sniff(head, hn) == IMAGE_FMT_UNKNOWN)
        return ds_fail(e, DSOCR_E_IMAGE, "%s: neither a PDF nor an image format dsocr reads (JPEG, PNG, WebP, "
                                         "BMP, GIF, TIFF)", d->name);
    return DSOCR_OK;
}

DsocrStatus document_open(const char *path, const DocOptions *o, Document **out, DsError *e) {
    *out = NULL;
    Document *d = calloc(1, sizeof *d);
    if (!d || !(d->name = strdup(path)) || !(d->path = strdup(path))) {
        document_close(d);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    struct stat st;
    if (stat(path, &st) || !S_ISREG(st.st_mode)) {
        DsocrStatus r = ds_fail(e, DSOCR_E_IO, "%s: %s", path, errno ? strerror(errno) : "not a file");
        document_close(d);
        return r;
    }
    d->src_size = (long long)st.st_size;
    d->src_mtime = (long long)st.st_mtime;
    uint8_t head[1024];
    size_t hn = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        DsocrStatus r = ds_fail(e, DSOCR_E_IO, "%s: %s", path, strerror(errno));
        document_close(d);
        return r;
    }
    hn = fread(head, 1, sizeof head, f);
    fclose(f);
    DsocrStatus r = open_common(d, head, hn, o, e);
    if (!r && !d->pdf) r = ds_read_file(path, DOC_MAX_IMAGE_BYTES, &d->bytes, &d->n_bytes, e);
    if (r) {
        document_close(d);
        return r;
    }
    *out = d;
    return DSOCR_OK;
}

DsocrStatus document_open_buffer(const void *data, size_t len, const char *name, const DocOptions *o,
                                 Document **out, DsError *e) {
    *out = NULL;
    Document *d = calloc(1, sizeof *d);
    if (!d || !(d->name = strdup(name ? name : "upload"))) {
        document_close(d);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    d->src_size = (long long)len;
    uint32_t h = 2166136261u; /* FNV-1a of the bytes stands in for the file time */
    for (size_t i = 0; i < len; i++) h = (h ^ ((const uint8_t *)data)[i]) * 16777619u;
    d->src_mtime = h;
    DsocrStatus r = DSOCR_OK;
    if (pdf_sniff(data, len)) {
        const char *td = getenv("TMPDIR");
        char tmpl[4096];
        snprintf(tmpl, sizeof tmpl, "%s/dsocr-pdf-XXXXXX", td && *td ? td : "/tmp");
        int fd = mkstemp(tmpl);
        if (fd < 0) {
            r = ds_fail(e, DSOCR_E_IO, "cannot create a temporary file in %s: %s", td && *td ? td : "/tmp",
                        strerror(errno));
            goto fail;
        }
        close(fd);
        if (!(d->path = strdup(tmpl))) {
            unlink(tmpl);
            r = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto fail;
        }
        d->tmp_path = 1;
        if ((r = document_write_file(tmpl, data, len, e))) goto fail;
    } else {
        if (!(d->path = strdup(d->name)) || !(d->bytes = malloc(len ? len : 1))) {
            r = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto fail;
        }
        memcpy(d->bytes, data, len);
        d->n_bytes = len;
    }
    if ((r = open_common(d, data, len, o, e))) goto fail;
    *out = d;
    return DSOCR_OK;
fail:
    document_close(d);
    return r;
}

void document_close(Document *d) {
    if (!d) return;
    pdf_close(d->pdf);
    if (d->tmp_path && d->path) unlink(d->path);
    free(d->path);
    free(d->name);
    free(d->bytes);
    free(d);
}

int document_page_count(const Document *d) { return d->pdf ? pdf_page_count(d->pdf) : 1; }
int document_is_pdf(const Document *d) { return d->pdf != NULL; }

/* ---- one page ---- */

typedef struct TokenTap {
    LoopDetector det;
    size_t *off;  /* [n] text length after each token */
    int n, cap;
    size_t text;  /* bytes so far */
    int oom;
    int detect; /* 0: the detector is not consulted */
    const DsocrOcrOptions *user; /* the caller's callback */
} TokenTap;

static int tap_token(void *u, int id, const char *text, size_t len) {
    TokenTap *t = u;
    if (t->n == t->cap) {
        int nc = t->cap ? t->cap * 2 : 1024;
        size_t *no = realloc(t->off, sizeof(size_t) * (size_t)nc);
        if (!no) {
            t->oom = 1;
            return 1;
        }
        t->off = no;
        t->cap = nc;
    }
    t->text += len;
    t->off[t->n++] = t->text;
    int stop = 0;
    if (t->user->on_token) stop = t->user->on_token(t->user->user, id, text, len);
    int lp = t->detect ? loop_push(&t->det, id) : 0;
    if (lp < 0) t->oom = 1;
    return stop || lp != 0;
}

static const char *stop_name(DsocrStop s) {
    switch (s) {
    case DSOCR_STOP_EOS: return "eos";
    case DSOCR_STOP_LENGTH: return "length";
    case DSOCR_STOP_CALLBACK: return "callback";
    case DSOCR_STOP_CANCEL: return "cancel";
    }
    return "none";
}

static int ends_with_eos(const char *t, size_t n) {
    size_t el = strlen(POSTPROCESS_EOS);
    return n >= el && !memcmp(t + n - el, POSTPROCESS_EOS, el);
}

static double ms(double s) { return (double)(long long)(s * 1000.0 + 0.5) / 1000.0; }

typedef struct Ctx {
    DsocrSession *s;
    Document *d;
    const DocOptions *o;
    pthread_mutex_t *mu;     /* parallel pages: events one at a time; NULL: one thread */
    pthread_mutex_t *pdf_mu; /* parallel pages: the PDF renderer one page at a time; NULL: one thread */
    char fingerprint[2048];
    char stem_base[512];  /* basename of the stem: crop names */
    char pages_dir[4200]; /* out_dir/stem.pages */
    char images_dir[4200];
} Ctx;

static cJSON *box_json(PpBox b) {
    int v[4] = {b.x1, b.y1, b.x2, b.y2};
    return cJSON_CreateIntArray(v, 4);
}

static void cancelled_check(const DocOptions *o, int *c) { *c = o->ocr.cancel && *o->ocr.cancel; }

/* A failed page's object. */
static cJSON *failed_page(int page, const char *msg, double t_render, double t0) {
    cJSON *p = cJSON_CreateObject();
    cJSON_AddNumberToObject(p, "page", page);
    cJSON_AddNumberToObject(p, "width", 0);
    cJSON_AddNumberToObject(p, "height", 0);
    cJSON_AddStringToObject(p, "status", "failed");
    cJSON_AddStringToObject(p, "error", msg);
    cJSON_AddStringToObject(p, "stop", "none");
    cJSON_AddItemToObject(p, "attempts", cJSON_CreateArray());
    cJSON_AddStringToObject(p, "raw", "");
    cJSON_AddStringToObject(p, "markdown", "");
    cJSON_AddStringToObject(p, "text", "");
    cJSON_AddItemToObject(p, "blocks", cJSON_CreateArray());
    cJSON *tk = cJSON_AddObjectToObject(p, "tokens");
    cJSON_AddNumberToObject(tk, "prompt", 0);
    cJSON_AddNumberToObject(tk, "generated", 0);
    cJSON *tm = cJSON_AddObjectToObject(p, "timings");
    cJSON_AddNumberToObject(tm, "render", ms(t_render));
    cJSON_AddNumberToObject(tm, "vision", 0);
    cJSON_AddNumberToObject(tm, "prefill", 0);
    cJSON_AddNumberToObject(tm, "decode", 0);
    cJSON_AddNumberToObject(tm, "total", ms(ds_now() - t0));
    return p;
}

static void emit(const Ctx *c, DocEvent *ev) {
    if (!c->o->on_event) return;
    if (c->mu) pthread_mutex_lock(c->mu);
    c->o->on_event(c->o->event_user, ev);
    if (c->mu) pthread_mutex_unlock(c->mu);
}

/* Recognises one page into *pj (status failed on a page-level problem). Returns non-OK only for cancellation,
 * an unwritable output, or no memory. */
static DsocrStatus do_page(Ctx *c, int page, const DocEvent *evbase, cJSON **pj, int *n_tok, DsError *e) {
    const DocOptions *o = c->o;
    double t0 = ds_now(), t_render = 0;
    char *png = NULL;
    const uint8_t *bytes;
    size_t len;
    DsError pe = {0};
    *pj = NULL;
    *n_tok = 0;
    if (c->d->pdf) {
        if (c->pdf_mu) pthread_mutex_lock(c->pdf_mu);
        int bad = pdf_render(c->d->pdf, page, o->dpi, &png, &len, &pe);
        if (c->pdf_mu) pthread_mutex_unlock(c->pdf_mu);
        if (bad) {
            *pj = failed_page(page, pe.msg, ds_now() - t0, t0);
            return *pj ? DSOCR_OK : ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        }
        bytes = (const uint8_t *)png;
        t_render = ds_now() - t0;
    } else {
        bytes = (const uint8_t *)c->d->bytes;
        len = c->d->n_bytes;
    }
    DsImage img = {0};
    ImageDecodeOptions dopt = {.alpha_white = o->ocr.compat == DSOCR_COMPAT_VLLM};
    if (image_decode(bytes, len, &dopt, &img, &pe)) {
        free(png);
        *pj = failed_page(page, pe.msg, t_render, t0);
        return *pj ? DSOCR_OK : ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    const int forced = o->dbg && (o->dbg->n_force > 0 || o->dbg->force_embeds); /* debugging runs: no retries */
    const int vllm = o->ocr.compat == DSOCR_COMPAT_VLLM;
    const int ng0 = o->ocr.no_repeat_ngram >= 0 ? o->ocr.no_repeat_ngram : (vllm ? 30 : 20);
    const int win0 = o->ocr.ngram_window >= 0 ? o->ocr.ngram_window : (vllm ? 90 : 0);
    const int ng1 = ng0 > 0 ? (ng0 / 2 > 4 ? ng0 / 2 : 4) : 12;
    ImageMode m0;
    char msg[512];
    engine_mode(&o->ocr, &m0, msg, sizeof msg);
    const char *other_mode = m0.crop_mode ? "base" : "gundam";
    int attempts = forced ? 1 : 1 + (o->retries < 0 ? 0 : o->retries > 2 ? 2 : o->retries);

    cJSON *att = cJSON_CreateArray();
    DsocrResult best = {0};
    int have_best = 0, best_att = -1, best_complete = 0, best_looped = 0;
    size_t best_len = 0;
    long best_useful = -1;
    double tv = 0, tp = 0, td = 0;
    int n_prompt = 0;
    DsocrStatus st = DSOCR_OK;
    for (int a = 0; a < attempts; a++) {
        DsocrOcrOptions oo = o->ocr;
        int ng = ng0, win = win0;
        if (a >= 1) ng = ng1, win = 0;
        oo.no_repeat_ngram = ng;
        oo.ngram_window = win;
        if (a == 2) oo.mode = other_mode;
        TokenTap tap = {.user = &o->ocr, .detect = o->loop_stop};
        loop_init(&tap.det, &o->loop);
        oo.on_token = tap_token;
        oo.user = &tap;
        DsocrResult r;
        DsocrStatus rs = o->recognize ? o->recognize(o->recognize_user, c->s, bytes, len, &oo, o->dbg, &r)
                                      : engine_ocr(c->s, bytes, len, &oo, o->dbg, &r);
        if (rs || tap.oom) {
            if (!rs) dsocr_result_free(&r);
            loop_free(&tap.det);
            free(tap.off);
            if (rs == DSOCR_E_CANCELLED || (o->ocr.cancel && *o->ocr.cancel)) {
                st = ds_fail(e, DSOCR_E_CANCELLED, "cancelled");
                break;
            }
            if (rs == DSOCR_E_NOMEM || tap.oom) {
                st = ds_fail(e, DSOCR_E_NOMEM, "%s page %d: out of memory", c->d->name, page);
                break;
            }
            if (have_best) break; /* keep what an earlier attempt gave */
            cJSON_Delete(att);
            att = NULL;
            *pj = failed_page(page,
                              o->recognize_error ? o->recognize_error(o->recognize_user)
                              : c->s             ? dsocr_session_error(c->s)
                                                 : "recognition failed",
                              t_render, t0);
            break;
        }
        if (r.stop == DSOCR_STOP_CANCEL) {
            dsocr_result_free(&r);
            loop_free(&tap.det);
            free(tap.off);
            st = ds_fail(e, DSOCR_E_CANCELLED, "cancelled");
            break;
        }
        tv += r.seconds_vision, tp += r.seconds_prefill, td += r.seconds_decode;
        n_prompt = r.n_prompt;
        *n_tok += r.n_tokens;
        const int looped = tap.det.looped;
        const int eos = r.stop == DSOCR_STOP_EOS || (forced && ends_with_eos(r.text, r.text_len));
        const int complete = eos && !looped;
        long useful = r.n_tokens;
        size_t keep = r.text_len;
        if (looped) {
            int cut = tap.det.start + tap.det.period;
            if (cut > r.n_tokens) cut = r.n_tokens;
            useful = cut;
            keep = cut > 0 && cut <= tap.n ? tap.off[cut - 1] : 0;
            if (keep > r.text_len) keep = r.text_len;
        }
        cJSON *aj = cJSON_CreateObject();
        cJSON_AddStringToObject(aj, "mode", oo.mode ? oo.mode : "custom");
        cJSON_AddNumberToObject(aj, "no_repeat_ngram", ng);
        cJSON_AddNumberToObject(aj, "ngram_window", win);
        cJSON_AddNumberToObject(aj, "tokens", r.n_tokens);
        cJSON_AddStringToObject(aj, "stop", looped ? "loop" : eos ? "eos" : stop_name(r.stop));
        if (looped) {
            cJSON_AddNumberToObject(aj, "loop_period", tap.det.period);
            cJSON_AddNumberToObject(aj, "loop_start", tap.det.start);
        }
        cJSON_AddItemToArray(att, aj);
        loop_free(&tap.det);
        free(tap.off);
        const int got = r.n_tokens;
        if (!have_best || complete || useful > best_useful) {
            if (have_best) dsocr_result_free(&best);
            best = r;
            have_best = 1;
            best_att = a;
            best_complete = complete;
            best_looped = looped;
            best_len = keep;
            best_useful = useful;
        } else {
            dsocr_result_free(&r);
        }
        if (complete) break;
        if (a + 1 < attempts) {
            DocEvent ev = *evbase;
            ev.kind = DOC_EV_RETRY;
            snprintf(msg, sizeof msg, "%s after %d tokens; attempt %d: no-repeat %d-grams%s%s",
                     looped ? "loop" : "token limit", got, a + 2, ng1, a + 1 == 2 ? ", mode " : "",
                     a + 1 == 2 ? other_mode : "");
            ev.message = msg;
            emit(c, &ev);
        }
    }
    free(png);
    png = NULL;
    if (st || !have_best) {
        if (have_best) dsocr_result_free(&best);
        cJSON_Delete(att);
        image_free(&img);
        if (!st && !*pj) st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        return st;
    }
    /* post-processing */
    size_t s0, tl = postprocess_trim(best.text, best_len, &s0);
    PpOptions ppo = {.width = img.w, .height = img.h, .image_prefix = c->stem_base, .page = page};
    PpPage pp;
    if ((st = postprocess_page(best.text + s0, tl, &ppo, &pp, e))) {
        dsocr_result_free(&best);
        cJSON_Delete(att);
        image_free(&img);
        return st;
    }
    const char *status = best_complete ? (best_att == 0 ? "ok" : "retried") : "incomplete";
    (void)best_looped;
    cJSON *p = cJSON_CreateObject();
    cJSON_AddNumberToObject(p, "page", page);
    cJSON_AddNumberToObject(p, "width", img.w);
    cJSON_AddNumberToObject(p, "height", img.h);
    cJSON_AddStringToObject(p, "status", status);
    cJSON_AddNullToObject(p, "error");
    cJSON *last = cJSON_GetArrayItem(att, best_att);
    cJSON_AddStringToObject(p, "stop", cJSON_GetObjectItem(last, "stop")->valuestring);
    cJSON_AddItemToObject(p, "attempts", att);
    char *rawc = strndup(best.text + s0, tl);
    cJSON_AddStringToObject(p, "raw", rawc ? rawc : "");
    free(rawc);
    cJSON_AddStringToObject(p, "markdown", pp.markdown);
    cJSON_AddStringToObject(p, "text", pp.text);
    cJSON *blocks = cJSON_AddArrayToObject(p, "blocks");
    const int want_crops = o->out_dir && (o->formats & (DOC_FMT_CROPS | DOC_FMT_MD));
    for (int i = 0; i < pp.n_blocks && !st; i++) {
        const PpBlock *b = &pp.blocks[i];
        cJSON *bj = cJSON_CreateObject();
        cJSON_AddStringToObject(bj, "label", b->label);
        if (b->n_boxes) {
            PpBox u = b->boxes[0];
            for (int k = 1; k < b->n_boxes; k++) {
                if (b->boxes[k].x1 < u.x1) u.x1 = b->boxes[k].x1;
                if (b->boxes[k].y1 < u.y1) u.y1 = b->boxes[k].y1;
                if (b->boxes[k].x2 > u.x2) u.x2 = b->boxes[k].x2;
                if (b->boxes[k].y2 > u.y2) u.y2 = b->boxes[k].y2;
            }
            cJSON_AddItemToObject(bj, "box", box_json(u));
        } else {
            cJSON_AddNullToObject(bj, "box");
        }
        cJSON *bx = cJSON_AddArrayToObject(bj, "boxes");
        for (int k = 0; k < b->n_boxes; k++) cJSON_AddItemToArray(bx, box_json(b->boxes[k]));
        cJSON_AddStringToObject(bj, "text", b->text);
        cJSON *cr = cJSON_AddArrayToObject(bj, "crops");
        for (int k = 0; b->is_image && k < b->n_boxes && !st; k++) {
            char name[600], path[5000];
            postprocess_crop_name(c->stem_base, page, b->first_crop + k, name, sizeof name);
            char rel[700];
            snprintf(rel, sizeof rel, "images/%s", name);
            cJSON_AddItemToArray(cr, cJSON_CreateString(rel));
            if (!want_crops) continue;
            snprintf(path, sizeof path, "%s/%s", c->images_dir, name);
            DsImage crop = {0};
            unsigned char *jpg = NULL;
            size_t jl = 0;
            if (!(st = postprocess_crop(&img, b->boxes[k], &crop, e)) && !(st = postprocess_jpeg(&crop, 90, &jpg, &jl, e)))
                st = document_write_file(path, jpg, jl, e);
            free(jpg);
            image_free(&crop);
        }
        cJSON_AddItemToArray(blocks, bj);
    }
    if (!st && o->out_dir && (o->formats & DOC_FMT_BOXES)) {
        char path[5000];
        snprintf(path, sizeof path, "%s/%04d-boxes.jpg", c->pages_dir, page);
        DsImage drawn = {0};
        unsigned char *jpg = NULL;
        size_t jl = 0;
        if (!(st = postprocess_draw(&img, &pp, &drawn, e)) && !(st = postprocess_jpeg(&drawn, 85, &jpg, &jl, e)))
            st = document_write_file(path, jpg, jl, e);
        free(jpg);
        image_free(&drawn);
    }
    cJSON *tk = cJSON_AddObjectToObject(p, "tokens");
    cJSON_AddNumberToObject(tk, "prompt", n_prompt);
    cJSON_AddNumberToObject(tk, "generated", *n_tok);
    cJSON *tm = cJSON_AddObjectToObject(p, "timings");
    cJSON_AddNumberToObject(tm, "render", ms(t_render));
    cJSON_AddNumberToObject(tm, "vision", ms(tv));
    cJSON_AddNumberToObject(tm, "prefill", ms(tp));
    cJSON_AddNumberToObject(tm, "decode", ms(td));
    cJSON_AddNumberToObject(tm, "total", ms(ds_now() - t0));
    postprocess_page_free(&pp);
    dsocr_result_free(&best);
    image_free(&img);
    if (st) {
        cJSON_Delete(p);
        return st;
    }
    *pj = p;
    return DSOCR_OK;
}

/* A complete earlier result for page, or NULL. */
static cJSON *cached_page(const Ctx *c, int page) {
    char path[5000];
    snprintf(path, sizeof path, "%s/%04d.json", c->pages_dir, page);
    char *txt = NULL;
    size_t n;
    if (ds_read_file(path, DOC_MAX_RECORD_BYTES, &txt, &n, NULL)) return NULL;
    cJSON *rec = cJSON_ParseWithLength(txt, n);
    free(txt);
    if (!rec) return NULL;
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(rec, "fingerprint");
    cJSON *p = cJSON_DetachItemFromObjectCaseSensitive(rec, "page");
    cJSON_bool fp_ok = cJSON_IsString(fp) && !strcmp(fp->valuestring, c->fingerprint);
    cJSON_Delete(rec);
    if (!fp_ok || !cJSON_IsObject(p)) goto no;
    const cJSON *pg = cJSON_GetObjectItemCaseSensitive(p, "page");
    const cJSON *stt = cJSON_GetObjectItemCaseSensitive(p, "status");
    if (!cJSON_IsNumber(pg) || pg->valueint != page || !cJSON_IsString(stt) || !strcmp(stt->valuestring, "failed"))
        goto no;
    if (c->o->formats & DOC_FMT_BOXES) {
        snprintf(path, sizeof path, "%s/%04d-boxes.jpg", c->pages_dir, page);
        if (!file_exists(path)) goto no;
    }
    if (c->o->formats & (DOC_FMT_CROPS | DOC_FMT_MD)) {
        const cJSON *b, *blocks = cJSON_GetObjectItemCaseSensitive(p, "blocks");
        cJSON_ArrayForEach(b, blocks) {
            const cJSON *cr, *crops = cJSON_GetObjectItemCaseSensitive(b, "crops");
            cJSON_ArrayForEach(cr, crops) {
                if (!cJSON_IsString(cr) || strncmp(cr->valuestring, "images/", 7)) goto no;
                snprintf(path, sizeof path, "%s/%s", c->images_dir, cr->valuestring + 7);
                if (!file_exists(path)) goto no;
            }
        }
    }
    return p;
no:
    cJSON_Delete(p);
    return NULL;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* The page object of page pg: from the records on disk (out_dir) or from memory. Caller deletes. */
static cJSON *load_page(const Ctx *c, const cJSON *mem, int pg) {
    if (!c->o->out_dir) return cJSON_Duplicate(mem, 1);
    char path[5000];
    snprintf(path, sizeof path, "%s/%04d.json", c->pages_dir, pg);
    char *txt = NULL;
    size_t n;
    if (ds_read_file(path, DOC_MAX_RECORD_BYTES, &txt, &n, NULL)) return NULL;
    cJSON *rec = cJSON_ParseWithLength(txt, n);
    free(txt);
    cJSON *p = rec ? cJSON_DetachItemFromObjectCaseSensitive(rec, "page") : NULL;
    cJSON_Delete(rec);
    return p;
}

/* A file written piece by piece to a temporary name, renamed when complete. */
typedef struct Sink {
    FILE *f;
    char path[4200], tmp[4300];
} Sink;

static DsocrStatus sink_open(Sink *k, const char *path, DsError *e) {
    snprintf(k->path, sizeof k->path, "%s", path);
    snprintf(k->tmp, sizeof k->tmp, "%s.tmp%ld", path, (long)getpid());
    k->f = fopen(k->tmp, "wb");
    return k->f ? DSOCR_OK : ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", path, strerror(errno));
}

static DsocrStatus sink_close(Sink *k, int ok, DsError *e) {
    if (!k->f) return DSOCR_OK;
    int bad = ferror(k->f) || fflush(k->f) || fsync(fileno(k->f));
    bad |= fclose(k->f) != 0;
    k->f = NULL;
    if (!ok || bad || rename(k->tmp, k->path)) {
        unlink(k->tmp);
        return ok ? ds_fail(e, DSOCR_E_IO, "cannot write %s: %s", k->path, strerror(errno)) : DSOCR_OK;
    }
    return DSOCR_OK;
}

/* Writes the per-document files from the page objects, one page in memory at a time. */
static DsocrStatus assemble(const Ctx *c, cJSON *doc, const cJSON *pages, DsError *e) {
    const DocOptions *o = c->o;
    static const struct {
        unsigned fmt;
        const char *ext, *key, *sep;
    } J[] = {{DOC_FMT_MD, "md", "markdown", DOC_PAGE_SPLIT},
             {DOC_FMT_RAW, "raw.md", "raw", DOC_PAGE_SPLIT},
             {DOC_FMT_TXT, "txt", "text", "\n\f\n"},
             {DOC_FMT_JSON, "json", NULL, ","}};
    Sink k[4] = {0};
    DsocrStatus st = DSOCR_OK;
    char *head = NULL, *tail = NULL;
    for (int j = 0; j < 4 && !st; j++) {
        if (!(o->formats & J[j].fmt)) continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s.%s", o->out_dir, o->out_stem, J[j].ext);
        st = sink_open(&k[j], path, e);
    }
    if (!st && k[3].f) { /* the document object with its pages array spliced in */
        cJSON *shell = cJSON_Duplicate(doc, 1);
        if (shell) cJSON_ReplaceItemInObjectCaseSensitive(shell, "pages", cJSON_CreateArray());
        char *txt = shell ? cJSON_PrintUnformatted(shell) : NULL;
        cJSON_Delete(shell);
        char *at = txt ? strstr(txt, "\"pages\":[]") : NULL;
        if (!at) {
            free(txt);
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        } else {
            at += strlen("\"pages\":[");
            tail = strdup(at);
            *at = 0;
            head = txt;
            fputs(head, k[3].f);
        }
    }
    const cJSON *stub;
    int first = 1;
    cJSON_ArrayForEach(stub, pages) {
        if (st) break;
        const cJSON *pgn = cJSON_GetObjectItemCaseSensitive(stub, "page");
        cJSON *p = load_page(c, stub, pgn ? pgn->valueint : 0);
        if (!p) {
            st = ds_fail(e, DSOCR_E_IO, "%s: the record of page %d cannot be read back", c->d->name,
                         pgn ? pgn->valueint : 0);
            break;
        }
        for (int j = 0; j < 3; j++) {
            if (!k[j].f) continue;
            if (!first) fputs(J[j].sep, k[j].f);
            if (j == 0 && !strcmp(jstr(p, "status"), "failed"))
                fprintf(k[j].f, "<!-- page %d failed: %.600s -->", pgn->valueint, jstr(p, "error"));
            else
                fputs(jstr(p, J[j].key), k[j].f);
        }
        if (k[3].f) {
            char *t = cJSON_PrintUnformatted(p);
            if (!t) st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            else fprintf(k[3].f, "%s%s", first ? "" : ",", t);
            free(t);
        }
        cJSON_Delete(p);
        first = 0;
    }
    for (int j = 0; j < 3; j++)
        if (k[j].f) fputs("\n", k[j].f);
    if (k[3].f && tail) fputs(tail, k[3].f);
    for (int j = 0; j < 4; j++) {
        DsocrStatus s2 = sink_close(&k[j], !st, e);
        if (!st) st = s2;
    }
    free(head);
    free(tail);
    return st;
}

/* A finished page's record (out_dir/S.pages/NNNN.json): the fingerprint and the page object. */
static DsocrStatus write_record(const Ctx *c, int pg, cJSON *pj, DsError *e) {
    cJSON *rec = cJSON_CreateObject();
    cJSON_AddStringToObject(rec, "fingerprint", c->fingerprint);
    cJSON_AddItemReferenceToObject(rec, "page", pj);
    char *txt = cJSON_Print(rec);
    cJSON_Delete(rec);
    char path[5000];
    snprintf(path, sizeof path, "%s/%04d.json", c->pages_dir, pg);
    DsocrStatus st = txt ? document_write_file(path, txt, strlen(txt), e) : ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    free(txt);
    return st;
}

/* ---- pages in flight at once (DocOptions.parallel) ---- */

typedef struct ParPage {
    int page, cached, n_tok, done;
    cJSON *pj;
    double t0;
    DsocrStatus st;
    DsError e;
} ParPage;

typedef struct Par {
    Ctx *c;
    pthread_mutex_t mu; /* the pages' states; c->mu is ev_mu, c->pdf_mu pdf_mu */
    pthread_mutex_t ev_mu, pdf_mu;
    pthread_cond_t cv;
    ParPage *pp; /* [n] the selected pages in order */
    int n, next, stop, n_threads;
    pthread_t *th;
} Par;

static void *par_main(void *arg) {
    Par *p = arg;
    Ctx *c = p->c;
    sem_t *slots = c->o->slots;
    for (;;) {
        if (slots)
            while (sem_wait(slots) && errno == EINTR) {
            }
        pthread_mutex_lock(&p->mu);
        int cancel;
        cancelled_check(c->o, &cancel);
        if (p->stop || cancel || p->next >= p->n) {
            if (cancel) p->stop = 1; /* the pages not taken end as cancelled (par_wait) */
            pthread_cond_broadcast(&p->cv);
            pthread_mutex_unlock(&p->mu);
            if (slots) sem_post(slots);
            return NULL;
        }
        ParPage *q = &p->pp[p->next];
        DocEvent ev = {.source = c->d->name, .page = q->page, .index = p->next, .n_pages = p->n};
        p->next++;
        pthread_mutex_unlock(&p->mu);
        q->t0 = ds_now();
        cJSON *pj = c->o->out_dir && !c->o->force ? cached_page(c, q->page) : NULL;
        int n_tok = 0, cached = pj != NULL;
        DsocrStatus st = DSOCR_OK;
        DsError e = {0};
        if (!pj) {
            ev.kind = DOC_EV_PAGE_START;
            emit(c, &ev);
            st = do_page(c, q->page, &ev, &pj, &n_tok, &e);
            if (!st && c->o->out_dir) st = write_record(c, q->page, pj, &e);
        }
        if (slots) sem_post(slots);
        pthread_mutex_lock(&p->mu);
        q->pj = pj;
        q->cached = cached;
        q->n_tok = n_tok;
        q->st = st;
        q->e = e;
        q->done = 1;
        if (st) p->stop = 1;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
}

/* Frees p once no page thread runs (pages not taken by the caller are dropped: their records are on disk). */
static void par_free(Par *p) {
    p->c->mu = p->c->pdf_mu = NULL;
    for (int i = 0; i < p->n; i++) cJSON_Delete(p->pp[i].pj);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->ev_mu);
    pthread_mutex_destroy(&p->pdf_mu);
    pthread_cond_destroy(&p->cv);
    free(p->pp);
    free(p->th);
}

/* Starts min(parallel, n_sel) page threads over the selected pages. */
static DsocrStatus par_start(Par *p, Ctx *c, const unsigned char *sel, int n_pages, int n_sel, DsError *e) {
    memset(p, 0, sizeof *p);
    p->c = c;
    p->n = n_sel;
    p->pp = calloc((size_t)n_sel, sizeof *p->pp);
    int nt = c->o->parallel < n_sel ? c->o->parallel : n_sel;
    p->th = calloc((size_t)nt, sizeof *p->th);
    if (!p->pp || !p->th) {
        free(p->pp);
        free(p->th);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    for (int pg = 1, k = 0; pg <= n_pages; pg++)
        if (sel[pg - 1]) p->pp[k++].page = pg;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->ev_mu, NULL);
    pthread_mutex_init(&p->pdf_mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    c->mu = &p->ev_mu;
    c->pdf_mu = &p->pdf_mu;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, (size_t)2 << 20);
    for (int i = 0; i < nt; i++) {
        if (pthread_create(&p->th[i], &at, par_main, p)) break;
        p->n_threads++;
    }
    pthread_attr_destroy(&at);
    if (!p->n_threads) {
        par_free(p);
        return ds_fail(e, DSOCR_E_NOMEM, "cannot start page threads");
    }
    return DSOCR_OK;
}

/* Waits for the k-th selected page; its object (the caller's), or the failure that stopped its thread. */
static DsocrStatus par_wait(Par *p, int k, cJSON **pj, int *cached, int *n_tok, double *t0, DsError *e) {
    pthread_mutex_lock(&p->mu);
    while (!p->pp[k].done && !(p->stop && k >= p->next)) pthread_cond_wait(&p->cv, &p->mu);
    ParPage *q = &p->pp[k];
    DsocrStatus st = DSOCR_OK;
    if (!q->done) { /* never started: pages are taken in order, so the threads stopped at a cancellation (a failed
                       page stops them too, but the caller meets that page first) */
        st = ds_fail(e, DSOCR_E_CANCELLED, "cancelled");
    } else if (q->st) {
        st = q->st;
        *e = q->e;
    } else {
        *pj = q->pj;
        q->pj = NULL;
        *cached = q->cached;
        *n_tok = q->n_tok;
        *t0 = q->t0;
    }
    if (st) p->stop = 1;
    pthread_mutex_unlock(&p->mu);
    return st;
}

/* Stops taking pages, joins the threads (pages in flight finish; their records are written) and frees the rest. */
static void par_end(Par *p) {
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads; i++) pthread_join(p->th[i], NULL);
    par_free(p);
}

DsocrStatus document_run(DsocrSession *s, Document *d, const DocOptions *o, cJSON **json, DsError *e) {
    if (json) *json = NULL;
    DocOptions def;
    document_options_default(&def);
    if (!o) o = &def;
    if (o->out_dir && (!o->out_stem || !*o->out_stem))
        return ds_fail(e, DSOCR_E_INVALID_ARG, "an output folder needs a document stem");
    if (o->dpi < 18 || o->dpi > 1200) return ds_fail(e, DSOCR_E_INVALID_ARG, "--dpi %d is outside 18..1200", o->dpi);
    ImageMode m0;
    char msg[512];
    if (engine_mode(&o->ocr, &m0, msg, sizeof msg)) return ds_fail(e, DSOCR_E_INVALID_ARG, "%s", msg);
    const int n_pages = document_page_count(d);
    unsigned char *sel = malloc((size_t)n_pages);
    if (!sel) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    int n_sel = document_parse_pages(d->pdf ? o->pages : NULL, n_pages, sel, msg, sizeof msg);
    if (n_sel < 0) {
        free(sel);
        return ds_fail(e, DSOCR_E_INVALID_ARG, "%s: %s", d->name, msg);
    }
    Ctx c = {.s = s, .d = d, .o = o};
    const int vllm = o->ocr.compat == DSOCR_COMPAT_VLLM;
    snprintf(c.fingerprint, sizeof c.fingerprint,
             "v1 mode=%d/%d/%d prompt=%s compat=%s max=%d eos=%d ngram=%d window=%d precision=%d dpi=%d "
             "retries=%d loop=%d/%d/%d/%.4f forced=%d%s%s model=%s source=%lld/%lld",
             m0.base_size, m0.image_size, m0.crop_mode, o->ocr.prompt ? o->ocr.prompt : "markdown",
             vllm ? "vllm" : "hf", o->ocr.max_tokens, o->ocr.ignore_eos, o->ocr.no_repeat_ngram, o->ocr.ngram_window,
             (int)o->ocr.precision, d->pdf ? o->dpi : 0, o->retries, o->loop.max_period, o->loop.min_repeats,
             o->loop.min_span, o->loop.min_match, o->dbg && o->dbg->n_force > 0 ? o->dbg->n_force : 0,
             o->dbg && o->dbg->force_embeds ? " embeds=" : "",
             o->dbg && o->dbg->force_embeds && o->dbg->embeds_path ? o->dbg->embeds_path : "",
             o->model_id ? o->model_id : "", d->src_size, d->src_mtime);
    const char *sb = o->out_stem ? strrchr(o->out_stem, '/') : NULL;
    snprintf(c.stem_base, sizeof c.stem_base, "%s", sb ? sb + 1 : o->out_stem ? o->out_stem : "page");
    DsocrStatus st = DSOCR_OK;
    if (o->out_dir) {
        snprintf(c.pages_dir, sizeof c.pages_dir, "%s/%s.pages", o->out_dir, o->out_stem);
        if (sb)
            snprintf(c.images_dir, sizeof c.images_dir, "%s/%.*s/images", o->out_dir, (int)(sb - o->out_stem),
                     o->out_stem);
        else
            snprintf(c.images_dir, sizeof c.images_dir, "%s/images", o->out_dir);
        if ((st = make_dirs(c.pages_dir, 1, e)) ||
            ((o->formats & (DOC_FMT_CROPS | DOC_FMT_MD)) && (st = make_dirs(c.images_dir, 1, e)))) {
            free(sel);
            return st;
        }
    }
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "schema", DOC_SCHEMA);
    cJSON_AddStringToObject(doc, "source", d->name);
    cJSON_AddStringToObject(doc, "kind", d->pdf ? "pdf" : "image");
    cJSON_AddNumberToObject(doc, "pages_total", n_pages);
    if (d->pdf) cJSON_AddNumberToObject(doc, "dpi", o->dpi);
    else cJSON_AddNullToObject(doc, "dpi");
    cJSON_AddStringToObject(doc, "renderer", d->pdf ? pdf_renderer_name(d->pdf) : "none");
    cJSON *oj = cJSON_AddObjectToObject(doc, "options");
    cJSON_AddStringToObject(oj, "mode", o->ocr.mode ? o->ocr.mode : "custom");
    cJSON_AddNumberToObject(oj, "base_size", m0.base_size);
    cJSON_AddNumberToObject(oj, "image_size", m0.image_size);
    cJSON_AddBoolToObject(oj, "crop_mode", m0.crop_mode);
    cJSON_AddStringToObject(oj, "prompt", o->ocr.prompt ? o->ocr.prompt : "markdown");
    cJSON_AddStringToObject(oj, "compat", vllm ? "vllm" : "hf");
    cJSON_AddNumberToObject(oj, "max_tokens", o->ocr.max_tokens);
    cJSON_AddNumberToObject(oj, "retries", o->retries);
    cJSON *pages = cJSON_AddArrayToObject(doc, "pages");
    int counts[4] = {0};
    double t_all = ds_now();
    int idx = 0;
    Par par;
    const int parallel = o->parallel > 1 && n_sel > 1 && o->recognize; /* engine_ocr: one page at a time */
    if (parallel && (st = par_start(&par, &c, sel, n_pages, n_sel, e))) {
        free(sel);
        cJSON_Delete(doc);
        return st;
    }
    for (int pg = 1; pg <= n_pages && !st; pg++) {
        if (!sel[pg - 1]) continue;
        int cancel;
        cancelled_check(o, &cancel);
        if (cancel) {
            st = ds_fail(e, DSOCR_E_CANCELLED, "cancelled");
            break;
        }
        DocEvent ev = {.source = d->name, .page = pg, .index = idx, .n_pages = n_sel};
        double t0 = ds_now();
        cJSON *pj = NULL;
        int cached = 0, n_tok = 0;
        if (parallel) {
            if ((st = par_wait(&par, idx, &pj, &cached, &n_tok, &t0, e))) break;
        } else {
            pj = o->out_dir && !o->force ? cached_page(&c, pg) : NULL;
            cached = pj != NULL;
            if (!pj) {
                ev.kind = DOC_EV_PAGE_START;
                emit(&c, &ev);
                if ((st = do_page(&c, pg, &ev, &pj, &n_tok, e))) break;
                if (o->out_dir) st = write_record(&c, pg, pj, e);
            }
        }
        char stt[16];
        snprintf(stt, sizeof stt, "%s", jstr(pj, "status"));
        counts[!strcmp(stt, "ok") ? 0 : !strcmp(stt, "retried") ? 1 : !strcmp(stt, "incomplete") ? 2 : 3]++;
        ev.kind = DOC_EV_PAGE_DONE;
        ev.cached = cached;
        ev.status = stt;
        ev.tokens = n_tok;
        ev.seconds = ds_now() - t0;
        ev.message = !strcmp(stt, "failed") ? jstr(pj, "error") : NULL;
        ev.page_json = pj;
        if (!st) emit(&c, &ev);
        if (o->out_dir) { /* the record on disk holds the page; memory stays flat over any number of pages */
            cJSON *stub = cJSON_CreateObject();
            cJSON_AddNumberToObject(stub, "page", pg);
            cJSON_AddStringToObject(stub, "status", stt);
            cJSON_AddItemToArray(pages, stub);
            cJSON_Delete(pj);
        } else {
            cJSON_AddItemToArray(pages, pj);
        }
        idx++;
    }
    if (parallel) par_end(&par);
    free(sel);
    cJSON *sm = cJSON_AddObjectToObject(doc, "summary");
    cJSON_AddNumberToObject(sm, "ok", counts[0]);
    cJSON_AddNumberToObject(sm, "retried", counts[1]);
    cJSON_AddNumberToObject(sm, "incomplete", counts[2]);
    cJSON_AddNumberToObject(sm, "failed", counts[3]);
    cJSON_AddNumberToObject(sm, "seconds", ms(ds_now() - t_all));
    if (!st && o->out_dir) st = assemble(&c, doc, pages, e);
    if (st || !json) cJSON_Delete(doc);
    else *json = doc;
    return st;
}
