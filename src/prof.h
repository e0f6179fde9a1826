/* prof.h: the per-section time table behind DSOCR_PROFILE=1 (backend.h mark / profile_report), shared by the
 * backends: time is added to a section's label as the backend measures it (CUDA: between recorded events; CPU:
 * wall time between marks, its ops being synchronous), and the report lists sections by total time. */
#ifndef DSOCR_PROF_H
#define DSOCR_PROF_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { PROF_MAX_LABELS = 128 };
typedef struct ProfTable {
    const char *names[PROF_MAX_LABELS]; /* labels are string literals: kept, not copied */
    double ms[PROF_MAX_LABELS];
    long calls[PROF_MAX_LABELS];
    int n;
} ProfTable;

/* ms more (one call) for the section `label` (labels past PROF_MAX_LABELS are dropped) */
void prof_add(ProfTable *t, const char *label, double ms);
/* "profile LABEL  ms  %  calls  us/call" lines, largest first, then the total; empties the table */
void prof_report(ProfTable *t, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
