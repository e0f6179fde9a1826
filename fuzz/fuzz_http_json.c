/* fuzz_http_json.c: the server's JSON request parsing on arbitrary bytes: POST /ocr-base64 and POST
 * /v1/chat/completions (and the base64 / data: URL decoder they share). The first byte picks the parser. An
 * accepted request must hold an image and a prompt with exactly one <image> tag for chat. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "serve/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % 3;
    data++;
    size--;
    ApiLimits lim = {.max_prompt = 4000, .max_tokens_cap = 8192};
    OcrRequest r;
    if (which == 0) {
        api_request_init_seed(&r);
        if (api_parse_base64_json(data, size, &lim, &r, NULL) == DSOCR_OK)
            if (!r.image || !r.image_len || !r.prompt || strlen(r.prompt) > lim.max_prompt) abort();
    } else if (which == 1) {
        api_request_init_chat(&r);
        if (api_parse_chat(data, size, &lim, &r, NULL) == DSOCR_OK) {
            if (!r.image || !r.image_len || !r.prompt || !strstr(r.prompt, "<image>")) abort();
            if (r.n_warnings < 0 || r.n_warnings > API_MAX_WARNINGS) abort();
        }
    } else {
        api_request_init_seed(&r);
        uint8_t *out = NULL;
        size_t n = 0;
        if (api_base64_decode((const char *)data, size, &out, &n, NULL) == DSOCR_OK && (!out || n == 0 || n > size))
            abort();
        free(out);
    }
    api_request_free(&r);
    return 0;
}
