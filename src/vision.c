/* vision.c: see vision.h. Runs on the model's backend (m->be): activations are backend buffers, HWC / row-major
 * fp32 throughout (a SAM feature map [g, g, C] is the same memory as g² token rows of C channels), except, in bf16
 * mode on a backend with act_bf16, the buffers that only feed a linear (the norms before the MLPs and CLIP's qkv,
 * the MLP hidden): those hold bf16 storage (see act16). Position tables are resampled on the host (they depend only
 * on the view size) and uploaded. */
#include "vision.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dump.h"

#define MLP_CHUNK 4096 /* rows per MLP pass (bounds the hidden buffer; a 1,024-px SAM map in one pass: the
                            second product then fills the GPU, which 1,024 rows of 768 outputs did not) */
#define CONV_SCRATCH_CAP (4u << 20) /* floats of im2col scratch (more passes when smaller than one shot) */
#define VISION_GRAPHS 4             /* recorded views kept (a gundam page uses two sides) */
#define TABLE_SLOTS 2               /* view sides whose position tables stay on the backend */
#define HOST_TABLES 2               /* view sides whose position tables stay in host memory */
/* Model.lean (a model plan.h placed partly on the host, short of GPU memory): the MLP in passes of 1,024 rows
 * (the hidden buffer 12 MiB instead of 48) and one table slot (a gundam page then rebuilds its tables twice) */
#define LEAN_MLP_CHUNK 1024

struct VisionWork {
    Backend *be;
    int max_side, max_g, max_rows;
    /* backend buffers */
    float *chw;            /* [3, S, S] input */
    float *hwc;            /* [S, S, 3] */
    float *x, *y;          /* [max_rows, W] residual stream, normed */
    float *qkv;            /* [max_rows, 3W] */
    float *att;            /* [max_rows, W] */
    float *big;            /* max(mlp_chunk·M, max_rows·W): MLP hidden, windowed projection */
    int mlp_chunk;         /* rows per MLP pass: MLP_CHUNK, or LEAN_MLP_CHUNK for a model placed under a budget */
    int n_tab;             /* table slots in use: TABLE_SLOTS, or 1 for a model placed under a budget */
    /* the position tables of up to TABLE_SLOTS view sides (a gundam page alternates two), tab[cur] in use */
    struct {
        int side;          /* 0: empty */
        unsigned long used;
        float *pos;        /* [g, g, W] resampled pos_embed */
        float *rel;        /* [layers][2][relmax, hd]: every block's resized rel-pos tables */
        float *cpos;       /* [1 + n², CW] CLIP positions */
    } tab[TABLE_SLOTS];
    int cur;
    unsigned long uses;
    float *conv;           /* im2col scratch */
    size_t conv_n;
    float *neck_a, *neck_b; /* [g², O] */
    float *net2;           /* [(g/2)², D0] */
    float *sam;            /* [n², D1] */
    int max_tok;           /* 1 + n² */
    float *cx, *cy, *cqkv, *catt; /* CLIP [max_tok, CW / 3CW / CW]; its MLP hidden is big's */
    float *feat;           /* [n², CW + D1] */
    float *proj;           /* [n², hidden] a recorded view's output (copied to the caller's) */
    void *own;             /* the view's buffers' region when the caller gave none (else they lie in its scratch) */
    int record;            /* record views as graphs (not with DSOCR_NO_GRAPH or DSOCR_PROFILE) */
    struct {
        int side, tag, slot; /* slot: the table slot it reads (valid while that slot holds its side) */
        void *g;
    } graphs[VISION_GRAPHS];
    int n_graphs;
    /* host buffers */
    float *h_pos_src;      /* [G, G, W] the table widened */
    float *h_rel_src;      /* [relmax, hd] */
    float *h_cpos_src;     /* [1 + np², CW] */
    /* the tables of the last HOST_TABLES sides as uploaded (a side's rebuild on the backend is then uploads) */
    struct {
        int side;          /* 0: empty */
        unsigned long used;
        float *pos;        /* [max_g, max_g, W] */
        float *rel;        /* [layers][2][relmax, hd] as tab[].rel */
        float *cpos;       /* [max_tok, CW] */
    } host[HOST_TABLES];
};

static int ceil_to(int a, int m) { return (a + m - 1) / m * m; }

typedef struct Sizes {
    size_t W, g, rows, n, tok, CW, big, G, hd, np, relmax, O, D0, D1, CM, M, F, S;
} Sizes;

static int mlp_chunk(int lean) { return lean ? LEAN_MLP_CHUNK : MLP_CHUNK; }
static int table_slots(int lean) { return lean ? 1 : TABLE_SLOTS; }

/* lean: Model.lean's smaller form (only z.big depends on it) */
static Sizes sizes(const Model *m, int max_side, int lean) {
    const ModelConfig *c = &m->cfg;
    const SamConfig *s = &c->sam;
    Sizes z;
    z.S = (size_t)max_side;
    z.W = (size_t)s->width;
    z.g = (size_t)(max_side / s->patch_size);
    size_t gp = (size_t)ceil_to((int)z.g, s->window_size);
    z.rows = gp * gp > z.g * z.g ? gp * gp : z.g * z.g;
    z.n = z.g / 4;
    z.tok = 1 + z.n * z.n;
    z.CW = (size_t)c->clip.width;
    z.M = (size_t)s->mlp_dim;
    z.big = (size_t)mlp_chunk(lean) * z.M;
    if (z.big < z.rows * z.W) z.big = z.rows * z.W;
    z.G = (size_t)(s->image_size / s->patch_size);
    z.hd = z.W / (size_t)s->heads;
    z.np = (size_t)(c->clip.image_size / c->clip.patch_size);
    z.relmax = 2 * z.G > 2 * (size_t)s->window_size ? 2 * z.G : 2 * (size_t)s->window_size;
    if (z.relmax < 2 * z.g) z.relmax = 2 * z.g;
    z.O = (size_t)s->out_chans;
    z.D0 = (size_t)s->downsample_channels[0];
    z.D1 = (size_t)s->downsample_channels[1];
    z.CM = (size_t)c->clip.mlp_dim;
    if (z.big < z.tok * z.CM) z.big = z.tok * z.CM; /* CLIP's MLP hidden too */
    z.F = (size_t)c->projector_input_dim;
    return z;
}

/* The view's own buffers: everything but the position tables (kept across views and runs), laid out in one region
 * (vision_work_new's scratch, or one allocation of its own). Each piece gets 64 bytes of slack and starts 256-byte
 * aligned. Pieces of phase 0 live through the whole view; the others share one span, since no two phases are live
 * at once: 1, the input and its transpose (up to the patch embedding); 2, SAM's qkv (its blocks); 3, the neck,
 * the strided convolutions and CLIP (after SAM's blocks). */
enum { PIECES = 18, PIECE_ALIGN = 256, PHASES = 4 };
typedef struct Piece {
    float **p;
    size_t n; /* floats */
    int phase;
} Piece;

static void pieces(VisionWork *w, size_t hidden, const Sizes *z, Piece *pc) {
    const Piece p[PIECES] = {
        {&w->x, z->rows * z->W, 0},
        {&w->y, z->rows * z->W, 0},
        {&w->att, z->rows * z->W, 0},
        {&w->big, z->big, 0},
        {&w->conv, CONV_SCRATCH_CAP, 0},
        {&w->feat, z->n * z->n * z->F, 0},
        {&w->proj, z->n * z->n * hidden, 0},
        {&w->chw, 3 * z->S * z->S, 1},
        {&w->hwc, 3 * z->S * z->S, 1},
        {&w->qkv, z->rows * 3 * z->W, 2},
        {&w->neck_a, z->g * z->g * z->O, 3},
        {&w->neck_b, z->g * z->g * z->O, 3},
        {&w->net2, (z->g / 2) * (z->g / 2) * z->D0, 3},
        {&w->sam, z->n * z->n * z->D1, 3},
        {&w->cx, z->tok * z->CW, 3},
        {&w->cy, z->tok * z->CW, 3},
        {&w->cqkv, z->tok * 3 * z->CW, 3},
        {&w->catt, z->tok * z->CW, 3},
    };
    memcpy(pc, p, sizeof p);
}

/* A piece's bytes in the region: its floats, 64 bytes of slack, rounded up to PIECE_ALIGN */
static size_t piece_bytes(const Piece *p) {
    return (sizeof(float) * p->n + 64 + PIECE_ALIGN - 1) / PIECE_ALIGN * PIECE_ALIGN;
}

/* Places the pieces from base (NULL: only sizes them); returns the region's bytes. */
static size_t layout(Piece *pc, char *base) {
    size_t end[PHASES] = {0};
    for (int i = 0; i < PIECES; i++) end[pc[i].phase] += piece_bytes(&pc[i]);
    size_t span = 0, at[PHASES] = {0};
    for (int ph = 1; ph < PHASES; ph++) span = end[ph] > span ? end[ph] : span;
    for (int ph = 1; ph < PHASES; ph++) at[ph] = end[0];
    for (int i = 0; base && i < PIECES; i++) {
        *pc[i].p = (float *)(void *)(base + at[pc[i].phase]);
        at[pc[i].phase] += piece_bytes(&pc[i]);
    }
    return end[0] + span;
}

size_t vision_scratch_bytes(const Model *m, int max_side, int lean) {
    VisionWork w;
    Sizes z = sizes(m, max_side, lean);
    Piece pc[PIECES];
    pieces(&w, (size_t)m->cfg.hidden_size, &z, pc);
    return layout(pc, NULL);
}

size_t vision_work_bytes(const Model *m, int max_side, int lean) {
    Sizes z = sizes(m, max_side, lean);
    size_t tab = table_slots(lean) * (z.g * z.g * z.W + (size_t)m->cfg.sam.layers * 2 * z.relmax * z.hd + z.tok * z.CW);
    return vision_scratch_bytes(m, max_side, lean) + tab * sizeof(float);
}

DsocrStatus vision_work_new(const Model *m, int max_side, void *scratch, VisionWork **out, DsError *e) {
    *out = NULL;
    if (max_side % 64 || max_side < 64)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "view side %d is not a positive multiple of 64", max_side);
    VisionWork *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    Backend *be = m->be;
    w->be = be;
    Sizes z = sizes(m, max_side, m->lean);
    w->max_side = max_side;
    w->max_g = (int)z.g;
    w->max_rows = (int)z.rows;
    w->max_tok = (int)z.tok;
    w->conv_n = CONV_SCRATCH_CAP;
    Piece pc[PIECES];
    pieces(w, (size_t)m->cfg.hidden_size, &z, pc);
    const size_t nbytes = layout(pc, NULL);
    if (!scratch && !(scratch = w->own = be->alloc(be, nbytes))) goto oom;
    layout(pc, scratch);
#define A(field, count)                                                                                       \
    do {                                                                                                      \
        if (!(w->field = be->alloc(be, sizeof(float) * (size_t)(count) + 64))) goto oom;                     \
    } while (0)
#define H(field, count)                                                                                       \
    do {                                                                                                      \
        if (!(w->field = malloc(sizeof(float) * (size_t)(count) + 64))) goto oom;                            \
    } while (0)
    w->mlp_chunk = mlp_chunk(m->lean);
    w->n_tab = table_slots(m->lean);
    for (int i = 0; i < w->n_tab; i++) {
        A(tab[i].pos, z.g * z.g * z.W);
        A(tab[i].rel, (size_t)m->cfg.sam.layers * 2 * z.relmax * z.hd);
        A(tab[i].cpos, z.tok * z.CW);
    }
    H(h_pos_src, z.G * z.G * z.W);
    H(h_rel_src, z.relmax * z.hd);
    H(h_cpos_src, (z.np * z.np + 1) * z.CW);
    for (int i = 0; i < HOST_TABLES; i++) {
        H(host[i].pos, z.g * z.g * z.W);
        H(host[i].rel, (size_t)m->cfg.sam.layers * 2 * z.relmax * z.hd);
        H(host[i].cpos, z.tok * z.CW);
    }
#undef A
#undef H
    w->record = !ds_env_on("DSOCR_NO_GRAPH") && !ds_env_on("DSOCR_PROFILE");
    model_tensor_to_f32(m->sam.pos_embed, w->h_pos_src);
    model_tensor_to_f32(m->clip.position_embedding, w->h_cpos_src);
    *out = w;
    return DSOCR_OK;
oom:
    vision_work_free(w);
    return ds_fail(e, DSOCR_E_NOMEM, "out of %s memory for the vision working memory (%zu MiB for %d-px views)",
                   be->name, vision_work_bytes(m, max_side, m->lean) >> 20, max_side);
}

int vision_work_max_side(const VisionWork *w) { return w ? w->max_side : 0; }

void vision_work_free(VisionWork *w) {
    if (!w) return;
    Backend *be = w->be;
    for (int i = 0; i < TABLE_SLOTS; i++) {
        float *t[] = {w->tab[i].pos, w->tab[i].rel, w->tab[i].cpos};
        for (int j = 0; j < 3; j++)
            if (t[j]) be->free(be, t[j]);
    }
    for (int i = 0; i < w->n_graphs; i++) be->graph_free(be, w->graphs[i].g);
    if (w->own) be->free(be, w->own);
    free(w->h_pos_src);
    free(w->h_rel_src);
    free(w->h_cpos_src);
    for (int i = 0; i < HOST_TABLES; i++) free(w->host[i].pos), free(w->host[i].rel), free(w->host[i].cpos);
    free(w);
}

/* ---- helpers over the backend ---- */

typedef struct Ctx {
    const Model *m;
    VisionWork *w;
    Backend *be;
    int bf16;
    const char *dd, *vn;
    DsError *e;
} Ctx;

static void rnd(Ctx *c, float *x, size_t n) {
    if (c->bf16) c->be->round_bf16(c->be, x, n);
}

/* Activations that only feed a linear kept in bf16 storage (backend.h act_bf16): in bf16 mode every such value is
 * rounded to bf16 already, so the narrower buffer loses nothing and halves the traffic. Such a buffer (allocated in
 * floats) holds its bf16 values in the first half of its bytes; its pointer stays float * and the flags say what
 * it holds. Nothing dumped is ever bf16 storage (dumps read the residual streams and the neck). */
static int act16(const Ctx *c) { return c->bf16 && c->be->act_bf16; }
/* (act16 backends have residual_add and window_unpartition_residual: backend.h) */

/* linear, its output rounded to bf16 in bf16 mode; flags: an activation (BE_GELU or BE_QGELU) over the output,
 * rounded before and after in bf16 mode, and the storage flags BE_IN_BF16 / BE_OUT_BF16 (only when act16) */
static void linear(Ctx *c, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW b, int flags) {
    c->be->linear(c->be, y, ldy, x, ldx, M, K, w, N, b, (c->bf16 ? BE_ROUND : 0) | flags);
}

/* The residual step x[0..n) += r, then rounded to bf16 when round (in bf16 mode): r in bf16 storage when r16 (an
 * act16 backend's residual_add does both in one pass), else floats (add, then round_bf16). */
static void residual(Ctx *c, float *x, const float *r, size_t n, int r16, int round) {
    if (r16) {
        c->be->residual_add(c->be, x, r, n, BE_IN_BF16 | (round ? BE_ROUND : 0));
        return;
    }
    c->be->add(c->be, x, x, r, n);
    if (round) rnd(c, x, n);
}

static void layernorm(Ctx *c, float *y, const float *x, int M, int n, DsW w, DsW b, float eps) {
    c->be->layernorm(c->be, y, n, x, n, M, n, w, b, eps, c->bf16 ? BE_ROUND : 0);
}

/* layernorm into a buffer that only linears read: bf16 storage when act16. Returns the flag those linears read it
 * with (BE_IN_BF16, or 0 for floats). */
static int layernorm_to_linear(Ctx *c, float *y, const float *x, int M, int n, DsW w, DsW b, float eps) {
    if (!act16(c)) {
        layernorm(c, y, x, M, n, w, b, eps);
        return 0;
    }
    c->be->layernorm(c->be, y, n, x, n, M, n, w, b, eps, BE_ROUND | BE_OUT_BF16);
    return BE_IN_BF16;
}

/* A block's q/k/v product and attention (a: the call with fp32 buffers; a->q must be qkv [R, 3·Wd] as the product
 * writes it, a->out the output [R, Wd]). When act16 and the backend takes the call with io_bf16 (backend.h
 * attention_bf16), qkv and the output are bf16 storage and the output comes rounded; else the output is rounded
 * here in bf16 mode. Returns the flag the output projection reads the output with. */
static int qkv_attention(Ctx *c, OpsAttention *a, float *qkv, const float *in, int in16, int R, int Wd, DsW qw,
                         DsW qb, const char *mark_qkv, const char *mark_attn) {
    Backend *be = c->be;
    int io = 0;
    if (act16(c) && be->attention_bf16) {
        OpsAttention t = *a;
        uint16_t *q16 = (uint16_t *)qkv; /* bf16 storage behind the float pointers (ops.h io_bf16) */
        t.io_bf16 = 1;
        t.q = (const float *)q16;
        t.k = (const float *)(q16 + Wd);
        t.v = (const float *)(q16 + 2 * Wd);
        if ((io = be->attention_bf16(be, &t) != 0)) *a = t;
    }
    be_mark(be, mark_qkv);
    linear(c, qkv, 3 * Wd, in, Wd, R, Wd, qw, 3 * Wd, qb, in16 | (io ? BE_OUT_BF16 : 0));
    be_mark(be, mark_attn);
    be->attention(be, a);
    if (!io) rnd(c, a->out, (size_t)R * Wd);
    return io ? BE_IN_BF16 : 0;
}

/* SAM's LayerNorm2d (per position over channels); bf16 mode follows autocast: bf16 mean and x − mean, fp32
 * statistics and output (the next convolution rounds its input). */
static void layernorm2d(Ctx *c, float *y, const float *x, int M, int n, DsW w, DsW b) {
    c->be->layernorm(c->be, y, n, x, n, M, n, w, b, 1e-6f, c->bf16 ? OPS_BF16 | BE_ROUND : 0);
}

static void conv(Ctx *c, float *y, const float *x, int H, int I, int O, int k, int stride, int pad, DsW wt, DsW b) {
    OpsConv2d cv = {.in_h = H, .in_w = H, .in_c = I, .out_c = O, .kh = k, .kw = k, .stride = stride, .pad = pad};
    c->be->conv2d(c->be, y, x, &cv, wt, b, c->w->conv, c->w->conv_n);
    int ho = ops_conv2d_out_h(&cv);
    rnd(c, y, (size_t)ho * ho * O);
}

/* Dumps a backend buffer of n floats under the view's name prefix, in HWC/rows as given (shape d0 × d1 × d2). */
static DsocrStatus dump_rows(Ctx *c, const char *stage, const float *buf, int64_t d0, int64_t d1, int64_t d2) {
    if (!c->dd) return DSOCR_OK;
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1) * (size_t)(d2 ? d2 : 1);
    float *h = malloc(sizeof(float) * n + 4);
    if (!h) return ds_fail(c->e, DSOCR_E_NOMEM, "out of memory for a dump");
    c->be->download(c->be, h, buf, sizeof(float) * n);
    char nm[96];
    snprintf(nm, sizeof nm, "%s.%s", c->vn, stage);
    DsocrStatus st = dump_f32(c->dd, nm, h, d0, d1, d2, c->e);
    free(h);
    return st;
}

/* Dumps an HWC map [n, n, C] in the reference's CHW layout. */
static DsocrStatus dump_chw(Ctx *c, const char *stage, const float *hwc, int n, int C) {
    if (!c->dd) return DSOCR_OK;
    size_t N = (size_t)n * n * C;
    float *h = malloc(sizeof(float) * N * 2 + 4);
    if (!h) return ds_fail(c->e, DSOCR_E_NOMEM, "out of memory for a dump");
    c->be->download(c->be, h, hwc, sizeof(float) * N);
    float *t = h + N;
    for (int i = 0; i < n * n; i++)
        for (int ch = 0; ch < C; ch++) t[(size_t)ch * n * n + i] = h[(size_t)i * C + ch];
    char nm[96];
    snprintf(nm, sizeof nm, "%s.%s", c->vn, stage);
    DsocrStatus st = dump_f32(c->dd, nm, t, C, n, n, c->e);
    free(h);
    return st;
}

/* A rel-pos table [rows, hd] resized (when rows != 2·len−1) to [2·len−1, hd] on the host, rounded to bf16 in both
 * precisions (the official code casts the resized table back to the parameter dtype), uploaded to dst. */
/* One block's relative-position table for len positions (2·len − 1 rows of hd) into dst (host memory): the
 * checkpoint's, linearly resampled when its row count differs (then rounded to bf16, as the official model's). */
static void relpos_table(Ctx *c, const StTensor *t, int len, float *dst) {
    VisionWork *w = c->w;
    int rows = (int)t->shape[0], hd = (int)t->shape[1], want = 2 * len - 1;
    if (rows == want) {
        model_tensor_to_f32(t, dst);
        return;
    }
    model_tensor_to_f32(t, w->h_rel_src);
    ops_resample_linear_1d(dst, w->h_rel_src, rows, want, hd);
    ops_round_bf16_cpu(dst, (size_t)want * hd);
}

/* x += fc2(act(fc1(y))) over M rows in chunks (y: the normed input, bf16 storage when y16 is BE_IN_BF16);
 * tmp_out: [mlp_chunk, D] scratch. The hidden (w->big) is bf16 storage when act16. defer (act16 only): when the
 * rows fit one pass, the residual step is left to the caller (the next norm's, see fused_norms): returns tmp_out,
 * fc2's output in bf16 storage, not yet added to x; else NULL (x updated here). */
static const void *mlp(Ctx *c, float *x, const float *y, int y16, int M, int D, int F, DsW w1, DsW b1, DsW w2,
                       DsW b2, int quick, float *tmp_out, int residual_round, int defer) {
    VisionWork *w = c->w;
    const int h16 = act16(c);
    const int chunk = w->mlp_chunk;
    for (int r0 = 0; r0 < M; r0 += chunk) {
        int mm = M - r0 < chunk ? M - r0 : chunk;
        /* row r0 of y: counted in bf16 elements when y holds bf16 */
        const float *yr = y16 ? (const float *)((const uint16_t *)y + (size_t)r0 * D) : y + (size_t)r0 * D;
        linear(c, w->big, F, yr, D, mm, D, w1, F, b1, (quick ? BE_QGELU : BE_GELU) | y16 | (h16 ? BE_OUT_BF16 : 0));
        /* fc2's output in bf16 storage too when act16, added (and rounded) in one pass */
        linear(c, tmp_out, D, w->big, F, mm, F, w2, D, b2, h16 ? BE_IN_BF16 | BE_OUT_BF16 : 0);
        if (defer && h16 && M <= chunk) return tmp_out;
        residual(c, x + (size_t)r0 * D, tmp_out, (size_t)mm * D, h16, residual_round);
    }
    return NULL;
}

/* Whether the residual steps go into the LayerNorms after them (backend.h residual_layernorm; bf16 storage): the
 * norm then reads x once for both. A residual "pending" is a bf16 buffer not yet added to x; the next norm adds
 * it (fused_norm), or residual() does before anything else reads x (a dump, the stage's end). */
static int fused_norms(const Ctx *c, int n) { return act16(c) && c->be->residual_layernorm && n <= 1024; }

/* x += *pend (when pending), rounded when round, then y = layernorm(x) in bf16 storage, its rows as x's or (ws > 0)
 * in the windows of the g × g map x; returns BE_IN_BF16, the flag the linear after it reads y with. */
static int fused_norm(Ctx *c, void *y, float *x, const void **pend, int round, int M, int n, int g, int ws, DsW w,
                      DsW b, float eps) {
    c->be->residual_layernorm(c->be, y, x, *pend, M, n, g, ws, w, b, eps, round ? BE_ROUND : 0);
    *pend = NULL;
    return BE_IN_BF16;
}

/* the pending residual added now (see fused_norms) */
static void flush(Ctx *c, float *x, const void **pend, size_t n, int round) {
    if (*pend) residual(c, x, *pend, n, 1, round);
    *pend = NULL;
}

/* The host copy of side's tables (w->host), computed when none of the kept ones is for it (least recently used
 * replaced). */
static int host_tables(Ctx *c, int side) {
    const Model *m = c->m;
    VisionWork *w = c->w;
    int h = -1;
    for (int i = 0; i < HOST_TABLES && h < 0; i++)
        if (w->host[i].side == side) h = i;
    if (h >= 0) return h;
    h = 0;
    for (int i = 1; i < HOST_TABLES; i++)
        if (w->host[i].used < w->host[h].used) h = i;
    const SamConfig *s = &m->cfg.sam;
    const int W = s->width, g = side / s->patch_size, G = s->image_size / s->patch_size, hd = W / s->heads;
    if (g != G) {
        ops_resample_bicubic_aa(w->host[h].pos, w->h_pos_src, W, G, G, g, g, 1);
        ops_round_bf16_cpu(w->host[h].pos, (size_t)g * g * W);
    } else {
        memcpy(w->host[h].pos, w->h_pos_src, sizeof(float) * (size_t)g * g * W);
    }
    const size_t relmax = sizes(m, w->max_side, 0).relmax;
    for (int b = 0; b < s->layers; b++) {
        const SamBlock *k = &m->sam.blocks[b];
        const int len = k->global ? g : s->window_size;
        relpos_table(c, k->rel_pos_h, len, w->host[h].rel + (size_t)(2 * b) * relmax * hd);
        relpos_table(c, k->rel_pos_w, len, w->host[h].rel + (size_t)(2 * b + 1) * relmax * hd);
    }
    const ClipConfig *k = &m->cfg.clip;
    const int CW = k->width, n = side / 64, np = k->image_size / k->patch_size;
    float *cpos = w->host[h].cpos;
    memcpy(cpos, w->h_cpos_src, sizeof(float) * CW);
    if (n == np) {
        memcpy(cpos + CW, w->h_cpos_src + CW, sizeof(float) * (size_t)n * n * CW);
    } else {
        ops_resample_bicubic_aa(cpos + CW, w->h_cpos_src + CW, CW, np, np, n, n, 1);
        ops_round_bf16_cpu(cpos + CW, (size_t)n * n * CW);
    }
    w->host[h].side = side;
    return h;
}

/* Makes tab[w->cur] hold the tables of views of `side` px: SAM's absolute positions resampled from the
 * checkpoint's 64 × 64 grid to g × g (bicubic with antialias, bf16-rounded as the official model's), each block's
 * relative-position tables for its window or the global map, and CLIP's position table for n × n patches. They
 * are kept per side in TABLE_SLOTS backend slots (a page that alternates tile and global views uploads each side's
 * tables once) and HOST_TABLES host copies (a rebuild of a slot is then uploads only). A view recorded with a slot
 * reads that slot's buffers: view_graph replays it only while the slot holds its side again (with one slot, the
 * lean form, every view's recording stays valid across the rebuilds). */
static void prepare_tables(Ctx *c, int side) {
    const Model *m = c->m;
    VisionWork *w = c->w;
    Backend *be = c->be;
    int t = -1;
    for (int i = 0; i < w->n_tab && t < 0; i++)
        if (w->tab[i].side == side) t = i;
    if (t < 0) {
        t = 0;
        for (int i = 1; i < w->n_tab; i++)
            if (w->tab[i].used < w->tab[t].used) t = i; /* an empty slot (used 0) or the least recently used */
        const int h = host_tables(c, side);
        w->host[h].used = w->tab[t].used = ++w->uses;
        const SamConfig *s = &m->cfg.sam;
        const int W = s->width, g = side / s->patch_size, hd = W / s->heads;
        const size_t relmax = sizes(m, w->max_side, 0).relmax, T = 1 + (size_t)(side / 64) * (side / 64);
        be->upload(be, w->tab[t].pos, w->host[h].pos, sizeof(float) * (size_t)g * g * W);
        be->upload(be, w->tab[t].rel, w->host[h].rel, sizeof(float) * (size_t)s->layers * 2 * relmax * hd);
        be->upload(be, w->tab[t].cpos, w->host[h].cpos, sizeof(float) * T * m->cfg.clip.width);
        w->tab[t].side = side;
    }
    w->tab[t].used = ++w->uses;
    w->cur = t;
}

static DsocrStatus sam_forward(Ctx *c, int side) {
    const Model *m = c->m;
    VisionWork *w = c->w;
    Backend *be = c->be;
    const SamConfig *s = &m->cfg.sam;
    const int W = s->width, P = s->patch_size, g = side / P;
    const int heads = s->heads, hd = W / heads, ws = s->window_size, M = s->mlp_dim;
    DsocrStatus st;
    /* CHW -> HWC, patch embed (conv P×P stride P) */
    be_mark(be, "sam.patch");
    be->chw_to_hwc(be, w->hwc, w->chw, side);
    conv(c, w->x, w->hwc, side, 3, W, P, P, 0, m->sam.patch_w, m->sam.patch_b);
    be->add(be, w->x, w->x, w->tab[w->cur].pos, (size_t)g * g * W);
    rnd(c, w->x, (size_t)g * g * W);
    if ((st = dump_rows(c, "sam_patch", w->x, g, g, W))) return st;

    const size_t relmax = sizes(m, w->max_side, 0).relmax;
    const float scale = 1.0f / sqrtf((float)hd);
    const int fz = fused_norms(c, W);
    const void *pend = NULL; /* a residual not yet added to x (fused_norms) */
    for (int b = 0; b < s->layers; b++) {
        const SamBlock *k = &m->sam.blocks[b];
        be_mark(be, "sam.norm");
        const int gl = k->global, len = gl ? g : ws;
        const int gp = ceil_to(g, ws), nw = gp / ws, R = gl ? g * g : nw * nw * ws * ws;
        const float *rel_h = w->tab[w->cur].rel + (size_t)(2 * b) * relmax * hd, *rel_w = rel_h + relmax * hd;
        /* windowed blocks: zero-pad to Gp after the norm and split into ws × ws windows (row-major) */
        const float *in = w->y;
        int in16 = 0;
        if (fz) {
            in16 = fused_norm(c, w->y, w->x, &pend, 1, g * g, W, g, gl ? 0 : ws, k->norm1_w, k->norm1_b, 1e-6f);
        } else {
            layernorm(c, w->y, w->x, g * g, W, k->norm1_w, k->norm1_b, 1e-6f);
            if (!gl) {
                be->window_partition(be, w->att, w->y, g, W, ws);
                in = w->att;
            }
        }
        OpsAttention a = {.out = w->att, .q = w->qkv, .k = w->qkv + W, .v = w->qkv + 2 * W, .ldo = W, .ldq = 3 * W,
                          .ldk = 3 * W, .ldv = 3 * W, .n_batch = gl ? 1 : nw * nw, .tq = gl ? g * g : ws * ws,
                          .tk = gl ? g * g : ws * ws, .n_heads = heads, .head_dim = hd, .scale = scale,
                          .relpos_h = rel_h, .relpos_w = rel_w, .grid_h = len, .grid_w = len,
                          .bf16_bias = c->bf16};
        const int att16 = qkv_attention(c, &a, w->qkv, in, in16, R, W, k->qkv_w, k->qkv_b, "sam.qkv",
                                        gl ? "sam.attn.global" : "sam.attn.window");
        be_mark(be, "sam.proj");
        /* the projection in bf16 storage when act16, added and rounded in one pass (or by the next norm) */
        const int p16 = act16(c);
        linear(c, w->big, W, w->att, W, R, W, k->proj_w, W, k->proj_b, att16 | (p16 ? BE_OUT_BF16 : 0));
        if (gl && fz) {
            pend = w->big;
        } else if (gl) {
            residual(c, w->x, w->big, (size_t)g * g * W, p16, 1);
        } else if (p16) {
            be->window_unpartition_residual(be, w->x, w->big, g, W, ws, BE_IN_BF16 | BE_ROUND);
        } else {
            be->window_unpartition_add(be, w->x, w->big, g, W, ws);
            rnd(c, w->x, (size_t)g * g * W);
        }
        be_mark(be, "sam.norm");
        const int y16 = fz ? fused_norm(c, w->y, w->x, &pend, 1, g * g, W, 0, 0, k->norm2_w, k->norm2_b, 1e-6f)
                           : layernorm_to_linear(c, w->y, w->x, g * g, W, k->norm2_w, k->norm2_b, 1e-6f);
        be_mark(be, "sam.mlp");
        pend = mlp(c, w->x, w->y, y16, g * g, W, M, k->lin1_w, k->lin1_b, k->lin2_w, k->lin2_b, 0, w->att, 1, fz);
        if (c->dd) {
            flush(c, w->x, &pend, (size_t)g * g * W, 1);
            char stage[32];
            snprintf(stage, sizeof stage, "sam_block%d", b);
            if ((st = dump_rows(c, stage, w->x, g, g, W))) return st;
        }
    }
    flush(c, w->x, &pend, (size_t)g * g * W, 1);
    /* neck: 1×1 conv W->O, LayerNorm2d, 3×3 conv, LayerNorm2d; then net_2, net_3 (3×3 stride 2) */
    const int O = s->out_chans, D0 = s->downsample_channels[0], D1 = s->downsample_channels[1];
    const DsW none = ds_w_none();
    be_mark(be, "sam.neck");
    conv(c, w->neck_a, w->x, g, W, O, 1, 1, 0, m->sam.neck0_w, none);
    layernorm2d(c, w->neck_a, w->neck_a, g * g, O, m->sam.neck1_w, m->sam.neck1_b);
    conv(c, w->neck_b, w->neck_a, g, O, O, 3, 1, 1, m->sam.neck2_w, none);
    layernorm2d(c, w->neck_b, w->neck_b, g * g, O, m->sam.neck3_w, m->sam.neck3_b);
    if ((st = dump_chw(c, "sam_neck", w->neck_b, g, O))) return st;
    conv(c, w->net2, w->neck_b, g, O, D0, 3, 2, 1, m->sam.net2_w, none);
    conv(c, w->sam, w->net2, (g + 1) / 2, D0, D1, 3, 2, 1, m->sam.net3_w, none);
    return DSOCR_OK;
}

static void clip_forward(Ctx *c, int n) {
    const Model *m = c->m;
    VisionWork *w = c->w;
    Backend *be = c->be;
    const ClipConfig *k = &m->cfg.clip;
    const int CW = k->width, T = 1 + n * n, heads = k->heads, hd = CW / heads;
    const int D1 = m->cfg.sam.downsample_channels[1];
    /* tokens: CLS then the SAM map row-major */
    be_mark(be, "clip.embed");
    be->fill_rows(be, w->cx, 1, m->clip.class_embedding, CW);
    be->copy_rows(be, w->cx + CW, CW, w->sam, D1, n * n, CW);
    be->add(be, w->cx, w->cx, w->tab[w->cur].cpos, (size_t)T * CW);
    rnd(c, w->cx, (size_t)T * CW);
    /* pre_layrnorm; from here the residual stream stays fp32 in both modes (spec §16 R4) */
    be->layernorm(be, w->cx, CW, w->cx, CW, T, CW, m->clip.pre_ln_w, m->clip.pre_ln_b, 1e-5f, 0);
    const float scale = 1.0f / sqrtf((float)hd);
    const int fz = fused_norms(c, CW);
    const void *pend = NULL; /* a residual not yet added to cx (fused_norms) */
    for (int l = 0; l < k->layers; l++) {
        const ClipLayer *L = &m->clip.layers[l];
        be_mark(be, "clip.qkv");
        int y16 = fz ? fused_norm(c, w->cy, w->cx, &pend, 0, T, CW, 0, 0, L->ln1_w, L->ln1_b, 1e-5f)
                     : layernorm_to_linear(c, w->cy, w->cx, T, CW, L->ln1_w, L->ln1_b, 1e-5f);
        OpsAttention a = {.out = w->catt, .q = w->cqkv, .k = w->cqkv + CW, .v = w->cqkv + 2 * CW, .ldo = CW,
                          .ldq = 3 * CW, .ldk = 3 * CW, .ldv = 3 * CW, .n_batch = 1, .tq = T, .tk = T,
                          .n_heads = heads, .head_dim = hd, .scale = scale};
        const int att16 = qkv_attention(c, &a, w->cqkv, w->cy, y16, T, CW, L->qkv_w, L->qkv_b, "clip.qkv",
                                        "clip.attn");
        be_mark(be, "clip.out");
        /* the projection in bf16 storage when act16; the residual stream stays fp32 (no rounding) */
        const int p16 = act16(c);
        linear(c, w->cy, CW, w->catt, CW, T, CW, L->out_w, CW, L->out_b, att16 | (p16 ? BE_OUT_BF16 : 0));
        be_mark(be, "clip.mlp");
        if (fz) { /* the norm reads the projection (cy) row by row before it writes its own output there */
            pend = w->cy;
            y16 = fused_norm(c, w->cy, w->cx, &pend, 0, T, CW, 0, 0, L->ln2_w, L->ln2_b, 1e-5f);
        } else {
            residual(c, w->cx, w->cy, (size_t)T * CW, p16, 0);
            y16 = layernorm_to_linear(c, w->cy, w->cx, T, CW, L->ln2_w, L->ln2_b, 1e-5f);
        }
        pend = mlp(c, w->cx, w->cy, y16, T, CW, k->mlp_dim, L->fc1_w, L->fc1_b, L->fc2_w, L->fc2_b, 1, w->catt, 0,
                   fz);
    }
    flush(c, w->cx, &pend, (size_t)T * CW, 0);
}

/* Every op of one view after its upload and tables: SAM, CLIP, the projector into out (dumps when c->dd). */
static DsocrStatus view_ops(Ctx *c, int side, float *out) {
    const Model *m = c->m;
    const ModelConfig *cf = &m->cfg;
    VisionWork *w = c->w;
    DsocrStatus st = sam_forward(c, side);
    if (st) return st;
    const int n = side / 64, D1 = cf->sam.downsample_channels[1], CW = cf->clip.width, T = 1 + n * n;
    if ((st = dump_chw(c, "sam", w->sam, n, D1))) return st; /* the reference dumps [C, n, n] */
    clip_forward(c, n);
    if ((st = dump_rows(c, "clip", w->cx, T, CW, 0))) return st;
    /* projector over concat(CLIP[1:], SAM) */
    const int F = cf->projector_input_dim, D = cf->hidden_size;
    be_mark(w->be, "projector");
    w->be->concat_cols(w->be, w->feat, w->cx + CW, CW, CW, w->sam, D1, D1, n * n);
    rnd(c, w->feat, (size_t)n * n * F);
    linear(c, out, D, w->feat, F, n * n, F, m->proj_w, D, m->proj_b, 0);
    be_mark(w->be, "(idle)");
    return dump_rows(c, "proj", out, n * n, D, 0);
}

/* The recorded view for (side, tag), recording it on first use; NULL when the backend cannot record. */
static void *view_graph(Ctx *c, int side, int tag) {
    VisionWork *w = c->w;
    Backend *be = c->be;
    for (int i = 0; i < w->n_graphs; i++)
        if (w->graphs[i].side == side && w->graphs[i].tag == tag && w->graphs[i].slot == w->cur)
            return w->graphs[i].g;
    if (w->n_graphs == VISION_GRAPHS) { /* full: drop the oldest */
        be->graph_free(be, w->graphs[0].g);
        memmove(w->graphs, w->graphs + 1, sizeof w->graphs[0] * (VISION_GRAPHS - 1));
        w->n_graphs--;
    }
    if (be->graph_begin(be) != 0) return NULL;
    DsocrStatus st = view_ops(c, side, w->proj);
    void *g = be->graph_end(be);
    if (st || !g) {
        if (g) be->graph_free(be, g);
        return NULL;
    }
    w->graphs[w->n_graphs].side = side;
    w->graphs[w->n_graphs].tag = tag;
    w->graphs[w->n_graphs].slot = w->cur;
    w->graphs[w->n_graphs++].g = g;
    return g;
}

DsocrStatus vision_encode(const Model *m, VisionWork *w, const float *chw, int side, const VisionOptions *o,
                          float *out, DsError *e) {
    const ModelConfig *cf = &m->cfg;
    if (side % 64 || side > w->max_side || side < 64)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "view side %d: must be a multiple of 64 up to %d", side, w->max_side);
    VisionOptions def = {0};
    if (!o) o = &def;
    Ctx c = {.m = m, .w = w, .be = w->be, .bf16 = o->bf16, .dd = o->dump_dir,
             .vn = o->view_name ? o->view_name : "view", .e = e};
    Backend *be = w->be;
    be_mark(be, "vision.upload");
    be->upload(be, w->chw, chw, sizeof(float) * 3 * (size_t)side * side);
    prepare_tables(&c, side);
    /* without dumps, on a backend that records (CUDA), a view's ~1,000 launches replay as one graph */
    if (!c.dd && be->graph_begin && w->record) {
        void *g = view_graph(&c, side, o->bf16 | o->graph_tag << 1);
        if (g) {
            const int n = side / 64;
            be->graph_launch(be, g);
            be->copy(be, out, w->proj, sizeof(float) * (size_t)n * n * cf->hidden_size);
            return DSOCR_OK;
        }
    }
    return view_ops(&c, side, out);
}
