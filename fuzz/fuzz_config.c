/* fuzz_config.c: config.json parsing on arbitrary bytes; an accepted config must give a tensor list whose
 * shapes are all positive. */
#include <stdint.h>
#include <stdlib.h>

#include "checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ModelConfig c;
    DsError e;
    if (config_parse((const char *)data, size, "fuzz", &c, &e) != DSOCR_OK) return 0;
    /* keep the tensor list small enough for the fuzzer's memory limit */
    if ((uint64_t)c.num_hidden_layers * (uint64_t)(c.n_routed_experts + 8) > 100000 || c.sam.layers > 64 ||
        c.clip.layers > 4096)
        return 0;
    CkExpected *ex;
    int n;
    if (checkpoint_expected(&c, &ex, &n, &e) != DSOCR_OK) return 0;
    for (int i = 0; i < n; i++)
        for (int d = 0; d < ex[i].ndim; d++)
            if (ex[i].shape[d] <= 0) abort();
    free(ex);
    return 0;
}
