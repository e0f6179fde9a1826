/* test_image.c: unit tests of the image pipeline that need no Pillow: bad and hostile files give a clear
 * DSOCR_E_IMAGE error (no crash, no huge allocation), the view plan and slot counts of every named mode and of
 * custom sizes, orientation transforms, fit-and-pad at extreme aspect ratios, and the normalisation's
 * properties. Pixel exactness against Pillow is in tests/py/test_image_pillow.py. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "image.h"
#include "util.h"

static DsocrStatus decode(const uint8_t *b, size_t n, DsError *e) {
    DsImage im;
    DsocrStatus st = image_decode(b, n, NULL, &im, e);
    if (st == DSOCR_OK) image_free(&im);
    return st;
}

static int read_test_file(const char *path, uint8_t **buf, size_t *len) {
    DsError e;
    char *b;
    if (ds_read_file(path, 1 << 24, &b, len, &e) != DSOCR_OK) return -1;
    *buf = (uint8_t *)b;
    return 0;
}

static uint32_t crc32_of(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return ~c;
}

static void put32be(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A PNG signature + IHDR (valid CRC) claiming w x h 8-bit RGB, then a tiny IDAT and IEND. */
static size_t png_header(uint8_t *out, uint32_t w, uint32_t h) {
    static const uint8_t idat_iend[] = {0, 0, 0, 2, 'I', 'D', 'A', 'T', 0x78, 0x9c, 0, 0, 0, 0,
                                        0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
    memcpy(out, "\x89PNG\r\n\x1a\n", 8);
    put32be(out + 8, 13);
    memcpy(out + 12, "IHDR", 4);
    put32be(out + 16, w);
    put32be(out + 20, h);
    out[24] = 8;
    out[25] = 2;
    out[26] = out[27] = out[28] = 0;
    put32be(out + 29, crc32_of(out + 12, 17));
    memcpy(out + 33, idat_iend, sizeof idat_iend);
    return 33 + sizeof idat_iend;
}

static void test_empty_and_random(void) {
    DsError e = {0};
    CHECK(decode(NULL, 0, &e) == DSOCR_E_IMAGE);
    CHECK_STR_CONTAINS(e.msg, "empty");
    uint8_t one = 0xFF;
    CHECK(decode(&one, 0, &e) == DSOCR_E_IMAGE);
    uint8_t buf[4096];
    uint32_t s = 12345;
    for (int round = 0; round < 50; round++) {
        for (size_t i = 0; i < sizeof buf; i++) {
            s = s * 1103515245u + 12345u;
            buf[i] = (uint8_t)(s >> 16);
        }
        /* random bodies behind each magic number too */
        static const char *magic[] = {"", "\xFF\xD8\xFF", "\x89PNG\r\n\x1a\n", "GIF89a", "BM", "II*\0", "MM\0*",
                                      "RIFF\0\0\0\0WEBP"};
        int m = round % 8;
        size_t ml = m == 7 ? 12 : m == 5 || m == 6 ? 4 : strlen(magic[m]);
        memcpy(buf, magic[m], ml);
        e.msg[0] = 0;
        DsocrStatus st = decode(buf, sizeof buf - (size_t)round * 37, &e);
        CHECKF(st == DSOCR_E_IMAGE, "round %d: status %d", round, st);
        CHECKF(strlen(e.msg) > 5, "round %d: no message", round);
    }
    memset(buf, 0, 64);
    CHECK(decode(buf, 64, &e) == DSOCR_E_IMAGE);
    CHECK_STR_CONTAINS(e.msg, "not a supported image");
}

static void test_truncated(void) {
    uint8_t *b;
    size_t n;
    DsError e = {0};
    REQUIRE(read_test_file("tests/images/portrait.jpg", &b, &n) == 0);
    REQUIRE(decode(b, n, &e) == DSOCR_OK);
    size_t cuts[] = {2, 3, 20, 200, 600, n / 3, n / 2, n - 100};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        e.msg[0] = 0;
        CHECKF(decode(b, cuts[i], &e) == DSOCR_E_IMAGE, "JPEG cut at %zu", cuts[i]);
        CHECK_STR_CONTAINS(e.msg, "JPEG");
    }
    free(b);
    REQUIRE(read_test_file("tests/images/small.png", &b, &n) == 0);
    REQUIRE(decode(b, n, &e) == DSOCR_OK);
    size_t pcuts[] = {8, 20, 33, 40, 100, n / 2, n - 13};
    for (size_t i = 0; i < sizeof pcuts / sizeof pcuts[0]; i++) {
        e.msg[0] = 0;
        CHECKF(decode(b, pcuts[i], &e) == DSOCR_E_IMAGE, "PNG cut at %zu", pcuts[i]);
        CHECK_STR_CONTAINS(e.msg, "PNG");
    }
    free(b);
}

static void test_absurd_dimensions(void) {
    uint8_t buf[256];
    DsError e = {0};
    size_t n = png_header(buf, 100000, 100000);
    CHECK(decode(buf, n, &e) == DSOCR_E_IMAGE);
    CHECK_STR_CONTAINS(e.msg, "more than the limit");
    /* under the pixel cap, but far more than 59 bytes can hold */
    n = png_header(buf, 9000, 9000);
    CHECK(decode(buf, n, &e) == DSOCR_E_IMAGE);
    CHECK_STR_CONTAINS(e.msg, "could hold");
    /* GIF: 65535 x 65535 logical screen */
    static const uint8_t gif[] = {'G', 'I', 'F', '8', '9', 'a', 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, ',', 0, 0, 0, 0,
                                  1, 0, 1, 0, 0, 2, 2, 0x4C, 0x01, 0, ';'};
    CHECK(decode(gif, sizeof gif, &e) == DSOCR_E_IMAGE);
    CHECK_STR_CONTAINS(e.msg, "GIF");
    CHECK_STR_CONTAINS(e.msg, "limit");
    /* BMP: 100000 x 100000, then 5000 x 5000 24-bit with no pixel data */
    uint8_t bmp[54] = {'B', 'M'};
    bmp[10] = 54;
    bmp[14] = 40;
    uint32_t dims[2][2] = {{100000, 100000}, {5000, 5000}};
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 4; i++) {
            bmp[18 + i] = (uint8_t)(dims[k][0] >> (8 * i));
            bmp[22 + i] = (uint8_t)(dims[k][1] >> (8 * i));
        }
        bmp[26] = 1;
        bmp[28] = 24;
        e.msg[0] = 0;
        CHECK(decode(bmp, sizeof bmp, &e) == DSOCR_E_IMAGE);
        CHECK_STR_CONTAINS(e.msg, k == 0 ? "limit" : "truncated");
    }
    /* TIFF: one IFD claiming 100000 x 100000 RGB, then 8000 x 8000 uncompressed in a tiny file */
    for (int k = 0; k < 2; k++) {
        uint32_t d = k == 0 ? 100000 : 8000;
        uint8_t t[8 + 2 + 8 * 12 + 4] = {'I', 'I', 42, 0, 8, 0, 0, 0, 8, 0};
        const uint16_t tags[8][2] = {{256, 4}, {257, 4}, {258, 3}, {259, 3}, {262, 3}, {273, 4}, {277, 3}, {279, 4}};
        const uint32_t vals[8] = {d, d, 8, 1, 2, 8, 3, 1000};
        for (int i = 0; i < 8; i++) {
            uint8_t *p = t + 10 + 12 * i;
            p[0] = (uint8_t)tags[i][0];
            p[1] = (uint8_t)(tags[i][0] >> 8);
            p[2] = (uint8_t)tags[i][1];
            p[4] = 1;
            for (int j = 0; j < 4; j++) p[8 + j] = (uint8_t)(vals[i] >> (8 * j));
        }
        e.msg[0] = 0;
        CHECK(decode(t, sizeof t, &e) == DSOCR_E_IMAGE);
        CHECK_STR_CONTAINS(e.msg, "TIFF");
        CHECK_STR_CONTAINS(e.msg, k == 0 ? "limit" : "could hold");
    }
    /* the caller's own limit */
    uint8_t *b;
    size_t len;
    REQUIRE(read_test_file("tests/images/small.png", &b, &len) == 0);
    DsImage im;
    ImageDecodeOptions o = {.max_pixels = 1000};
    CHECK(image_decode(b, len, &o, &im, &e) == DSOCR_E_IMAGE);
    CHECK(im.rgb == NULL);
    free(b);
}

static void test_plans(void) {
    DsError e = {0};
    ImageMode m;
    ImagePlan p;
    const struct {
        const char *mode;
        int w, h, max_tiles, slots, tw, th, gside, direct;
    } cases[] = {
        {"tiny", 2000, 300, 9, 73, 0, 0, 512, 1},      {"small", 700, 1000, 9, 111, 0, 0, 640, 1},
        {"base", 700, 1000, 9, 273, 0, 0, 1024, 0},    {"large", 320, 200, 6, 421, 0, 0, 1280, 0},
        {"gundam", 640, 640, 9, 273, 0, 0, 1024, 0},   {"gundam", 1920, 1080, 9, 1093, 4, 2, 1024, 0},
        {"gundam", 1920, 1080, 6, 483, 2, 1, 1024, 0}, {"gundam", 1191, 1684, 6, 903, 2, 3, 1024, 0},
        {"gundam", 800, 600, 9, 273 + 20 * 31, 3, 2, 1024, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        REQUIRE(image_mode_by_name(cases[i].mode, &m) == 0);
        REQUIRE(image_plan(cases[i].w, cases[i].h, &m, cases[i].max_tiles, &p, &e) == DSOCR_OK);
        CHECKF(p.n_slots == cases[i].slots, "%s %dx%d: %d slots", cases[i].mode, cases[i].w, cases[i].h, p.n_slots);
        CHECK(p.tw == cases[i].tw && p.th == cases[i].th && p.n_tiles == p.tw * p.th);
        CHECK(p.global_side == cases[i].gside && p.global_direct == cases[i].direct);
        CHECK(p.n_views == p.n_tiles + 1);
    }
    CHECK(image_mode_by_name("huge", &m) == -1);
    /* custom: 896-px tiles are counted as 14 x 14 per tile (the seed's default image_size) */
    m = (ImageMode){1024, 896, 1};
    REQUIRE(image_plan(1920, 1080, &m, 9, &p, &e) == DSOCR_OK);
    CHECK(p.tile_side == 896 && p.n_tile == 14 && p.n_global == 16);
    CHECK(p.n_slots == 16 * 17 + 1 + (p.th * 14) * (p.tw * 14 + 1));
    /* non-crop: the view's side is image_size (R5); direct resize only up to 640 */
    m = (ImageMode){1024, 640, 0};
    REQUIRE(image_plan(1920, 1080, &m, 9, &p, &e) == DSOCR_OK);
    CHECK(p.global_side == 640 && p.global_direct == 1 && p.n_slots == 111 && p.n_tiles == 0);
    m = (ImageMode){512, 768, 0};
    REQUIRE(image_plan(100, 100, &m, 9, &p, &e) == DSOCR_OK);
    CHECK(p.global_side == 768 && p.global_direct == 0 && p.n_slots == 12 * 13 + 1);
    /* the 640 threshold holds whatever the tile side */
    m = (ImageMode){1280, 1024, 1};
    REQUIRE(image_plan(641, 100, &m, 9, &p, &e) == DSOCR_OK);
    CHECK(p.n_tiles >= 2);
    REQUIRE(image_plan(640, 640, &m, 9, &p, &e) == DSOCR_OK);
    CHECK(p.n_tiles == 0 && p.n_slots == 421);
    /* bad sizes */
    ImageMode bad[] = {{1000, 640, 1}, {1024, 448, 1}, {1344, 640, 0}, {0, 0, 0}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e.msg[0] = 0;
        CHECK(image_plan(800, 600, &bad[i], 9, &p, &e) == DSOCR_E_INVALID_ARG);
        CHECK_STR_CONTAINS(e.msg, "multiple of 64");
    }
    m = (ImageMode){1024, 640, 1};
    CHECK(image_plan(0, 600, &m, 9, &p, &e) == DSOCR_E_INVALID_ARG);
    CHECK(image_plan(800, 600, &m, 1, &p, &e) == DSOCR_E_INVALID_ARG);
    CHECK(image_slots(16, 0, 0, 0) == 273 && image_slots(16, 2, 3, 10) == 903);
}

static void test_views_shapes(void) {
    DsError e = {0};
    DsImage im;
    REQUIRE(image_new(&im, 1500, 700, &e) == DSOCR_OK);
    for (size_t i = 0; i < (size_t)1500 * 700 * 3; i++) im.rgb[i] = (uint8_t)(i * 31 % 251);
    ImageMode m = {1024, 640, 1};
    ImagePlan p;
    REQUIRE(image_plan(im.w, im.h, &m, 9, &p, &e) == DSOCR_OK);
    DsImage views[33];
    REQUIRE(image_make_views(&im, &p, views, &e) == DSOCR_OK);
    for (int v = 0; v < p.n_views; v++) {
        int side = v < p.n_tiles ? 640 : 1024;
        CHECK(views[v].w == side && views[v].h == side && views[v].rgb);
        image_free(&views[v]);
    }
    /* a plan for another size is refused */
    REQUIRE(image_plan(10, 10, &m, 9, &p, &e) == DSOCR_OK);
    CHECK(image_make_views(&im, &p, views, &e) == DSOCR_E_INVALID_ARG);
    image_free(&im);
}

static void test_orientation(void) {
    /* 3 x 2 image, pixel value = 10*y + x (all three channels) */
    DsError e = {0};
    static const int want[9][6] = {
        {0}, {0},
        {2, 1, 0, 12, 11, 10},  /* 2: mirror, 3 x 2 */
        {12, 11, 10, 2, 1, 0},  /* 3: 180 */
        {10, 11, 12, 0, 1, 2},  /* 4: flip */
        {0, 10, 1, 11, 2, 12},  /* 5: transpose, 2 x 3 */
        {10, 0, 11, 1, 12, 2},  /* 6: 90 clockwise */
        {12, 2, 11, 1, 10, 0},  /* 7: transverse */
        {2, 12, 1, 11, 0, 10},  /* 8: 90 counter-clockwise */
    };
    for (int o = 1; o <= 8; o++) {
        DsImage im;
        REQUIRE(image_new(&im, 3, 2, &e) == DSOCR_OK);
        for (int y = 0; y < 2; y++)
            for (int x = 0; x < 3; x++) memset(im.rgb + (y * 3 + x) * 3, 10 * y + x, 3);
        REQUIRE(image_orient(&im, o, &e) == DSOCR_OK);
        int swap = o >= 5;
        CHECK(im.w == (swap ? 2 : 3) && im.h == (swap ? 3 : 2));
        for (int i = 0; i < 6; i++) {
            int expect = o == 1 ? (i / 3) * 10 + i % 3 : want[o][i];
            CHECKF(im.rgb[3 * i] == expect && im.rgb[3 * i + 2] == expect, "orientation %d pixel %d: %d", o, i,
                   im.rgb[3 * i]);
        }
        image_free(&im);
    }
}

static void test_fit_pad_extremes(void) {
    DsError e = {0};
    DsImage im, out;
    REQUIRE(image_new(&im, 5000, 2, &e) == DSOCR_OK);
    memset(im.rgb, 0, (size_t)5000 * 2 * 3);
    REQUIRE(image_fit_pad(&im, 1024, IMAGE_PAD_FILL, &out, &e) == DSOCR_OK);
    CHECK(out.w == 1024 && out.h == 1024);
    int dark_rows = 0;
    for (int y = 0; y < 1024; y++)
        if (out.rgb[(size_t)y * 1024 * 3 + 3 * 500] == 0) dark_rows++;
    CHECK(dark_rows == 1 && out.rgb[(size_t)512 * 1024 * 3] == 0 && out.rgb[0] == IMAGE_PAD_FILL);
    image_free(&out);
    image_free(&im);
    REQUIRE(image_new(&im, 1, 3000, &e) == DSOCR_OK);
    memset(im.rgb, 255, 3000 * 3);
    REQUIRE(image_fit_pad(&im, 512, IMAGE_PAD_FILL, &out, &e) == DSOCR_OK);
    CHECK(out.w == 512 && out.rgb[(size_t)100 * 512 * 3 + 3 * 256] == 255 && out.rgb[3 * 255] == IMAGE_PAD_FILL);
    image_free(&out);
    image_free(&im);
}

static void test_normalize(void) {
    DsError e = {0};
    DsImage im;
    REQUIRE(image_new(&im, 256, 1, &e) == DSOCR_OK);
    for (int i = 0; i < 256; i++) im.rgb[3 * i] = im.rgb[3 * i + 1] = im.rgb[3 * i + 2] = (uint8_t)i;
    float *f = malloc(sizeof(float) * 3 * 256);
    REQUIRE(f);
    image_normalize(&im, f);
    CHECK(f[0] == -1.0f && f[255] == 1.0f);
    for (int i = 0; i < 256; i++) {
        uint32_t u;
        memcpy(&u, &f[i], 4);
        CHECKF((u & 0xFFFF) == 0, "value %d not bf16: %a", i, f[i]);
        CHECK(f[i] == f[256 + i] && f[i] == f[512 + i]);
        CHECKF(f[i] == -f[255 - i], "p=%d and 255-p are not opposite", i);
        CHECKF(fabsf(f[i] - (i / 127.5f - 1.0f)) <= 1.0f / 128, "value %d far from its real value", i);
        if (i) CHECK(f[i] >= f[i - 1]);
    }
    free(f);
    image_free(&im);
}

static void test_sniff(void) {
    CHECK(image_sniff((const uint8_t *)"\xFF\xD8\xFF\xE0", 4) == IMAGE_FMT_JPEG);
    CHECK(image_sniff((const uint8_t *)"GIF87a", 6) == IMAGE_FMT_GIF);
    CHECK(image_sniff((const uint8_t *)"MM\0*", 4) == IMAGE_FMT_TIFF);
    CHECK(image_sniff((const uint8_t *)"RIFF....WEBP", 12) == IMAGE_FMT_WEBP);
    CHECK(image_sniff((const uint8_t *)"RIFF....WAVE", 12) == IMAGE_FMT_UNKNOWN);
    CHECK(!strcmp(image_format_name(IMAGE_FMT_BMP), "BMP"));
}

int main(void) {
    RUN(test_empty_and_random);
    RUN(test_truncated);
    RUN(test_absurd_dimensions);
    RUN(test_plans);
    RUN(test_views_shapes);
    RUN(test_orientation);
    RUN(test_fit_pad_extremes);
    RUN(test_normalize);
    RUN(test_sniff);
    return check_summary();
}
