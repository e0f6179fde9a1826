/* fuzz_tokenizer_load.c: libFuzzer target for the tokenizer.json loader (untrusted file bytes). A file that
 * loads must also encode and decode without trouble, and decode(encode(text)) must give the text back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Tokenizer *t = NULL;
    DsError e = {0};
    if (tokenizer_load_json_buffer((const char *)data, size, &t, &e) != DSOCR_OK) {
        if (t || !e.msg[0]) abort(); /* a failure always names its cause */
        return 0;
    }
    static const char text[] = "<image>\nHello, world! 12345 \xE4\xBD\xA0\xE5\xA5\xBD  \t\r\n ab<x>'s";
    int32_t *ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(t, text, sizeof text - 1, &ids, &n, &e) == DSOCR_OK) {
        char *back = NULL;
        size_t len = 0;
        if (tokenizer_decode(t, ids, n, 0, &back, &len, &e) != DSOCR_OK) abort();
        if (len != sizeof text - 1 || memcmp(back, text, len)) abort();
        free(back);
    }
    free(ids);
    tokenizer_token_id(t, "<image>");
    tokenizer_free(t);
    return 0;
}
