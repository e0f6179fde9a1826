/* fuzz_exif.c: libFuzzer target over our EXIF orientation parser and the PNG text forms it reads (the
 * "Raw profile type exif" hex dump and an XMP tiff:Orientation). Corpus: fuzz/corpus/exif. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "image_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int present;
    int o = exif_orientation(data, size);
    if (o < 0 || o > 8) abort();
    o = exif_orientation_tiff(data, size, &present);
    if (o < 0 || o > 8) abort();
    /* the same bytes as text, through a copy so that reads past the end are caught */
    char *t = malloc(size ? size : 1);
    if (!t) return 0;
    memcpy(t, data, size);
    o = exif_orientation_from_raw_profile(t, size, &present);
    if (o < -1 || o > 8) abort();
    o = exif_orientation_from_xmp(t, size);
    if (o < 0 || o > 9) abort();
    free(t);
    return 0;
}
