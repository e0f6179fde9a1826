/* test_postprocess.c: grounding post-processing on committed raw outputs in the official format
 * (tests/fixtures/grounded/), the box parser, drawing, crops and JPEG encoding, and the loop detector on a
 * recorded looping token stream and on real text. */
#include <stdlib.h>

#include "check.h"
#include "loop.h"
#include "postprocess.h"

static char *read_fixture(const char *name, size_t *n) {
    char path[512], *buf = NULL;
    snprintf(path, sizeof path, "tests/fixtures/%s", name);
    if (ds_read_file(path, 1 << 24, &buf, n, NULL)) return NULL;
    return buf;
}

static PpPage page_of(const char *name, int w, int h) {
    size_t n = 0, s0;
    char *raw = read_fixture(name, &n);
    PpPage p = {0};
    if (!raw) return p;
    size_t len = postprocess_trim(raw, n, &s0);
    PpOptions o = {.width = w, .height = h, .image_prefix = "doc", .page = 1};
    if (postprocess_page(raw + s0, len, &o, &p, NULL)) memset(&p, 0, sizeof p);
    free(raw);
    return p;
}

static int px(double v, int size) { return (int)(v / 999.0 * size); } /* spec §9, written out again */

static void test_official_page(void) {
    PpPage p = page_of("grounded/doc_page.raw.md", 1000, 2000);
    REQUIRE(p.markdown != NULL);
    REQUIRE(p.n_blocks == 6);
    const char *labels[6] = {"title", "text", "equation", "table", "image", "image_caption"};
    for (int i = 0; i < 6; i++) CHECKF(!strcmp(p.blocks[i].label, labels[i]), "block %d: %s", i, p.blocks[i].label);
    /* the 0..999 grid to pixels: 999 maps to the full side, 333 to int(333/999*W) */
    CHECK(p.blocks[0].boxes[0].x1 == 0 && p.blocks[0].boxes[0].x2 == 1000 && p.blocks[0].boxes[0].y2 == 2000);
    CHECK(p.blocks[1].boxes[0].x1 == px(333, 1000) && p.blocks[1].boxes[0].y1 == px(333, 2000));
    CHECK(p.blocks[1].boxes[0].y2 == px(500, 2000) && p.blocks[1].boxes[0].y2 == 1001);
    CHECK(!strcmp(p.blocks[0].text, "# Annual Report"));
    CHECK(!strcmp(p.blocks[1].text, "Revenue grew by 12% while costs stayed flat."));
    /* the image ref holds two boxes: two crops, two links */
    CHECK(p.blocks[4].is_image && p.blocks[4].n_boxes == 2 && p.blocks[4].first_crop == 0 && p.n_crops == 2);
    CHECK(!p.blocks[5].is_image && p.blocks[5].first_crop == -1);
    CHECK_STR_CONTAINS(p.markdown, "![](images/doc-0001-0.jpg)\n![](images/doc-0001-1.jpg)\n");
    CHECK(strstr(p.markdown, "<|ref|>") == NULL && strstr(p.markdown, "<|det|>") == NULL);
    CHECK(strstr(p.markdown, "end\xe2\x96\x81of") == NULL);
    CHECK_STR_CONTAINS(p.markdown, "f(x) := x^2 =: g");
    CHECK(strstr(p.markdown, "\n\n\n") == NULL);
    CHECK(!strncmp(p.markdown, "# Annual Report\n\nRevenue", 24));
    /* plain text: no tags, no links, no heading marks, cells tab-separated */
    CHECK(strstr(p.text, "<td>") == NULL && strstr(p.text, "![](") == NULL && strncmp(p.text, "#", 1) != 0);
    CHECK_STR_CONTAINS(p.text, "Q1\t10\nQ2\t12");
    CHECK_STR_CONTAINS(p.text, "Annual Report\n\nRevenue");
    postprocess_page_free(&p);
}

static void test_odd_page(void) {
    const int W = 640, H = 480;
    PpPage p = page_of("grounded/odd.raw.md", W, H);
    REQUIRE(p.markdown != NULL);
    REQUIRE(p.n_blocks == 6); /* leading text + 5 matches; the dangling ref is content of the last block */
    CHECK(!strcmp(p.blocks[0].label, "text") && p.blocks[0].n_boxes == 0);
    CHECK(!strcmp(p.blocks[0].text, "Leading text without a ref."));
    /* out-of-range values clamped, box reordered: x from 10.5..999 */
    PpBox b = p.blocks[1].boxes[0];
    CHECK(b.x1 == px(10.5, W) && b.x2 == W && b.y1 == 0 && b.y2 == px(998.9, H));
    CHECK(p.blocks[2].n_boxes == 1 && p.blocks[2].boxes[0].x1 == px(100, W)); /* flat [x1,y1,x2,y2] */
    CHECK(p.blocks[3].det_ok == 0 && p.blocks[3].n_boxes == 0);
    CHECK(!strcmp(p.blocks[4].label, "a<|ref|>b")); /* as Python's non-greedy findall */
    CHECK(p.blocks[4].n_boxes == 1);
    CHECK(p.blocks[5].is_image && p.n_crops == 1);
    CHECK_STR_CONTAINS(p.blocks[5].text, "<|ref|>dangling<|/ref|> no det here");
    for (int i = 0; i < p.n_blocks; i++)
        for (int k = 0; k < p.blocks[i].n_boxes; k++) {
            PpBox q = p.blocks[i].boxes[k];
            CHECK(q.x1 >= 0 && q.x1 <= q.x2 && q.x2 <= W && q.y1 >= 0 && q.y1 <= q.y2 && q.y2 <= H);
        }
    /* a zero-area crop is widened to one pixel */
    DsImage page = {0}, crop = {0};
    REQUIRE(image_new(&page, W, H, NULL) == DSOCR_OK);
    memset(page.rgb, 200, (size_t)W * H * 3);
    REQUIRE(postprocess_crop(&page, p.blocks[5].boxes[0], &crop, NULL) == DSOCR_OK);
    CHECK(crop.w == 1 && crop.h == 1);
    image_free(&crop);
    image_free(&page);
    postprocess_page_free(&p);
}

static void test_plain_and_empty(void) {
    PpPage p = page_of("grounded/plain.raw.md", 100, 100);
    REQUIRE(p.markdown != NULL);
    CHECK(p.n_blocks == 1 && p.n_crops == 0);
    CHECK(!strcmp(p.markdown, "Just plain text from the Free OCR prompt.\n\nSecond paragraph."));
    postprocess_page_free(&p);
    PpOptions o = {.width = 10, .height = 10};
    CHECK(postprocess_page("", 0, &o, &p, NULL) == DSOCR_OK && p.n_blocks == 0 && !strcmp(p.markdown, ""));
    postprocess_page_free(&p);
    o.width = 0;
    CHECK(postprocess_page("x", 1, &o, &p, NULL) == DSOCR_E_INVALID_ARG);
    size_t s0, n = postprocess_trim("  hi \n" POSTPROCESS_EOS, strlen("  hi \n" POSTPROCESS_EOS), &s0);
    CHECK(s0 == 2 && n == 2);
}

static void test_parse_boxes(void) {
    double (*b)[4];
    int n;
    const char *good = " [[1, 2, 3, 4], [5.5,6,7,8] ,] ";
    CHECK(postprocess_parse_boxes(good, strlen(good), &b, &n) == 0 && n == 2 && b[1][0] == 5.5 && b[0][3] == 4);
    free(b);
    CHECK(postprocess_parse_boxes("[]", 2, &b, &n) == 0 && n == 0);
    const char *bad[] = {"", "[", "[[1,2,3]]", "[[1,2,3,4,5]]", "[[1,2,3,4]] x", "[[a,b,c,d]]", "[[1,2,3,4]", "1,2,3,4",
                         "[[1,,2,3,4]]", "[[1,2,3,4][5,6,7,8]]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECKF(postprocess_parse_boxes(bad[i], strlen(bad[i]), &b, &n) == -1 && n == 0, "'%s'", bad[i]);
    }
    CHECK(postprocess_grid_to_px(999, 1224) == 1224 && postprocess_grid_to_px(-3, 50) == 0);
    CHECK(postprocess_grid_to_px(500, 1224) == (int)(500 / 999.0 * 1224));
}

static void test_draw_crop_jpeg(void) {
    const int W = 300, H = 200;
    PpPage p = page_of("grounded/doc_page.raw.md", W, H);
    REQUIRE(p.markdown != NULL);
    DsImage page = {0}, drawn = {0}, crop = {0}, back = {0};
    REQUIRE(image_new(&page, W, H, NULL) == DSOCR_OK);
    for (int i = 0; i < W * H * 3; i++) page.rgb[i] = (uint8_t)(i * 7);
    REQUIRE(postprocess_draw(&page, &p, &drawn, NULL) == DSOCR_OK);
    CHECK(drawn.w == W && drawn.h == H);
    /* the text block's outline changes its top-left corner; a pixel no box covers is unchanged */
    PpBox b = p.blocks[1].boxes[0];
    size_t at = ((size_t)(b.y1 + 1) * W + b.x1 + 1) * 3;
    CHECK(memcmp(drawn.rgb + at, page.rgb + at, 3) != 0);
    CHECK(memcmp(drawn.rgb, page.rgb, 3) != 0); /* the title box covers the whole page */
    /* crop of the first figure box */
    PpBox fb = p.blocks[4].boxes[0];
    REQUIRE(postprocess_crop(&page, fb, &crop, NULL) == DSOCR_OK);
    CHECK(crop.w == fb.x2 - fb.x1 && crop.h == fb.y2 - fb.y1);
    CHECK(!memcmp(crop.rgb, page.rgb + ((size_t)fb.y1 * W + fb.x1) * 3, 3));
    unsigned char *jpg = NULL;
    size_t jl = 0;
    REQUIRE(postprocess_jpeg(&drawn, 90, &jpg, &jl, NULL) == DSOCR_OK);
    CHECK(jl > 100 && jpg[0] == 0xff && jpg[1] == 0xd8);
    REQUIRE(image_decode(jpg, jl, NULL, &back, NULL) == DSOCR_OK);
    CHECK(back.w == W && back.h == H);
    free(jpg);
    image_free(&back);
    image_free(&crop);
    image_free(&drawn);
    image_free(&page);
    postprocess_page_free(&p);
}

static int read_ids(const char *name, int32_t **ids) {
    size_t n;
    char *t = read_fixture(name, &n);
    if (!t) return -1;
    char *p = strchr(t, '\n'); /* skip the comment line */
    int cnt = 0, cap = 0;
    *ids = NULL;
    for (p = p ? p + 1 : t; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) {
            p++;
            continue;
        }
        if (cnt == cap) {
            cap = cap ? cap * 2 : 256;
            *ids = realloc(*ids, sizeof(int32_t) * (size_t)cap);
        }
        (*ids)[cnt++] = (int32_t)v;
        p = end;
    }
    free(t);
    return cnt;
}

static void test_loop_detector(void) {
    int32_t *ids;
    int n = read_ids("loop_tokens.txt", &ids);
    REQUIRE(n > 400);
    int period = 0, start = 0;
    CHECK(loop_scan(ids, n, NULL, &period, &start) == 1);
    CHECKF(period > 1 && period < 40 && start < 60, "period %d start %d", period, start);
    /* the streaming detector fires at the same point or earlier than the end, and stays fired */
    LoopDetector d;
    loop_init(&d, NULL);
    int fired = -1;
    for (int i = 0; i < n; i++)
        if (loop_push(&d, ids[i]) == 1 && fired < 0) fired = i + 1;
    CHECK(fired > 0 && fired <= 300 && d.looped && d.period == period);
    loop_free(&d);
    /* zero members take the defaults, given ones are kept */
    LoopOptions strict = {.min_match = 1.0};
    loop_init(&d, &strict);
    CHECK(d.o.min_match == 1.0 && d.o.min_span == 200);
    loop_free(&d);
    free(ids);
    n = read_ids("noloop_tokens.txt", &ids);
    REQUIRE(n >= 1000);
    CHECK(loop_scan(ids, n, NULL, &period, &start) == 0);
    free(ids);
    /* a short period repeated below the span is not a loop; above it, it is */
    int32_t rep[400];
    for (int i = 0; i < 400; i++) rep[i] = 1000 + i % 3;
    CHECK(loop_scan(rep, 150, NULL, &period, &start) == 0);
    CHECK(loop_scan(rep, 400, NULL, &period, &start) == 1 && period == 3 && start == 0);
}

int main(void) {
    RUN(test_official_page);
    RUN(test_odd_page);
    RUN(test_plain_and_empty);
    RUN(test_parse_boxes);
    RUN(test_draw_crop_jpeg);
    RUN(test_loop_detector);
    return check_summary();
}
