/* figures.c: see figures.h. */
#include "figures.h"

/* keys a query at index i of a line of n sees in windows of w (the window holding i, clipped at n) */
static double window_keys_line(int n, int w) {
    double sum = 0;
    for (int i = 0; i < n; i++) {
        int start = i / w * w, end = start + w < n ? start + w : n;
        sum += end - start;
    }
    return sum; /* summed over the n queries of the line */
}

double figures_vision_flops(const ModelConfig *c, int side) {
    const SamConfig *s = &c->sam;
    const double W = s->width, P = s->patch_size, M = s->mlp_dim, O = s->out_chans;
    const double D0 = s->downsample_channels[0], D1 = s->downsample_channels[1];
    const int g = side / s->patch_size;
    const double T = (double)g * g, hd = W / s->heads;
    double f = 2 * T * W * 3 * P * P; /* patch embedding */
    /* a windowed block's queries see (keys per query in a row) × (in a column): the sums factor */
    const double wkeys = window_keys_line(g, s->window_size) * window_keys_line(g, s->window_size);
    for (int b = 0; b < s->layers; b++) {
        const int global = config_sam_is_global(c, b);
        const double pairs = global ? T * T : wkeys;          /* (query, key) pairs */
        const double len = global ? g : s->window_size;       /* rel-pos terms per query and axis */
        f += 2 * T * W * 3 * W + 2 * T * W * W + 2 * 2 * T * W * M; /* qkv, proj, MLP */
        f += 2 * 2 * pairs * W;                                /* QKᵀ and PV over all heads */
        f += 2 * T * 2 * len * hd * s->heads;                  /* q·Rh and q·Rw */
    }
    f += 2 * T * W * O + 2 * T * O * O * 9;                    /* neck: 1×1 and 3×3 convolutions */
    const double g2 = (g + 1) / 2, g4 = ((g + 1) / 2 + 1) / 2;
    f += 2 * g2 * g2 * O * D0 * 9 + 2 * g4 * g4 * D0 * D1 * 9; /* net_2, net_3 */
    const ClipConfig *k = &c->clip;
    const double n = side / 64, Tc = 1 + n * n, CW = k->width, CM = k->mlp_dim;
    f += k->layers * (2 * Tc * CW * 3 * CW + 2 * Tc * CW * CW + 2 * 2 * Tc * CW * CM + 2 * 2 * Tc * Tc * CW);
    f += 2 * n * n * (double)c->projector_input_dim * c->hidden_size;
    return f;
}

double figures_decode_bytes_split(const ModelConfig *c, int context, double weight_bytes, double expert_bytes,
                                  double kv_bytes) {
    const double D = c->hidden_size, L = c->num_hidden_layers;
    double elems = 0, experts = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        elems += 4 * D * D; /* q, k, v, o */
        if (config_layer_is_moe(c, l)) {
            elems += (double)c->n_routed_experts * D /* router */ + 3 * D * (double)c->moe_intermediate_size * c->n_shared_experts;
            experts += 3 * D * (double)c->moe_intermediate_size * c->num_experts_per_tok;
        } else {
            elems += 3 * D * (double)c->intermediate_size;
        }
    }
    elems += (double)c->vocab_size * D; /* lm_head */
    return elems * weight_bytes + experts * expert_bytes + 2 * L * (double)context * D * kv_bytes;
}

double figures_decode_bytes(const ModelConfig *c, int context, double weight_bytes, double kv_bytes) {
    return figures_decode_bytes_split(c, context, weight_bytes, weight_bytes, kv_bytes);
}

static int add_gemm(FigGemm *out, int n, int max, int M, int K, int N, int count) {
    for (int i = 0; i < n; i++) /* the same shape again: one entry, counted twice */
        if (out[i].M == M && out[i].K == K && out[i].N == N) {
            out[i].count += count;
            return n;
        }
    if (n < max) out[n++] = (FigGemm){M, K, N, count};
    return n;
}

int figures_vision_gemms(const ModelConfig *c, int side, FigGemm *out, int max) {
    const SamConfig *s = &c->sam;
    const int W = s->width, P = s->patch_size, M = s->mlp_dim, O = s->out_chans;
    const int D0 = s->downsample_channels[0], D1 = s->downsample_channels[1];
    const int g = side / P, T = g * g, g2 = (g + 1) / 2, g4 = (g2 + 1) / 2;
    int n = 0;
    n = add_gemm(out, n, max, T, 3 * P * P, W, 1); /* patch embedding */
    n = add_gemm(out, n, max, T, W, 3 * W, s->layers);
    n = add_gemm(out, n, max, T, W, W, s->layers);
    n = add_gemm(out, n, max, T, W, M, s->layers);
    n = add_gemm(out, n, max, T, M, W, s->layers);
    n = add_gemm(out, n, max, T, W, O, 1);     /* neck 1×1 */
    n = add_gemm(out, n, max, T, 9 * O, O, 1); /* neck 3×3 */
    n = add_gemm(out, n, max, g2 * g2, 9 * O, D0, 1);
    n = add_gemm(out, n, max, g4 * g4, 9 * D0, D1, 1);
    const ClipConfig *k = &c->clip;
    const int nn = side / 64, Tc = 1 + nn * nn, CW = k->width, CM = k->mlp_dim;
    n = add_gemm(out, n, max, Tc, CW, 3 * CW, k->layers);
    n = add_gemm(out, n, max, Tc, CW, CW, k->layers);
    n = add_gemm(out, n, max, Tc, CW, CM, k->layers);
    n = add_gemm(out, n, max, Tc, CM, CW, k->layers);
    n = add_gemm(out, n, max, nn * nn, c->projector_input_dim, c->hidden_size, 1);
    return n;
}

double figures_prefill_flops(const ModelConfig *c, int n) {
    const double D = c->hidden_size, F = c->moe_intermediate_size, N = n;
    double per_token = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        per_token += 2 * 4 * D * D; /* q, k, v, o */
        if (config_layer_is_moe(c, l))
            per_token += 2 * D * c->n_routed_experts + 2 * 3 * D * F * (c->num_experts_per_tok + c->n_shared_experts);
        else
            per_token += 2 * 3 * D * (double)c->intermediate_size;
    }
    const double attention = c->num_hidden_layers * 2 * 2 * D * N * (N + 1) / 2; /* causal QKᵀ and PV */
    return per_token * N + attention + 2 * D * (double)c->vocab_size;
}
