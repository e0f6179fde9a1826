/* prof.c: see prof.h. */
#include "prof.h"

#include <string.h>

void prof_add(ProfTable *t, const char *label, double ms) {
    int k = 0;
    while (k < t->n && strcmp(t->names[k], label)) k++;
    if (k == t->n) {
        if (k == PROF_MAX_LABELS) return;
        t->names[t->n++] = label;
        t->ms[k] = 0;
        t->calls[k] = 0;
    }
    t->ms[k] += ms;
    t->calls[k]++;
}

void prof_report(ProfTable *t, FILE *f) {
    if (!f) { /* forget the sections */
        t->n = 0;
        return;
    }
    double total = 0;
    for (int k = 0; k < t->n; k++) total += t->ms[k];
    for (int done = 0; done < t->n; done++) {
        int best = -1;
        for (int k = 0; k < t->n; k++)
            if (t->calls[k] >= 0 && (best < 0 || t->ms[k] > t->ms[best])) best = k;
        if (best < 0) break;
        fprintf(f, "profile %-28s %10.3f ms %6.1f%% %8ld calls %9.1f us/call\n", t->names[best], t->ms[best],
                total > 0 ? 100 * t->ms[best] / total : 0.0, t->calls[best],
                t->calls[best] ? 1000 * t->ms[best] / t->calls[best] : 0.0);
        t->calls[best] = -1;
    }
    fprintf(f, "profile %-28s %10.3f ms\n", "total", total);
    t->n = 0;
}
