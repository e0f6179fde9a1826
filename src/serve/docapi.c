/* docapi.c: POST /v1/ocr bodies parsed into a DocRequest. See docapi.h. */
#include "serve/docapi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "document.h"
#include "engine.h"
#include "image.h"
#include "serve/multipart.h"

void docapi_request_init(DocRequest *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->mode, sizeof r->mode, "gundam");
    r->base_size = 1024;
    r->image_size = 640;
    r->crop_mode = 1;
    r->compat = DSOCR_COMPAT_HF;
    r->dpi = 144;
    r->retries = 2;
}

void docapi_request_free(DocRequest *r) {
    if (!r) return;
    free(r->file);
    free(r->prompt);
    r->file = NULL;
    r->prompt = NULL;
}

static int int_value(const char *s, int *v) {
    char *end;
    if (!*s) return -1;
    long long x = strtoll(s, &end, 10);
    if (*end || x < -2147483647LL || x > 2147483647LL) return -1;
    *v = (int)x;
    return 0;
}

/* The text of a short field (no NUL byte, under cap bytes) into v. */
static DsocrStatus field_text(const MultipartPart *p, char *v, size_t cap, DsError *e) {
    if (p->len >= cap) return ds_fail(e, DSOCR_E_INVALID_ARG, "field %s is too long", p->name);
    memcpy(v, p->data, p->len);
    v[p->len] = 0;
    if (strlen(v) != p->len) return ds_fail(e, DSOCR_E_INVALID_ARG, "field %s contains a NUL byte", p->name);
    return DSOCR_OK;
}

/* One option field; *custom gets bit 1 for a size field, bit 2 for mode. */
static DsocrStatus one_field(DocRequest *r, const MultipartPart *p, const ApiLimits *lim, int *custom,
                             DsError *e) {
    const char *n = p->name;
    if (!strcmp(n, "prompt")) {
        if (lim && lim->max_prompt && p->len > lim->max_prompt + 4)
            return ds_fail(e, DSOCR_E_INVALID_ARG, "the prompt has %zu bytes; the limit is %zu", p->len,
                           lim->max_prompt);
        char *v = malloc(p->len + 1);
        if (!v) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        memcpy(v, p->data, p->len);
        v[p->len] = 0;
        char probe[4096];
        if (strlen(v) != p->len || engine_prompt_text(v, probe, sizeof probe) == -1) {
            free(v);
            return ds_fail(e, DSOCR_E_INVALID_ARG,
                           "unknown or too long prompt (markdown, ocr, free, figure, describe, locate:TEXT or "
                           "raw:TEXT)");
        }
        free(r->prompt);
        r->prompt = v;
        return DSOCR_OK;
    }
    char v[160];
    DsocrStatus st = field_text(p, v, sizeof v, e);
    if (st) return st;
    int x, b;
    if (!strcmp(n, "mode")) {
        ImageMode m;
        if (image_mode_by_name(v, &m) != 0)
            return ds_fail(e, DSOCR_E_INVALID_ARG, "unknown mode \"%.40s\" (tiny, small, base, large, gundam)", v);
        snprintf(r->mode, sizeof r->mode, "%s", v);
        *custom |= 2;
    } else if (!strcmp(n, "base_size") || !strcmp(n, "image_size") || !strcmp(n, "max_tokens") ||
               !strcmp(n, "dpi") || !strcmp(n, "retries")) {
        if (int_value(v, &x)) return ds_fail(e, DSOCR_E_INVALID_ARG, "%s must be an integer, not \"%.40s\"", n, v);
        if (!strcmp(n, "base_size")) {
            r->base_size = x;
            *custom |= 1;
        } else if (!strcmp(n, "image_size")) {
            r->image_size = x;
            *custom |= 1;
        } else if (!strcmp(n, "max_tokens")) {
            if (x < 1) return ds_fail(e, DSOCR_E_INVALID_ARG, "max_tokens must be at least 1");
            if (lim && lim->max_tokens_cap && x > lim->max_tokens_cap)
                return ds_fail(e, DSOCR_E_INVALID_ARG, "max_tokens %d is over this server's limit of %d", x,
                               lim->max_tokens_cap);
            r->max_tokens = x;
        } else if (!strcmp(n, "dpi")) {
            if (x < 18 || x > 1200) return ds_fail(e, DSOCR_E_INVALID_ARG, "dpi must be within 18..1200");
            r->dpi = x;
        } else {
            if (x < 0 || x > 2) return ds_fail(e, DSOCR_E_INVALID_ARG, "retries must be 0, 1 or 2");
            r->retries = x;
        }
    } else if (!strcmp(n, "crop_mode") || !strcmp(n, "stream")) {
        if (api_parse_bool(v, &b))
            return ds_fail(e, DSOCR_E_INVALID_ARG, "%s must be a boolean (true/false), not \"%.40s\"", n, v);
        if (n[0] == 'c') {
            r->crop_mode = b;
            *custom |= 1;
        } else {
            r->stream = b;
        }
    } else if (!strcmp(n, "compat")) {
        if (!strcmp(v, "hf"))
            r->compat = DSOCR_COMPAT_HF;
        else if (!strcmp(v, "vllm"))
            r->compat = DSOCR_COMPAT_VLLM;
        else
            return ds_fail(e, DSOCR_E_INVALID_ARG, "compat must be \"hf\" or \"vllm\", not \"%.40s\"", v);
    } else if (!strcmp(n, "pages")) {
        unsigned char one[1];
        char pe[256];
        if (*v && document_parse_pages(v, 1, one, pe, sizeof pe) < 0 && strstr(pe, "bad page"))
            return ds_fail(e, DSOCR_E_INVALID_ARG, "pages: %s", pe);
        snprintf(r->pages, sizeof r->pages, "%s", v);
    } else if (!strcmp(n, "format")) {
        unsigned f;
        char fe[256];
        if (document_parse_formats(v, &f, fe, sizeof fe))
            return ds_fail(e, DSOCR_E_INVALID_ARG, "format: %s", fe);
        if (f & (DOC_FMT_BOXES | DOC_FMT_CROPS))
            return ds_fail(e, DSOCR_E_INVALID_ARG,
                           "format: boxes and crops are image files, which the server does not write; the JSON "
                           "answer has every page's markdown, text, raw output and blocks with their boxes");
    } else {
        return ds_fail(e, DSOCR_E_INVALID_ARG,
                       "unknown field '%.60s' (file, mode, base_size, image_size, crop_mode, prompt, compat, "
                       "max_tokens, pages, dpi, retries, format, stream)",
                       n);
    }
    return DSOCR_OK;
}

DsocrStatus docapi_parse(const char *content_type, const uint8_t *body, size_t len, const ApiLimits *lim,
                         DocRequest *r, DsError *e) {
    char boundary[MULTIPART_MAX_BOUNDARY + 1];
    DsocrStatus st = multipart_boundary(content_type, boundary, sizeof boundary, e);
    if (st) return st;
    MultipartPart *parts = malloc(sizeof *parts * MULTIPART_MAX_PARTS);
    if (!parts) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    int n = 0, have_file = 0, custom = 0;
    if ((st = multipart_parse(body, len, boundary, parts, MULTIPART_MAX_PARTS, &n, e))) goto done;
    for (int i = 0; i < n && !st; i++) {
        const MultipartPart *p = &parts[i];
        if (strcmp(p->name, "file") != 0) {
            st = one_field(r, p, lim, &custom, e);
            continue;
        }
        if (have_file) {
            st = ds_fail(e, DSOCR_E_INVALID_ARG, "several 'file' fields; send one document per request");
        } else if (p->len == 0) {
            st = ds_fail(e, DSOCR_E_INVALID_ARG, "the uploaded file is empty");
        } else if (!(r->file = malloc(p->len))) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory for a %zu-byte upload", p->len);
        } else {
            memcpy(r->file, p->data, p->len);
            r->file_len = p->len;
            have_file = 1;
            size_t k = 0;
            for (const char *s = p->filename; *s && k + 1 < sizeof r->filename; s++)
                r->filename[k++] = *s >= 0x20 && *s < 0x7f ? *s : '_';
            r->filename[k] = 0;
        }
    }
    if (st) goto done;
    if (!have_file) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "missing form field 'file' (the PDF or image to read)");
        goto done;
    }
    if (!r->filename[0]) snprintf(r->filename, sizeof r->filename, "upload");
    if (custom & 1) {
        if (custom & 2) {
            st = ds_fail(e, DSOCR_E_INVALID_ARG, "give either mode or base_size/image_size/crop_mode, not both");
            goto done;
        }
        r->mode[0] = 0;
        ImageMode m = {r->base_size, r->image_size, r->crop_mode};
        DsError me = {0};
        if (image_mode_check(&m, &me)) {
            st = ds_fail(e, DSOCR_E_INVALID_ARG, "%s", me.msg);
            goto done;
        }
    }
    if (!r->prompt && !(r->prompt = strdup("markdown"))) st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
done:
    free(parts);
    return st;
}
