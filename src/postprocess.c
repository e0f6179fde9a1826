/* postprocess.c: grounding blocks, boxes, markdown and plain text, drawn pages, crops, JPEG encoding
 * (contracts in postprocess.h; facts from spec §9 and §16 R14-R15). */
#include "postprocess.h"

#include <ctype.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

static const char REF_OPEN[] = "<|ref|>";
static const char REF_CLOSE_DET[] = "<|/ref|><|det|>";
static const char DET_CLOSE[] = "<|/det|>";
static const char IMAGE_REF[] = "<|ref|>image<|/ref|>";

/* ---- a growing string ---- */

typedef struct Str {
    char *p;
    size_t n, cap;
    int oom;
} Str;

static void str_add(Str *s, const char *t, size_t n) {
    if (s->oom) return;
    if (s->n + n + 1 > s->cap) {
        size_t nc = s->cap ? s->cap : 256;
        while (nc < s->n + n + 1) nc *= 2;
        char *np = realloc(s->p, nc);
        if (!np) {
            s->oom = 1;
            return;
        }
        s->p = np;
        s->cap = nc;
    }
    if (n) memcpy(s->p + s->n, t, n);
    s->n += n;
    s->p[s->n] = 0;
}
static void str_cat(Str *s, const char *t) { str_add(s, t, strlen(t)); }
static char *str_take(Str *s) {
    if (!s->p && !s->oom) str_add(s, "", 0);
    char *r = s->oom ? NULL : s->p;
    if (s->oom) free(s->p);
    s->p = NULL;
    return r;
}

/* memmem over [from, len). */
static const char *find(const char *s, size_t len, size_t from, const char *needle) {
    size_t nl = strlen(needle);
    if (from > len || len - from < nl) return NULL;
    return memmem(s + from, len - from, needle, nl);
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

static char *dup_trim(const char *s, size_t n) {
    while (n && is_space(*s)) s++, n--;
    while (n && is_space(s[n - 1])) n--;
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

size_t postprocess_trim(const char *s, size_t len, size_t *start) {
    size_t el = strlen(POSTPROCESS_EOS);
    if (len >= el && !memcmp(s + len - el, POSTPROCESS_EOS, el)) len -= el;
    size_t b = 0;
    while (b < len && is_space(s[b])) b++;
    while (len > b && is_space(s[len - 1])) len--;
    *start = b;
    return len - b;
}

/* ---- boxes ---- */

typedef struct Lex {
    const char *s;
    size_t n, i;
} Lex;

static void lex_ws(Lex *l) {
    while (l->i < l->n && is_space(l->s[l->i])) l->i++;
}
static int lex_ch(Lex *l, char c) {
    lex_ws(l);
    if (l->i < l->n && l->s[l->i] == c) {
        l->i++;
        return 1;
    }
    return 0;
}
/* A number: optional sign, digits, optional fraction (Python int or float literal, no exponent). */
static int lex_num(Lex *l, double *v) {
    lex_ws(l);
    size_t i = l->i;
    int neg = 0;
    if (i < l->n && (l->s[i] == '-' || l->s[i] == '+')) neg = l->s[i++] == '-';
    double x = 0;
    int digits = 0;
    while (i < l->n && isdigit((unsigned char)l->s[i])) {
        if (digits < 12) x = x * 10 + (l->s[i] - '0');
        else x *= 10;
        digits++;
        i++;
    }
    if (i < l->n && l->s[i] == '.') {
        i++;
        double f = 0.1;
        while (i < l->n && isdigit((unsigned char)l->s[i])) {
            x += f * (l->s[i] - '0');
            f *= 0.1;
            digits++;
            i++;
        }
    }
    if (!digits) return 0;
    if (x > 1e15) x = 1e15;
    *v = neg ? -x : x;
    l->i = i;
    return 1;
}
static int lex_box(Lex *l, double b[4]) {
    if (!lex_ch(l, '[')) return 0;
    for (int k = 0; k < 4; k++) {
        if (k && !lex_ch(l, ',')) return 0;
        if (!lex_num(l, &b[k])) return 0;
    }
    lex_ch(l, ','); /* Python allows a trailing comma */
    return lex_ch(l, ']');
}

int postprocess_parse_boxes(const char *s, size_t len, double (**boxes)[4], int *n) {
    *boxes = NULL;
    *n = 0;
    Lex l = {s, len, 0};
    double (*bx)[4] = NULL;
    int nb = 0, cap = 0;
    lex_ws(&l);
    size_t first = l.i;
    if (!lex_ch(&l, '[')) return -1;
    lex_ws(&l);
    if (l.i < l.n && l.s[l.i] != '[' && l.s[l.i] != ']') {
        /* a flat [x1, y1, x2, y2] */
        double one[4];
        l.i = first;
        if (!lex_box(&l, one)) return -1;
        lex_ws(&l);
        if (l.i != l.n || !(bx = malloc(sizeof *bx))) return -1;
        memcpy(bx[0], one, sizeof one);
        *boxes = bx;
        *n = 1;
        return 0;
    }
    if (!lex_ch(&l, ']')) {
        for (;;) {
            double b[4];
            if (!lex_box(&l, b)) goto bad;
            if (nb == cap) {
                if (cap >= 1 << 16) goto bad;
                cap = cap ? cap * 2 : 4;
                void *nbx = realloc(bx, sizeof *bx * (size_t)cap);
                if (!nbx) goto bad;
                bx = nbx;
            }
            memcpy(bx[nb++], b, sizeof b);
            if (lex_ch(&l, ',')) {
                lex_ws(&l);
                if (l.i < l.n && l.s[l.i] == ']') {
                    l.i++;
                    break;
                }
                continue;
            }
            if (lex_ch(&l, ']')) break;
            goto bad;
        }
    }
    lex_ws(&l);
    if (l.i != l.n) goto bad;
    *boxes = bx;
    *n = nb;
    return 0;
bad:
    free(bx);
    return -1;
}

int postprocess_grid_to_px(double v, int size) {
    if (!(v >= 0)) v = 0; /* NaN too */
    if (v > 999) v = 999;
    return (int)(v / 999.0 * (double)size);
}

void postprocess_crop_name(const char *prefix, int page, int k, char *buf, size_t n) {
    snprintf(buf, n, "%s-%04d-%d.jpg", prefix ? prefix : "page", page, k);
}

/* ---- page ---- */

typedef struct Match {
    size_t start, end;           /* the whole match */
    size_t lab0, lab1, det0, det1; /* label and det content */
} Match;

/* The matches of the official regex, in order (see the header for the equivalence with re.findall). */
static int find_matches(const char *s, size_t n, Match **out, int *count) {
    Match *m = NULL;
    int nm = 0, cap = 0;
    size_t pos = 0;
    for (;;) {
        const char *a = find(s, n, pos, REF_OPEN);
        if (!a) break;
        size_t p = (size_t)(a - s);
        const char *b = find(s, n, p + strlen(REF_OPEN), REF_CLOSE_DET);
        if (!b) break; /* no later start can match either */
        size_t q = (size_t)(b - s);
        const char *c = find(s, n, q + strlen(REF_CLOSE_DET), DET_CLOSE);
        if (!c) break;
        size_t r = (size_t)(c - s);
        if (nm == cap) {
            cap = cap ? cap * 2 : 16;
            Match *nmv = realloc(m, sizeof *m * (size_t)cap);
            if (!nmv) {
                free(m);
                return -1;
            }
            m = nmv;
        }
        m[nm++] = (Match){p, r + strlen(DET_CLOSE), p + strlen(REF_OPEN), q, q + strlen(REF_CLOSE_DET), r};
        pos = r + strlen(DET_CLOSE);
    }
    *out = m;
    *count = nm;
    return 0;
}

/* Python's str.replace(a, b) (all non-overlapping occurrences, left to right) on s. */
static char *replace_all(char *s, const char *a, const char *b) {
    if (!s || !strstr(s, a)) return s;
    Str o = {0};
    size_t al = strlen(a);
    const char *p = s, *q;
    while ((q = strstr(p, a))) {
        str_add(&o, p, (size_t)(q - p));
        str_cat(&o, b);
        p = q + al;
    }
    str_cat(&o, p);
    free(s);
    return str_take(&o);
}

/* Runs of three or more newlines become two (the PDF script's two single passes can leave three). */
static char *collapse_newlines(char *t) {
    if (!t) return NULL;
    char *w = t;
    int run = 0;
    for (const char *r = t; *r; r++) {
        run = *r == '\n' ? run + 1 : 0;
        if (run <= 2) *w++ = *r;
    }
    *w = 0;
    return t;
}

/* Tabs at the end of a line (after the last cell of a row) are dropped, in one pass. */
static char *drop_tabs_before_newlines(char *t) {
    if (!t) return NULL;
    char *w = t;
    for (const char *r = t; *r;) {
        const char *q = r;
        while (*q == '\t') q++;
        if (q > r && (*q == '\n' || !*q)) {
            r = q;
            continue;
        }
        while (r < q) *w++ = *r++;
        if (*r) *w++ = *r++;
    }
    *w = 0;
    return t;
}

/* Plain text from cleaned markdown: image links dropped, leading '#'s of headings dropped, HTML tags removed
 * (</td>/</th> become a tab, </tr>, <br> and </p> a newline), runs of 3+ newlines become two. */
static char *plain_text(const char *md) {
    Str o = {0};
    const char *p = md;
    int bol = 1;
    while (*p) {
        if (bol) {
            const char *h = p;
            while (*h == '#') h++;
            if (h > p && *h == ' ') p = h + 1;
        }
        if (!strncmp(p, "![](", 4)) {
            const char *e = strchr(p, ')');
            if (e) {
                p = e + 1;
                if (*p == '\n') p++;
                continue;
            }
        }
        if (*p == '<') {
            const char *e = strchr(p, '>');
            size_t tl = e ? (size_t)(e - p + 1) : 0;
            int tag = e && tl <= 64 && (isalpha((unsigned char)p[1]) || p[1] == '/');
            if (tag) {
                if (!strncmp(p, "</td>", 5) || !strncmp(p, "</th>", 5)) str_cat(&o, "\t");
                else if (!strncmp(p, "</tr>", 5) || !strncmp(p, "<br", 3) || !strncmp(p, "</p>", 4))
                    str_cat(&o, "\n");
                p = e + 1;
                bol = 0;
                continue;
            }
        }
        bol = *p == '\n';
        str_add(&o, p, 1);
        p++;
    }
    char *t = str_take(&o);
    if (!t) return NULL;
    t = collapse_newlines(drop_tabs_before_newlines(t));
    if (!t) return NULL;
    size_t st, n = postprocess_trim(t, strlen(t), &st);
    char *r = dup_trim(t + st, n);
    free(t);
    return r;
}

void postprocess_page_free(PpPage *p) {
    if (!p) return;
    for (int i = 0; i < p->n_blocks; i++) {
        free(p->blocks[i].label);
        free(p->blocks[i].text);
        free(p->blocks[i].boxes);
    }
    free(p->blocks);
    free(p->markdown);
    free(p->text);
    memset(p, 0, sizeof *p);
}

DsocrStatus postprocess_page(const char *raw, size_t len, const PpOptions *o, PpPage *out, DsError *e) {
    memset(out, 0, sizeof *out);
    if (!o || o->width < 1 || o->height < 1)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "postprocess: page size must be at least 1 x 1");
    if (!raw) len = 0;
    Match *m = NULL;
    int nm = 0;
    if (find_matches(raw ? raw : "", len, &m, &nm)) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    /* leading text before the first match, when not blank */
    size_t lead_end = nm ? m[0].start : len;
    size_t lt = 0;
    while (lt < lead_end && is_space(raw[lt])) lt++;
    int lead = lt < lead_end;
    out->blocks = calloc((size_t)nm + 1, sizeof *out->blocks);
    if (!out->blocks) goto oom;
    Str md = {0};
    str_add(&md, raw ? raw : "", lead_end);
    if (lead) {
        PpBlock *b = &out->blocks[out->n_blocks++];
        b->first_crop = -1;
        b->det_ok = 1;
        if (!(b->label = strdup("text")) || !(b->text = dup_trim(raw, lead_end))) goto oom_md;
    }
    for (int i = 0; i < nm; i++) {
        const Match *x = &m[i];
        PpBlock *b = &out->blocks[out->n_blocks++];
        b->first_crop = -1;
        size_t next = i + 1 < nm ? m[i + 1].start : len;
        if (!(b->text = dup_trim(raw + x->end, next - x->end)) || !(b->label = malloc(x->lab1 - x->lab0 + 1)))
            goto oom_md;
        memcpy(b->label, raw + x->lab0, x->lab1 - x->lab0);
        b->label[x->lab1 - x->lab0] = 0;
        double (*g)[4] = NULL;
        int ng = 0;
        b->det_ok = postprocess_parse_boxes(raw + x->det0, x->det1 - x->det0, &g, &ng) == 0;
        if (ng) {
            b->boxes = malloc(sizeof *b->boxes * (size_t)ng);
            if (!b->boxes) {
                free(g);
                goto oom_md;
            }
            for (int k = 0; k < ng; k++) {
                int x1 = postprocess_grid_to_px(g[k][0], o->width), y1 = postprocess_grid_to_px(g[k][1], o->height);
                int x2 = postprocess_grid_to_px(g[k][2], o->width), y2 = postprocess_grid_to_px(g[k][3], o->height);
                b->boxes[k] = (PpBox){x1 < x2 ? x1 : x2, y1 < y2 ? y1 : y2, x1 < x2 ? x2 : x1, y1 < y2 ? y2 : y1};
            }
            b->n_boxes = ng;
        }
        free(g);
        b->is_image = find(raw, x->end, x->start, IMAGE_REF) != NULL;
        if (b->is_image) {
            b->first_crop = out->n_crops;
            for (int k = 0; k < b->n_boxes; k++) {
                char name[300];
                postprocess_crop_name(o->image_prefix, o->page, out->n_crops++, name, sizeof name);
                str_cat(&md, "![](images/");
                str_cat(&md, name);
                str_cat(&md, ")\n");
            }
        }
        str_add(&md, raw + x->end, next - x->end);
    }
    free(m);
    m = NULL;
    char *t = str_take(&md);
    t = replace_all(t, "\\coloneqq", ":=");
    t = replace_all(t, "\\eqqcolon", "=:");
    t = collapse_newlines(t);
    if (!t) goto oom;
    size_t st, tn = postprocess_trim(t, strlen(t), &st);
    out->markdown = dup_trim(t + st, tn);
    free(t);
    if (!out->markdown || !(out->text = plain_text(out->markdown))) goto oom;
    return DSOCR_OK;
oom_md:
    free(md.p);
oom:
    free(m);
    postprocess_page_free(out);
    return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
}

/* ---- drawing ---- */

/* A 5 x 7 bitmap font drawn for this project: rows top to bottom, bit 4 = leftmost column. Upper case letters
 * use the lower-case glyphs; anything else is drawn as '?'. */
static const struct {
    char c;
    unsigned char rows[7];
} FONT[] = {
    {' ', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00}}, {'-', {0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c}}, {'0', {0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e}},
    {'1', {0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e}}, {'2', {0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f}},
    {'3', {0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e}}, {'4', {0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02}},
    {'5', {0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e}}, {'6', {0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e}},
    {'7', {0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}}, {'8', {0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e}},
    {'9', {0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c}}, {':', {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00}},
    {'?', {0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04}}, {'_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f}},
    {'a', {0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f}}, {'b', {0x10, 0x10, 0x1e, 0x11, 0x11, 0x11, 0x1e}},
    {'c', {0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e}}, {'d', {0x01, 0x01, 0x0f, 0x11, 0x11, 0x11, 0x0f}},
    {'e', {0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e}}, {'f', {0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08}},
    {'g', {0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e}}, {'h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'i', {0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e}}, {'j', {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0c}},
    {'k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}}, {'l', {0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e}},
    {'m', {0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11}}, {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'o', {0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e}}, {'p', {0x00, 0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10}},
    {'q', {0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x01}}, {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}},
    {'s', {0x00, 0x00, 0x0f, 0x10, 0x0e, 0x01, 0x1e}}, {'t', {0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06}},
    {'u', {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d}}, {'v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04}},
    {'w', {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a}}, {'x', {0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11}},
    {'y', {0x00, 0x11, 0x11, 0x11, 0x0f, 0x01, 0x0e}}, {'z', {0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f}},
};
#define FONT_SCALE 2
#define GLYPH_W (6 * FONT_SCALE) /* 5 columns + 1 of spacing */
#define GLYPH_H (7 * FONT_SCALE)

static const unsigned char *glyph(char c) {
    c = (char)tolower((unsigned char)c);
    const unsigned char *q = NULL;
    for (size_t i = 0; i < sizeof FONT / sizeof FONT[0]; i++) {
        if (FONT[i].c == c) return FONT[i].rows;
        if (FONT[i].c == '?') q = FONT[i].rows;
    }
    return q;
}

static void put(DsImage *im, int x, int y, const unsigned char c[3]) {
    if (x < 0 || y < 0 || x >= im->w || y >= im->h) return;
    memcpy(im->rgb + ((size_t)y * im->w + x) * 3, c, 3);
}

static void fill_rect(DsImage *im, int x0, int y0, int x1, int y1, const unsigned char c[3]) {
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > im->w) x1 = im->w;
    if (y1 > im->h) y1 = im->h;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) put(im, x, y, c);
}

/* The colour of block i: R, G in [0, 200), B in [0, 255) as the official drawing, from a fixed LCG. */
static void block_colour(int i, unsigned char c[3]) {
    uint32_t s = 2654435761u * (uint32_t)(i + 1) + 12345u;
    for (int k = 0; k < 3; k++) {
        s = s * 1664525u + 1013904223u;
        c[k] = (unsigned char)((s >> 16) % (k < 2 ? 200u : 255u));
    }
}

DsocrStatus postprocess_draw(const DsImage *page, const PpPage *pp, DsImage *out, DsError *e) {
    DsocrStatus st = image_new(out, page->w, page->h, e);
    if (st) return st;
    memcpy(out->rgb, page->rgb, (size_t)page->w * page->h * 3);
    /* translucent fills first (the official overlay), then outlines and labels */
    for (int i = 0; i < pp->n_blocks; i++) {
        unsigned char c[3];
        block_colour(i, c);
        for (int k = 0; k < pp->blocks[i].n_boxes; k++) {
            PpBox b = pp->blocks[i].boxes[k];
            for (int y = b.y1; y < b.y2 && y < out->h; y++)
                for (int x = b.x1; x < b.x2 && x < out->w; x++) {
                    unsigned char *p = out->rgb + ((size_t)y * out->w + x) * 3;
                    for (int ch = 0; ch < 3; ch++) p[ch] = (unsigned char)((p[ch] * 235 + c[ch] * 20 + 127) / 255);
                }
        }
    }
    static const unsigned char white[3] = {255, 255, 255};
    for (int i = 0; i < pp->n_blocks; i++) {
        const PpBlock *bl = &pp->blocks[i];
        unsigned char c[3];
        block_colour(i, c);
        int wdt = !strcmp(bl->label, "title") ? 4 : 2;
        for (int k = 0; k < bl->n_boxes; k++) {
            PpBox b = bl->boxes[k];
            fill_rect(out, b.x1, b.y1, b.x2 + 1, b.y1 + wdt, c);
            fill_rect(out, b.x1, b.y2 + 1 - wdt, b.x2 + 1, b.y2 + 1, c);
            fill_rect(out, b.x1, b.y1, b.x1 + wdt, b.y2 + 1, c);
            fill_rect(out, b.x2 + 1 - wdt, b.y1, b.x2 + 1, b.y2 + 1, c);
            size_t nl = strlen(bl->label);
            if (nl > 40) nl = 40;
            int tx = b.x1, ty = b.y1 - 15 > 0 ? b.y1 - 15 : 0;
            fill_rect(out, tx, ty, tx + (int)nl * GLYPH_W + 2, ty + GLYPH_H + 2, white);
            for (size_t j = 0; j < nl; j++) {
                const unsigned char *g = glyph(bl->label[j]);
                for (int r = 0; r < 7; r++)
                    for (int col = 0; col < 5; col++)
                        if (g[r] & (0x10 >> col))
                            fill_rect(out, tx + 1 + (int)j * GLYPH_W + col * FONT_SCALE, ty + 1 + r * FONT_SCALE,
                                      tx + 1 + (int)j * GLYPH_W + (col + 1) * FONT_SCALE,
                                      ty + 1 + (r + 1) * FONT_SCALE, c);
            }
        }
    }
    return DSOCR_OK;
}

DsocrStatus postprocess_crop(const DsImage *page, PpBox b, DsImage *out, DsError *e) {
    int x1 = b.x1 < 0 ? 0 : b.x1 >= page->w ? page->w - 1 : b.x1;
    int y1 = b.y1 < 0 ? 0 : b.y1 >= page->h ? page->h - 1 : b.y1;
    int x2 = b.x2 > page->w ? page->w : b.x2, y2 = b.y2 > page->h ? page->h : b.y2;
    if (x2 <= x1) x2 = x1 + 1;
    if (y2 <= y1) y2 = y1 + 1;
    DsocrStatus st = image_new(out, x2 - x1, y2 - y1, e);
    if (st) return st;
    for (int y = y1; y < y2; y++)
        memcpy(out->rgb + (size_t)(y - y1) * out->w * 3, page->rgb + ((size_t)y * page->w + x1) * 3,
               (size_t)out->w * 3);
    return DSOCR_OK;
}

/* ---- JPEG ---- */

typedef struct JpegErr {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} JpegErr;

static void jpeg_err_exit(j_common_ptr c) {
    JpegErr *je = (JpegErr *)c->err;
    c->err->format_message(c, je->msg);
    longjmp(je->jb, 1);
}
static void jpeg_quiet(j_common_ptr c, int level) { (void)c, (void)level; }

DsocrStatus postprocess_jpeg(const DsImage *im, int quality, unsigned char **out, size_t *len, DsError *e) {
    *out = NULL;
    *len = 0;
    struct jpeg_compress_struct ci;
    JpegErr je;
    unsigned char *volatile buf = NULL;
    unsigned long n = 0;
    memset(&ci, 0, sizeof ci);
    ci.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jpeg_err_exit;
    je.pub.emit_message = jpeg_quiet;
    if (setjmp(je.jb)) {
        jpeg_destroy_compress(&ci);
        free(buf);
        return ds_fail(e, DSOCR_E_IMAGE, "JPEG encoder: %s", je.msg);
    }
    jpeg_create_compress(&ci);
    unsigned char *b = NULL;
    jpeg_mem_dest(&ci, &b, &n);
    ci.image_width = (JDIMENSION)im->w;
    ci.image_height = (JDIMENSION)im->h;
    ci.input_components = 3;
    ci.in_color_space = JCS_RGB;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, quality < 1 ? 1 : quality > 100 ? 100 : quality, TRUE);
    jpeg_start_compress(&ci, TRUE);
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW row = (JSAMPROW)(im->rgb + (size_t)ci.next_scanline * im->w * 3);
        jpeg_write_scanlines(&ci, &row, 1);
    }
    jpeg_finish_compress(&ci);
    buf = b;
    jpeg_destroy_compress(&ci);
    *out = buf;
    *len = n;
    return DSOCR_OK;
}
