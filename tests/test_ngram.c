/* test_ngram.c: the no-repeat n-gram guards. */
#include "check.h"
#include "ngram.h"

#include <math.h>
#include <string.h>

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

/* ngram_banned's ids, masked by hand, give ngram_ban's logits (the GPU batch masks them on the device), over
 * random short-alphabet sequences (many repeats) with and without a window and whitelist; and its count is
 * ngram_candidates' */
static void test_banned_ids(void) {
    unsigned r = 12345;
    int32_t seq[300], ids[300];
    float a[12], b[12];
    const int32_t white[1] = {2};
    for (int it = 0; it < 2000; it++) {
        const int len = 1 + (int)(r % 300), n = 2 + (int)((r >> 9) % 4), window = (r >> 12) % 2 ? 40 : 0;
        const int nw = (r >> 13) % 2;
        for (int i = 0; i < len; i++) {
            r = r * 1103515245u + 12345u;
            seq[i] = (int32_t)((r >> 16) % 13) - 1; /* -1 and 11, 12: outside a vocabulary of 11 */
        }
        for (int i = 0; i < 12; i++) a[i] = b[i] = (float)i;
        const int banned = ngram_ban(a, 11, seq, len, n, window, white, nw);
        const int k = ngram_banned(seq, len, n, window, white, nw, ids);
        CHECK(k == ngram_candidates(seq, len, n, window, white, nw));
        int masked = 0;
        for (int i = 0; i < k; i++)
            if (ids[i] >= 0 && ids[i] < 11 && b[ids[i]] != -INFINITY) b[ids[i]] = -INFINITY, masked++;
        CHECK(masked == banned);
        CHECK(!memcmp(a, b, sizeof a));
    }
}

int main(void) {
    RUN(test_banned_ids);
    RUN(test_hf_style);
    RUN(test_window_and_whitelist);
    return check_summary();
}
