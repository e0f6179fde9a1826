/* check.h: the unit-test harness. Each test file defines test functions, lists them in main with RUN(),
 * and ends with `return check_summary();`, which prints "N passed, N failed" on a line of its own.
 * CHECK records a failure and goes on; REQUIRE records it and returns from the test function. */
#ifndef DSOCR_CHECK_H
#define DSOCR_CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int check_passed_, check_failed_, check_cur_failed_;
static const char *check_cur_name_ = "";

/* In main, before the tests: a failed set-up (fixture, model) counts as one failed test and ends the program. */
#define SETUP_OR_FAIL(ok)                                                                                     \
    do {                                                                                                      \
        if (!(ok)) {                                                                                          \
            fprintf(stderr, "setup failed\n");                                                                \
            printf("0 passed, 1 failed\n");                                                                   \
            return 1;                                                                                         \
        }                                                                                                     \
    } while (0)
#define CHECK(c)                                                                                              \
    do {                                                                                                      \
        if (!(c)) {                                                                                           \
            fprintf(stderr, "  FAIL %s (%s:%d): %s\n", check_cur_name_, __FILE__, __LINE__, #c);             \
            check_cur_failed_ = 1;                                                                            \
        }                                                                                                     \
    } while (0)
#define CHECKF(c, ...)                                                                                        \
    do {                                                                                                      \
        if (!(c)) {                                                                                           \
            fprintf(stderr, "  FAIL %s (%s:%d): %s: ", check_cur_name_, __FILE__, __LINE__, #c);             \
            fprintf(stderr, __VA_ARGS__);                                                                     \
            fputc('\n', stderr);                                                                              \
            check_cur_failed_ = 1;                                                                            \
        }                                                                                                     \
    } while (0)
#define REQUIRE(c)                                                                                            \
    do {                                                                                                      \
        if (!(c)) {                                                                                           \
            fprintf(stderr, "  FAIL %s (%s:%d): %s (fatal)\n", check_cur_name_, __FILE__, __LINE__, #c);     \
            check_cur_failed_ = 1;                                                                            \
            return;                                                                                           \
        }                                                                                                     \
    } while (0)
#define CHECK_STR_CONTAINS(hay, needle)                                                                       \
    do {                                                                                                      \
        const char *hay_ = (hay);                                                                             \
        CHECKF(hay_ && strstr(hay_, (needle)), "'%s' does not contain '%s'", hay_ ? hay_ : "(null)", (needle)); \
    } while (0)

#define RUN(fn)                                                                                               \
    do {                                                                                                      \
        check_cur_name_ = #fn;                                                                                \
        check_cur_failed_ = 0;                                                                                \
        fn();                                                                                                 \
        if (check_cur_failed_) {                                                                              \
            check_failed_++;                                                                                  \
            fprintf(stderr, "FAILED %s\n", #fn);                                                              \
        } else {                                                                                              \
            check_passed_++;                                                                                  \
        }                                                                                                     \
    } while (0)

static inline int check_summary(void) {
    printf("%d passed, %d failed\n", check_passed_, check_failed_);
    return check_failed_ ? 1 : 0;
}

#endif
