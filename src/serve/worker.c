/* worker.c: the bounded job queue and the one inference thread. See worker.h. */
#include "serve/worker.h"
#include "engine.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct Worker {
    WorkerConfig cfg;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    Job *head, *tail;
    int depth;
    int draining, stop;
    Job *running[WORKER_MAX_BATCH]; /* the jobs running now (one, or a batch's: cfg.max_batch) */
    int n_running;
    WorkerState state;
    char load_error[512];
    long long served;
    double avg_seconds, load_seconds;
    DsocrModel *model;
    DsocrSession *sess;
};

/* ---- jobs ---- */

Job *job_new(const char *rid, OcrRequest *req) {
    Job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    j->refs = 1;
    snprintf(j->rid, sizeof j->rid, "%s", rid);
    j->req = *req;
    memset(req, 0, sizeof *req);
    return j;
}

Job *job_new_doc(const char *rid, DocRequest *req, Document *doc) {
    OcrRequest none;
    memset(&none, 0, sizeof none);
    Job *j = job_new(rid, &none);
    if (!j) return NULL;
    j->dreq = *req;
    memset(req, 0, sizeof *req);
    j->doc = doc;
    return j;
}

void job_release(Job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left > 0) return;
    api_request_free(&j->req);
    dsocr_result_free(&j->res);
    document_close(j->doc);
    docapi_request_free(&j->dreq);
    cJSON_Delete(j->doc_json);
    free(j->live);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

void job_cancel(Job *j) { __atomic_store_n(&j->cancel, 1, __ATOMIC_RELEASE); }

/* ---- the worker thread ---- */

static void wlog(Worker *w, const char *rid, const char *msg) {
    if (w->cfg.log) w->cfg.log(rid, "%s", msg);
}

static void model_log(void *user, const char *line) { wlog(user, "-", line); }

/* After a job on a GPU: our device memory now and at peak, and the driver's view less the context (the seed
 * server's "GPU memory before / after"): a figure that creeps from job to job would show here. Nothing on the CPU
 * (or with the fake engine). */
static void log_device_memory(Worker *w, const char *rid) {
    if (!w->model) return;
    DsocrDeviceInfo di;
    dsocr_model_device_info(w->model, &di);
    if (strcmp(di.device, "cuda")) return;
    char msg[256];
    snprintf(msg, sizeof msg, "GPU memory: %.3f GiB held (peak %.3f), driver's view %.3f GiB, budget %.3f GiB (%s)",
             di.allocated / 1073741824.0, di.peak / 1073741824.0, (di.gpu_used - di.gpu_baseline) / 1073741824.0,
             di.gpu_budget / 1073741824.0, di.placement);
    wlog(w, rid, msg);
}

/* Appends len bytes to the job's live buffer (j->mu held); a failed allocation drops them. */
static void live_append(Job *j, const char *text, size_t len) {
    if (j->live_len + len + 1 > j->live_cap) {
        size_t nc = j->live_cap ? j->live_cap * 2 : 1024;
        while (nc < j->live_len + len + 1) nc *= 2;
        char *np = realloc(j->live, nc);
        if (np) {
            j->live = np;
            j->live_cap = nc;
        }
    }
    if (j->live_len + len + 1 <= j->live_cap) {
        memcpy(j->live + j->live_len, text, len);
        j->live_len += len;
        j->live[j->live_len] = 0;
    }
}

static int on_token(void *user, int id, const char *text, size_t len) {
    (void)id;
    Job *j = user;
    pthread_mutex_lock(&j->mu);
    j->live_tokens++;
    if (j->req.stream && len) live_append(j, text, len);
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return 0;
}

/* The fake engine: max_tokens (default 4) tokens "w0 w1 ...", honouring the cancel flag; err gets the message of a
 * failure. It stands for a model whose memory budget holds FAKE_BUDGET_TOKENS: a request for more is refused as the
 * engine's admission refuses one (DSOCR_E_NOMEM; the HTTP layer's 507 is tested with it). */
#define FAKE_BUDGET_TOKENS 4096
static DsocrStatus fake_ocr(const DsocrOcrOptions *o, DsocrResult *r, char *err, size_t errlen) {
    memset(r, 0, sizeof *r);
    if (o->max_tokens > FAKE_BUDGET_TOKENS) {
        snprintf(err, errlen, "a KV cache of %d tokens does not fit the memory budget (the fake engine's: %d tokens)",
                 o->max_tokens, FAKE_BUDGET_TOKENS);
        return DSOCR_E_NOMEM;
    }
    int n = o->max_tokens > 0 ? o->max_tokens : 4;
    if (n > 256) n = 256;
    char *text = malloc((size_t)n * 8 + 1);
    int *toks = malloc(sizeof(int) * (size_t)n);
    if (!text || !toks) {
        free(text);
        free(toks);
        snprintf(err, errlen, "out of memory");
        return DSOCR_E_NOMEM;
    }
    size_t len = 0;
    r->stop = DSOCR_STOP_LENGTH;
    for (int i = 0; i < n; i++) {
        if (*o->cancel) {
            r->stop = DSOCR_STOP_CANCEL;
            break;
        }
        char piece[16];
        int pl = snprintf(piece, sizeof piece, "%sw%d", i ? " " : "", i % 100);
        memcpy(text + len, piece, (size_t)pl);
        len += (size_t)pl;
        toks[r->n_tokens++] = 1000 + i;
        if (o->on_token) o->on_token(o->user, 1000 + i, piece, (size_t)pl);
    }
    text[len] = 0;
    r->text = text;
    r->text_len = len;
    r->tokens = toks;
    r->n_prompt = 8;
    r->n_views = 1;
    return DSOCR_OK;
}

static void job_ended(Worker *w, Job *j, double t_end);

static void running_add(Worker *w, Job *j) {
    pthread_mutex_lock(&w->mu);
    if (w->n_running < WORKER_MAX_BATCH) w->running[w->n_running++] = j;
    pthread_mutex_unlock(&w->mu);
}

/* Job j starts: its clock, its state; 1 when it was cancelled before that. */
static int job_start(Job *j) {
    pthread_mutex_lock(&j->mu);
    j->t_start = ds_now();
    j->state = JOB_RUNNING;
    int cancelled = __atomic_load_n(&j->cancel, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&j->mu);
    return cancelled;
}

/* The options of job j's request into o (its prompt name in *name, to free once the job ends): 0, or a status
 * with the reason in err. */
static DsocrStatus job_options(Worker *w, Job *j, DsocrOcrOptions *o, char **name, char *err, size_t n) {
    dsocr_ocr_options_default(o);
    const OcrRequest *q = &j->req;
    if (q->mode[0]) {
        o->mode = q->mode;
    } else {
        o->mode = NULL;
        o->base_size = q->base_size;
        o->image_size = q->image_size;
        o->crop_mode = q->crop_mode;
    }
    size_t pl = strlen(q->prompt);
    if (!(*name = malloc(pl + 5))) {
        snprintf(err, n, "out of memory");
        return DSOCR_E_NOMEM;
    }
    memcpy(*name, "raw:", 4);
    memcpy(*name + 4, q->prompt, pl + 1);
    o->prompt = *name;
    o->compat = q->compat;
    o->max_tokens = q->max_tokens > 0 ? q->max_tokens : w->cfg.default_max_tokens;
    o->on_token = on_token;
    o->user = j;
    o->cancel = &j->cancel;
    o->threads = w->cfg.threads;
    return DSOCR_OK;
}

/* Job j ended with status st (err: why, when st) and result *res (taken over): saved when asked, logged, its
 * waiters woken. */
static void job_finish(Worker *w, Job *j, DsocrStatus st, DsocrResult *res, const char *err) {
    char msg[768];
    char saved[RESULTS_NAME_LEN + 1] = "", save_err[256] = "";
    if (!st && res->stop != DSOCR_STOP_CANCEL && j->req.save_to_file) {
        DsError e = {0};
        if (!w->cfg.results)
            snprintf(save_err, sizeof save_err, "this server has no results folder");
        else if (results_save(w->cfg.results, res->text, res->text_len, saved, &e))
            snprintf(save_err, sizeof save_err, "%s", e.msg);
    }
    double t_end = ds_now();
    if (st)
        snprintf(msg, sizeof msg, "job failed after %.2fs: %s: %s", t_end - j->t_start, dsocr_status_string(st), err);
    else
        snprintf(msg, sizeof msg,
                 "job done in %.2fs (queued %.2fs): %d prompt tokens, %d views, %d generated, stop %s; vision %.2fs, "
                 "prefill %.2fs, decode %.2fs%s%s",
                 t_end - j->t_start, j->t_start - j->t_submit, res->n_prompt, res->n_views, res->n_tokens,
                 res->stop == DSOCR_STOP_EOS      ? "eos"
                 : res->stop == DSOCR_STOP_LENGTH ? "length"
                 : res->stop == DSOCR_STOP_CANCEL ? "cancelled"
                                                  : "callback",
                 res->seconds_vision, res->seconds_prefill, res->seconds_decode, saved[0] ? "; saved " : "", saved);
    wlog(w, j->rid, msg);
    log_device_memory(w, j->rid);
    if (save_err[0]) {
        snprintf(msg, sizeof msg, "result not saved: %s", save_err);
        wlog(w, j->rid, msg);
    }
    pthread_mutex_lock(&j->mu);
    j->status = st;
    snprintf(j->err, sizeof j->err, "%s", err);
    j->res = *res;
    memset(res, 0, sizeof *res);
    memcpy(j->output_file, saved, sizeof saved);
    snprintf(j->save_err, sizeof j->save_err, "%s", save_err);
    j->t_end = t_end;
    j->state = JOB_DONE;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    job_ended(w, j, t_end);
}

static void run_job(Worker *w, Job *j) {
    DsocrStatus st;
    DsocrResult res;
    memset(&res, 0, sizeof res);
    char err[512] = "", *name = NULL;
    if (job_start(j)) {
        st = DSOCR_E_CANCELLED;
        snprintf(err, sizeof err, "cancelled before it started");
    } else {
        DsocrOcrOptions o;
        if (!(st = job_options(w, j, &o, &name, err, sizeof err))) {
            if (w->cfg.fake) {
                st = fake_ocr(&o, &res, err, sizeof err);
            } else {
                st = dsocr_ocr(w->sess, j->req.image, j->req.image_len, &o, &res);
                if (st) snprintf(err, sizeof err, "%s", dsocr_session_error(w->sess));
            }
        }
        free(name);
    }
    job_finish(w, j, st, &res, err);
}

/* ---- image jobs decoded together (cfg.max_batch > 1: engine_ocr_stream) ---- */

typedef struct BatchSlot {
    Job *j; /* NULL: free */
    DsocrOcrOptions o;
    char *name;
} BatchSlot;

typedef struct BatchCtx {
    Worker *w;
    Job *first; /* the job the worker took, until the stream asks for it */
    int jobs, running, most; /* jobs taken, running now, running at once at most */
    BatchSlot slot[WORKER_MAX_BATCH + 1];
} BatchCtx;

/* The next image job at the head of the queue, taken off it; NULL when the head is a document job or the queue is
 * empty (the batch goes on without). */
static Job *take_image_job(Worker *w) {
    pthread_mutex_lock(&w->mu);
    Job *j = w->head && !w->head->doc && !w->stop ? w->head : NULL;
    if (j) {
        w->head = j->next;
        if (!w->head) w->tail = NULL;
        j->next = NULL;
        w->depth--;
    }
    pthread_mutex_unlock(&w->mu);
    return j;
}

static int batch_next(void *user, EnginePage *page, int *id) {
    BatchCtx *bc = user;
    Worker *w = bc->w;
    for (;;) {
        Job *j = bc->first ? bc->first : take_image_job(w);
        bc->first = NULL;
        if (!j) return 0;
        running_add(w, j);
        DsocrResult none;
        memset(&none, 0, sizeof none);
        char err[512] = "";
        if (job_start(j)) {
            job_finish(w, j, DSOCR_E_CANCELLED, &none, "cancelled before it started");
            job_release(j);
            continue;
        }
        int k = 0;
        while (bc->slot[k].j) k++; /* max_batch + 1 slots: the stream holds at most that many pages */
        BatchSlot *sl = &bc->slot[k];
        DsocrStatus st = job_options(w, j, &sl->o, &sl->name, err, sizeof err);
        if (st) {
            free(sl->name);
            sl->name = NULL;
            job_finish(w, j, st, &none, err);
            job_release(j);
            continue;
        }
        sl->j = j;
        bc->jobs++;
        if (++bc->running > bc->most) bc->most = bc->running;
        *page = (EnginePage){.image = j->req.image, .len = j->req.image_len, .opt = &sl->o};
        *id = k;
        return 1;
    }
}

static void batch_end(void *user, int id, DsocrStatus st, const char *err, DsocrResult *r) {
    BatchCtx *bc = user;
    BatchSlot *sl = &bc->slot[id];
    Job *j = sl->j;
    job_finish(bc->w, j, st, r, err);
    bc->running--;
    free(sl->name);
    memset(sl, 0, sizeof *sl);
    job_release(j);
}

/* Runs j and the image jobs queued behind it (and those that come while it runs) as one continuous batch of at
 * most cfg.max_batch pages; every job is released here. */
static void run_batch(Worker *w, Job *first) {
    BatchCtx *bc = calloc(1, sizeof *bc);
    if (!bc) { /* without room for the batch: the job alone */
        run_job(w, first);
        job_release(first);
        return;
    }
    bc->w = w;
    bc->first = first;
    DsocrStatus st = engine_ocr_stream(w->sess, w->cfg.max_batch, NULL, batch_next, batch_end, bc);
    if (st) wlog(w, "-", dsocr_session_error(w->sess));
    char msg[128];
    snprintf(msg, sizeof msg, "batch done: %d jobs, at most %d at once", bc->jobs, bc->most);
    if (bc->jobs) wlog(w, "-", msg);
    if (bc->first) { /* the stream refused to start: the job alone */
        run_job(w, first);
        job_release(first);
    }
    free(bc);
}

/* ---- document jobs (POST /v1/ocr) ---- */

typedef struct DocCtx {
    Worker *w;
    Job *j;
} DocCtx;

static int doc_on_token(void *user, int id, const char *text, size_t len) {
    (void)id;
    (void)text;
    (void)len;
    Job *j = user;
    pthread_mutex_lock(&j->mu);
    j->live_tokens++;
    pthread_mutex_unlock(&j->mu);
    return 0;
}

/* One page event: a log line, and with stream a server-sent event "event: NAME\ndata: {...}\n\n" in live. */
static void doc_on_event(void *user, const DocEvent *ev) {
    DocCtx *c = user;
    Job *j = c->j;
    const char *name = ev->kind == DOC_EV_PAGE_START ? "page_start" : ev->kind == DOC_EV_RETRY ? "page_retry"
                                                                                            : "page_done";
    char msg[640];
    if (ev->kind == DOC_EV_PAGE_DONE) {
        snprintf(msg, sizeof msg, "page %d (%d/%d): %s, %d tokens, %.2fs%s%s", ev->page, ev->index + 1, ev->n_pages,
                 ev->status ? ev->status : "?", ev->tokens, ev->seconds, ev->message ? ": " : "",
                 ev->message ? ev->message : "");
        wlog(c->w, j->rid, msg);
    } else if (ev->kind == DOC_EV_RETRY) {
        snprintf(msg, sizeof msg, "page %d retried: %s", ev->page, ev->message ? ev->message : "");
        wlog(c->w, j->rid, msg);
    }
    char *txt = NULL;
    if (j->dreq.stream) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "event", name);
        cJSON_AddNumberToObject(o, "page", ev->page);
        cJSON_AddNumberToObject(o, "index", ev->index);
        cJSON_AddNumberToObject(o, "n_pages", ev->n_pages);
        if (ev->kind == DOC_EV_RETRY) cJSON_AddStringToObject(o, "message", ev->message ? ev->message : "");
        if (ev->kind == DOC_EV_PAGE_DONE) {
            cJSON_AddStringToObject(o, "status", ev->status ? ev->status : "failed");
            cJSON_AddNumberToObject(o, "tokens", ev->tokens);
            cJSON_AddNumberToObject(o, "seconds", ev->seconds);
            if (ev->page_json) cJSON_AddItemToObject(o, "result", cJSON_Duplicate(ev->page_json, 1));
        }
        txt = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
    }
    pthread_mutex_lock(&j->mu);
    j->t_progress = ds_now();
    if (ev->kind == DOC_EV_PAGE_DONE) j->doc_pages++;
    if (txt) {
        live_append(j, "event: ", 7);
        live_append(j, name, strlen(name));
        live_append(j, "\ndata: ", 7);
        live_append(j, txt, strlen(txt));
        live_append(j, "\n\n", 2);
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    free(txt);
}

/* The fake engine as a document recogniser (tests of the HTTP layer without a model). */
static DsocrStatus fake_recognize(void *user, DsocrSession *s, const void *image, size_t len,
                                  const DsocrOcrOptions *o, const EngineDebug *dbg, DsocrResult *out) {
    (void)user;
    (void)s;
    (void)image;
    (void)len;
    (void)dbg;
    char err[160];
    return fake_ocr(o, out, err, sizeof err);
}

/* Bookkeeping when a job ends. */
static void job_ended(Worker *w, Job *j, double t_end) {
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < w->n_running; i++)
        if (w->running[i] == j) {
            w->running[i] = w->running[--w->n_running];
            break;
        }
    w->served++;
    double dt = t_end - j->t_start;
    w->avg_seconds = w->served == 1 ? dt : 0.8 * w->avg_seconds + 0.2 * dt;
    pthread_mutex_unlock(&w->mu);
}

static void run_doc_job(Worker *w, Job *j) {
    pthread_mutex_lock(&j->mu);
    j->t_start = ds_now();
    j->state = JOB_RUNNING;
    int cancelled = __atomic_load_n(&j->cancel, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&j->mu);
    DsocrStatus st;
    char err[512] = "";
    cJSON *json = NULL;
    if (cancelled) {
        st = DSOCR_E_CANCELLED;
        snprintf(err, sizeof err, "cancelled before it started");
    } else {
        const DocRequest *q = &j->dreq;
        DocOptions o;
        document_options_default(&o);
        if (q->mode[0]) {
            o.ocr.mode = q->mode;
        } else {
            o.ocr.mode = NULL;
            o.ocr.base_size = q->base_size;
            o.ocr.image_size = q->image_size;
            o.ocr.crop_mode = q->crop_mode;
        }
        o.ocr.prompt = q->prompt;
        o.ocr.compat = q->compat;
        o.ocr.max_tokens = q->max_tokens > 0 ? q->max_tokens : w->cfg.default_max_tokens;
        o.ocr.on_token = doc_on_token;
        o.ocr.user = j;
        o.ocr.cancel = &j->cancel;
        o.ocr.threads = w->cfg.threads;
        o.dpi = q->dpi;
        o.pages = q->pages[0] ? q->pages : NULL;
        o.retries = q->retries;
        o.model_id = w->cfg.model_dir;
        DocCtx ctx = {w, j};
        o.on_event = doc_on_event;
        o.event_user = &ctx;
        if (w->cfg.fake) o.recognize = fake_recognize;
        DsError e = {0};
        st = document_run(w->sess, j->doc, &o, &json, &e);
        if (st) snprintf(err, sizeof err, "%s", e.msg);
    }
    double t_end = ds_now();
    char msg[768];
    if (st)
        snprintf(msg, sizeof msg, "document %s failed after %.2fs (%d pages done): %s: %s", j->dreq.filename,
                 t_end - j->t_start, j->doc_pages, dsocr_status_string(st), err);
    else
        snprintf(msg, sizeof msg, "document %s done in %.2fs (queued %.2fs): %d pages, %d tokens", j->dreq.filename,
                 t_end - j->t_start, j->t_start - j->t_submit, j->doc_pages, j->live_tokens);
    wlog(w, j->rid, msg);
    log_device_memory(w, j->rid);
    if (st) {
        cJSON_Delete(json);
        json = NULL;
    }
    pthread_mutex_lock(&j->mu);
    j->status = st;
    snprintf(j->err, sizeof j->err, "%s", err);
    j->doc_json = json;
    j->t_end = t_end;
    j->state = JOB_DONE;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    job_ended(w, j, t_end);
}

static void *worker_main(void *arg) {
    Worker *w = arg;
    double t0 = ds_now();
    WorkerState state = WORKER_READY;
    char err[512] = "";
    if (!w->cfg.fake) {
        DsocrModelOptions mo;
        dsocr_model_options_default(&mo);
        mo.device = w->cfg.device;
        mo.quant = w->cfg.quant;
        mo.gpu_mem = w->cfg.gpu_mem;
        mo.threads = w->cfg.threads;
        mo.log = model_log;
        mo.log_user = w;
        if (dsocr_model_load(w->cfg.model_dir, &mo, &w->model, err, sizeof err) != DSOCR_OK ||
            dsocr_session_new(w->model, NULL, &w->sess, err, sizeof err) != DSOCR_OK)
            state = WORKER_FAILED;
    }
    char msg[640];
    if (state == WORKER_READY)
        snprintf(msg, sizeof msg, "model %s ready in %.2fs%s", w->cfg.fake ? "(fake engine)" : w->cfg.model_dir,
                 ds_now() - t0, w->cfg.fake ? " (no model: every job answers a fixed text)" : "");
    else
        snprintf(msg, sizeof msg, "model failed to load: %s", err);
    wlog(w, "-", msg);
    pthread_mutex_lock(&w->mu);
    w->state = state;
    w->load_seconds = ds_now() - t0;
    snprintf(w->load_error, sizeof w->load_error, "%s", err);
    pthread_mutex_unlock(&w->mu);
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->head && !w->stop) pthread_cond_wait(&w->cv, &w->mu);
        Job *j = w->head;
        if (!j) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        w->head = j->next;
        if (!w->head) w->tail = NULL;
        j->next = NULL;
        w->depth--;
        pthread_mutex_unlock(&w->mu);
        if (!j->doc && w->cfg.max_batch > 1 && !w->cfg.fake) {
            run_batch(w, j); /* releases its jobs */
        } else {
            running_add(w, j);
            if (j->doc)
                run_doc_job(w, j);
            else
                run_job(w, j);
            job_release(j);
        }
        malloc_trim(0); /* hand freed pages of large images back, so RSS follows the live data */
    }
    dsocr_session_free(w->sess);
    dsocr_model_free(w->model);
    w->sess = NULL;
    w->model = NULL;
    return NULL;
}

DsocrStatus worker_start(const WorkerConfig *cfg, Worker **out, DsError *e) {
    *out = NULL;
    Worker *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    w->cfg = *cfg;
    if (w->cfg.queue_max < 1) w->cfg.queue_max = 1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->state = WORKER_LOADING;
    int rc = pthread_create(&w->th, NULL, worker_main, w);
    if (rc) {
        free(w);
        return ds_fail(e, DSOCR_E_INTERNAL, "cannot start the worker thread: %s", strerror(rc));
    }
    *out = w;
    return DSOCR_OK;
}

SubmitResult worker_submit(Worker *w, Job *j) {
    pthread_mutex_lock(&w->mu);
    SubmitResult r = SUBMIT_OK;
    if (w->draining)
        r = SUBMIT_DRAINING;
    else if (w->state == WORKER_LOADING)
        r = SUBMIT_LOADING;
    else if (w->state == WORKER_FAILED)
        r = SUBMIT_FAILED;
    else if (w->depth >= w->cfg.queue_max)
        r = SUBMIT_FULL;
    if (r == SUBMIT_OK) {
        pthread_mutex_lock(&j->mu);
        j->refs++;
        j->t_submit = ds_now();
        j->state = JOB_QUEUED;
        pthread_mutex_unlock(&j->mu);
        if (w->tail)
            w->tail->next = j;
        else
            w->head = j;
        w->tail = j;
        w->depth++;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return r;
}

void worker_stats(Worker *w, WorkerStats *s) {
    pthread_mutex_lock(&w->mu);
    s->state = w->state;
    snprintf(s->load_error, sizeof s->load_error, "%s", w->load_error);
    s->queue_depth = w->depth;
    s->running = w->n_running;
    s->served = w->served;
    s->avg_seconds = w->avg_seconds;
    s->load_seconds = w->load_seconds;
    memset(&s->dev, 0, sizeof s->dev);
    if (w->model) dsocr_model_device_info(w->model, &s->dev);
    pthread_mutex_unlock(&w->mu);
}

void worker_stop(Worker *w, double timeout_s) {
    if (!w) return;
    double t0 = ds_now();
    pthread_mutex_lock(&w->mu);
    w->draining = 1;
    for (;;) {
        int busy = w->head || w->n_running;
        if (!busy || ds_now() - t0 > timeout_s) break;
        pthread_mutex_unlock(&w->mu);
        nanosleep(&(struct timespec){0, 20000000}, NULL);
        pthread_mutex_lock(&w->mu);
    }
    for (Job *j = w->head; j; j = j->next) job_cancel(j);
    for (int i = 0; i < w->n_running; i++) job_cancel(w->running[i]);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
