/* test_api.c: the public header alone (the build also compiles it as strict C99 with -pedantic-errors, see the
 * Makefile's header check): status strings, option defaults, and errors for bad arguments without a model. */
#include <dsocr.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

static void test_status_strings(void) {
    for (int s = DSOCR_OK; s <= DSOCR_E_INTERNAL; s++) {
        const char *t = dsocr_status_string((DsocrStatus)s);
        CHECK(t && *t && strcmp(t, "unknown status") != 0);
    }
    CHECK(!strcmp(dsocr_status_string((DsocrStatus)999), "unknown status"));
}

static void test_defaults(void) {
    DsocrOcrOptions o;
    memset(&o, 0x5a, sizeof o);
    dsocr_ocr_options_default(&o);
    CHECK(!strcmp(o.mode, "gundam") && !strcmp(o.prompt, "markdown"));
    CHECK(o.compat == DSOCR_COMPAT_HF && o.precision == DSOCR_PRECISION_FP32);
    CHECK(o.no_repeat_ngram == -1 && o.ngram_window == -1 && o.max_tokens == 0 && o.on_token == NULL);
    DsocrModelOptions m;
    dsocr_model_options_default(&m);
    CHECK(!strcmp(m.device, "cpu") && m.threads == 0);
}

static void test_load_errors(void) {
    char err[256];
    DsocrModel *m = (DsocrModel *)&err; /* must be reset to NULL on failure */
    CHECK(dsocr_model_load("/nonexistent/model", NULL, &m, err, sizeof err) == DSOCR_E_IO);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(err, "/nonexistent/model/config.json");
    DsocrModelOptions o;
    dsocr_model_options_default(&o);
    o.device = "tpu";
    CHECK(dsocr_model_load("data/model", &o, &m, err, sizeof err) == DSOCR_E_INVALID_ARG);
    CHECK_STR_CONTAINS(err, "tpu");
    /* a folder with the official config but no weights */
    CHECK(dsocr_model_load("data/model", NULL, &m, err, sizeof err) != DSOCR_OK);
    CHECK(strlen(err) > 0);
}

int main(void) {
    RUN(test_status_strings);
    RUN(test_defaults);
    RUN(test_load_errors);
    return check_summary();
}
