/* decoder.c: see decoder.h. Runs on the model's backend; x and logits are backend buffers. */
#include "decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "dump.h"

struct DecoderWork {
    Backend *be;
    int max_rows;
    float *a;                     /* [R, D] normed input */
    float *q, *k, *v, *att, *tmp; /* [R, D] */
    float *scratch;               /* MoE / SwiGLU scratch */
    size_t scratch_n;
    float *rlog;                  /* [R, E] router logits for dumps */
    int32_t *idx;                 /* [R, K] chosen experts for dumps */
    float *last;                  /* [D] */
    float *qkv;                   /* [FUSED_ROWS, 3D]: q | k | v of a few rows from one fused product */
};

/* chunks up to this many rows use the layer's fused qkv weight when it has one (a decode batch of up to 256 pages:
 * one product of 3D outputs, not three of D) */
#define FUSED_ROWS 256

static size_t scratch_floats(const Model *m, int R) {
    const ModelConfig *c = &m->cfg;
    size_t dense = 2 * (size_t)R * (size_t)c->intermediate_size, moe = 0;
    for (int l = 0; l < c->num_hidden_layers; l++)
        if (m->layers[l].moe) {
            size_t s = m->be->moe_scratch_floats(R, &m->layers[l].moe_w);
            if (s > moe) moe = s;
        }
    return dense > moe ? dense : moe;
}

size_t decoder_work_bytes(const Model *m, int R) {
    const ModelConfig *c = &m->cfg;
    size_t D = (size_t)c->hidden_size;
    return 4 * ((size_t)R * D * 6 + scratch_floats(m, R) + (size_t)R * (c->n_routed_experts + 2 * c->num_experts_per_tok) + D +
                (size_t)FUSED_ROWS * 3 * D);
}

DsocrStatus decoder_work_new(const Model *m, int R, DecoderWork **out, DsError *e) {
    *out = NULL;
    const ModelConfig *c = &m->cfg;
    DecoderWork *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    Backend *be = m->be;
    w->be = be;
    w->max_rows = R;
    size_t D = (size_t)c->hidden_size, E = (size_t)c->n_routed_experts + 1, K = (size_t)c->num_experts_per_tok + 1;
    w->scratch_n = scratch_floats(m, R);
#define A(field, count)                                                                                       \
    do {                                                                                                      \
        if (!(w->field = be->alloc(be, sizeof(*w->field) * (size_t)(count) + 64))) goto oom;                 \
    } while (0)
    A(a, R * D);
    A(q, R * D);
    A(k, R * D);
    A(v, R * D);
    A(att, R * D);
    A(tmp, R * D);
    A(scratch, w->scratch_n);
    A(rlog, R * E);
    A(idx, R * K);
    A(last, D);
    A(qkv, FUSED_ROWS * 3 * D);
#undef A
    *out = w;
    return DSOCR_OK;
oom:
    decoder_work_free(w);
    return ds_fail(e, DSOCR_E_NOMEM, "out of %s memory for the decoder working memory (%zu MiB)", be->name,
                   decoder_work_bytes(m, R) >> 20);
}

void decoder_work_free(DecoderWork *w) {
    if (!w) return;
    void *bufs[] = {w->a, w->q, w->k, w->v, w->att, w->tmp, w->scratch, w->rlog, w->idx, w->last, w->qkv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) w->be->free(w->be, bufs[i]);
    free(w);
}

void decoder_embed(const Model *m, const int32_t *ids, int n, float *x) {
    m->be->embed(m->be, x, ids, n, m->embed, m->cfg.hidden_size);
}

/* Downloads a backend buffer and dumps it. */
static DsocrStatus dump_dev(Backend *be, const char *dd, const char *name, int dtype, const void *buf, int64_t d0,
                            int64_t d1, DsError *e) {
    size_t n = (size_t)d0 * (size_t)d1, bytes = n * 4;
    void *h = malloc(bytes + 4);
    if (!h) return ds_fail(e, DSOCR_E_NOMEM, "out of memory for a dump");
    be->download(be, h, buf, bytes);
    int64_t sh[2] = {d0, d1};
    DsocrStatus st = dump_write(dd, name, dtype, 2, sh, h, e);
    free(h);
    return st;
}

DsocrStatus decoder_forward(const Model *m, DecoderWork *w, const DecoderStep *s, DsError *e) {
    const ModelConfig *c = &m->cfg;
    Backend *be = w->be;
    const int D = c->hidden_size, H = c->num_attention_heads, hd = c->head_dim, n = s->n, bf16 = s->bf16;
    const int fl = bf16 ? OPS_BF16 : 0;
    /* the flags of the linears (outputs rounded in bf16) and of the MoE / MLP blocks, both with fp32 sums
     * (backend.h BE_FP32_SUMS) */
    const int sums = s->gemm ? 0 : BE_FP32_SUMS, lf = (bf16 ? BE_ROUND : 0) | sums, ff = fl | sums;
    const float eps = (float)c->rms_norm_eps, theta = (float)c->rope_theta;
    if (n < 1 || n > w->max_rows) return ds_fail(e, DSOCR_E_INVALID_ARG, "decoder chunk of %d rows", n);
    float *x = s->x;
    DsocrStatus st = DSOCR_OK;
    if (s->embed_row)
        be->upload(be, x, s->embed_row, sizeof(float) * (size_t)D);
    else if (s->ids_dev)
        be->embed_dev(be, x, s->ids_dev, n, m->embed, D);
    char nm[64];
    /* profile sections (DSOCR_PROFILE): a decode step's (one row), a batch's step (rows of several sequences) and
     * the prefill's apart */
#define MARK(name) be_mark(be, n == 1 ? "step." name : s->seq_dev ? "batch." name : "dec." name)
#define RND(p, cnt)                                                                                           \
    do {                                                                                                      \
        if (bf16) be->round_bf16(be, (p), (cnt));                                                             \
    } while (0)
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const DecLayer *L = &m->layers[l];
        MARK("qkv");
        if (l == 0) be->rmsnorm(be, w->a, D, x, D, n, D, L->input_norm, eps, fl); /* later: the previous add_rmsnorm */
        /* q, k, v: one product into [n, 3D] rows when the weights are fused (then q and k, adjacent, take one
         * RoPE call as 2H heads), else three; the same arithmetic per element either way */
        float *q = w->q, *k = w->k, *v = w->v;
        int ld = D, kv_done = 0;
        if (L->qkv.data && n <= FUSED_ROWS) {
            ld = 3 * D;
            q = w->qkv, k = w->qkv + D, v = w->qkv + 2 * D;
            /* one row on the device: the product, RoPE and the cache write as one call where the backend fuses */
            kv_done = n == 1 && !s->table && !s->seq_dev && be->qkv_rope_kv_dev &&
                      be->qkv_rope_kv_dev(be, w->qkv, w->a, D, L->qkv, H, hd, s->pos_dev, theta, lf, fl, s->kv, l,
                                          s->tables_dev);
            if (!kv_done) {
                be->linear(be, w->qkv, ld, w->a, D, n, D, L->qkv, 3 * D, ds_w_none(), lf);
                MARK("rope_kv");
                kv_done = !s->table && be->rope_kv_write_dev;
                if (kv_done)
                    be->rope_kv_write_dev(be, q, ld, n, H, hd, s->pos_dev, theta, fl, s->kv, l, s->tables_dev,
                                          s->seq_dev, v, ld);
                else
                    be->rope_neox(be, q, ld, n, 2 * H, hd, s->pos_dev, theta, fl);
            }
        } else {
            be->linear(be, q, D, w->a, D, n, D, L->q, D, ds_w_none(), lf);
            be->linear(be, k, D, w->a, D, n, D, L->k, D, ds_w_none(), lf);
            be->linear(be, v, D, w->a, D, n, D, L->v, D, ds_w_none(), lf);
            MARK("rope_kv");
            be->rope_neox(be, q, D, n, H, hd, s->pos_dev, theta, fl);
            be->rope_neox(be, k, D, n, H, hd, s->pos_dev, theta, fl);
        }
        if (s->table)
            be->kv_write(be, s->kv, l, s->table, s->pos0, n, k, ld, v, ld);
        else if (!kv_done)
            be->kv_write_dev(be, s->kv, l, s->tables_dev, s->seq_dev, s->pos_dev, n, k, ld, v, ld);
        OpsAttentionKv a = {.out = w->att, .q = q, .ldo = D, .ldq = ld, .n = n, .pos = s->pos_dev, .seq = s->seq_dev,
                            .tables = s->tables_dev, .kv = s->kv, .layer = l, .n_heads = H, .head_dim = hd,
                            .scale = 1.0f / sqrtf((float)hd), .round_bf16 = bf16};
        MARK("attn");
        be->attention_kv(be, &a);
        MARK("o");
        be->linear(be, w->tmp, D, w->att, D, n, D, L->o, D, ds_w_none(), lf);
        if (s->dump_dir) {
            snprintf(nm, sizeof nm, "layer%d.attn", l);
            if ((st = dump_dev(be, s->dump_dir, nm, DUMP_F32, w->tmp, n, D, e))) return st;
        }
        const int fused = L->moe && be->add_rmsnorm_moe;
        if (!fused) be->add_rmsnorm(be, w->a, x, w->tmp, n, D, L->post_norm, eps, fl);
        if (L->moe)
            MARK("moe");
        else
            MARK("dense");
        if (L->moe) {
            if (fused)
                be->add_rmsnorm_moe(be, w->tmp, w->a, x, w->tmp, n, L->post_norm, eps, &L->moe_w, ff,
                                    s->dump_dir ? w->rlog : NULL, s->dump_dir ? w->idx : NULL, w->scratch);
            else
                be->moe(be, w->tmp, w->a, n, &L->moe_w, ff, s->dump_dir ? w->rlog : NULL,
                        s->dump_dir ? w->idx : NULL, w->scratch);
            if (s->dump_dir) {
                snprintf(nm, sizeof nm, "layer%d.router_logits", l);
                if ((st = dump_dev(be, s->dump_dir, nm, DUMP_F32, w->rlog, n, c->n_routed_experts, e)))
                    return st;
                snprintf(nm, sizeof nm, "layer%d.experts", l);
                if ((st = dump_dev(be, s->dump_dir, nm, DUMP_I32, w->idx, n, c->num_experts_per_tok, e)))
                    return st;
            }
        } else {
            be->swiglu(be, w->tmp, w->a, n, D, c->intermediate_size, L->dense.gate, L->dense.up,
                       L->dense.down, ff, w->scratch);
        }
        MARK("norm");
        if (l + 1 < c->num_hidden_layers) {
            be->add_rmsnorm(be, w->a, x, w->tmp, n, D, m->layers[l + 1].input_norm, eps, fl);
        } else {
            be->add(be, x, x, w->tmp, (size_t)n * D);
            RND(x, (size_t)n * D);
        }
        if (s->dump_dir) {
            snprintf(nm, sizeof nm, "layer%d.out", l);
            if ((st = dump_dev(be, s->dump_dir, nm, DUMP_F32, x, n, D, e))) return st;
        }
    }
    if (s->logits) {
        MARK("lm_head");
        /* one row's logits, or with seq_dev every row's (each its sequence's next token): the normed rows in a */
        const int nl = s->seq_dev ? n : 1;
        float *h = s->seq_dev ? w->a : w->last;
        be->rmsnorm(be, h, D, x + (size_t)(n - nl) * D, D, nl, D, m->final_norm, eps, fl);
        (m->lm_head_host && be->linear_host ? be->linear_host : be->linear)(
            be, s->logits, c->vocab_size, h, D, nl, D, m->lm_head, c->vocab_size, ds_w_none(), lf);
    }
    be_mark(be, n == 1 ? "step.(after)" : "(idle)"); /* step.(after): the argmax and the host's loop */
#undef RND
#undef MARK
    return DSOCR_OK;
}
