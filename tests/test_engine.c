/* test_engine.c: the public API on a small random model (tests/ckpt_fixture.h): bad images give clear errors and
 * leave the session usable, options are checked, results do not depend on the thread count, the token callback
 * and the cancel flag stop generation, and memory does not grow over repeated runs. */
#include <stdlib.h>

#include "check.h"
#include "ckpt_fixture.h"
#include "dsocr.h"
#include "engine.h"

static char *g_dir;
static DsocrModel *g_model;
static DsocrSession *g_sess;
static char *g_png;
static size_t g_png_len;

static int setup(void) {
    if (!(g_dir = fixture_tiny_model_dir())) return -1;
    char err[512];
    if (dsocr_model_load(g_dir, NULL, &g_model, err, sizeof err) != DSOCR_OK) {
        fprintf(stderr, "load: %s\n", err);
        return -1;
    }
    if (dsocr_session_new(g_model, NULL, &g_sess, err, sizeof err) != DSOCR_OK) return -1;
    return ds_read_file("tests/images/small.png", 1 << 24, &g_png, &g_png_len, NULL) ? -1 : 0;
}

static DsocrStatus run(const DsocrOcrOptions *o, const void *img, size_t n, DsocrResult *r) {
    return dsocr_ocr(g_sess, img, n, o, r);
}

static void opts(DsocrOcrOptions *o) {
    dsocr_ocr_options_default(o);
    o->mode = "tiny";
    o->max_tokens = 6;
    o->ignore_eos = 1;
}

static void test_good_run(void) {
    DsocrOcrOptions o;
    opts(&o);
    DsocrResult r;
    REQUIRE(run(&o, g_png, g_png_len, &r) == DSOCR_OK);
    CHECK(r.n_tokens == 6 && r.stop == DSOCR_STOP_LENGTH);
    CHECK(r.n_prompt == 1 + 73 + 9); /* BOS + tiny-mode slots + "\n<|grounding|>Convert the document to markdown." */
    CHECK(r.n_views == 1 && r.text != NULL);
    dsocr_result_free(&r);
}

static void test_bad_images(void) {
    DsocrOcrOptions o;
    opts(&o);
    DsocrResult r;
    uint8_t junk[512];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 131 + 7);
    CHECK(run(&o, junk, sizeof junk, &r) == DSOCR_E_IMAGE);
    CHECK(strlen(dsocr_session_error(g_sess)) > 0);
    CHECK(r.text == NULL && r.n_tokens == 0);
    CHECK(run(&o, g_png, 0, &r) == DSOCR_E_IMAGE);
    CHECK(run(&o, g_png, g_png_len / 2, &r) == DSOCR_E_IMAGE); /* truncated PNG */
    CHECK_STR_CONTAINS(dsocr_session_error(g_sess), "PNG");
    /* a PNG whose header claims 100000 x 100000 */
    uint8_t big[64];
    memcpy(big, g_png, 33);
    const uint32_t dim = 100000;
    for (int i = 0; i < 4; i++) big[16 + i] = big[20 + i] = (uint8_t)(dim >> (24 - 8 * i));
    CHECK(run(&o, big, 33, &r) == DSOCR_E_IMAGE);
    /* the session still works */
    REQUIRE(run(&o, g_png, g_png_len, &r) == DSOCR_OK);
    CHECK(r.n_tokens == 6);
    dsocr_result_free(&r);
}

static void test_bad_options(void) {
    DsocrOcrOptions o;
    opts(&o);
    DsocrResult r;
    o.mode = "huge";
    CHECK(run(&o, g_png, g_png_len, &r) == DSOCR_E_INVALID_ARG);
    CHECK_STR_CONTAINS(dsocr_session_error(g_sess), "huge");
    opts(&o);
    o.mode = NULL;
    o.base_size = 700;
    o.image_size = 640;
    CHECK(run(&o, g_png, g_png_len, &r) == DSOCR_E_INVALID_ARG);
    opts(&o);
    o.prompt = "raw:<image> and <image>";
    CHECK(run(&o, g_png, g_png_len, &r) == DSOCR_E_INVALID_ARG);
    CHECK_STR_CONTAINS(dsocr_session_error(g_sess), "several <image>");
    opts(&o);
    o.prompt = "nonsense";
    CHECK(run(&o, g_png, g_png_len, &r) == DSOCR_E_INVALID_ARG);
    /* f16 is the CUDA path for cards without bf16: the CPU refuses it and says what it runs instead */
    opts(&o);
    o.precision = DSOCR_PRECISION_F16;
    CHECK(run(&o, g_png, g_png_len, &r) == DSOCR_E_INVALID_ARG);
    CHECK_STR_CONTAINS(dsocr_session_error(g_sess), "f16 is the CUDA path");
    CHECK_STR_CONTAINS(dsocr_session_error(g_sess), "the CPU runs fp32 or bf16");
    CHECK(r.text == NULL && r.n_tokens == 0);
    opts(&o);
    o.precision = (DsocrPrecision)7;
    CHECK(run(&o, g_png, g_png_len, &r) == DSOCR_E_INVALID_ARG);
    CHECK_STR_CONTAINS(dsocr_session_error(g_sess), "unknown precision");
    /* a prompt without <image>: the image goes first */
    opts(&o);
    o.prompt = "raw:Free OCR.";
    REQUIRE(run(&o, g_png, g_png_len, &r) == DSOCR_OK);
    CHECK(r.n_prompt > 74);
    dsocr_result_free(&r);
}

static void test_threads_same(void) {
    DsocrOcrOptions o;
    opts(&o);
    o.mode = "gundam"; /* small.png is under 640 px: one global view */
    o.max_tokens = 10;
    DsocrResult a, b;
    o.threads = 1;
    REQUIRE(run(&o, g_png, g_png_len, &a) == DSOCR_OK);
    o.threads = 2;
    REQUIRE(run(&o, g_png, g_png_len, &b) == DSOCR_OK);
    CHECK(a.n_tokens == b.n_tokens && !memcmp(a.tokens, b.tokens, sizeof(int) * (size_t)a.n_tokens));
    CHECK(!strcmp(a.text, b.text));
    dsocr_result_free(&a);
    dsocr_result_free(&b);
}

/* Views of four sides (512, 640, 1024, 1280 px) in turn in one session, more sides than the vision encoder keeps
 * position tables for, the 1,280-px one growing the region the views' buffers share with the KV pool: every result
 * equals the same mode run in a fresh session. */
static void test_view_sides(void) {
    const char *modes[] = {"tiny", "small", "base", "tiny", "large", "base", "small", "tiny"};
    DsocrSession *fresh = NULL;
    char err[512];
    REQUIRE(dsocr_session_new(g_model, NULL, &fresh, err, sizeof err) == DSOCR_OK);
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        DsocrOcrOptions o;
        opts(&o);
        o.mode = modes[i];
        o.max_tokens = 4;
        DsocrResult a, b;
        REQUIRE(run(&o, g_png, g_png_len, &a) == DSOCR_OK);
        if (i < 3) {
            REQUIRE(dsocr_ocr(fresh, g_png, g_png_len, &o, &b) == DSOCR_OK);
        } else { /* a new session for the repeats, so that the reference never saw another side */
            DsocrSession *s2 = NULL;
            REQUIRE(dsocr_session_new(g_model, NULL, &s2, err, sizeof err) == DSOCR_OK);
            REQUIRE(dsocr_ocr(s2, g_png, g_png_len, &o, &b) == DSOCR_OK);
            dsocr_session_free(s2);
        }
        CHECKF(a.n_tokens == b.n_tokens && !memcmp(a.tokens, b.tokens, sizeof(int) * (size_t)a.n_tokens),
               "mode %s (run %zu) differs from a fresh session", modes[i], i);
        dsocr_result_free(&a);
        dsocr_result_free(&b);
    }
    dsocr_session_free(fresh);
}

static int stop_at_three(void *user, int id, const char *text, size_t len) {
    (void)id;
    (void)text;
    (void)len;
    return ++*(int *)user >= 3;
}

static int raise_cancel(void *user, int id, const char *text, size_t len) {
    (void)id;
    (void)text;
    (void)len;
    *(volatile int *)user = 1;
    return 0;
}

static void test_callback_and_cancel(void) {
    DsocrOcrOptions o;
    opts(&o);
    o.max_tokens = 20;
    int calls = 0;
    o.on_token = stop_at_three;
    o.user = &calls;
    DsocrResult r;
    REQUIRE(run(&o, g_png, g_png_len, &r) == DSOCR_OK);
    CHECK(r.n_tokens == 3 && r.stop == DSOCR_STOP_CALLBACK && calls == 3);
    dsocr_result_free(&r);
    volatile int flag = 0;
    opts(&o);
    o.max_tokens = 20;
    o.cancel = &flag;
    o.on_token = raise_cancel;
    o.user = (void *)&flag;
    REQUIRE(run(&o, g_png, g_png_len, &r) == DSOCR_OK);
    CHECK(r.n_tokens == 1 && r.stop == DSOCR_STOP_CANCEL);
    dsocr_result_free(&r);
    /* raised before the run: stops between views */
    flag = 1;
    o.on_token = NULL;
    CHECK(run(&o, g_png, g_png_len, &r) == DSOCR_E_CANCELLED);
}

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return res * 4;
}

static void test_memory_flat(void) {
    DsocrOcrOptions o;
    opts(&o);
    DsocrResult r;
    REQUIRE(run(&o, g_png, g_png_len, &r) == DSOCR_OK);
    dsocr_result_free(&r);
    long before = rss_kb();
    for (int i = 0; i < 30; i++) {
        REQUIRE(run(&o, g_png, g_png_len, &r) == DSOCR_OK);
        dsocr_result_free(&r);
    }
    long after = rss_kb();
    CHECKF(after - before < 2048, "resident memory grew by %ld KiB over 30 runs", after - before);
}

/* A second session whose prompt buffers start at 16 rows and grow in 16-row steps ($DSOCR_ROWS_GROW); NULL when it
 * cannot be made. */
static DsocrSession *small_rows_session(void) {
    setenv("DSOCR_ROWS_GROW", "16", 1);
    DsocrSession *s = NULL;
    char err[512];
    const DsocrStatus st = dsocr_session_new(g_model, NULL, &s, err, sizeof err);
    unsetenv("DSOCR_ROWS_GROW");
    return st == DSOCR_OK ? s : NULL;
}

/* A session whose prompt buffers start at 16 rows grows them for each larger prompt (tiny, then base) and gives the
 * tokens of the main session, whose buffers never grow. */
static void test_rows_grow(void) {
    DsocrSession *s2 = small_rows_session();
    REQUIRE(s2);
    const char *modes[] = {"tiny", "base", "tiny"};
    for (int i = 0; i < 3; i++) {
        DsocrOcrOptions o;
        opts(&o);
        o.mode = modes[i];
        DsocrResult a, b;
        REQUIRE(run(&o, g_png, g_png_len, &a) == DSOCR_OK);
        REQUIRE(dsocr_ocr(s2, g_png, g_png_len, &o, &b) == DSOCR_OK);
        CHECKF(a.n_prompt > 16 && a.n_tokens == b.n_tokens &&
                   !memcmp(a.tokens, b.tokens, sizeof(int) * (size_t)a.n_tokens),
               "mode %s: grown prompt buffers change the tokens", modes[i]);
        dsocr_result_free(&a);
        dsocr_result_free(&b);
    }
    dsocr_session_free(s2);
}

/* Admission against a memory budget, on the CPU (the logic is the same on every backend): a run whose prompt
 * buffers would grow past it is refused with DSOCR_E_NOMEM and a message naming the budget; the session stays
 * usable, and without the budget the same run gives the main session's tokens. */
static void test_budget_refusal(void) {
    DsocrSession *s3 = small_rows_session();
    REQUIRE(s3);
    DsocrDeviceInfo d;
    dsocr_model_device_info(g_model, &d);
    engine_set_budget(g_model, d.allocated + 1024); /* less than the tiny prompt's rows need */
    DsocrOcrOptions o;
    opts(&o);
    DsocrResult a, b;
    CHECK(dsocr_ocr(s3, g_png, g_png_len, &o, &b) == DSOCR_E_NOMEM);
    CHECK_STR_CONTAINS(dsocr_session_error(s3), "does not fit the memory budget");
    engine_set_budget(g_model, 0);
    REQUIRE(run(&o, g_png, g_png_len, &a) == DSOCR_OK);
    REQUIRE(dsocr_ocr(s3, g_png, g_png_len, &o, &b) == DSOCR_OK);
    CHECK(a.n_tokens == b.n_tokens && !memcmp(a.tokens, b.tokens, sizeof(int) * (size_t)a.n_tokens));
    dsocr_result_free(&a);
    dsocr_result_free(&b);
    dsocr_session_free(s3);
}

static void test_device_info(void) {
    DsocrDeviceInfo d;
    memset(&d, 0x5a, sizeof d);
    dsocr_model_device_info(g_model, &d);
    CHECK(!strcmp(d.device, "cpu") && d.gpu_name[0] == 0 && d.gpu_total == 0 && d.gpu_used == 0);
    CHECK(d.allocated > 0 && d.peak >= d.allocated); /* the session's buffers */
    CHECK(!strcmp(d.placement, "cpu") && d.gpu_budget == 0);
}

int main(void) {
    SETUP_OR_FAIL(setup() == 0);
    RUN(test_good_run);
    RUN(test_bad_images);
    RUN(test_bad_options);
    RUN(test_threads_same);
    RUN(test_view_sides);
    RUN(test_callback_and_cancel);
    RUN(test_memory_flat);
    RUN(test_rows_grow);
    RUN(test_budget_refusal);
    RUN(test_device_info);
    dsocr_session_free(g_sess);
    dsocr_model_free(g_model);
    free(g_png);
    fixture_rmdir(g_dir);
    return check_summary();
}
