/* results.h: the server's saved OCR results: text files in one folder, with names the server makes
 * ("ocr_<13-digit ms time>_<8 hex random>.txt", so name order is age order and names cannot be guessed), at
 * most max files (the oldest removed first), so a long-running server never fills the disk.
 *
 * Reads by name accept only names of that exact pattern (no '/', no "..") and open them relative to the folder
 * with O_NOFOLLOW, so GET /results/{name} can never reach another file. Thread-safe: saving and reading may run
 * on different threads. Files of the pattern already in the folder at start count towards the cap. */
#ifndef DSOCR_SERVE_RESULTS_H
#define DSOCR_SERVE_RESULTS_H

#include <stddef.h>

#include "util.h"

#define RESULTS_NAME_LEN 30 /* "ocr_" 13 "_" 8 ".txt" */

typedef struct ResultsStore ResultsStore;

/* Opens (creating it and its parents when missing, mode 0700) the folder dir with a cap of max files (>= 1). */
DsocrStatus results_open(const char *dir, int max, ResultsStore **out, DsError *e);
void results_close(ResultsStore *rs);

/* Writes text to a fresh file; its name (RESULTS_NAME_LEN + 1 bytes) goes to name. Removes the oldest files
 * beyond the cap. */
DsocrStatus results_save(ResultsStore *rs, const char *text, size_t len, char *name, DsError *e);

/* 1 when name has the exact pattern of a server-made name. */
int results_name_ok(const char *name);

/* Reads a saved result into a fresh buffer (caller frees). DSOCR_E_IO when the name is not one of ours or the
 * file is gone. */
DsocrStatus results_read(ResultsStore *rs, const char *name, char **out, size_t *len, DsError *e);

/* Files currently kept. */
int results_count(ResultsStore *rs);

#endif
