/* pdf.h: PDF pages as PNG images, rendered by a separate process: mupdf-tools' `mutool draw` (the engine the
 * official PDF script uses through PyMuPDF, so page sizes match), else poppler-utils' `pdftoppm` when mutool is
 * not installed. No PDF library is linked: a broken or hostile PDF can only make the child fail, time out or hit
 * its limits, and that becomes an error for that file or page.
 *
 * Limits on every child: a wall-clock timeout (killed with SIGKILL), an address-space limit, a CPU-time limit,
 * a file-size limit, a cap on what it may write to us (stdout), stdin from /dev/null, no inherited descriptors.
 * Pages are rendered one at a time, on request: a document is never held in memory as images.
 *
 * What it is not: no PDF parsing of our own; page counts and sizes come from the renderer (`mutool pages`, or
 * poppler's `pdfinfo`). */
#ifndef DSOCR_PDF_H
#define DSOCR_PDF_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct PdfOptions {
    const char *renderer;  /* path of mutool or pdftoppm; NULL = mutool, else pdftoppm, found on $PATH */
    double timeout_s;      /* per child (default 60) */
    size_t max_output;     /* bytes one child may write to us (default 256 MiB) */
    size_t max_memory;     /* child address space (default 3 GiB) */
    long long max_pixels;  /* a page is rendered at a lower resolution when its area would exceed this
                              (default 40,000,000) */
} PdfOptions;

void pdf_options_default(PdfOptions *o);

typedef struct PdfDoc PdfDoc;

/* 1 when bytes look like a PDF ("%PDF-" in the first 1024 bytes, as readers accept). */
int pdf_sniff(const uint8_t *bytes, size_t len);

/* Opens a PDF file: runs the renderer's page listing once (page count; which pages the page tree really
 * holds; their sizes). Fails with DSOCR_E_UNSUPPORTED when neither renderer is installed, DSOCR_E_FORMAT with
 * the renderer's message when the file is not a readable PDF. opt may be NULL. */
DsocrStatus pdf_open(const char *path, const PdfOptions *opt, PdfDoc **out, DsError *e);
void pdf_close(PdfDoc *d);

/* Pages the document claims (its page count, which may include pages missing from a broken page tree). */
int pdf_page_count(const PdfDoc *d);
/* 1 when page (1-based) was found by the renderer's listing, 0 when it is claimed but missing. */
int pdf_page_exists(const PdfDoc *d, int page);
/* The renderer in use: "mutool" or "pdftoppm". */
const char *pdf_renderer_name(const PdfDoc *d);

/* Renders page (1-based) at dpi as an RGB PNG into a fresh buffer (caller frees). DSOCR_E_FORMAT with the
 * renderer's message when the page cannot be drawn, DSOCR_E_IO on timeout or when a limit was hit. */
DsocrStatus pdf_render(PdfDoc *d, int page, int dpi, char **png, size_t *len, DsError *e);

/* Parses the output of `mutool pages` (text written by a child that read a hostile file): the page count (the
 * largest pagenum, at most 100000), which pages have a MediaBox ([n] 0/1) and their sizes in points ([n][2]);
 * fresh arrays (caller frees). DSOCR_E_FORMAT when no page is listed. Exposed for the fuzz target. */
DsocrStatus pdf_parse_listing(const char *text, int *n_pages, unsigned char **exists, double **size_pt, DsError *e);

/* Runs argv (argv[0] an absolute path) with the limits of opt; collects stdout (at most max_output bytes; more
 * is an error) and the first 4 KiB of stderr. *status: the exit status, or 128 + signal. Exposed for tests. */
DsocrStatus pdf_run_child(char *const argv[], const PdfOptions *opt, char **out, size_t *out_len, char *err,
                          size_t errlen, int *status, DsError *e);

#endif
