/* ngram.h: the two no-repeat n-gram guards of the references (spec §8).
 *  hf:   transformers' no_repeat_ngram_size = n over the whole sequence (prompt, image placeholders and output):
 *        with prefix = the last n−1 tokens, every token that followed that prefix anywhere earlier is banned.
 *  vllm: DeepSeek's NoRepeatNGram(n, window W, whitelist): over the output tokens only, starts i from
 *        max(0, len − W) to len − n, ban out[i + n − 1] where out[i .. i+n−2] equals the prefix; whitelisted
 *        ids are never banned. */
#ifndef DSOCR_NGRAM_H
#define DSOCR_NGRAM_H

#include <stdint.h>

/* Sets logits[id] = −inf for every banned id. seq: the tokens the guard looks at (len of them); n < 2 = off;
 * window <= 0 = the whole sequence; whitelist: n_white ids never banned. Returns how many ids were banned. */
int ngram_ban(float *logits, int vocab, const int32_t *seq, int len, int n, int window, const int32_t *whitelist,
              int n_white);

/* How many ids ngram_ban would consider banning (before looking at logits): 0 means the guard cannot change
 * the argmax of any logits, so the caller may pick the token without them. */
int ngram_candidates(const int32_t *seq, int len, int n, int window, const int32_t *whitelist, int n_white);

/* The ids ngram_ban would set to −inf, into out (room for ngram_candidates of them; repeats and ids outside the
 * vocabulary included, which the caller skips): the guard applied elsewhere (a GPU batch masks them on the
 * device). Returns how many. */
int ngram_banned(const int32_t *seq, int len, int n, int window, const int32_t *whitelist, int n_white,
                 int32_t *out);

#endif
