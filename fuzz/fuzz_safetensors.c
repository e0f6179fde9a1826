/* fuzz_safetensors.c: the safetensors header parser on arbitrary bytes; when it accepts a file, every tensor
 * it reports must lie inside the buffer. */
#include <stdint.h>
#include <stdlib.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    StFile f;
    DsError e;
    if (safetensors_parse(data, size, "fuzz", &f, &e) != DSOCR_OK) return 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const StTensor *t = &f.tensors[i];
        if (t->data < data || t->data + (t->end - t->begin) > data + size) abort();
        if (t->end - t->begin != t->numel * ds_dtype_size(t->dtype)) abort();
        if (safetensors_find(&f, t->name) != t) abort();
    }
    safetensors_close(&f);
    return 0;
}
