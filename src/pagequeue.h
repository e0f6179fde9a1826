/* pagequeue.h: pages from many threads decoded together (issue 13). A thread of its own runs engine_ocr_stream on
 * one session; pq_recognize, called from any thread, hands it a page and waits for that page's result, so callers
 * that each work page by page (document_run with DocOptions.parallel > 1, front ends) get their pages decoded in one
 * continuous batch of at most max_batch. pq_recognize has DocOptions.recognize's signature and contract. */
#ifndef DSOCR_PAGEQUEUE_H
#define DSOCR_PAGEQUEUE_H

#include "engine.h"

typedef struct PageQueue PageQueue;

/* Starts the queue's thread on s (which then belongs to it until pq_stop) with batches of at most max_batch
 * (1..4096) pages. */
DsocrStatus pq_start(DsocrSession *s, int max_batch, PageQueue **out, DsError *e);

/* Queues the page (image bytes, options: on_token is called from the queue's thread, cancel is watched) and waits
 * for its result (*out, freed by the caller with dsocr_result_free). s is ignored (the queue's session decodes).
 * dbg must be NULL (stage dumps and teacher forcing are one-page runs): DSOCR_E_INVALID_ARG otherwise. On failure
 * pq_error gives the page's message. Thread-safe. */
DsocrStatus pq_recognize(void *queue, DsocrSession *s, const void *image, size_t len, const DsocrOcrOptions *o,
                         const EngineDebug *dbg, DsocrResult *out);
/* The message of the calling thread's last failed pq_recognize. */
const char *pq_error(void *queue);

/* Pages decoded so far and the most that ran at once. */
void pq_stats(PageQueue *q, int *pages, int *most);

/* Waits for the pages in flight, stops the thread and frees the queue (the session is the caller's again). */
void pq_stop(PageQueue *q);

#endif
