/* checkpoint_gguf.c: GGUF files as a checkpoint source (see checkpoint.h and docs/gguf.md).
 *
 * Two layouts, one set of tensor names (llama.cpp's; Hugging Face names do not fit GGUF's 64-byte name limit):
 *   - dsocr's single file (`dsocr quantize`): general.architecture "dsocr", every tensor and all metadata;
 *   - llama.cpp's pair: a text-model GGUF (general.architecture "deepseek2-ocr") and an mmproj GGUF (clip.*
 *     keys, clip.projector_type "deepseekocr").
 * Tensors are mapped back to the Hugging Face names and shapes the model binds: routed experts, stored stacked
 * as [E, rows, cols], become per-expert views (each expert's slice is contiguous); CLIP attention stored split
 * (v.blk.I.attn_{q,k,v}, as newer llama.cpp converters can write it) is joined by rows into qkv_proj, in place
 * when the parts lie back to back in the file, else in an owned copy; F32/F16 tensors are narrowed
 * to BF16 (the engine's storage type; exact for files converted from the bf16 checkpoint); Q8_0/Q4_0 tensors
 * keep their blocks where the engine computes on blocks (checkpoint_component_quantizable) and are widened to
 * BF16 elsewhere. The config is rebuilt from metadata: llama.cpp's keys, our dsocr.* keys for what llama.cpp
 * has no key for, else sizes read off tensor shapes, else the official defaults (config_parse). */
#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "quant.h"

/* ---- names ---- */

typedef struct NameRule {
    const char *hf, *gguf; /* printf formats with the same %d count, except expert rules (hf has two) */
    int expert;            /* 1: hf "layers.%d ... experts.%d", gguf keeps only the layer */
} NameRule;

static const NameRule RULES[] = {
    {"model.sam_model.pos_embed", "v.sam.pos_embd.weight", 0},
    {"model.sam_model.patch_embed.proj.weight", "v.sam.patch_embd.weight", 0},
    {"model.sam_model.patch_embed.proj.bias", "v.sam.patch_embd.bias", 0},
    {"model.sam_model.blocks.%d.norm1.weight", "v.sam.blk.%d.pre_ln.weight", 0},
    {"model.sam_model.blocks.%d.norm1.bias", "v.sam.blk.%d.pre_ln.bias", 0},
    {"model.sam_model.blocks.%d.norm2.weight", "v.sam.blk.%d.post_ln.weight", 0},
    {"model.sam_model.blocks.%d.norm2.bias", "v.sam.blk.%d.post_ln.bias", 0},
    {"model.sam_model.blocks.%d.attn.qkv.weight", "v.sam.blk.%d.attn.qkv.weight", 0},
    {"model.sam_model.blocks.%d.attn.qkv.bias", "v.sam.blk.%d.attn.qkv.bias", 0},
    {"model.sam_model.blocks.%d.attn.proj.weight", "v.sam.blk.%d.attn.out.weight", 0},
    {"model.sam_model.blocks.%d.attn.proj.bias", "v.sam.blk.%d.attn.out.bias", 0},
    {"model.sam_model.blocks.%d.attn.rel_pos_h", "v.sam.blk.%d.attn.pos_h.weight", 0},
    {"model.sam_model.blocks.%d.attn.rel_pos_w", "v.sam.blk.%d.attn.pos_w.weight", 0},
    {"model.sam_model.blocks.%d.mlp.lin1.weight", "v.sam.blk.%d.mlp.lin1.weight", 0},
    {"model.sam_model.blocks.%d.mlp.lin1.bias", "v.sam.blk.%d.mlp.lin1.bias", 0},
    {"model.sam_model.blocks.%d.mlp.lin2.weight", "v.sam.blk.%d.mlp.lin2.weight", 0},
    {"model.sam_model.blocks.%d.mlp.lin2.bias", "v.sam.blk.%d.mlp.lin2.bias", 0},
    {"model.sam_model.neck.%d.weight", "v.sam.neck.%d.weight", 0},
    {"model.sam_model.neck.%d.bias", "v.sam.neck.%d.bias", 0},
    {"model.sam_model.net_%d.weight", "v.sam.net_%d.weight", 0},
    {"model.vision_model.embeddings.class_embedding", "v.class_embd", 0},
    {"model.vision_model.embeddings.patch_embedding.weight", "v.patch_embd.weight", 0},
    {"model.vision_model.embeddings.position_embedding.weight", "v.position_embd.weight", 0},
    {"model.vision_model.pre_layrnorm.weight", "v.pre_ln.weight", 0},
    {"model.vision_model.pre_layrnorm.bias", "v.pre_ln.bias", 0},
    {"model.vision_model.transformer.layers.%d.layer_norm1.weight", "v.blk.%d.ln1.weight", 0},
    {"model.vision_model.transformer.layers.%d.layer_norm1.bias", "v.blk.%d.ln1.bias", 0},
    {"model.vision_model.transformer.layers.%d.layer_norm2.weight", "v.blk.%d.ln2.weight", 0},
    {"model.vision_model.transformer.layers.%d.layer_norm2.bias", "v.blk.%d.ln2.bias", 0},
    {"model.vision_model.transformer.layers.%d.self_attn.qkv_proj.weight", "v.blk.%d.attn_qkv.weight", 0},
    {"model.vision_model.transformer.layers.%d.self_attn.qkv_proj.bias", "v.blk.%d.attn_qkv.bias", 0},
    {"model.vision_model.transformer.layers.%d.self_attn.out_proj.weight", "v.blk.%d.attn_out.weight", 0},
    {"model.vision_model.transformer.layers.%d.self_attn.out_proj.bias", "v.blk.%d.attn_out.bias", 0},
    {"model.vision_model.transformer.layers.%d.mlp.fc1.weight", "v.blk.%d.ffn_up.weight", 0},
    {"model.vision_model.transformer.layers.%d.mlp.fc1.bias", "v.blk.%d.ffn_up.bias", 0},
    {"model.vision_model.transformer.layers.%d.mlp.fc2.weight", "v.blk.%d.ffn_down.weight", 0},
    {"model.vision_model.transformer.layers.%d.mlp.fc2.bias", "v.blk.%d.ffn_down.bias", 0},
    {"model.projector.layers.weight", "mm.model.fc.weight", 0},
    {"model.projector.layers.bias", "mm.model.fc.bias", 0},
    {"model.image_newline", "v.image_newline", 0},
    {"model.view_seperator", "v.view_seperator", 0},
    {"model.embed_tokens.weight", "token_embd.weight", 0},
    {"lm_head.weight", "output.weight", 0},
    {"model.norm.weight", "output_norm.weight", 0},
    {"model.layers.%d.input_layernorm.weight", "blk.%d.attn_norm.weight", 0},
    {"model.layers.%d.post_attention_layernorm.weight", "blk.%d.ffn_norm.weight", 0},
    {"model.layers.%d.self_attn.q_proj.weight", "blk.%d.attn_q.weight", 0},
    {"model.layers.%d.self_attn.k_proj.weight", "blk.%d.attn_k.weight", 0},
    {"model.layers.%d.self_attn.v_proj.weight", "blk.%d.attn_v.weight", 0},
    {"model.layers.%d.self_attn.o_proj.weight", "blk.%d.attn_output.weight", 0},
    {"model.layers.%d.mlp.gate_proj.weight", "blk.%d.ffn_gate.weight", 0},
    {"model.layers.%d.mlp.up_proj.weight", "blk.%d.ffn_up.weight", 0},
    {"model.layers.%d.mlp.down_proj.weight", "blk.%d.ffn_down.weight", 0},
    {"model.layers.%d.mlp.gate.weight", "blk.%d.ffn_gate_inp.weight", 0},
    {"model.layers.%d.mlp.experts.%d.gate_proj.weight", "blk.%d.ffn_gate_exps.weight", 1},
    {"model.layers.%d.mlp.experts.%d.up_proj.weight", "blk.%d.ffn_up_exps.weight", 1},
    {"model.layers.%d.mlp.experts.%d.down_proj.weight", "blk.%d.ffn_down_exps.weight", 1},
    {"model.layers.%d.mlp.shared_experts.gate_proj.weight", "blk.%d.ffn_gate_shexp.weight", 0},
    {"model.layers.%d.mlp.shared_experts.up_proj.weight", "blk.%d.ffn_up_shexp.weight", 0},
    {"model.layers.%d.mlp.shared_experts.down_proj.weight", "blk.%d.ffn_down_shexp.weight", 0},
};
#define N_RULES (sizeof RULES / sizeof RULES[0])

/* Matches s against a format with up to two %d (non-negative decimal without leading zeros). */
static int match_fmt(const char *fmt, const char *s, int *v, int maxv) {
    int n = 0;
    while (*fmt) {
        if (fmt[0] == '%' && fmt[1] == 'd') {
            if (n == maxv || *s < '0' || *s > '9' || (s[0] == '0' && s[1] >= '0' && s[1] <= '9')) return -1;
            long x = 0;
            while (*s >= '0' && *s <= '9') {
                x = x * 10 + (*s++ - '0');
                if (x > 1000000) return -1;
            }
            v[n++] = (int)x;
            fmt += 2;
            continue;
        }
        if (*fmt++ != *s++) return -1;
    }
    return *s ? -1 : n;
}

int checkpoint_gguf_name(const char *hf, char *out, size_t n, int *expert, int *mmproj) {
    for (size_t i = 0; i < N_RULES; i++) {
        int v[2];
        int k = match_fmt(RULES[i].hf, hf, v, 2);
        if (k < 0) continue;
        *expert = RULES[i].expert ? v[1] : -1;
        if (k == 0)
            snprintf(out, n, "%s", RULES[i].gguf);
        else
            snprintf(out, n, RULES[i].gguf, v[0]);
        *mmproj = out[0] == 'v' || out[0] == 'm';
        return 1;
    }
    return 0;
}

/* Tensors llama.cpp may store split by rows: the fused name, then its parts in row order. */
static const char *const SPLIT[][4] = {
    {"v.blk.%d.attn_qkv.weight", "v.blk.%d.attn_q.weight", "v.blk.%d.attn_k.weight", "v.blk.%d.attn_v.weight"},
    {"v.blk.%d.attn_qkv.bias", "v.blk.%d.attn_q.bias", "v.blk.%d.attn_k.bias", "v.blk.%d.attn_v.bias"},
};

int checkpoint_gguf_split(const char *gguf, char parts[3][GGUF_MAX_NAME]) {
    for (size_t i = 0; i < sizeof SPLIT / sizeof SPLIT[0]; i++) {
        int v[1];
        if (match_fmt(SPLIT[i][0], gguf, v, 1) != 1) continue;
        for (int p = 0; p < 3; p++) snprintf(parts[p], GGUF_MAX_NAME, SPLIT[i][1 + p], v[0]);
        return 1;
    }
    return 0;
}

/* ---- finding the files ---- */

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int is_mmproj_name(const char *base) { return !strncmp(base, "mmproj", 6); }

/* Lists *.gguf in dir into text[] and mm[] (file names), up to 8 of each. */
static DsocrStatus list_gguf(const char *dir, char text[][1024], int *nt, char mm[][1024], int *nm, DsError *e) {
    DIR *d = opendir(dir);
    if (!d) return ds_fail(e, DSOCR_E_IO, "%s: cannot open folder: %s", dir, strerror(errno));
    struct dirent *de;
    *nt = *nm = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !ends_with(de->d_name, ".gguf")) continue;
        if (is_mmproj_name(de->d_name)) {
            if (*nm < 8) snprintf(mm[*nm], 1024, "%s/%s", dir, de->d_name);
            (*nm)++;
        } else {
            if (*nt < 8) snprintf(text[*nt], 1024, "%s/%s", dir, de->d_name);
            (*nt)++;
        }
    }
    closedir(d);
    return DSOCR_OK;
}

/* ---- config from metadata ---- */

typedef struct Meta {
    const GgufFile *text, *mm; /* the same file for the single-file layout */
    char arch[64];
    DsError *e;
    DsocrStatus st;
} Meta;

/* Adds key `name` to obj from integer key `key` of f when present. */
static void put_int(Meta *m, const GgufFile *f, cJSON *obj, const char *name, const char *key) {
    if (m->st) return;
    int found;
    int64_t v;
    if ((m->st = gguf_get_i64(f, key, &found, &v, m->e)) || !found) return;
    cJSON_AddNumberToObject(obj, name, (double)v);
}
static void put_intf(Meta *m, const GgufFile *f, cJSON *obj, const char *name, const char *fmt, const char *arch) {
    char key[256];
    snprintf(key, sizeof key, fmt, arch);
    put_int(m, f, obj, name, key);
}
static void put_num(Meta *m, const GgufFile *f, cJSON *obj, const char *name, const char *key) {
    if (m->st) return;
    int found;
    double v;
    if ((m->st = gguf_get_f64(f, key, &found, &v, m->e)) || !found) return;
    cJSON_AddNumberToObject(obj, name, v);
}
static void put_int_arr(Meta *m, const GgufFile *f, cJSON *obj, const char *name, const char *key) {
    if (m->st) return;
    const GgufKv *kv = gguf_find_kv(f, key);
    if (!kv) return;
    if (kv->type != GGUF_T_ARRAY || kv->arr_type > GGUF_T_I32 || kv->arr_type == GGUF_T_F32 || kv->arr_n > 1024) {
        m->st = ds_fail(m->e, DSOCR_E_FORMAT, "%s: key '%s' must be an array of at most 1024 integers", f->what, key);
        return;
    }
    cJSON *a = cJSON_AddArrayToObject(obj, name);
    for (uint64_t i = 0; a && i < kv->arr_n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)gguf_arr_i64(kv, i)));
}
/* The dim d (torch order: 0 = outermost of an n-dim shape) of a tensor, or -1. */
static int64_t tdim(const GgufFile *f, const char *name, int d_inner) {
    const GgufTensor *t = gguf_find_tensor(f, name);
    return t && d_inner < GGUF_MAX_DIMS ? t->ne[d_inner] : -1;
}
static int has_key(const GgufFile *f, const char *key) { return gguf_find_kv(f, key) != NULL; }

static DsocrStatus build_config(Meta *m, ModelConfig *c) {
    const GgufFile *T = m->text, *V = m->mm;
    const char *A = m->arch;
    cJSON *root = cJSON_CreateObject();
    if (!root) return ds_fail(m->e, DSOCR_E_NOMEM, "out of memory");
    cJSON_AddStringToObject(root, "model_type", "deepseek_vl_v2");
    put_intf(m, T, root, "hidden_size", "%s.embedding_length", A);
    put_intf(m, T, root, "num_hidden_layers", "%s.block_count", A);
    put_intf(m, T, root, "num_attention_heads", "%s.attention.head_count", A);
    put_intf(m, T, root, "num_key_value_heads", "%s.attention.head_count_kv", A);
    put_intf(m, T, root, "intermediate_size", "%s.feed_forward_length", A);
    put_intf(m, T, root, "moe_intermediate_size", "%s.expert_feed_forward_length", A);
    put_intf(m, T, root, "n_routed_experts", "%s.expert_count", A);
    put_intf(m, T, root, "n_shared_experts", "%s.expert_shared_count", A);
    put_intf(m, T, root, "num_experts_per_tok", "%s.expert_used_count", A);
    put_intf(m, T, root, "first_k_dense_replace", "%s.leading_dense_block_count", A);
    put_intf(m, T, root, "max_position_embeddings", "%s.context_length", A);
    put_int(m, T, root, "moe_layer_freq", "dsocr.moe_layer_freq");
    put_int(m, T, root, "bos_token_id", "tokenizer.ggml.bos_token_id");
    put_int(m, T, root, "eos_token_id", "tokenizer.ggml.eos_token_id");
    char key[256];
    snprintf(key, sizeof key, "%s.vocab_size", A);
    if (has_key(T, key)) {
        put_int(m, T, root, "vocab_size", key);
    } else if (!m->st) {
        int64_t v = tdim(T, "output.weight", 1);
        if (v > 0) cJSON_AddNumberToObject(root, "vocab_size", (double)v);
    }
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", A);
    put_num(m, T, root, "rms_norm_eps", key);
    snprintf(key, sizeof key, "%s.rope.freq_base", A);
    put_num(m, T, root, "rope_theta", key);
    snprintf(key, sizeof key, "%s.expert_weights_scale", A);
    put_num(m, T, root, "routed_scaling_factor", key);
    if (!m->st) {
        int found, v;
        snprintf(key, sizeof key, "%s.expert_weights_norm", A);
        if (!(m->st = gguf_get_bool(T, key, &found, &v, m->e)) && found) cJSON_AddBoolToObject(root, "norm_topk_prob", v);
    }
    if (!m->st) {
        int found;
        int64_t g;
        snprintf(key, sizeof key, "%s.expert_gating_func", A);
        if (!(m->st = gguf_get_i64(T, key, &found, &g, m->e)) && found && g != 1)
            m->st = ds_fail(m->e, DSOCR_E_UNSUPPORTED, "%s: %s is %" PRId64 " (only softmax gating, 1, is supported)",
                            T->what, key, g);
    }
    /* vision */
    cJSON *vc = cJSON_AddObjectToObject(root, "vision_config");
    cJSON *wd = cJSON_AddObjectToObject(vc, "width");
    cJSON *sam = cJSON_AddObjectToObject(wd, "sam_vit_b");
    cJSON *clip = cJSON_AddObjectToObject(wd, "clip-l-14-224");
    cJSON *pc = cJSON_AddObjectToObject(root, "projector_config");
    if (!vc || !wd || !sam || !clip || !pc) {
        cJSON_Delete(root);
        return ds_fail(m->e, DSOCR_E_NOMEM, "out of memory");
    }
    put_int(m, V, sam, "width", "clip.vision.sam.embedding_length");
    put_int(m, V, sam, "layers", "clip.vision.sam.block_count");
    put_int(m, V, sam, "heads", "clip.vision.sam.head_count");
    put_int(m, V, sam, "window_size", "clip.vision.window_size");
    /* sizes llama.cpp has no key for: ours when present, else the tensors' shapes */
#define FROM_KEY_OR_SHAPE(obj, name, dkey, tensor, dim)                                                        \
    do {                                                                                                      \
        if (has_key(V, dkey))                                                                                 \
            put_int(m, V, obj, name, dkey);                                                                   \
        else if (!m->st && tdim(V, tensor, dim) > 0)                                                          \
            cJSON_AddNumberToObject(obj, name, (double)tdim(V, tensor, dim));                                 \
    } while (0)
    FROM_KEY_OR_SHAPE(sam, "out_chans", "dsocr.sam.out_chans", "v.sam.neck.0.weight", 3);
    FROM_KEY_OR_SHAPE(sam, "patch_size", "dsocr.sam.patch_size", "v.sam.patch_embd.weight", 0);
    FROM_KEY_OR_SHAPE(sam, "mlp_dim", "dsocr.sam.mlp_dim", "v.sam.blk.0.mlp.lin1.weight", 1);
    FROM_KEY_OR_SHAPE(clip, "mlp_dim", "dsocr.clip.mlp_dim", "v.blk.0.ffn_up.weight", 1);
    FROM_KEY_OR_SHAPE(pc, "input_dim", "dsocr.projector.input_dim", "mm.model.fc.weight", 0);
    FROM_KEY_OR_SHAPE(pc, "n_embed", "dsocr.projector.n_embed", "mm.model.fc.weight", 1);
#undef FROM_KEY_OR_SHAPE
    /* SAM image size: the position grid times the patch */
    if (has_key(V, "dsocr.sam.image_size")) {
        put_int(m, V, vc, "image_size", "dsocr.sam.image_size");
    } else if (!m->st) {
        const GgufTensor *pe = gguf_find_tensor(V, "v.sam.pos_embd.weight");
        int64_t p = tdim(V, "v.sam.patch_embd.weight", 0);
        if (pe && p > 0 && pe->ne[1] > 0 && pe->ne[1] <= (1 << 16) / p) cJSON_AddNumberToObject(vc, "image_size", (double)(pe->ne[1] * p));
    }
    if (has_key(V, "dsocr.sam.downsample_channels")) {
        put_int_arr(m, V, sam, "downsample_channels", "dsocr.sam.downsample_channels");
    } else if (!m->st && tdim(V, "v.sam.net_2.weight", 3) > 0 && tdim(V, "v.sam.net_3.weight", 3) > 0) {
        cJSON *a = cJSON_AddArrayToObject(sam, "downsample_channels");
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)tdim(V, "v.sam.net_2.weight", 3)));
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)tdim(V, "v.sam.net_3.weight", 3)));
    }
    if (has_key(V, "dsocr.sam.global_attn_indexes")) {
        put_int_arr(m, V, sam, "global_attn_indexes", "dsocr.sam.global_attn_indexes");
    } else if (!m->st) {
        /* llama.cpp has no key: a block is global when its relative-position table spans the whole grid */
        const GgufTensor *pe = gguf_find_tensor(V, "v.sam.pos_embd.weight");
        int found;
        int64_t layers = 0;
        if (pe && !(m->st = gguf_get_i64(V, "clip.vision.sam.block_count", &found, &layers, m->e)) && found &&
            layers > 0 && layers <= CFG_MAX_SAM_LAYERS) {
            cJSON *a = cJSON_AddArrayToObject(sam, "global_attn_indexes");
            for (int b = 0; b < layers; b++) {
                char nm[64];
                snprintf(nm, sizeof nm, "v.sam.blk.%d.attn.pos_h.weight", b);
                if (tdim(V, nm, 1) == 2 * pe->ne[1] - 1) cJSON_AddItemToArray(a, cJSON_CreateNumber(b));
            }
        }
    }
    put_int(m, V, clip, "width", "clip.vision.embedding_length");
    put_int(m, V, clip, "layers", "clip.vision.block_count");
    put_int(m, V, clip, "heads", "clip.vision.attention.head_count");
    put_int(m, V, clip, "image_size", "clip.vision.image_size");
    put_int(m, V, clip, "patch_size", "clip.vision.patch_size");
    DsocrStatus st = m->st;
    if (!st) {
        char *js = cJSON_PrintUnformatted(root);
        if (!js) {
            st = ds_fail(m->e, DSOCR_E_NOMEM, "out of memory");
        } else {
            char what[600];
            snprintf(what, sizeof what, "%s (metadata)", T->what);
            st = config_parse(js, strlen(js), what, c, m->e);
            free(js);
        }
    }
    cJSON_Delete(root);
    return st;
}

/* ---- tensors ---- */

static void logf_(const CheckpointOptions *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(const CheckpointOptions *o, const char *fmt, ...) {
    if (!o || !o->log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    o->log(o->log_user, line);
}

static void *own(Checkpoint *ck, size_t n) {
    void **no = realloc(ck->owned, sizeof *no * (size_t)(ck->n_owned + 1));
    if (!no) return NULL;
    ck->owned = no;
    void *p = malloc(n ? n : 1);
    if (p) ck->owned[ck->n_owned++] = p;
    return p;
}

/* Squeezed shape equality (size-1 dims ignored): [1, G, G, W] == [G, G, W], [1, D] == [D]. */
static int same_shape(const int64_t *a, int na, const int64_t *b, int nb) {
    int i = 0, j = 0;
    for (;;) {
        while (i < na && a[i] == 1) i++;
        while (j < nb && b[j] == 1) j++;
        if (i == na || j == nb) return i == na && j == nb;
        if (a[i++] != b[j++]) return 0;
    }
}


typedef struct Conv {
    uint64_t lossy;   /* values changed by narrowing to bf16 */
    int n_narrowed, n_widened;
    int n_in_place;   /* split tensors used in place (parts back to back in the file) */
} Conv;

/* Makes t (HF name, expected shape, already set) point at GGUF data of dtype dt stored as n_parts runs of whole
 * rows, src[0], src[1], ... in that order (one part: the tensor itself; three: llama.cpp's split CLIP q, k, v),
 * each t->numel / n_parts elements in rows of part_k (the stored row length, ne[0]). BF16 and kept block types are
 * used by reference when there is one part or the parts lie back to back in the file, in order (counted in
 * cv->n_in_place when split), and are otherwise copied into one owned buffer (the rows of the parts, back to back,
 * are the fused tensor's bytes); other types are converted into an owned BF16 buffer. */
static DsocrStatus present(Checkpoint *ck, StTensor *t, const uint8_t *const *src, int n_parts, int64_t part_k,
                           DsDtype dt, int keep_blocks, Conv *cv, DsError *e) {
    uint64_t n = t->numel, np = n / (uint64_t)n_parts;
    if (part_k <= 0) part_k = 1;
    uint64_t part_rows = np / (uint64_t)part_k;
    if (dt == DS_BF16 || (quant_is_block(dt) && keep_blocks)) {
        size_t pb = quant_row_bytes(dt, part_k) * (size_t)part_rows;
        t->dtype = dt;
        t->begin = 0;
        t->end = pb * (size_t)n_parts;
        int in_place = 1;
        for (int p = 1; p < n_parts; p++) in_place &= src[p] == src[0] + (size_t)p * pb;
        if (in_place) {
            t->data = src[0];
            cv->n_in_place += n_parts > 1;
            return DSOCR_OK;
        }
        uint8_t *o = own(ck, t->end);
        if (!o) return ds_fail(e, DSOCR_E_NOMEM, "out of memory joining the parts of '%s'", t->name);
        for (int p = 0; p < n_parts; p++) memcpy(o + (size_t)p * pb, src[p], pb);
        t->data = o;
        return DSOCR_OK;
    }
    uint16_t *o = own(ck, (size_t)n * 2);
    if (!o) return ds_fail(e, DSOCR_E_NOMEM, "out of memory converting '%s' to bf16", t->name);
    float *row = NULL;
    if (quant_is_block(dt) && !(row = malloc(sizeof *row * (size_t)part_k)))
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    for (int p = 0; p < n_parts; p++) {
        const uint8_t *s = src[p];
        uint16_t *d = o + (uint64_t)p * np;
        if (dt == DS_F32 || dt == DS_F16) {
            for (uint64_t i = 0; i < np; i++) {
                float v;
                if (dt == DS_F32) {
                    memcpy(&v, s + 4 * i, 4);
                } else {
                    uint16_t h;
                    memcpy(&h, s + 2 * i, 2);
                    v = fp16_to_f32(h);
                }
                d[i] = f32_to_bf16(v);
                if (bf16_to_f32(d[i]) != v && v == v) cv->lossy++;
            }
        } else {
            size_t rb = quant_row_bytes(dt, part_k);
            for (uint64_t r = 0; r < part_rows; r++) {
                dequant_row_ref(dt, row, s + r * rb, part_k);
                for (int64_t k = 0; k < part_k; k++) d[r * (uint64_t)part_k + (uint64_t)k] = f32_to_bf16(row[k]);
            }
        }
    }
    free(row);
    if (quant_is_block(dt))
        cv->n_widened++;
    else
        cv->n_narrowed++;
    t->dtype = DS_BF16;
    t->data = (const uint8_t *)o;
    t->begin = 0;
    t->end = 2 * n;
    return DSOCR_OK;
}

static int cmp_st(const void *a, const void *b) { return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name); }

static DsocrStatus map_tensors(Checkpoint *ck, const CheckpointOptions *opt, const char *what, DsError *e) {
    CkExpected *ex;
    int n;
    DsocrStatus st = checkpoint_expected(&ck->config, &ex, &n, e);
    if (st) return st;
    const GgufFile *T = &ck->gguf[0], *V = ck->n_gguf > 1 ? &ck->gguf[1] : &ck->gguf[0];
    uint8_t *used[2] = {calloc((size_t)T->n_tensors + 1, 1), calloc((size_t)V->n_tensors + 1, 1)};
    StTensor *ts = calloc((size_t)n + 1, sizeof *ts);
    CkProblems pr = {.used = 0, .n = 0};
    Conv cv = {0};
    int n_split = 0;
    if (!used[0] || !used[1] || !ts) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto done;
    }
    int nt = 0;
    for (int i = 0; i < n && !st; i++) {
        const CkExpected *x = &ex[i];
        char gname[128], want[128], got[128];
        int expert, mm;
        if (!checkpoint_gguf_name(x->name, gname, sizeof gname, &expert, &mm)) {
            st = ds_fail(e, DSOCR_E_INTERNAL, "no GGUF name for '%s'", x->name);
            break;
        }
        const GgufFile *f = mm ? V : T;
        const int fi = f == V && ck->n_gguf > 1;
        const GgufTensor *g = gguf_find_tensor(f, gname);
        ck_fmt_shape(want, sizeof want, x->ndim, x->shape);
        /* llama.cpp's split CLIP attention: attn_q, attn_k, attn_v in place of attn_qkv, joined by rows */
        const GgufTensor *part[3] = {g};
        int n_parts = 1;
        char pn[3][GGUF_MAX_NAME];
        if (!g && checkpoint_gguf_split(gname, pn)) {
            int found = 0;
            for (int p = 0; p < 3; p++) {
                if (!(part[p] = gguf_find_tensor(f, pn[p]))) continue;
                used[fi][part[p] - f->tensors] = 1;
                found++;
            }
            if (found == 3) {
                g = part[0];
                n_parts = 3;
            } else if (found) {
                for (int p = 0; p < 3; p++)
                    if (!part[p])
                        ck_problem(&pr, "\n  missing tensor '%s' in %s (%s is stored split there, as %s, %s and %s; "
                                   "%d of the 3 present)", pn[p], f->what, gname, pn[0], pn[1], pn[2], found);
                continue;
            }
        }
        if (!g) {
            if (checkpoint_gguf_split(gname, pn))
                ck_problem(&pr, "\n  missing tensor '%s' (%s, shape %s; or its parts %s, %s, %s) in %s", gname, x->name,
                           want, pn[0], pn[1], pn[2], f->what);
            else
                ck_problem(&pr, "\n  missing tensor '%s' (%s, shape %s) in %s", gname, x->name, want, f->what);
            continue;
        }
        used[fi][g - f->tensors] = 1;
        int64_t es[5];
        int ne = 0;
        if (expert >= 0) es[ne++] = ck->config.n_routed_experts;
        for (int d = 0; d < x->ndim; d++) es[ne++] = x->shape[d];
        es[0] /= n_parts; /* a part holds a third of the rows (the outermost dim; 3·W by construction) */
        int bad = 0;
        for (int p = 0; p < n_parts; p++) {
            const GgufTensor *q = part[p];
            /* torch order of the GGUF dims */
            int64_t sh[GGUF_MAX_DIMS];
            for (int d = 0; d < q->n_dims; d++) sh[d] = q->ne[q->n_dims - 1 - d];
            if (!same_shape(sh, q->n_dims, es, ne)) {
                ck_fmt_shape(got, sizeof got, q->n_dims, sh);
                ck_fmt_shape(want, sizeof want, ne, es);
                if (n_parts > 1)
                    ck_problem(&pr, "\n  tensor '%s' (the %c rows of %s) has shape %s, expected %s", q->name, "qkv"[p],
                               x->name, got, want);
                else
                    ck_problem(&pr, "\n  tensor '%s' (%s) has shape %s, expected %s", q->name, x->name, got, want);
                bad = 1;
            } else if (q->dtype != part[0]->dtype) {
                ck_problem(&pr, "\n  tensor '%s' has type %s but '%s' has %s (the parts of %s must share one type)",
                           q->name, ds_dtype_name(q->dtype), part[0]->name, ds_dtype_name(part[0]->dtype), x->name);
                bad = 1;
            }
        }
        if (bad) continue;
        StTensor *t = &ts[nt];
        if (!(t->name = strdup(x->name))) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            break;
        }
        nt++;
        t->ndim = x->ndim;
        memcpy(t->shape, x->shape, sizeof x->shape[0] * (size_t)x->ndim);
        t->numel = 1;
        for (int d = 0; d < x->ndim; d++) t->numel *= (uint64_t)x->shape[d];
        const uint8_t *src[3];
        for (int p = 0; p < n_parts; p++) src[p] = part[p]->data;
        if (expert >= 0) src[0] += (g->nbytes / (uint64_t)ck->config.n_routed_experts) * (uint64_t)expert;
        int keep = checkpoint_component_quantizable(x->comp) && x->ndim == 2;
        st = present(ck, t, src, n_parts, g->ne[0], g->dtype, keep, &cv, e);
        n_split += n_parts > 1;
    }
    if (st) goto done;
    for (int k = 0; k < ck->n_gguf; k++) {
        const GgufFile *f = &ck->gguf[k];
        for (int64_t j = 0; j < f->n_tensors; j++)
            if (!used[k][j]) ck_problem(&pr, "\n  extra tensor '%s' in %s is not part of this model", f->tensors[j].name, f->what);
    }
    if (pr.n) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: %d problem%s with the weights:%s%s", what, pr.n, pr.n > 1 ? "s" : "",
                     pr.text, pr.n > 8 ? "\n  ..." : "");
        goto done;
    }
    if (cv.n_narrowed)
        logf_(opt, "%s: %d F32/F16 tensors narrowed to bf16 in memory (%" PRIu64 " values rounded)", what,
              cv.n_narrowed, cv.lossy);
    if (cv.n_widened)
        logf_(opt, "%s: %d quantised tensors widened to bf16 (no block kernels for their component)", what,
              cv.n_widened);
    if (n_split)
        logf_(opt, "%s: %d CLIP attention tensors stored split (attn_q, attn_k, attn_v) read as attn_qkv: %d in place "
              "(parts back to back in the file), %d joined in memory", what, n_split, cv.n_in_place,
              n_split - cv.n_in_place);
    qsort(ts, (size_t)nt, sizeof *ts, cmp_st);
    ck->shards = calloc(1, sizeof *ck->shards);
    ck->shard_paths = calloc(1, sizeof *ck->shard_paths);
    if (!ck->shards || !ck->shard_paths || !(ck->shard_paths[0] = strdup(what))) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto done;
    }
    ck->shards[0].tensors = ts;
    ck->shards[0].n_tensors = nt;
    ck->n_shards = 1;
    ts = NULL;
    nt = 0;
done:
    if (ts)
        for (int i = 0; i < n; i++) free(ts[i].name);
    free(ts);
    free(used[0]);
    free(used[1]);
    free(ex);
    return st;
}

/* ---- open ---- */

static DsocrStatus open_files(Checkpoint *ck, const char *path, char *what, size_t what_n, DsError *e) {
    struct stat sb;
    if (stat(path, &sb) != 0) return ds_fail(e, DSOCR_E_IO, "%s: %s", path, strerror(errno));
    char text[8][1024], mm[8][1024];
    int nt = 0, nm = 0;
    char textp[1024], mmp[1024] = "";
    DsocrStatus st;
    if (S_ISDIR(sb.st_mode)) {
        if ((st = list_gguf(path, text, &nt, mm, &nm, e))) return st;
        if (nt != 1)
            return ds_fail(e, DSOCR_E_MODEL, "%s: %d GGUF files that are not mmproj*.gguf (need exactly one: the "
                           "model, or llama.cpp's text model beside its mmproj file)", path, nt);
        snprintf(textp, sizeof textp, "%s", text[0]);
    } else {
        snprintf(textp, sizeof textp, "%s", path);
    }
    ck->gguf = calloc(2, sizeof *ck->gguf);
    if (!ck->gguf) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    if ((st = gguf_open(textp, &ck->gguf[0], e))) return st;
    ck->n_gguf = 1;
    snprintf(what, what_n, "%s", textp);
    if (gguf_find_tensor(&ck->gguf[0], "v.sam.pos_embd.weight")) return DSOCR_OK; /* single file */
    /* llama.cpp's pair: the mmproj file beside the text model */
    if (!S_ISDIR(sb.st_mode)) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", textp);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = 0;
        else
            snprintf(dir, sizeof dir, ".");
        if ((st = list_gguf(dir, text, &nt, mm, &nm, e))) return st;
    }
    if (nm != 1)
        return ds_fail(e, DSOCR_E_MODEL, "%s has no vision tensors, and %s; llama.cpp's layout needs exactly one "
                       "mmproj*.gguf beside the text model", textp, nm ? "there are several mmproj*.gguf files beside it" : "there is no mmproj*.gguf file beside it");
    snprintf(mmp, sizeof mmp, "%s", mm[0]);
    if ((st = gguf_open(mmp, &ck->gguf[1], e))) return st;
    ck->n_gguf = 2;
    snprintf(what, what_n, "%s + %s", textp, mmp);
    return DSOCR_OK;
}

DsocrStatus checkpoint_open_gguf(const char *path, const CheckpointOptions *opt, Checkpoint *ck, DsError *e) {
    char what[2100];
    DsocrStatus st = open_files(ck, path, what, sizeof what, e);
    if (st) goto fail;
    Meta m = {.text = &ck->gguf[0], .mm = &ck->gguf[ck->n_gguf - 1], .e = e};
    GgufStr arch;
    int found;
    if ((st = gguf_get_str(m.text, "general.architecture", &found, &arch, e))) goto fail;
    if (!found) {
        st = ds_fail(e, DSOCR_E_MODEL, "%s: no general.architecture key", m.text->what);
        goto fail;
    }
    snprintf(m.arch, sizeof m.arch, "%.*s", arch.n < 63 ? (int)arch.n : 63, arch.s);
    if (strcmp(m.arch, "dsocr") && strcmp(m.arch, "deepseek2-ocr")) {
        st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: general.architecture is '%s' (dsocr reads 'dsocr' files and "
                     "llama.cpp's 'deepseek2-ocr')", m.text->what, m.arch);
        goto fail;
    }
    if (ck->n_gguf > 1) {
        GgufStr pt;
        if ((st = gguf_get_str(m.mm, "clip.projector_type", &found, &pt, e))) goto fail;
        if (!found || pt.n != 11 || memcmp(pt.s, "deepseekocr", 11)) {
            st = ds_fail(e, DSOCR_E_UNSUPPORTED, "%s: clip.projector_type is %s'%.*s' (expected 'deepseekocr')",
                         m.mm->what, found ? "" : "missing ", found ? (int)(pt.n < 40 ? pt.n : 40) : 0, found ? pt.s : "");
            goto fail;
        }
    }
    if ((st = build_config(&m, &ck->config))) goto fail;
    if ((st = map_tensors(ck, opt, what, e))) goto fail;
    if ((st = checkpoint_validate(ck, what, e))) goto fail;
    ck->gguf_tokenizer = &ck->gguf[0];
    return DSOCR_OK;
fail:
    checkpoint_close(ck);
    return st;
}
