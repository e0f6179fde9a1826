/* fuzz_tokenizer_encode.c: libFuzzer target for encode and decode on the real vocabulary
 * (data/tokenizer/tokenizer.json, or $DSOCR_TOKENIZER). The input is the text to encode; it is also read as
 * little-endian int32 ids to decode. Checked: valid UTF-8 round-trips exactly, malformed UTF-8 is refused, and
 * streaming decode gives the same text as one decode, in whole characters. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static const Tokenizer *tokenizer(void) {
    static Tokenizer *t;
    if (t) return t;
    const char *path = getenv("DSOCR_TOKENIZER");
    DsError e = {0};
    if (tokenizer_load_json(path ? path : "data/tokenizer/tokenizer.json", &t, &e)) {
        fprintf(stderr, "fuzz_tokenizer_encode: %s (run from the repository root or set DSOCR_TOKENIZER)\n", e.msg);
        abort();
    }
    return t;
}

static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t b = s[i];
        size_t k = b < 0x80 ? 1 : b >= 0xC2 && b < 0xE0 ? 2 : b >= 0xE0 && b < 0xF0 ? 3 : b >= 0xF0 && b < 0xF5 ? 4 : 0;
        if (!k || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return 0;
        if (k == 3 && ((b == 0xE0 && s[i + 1] < 0xA0) || (b == 0xED && s[i + 1] > 0x9F))) return 0;
        if (k == 4 && ((b == 0xF0 && s[i + 1] < 0x90) || (b == 0xF4 && s[i + 1] > 0x8F))) return 0;
        i += k;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const Tokenizer *t = tokenizer();
    DsError e = {0};
    int32_t *ids = NULL;
    size_t n = 0;
    DsocrStatus st = tokenizer_encode(t, (const char *)data, size, &ids, &n, &e);
    if (valid_utf8(data, size) != (st == DSOCR_OK)) abort();
    if (st == DSOCR_OK) {
        char *back = NULL;
        size_t len = 0;
        if (tokenizer_decode(t, ids, n, 0, &back, &len, &e) != DSOCR_OK) abort();
        if (len != size || (size && memcmp(back, data, size))) abort();
        free(back);
    }
    free(ids);

    /* the same bytes as ids (any value: unknown ones are dropped), decoded at once and streamed */
    size_t nid = size / 4;
    int32_t *raw = malloc((nid ? nid : 1) * sizeof *raw);
    if (!raw) return 0;
    memcpy(raw, data, nid * 4);
    for (size_t i = 0; i < nid; i++)
        if (size % 4 == 1) raw[i] = (int32_t)((uint32_t)raw[i] % 129280u); /* mostly real ids */
    int skip = size % 2;
    char *whole = NULL;
    size_t wl = 0;
    if (tokenizer_decode(t, raw, nid, skip, &whole, &wl, &e) != DSOCR_OK) abort();
    if (!valid_utf8((const uint8_t *)whole, wl)) abort();
    TokenizerStream *s = NULL;
    if (tokenizer_stream_new(t, skip, &s, &e) != DSOCR_OK) abort();
    size_t at = 0;
    for (size_t i = 0; i <= nid; i++) {
        const char *piece;
        size_t pl;
        if ((i < nid ? tokenizer_stream_push(s, raw[i], &piece, &pl, &e) : tokenizer_stream_flush(s, &piece, &pl, &e)))
            abort();
        if (!valid_utf8((const uint8_t *)piece, pl) || at + pl > wl || memcmp(whole + at, piece, pl)) abort();
        at += pl;
    }
    if (at != wl) abort();
    tokenizer_stream_free(s);
    free(whole);
    free(raw);
    return 0;
}
