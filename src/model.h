/* model.h: the loaded model: the checkpoint's tensors as typed weight structs named after the checkpoint, plus
 * the tokenizer and the special ids the engine needs. Immutable after model_load and shared by sessions.
 * What it is not: no forward pass (vision.c, decoder.c) and no request state (engine.c). */
#ifndef DSOCR_MODEL_H
#define DSOCR_MODEL_H

#include "backend.h"
#include "checkpoint.h"
#include "ops.h"
#include "tokenizer.h"

typedef struct SamBlock {
    DsW norm1_w, norm1_b, norm2_w, norm2_b; /* [W] */
    DsW qkv_w, qkv_b;                       /* [3W, W], [3W] */
    DsW proj_w, proj_b;                     /* [W, W], [W] */
    const StTensor *rel_pos_h, *rel_pos_w;  /* [2·window−1 or 2·G−1, head_dim] */
    DsW lin1_w, lin1_b, lin2_w, lin2_b;     /* [M, W], [M], [W, M], [W] */
    int global;                             /* 1: global attention */
} SamBlock;

typedef struct SamWeights {
    const StTensor *pos_embed;              /* [1, G, G, W], G = image_size / patch */
    DsW patch_w, patch_b;                   /* [W, 3, P, P], [W] */
    SamBlock *blocks;                       /* [layers] */
    DsW neck0_w;                            /* [O, W, 1, 1] */
    DsW neck1_w, neck1_b;                   /* [O] */
    DsW neck2_w;                            /* [O, O, 3, 3] */
    DsW neck3_w, neck3_b;                   /* [O] */
    DsW net2_w, net3_w;                     /* [D0, O, 3, 3], [D1, D0, 3, 3] */
} SamWeights;

typedef struct ClipLayer {
    DsW ln1_w, ln1_b, ln2_w, ln2_b;         /* [CW] */
    DsW qkv_w, qkv_b;                       /* [3CW, CW], [3CW] */
    DsW out_w, out_b;                       /* [CW, CW], [CW] */
    DsW fc1_w, fc1_b, fc2_w, fc2_b;         /* [CM, CW], [CM], [CW, CM], [CW] */
} ClipLayer;

typedef struct ClipWeights {
    DsW class_embedding;                    /* [CW] */
    const StTensor *position_embedding;     /* [1 + np², CW] */
    DsW pre_ln_w, pre_ln_b;                 /* [CW] */
    ClipLayer *layers;
} ClipWeights;

typedef BackendExpert Expert;               /* gate, up [F, D]; down [D, F] */

typedef struct DecLayer {
    DsW input_norm, post_norm;              /* [D] */
    DsW q, k, v, o;                         /* [D, D] */
    DsW qkv;                                /* q, k, v as one [3D, D] when adjacent in memory (else data NULL) */
    int moe;
    Expert dense;                           /* layer < first_k_dense_replace: width intermediate_size */
    DsW router;                             /* [E, D] */
    Expert *experts;                        /* [E], width moe_intermediate_size */
    Expert shared;                          /* width moe_intermediate_size · n_shared_experts (gate NULL if none) */
    BackendMoe moe_w;                       /* the MoE layer as the backend takes it (points at the above) */
} DecLayer;

/* A weight slot bound to its checkpoint tensor (model_place replaces slot->data by a backend copy). */
typedef struct BoundWeight {
    DsW *slot;
    const StTensor *t;
    const void *host;   /* the weight's bytes on the host, of type slot->dtype: t->data, or model_quantize's copy */
} BoundWeight;

typedef struct Model {
    Checkpoint ck;
    ModelConfig cfg;
    Tokenizer *tok;
    SamWeights sam;
    ClipWeights clip;
    DsW proj_w, proj_b;                     /* [D, CW + D1], [D] */
    DsW image_newline, view_seperator;      /* [D] */
    DsW embed;                              /* [V, D] */
    DsW lm_head;                            /* [V, D] */
    DsW final_norm;                         /* [D] */
    DecLayer *layers;
    BoundWeight *bound;                     /* every DsW above, with its tensor */
    int n_bound, cap_bound;
    Backend *be;                            /* where the weights live (the CPU backend: the checkpoint's mmap) */
    void **placed;                          /* backend copies made by model_place, freed by model_free */
    int n_placed;
    void *quant_buf;                        /* owned: the weights model_quantize quantised (host memory) */
    size_t quant_bytes;
    int lm_head_host;                       /* 1: lm_head left in host memory by model_place_plan */
    int embed_host;                         /* 1: the token embeddings left in host memory by model_place_plan */
    int lean;                               /* 1: placed under a budget it did not fit whole (plan.h hybrid): the
                                             * working memory takes its smaller forms (vision.c) */
    int image_token_id;                     /* <image> = 128815 */
    int td_id, td_close_id;                 /* <td>, </td> (the vLLM n-gram whitelist) */
} Model;

/* Loads a model folder: checkpoint (validated), tokenizer.json, weight structs (host, the CPU backend's). */
DsocrStatus model_load(const char *dir, const CheckpointOptions *opt, Model **out, DsError *e);
/* Copies every weight into backend be's memory (nothing to do for the CPU backend); DSOCR_E_NOMEM with the
 * amount when it does not fit. */
DsocrStatus model_place(Model *m, Backend *be, DsError *e);
/* model_place for the weights plan (plan.h) puts on the GPU; the others stay in host memory (their slots keep the
 * host bytes; with the routed experts there, every MoE layer's moe_w.experts_host is 1). plan NULL: every weight. */
struct Plan;
DsocrStatus model_place_plan(Model *m, Backend *be, const struct Plan *plan, DsError *e);
/* Quantises the weights quant_choose (quant.h) picks for target (DS_Q8_0: every decoder linear weight and lm_head
 * as Q8_0; DS_Q4_0: routed experts as Q4_0, the others as Q8_0) from their bf16/f32 tensors into one owned host
 * buffer, and points their slots at it (the mapped originals are no longer read). Weights already block-quantised
 * (a GGUF checkpoint) stay as they are. Call after model_load, before model_place. DSOCR_E_NOMEM with the size
 * when the buffer cannot be had. */
/* The CPU's decoder weights (model.layers.*, lm_head) copied from the mapped checkpoint into memory of their own,
 * 2 MiB-aligned and asked for transparent huge pages (weights_alloc): decode reads them all once a token, and the
 * file's 4 KiB pages cost the GEMV TLB misses. Held in quant_buf; without the memory, or where the kernel has no
 * transparent huge pages, the mapped weights stay. The engine does it for the CPU backend without --quant, unless
 * DSOCR_MAPPED_WEIGHTS=1. Costs load time (the VM: 1-13 s for 5.3 GB, as the kernel finds 2 MiB pages) and resident
 * memory (every expert's pages, where mapped ones are only read when routed to). */
DsocrStatus model_own_decoder(Model *m, DsError *e);
DsocrStatus model_quantize(Model *m, DsDtype target, DsError *e);
/* The number of weights held block-quantised (from the checkpoint or model_quantize). */
int model_n_block_weights(const Model *m);
/* Writes every tensor of the checkpoint as F32 into one safetensors file at path, each with the values the engine
 * computes with: quantised weights dequantised (quant.h _ref), the others widened exactly. With the folder's
 * config.json and tokenizer beside it, the PyTorch reference runs on exactly these weights. Host weights only
 * (before model_place to another backend). */
DsocrStatus model_write_f32(const Model *m, const char *path, DsError *e);
/* Bytes of the weights of each plan.h group as model_place would lay them out on a device (as held, each tensor
 * at a 256-byte boundary); out has PLAN_N_GROUPS entries. */
void model_group_bytes(const Model *m, uint64_t *out);
/* Bytes of all weights (as held: quantised weights at their block size). */
size_t model_weight_bytes(const Model *m);
void model_free(Model *m);

/* A tensor's data widened to fp32 (n = numel floats) into out. */
void model_tensor_to_f32(const StTensor *t, float *out);

#endif
