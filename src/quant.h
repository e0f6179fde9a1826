/* quant.h: block-quantised weight formats, shared by the C and CUDA code. The layouts are ggml's (llama.cpp), so
 * a GGUF tensor of these types is these bytes:
 *   Q8_0: blocks of 32 weights, one fp16 scale d and 32 int8 q:      w = d · q
 *   Q4_0: blocks of 32 weights, one fp16 scale d and 16 bytes of nibbles; byte j holds element j in its low
 *         nibble and element j + 16 in its high nibble:              w = d · (nibble − 8)
 * A weight matrix [N, K] is N rows of K/32 blocks each (K must be a multiple of 32), row-major, rows contiguous.
 *
 * The _ref functions are the specification (scalar, obviously right); kernels that compute on the blocks
 * (ops_linear_* with a DsW of dtype DS_Q8_0 / DS_Q4_0, the CUDA GEMV) are tested against them.
 * What it is not: no file format (gguf.c), no policy for which tensors to quantise (model.c / quantize). */
#ifndef DSOCR_QUANT_H
#define DSOCR_QUANT_H

#include <stddef.h>
#include <stdint.h>

#define QK 32 /* weights per block, both formats */

typedef struct BlockQ8_0 {
    uint16_t d;    /* fp16 bits */
    int8_t q[QK];
} BlockQ8_0;

typedef struct BlockQ4_0 {
    uint16_t d;    /* fp16 bits */
    uint8_t q[QK / 2];
} BlockQ4_0;

#ifdef __cplusplus
static_assert(sizeof(BlockQ8_0) == 34, "BlockQ8_0 is 34 bytes");
static_assert(sizeof(BlockQ4_0) == 18, "BlockQ4_0 is 18 bytes");
extern "C" {
#else
_Static_assert(sizeof(BlockQ8_0) == 34, "BlockQ8_0 is 34 bytes");
_Static_assert(sizeof(BlockQ4_0) == 18, "BlockQ4_0 is 18 bytes");
#endif

#include "safetensors.h" /* DsDtype */

/* 1 for DS_Q8_0 and DS_Q4_0. */
int quant_is_block(DsDtype t);
/* Bytes of a row of n elements of type t (block types: n a multiple of QK; plain types: n · element size);
 * 0 when n is not a multiple of QK for a block type or the type is unknown. */
size_t quant_row_bytes(DsDtype t, int64_t n);

/* Quantise n floats (n a multiple of QK) into blocks; the scale is chosen per block as ggml does (Q8_0: d =
 * max|x| / 127, q = round(x / d); Q4_0: d = m / −8 where m is the element of largest magnitude with its sign,
 * q = clamp(round(x / d) + 8, 0, 15)); d is stored as fp16 and a block of zeros gets d = 0. */
void quant_q8_0_ref(BlockQ8_0 *dst, const float *x, int64_t n);
void quant_q4_0_ref(BlockQ4_0 *dst, const float *x, int64_t n);
/* Widen n elements of a quantised row back to float. */
void dequant_q8_0_ref(float *y, const BlockQ8_0 *src, int64_t n);
void dequant_q4_0_ref(float *y, const BlockQ4_0 *src, int64_t n);
/* Either, by type (t a block type). */
void quant_row_ref(DsDtype t, void *dst, const float *x, int64_t n);
void dequant_row_ref(DsDtype t, float *y, const void *src, int64_t n);

/* The policy of which weights to quantise, by Hugging Face tensor name and shape, for a target of DS_Q8_0 (8-bit)
 * or DS_Q4_0 (4-bit routed experts, 8-bit elsewhere): decoder linear weights (attention q/k/v/o, dense MLP,
 * routed and shared experts) and lm_head are quantised; the vision tower, embeddings, norms, MoE routers and
 * position tables stay bf16, as does any weight whose rows are not a multiple of QK. Returns the dtype for
 * the tensor (DS_BF16 when it stays; DS_BF16 for any other target). */
DsDtype quant_choose(const char *name, int ndim, const int64_t *shape, DsDtype target);

#ifdef __cplusplus
}
#endif
#endif
