/* config.h: the model's hyper-parameters, read from a Hugging Face config.json. Field names keep the Hugging Face
 * key names. Absent keys take the defaults of the official code (spec §2); the vision sizes come from
 * vision_config (with official defaults for the sizes the official file does not state: SAM window and neck
 * width, patch sizes, MLP widths). Accepts both the official sparse file and a save_pretrained
 * re-serialisation that writes every key. */
#ifndef DSOCR_CONFIG_H
#define DSOCR_CONFIG_H

#include "util.h"

#define CFG_MAX_SAM_LAYERS 64

typedef struct SamConfig {
    int width, layers, heads;          /* 768, 12, 12 */
    int global_attn_indexes[CFG_MAX_SAM_LAYERS];
    int n_global;                      /* 4: blocks 2, 5, 8, 11 */
    int downsample_channels[2];        /* net_2, net_3 outputs: 512, 1024 */
    int window_size;                   /* 14 (key "window_size", our extension) */
    int out_chans;                     /* neck width, 256 (key "out_chans", our extension) */
    int patch_size;                    /* 16 */
    int image_size;                    /* 1024: pos_embed grid = image_size / patch_size */
    int mlp_dim;                       /* 4 * width (key "mlp_dim") */
} SamConfig;

typedef struct ClipConfig {
    int width, layers, heads;          /* 1024, 24, 16 */
    int image_size, patch_size;        /* 224, 14: position table = (224/14)^2 + 1 rows */
    int mlp_dim;                       /* 4 * width */
} ClipConfig;

typedef struct ModelConfig {
    /* language model (DeepSeek-V2 MoE, plain MHA) */
    int hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim;
    int intermediate_size, moe_intermediate_size, n_routed_experts, n_shared_experts, num_experts_per_tok;
    int first_k_dense_replace, moe_layer_freq, vocab_size, max_position_embeddings;
    int bos_token_id, eos_token_id;
    int norm_topk_prob;                /* 0 */
    double routed_scaling_factor;      /* 1.0 */
    double rms_norm_eps, rope_theta;   /* 1e-6, 10000 */
    /* vision */
    SamConfig sam;
    ClipConfig clip;
    int projector_input_dim, projector_n_embed; /* 2048, 1280 */
    char model_type[64];
} ModelConfig;

/* Parses config.json text (len bytes). Unsupported settings (use_mla, non-softmax scoring, rope_scaling, ...)
 * are refused with DSOCR_E_UNSUPPORTED naming the key; inconsistent sizes with DSOCR_E_MODEL. */
DsocrStatus config_parse(const char *json, size_t len, const char *what, ModelConfig *c, DsError *e);
DsocrStatus config_load(const char *path, ModelConfig *c, DsError *e);

/* 1 when decoder layer l is an MoE layer. */
int config_layer_is_moe(const ModelConfig *c, int l);
/* 1 when SAM block b uses global attention. */
int config_sam_is_global(const ModelConfig *c, int b);

#endif
