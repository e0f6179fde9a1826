/* test_checkpoint.c: safetensors parsing, config parsing, checkpoint validation (positive and negative
 * fixtures), the fp32 -> bf16 cache, and the official tensor list and totals. */
#include <cjson/cJSON.h>

#include "check.h"
#include "ckpt_fixture.h"

/* ---- safetensors parser on hand-made byte strings ---- */

static size_t make_st(uint8_t *buf, size_t cap, const char *header, size_t data_bytes, uint64_t claimed_len) {
    size_t hl = strlen(header);
    uint64_t L = claimed_len ? claimed_len : hl;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(L >> (8 * i));
    memcpy(buf + 8, header, hl);
    memset(buf + 8 + hl, 0x3f, data_bytes);
    (void)cap;
    return 8 + hl + data_bytes;
}

static DsError parse_err(const char *header, size_t data_bytes, uint64_t claimed, size_t cut) {
    static uint8_t buf[1 << 16];
    size_t n = make_st(buf, sizeof buf, header, data_bytes, claimed);
    if (cut) n = cut;
    StFile f;
    DsError e = {0};
    if (safetensors_parse(buf, n, "t.safetensors", &f, &e) == DSOCR_OK) {
        safetensors_close(&f);
        e.code = DSOCR_OK;
        strcpy(e.msg, "(accepted)");
    }
    return e;
}

static void test_st_good(void) {
    uint8_t buf[4096];
    const char *h = "{\"__metadata__\":{\"format\":\"pt\"},\"b\":{\"dtype\":\"BF16\",\"shape\":[2,3],"
                    "\"data_offsets\":[8,20]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"empty\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}";
    size_t n = make_st(buf, sizeof buf, h, 20, 0);
    StFile f;
    DsError e = {0};
    REQUIRE(safetensors_parse(buf, n, "x", &f, &e) == DSOCR_OK);
    CHECK(f.n_tensors == 3);
    const StTensor *a = safetensors_find(&f, "a"), *b = safetensors_find(&f, "b");
    REQUIRE(a && b);
    CHECK(a->dtype == DS_F32 && a->numel == 2 && a->data == f.data);
    CHECK(b->dtype == DS_BF16 && b->ndim == 2 && b->shape[1] == 3 && b->data == f.data + 8);
    CHECK(!safetensors_find(&f, "c"));
    CHECK_STR_CONTAINS(f.metadata_json, "\"format\":\"pt\"");
    safetensors_close(&f);
}

static void test_st_corrupt(void) {
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    DsError e;
    e = parse_err(ok, 8, 0, 5); /* truncated below 8 bytes */
    CHECK(e.code == DSOCR_E_FORMAT);
    CHECK_STR_CONTAINS(e.msg, "too short");
    e = parse_err(ok, 8, 1000000, 0); /* header length larger than the file */
    CHECK(e.code == DSOCR_E_FORMAT);
    CHECK_STR_CONTAINS(e.msg, "larger than the file");
    e = parse_err(ok, 4, 0, 0); /* data truncated: offsets out of range */
    CHECK(e.code == DSOCR_E_FORMAT);
    CHECK_STR_CONTAINS(e.msg, "out of range");
    CHECK_STR_CONTAINS(e.msg, "'a'");
    e = parse_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  12, 0, 0);
    CHECK(e.code == DSOCR_E_FORMAT);
    CHECK_STR_CONTAINS(e.msg, "overlap");
    e = parse_err("{\"a\":{\"dtype\":\"Q9\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 0, 0);
    CHECK_STR_CONTAINS(e.msg, "unknown dtype");
    e = parse_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, 0, 0);
    CHECK_STR_CONTAINS(e.msg, "need 12");
    e = parse_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]", 8, 0, 0);
    CHECK(e.code == DSOCR_E_FORMAT);
    CHECK_STR_CONTAINS(e.msg, "not valid JSON");
    e = parse_err("[1,2,3]", 0, 0, 0);
    CHECK_STR_CONTAINS(e.msg, "not an object");
    e = parse_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, 0, 0);
    CHECK_STR_CONTAINS(e.msg, "shape[0]");
    e = parse_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, 0, 0);
    CHECK_STR_CONTAINS(e.msg, "end before begin");
    e = parse_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                  16, 0, 0);
    CHECK_STR_CONTAINS(e.msg, "twice");
    e = parse_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                  "\"data_offsets\":[0,8]}}",
                  8, 0, 0);
    CHECK(e.code == DSOCR_E_FORMAT);
}

/* ---- config ---- */

static void test_config_official(void) {
    ModelConfig c;
    DsError e = {0};
    REQUIRE(config_load("data/model/config.json", &c, &e) == DSOCR_OK);
    CHECK(c.hidden_size == 1280 && c.num_hidden_layers == 12 && c.head_dim == 128);
    CHECK(c.n_routed_experts == 64 && c.num_experts_per_tok == 6 && c.moe_intermediate_size == 896);
    CHECK(c.rms_norm_eps == 1e-6 && c.rope_theta == 10000.0 && c.norm_topk_prob == 0);
    CHECK(c.sam.width == 768 && c.sam.layers == 12 && c.sam.window_size == 14 && c.sam.out_chans == 256);
    CHECK(c.sam.n_global == 4 && c.sam.global_attn_indexes[3] == 11 && c.sam.mlp_dim == 3072);
    CHECK(c.clip.width == 1024 && c.clip.layers == 24 && c.clip.mlp_dim == 4096);
    CHECK(c.projector_input_dim == 2048 && c.projector_n_embed == 1280);
    CHECK(!config_layer_is_moe(&c, 0) && config_layer_is_moe(&c, 1) && config_layer_is_moe(&c, 11));
}

/* A save_pretrained re-serialisation: every default written out, nulls, float32 torch_dtype. */
static void test_config_save_pretrained(void) {
    const char *txt =
        "{\"model_type\":\"DeepseekOCR\",\"torch_dtype\":\"float32\",\"aux_loss_alpha\":0.001,"
        "\"attention_bias\":false,\"attention_dropout\":0.0,\"bos_token_id\":0,\"eos_token_id\":1,"
        "\"ep_size\":1,\"first_k_dense_replace\":1,\"hidden_act\":\"silu\",\"hidden_size\":1280,"
        "\"initializer_range\":0.02,\"intermediate_size\":6848,\"kv_lora_rank\":null,"
        "\"max_position_embeddings\":8192,\"moe_intermediate_size\":896,\"moe_layer_freq\":1,"
        "\"n_group\":1,\"n_routed_experts\":64,\"n_shared_experts\":2,\"norm_topk_prob\":false,"
        "\"num_attention_heads\":10,\"num_experts_per_tok\":6,\"num_hidden_layers\":12,"
        "\"num_key_value_heads\":10,\"pretraining_tp\":1,\"q_lora_rank\":null,\"qk_nope_head_dim\":0,"
        "\"qk_rope_head_dim\":0,\"rms_norm_eps\":1e-06,\"rope_scaling\":null,\"rope_theta\":10000.0,"
        "\"routed_scaling_factor\":1.0,\"scoring_func\":\"softmax\",\"seq_aux\":true,"
        "\"tie_word_embeddings\":false,\"topk_group\":1,\"topk_method\":\"greedy\",\"use_cache\":true,"
        "\"use_mla\":false,\"v_head_dim\":0,\"vocab_size\":129280,\"pad_token_id\":null,"
        "\"language_config\":{\"hidden_size\":1280,\"vocab_size\":129280},"
        "\"projector_config\":{\"input_dim\":2048,\"n_embed\":1280,\"projector_type\":\"linear\","
        "\"model_type\":\"mlp_projector\",\"depth\":2,\"mlp_ratio\":1,\"downsample_ratio\":2,"
        "\"token_pooling\":false},"
        "\"vision_config\":{\"image_size\":1024,\"mlp_ratio\":3.7362,\"model_name\":\"deeplip_b_l\","
        "\"model_type\":\"vision\",\"layers\":24,\"patch_size\":16,\"width\":{\"clip-l-14-224\":{\"heads\":16,"
        "\"image_size\":224,\"layers\":24,\"patch_size\":14,\"width\":1024},\"sam_vit_b\":{"
        "\"downsample_channels\":[512,1024],\"global_attn_indexes\":[2,5,8,11],\"heads\":12,\"layers\":12,"
        "\"width\":768}}}}";
    ModelConfig c;
    DsError e = {0};
    REQUIRE(config_parse(txt, strlen(txt), "sp", &c, &e) == DSOCR_OK);
    CHECK(!strcmp(c.model_type, "DeepseekOCR"));
    CHECK(c.hidden_size == 1280 && c.head_dim == 128 && c.sam.out_chans == 256 && c.clip.layers == 24);
    CkExpected *ex;
    int n;
    REQUIRE(checkpoint_expected(&c, &ex, &n, &e) == DSOCR_OK);
    CHECK(n == 2710);
    free(ex);
}

static void test_config_bad(void) {
    ModelConfig c;
    DsError e = {0};
    const char *mla = "{\"use_mla\": true}";
    CHECK(config_parse(mla, strlen(mla), "c", &c, &e) == DSOCR_E_UNSUPPORTED);
    CHECK_STR_CONTAINS(e.msg, "use_mla");
    const char *neg = "{\"hidden_size\": -5}";
    CHECK(config_parse(neg, strlen(neg), "c", &c, &e) == DSOCR_E_MODEL);
    CHECK_STR_CONTAINS(e.msg, "hidden_size");
    const char *junk = "{\"hidden_size\": 12";
    CHECK(config_parse(junk, strlen(junk), "c", &c, &e) == DSOCR_E_FORMAT);
    const char *heads = "{\"hidden_size\": 1280, \"num_attention_heads\": 7}";
    CHECK(config_parse(heads, strlen(heads), "c", &c, &e) == DSOCR_E_MODEL);
    const char *rs = "{\"rope_scaling\": {\"type\": \"yarn\"}}";
    CHECK(config_parse(rs, strlen(rs), "c", &c, &e) == DSOCR_E_UNSUPPORTED);
}

/* ---- the official tensor list against the official index ---- */

static void test_official_list_matches_index(void) {
    ModelConfig c;
    REQUIRE(config_load("data/model/config.json", &c, NULL) == DSOCR_OK);
    CkExpected *ex;
    int n;
    REQUIRE(checkpoint_expected(&c, &ex, &n, NULL) == DSOCR_OK);
    char *txt;
    size_t len;
    REQUIRE(ds_read_file("data/model/model.safetensors.index.json", 1 << 24, &txt, &len, NULL) == DSOCR_OK);
    cJSON *idx = cJSON_Parse(txt);
    free(txt);
    const cJSON *wm = cJSON_GetObjectItem(idx, "weight_map");
    REQUIRE(wm);
    CHECK(cJSON_GetArraySize(wm) == n);
    int missing = 0;
    for (const cJSON *it = wm->child; it; it = it->next) {
        int found = 0;
        for (int i = 0; i < n && !found; i++) found = !strcmp(ex[i].name, it->string);
        if (!found) {
            fprintf(stderr, "  index name not in our list: %s\n", it->string);
            missing++;
        }
    }
    CHECK(missing == 0);
    uint64_t params = 0;
    for (int i = 0; i < n; i++) {
        uint64_t p = 1;
        for (int d = 0; d < ex[i].ndim; d++) p *= (uint64_t)ex[i].shape[d];
        params += p;
    }
    double total = cJSON_GetObjectItem(cJSON_GetObjectItem(idx, "metadata"), "total_size")->valuedouble;
    CHECK(params * 2 == (uint64_t)total);
    CHECK(params == 3336106240ull);
    cJSON_Delete(idx);
    free(ex);
}

/* A sparse full-size file whose header matches the official index: validates and sums to the totals. */
static void test_full_sparse(void) {
    char *dir = fixture_tmpdir();
    REQUIRE(dir);
    char *cfg;
    size_t len;
    REQUIRE(ds_read_file("data/model/config.json", 1 << 20, &cfg, &len, NULL) == DSOCR_OK);
    FixtureOpts o = {.sparse = 1};
    REQUIRE(fixture_write_model(dir, cfg, &o) == 0);
    free(cfg);
    Checkpoint ck;
    DsError e = {0};
    CHECKF(checkpoint_open(dir, NULL, &ck, &e) == DSOCR_OK, "%s", e.msg);
    if (!e.code) {
        CkSummary s;
        checkpoint_summary(&ck, &s);
        CHECK(s.params == 3336106240ull);
        CHECK(s.n_tensors == 2710);
        CHECK(s.bytes == 6672212480ull);
        CHECK(s.comp_params[CK_SAM] == 95569152ull);
        CHECK(s.comp_params[CK_CLIP] == 303177728ull);
        CHECK(s.comp_params[CK_EMBED] == 165478400ull && s.comp_params[CK_LM_HEAD] == 165478400ull);
        CHECK(s.comp_params[CK_PROJECTOR] == 2622720ull + 2560ull);
        CHECK(checkpoint_get(&ck, "model.view_seperator") != NULL);
        checkpoint_close(&ck);
    }
    /* the CLI prints the same, computed from the file */
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "./dsocr check-model '%s' > '%s/out.txt' 2>&1", dir, dir);
    CHECK(system(cmd) == 0);
    char p[1100], *out;
    snprintf(p, sizeof p, "%s/out.txt", dir);
    REQUIRE(ds_read_file(p, 1 << 20, &out, &len, NULL) == DSOCR_OK);
    CHECK_STR_CONTAINS(out, "3,336,106,240 in 2710 tensors");
    CHECK_STR_CONTAINS(out, "routed experts");
    free(out);
    fixture_rmdir(dir);
}

/* ---- tiny checkpoints: good, defective, fp32, sharded ---- */

static DsError open_tiny(const FixtureOpts *o, int *converted, char **logbuf) {
    DsError e = {0};
    char *dir = fixture_tmpdir();
    char *cfg = fixture_tiny_config();
    if (!dir || !cfg || fixture_write_model(dir, cfg, o)) {
        strcpy(e.msg, "fixture failed");
        e.code = DSOCR_E_INTERNAL;
        free(cfg);
        fixture_rmdir(dir);
        return e;
    }
    free(cfg);
    Checkpoint ck;
    if (checkpoint_open(dir, NULL, &ck, &e) == DSOCR_OK) {
        if (converted) *converted = ck.converted;
        checkpoint_close(&ck);
        /* reopening an fp32 folder reuses the cache */
        if (logbuf) {
            char cmd[1200];
            snprintf(cmd, sizeof cmd, "./dsocr check-model '%s' 2>&1", dir);
            FILE *p = popen(cmd, "r");
            *logbuf = calloc(1, 8192);
            if (p && *logbuf) {
                size_t r = fread(*logbuf, 1, 8191, p);
                (*logbuf)[r] = 0;
            }
            if (p) pclose(p);
        }
    }
    fixture_rmdir(dir);
    return e;
}

static void test_tiny_good(void) {
    int conv = -1;
    DsError e = open_tiny(&(FixtureOpts){0}, &conv, NULL);
    CHECKF(e.code == DSOCR_OK, "%s", e.msg);
    CHECK(conv == 0);
}

static void test_tiny_defects(void) {
    DsError e = open_tiny(&(FixtureOpts){.drop = "model.layers.1.mlp.experts.3.up_proj.weight"}, NULL, NULL);
    CHECK(e.code == DSOCR_E_MODEL);
    CHECK_STR_CONTAINS(e.msg, "missing tensor 'model.layers.1.mlp.experts.3.up_proj.weight' (expected shape [64, 128])");
    e = open_tiny(&(FixtureOpts){.extra = "model.layers.1.mlp.bogus"}, NULL, NULL);
    CHECK(e.code == DSOCR_E_MODEL);
    CHECK_STR_CONTAINS(e.msg, "extra tensor 'model.layers.1.mlp.bogus'");
    e = open_tiny(&(FixtureOpts){.reshape = "model.sam_model.blocks.1.attn.rel_pos_h"}, NULL, NULL);
    CHECK(e.code == DSOCR_E_MODEL);
    CHECK_STR_CONTAINS(e.msg, "'model.sam_model.blocks.1.attn.rel_pos_h' has shape [128, 32], expected [127, 32]");
    e = open_tiny(&(FixtureOpts){.dtype = DS_F16}, NULL, NULL);
    CHECK(e.code == DSOCR_E_MODEL);
    CHECK_STR_CONTAINS(e.msg, "dtype F16, expected BF16");
    e = open_tiny(&(FixtureOpts){.file_name = "weights.bin"}, NULL, NULL);
    CHECK(e.code == DSOCR_E_MODEL);
    CHECK_STR_CONTAINS(e.msg, "no *.safetensors");
}

static void test_tiny_fp32_cache(void) {
    int conv = 0;
    char *log = NULL;
    DsError e = open_tiny(&(FixtureOpts){.dtype = DS_F32}, &conv, &log);
    CHECKF(e.code == DSOCR_OK, "%s", e.msg);
    CHECK(conv == 1);
    CHECK_STR_CONTAINS(log, "using the bf16 cache"); /* second open: the cache made by the first is reused */
    CHECK_STR_CONTAINS(log, "read through its bf16 cache");
    free(log);
}

static void test_tiny_sharded(void) {
    DsError e = open_tiny(&(FixtureOpts){.shard_split = 40}, NULL, NULL);
    CHECKF(e.code == DSOCR_OK, "%s", e.msg);
}

static void test_truncated_shard(void) {
    char *dir = fixture_tmpdir();
    char *cfg = fixture_tiny_config();
    REQUIRE(dir && cfg && fixture_write_model(dir, cfg, NULL) == 0);
    free(cfg);
    char p[1100];
    snprintf(p, sizeof p, "%s/model-00001-of-000001.safetensors", dir);
    struct stat st;
    REQUIRE(stat(p, &st) == 0);
    REQUIRE(truncate(p, st.st_size / 2) == 0);
    Checkpoint ck;
    DsError e = {0};
    CHECK(checkpoint_open(dir, NULL, &ck, &e) == DSOCR_E_FORMAT);
    CHECK_STR_CONTAINS(e.msg, "out of range");
    CHECK_STR_CONTAINS(e.msg, "truncated");
    fixture_rmdir(dir);
}

int main(void) {
    RUN(test_st_good);
    RUN(test_st_corrupt);
    RUN(test_config_official);
    RUN(test_config_save_pretrained);
    RUN(test_config_bad);
    RUN(test_official_list_matches_index);
    RUN(test_full_sparse);
    RUN(test_tiny_good);
    RUN(test_tiny_defects);
    RUN(test_tiny_fp32_cache);
    RUN(test_tiny_sharded);
    RUN(test_truncated_shard);
    return check_summary();
}
