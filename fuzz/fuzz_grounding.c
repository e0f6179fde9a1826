/* fuzz_grounding.c: libFuzzer target over the grounding post-processing (model output is outside bytes: a
 * model can write anything): parse, boxes, markdown, plain text, drawing and crops on a small page.
 * Input: 2 bytes of page width and height (1..256 each), then the raw text. Corpus: fuzz/corpus/grounding. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "postprocess.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    int w = 1 + data[0], h = 1 + data[1];
    char *raw = malloc(size - 2 ? size - 2 : 1); /* a copy of exactly the text, so over-reads are caught */
    if (!raw) return 0;
    memcpy(raw, data + 2, size - 2);
    PpOptions o = {.width = w, .height = h, .image_prefix = "f", .page = 1};
    PpPage p;
    if (postprocess_page(raw, size - 2, &o, &p, NULL) == DSOCR_OK) {
        DsImage page = {0}, drawn = {0};
        if (image_new(&page, w, h, NULL) == DSOCR_OK) {
            memset(page.rgb, 128, (size_t)w * h * 3);
            for (int i = 0; i < p.n_blocks; i++)
                for (int k = 0; k < p.blocks[i].n_boxes; k++) {
                    PpBox b = p.blocks[i].boxes[k];
                    if (b.x1 < 0 || b.x1 > b.x2 || b.x2 > w || b.y1 < 0 || b.y1 > b.y2 || b.y2 > h) abort();
                    DsImage c = {0};
                    if (postprocess_crop(&page, b, &c, NULL) == DSOCR_OK) image_free(&c);
                }
            if (postprocess_draw(&page, &p, &drawn, NULL) == DSOCR_OK) image_free(&drawn);
            image_free(&page);
        }
        if (!p.markdown || !p.text || strstr(p.markdown, "\n\n\n")) abort();
        postprocess_page_free(&p);
    }
    double (*bx)[4];
    int n;
    if (postprocess_parse_boxes(raw, size - 2, &bx, &n) == 0) free(bx);
    size_t s0, l = postprocess_trim(raw, size - 2, &s0);
    if (s0 + l > size - 2) abort();
    free(raw);
    return 0;
}
