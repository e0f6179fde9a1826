/* pagequeue.c: see pagequeue.h. The callers' pages wait in a FIFO of Req (on the callers' stacks); the queue's
 * thread runs engine_ocr_stream while there are pages, giving it the FIFO's head at every token boundary with a
 * free row (next) and handing each page's end to its caller (end), whom it wakes. */
#include "pagequeue.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

typedef struct Req {
    EnginePage page;
    DsocrStatus st;
    DsocrResult r;
    char err[512];
    int done;
    struct Req *next;
} Req;

struct PageQueue {
    DsocrSession *s;
    int max_batch;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* the thread: a page came or stop; callers: a page ended */
    Req *head, *tail;    /* waiting for a row */
    Req **slot;          /* [max_batch + 1] the stream's pages, by id */
    int stop;
    int pages, running, most;
};

static __thread char t_err[512];

static int q_next(void *user, EnginePage *page, int *id) {
    PageQueue *q = user;
    pthread_mutex_lock(&q->mu);
    Req *r = q->head;
    int k = -1;
    if (r) {
        for (k = 0; k <= q->max_batch && q->slot[k]; k++) {
        }
        if (k > q->max_batch) { /* never: the stream holds at most max_batch + 1 pages */
            r = NULL;
        } else {
            q->head = r->next;
            if (!q->head) q->tail = NULL;
            q->slot[k] = r;
            if (++q->running > q->most) q->most = q->running;
        }
    }
    pthread_mutex_unlock(&q->mu);
    if (!r) return 0;
    *page = r->page;
    *id = k;
    return 1;
}

static void q_end(void *user, int id, DsocrStatus st, const char *err, DsocrResult *res) {
    PageQueue *q = user;
    pthread_mutex_lock(&q->mu);
    Req *r = q->slot[id];
    q->slot[id] = NULL;
    q->running--;
    q->pages++;
    r->st = st;
    if (!st && res) {
        r->r = *res;
        memset(res, 0, sizeof *res);
    } else if (res) {
        dsocr_result_free(res);
    }
    snprintf(r->err, sizeof r->err, "%s", err ? err : st ? dsocr_status_string(st) : "");
    r->done = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

/* Ends every page still waiting with st (the stream itself failed, or the queue stops). Called with mu held. */
static void fail_waiting(PageQueue *q, DsocrStatus st, const char *msg) {
    for (Req *r = q->head; r; r = r->next) {
        r->st = st;
        snprintf(r->err, sizeof r->err, "%s", msg);
        r->done = 1;
    }
    q->head = q->tail = NULL;
    pthread_cond_broadcast(&q->cv);
}

static void *q_main(void *arg) {
    PageQueue *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->head && !q->stop) pthread_cond_wait(&q->cv, &q->mu);
        if (!q->head) break; /* stop, nothing waiting */
        pthread_mutex_unlock(&q->mu);
        DsocrStatus st = engine_ocr_stream(q->s, q->max_batch, NULL, q_next, q_end, q);
        pthread_mutex_lock(&q->mu);
        if (st && q->head) { /* the batch itself failed before taking these: they fail with it */
            char msg[512];
            snprintf(msg, sizeof msg, "%s", dsocr_session_error(q->s));
            fail_waiting(q, st, msg);
        }
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

DsocrStatus pq_start(DsocrSession *s, int max_batch, PageQueue **out, DsError *e) {
    *out = NULL;
    if (!s) return ds_fail(e, DSOCR_E_INVALID_ARG, "the page queue needs a session");
    if (max_batch < 1 || max_batch > 4096)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "a batch of %d pages is outside 1..4096", max_batch);
    PageQueue *q = calloc(1, sizeof *q);
    if (!q || !(q->slot = calloc((size_t)max_batch + 1, sizeof *q->slot))) {
        if (q) free(q);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    q->s = s;
    q->max_batch = max_batch;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    if (pthread_create(&q->th, NULL, q_main, q)) {
        pthread_mutex_destroy(&q->mu);
        pthread_cond_destroy(&q->cv);
        free(q->slot);
        free(q);
        return ds_fail(e, DSOCR_E_NOMEM, "cannot start the page queue's thread");
    }
    *out = q;
    return DSOCR_OK;
}

DsocrStatus pq_recognize(void *queue, DsocrSession *s, const void *image, size_t len, const DsocrOcrOptions *o,
                         const EngineDebug *dbg, DsocrResult *out) {
    (void)s;
    PageQueue *q = queue;
    memset(out, 0, sizeof *out);
    if (dbg && (dbg->dump_dir || dbg->n_force > 0 || dbg->force_embeds || dbg->prefill_only)) {
        snprintf(t_err, sizeof t_err, "stage dumps and teacher forcing run one page at a time, not in a batch");
        return DSOCR_E_INVALID_ARG;
    }
    Req r;
    memset(&r, 0, sizeof r);
    r.page = (EnginePage){.image = image, .len = len, .opt = o};
    pthread_mutex_lock(&q->mu);
    if (q->stop) {
        pthread_mutex_unlock(&q->mu);
        snprintf(t_err, sizeof t_err, "the page queue is stopping");
        return DSOCR_E_CANCELLED;
    }
    if (q->tail) q->tail->next = &r;
    else q->head = &r;
    q->tail = &r;
    pthread_cond_broadcast(&q->cv);
    while (!r.done) pthread_cond_wait(&q->cv, &q->mu);
    pthread_mutex_unlock(&q->mu);
    if (r.st) {
        snprintf(t_err, sizeof t_err, "%s", r.err);
        return r.st;
    }
    *out = r.r;
    return DSOCR_OK;
}

const char *pq_error(void *queue) {
    (void)queue;
    return t_err;
}

void pq_stats(PageQueue *q, int *pages, int *most) {
    pthread_mutex_lock(&q->mu);
    if (pages) *pages = q->pages;
    if (most) *most = q->most;
    pthread_mutex_unlock(&q->mu);
}

void pq_stop(PageQueue *q) {
    if (!q) return;
    pthread_mutex_lock(&q->mu);
    q->stop = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->th, NULL);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->slot);
    free(q);
}
