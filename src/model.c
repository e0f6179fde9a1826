/* model.c: see model.h. */
#include "model.h"
#include "plan.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "quant.h"

static void refresh_moe(Model *m);
static void fuse_qkv(Model *m);

/* The tensor named by fmt/ap (validated by checkpoint_open, so it exists). */
static const StTensor *tensor_v(const Model *m, const char *fmt, va_list ap) {
    char name[160];
    vsnprintf(name, sizeof name, fmt, ap);
    const StTensor *t = checkpoint_get(&m->ck, name);
    DS_ASSERT(t);
    return t;
}

/* Binds *slot to the tensor named by fmt and records it (model_place moves recorded slots). */
static void bw(Model *m, DsW *slot, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void bw(Model *m, DsW *slot, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const StTensor *t = tensor_v(m, fmt, ap);
    va_end(ap);
    *slot = ds_w(t->data, t->dtype);
    DS_ASSERT(m->n_bound < m->cap_bound);
    m->bound[m->n_bound++] = (BoundWeight){slot, t, t->data};
}

/* A tensor used on the host only (position tables resampled per view size). */
static const StTensor *T(const Model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const StTensor *T(const Model *m, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    const StTensor *t = tensor_v(m, fmt, ap);
    va_end(ap);
    return t;
}

void model_tensor_to_f32(const StTensor *t, float *out) {
    DsW w = ds_w(t->data, t->dtype);
    for (uint64_t i = 0; i < t->numel; i++) out[i] = ds_w_get(w, i);
}

static void bind(Model *m) {
    const ModelConfig *c = &m->cfg;
    const char *sp = "model.sam_model.";
    SamWeights *s = &m->sam;
    s->pos_embed = T(m, "%spos_embed", sp);
    bw(m, &s->patch_w, "%spatch_embed.proj.weight", sp);
    bw(m, &s->patch_b, "%spatch_embed.proj.bias", sp);
    for (int b = 0; b < c->sam.layers; b++) {
        SamBlock *k = &s->blocks[b];
        bw(m, &k->norm1_w, "%sblocks.%d.norm1.weight", sp, b);
        bw(m, &k->norm1_b, "%sblocks.%d.norm1.bias", sp, b);
        bw(m, &k->norm2_w, "%sblocks.%d.norm2.weight", sp, b);
        bw(m, &k->norm2_b, "%sblocks.%d.norm2.bias", sp, b);
        bw(m, &k->qkv_w, "%sblocks.%d.attn.qkv.weight", sp, b);
        bw(m, &k->qkv_b, "%sblocks.%d.attn.qkv.bias", sp, b);
        bw(m, &k->proj_w, "%sblocks.%d.attn.proj.weight", sp, b);
        bw(m, &k->proj_b, "%sblocks.%d.attn.proj.bias", sp, b);
        k->rel_pos_h = T(m, "%sblocks.%d.attn.rel_pos_h", sp, b);
        k->rel_pos_w = T(m, "%sblocks.%d.attn.rel_pos_w", sp, b);
        bw(m, &k->lin1_w, "%sblocks.%d.mlp.lin1.weight", sp, b);
        bw(m, &k->lin1_b, "%sblocks.%d.mlp.lin1.bias", sp, b);
        bw(m, &k->lin2_w, "%sblocks.%d.mlp.lin2.weight", sp, b);
        bw(m, &k->lin2_b, "%sblocks.%d.mlp.lin2.bias", sp, b);
        k->global = config_sam_is_global(c, b);
    }
    bw(m, &s->neck0_w, "%sneck.0.weight", sp);
    bw(m, &s->neck1_w, "%sneck.1.weight", sp);
    bw(m, &s->neck1_b, "%sneck.1.bias", sp);
    bw(m, &s->neck2_w, "%sneck.2.weight", sp);
    bw(m, &s->neck3_w, "%sneck.3.weight", sp);
    bw(m, &s->neck3_b, "%sneck.3.bias", sp);
    bw(m, &s->net2_w, "%snet_2.weight", sp);
    bw(m, &s->net3_w, "%snet_3.weight", sp);

    const char *cp = "model.vision_model.";
    ClipWeights *k = &m->clip;
    bw(m, &k->class_embedding, "%sembeddings.class_embedding", cp);
    k->position_embedding = T(m, "%sembeddings.position_embedding.weight", cp);
    bw(m, &k->pre_ln_w, "%spre_layrnorm.weight", cp);
    bw(m, &k->pre_ln_b, "%spre_layrnorm.bias", cp);
    for (int i = 0; i < c->clip.layers; i++) {
        ClipLayer *l = &k->layers[i];
        const char *lp = "transformer.layers";
        bw(m, &l->ln1_w, "%s%s.%d.layer_norm1.weight", cp, lp, i);
        bw(m, &l->ln1_b, "%s%s.%d.layer_norm1.bias", cp, lp, i);
        bw(m, &l->ln2_w, "%s%s.%d.layer_norm2.weight", cp, lp, i);
        bw(m, &l->ln2_b, "%s%s.%d.layer_norm2.bias", cp, lp, i);
        bw(m, &l->qkv_w, "%s%s.%d.self_attn.qkv_proj.weight", cp, lp, i);
        bw(m, &l->qkv_b, "%s%s.%d.self_attn.qkv_proj.bias", cp, lp, i);
        bw(m, &l->out_w, "%s%s.%d.self_attn.out_proj.weight", cp, lp, i);
        bw(m, &l->out_b, "%s%s.%d.self_attn.out_proj.bias", cp, lp, i);
        bw(m, &l->fc1_w, "%s%s.%d.mlp.fc1.weight", cp, lp, i);
        bw(m, &l->fc1_b, "%s%s.%d.mlp.fc1.bias", cp, lp, i);
        bw(m, &l->fc2_w, "%s%s.%d.mlp.fc2.weight", cp, lp, i);
        bw(m, &l->fc2_b, "%s%s.%d.mlp.fc2.bias", cp, lp, i);
    }
    bw(m, &m->proj_w, "model.projector.layers.weight");
    bw(m, &m->proj_b, "model.projector.layers.bias");
    bw(m, &m->image_newline, "model.image_newline");
    bw(m, &m->view_seperator, "model.view_seperator");
    bw(m, &m->embed, "model.embed_tokens.weight");
    bw(m, &m->lm_head, "lm_head.weight");
    bw(m, &m->final_norm, "model.norm.weight");
    for (int i = 0; i < c->num_hidden_layers; i++) {
        DecLayer *l = &m->layers[i];
        const char *lp = "model.layers";
        bw(m, &l->input_norm, "%s.%d.input_layernorm.weight", lp, i);
        bw(m, &l->post_norm, "%s.%d.post_attention_layernorm.weight", lp, i);
        bw(m, &l->q, "%s.%d.self_attn.q_proj.weight", lp, i);
        bw(m, &l->k, "%s.%d.self_attn.k_proj.weight", lp, i);
        bw(m, &l->v, "%s.%d.self_attn.v_proj.weight", lp, i);
        bw(m, &l->o, "%s.%d.self_attn.o_proj.weight", lp, i);
        l->moe = config_layer_is_moe(c, i);
        if (!l->moe) {
            bw(m, &l->dense.gate, "%s.%d.mlp.gate_proj.weight", lp, i);
            bw(m, &l->dense.up, "%s.%d.mlp.up_proj.weight", lp, i);
            bw(m, &l->dense.down, "%s.%d.mlp.down_proj.weight", lp, i);
            continue;
        }
        bw(m, &l->router, "%s.%d.mlp.gate.weight", lp, i);
        for (int x = 0; x < c->n_routed_experts; x++) {
            bw(m, &l->experts[x].gate, "%s.%d.mlp.experts.%d.gate_proj.weight", lp, i, x);
            bw(m, &l->experts[x].up, "%s.%d.mlp.experts.%d.up_proj.weight", lp, i, x);
            bw(m, &l->experts[x].down, "%s.%d.mlp.experts.%d.down_proj.weight", lp, i, x);
        }
        if (c->n_shared_experts > 0) {
            bw(m, &l->shared.gate, "%s.%d.mlp.shared_experts.gate_proj.weight", lp, i);
            bw(m, &l->shared.up, "%s.%d.mlp.shared_experts.up_proj.weight", lp, i);
            bw(m, &l->shared.down, "%s.%d.mlp.shared_experts.down_proj.weight", lp, i);
        }
        l->moe_w = (BackendMoe){.router = l->router, .experts = l->experts, .shared = l->shared,
                                .n_experts = c->n_routed_experts, .top_k = c->num_experts_per_tok,
                                .d_model = c->hidden_size, .d_ff = c->moe_intermediate_size,
                                .d_shared = c->moe_intermediate_size * c->n_shared_experts};
    }
}

DsocrStatus model_load(const char *dir, const CheckpointOptions *opt, Model **out, DsError *e) {
    *out = NULL;
    Model *m = calloc(1, sizeof *m);
    if (!m) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    DsocrStatus st = checkpoint_open(dir, opt, &m->ck, e);
    if (st) {
        free(m);
        return st;
    }
    m->cfg = m->ck.config;
    const ModelConfig *c = &m->cfg;
    char path[2048];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (m->ck.gguf_tokenizer) { /* a GGUF model: the tokenizer is in its metadata */
        snprintf(path, sizeof path, "%s", m->ck.gguf_tokenizer->what);
        if ((st = tokenizer_load_gguf(m->ck.gguf_tokenizer, &m->tok, e))) goto fail;
    } else if ((st = tokenizer_load_json(path, &m->tok, e))) {
        goto fail;
    }
    m->sam.blocks = calloc((size_t)c->sam.layers, sizeof(SamBlock));
    m->clip.layers = calloc((size_t)c->clip.layers, sizeof(ClipLayer));
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof(DecLayer));
    if (!m->sam.blocks || !m->clip.layers || !m->layers) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < c->num_hidden_layers; i++) {
        if (!config_layer_is_moe(c, i)) continue;
        m->layers[i].experts = calloc((size_t)c->n_routed_experts, sizeof(Expert));
        if (!m->layers[i].experts) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto fail;
        }
    }
    m->cap_bound = m->ck.n_tensors;
    m->bound = calloc((size_t)m->cap_bound + 1, sizeof *m->bound);
    if (!m->bound) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto fail;
    }
    bind(m);
    m->be = backend_cpu();
    m->image_token_id = tokenizer_token_id(m->tok, "<image>");
    m->td_id = tokenizer_token_id(m->tok, "<td>");
    m->td_close_id = tokenizer_token_id(m->tok, "</td>");
    if (m->image_token_id < 0 || m->image_token_id >= c->vocab_size) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: the tokenizer has no <image> token inside the model's vocabulary", path);
        goto fail;
    }
    *out = m;
    return DSOCR_OK;
fail:
    model_free(m);
    return st;
}

/* Bytes of a bound weight as held (its tensor's, unless model_quantize changed its type). */
static size_t held_bytes(const BoundWeight *b) {
    const StTensor *t = b->t;
    if (b->slot->dtype == t->dtype) return t->end - t->begin;
    return quant_row_bytes(b->slot->dtype, (int64_t)t->numel); /* rows hold whole blocks */
}

/* its room in model_place's arena: every tensor at a 256-byte boundary */
static size_t arena_bytes(const BoundWeight *b) { return (held_bytes(b) + 255) & ~(size_t)255; }

void model_group_bytes(const Model *m, uint64_t *out) {
    for (int g = 0; g < PLAN_N_GROUPS; g++) out[g] = 0;
    for (int i = 0; i < m->n_bound; i++) out[plan_group(m->bound[i].t->name)] += arena_bytes(&m->bound[i]);
}

size_t model_weight_bytes(const Model *m) {
    size_t b = 0;
    for (int i = 0; i < m->n_bound; i++) b += held_bytes(&m->bound[i]);
    return b;
}

int model_n_block_weights(const Model *m) {
    int n = 0;
    for (int i = 0; i < m->n_bound; i++) n += quant_is_block(m->bound[i].slot->dtype);
    return n;
}

/* n elements of w from element off, widened to float. */
static void widen_f32(float *dst, DsW w, size_t off, size_t n) {
    if (w.dtype == DS_BF16) {
        const uint16_t *s = (const uint16_t *)w.data + off;
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else if (w.dtype == DS_F32) {
        memcpy(dst, (const float *)w.data + off, n * sizeof(float));
    } else {
        for (size_t i = 0; i < n; i++) dst[i] = ds_w_get(w, off + i);
    }
}

/* Memory for the quantised weights: 2 MiB-aligned and, where the kernel has transparent huge pages ("madvise" or
 * "always"), asked to be backed by them. Decode reads every weight once a token; with 4 KiB pages a 0.6 GB Q8_0
 * model is 150,000 pages whose TLB misses the GEMV pays (huge pages: 300). Freed with free(). */
static uint8_t *weights_alloc(size_t n) {
    enum { HUGE = 2 << 20 };
    const size_t rounded = (n + HUGE - 1) / HUGE * HUGE;
    uint8_t *p = aligned_alloc(HUGE, rounded);
    if (!p) return malloc(n);
#ifdef MADV_HUGEPAGE
    (void)madvise(p, rounded, MADV_HUGEPAGE); /* advice only: without THP the pages stay small */
#endif
    return p;
}

DsocrStatus model_quantize(Model *m, DsDtype target, DsError *e) {
    DS_ASSERT((target == DS_Q8_0 || target == DS_Q4_0) && !m->quant_buf && !m->placed);
    size_t *off = calloc((size_t)m->n_bound + 1, sizeof *off);
    DsDtype *to = calloc((size_t)m->n_bound + 1, sizeof *to);
    if (!off || !to) {
        free(off), free(to);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    size_t total = 0;
    for (int i = 0; i < m->n_bound; i++) {
        const StTensor *t = m->bound[i].t;
        DsDtype dt = quant_choose(t->name, t->ndim, t->shape, target), have = m->bound[i].slot->dtype;
        if (!quant_is_block(dt) || (have != DS_BF16 && have != DS_F32 && have != DS_F16)) continue;
        to[i] = dt;
        off[i] = total;
        total += (quant_row_bytes(dt, t->shape[1]) * (size_t)t->shape[0] + 63) & ~(size_t)63;
    }
    DsocrStatus st = DSOCR_OK;
    uint8_t *buf = total ? weights_alloc(total) : NULL;
    if (total && !buf) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory quantising the weights (%.2f GiB needed)",
                     (double)total / (1u << 30));
        goto done;
    }
    for (int i = 0; i < m->n_bound; i++) {
        if (!to[i]) continue;
        const StTensor *t = m->bound[i].t;
        DsW src = *m->bound[i].slot;
        int64_t N = t->shape[0], K = t->shape[1];
        size_t rb = quant_row_bytes(to[i], K);
        int fail = 0;
#pragma omp parallel reduction(| : fail)
        {
            float *row = malloc(sizeof(float) * (size_t)K);
            fail = !row;
#pragma omp for schedule(static)
            for (int64_t r = 0; r < N; r++) {
                if (!row) continue;
                widen_f32(row, src, (size_t)r * K, (size_t)K);
                quant_row_ref(to[i], buf + off[i] + (size_t)r * rb, row, K);
            }
            free(row);
        }
        if (fail) {
            free(buf);
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto done;
        }
        /* the original is not read again (its slot moves to the copy below, or on failure it is re-read from the
         * file): its mapped pages go back now, so the peak holds one tensor twice, not the whole model */
        checkpoint_release(&m->ck, src.data, (size_t)t->numel * ds_dtype_size(src.dtype));
    }
    for (int i = 0; i < m->n_bound; i++) { /* only now, so that a failure above leaves every slot as it was */
        if (!to[i]) continue;
        *m->bound[i].slot = ds_w(buf + off[i], to[i]);
        m->bound[i].host = buf + off[i];
    }
    m->quant_buf = buf;
    m->quant_bytes = total;
    refresh_moe(m);
done:
    free(off), free(to);
    return st;
}

/* whether the kernel gives transparent huge pages to memory that asks (MADV_HUGEPAGE): "always" or "madvise" */
static int thp_available(void) {
    char line[128] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return 0;
    const int ok = fgets(line, sizeof line, f) && !strstr(line, "[never]");
    fclose(f);
    return ok;
}

DsocrStatus model_own_decoder(Model *m, DsError *e) {
    DS_ASSERT(!m->quant_buf && !m->placed);
    if (!thp_available()) return DSOCR_OK; /* small pages either way: the mapped weights serve */
    size_t *off = calloc((size_t)m->n_bound + 1, sizeof *off), total = 0;
    if (!off) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    for (int i = 0; i < m->n_bound; i++) {
        const char *nm = m->bound[i].t->name;
        off[i] = SIZE_MAX;
        if (strncmp(nm, "model.layers.", 13) && strncmp(nm, "lm_head.", 8)) continue;
        off[i] = total;
        total += (held_bytes(&m->bound[i]) + 63) & ~(size_t)63;
    }
    uint8_t *buf = total ? weights_alloc(total) : NULL;
    if (!buf) { /* advice only: the mapped weights serve as before */
        free(off);
        return DSOCR_OK;
    }
    for (int i = 0; i < m->n_bound; i++) {
        if (off[i] == SIZE_MAX) continue;
        const DsW src = *m->bound[i].slot;
        const size_t n = held_bytes(&m->bound[i]);
        enum { PIECE = 4 << 20 }; /* the copy in pieces over the threads: its page faults (huge pages zeroed, file
                                    * pages read) are most of its time */
#pragma omp parallel for schedule(dynamic, 1)
        for (size_t p = 0; p < n; p += PIECE)
            memcpy(buf + off[i] + p, (const uint8_t *)src.data + p, n - p < PIECE ? n - p : PIECE);
        checkpoint_release(&m->ck, src.data, n); /* as model_quantize: one tensor twice at the peak */
        *m->bound[i].slot = ds_w(buf + off[i], src.dtype);
        m->bound[i].host = buf + off[i];
    }
    m->quant_buf = buf;
    m->quant_bytes = total;
    refresh_moe(m);
    fuse_qkv(m);
    free(off);
    return DSOCR_OK;
}

DsocrStatus model_write_f32(const Model *m, const char *path, DsError *e) {
    const int n = m->ck.n_tensors;
    StWriteTensor *wt = calloc((size_t)n + 1, sizeof *wt);
    const BoundWeight **by = calloc((size_t)n + 1, sizeof *by); /* the bound weight of tensor i, if any */
    enum { CHUNK = 1 << 20 };
    float *tmp = malloc(sizeof(float) * CHUNK);
    FILE *f = NULL;
    DsocrStatus st = DSOCR_OK;
    if (!wt || !by || !tmp) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const StTensor *t = m->ck.tensors[i].st;
        wt[i].name = t->name;
        wt[i].dtype = DS_F32;
        wt[i].ndim = t->ndim;
        memcpy(wt[i].shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        for (int j = 0; j < m->n_bound; j++)
            if (m->bound[j].t == t) by[i] = &m->bound[j];
    }
    if (!(f = fopen(path, "wb"))) {
        st = ds_fail(e, DSOCR_E_IO, "%s: cannot create: %s", path, strerror(errno));
        goto done;
    }
    static const char *const meta[2] = {"format", "pt"};
    if ((st = safetensors_write_header(f, wt, n, meta, 1, e))) goto done;
    for (int i = 0; i < n && !st; i++) {
        const StTensor *t = m->ck.tensors[i].st;
        DsW w = by[i] ? ds_w(by[i]->host, by[i]->slot->dtype) : ds_w(t->data, t->dtype);
        for (uint64_t o = 0; o < t->numel; o += CHUNK) {
            size_t c = t->numel - o < CHUNK ? (size_t)(t->numel - o) : CHUNK;
            widen_f32(tmp, w, o, c);
            if (fwrite(tmp, sizeof(float), c, f) != c) {
                st = ds_fail(e, DSOCR_E_IO, "%s: write failed: %s", path, strerror(errno));
                break;
            }
        }
    }
done:
    if (f && fclose(f) && !st) st = ds_fail(e, DSOCR_E_IO, "%s: write failed: %s", path, strerror(errno));
    free(wt), free(by), free(tmp);
    return st;
}

/* MoE layer handles copy the router and shared DsW by value: refresh them after the slots move. */
static void refresh_moe(Model *m) {
    for (int i = 0; i < m->cfg.num_hidden_layers; i++) {
        DecLayer *l = &m->layers[i];
        if (!l->moe) continue;
        l->moe_w.router = l->router;
        l->moe_w.shared = l->shared;
    }
}

/* A layer's q, k, v weights as one [3D, D] matrix when they lie back to back in memory (placed weights do; block-
 * quantised ones too: their rows are whole blocks, so three matrices back to back are one). */
static void fuse_qkv(Model *m) {
    const size_t D = (size_t)m->cfg.hidden_size;
    for (int i = 0; i < m->cfg.num_hidden_layers; i++) {
        DecLayer *l = &m->layers[i];
        size_t row = quant_row_bytes(l->q.dtype, (int64_t)D), bytes = D * row;
        int ok = row && l->k.dtype == l->q.dtype && l->v.dtype == l->q.dtype &&
                 (const char *)l->k.data == (const char *)l->q.data + bytes &&
                 (const char *)l->v.data == (const char *)l->k.data + bytes;
        l->qkv = ok ? ds_w(l->q.data, l->q.dtype) : ds_w_none();
    }
}

DsocrStatus model_place(Model *m, Backend *be, DsError *e) { return model_place_plan(m, be, NULL, e); }

/* whether bound weight i goes to the backend under plan p (NULL: every weight) */
static int placed_by(const Model *m, int i, const Plan *p) {
    return !p || p->on_gpu[plan_group(m->bound[i].t->name)];
}

DsocrStatus model_place_plan(Model *m, Backend *be, const Plan *plan, DsError *e) {
    if (be == m->be) return DSOCR_OK;
    if (be == backend_cpu_ref()) { /* host memory like the CPU backend: use the mapped weights as they are */
        m->be = be;
        return DSOCR_OK;
    }
    DS_ASSERT(m->be == backend_cpu() && !m->placed);
    /* one arena for every weight (one allocation: no per-tensor rounding by the driver, which costs gigabytes
     * over the 2,710 tensors), each tensor at a 256-byte boundary, in binding order (q, k, v of a layer end up
     * adjacent: fuse_qkv below) */
    size_t total = 0;
    for (int i = 0; i < m->n_bound; i++)
        if (placed_by(m, i, plan)) total += arena_bytes(&m->bound[i]);
    m->placed = calloc(2, sizeof *m->placed);
    if (!m->placed) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    char *arena = be->alloc(be, total ? total : 1);
    if (!arena) {
        free(m->placed);
        m->placed = NULL;
        return ds_fail(e, DSOCR_E_NOMEM, "the %s backend has no room for the weights (%.2f GiB needed)", be->name,
                       (double)total / (1u << 30));
    }
    m->placed[m->n_placed++] = arena;
    size_t off = 0;
    for (int i = 0; i < m->n_bound; i++) {
        if (!placed_by(m, i, plan)) continue; /* stays in host memory: its slot keeps the host bytes */
        size_t n = held_bytes(&m->bound[i]);
        be->upload(be, arena + off, m->bound[i].host ? m->bound[i].host : m->bound[i].t->data, n);
        m->bound[i].slot->data = arena + off;
        off += arena_bytes(&m->bound[i]);
    }
    fuse_qkv(m);
    refresh_moe(m);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        m->layers[l].moe_w.experts_host = plan && !plan->on_gpu[PLAN_ROUTED];
    m->lm_head_host = plan && !plan->on_gpu[PLAN_LM_HEAD];
    m->embed_host = plan && !plan->on_gpu[PLAN_EMBED];
    m->lean = plan && plan->kind != PLAN_ALL_GPU;
    m->be = be;
    return DSOCR_OK;
}

void model_free(Model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_placed; i++) m->be->free(m->be, m->placed[i]);
    free(m->placed);
    free(m->quant_buf);
    free(m->bound);
    if (m->layers)
        for (int i = 0; i < m->cfg.num_hidden_layers; i++) free(m->layers[i].experts);
    free(m->layers);
    free(m->sam.blocks);
    free(m->clip.layers);
    if (m->tok) tokenizer_free(m->tok);
    checkpoint_close(&m->ck);
    free(m);
}
