/* loop.h: a repetition detector on the generated token stream. DeepSeek-OCR sometimes falls into a loop
 * (the same line or cell over and over until the token limit); the official PDF script silently drops such
 * pages. The detector flags a loop as it happens so that generation can stop early and the page be retried.
 *
 * Rule: the stream loops when, for some period p <= max_period, the last S = max(min_span, min_repeats * p)
 * tokens agree with the tokens p positions earlier at a rate of at least min_match (0..1; 1 = exact
 * repetition). The no-repeat n-gram guards forbid exact repeats of n-grams, so models under a guard loop with
 * small variations: min_match below 1 catches those. The smallest such p is reported.
 *
 * What it is not: no model code; it never changes what is generated, it only reports. */
#ifndef DSOCR_LOOP_H
#define DSOCR_LOOP_H

#include <stdint.h>

typedef struct LoopOptions {
    int max_period;   /* longest repeated unit in tokens (default 256) */
    int min_repeats;  /* repetitions of the unit (default 10) */
    int min_span;     /* tokens the repetition must cover at least (default 200) */
    double min_match; /* fraction of positions equal to the one p earlier (default 0.85) */
    int check_every;  /* test every this many tokens (default 8) */
} LoopOptions;

void loop_options_default(LoopOptions *o);

typedef struct LoopDetector {
    LoopOptions o;
    int32_t *tok; /* [cap] the stream so far */
    int n, cap;
    int looped;   /* 1 once a loop was seen (stays set) */
    int period;   /* the unit's length when looped */
    int start;    /* first token of the repeating span when looped */
} LoopDetector;

/* o NULL = defaults. Zero-initialised members of o take their defaults too. */
void loop_init(LoopDetector *d, const LoopOptions *o);
/* Adds a token; returns 1 when the stream now loops (and from then on), 0 otherwise, -1 when out of memory. */
int loop_push(LoopDetector *d, int32_t tok);
/* Tests a whole recorded stream: returns 1 and sets *period, *start when it loops (as loop_push would have
 * found at some point), 0 otherwise. */
int loop_scan(const int32_t *tok, int n, const LoopOptions *o, int *period, int *start);
void loop_free(LoopDetector *d);

#endif
