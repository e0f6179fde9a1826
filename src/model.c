/* model.c: see model.h. */
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static DsW W(const Model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static DsW W(const Model *m, const char *fmt, ...) {
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const StTensor *t = checkpoint_get(&m->ck, name);
    DS_ASSERT(t); /* validated by checkpoint_open */
    return ds_w(t->data, t->dtype);
}

static const StTensor *T(const Model *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const StTensor *T(const Model *m, const char *fmt, ...) {
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const StTensor *t = checkpoint_get(&m->ck, name);
    DS_ASSERT(t);
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
    s->patch_w = W(m, "%spatch_embed.proj.weight", sp);
    s->patch_b = W(m, "%spatch_embed.proj.bias", sp);
    for (int b = 0; b < c->sam.layers; b++) {
        SamBlock *k = &s->blocks[b];
        k->norm1_w = W(m, "%sblocks.%d.norm1.weight", sp, b);
        k->norm1_b = W(m, "%sblocks.%d.norm1.bias", sp, b);
        k->norm2_w = W(m, "%sblocks.%d.norm2.weight", sp, b);
        k->norm2_b = W(m, "%sblocks.%d.norm2.bias", sp, b);
        k->qkv_w = W(m, "%sblocks.%d.attn.qkv.weight", sp, b);
        k->qkv_b = W(m, "%sblocks.%d.attn.qkv.bias", sp, b);
        k->proj_w = W(m, "%sblocks.%d.attn.proj.weight", sp, b);
        k->proj_b = W(m, "%sblocks.%d.attn.proj.bias", sp, b);
        k->rel_pos_h = T(m, "%sblocks.%d.attn.rel_pos_h", sp, b);
        k->rel_pos_w = T(m, "%sblocks.%d.attn.rel_pos_w", sp, b);
        k->lin1_w = W(m, "%sblocks.%d.mlp.lin1.weight", sp, b);
        k->lin1_b = W(m, "%sblocks.%d.mlp.lin1.bias", sp, b);
        k->lin2_w = W(m, "%sblocks.%d.mlp.lin2.weight", sp, b);
        k->lin2_b = W(m, "%sblocks.%d.mlp.lin2.bias", sp, b);
        k->global = config_sam_is_global(c, b);
    }
    s->neck0_w = W(m, "%sneck.0.weight", sp);
    s->neck1_w = W(m, "%sneck.1.weight", sp);
    s->neck1_b = W(m, "%sneck.1.bias", sp);
    s->neck2_w = W(m, "%sneck.2.weight", sp);
    s->neck3_w = W(m, "%sneck.3.weight", sp);
    s->neck3_b = W(m, "%sneck.3.bias", sp);
    s->net2_w = W(m, "%snet_2.weight", sp);
    s->net3_w = W(m, "%snet_3.weight", sp);

    const char *cp = "model.vision_model.";
    ClipWeights *k = &m->clip;
    k->class_embedding = W(m, "%sembeddings.class_embedding", cp);
    k->position_embedding = T(m, "%sembeddings.position_embedding.weight", cp);
    k->pre_ln_w = W(m, "%spre_layrnorm.weight", cp);
    k->pre_ln_b = W(m, "%spre_layrnorm.bias", cp);
    for (int i = 0; i < c->clip.layers; i++) {
        ClipLayer *l = &k->layers[i];
        const char *lp = "transformer.layers";
        l->ln1_w = W(m, "%s%s.%d.layer_norm1.weight", cp, lp, i);
        l->ln1_b = W(m, "%s%s.%d.layer_norm1.bias", cp, lp, i);
        l->ln2_w = W(m, "%s%s.%d.layer_norm2.weight", cp, lp, i);
        l->ln2_b = W(m, "%s%s.%d.layer_norm2.bias", cp, lp, i);
        l->qkv_w = W(m, "%s%s.%d.self_attn.qkv_proj.weight", cp, lp, i);
        l->qkv_b = W(m, "%s%s.%d.self_attn.qkv_proj.bias", cp, lp, i);
        l->out_w = W(m, "%s%s.%d.self_attn.out_proj.weight", cp, lp, i);
        l->out_b = W(m, "%s%s.%d.self_attn.out_proj.bias", cp, lp, i);
        l->fc1_w = W(m, "%s%s.%d.mlp.fc1.weight", cp, lp, i);
        l->fc1_b = W(m, "%s%s.%d.mlp.fc1.bias", cp, lp, i);
        l->fc2_w = W(m, "%s%s.%d.mlp.fc2.weight", cp, lp, i);
        l->fc2_b = W(m, "%s%s.%d.mlp.fc2.bias", cp, lp, i);
    }
    m->proj_w = W(m, "model.projector.layers.weight");
    m->proj_b = W(m, "model.projector.layers.bias");
    m->image_newline = W(m, "model.image_newline");
    m->view_seperator = W(m, "model.view_seperator");
    m->embed = W(m, "model.embed_tokens.weight");
    m->lm_head = W(m, "lm_head.weight");
    m->final_norm = W(m, "model.norm.weight");
    for (int i = 0; i < c->num_hidden_layers; i++) {
        DecLayer *l = &m->layers[i];
        const char *lp = "model.layers";
        l->input_norm = W(m, "%s.%d.input_layernorm.weight", lp, i);
        l->post_norm = W(m, "%s.%d.post_attention_layernorm.weight", lp, i);
        l->q = W(m, "%s.%d.self_attn.q_proj.weight", lp, i);
        l->k = W(m, "%s.%d.self_attn.k_proj.weight", lp, i);
        l->v = W(m, "%s.%d.self_attn.v_proj.weight", lp, i);
        l->o = W(m, "%s.%d.self_attn.o_proj.weight", lp, i);
        l->moe = config_layer_is_moe(c, i);
        if (!l->moe) {
            l->dense.gate = W(m, "%s.%d.mlp.gate_proj.weight", lp, i);
            l->dense.up = W(m, "%s.%d.mlp.up_proj.weight", lp, i);
            l->dense.down = W(m, "%s.%d.mlp.down_proj.weight", lp, i);
            continue;
        }
        l->router = W(m, "%s.%d.mlp.gate.weight", lp, i);
        for (int x = 0; x < c->n_routed_experts; x++) {
            l->experts[x].gate = W(m, "%s.%d.mlp.experts.%d.gate_proj.weight", lp, i, x);
            l->experts[x].up = W(m, "%s.%d.mlp.experts.%d.up_proj.weight", lp, i, x);
            l->experts[x].down = W(m, "%s.%d.mlp.experts.%d.down_proj.weight", lp, i, x);
        }
        if (c->n_shared_experts > 0) {
            l->shared.gate = W(m, "%s.%d.mlp.shared_experts.gate_proj.weight", lp, i);
            l->shared.up = W(m, "%s.%d.mlp.shared_experts.up_proj.weight", lp, i);
            l->shared.down = W(m, "%s.%d.mlp.shared_experts.down_proj.weight", lp, i);
        }
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
    if ((st = tokenizer_load_json(path, &m->tok, e))) goto fail;
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
    bind(m);
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

void model_free(Model *m) {
    if (!m) return;
    if (m->layers)
        for (int i = 0; i < m->cfg.num_hidden_layers; i++) free(m->layers[i].experts);
    free(m->layers);
    free(m->sam.blocks);
    free(m->clip.layers);
    if (m->tok) tokenizer_free(m->tok);
    checkpoint_close(&m->ck);
    free(m);
}
