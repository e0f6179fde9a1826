/* serve.h: `dsocr serve`: the HTTP server (libmicrohttpd) in front of one loaded model: the seed API (/, /health,
 * /ocr, /ocr-base64, /results/{file}, /cleanup), an OpenAI-compatible API (/v1/chat/completions with
 * server-sent events, /v1/models), the document endpoint (/v1/ocr: PDFs and images through document.h, the
 * document JSON or events per page) and the web page. docs/api.md documents every endpoint.
 *
 * Threads: libmicrohttpd runs one thread per connection (so a handler may wait for its job, and a slow client
 * holds only its own thread); those threads parse, validate (limits, the image decodes) and queue jobs; one
 * worker thread (worker.h) owns the model and runs the jobs in order. */
#ifndef DSOCR_SERVE_H
#define DSOCR_SERVE_H

#include <stddef.h>
#include <stdint.h>

typedef struct ServeConfig {
    const char *model_dir;
    const char *model_name; /* the name /v1/models shows; NULL = model_dir as given */
    const char *device;     /* cpu | cuda | auto */
    const char *quant;      /* NULL, q8_0 or q4 (DsocrModelOptions.quant) */
    uint64_t gpu_mem;       /* --gpu-mem bytes (DsocrModelOptions.gpu_mem; 0 = free memory less 5 %) */
    const char *host;       /* address to bind (default 127.0.0.1) */
    int port;               /* 0 = any free port (printed at start) */
    int threads;            /* CPU threads for the engine; 0 = all cores */
    int queue_max;          /* jobs waiting at most; more get 429 */
    int max_batch;          /* image requests decoded together at most (continuous batching); 1 = one at a time */
    int max_connections;    /* open connections at most */
    size_t max_upload;      /* request body bytes at most; more get 413 */
    long long max_pixels;   /* decoded image pixels at most; more get 400 */
    size_t max_prompt;      /* prompt bytes at most */
    int max_tokens_cap;     /* a request's max_tokens at most; 0 = no cap */
    int default_max_tokens; /* when a request names none; 0 = until the context is full */
    double timeout_s;       /* per request, from arrival to answer (documents: per page); 504 after it */
    double drain_s;         /* on SIGTERM, how long running and queued requests may take */
    const char *results_dir; /* NULL = $XDG_CACHE_HOME/dsocr/results (else ~/.cache/...); "" = never save */
    int results_max;
    const char *api_key; /* NULL or "" = no key */
    int fake_engine;     /* tests: no model, every job answers a fixed text */
} ServeConfig;

void serve_config_default(ServeConfig *c);

/* Serves until SIGTERM or SIGINT, then stops taking requests, finishes the running and queued ones (up to
 * drain_s), and returns 0; 1 when the server cannot start (the reason on stderr). Prints
 * "dsocr serve: listening on http://HOST:PORT" once the socket is bound. */
int serve_run(const ServeConfig *c);

#endif
