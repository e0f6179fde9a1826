/* figures.h: the work a page costs, computed from the model's configuration with the spec's formulas (§10), not
 * counted from our loops: the vision encoder's multiply-add FLOPs for one view, and the bytes a decode step reads.
 * The benchmark divides them by measured times to report rates against the machine's ceilings.
 * What it is not: no timing, no knowledge of how a backend pads or tiles (windows are counted unpadded). */
#ifndef DSOCR_FIGURES_H
#define DSOCR_FIGURES_H

#include "config.h"

/* FLOPs (2 per multiply-add) of the vision encoder on one square view of `side` px: SAM (patch embedding, every
 * block's qkv / attention / rel-pos terms / projection / MLP, neck and the two strided convolutions), CLIP over
 * 1 + (side/64)² tokens, and the projector. Attention counts QKᵀ and PV over the keys each query sees (a global
 * block: every token; a windowed block: its window, clipped at the map's edge). */
double figures_vision_flops(const ModelConfig *c, int side);

/* Bytes one decode step reads at a context of `context` tokens with weights of `weight_bytes` per element and a
 * KV cache of `kv_bytes` per element: every layer's attention projections, the dense MLP or the router plus
 * num_experts_per_tok routed and the shared experts, the final norm and lm_head, and the keys and values of the
 * context. (Embedding rows and norm weights, under 0.01 %, are left out.) */
double figures_decode_bytes(const ModelConfig *c, int context, double weight_bytes, double kv_bytes);
/* The same with the routed experts at their own bytes per weight (a 4-bit model: 18/32; its other matrices Q8_0:
 * 34/32). The router stays at weight_bytes too. */
double figures_decode_bytes_split(const ModelConfig *c, int context, double weight_bytes, double expert_bytes,
                                  double kv_bytes);

/* The vision encoder's matrix products on one view (linear layers, and the convolutions as the products they are:
 * rows = output positions, K = kernel area × input channels), unpadded: M rows × K by K × N, `count` times. Their
 * FLOPs (2·M·K·N·count) are the encoder's FLOPs less attention's. Returns how many shapes were written (at most
 * max; FIG_VISION_GEMMS is enough). For the CPU GEMM ceiling measured at the encoder's own shapes. */
typedef struct FigGemm {
    int M, K, N, count;
} FigGemm;
enum { FIG_VISION_GEMMS = 16 };
int figures_vision_gemms(const ModelConfig *c, int side, FigGemm *out, int max);

/* FLOPs of the decoder's prefill over n prompt tokens: per token the attention projections, the dense MLP or the
 * router plus the routed and shared experts it uses; causal attention (QKᵀ and PV over the keys each token sees);
 * lm_head for the last token only. */
double figures_prefill_flops(const ModelConfig *c, int n);

#endif
