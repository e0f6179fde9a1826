/* engine.c: the public API (include/dsocr.h): model and session lifetimes and one OCR run: decode the image,
 * plan and encode its views, lay out the image-token block, build the prompt, prefill, then greedy generation
 * with the profile's no-repeat n-gram guard, streaming text through the callback.
 * Memory: everything a run needs is allocated by dsocr_session_new for the worst case the session accepts;
 * a run allocates only the decoded image and its views (sized by the input), the result, and debug dumps. */
#include "engine.h"
#include "plan.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/backend_cuda.h"
#include "decoder.h"
#include "dump.h"
#include "kvpool.h"
#include "model.h"
#include "ngram.h"
#include "vision.h"

#define KV_BLOCK 16
#define PREFILL_CHUNK 256
/* Model.lean (placed under a budget it did not fit whole): prefill chunks of 128 rows (half the decoder's working
 * memory) with the routed experts on the GPU, and a KV pool grown in 128-token steps */
#define LEAN_PREFILL_CHUNK 128
/* rows: the hybrid placements' prefill chunk (each chunk copies a layer's routed experts to the GPU, cuda
 * moe_stream: fewer, larger chunks copy less; 913 rows took 1.42 s in 128-row chunks, H100, Q8_0) */
#define HYBRID_PREFILL_CHUNK 512
/* rows: the CPU's prefill chunk (host memory: a gundam page's 913 prompt rows in one pass, each weight read and
 * widened once a layer, and every product with rows enough for many threads; 1,024 rows of decoder working memory
 * are about 120 MB) */
#define CPU_PREFILL_CHUNK 1024
#define LEAN_KV_GROW 128
#define KV_GROW 1024 /* tokens: the KV pool's first size and growth step */
#define ROWS_GROW 1024 /* rows: feat's and emb's first size and growth step (rows_reserve) */
/* GPU memory the driver counts for the process beyond dsocr's allocations (kernel modules loaded on first use,
 * the cuBLAS handles, each allocation rounded to the driver's pages): measured 0.10 GiB all on the GPU and
 * 0.17 GiB for a hybrid gundam page on an H100 (bench/results/lowvram-h100-session7.txt). The plan reserves it
 * and the allocator's budget leaves it free, so that the driver's view stays within --gpu-mem. */
#define DRIVER_ALLOWANCE ((uint64_t)176 << 20)
#define MAX_VIEW_SIDE 1280
#define VIEW_SIDE0 1024 /* the vision working memory's first size */

struct DsocrModel {
    Model *m;
    Backend *be; /* where the weights live and the runs compute */
    int threads;
    Plan plan;       /* where the weights went (a GPU backend; kind PLAN_ALL_GPU on the CPU) */
    uint64_t budget; /* the GPU budget in force (0 on the CPU) */
};

struct DsocrSession {
    const DsocrModel *model;
    int max_context;
    VisionWork *vw;
    DecoderWork *dw;
    Backend *be;
    KvCache kv;         /* data: the shared region (region_reserve), backend memory */
    int32_t *table;     /* [n_blocks] identity block table of the one sequence (host) */
    int32_t *table_dev; /* the same in backend memory */
    int32_t **tables_dev; /* backend array {table_dev} */
    int32_t *pos_dev;   /* [max_context] positions 0.. in backend memory */
    float *feat;        /* [rows_cap, D] view outputs before layout (backend) */
    float *emb;         /* [rows_cap, D] the prompt's input rows (backend) */
    int rows_cap;       /* rows feat and emb hold: rows_grow steps up to max_context, grown by rows_reserve */
    int rows_grow;      /* ROWS_GROW ($DSOCR_ROWS_GROW for tests: a small step makes every run grow them) */
    float *chw;         /* [3, MAX_VIEW_SIDE, MAX_VIEW_SIDE] one normalised view (host) */
    float *logits_dev;  /* [V] (backend) */
    float *logits;      /* [V] host copy */
    float *masked;      /* [V] logits after the n-gram ban (host) */
    int32_t *seq;       /* [max_context] prompt + generated ids */
    int32_t *step_dev;  /* [4] backend: the decode step's input id and position; [2]: the argmax of its logits */
    int32_t step_host[2];
    float *emb_row;     /* [D] pinned: the step's input row when the embeddings stay on the host (plan.h) */
    void *graph;        /* the recorded one-row decode step (backend.h graph_*), NULL until the first step */
    int graph_prec;     /* the DsocrPrecision it was recorded for (the KV cache's dtype and the products' inputs
                           follow it) */
    size_t region_bytes; /* the shared region's size: the vision encoder's view buffers, then the KV pool */
    size_t kv_used;     /* bytes of the pool the current run uses (zeroed after its views: kv_reserve) */
    void *graph_kv;     /* the KV pool the graph was recorded with */
    int no_graph;       /* DSOCR_NO_GRAPH=1: run the decode step's ops directly and pick tokens on the host from the
                           downloaded logits every step (the old path, for timing comparisons) */
    TokenizerStream *stream;
    char err[1024];
};

/* ---- small helpers ---- */

static DsocrStatus fail(DsocrSession *s, DsocrStatus st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static DsocrStatus fail(DsocrSession *s, DsocrStatus st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return st;
}

static void progress(const DsocrOcrOptions *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress(const DsocrOcrOptions *o, const char *fmt, ...) {
    if (!o->on_progress) return;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    o->on_progress(o->user, line);
}

static int cancelled(const DsocrOcrOptions *o) { return o->cancel && *o->cancel; }

const char *engine_compat_name(DsocrCompat c) { return c == DSOCR_COMPAT_VLLM ? "vllm" : "hf"; }

const char *engine_precision_name(DsocrPrecision p) {
    return p == DSOCR_PRECISION_FP32   ? "fp32"
           : p == DSOCR_PRECISION_BF16 ? "bf16"
           : p == DSOCR_PRECISION_F16  ? "f16"
                                       : "?";
}

DsocrStatus engine_precision_check(const DsocrModel *m, DsocrPrecision p, char *err, size_t errlen) {
    const char *msg = NULL;
    if (p != DSOCR_PRECISION_FP32 && p != DSOCR_PRECISION_BF16 && p != DSOCR_PRECISION_F16)
        msg = "unknown precision: use fp32, bf16 or f16";
    else if (p == DSOCR_PRECISION_F16 && !m->be->set_gemm_f16)
        msg = "precision f16 is the CUDA path for GPUs without bf16 (fp16 matrix products, fp32 everywhere else); "
              "the CPU runs fp32 or bf16";
    if (!msg) return DSOCR_OK;
    if (err && errlen) snprintf(err, errlen, "%s", msg);
    return DSOCR_E_INVALID_ARG;
}

/* Whether a run of precision p gives the backend's tensor-core products fp16 inputs (backend.h set_gemm_f16):
 * for f16, and for every precision on a card without bf16 arithmetic (compute capability below 8.0, sm_75),
 * whose fp16 tensor cores are the fast ones. There a bf16 run keeps its rounding points and its products see the
 * same numbers (a bf16 value is exact in fp16 from 2^-14 to 65504; beyond, fp16 saturates), and an fp32 run
 * gets 10 mantissa bits where bf16 gives 7. Only for a backend with set_gemm_f16 (CUDA). */
static int engine_gemm_f16(Backend *be, DsocrPrecision p) {
    return p == DSOCR_PRECISION_F16 || backend_cuda_compute_capability(be) < 80;
}

/* ---- model ---- */

void dsocr_model_options_default(DsocrModelOptions *o) {
    memset(o, 0, sizeof *o);
    o->device = "cpu";
}

typedef struct LogCtx {
    const DsocrModelOptions *o;
} LogCtx;

static void model_log(void *user, const char *line) {
    const DsocrModelOptions *o = user;
    if (o && o->log) o->log(o->log_user, line);
}

static size_t session_bytes(const Model *m, int max_context, int lean);

/* Rows per prefill pass: CPU_PREFILL_CHUNK on the CPU backend; PREFILL_CHUNK, or for a model placed under a budget
 * (Model.lean) LEAN_PREFILL_CHUNK, and HYBRID_PREFILL_CHUNK when its routed experts are on the host (the plan's
 * reserve counts the largest) */
static int prefill_chunk(const DsocrModel *dm) {
    if (dm->m->be == backend_cpu()) return CPU_PREFILL_CHUNK;
    if (!dm->m->lean) return PREFILL_CHUNK;
    return dm->plan.kind == PLAN_HYBRID || dm->plan.kind == PLAN_HYBRID_HEAD ? HYBRID_PREFILL_CHUNK
                                                                            : LEAN_PREFILL_CHUNK;
}
static DsocrStatus region_reserve(DsocrSession *s, int side, size_t kv_bytes, DsError *e);

/* Places the weights: the CPU backends use them where they are; on a GPU, plan.h decides under the budget
 * (opt->gpu_mem, else what the driver reports free less 5 %) with one session's working memory and the backend's
 * own scratch reserved, the plan goes to the log, and from then on the backend refuses allocations past the budget. */
static DsocrStatus place_planned(DsocrModel *dm, const DsocrModelOptions *opt, DsError *e) {
    Model *m = dm->m;
    Backend *be = dm->be;
    memset(&dm->plan, 0, sizeof dm->plan); /* the CPU: everything where it is (kind all-gpu, reported as "cpu") */
    if (be == backend_cpu() || be == backend_cpu_ref()) return model_place(m, be, e);
    size_t used = 0, total = 0;
    backend_cuda_mem_info(be, &used, &total);
    const uint64_t have = be->allocated(be), fr = total > used ? total - used : 0;
    PlanInput in;
    memset(&in, 0, sizeof in);
    in.budget = opt->gpu_mem ? opt->gpu_mem : have + fr - fr / 20;
    model_group_bytes(m, in.weights);
    in.reserve = have + session_bytes(m, m->cfg.max_position_embeddings, 0) + DRIVER_ALLOWANCE;
    /* the other placements' smaller working memory (model_place_plan sets Model.lean for them) */
    in.reserve_lean = have + session_bytes(m, m->cfg.max_position_embeddings, 1) + DRIVER_ALLOWANCE;
    plan_make(&in, &dm->plan);
    char line[512];
    plan_describe(&dm->plan, &in, line, sizeof line);
    model_log((void *)opt, line);
    if (dm->plan.kind == PLAN_NO_FIT) return ds_fail(e, DSOCR_E_NOMEM, "%s", line);
    DsocrStatus st = model_place_plan(m, be, &dm->plan, e);
    if (st) return st;
    dm->budget = in.budget;
    backend_cuda_set_budget(be, in.budget - DRIVER_ALLOWANCE);
    return DSOCR_OK;
}

DsocrStatus dsocr_model_load(const char *dir, const DsocrModelOptions *opt, DsocrModel **out, char *err,
                             size_t errlen) {
    DsocrModelOptions def;
    dsocr_model_options_default(&def);
    if (!opt) opt = &def;
    *out = NULL;
    if (err && errlen) err[0] = 0;
    DsError e = {0};
    const char *dev = opt->device ? opt->device : "cpu";
    if (strcmp(dev, "cpu") && strcmp(dev, "cuda") && strcmp(dev, "auto")) {
        ds_fail(&e, DSOCR_E_INVALID_ARG, "device \"%s\": use cpu, cuda or auto", dev);
        if (err && errlen) snprintf(err, errlen, "%s", e.msg);
        return e.code;
    }
    const char *quant = opt->quant && *opt->quant ? opt->quant : NULL;
    DsDtype qtype = !quant ? DS_DTYPE_UNKNOWN : !strcmp(quant, "q8_0") ? DS_Q8_0 : !strcmp(quant, "q4") ? DS_Q4_0
                                                                                                       : DS_BOOL;
    if (qtype == DS_BOOL) {
        ds_fail(&e, DSOCR_E_INVALID_ARG, "quant \"%s\": use q8_0 or q4", quant);
        if (err && errlen) snprintf(err, errlen, "%s", e.msg);
        return e.code;
    }
    Backend *be = backend_cpu();
    const char *force = getenv("DSOCR_BACKEND");
    if (force && !strcmp(force, "cpu-ref")) be = backend_cpu_ref();
    if (strcmp(dev, "cpu") && be == backend_cpu()) {
        DsError ce = {0};
        Backend *cb = backend_cuda_new(0, &ce);
        if (cb) {
            be = cb;
        } else if (!strcmp(dev, "cuda")) {
            if (err && errlen) snprintf(err, errlen, "%s", ce.msg);
            return ce.code ? ce.code : DSOCR_E_DEVICE;
        } else if (opt->log) {
            char line[700];
            snprintf(line, sizeof line, "no GPU in use (%s); running on the CPU", ce.msg);
            opt->log(opt->log_user, line);
        }
    }
    DsocrModel *dm = calloc(1, sizeof *dm);
    if (!dm) {
        if (be != backend_cpu() && be != backend_cpu_ref()) backend_cuda_free(be);
        if (err && errlen) snprintf(err, errlen, "out of memory");
        return DSOCR_E_NOMEM;
    }
    dm->be = be;
    CheckpointOptions co = {.log = model_log, .log_user = (void *)opt};
    DsocrStatus st = model_load(dir, &co, &dm->m, &e);
    if (!st && qtype != DS_DTYPE_UNKNOWN) {
        if (opt->verbose) model_log((void *)opt, quant[1] == '8' ? "quantising the decoder's weights to Q8_0"
                                                                  : "quantising the routed experts to Q4_0, the "
                                                                    "decoder's other weights to Q8_0");
        st = model_quantize(dm->m, qtype, &e);
    }
    if (!st && qtype == DS_DTYPE_UNKNOWN && be == backend_cpu() && !ds_env_on("DSOCR_MAPPED_WEIGHTS"))
        st = model_own_decoder(dm->m, &e);
    if (!st) st = place_planned(dm, opt, &e);
    if (st) {
        dsocr_model_free(dm);
        if (err && errlen) snprintf(err, errlen, "%s", e.msg);
        return st;
    }
    dm->threads = opt->threads > 0 ? opt->threads : omp_get_num_procs();
    *out = dm;
    return DSOCR_OK;
}

void dsocr_model_free(DsocrModel *m) {
    if (!m) return;
    model_free(m->m);
    if (m->be && m->be != backend_cpu() && m->be != backend_cpu_ref()) backend_cuda_free(m->be);
    free(m);
}

Backend *engine_model_backend(const DsocrModel *m) { return m->be; }
const ModelConfig *engine_model_config(const DsocrModel *m) { return &m->m->cfg; }
int engine_model_threads(const DsocrModel *m) { return m->threads; }

void dsocr_model_device_info(const DsocrModel *m, DsocrDeviceInfo *out) {
    memset(out, 0, sizeof *out);
    Backend *be = m->be;
    const int cuda = be != backend_cpu() && be != backend_cpu_ref();
    snprintf(out->device, sizeof out->device, "%s", cuda ? "cuda" : "cpu");
    out->allocated = be->allocated(be);
    out->peak = be->peak(be);
    if (cuda) {
        size_t used = 0, total = 0;
        backend_cuda_mem_info(be, &used, &total);
        out->gpu_used = used;
        out->gpu_total = total;
        snprintf(out->gpu_name, sizeof out->gpu_name, "%s", backend_cuda_device_name(be));
        out->gpu_baseline = backend_cuda_context_used(be);
        out->gpu_budget = m->budget;
    }
    snprintf(out->placement, sizeof out->placement, "%s", cuda ? plan_kind_name(m->plan.kind) : "cpu");
}

/* ---- session ---- */

void dsocr_session_options_default(DsocrSessionOptions *o) { memset(o, 0, sizeof *o); }

/* What dsocr_session_new allocates in backend memory for a context of T tokens with the KV pool at its first size
 * (KV_GROW tokens; a longer run grows it, and a run the budget cannot hold is refused then), for a model with
 * Model.lean = lean. The vision encoder's view buffers and the KV pool share one region (region_reserve). */
static size_t session_bytes(const Model *m, int T, int lean) {
    const ModelConfig *c = &m->cfg;
    const size_t D = (size_t)c->hidden_size, nb = ((size_t)T + KV_BLOCK - 1) / KV_BLOCK;
    const int nb0 = (KV_GROW < T ? KV_GROW : T + KV_BLOCK - 1) / KV_BLOCK, rows = ROWS_GROW < T ? ROWS_GROW : T;
    const size_t vs = vision_scratch_bytes(m, VIEW_SIDE0, lean), kv = kvcache_bytes(c->num_hidden_layers, (int)D,
                                                                                    KV_BLOCK, nb0);
    return vision_work_bytes(m, VIEW_SIDE0, lean) - vs + (vs > kv ? vs : kv) +
           decoder_work_bytes(m, lean ? HYBRID_PREFILL_CHUNK : PREFILL_CHUNK) + sizeof(int32_t) * (nb + (size_t)T + 4) +
           sizeof(int32_t *) + 2 * sizeof(float) * (size_t)rows * D + sizeof(float) * (size_t)c->vocab_size;
}

void dsocr_session_free(DsocrSession *s) {
    if (!s) return;
    vision_work_free(s->vw);
    decoder_work_free(s->dw);
    Backend *be = s->be;
    if (s->graph) be->graph_free(be, s->graph);
    void *dev[] = {s->kv.data, s->table_dev, s->tables_dev, s->pos_dev, s->feat, s->emb, s->logits_dev, s->step_dev};
    for (size_t i = 0; be && i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) be->free(be, dev[i]);
    free(s->table);
    if (s->chw) be_host_free(be, s->chw);
    if (s->emb_row) be_host_free(be, s->emb_row);
    free(s->logits);
    free(s->masked);
    free(s->seq);
    if (s->stream) tokenizer_stream_free(s->stream);
    free(s);
}

DsocrStatus dsocr_session_new(const DsocrModel *dm, const DsocrSessionOptions *opt, DsocrSession **out, char *err,
                              size_t errlen) {
    *out = NULL;
    if (err && errlen) err[0] = 0;
    DsocrSessionOptions def;
    dsocr_session_options_default(&def);
    if (!opt) opt = &def;
    const Model *m = dm->m;
    const ModelConfig *c = &m->cfg;
    DsError e = {0};
    DsocrStatus st = DSOCR_OK;
    DsocrSession *s = calloc(1, sizeof *s);
    if (!s) {
        st = ds_fail(&e, DSOCR_E_NOMEM, "out of memory");
        goto fail;
    }
    s->model = dm;
    Backend *be = s->be = dm->be;
    s->max_context = opt->max_context > 0 ? opt->max_context : c->max_position_embeddings;
    if (s->max_context > c->max_position_embeddings) s->max_context = c->max_position_embeddings;
    const int T = s->max_context, D = c->hidden_size, nb = (T + KV_BLOCK - 1) / KV_BLOCK;
    if ((st = decoder_work_new(m, prefill_chunk(dm), &s->dw, &e))) goto fail;
    /* the shared region: vision working memory for 1024-px views (base, gundam) and a KV pool of KV_GROW positions
     * of bf16 elements, whichever is larger; runs with larger views or longer outputs grow it */
    const int nb0 = (KV_GROW < T ? KV_GROW : T + KV_BLOCK - 1) / KV_BLOCK;
    s->kv = (KvCache){.dtype = DS_BF16, .n_layers = c->num_hidden_layers, .width = D, .block_size = KV_BLOCK};
    if ((st = region_reserve(s, VIEW_SIDE0, kvcache_bytes(c->num_hidden_layers, D, KV_BLOCK, nb0), &e))) goto fail;
    if ((st = tokenizer_stream_new(m->tok, 0, &s->stream, &e))) goto fail;
    s->table = malloc(sizeof(int32_t) * (size_t)nb);
    s->table_dev = be->alloc(be, sizeof(int32_t) * (size_t)nb);
    s->tables_dev = be->alloc(be, sizeof(int32_t *));
    s->pos_dev = be->alloc(be, sizeof(int32_t) * (size_t)T);
    const char *rg = getenv("DSOCR_ROWS_GROW");
    s->rows_grow = rg && atoi(rg) > 0 ? atoi(rg) : ROWS_GROW;
    s->rows_cap = s->rows_grow < T ? s->rows_grow : T;
    s->feat = be->alloc(be, sizeof(float) * (size_t)s->rows_cap * D);
    s->emb = be->alloc(be, sizeof(float) * (size_t)s->rows_cap * D);
    s->logits_dev = be->alloc(be, sizeof(float) * (size_t)c->vocab_size);
    s->step_dev = be->alloc(be, sizeof(int32_t) * 4);
    /* the hybrid placements wait on the host inside a step: no graph */
    s->no_graph = ds_env_on("DSOCR_NO_GRAPH") || dm->plan.kind == PLAN_HYBRID || dm->plan.kind == PLAN_HYBRID_HEAD;
    if (m->embed_host && !(s->emb_row = be_host_alloc(be, sizeof(float) * (size_t)D))) {
        st = ds_fail(&e, DSOCR_E_NOMEM, "out of memory");
        goto fail;
    }
    s->chw = be_host_alloc(be, sizeof(float) * 3 * MAX_VIEW_SIDE * MAX_VIEW_SIDE);
    s->logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    s->masked = malloc(sizeof(float) * (size_t)c->vocab_size);
    s->seq = malloc(sizeof(int32_t) * (size_t)T);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)T);
    if (!s->table || !s->table_dev || !s->tables_dev || !s->pos_dev || !s->feat || !s->emb ||
        !s->logits_dev || !s->step_dev || !s->chw || !s->logits || !s->masked || !s->seq || !pos) {
        free(pos);
        st = ds_fail(&e, DSOCR_E_NOMEM, "out of %s memory for a session with a %d-token context", be->name, T);
        goto fail;
    }
    for (int i = 0; i < nb; i++) s->table[i] = i;
    for (int i = 0; i < T; i++) pos[i] = i;
    be->upload(be, s->table_dev, s->table, sizeof(int32_t) * (size_t)nb);
    be->upload(be, s->tables_dev, &s->table_dev, sizeof(int32_t *));
    be->upload(be, s->pos_dev, pos, sizeof(int32_t) * (size_t)T);
    free(pos);
    *out = s;
    return DSOCR_OK;
fail:
    dsocr_session_free(s);
    if (err && errlen) snprintf(err, errlen, "%s", e.msg);
    return st;
}

const char *dsocr_session_error(const DsocrSession *s) { return s ? s->err : "no session"; }

/* ---- options ---- */

void dsocr_ocr_options_default(DsocrOcrOptions *o) {
    memset(o, 0, sizeof *o);
    o->mode = "gundam";
    o->prompt = "markdown";
    o->compat = DSOCR_COMPAT_HF;
    o->no_repeat_ngram = -1;
    o->ngram_window = -1;
    o->precision = DSOCR_PRECISION_FP32;
}

int engine_prompt_text(const char *name, char *buf, size_t n) {
    static const struct {
        const char *name, *text;
    } P[] = {
        {"markdown", "<image>\n<|grounding|>Convert the document to markdown."},
        {"ocr", "<image>\n<|grounding|>OCR this image."},
        {"free", "<image>\nFree OCR."},
        {"figure", "<image>\nParse the figure."},
        {"describe", "<image>\nDescribe this image in detail."},
    };
    if (!name) name = "markdown";
    for (size_t i = 0; i < sizeof P / sizeof P[0]; i++)
        if (!strcmp(name, P[i].name)) return snprintf(buf, n, "%s", P[i].text) < (int)n ? 0 : -1;
    if (!strncmp(name, "locate:", 7))
        return snprintf(buf, n, "<image>\nLocate <|ref|>%s<|/ref|> in the image.", name + 7) < (int)n ? 0 : -1;
    if (!strncmp(name, "raw:", 4)) return snprintf(buf, n, "%s", name + 4) < (int)n ? 0 : -1;
    return -1;
}

DsocrStatus engine_mode(const DsocrOcrOptions *opt, ImageMode *m, char *err, size_t errlen) {
    DsError e = {0};
    if (opt->mode) {
        if (image_mode_by_name(opt->mode, m) != 0) {
            snprintf(err, errlen, "unknown mode \"%s\" (tiny, small, base, large, gundam)", opt->mode);
            return DSOCR_E_INVALID_ARG;
        }
    } else {
        m->base_size = opt->base_size;
        m->image_size = opt->image_size;
        m->crop_mode = opt->crop_mode ? 1 : 0;
    }
    DsocrStatus st = image_mode_check(m, &e);
    if (st) snprintf(err, errlen, "%s", e.msg);
    return st;
}

void dsocr_result_free(DsocrResult *r) {
    if (!r) return;
    free(r->text);
    free(r->tokens);
    memset(r, 0, sizeof *r);
}

/* ---- one run ---- */

/* Lays the encoded views (s->feat: tiles row-major, then the global view, each n² rows) out into dst as the
 * spec §5.5 block: local big-grid rows each + newline, global rows each + newline, the separator. */
static int layout_block(const Model *m, const ImagePlan *p, const float *feat, float *dst) {
    Backend *be = m->be;
    const int D = m->cfg.hidden_size, nl = p->n_tile, ng = p->n_global;
    float *o = dst;
    for (int ty = 0; ty < p->th; ty++)
        for (int i = 0; i < nl; i++) {
            for (int tx = 0; tx < p->tw; tx++) {
                const float *tile = feat + (size_t)(ty * p->tw + tx) * nl * nl * D;
                be->copy(be, o, tile + (size_t)i * nl * D, sizeof(float) * (size_t)nl * D);
                o += (size_t)nl * D;
            }
            be->fill_rows(be, o, 1, m->image_newline, D);
            o += D;
        }
    const float *g = feat + (size_t)p->n_tiles * nl * nl * D;
    for (int r = 0; r < ng; r++) {
        be->copy(be, o, g + (size_t)r * ng * D, sizeof(float) * (size_t)ng * D);
        o += (size_t)ng * D;
        be->fill_rows(be, o, 1, m->image_newline, D);
        o += D;
    }
    be->fill_rows(be, o, 1, m->view_seperator, D);
    o += D;
    return (int)((o - dst) / D);
}

/* Downloads a backend buffer [d0, d1] and dumps it. */
static DsocrStatus dump_backend(Backend *be, const char *dd, const char *name, const float *buf, int64_t d0,
                                int64_t d1, DsError *e) {
    float *h = malloc(sizeof(float) * (size_t)d0 * (size_t)d1 + 4);
    if (!h) return ds_fail(e, DSOCR_E_NOMEM, "out of memory for a dump");
    be->download(be, h, buf, sizeof(float) * (size_t)d0 * (size_t)d1);
    DsocrStatus st = dump_f32(dd, name, h, d0, d1, 0, e);
    free(h);
    return st;
}

/* Appends text to a growing buffer. */
typedef struct Buf {
    char *p;
    size_t n, cap;
} Buf;

static int buf_add(Buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 4096;
        while (nc < b->n + n + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) return -1;
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* One decode step: the row of token id `tok` at position `pos` through the decoder, logits into s->logits_dev.
 * The id and position travel in one upload to s->step_dev; the step's ops read everything else from fixed
 * session buffers, so on a backend with graph_* they are recorded once per session (and precision) and replayed:
 * one launch per token instead of a few hundred. */
/* Whether replacing `old` bytes by `bytes` would take the backend past the model's budget (dsocr_model_load's GPU
 * budget, or engine_set_budget's): the admission check, the same on every backend (the CUDA allocator enforces the
 * budget less the driver's allowance besides). */
static int over_budget(const DsocrSession *s, size_t old, size_t bytes) {
    const uint64_t b = s->model->budget;
    return b && (uint64_t)s->be->allocated(s->be) - old + bytes > b;
}

void engine_set_budget(DsocrModel *m, uint64_t bytes) { m->budget = bytes; }

/* The session's shared region: the vision encoder's view buffers (vision_work_new's scratch) while a run encodes
 * its views, the KV pool after them (nothing in either outlives its phase of a run), so a session holds the larger
 * of the two, not both. Makes it hold views of `side` px (0: the size it holds) and `kv_bytes` of pool. Growing
 * re-creates the vision work in the new region (its recorded views go) and moves kv.data (the decode step's
 * recording goes, kv_reserve). The old region is dead between runs, so it goes first; when the new one cannot be
 * had the old size comes back and the run is refused. */
static DsocrStatus region_reserve(DsocrSession *s, int side, size_t kv_bytes, DsError *e) {
    const Model *m = s->model->m;
    Backend *be = s->be;
    const int old_side = vision_work_max_side(s->vw), vs = side > old_side ? side : old_side;
    const int vside = vs ? vs : VIEW_SIDE0; /* a failed growth left no vision work */
    const size_t vb = vision_scratch_bytes(m, vside, m->lean), old = s->region_bytes;
    size_t need = vb > kv_bytes ? vb : kv_bytes;
    if (need < old) need = old;
    if (need == old && vside == old_side && s->vw) return DSOCR_OK;
    if (need > old && over_budget(s, old, need))
        return ds_fail(e, DSOCR_E_NOMEM,
                       "working memory of %zu MiB (%d-px views, or a KV cache of %zu MiB) does not fit the memory "
                       "budget (%.2f GiB)",
                       need >> 20, vside, kv_bytes >> 20, s->model->budget / 1073741824.0);
    vision_work_free(s->vw);
    s->vw = NULL;
    if (need > old) {
        if (s->kv.data) be->free(be, s->kv.data);
        s->region_bytes = 0;
        if (!(s->kv.data = be->alloc(be, need))) {
            if (old && (s->kv.data = be->alloc(be, old))) {
                s->region_bytes = old;
                vision_work_new(m, old_side, s->kv.data, &s->vw, e);
            }
            return ds_fail(e, DSOCR_E_NOMEM, "out of %s memory for %zu MiB of working memory (%d-px views, or a KV "
                           "cache of %zu MiB)", be->name, need >> 20, vside, kv_bytes >> 20);
        }
        s->region_bytes = need;
    }
    return vision_work_new(m, vside, s->kv.data, &s->vw, e);
}

/* feat and emb grown to hold `rows` rows (rows_grow steps, at most max_context): both are dead between runs, so
 * the old ones go first; when the new ones cannot be had the old size comes back and the run is refused. Growing
 * drops the recorded decode step (it reads emb). */
static DsocrStatus rows_reserve(DsocrSession *s, int rows) {
    if (rows <= s->rows_cap) return DSOCR_OK;
    Backend *be = s->be;
    const size_t D = (size_t)s->model->m->cfg.hidden_size;
    int nr = (rows + s->rows_grow - 1) / s->rows_grow * s->rows_grow;
    if (nr > s->max_context) nr = s->max_context;
    if (nr < rows) nr = rows;
    if (over_budget(s, 2 * sizeof(float) * (size_t)s->rows_cap * D, 2 * sizeof(float) * (size_t)nr * D))
        return fail(s, DSOCR_E_NOMEM, "a prompt of %d rows (%zu MiB) does not fit the memory budget (%.2f GiB)", rows,
                    (2 * sizeof(float) * (size_t)nr * D) >> 20, s->model->budget / 1073741824.0);
    if (s->graph) {
        be->graph_free(be, s->graph);
        s->graph = NULL;
    }
    be->free(be, s->feat);
    be->free(be, s->emb);
    s->feat = be->alloc(be, sizeof(float) * (size_t)nr * D);
    s->emb = s->feat ? be->alloc(be, sizeof(float) * (size_t)nr * D) : NULL;
    if (s->feat && s->emb) {
        s->rows_cap = nr;
        return DSOCR_OK;
    }
    if (s->feat) be->free(be, s->feat);
    s->feat = be->alloc(be, sizeof(float) * (size_t)s->rows_cap * D);
    s->emb = s->feat ? be->alloc(be, sizeof(float) * (size_t)s->rows_cap * D) : NULL;
    if (!s->emb) s->rows_cap = 0; /* nothing held: a later run tries again */
    return fail(s, DSOCR_E_NOMEM, "out of %s memory for a prompt of %d rows (%zu MiB)", be->name, rows,
                (2 * sizeof(float) * (size_t)nr * D) >> 20);
}

/* Makes the KV pool hold `tokens` positions of the run's element type (bf16, or fp32 for fp32 and f16): the
 * shared region grows to what runs ask for (prompt + max_tokens), at most the session's context, in steps of
 * KV_GROW tokens; a run never grows it midway. The pool is every whole block the region holds; the run's part of
 * it is zeroed after its views (engine_ocr: the vision encoder used the region before). A new pool (region or
 * block count) drops the recorded decode step (it points at the pool). */
static DsocrStatus kv_reserve(DsocrSession *s, int tokens, int bf16) {
    KvCache *kv = &s->kv;
    const size_t per_block = kvcache_bytes(kv->n_layers, kv->width, kv->block_size, 1) * (bf16 ? 1 : 2);
    const int max_blocks = (s->max_context + kv->block_size - 1) / kv->block_size;
    const int need = (tokens + kv->block_size - 1) / kv->block_size;
    if ((size_t)need * per_block > s->region_bytes) {
        const int step = (s->model->m->lean ? LEAN_KV_GROW : KV_GROW) / kv->block_size;
        int nb = (need + step - 1) / step * step;
        if (nb > max_blocks) nb = max_blocks;
        if (nb < need) nb = need;
        DsError e = {0};
        DsocrStatus st = region_reserve(s, 0, per_block * (size_t)nb, &e);
        if (st) return fail(s, st, "%s", e.msg);
    }
    int blocks = (int)(s->region_bytes / per_block);
    if (blocks > max_blocks) blocks = max_blocks;
    kv->dtype = bf16 ? DS_BF16 : DS_F32;
    if (s->graph && (kv->n_blocks != blocks || s->graph_kv != kv->data)) {
        s->be->graph_free(s->be, s->graph);
        s->graph = NULL;
    }
    kv->n_blocks = blocks;
    s->kv_used = per_block * (size_t)need;
    return DSOCR_OK;
}

/* The ops of one decode step: the decoder on one row, then the argmax of its logits into step_dev[2], which also
 * becomes the next step's input (step_dev[0]) at the next position (step_dev[1] + 1): when the host takes that
 * token, the next step needs no upload (decode_step's dev_ok). */
static DsocrStatus step_ops(DsocrSession *s, const DecoderStep *ds, DsError *e) {
    DsocrStatus st = decoder_forward(s->model->m, s->dw, ds, e);
    if (!st) s->be->argmax(s->be, s->step_dev + 2, s->logits_dev, s->model->m->cfg.vocab_size, s->step_dev);
    return st;
}

/* preset: the device's step_dev already holds (tok, pos) (the previous step's argmax was taken): no upload. */
static DsocrStatus decode_step(DsocrSession *s, int32_t tok, int pos, DsocrPrecision prec, int preset, DsError *e) {
    const int bf16 = prec == DSOCR_PRECISION_BF16;
    Backend *be = s->be;
    s->step_host[0] = tok;
    s->step_host[1] = pos;
    if (!preset) be->upload(be, s->step_dev, s->step_host, sizeof s->step_host);
    const Model *m = s->model->m;
    if (s->emb_row) /* the embeddings in host memory: this step's row, which the step (or its graph) copies in */
        for (int i = 0, D = m->cfg.hidden_size; i < D; i++) s->emb_row[i] = ds_w_get(m->embed, (size_t)tok * D + i);
    DecoderStep ds = {.x = s->emb, .n = 1, .pos0 = pos, .pos_dev = s->step_dev + 1, .table = NULL,
                      .tables_dev = (const int32_t *const *)s->tables_dev, .ids_dev = s->step_dev,
                      .embed_row = s->emb_row, .kv = &s->kv, .bf16 = bf16, .logits = s->logits_dev, .dump_dir = NULL};
    if (!be->graph_begin || s->no_graph) return step_ops(s, &ds, e);
    if (s->graph && s->graph_prec != (int)prec) {
        be->graph_free(be, s->graph);
        s->graph = NULL;
    }
    if (!s->graph) {
        if (be->graph_begin(be) != 0) return step_ops(s, &ds, e);
        DsocrStatus st = step_ops(s, &ds, e);
        void *g = be->graph_end(be);
        if (st) {
            if (g) be->graph_free(be, g);
            return st;
        }
        if (!g) return step_ops(s, &ds, e); /* recording failed: nothing ran */
        s->graph = g;
        s->graph_prec = (int)prec;
        s->graph_kv = s->kv.data;
    }
    be->graph_launch(be, s->graph);
    return DSOCR_OK;
}

/* The n-gram guard's size and window for these options (the official paths' defaults: HF 20 over the whole
 * sequence, vLLM 30 over the last 90 generated ids) */
static void ngram_params(const DsocrOcrOptions *opt, int *ngram, int *window) {
    const int vllm = opt->compat == DSOCR_COMPAT_VLLM;
    *ngram = opt->no_repeat_ngram >= 0 ? opt->no_repeat_ngram : (vllm ? 30 : 20);
    *window = opt->ngram_window >= 0 ? opt->ngram_window : (vllm ? 90 : 0);
}

DsocrStatus engine_ocr(DsocrSession *s, const void *image, size_t image_len, const DsocrOcrOptions *opt,
                       const EngineDebug *dbg, DsocrResult *out) {
    memset(out, 0, sizeof *out);
    s->err[0] = 0;
    DsocrOcrOptions def;
    dsocr_ocr_options_default(&def);
    if (!opt) opt = &def;
    EngineDebug nodbg = {0};
    if (!dbg) dbg = &nodbg;
    const Model *m = s->model->m;
    const ModelConfig *c = &m->cfg;
    const int D = c->hidden_size, V = c->vocab_size, bf16 = opt->precision == DSOCR_PRECISION_BF16;
    const char *dd = dbg->dump_dir;
    omp_set_num_threads(opt->threads > 0 ? opt->threads : s->model->threads);
    DsError e = {0};
    DsocrStatus st = DSOCR_OK;
    DsImage im = {0}, *views = NULL;
    int32_t *before = NULL, *after = NULL;
    size_t n_before = 0, n_after = 0;
    Buf text = {0};
    int n_views = 0;
    ImagePlan plan;

    /* options */
    ImageMode mode;
    char msg[512];
    if ((st = engine_mode(opt, &mode, msg, sizeof msg))) return fail(s, st, "%s", msg);
    if ((st = engine_precision_check(s->model, opt->precision, msg, sizeof msg))) return fail(s, st, "%s", msg);
    const int gemm_f16 = s->be->set_gemm_f16 ? engine_gemm_f16(s->be, opt->precision) : 0;
    if (s->be->set_gemm_f16) s->be->set_gemm_f16(s->be, gemm_f16);
    const int vllm = opt->compat == DSOCR_COMPAT_VLLM;
    int ngram, window;
    ngram_params(opt, &ngram, &window);
    char prompt[4096];
    if (engine_prompt_text(opt->prompt, prompt, sizeof prompt) != 0)
        return fail(s, DSOCR_E_INVALID_ARG,
                    "unknown or too long prompt \"%.64s\" (markdown, ocr, free, figure, describe, locate:TEXT, "
                    "raw:TEXT)",
                    opt->prompt ? opt->prompt : "");
    /* the HF path strips the prompt; a prompt without <image> gets the image first; several are refused */
    char *pr = prompt;
    if (!vllm) {
        while (*pr == ' ' || *pr == '\n' || *pr == '\t' || *pr == '\r') pr++;
        size_t L = strlen(pr);
        while (L && (pr[L - 1] == ' ' || pr[L - 1] == '\n' || pr[L - 1] == '\t' || pr[L - 1] == '\r')) pr[--L] = 0;
    }
    const char *tag = strstr(pr, "<image>");
    if (tag && strstr(tag + 7, "<image>"))
        return fail(s, DSOCR_E_INVALID_ARG, "the prompt has several <image> tags; dsocr takes one image per prompt");
    const char *b_txt = tag ? pr : "", *a_txt = tag ? tag + 7 : pr;
    size_t b_len = tag ? (size_t)(tag - pr) : 0;
    if (!tag) a_txt = pr; /* no tag: the image goes first, then the whole prompt */

    if (dd && ds_mkdirs(dd, 1))
        return fail(s, DSOCR_E_IO, "%s: cannot create the dump folder: %s", dd, strerror(errno));

    /* image -> views -> features */
    double t0 = ds_now();
    ImageDecodeOptions dop = {.alpha_white = vllm};
    if ((st = image_decode(image, image_len, &dop, &im, &e))) {
        fail(s, st, "%s", e.msg);
        goto done;
    }
    if ((st = image_plan(im.w, im.h, &mode, vllm ? IMAGE_MAX_TILES_VLLM : IMAGE_MAX_TILES_HF, &plan, &e))) {
        fail(s, st, "%s", e.msg);
        goto done;
    }
    if (dbg->force_embeds && (dbg->embeds_rows != plan.n_slots || dbg->embeds_cols != D)) {
        st = fail(s, DSOCR_E_INVALID_ARG,
                  "%s: forced image embeddings of shape [%lld, %lld], but this page's image block is [%d, %d] "
                  "(%d view%s); use the dump of a run with the same image, mode and model",
                  dbg->embeds_path ? dbg->embeds_path : "--force-embeds", (long long)dbg->embeds_rows,
                  (long long)dbg->embeds_cols, plan.n_slots, D, plan.n_views, plan.n_views == 1 ? "" : "s");
        goto done;
    }
    if ((st = tokenizer_encode(m->tok, b_txt, b_len, &before, &n_before, &e)) ||
        (st = tokenizer_encode(m->tok, a_txt, strlen(a_txt), &after, &n_after, &e))) {
        fail(s, st, "prompt: %s", e.msg);
        goto done;
    }
    const int n_prompt = 1 + (int)n_before + plan.n_slots + (int)n_after;
    if (n_prompt + 1 > s->max_context) {
        st = fail(s, DSOCR_E_TOO_LONG, "the prompt needs %d tokens (%d for the image) but the context holds %d",
                  n_prompt, plan.n_slots, s->max_context);
        goto done;
    }
    {
        long need = (long)n_prompt + (opt->max_tokens > 0 ? opt->max_tokens : s->max_context);
        if ((st = kv_reserve(s, need < s->max_context ? (int)need : s->max_context, bf16))) goto done;
        if ((st = rows_reserve(s, n_prompt))) goto done;
    }
    views = calloc((size_t)plan.n_views, sizeof *views);
    if (!views) {
        st = fail(s, DSOCR_E_NOMEM, "out of memory");
        goto done;
    }
    if ((st = image_make_views(&im, &plan, views, &e))) {
        fail(s, st, "%s", e.msg);
        goto done;
    }
    n_views = plan.n_views;
    {
        int side = 0;
        for (int v = 0; v < plan.n_views; v++) side = views[v].w > side ? views[v].w : side;
        if (side > vision_work_max_side(s->vw) && (st = region_reserve(s, side, 0, &e))) {
            fail(s, st, "%s", e.msg);
            goto done;
        }
    }
    double t_pre = ds_now() - t0; /* decoding, planning, resizing, normalising: the host's part */
    size_t feat_rows = 0;
    /* DSOCR_FORCE_EMBEDS_NO_VISION=1 with --force-embeds: the vision encoder is not run at all (a decoder-only run,
     * e.g. the decoder's noise floor on the slow reference backend, tools/decoder_floor.sh) */
    const int skip_vision = ds_env_on("DSOCR_FORCE_EMBEDS_NO_VISION");
    for (int v = 0; v < plan.n_views; v++) {
        if (cancelled(opt)) {
            st = fail(s, DSOCR_E_CANCELLED, "cancelled");
            goto done;
        }
        const int is_global = v == plan.n_tiles, side = views[v].w, n = side / 64;
        char vname[32];
        if (is_global)
            snprintf(vname, sizeof vname, "global");
        else
            snprintf(vname, sizeof vname, "tile%d", v);
        if (dbg->force_embeds && skip_vision) { /* its output would be replaced: a decoder-only run */
            feat_rows += (size_t)n * n;
            continue;
        }
        progress(opt, "vision %d/%d views (%s, %d px)", v + 1, plan.n_views, vname, side);
        double tn = ds_now();
        image_normalize(&views[v], s->chw);
        t_pre += ds_now() - tn;
        if (dd) {
            char nm[64];
            int64_t sh[3] = {side, side, 3};
            snprintf(nm, sizeof nm, "%s.pixels", vname);
            if ((st = dump_write(dd, nm, DUMP_U8, 3, sh, views[v].rgb, &e))) break;
            snprintf(nm, sizeof nm, "%s.input", vname);
            if ((st = dump_f32(dd, nm, s->chw, 3, side, side, &e))) break;
        }
        VisionOptions vo = {.bf16 = bf16, .dump_dir = dd, .view_name = vname, .graph_tag = gemm_f16};
        if ((st = vision_encode(m, s->vw, s->chw, side, &vo, s->feat + feat_rows * D, &e))) break;
        feat_rows += (size_t)n * n;
    }
    if (st) {
        fail(s, st, "%s", e.msg);
        goto done;
    }
    s->be->memset0(s->be, s->kv.data, s->kv_used); /* the views' buffers were there: the run's KV pool from zero */
    s->be->sync(s->be);
    out->seconds_preprocess = t_pre;
    out->seconds_vision = ds_now() - t0 - t_pre;

    /* prompt ids and input rows */
    int T = 0;
    s->seq[T++] = c->bos_token_id;
    for (size_t i = 0; i < n_before; i++) s->seq[T++] = before[i];
    const int img0 = T;
    for (int i = 0; i < plan.n_slots; i++) s->seq[T++] = m->image_token_id;
    for (size_t i = 0; i < n_after; i++) s->seq[T++] = after[i];
    DS_ASSERT(T == n_prompt);
    decoder_embed(m, s->seq, T, s->emb);
    int laid = layout_block(m, &plan, s->feat, s->emb + (size_t)img0 * D);
    DS_ASSERT(laid == plan.n_slots);
    if (dbg->force_embeds) {
        /* The forced rows replace the whole block (shape checked after planning). In bf16 they are rounded to bf16,
         * as every decoder input is there (a bf16 run's own dump is unchanged by it). The image_embeds dump below
         * is of these forced (rounded) rows, not of this run's vision output: it is what the decoder was fed, so the
         * layer dumps that follow are consistent with it; this run's vision is in its VIEW.proj dumps. */
        s->be->upload(s->be, s->emb + (size_t)img0 * D, dbg->force_embeds, sizeof(float) * (size_t)plan.n_slots * D);
        if (bf16) s->be->round_bf16(s->be, s->emb + (size_t)img0 * D, (size_t)plan.n_slots * D);
    }
    if (dd) {
        int64_t sh[1] = {T};
        if ((st = dump_write(dd, "prompt_ids", DUMP_I32, 1, sh, s->seq, &e)) ||
            (st = dump_backend(s->be, dd, "image_embeds", s->emb + (size_t)img0 * D, plan.n_slots, D, &e))) {
            fail(s, st, "%s", e.msg);
            goto done;
        }
    }
    out->n_prompt = T;
    out->n_views = plan.n_views;

    /* prefill (in chunks; one chunk when dumping so each layer's output is one tensor) */
    t0 = ds_now();
    progress(opt, "prefill %d tokens", T);
    DecoderWork *dw = s->dw, *dump_dw = NULL;
    int chunk = prefill_chunk(s->model);
    if (dd && T > chunk) {
        if ((st = decoder_work_new(m, T, &dump_dw, &e))) {
            fail(s, st, "%s", e.msg);
            goto done;
        }
        dw = dump_dw;
        chunk = T;
    }
    for (int r0 = 0; r0 < T && !st; r0 += chunk) {
        int n = T - r0 < chunk ? T - r0 : chunk;
        DecoderStep ds = {.x = s->emb + (size_t)r0 * D, .n = n, .pos0 = r0, .pos_dev = s->pos_dev + r0,
                          .table = s->table, .tables_dev = (const int32_t *const *)s->tables_dev, .kv = &s->kv,
                          .bf16 = bf16, .logits = r0 + n == T ? s->logits_dev : NULL, .dump_dir = dd,
                          .gemm = dbg->prefill_gemm};
        st = decoder_forward(m, dw, &ds, &e);
    }
    decoder_work_free(dump_dw);
    if (st) {
        fail(s, st, "%s", e.msg);
        goto done;
    }
    s->be->download(s->be, s->logits, s->logits_dev, sizeof(float) * (size_t)V);
    out->seconds_prefill = ds_now() - t0;
    if (dbg->prefill_only) goto done;

    /* generation */
    t0 = ds_now();
    const int max_new = opt->max_tokens > 0 ? opt->max_tokens : s->max_context - T;
    int32_t *gen = malloc(sizeof(int32_t) * (size_t)(max_new + 1));
    float *step_logits = NULL;
    if (dd) step_logits = malloc(sizeof(float) * (size_t)V * (size_t)(dbg->n_force > 0 ? dbg->n_force : max_new));
    if (!gen || (dd && !step_logits)) {
        free(gen);
        free(step_logits);
        st = fail(s, DSOCR_E_NOMEM, "out of memory");
        goto done;
    }
    const int32_t white[2] = {m->td_id, m->td_close_id};
    tokenizer_stream_flush(s->stream, &(const char *){NULL}, &(size_t){0}, NULL); /* reset */
    int n_gen = 0, dev_tok = -1;
    /* The step's argmax is taken on the backend; the logits come to the host only when the n-gram guard could
     * ban something (or for dumps and teacher forcing). */
    const int fast = !dd && dbg->n_force <= 0 && !s->no_graph;
    out->stop = DSOCR_STOP_LENGTH;
    for (;;) {
        if (dbg->n_force > 0 && n_gen >= dbg->n_force) break;
        if (n_gen >= max_new || T + n_gen >= s->max_context) break;
        int tok;
        if (dev_tok >= 0) {
            tok = dev_tok;
        } else {
            if (step_logits) memcpy(step_logits + (size_t)n_gen * V, s->logits, sizeof(float) * (size_t)V);
            memcpy(s->masked, s->logits, sizeof(float) * (size_t)V);
            if (vllm)
                ngram_ban(s->masked, V, gen, n_gen, ngram, window, white, 2);
            else
                ngram_ban(s->masked, V, s->seq, T + n_gen, ngram, window, NULL, 0);
            tok = dbg->n_force > 0 ? dbg->force_ids[n_gen] : ops_argmax(s->masked, V);
        }
        if (tok == c->eos_token_id && !opt->ignore_eos && dbg->n_force <= 0) {
            out->stop = DSOCR_STOP_EOS;
            break;
        }
        gen[n_gen++] = tok;
        s->seq[T + n_gen - 1] = tok;
        const char *piece = NULL;
        size_t plen = 0;
        if (tokenizer_stream_push(s->stream, tok, &piece, &plen, &e) != DSOCR_OK) plen = 0;
        if (plen && buf_add(&text, piece, plen)) {
            st = fail(s, DSOCR_E_NOMEM, "out of memory");
            break;
        }
        if (opt->on_token && opt->on_token(opt->user, tok, piece ? piece : "", plen)) {
            out->stop = DSOCR_STOP_CALLBACK;
            break;
        }
        if (cancelled(opt)) {
            out->stop = DSOCR_STOP_CANCEL;
            break;
        }
        if (n_gen % 16 == 0) {
            double dt = ds_now() - t0;
            progress(opt, "decode %d tokens, %.1f tok/s", n_gen, dt > 0 ? n_gen / dt : 0.0);
        }
        if (n_gen >= max_new || T + n_gen >= s->max_context) break;
        if (dbg->n_force > 0 && n_gen >= dbg->n_force) break;
        if ((st = decode_step(s, gen[n_gen - 1], T + n_gen - 1, opt->precision, dev_tok >= 0, &e))) {
            fail(s, st, "%s", e.msg);
            break;
        }
        dev_tok = -1;
        if (fast && (vllm ? ngram_candidates(gen, n_gen, ngram, window, white, 2)
                          : ngram_candidates(s->seq, T + n_gen, ngram, window, NULL, 0)) == 0) {
            int32_t t = 0;
            s->be->download(s->be, &t, s->step_dev + 2, sizeof t);
            dev_tok = t >= 0 && t < V ? t : 0;
        } else {
            s->be->download(s->be, s->logits, s->logits_dev, sizeof(float) * (size_t)V);
        }
    }
    const char *tail = NULL;
    size_t tlen = 0;
    if (tokenizer_stream_flush(s->stream, &tail, &tlen, &e) == DSOCR_OK && tlen) buf_add(&text, tail, tlen);
    out->seconds_decode = ds_now() - t0;
    if (!st && dd) {
        int64_t sh[2] = {n_gen, V};
        if ((st = dump_write(dd, "generated", DUMP_I32, 1, sh, gen, &e)) ||
            (st = dump_write(dd, "logits", DUMP_F32, 2, sh, step_logits, &e)))
            fail(s, st, "%s", e.msg);
    }
    free(step_logits);
    if (st) {
        free(gen);
        goto done;
    }
    out->tokens = gen;
    out->n_tokens = n_gen;
    out->text = text.p ? text.p : calloc(1, 1);
    out->text_len = text.n;
    text.p = NULL;
    if (out->stop == DSOCR_STOP_CANCEL) st = DSOCR_OK;
done:
    free(text.p);
    free(before);
    free(after);
    if (views) {
        for (int v = 0; v < n_views; v++) image_free(&views[v]);
        free(views);
    }
    image_free(&im);
    if (st) dsocr_result_free(out);
    return st;
}

DsocrStatus dsocr_ocr(DsocrSession *s, const void *image, size_t image_len, const DsocrOcrOptions *opt,
                      DsocrResult *out) {
    return engine_ocr(s, image, image_len, opt, NULL, out);
}

/* One page of engine_ocr_queue from its prefill on. */
typedef struct BatchSeq {
    int T, max_new, n_gen, slot, held; /* held: blocks of its table already on the backend */
    int done;                          /* stopped, for reason stop */
    DsocrStop stop;
    int tok; /* >= 0: its next token already taken on the backend (the n-gram guard had nothing to ban) */
    int oom; /* its text could not grow */
    int32_t *hist; /* [T + max_new] prompt then generated ids (the n-gram guard's) */
    float *logits; /* [V] its next token's */
    const DsocrOcrOptions *opt;
    int id;                  /* the page's, for the caller */
    TokenizerStream *stream; /* its text as it goes (on_token's pieces) */
    Buf text;
} BatchSeq;

static void batch_seq_free(BatchSeq *b) {
    free(b->hist), free(b->logits), free(b->text.p);
    if (b->stream) tokenizer_stream_free(b->stream);
    memset(b, 0, sizeof *b);
}

/* The pages' shared pool and the device arrays of up to max_batch rows. */
typedef struct Batch {
    DsocrSession *s;
    KvCache kv;
    KvPool *pool;
    size_t per_block;
    int max_batch, tab_len;
    void *dev; /* tables [max_batch][tab_len] | pointers [max_batch] | pos | seq | argmax | x | logits | bans */
    int32_t *tabs, *pos, *seq, *amax, *bans;
    const int32_t **ptrs;
    float *x, *logits;
} Batch;

/* Grows the pool so that `blocks` more can be reserved (the old blocks copied, the new ones zeroed), doubling it
 * when the budget allows (so that pages joining one by one copy the pool a few times, not once each): 0, or −1 past
 * the memory budget or out of memory (nothing changed). */
static int batch_grow_pool(Batch *bt, int blocks) {
    DsocrSession *s = bt->s;
    Backend *be = s->be;
    const int have = kvpool_blocks(bt->pool);
    if (have > blocks && !over_budget(s, bt->per_block * (size_t)have, bt->per_block * (size_t)(2 * have)))
        blocks = have;
    const int want = have + blocks;
    if (over_budget(s, bt->per_block * (size_t)have, bt->per_block * (size_t)want)) return -1;
    void *p = be->alloc(be, bt->per_block * (size_t)want);
    if (!p || kvpool_add_blocks(bt->pool, blocks)) {
        if (p) be->free(be, p);
        return -1;
    }
    if (have) be->copy(be, p, bt->kv.data, bt->per_block * (size_t)have);
    be->memset0(be, (char *)p + bt->per_block * (size_t)have, bt->per_block * (size_t)blocks);
    if (bt->kv.data) be->free(be, bt->kv.data);
    bt->kv.data = p;
    bt->kv.n_blocks = want;
    return 0;
}

/* Page i's views and prompt through the session, up to its prefill (gemm: DecoderStep.gemm): its ids and next
 * logits into b; its prompt's
 * KV blocks stay in the session's pool (blocks 0, 1, ...) until it joins the batch's (the session runs no other
 * page before that). */
static DsocrStatus batch_prefill(DsocrSession *s, const EnginePage *pg, const DsocrOcrOptions *opt, int gemm,
                                 BatchSeq *b, DsocrResult *out) {
    const int V = s->model->m->cfg.vocab_size;
    EngineDebug pre = {.prefill_only = 1, .prefill_gemm = gemm};
    DsocrStatus st = engine_ocr(s, pg->image, pg->len, opt, &pre, out);
    if (st) return st;
    b->T = out->n_prompt;
    b->max_new = opt->max_tokens > 0 ? opt->max_tokens : s->max_context - b->T;
    if (b->T + b->max_new > s->max_context) b->max_new = s->max_context - b->T;
    b->hist = malloc(sizeof(int32_t) * (size_t)(b->T + b->max_new + 1));
    b->logits = malloc(sizeof(float) * (size_t)V);
    if (!b->hist || !b->logits) return fail(s, DSOCR_E_NOMEM, "out of memory");
    b->opt = opt;
    DsError e = {0};
    if ((st = tokenizer_stream_new(s->model->m->tok, 0, &b->stream, &e))) return fail(s, st, "%s", e.msg);
    memcpy(b->hist, s->seq, sizeof(int32_t) * (size_t)b->T);
    memcpy(b->logits, s->logits, sizeof(float) * (size_t)V);
    b->tok = -1;
    return DSOCR_OK;
}

/* Page b joins the pool (growing it when its reservation does not fit), its prompt's KV blocks copied from the
 * session's pool: 1 joined, 0 not now (the pool cannot grow while others hold it: it waits for them to leave), −1
 * never (alone it passes the budget). */
static int batch_join(Batch *bt, BatchSeq *b, int active) {
    const int bs = KV_BLOCK, need = (b->T + b->max_new + bs - 1) / bs;
    const int room = kvpool_blocks(bt->pool) - kvpool_reserved_blocks(bt->pool);
    if (need > room && batch_grow_pool(bt, need - room)) return active ? 0 : -1;
    b->slot = kvpool_join(bt->pool, b->T + b->max_new);
    if (b->slot < 0) return active ? 0 : -1;
    const int grown = kvpool_grow(bt->pool, b->slot, b->T);
    DS_ASSERT(grown == 0);
    const int32_t *t = kvpool_table(bt->pool, b->slot);
    for (int j = 0; j < (b->T + bs - 1) / bs; j++)
        bt->s->be->copy(bt->s->be, (char *)bt->kv.data + bt->per_block * (size_t)t[j],
                        (char *)bt->s->kv.data + bt->per_block * (size_t)j, bt->per_block);
    b->held = 0;
    return 1;
}

/* Page b's next token from its logits by the one-page rules; 0 when it stops instead. */
static int batch_pick(const Model *m, BatchSeq *b, float *masked) {
    const DsocrOcrOptions *opt = b->opt;
    const int V = m->cfg.vocab_size;
    int ngram, window;
    ngram_params(opt, &ngram, &window);
    const int32_t white[2] = {m->td_id, m->td_close_id};
    if (opt->cancel && *opt->cancel) {
        b->stop = DSOCR_STOP_CANCEL, b->done = 1;
        return 0;
    }
    if (b->n_gen >= b->max_new) {
        b->stop = DSOCR_STOP_LENGTH, b->done = 1;
        return 0;
    }
    int tok = b->tok;
    if (tok < 0) {
        memcpy(masked, b->logits, sizeof(float) * (size_t)V);
        if (opt->compat == DSOCR_COMPAT_VLLM)
            ngram_ban(masked, V, b->hist + b->T, b->n_gen, ngram, window, white, 2);
        else
            ngram_ban(masked, V, b->hist, b->T + b->n_gen, ngram, window, NULL, 0);
        tok = ops_argmax(masked, V);
    }
    b->tok = -1;
    if (tok == m->cfg.eos_token_id && !opt->ignore_eos) {
        b->stop = DSOCR_STOP_EOS, b->done = 1;
        return 0;
    }
    b->hist[b->T + b->n_gen++] = tok;
    const char *piece = NULL;
    size_t plen = 0;
    if (tokenizer_stream_push(b->stream, tok, &piece, &plen, NULL) != DSOCR_OK) plen = 0;
    if (plen && buf_add(&b->text, piece, plen)) b->oom = 1;
    if (opt->on_token && opt->on_token(opt->user, tok, piece ? piece : "", plen)) {
        b->stop = DSOCR_STOP_CALLBACK, b->done = 1;
        return 0;
    }
    if (b->n_gen >= b->max_new) {
        b->stop = DSOCR_STOP_LENGTH, b->done = 1;
        return 0;
    }
    return 1;
}

/* The ids page b's n-gram guard bans at its next pick (ngram_banned: repeats and out-of-range ids included), into
 * out (room for T + max_new); returns how many. */
static int batch_banned(const Model *m, const BatchSeq *b, int32_t *out) {
    const DsocrOcrOptions *opt = b->opt;
    int ngram, window;
    ngram_params(opt, &ngram, &window);
    const int32_t white[2] = {m->td_id, m->td_close_id};
    return opt->compat == DSOCR_COMPAT_VLLM ? ngram_banned(b->hist + b->T, b->n_gen, ngram, window, white, 2, out)
                                            : ngram_banned(b->hist, b->T + b->n_gen, ngram, window, NULL, 0, out);
}

/* A stopped page's result: its tokens and text into out. */
static DsocrStatus batch_result(DsocrSession *s, BatchSeq *b, double t_dec, DsocrResult *r) {
    const char *tail = NULL;
    size_t tlen = 0;
    if (tokenizer_stream_flush(b->stream, &tail, &tlen, NULL) == DSOCR_OK && tlen && buf_add(&b->text, tail, tlen))
        b->oom = 1;
    if (b->oom || !(r->tokens = malloc(sizeof(int32_t) * (size_t)(b->n_gen + 1))) ||
        (!b->text.p && !(b->text.p = calloc(1, 1))))
        return fail(s, DSOCR_E_NOMEM, "out of memory");
    memcpy(r->tokens, b->hist + b->T, sizeof(int32_t) * (size_t)b->n_gen);
    r->n_tokens = b->n_gen;
    r->text = b->text.p;
    r->text_len = b->text.n;
    b->text.p = NULL;
    r->stop = b->stop;
    r->seconds_decode = t_dec;
    return DSOCR_OK;
}

/* Hands page i of the stream to end_page, then forgets it (its result's contents moved, its q slot free). */
static void stream_end(EnginePageEnd end_page, void *user, BatchSeq *b, DsocrResult *r, DsocrStatus st,
                       const char *err) {
    const int id = b->id;
    if (st) dsocr_result_free(r);
    batch_seq_free(b);
    end_page(user, id, st, st ? err : "", r);
    memset(r, 0, sizeof *r);
}

DsocrStatus engine_ocr_stream(DsocrSession *s, int max_batch, const DsocrOcrOptions *opt, EnginePageNext next,
                              EnginePageEnd end_page, void *user) {
    DsocrOcrOptions def;
    dsocr_ocr_options_default(&def);
    if (!opt) opt = &def;
    const int cap = prefill_chunk(s->model);
    if (max_batch <= 0 || max_batch > cap)
        return fail(s, DSOCR_E_INVALID_ARG, "a batch takes 1 to %d pages at a time, not %d", cap, max_batch);
    const Model *m = s->model->m;
    const ModelConfig *c = &m->cfg;
    Backend *be = s->be;
    const int D = c->hidden_size, V = c->vocab_size, bf16 = opt->precision == DSOCR_PRECISION_BF16, bs = KV_BLOCK;
    DsocrStatus st = DSOCR_OK;
    DsError e = {0};
    Batch bt = {.s = s, .max_batch = max_batch, .tab_len = (s->max_context + bs - 1) / bs};
    bt.per_block = kvcache_bytes(c->num_hidden_layers, D, bs, 1) * (bf16 ? 1 : 2);
    bt.kv = (KvCache){.dtype = bf16 ? DS_BF16 : DS_F32, .n_layers = c->num_hidden_layers, .width = D,
                      .block_size = bs};
    /* q, res: max_batch active pages and one waiting for the pool (free slots: hist NULL); active: their indices */
    BatchSeq *q = calloc((size_t)max_batch + 1, sizeof *q);
    DsocrResult *res = calloc((size_t)max_batch + 1, sizeof *res);
    int *row_of = calloc((size_t)max_batch, sizeof(int)), *active = calloc((size_t)max_batch, sizeof(int));
    /* a step's n-gram bans: flat indices into the rows' logits (host, then device), and one row's ids */
    const size_t max_bans = (size_t)max_batch * (size_t)s->max_context;
    DS_ASSERT((size_t)max_batch * (size_t)V < INT32_MAX);
    int32_t *bans = malloc(sizeof(int32_t) * max_bans), *row_bans = malloc(sizeof(int32_t) * (size_t)s->max_context);
    int32_t *rows = malloc(sizeof(int32_t) * 3 * (size_t)max_batch);
    float *masked = malloc(sizeof(float) * (size_t)V);
    const int32_t **ptrs_h = malloc(sizeof(int32_t *) * (size_t)max_batch);
    const size_t tab_bytes = sizeof(int32_t) * (size_t)bt.tab_len * (size_t)max_batch;
    const size_t dev_bytes = tab_bytes + sizeof(int32_t *) * (size_t)max_batch + sizeof(int32_t) * 3 * (size_t)max_batch +
                             sizeof(float) * (size_t)max_batch * ((size_t)D + (size_t)V) + sizeof(int32_t) * max_bans +
                             256;
    bt.pool = kvpool_new(0, bs, max_batch, bt.tab_len);
    int n_active = 0, waiting = -1, more = 1; /* waiting: the q index of a prefilled page the pool cannot take yet */
    if (!q || !res || !row_of || !active || !bans || !row_bans || !rows || !masked || !ptrs_h || !bt.pool) {
        st = fail(s, DSOCR_E_NOMEM, "out of memory");
        goto end;
    }
    if (over_budget(s, 0, dev_bytes) || !(bt.dev = be->alloc(be, dev_bytes))) {
        st = fail(s, DSOCR_E_NOMEM, "a batch of %d pages at a time does not fit the %s memory", max_batch, be->name);
        goto end;
    }
    bt.tabs = bt.dev;
    bt.ptrs = (const int32_t **)((char *)bt.dev + tab_bytes);
    bt.pos = (int32_t *)(bt.ptrs + max_batch);
    bt.seq = bt.pos + max_batch;
    bt.amax = bt.seq + max_batch;
    bt.x = (float *)(((uintptr_t)(bt.amax + max_batch) + 63) & ~(uintptr_t)63);
    bt.logits = bt.x + (size_t)max_batch * D;
    bt.bans = (int32_t *)(bt.logits + (size_t)max_batch * V);
    for (int k = 0; k < max_batch; k++) ptrs_h[k] = bt.tabs + (size_t)k * bt.tab_len;
    be->upload(be, bt.ptrs, ptrs_h, sizeof(int32_t *) * (size_t)max_batch);
    double t_dec = 0;
    /* the steps and every page's prefill: products of many rows on the tensor cores (DecoderStep.gemm; the
     * backend keeps its one-row kernels for up to 8 rows), unless DSOCR_BATCH_EXACT=1 keeps every product's fp32
     * sums (a page's tokens then equal its run alone bit for bit, at a fraction of the speed) */
    const int exact = ds_env_on("DSOCR_BATCH_EXACT");
    for (;;) {
        /* pages join at this token boundary while there is a free row: the one waiting first, then new ones; a
         * page that fails on its own (a bad image, a prompt too long, a pool it alone cannot fit) ends alone */
        while (n_active < max_batch && (waiting >= 0 || more)) {
            int i = waiting;
            if (i < 0) {
                for (i = 0; q[i].hist; i++) {
                }
                EnginePage pg;
                memset(&pg, 0, sizeof pg);
                if (!(more = next(user, &pg, &q[i].id))) break;
                const DsocrOcrOptions *po = pg.opt ? pg.opt : opt;
                DsocrStatus ps = po->precision != opt->precision
                                     ? fail(s, DSOCR_E_INVALID_ARG, "every page of a batch needs the same precision")
                                     : batch_prefill(s, &pg, po, !exact, &q[i], &res[i]);
                if (ps) {
                    stream_end(end_page, user, &q[i], &res[i], ps, s->err);
                    continue;
                }
            }
            const int j = batch_join(&bt, &q[i], n_active);
            if (j < 0) {
                fail(s, DSOCR_E_NOMEM, "a KV pool for %d tokens does not fit the memory budget", q[i].T + q[i].max_new);
                waiting = -1;
                stream_end(end_page, user, &q[i], &res[i], DSOCR_E_NOMEM, s->err);
                continue;
            }
            waiting = j ? -1 : i;
            if (!j) break;
            active[n_active++] = i;
        }
        if (!n_active) break;
        /* every active page picks its token; those going on give a row */
        const double t0 = ds_now();
        int nr = 0;
        int32_t *ids = rows, *pos = rows + max_batch, *seq = rows + 2 * max_batch;
        for (int k = 0; k < n_active; k++) {
            const int i = active[k];
            BatchSeq *b = &q[i];
            if (!batch_pick(m, b, masked)) continue;
            const int p = b->T + b->n_gen - 1, nb = (p + 1 + bs - 1) / bs;
            const int grown = kvpool_grow(bt.pool, b->slot, p + 1); /* within its reservation */
            DS_ASSERT(grown == 0);
            if (nb > b->held) {
                be->upload(be, bt.tabs + (size_t)b->slot * bt.tab_len, kvpool_table(bt.pool, b->slot),
                           sizeof(int32_t) * (size_t)nb);
                b->held = nb;
            }
            ids[nr] = b->hist[b->T + b->n_gen - 1], pos[nr] = p, seq[nr] = b->slot, row_of[nr] = i, nr++;
        }
        if (nr) {
            decoder_embed(m, ids, nr, bt.x);
            be->upload(be, bt.pos, pos, sizeof(int32_t) * (size_t)nr);
            be->upload(be, bt.seq, seq, sizeof(int32_t) * (size_t)nr);
            DecoderStep ds = {.x = bt.x, .n = nr, .pos_dev = bt.pos, .tables_dev = (const int32_t *const *)bt.ptrs,
                              .seq_dev = bt.seq, .kv = &bt.kv, .bf16 = bf16, .logits = bt.logits,
                              .gemm = !exact};
            if ((st = decoder_forward(m, s->dw, &ds, &e))) {
                fail(s, st, "%s", e.msg);
                goto end;
            }
            /* every row's token on the backend: its n-gram bans set to −inf in its logits, then the argmax of
             * each row (a number a row comes back, not its logits; the same pick as batch_pick's on the host) */
            size_t nb = 0;
            for (int r = 0; r < nr; r++) {
                const int k = batch_banned(m, &q[row_of[r]], row_bans);
                for (int j = 0; j < k; j++)
                    if (row_bans[j] >= 0 && row_bans[j] < V) bans[nb++] = (int32_t)((size_t)r * V + (size_t)row_bans[j]);
            }
            DS_ASSERT(nb <= max_bans);
            if (nb) {
                be->upload(be, bt.bans, bans, sizeof(int32_t) * nb);
                be->mask_ids(be, bt.logits, bt.bans, (int)nb);
            }
            be->argmax_rows(be, bt.amax, bt.logits, (size_t)V, nr, V);
            be->download(be, ids, bt.amax, sizeof(int32_t) * (size_t)nr);
            for (int r = 0; r < nr; r++) q[row_of[r]].tok = ids[r] >= 0 && ids[r] < V ? ids[r] : 0;
        }
        t_dec += ds_now() - t0;
        /* the stopped ones leave */
        for (int k = 0; k < n_active;) {
            const int i = active[k];
            if (!q[i].done) {
                k++;
                continue;
            }
            const DsocrStatus ps = batch_result(s, &q[i], t_dec, &res[i]);
            kvpool_leave(bt.pool, q[i].slot);
            active[k] = active[--n_active];
            stream_end(end_page, user, &q[i], &res[i], ps, s->err);
        }
    }
end:
    /* a failure of the batch itself: every page still in it ends with it */
    for (int k = 0; st && k < n_active; k++) stream_end(end_page, user, &q[active[k]], &res[active[k]], st, s->err);
    if (st && waiting >= 0) stream_end(end_page, user, &q[waiting], &res[waiting], st, s->err);
    for (int i = 0; q && i <= max_batch; i++) batch_seq_free(&q[i]);
    free(q), free(res), free(row_of), free(active), free(bans), free(row_bans), free(rows), free(masked), free(ptrs_h);
    kvpool_free(bt.pool);
    if (bt.kv.data) be->free(be, bt.kv.data);
    if (bt.dev) be->free(be, bt.dev);
    return st;
}

/* engine_ocr_queue over engine_ocr_stream: the pages of an array in order, results into out. */
typedef struct QueueCtx {
    const EnginePage *pages;
    int n, next;
    DsocrResult *out;
    DsocrStatus first; /* the first failed page's */
    char err[1100];
    EnginePageDone on_done;
    void *user;
} QueueCtx;

static int queue_next(void *user, EnginePage *page, int *id) {
    QueueCtx *qc = user;
    if (qc->next >= qc->n) return 0;
    *id = qc->next;
    *page = qc->pages[qc->next++];
    return 1;
}

static void queue_end(void *user, int id, DsocrStatus st, const char *err, DsocrResult *r) {
    QueueCtx *qc = user;
    qc->out[id] = *r; /* moved */
    memset(r, 0, sizeof *r);
    if (st && !qc->first) {
        qc->first = st;
        snprintf(qc->err, sizeof qc->err, "page %d: %s", id, err);
    }
    if (qc->on_done) qc->on_done(qc->user, id, &qc->out[id]);
}

DsocrStatus engine_ocr_queue(DsocrSession *s, const EnginePage *pages, int n, int max_batch,
                             const DsocrOcrOptions *opt, DsocrResult *out, EnginePageDone on_done, void *user) {
    if (n > 0) memset(out, 0, sizeof *out * (size_t)n);
    if (n <= 0) return fail(s, DSOCR_E_INVALID_ARG, "a batch takes at least one page");
    QueueCtx qc = {.pages = pages, .n = n, .out = out, .on_done = on_done, .user = user};
    DsocrStatus st = engine_ocr_stream(s, max_batch < n ? max_batch : n, opt, queue_next, queue_end, &qc);
    if (st) return st;
    if (qc.first) return fail(s, qc.first, "%s", qc.err);
    return DSOCR_OK;
}

DsocrStatus engine_ocr_batch(DsocrSession *s, const EnginePage *pages, int n, const DsocrOcrOptions *opt,
                             DsocrResult *out) {
    return engine_ocr_queue(s, pages, n, n, opt, out, NULL, NULL);
}
