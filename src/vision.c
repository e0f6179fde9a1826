/* vision.c: see vision.h. Activations are HWC / row-major fp32 throughout: a SAM feature map [g, g, C] is the
 * same memory as g² token rows of C channels. */
#include "vision.h"

#include <math.h>
#include <stdlib.h>

#include "dump.h"

#define MLP_CHUNK 1024 /* rows per MLP pass (bounds the hidden buffer) */
#define CONV_SCRATCH_CAP (4u << 20) /* floats of im2col scratch (more passes when smaller than one shot) */

struct VisionWork {
    int max_side, max_g, max_rows;
    float *hwc;            /* [S, S, 3] */
    float *x, *y;          /* [max_rows, W] residual stream, normed */
    float *qkv;            /* [max_rows, 3W] */
    float *att;            /* [max_rows, W] */
    float *big;            /* max(MLP_CHUNK·M, max_rows·W): MLP hidden, windowed projection */
    float *pos;            /* [g, g, W] resampled pos_embed for pos_side */
    int pos_side;
    float *pos_src;        /* [G, G, W] the table widened */
    float *rel_h, *rel_w;  /* [2·max_g−1, hd] resized tables */
    float *rel_src;        /* [max(rows of any table), hd] */
    float *conv;           /* im2col scratch */
    size_t conv_n;
    float *neck_a, *neck_b; /* [g², O] */
    float *net2;           /* [(g/2)², D0] */
    float *sam;            /* [n², D1] */
    int max_tok;           /* 1 + n² */
    float *cx, *cy, *cqkv, *catt, *cmlp; /* CLIP [max_tok, CW / 3CW / CW / CM] */
    float *cpos;           /* [max_tok, CW] */
    int cpos_n;
    float *cpos_src;       /* [np², CW] */
    float *feat;           /* [n², CW + D1] */
};

static int ceil_to(int a, int m) { return (a + m - 1) / m * m; }

static void sizes(const Model *m, int max_side, int *g, int *rows) {
    const SamConfig *s = &m->cfg.sam;
    *g = max_side / s->patch_size;
    int gp = ceil_to(*g, s->window_size);
    *rows = gp * gp > *g * *g ? gp * gp : *g * *g;
}

size_t vision_work_bytes(const Model *m, int max_side) {
    const ModelConfig *c = &m->cfg;
    const SamConfig *s = &c->sam;
    int g, rows;
    sizes(m, max_side, &g, &rows);
    size_t W = (size_t)s->width, n = (size_t)g / 4, tok = 1 + n * n, CW = (size_t)c->clip.width;
    size_t big = (size_t)MLP_CHUNK * (size_t)s->mlp_dim;
    if (big < (size_t)rows * W) big = (size_t)rows * W;
    size_t G = (size_t)(s->image_size / s->patch_size), hd = W / (size_t)s->heads;
    size_t np = (size_t)(c->clip.image_size / c->clip.patch_size);
    size_t f = (size_t)max_side * max_side * 3 + (size_t)rows * W * 4 + (size_t)rows * 3 * W + big +
               (size_t)g * g * W + G * G * W + 2 * (2 * (size_t)g + 2 * G) * hd + (2 * G + 2 * 64) * hd +
               CONV_SCRATCH_CAP + 2 * (size_t)g * g * s->out_chans + (size_t)(g / 2) * (g / 2) * s->downsample_channels[0] +
               n * n * s->downsample_channels[1] + tok * CW * 4 + tok * 3 * CW + tok * (size_t)c->clip.mlp_dim +
               np * np * CW + n * n * (size_t)c->projector_input_dim;
    return f * sizeof(float);
}

DsocrStatus vision_work_new(const Model *m, int max_side, VisionWork **out, DsError *e) {
    *out = NULL;
    const ModelConfig *c = &m->cfg;
    const SamConfig *s = &c->sam;
    if (max_side % 64 || max_side < 64)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "view side %d is not a positive multiple of 64", max_side);
    VisionWork *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    int g, rows;
    sizes(m, max_side, &g, &rows);
    w->max_side = max_side;
    w->max_g = g;
    w->max_rows = rows;
    size_t W = (size_t)s->width, n = (size_t)g / 4, CW = (size_t)c->clip.width;
    size_t hd = W / (size_t)s->heads, G = (size_t)(s->image_size / s->patch_size);
    size_t np = (size_t)(c->clip.image_size / c->clip.patch_size);
    size_t big = (size_t)MLP_CHUNK * (size_t)s->mlp_dim;
    if (big < (size_t)rows * W) big = (size_t)rows * W;
    size_t relmax = 2 * G > 2 * (size_t)s->window_size ? 2 * G : 2 * (size_t)s->window_size;
    if (relmax < 2 * (size_t)g) relmax = 2 * (size_t)g;
    w->max_tok = (int)(1 + n * n);
    w->conv_n = CONV_SCRATCH_CAP;
#define A(field, count)                                                                                       \
    do {                                                                                                      \
        if (!(w->field = malloc(sizeof(float) * (size_t)(count) + 64))) goto oom;                            \
    } while (0)
    A(hwc, (size_t)max_side * max_side * 3);
    A(x, (size_t)rows * W);
    A(y, (size_t)rows * W);
    A(qkv, (size_t)rows * 3 * W);
    A(att, (size_t)rows * W);
    A(big, big);
    A(pos, (size_t)g * g * W);
    A(pos_src, G * G * W);
    A(rel_h, relmax * hd);
    A(rel_w, relmax * hd);
    A(rel_src, relmax * hd);
    A(conv, w->conv_n);
    A(neck_a, (size_t)g * g * s->out_chans);
    A(neck_b, (size_t)g * g * s->out_chans);
    A(net2, (size_t)(g / 2) * (g / 2) * s->downsample_channels[0]);
    A(sam, n * n * s->downsample_channels[1]);
    A(cx, (size_t)w->max_tok * CW);
    A(cy, (size_t)w->max_tok * CW);
    A(cqkv, (size_t)w->max_tok * 3 * CW);
    A(catt, (size_t)w->max_tok * CW);
    A(cmlp, (size_t)w->max_tok * c->clip.mlp_dim);
    A(cpos, (size_t)w->max_tok * CW);
    A(cpos_src, (np * np + 1) * CW);
    A(feat, n * n * c->projector_input_dim);
#undef A
    model_tensor_to_f32(m->sam.pos_embed, w->pos_src);
    model_tensor_to_f32(m->clip.position_embedding, w->cpos_src);
    *out = w;
    return DSOCR_OK;
oom:
    vision_work_free(w);
    return ds_fail(e, DSOCR_E_NOMEM, "out of memory for the vision working memory (%zu MiB for %d-px views)",
                   vision_work_bytes(m, max_side) >> 20, max_side);
}

void vision_work_free(VisionWork *w) {
    if (!w) return;
    float *bufs[] = {w->hwc,    w->x,      w->y,    w->qkv,  w->att,  w->big,  w->pos,  w->pos_src,
                     w->rel_h,  w->rel_w,  w->rel_src, w->conv, w->neck_a, w->neck_b, w->net2, w->sam,
                     w->cx,     w->cy,     w->cqkv, w->catt, w->cmlp, w->cpos, w->cpos_src, w->feat};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(w);
}

static void rnd(int bf16, float *x, size_t n) {
    if (bf16) ops_round_bf16_cpu(x, n);
}

/* A rel-pos table [rows, hd] resized (when rows != 2·len−1) to [2·len−1, hd] into dst, fp32, then rounded to
 * bf16 in both precisions: the official code casts the resized table back to the parameter dtype. */
static void relpos_table(const StTensor *t, int len, int bf16, float *src, float *dst) {
    int rows = (int)t->shape[0], hd = (int)t->shape[1], want = 2 * len - 1;
    model_tensor_to_f32(t, src);
    if (rows == want) {
        memcpy(dst, src, sizeof(float) * (size_t)rows * hd);
        return;
    }
    ops_resample_linear_1d(dst, src, rows, want, hd);
    ops_round_bf16_cpu(dst, (size_t)want * hd);
}

/* Dumps an HWC map [n, n, C] in the reference's CHW layout, through tmp ([C·n·n] floats). */
static DsocrStatus dump_chw(const char *dd, const char *name, const float *hwc, int n, int C, float *tmp,
                            DsError *e) {
    for (int t = 0; t < n * n; t++)
        for (int ch = 0; ch < C; ch++) tmp[(size_t)ch * n * n + t] = hwc[(size_t)t * C + ch];
    return dump_f32(dd, name, tmp, C, n, n, e);
}

static void layernorm(float *y, const float *x, int M, int n, DsW w, DsW b, float eps, int bf16) {
    ops_layernorm_cpu(y, n, x, n, M, n, w, b, eps);
    rnd(bf16, y, (size_t)M * n);
}

static void linear(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW b, int bf16) {
    ops_linear_cpu(y, ldy, x, ldx, M, K, w, N, b, 0);
    if (bf16)
        for (int i = 0; i < M; i++) ops_round_bf16_cpu(y + (size_t)i * ldy, (size_t)N);
}

static void conv(VisionWork *w, float *y, const float *x, int H, int I, int O, int k, int stride, int pad, DsW wt,
                 DsW b, int bf16) {
    OpsConv2d c = {.in_h = H, .in_w = H, .in_c = I, .out_c = O, .kh = k, .kw = k, .stride = stride, .pad = pad};
    ops_conv2d_cpu(y, x, &c, wt, b, w->conv, w->conv_n);
    int ho = ops_conv2d_out_h(&c);
    rnd(bf16, y, (size_t)ho * ho * O);
}

/* MLP over M rows in chunks: x += fc2(act(fc1(norm(x)))) where norm output is in y. */
static void mlp(VisionWork *w, float *x, const float *y, int M, int D, int F, DsW w1, DsW b1, DsW w2, DsW b2,
                int quick, int bf16, float *tmp_out, int residual_bf16) {
    for (int r0 = 0; r0 < M; r0 += MLP_CHUNK) {
        int m = M - r0 < MLP_CHUNK ? M - r0 : MLP_CHUNK;
        linear(w->big, F, y + (size_t)r0 * D, D, m, D, w1, F, b1, bf16);
        if (quick)
            ops_quick_gelu_cpu(w->big, w->big, (size_t)m * F);
        else
            ops_gelu_cpu(w->big, w->big, (size_t)m * F);
        rnd(bf16, w->big, (size_t)m * F);
        linear(tmp_out, D, w->big, F, m, F, w2, D, b2, bf16);
        ops_add_cpu(x + (size_t)r0 * D, x + (size_t)r0 * D, tmp_out, (size_t)m * D);
        rnd(residual_bf16, x + (size_t)r0 * D, (size_t)m * D);
    }
}

static DsocrStatus sam_forward(const Model *m, VisionWork *w, const float *chw, int side, const VisionOptions *o,
                               DsError *e) {
    const SamConfig *s = &m->cfg.sam;
    const int bf16 = o->bf16, W = s->width, P = s->patch_size, g = side / P, G = s->image_size / P;
    const int heads = s->heads, hd = W / heads, ws = s->window_size, M = s->mlp_dim;
    const char *dd = o->dump_dir;
    char nm[96];
    /* CHW -> HWC, patch embed (conv P×P stride P) */
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < side * side; i++) w->hwc[(size_t)i * 3 + c] = chw[(size_t)c * side * side + i];
    conv(w, w->x, w->hwc, side, 3, W, P, P, 0, m->sam.patch_w, m->sam.patch_b, bf16);
    /* absolute position, resampled to g × g when g != G (bicubic AA), cached per side */
    if (w->pos_side != side) {
        if (g == G) {
            memcpy(w->pos, w->pos_src, sizeof(float) * (size_t)g * g * W);
        } else { /* resampled in fp32, cast back to bf16 (both precisions, as the official code) */
            ops_resample_bicubic_aa(w->pos, w->pos_src, W, G, G, g, g, 1);
            ops_round_bf16_cpu(w->pos, (size_t)g * g * W);
        }
        w->pos_side = side;
    }
    ops_add_cpu(w->x, w->x, w->pos, (size_t)g * g * W);
    rnd(bf16, w->x, (size_t)g * g * W);
    snprintf(nm, sizeof nm, "%s.sam_patch", o->view_name);
    if (dump_f32(dd, nm, w->x, g, g, W, e)) return e ? e->code : DSOCR_E_IO;

    const float scale = 1.0f / sqrtf((float)hd);
    for (int b = 0; b < s->layers; b++) {
        const SamBlock *k = &m->sam.blocks[b];
        layernorm(w->y, w->x, g * g, W, k->norm1_w, k->norm1_b, 1e-6f, bf16);
        if (k->global) {
            relpos_table(k->rel_pos_h, g, bf16, w->rel_src, w->rel_h);
            relpos_table(k->rel_pos_w, g, bf16, w->rel_src, w->rel_w);
            linear(w->qkv, 3 * W, w->y, W, g * g, W, k->qkv_w, 3 * W, k->qkv_b, bf16);
            OpsAttention a = {.out = w->att, .q = w->qkv, .k = w->qkv + W, .v = w->qkv + 2 * W, .ldo = W,
                              .ldq = 3 * W, .ldk = 3 * W, .ldv = 3 * W, .n_batch = 1, .tq = g * g, .tk = g * g,
                              .n_heads = heads, .head_dim = hd, .scale = scale, .relpos_h = w->rel_h,
                              .relpos_w = w->rel_w, .grid_h = g, .grid_w = g};
            ops_attention_cpu(&a);
            rnd(bf16, w->att, (size_t)g * g * W);
            linear(w->big, W, w->att, W, g * g, W, k->proj_w, W, k->proj_b, bf16);
            ops_add_cpu(w->x, w->x, w->big, (size_t)g * g * W);
        } else {
            /* zero-pad to Gp on the bottom/right after the norm, split into ws × ws windows (row-major) */
            int gp = ceil_to(g, ws), nw = gp / ws, R = nw * nw * ws * ws;
            relpos_table(k->rel_pos_h, ws, bf16, w->rel_src, w->rel_h);
            relpos_table(k->rel_pos_w, ws, bf16, w->rel_src, w->rel_w);
            float *win = w->att; /* [R, W] windows, then reused for the attention output via qkv rows */
            memset(win, 0, sizeof(float) * (size_t)R * W);
            for (int i = 0; i < g; i++)
                for (int j = 0; j < g; j++) {
                    int wi = (i / ws) * nw + j / ws, t = (i % ws) * ws + j % ws;
                    memcpy(win + ((size_t)wi * ws * ws + t) * W, w->y + ((size_t)i * g + j) * W,
                           sizeof(float) * W);
                }
            linear(w->qkv, 3 * W, win, W, R, W, k->qkv_w, 3 * W, k->qkv_b, bf16);
            OpsAttention a = {.out = win, .q = w->qkv, .k = w->qkv + W, .v = w->qkv + 2 * W, .ldo = W,
                              .ldq = 3 * W, .ldk = 3 * W, .ldv = 3 * W, .n_batch = nw * nw, .tq = ws * ws,
                              .tk = ws * ws, .n_heads = heads, .head_dim = hd, .scale = scale,
                              .relpos_h = w->rel_h, .relpos_w = w->rel_w, .grid_h = ws, .grid_w = ws};
            ops_attention_cpu(&a);
            rnd(bf16, win, (size_t)R * W);
            linear(w->big, W, win, W, R, W, k->proj_w, W, k->proj_b, bf16);
            for (int i = 0; i < g; i++)
                for (int j = 0; j < g; j++) {
                    int wi = (i / ws) * nw + j / ws, t = (i % ws) * ws + j % ws;
                    float *xr = w->x + ((size_t)i * g + j) * W;
                    ops_add_cpu(xr, xr, w->big + ((size_t)wi * ws * ws + t) * W, (size_t)W);
                }
        }
        rnd(bf16, w->x, (size_t)g * g * W);
        layernorm(w->y, w->x, g * g, W, k->norm2_w, k->norm2_b, 1e-6f, bf16);
        mlp(w, w->x, w->y, g * g, W, M, k->lin1_w, k->lin1_b, k->lin2_w, k->lin2_b, 0, bf16, w->att, bf16);
        if (dd) {
            snprintf(nm, sizeof nm, "%s.sam_block%d", o->view_name, b);
            if (dump_f32(dd, nm, w->x, g, g, W, e)) return e ? e->code : DSOCR_E_IO;
        }
    }
    /* neck: 1×1 conv W->O, LayerNorm2d, 3×3 conv, LayerNorm2d; then net_2, net_3 (3×3 stride 2) */
    const int O = s->out_chans, D0 = s->downsample_channels[0], D1 = s->downsample_channels[1];
    const DsW none = ds_w_none();
    conv(w, w->neck_a, w->x, g, W, O, 1, 1, 0, m->sam.neck0_w, none, bf16);
    layernorm(w->neck_a, w->neck_a, g * g, O, m->sam.neck1_w, m->sam.neck1_b, 1e-6f, bf16);
    conv(w, w->neck_b, w->neck_a, g, O, O, 3, 1, 1, m->sam.neck2_w, none, bf16);
    layernorm(w->neck_b, w->neck_b, g * g, O, m->sam.neck3_w, m->sam.neck3_b, 1e-6f, bf16);
    if (dd) {
        snprintf(nm, sizeof nm, "%s.sam_neck", o->view_name);
        DsocrStatus st = dump_chw(dd, nm, w->neck_b, g, O, w->big, e);
        if (st) return st;
    }
    conv(w, w->net2, w->neck_b, g, O, D0, 3, 2, 1, m->sam.net2_w, none, bf16);
    conv(w, w->sam, w->net2, (g + 1) / 2, D0, D1, 3, 2, 1, m->sam.net3_w, none, bf16);
    return DSOCR_OK;
}

static DsocrStatus clip_forward(const Model *m, VisionWork *w, int n, const VisionOptions *o) {
    const ClipConfig *c = &m->cfg.clip;
    const int CW = c->width, T = 1 + n * n, heads = c->heads, hd = CW / heads, np = c->image_size / c->patch_size;
    const int D1 = m->cfg.sam.downsample_channels[1], bf16 = o->bf16;
    /* tokens: CLS then the SAM map row-major */
    for (int i = 0; i < CW; i++) w->cx[i] = ds_w_get(m->clip.class_embedding, (size_t)i);
    memcpy(w->cx + CW, w->sam, sizeof(float) * (size_t)n * n * D1);
    if (w->cpos_n != n) {
        memcpy(w->cpos, w->cpos_src, sizeof(float) * CW);
        if (n == np) {
            memcpy(w->cpos + CW, w->cpos_src + CW, sizeof(float) * (size_t)n * n * CW);
        } else {
            ops_resample_bicubic_aa(w->cpos + CW, w->cpos_src + CW, CW, np, np, n, n, 1);
            ops_round_bf16_cpu(w->cpos + CW, (size_t)n * n * CW);
        }
        w->cpos_n = n;
    }
    ops_add_cpu(w->cx, w->cx, w->cpos, (size_t)T * CW);
    rnd(bf16, w->cx, (size_t)T * CW);
    /* pre_layrnorm; from here the residual stream stays fp32 in both modes (spec §16 R4) */
    ops_layernorm_cpu(w->cx, CW, w->cx, CW, T, CW, m->clip.pre_ln_w, m->clip.pre_ln_b, 1e-5f);
    const float scale = 1.0f / sqrtf((float)hd);
    for (int l = 0; l < c->layers; l++) {
        const ClipLayer *L = &m->clip.layers[l];
        layernorm(w->cy, w->cx, T, CW, L->ln1_w, L->ln1_b, 1e-5f, bf16);
        linear(w->cqkv, 3 * CW, w->cy, CW, T, CW, L->qkv_w, 3 * CW, L->qkv_b, bf16);
        OpsAttention a = {.out = w->catt, .q = w->cqkv, .k = w->cqkv + CW, .v = w->cqkv + 2 * CW, .ldo = CW,
                          .ldq = 3 * CW, .ldk = 3 * CW, .ldv = 3 * CW, .n_batch = 1, .tq = T, .tk = T,
                          .n_heads = heads, .head_dim = hd, .scale = scale};
        ops_attention_cpu(&a);
        rnd(bf16, w->catt, (size_t)T * CW);
        linear(w->cy, CW, w->catt, CW, T, CW, L->out_w, CW, L->out_b, bf16);
        ops_add_cpu(w->cx, w->cx, w->cy, (size_t)T * CW);
        layernorm(w->cy, w->cx, T, CW, L->ln2_w, L->ln2_b, 1e-5f, bf16);
        linear(w->cmlp, c->mlp_dim, w->cy, CW, T, CW, L->fc1_w, c->mlp_dim, L->fc1_b, bf16);
        ops_quick_gelu_cpu(w->cmlp, w->cmlp, (size_t)T * c->mlp_dim);
        rnd(bf16, w->cmlp, (size_t)T * c->mlp_dim);
        linear(w->cy, CW, w->cmlp, c->mlp_dim, T, c->mlp_dim, L->fc2_w, CW, L->fc2_b, bf16);
        ops_add_cpu(w->cx, w->cx, w->cy, (size_t)T * CW);
    }
    return DSOCR_OK;
}

DsocrStatus vision_encode(const Model *m, VisionWork *w, const float *chw, int side, const VisionOptions *o,
                          float *out, DsError *e) {
    const ModelConfig *c = &m->cfg;
    if (side % 64 || side > w->max_side || side < 64)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "view side %d: must be a multiple of 64 up to %d", side, w->max_side);
    VisionOptions def = {0};
    if (!o) o = &def;
    const char *dd = o->dump_dir, *vn = o->view_name ? o->view_name : "view";
    VisionOptions oo = *o;
    oo.view_name = vn;
    DsocrStatus st = sam_forward(m, w, chw, side, &oo, e);
    if (st) return st;
    const int n = side / 64, D1 = c->sam.downsample_channels[1], CW = c->clip.width, T = 1 + n * n;
    char nm[96];
    if (dd) { /* the reference dumps SAM's output as [C, n, n] (NCHW) */
        snprintf(nm, sizeof nm, "%s.sam", vn);
        if ((st = dump_chw(dd, nm, w->sam, n, D1, w->big, e))) return st;
    }
    clip_forward(m, w, n, &oo);
    snprintf(nm, sizeof nm, "%s.clip", vn);
    if ((st = dump_f32(dd, nm, w->cx, T, CW, 0, e))) return st;
    /* projector over concat(CLIP[1:], SAM) */
    const int F = c->projector_input_dim, D = c->hidden_size;
    for (int t = 0; t < n * n; t++) {
        memcpy(w->feat + (size_t)t * F, w->cx + (size_t)(1 + t) * CW, sizeof(float) * CW);
        memcpy(w->feat + (size_t)t * F + CW, w->sam + (size_t)t * D1, sizeof(float) * D1);
    }
    rnd(o->bf16, w->feat, (size_t)n * n * F);
    linear(out, D, w->feat, F, n * n, F, m->proj_w, D, m->proj_b, o->bf16);
    snprintf(nm, sizeof nm, "%s.proj", vn);
    if ((st = dump_f32(dd, nm, out, n * n, D, 0, e))) return st;
    return DSOCR_OK;
}
