/* test_plan.c: the GPU memory planner's decisions for several budgets (plan.h), with the official checkpoint's
 * group sizes: bf16 (6.67 GB), Q8_0 and 4-bit routed experts. */
#include "check.h"
#include "plan.h"

#define GiB (1ull << 30)
#define MiB (1ull << 20)

/* bf16: embeddings 129,280 x 1,280 x 2 bytes; routed experts 11 layers x 64 x 3 x 896 x 1,280 x 2; the rest of
 * the 6,672,212,480 bytes */
static const uint64_t EMB = 330956800ull, ROUTED = 4844421120ull, HEAD = 330956800ull, TOTAL = 6672212480ull;

static PlanInput input(uint64_t emb, uint64_t routed, uint64_t head, uint64_t rest, uint64_t reserve,
                       uint64_t budget) {
    PlanInput in = {{emb, routed, head, rest}, reserve, 0, budget};
    return in;
}

static void test_groups(void) {
    CHECK(plan_group("model.embed_tokens.weight") == PLAN_EMBED);
    CHECK(plan_group("model.layers.3.mlp.experts.17.down_proj.weight") == PLAN_ROUTED);
    CHECK(plan_group("model.layers.3.mlp.shared_experts.down_proj.weight") == PLAN_REST);
    CHECK(plan_group("model.layers.0.mlp.down_proj.weight") == PLAN_REST);
    CHECK(plan_group("model.layers.3.mlp.gate.weight") == PLAN_REST); /* the router */
    CHECK(plan_group("lm_head.weight") == PLAN_LM_HEAD);
    CHECK(plan_group("model.sam_model.blocks.0.attn.qkv.weight") == PLAN_REST);
    CHECK(plan_group("model.vision_model.transformer.layers.1.mlp.experts.x") == PLAN_REST); /* not a decoder layer */
}

static void test_decisions(void) {
    const uint64_t rest = TOTAL - EMB - ROUTED - HEAD, reserve = 700 * MiB;
    Plan p;
    char line[512];
    /* a big card: everything on the GPU, the expected peak is the whole */
    PlanInput in = input(EMB, ROUTED, HEAD, rest, reserve, 75 * GiB);
    plan_make(&in, &p);
    CHECK(p.kind == PLAN_ALL_GPU && p.on_gpu[PLAN_EMBED] && p.on_gpu[PLAN_ROUTED] && p.on_gpu[PLAN_LM_HEAD] &&
          p.on_gpu[PLAN_REST]);
    CHECK(p.gpu_weights == TOTAL && p.host_weights == 0 && p.expected_peak == TOTAL + reserve);
    /* exactly at the edge still fits; one byte less leaves the embeddings on the host (embed-host) */
    in.budget = TOTAL + reserve;
    plan_make(&in, &p);
    CHECK(p.kind == PLAN_ALL_GPU);
    in.budget--;
    plan_make(&in, &p);
    CHECK(p.kind == PLAN_EMBED_HOST && !p.on_gpu[PLAN_EMBED] && p.on_gpu[PLAN_ROUTED] && p.on_gpu[PLAN_LM_HEAD] &&
          p.on_gpu[PLAN_REST] && p.host_weights == EMB);
    plan_describe(&p, &in, line, sizeof line);
    CHECK_STR_CONTAINS(line, "plan embed-host");
    /* past that, hybrid (lm_head stays on the GPU) */
    in.budget = TOTAL - EMB + reserve - 1;
    plan_make(&in, &p);
    CHECK(p.kind == PLAN_HYBRID && !p.on_gpu[PLAN_EMBED] && !p.on_gpu[PLAN_ROUTED] && p.on_gpu[PLAN_LM_HEAD] &&
          p.on_gpu[PLAN_REST]);
    CHECK(p.gpu_weights == rest + HEAD && p.host_weights == EMB + ROUTED && p.expected_peak == rest + HEAD + reserve);
    CHECK(p.expected_peak <= in.budget);
    plan_describe(&p, &in, line, sizeof line);
    CHECK_STR_CONTAINS(line, "plan hybrid");
    CHECK_STR_CONTAINS(line, "embeddings and routed experts");
    /* a 6 GB card in bf16: hybrid */
    in.budget = 6 * GiB - 300 * MiB;
    plan_make(&in, &p);
    CHECK(p.kind == PLAN_HYBRID);
    /* lm_head goes too when the rest alone fits; one byte less is refused */
    in.budget = rest + HEAD + reserve - 1;
    plan_make(&in, &p);
    CHECK(p.kind == PLAN_HYBRID_HEAD && !p.on_gpu[PLAN_LM_HEAD] && p.on_gpu[PLAN_REST] && p.gpu_weights == rest);
    plan_describe(&p, &in, line, sizeof line);
    CHECK_STR_CONTAINS(line, "plan hybrid+head");
    in.budget = rest + reserve;
    plan_make(&in, &p);
    CHECK(p.kind == PLAN_HYBRID_HEAD);
    in.budget--;
    plan_make(&in, &p);
    CHECK(p.kind == PLAN_NO_FIT && p.gpu_weights == 0 && p.expected_peak == 0 && p.min_need == rest + reserve);
    /* 1.5 GiB with bf16 everywhere does not fit: refused, and the message says what would */
    in.budget = 3 * GiB / 2;
    plan_make(&in, &p);
    CHECK(p.kind == PLAN_NO_FIT);
    plan_describe(&p, &in, line, sizeof line);
    CHECK_STR_CONTAINS(line, "plan no-fit");
    CHECK_STR_CONTAINS(line, "1.50 GiB");
    /* Q8_0 decoder weights (34 bytes a 32), vision (about 0.8 GB) kept bf16, a 500 MiB session: in 1.5 GiB only
     * with lm_head on the CPU as well */
    const uint64_t vision = 800 * 1000 * 1000ull, dec_rest = rest - vision;
    PlanInput q = input(EMB, ROUTED * 34 / 64, HEAD * 34 / 64, vision + dec_rest * 34 / 64, 500 * MiB, 3 * GiB / 2);
    plan_make(&q, &p);
    CHECK(p.kind == PLAN_HYBRID_HEAD && p.expected_peak <= q.budget);
    /* 4-bit routed experts, Q8_0 elsewhere, in 3 GiB: the embeddings on the host, with the smaller working memory */
    PlanInput q3 = input(EMB, ROUTED * 18 / 64, HEAD * 34 / 64, vision + dec_rest * 34 / 64, 700 * MiB, 3 * GiB);
    q3.reserve_lean = 560 * MiB;
    plan_make(&q3, &p);
    CHECK(p.kind == PLAN_EMBED_HOST && p.expected_peak <= q3.budget);
    /* 4-bit routed experts, Q8_0 elsewhere: all on the GPU in 4 GiB */
    PlanInput q4 = input(EMB, ROUTED * 18 / 64, HEAD * 34 / 64, vision + dec_rest * 34 / 64, 700 * MiB, 4 * GiB);
    plan_make(&q4, &p);
    CHECK(p.kind == PLAN_ALL_GPU && p.expected_peak <= q4.budget);
    /* a smaller working memory for the hybrid placements (reserve_lean) makes them fit where the full one would not */
    PlanInput l = input(EMB, ROUTED * 34 / 64, HEAD * 34 / 64, vision + dec_rest * 34 / 64, 700 * MiB, 3 * GiB / 2);
    plan_make(&l, &p);
    CHECK(p.kind == PLAN_NO_FIT);
    l.reserve_lean = 500 * MiB;
    plan_make(&l, &p);
    CHECK(p.kind == PLAN_HYBRID_HEAD && p.expected_peak == p.gpu_weights + 500 * MiB && p.expected_peak <= l.budget);
    /* no budget at all (a zero-byte GPU): refused */
    PlanInput z = input(EMB, ROUTED, HEAD, rest, reserve, 0);
    plan_make(&z, &p);
    CHECK(p.kind == PLAN_NO_FIT);
    CHECK(!strcmp(plan_kind_name(PLAN_ALL_GPU), "all-gpu") && !strcmp(plan_kind_name(PLAN_NO_FIT), "no-fit"));
}

int main(void) {
    RUN(test_groups);
    RUN(test_decisions);
    return check_summary();
}
