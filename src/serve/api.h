/* api.h: the server's request bodies parsed into one OCR job description: the seed API's multipart POST /ocr
 * and JSON POST /ocr-base64, and the OpenAI-compatible POST /v1/chat/completions. Pure functions over
 * untrusted bytes (no I/O, no model): every failure is DSOCR_E_INVALID_ARG or DSOCR_E_FORMAT with a message
 * fit for a 400 response's "detail". Fuzzed by fuzz/fuzz_http_multipart.c and fuzz/fuzz_http_json.c.
 *
 * What it is not: no HTTP (serve.c), no image decoding (the server validates images separately), no engine. */
#ifndef DSOCR_SERVE_API_H
#define DSOCR_SERVE_API_H

#include <stddef.h>
#include <stdint.h>

#include "dsocr.h"
#include "util.h"

#define API_DEFAULT_PROMPT "<image>\nFree OCR."
#define API_MAX_WARNINGS 8

/* Limits checked while parsing (before any work starts). */
typedef struct ApiLimits {
    size_t max_prompt;  /* bytes of prompt text at most */
    int max_tokens_cap; /* a request's max_tokens above this is refused; 0 = no cap */
} ApiLimits;

typedef struct OcrRequest {
    uint8_t *image; /* [image_len] the encoded image (owned) */
    size_t image_len;
    char *prompt; /* the literal prompt text (owned), e.g. "<image>\nFree OCR." */
    int save_to_file;
    char mode[16];      /* a named mode, or "" for base_size/image_size/crop_mode */
    int base_size, image_size, crop_mode;
    int max_tokens;     /* 0 = the server's default */
    DsocrCompat compat;
    int stream;         /* chat: server-sent events */
    int include_usage;  /* chat: stream_options.include_usage */
    char model[128];    /* chat: the "model" the client named ("" when absent) */
    char warnings[API_MAX_WARNINGS][160];
    int n_warnings;
} OcrRequest;

/* Defaults of the seed API: prompt "<image>\nFree OCR.", save_to_file, base_size 1024, image_size 896,
 * crop_mode, hf profile. (The prompt is left NULL here; parsers fill it.) */
void api_request_init_seed(OcrRequest *r);
/* Defaults of the OpenAI API: gundam mode, vllm profile, no saving. */
void api_request_init_chat(OcrRequest *r);
void api_request_free(OcrRequest *r);

/* POST /ocr: a multipart/form-data body with fields image (file, required), prompt, save_to_file, base_size,
 * image_size, crop_mode, and the extensions mode (tiny|small|base|large|gundam), max_tokens, compat. Unknown
 * fields are ignored as the seed does. content_type is the request's Content-Type header (may be NULL). */
DsocrStatus api_parse_multipart(const char *content_type, const uint8_t *body, size_t len, const ApiLimits *lim,
                                OcrRequest *r, DsError *e);

/* POST /ocr-base64: JSON {image_base64 (raw base64 or a data: URL), prompt, save_to_file, base_size,
 * image_size, crop_mode} plus the same extensions. */
DsocrStatus api_parse_base64_json(const uint8_t *body, size_t len, const ApiLimits *lim, OcrRequest *r,
                                  DsError *e);

/* POST /v1/chat/completions: JSON {model, messages, max_tokens | max_completion_tokens, stream,
 * stream_options.include_usage} plus the extensions mode / base_size / image_size / crop_mode / compat. The
 * last user message's one image (image_url as a data: URL or bare base64) becomes "<image>\n" before its text
 * (the prompt; "Free OCR." when it has none). Several images are refused; system messages, earlier turns and
 * sampling parameters are ignored with a warning (decoding is greedy). */
DsocrStatus api_parse_chat(const uint8_t *body, size_t len, const ApiLimits *lim, OcrRequest *r, DsError *e);

/* Decodes base64 (standard or URL-safe alphabet, padding optional, ASCII whitespace ignored) or a
 * "data:[type][;params];base64,DATA" URL into a fresh buffer (*out, caller frees). Fails on any other
 * character, a data: URL that is not base64, a dangling final character, or an empty result. */
DsocrStatus api_base64_decode(const char *s, size_t n, uint8_t **out, size_t *out_len, DsError *e);

/* Parses a form/JSON-string boolean as pydantic does: true/false, 1/0, yes/no, on/off, t/f, y/n (any case).
 * Returns 0 and sets *v, or -1. */
int api_parse_bool(const char *s, int *v);

#endif
