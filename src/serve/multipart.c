/* multipart.c: multipart/form-data bodies (RFC 7578, RFC 2046 §5.1) parsed in place. See multipart.h. */
#include "multipart.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* A header value's parameters: `type; a=b; c="d e"`. param_next reads one `name=value` from *p (bounded by end)
 * into name/value (NUL-terminated, truncated to their sizes; *trunc set when a value did not fit); returns 0
 * at the end of the list, 1 for a parameter, -1 for malformed input. */
static int param_next(const char **p, const char *end, char *name, size_t nn, char *value, size_t vn, int *trunc) {
    const char *s = *p;
    *trunc = 0;
    while (s < end && (*s == ' ' || *s == '\t' || *s == ';')) s++;
    if (s >= end) {
        *p = s;
        return 0;
    }
    size_t k = 0;
    while (s < end && *s != '=' && *s != ';' && *s != ' ' && *s != '\t') {
        if (k + 1 < nn) name[k++] = *s;
        s++;
    }
    name[k] = 0;
    while (s < end && (*s == ' ' || *s == '\t')) s++;
    if (s >= end || *s != '=') return -1;
    s++;
    while (s < end && (*s == ' ' || *s == '\t')) s++;
    k = 0;
    if (s < end && *s == '"') {
        s++;
        for (;;) {
            if (s >= end) return -1; /* unterminated quoted string */
            char ch = *s++;
            if (ch == '"') break;
            if (ch == '\\' && s < end) ch = *s++;
            if (k + 1 < vn)
                value[k++] = ch;
            else
                *trunc = 1;
        }
    } else {
        while (s < end && *s != ';' && *s != ' ' && *s != '\t') {
            if (k + 1 < vn)
                value[k++] = *s;
            else
                *trunc = 1;
            s++;
        }
    }
    value[k] = 0;
    *p = s;
    return 1;
}

DsocrStatus multipart_boundary(const char *ct, char *out, size_t outlen, DsError *e) {
    if (outlen) out[0] = 0;
    if (!ct) return ds_fail(e, DSOCR_E_FORMAT, "the request has no Content-Type; send multipart/form-data");
    const char *end = ct + strlen(ct);
    while (*ct == ' ' || *ct == '\t') ct++;
    static const char MP[] = "multipart/form-data";
    if (strncasecmp(ct, MP, sizeof MP - 1) != 0 ||
        (ct[sizeof MP - 1] && ct[sizeof MP - 1] != ';' && ct[sizeof MP - 1] != ' ' && ct[sizeof MP - 1] != '\t'))
        return ds_fail(e, DSOCR_E_FORMAT, "Content-Type is \"%.80s\"; this endpoint takes multipart/form-data", ct);
    const char *p = ct + sizeof MP - 1;
    char name[32], value[MULTIPART_MAX_BOUNDARY + 2];
    int r, trunc;
    while ((r = param_next(&p, end, name, sizeof name, value, sizeof value, &trunc)) == 1) {
        if (strcasecmp(name, "boundary") != 0) continue;
        size_t n = strlen(value);
        if (trunc || n > MULTIPART_MAX_BOUNDARY)
            return ds_fail(e, DSOCR_E_FORMAT, "the multipart boundary is longer than %d characters",
                           MULTIPART_MAX_BOUNDARY);
        if (n == 0) return ds_fail(e, DSOCR_E_FORMAT, "the multipart boundary is empty");
        if (n + 1 > outlen) return ds_fail(e, DSOCR_E_FORMAT, "the multipart boundary is too long");
        memcpy(out, value, n + 1);
        return DSOCR_OK;
    }
    if (r < 0) return ds_fail(e, DSOCR_E_FORMAT, "malformed Content-Type parameters");
    return ds_fail(e, DSOCR_E_FORMAT, "multipart/form-data without a boundary parameter");
}

/* Parses one part's header block [h, hend) into part. */
static DsocrStatus part_headers(const char *h, const char *hend, MultipartPart *part, int index, DsError *e) {
    int have_disp = 0;
    while (h < hend) {
        const char *eol = memchr(h, '\r', (size_t)(hend - h));
        if (!eol) eol = hend;
        const char *colon = memchr(h, ':', (size_t)(eol - h));
        if (!colon) return ds_fail(e, DSOCR_E_FORMAT, "multipart part %d: a header line without ':'", index + 1);
        size_t hn = (size_t)(colon - h);
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t')) v++;
        if (hn == 19 && !strncasecmp(h, "Content-Disposition", 19)) {
            const char *q = v;
            while (q < eol && *q != ';' && *q != ' ' && *q != '\t') q++;
            if ((size_t)(q - v) != 9 || strncasecmp(v, "form-data", 9) != 0)
                return ds_fail(e, DSOCR_E_FORMAT, "multipart part %d: Content-Disposition is not form-data",
                               index + 1);
            char name[32], value[MULTIPART_MAX_NAME];
            int r, trunc;
            while ((r = param_next(&q, eol, name, sizeof name, value, sizeof value, &trunc)) == 1) {
                if (!strcasecmp(name, "name")) {
                    if (trunc)
                        return ds_fail(e, DSOCR_E_FORMAT, "multipart part %d: field name longer than %d bytes",
                                       index + 1, MULTIPART_MAX_NAME - 1);
                    snprintf(part->name, sizeof part->name, "%s", value);
                    have_disp = 1;
                } else if (!strcasecmp(name, "filename")) {
                    snprintf(part->filename, sizeof part->filename, "%s", value);
                    part->has_filename = 1;
                }
            }
            if (r < 0)
                return ds_fail(e, DSOCR_E_FORMAT, "multipart part %d: malformed Content-Disposition", index + 1);
        } else if (hn == 12 && !strncasecmp(h, "Content-Type", 12)) {
            size_t n = (size_t)(eol - v);
            if (n >= sizeof part->content_type) n = sizeof part->content_type - 1;
            memcpy(part->content_type, v, n);
            part->content_type[n] = 0;
        } else if (hn == 25 && !strncasecmp(h, "Content-Transfer-Encoding", 25)) {
            size_t n = (size_t)(eol - v);
            if (!((n == 6 && !strncasecmp(v, "binary", 6)) || (n == 4 && !strncasecmp(v, "8bit", 4)) ||
                  (n == 4 && !strncasecmp(v, "7bit", 4))))
                return ds_fail(e, DSOCR_E_FORMAT, "multipart part %d: Content-Transfer-Encoding \"%.*s\" is not "
                               "supported (send the bytes as they are)", index + 1, (int)(n > 40 ? 40 : n), v);
        }
        h = eol + 2 <= hend ? eol + 2 : hend;
    }
    if (!have_disp)
        return ds_fail(e, DSOCR_E_FORMAT, "multipart part %d has no Content-Disposition: form-data; name=...",
                       index + 1);
    return DSOCR_OK;
}

DsocrStatus multipart_parse(const uint8_t *body, size_t len, const char *boundary, MultipartPart *parts,
                            int max_parts, int *n_parts, DsError *e) {
    *n_parts = 0;
    size_t bl = strlen(boundary);
    if (bl == 0 || bl > MULTIPART_MAX_BOUNDARY) return ds_fail(e, DSOCR_E_FORMAT, "bad multipart boundary");
    char delim[MULTIPART_MAX_BOUNDARY + 5]; /* "\r\n--" + boundary */
    memcpy(delim, "\r\n--", 4);
    memcpy(delim + 4, boundary, bl);
    const size_t dl = bl + 4;
    const uint8_t *end = body + len, *p;
    /* the first delimiter may start the body (no CRLF before it) */
    if (len >= dl - 2 && !memcmp(body, delim + 2, dl - 2))
        p = body + dl - 2;
    else {
        const uint8_t *f = len ? memmem(body, len, delim, dl) : NULL;
        if (!f) return ds_fail(e, DSOCR_E_FORMAT, "the body does not contain the multipart boundary");
        p = f + dl;
    }
    for (int idx = 0;; idx++) {
        /* after a delimiter: "--" closes; else optional padding and CRLF */
        if (end - p >= 2 && p[0] == '-' && p[1] == '-') break;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
            return ds_fail(e, DSOCR_E_FORMAT, "multipart: expected a line break after the boundary (part %d)",
                           idx + 1);
        p += 2;
        if (idx >= max_parts)
            return ds_fail(e, DSOCR_E_FORMAT, "multipart: more than %d parts", max_parts);
        const uint8_t *hend;
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
            hend = p; /* no headers at all */
        else {
            hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
            if (!hend) return ds_fail(e, DSOCR_E_FORMAT, "multipart part %d: unterminated header block", idx + 1);
        }
        MultipartPart *part = &parts[idx];
        memset(part, 0, sizeof *part);
        DsocrStatus st = part_headers((const char *)p, (const char *)hend, part, idx, e);
        if (st) return st;
        const uint8_t *data = hend + (hend == p ? 2 : 4);
        const uint8_t *next = data <= end ? memmem(data, (size_t)(end - data), delim, dl) : NULL;
        if (!next)
            return ds_fail(e, DSOCR_E_FORMAT, "multipart part %d (\"%s\") is not closed by the boundary", idx + 1,
                           part->name);
        part->data = data;
        part->len = (size_t)(next - data);
        *n_parts = idx + 1;
        p = next + dl;
    }
    return DSOCR_OK;
}
