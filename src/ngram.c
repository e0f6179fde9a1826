/* ngram.c: see ngram.h. */
#include "ngram.h"

#include <math.h>
#include <string.h>

int ngram_ban(float *logits, int vocab, const int32_t *seq, int len, int n, int window, const int32_t *whitelist,
              int n_white) {
    if (n < 2 || len < n - 1) return 0;
    const int32_t *prefix = seq + len - (n - 1);
    int start = window > 0 && len - window > 0 ? len - window : 0, banned = 0;
    for (int i = start; i + n - 1 < len; i++) {
        if (memcmp(seq + i, prefix, sizeof(int32_t) * (size_t)(n - 1)) != 0) continue;
        int32_t t = seq[i + n - 1];
        int white = 0;
        for (int w = 0; w < n_white && !white; w++) white = whitelist[w] == t;
        if (white || t < 0 || t >= vocab || logits[t] == -INFINITY) continue;
        logits[t] = -INFINITY;
        banned++;
    }
    return banned;
}

int ngram_candidates(const int32_t *seq, int len, int n, int window, const int32_t *whitelist, int n_white) {
    if (n < 2 || len < n - 1) return 0;
    const int32_t *prefix = seq + len - (n - 1);
    int start = window > 0 && len - window > 0 ? len - window : 0, found = 0;
    for (int i = start; i + n - 1 < len; i++) {
        if (memcmp(seq + i, prefix, sizeof(int32_t) * (size_t)(n - 1)) != 0) continue;
        int32_t t = seq[i + n - 1];
        int white = 0;
        for (int w = 0; w < n_white && !white; w++) white = whitelist[w] == t;
        if (!white) found++;
    }
    return found;
}
