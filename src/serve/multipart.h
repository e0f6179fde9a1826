/* multipart.h: a parser for multipart/form-data request bodies (RFC 7578) held whole in memory, for the
 * server's POST /ocr. It reads untrusted bytes: every failure is a status with a message naming the problem,
 * and it never reads outside the body. Parts point into the body (no copies); the names are unquoted copies.
 *
 * What it is not: no streaming, no nested multipart/mixed, no charset conversion, no Content-Transfer-Encoding
 * (browsers and HTTP clients do not send it for form data; a part with a base64 transfer encoding is refused). */
#ifndef DSOCR_SERVE_MULTIPART_H
#define DSOCR_SERVE_MULTIPART_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define MULTIPART_MAX_PARTS 64
#define MULTIPART_MAX_BOUNDARY 200 /* RFC 2046 says 70; some clients go a little over */
#define MULTIPART_MAX_NAME 256

typedef struct MultipartPart {
    char name[MULTIPART_MAX_NAME];     /* the form field's name (Content-Disposition name=) */
    char filename[MULTIPART_MAX_NAME]; /* filename= when present, else "" (truncated when longer) */
    int has_filename;                  /* 1 when the part carried filename= (a file field) */
    char content_type[128];            /* the part's Content-Type, "" when absent */
    const uint8_t *data;               /* [len] the part's bytes, pointing into the body */
    size_t len;
} MultipartPart;

/* Extracts the boundary parameter of a Content-Type header value ("multipart/form-data; boundary=XYZ", quoted
 * or not) into out (NUL-terminated). Fails with DSOCR_E_FORMAT when the type is not multipart/form-data or the
 * boundary is missing, empty or longer than MULTIPART_MAX_BOUNDARY. content_type may be NULL. */
DsocrStatus multipart_boundary(const char *content_type, char *out, size_t outlen, DsError *e);

/* Splits body (len bytes) at boundary into parts[0..*n_parts-1] (at most max_parts). A preamble before the
 * first boundary and an epilogue after the closing one are ignored. Fails with DSOCR_E_FORMAT on a missing
 * first or closing boundary, a part without a Content-Disposition form-data name, a header line without a
 * colon, an unterminated header block, or too many parts. */
DsocrStatus multipart_parse(const uint8_t *body, size_t len, const char *boundary, MultipartPart *parts,
                            int max_parts, int *n_parts, DsError *e);

#endif
