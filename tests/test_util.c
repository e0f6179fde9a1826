/* test_util.c: bf16/fp16 conversion and error helpers. */
#include "check.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* ds_map_release: pages of a file mapping given back still read the file's bytes (they come back from the file);
 * ranges outside the mapping, or memory that is no mapping, are left alone (0 bytes) */
static void test_map_release(void) {
    char path[] = "/tmp/dsocr-map-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    const size_t n = 1 << 20;
    unsigned char *want = malloc(n);
    for (size_t i = 0; i < n; i++) want[i] = (unsigned char)(i * 7 + (i >> 9));
    REQUIRE(write(fd, want, n) == (ssize_t)n);
    close(fd);
    DsMap m;
    DsError e;
    REQUIRE(ds_map_file(path, &m, &e) == DSOCR_OK && m.mapped && m.size == n);
    long sum = 0;
    for (size_t i = 0; i < n; i += 4096) sum += m.data[i]; /* resident */
    const size_t got = ds_map_release(&m, m.data + 1000, n - 5000);
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    CHECKF(got > 0 && got % page == 0 && got <= n - 5000, "released %zu bytes", got);
    CHECK(memcmp(m.data, want, n) == 0); /* read back from the file */
    CHECK(ds_map_release(&m, m.data + n - 10, 100) == 0); /* runs past the end */
    CHECK(ds_map_release(&m, want, 4 * page) == 0);        /* not in the mapping */
    DsMap heap = {.data = want, .size = n, .mapped = 0};
    CHECK(ds_map_release(&heap, want, n) == 0); /* not a mapping: never touched */
    CHECK(want[n / 2] == (unsigned char)((n / 2) * 7 + ((n / 2) >> 9)));
    ds_map_free(&m);
    unlink(path);
    free(want);
    (void)sum;
}

int main(void) {
    RUN(test_bf16_round_trip);
    RUN(test_fp16);
    RUN(test_error);
    RUN(test_map_release);
    return check_summary();
}
