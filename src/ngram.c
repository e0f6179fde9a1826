/* ngram.c: see ngram.h. */
#include "ngram.h"

#include <math.h>
#include <string.h>

/* Every id t that followed an earlier occurrence of the last n−1 tokens, whitelisted ones left out: with logits,
 * logits[t] = −inf for those in [0, vocab) not yet −inf (counting those); else t into out when non-NULL (counting
 * every one, repeats included). */
static int scan(const int32_t *seq, int len, int n, int window, const int32_t *whitelist, int n_white, float *logits,
                int vocab, int32_t *out) {
    if (n < 2 || len < n - 1) return 0;
    const int32_t *prefix = seq + len - (n - 1);
    int start = window > 0 && len - window > 0 ? len - window : 0, count = 0;
    for (int i = start; i + n - 1 < len; i++) {
        if (memcmp(seq + i, prefix, sizeof(int32_t) * (size_t)(n - 1)) != 0) continue;
        int32_t t = seq[i + n - 1];
        int white = 0;
        for (int w = 0; w < n_white && !white; w++) white = whitelist[w] == t;
        if (white) continue;
        if (logits) {
            if (t < 0 || t >= vocab || logits[t] == -INFINITY) continue;
            logits[t] = -INFINITY;
        } else if (out) {
            out[count] = t;
        }
        count++;
    }
    return count;
}

int ngram_ban(float *logits, int vocab, const int32_t *seq, int len, int n, int window, const int32_t *whitelist,
              int n_white) {
    return scan(seq, len, n, window, whitelist, n_white, logits, vocab, NULL);
}

int ngram_candidates(const int32_t *seq, int len, int n, int window, const int32_t *whitelist, int n_white) {
    return scan(seq, len, n, window, whitelist, n_white, NULL, 0, NULL);
}

int ngram_banned(const int32_t *seq, int len, int n, int window, const int32_t *whitelist, int n_white,
                 int32_t *out) {
    return scan(seq, len, n, window, whitelist, n_white, NULL, 0, out);
}
