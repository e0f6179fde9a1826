/* decoder.h: the DeepSeek-V2 MoE decoder (spec §7): RMSNorm, plain multi-head attention with NeoX RoPE over a
 * bf16 block KV cache, layer 0 dense SwiGLU, MoE layers (softmax router, top-k without renormalisation, shared
 * experts), final norm and lm_head. Works on a chunk of token rows with their own positions: prefill is a few
 * chunks, a decode step is a chunk of one row.
 * What it is not: generation policy (engine.c), the image encoder (vision.c). */
#ifndef DSOCR_DECODER_H
#define DSOCR_DECODER_H

#include "model.h"

typedef struct DecoderWork DecoderWork;

/* Working memory for chunks of up to max_rows rows. */
DsocrStatus decoder_work_new(const Model *m, int max_rows, DecoderWork **out, DsError *e);
void decoder_work_free(DecoderWork *w);
size_t decoder_work_bytes(const Model *m, int max_rows);

/* x [n, hidden] (backend memory): the embedded input rows, replaced by the final hidden states. The rows sit at
 * consecutive positions pos0 .. pos0+n−1; pos_dev: those positions in backend memory. table: the sequence's KV
 * block table on the host, tables_dev: a backend array holding the backend copy of it (for attention_kv).
 * Device-position mode (a step that can be recorded once and replayed, backend.h graph_begin): table NULL, pos0
 * ignored, the positions only in pos_dev; ids_dev, when non-NULL, holds the n input ids in backend memory and x
 * is first filled with their embeddings; embed_row instead (one row, the embedding table in host memory: plan.h
 * embed-host): that row already widened in pinned host memory, copied in (a copy a graph can hold). Keys/values are written to kv and every row attends causally to positions 0..its own.
 * seq_dev (device-position mode; NULL: every row in sequence 0): rows of several sequences in one pass (batched
 * decode), row r at position pos_dev[r] of sequence seq_dev[r], whose block table is tables_dev[seq_dev[r]]; each
 * row then attends to its own sequence's cache only. logits: when non-NULL, a
 * backend buffer receiving the lm_head output of the last row ([vocab]), with seq_dev of every row ([n, vocab]). bf16: the official rounding points.
 * dump_dir: write layerL.{attn,out,router_logits,experts}. */
typedef struct DecoderStep {
    float *x;
    int n;
    int pos0;
    const int32_t *pos_dev;
    const int32_t *table;
    const int32_t *const *tables_dev;
    const int32_t *seq_dev;
    const int32_t *ids_dev;
    const float *embed_row;
    KvCache *kv;
    int bf16;
    float *logits;
    const char *dump_dir;
    int gemm; /* products of many rows on the GPU's tensor cores (backend.h BE_FP32_SUMS off): a batch's steps and
                 its pages' prefills, whose rule is the teacher-forced margins one; 0: fp32 sums, as the CPU's */
} DecoderStep;
DsocrStatus decoder_forward(const Model *m, DecoderWork *w, const DecoderStep *s, DsError *e);

/* Embeds ids [n] (host) into x [n, hidden] (backend memory; rows of model.embed_tokens). */
void decoder_embed(const Model *m, const int32_t *ids, int n, float *x);

#endif
