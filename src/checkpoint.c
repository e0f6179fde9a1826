/* checkpoint.c: see checkpoint.h. */
#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define CACHE_NAME "dsocr-bf16-cache.safetensors"

static const char *COMP_NAMES[CK_N_COMPONENTS] = {
    "SAM", "CLIP", "projector", "decoder attention", "dense MLP", "routed experts", "shared experts",
    "routers", "decoder norms", "embeddings", "lm_head",
};

const char *checkpoint_component_name(CkComponent c) {
    return (unsigned)c < CK_N_COMPONENTS ? COMP_NAMES[c] : "?";
}

/* ---- the expected tensor list ---- */

typedef struct ExpList {
    CkExpected *v;
    int n, cap;
    int oom;
} ExpList;

static void add(ExpList *l, CkComponent comp, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void add(ExpList *l, CkComponent comp, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (l->oom) return;
    if (l->n == l->cap) {
        int nc = l->cap ? l->cap * 2 : 256;
        CkExpected *nv = realloc(l->v, sizeof *nv * (size_t)nc);
        if (!nv) {
            l->oom = 1;
            return;
        }
        l->v = nv;
        l->cap = nc;
    }
    CkExpected *x = &l->v[l->n++];
    memset(x, 0, sizeof *x);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->name, sizeof x->name, fmt, ap);
    va_end(ap);
    x->ndim = ndim;
    for (int i = 0; i < ndim; i++) x->shape[i] = shape[i];
    x->comp = comp;
}

#define S1(a) (const int64_t[]){(a)}
#define S2(a, b) (const int64_t[]){(a), (b)}
#define S4(a, b, c, d) (const int64_t[]){(a), (b), (c), (d)}

static int cmp_exp(const void *a, const void *b) {
    return strcmp(((const CkExpected *)a)->name, ((const CkExpected *)b)->name);
}

DsocrStatus checkpoint_expected(const ModelConfig *c, CkExpected **out, int *n, DsError *e) {
    ExpList l = {0};
    const SamConfig *s = &c->sam;
    const int64_t W = s->width, G = s->image_size / s->patch_size, P = s->patch_size, hd = s->width / s->heads;
    const int64_t O = s->out_chans, M = s->mlp_dim;
    const char *sp = "model.sam_model.";
    add(&l, CK_SAM, 4, S4(1, G, G, W), "%spos_embed", sp);
    add(&l, CK_SAM, 4, S4(W, 3, P, P), "%spatch_embed.proj.weight", sp);
    add(&l, CK_SAM, 1, S1(W), "%spatch_embed.proj.bias", sp);
    for (int b = 0; b < s->layers; b++) {
        int64_t R = config_sam_is_global(c, b) ? 2 * G - 1 : 2 * s->window_size - 1;
        add(&l, CK_SAM, 1, S1(W), "%sblocks.%d.norm1.weight", sp, b);
        add(&l, CK_SAM, 1, S1(W), "%sblocks.%d.norm1.bias", sp, b);
        add(&l, CK_SAM, 1, S1(W), "%sblocks.%d.norm2.weight", sp, b);
        add(&l, CK_SAM, 1, S1(W), "%sblocks.%d.norm2.bias", sp, b);
        add(&l, CK_SAM, 2, S2(3 * W, W), "%sblocks.%d.attn.qkv.weight", sp, b);
        add(&l, CK_SAM, 1, S1(3 * W), "%sblocks.%d.attn.qkv.bias", sp, b);
        add(&l, CK_SAM, 2, S2(W, W), "%sblocks.%d.attn.proj.weight", sp, b);
        add(&l, CK_SAM, 1, S1(W), "%sblocks.%d.attn.proj.bias", sp, b);
        add(&l, CK_SAM, 2, S2(R, hd), "%sblocks.%d.attn.rel_pos_h", sp, b);
        add(&l, CK_SAM, 2, S2(R, hd), "%sblocks.%d.attn.rel_pos_w", sp, b);
        add(&l, CK_SAM, 2, S2(M, W), "%sblocks.%d.mlp.lin1.weight", sp, b);
        add(&l, CK_SAM, 1, S1(M), "%sblocks.%d.mlp.lin1.bias", sp, b);
        add(&l, CK_SAM, 2, S2(W, M), "%sblocks.%d.mlp.lin2.weight", sp, b);
        add(&l, CK_SAM, 1, S1(W), "%sblocks.%d.mlp.lin2.bias", sp, b);
    }
    add(&l, CK_SAM, 4, S4(O, W, 1, 1), "%sneck.0.weight", sp);
    add(&l, CK_SAM, 1, S1(O), "%sneck.1.weight", sp);
    add(&l, CK_SAM, 1, S1(O), "%sneck.1.bias", sp);
    add(&l, CK_SAM, 4, S4(O, O, 3, 3), "%sneck.2.weight", sp);
    add(&l, CK_SAM, 1, S1(O), "%sneck.3.weight", sp);
    add(&l, CK_SAM, 1, S1(O), "%sneck.3.bias", sp);
    add(&l, CK_SAM, 4, S4(s->downsample_channels[0], O, 3, 3), "%snet_2.weight", sp);
    add(&l, CK_SAM, 4, S4(s->downsample_channels[1], s->downsample_channels[0], 3, 3), "%snet_3.weight", sp);

    const ClipConfig *k = &c->clip;
    const int64_t CW = k->width, CM = k->mlp_dim, np = k->image_size / k->patch_size;
    const char *cp = "model.vision_model.";
    add(&l, CK_CLIP, 1, S1(CW), "%sembeddings.class_embedding", cp);
    add(&l, CK_CLIP, 4, S4(CW, 3, k->patch_size, k->patch_size), "%sembeddings.patch_embedding.weight", cp);
    add(&l, CK_CLIP, 2, S2(np * np + 1, CW), "%sembeddings.position_embedding.weight", cp);
    add(&l, CK_CLIP, 1, S1(CW), "%spre_layrnorm.weight", cp);
    add(&l, CK_CLIP, 1, S1(CW), "%spre_layrnorm.bias", cp);
    for (int i = 0; i < k->layers; i++) {
        const char *lp = "transformer.layers";
        add(&l, CK_CLIP, 1, S1(CW), "%s%s.%d.layer_norm1.weight", cp, lp, i);
        add(&l, CK_CLIP, 1, S1(CW), "%s%s.%d.layer_norm1.bias", cp, lp, i);
        add(&l, CK_CLIP, 1, S1(CW), "%s%s.%d.layer_norm2.weight", cp, lp, i);
        add(&l, CK_CLIP, 1, S1(CW), "%s%s.%d.layer_norm2.bias", cp, lp, i);
        add(&l, CK_CLIP, 2, S2(3 * CW, CW), "%s%s.%d.self_attn.qkv_proj.weight", cp, lp, i);
        add(&l, CK_CLIP, 1, S1(3 * CW), "%s%s.%d.self_attn.qkv_proj.bias", cp, lp, i);
        add(&l, CK_CLIP, 2, S2(CW, CW), "%s%s.%d.self_attn.out_proj.weight", cp, lp, i);
        add(&l, CK_CLIP, 1, S1(CW), "%s%s.%d.self_attn.out_proj.bias", cp, lp, i);
        add(&l, CK_CLIP, 2, S2(CM, CW), "%s%s.%d.mlp.fc1.weight", cp, lp, i);
        add(&l, CK_CLIP, 1, S1(CM), "%s%s.%d.mlp.fc1.bias", cp, lp, i);
        add(&l, CK_CLIP, 2, S2(CW, CM), "%s%s.%d.mlp.fc2.weight", cp, lp, i);
        add(&l, CK_CLIP, 1, S1(CW), "%s%s.%d.mlp.fc2.bias", cp, lp, i);
    }

    const int64_t D = c->hidden_size, V = c->vocab_size, H = (int64_t)c->num_attention_heads * c->head_dim;
    const int64_t KV = (int64_t)c->num_key_value_heads * c->head_dim;
    add(&l, CK_PROJECTOR, 2, S2(c->projector_n_embed, c->projector_input_dim), "model.projector.layers.weight");
    add(&l, CK_PROJECTOR, 1, S1(c->projector_n_embed), "model.projector.layers.bias");
    add(&l, CK_PROJECTOR, 1, S1(D), "model.image_newline");
    add(&l, CK_PROJECTOR, 1, S1(D), "model.view_seperator");
    add(&l, CK_EMBED, 2, S2(V, D), "model.embed_tokens.weight");
    add(&l, CK_LM_HEAD, 2, S2(V, D), "lm_head.weight");
    add(&l, CK_NORMS, 1, S1(D), "model.norm.weight");
    for (int i = 0; i < c->num_hidden_layers; i++) {
        const char *lp = "model.layers";
        add(&l, CK_NORMS, 1, S1(D), "%s.%d.input_layernorm.weight", lp, i);
        add(&l, CK_NORMS, 1, S1(D), "%s.%d.post_attention_layernorm.weight", lp, i);
        add(&l, CK_DEC_ATTN, 2, S2(H, D), "%s.%d.self_attn.q_proj.weight", lp, i);
        add(&l, CK_DEC_ATTN, 2, S2(KV, D), "%s.%d.self_attn.k_proj.weight", lp, i);
        add(&l, CK_DEC_ATTN, 2, S2(KV, D), "%s.%d.self_attn.v_proj.weight", lp, i);
        add(&l, CK_DEC_ATTN, 2, S2(D, H), "%s.%d.self_attn.o_proj.weight", lp, i);
        if (!config_layer_is_moe(c, i)) {
            const int64_t I = c->intermediate_size;
            add(&l, CK_DENSE_MLP, 2, S2(I, D), "%s.%d.mlp.gate_proj.weight", lp, i);
            add(&l, CK_DENSE_MLP, 2, S2(I, D), "%s.%d.mlp.up_proj.weight", lp, i);
            add(&l, CK_DENSE_MLP, 2, S2(D, I), "%s.%d.mlp.down_proj.weight", lp, i);
            continue;
        }
        const int64_t MI = c->moe_intermediate_size, SI = MI * c->n_shared_experts;
        add(&l, CK_ROUTER, 2, S2(c->n_routed_experts, D), "%s.%d.mlp.gate.weight", lp, i);
        for (int x = 0; x < c->n_routed_experts; x++) {
            add(&l, CK_ROUTED, 2, S2(MI, D), "%s.%d.mlp.experts.%d.gate_proj.weight", lp, i, x);
            add(&l, CK_ROUTED, 2, S2(MI, D), "%s.%d.mlp.experts.%d.up_proj.weight", lp, i, x);
            add(&l, CK_ROUTED, 2, S2(D, MI), "%s.%d.mlp.experts.%d.down_proj.weight", lp, i, x);
        }
        if (c->n_shared_experts > 0) {
            add(&l, CK_SHARED, 2, S2(SI, D), "%s.%d.mlp.shared_experts.gate_proj.weight", lp, i);
            add(&l, CK_SHARED, 2, S2(SI, D), "%s.%d.mlp.shared_experts.up_proj.weight", lp, i);
            add(&l, CK_SHARED, 2, S2(D, SI), "%s.%d.mlp.shared_experts.down_proj.weight", lp, i);
        }
    }
    if (l.oom) {
        free(l.v);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory building the tensor list");
    }
    qsort(l.v, (size_t)l.n, sizeof *l.v, cmp_exp);
    *out = l.v;
    *n = l.n;
    return DSOCR_OK;
}

/* ---- finding and opening the shards ---- */

typedef struct StrList {
    char **v;
    int n;
} StrList;

static void strlist_free(StrList *s) {
    for (int i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static int strlist_add(StrList *s, const char *x) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->v[i], x)) return 0;
    char **nv = realloc(s->v, sizeof *nv * (size_t)(s->n + 1));
    if (!nv) return -1;
    s->v = nv;
    if (!(s->v[s->n] = strdup(x))) return -1;
    s->n++;
    return 0;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int path_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* Shard file names from model.safetensors.index.json, or the folder's one *.safetensors file. */
static DsocrStatus find_shards(const char *dir, StrList *files, DsError *e) {
    char path[2048];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (path_exists(path)) {
        char *buf;
        size_t len;
        DsocrStatus st = ds_read_file(path, 64u << 20, &buf, &len, e);
        if (st) return st;
        cJSON *root = cJSON_ParseWithLength(buf, len);
        free(buf);
        if (!root) return ds_fail(e, DSOCR_E_FORMAT, "%s: not valid JSON", path);
        const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        if (!cJSON_IsObject(wm)) {
            cJSON_Delete(root);
            return ds_fail(e, DSOCR_E_FORMAT, "%s: no \"weight_map\" object", path);
        }
        for (const cJSON *it = wm->child; it; it = it->next) {
            if (!cJSON_IsString(it) || strchr(it->valuestring, '/') || !ends_with(it->valuestring, ".safetensors")) {
                cJSON_Delete(root);
                return ds_fail(e, DSOCR_E_FORMAT,
                               "%s: weight_map entry for '%s' must be a .safetensors file name in the folder", path,
                               it->string ? it->string : "");
            }
            if (strlist_add(files, it->valuestring)) {
                cJSON_Delete(root);
                return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            }
        }
        cJSON_Delete(root);
        if (!files->n) return ds_fail(e, DSOCR_E_MODEL, "%s: weight_map is empty", path);
        return DSOCR_OK;
    }
    DIR *d = opendir(dir);
    if (!d) return ds_fail(e, DSOCR_E_IO, "%s: cannot open model folder: %s", dir, strerror(errno));
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !ends_with(de->d_name, ".safetensors") || !strcmp(de->d_name, CACHE_NAME))
            continue;
        if (strlist_add(files, de->d_name)) {
            closedir(d);
            return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        }
    }
    closedir(d);
    if (files->n == 0)
        return ds_fail(e, DSOCR_E_MODEL, "%s: no *.safetensors weights in the model folder", dir);
    if (files->n > 1)
        return ds_fail(e, DSOCR_E_MODEL,
                       "%s: %d *.safetensors files but no model.safetensors.index.json to say which to use", dir,
                       files->n);
    return DSOCR_OK;
}

/* ---- fp32 -> bf16 cache ---- */

/* A fingerprint of the source shards: names, sizes and modification times. */
static void source_fingerprint(const char *dir, const StrList *files, char *out, size_t n) {
    size_t used = 0;
    out[0] = 0;
    for (int i = 0; i < files->n; i++) {
        char p[2048];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, files->v[i]);
        if (stat(p, &st) != 0) continue;
        int w = snprintf(out + used, n - used, "%s:%lld:%lld;", files->v[i], (long long)st.st_size,
                         (long long)st.st_mtime);
        if (w < 0 || (size_t)w >= n - used) break;
        used += (size_t)w;
    }
}

static int cache_matches(const char *cache, const char *fp) {
    StFile f;
    if (safetensors_open(cache, &f, NULL)) return 0;
    int ok = 0;
    if (f.metadata_json) {
        cJSON *m = cJSON_Parse(f.metadata_json);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, "dsocr_source");
        ok = cJSON_IsString(v) && !strcmp(v->valuestring, fp);
        cJSON_Delete(m);
    }
    safetensors_close(&f);
    return ok;
}

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

/* Writes every tensor of the shards into one safetensors file at `out`, F32 rounded to BF16 (nearest even),
 * other dtypes copied. Streams one tensor at a time; writes to a temporary name and renames at the end. */
static DsocrStatus write_bf16_cache(StFile *shards, int n_shards, const char *out, const char *fp, DsError *e) {
    int total = 0;
    for (int i = 0; i < n_shards; i++) total += shards[i].n_tensors;
    StWriteTensor *wt = calloc((size_t)total + 1, sizeof *wt);
    const StTensor **src = calloc((size_t)total + 1, sizeof *src);
    if (!wt || !src) {
        free(wt);
        free(src);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    int k = 0;
    for (int i = 0; i < n_shards; i++) {
        for (int j = 0; j < shards[i].n_tensors; j++, k++) {
            const StTensor *t = &shards[i].tensors[j];
            src[k] = t;
            wt[k].name = t->name;
            wt[k].dtype = t->dtype == DS_F32 ? DS_BF16 : t->dtype;
            wt[k].ndim = t->ndim;
            memcpy(wt[k].shape, t->shape, sizeof t->shape);
        }
    }
    char tmp[2100];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", out, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    DsocrStatus st = DSOCR_OK;
    if (!f) {
        st = ds_fail(e, DSOCR_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    const char *meta[] = {"dsocr_source", fp, "format", "pt"};
    if ((st = safetensors_write_header(f, wt, total, meta, 2, e))) goto done;
    enum { CHUNK = 1 << 16 };
    uint16_t *buf = malloc(CHUNK * sizeof *buf);
    if (!buf) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < total && !st; i++) {
        const StTensor *t = src[i];
        if (t->dtype != DS_F32) {
            if (fwrite(t->data, 1, t->end - t->begin, f) != t->end - t->begin)
                st = ds_fail(e, DSOCR_E_IO, "%s: write failed (disk full?)", tmp);
            continue;
        }
        for (uint64_t o = 0; o < t->numel && !st; o += CHUNK) {
            size_t m = t->numel - o < CHUNK ? (size_t)(t->numel - o) : CHUNK;
            for (size_t x = 0; x < m; x++) {
                float v;
                memcpy(&v, t->data + 4 * (o + x), 4);
                buf[x] = f32_to_bf16(v);
            }
            if (fwrite(buf, 2, m, f) != m) st = ds_fail(e, DSOCR_E_IO, "%s: write failed (disk full?)", tmp);
        }
    }
    free(buf);
done:
    if (f && fclose(f) != 0 && !st) st = ds_fail(e, DSOCR_E_IO, "%s: write failed", tmp);
    if (!st && rename(tmp, out) != 0) st = ds_fail(e, DSOCR_E_IO, "%s: cannot rename: %s", out, strerror(errno));
    if (st) unlink(tmp);
    free(wt);
    free(src);
    return st;
}

static int dir_writable(const char *d) { return access(d, W_OK) == 0; }

static void pick_cache_path(const char *dir, const CheckpointOptions *o, const char *fp, char *out, size_t n) {
    if (o && o->cache_dir) {
        snprintf(out, n, "%s/%s", o->cache_dir, CACHE_NAME);
        return;
    }
    if (dir_writable(dir)) {
        snprintf(out, n, "%s/%s", dir, CACHE_NAME);
        return;
    }
    const char *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    char base[1024];
    if (x && *x)
        snprintf(base, sizeof base, "%s/dsocr", x);
    else
        snprintf(base, sizeof base, "%s/.cache/dsocr", h && *h ? h : "/tmp");
    mkdir(base, 0755);
    uint64_t hsh = 1469598103934665603ull; /* FNV-1a of folder + fingerprint names the cache */
    for (const char *p = dir; *p; p++) hsh = (hsh ^ (uint8_t)*p) * 1099511628211ull;
    for (const char *p = fp; *p; p++) hsh = (hsh ^ (uint8_t)*p) * 1099511628211ull;
    snprintf(out, n, "%s/%016" PRIx64 "-%s", base, hsh, CACHE_NAME);
}

/* ---- open and validate ---- */

static void close_shards(Checkpoint *ck) {
    for (int i = 0; i < ck->n_shards; i++) {
        safetensors_close(&ck->shards[i]);
        free(ck->shard_paths[i]);
    }
    free(ck->shards);
    free(ck->shard_paths);
    ck->shards = NULL;
    ck->shard_paths = NULL;
    ck->n_shards = 0;
}

static DsocrStatus open_files(Checkpoint *ck, const char *dir, const StrList *files, DsError *e) {
    ck->shards = calloc((size_t)files->n, sizeof *ck->shards);
    ck->shard_paths = calloc((size_t)files->n, sizeof *ck->shard_paths);
    if (!ck->shards || !ck->shard_paths) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    for (int i = 0; i < files->n; i++) {
        char p[2048];
        if (files->v[i][0] == '/')
            snprintf(p, sizeof p, "%s", files->v[i]);
        else
            snprintf(p, sizeof p, "%s/%s", dir, files->v[i]);
        if (!(ck->shard_paths[i] = strdup(p))) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        DsocrStatus st = safetensors_open(p, &ck->shards[i], e);
        if (st) return st;
        ck->n_shards++;
    }
    return DSOCR_OK;
}

void ck_fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t u = 0;
    u += (size_t)snprintf(buf + u, n - u, "[");
    for (int i = 0; i < ndim && u < n; i++)
        u += (size_t)snprintf(buf + u, n - u, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (u < n) snprintf(buf + u, n - u, "]");
}

void ck_problem(CkProblems *p, const char *fmt, ...) {
    p->n++;
    if (p->n > 8 || p->used >= sizeof p->text - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(p->text + p->used, sizeof p->text - p->used, fmt, ap);
    va_end(ap);
    if (w > 0) p->used += (size_t)w < sizeof p->text - p->used ? (size_t)w : sizeof p->text - p->used - 1;
}

int checkpoint_component_quantizable(CkComponent c) {
    return c == CK_DEC_ATTN || c == CK_DENSE_MLP || c == CK_ROUTED || c == CK_SHARED || c == CK_LM_HEAD;
}

DsocrStatus checkpoint_validate(Checkpoint *ck, const char *dir, DsError *e) {
    DsocrStatus st = checkpoint_expected(&ck->config, &ck->expected, &ck->n_tensors, e);
    if (st) return st;
    ck->tensors = calloc((size_t)ck->n_tensors + 1, sizeof *ck->tensors);
    if (!ck->tensors) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    CkProblems pr = {.used = 0, .n = 0};
    /* duplicates across shards */
    for (int i = 0; i < ck->n_shards; i++)
        for (int j = 0; j < ck->shards[i].n_tensors; j++)
            for (int k = i + 1; k < ck->n_shards; k++)
                if (safetensors_find(&ck->shards[k], ck->shards[i].tensors[j].name))
                    ck_problem(&pr, "\n  tensor '%s' is in two files (%s and %s)", ck->shards[i].tensors[j].name,
                            ck->shard_paths[i], ck->shard_paths[k]);
    for (int i = 0; i < ck->n_tensors; i++) {
        const CkExpected *x = &ck->expected[i];
        const StTensor *t = NULL;
        for (int s = 0; s < ck->n_shards && !t; s++) t = safetensors_find(&ck->shards[s], x->name);
        char want[128], got[128];
        ck_fmt_shape(want, sizeof want, x->ndim, x->shape);
        if (!t) {
            ck_problem(&pr, "\n  missing tensor '%s' (expected shape %s)", x->name, want);
            continue;
        }
        int same = t->ndim == x->ndim;
        for (int d = 0; same && d < x->ndim; d++) same = t->shape[d] == x->shape[d];
        if (!same) {
            ck_fmt_shape(got, sizeof got, t->ndim, t->shape);
            ck_problem(&pr, "\n  tensor '%s' has shape %s, expected %s", x->name, got, want);
        }
        int block_ok = (t->dtype == DS_Q8_0 || t->dtype == DS_Q4_0) && x->ndim == 2 &&
                       checkpoint_component_quantizable(x->comp) && ck->n_gguf > 0;
        if (t->dtype != DS_BF16 && !block_ok)
            ck_problem(&pr, "\n  tensor '%s' has dtype %s, expected BF16 (or F32, converted once)%s", x->name,
                    ds_dtype_name(t->dtype),
                    checkpoint_component_quantizable(x->comp) && x->ndim == 2 ? ", Q8_0 or Q4_0 (GGUF)" : "");
        ck->tensors[i].st = t;
        ck->tensors[i].comp = x->comp;
    }
    for (int s = 0; s < ck->n_shards; s++) {
        for (int j = 0; j < ck->shards[s].n_tensors; j++) {
            const StTensor *t = &ck->shards[s].tensors[j];
            CkExpected key;
            snprintf(key.name, sizeof key.name, "%s", t->name);
            if (strlen(t->name) >= sizeof key.name ||
                !bsearch(&key, ck->expected, (size_t)ck->n_tensors, sizeof key, cmp_exp)) {
                char got[128];
                ck_fmt_shape(got, sizeof got, t->ndim, t->shape);
                ck_problem(&pr, "\n  extra tensor '%.200s' (shape %s) is not part of this model", t->name, got);
            }
        }
    }
    if (pr.n) {
        return ds_fail(e, DSOCR_E_MODEL, "%s: %d problem%s with the weights:%s%s", dir, pr.n, pr.n > 1 ? "s" : "",
                       pr.text, pr.n > 8 ? "\n  ..." : "");
    }
    return DSOCR_OK;
}

/* A folder with GGUF files and no config.json, or a file. */
static int is_gguf_source(const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) != 0) return 0;
    if (S_ISREG(sb.st_mode)) return 1;
    char p[2048];
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (path_exists(p)) return 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int found = 0;
    struct dirent *de;
    while ((de = readdir(d)) && !found) found = de->d_name[0] != '.' && ends_with(de->d_name, ".gguf");
    closedir(d);
    return found;
}

DsocrStatus checkpoint_open(const char *dir, const CheckpointOptions *opt, Checkpoint *ck, DsError *e) {
    memset(ck, 0, sizeof *ck);
    if (is_gguf_source(dir)) return checkpoint_open_gguf(dir, opt, ck, e);
    char path[2048];
    snprintf(path, sizeof path, "%s/config.json", dir);
    DsocrStatus st = config_load(path, &ck->config, e);
    if (st) return st;
    StrList files = {0};
    if ((st = find_shards(dir, &files, e))) goto fail;
    if ((st = open_files(ck, dir, &files, e))) goto fail;
    int has_f32 = 0;
    for (int i = 0; i < ck->n_shards; i++)
        for (int j = 0; j < ck->shards[i].n_tensors; j++) has_f32 |= ck->shards[i].tensors[j].dtype == DS_F32;
    if (has_f32) {
        char fp[4096];
        source_fingerprint(dir, &files, fp, sizeof fp);
        pick_cache_path(dir, opt, fp, ck->cache_path, sizeof ck->cache_path);
        if (!cache_matches(ck->cache_path, fp)) {
            logf_(opt, "converting the fp32 checkpoint in %s to bf16, once: %s", dir, ck->cache_path);
            if ((st = write_bf16_cache(ck->shards, ck->n_shards, ck->cache_path, fp, e))) goto fail;
        } else {
            logf_(opt, "using the bf16 cache of the fp32 checkpoint: %s", ck->cache_path);
        }
        close_shards(ck);
        strlist_free(&files);
        if (strlist_add(&files, ck->cache_path)) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto fail;
        }
        if ((st = open_files(ck, dir, &files, e))) goto fail;
        ck->converted = 1;
    }
    if ((st = checkpoint_validate(ck, dir, e))) goto fail;
    strlist_free(&files);
    return DSOCR_OK;
fail:
    strlist_free(&files);
    checkpoint_close(ck);
    return st;
}

size_t checkpoint_release(const Checkpoint *ck, const void *p, size_t n) {
    size_t got = 0;
    for (int i = 0; i < ck->n_shards && !got; i++) got = ds_map_release(&ck->shards[i].map, p, n);
    for (int i = 0; i < ck->n_gguf && !got; i++) got = ds_map_release(&ck->gguf[i].map, p, n);
    return got;
}

void checkpoint_close(Checkpoint *ck) {
    if (!ck) return;
    close_shards(ck);
    for (int i = 0; i < ck->n_gguf; i++) gguf_close(&ck->gguf[i]);
    free(ck->gguf);
    for (int i = 0; i < ck->n_owned; i++) free(ck->owned[i]);
    free(ck->owned);
    free(ck->expected);
    free(ck->tensors);
    memset(ck, 0, sizeof *ck);
}

const StTensor *checkpoint_get(const Checkpoint *ck, const char *name) {
    CkExpected key;
    if (strlen(name) >= sizeof key.name) return NULL;
    snprintf(key.name, sizeof key.name, "%s", name);
    const CkExpected *x = bsearch(&key, ck->expected, (size_t)ck->n_tensors, sizeof key, cmp_exp);
    return x ? ck->tensors[x - ck->expected].st : NULL;
}

void checkpoint_summary(const Checkpoint *ck, CkSummary *s) {
    memset(s, 0, sizeof *s);
    for (int i = 0; i < ck->n_tensors; i++) {
        const StTensor *t = ck->tensors[i].st;
        if (!t) continue;
        uint64_t b = t->end - t->begin;
        s->params += t->numel;
        s->bytes += b;
        s->n_tensors++;
        s->comp_params[ck->tensors[i].comp] += t->numel;
        s->comp_bytes[ck->tensors[i].comp] += b;
        if ((unsigned)t->dtype < 16) s->dtype_count[t->dtype]++;
    }
}
