/* plan.c: the placement decision under a GPU memory budget (plan.h). */
#include "plan.h"

#include <stdio.h>
#include <string.h>

PlanGroup plan_group(const char *name) {
    if (!strcmp(name, "model.embed_tokens.weight")) return PLAN_EMBED;
    if (!strcmp(name, "lm_head.weight")) return PLAN_LM_HEAD;
    if (!strncmp(name, "model.layers.", 13) && strstr(name, ".mlp.experts.")) return PLAN_ROUTED;
    return PLAN_REST;
}

const char *plan_kind_name(PlanKind k) {
    static const char *const names[] = {"all-gpu", "embed-host", "hybrid", "hybrid+head", "no-fit"};
    return k >= PLAN_ALL_GPU && k <= PLAN_NO_FIT ? names[k] : "?";
}

/* The groups placement moves to the host, in order: placement kind k has the first k of them there. */
static const PlanGroup EVICT[PLAN_NO_FIT - 1] = {PLAN_EMBED, PLAN_ROUTED, PLAN_LM_HEAD};
static const char *const EVICTED[PLAN_NO_FIT] = {"", " (embeddings)", " (embeddings and routed experts)",
                                                 " (embeddings, routed experts and lm_head)"};

void plan_make(const PlanInput *in, Plan *p) {
    memset(p, 0, sizeof *p);
    const uint64_t lean = in->reserve_lean ? in->reserve_lean : in->reserve;
    p->min_need = in->weights[PLAN_REST] + lean; /* hybrid+head's: the smallest placement */
    uint64_t on = 0; /* the weights still on the GPU */
    for (int g = 0; g < PLAN_N_GROUPS; g++) {
        p->on_gpu[g] = 1;
        on += in->weights[g];
    }
    int k = 0;
    for (; k < PLAN_NO_FIT; k++) {
        const uint64_t need = on + (k ? lean : in->reserve);
        if (need <= in->budget) {
            p->expected_peak = need;
            break;
        }
        if (k < PLAN_NO_FIT - 1) {
            p->on_gpu[EVICT[k]] = 0;
            on -= in->weights[EVICT[k]];
        }
    }
    p->kind = (PlanKind)k;
    if (p->kind == PLAN_NO_FIT)
        for (int g = 0; g < PLAN_N_GROUPS; g++) p->on_gpu[g] = 0;
    for (int g = 0; g < PLAN_N_GROUPS; g++) {
        if (p->on_gpu[g])
            p->gpu_weights += in->weights[g];
        else
            p->host_weights += in->weights[g];
    }
}

static double gib(uint64_t b) { return (double)b / (1ull << 30); }

int plan_describe(const Plan *p, const PlanInput *in, char *buf, size_t n) {
    if (p->kind == PLAN_NO_FIT)
        return snprintf(buf, n,
                        "plan no-fit: the GPU budget is %.2f GiB; the smallest placement (embeddings, routed "
                        "experts and lm_head on the CPU) needs %.2f GiB (%.2f GiB of weights + %.2f GiB for a "
                        "session)",
                        gib(in->budget), gib(p->min_need), gib(in->weights[PLAN_REST]),
                        gib(p->min_need - in->weights[PLAN_REST]));
    return snprintf(buf, n,
                    "plan %s: %.2f GiB of weights on the GPU, %.2f GiB on the CPU%s; expected GPU peak %.2f GiB "
                    "(%.2f GiB for a session) of a %.2f GiB budget",
                    plan_kind_name(p->kind), gib(p->gpu_weights), gib(p->host_weights), EVICTED[p->kind],
                    gib(p->expected_peak), gib(p->expected_peak - p->gpu_weights), gib(in->budget));
}
