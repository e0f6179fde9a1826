/* dsocr.h: the public C API of dsocr, a DeepSeek-OCR engine.
 *
 * Two objects:
 *   DsocrModel   the loaded weights and tokenizer. Immutable after dsocr_model_load; one model may be shared by
 *                any number of threads and sessions.
 *   DsocrSession the working memory of one request at a time (activations, KV cache). Use a session from one
 *                thread at a time; create one session per worker thread.
 *
 * Every function that can fail returns a DsocrStatus; the message for a failure is written to the caller's
 * buffer (model loading) or kept in the session (dsocr_session_error). The library keeps no global state,
 * never calls exit(), and never prints except through the callbacks given to it.
 */
#ifndef DSOCR_H
#define DSOCR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DSOCR_VERSION "0.1.0"

typedef enum DsocrStatus {
    DSOCR_OK = 0,
    DSOCR_E_INVALID_ARG = 1, /* a bad option or argument from the caller */
    DSOCR_E_IO = 2,          /* a file could not be opened or read */
    DSOCR_E_FORMAT = 3,      /* outside bytes are malformed (JSON, safetensors header, tokenizer file) */
    DSOCR_E_MODEL = 4,       /* a checkpoint is readable but wrong: missing, extra or misshapen tensors */
    DSOCR_E_IMAGE = 5,       /* an image cannot be decoded or is too large to be real */
    DSOCR_E_NOMEM = 6,       /* a host or device allocation failed */
    DSOCR_E_UNSUPPORTED = 7, /* valid input this build cannot handle (a dtype, a device, a verb not yet built) */
    DSOCR_E_CANCELLED = 8,   /* the cancellation flag was raised */
    DSOCR_E_TOO_LONG = 9,    /* the prompt and image tokens do not fit the context */
    DSOCR_E_DEVICE = 10,     /* a GPU error that is not an allocation failure */
    DSOCR_E_INTERNAL = 11
} DsocrStatus;

/* A short constant name for a status, e.g. "invalid checkpoint". */
const char *dsocr_status_string(DsocrStatus s);

typedef struct DsocrModel DsocrModel;
typedef struct DsocrSession DsocrSession;

/* ---- model ---- */

typedef struct DsocrModelOptions {
    const char *device; /* "cpu" (default), "cuda", or "auto" */
    int threads;        /* CPU worker threads; 0 = all cores */
    int verbose;        /* 1: progress messages through log (e.g. "converting fp32 checkpoint ...") */
    void (*log)(void *user, const char *line); /* where messages go; NULL = nowhere */
    void *log_user;
    /* Weights quantised at load (CPU and CUDA): NULL or "" = as stored; "q8_0" = the decoder's linear
     * weights (attention, dense MLP, routed and shared experts) and lm_head as 8-bit blocks (Q8_0); "q4" = the
     * routed experts as 4-bit blocks (Q4_0), the rest of those as Q8_0. Norms, router, embeddings, position
     * tables and the vision encoder stay as stored. */
    const char *quant;
    /* GPU memory dsocr may use, in bytes (--gpu-mem); 0 = what the driver reports free, less 5 %. Within it the
     * weights go all on the GPU when they fit with a session's working memory, else the token embeddings and the
     * routed experts stay in host memory (the CPU computes those experts); loading fails with DSOCR_E_NOMEM when
     * even that does not fit, and later allocations past it fail as out of memory. Ignored on the CPU. */
    uint64_t gpu_mem;
} DsocrModelOptions;

/* Fills o with defaults. */
void dsocr_model_options_default(DsocrModelOptions *o);

/* Loads a model folder in the Hugging Face layout: config.json, tokenizer.json, and the weights as one
 * *.safetensors file or several listed by model.safetensors.index.json. Weights are memory-mapped, not copied.
 * Every tensor is checked by name, dtype and shape; on failure *out is NULL and err (errlen bytes, may be NULL)
 * names the problem. opt may be NULL for defaults. */
DsocrStatus dsocr_model_load(const char *dir, const DsocrModelOptions *opt, DsocrModel **out, char *err,
                             size_t errlen);
void dsocr_model_free(DsocrModel *m);

/* Where a model runs and what it holds there. */
typedef struct DsocrDeviceInfo {
    char device[16];     /* "cpu" or "cuda" */
    char gpu_name[128];  /* "" on the CPU */
    uint64_t gpu_total;  /* the driver's view of the card in bytes (0 on the CPU) */
    uint64_t gpu_used;   /* everything in use on the card, other processes included (0 on the CPU) */
    uint64_t allocated;  /* bytes dsocr holds on the device now (weights, sessions) */
    uint64_t peak;       /* the most it has held */
    uint64_t gpu_baseline; /* the driver's used bytes right after dsocr created its CUDA context, before it
                              allocated anything (0 on the CPU): gpu_used − gpu_baseline is dsocr's share */
    uint64_t gpu_budget; /* the budget dsocr keeps its allocations within (0 on the CPU) */
    char placement[16];  /* "all-gpu", "hybrid" (embeddings and routed experts on the CPU), or "cpu" */
} DsocrDeviceInfo;

/* Fills out for model m; safe to call from any thread while m is in use. */
void dsocr_model_device_info(const DsocrModel *m, DsocrDeviceInfo *out);

/* ---- session ---- */

typedef struct DsocrSessionOptions {
    int max_context; /* largest prompt + output in tokens the session accepts; 0 = the model's (8192) */
} DsocrSessionOptions;

void dsocr_session_options_default(DsocrSessionOptions *o);
/* Creates a session; all of its working memory is sized here, for the worst case it accepts. */
DsocrStatus dsocr_session_new(const DsocrModel *m, const DsocrSessionOptions *opt, DsocrSession **out, char *err,
                              size_t errlen);
void dsocr_session_free(DsocrSession *s);
/* The message of the session's last failure ("" after a success). Valid until the next call on s. */
const char *dsocr_session_error(const DsocrSession *s);

/* ---- OCR ---- */

/* Called once per generated token with the text it completes (never half a UTF-8 character; may be empty).
 * Return non-zero to stop generation early (the result then ends with stop = DSOCR_STOP_CALLBACK). */
typedef int (*DsocrTokenCallback)(void *user, int token_id, const char *text, size_t len);

typedef enum DsocrCompat {
    DSOCR_COMPAT_HF = 0,  /* Hugging Face infer(): up to 9 tiles, no-repeat 20-grams over prompt and output */
    DSOCR_COMPAT_VLLM = 1 /* official vLLM: up to 6 tiles, 30-grams in a 90-token window, RGBA on white */
} DsocrCompat;

/* FP32: fp32 activations, norms, softmax and KV cache (on a GPU the tensor-core products still take bf16 inputs).
 * BF16: the official model's bf16 rounding points and a bf16 KV cache.
 * F16: the fp32 graph (residual stream, norms, softmax and KV cache in fp32) with fp16 inputs to the GPU's
 * tensor-core products (saturated to +-65504, never inf): what cards without bf16 (sm_75) run. CUDA only; a run
 * on the CPU refuses it with DSOCR_E_INVALID_ARG. */
typedef enum DsocrPrecision {
    DSOCR_PRECISION_FP32 = 0,
    DSOCR_PRECISION_BF16 = 1,
    DSOCR_PRECISION_F16 = 2
} DsocrPrecision;

typedef struct DsocrOcrOptions {
    const char *mode;   /* "tiny" "small" "base" "large" "gundam" (default); or NULL and the three below */
    int base_size;      /* global view side (multiple of 64, 512..1280) when mode is NULL */
    int image_size;     /* tile side in crop mode, else the view side (HF semantics) */
    int crop_mode;      /* 1: tile large images */
    const char *prompt; /* a name (markdown, ocr, free, figure, describe, locate:TEXT, raw:TEXT); NULL = markdown */
    DsocrCompat compat;
    int max_tokens;      /* new tokens at most; 0 = until the context is full (8192) */
    int ignore_eos;      /* 1: keep generating past end-of-sequence (benchmarks) */
    int no_repeat_ngram; /* -1 = the profile's; 0 = off */
    int ngram_window;    /* -1 = the profile's; 0 = whole output */
    DsocrPrecision precision;
    DsocrTokenCallback on_token;
    void *user;
    const volatile int *cancel; /* when non-NULL and *cancel != 0, the run stops between tokens or tiles */
    /* Progress: called with a one-line description of the stage ("vision 3/7 views", "prefill 1310 tokens",
     * "decode 120 tokens, 14.2 tok/s"); NULL = none. */
    void (*on_progress)(void *user, const char *line);
    int threads; /* CPU threads for this run; 0 = the model's setting */
} DsocrOcrOptions;

void dsocr_ocr_options_default(DsocrOcrOptions *o);

typedef enum DsocrStop {
    DSOCR_STOP_EOS = 0,      /* the model ended the text */
    DSOCR_STOP_LENGTH = 1,   /* max_tokens or the context was reached */
    DSOCR_STOP_CALLBACK = 2, /* on_token asked to stop */
    DSOCR_STOP_CANCEL = 3    /* the cancel flag was raised */
} DsocrStop;

typedef struct DsocrResult {
    char *text;        /* raw generated text, grounding tags included, EOS not included; NUL-terminated */
    size_t text_len;
    int *tokens;       /* generated ids */
    int n_tokens;
    int n_prompt;      /* prompt length in tokens, image slots included */
    int n_views;       /* 1 (global) + tiles */
    DsocrStop stop;
    double seconds_preprocess; /* on the host: image decoding, view planning, resizing, normalising */
    double seconds_vision;     /* the vision encoder over every view (uploads included), until the device is done */
    double seconds_prefill, seconds_decode;
} DsocrResult;

/* Runs OCR on an encoded image (JPEG, PNG, WebP, BMP, GIF, TIFF). On success *out owns its buffers; free them
 * with dsocr_result_free. On failure *out is zeroed and dsocr_session_error(s) says why. */
DsocrStatus dsocr_ocr(DsocrSession *s, const void *image, size_t image_len, const DsocrOcrOptions *opt,
                      DsocrResult *out);
void dsocr_result_free(DsocrResult *r);

#ifdef __cplusplus
}
#endif
#endif
