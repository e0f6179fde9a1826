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

int main(void) {
    RUN(test_decode_bytes_match_tensor_list);
    RUN(test_vision_flops_near_spec);
    return check_summary();
}
