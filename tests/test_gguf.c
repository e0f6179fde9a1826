/* test_gguf.c: the GGUF reader and writer: round trips of metadata and tensors of every supported type, the
 * alignment, and malformed files (each refused with a message naming the problem, never a crash: every prefix of
 * a valid file, hostile counts, lengths, types, dims, offsets, names). Also the HF <-> llama.cpp name map and
 * its split CLIP attention names. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "checkpoint.h"
#include "gguf.h"
#include "quant.h"

/* ---- a byte builder for hand-made files ---- */

typedef struct B {
    uint8_t p[8192];
    size_t n;
} B;
static void b_raw(B *b, const void *s, size_t n) {
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void b_u32(B *b, uint32_t v) {
    for (int i = 0; i < 4; i++) b->p[b->n++] = (uint8_t)(v >> (8 * i));
}
static void b_u64(B *b, uint64_t v) {
    for (int i = 0; i < 8; i++) b->p[b->n++] = (uint8_t)(v >> (8 * i));
}
static void b_str(B *b, const char *s) {
    b_u64(b, strlen(s));
    b_raw(b, s, strlen(s));
}
static void b_head(B *b, uint64_t nt, uint64_t nkv) {
    b->n = 0;
    b_raw(b, "GGUF", 4);
    b_u32(b, 3);
    b_u64(b, nt);
    b_u64(b, nkv);
}
static void b_tinfo(B *b, const char *name, uint32_t nd, const uint64_t *ne, uint32_t type, uint64_t off) {
    b_str(b, name);
    b_u32(b, nd);
    for (uint32_t i = 0; i < nd; i++) b_u64(b, ne[i]);
    b_u32(b, type);
    b_u64(b, off);
}
static void b_pad(B *b, size_t a) {
    while (b->n % a) b->p[b->n++] = 0;
}

/* Parses b and expects failure with a message containing `needle`. */
#define BAD(b, needle)                                                                                        \
    do {                                                                                                      \
        GgufFile f_;                                                                                          \
        DsError e_ = {0};                                                                                     \
        DsocrStatus st_ = gguf_parse((b)->p, (b)->n, "t.gguf", &f_, &e_);                                     \
        CHECKF(st_ != DSOCR_OK, "accepted (%s)", needle);                                                     \
        if (st_ == DSOCR_OK) gguf_close(&f_);                                                                 \
        else                                                                                                  \
            CHECKF(strstr(e_.msg, needle) != NULL, "message '%s' lacks '%s'", e_.msg, needle);                \
    } while (0)

/* ---- writer -> reader ---- */

static uint8_t *write_sample(size_t *n, uint32_t align) {
    GgufWriter *w = gguf_writer_new();
    if (align) gguf_writer_u32(w, "general.alignment", align);
    gguf_writer_str(w, "general.architecture", "dsocr");
    gguf_writer_i32(w, "k.i32", -7);
    gguf_writer_f32(w, "k.f32", 1.5f);
    gguf_writer_bool(w, "k.bool", 1);
    const int32_t ia[3] = {3, -1, 9};
    gguf_writer_arr_i32(w, "k.arr", ia, 3);
    const char *sa[3] = {"a b", "", "\xc4\xa0x"};
    gguf_writer_arr_str(w, "k.strs", sa, NULL, 3);
    const int64_t ne_f32[2] = {3, 2}, ne_bf16[1] = {5}, ne_q8[2] = {64, 3}, ne_q4[3] = {32, 2, 2}, ne_f16[1] = {1};
    gguf_writer_tensor(w, "t.f32", DS_F32, 2, ne_f32);
    gguf_writer_tensor(w, "t.bf16", DS_BF16, 1, ne_bf16);
    gguf_writer_tensor(w, "t.q8", DS_Q8_0, 2, ne_q8);
    gguf_writer_tensor(w, "t.q4", DS_Q4_0, 3, ne_q4);
    gguf_writer_tensor(w, "t.f16", DS_F16, 1, ne_f16);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    DsError e = {0};
    int ok = gguf_writer_write_header(w, f, &e) == DSOCR_OK;
    for (int i = 0; ok && i < 5; i++) {
        size_t nb = gguf_writer_tensor_bytes(w, i);
        uint8_t *d = malloc(nb);
        for (size_t k = 0; k < nb; k++) d[k] = (uint8_t)(i * 31 + k);
        ok = gguf_writer_write_data(w, f, i, d, nb, &e) == DSOCR_OK;
        free(d);
    }
    fclose(f);
    gguf_writer_free(w);
    if (!ok) {
        fprintf(stderr, "write_sample: %s\n", e.msg);
        free(buf);
        return NULL;
    }
    *n = len;
    return (uint8_t *)buf;
}

static void test_round_trip(void) {
    for (int ai = 0; ai < 2; ai++) {
        uint32_t align = ai ? 64 : 0;
        size_t n;
        uint8_t *buf = write_sample(&n, align);
        REQUIRE(buf);
        GgufFile f;
        DsError e = {0};
        REQUIRE(gguf_parse(buf, n, "mem", &f, &e) == DSOCR_OK);
        CHECK(f.alignment == (align ? align : 32));
        CHECK(f.n_tensors == 5 && f.n_kv == (align ? 7 : 6));
        int found;
        int64_t i;
        double d;
        int bv;
        GgufStr s;
        CHECK(gguf_get_i64(&f, "k.i32", &found, &i, &e) == DSOCR_OK && found && i == -7);
        CHECK(gguf_get_f64(&f, "k.f32", &found, &d, &e) == DSOCR_OK && found && d == 1.5);
        CHECK(gguf_get_bool(&f, "k.bool", &found, &bv, &e) == DSOCR_OK && found && bv == 1);
        CHECK(gguf_get_str(&f, "general.architecture", &found, &s, &e) == DSOCR_OK && s.n == 5 && !memcmp(s.s, "dsocr", 5));
        CHECK(gguf_get_i64(&f, "nope", &found, &i, &e) == DSOCR_OK && !found);
        CHECK(gguf_get_i64(&f, "k.f32", &found, &i, &e) == DSOCR_E_FORMAT);
        CHECK_STR_CONTAINS(e.msg, "k.f32");
        const GgufKv *a = gguf_find_kv(&f, "k.arr");
        CHECK(a && a->arr_n == 3 && gguf_arr_i64(a, 1) == -1 && gguf_arr_i64(a, 2) == 9);
        const GgufKv *sa = gguf_find_kv(&f, "k.strs");
        uint64_t pos = 0;
        GgufStr s0 = gguf_arr_str_next(sa, &pos), s1 = gguf_arr_str_next(sa, &pos), s2 = gguf_arr_str_next(sa, &pos);
        CHECK(s0.n == 3 && !memcmp(s0.s, "a b", 3) && s1.n == 0 && s2.n == 3);
        const GgufTensor *q8 = gguf_find_tensor(&f, "t.q8"), *q4 = gguf_find_tensor(&f, "t.q4");
        REQUIRE(q8 && q4);
        CHECK(q8->dtype == DS_Q8_0 && q8->nbytes == 3 * 2 * 34 && q8->ne[0] == 64 && q8->ne[1] == 3);
        CHECK(q4->dtype == DS_Q4_0 && q4->n_dims == 3 && q4->nbytes == 4 * 18);
        for (int64_t k = 0; k < f.n_tensors; k++) {
            const GgufTensor *t = &f.tensors[k];
            CHECK((uint64_t)(t->data - f.data) % f.alignment == 0);
            CHECK(t->data[0] == (uint8_t)(k * 31)); /* each tensor's bytes where the writer put them */
        }
        CHECK(gguf_find_tensor(&f, "t.f16")->dtype == DS_F16 && gguf_find_tensor(&f, "t.bf16")->nbytes == 10);
        CHECK(gguf_find_tensor(&f, "t.none") == NULL);
        gguf_close(&f);
        free(buf);
    }
}

static void test_every_prefix_refused(void) {
    size_t n;
    uint8_t *buf = write_sample(&n, 0);
    REQUIRE(buf);
    int accepted = 0;
    for (size_t k = 0; k < n; k++) {
        uint8_t *c = malloc(k ? k : 1); /* exact-size copy: ASan sees any read past it */
        memcpy(c, buf, k);
        GgufFile f;
        DsError e = {0};
        if (gguf_parse(c, k, "cut", &f, &e) == DSOCR_OK) {
            accepted++;
            gguf_close(&f);
        } else if (!e.msg[0]) {
            CHECKF(0, "prefix %zu: no message", k);
        }
        free(c);
    }
    /* only the tail padding of the last tensor may be cut (the last tensor's bytes are 2 of 32) */
    CHECKF(accepted <= 30, "%d prefixes accepted", accepted);
    free(buf);
}

static void test_writer_refuses(void) {
    GgufWriter *w = gguf_writer_new();
    const int64_t ne[2] = {33, 1};
    gguf_writer_tensor(w, "q", DS_Q8_0, 2, ne);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    DsError e = {0};
    CHECK(gguf_writer_write_header(w, f, &e) == DSOCR_E_INVALID_ARG);
    CHECK_STR_CONTAINS(e.msg, "multiple of 32");
    gguf_writer_free(w);
    w = gguf_writer_new();
    char longname[80];
    memset(longname, 'x', 79);
    longname[79] = 0;
    gguf_writer_tensor(w, longname, DS_F32, 1, ne);
    CHECK(gguf_writer_write_header(w, f, &e) == DSOCR_E_INVALID_ARG);
    CHECK_STR_CONTAINS(e.msg, "name");
    gguf_writer_free(w);
    w = gguf_writer_new();
    gguf_writer_u32(w, "general.alignment", 24);
    CHECK(gguf_writer_write_header(w, f, &e) == DSOCR_E_INVALID_ARG);
    gguf_writer_free(w);
    fclose(f);
    free(buf);
}

static void test_malformed(void) {
    B b;
    const uint64_t ne1[1] = {4}, ne_q[2] = {33, 1};
    b_head(&b, 0, 0);
    b.p[0] = 'X';
    BAD(&b, "magic");
    b_head(&b, 0, 0);
    b.p[4] = 2;
    BAD(&b, "version 2");
    b_head(&b, 1u << 30, 0);
    BAD(&b, "tensor count");
    b_head(&b, 0, UINT64_MAX);
    BAD(&b, "key/value count");
    /* a string length past the end */
    b_head(&b, 0, 1);
    b_u64(&b, 1000);
    BAD(&b, "runs past the end");
    /* unknown value type */
    b_head(&b, 0, 1);
    b_str(&b, "k");
    b_u32(&b, 13);
    BAD(&b, "unknown value type");
    /* nested array */
    b_head(&b, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_T_ARRAY);
    b_u32(&b, GGUF_T_ARRAY);
    b_u64(&b, 1);
    BAD(&b, "arrays of arrays");
    /* array count that cannot fit */
    b_head(&b, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_T_ARRAY);
    b_u32(&b, GGUF_T_U64);
    b_u64(&b, UINT64_MAX / 4);
    BAD(&b, "runs past the end");
    b_head(&b, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_T_ARRAY);
    b_u32(&b, GGUF_T_STRING);
    b_u64(&b, 1u << 30);
    BAD(&b, "cannot fit");
    /* bool that is not 0/1 */
    b_head(&b, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_T_BOOL);
    b.p[b.n++] = 2;
    BAD(&b, "bool");
    /* duplicate key */
    b_head(&b, 0, 2);
    for (int i = 0; i < 2; i++) {
        b_str(&b, "k");
        b_u32(&b, GGUF_T_U8);
        b.p[b.n++] = 1;
    }
    BAD(&b, "appears twice");
    /* empty key */
    b_head(&b, 0, 1);
    b_str(&b, "");
    b_u32(&b, GGUF_T_U8);
    b.p[b.n++] = 1;
    BAD(&b, "length 0");
    /* alignment: wrong type, zero, not a power of two */
    uint32_t bad_al[3] = {0, 3, 48};
    for (int i = 0; i < 3; i++) {
        b_head(&b, 0, 1);
        b_str(&b, "general.alignment");
        b_u32(&b, GGUF_T_U32);
        b_u32(&b, bad_al[i]);
        BAD(&b, "power of two");
    }
    b_head(&b, 0, 1);
    b_str(&b, "general.alignment");
    b_u32(&b, GGUF_T_U64);
    b_u64(&b, 32);
    BAD(&b, "must be u32");
    /* tensor infos */
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 5, (const uint64_t[]){1, 1, 1, 1, 1}, 0, 0);
    BAD(&b, "5 dims");
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 0, ne1, 0, 0);
    BAD(&b, "0 dims");
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 2, (const uint64_t[]){1ull << 40, 1ull << 40}, 0, 0);
    BAD(&b, "overflows");
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 1, (const uint64_t[]){UINT64_MAX}, 0, 0);
    BAD(&b, "negative");
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 1, ne1, 12, 0);
    BAD(&b, "Q4_K");
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 1, ne1, 999, 0);
    BAD(&b, "ggml type 999");
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 2, ne_q, GGML_TYPE_Q8_0, 0);
    BAD(&b, "multiple of 32");
    char longname[80];
    memset(longname, 'n', 70);
    longname[70] = 0;
    b_head(&b, 1, 0);
    b_tinfo(&b, longname, 1, ne1, 0, 0);
    BAD(&b, "name of 70 bytes");
    /* offsets: misaligned, past the end, overlapping; duplicate names */
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 1, ne1, 0, 4);
    b_pad(&b, 32);
    memset(b.p + b.n, 0, 64);
    b.n += 64;
    BAD(&b, "not a multiple of the alignment");
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 1, ne1, 0, 0);
    b_pad(&b, 32);
    b.n += 8; /* 8 of the 16 bytes */
    BAD(&b, "runs past the end of the data section");
    b_head(&b, 1, 0);
    b_tinfo(&b, "t", 1, ne1, 0, 1ull << 62);
    b_pad(&b, 32);
    BAD(&b, "runs past the end of the data section");
    b_head(&b, 2, 0);
    b_tinfo(&b, "a", 1, (const uint64_t[]){16}, 0, 0);
    b_tinfo(&b, "b", 1, ne1, 0, 32);
    b_pad(&b, 32);
    memset(b.p + b.n, 0, 128);
    b.n += 128;
    BAD(&b, "overlap");
    b_head(&b, 2, 0);
    b_tinfo(&b, "a", 1, ne1, 0, 0);
    b_tinfo(&b, "a", 1, ne1, 0, 32);
    b_pad(&b, 32);
    memset(b.p + b.n, 0, 64);
    b.n += 64;
    BAD(&b, "appears twice");
    /* and a good hand-made file is accepted */
    b_head(&b, 1, 1);
    b_str(&b, "general.alignment");
    b_u32(&b, GGUF_T_U32);
    b_u32(&b, 16);
    b_tinfo(&b, "t", 1, ne1, 0, 0);
    b_pad(&b, 16);
    memset(b.p + b.n, 0, 16);
    b.n += 16;
    GgufFile f;
    DsError e = {0};
    CHECKF(gguf_parse(b.p, b.n, "ok", &f, &e) == DSOCR_OK, "%s", e.msg);
    gguf_close(&f);
}

static void test_names(void) {
    char g[96];
    int x, mm;
    CHECK(checkpoint_gguf_name("model.layers.2.mlp.experts.17.down_proj.weight", g, sizeof g, &x, &mm) && x == 17 &&
          !mm && !strcmp(g, "blk.2.ffn_down_exps.weight"));
    CHECK(checkpoint_gguf_name("model.sam_model.blocks.11.attn.rel_pos_h", g, sizeof g, &x, &mm) && x == -1 && mm &&
          !strcmp(g, "v.sam.blk.11.attn.pos_h.weight"));
    CHECK(checkpoint_gguf_name("model.vision_model.transformer.layers.23.self_attn.qkv_proj.weight", g, sizeof g, &x,
                               &mm) && !strcmp(g, "v.blk.23.attn_qkv.weight"));
    CHECK(checkpoint_gguf_name("model.projector.layers.weight", g, sizeof g, &x, &mm) && mm &&
          !strcmp(g, "mm.model.fc.weight"));
    CHECK(checkpoint_gguf_name("lm_head.weight", g, sizeof g, &x, &mm) && !mm && !strcmp(g, "output.weight"));
    CHECK(!checkpoint_gguf_name("model.layers.01.mlp.gate.weight", g, sizeof g, &x, &mm)); /* not canonical */
    CHECK(!checkpoint_gguf_name("model.layers.1.mlp.gate.weightx", g, sizeof g, &x, &mm));
    CHECK(!checkpoint_gguf_name("something.else", g, sizeof g, &x, &mm));
    /* llama.cpp's split CLIP attention: the fused name's parts, q, k, v */
    char parts[3][GGUF_MAX_NAME];
    CHECK(checkpoint_gguf_split("v.blk.23.attn_qkv.weight", parts) && !strcmp(parts[0], "v.blk.23.attn_q.weight") &&
          !strcmp(parts[1], "v.blk.23.attn_k.weight") && !strcmp(parts[2], "v.blk.23.attn_v.weight"));
    CHECK(checkpoint_gguf_split("v.blk.0.attn_qkv.bias", parts) && !strcmp(parts[0], "v.blk.0.attn_q.bias") &&
          !strcmp(parts[2], "v.blk.0.attn_v.bias"));
    CHECK(!checkpoint_gguf_split("v.sam.blk.0.attn.qkv.weight", parts)); /* SAM's qkv is never split */
    CHECK(!checkpoint_gguf_split("v.blk.01.attn_qkv.weight", parts));
    CHECK(!checkpoint_gguf_split("v.blk.0.attn_q.weight", parts));
    CHECK(!checkpoint_gguf_split("blk.0.attn_q.weight", parts));
    /* every tensor of the official config has a distinct name under GGUF's 64-byte limit */
    ModelConfig c;
    DsError e = {0};
    REQUIRE(config_parse("{}", 2, "defaults", &c, &e) == DSOCR_OK);
    CkExpected *ex;
    int n;
    REQUIRE(checkpoint_expected(&c, &ex, &n, &e) == DSOCR_OK);
    int bad = 0, n_split = 0;
    for (int i = 0; i < n; i++) {
        if (!checkpoint_gguf_name(ex[i].name, g, sizeof g, &x, &mm) || strlen(g) >= GGUF_MAX_NAME) bad++;
        if (checkpoint_gguf_split(g, parts)) {
            n_split++; /* only CLIP's qkv_proj, 3·W rows */
            CHECK(strstr(ex[i].name, ".self_attn.qkv_proj.") && ex[i].shape[0] == 3 * c.clip.width);
            for (int p = 0; p < 3; p++) CHECK(strlen(parts[p]) < GGUF_MAX_NAME - 1);
        }
    }
    CHECKF(bad == 0, "%d of %d names unmapped or too long", bad, n);
    CHECKF(n_split == 2 * c.clip.layers, "%d splittable tensors", n_split);
    free(ex);
}

static void test_quant_choose(void) {
    const int64_t s2[2] = {896, 1280}, odd[2] = {896, 1000}, s1[1] = {1280};
    CHECK(quant_choose("model.layers.1.mlp.experts.3.up_proj.weight", 2, s2, DS_Q4_0) == DS_Q4_0);
    CHECK(quant_choose("model.layers.1.mlp.experts.3.up_proj.weight", 2, s2, DS_Q8_0) == DS_Q8_0);
    CHECK(quant_choose("model.layers.1.mlp.shared_experts.up_proj.weight", 2, s2, DS_Q4_0) == DS_Q8_0);
    CHECK(quant_choose("model.layers.0.self_attn.q_proj.weight", 2, s2, DS_Q4_0) == DS_Q8_0);
    CHECK(quant_choose("lm_head.weight", 2, s2, DS_Q8_0) == DS_Q8_0);
    CHECK(quant_choose("model.layers.1.mlp.gate.weight", 2, s2, DS_Q8_0) == DS_BF16); /* router */
    CHECK(quant_choose("model.embed_tokens.weight", 2, s2, DS_Q8_0) == DS_BF16);
    CHECK(quant_choose("model.layers.0.input_layernorm.weight", 1, s1, DS_Q8_0) == DS_BF16);
    CHECK(quant_choose("model.sam_model.blocks.0.attn.qkv.weight", 2, s2, DS_Q8_0) == DS_BF16);
    CHECK(quant_choose("model.layers.0.self_attn.q_proj.weight", 2, odd, DS_Q8_0) == DS_BF16);
    CHECK(quant_choose("model.layers.0.self_attn.q_proj.weight", 2, s2, DS_BF16) == DS_BF16);
}

int main(void) {
    RUN(test_round_trip);
    RUN(test_every_prefix_refused);
    RUN(test_writer_refuses);
    RUN(test_malformed);
    RUN(test_names);
    RUN(test_quant_choose);
    return check_summary();
}
