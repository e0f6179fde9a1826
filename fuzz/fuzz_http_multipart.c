/* fuzz_http_multipart.c: the server's multipart/form-data parsing (POST /ocr) on arbitrary bytes. The input's
 * first line is the Content-Type header value, the rest the body. Checks that every part lies inside the body
 * and that an accepted request holds an image and a prompt within the limits. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api.h"
#include "serve/multipart.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nl = memchr(data, '\n', size < 512 ? size : 512);
    size_t hl = nl ? (size_t)(nl - data) : 0;
    char ct[513];
    memcpy(ct, data, hl);
    ct[hl] = 0;
    const uint8_t *body = nl ? nl + 1 : data;
    size_t len = size - (size_t)(body - data);
    /* the low-level parser: parts inside the body */
    char boundary[MULTIPART_MAX_BOUNDARY + 1];
    if (multipart_boundary(ct, boundary, sizeof boundary, NULL) == DSOCR_OK) {
        MultipartPart *parts = malloc(sizeof *parts * MULTIPART_MAX_PARTS);
        int n = 0;
        if (parts && multipart_parse(body, len, boundary, parts, MULTIPART_MAX_PARTS, &n, NULL) == DSOCR_OK) {
            for (int i = 0; i < n; i++)
                if (parts[i].data < body || parts[i].data + parts[i].len > body + len) abort();
        }
        free(parts);
    }
    /* the request level */
    ApiLimits lim = {.max_prompt = 4000, .max_tokens_cap = 8192};
    OcrRequest r;
    api_request_init_seed(&r);
    if (api_parse_multipart(ct, body, len, &lim, &r, NULL) == DSOCR_OK) {
        if (!r.image || r.image_len == 0 || !r.prompt || strlen(r.prompt) > lim.max_prompt) abort();
        if (r.max_tokens < 0 || r.max_tokens > lim.max_tokens_cap) abort();
    }
    api_request_free(&r);
    return 0;
}
