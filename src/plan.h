/* plan.h: where the weights live under a GPU memory budget (issue 8, `--gpu-mem`), decided before anything is
 * placed. Three outcomes, tried in order:
 *   all-gpu  every weight on the GPU (the fastest: the decode step is one recorded graph);
 *   embed-host  the token embeddings in host memory (a lookup: the host copies each step's row in; still a graph);
 *   hybrid   the token embeddings (a lookup: one row a token crosses the bus) and the routed experts (72 % of the
 *            bf16 weights, 6 of 64 read a token) in host memory, the CPU computing the routed experts while the GPU
 *            does the rest (backend.h BackendMoe.experts_host);
 *   hybrid+head  the same and lm_head (one product a token on the CPU; the logits cross the bus);
 *   no-fit   refused with a status that names what would be needed.
 * The budget covers the weights placed on the GPU plus a reserve the caller estimates for one session (its KV
 * cache for the whole context, the vision and decoder working memory, the backend's own scratch). Pure and
 * backend-independent: tested on the CPU with made-up sizes (tests/test_plan.c).
 * What it is not: no allocation (model_place_plan places, the CUDA backend enforces the budget on every allocation)
 * and no quantisation choice (--quant chooses the bytes the plan is given). */
#ifndef DSOCR_PLAN_H
#define DSOCR_PLAN_H

#include <stddef.h>
#include <stdint.h>

typedef enum PlanGroup {
    PLAN_EMBED = 0, /* model.embed_tokens.weight */
    PLAN_ROUTED,    /* model.layers.N.mlp.experts.E.* */
    PLAN_LM_HEAD,   /* lm_head.weight */
    PLAN_REST,      /* everything else: vision encoder, attention, shared experts, dense MLP, norms, router */
    PLAN_N_GROUPS
} PlanGroup;

typedef enum PlanKind { PLAN_ALL_GPU = 0, PLAN_EMBED_HOST, PLAN_HYBRID, PLAN_HYBRID_HEAD, PLAN_NO_FIT } PlanKind;

typedef struct PlanInput {
    uint64_t weights[PLAN_N_GROUPS]; /* bytes of each group as held (after quantisation) */
    uint64_t reserve;                /* the rest of the GPU peak for one session */
    uint64_t reserve_lean;           /* the same for the other placements, whose working memory is smaller
                                      * (Model.lean); 0: as reserve */
    uint64_t budget;                 /* bytes this process may use on the GPU */
} PlanInput;

typedef struct Plan {
    PlanKind kind;
    int on_gpu[PLAN_N_GROUPS];
    uint64_t gpu_weights, host_weights; /* bytes placed on each side */
    uint64_t expected_peak;             /* gpu_weights + reserve */
    uint64_t min_need;                  /* the budget hybrid+head needs (for messages) */
} Plan;

/* The group a checkpoint tensor belongs to, by its name. */
PlanGroup plan_group(const char *tensor_name);
/* Decides where the groups go (see the header); never fails (no-fit is an outcome). */
void plan_make(const PlanInput *in, Plan *out);
/* "all-gpu", "embed-host", "hybrid", "hybrid+head", "no-fit" */
const char *plan_kind_name(PlanKind k);
/* One line for the log: the outcome, the bytes on each side, the expected peak against the budget; for no-fit,
 * what the smallest placement would need. Returns snprintf's count. */
int plan_describe(const Plan *p, const PlanInput *in, char *buf, size_t n);

#endif
