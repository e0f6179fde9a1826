/* worker.h: the inference side of the server: a bounded queue of OCR jobs and one worker thread that owns the
 * model and its one session (the engine is not thread-safe per session). HTTP threads parse, validate and
 * submit jobs, then wait for them (or stream their tokens); they never touch the engine.
 *
 * A job is reference-counted: the submitting HTTP thread holds one reference, the queue/worker another, so a
 * client that disconnects (job_cancel + job_release) never frees a job the worker is running. The worker
 * checks the job's cancel flag before starting it, and the engine checks it between tokens and tiles.
 *
 * A document job (POST /v1/ocr) carries an opened Document (opened and checked by the HTTP thread, then handed
 * over: only the worker touches it until the job is released) and runs document_run on the worker's session;
 * with stream set, every page event is appended to `live` as a server-sent event, ready to send.
 *
 * The model is loaded by the worker thread after the server starts listening (so /health can answer 503
 * "loading" meanwhile). A fake engine (WorkerConfig.fake) answers every job with a short text and no model:
 * for tests of the HTTP layer that must run thousands of requests quickly. */
#ifndef DSOCR_SERVE_WORKER_H
#define DSOCR_SERVE_WORKER_H

#include <pthread.h>

#include "document.h"
#include "serve/api.h"
#include "serve/docapi.h"
#include "serve/results.h"

typedef enum { JOB_QUEUED = 0, JOB_RUNNING = 1, JOB_DONE = 2 } JobState;

typedef struct Job {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled on every streamed token and when the job is done */
    int refs;
    char rid[48]; /* request id, in every log line */
    OcrRequest req;
    volatile int cancel; /* raised by the HTTP side: client gone, timeout, shutdown */
    JobState state;
    /* streamed text (stream jobs only): every token's text appended as it comes */
    char *live;
    size_t live_len, live_cap;
    int live_tokens;
    /* outcome, valid once state == JOB_DONE */
    DsocrStatus status;
    char err[512];
    DsocrResult res;
    char output_file[RESULTS_NAME_LEN + 1]; /* "" when not saved */
    char save_err[256];                     /* why saving failed, "" otherwise */
    double t_submit, t_start, t_end;
    /* document jobs only (doc != NULL) */
    Document *doc;
    DocRequest dreq;
    cJSON *doc_json; /* the document object once done */
    int doc_pages;   /* pages finished so far */
    double t_progress; /* when the latest page event came (0 before any): a document's timeout runs from it */
    struct Job *next;
} Job;

/* A fresh job taking ownership of *req (req is zeroed); refs = 1. NULL when out of memory. */
Job *job_new(const char *rid, OcrRequest *req);
/* A document job taking ownership of *req (zeroed) and doc; refs = 1. NULL when out of memory (then doc and
 * *req are left to the caller). */
Job *job_new_doc(const char *rid, DocRequest *req, Document *doc);
void job_release(Job *j);
void job_cancel(Job *j);

enum { WORKER_MAX_BATCH = 128 }; /* cfg.max_batch at most (the engine's prefill chunk bounds it too) */

typedef struct WorkerConfig {
    const char *model_dir;
    const char *device;
    const char *quant;   /* NULL, q8_0 or q4 (DsocrModelOptions.quant) */
    uint64_t gpu_mem;    /* DsocrModelOptions.gpu_mem */
    int threads;         /* 0 = all cores */
    int queue_max;       /* waiting jobs at most (the running one not counted) */
    int default_max_tokens; /* when a request names none; 0 = until the context is full */
    ResultsStore *results;  /* where save_to_file goes (may be NULL: saving then fails with a message) */
    int fake;               /* 1: no model; every job gets a short fixed text (tests of the HTTP layer) */
    int max_batch;          /* image jobs decoded together at most (continuous batching, engine_ocr_stream); <= 1:
                               one at a time */
    void (*log)(const char *rid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
} WorkerConfig;

typedef enum { WORKER_LOADING = 0, WORKER_READY = 1, WORKER_FAILED = 2 } WorkerState;

typedef struct Worker Worker;

/* Starts the worker thread (which loads the model). cfg is copied; the strings it points to must outlive the
 * worker. */
DsocrStatus worker_start(const WorkerConfig *cfg, Worker **out, DsError *e);

typedef enum {
    SUBMIT_OK = 0,
    SUBMIT_FULL = 1,     /* the queue is full: 429 */
    SUBMIT_LOADING = 2,  /* the model is still loading: 503 */
    SUBMIT_FAILED = 3,   /* the model failed to load: 503 */
    SUBMIT_DRAINING = 4  /* shutting down: 503 */
} SubmitResult;

/* Queues j (taking a second reference on success). */
SubmitResult worker_submit(Worker *w, Job *j);

/* Stops taking jobs, lets the queued and running ones finish (at most timeout_s seconds, then cancels them),
 * joins the thread and frees everything. */
void worker_stop(Worker *w, double timeout_s);

typedef struct WorkerStats {
    WorkerState state;
    char load_error[512];
    int queue_depth;        /* jobs waiting */
    int running;            /* jobs running now (more than one in a batch) */
    long long served;       /* jobs finished (any outcome) */
    double avg_seconds;     /* running average time of a job, for Retry-After */
    double load_seconds;
    DsocrDeviceInfo dev;    /* where the model runs (zeroed until it is loaded) */
} WorkerStats;
void worker_stats(Worker *w, WorkerStats *st);

#endif
