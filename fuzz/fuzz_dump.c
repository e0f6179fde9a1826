/* fuzz_dump.c: the stage-dump reader (--force-ids, --force-embeds) on arbitrary bytes, as f32 and as i32; an
 * accepted dump's shape must account for exactly the data it returned. */
#include <stdint.h>
#include <stdlib.h>

#include "dump.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const int types[2] = {DUMP_F32, DUMP_I32};
    for (int t = 0; t < 2; t++) {
        void *out;
        int64_t shape[8];
        int nd;
        DsError e;
        if (dump_parse4("fuzz", data, size, types[t], &out, shape, &nd, &e) != DSOCR_OK) continue;
        uint64_t n = 1;
        for (int i = 0; i < nd; i++) n *= (uint64_t)shape[i];
        if (16 + 8 * (uint64_t)nd + 4 * n != size) abort();
        volatile uint8_t sink = 0;
        for (uint64_t i = 0; i < 4 * n; i++) sink ^= ((const uint8_t *)out)[i]; /* every byte returned is readable */
        free(out);
    }
    return 0;
}
