/* docapi.h: the body of the server's document endpoint, POST /v1/ocr (multipart/form-data: a PDF or an image
 * in field `file`, and the options of `dsocr ocr`), parsed into a DocRequest. A pure function over untrusted
 * bytes (no I/O, no model, no rendering): every failure is DSOCR_E_INVALID_ARG or DSOCR_E_FORMAT with a message
 * fit for a 400 response's "detail" (DSOCR_E_NOMEM when out of memory). Fuzzed by fuzz/fuzz_http_document.c.
 *
 * What it is not: the page selection is only checked for its syntax here (the page count is known once the
 * document is opened: serve.c checks it then); no output formats (the JSON answer carries markdown, text and
 * the raw output of every page; files are not written by the server). */
#ifndef DSOCR_SERVE_DOCAPI_H
#define DSOCR_SERVE_DOCAPI_H

#include <stddef.h>
#include <stdint.h>

#include "dsocr.h"
#include "serve/api.h"
#include "util.h"

typedef struct DocRequest {
    uint8_t *file; /* [file_len] the uploaded PDF or image (owned) */
    size_t file_len;
    char filename[128]; /* the upload's name, printable ASCII only ("upload" when none): the JSON's "source" */
    char mode[16];      /* a named mode, or "" for base_size/image_size/crop_mode */
    int base_size, image_size, crop_mode;
    char *prompt;       /* a prompt name or raw:TEXT, as `dsocr ocr --prompt` (owned; default "markdown") */
    DsocrCompat compat;
    int max_tokens;     /* per page; 0 = the server's default */
    char pages[128];    /* page selection ("1-3,7"); "" = all */
    int dpi;            /* 18..1200 (default 144) */
    int retries;        /* 0..2 (default 2) */
    int stream;         /* 1: server-sent events per page */
} DocRequest;

/* Defaults of `dsocr ocr` with -o: gundam mode, prompt markdown, hf profile, dpi 144, 2 retries. */
void docapi_request_init(DocRequest *r);
void docapi_request_free(DocRequest *r);

/* POST /v1/ocr: fields file (required; the PDF or image), mode | base_size + image_size + crop_mode, prompt,
 * compat, max_tokens, pages, dpi, retries, stream (boolean). Unknown fields are refused (a misspelt option
 * would otherwise be silently ignored). content_type is the request's Content-Type header (may be NULL). */
DsocrStatus docapi_parse(const char *content_type, const uint8_t *body, size_t len, const ApiLimits *lim,
                         DocRequest *r, DsError *e);

#endif
