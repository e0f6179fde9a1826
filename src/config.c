/* config.c: see config.h. */
#include "config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Looks a key up in the flat top level first (what the Hugging Face code reads), then in language_config
 * (what vLLM reads). */
static const cJSON *lang_item(const cJSON *root, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (v && !cJSON_IsNull(v)) return v;
    const cJSON *lc = cJSON_GetObjectItemCaseSensitive(root, "language_config");
    if (cJSON_IsObject(lc)) {
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(lc, key);
        if (w && !cJSON_IsNull(w)) return w;
    }
    return v; /* NULL or null */
}

static DsocrStatus get_int(const cJSON *v, const char *key, int def, int lo, int hi, const char *what, int *out,
                           DsError *e) {
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return DSOCR_OK;
    }
    if (!cJSON_IsNumber(v) || floor(v->valuedouble) != v->valuedouble || v->valuedouble < lo || v->valuedouble > hi)
        return ds_fail(e, DSOCR_E_MODEL, "%s: \"%s\" must be an integer in [%d, %d]", what, key, lo, hi);
    *out = (int)v->valuedouble;
    return DSOCR_OK;
}

static DsocrStatus get_num(const cJSON *v, const char *key, double def, const char *what, double *out, DsError *e) {
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return DSOCR_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble <= 0)
        return ds_fail(e, DSOCR_E_MODEL, "%s: \"%s\" must be a positive number", what, key);
    *out = v->valuedouble;
    return DSOCR_OK;
}

static int get_bool(const cJSON *v, int def) {
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}

#define BIG 1000000000
#define INT_KEY(field, def, lo, hi)                                                                             \
    do {                                                                                                      \
        if ((st = get_int(lang_item(root, #field), #field, def, lo, hi, what, &c->field, e))) goto done;    \
    } while (0)

DsocrStatus config_parse(const char *json, size_t len, const char *what, ModelConfig *c, DsError *e) {
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return ds_fail(e, DSOCR_E_FORMAT, "%s: not valid JSON", what);
    DsocrStatus st = DSOCR_OK;
    if (!cJSON_IsObject(root)) {
        st = ds_fail(e, DSOCR_E_FORMAT, "%s: not a JSON object", what);
        goto done;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    snprintf(c->model_type, sizeof c->model_type, "%s", cJSON_IsString(mt) ? mt->valuestring : "");

    INT_KEY(hidden_size, 1280, 1, 1 << 16);
    INT_KEY(num_hidden_layers, 12, 1, 1024);
    INT_KEY(num_attention_heads, 10, 1, 1024);
    INT_KEY(num_key_value_heads, c->num_attention_heads, 1, 1024);
    INT_KEY(intermediate_size, 6848, 1, 1 << 20);
    INT_KEY(moe_intermediate_size, 896, 1, 1 << 20);
    INT_KEY(n_routed_experts, 64, 0, 4096);
    INT_KEY(n_shared_experts, 2, 0, 64);
    INT_KEY(num_experts_per_tok, 6, 0, 4096);
    INT_KEY(first_k_dense_replace, 1, 0, 1024);
    INT_KEY(moe_layer_freq, 1, 1, 1024);
    INT_KEY(vocab_size, 129280, 3, 1 << 24);
    INT_KEY(max_position_embeddings, 8192, 16, 1 << 24);
    INT_KEY(bos_token_id, 0, 0, BIG);
    INT_KEY(eos_token_id, 1, 0, BIG);
    if ((st = get_num(lang_item(root, "rms_norm_eps"), "rms_norm_eps", 1e-6, what, &c->rms_norm_eps, e))) goto done;
    if ((st = get_num(lang_item(root, "rope_theta"), "rope_theta", 10000.0, what, &c->rope_theta, e))) goto done;
    if ((st = get_num(lang_item(root, "routed_scaling_factor"), "routed_scaling_factor", 1.0, what,
                      &c->routed_scaling_factor, e)))
        goto done;
    c->norm_topk_prob = get_bool(lang_item(root, "norm_topk_prob"), 0);

    /* settings this engine does not implement */
    if (get_bool(lang_item(root, "use_mla"), 0)) {
        st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: \"use_mla\": true is not supported (DeepSeek-OCR uses plain MHA)",
                     what);
        goto done;
    }
    const cJSON *sf = lang_item(root, "scoring_func");
    if (sf && !cJSON_IsNull(sf) && (!cJSON_IsString(sf) || strcmp(sf->valuestring, "softmax"))) {
        st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: \"scoring_func\" must be \"softmax\"", what);
        goto done;
    }
    const cJSON *tm = lang_item(root, "topk_method");
    if (tm && !cJSON_IsNull(tm) && (!cJSON_IsString(tm) || strcmp(tm->valuestring, "greedy"))) {
        st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: \"topk_method\" must be \"greedy\"", what);
        goto done;
    }
    const cJSON *rs = lang_item(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: \"rope_scaling\" is not supported", what);
        goto done;
    }
    if (get_bool(lang_item(root, "attention_bias"), 0)) {
        st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: \"attention_bias\": true is not supported", what);
        goto done;
    }
    if (get_bool(lang_item(root, "tie_word_embeddings"), 0)) {
        st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: \"tie_word_embeddings\": true is not supported", what);
        goto done;
    }
    if (c->hidden_size % c->num_attention_heads || c->num_key_value_heads != c->num_attention_heads) {
        st = ds_fail(e, DSOCR_E_MODEL,
                     "%s: hidden_size %d, num_attention_heads %d, num_key_value_heads %d: need plain MHA with "
                     "hidden_size divisible by the heads",
                     what, c->hidden_size, c->num_attention_heads, c->num_key_value_heads);
        goto done;
    }
    c->head_dim = c->hidden_size / c->num_attention_heads;
    if (c->head_dim % 2) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: head dimension %d is odd (RoPE needs pairs)", what, c->head_dim);
        goto done;
    }
    if (c->num_experts_per_tok > c->n_routed_experts) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: num_experts_per_tok %d > n_routed_experts %d", what,
                     c->num_experts_per_tok, c->n_routed_experts);
        goto done;
    }
    if (c->bos_token_id >= c->vocab_size || c->eos_token_id >= c->vocab_size) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: bos/eos token id outside the vocabulary", what);
        goto done;
    }

    /* vision */
    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
    const cJSON *wd = cJSON_IsObject(vc) ? cJSON_GetObjectItemCaseSensitive(vc, "width") : NULL;
    const cJSON *sam = cJSON_IsObject(wd) ? cJSON_GetObjectItemCaseSensitive(wd, "sam_vit_b") : NULL;
    const cJSON *clip = cJSON_IsObject(wd) ? cJSON_GetObjectItemCaseSensitive(wd, "clip-l-14-224") : NULL;
    if (vc && !cJSON_IsObject(vc)) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: \"vision_config\" is not an object", what);
        goto done;
    }
#define SUB(obj, key) (cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL)
#define VKEY(obj, name, field, def, lo, hi)                                                                     \
    do {                                                                                                      \
        if ((st = get_int(SUB(obj, name), name, def, lo, hi, what, &(field), e))) goto done;                 \
    } while (0)
    SamConfig *s = &c->sam;
    VKEY(sam, "width", s->width, 768, 1, 1 << 16);
    VKEY(sam, "layers", s->layers, 12, 1, CFG_MAX_SAM_LAYERS);
    VKEY(sam, "heads", s->heads, 12, 1, 1024);
    VKEY(sam, "window_size", s->window_size, 14, 1, 1024);
    VKEY(sam, "out_chans", s->out_chans, 256, 1, 1 << 16);
    VKEY(sam, "patch_size", s->patch_size, 16, 1, 1024);
    VKEY(sam, "mlp_dim", s->mlp_dim, 4 * s->width, 1, 1 << 20);
    VKEY(vc, "image_size", s->image_size, 1024, 16, 1 << 16);
    const cJSON *gi = SUB(sam, "global_attn_indexes");
    if (!gi || cJSON_IsNull(gi)) {
        static const int def_g[4] = {2, 5, 8, 11};
        s->n_global = 4;
        memcpy(s->global_attn_indexes, def_g, sizeof def_g);
    } else if (!cJSON_IsArray(gi) || cJSON_GetArraySize(gi) > CFG_MAX_SAM_LAYERS) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: \"global_attn_indexes\" must be an array of block indexes", what);
        goto done;
    } else {
        for (const cJSON *x = gi->child; x; x = x->next) {
            int v;
            if ((st = get_int(x, "global_attn_indexes", 0, 0, s->layers - 1, what, &v, e))) goto done;
            s->global_attn_indexes[s->n_global++] = v;
        }
    }
    const cJSON *dc = SUB(sam, "downsample_channels");
    if (!dc || cJSON_IsNull(dc)) {
        s->downsample_channels[0] = 512;
        s->downsample_channels[1] = 1024;
    } else if (!cJSON_IsArray(dc) || cJSON_GetArraySize(dc) != 2) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: \"downsample_channels\" must be an array of two widths", what);
        goto done;
    } else {
        for (int i = 0; i < 2; i++)
            if ((st = get_int(cJSON_GetArrayItem(dc, i), "downsample_channels", 0, 1, 1 << 16, what,
                              &s->downsample_channels[i], e)))
                goto done;
    }
    if (s->width % s->heads || s->image_size % s->patch_size) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: SAM width %d not divisible by heads %d, or image_size %d by patch %d",
                     what, s->width, s->heads, s->image_size, s->patch_size);
        goto done;
    }
    ClipConfig *k = &c->clip;
    VKEY(clip, "width", k->width, 1024, 1, 1 << 16);
    VKEY(clip, "layers", k->layers, 24, 1, 1024);
    VKEY(clip, "heads", k->heads, 16, 1, 1024);
    VKEY(clip, "image_size", k->image_size, 224, 1, 1 << 16);
    VKEY(clip, "patch_size", k->patch_size, 14, 1, 1 << 16);
    VKEY(clip, "mlp_dim", k->mlp_dim, 4 * k->width, 1, 1 << 20);
    if (k->width % k->heads || k->image_size % k->patch_size) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: CLIP width %d not divisible by heads %d, or image_size by patch", what,
                     k->width, k->heads);
        goto done;
    }
    if (k->width != s->downsample_channels[1]) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: CLIP width %d must equal SAM's last downsample width %d", what,
                     k->width, s->downsample_channels[1]);
        goto done;
    }
    const cJSON *pc = cJSON_GetObjectItemCaseSensitive(root, "projector_config");
    VKEY(pc, "input_dim", c->projector_input_dim, k->width + s->downsample_channels[1], 1, 1 << 20);
    VKEY(pc, "n_embed", c->projector_n_embed, c->hidden_size, 1, 1 << 20);
    if (c->projector_input_dim != k->width + s->downsample_channels[1] || c->projector_n_embed != c->hidden_size) {
        st = ds_fail(e, DSOCR_E_MODEL,
                     "%s: projector %d -> %d does not fit CLIP %d + SAM %d -> hidden %d", what,
                     c->projector_input_dim, c->projector_n_embed, k->width, s->downsample_channels[1],
                     c->hidden_size);
        goto done;
    }
#undef SUB
#undef VKEY
done:
    cJSON_Delete(root);
    return st;
}

DsocrStatus config_load(const char *path, ModelConfig *c, DsError *e) {
    char *buf;
    size_t len;
    DsocrStatus st = ds_read_file(path, 16u << 20, &buf, &len, e);
    if (st) return st;
    st = config_parse(buf, len, path, c, e);
    free(buf);
    return st;
}

int config_layer_is_moe(const ModelConfig *c, int l) {
    return c->n_routed_experts > 0 && l >= c->first_k_dense_replace && l % c->moe_layer_freq == 0;
}

int config_sam_is_global(const ModelConfig *c, int b) {
    for (int i = 0; i < c->sam.n_global; i++)
        if (c->sam.global_attn_indexes[i] == b) return 1;
    return 0;
}
