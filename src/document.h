/* document.h: a document (a PDF or one image) turned into outputs people use, page by page: each page is
 * rendered (PDFs, one page at a time through pdf.h), recognised, retried when its generation loops or hits the
 * token limit, post-processed (postprocess.h) and, with an output folder, written at once with a page record
 * that makes the run resumable. At the end the per-document files are assembled from the page records.
 *
 * Files under out_dir for stem S (e.g. "reports/q3"; folders are created):
 *   S.md        clean markdown, pages joined by "\n\n<--- Page Split --->\n\n", figures linked as images/...
 *   S.raw.md    the model's raw output (grounding tags), same joins
 *   S.txt       plain text, pages separated by a form feed line
 *   S.json      the document object (schema: docs/json-schema.json)
 *   S.pages/NNNN.json        page record: {"fingerprint": ..., "page": <the page object of S.json>}
 *   S.pages/NNNN-boxes.jpg   the page with its boxes drawn (format "boxes")
 *   DIR/images/B-NNNN-K.jpg  crops of figure blocks (formats "crops" and "md"; DIR = folder of S, B = base of S)
 * Every file is written to a temporary name and renamed, so a file that exists is complete; a page record is
 * written after the page's other files, so a page with a record is complete. A page is redone when it has no
 * record, its record's fingerprint (options, model, source size and time) differs, it failed, one of its
 * requested files is missing, or `force` is set.
 *
 * Retry policy for a page whose generation hits the token limit or loops (loop.h; the loop stops generation
 * early): attempt 2 with a stronger no-repeat guard (n halved, at least 4, or 12 when the guard was off; over the
 * whole output), attempt 3 with that guard and the other mode family (crop modes -> base, others -> gundam).
 * status: "ok" (first attempt complete), "retried" (a later attempt complete), "incomplete" (none: the attempt
 * with the most non-repeating output is kept, cut after the first period of its loop), "failed" (the page
 * could not be rendered or decoded; error says why). A page is never dropped.
 *
 * Entry point for other front ends (the HTTP server): document_open_buffer + document_run with out_dir NULL
 * gives the JSON object of S.json without touching the disk (PDF bytes go to a private temporary file for the
 * renderer), with on_event for per-page progress and ocr.on_token for token streaming.
 *
 * Threads: a Document and its run belong to one thread (like the session it uses); with DocOptions.parallel the
 * run starts and joins its own page threads. */
#ifndef DSOCR_DOCUMENT_H
#define DSOCR_DOCUMENT_H

#include <cjson/cJSON.h>
#include <semaphore.h>

#include "dsocr.h"
#include "engine.h"
#include "loop.h"
#include "pdf.h"

enum {
    DOC_FMT_MD = 1,
    DOC_FMT_JSON = 2,
    DOC_FMT_TXT = 4,
    DOC_FMT_RAW = 8,
    DOC_FMT_BOXES = 16,
    DOC_FMT_CROPS = 32,
};
#define DOC_FMT_DEFAULT (DOC_FMT_MD | DOC_FMT_JSON)

/* Parses "md,json,txt,raw,boxes,crops" (any subset, comma-separated) into *out; -1 with a message otherwise. */
int document_parse_formats(const char *list, unsigned *out, char *err, size_t n);

/* Parses a page selection "1-3,7,10-" against n_pages into sel[0..n_pages) (1 = selected). Ranges past the
 * end are clipped. NULL or "" selects every page. Returns the number of selected pages, or -1 with a message
 * for a malformed selection or one that selects no page of this document. */
int document_parse_pages(const char *spec, int n_pages, unsigned char *sel, char *err, size_t n);

typedef enum DocEventKind {
    DOC_EV_PAGE_START = 0, /* a page is about to be rendered and recognised */
    DOC_EV_PAGE_DONE = 1,  /* a page is finished (or was found complete: cached = 1) */
    DOC_EV_RETRY = 2,      /* a page is retried; message says why and how */
} DocEventKind;

typedef struct DocEvent {
    DocEventKind kind;
    const char *source;  /* the document's name */
    int page;            /* 1-based page number */
    int index, n_pages;  /* position among the selected pages (0-based) and their number */
    int cached;          /* DONE: 1 when the page's results were already complete */
    const char *status;  /* DONE: "ok" "retried" "incomplete" "failed" */
    int tokens;          /* DONE: tokens generated for the page (all attempts) */
    double seconds;      /* DONE: time spent on the page */
    const char *message; /* RETRY: the reason; DONE: the error of a failed page; else NULL */
    const cJSON *page_json; /* DONE: the page object (valid during the call) */
} DocEvent;

typedef struct DocOptions {
    DsocrOcrOptions ocr;    /* mode, prompt, profile, limits; on_token/user stream tokens; cancel is also
                               checked between pages */
    const EngineDebug *dbg; /* dumps / teacher forcing for every page (tests); NULL = none. Forced runs (ids
                               or image embeddings) are not retried. */
    int dpi;                /* PDF rendering resolution (default 144) */
    const char *pages;      /* page selection ("1-3,7"); NULL = all */
    const char *out_dir;    /* NULL: no files (the JSON only) */
    const char *out_stem;   /* the document's stem under out_dir (required with out_dir) */
    unsigned formats;       /* DOC_FMT_* (default DOC_FMT_DEFAULT) */
    int force;              /* redo pages whose results are complete */
    int retries;            /* 0..2 further attempts (default 2) */
    LoopOptions loop;       /* detector thresholds (zeros = defaults) */
    int loop_stop;          /* 1 (default): a detected loop stops generation; 0: the detector is off */
    PdfOptions pdf;
    const char *model_id;   /* names the model in the resume fingerprint (e.g. its folder) */
    /* The recogniser: NULL = engine_ocr on the session given to document_run. Another front end (a queue, a
     * GPU worker) or a test may put its own; it must behave as engine_ocr (on_token per token, a result the
     * caller frees with dsocr_result_free, the session's error message on failure when s is not NULL). */
    DsocrStatus (*recognize)(void *user, DsocrSession *s, const void *image, size_t len, const DsocrOcrOptions *o,
                             const EngineDebug *dbg, DsocrResult *out);
    void *recognize_user;
    /* The message of the calling thread's last failed recognize (NULL: the session's error) */
    const char *(*recognize_error)(void *user);
    /* Pages in flight at once (0 or 1: one after another). More needs a recognize that may be called from several
     * threads at once and decodes their pages together (pagequeue.h): each page is rendered, recognised,
     * retried, post-processed and written (its files and record) on a thread of its own, and the pages' DONE
     * events, the JSON and the assembled files still come in page order. on_event is called from those threads
     * too, one call at a time. */
    int parallel;
    /* With parallel: a semaphore that documents run at once share, taken by a page before it is rendered and
     * given back when it is written, so that all of them together hold at most its count of pages; NULL: none */
    sem_t *slots;
    void (*on_event)(void *user, const DocEvent *ev);
    void *event_user;
} DocOptions;

void document_options_default(DocOptions *o);

typedef struct Document Document;

/* Opens a file: a PDF (by its bytes, "%PDF-") or an image. A PDF's pages are listed now (pdf_open); images are
 * checked by their magic bytes only (decoding happens per page). o may be NULL. */
DsocrStatus document_open(const char *path, const DocOptions *o, Document **out, DsError *e);
/* The same for bytes in memory (copied; a PDF is written to a private temporary file, removed on close);
 * name is used in messages and the JSON's "source". */
DsocrStatus document_open_buffer(const void *data, size_t len, const char *name, const DocOptions *o,
                                 Document **out, DsError *e);
void document_close(Document *d);

/* Pages of the document (1 for an image). */
int document_page_count(const Document *d);
/* 1 for a PDF, 0 for an image. */
int document_is_pdf(const Document *d);

/* Runs every selected page in order and returns the document object (schema docs/json-schema.json) in *json
 * (caller frees with cJSON_Delete; json may be NULL when not wanted). With out_dir, its "pages" array holds
 * only {"page", "status"} per page (the full pages are in S.json and the records: memory stays flat whatever
 * the page count); without, the full page objects. Writes the files listed above when out_dir is
 * set. Pages that fail are in the result with status "failed"; the run itself fails only for a bad option,
 * an unwritable output, cancellation (DSOCR_E_CANCELLED: complete pages keep their records) or no memory. */
DsocrStatus document_run(DsocrSession *s, Document *d, const DocOptions *o, cJSON **json, DsError *e);

/* Writes len bytes to path atomically (temporary file in the same folder, fsync, rename). */
DsocrStatus document_write_file(const char *path, const void *data, size_t len, DsError *e);

#endif
