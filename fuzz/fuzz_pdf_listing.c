/* fuzz_pdf_listing.c: libFuzzer target over the parser of `mutool pages` output (text a child writes after
 * reading a hostile PDF, so outside bytes too). Corpus: fuzz/corpus/pdf_listing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pdf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *t = malloc(size + 1);
    if (!t) return 0;
    memcpy(t, data, size);
    t[size] = 0;
    int n;
    unsigned char *ex;
    double *sz;
    if (pdf_parse_listing(t, &n, &ex, &sz, NULL) == DSOCR_OK) {
        if (n < 1 || n > 100000) abort();
        for (int i = 0; i < n; i++)
            if (ex[i] > 1 || sz[2 * i] < 0 || sz[2 * i + 1] < 0) abort();
        free(ex);
        free(sz);
    }
    free(t);
    return 0;
}
