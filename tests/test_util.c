/* test_util.c: bf16/fp16 conversion and error helpers. */
#include "check.h"
#include "util.h"

static void test_bf16_round_trip(void) {
    CHECK(bf16_to_f32(f32_to_bf16(1.0f)) == 1.0f);
    CHECK(bf16_to_f32(f32_to_bf16(-2.5f)) == -2.5f);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even gives 1 */
    CHECK(bf16_round(1.0f + 1.0f / 256) == 1.0f);
    CHECK(bf16_round(1.0f + 3.0f / 256) == 1.0f + 4.0f / 256);
    CHECK(isnan(bf16_to_f32(f32_to_bf16(NAN))));
    CHECK(isinf(bf16_to_f32(f32_to_bf16(INFINITY))));
}

static void test_fp16(void) {
    const float vals[] = {0.0f, 1.0f, -1.0f, 65504.0f, 0.5f, 1e-4f, 5.9604645e-8f, 6.1035156e-05f, 3.14159f};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        float r = fp16_to_f32(f32_to_fp16(vals[i]));
        CHECKF(fabsf(r - vals[i]) <= fabsf(vals[i]) * 1e-3f, "%g -> %g", vals[i], r);
    }
    CHECK(f32_to_fp16(1.0f) == 0x3c00);
    CHECK(f32_to_fp16(65504.0f) == 0x7bff);
    CHECK(f32_to_fp16(1e6f) == 0x7c00);
    CHECK(f32_to_fp16(5.9604645e-8f) == 0x0001);
    CHECK(f32_to_fp16(2.9802322e-8f) == 0x0000); /* half of the smallest subnormal: ties to even */
    /* every fp16 value survives a round trip */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue; /* NaN */
        if (f32_to_fp16(fp16_to_f32((uint16_t)h)) != h) bad++;
    }
    CHECKF(bad == 0, "%d fp16 values do not round-trip", bad);
}

static void test_error(void) {
    DsError e = {0};
    CHECK(ds_fail(&e, DSOCR_E_FORMAT, "bad %d", 7) == DSOCR_E_FORMAT);
    CHECK(!strcmp(e.msg, "bad 7"));
    ds_error_prefix(&e, "file %s", "x");
    CHECK(!strcmp(e.msg, "file x: bad 7"));
    CHECK(ds_fail(NULL, DSOCR_E_IO, "ignored") == DSOCR_E_IO);
}

int main(void) {
    RUN(test_bf16_round_trip);
    RUN(test_fp16);
    RUN(test_error);
    return check_summary();
}
