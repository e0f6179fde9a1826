/* fuzz_image.c: libFuzzer target over the whole decoder entry point (every format, our BMP reader and EXIF
 * parser included), then, for small results and one
 * options byte in four, the view plan, views and normalisation. The first byte picks
 * the options; the rest is the file. Corpus: fuzz/corpus/image (small images of every format). */
#include <stdint.h>
#include <stdlib.h>

#include "image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    ImageDecodeOptions o = {.alpha_white = data[0] & 1, .ignore_exif = (data[0] >> 1) & 1,
                            .max_pixels = 1 << 20};
    DsImage im;
    DsError e;
    if (image_decode(data + 1, size - 1, &o, &im, &e) != DSOCR_OK) return 0;
    if ((data[0] & 0x30) == 0x30 && (long long)im.w * im.h <= 1 << 16) { /* views are slow: 1 in 4 */
        ImageMode m = {512, 512, (data[0] >> 2) & 1};
        ImagePlan p;
        if (image_plan(im.w, im.h, &m, (data[0] & 8) ? IMAGE_MAX_TILES_VLLM : IMAGE_MAX_TILES_HF, &p, &e) ==
            DSOCR_OK) {
            DsImage views[IMAGE_MAX_TILES_HF + 1];
            if (image_make_views(&im, &p, views, &e) == DSOCR_OK) {
                float *f = malloc(sizeof(float) * 3 * (size_t)views[p.n_views - 1].w * views[p.n_views - 1].h);
                if (f) image_normalize(&views[p.n_views - 1], f);
                free(f);
                for (int v = 0; v < p.n_views; v++) image_free(&views[v]);
            }
        }
    }
    image_free(&im);
    return 0;
}
