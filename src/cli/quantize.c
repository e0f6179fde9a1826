/* quantize.c: `dsocr quantize`: a safetensors model folder to GGUF, bf16 or quantised (docs/gguf.md).
 *   --layout dsocr (default): one file, general.architecture "dsocr", everything dsocr needs (config keys,
 *                             tokenizer, all tensors);
 *   --layout llama:           llama.cpp's pair: FILE (text model, "deepseek2-ocr") and mmproj-FILE (vision);
 *                             with --split-clip-qkv, CLIP attention as attn_q, attn_k, attn_v rather than attn_qkv
 *                             (the form newer llama.cpp converters can write; the loader reads both).
 * Which weights are quantised is quant_choose's policy. Per-tensor relative error ||w - dq(q(w))|| / ||w|| is
 * measured for every quantised tensor; a summary and the worst tensors are printed (all with --verbose). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "cli/cli.h"
#include "gguf.h"
#include "quant.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f, "usage: dsocr quantize --model DIR --type q8_0|q4|bf16 --out FILE [--layout dsocr|llama]\n"
               "                      [--split-clip-qkv] [--verbose]\n"
               "  Writes the model folder DIR (safetensors) as GGUF.\n"
               "  --type q8_0    decoder linear weights and lm_head as Q8_0 (blocks of 32 int8 + fp16 scale)\n"
               "  --type q4      routed experts as Q4_0, the other quantised weights as Q8_0\n"
               "  --type bf16    no quantisation\n"
               "  --layout dsocr one file FILE (default); llama: llama.cpp's pair, FILE and mmproj-FILE beside it\n"
               "  --split-clip-qkv  with --layout llama: CLIP attention as v.blk.I.attn_q, attn_k, attn_v (thirds\n"
               "                 of the rows) instead of the fused v.blk.I.attn_qkv, the form newer llama.cpp\n"
               "                 converters can write; dsocr loads either\n"
               "  Vision tower, embeddings, norms, routers and position tables stay 16/32-bit.\n");
}

/* ---- config keys ---- */

static void add_text_keys(GgufWriter *w, const char *A, const ModelConfig *c) {
    char k[128];
#define U(key, v) (snprintf(k, sizeof k, "%s." key, A), gguf_writer_u32(w, k, (uint32_t)(v)))
#define F(key, v) (snprintf(k, sizeof k, "%s." key, A), gguf_writer_f32(w, k, (float)(v)))
    U("context_length", c->max_position_embeddings);
    U("embedding_length", c->hidden_size);
    U("block_count", c->num_hidden_layers);
    U("feed_forward_length", c->intermediate_size);
    U("attention.head_count", c->num_attention_heads);
    U("attention.head_count_kv", c->num_key_value_heads);
    F("rope.freq_base", c->rope_theta);
    F("attention.layer_norm_rms_epsilon", c->rms_norm_eps);
    U("expert_used_count", c->num_experts_per_tok);
    U("leading_dense_block_count", c->first_k_dense_replace);
    U("vocab_size", c->vocab_size);
    U("expert_feed_forward_length", c->moe_intermediate_size);
    U("expert_count", c->n_routed_experts);
    U("expert_shared_count", c->n_shared_experts);
    F("expert_weights_scale", c->routed_scaling_factor);
    if (c->norm_topk_prob) (snprintf(k, sizeof k, "%s.expert_weights_norm", A), gguf_writer_bool(w, k, 1));
#undef U
#undef F
    gguf_writer_u32(w, "dsocr.moe_layer_freq", (uint32_t)c->moe_layer_freq);
}

static void add_vision_keys(GgufWriter *w, const ModelConfig *c) {
    const SamConfig *s = &c->sam;
    const ClipConfig *k = &c->clip;
    gguf_writer_str(w, "clip.projector_type", "deepseekocr");
    gguf_writer_bool(w, "clip.has_vision_encoder", 1);
    gguf_writer_bool(w, "clip.has_audio_encoder", 0);
    gguf_writer_bool(w, "clip.use_gelu", 1);
    gguf_writer_u32(w, "clip.vision.image_size", (uint32_t)k->image_size);
    gguf_writer_u32(w, "clip.vision.patch_size", (uint32_t)k->patch_size);
    gguf_writer_u32(w, "clip.vision.embedding_length", (uint32_t)k->width);
    gguf_writer_u32(w, "clip.vision.feed_forward_length", (uint32_t)k->mlp_dim);
    gguf_writer_u32(w, "clip.vision.projection_dim", (uint32_t)c->projector_n_embed);
    gguf_writer_u32(w, "clip.vision.block_count", (uint32_t)k->layers);
    gguf_writer_u32(w, "clip.vision.attention.head_count", (uint32_t)k->heads);
    gguf_writer_f32(w, "clip.vision.attention.layer_norm_epsilon", 1e-5f);
    const float mean[3] = {0.5f, 0.5f, 0.5f};
    gguf_writer_arr_f32(w, "clip.vision.image_mean", mean, 3);
    gguf_writer_arr_f32(w, "clip.vision.image_std", mean, 3);
    gguf_writer_u32(w, "clip.vision.window_size", (uint32_t)s->window_size);
    gguf_writer_u32(w, "clip.vision.sam.block_count", (uint32_t)s->layers);
    gguf_writer_u32(w, "clip.vision.sam.embedding_length", (uint32_t)s->width);
    gguf_writer_u32(w, "clip.vision.sam.head_count", (uint32_t)s->heads);
    /* what llama.cpp has no key for */
    gguf_writer_arr_i32(w, "dsocr.sam.global_attn_indexes", s->global_attn_indexes, (size_t)s->n_global);
    gguf_writer_arr_i32(w, "dsocr.sam.downsample_channels", s->downsample_channels, 2);
    gguf_writer_u32(w, "dsocr.sam.out_chans", (uint32_t)s->out_chans);
    gguf_writer_u32(w, "dsocr.sam.patch_size", (uint32_t)s->patch_size);
    gguf_writer_u32(w, "dsocr.sam.image_size", (uint32_t)s->image_size);
    gguf_writer_u32(w, "dsocr.sam.mlp_dim", (uint32_t)s->mlp_dim);
    gguf_writer_u32(w, "dsocr.clip.mlp_dim", (uint32_t)k->mlp_dim);
    gguf_writer_u32(w, "dsocr.projector.input_dim", (uint32_t)c->projector_input_dim);
    gguf_writer_u32(w, "dsocr.projector.n_embed", (uint32_t)c->projector_n_embed);
}

/* ---- tensors ---- */

/* One GGUF tensor: a model tensor, or E stacked expert tensors. */
typedef struct OutTensor {
    char gname[96];
    int file;             /* 0 text (or the single file), 1 mmproj */
    int first;            /* index into ck->expected of the tensor (expert 0 for stacks) */
    int part;             /* -1, or which third of the tensor's rows this is (0 q, 1 k, 2 v: --split-clip-qkv) */
    int n_exp;            /* 0, or the stack's expert count */
    char fmt[96];         /* stack: HF name with the expert index as %d */
    DsDtype dtype;
    int n_dims;
    int64_t ne[4];
} OutTensor;

/* llama.cpp's converter keeps these vision tensors F32 (tensor_force_quant); the llama layout follows it. */
static int llama_f32(const char *hf) {
    return strstr(hf, ".embeddings.") || strstr(hf, "pos_embed") || strstr(hf, ".rel_pos_") || strstr(hf, ".neck.") ||
           strstr(hf, ".net_");
}

typedef struct ErrStat {
    char name[96];
    double rel;
} ErrStat;

static int cmp_err(const void *a, const void *b) {
    double x = ((const ErrStat *)a)->rel, y = ((const ErrStat *)b)->rel;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Converts n elements (rows of K) of BF16 source into dtype dt at dst; accumulates error sums. */
static void convert(const StTensor *t, DsDtype dt, uint8_t *dst, float *row, double *num, double *den) {
    int64_t K = t->shape[t->ndim - 1];
    uint64_t rows = t->numel / (uint64_t)K;
    const uint16_t *s = (const uint16_t *)t->data;
    if (dt == DS_BF16) {
        memcpy(dst, s, t->numel * 2);
        return;
    }
    if (dt == DS_F32) {
        for (uint64_t i = 0; i < t->numel; i++) {
            float v = bf16_to_f32(s[i]);
            memcpy(dst + 4 * i, &v, 4);
        }
        return;
    }
    size_t rb = quant_row_bytes(dt, K);
    float *back = row + K;
    for (uint64_t r = 0; r < rows; r++) {
        for (int64_t k = 0; k < K; k++) row[k] = bf16_to_f32(s[r * (uint64_t)K + (uint64_t)k]);
        quant_row_ref(dt, dst + r * rb, row, K);
        dequant_row_ref(dt, back, dst + r * rb, K);
        for (int64_t k = 0; k < K; k++) {
            double d = (double)row[k] - back[k];
            *num += d * d;
            *den += (double)row[k] * row[k];
        }
    }
}

int cli_quantize(int argc, char **argv) {
    const char *model = NULL, *type = NULL, *out = NULL, *layout = "dsocr";
    int verbose = 0, split_qkv = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--verbose")) {
            verbose = 1;
            continue;
        }
        if (!strcmp(argv[i], "--split-clip-qkv")) {
            split_qkv = 1;
            continue;
        }
        const char **dst = !strcmp(argv[i], "--model") ? &model : !strcmp(argv[i], "--type") ? &type
                           : !strcmp(argv[i], "--out") ? &out : !strcmp(argv[i], "--layout") ? &layout : NULL;
        if (!dst || i + 1 >= argc) {
            fprintf(stderr, "dsocr quantize: %s '%s'\n", dst ? "missing value for" : "unknown option", argv[i]);
            usage(stderr);
            return 2;
        }
        *dst = argv[++i];
    }
    if (!model || !type || !out) {
        usage(stderr);
        return 2;
    }
    DsDtype target = !strcmp(type, "q8_0") ? DS_Q8_0 : !strcmp(type, "q4") ? DS_Q4_0
                     : !strcmp(type, "bf16") ? DS_BF16 : DS_DTYPE_UNKNOWN;
    int llama = !strcmp(layout, "llama");
    if (target == DS_DTYPE_UNKNOWN || (!llama && strcmp(layout, "dsocr"))) {
        fprintf(stderr, "dsocr quantize: --type must be q8_0, q4 or bf16 and --layout dsocr or llama\n");
        return 2;
    }
    if (split_qkv && !llama) {
        fprintf(stderr, "dsocr quantize: --split-clip-qkv writes llama.cpp's form and needs --layout llama\n");
        return 2;
    }
    char cfg_path[4096];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", model);
    if (access(cfg_path, R_OK) != 0) {
        fprintf(stderr, "dsocr quantize: %s: not a safetensors model folder (no config.json)\n", model);
        return 1;
    }
    Checkpoint ck;
    DsError e = {0};
    if (checkpoint_open(model, NULL, &ck, &e)) {
        fprintf(stderr, "dsocr quantize: %s\n", e.msg);
        return 1;
    }
    const ModelConfig *c = &ck.config;
    int rc = 1;
    GgufWriter *w[2] = {gguf_writer_new(), llama ? gguf_writer_new() : NULL};
    OutTensor *ot = calloc(3 * (size_t)ck.n_tensors + 1, sizeof *ot); /* at most 3 per tensor (split q/k/v) */
    ErrStat *es = calloc(3 * (size_t)ck.n_tensors + 1, sizeof *es);
    FILE *fp[2] = {NULL, NULL};
    char path[2][4096], tmp[2][4200];
    uint8_t *buf = NULL;
    float *row = NULL;
    int n_ot = 0, n_es = 0;
    if (!w[0] || (llama && !w[1]) || !ot || !es) {
        fprintf(stderr, "dsocr quantize: out of memory\n");
        goto done;
    }
    snprintf(path[0], sizeof path[0], "%s", out);
    if (llama) {
        const char *slash = strrchr(out, '/');
        if (slash)
            snprintf(path[1], sizeof path[1], "%.*s/mmproj-%s", (int)(slash - out), out, slash + 1);
        else
            snprintf(path[1], sizeof path[1], "mmproj-%s", out);
    }
    /* metadata */
    int ftype = target == DS_Q8_0 ? 7 : target == DS_Q4_0 ? 2 : 32; /* llama_ftype: MOSTLY_Q8_0, MOSTLY_Q4_0, MOSTLY_BF16 */
    const char *arch = llama ? "deepseek2-ocr" : "dsocr";
    gguf_writer_str(w[0], "general.architecture", arch);
    gguf_writer_str(w[0], "general.name", "DeepSeek-OCR");
    gguf_writer_u32(w[0], "general.alignment", GGUF_DEFAULT_ALIGNMENT);
    gguf_writer_u32(w[0], "general.file_type", (uint32_t)ftype);
    gguf_writer_u32(w[0], "general.quantization_version", 2);
    add_text_keys(w[0], arch, c);
    char tokp[4096];
    snprintf(tokp, sizeof tokp, "%s/tokenizer.json", model);
    if (tokenizer_json_to_gguf(tokp, c->vocab_size, c->bos_token_id, c->eos_token_id, 1, w[0], &e)) {
        fprintf(stderr, "dsocr quantize: %s\n", e.msg);
        goto done;
    }
    GgufWriter *wv = llama ? w[1] : w[0];
    if (llama) {
        gguf_writer_str(wv, "general.architecture", "clip");
        gguf_writer_str(wv, "general.type", "mmproj");
        gguf_writer_str(wv, "general.name", "DeepSeek-OCR");
        gguf_writer_u32(wv, "general.alignment", GGUF_DEFAULT_ALIGNMENT);
        gguf_writer_u32(wv, "general.file_type", 32);
    }
    add_vision_keys(wv, c);
    /* tensor list */
    size_t max_bytes = 0;
    int64_t max_k = 0;
    for (int i = 0; i < ck.n_tensors; i++) {
        const CkExpected *x = &ck.expected[i];
        char g[96];
        int expert, mm;
        if (!checkpoint_gguf_name(x->name, g, sizeof g, &expert, &mm)) {
            fprintf(stderr, "dsocr quantize: no GGUF name for %s\n", x->name);
            goto done;
        }
        int dup = 0;
        for (int j = 0; expert >= 0 && j < n_ot && !dup; j++) dup = !strcmp(ot[j].gname, g);
        if (dup) continue;
        char pn[3][GGUF_MAX_NAME];
        int n_split = split_qkv && checkpoint_gguf_split(g, pn) ? 3 : 1;
        for (int p = 0; p < n_split; p++) {
            OutTensor *o = &ot[n_ot++];
            snprintf(o->gname, sizeof o->gname, "%s", n_split > 1 ? pn[p] : g);
            o->file = llama && mm;
            o->first = i;
            o->part = n_split > 1 ? p : -1;
            o->dtype = quant_choose(x->name, x->ndim, x->shape, target);
            if (o->dtype == DS_BF16 && llama && llama_f32(x->name)) o->dtype = DS_F32;
            o->n_dims = x->ndim;
            for (int d = 0; d < x->ndim; d++) o->ne[d] = x->shape[x->ndim - 1 - d];
            o->ne[o->n_dims - 1] /= n_split; /* a part: a third of the rows */
            if (llama && !strcmp(x->name, "model.view_seperator")) o->ne[o->n_dims++] = 1; /* llama.cpp: [1, n_embd] */
            if (expert >= 0) {
                o->n_exp = c->n_routed_experts;
                o->ne[o->n_dims++] = o->n_exp;
                const char *pe = strstr(x->name, ".experts.");
                const char *q = pe ? strchr(pe + 9, '.') : NULL;
                snprintf(o->fmt, sizeof o->fmt, "%.*s.experts.%%d%s", (int)(pe - x->name), x->name, q ? q : "");
            }
            gguf_writer_tensor(llama && mm ? w[1] : w[0], o->gname, o->dtype, o->n_dims, o->ne);
        }
        int64_t k = x->shape[x->ndim - 1];
        if (k > max_k) max_k = k;
    }
    for (int f = 0; f < (llama ? 2 : 1); f++) {
        snprintf(tmp[f], sizeof tmp[f], "%s.tmp%d", path[f], (int)getpid());
        if (!(fp[f] = fopen(tmp[f], "wb"))) {
            fprintf(stderr, "dsocr quantize: cannot create %s: %s\n", tmp[f], strerror(errno));
            goto done;
        }
        if (gguf_writer_write_header(w[f], fp[f], &e)) {
            fprintf(stderr, "dsocr quantize: %s: %s\n", path[f], e.msg);
            goto done;
        }
    }
    /* data, one tensor at a time */
    int idx[2] = {0, 0};
    uint64_t bytes_in = 0, bytes_out = 0;
    int n_quant = 0;
    double sum_rel = 0;
    row = malloc(sizeof *row * (size_t)(2 * max_k + 2));
    if (!row) goto oom;
    for (int j = 0; j < n_ot; j++) {
        OutTensor *o = &ot[j];
        GgufWriter *wf = o->file ? w[1] : w[0];
        size_t nb = gguf_writer_tensor_bytes(wf, idx[o->file]);
        if (nb > max_bytes) {
            uint8_t *nbuf = realloc(buf, nb);
            if (!nbuf) goto oom;
            buf = nbuf;
            max_bytes = nb;
        }
        double num = 0, den = 0;
        int parts = o->n_exp ? o->n_exp : 1;
        size_t off = 0;
        for (int x = 0; x < parts; x++) {
            const StTensor *t;
            if (o->n_exp) {
                char hn[128];
                snprintf(hn, sizeof hn, o->fmt, x);
                t = checkpoint_get(&ck, hn);
            } else {
                t = checkpoint_get(&ck, ck.expected[o->first].name);
            }
            DS_ASSERT(t && t->dtype == DS_BF16);
            StTensor third;
            if (o->part >= 0) { /* rows [part·R/3, (part+1)·R/3) of t: a view of the same bf16 bytes */
                third = *t;
                third.shape[0] /= 3;
                third.numel /= 3;
                third.data = t->data + (size_t)o->part * third.numel * 2;
                t = &third;
            }
            bytes_in += t->numel * 2;
            convert(t, o->dtype, buf + off, row, &num, &den);
            off += nb / (size_t)parts;
        }
        if (gguf_writer_write_data(wf, fp[o->file], idx[o->file]++, buf, nb, &e)) {
            fprintf(stderr, "dsocr quantize: %s\n", e.msg);
            goto done;
        }
        bytes_out += nb;
        if (quant_is_block(o->dtype)) {
            double rel = den > 0 ? sqrt(num / den) : 0;
            snprintf(es[n_es].name, sizeof es[n_es].name, "%s", o->gname);
            es[n_es++].rel = rel;
            sum_rel += rel;
            n_quant++;
            if (verbose) printf("%-40s %-5s rel. error %.3e\n", o->gname, ds_dtype_name(o->dtype), rel);
        }
    }
    for (int f = 0; f < (llama ? 2 : 1); f++) {
        int bad = fclose(fp[f]) != 0;
        fp[f] = NULL;
        if (bad || rename(tmp[f], path[f]) != 0) {
            fprintf(stderr, "dsocr quantize: cannot write %s: %s\n", path[f], strerror(errno));
            goto done;
        }
    }
    printf("wrote %s%s%s: %d tensors, %.1f MiB (from %.1f MiB bf16), type %s\n", path[0], llama ? " and " : "",
           llama ? path[1] : "", n_ot, bytes_out / 1048576.0, bytes_in / 1048576.0, type);
    if (n_quant) {
        qsort(es, (size_t)n_es, sizeof *es, cmp_err);
        printf("%d quantised tensors, relative error ||w - dq(q(w))|| / ||w||: mean %.3e, worst:\n", n_quant,
               sum_rel / n_quant);
        for (int i = 0; i < n_es && i < 5; i++) printf("  %-40s %.3e\n", es[i].name, es[i].rel);
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "dsocr quantize: out of memory\n");
done:
    for (int f = 0; f < 2; f++)
        if (fp[f]) {
            fclose(fp[f]);
            unlink(tmp[f]);
        }
    free(buf);
    free(row);
    free(ot);
    free(es);
    gguf_writer_free(w[0]);
    gguf_writer_free(w[1]);
    checkpoint_close(&ck);
    return rc;
}
