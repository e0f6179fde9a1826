/* test_ngram.c: the no-repeat n-gram guards. */
#include "check.h"
#include "ngram.h"

static void test_hf_style(void) {
    /* 3-grams: prefix (1,2) followed by 3 and later by 5 -> both banned */
    const int32_t s[] = {1, 2, 3, 9, 1, 2, 5, 7, 1, 2};
    float lg[10];
    for (int i = 0; i < 10; i++) lg[i] = 0;
    CHECK(ngram_ban(lg, 10, s, 10, 3, 0, NULL, 0) == 2);
    CHECK(isinf(lg[3]) && isinf(lg[5]) && !isinf(lg[7]) && !isinf(lg[9]));
    /* too short, or off */
    for (int i = 0; i < 10; i++) lg[i] = 0;
    CHECK(ngram_ban(lg, 10, s, 1, 3, 0, NULL, 0) == 0);
    CHECK(ngram_ban(lg, 10, s, 10, 0, 0, NULL, 0) == 0);
    /* n = 1 bans nothing; n = 2 bans every successor of the last token */
    CHECK(ngram_ban(lg, 10, s, 10, 2, 0, NULL, 0) == 2); /* 2 was followed by 3 and 5 */
}

static void test_window_and_whitelist(void) {
    const int32_t s[] = {1, 2, 3, 9, 9, 9, 9, 1, 2, 5, 1, 2};
    float lg[10];
    for (int i = 0; i < 10; i++) lg[i] = 0;
    /* window 5 covers starts 7..9: only the (1,2,5) occurrence */
    CHECK(ngram_ban(lg, 10, s, 12, 3, 5, NULL, 0) == 1);
    CHECK(isinf(lg[5]) && !isinf(lg[3]));
    for (int i = 0; i < 10; i++) lg[i] = 0;
    const int32_t white[] = {5};
    CHECK(ngram_ban(lg, 10, s, 12, 3, 0, white, 1) == 1);
    CHECK(isinf(lg[3]) && !isinf(lg[5]));
}

int main(void) {
    RUN(test_hf_style);
    RUN(test_window_and_whitelist);
    return check_summary();
}
