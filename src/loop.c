/* loop.c: the token-stream repetition detector (contract in loop.h). */
#include "loop.h"

#include <stdlib.h>
#include <string.h>

void loop_options_default(LoopOptions *o) {
    o->max_period = 256;
    o->min_repeats = 10;
    o->min_span = 200;
    o->min_match = 0.85;
    o->check_every = 8;
}

void loop_init(LoopDetector *d, const LoopOptions *o) {
    memset(d, 0, sizeof *d);
    loop_options_default(&d->o);
    if (o) {
        if (o->max_period > 0) d->o.max_period = o->max_period;
        if (o->min_repeats > 0) d->o.min_repeats = o->min_repeats;
        if (o->min_span > 0) d->o.min_span = o->min_span;
        if (o->min_match > 0 && o->min_match <= 1) d->o.min_match = o->min_match;
        if (o->check_every > 0) d->o.check_every = o->check_every;
    }
    if (d->o.min_repeats < 2) d->o.min_repeats = 2;
}

/* Tests the end of tok[0..n): smallest period p whose last S tokens match p earlier at min_match. */
static int test_tail(const int32_t *tok, int n, const LoopOptions *o, int *period, int *start) {
    for (int p = 1; p <= o->max_period; p++) {
        long s = (long)o->min_repeats * p;
        if (s < o->min_span) s = o->min_span;
        if (s > n) break; /* S grows with p */
        int cmp = (int)s - p, same = 0;
        const int32_t *a = tok + n - cmp, *b = a - p;
        for (int i = 0; i < cmp; i++) same += a[i] == b[i];
        if (cmp > 0 && same >= o->min_match * cmp) {
            int st = n - (int)s;
            while (st > p && tok[st - 1] == tok[st - 1 + p]) st--; /* extend back over exact repeats */
            *period = p;
            *start = st;
            return 1;
        }
    }
    return 0;
}

int loop_push(LoopDetector *d, int32_t t) {
    if (d->looped) return 1;
    if (d->n == d->cap) {
        int nc = d->cap ? d->cap * 2 : 1024;
        int32_t *nt = realloc(d->tok, sizeof(int32_t) * (size_t)nc);
        if (!nt) return -1;
        d->tok = nt;
        d->cap = nc;
    }
    d->tok[d->n++] = t;
    if (d->n % d->o.check_every) return 0;
    d->looped = test_tail(d->tok, d->n, &d->o, &d->period, &d->start);
    return d->looped;
}

int loop_scan(const int32_t *tok, int n, const LoopOptions *o, int *period, int *start) {
    LoopDetector d;
    loop_init(&d, o);
    for (int i = d.o.check_every; i <= n; i += d.o.check_every)
        if (test_tail(tok, i, &d.o, period, start)) return 1;
    return 0;
}

void loop_free(LoopDetector *d) {
    free(d->tok);
    memset(d, 0, sizeof *d);
}
