/* ckpt_fixture.h: builds model folders for tests: the official config (from data/model) or the `tiny` test
 * config, and a safetensors file holding every expected tensor (random values, or a sparse file when only the
 * header matters), with optional defects. Test-only code. */
#ifndef DSOCR_CKPT_FIXTURE_H
#define DSOCR_CKPT_FIXTURE_H

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "model.h"

/* The tiny configuration (tools/reference/README.md): official sparse file with small sizes. */
static inline char *fixture_tiny_config(void) {
    char *txt;
    size_t len;
    if (ds_read_file("data/model/config.json", 1 << 20, &txt, &len, NULL)) return NULL;
    cJSON *r = cJSON_Parse(txt);
    free(txt);
    if (!r) return NULL;
    static const struct {
        const char *k;
        int v;
    } L[] = {{"hidden_size", 128},         {"num_hidden_layers", 3},   {"num_attention_heads", 2},
             {"num_key_value_heads", 2},   {"intermediate_size", 256}, {"moe_intermediate_size", 64},
             {"n_routed_experts", 8},      {"num_experts_per_tok", 3}, {"n_shared_experts", 2},
             {"first_k_dense_replace", 1}};
    cJSON *lc = cJSON_GetObjectItem(r, "language_config");
    for (size_t i = 0; i < sizeof L / sizeof L[0]; i++) {
        cJSON_ReplaceItemInObject(r, L[i].k, cJSON_CreateNumber(L[i].v));
        cJSON_ReplaceItemInObject(lc, L[i].k, cJSON_CreateNumber(L[i].v));
    }
    cJSON *w = cJSON_GetObjectItem(cJSON_GetObjectItem(r, "vision_config"), "width");
    cJSON *sam = cJSON_GetObjectItem(w, "sam_vit_b");
    cJSON_ReplaceItemInObject(sam, "width", cJSON_CreateNumber(64));
    cJSON_ReplaceItemInObject(sam, "layers", cJSON_CreateNumber(4));
    cJSON_ReplaceItemInObject(sam, "heads", cJSON_CreateNumber(2));
    const int gi[2] = {1, 3}, dc[2] = {64, 128};
    cJSON_ReplaceItemInObject(sam, "global_attn_indexes", cJSON_CreateIntArray(gi, 2));
    cJSON_ReplaceItemInObject(sam, "downsample_channels", cJSON_CreateIntArray(dc, 2));
    cJSON_AddNumberToObject(sam, "window_size", 14);
    cJSON_AddNumberToObject(sam, "out_chans", 32);
    cJSON *clip = cJSON_GetObjectItem(w, "clip-l-14-224");
    cJSON_ReplaceItemInObject(clip, "width", cJSON_CreateNumber(128));
    cJSON_ReplaceItemInObject(clip, "heads", cJSON_CreateNumber(2));
    cJSON_ReplaceItemInObject(clip, "layers", cJSON_CreateNumber(2));
    cJSON *pc = cJSON_GetObjectItem(r, "projector_config");
    cJSON_ReplaceItemInObject(pc, "input_dim", cJSON_CreateNumber(256));
    cJSON_ReplaceItemInObject(pc, "n_embed", cJSON_CreateNumber(128));
    char *out = cJSON_Print(r);
    cJSON_Delete(r);
    return out;
}

static inline int fixture_write_text(const char *dir, const char *name, const char *text) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

typedef struct FixtureOpts {
    DsDtype dtype;          /* DS_BF16 (default when 0) or DS_F32 */
    int sparse;             /* 1: header only, data left as a hole (ftruncate) */
    const char *drop;       /* a tensor name to leave out */
    const char *extra;      /* a tensor name to add */
    const char *reshape;    /* a tensor name whose first dimension gets +1 */
    const char *file_name;  /* default model-00001-of-000001.safetensors */
    int shard_split;        /* >0: write two shards split at this tensor index, plus an index.json */
} FixtureOpts;

/* Writes config.json (the given text) and the weights into dir. Returns 0 on success. */
static inline int fixture_write_model(const char *dir, const char *config_text, const FixtureOpts *o) {
    if (fixture_write_text(dir, "config.json", config_text)) return -1;
    ModelConfig c;
    if (config_parse(config_text, strlen(config_text), "config", &c, NULL)) return -1;
    CkExpected *ex;
    int n;
    if (checkpoint_expected(&c, &ex, &n, NULL)) return -1;
    StWriteTensor *wt = calloc((size_t)n + 1, sizeof *wt);
    int m = 0;
    DsDtype dt = o && o->dtype ? o->dtype : DS_BF16;
    for (int i = 0; i < n; i++) {
        if (o && o->drop && !strcmp(o->drop, ex[i].name)) continue;
        wt[m].name = ex[i].name;
        wt[m].dtype = dt;
        wt[m].ndim = ex[i].ndim;
        for (int d = 0; d < ex[i].ndim; d++) wt[m].shape[d] = ex[i].shape[d];
        if (o && o->reshape && !strcmp(o->reshape, ex[i].name)) wt[m].shape[0]++;
        m++;
    }
    if (o && o->extra) {
        wt[m].name = o->extra;
        wt[m].dtype = dt;
        wt[m].ndim = 1;
        wt[m].shape[0] = 4;
        m++;
    }
    int nfiles = o && o->shard_split > 0 ? 2 : 1;
    int rc = 0;
    uint32_t rng = 12345;
    cJSON *idx = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(idx, "weight_map");
    for (int f = 0; f < nfiles && !rc; f++) {
        int lo = f == 0 ? 0 : o->shard_split, hi = nfiles == 1 ? m : (f == 0 ? o->shard_split : m);
        char name[256], p[1024];
        if (nfiles > 1)
            snprintf(name, sizeof name, "model-0000%d-of-00002.safetensors", f + 1);
        else
            snprintf(name, sizeof name, "%s", o && o->file_name ? o->file_name : "model-00001-of-000001.safetensors");
        snprintf(p, sizeof p, "%s/%s", dir, name);
        for (int i = lo; i < hi; i++) cJSON_AddStringToObject(wm, wt[i].name, name);
        FILE *fp = fopen(p, "wb");
        if (!fp) {
            rc = -1;
            break;
        }
        if (safetensors_write_header(fp, wt + lo, hi - lo, NULL, 0, NULL)) rc = -1;
        uint64_t total = 0;
        for (int i = lo; i < hi; i++) {
            uint64_t ne = 1;
            for (int d = 0; d < wt[i].ndim; d++) ne *= (uint64_t)wt[i].shape[d];
            total += ne * ds_dtype_size(wt[i].dtype);
        }
        if (o && o->sparse) {
            long pos = ftell(fp);
            fflush(fp);
            if (ftruncate(fileno(fp), pos + (off_t)total)) rc = -1;
        } else {
            enum { CH = 1 << 15 };
            static float fb[CH];
            static uint16_t hb[CH];
            size_t esz = ds_dtype_size(dt), left = (size_t)(total / esz);
            while (left && !rc) {
                size_t k = left < CH ? left : CH;
                for (size_t i = 0; i < k; i++) {
                    rng = rng * 1664525u + 1013904223u;
                    fb[i] = ((float)(rng >> 8) / 16777216.0f - 0.5f) * 0.1f; /* small random values */
                    hb[i] = f32_to_bf16(fb[i]);
                }
                if (fwrite(dt == DS_F32 ? (const void *)fb : (const void *)hb, esz, k, fp) != k) rc = -1;
                left -= k;
            }
        }
        if (fclose(fp)) rc = -1;
    }
    if (nfiles > 1 && !rc) {
        char *txt = cJSON_Print(idx);
        rc = fixture_write_text(dir, "model.safetensors.index.json", txt);
        free(txt);
    }
    cJSON_Delete(idx);
    free(wt);
    free(ex);
    return rc;
}

/* A fresh empty folder under /tmp (caller removes it with fixture_rmdir). */
static inline char *fixture_tmpdir(void) {
    char *t = strdup("/tmp/dsocr-test-XXXXXX");
    if (!mkdtemp(t)) {
        free(t);
        return NULL;
    }
    return t;
}

static inline void fixture_rmdir(char *d) {
    if (!d) return;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", d);
    free(d);
}

/* A fresh folder holding the tiny random model (fixture_tiny_config) and the repository's tokenizer.json: NULL on
 * failure. Run from the repository root; the caller removes it with fixture_rmdir. */
static inline char *fixture_tiny_model_dir(void) {
    char *dir = fixture_tmpdir(), *cfg = fixture_tiny_config();
    int bad = !dir || !cfg || fixture_write_model(dir, cfg, NULL);
    free(cfg);
    if (!bad) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "cp data/tokenizer/tokenizer.json '%s/'", dir);
        bad = system(cmd) != 0;
    }
    if (bad) {
        fixture_rmdir(dir);
        return NULL;
    }
    return dir;
}

/* fixture_tiny_model_dir, and the model loaded from it into *m (weights in host memory, not placed): 0, or −1
 * with the reason on stderr. */
static inline int fixture_tiny_model(char **dir, Model **m) {
    if (!(*dir = fixture_tiny_model_dir())) return -1;
    DsError e = {0};
    CheckpointOptions co = {0};
    if (model_load(*dir, &co, m, &e) != DSOCR_OK) {
        fprintf(stderr, "load: %s\n", e.msg);
        return -1;
    }
    return 0;
}

#endif
