/* test_figures.c: figures.c's formulas against a second, independent count: the official tensor list
 * (checkpoint_expected, from the config) summed tensor by tensor, and the spec's rough totals (§10). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "checkpoint.h"
#include "figures.h"

static ModelConfig official(void) {
    ModelConfig c;
    DsError e;
    memset(&c, 0, sizeof c);
    if (config_load("data/model/config.json", &c, &e) != DSOCR_OK) fprintf(stderr, "config: %s\n", e.msg);
    return c;
}

static int has(const char *s, const char *part) { return strstr(s, part) != NULL; }

/* decode bytes at context 0 with 1 byte per weight = the parameters a token touches, counted from the tensors:
 * attention projections, dense MLPs, routers, experts 0..k-1 of each MoE layer (every expert has the same
 * shape), shared experts, lm_head */
static void test_decode_bytes_match_tensor_list(void) {
    ModelConfig c = official();
    REQUIRE(c.hidden_size == 1280);
    CkExpected *ex = NULL;
    int n = 0;
    DsError e;
    REQUIRE(checkpoint_expected(&c, &ex, &n, &e) == DSOCR_OK);
    double active = 0;
    char pat[64];
    for (int i = 0; i < n; i++) {
        const char *nm = ex[i].name;
        double numel = 1;
        for (int d = 0; d < ex[i].ndim; d++) numel *= (double)ex[i].shape[d];
        int take = !strcmp(nm, "lm_head.weight");
        if (has(nm, "model.layers.") && (has(nm, "self_attn.") || has(nm, "shared_experts.") || has(nm, "mlp.gate.") ||
                                         (has(nm, ".mlp.gate_proj") || has(nm, ".mlp.up_proj") || has(nm, ".mlp.down_proj"))))
            take = 1;
        for (int x = 0; x < c.num_experts_per_tok; x++) {
            snprintf(pat, sizeof pat, ".mlp.experts.%d.", x);
            if (has(nm, "model.layers.") && has(nm, pat)) take = 1;
        }
        if (take) active += numel;
    }
    free(ex);
    double f = figures_decode_bytes(&c, 0, 1.0, 2.0);
    CHECKF(f == active, "decode elements %.0f, tensor list %.0f", f, active);
    /* the KV term: 60 KiB a token in bf16 (spec §10) */
    double kv = figures_decode_bytes(&c, 1000, 1.0, 2.0) - f;
    CHECKF(kv == 1000.0 * 60 * 1024, "KV bytes for 1000 tokens %.0f", kv);
    /* spec §10: about 574 M parameters a token (2 x 574 M FLOPs) */
    CHECKF(active > 0.97 * 574e6 && active < 1.03 * 574e6, "active parameters %.0f", active);
}

/* vision FLOPs: the spec's rough matmul-only totals (§10) at 512 / 1024 / 1280 px, within 15 % (ours adds the
 * convolutions, rel-pos terms and projector, and counts windowed attention unpadded, which matters most at 512 px,
 * where the 32 x 32 map is padded to 42 x 42 windows) */
static void test_vision_flops_near_spec(void) {
    ModelConfig c = official();
    REQUIRE(c.sam.width == 768);
    const int sides[3] = {512, 1024, 1280};
    const double spec[3] = {0.23e12 + 40e9, 0.97e12 + 162e9, 1.67e12 + 258e9};
    for (int i = 0; i < 3; i++) {
        double f = figures_vision_flops(&c, sides[i]);
        printf("  vision %d px: %.3f TFLOP (spec about %.3f)\n", sides[i], f / 1e12, spec[i] / 1e12);
        CHECKF(f > 0.85 * spec[i] && f < 1.15 * spec[i], "%d px: %.4g FLOP, spec %.4g", sides[i], f, spec[i]);
    }
    /* monotone in the view size */
    CHECK(figures_vision_flops(&c, 640) > figures_vision_flops(&c, 512));
}


/* the encoder's matrix products: every shape's K × N, times its count, summed, is the vision tower's matrix
 * weights counted from the tensor list (SAM, CLIP, projector; CLIP's own patch embedding is unused, SAM's features
 * replace it), and their FLOPs are most of figures_vision_flops; the rest is attention, about a fifth at 1,024 px
 * (SAM's four global blocks alone: 4 × 2·2·4096²·768 = 206 GFLOP of 1,103) */
static void test_vision_gemms_match_tensor_list(void) {
    ModelConfig c = official();
    CkExpected *ex = NULL;
    int n = 0;
    DsError e;
    REQUIRE(checkpoint_expected(&c, &ex, &n, &e) == DSOCR_OK);
    double weights = 0;
    for (int i = 0; i < n; i++) {
        const char *nm = ex[i].name;
        if (ex[i].ndim < 2 || !has(nm, ".weight")) continue;
        if (!has(nm, "model.sam_model.") && !has(nm, "model.vision_model.") && !has(nm, "model.projector.")) continue;
        if (has(nm, "embeddings.patch_embedding") || has(nm, "position_embedding") || has(nm, "pos_embed")) continue;
        double numel = 1;
        for (int d = 0; d < ex[i].ndim; d++) numel *= (double)ex[i].shape[d];
        weights += numel;
    }
    free(ex);
    FigGemm g[FIG_VISION_GEMMS];
    const int k = figures_vision_gemms(&c, 1024, g, FIG_VISION_GEMMS);
    REQUIRE(k > 0 && k <= FIG_VISION_GEMMS);
    double kn = 0, flops = 0;
    for (int i = 0; i < k; i++) {
        kn += (double)g[i].K * g[i].N * g[i].count;
        flops += 2.0 * g[i].M * g[i].K * g[i].N * g[i].count;
    }
    CHECKF(kn == weights, "K x N summed over the shapes %.0f, the tensor list's vision matrices %.0f", kn, weights);
    const double all = figures_vision_flops(&c, 1024);
    printf("  1,024 px: %d shapes, %.3f TFLOP of matrix products of %.3f in all\n", k, flops / 1e12, all / 1e12);
    CHECKF(flops > 0.7 * all && flops < 0.9 * all, "products %.4g of %.4g FLOP", flops, all);
    CHECKF(all - flops > 4 * 2 * 2 * 4096.0 * 4096 * 768, "attention %.4g FLOP: less than SAM's global blocks alone",
           all - flops);
}

/* prefill FLOPs: 2 per active weight a token (the tensor-list count of test_decode_bytes_match_tensor_list, lm_head
 * once), plus causal attention (each token's keys: itself and those before it) */
static void test_prefill_flops(void) {
    ModelConfig c = official();
    const double active = figures_decode_bytes(&c, 0, 1.0, 2.0), head = (double)c.vocab_size * c.hidden_size;
    const int ns[3] = {1, 283, 913};
    for (int i = 0; i < 3; i++) {
        const double N = ns[i];
        const double want = 2 * N * (active - head) + 2 * head +
                            c.num_hidden_layers * 2.0 * c.hidden_size * N * (N + 1);
        const double got = figures_prefill_flops(&c, ns[i]);
        CHECKF(got > want * (1 - 1e-12) && got < want * (1 + 1e-12), "prefill %d tokens: %.6g FLOP, want %.6g", ns[i],
               got, want);
    }
}

int main(void) {
    RUN(test_decode_bytes_match_tensor_list);
    RUN(test_vision_flops_near_spec);
    RUN(test_vision_gemms_match_tensor_list);
    RUN(test_prefill_flops);
    return check_summary();
}
