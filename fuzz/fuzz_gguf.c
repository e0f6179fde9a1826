/* fuzz_gguf.c: the GGUF parser on arbitrary bytes; when it accepts a file, every tensor it reports lies inside
 * the buffer, is aligned, is found by its name, and every key's value lies inside the buffer; the tokenizer
 * loader then runs on the metadata (it must fail cleanly or build a tokenizer). */
#include <stdint.h>
#include <stdlib.h>

#include "gguf.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    GgufFile f;
    DsError e;
    if (gguf_parse(data, size, "fuzz", &f, &e) != DSOCR_OK) return 0;
    for (int64_t i = 0; i < f.n_tensors; i++) {
        const GgufTensor *t = &f.tensors[i];
        if (t->data < data || t->nbytes > (uint64_t)(data + size - t->data)) abort();
        if ((uint64_t)(t->data - f.data) % f.alignment) abort();
        if (gguf_find_tensor(&f, t->name) != t) abort();
    }
    for (int64_t i = 0; i < f.n_kv; i++) {
        const GgufKv *kv = &f.kv[i];
        if (kv->val < data || kv->val_size > (uint64_t)(data + size - kv->val)) abort();
        if (gguf_find_kv(&f, kv->key) != kv) abort();
        if (kv->type == GGUF_T_ARRAY && kv->arr_type == GGUF_T_STRING) {
            uint64_t pos = 0;
            for (uint64_t j = 0; j < kv->arr_n; j++) gguf_arr_str_next(kv, &pos);
            if (pos != kv->val_size) abort();
        }
    }
    Tokenizer *t = NULL;
    if (tokenizer_load_gguf(&f, &t, &e) == DSOCR_OK) tokenizer_free(t);
    gguf_close(&f);
    return 0;
}
