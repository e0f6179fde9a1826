/* engine.h: internals of the public API (engine.c) that the command line and tests use: stage dumps and
 * teacher forcing. Not part of include/dsocr.h. */
#ifndef DSOCR_ENGINE_H
#define DSOCR_ENGINE_H

#include "dsocr.h"
#include "backend.h"
#include "config.h"
#include "image.h"

typedef struct EngineDebug {
    const char *dump_dir;        /* write every stage (tools/reference/DUMP.md names); NULL: none */
    const int32_t *force_ids;    /* teacher forcing: feed these tokens instead of the argmax */
    int n_force;                 /* generation stops after n_force steps */
    /* Forced image embeddings (e.g. another run's image_embeds.bin): [embeds_rows, embeds_cols] host floats that
     * replace the assembled image block (every view's rows, newlines and separator, in the order of the
     * image_embeds dump) before prefill; vision still runs (and dumps). The shape must be [slots, hidden_size] of
     * the page's plan, else the page fails with a message naming embeds_path and both shapes. NULL: none. */
    const float *force_embeds;
    int64_t embeds_rows, embeds_cols;
    const char *embeds_path; /* for messages */
    int prefill_only; /* stop after the prefill: the result holds n_prompt and the timings, no tokens; the session's
                         KV pool holds the prompt (its first blocks) and its logits are the first token's (batch) */
    int prefill_gemm; /* the prefill's products on the GPU's tensor cores (DecoderStep.gemm; a batch's pages) */
} EngineDebug;

DsocrStatus engine_ocr(DsocrSession *s, const void *image, size_t image_len, const DsocrOcrOptions *opt,
                       const EngineDebug *dbg, DsocrResult *out);

/* One page of a batch: the image file's bytes, and its own options (NULL: the batch's). Every page of a batch
 * must have the same precision. */
typedef struct EnginePage {
    const void *image;
    size_t len;
    const DsocrOcrOptions *opt;
} EnginePage;

/* Several pages decoded together (issue 13): each page's views and prompt go through the session as for one page
 * (engine_ocr up to its prefill) and its prompt's KV blocks move into a pool the pages share (kvpool.h, each page
 * admitted with the positions it may reach); then every page still generating gives one row to each decoder pass
 * (decoder.h DecoderStep.seq_dev) and takes its next token from its own logits by the one-page rules (greedy, the
 * n-gram ban, EOS, max_tokens), leaving when it stops (engine_ocr_queue with every page at once). out[i] is what dsocr_ocr gives for page i, the same tokens
 * where the backend's products do not depend on the row count (the CPU; on a GPU a step of more than 8 rows and the
 * pages' prefills run on the tensor cores, DecoderStep.gemm, so a page may part from its run alone where two
 * tokens are a near tie; DSOCR_BATCH_EXACT=1 keeps one page's sums); each page's on_token gets its pieces and may
 * stop it, its cancel flag stops it. A page that fails on its own (a bad image) gets no result and the others go on;
 * the status is then the first such page's, with its number in the session's error. */
DsocrStatus engine_ocr_batch(DsocrSession *s, const EnginePage *pages, int n, const DsocrOcrOptions *opt,
                             DsocrResult *out);
/* engine_ocr_batch with at most max_batch pages decoding at a time (continuous batching): a page joins at a token
 * boundary when a row is free and the pool can take its reservation (the pool grows within the memory budget, or
 * the page waits for others to leave), and leaves when it stops; on_done (NULL: none) gets each page's result as it
 * stops, in the order they stop (a failed page's with no tokens). */
typedef void (*EnginePageDone)(void *user, int page, const DsocrResult *r);
DsocrStatus engine_ocr_queue(DsocrSession *s, const EnginePage *pages, int n, int max_batch,
                             const DsocrOcrOptions *opt, DsocrResult *out, EnginePageDone on_done, void *user);

/* The pages coming from a source, as a server's requests come (continuous batching): at each token boundary with a
 * free row, next(user, &page, &id) is asked for a page: 1 with one (id: the caller's, for end_page), 0 with none
 * now (the stream ends when no page is active either). end_page(user, id, status, message, result) once per page
 * when it ends: its result, which the callee takes over (the struct's contents), or a status with the message of a
 * page that failed on its own (a bad image, a pool it alone cannot fit: the others go on). Returns DSOCR_OK, or the
 * failure of the batch itself (every page in it has ended with it then). */
typedef int (*EnginePageNext)(void *user, EnginePage *page, int *id);
typedef void (*EnginePageEnd)(void *user, int id, DsocrStatus st, const char *err, DsocrResult *r);
DsocrStatus engine_ocr_stream(DsocrSession *s, int max_batch, const DsocrOcrOptions *opt, EnginePageNext next,
                              EnginePageEnd end_page, void *user);

/* The prompt text for a prompt name (markdown, ocr, free, figure, describe, locate:TEXT, raw:TEXT) into buf;
 * -1 for an unknown name. */
int engine_prompt_text(const char *name, char *buf, size_t n);

/* Resolves the mode / sizes of opt into m; DSOCR_E_INVALID_ARG with a message for bad values. */
DsocrStatus engine_mode(const DsocrOcrOptions *opt, ImageMode *m, char *err, size_t errlen);

/* Whether runs of precision p can run on m's backend: DSOCR_OK, or DSOCR_E_INVALID_ARG with a message in err
 * (f16 on the CPU, which runs fp32 or bf16; a value outside DsocrPrecision). dsocr_ocr checks it too; the
 * command line asks first so that a refused precision is one error, not a failed page. */
DsocrStatus engine_precision_check(const DsocrModel *m, DsocrPrecision p, char *err, size_t errlen);
/* The precision's name: "fp32", "bf16", "f16" ("?" for other values). */
const char *engine_precision_name(DsocrPrecision p);

/* The profile's name ("hf" or "vllm"). */
const char *engine_compat_name(DsocrCompat c);
/* The backend a loaded model computes on (for the benchmark's device figures and profile). */
Backend *engine_model_backend(const DsocrModel *m);
/* Its configuration. */
const ModelConfig *engine_model_config(const DsocrModel *m);
/* Sets the memory budget sessions' growth is admitted against (kv pool, prompt buffers; DSOCR_E_NOMEM past it),
 * on any backend: for tests of the refusal path on the CPU (a GPU model gets its budget at load). 0: none. */
void engine_set_budget(DsocrModel *m, uint64_t bytes);
/* The CPU threads the model's requests run with (--threads, else every processor). */
int engine_model_threads(const DsocrModel *m);

#endif
