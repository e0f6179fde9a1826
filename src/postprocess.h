/* postprocess.h: what the model's raw text becomes (spec §9, §16 R14-R15): the grounding blocks
 * `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` with their boxes converted from the 0..999 grid
 * to pixels of the original page, the cleaned markdown of the official scripts, plain text, pages drawn with
 * their boxes and labels, and crops of figure blocks (JPEG via libjpeg, in memory).
 *
 * What it is not: no file IO (document.c writes what this returns), no model code, no `eval` of model output:
 * the box lists are parsed by a small strict parser.
 *
 * Matching follows Python's re.findall(r'(<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>)', text, re.DOTALL)
 * exactly (tested against Python on random strings): a later `<|ref|>` inside a label is part of the label.
 *
 * Defined choices where the official scripts have none or a bug (docs/documents.md):
 *  - Box values are clamped to 0..999 and each box is ordered (x1 <= x2, y1 <= y2) before the conversion
 *    pixel = int(v / 999 * W), so every box lies inside the page.
 *  - A `<|det|>` whose content is not a list of 4-number lists (or one flat 4-number list) gives a block with no
 *    boxes (it is still removed from the markdown); numbers may be integers or decimals.
 *  - An image ref gets one link and one crop per box, numbered per page (the official idx/k counters disagree
 *    when a ref holds several boxes).
 *  - The newline collapsing of the PDF script runs on every page (the script only runs it on pages that have a
 *    non-image block, R14) and to the end: no run of three or more newlines is left (the script's two single
 *    replace passes can leave three). */
#ifndef DSOCR_POSTPROCESS_H
#define DSOCR_POSTPROCESS_H

#include <stddef.h>

#include "image.h"
#include "util.h"

#define POSTPROCESS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>" /* <｜end▁of▁sentence｜> */

/* A box in pixels of the original page: 0 <= x1 <= x2 <= width, 0 <= y1 <= y2 <= height. */
typedef struct PpBox {
    int x1, y1, x2, y2;
} PpBox;

/* One grounding block, in the order of the text. */
typedef struct PpBlock {
    char *label;  /* the ref label as written by the model (may be empty) */
    char *text;   /* the content after the det up to the next match (or the end), whitespace-trimmed */
    PpBox *boxes; /* [n_boxes] */
    int n_boxes;
    int det_ok;     /* 1 when the det content parsed as a box list */
    int is_image;   /* 1 for figure blocks (the official test: the match contains "<|ref|>image<|/ref|>") */
    int first_crop; /* figure blocks: index of the first crop of this block on the page; -1 otherwise */
} PpBlock;

/* The post-processed page. Every string is owned and NUL-terminated. */
typedef struct PpPage {
    PpBlock *blocks; /* [n_blocks]; text before the first match, when not blank, is a block labelled "text" with
                        no boxes */
    int n_blocks;
    char *markdown; /* cleaned markdown; figure blocks become "![](images/PREFIX-PPPP-K.jpg)\n" per box */
    char *text;     /* plain text: markdown without links, headings' '#', HTML tags (cells tab-separated) */
    int n_crops;    /* figure boxes on the page (crop K = 0..n_crops-1) */
} PpPage;

typedef struct PpOptions {
    int width, height;        /* the original page in pixels (>= 1) */
    const char *image_prefix; /* crop file names: PREFIX-PPPP-K.jpg; NULL = "page" */
    int page;                 /* 1-based page number used in crop names */
} PpOptions;

/* Strips a trailing end-of-sentence marker (if any) and surrounding whitespace, as HF infer does: returns the
 * new length of s (s is not modified; the kept part starts at s + *start). */
size_t postprocess_trim(const char *s, size_t len, size_t *start);

/* Parses raw (len bytes, any content, need not be NUL-terminated) into out. out is zeroed on failure (only
 * DSOCR_E_NOMEM or DSOCR_E_INVALID_ARG for a bad size). Free with postprocess_page_free. */
DsocrStatus postprocess_page(const char *raw, size_t len, const PpOptions *o, PpPage *out, DsError *e);
void postprocess_page_free(PpPage *p);

/* The crop file name of crop k of a page ("PREFIX-PPPP-K.jpg") into buf. */
void postprocess_crop_name(const char *prefix, int page, int k, char *buf, size_t n);

/* Parses a det content ("[[x1, y1, x2, y2], ...]") into raw grid values (unclamped): *boxes is malloc'd
 * [n][4] (NULL when none). Returns 0 when the text is a well-formed list, -1 otherwise (then *n == 0). */
int postprocess_parse_boxes(const char *s, size_t len, double (**boxes)[4], int *n);

/* The grid-to-pixel conversion of spec §9: value clamped to 0..999, then int(v / 999 * size). */
int postprocess_grid_to_px(double v, int size);

/* Draws the page's boxes and labels on a copy of page (same size): per block a colour (deterministic per block
 * index), translucent fill (alpha 20/255), outline 4 px for "title" and 2 px otherwise, the label on an opaque
 * white box at (x1, max(0, y1 - 15)). */
DsocrStatus postprocess_draw(const DsImage *page, const PpPage *pp, DsImage *out, DsError *e);

/* Copies the box out of page (boxes of zero width or height are widened to 1 px inside the page). */
DsocrStatus postprocess_crop(const DsImage *page, PpBox b, DsImage *out, DsError *e);

/* Encodes im as a baseline JPEG (quality 1..100) into a malloc'd buffer (caller frees). */
DsocrStatus postprocess_jpeg(const DsImage *im, int quality, unsigned char **out, size_t *len, DsError *e);

#endif
