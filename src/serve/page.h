/* page.h: the web page served at / to browsers: one self-contained HTML file (no build step, nothing loaded
 * from the internet). The source is src/serve/page.html; page.c is generated from it by
 * src/serve/gen_page.py (tests check that the two agree). */
#ifndef DSOCR_SERVE_PAGE_H
#define DSOCR_SERVE_PAGE_H

#include <stddef.h>

extern const char serve_page_html[];
extern const size_t serve_page_html_len;

#endif
