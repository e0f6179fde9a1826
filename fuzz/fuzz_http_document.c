/* fuzz_http_document.c: the server's document endpoint parsing (POST /v1/ocr) on arbitrary bytes. The input's
 * first line is the Content-Type header value, the rest the body. Checks that an accepted request holds a
 * non-empty file, a printable name, a prompt, and options within their ranges. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "serve/docapi.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nl = memchr(data, '\n', size < 512 ? size : 512);
    size_t hl = nl ? (size_t)(nl - data) : 0;
    char ct[513];
    memcpy(ct, data, hl);
    ct[hl] = 0;
    const uint8_t *body = nl ? nl + 1 : data;
    size_t len = size - (size_t)(body - data);
    ApiLimits lim = {.max_prompt = 4000, .max_tokens_cap = 8192};
    DocRequest r;
    docapi_request_init(&r);
    if (docapi_parse(ct, body, len, &lim, &r, NULL) == DSOCR_OK) {
        if (!r.file || r.file_len == 0 || !r.prompt || !r.filename[0]) abort();
        for (const char *p = r.filename; *p; p++)
            if (*p < 0x20 || *p > 0x7e) abort();
        if (r.max_tokens < 0 || r.max_tokens > lim.max_tokens_cap) abort();
        if (r.dpi < 18 || r.dpi > 1200 || r.retries < 0 || r.retries > 2) abort();
        ImageMode m = {r.base_size, r.image_size, r.crop_mode};
        if (r.mode[0] ? image_mode_by_name(r.mode, &m) != 0 : image_mode_check(&m, NULL) != DSOCR_OK) abort();
    }
    docapi_request_free(&r);
    return 0;
}
