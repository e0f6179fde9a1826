/* decoder.c: see decoder.h. */
#include "decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "dump.h"

struct DecoderWork {
    int max_rows;
    float *a;        /* [R, D] normed input */
    float *q, *k, *v, *att, *tmp; /* [R, D] */
    float *mlp;      /* expert scratch: 2·R·max(I, MI·S) */
    size_t mlp_n;
    float *rlog;     /* [R, E] router logits */
    int32_t *idx;    /* [R, K] */
    float *wts;      /* [R, K] */
    float *acc;      /* [R, D] routed sum */
    float *xg, *yg;  /* [R, D] rows gathered for one expert */
    int32_t *rows;   /* [R] gathered row ids */
    float *wg;       /* [R] their weights */
    float *last;     /* [D] */
};

static size_t ffn_width(const ModelConfig *c) {
    size_t I = (size_t)c->intermediate_size, S = (size_t)c->moe_intermediate_size * (size_t)c->n_shared_experts;
    size_t MI = (size_t)c->moe_intermediate_size;
    size_t w = I > S ? I : S;
    return w > MI ? w : MI;
}

size_t decoder_work_bytes(const Model *m, int R) {
    const ModelConfig *c = &m->cfg;
    size_t D = (size_t)c->hidden_size, E = (size_t)c->n_routed_experts, K = (size_t)c->num_experts_per_tok;
    size_t f = (size_t)R * D * 10 + 2 * (size_t)R * ffn_width(c) + (size_t)R * E + (size_t)R * K * 2 + R * 2 + D;
    return f * 4;
}

DsocrStatus decoder_work_new(const Model *m, int R, DecoderWork **out, DsError *e) {
    *out = NULL;
    const ModelConfig *c = &m->cfg;
    DecoderWork *w = calloc(1, sizeof *w);
    if (!w) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    w->max_rows = R;
    size_t D = (size_t)c->hidden_size, E = (size_t)c->n_routed_experts + 1, K = (size_t)c->num_experts_per_tok + 1;
    w->mlp_n = 2 * (size_t)R * ffn_width(c);
#define A(field, count)                                                                                       \
    do {                                                                                                      \
        if (!(w->field = malloc(sizeof(*w->field) * (size_t)(count) + 64))) goto oom;                        \
    } while (0)
    A(a, R * D);
    A(q, R * D);
    A(k, R * D);
    A(v, R * D);
    A(att, R * D);
    A(tmp, R * D);
    A(mlp, w->mlp_n);
    A(rlog, R * E);
    A(idx, R * K);
    A(wts, R * K);
    A(acc, R * D);
    A(xg, R * D);
    A(yg, R * D);
    A(rows, R);
    A(wg, R);
    A(last, D);
#undef A
    *out = w;
    return DSOCR_OK;
oom:
    decoder_work_free(w);
    return ds_fail(e, DSOCR_E_NOMEM, "out of memory for the decoder working memory (%zu MiB)",
                   decoder_work_bytes(m, R) >> 20);
}

void decoder_work_free(DecoderWork *w) {
    if (!w) return;
    void *bufs[] = {w->a, w->q, w->k, w->v, w->att, w->tmp, w->mlp, w->rlog, w->idx, w->wts,
                    w->acc, w->xg, w->yg, w->rows, w->wg, w->last};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(w);
}

void decoder_embed(const Model *m, const int32_t *ids, int n, float *x) {
    const int D = m->cfg.hidden_size;
    for (int r = 0; r < n; r++) {
        const size_t base = (size_t)ids[r] * D;
        for (int i = 0; i < D; i++) x[(size_t)r * D + i] = ds_w_get(m->embed, base + (size_t)i);
    }
}

static void rnd(int bf16, float *x, size_t n) {
    if (bf16) ops_round_bf16_cpu(x, n);
}

static void linear(float *y, const float *x, int M, int K, DsW w, int N, int bf16) {
    ops_linear_cpu(y, N, x, K, M, K, w, N, ds_w_none(), 0);
    rnd(bf16, y, (size_t)M * N);
}

/* out[n, D] = MoE(a) for one layer: routed experts (only the selected ones are read) + shared experts. */
static void moe(const Model *m, DecoderWork *w, const DecLayer *L, int n, int bf16, float *out, const char *dd,
                int layer, DsError *e) {
    const ModelConfig *c = &m->cfg;
    const int D = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok, F = c->moe_intermediate_size;
    ops_linear_cpu(w->rlog, E, w->a, D, n, D, L->router, E, ds_w_none(), 0);
    ops_moe_route(w->rlog, E, n, E, K, bf16 ? OPS_BF16 : 0, w->idx, w->wts);
    if (dd) {
        char nm[64];
        if (bf16) rnd(1, w->rlog, (size_t)n * E);
        snprintf(nm, sizeof nm, "layer%d.router_logits", layer);
        dump_f32(dd, nm, w->rlog, n, E, 0, e);
        snprintf(nm, sizeof nm, "layer%d.experts", layer);
        int64_t sh[2] = {n, K};
        dump_write(dd, nm, DUMP_I32, 2, sh, w->idx, e);
    }
    memset(w->acc, 0, sizeof(float) * (size_t)n * D);
    for (int x = 0; x < E; x++) {
        int cnt = 0;
        for (int r = 0; r < n; r++)
            for (int j = 0; j < K; j++)
                if (w->idx[r * K + j] == x) {
                    w->rows[cnt] = r;
                    w->wg[cnt] = w->wts[r * K + j];
                    memcpy(w->xg + (size_t)cnt * D, w->a + (size_t)r * D, sizeof(float) * D);
                    cnt++;
                }
        if (!cnt) continue;
        ops_expert_ffn_cpu(w->yg, w->xg, cnt, D, F, L->experts[x].gate, L->experts[x].up, L->experts[x].down,
                           bf16 ? OPS_BF16 : 0, w->mlp);
        for (int i = 0; i < cnt; i++)
            ops_scale_add_cpu(w->acc + (size_t)w->rows[i] * D, w->wg[i], w->yg + (size_t)i * D, (size_t)D);
    }
    rnd(bf16, w->acc, (size_t)n * D);
    if (L->shared.gate.data) {
        ops_expert_ffn_cpu(out, w->a, n, D, F * c->n_shared_experts, L->shared.gate, L->shared.up, L->shared.down,
                           bf16 ? OPS_BF16 : 0, w->mlp);
        ops_add_cpu(out, out, w->acc, (size_t)n * D);
        rnd(bf16, out, (size_t)n * D);
    } else {
        memcpy(out, w->acc, sizeof(float) * (size_t)n * D);
    }
}

DsocrStatus decoder_forward(const Model *m, DecoderWork *w, const DecoderStep *s, DsError *e) {
    const ModelConfig *c = &m->cfg;
    const int D = c->hidden_size, H = c->num_attention_heads, hd = c->head_dim, n = s->n, bf16 = s->bf16;
    const float eps = (float)c->rms_norm_eps, theta = (float)c->rope_theta;
    if (n < 1 || n > w->max_rows) return ds_fail(e, DSOCR_E_INVALID_ARG, "decoder chunk of %d rows", n);
    float *x = s->x;
    const int32_t *tables[1] = {s->table};
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const DecLayer *L = &m->layers[l];
        ops_rmsnorm_cpu(w->a, D, x, D, n, D, L->input_norm, eps, bf16 ? OPS_BF16 : 0);
        linear(w->q, w->a, n, D, L->q, D, bf16);
        linear(w->k, w->a, n, D, L->k, D, bf16);
        linear(w->v, w->a, n, D, L->v, D, bf16);
        ops_rope_neox_cpu(w->q, D, n, H, hd, s->pos, theta, bf16 ? OPS_BF16 : 0);
        ops_rope_neox_cpu(w->k, D, n, H, hd, s->pos, theta, bf16 ? OPS_BF16 : 0);
        kv_write(s->kv, l, s->table, s->pos[0], n, w->k, D, w->v, D);
        OpsAttentionKv a = {.out = w->att, .q = w->q, .ldo = D, .ldq = D, .n = n, .pos = s->pos, .seq = NULL,
                            .tables = tables, .kv = s->kv, .layer = l, .n_heads = H, .head_dim = hd,
                            .scale = 1.0f / sqrtf((float)hd)};
        ops_attention_kv_cpu(&a);
        rnd(bf16, w->att, (size_t)n * D);
        linear(w->tmp, w->att, n, D, L->o, D, bf16);
        if (s->dump_dir) {
            char nm[64];
            snprintf(nm, sizeof nm, "layer%d.attn", l);
            DsocrStatus st = dump_f32(s->dump_dir, nm, w->tmp, n, D, 0, e);
            if (st) return st;
        }
        ops_add_cpu(x, x, w->tmp, (size_t)n * D);
        rnd(bf16, x, (size_t)n * D);
        ops_rmsnorm_cpu(w->a, D, x, D, n, D, L->post_norm, eps, bf16 ? OPS_BF16 : 0);
        if (L->moe) {
            moe(m, w, L, n, bf16, w->tmp, s->dump_dir, l, e);
        } else {
            ops_expert_ffn_cpu(w->tmp, w->a, n, D, c->intermediate_size, L->dense.gate, L->dense.up, L->dense.down,
                               bf16 ? OPS_BF16 : 0, w->mlp);
        }
        ops_add_cpu(x, x, w->tmp, (size_t)n * D);
        rnd(bf16, x, (size_t)n * D);
        if (s->dump_dir) {
            char nm[64];
            snprintf(nm, sizeof nm, "layer%d.out", l);
            DsocrStatus st = dump_f32(s->dump_dir, nm, x, n, D, 0, e);
            if (st) return st;
        }
    }
    if (s->logits) {
        ops_rmsnorm_cpu(w->last, D, x + (size_t)(n - 1) * D, D, 1, D, m->final_norm, eps, bf16 ? OPS_BF16 : 0);
        ops_linear_cpu(s->logits, c->vocab_size, w->last, D, 1, D, m->lm_head, c->vocab_size, ds_w_none(), 0);
        rnd(bf16, s->logits, (size_t)c->vocab_size);
    }
    return DSOCR_OK;
}
