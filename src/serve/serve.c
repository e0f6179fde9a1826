/* serve.c: the HTTP side of `dsocr serve`: routing, limits, authentication, the seed API's and the OpenAI
 * API's responses, server-sent events, client-disconnect cancellation, SIGTERM drain. See serve.h; the
 * request bodies are parsed by api.c, the jobs run in worker.c. */
#include "serve/serve.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "document.h"
#include "image.h"
#include "serve/api.h"
#include "serve/docapi.h"
#include "serve/page.h"
#include "serve/results.h"
#include "serve/worker.h"

#define SEED_MODE_DESC "base_size=1024, image_size=896, crop_mode=true (seed defaults; 'mode' selects others)"
#define WAIT_SLICE_MS 50

typedef struct Server {
    ServeConfig cfg;
    const char *model_name;
    Worker *worker;
    ResultsStore *results;
    ApiLimits lim;
    sem_t decode_sem; /* image validation decodes at once */
    double t_start;
    time_t created;
    volatile int draining;
    pthread_mutex_t mu;
    int inflight; /* OCR requests with a job, not yet completed */
    unsigned long long next_id;
} Server;

typedef enum {
    R_ROOT, R_HEALTH, R_OCR, R_OCR_B64, R_RESULTS, R_CLEANUP, R_CHAT, R_MODELS, R_DOC, R_NOT_FOUND, R_METHOD
} Route;

typedef struct Req {
    Server *srv;
    char rid[48];
    Route route;
    int v1; /* OpenAI-style error bodies */
    char method[16];
    char path[160];
    double t0;
    int fd;
    uint8_t *body;
    size_t len, cap;
    int too_big, has_body;
    unsigned status;
    int job_held; /* counted in srv->inflight */
    char note[200];
} Req;

/* ---- logging ---- */

static void vlogf(const char *rid, const char *fmt, va_list ap) {
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03ld dsocr serve [%s] ", ts.tv_nsec / 1000000, rid);
    if (n < (int)sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    size_t L = strlen(line);
    if (L + 2 > sizeof line) L = sizeof line - 2;
    line[L] = '\n';
    line[L + 1] = 0;
    fputs(line, stderr);
    fflush(stderr);
}

static void slog(const char *rid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void slog(const char *rid, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlogf(rid, fmt, ap);
    va_end(ap);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    slog("-", "libmicrohttpd: %s", msg);
}

/* ---- responses ---- */

static enum MHD_Result respond(Req *r, struct MHD_Connection *c, unsigned code, const char *ctype, char *body,
                               size_t len, const char *h1, const char *v1) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->rid);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (h1) MHD_add_response_header(resp, h1, v1);
    r->status = code;
    enum MHD_Result ret = MHD_queue_response(c, code, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result respond_json(Req *r, struct MHD_Connection *c, unsigned code, cJSON *j, const char *h1,
                                    const char *v1) {
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s) {
        static const char OOM[] = "{\"detail\":\"out of memory\"}";
        s = strdup(OOM);
        code = MHD_HTTP_INTERNAL_SERVER_ERROR;
        if (!s) return MHD_NO;
    }
    return respond(r, c, code, "application/json", s, strlen(s), h1, v1);
}

static const char *error_type(unsigned code) {
    switch (code) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    case 504: return "timeout";
    case 507: return "insufficient_memory";
    default: return "server_error";
    }
}

/* {"detail": msg} as the seed does; under /v1 also OpenAI's {"error": {...}}. */
static enum MHD_Result respond_error(Req *r, struct MHD_Connection *c, unsigned code, const char *h1,
                                     const char *v1, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static enum MHD_Result respond_error(Req *r, struct MHD_Connection *c, unsigned code, const char *h1,
                                     const char *v1, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(r->note, sizeof r->note, "%s", msg);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "detail", msg);
    if (r->v1) {
        cJSON *e = cJSON_AddObjectToObject(j, "error");
        cJSON_AddStringToObject(e, "message", msg);
        cJSON_AddStringToObject(e, "type", error_type(code));
        cJSON_AddNullToObject(e, "param");
        cJSON_AddNumberToObject(e, "code", code);
    }
    return respond_json(r, c, code, j, h1, v1);
}

/* ---- small helpers ---- */

/* 1 when the peer closed its side (or the socket failed): the client is gone. */
static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return 1;
    if (p.revents & POLLIN) {
        char b;
        ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0) return 1;
    }
    return 0;
}

static int ct_equal(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    unsigned char d = (unsigned char)(na != nb);
    for (size_t i = 0; i < na; i++) d |= (unsigned char)(a[i] ^ b[i % (nb ? nb : 1)]);
    return d == 0;
}

/* q-value of a media range in an Accept header for type (exact match, or type/'*' when wildcard allowed). */
static double accept_q(const char *accept, const char *type, int wildcards) {
    double best = -1;
    const char *p = accept;
    while (p && *p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char item[128];
        if (n >= sizeof item) n = sizeof item - 1;
        memcpy(item, p, n);
        item[n] = 0;
        char *s = item;
        while (*s == ' ') s++;
        char *semi = strchr(s, ';');
        double q = 1;
        if (semi) {
            *semi = 0;
            char *qp = strstr(semi + 1, "q=");
            if (qp) q = atof(qp + 2);
        }
        size_t L = strlen(s);
        while (L && s[L - 1] == ' ') s[--L] = 0;
        int match = !strcasecmp(s, type);
        if (!match && wildcards) {
            const char *slash = strchr(type, '/');
            if (!strcmp(s, "*/*"))
                match = 1;
            else if (slash && L == (size_t)(slash - type) + 2 && !strncasecmp(s, type, L - 1) && s[L - 1] == '*')
                match = 1;
        }
        if (match && q > best) best = q;
        p = end ? end + 1 : NULL;
    }
    return best;
}

/* The page for browsers: text/html named explicitly (or text/'*') with a q at least JSON's. */
static int prefers_html(const char *accept) {
    if (!accept) return 0;
    double h = accept_q(accept, "text/html", 0);
    if (h < 0) h = accept_q(accept, "text/*", 0);
    if (h <= 0) return 0;
    double j = accept_q(accept, "application/json", 1);
    return h >= j;
}

static Route route_of(const char *method, const char *url, int *v1) {
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    *v1 = !strncmp(url, "/v1/", 4);
    struct {
        const char *path;
        Route r;
        int post;
    } T[] = {{"/", R_ROOT, 0},          {"/health", R_HEALTH, 0},           {"/ocr", R_OCR, 1},
             {"/ocr-base64", R_OCR_B64, 1}, {"/cleanup", R_CLEANUP, 1},         {"/v1/chat/completions", R_CHAT, 1},
             {"/v1/models", R_MODELS, 0},   {"/v1/ocr", R_DOC, 1}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (!strcmp(url, T[i].path)) return (T[i].post ? post : get) ? T[i].r : R_METHOD;
    if (!strncmp(url, "/results/", 9)) return get ? R_RESULTS : R_METHOD;
    return R_NOT_FOUND;
}

/* ---- simple endpoints ---- */

static cJSON *endpoints_json(void) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "/", "API information (JSON), or the web page for browsers");
    cJSON_AddStringToObject(e, "/health", "health check: model, device, queue");
    cJSON_AddStringToObject(e, "/ocr", "POST multipart/form-data: image file + prompt, save_to_file, base_size, "
                                      "image_size, crop_mode (or mode)");
    cJSON_AddStringToObject(e, "/ocr-base64", "POST JSON: image_base64 + the same options");
    cJSON_AddStringToObject(e, "/results/{filename}", "GET a saved result");
    cJSON_AddStringToObject(e, "/cleanup", "POST: release cached memory");
    cJSON_AddStringToObject(e, "/v1/chat/completions", "OpenAI-compatible chat completions (stream supported)");
    cJSON_AddStringToObject(e, "/v1/models", "OpenAI-compatible model list");
    cJSON_AddStringToObject(e, "/v1/ocr", "POST multipart/form-data: a PDF or image (file) + the options of dsocr ocr "
                                         "-> the document JSON; stream=true: server-sent events per page");
    return e;
}

static enum MHD_Result handle_root(Req *r, struct MHD_Connection *c) {
    Server *s = r->srv;
    const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
    if (prefers_html(accept)) {
        char *page = malloc(serve_page_html_len + 1);
        if (!page) return MHD_NO;
        memcpy(page, serve_page_html, serve_page_html_len + 1);
        return respond(r, c, 200, "text/html; charset=utf-8", page, serve_page_html_len, NULL, NULL);
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "name", "DeepSeek-OCR API (dsocr " DSOCR_VERSION ")");
    cJSON_AddStringToObject(j, "status", "running");
    cJSON_AddStringToObject(j, "model", s->model_name);
    cJSON_AddStringToObject(j, "mode", SEED_MODE_DESC);
    cJSON *o = cJSON_AddArrayToObject(j, "optimizations");
    const char *opts[] = {"C engine, no Python at run time",
                          "memory-mapped weights, loaded once and shared",
                          "one inference worker owning its session; bounded queue (429 when full)",
                          "working memory sized once per session (flat memory across requests)",
                          "token streaming (OpenAI API, server-sent events)",
                          "client disconnect cancels the request"};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) cJSON_AddItemToArray(o, cJSON_CreateString(opts[i]));
    cJSON_AddItemToObject(j, "endpoints", endpoints_json());
    return respond_json(r, c, 200, j, NULL, NULL);
}

/* Bytes as the seed prints them: "3.52 GB" (10^9 bytes). */
static const char *gb(char *b, size_t n, uint64_t bytes) {
    snprintf(b, n, "%.2f GB", (double)bytes / 1e9);
    return b;
}

static enum MHD_Result handle_health(Req *r, struct MHD_Connection *c) {
    Server *s = r->srv;
    WorkerStats ws;
    worker_stats(s->worker, &ws);
    if (ws.state == WORKER_LOADING) return respond_error(r, c, 503, NULL, NULL, "the model is loading");
    if (ws.state == WORKER_FAILED)
        return respond_error(r, c, 503, NULL, NULL, "the model failed to load: %s", ws.load_error);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", s->draining ? "draining" : "healthy");
    cJSON_AddBoolToObject(j, "model_loaded", 1);
    cJSON_AddBoolToObject(j, "tokenizer_loaded", 1);
    cJSON_AddStringToObject(j, "device", ws.dev.device[0] ? ws.dev.device : "cpu");
    cJSON_AddStringToObject(j, "mode", SEED_MODE_DESC);
    if (!strcmp(ws.dev.device, "cuda")) { /* the seed's GPU fields, as strings like "3.52 GB" */
        char b[32];
        cJSON_AddStringToObject(j, "gpu_name", ws.dev.gpu_name);
        cJSON_AddStringToObject(j, "gpu_memory_total", gb(b, sizeof b, ws.dev.gpu_total));
        cJSON_AddStringToObject(j, "gpu_memory_allocated", gb(b, sizeof b, ws.dev.allocated));
        cJSON_AddStringToObject(j, "gpu_memory_reserved", gb(b, sizeof b, ws.dev.peak));
        cJSON_AddStringToObject(j, "gpu_memory_free", gb(b, sizeof b, ws.dev.gpu_total - ws.dev.gpu_used));
    }
    cJSON_AddNumberToObject(j, "queue_depth", ws.queue_depth + ws.running);
    cJSON_AddNumberToObject(j, "requests_served", (double)ws.served);
    cJSON_AddNumberToObject(j, "uptime_s", (double)(long long)(ds_now() - s->t_start));
    cJSON_AddStringToObject(j, "model", s->model_name);
    cJSON_AddNumberToObject(j, "model_load_s", ws.load_seconds);
    if (s->cfg.fake_engine) cJSON_AddBoolToObject(j, "fake_engine", 1);
    return respond_json(r, c, 200, j, NULL, NULL);
}

static enum MHD_Result handle_results(Req *r, struct MHD_Connection *c, const char *name) {
    Server *s = r->srv;
    char *buf;
    size_t len;
    if (!s->results || !results_name_ok(name) || results_read(s->results, name, &buf, &len, NULL))
        return respond_error(r, c, 404, NULL, NULL, "result not found");
    return respond(r, c, 200, "text/plain; charset=utf-8", buf, len, NULL, NULL);
}

static enum MHD_Result handle_cleanup(Req *r, struct MHD_Connection *c) {
    malloc_trim(0);
    WorkerStats ws;
    worker_stats(r->srv->worker, &ws);
    const int gpu = !strcmp(ws.dev.device, "cuda");
    char b[32];
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "message", "Cleanup completed (freed heap pages returned to the system)");
    cJSON_AddStringToObject(j, "gpu_memory_allocated", gb(b, sizeof b, gpu ? ws.dev.allocated : 0));
    cJSON_AddStringToObject(j, "gpu_memory_reserved", gb(b, sizeof b, gpu ? ws.dev.peak : 0));
    return respond_json(r, c, 200, j, NULL, NULL);
}

static enum MHD_Result handle_models(Req *r, struct MHD_Connection *c) {
    Server *s = r->srv;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "object", "list");
    cJSON *d = cJSON_AddArrayToObject(j, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->created);
    cJSON_AddStringToObject(m, "owned_by", "dsocr");
    cJSON_AddNumberToObject(m, "max_model_len", 8192);
    cJSON_AddItemToArray(d, m);
    return respond_json(r, c, 200, j, NULL, NULL);
}

/* ---- OCR ---- */

static const char *finish_reason(DsocrStop s) { return s == DSOCR_STOP_LENGTH ? "length" : "stop"; }

static cJSON *chat_base(const char *rid, const char *object, time_t created, const char *model) {
    cJSON *j = cJSON_CreateObject();
    char id[80];
    snprintf(id, sizeof id, "chatcmpl-%s", rid);
    cJSON_AddStringToObject(j, "id", id);
    cJSON_AddStringToObject(j, "object", object);
    cJSON_AddNumberToObject(j, "created", (double)created);
    cJSON_AddStringToObject(j, "model", model);
    return j;
}

static void add_warnings(cJSON *j, const OcrRequest *q) {
    if (!q->n_warnings) return;
    cJSON *w = cJSON_AddArrayToObject(j, "warnings");
    for (int i = 0; i < q->n_warnings; i++) cJSON_AddItemToArray(w, cJSON_CreateString(q->warnings[i]));
}

static cJSON *usage_json(const DsocrResult *res) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", res->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", res->n_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", res->n_prompt + res->n_tokens);
    return u;
}

/* The start of a job's --timeout clock (j->mu held): the request's arrival, or for a document the latest page
 * event, so that the limit applies per page however long the document. */
static double timeout_base(const Job *j, double t_arrival) {
    return j->doc && j->t_progress > t_arrival ? j->t_progress : t_arrival;
}

/* The HTTP status and message for a finished job that failed (or was cancelled). */
static unsigned job_error(const Job *j, char *msg, size_t n) {
    if (j->status == DSOCR_OK || j->status == DSOCR_E_CANCELLED) {
        snprintf(msg, n, "the request was cancelled (timeout or shutdown)");
        return 503;
    }
    switch (j->status) {
    case DSOCR_E_INVALID_ARG:
    case DSOCR_E_IMAGE:
    case DSOCR_E_FORMAT:
    case DSOCR_E_TOO_LONG:
    case DSOCR_E_UNSUPPORTED:
        snprintf(msg, n, "%s", j->err);
        return 400;
    case DSOCR_E_NOMEM:
        snprintf(msg, n,
                 "not enough memory for this request (%s); try a smaller mode (tiny or small), crop_mode false, a "
                 "smaller image, or fewer max_tokens",
                 j->err);
        return 507;
    default:
        snprintf(msg, n, "internal error: %s: %s", dsocr_status_string(j->status), j->err);
        return 500;
    }
}

/* The full (non-streamed) answer of a finished job. */
static enum MHD_Result respond_job(Req *r, struct MHD_Connection *c, Job *j) {
    Server *s = r->srv;
    if (j->status != DSOCR_OK || j->res.stop == DSOCR_STOP_CANCEL) {
        char msg[1024];
        unsigned code = job_error(j, msg, sizeof msg);
        return respond_error(r, c, code, NULL, NULL, "%s", msg);
    }
    if (r->route == R_DOC) {
        snprintf(r->note, sizeof r->note, "%d pages, %d tokens in %.2fs", j->doc_pages, j->live_tokens,
                 j->t_end - j->t_start);
        cJSON *doc = j->doc_json;
        j->doc_json = NULL; /* the job is done: only this thread reads it now */
        return respond_json(r, c, 200, doc, NULL, NULL);
    }
    snprintf(r->note, sizeof r->note, "%d tokens in %.2fs", j->res.n_tokens, j->t_end - j->t_start);
    cJSON *out;
    if (r->route == R_CHAT) {
        out = chat_base(r->rid, "chat.completion", time(NULL), j->req.model[0] ? j->req.model : s->model_name);
        cJSON *choices = cJSON_AddArrayToObject(out, "choices");
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", 0);
        cJSON *m = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", j->res.text);
        cJSON_AddStringToObject(ch, "finish_reason", finish_reason(j->res.stop));
        cJSON_AddItemToArray(choices, ch);
        cJSON_AddItemToObject(out, "usage", usage_json(&j->res));
        add_warnings(out, &j->req);
    } else {
        out = cJSON_CreateObject();
        cJSON_AddBoolToObject(out, "success", 1);
        char msg[400];
        if (j->req.save_to_file && !j->output_file[0])
            snprintf(msg, sizeof msg, "OCR completed successfully; the result was not saved: %s", j->save_err);
        else
            snprintf(msg, sizeof msg, "OCR completed successfully");
        cJSON_AddStringToObject(out, "message", msg);
        cJSON_AddStringToObject(out, "text", j->res.text);
        if (j->output_file[0])
            cJSON_AddStringToObject(out, "output_file", j->output_file);
        else
            cJSON_AddNullToObject(out, "output_file");
    }
    return respond_json(r, c, 200, out, NULL, NULL);
}

/* Streaming state, owned by the MHD response (freed by its free callback). */
typedef struct Stream {
    Server *srv;
    Job *job;
    char rid[48];
    char model[128];
    int fd;
    double t0;
    time_t created;
    char *out; /* pending bytes for the client */
    size_t out_len, out_off, out_cap;
    size_t live_off;
    int sent_role, finished, gone;
} Stream;

static int stream_add(Stream *st, const char *s, size_t n) {
    if (st->out_off == st->out_len) st->out_off = st->out_len = 0;
    if (st->out_len + n > st->out_cap) {
        size_t nc = st->out_cap ? st->out_cap * 2 : 4096;
        while (nc < st->out_len + n) nc *= 2;
        char *np = realloc(st->out, nc);
        if (!np) return -1;
        st->out = np;
        st->out_cap = nc;
    }
    memcpy(st->out + st->out_len, s, n);
    st->out_len += n;
    return 0;
}

static int stream_event(Stream *st, cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s) return -1;
    int rc = stream_add(st, "data: ", 6) || stream_add(st, s, strlen(s)) || stream_add(st, "\n\n", 2);
    free(s);
    return rc;
}

static cJSON *stream_chunk(Stream *st, const char *role, const char *content, size_t clen, const char *finish) {
    cJSON *j = chat_base(st->rid, "chat.completion.chunk", st->created, st->model);
    cJSON *choices = cJSON_AddArrayToObject(j, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", 0);
    cJSON *d = cJSON_AddObjectToObject(ch, "delta");
    if (role) cJSON_AddStringToObject(d, "role", role);
    if (content) {
        char *tmp = malloc(clen + 1);
        if (tmp) {
            memcpy(tmp, content, clen);
            tmp[clen] = 0;
            cJSON_AddStringToObject(d, "content", tmp);
            free(tmp);
        }
    }
    if (finish)
        cJSON_AddStringToObject(ch, "finish_reason", finish);
    else
        cJSON_AddNullToObject(ch, "finish_reason");
    cJSON_AddItemToArray(choices, ch);
    return j;
}

/* Waits (j->mu held on entry and return) until the job has new live bytes past st->live_off or is done; 1 when
 * the client went away (then j->mu is not held and the job is cancelled). */
static int stream_wait(Stream *st, Job *j) {
    while (j->state != JOB_DONE && j->live_len == st->live_off) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += WAIT_SLICE_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        if (j->state == JOB_DONE || j->live_len != st->live_off) break;
        double base = timeout_base(j, st->t0);
        pthread_mutex_unlock(&j->mu);
        if (client_gone(st->fd)) {
            job_cancel(j);
            st->gone = 1;
            slog(st->rid, "client disconnected during the stream: request cancelled");
            return 1;
        }
        if (ds_now() - base > st->srv->cfg.timeout_s) job_cancel(j);
        pthread_mutex_lock(&j->mu);
    }
    return 0;
}

/* Hands up to max bytes of the stream's pending output to libmicrohttpd. */
static ssize_t stream_drain(Stream *st, char *buf, size_t max) {
    size_t n = st->out_len - st->out_off;
    if (n > max) n = max;
    memcpy(buf, st->out + st->out_off, n);
    st->out_off += n;
    return (ssize_t)n;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    Stream *st = cls;
    Job *j = st->job;
    for (;;) {
        if (st->out_off < st->out_len) return stream_drain(st, buf, max);
        if (st->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!st->sent_role) {
            cJSON *ch = stream_chunk(st, "assistant", "", 0, NULL);
            add_warnings(ch, &j->req);
            if (stream_event(st, ch)) return MHD_CONTENT_READER_END_WITH_ERROR;
            st->sent_role = 1;
            continue;
        }
        /* wait for text or the end, watching the client and the clock */
        pthread_mutex_lock(&j->mu);
        if (stream_wait(st, j)) return MHD_CONTENT_READER_END_WITH_ERROR;
        size_t from = st->live_off, to = j->live_len;
        int done = j->state == JOB_DONE;
        char *delta = NULL;
        if (to > from && (delta = malloc(to - from))) memcpy(delta, j->live + from, to - from);
        pthread_mutex_unlock(&j->mu);
        if (delta) {
            st->live_off = to;
            int rc = stream_event(st, stream_chunk(st, NULL, delta, to - from, NULL));
            free(delta);
            if (rc) return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (!done) continue;
        /* the end: any text not streamed yet (the tokenizer's final flush), then the finish */
        if (j->status != DSOCR_OK || j->res.stop == DSOCR_STOP_CANCEL) {
            char msg[1024];
            unsigned code = job_error(j, msg, sizeof msg);
            cJSON *e = cJSON_CreateObject();
            cJSON *err = cJSON_AddObjectToObject(e, "error");
            cJSON_AddStringToObject(err, "message", msg);
            cJSON_AddStringToObject(err, "type", error_type(code));
            cJSON_AddNumberToObject(err, "code", code);
            stream_event(st, e);
            slog(st->rid, "stream ended with an error: %u %s", code, msg);
        } else {
            if (j->res.text_len > st->live_off) {
                stream_event(st, stream_chunk(st, NULL, j->res.text + st->live_off, j->res.text_len - st->live_off,
                                              NULL));
                st->live_off = j->res.text_len;
            }
            stream_event(st, stream_chunk(st, NULL, NULL, 0, finish_reason(j->res.stop)));
            if (j->req.include_usage) {
                cJSON *u = chat_base(st->rid, "chat.completion.chunk", st->created, st->model);
                cJSON_AddArrayToObject(u, "choices");
                cJSON_AddItemToObject(u, "usage", usage_json(&j->res));
                stream_event(st, u);
            }
        }
        stream_add(st, "data: [DONE]\n\n", 14);
        st->finished = 1;
    }
}

/* POST /v1/ocr with stream: the page events the worker wrote into live (already server-sent events), then
 * "event: done" with the document object, or "event: error". */
static ssize_t doc_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    Stream *st = cls;
    Job *j = st->job;
    for (;;) {
        if (st->out_off < st->out_len) return stream_drain(st, buf, max);
        if (st->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&j->mu);
        if (stream_wait(st, j)) return MHD_CONTENT_READER_END_WITH_ERROR;
        size_t from = st->live_off, to = j->live_len;
        int done = j->state == JOB_DONE;
        int rc = to > from ? stream_add(st, j->live + from, to - from) : 0;
        if (!rc) j->live_len = 0; /* everything the worker wrote is now ours: its buffer is reused */
        pthread_mutex_unlock(&j->mu);
        if (rc) return MHD_CONTENT_READER_END_WITH_ERROR;
        st->live_off = 0;
        if (!done) continue;
        cJSON *ev = cJSON_CreateObject();
        if (j->status != DSOCR_OK) {
            char msg[1024];
            unsigned code = job_error(j, msg, sizeof msg);
            cJSON_AddStringToObject(ev, "event", "error");
            cJSON_AddStringToObject(ev, "detail", msg);
            cJSON_AddNumberToObject(ev, "code", code);
            slog(st->rid, "stream ended with an error: %u %s", code, msg);
            stream_add(st, "event: error\n", 13);
        } else {
            cJSON_AddStringToObject(ev, "event", "done");
            cJSON_AddItemToObject(ev, "document", j->doc_json);
            j->doc_json = NULL; /* the job is done: only this thread reads it now */
            stream_add(st, "event: done\n", 12);
        }
        if (stream_event(st, ev)) return MHD_CONTENT_READER_END_WITH_ERROR;
        st->finished = 1;
    }
}

static void stream_free(void *cls) {
    Stream *st = cls;
    if (!st->finished) {
        job_cancel(st->job); /* the client went away before the end */
        if (!st->gone) slog(st->rid, "stream closed before the end: request cancelled");
    }
    job_release(st->job);
    free(st->out);
    free(st);
}

static enum MHD_Result submit_and_answer(Req *r, struct MHD_Connection *c, Job *j);

/* Validates, queues and answers one OCR request (the request is consumed). */
static enum MHD_Result run_ocr(Req *r, struct MHD_Connection *c, OcrRequest *q) {
    Server *s = r->srv;
    WorkerStats ws;
    worker_stats(s->worker, &ws);
    if (s->draining) {
        api_request_free(q);
        return respond_error(r, c, 503, NULL, NULL, "the server is shutting down");
    }
    if (ws.state != WORKER_READY) {
        api_request_free(q);
        if (ws.state == WORKER_LOADING) return respond_error(r, c, 503, "Retry-After", "5", "the model is loading");
        return respond_error(r, c, 503, NULL, NULL, "the model failed to load: %s", ws.load_error);
    }
    /* the image must decode within the pixel limit before any work is queued */
    {
        ImageDecodeOptions dop = {.alpha_white = q->compat == DSOCR_COMPAT_VLLM, .max_pixels = s->cfg.max_pixels};
        DsImage im = {0};
        DsError e = {0};
        while (sem_wait(&s->decode_sem) != 0 && errno == EINTR) {
        }
        DsocrStatus st = image_decode(q->image, q->image_len, &dop, &im, &e);
        sem_post(&s->decode_sem);
        image_free(&im);
        if (st) {
            api_request_free(q);
            return respond_error(r, c, 400, NULL, NULL, "%s", e.msg);
        }
    }
    Job *j = job_new(r->rid, q);
    if (!j) {
        api_request_free(q);
        return respond_error(r, c, 507, NULL, NULL, "out of memory");
    }
    return submit_and_answer(r, c, j);
}

/* Queues j (the caller's reference is consumed) and answers: 429/503 when it cannot be queued, else a stream
 * or the full answer once the job is done, cancelling the job when the client goes away or time runs out. */
static enum MHD_Result submit_and_answer(Req *r, struct MHD_Connection *c, Job *j) {
    Server *s = r->srv;
    WorkerStats ws;
    SubmitResult sr = worker_submit(s->worker, j);
    if (sr != SUBMIT_OK) {
        job_release(j);
        if (sr == SUBMIT_FULL) {
            worker_stats(s->worker, &ws);
            char ra[24];
            double wait = (ws.queue_depth + 1) * (ws.avg_seconds > 0 ? ws.avg_seconds : 1.0);
            snprintf(ra, sizeof ra, "%d", wait < 1 ? 1 : wait > 3600 ? 3600 : (int)(wait + 0.999));
            return respond_error(r, c, 429, "Retry-After", ra, "the queue is full (%d waiting); retry in %s s",
                                 ws.queue_depth, ra);
        }
        return respond_error(r, c, 503, NULL, NULL, "%s",
                             sr == SUBMIT_DRAINING ? "the server is shutting down" : "the model is not ready");
    }
    pthread_mutex_lock(&s->mu);
    s->inflight++;
    pthread_mutex_unlock(&s->mu);
    r->job_held = 1;
    int doc_stream = r->route == R_DOC && j->dreq.stream;
    if ((r->route == R_CHAT && j->req.stream) || doc_stream) {
        Stream *st = calloc(1, sizeof *st);
        if (!st) {
            job_cancel(j);
            job_release(j);
            return respond_error(r, c, 507, NULL, NULL, "out of memory");
        }
        st->srv = s;
        st->job = j; /* the stream takes over this reference */
        snprintf(st->rid, sizeof st->rid, "%s", r->rid);
        snprintf(st->model, sizeof st->model, "%s", j->req.model[0] ? j->req.model : s->model_name);
        st->fd = r->fd;
        st->t0 = r->t0;
        st->created = time(NULL);
        struct MHD_Response *resp = MHD_create_response_from_callback(
            MHD_SIZE_UNKNOWN, 16384, doc_stream ? doc_stream_read : stream_read, st, stream_free);
        if (!resp) {
            stream_free(st);
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Request-Id", r->rid);
        r->status = 200;
        snprintf(r->note, sizeof r->note, "stream");
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }
    /* wait for the answer, watching the client and the clock */
    enum MHD_Result ret;
    pthread_mutex_lock(&j->mu);
    int timed_out = 0;
    while (j->state != JOB_DONE) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += WAIT_SLICE_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        if (j->state == JOB_DONE) break;
        double base = timeout_base(j, r->t0);
        pthread_mutex_unlock(&j->mu);
        if (client_gone(r->fd)) {
            job_cancel(j);
            slog(r->rid, "client disconnected: request cancelled");
            snprintf(r->note, sizeof r->note, "client disconnected; cancelled");
            job_release(j);
            return MHD_NO;
        }
        if (ds_now() - base > s->cfg.timeout_s) {
            job_cancel(j);
            timed_out = 1;
            pthread_mutex_lock(&j->mu);
            break;
        }
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    if (timed_out)
        ret = respond_error(r, c, 504, NULL, NULL, "the request took longer than %.0f s and was cancelled",
                            s->cfg.timeout_s);
    else
        ret = respond_job(r, c, j);
    job_release(j);
    return ret;
}

/* POST /v1/ocr: parse the form, open the document here (a PDF's pages are listed by the renderer: a broken
 * PDF is a 400 with its message before anything is queued; an image must decode within --max-pixels), check
 * the page selection against the page count, then queue it for the worker, which runs document_run. */
static enum MHD_Result handle_document(Req *r, struct MHD_Connection *c) {
    Server *s = r->srv;
    DocRequest q;
    docapi_request_init(&q);
    DsError e = {0};
    DsocrStatus st = docapi_parse(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
                                  r->body, r->len, &s->lim, &q, &e);
    free(r->body); /* the request holds its own copy now */
    r->body = NULL;
    r->len = r->cap = 0;
    if (!st && !q.stream) {
        const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
        q.stream = accept && accept_q(accept, "text/event-stream", 0) > 0;
    }
    if (st) {
        docapi_request_free(&q);
        return respond_error(r, c, st == DSOCR_E_NOMEM ? 507 : 400, NULL, NULL, "%s", e.msg);
    }
    WorkerStats ws;
    worker_stats(s->worker, &ws);
    if (s->draining || ws.state != WORKER_READY) {
        docapi_request_free(&q);
        if (s->draining) return respond_error(r, c, 503, NULL, NULL, "the server is shutting down");
        if (ws.state == WORKER_LOADING) return respond_error(r, c, 503, "Retry-After", "5", "the model is loading");
        return respond_error(r, c, 503, NULL, NULL, "the model failed to load: %s", ws.load_error);
    }
    DocOptions o;
    document_options_default(&o);
    if (s->cfg.max_pixels > 0 && s->cfg.max_pixels < o.pdf.max_pixels) o.pdf.max_pixels = s->cfg.max_pixels;
    Document *doc = NULL;
    unsigned code = 0;
    char msg[1024] = "";
    while (sem_wait(&s->decode_sem) != 0 && errno == EINTR) {
    }
    st = document_open_buffer(q.file, q.file_len, q.filename, &o, &doc, &e);
    if (st) {
        code = st == DSOCR_E_NOMEM ? 507 : st == DSOCR_E_IO || st == DSOCR_E_INTERNAL ? 500 : 400;
        snprintf(msg, sizeof msg, "%s", e.msg);
    } else if (!document_is_pdf(doc)) {
        ImageDecodeOptions dop = {.alpha_white = q.compat == DSOCR_COMPAT_VLLM, .max_pixels = s->cfg.max_pixels};
        DsImage im = {0};
        if (image_decode(q.file, q.file_len, &dop, &im, &e)) code = 400, snprintf(msg, sizeof msg, "%s", e.msg);
        image_free(&im);
    } else {
        int np = document_page_count(doc);
        unsigned char *sel = malloc((size_t)np + 1);
        char pe[512];
        if (!sel)
            code = 507, snprintf(msg, sizeof msg, "out of memory");
        else if (document_parse_pages(q.pages[0] ? q.pages : NULL, np, sel, pe, sizeof pe) < 0)
            code = 400, snprintf(msg, sizeof msg, "pages: %s", pe);
        free(sel);
    }
    sem_post(&s->decode_sem);
    free(q.file); /* the document holds its own copy */
    q.file = NULL;
    q.file_len = 0;
    if (code) {
        document_close(doc);
        docapi_request_free(&q);
        return respond_error(r, c, code, NULL, NULL, "%s", msg);
    }
    Job *j = job_new_doc(r->rid, &q, doc);
    if (!j) {
        document_close(doc);
        docapi_request_free(&q);
        return respond_error(r, c, 507, NULL, NULL, "out of memory");
    }
    return submit_and_answer(r, c, j);
}

static enum MHD_Result dispatch(Req *r, struct MHD_Connection *c, const char *url) {
    Server *s = r->srv;
    OcrRequest q;
    DsError e = {0};
    DsocrStatus st;
    switch (r->route) {
    case R_ROOT: return handle_root(r, c);
    case R_HEALTH: return handle_health(r, c);
    case R_RESULTS: return handle_results(r, c, url + 9);
    case R_CLEANUP: return handle_cleanup(r, c);
    case R_MODELS: return handle_models(r, c);
    case R_OCR:
        api_request_init_seed(&q);
        st = api_parse_multipart(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE),
                                 r->body, r->len, &s->lim, &q, &e);
        break;
    case R_OCR_B64:
        api_request_init_seed(&q);
        st = api_parse_base64_json(r->body, r->len, &s->lim, &q, &e);
        break;
    case R_CHAT:
        api_request_init_chat(&q);
        st = api_parse_chat(r->body, r->len, &s->lim, &q, &e);
        break;
    case R_DOC: return handle_document(r, c);
    default: return respond_error(r, c, 404, NULL, NULL, "Not Found");
    }
    free(r->body); /* the request holds its own copies now */
    r->body = NULL;
    r->len = r->cap = 0;
    if (st) {
        api_request_free(&q);
        if (st == DSOCR_E_NOMEM) return respond_error(r, c, 507, NULL, NULL, "%s", e.msg);
        return respond_error(r, c, 400, NULL, NULL, "%s", e.msg);
    }
    return run_ocr(r, c, &q);
}

/* ---- the libmicrohttpd callbacks ---- */

static int has_body_route(Route rt) { return rt == R_OCR || rt == R_OCR_B64 || rt == R_CHAT || rt == R_DOC; }

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    Server *s = cls;
    Req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *con_cls = r;
        r->srv = s;
        r->t0 = ds_now();
        snprintf(r->method, sizeof r->method, "%s", method);
        snprintf(r->path, sizeof r->path, "%s", url);
        const char *xid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
        int ok = xid && *xid && strlen(xid) < 40;
        for (const char *p = xid; ok && *p; p++)
            ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
                 *p == '_' || *p == '.';
        pthread_mutex_lock(&s->mu);
        unsigned long long id = ++s->next_id;
        pthread_mutex_unlock(&s->mu);
        if (ok)
            snprintf(r->rid, sizeof r->rid, "%s", xid);
        else
            snprintf(r->rid, sizeof r->rid, "r%06llu", id);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        r->fd = ci ? ci->connect_fd : -1;
        r->route = route_of(method, url, &r->v1);
        if (r->route == R_NOT_FOUND) return respond_error(r, c, 404, NULL, NULL, "Not Found");
        if (r->route == R_METHOD) return respond_error(r, c, 405, NULL, NULL, "Method Not Allowed");
        if (s->cfg.api_key && *s->cfg.api_key && r->route != R_ROOT && r->route != R_HEALTH) {
            const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
            if (!auth || strncasecmp(auth, "Bearer ", 7) != 0 || !ct_equal(auth + 7, s->cfg.api_key))
                return respond_error(r, c, 401, "WWW-Authenticate", "Bearer",
                                     auth ? "invalid API key" : "missing API key (Authorization: Bearer KEY)");
        }
        if (has_body_route(r->route)) {
            if (s->draining) return respond_error(r, c, 503, NULL, NULL, "the server is shutting down");
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl) {
                char *end;
                errno = 0;
                unsigned long long n = strtoull(cl, &end, 10);
                if (errno || *end || n > s->cfg.max_upload)
                    return respond_error(r, c, 413, NULL, NULL, "the request body (%s bytes) is over the limit of %zu",
                                         cl, s->cfg.max_upload);
                if (n) {
                    r->body = malloc((size_t)n);
                    if (!r->body) return respond_error(r, c, 507, NULL, NULL, "out of memory for the request body");
                    r->cap = (size_t)n;
                }
            }
            r->has_body = 1;
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (!r->has_body || r->too_big) return MHD_YES;
        if (r->len + n > s->cfg.max_upload) {
            r->too_big = 1;
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
            return MHD_YES;
        }
        if (r->len + n > r->cap) {
            size_t nc = r->cap ? r->cap * 2 : 65536;
            while (nc < r->len + n) nc *= 2;
            if (nc > s->cfg.max_upload) nc = s->cfg.max_upload;
            uint8_t *nb = realloc(r->body, nc);
            if (!nb) {
                r->too_big = 2;
                return MHD_YES;
            }
            r->body = nb;
            r->cap = nc;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        return MHD_YES;
    }
    if (r->status) return MHD_YES; /* answered already */
    if (r->too_big == 1)
        return respond_error(r, c, 413, NULL, NULL, "the request body is over the limit of %zu bytes",
                             s->cfg.max_upload);
    if (r->too_big == 2) return respond_error(r, c, 507, NULL, NULL, "out of memory for the request body");
    return dispatch(r, c, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)c;
    Server *s = cls;
    Req *r = *con_cls;
    if (!r) return;
    static const char *why[] = {"", "error", "timeout", "shutdown", "read error", "client aborted"};
    const char *w = (unsigned)toe < sizeof why / sizeof why[0] ? why[toe] : "?";
    slog(r->rid, "%s %s -> %u in %.3fs%s%s%s%s", r->method, r->path, r->status, ds_now() - r->t0, r->note[0] ? " (" : "",
         r->note, r->note[0] ? ")" : "", toe != MHD_REQUEST_TERMINATED_COMPLETED_OK ? w : "");
    if (r->job_held) {
        pthread_mutex_lock(&s->mu);
        s->inflight--;
        pthread_mutex_unlock(&s->mu);
    }
    free(r->body);
    free(r);
    *con_cls = NULL;
}

/* ---- start and stop ---- */

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(sig_pipe[1], &b, 1) < 0) {
    }
    errno = saved;
}

void serve_config_default(ServeConfig *c) {
    memset(c, 0, sizeof *c);
    c->device = "cpu";
    c->host = "127.0.0.1";
    c->port = 8031;
    c->queue_max = 16;
    c->max_batch = 1;
    c->max_connections = 128;
    c->max_upload = 50u * 1000 * 1000;
    c->max_pixels = 50000000;
    c->max_prompt = 4000;
    c->max_tokens_cap = 8192;
    c->default_max_tokens = 0;
    c->timeout_s = 600;
    c->drain_s = 60;
    c->results_dir = NULL; /* serve_run picks $XDG_CACHE_HOME/dsocr/results, else ~/.cache/dsocr/results */
    c->results_max = 1000;
}

int serve_run(const ServeConfig *cfg) {
    Server *s = calloc(1, sizeof *s);
    if (!s) return 1;
    s->cfg = *cfg;
    s->model_name = cfg->model_name && *cfg->model_name ? cfg->model_name
                    : cfg->fake_engine                  ? "fake-engine"
                                                        : cfg->model_dir;
    s->lim.max_prompt = cfg->max_prompt;
    s->lim.max_tokens_cap = cfg->max_tokens_cap;
    s->t_start = ds_now();
    s->created = time(NULL);
    pthread_mutex_init(&s->mu, NULL);
    sem_init(&s->decode_sem, 0, 2);
    int rc = 1;
    struct MHD_Daemon *d = NULL;
    DsError e = {0};

    /* signals: a handler (run by whichever thread gets them: libraries start threads of their own before main)
     * writes the signal number to a pipe the main thread reads */
    if (pipe2(sig_pipe, O_CLOEXEC) != 0) {
        fprintf(stderr, "dsocr serve: pipe: %s\n", strerror(errno));
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* one thread per connection: cap glibc's per-thread malloc arenas so that many short-lived connection threads
     * do not each grow a heap of their own (memory must not creep with the number of requests) */
    mallopt(M_ARENA_MAX, 2);

    char results_dir[4096];
    if (!cfg->results_dir) {
        const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (xdg && *xdg)
            snprintf(results_dir, sizeof results_dir, "%s/dsocr/results", xdg);
        else if (home && *home)
            snprintf(results_dir, sizeof results_dir, "%s/.cache/dsocr/results", home);
        else
            snprintf(results_dir, sizeof results_dir, "dsocr-results");
        s->cfg.results_dir = results_dir;
        cfg = &s->cfg;
    }
    if (cfg->results_dir && *cfg->results_dir && results_open(cfg->results_dir, cfg->results_max, &s->results, &e)) {
        fprintf(stderr, "dsocr serve: %s\n", e.msg);
        goto out;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV},
                    *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", cfg->port);
    int gai = getaddrinfo(cfg->host, port, &hints, &ai);
    if (gai || !ai) {
        fprintf(stderr, "dsocr serve: cannot resolve host '%s': %s\n", cfg->host, gai_strerror(gai));
        goto out;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
                         s, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)cfg->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_THREAD_STACK_SIZE,
                         (size_t)(512 * 1024), MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) {
        fprintf(stderr, "dsocr serve: cannot listen on %s:%d: %s\n", cfg->host, cfg->port,
                errno ? strerror(errno) : "libmicrohttpd refused to start");
        goto out;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int bound = di ? di->port : cfg->port;
    int v6 = strchr(cfg->host, ':') != NULL;
    fprintf(stderr, "dsocr serve: listening on http://%s%s%s:%d\n", v6 ? "[" : "", cfg->host, v6 ? "]" : "", bound);
    fflush(stderr);
    slog("-", "loading %s; queue %d, max upload %zu bytes, results %s (cap %d)%s",
         cfg->fake_engine ? "the fake engine" : cfg->model_dir, cfg->queue_max, cfg->max_upload,
         s->results ? cfg->results_dir : "off", cfg->results_max, cfg->api_key && *cfg->api_key ? ", API key on" : "");
    WorkerConfig wc = {.model_dir = cfg->model_dir,
                       .device = cfg->device,
                       .quant = cfg->quant,
                       .gpu_mem = cfg->gpu_mem,
                       .threads = cfg->threads,
                       .queue_max = cfg->queue_max,
                       .max_batch = cfg->max_batch,
                       .default_max_tokens = cfg->default_max_tokens,
                       .results = s->results,
                       .fake = cfg->fake_engine,
                       .log = slog};
    if (worker_start(&wc, &s->worker, &e)) {
        fprintf(stderr, "dsocr serve: %s\n", e.msg);
        goto out;
    }
    unsigned char sig = 0;
    while (read(sig_pipe[0], &sig, 1) != 1 && errno == EINTR) {
    }
    slog("-", "%s: refusing new requests, finishing the running and queued ones (up to %.0f s)",
         sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg->drain_s);
    s->draining = 1;
    worker_stop(s->worker, cfg->drain_s);
    s->worker = NULL;
    /* let answers and streams of finished jobs reach their clients */
    for (double t0 = ds_now(); ds_now() - t0 < 10;) {
        pthread_mutex_lock(&s->mu);
        int n = s->inflight;
        pthread_mutex_unlock(&s->mu);
        if (!n) break;
        nanosleep(&(struct timespec){0, 20000000}, NULL);
    }
    rc = 0;
out:
    if (d) MHD_stop_daemon(d);
    if (s->worker) worker_stop(s->worker, 0);
    results_close(s->results);
    sem_destroy(&s->decode_sem);
    pthread_mutex_destroy(&s->mu);
    /* shutting down already: a repeated SIGTERM/SIGINT during teardown must not turn a clean exit into a kill */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    for (int i = 0; i < 2; i++)
        if (sig_pipe[i] >= 0) close(sig_pipe[i]), sig_pipe[i] = -1;
    if (rc == 0) slog("-", "stopped");
    free(s);
    return rc;
}
