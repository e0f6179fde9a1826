/* api.c: request bodies of the seed API and the OpenAI-compatible API parsed into an OcrRequest. See api.h. */
#include "api.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "image.h"
#include "multipart.h"

void api_request_init_seed(OcrRequest *r) {
    memset(r, 0, sizeof *r);
    r->save_to_file = 1;
    r->base_size = 1024;
    r->image_size = 896;
    r->crop_mode = 1;
    r->compat = DSOCR_COMPAT_HF;
}

void api_request_init_chat(OcrRequest *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->mode, sizeof r->mode, "gundam");
    r->base_size = 1024;
    r->image_size = 640;
    r->crop_mode = 1;
    r->compat = DSOCR_COMPAT_VLLM;
}

void api_request_free(OcrRequest *r) {
    if (!r) return;
    free(r->image);
    free(r->prompt);
    r->image = NULL;
    r->prompt = NULL;
}

static void warn(OcrRequest *r, const char *fmt, const char *arg) {
    if (r->n_warnings >= API_MAX_WARNINGS) return;
    for (int i = 0; i < r->n_warnings; i++) {
        char tmp[160];
        snprintf(tmp, sizeof tmp, fmt, arg);
        if (!strcmp(tmp, r->warnings[i])) return;
    }
    snprintf(r->warnings[r->n_warnings++], sizeof r->warnings[0], fmt, arg);
}

/* ---- small parsers ---- */

int api_parse_bool(const char *s, int *v) {
    static const char *T[] = {"true", "1", "yes", "on", "t", "y"}, *F[] = {"false", "0", "no", "off", "f", "n"};
    for (size_t i = 0; i < 6; i++) {
        if (!strcasecmp(s, T[i])) return *v = 1, 0;
        if (!strcasecmp(s, F[i])) return *v = 0, 0;
    }
    return -1;
}

static int parse_int_str(const char *s, int *v) {
    while (*s == ' ') s++;
    char *end;
    if (!*s) return -1;
    long long x = strtoll(s, &end, 10);
    while (*end == ' ') end++;
    if (*end || x < -2147483647LL || x > 2147483647LL) return -1;
    *v = (int)x;
    return 0;
}

static int utf8_valid(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        if (c == 0) return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        int k = (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
        if (k < 0 || i + (size_t)k >= n) return 0;
        uint32_t cp = c & (0x3f >> k);
        for (int j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += (size_t)k + 1;
    }
    return 1;
}

static DsocrStatus set_prompt(OcrRequest *r, const char *s, size_t n, const ApiLimits *lim, DsError *e) {
    if (lim && lim->max_prompt && n > lim->max_prompt)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "the prompt has %zu bytes; the limit is %zu", n, lim->max_prompt);
    if (!utf8_valid((const uint8_t *)s, n))
        return ds_fail(e, DSOCR_E_INVALID_ARG, "the prompt is not valid UTF-8 text (or contains a NUL byte)");
    char *p = malloc(n + 1);
    if (!p) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    memcpy(p, s, n);
    p[n] = 0;
    free(r->prompt);
    r->prompt = p;
    return DSOCR_OK;
}

static DsocrStatus set_image(OcrRequest *r, const uint8_t *data, size_t n, DsError *e) {
    uint8_t *p = malloc(n ? n : 1);
    if (!p) return ds_fail(e, DSOCR_E_NOMEM, "out of memory for a %zu-byte image", n);
    if (n) memcpy(p, data, n);
    free(r->image);
    r->image = p;
    r->image_len = n;
    return DSOCR_OK;
}

/* A named option given as a string (form field or JSON string); 1 when name is not one of ours. */
static int string_field(OcrRequest *r, const char *name, const char *v, const ApiLimits *lim, DsError *e,
                        DsocrStatus *st) {
    *st = DSOCR_OK;
    int x;
    if (!strcmp(name, "save_to_file") || !strcmp(name, "crop_mode")) {
        if (api_parse_bool(v, &x))
            return *st = ds_fail(e, DSOCR_E_INVALID_ARG, "%s must be a boolean (true/false), not \"%.40s\"", name, v),
                   0;
        if (name[0] == 's')
            r->save_to_file = x;
        else
            r->crop_mode = x;
    } else if (!strcmp(name, "base_size") || !strcmp(name, "image_size") || !strcmp(name, "max_tokens")) {
        if (parse_int_str(v, &x))
            return *st = ds_fail(e, DSOCR_E_INVALID_ARG, "%s must be an integer, not \"%.40s\"", name, v), 0;
        if (name[0] == 'b')
            r->base_size = x;
        else if (name[0] == 'i')
            r->image_size = x;
        else {
            if (x < 1)
                return *st = ds_fail(e, DSOCR_E_INVALID_ARG, "max_tokens must be at least 1"), 0;
            if (lim && lim->max_tokens_cap && x > lim->max_tokens_cap)
                return *st = ds_fail(e, DSOCR_E_INVALID_ARG, "max_tokens %d is over this server's limit of %d", x,
                                     lim->max_tokens_cap),
                       0;
            r->max_tokens = x;
        }
    } else if (!strcmp(name, "mode")) {
        ImageMode m;
        if (*v && image_mode_by_name(v, &m) != 0)
            return *st = ds_fail(e, DSOCR_E_INVALID_ARG,
                                 "unknown mode \"%.40s\" (tiny, small, base, large, gundam)", v),
                   0;
        snprintf(r->mode, sizeof r->mode, "%s", v);
    } else if (!strcmp(name, "compat")) {
        if (!strcmp(v, "hf"))
            r->compat = DSOCR_COMPAT_HF;
        else if (!strcmp(v, "vllm"))
            r->compat = DSOCR_COMPAT_VLLM;
        else
            return *st = ds_fail(e, DSOCR_E_INVALID_ARG, "compat must be \"hf\" or \"vllm\", not \"%.40s\"", v), 0;
    } else {
        return 1;
    }
    return 0;
}

/* Checks the sizes (or mode) before any work starts. */
static DsocrStatus finish(OcrRequest *r, DsError *e) {
    ImageMode m = {r->base_size, r->image_size, r->crop_mode};
    if (r->mode[0]) {
        if (image_mode_by_name(r->mode, &m) != 0)
            return ds_fail(e, DSOCR_E_INVALID_ARG, "unknown mode \"%s\" (tiny, small, base, large, gundam)", r->mode);
        return DSOCR_OK;
    }
    DsError me = {0};
    if (image_mode_check(&m, &me)) return ds_fail(e, DSOCR_E_INVALID_ARG, "%s", me.msg);
    return DSOCR_OK;
}

/* ---- base64 ---- */

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

DsocrStatus api_base64_decode(const char *s, size_t n, uint8_t **out, size_t *out_len, DsError *e) {
    *out = NULL;
    *out_len = 0;
    if (n >= 5 && !strncasecmp(s, "data:", 5)) {
        const char *comma = memchr(s, ',', n);
        if (!comma) return ds_fail(e, DSOCR_E_INVALID_ARG, "the data: URL has no ',' before its data");
        size_t hl = (size_t)(comma - s);
        if (hl < 12 || strncasecmp(comma - 7, ";base64", 7) != 0)
            return ds_fail(e, DSOCR_E_INVALID_ARG, "the data: URL is not base64 (\";base64,\" expected)");
        n -= hl + 1;
        s = comma + 1;
    }
    uint8_t *buf = malloc(n / 4 * 3 + 3);
    if (!buf) return ds_fail(e, DSOCR_E_NOMEM, "out of memory decoding %zu base64 characters", n);
    size_t o = 0, pad = 0;
    uint32_t acc = 0;
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64_value(c);
        if (v < 0 || pad) {
            free(buf);
            if (pad) return ds_fail(e, DSOCR_E_INVALID_ARG, "invalid base64: data after '=' padding (offset %zu)", i);
            return ds_fail(e, DSOCR_E_INVALID_ARG, "invalid base64: character 0x%02x at offset %zu", c, i);
        }
        acc = (acc << 6) | (uint32_t)v;
        if (++k == 4) {
            buf[o++] = (uint8_t)(acc >> 16);
            buf[o++] = (uint8_t)(acc >> 8);
            buf[o++] = (uint8_t)acc;
            acc = 0;
            k = 0;
        }
    }
    if (k == 1 || pad > 2) {
        free(buf);
        return ds_fail(e, DSOCR_E_INVALID_ARG, "invalid base64: the length does not fit whole bytes");
    }
    if (k == 2) buf[o++] = (uint8_t)(acc >> 4);
    if (k == 3) {
        buf[o++] = (uint8_t)(acc >> 10);
        buf[o++] = (uint8_t)(acc >> 2);
    }
    if (o == 0) {
        free(buf);
        return ds_fail(e, DSOCR_E_INVALID_ARG, "the base64 image is empty");
    }
    *out = buf;
    *out_len = o;
    return DSOCR_OK;
}

/* ---- POST /ocr ---- */

DsocrStatus api_parse_multipart(const char *content_type, const uint8_t *body, size_t len, const ApiLimits *lim,
                                OcrRequest *r, DsError *e) {
    char boundary[MULTIPART_MAX_BOUNDARY + 1];
    DsocrStatus st = multipart_boundary(content_type, boundary, sizeof boundary, e);
    if (st) return st;
    MultipartPart *parts = malloc(sizeof *parts * MULTIPART_MAX_PARTS);
    if (!parts) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    int n = 0, have_image = 0;
    if ((st = multipart_parse(body, len, boundary, parts, MULTIPART_MAX_PARTS, &n, e))) goto done;
    for (int i = 0; i < n; i++) {
        const MultipartPart *p = &parts[i];
        if (!strcmp(p->name, "image")) {
            if (have_image) {
                st = ds_fail(e, DSOCR_E_INVALID_ARG, "several 'image' fields; send one image per request");
                goto done;
            }
            if (p->len == 0) {
                st = ds_fail(e, DSOCR_E_INVALID_ARG, "the uploaded image '%s' is empty", p->filename);
                goto done;
            }
            if ((st = set_image(r, p->data, p->len, e))) goto done;
            have_image = 1;
        } else if (!strcmp(p->name, "prompt")) {
            if ((st = set_prompt(r, (const char *)p->data, p->len, lim, e))) goto done;
        } else {
            char v[64];
            if (p->len >= sizeof v) {
                if (!strcmp(p->name, "save_to_file") || !strcmp(p->name, "crop_mode") ||
                    !strcmp(p->name, "base_size") || !strcmp(p->name, "image_size") || !strcmp(p->name, "mode") ||
                    !strcmp(p->name, "max_tokens") || !strcmp(p->name, "compat")) {
                    st = ds_fail(e, DSOCR_E_INVALID_ARG, "field %s is too long", p->name);
                    goto done;
                }
                continue;
            }
            memcpy(v, p->data, p->len);
            v[p->len] = 0;
            if (strlen(v) != p->len) {
                st = ds_fail(e, DSOCR_E_INVALID_ARG, "field %s contains a NUL byte", p->name);
                goto done;
            }
            string_field(r, p->name, v, lim, e, &st);
            if (st) goto done;
        }
    }
    if (!have_image) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "missing form field 'image' (the image file to read)");
        goto done;
    }
    if (!r->prompt && (st = set_prompt(r, API_DEFAULT_PROMPT, strlen(API_DEFAULT_PROMPT), NULL, e))) goto done;
    st = finish(r, e);
done:
    free(parts);
    return st;
}

/* ---- JSON helpers ---- */

static DsocrStatus json_parse(const uint8_t *body, size_t len, cJSON **out, DsError *e) {
    *out = NULL;
    if (len == 0) return ds_fail(e, DSOCR_E_FORMAT, "the request body is empty; send a JSON object");
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts((const char *)body, len, &end, 0);
    if (!j) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= (const char *)body && at <= (const char *)body + len ? (size_t)(at - (const char *)body) : 0;
        return ds_fail(e, DSOCR_E_FORMAT, "the body is not valid JSON (error near byte %zu)", off);
    }
    for (const char *p = end; p && p < (const char *)body + len; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != 0) {
            cJSON_Delete(j);
            return ds_fail(e, DSOCR_E_FORMAT, "the body is not valid JSON (text after the value at byte %zu)",
                           (size_t)(p - (const char *)body));
        }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return ds_fail(e, DSOCR_E_FORMAT, "the JSON body must be an object");
    }
    *out = j;
    return DSOCR_OK;
}

static int json_int(const cJSON *v, int *out) {
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (!isfinite(d) || d != floor(d) || d < -2147483647.0 || d > 2147483647.0) return -1;
        *out = (int)d;
        return 0;
    }
    if (cJSON_IsString(v)) return parse_int_str(v->valuestring, out);
    return -1;
}

static int json_bool(const cJSON *v, int *out) {
    if (cJSON_IsBool(v)) return *out = cJSON_IsTrue(v), 0;
    if (cJSON_IsNumber(v) && (v->valuedouble == 0 || v->valuedouble == 1)) return *out = v->valuedouble != 0, 0;
    if (cJSON_IsString(v)) return api_parse_bool(v->valuestring, out);
    return -1;
}

/* The option fields shared by /ocr-base64 and the chat extensions (mode, sizes, crop_mode, compat, and for the
 * seed API save_to_file and max_tokens). */
static DsocrStatus json_options(const cJSON *j, OcrRequest *r, const ApiLimits *lim, int seed, DsError *e) {
    static const char *INTS[] = {"base_size", "image_size", "max_tokens"};
    static const char *BOOLS[] = {"save_to_file", "crop_mode"};
    static const char *STRS[] = {"mode", "compat"};
    char buf[24];
    DsocrStatus st = DSOCR_OK;
    for (int i = 0; i < 3; i++) {
        if (!seed && i == 2) continue; /* chat: max_tokens is read separately */
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, INTS[i]);
        if (!v || cJSON_IsNull(v)) continue;
        int x;
        if (json_int(v, &x)) return ds_fail(e, DSOCR_E_INVALID_ARG, "%s must be an integer", INTS[i]);
        snprintf(buf, sizeof buf, "%d", x);
        string_field(r, INTS[i], buf, lim, e, &st);
        if (st) return st;
    }
    for (int i = 0; i < 2; i++) {
        if (!seed && i == 0) continue;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, BOOLS[i]);
        if (!v || cJSON_IsNull(v)) continue;
        int x;
        if (json_bool(v, &x)) return ds_fail(e, DSOCR_E_INVALID_ARG, "%s must be a boolean", BOOLS[i]);
        if (i == 0)
            r->save_to_file = x;
        else
            r->crop_mode = x;
        if (!seed && i == 1) r->mode[0] = 0; /* explicit sizes replace the default mode */
    }
    if (!seed) {
        const cJSON *bs = cJSON_GetObjectItemCaseSensitive(j, "base_size"),
                    *is = cJSON_GetObjectItemCaseSensitive(j, "image_size");
        if ((bs && !cJSON_IsNull(bs)) || (is && !cJSON_IsNull(is))) r->mode[0] = 0;
    }
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, STRS[i]);
        if (!v || cJSON_IsNull(v)) continue;
        if (!cJSON_IsString(v)) return ds_fail(e, DSOCR_E_INVALID_ARG, "%s must be a string", STRS[i]);
        string_field(r, STRS[i], v->valuestring, lim, e, &st);
        if (st) return st;
    }
    return DSOCR_OK;
}

/* ---- POST /ocr-base64 ---- */

DsocrStatus api_parse_base64_json(const uint8_t *body, size_t len, const ApiLimits *lim, OcrRequest *r,
                                  DsError *e) {
    cJSON *j;
    DsocrStatus st = json_parse(body, len, &j, e);
    if (st) return st;
    const cJSON *img = cJSON_GetObjectItemCaseSensitive(j, "image_base64");
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    if (!img || cJSON_IsNull(img)) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "missing field 'image_base64' (the image as base64 or a data: URL)");
        goto done;
    }
    if (!cJSON_IsString(img)) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "image_base64 must be a string");
        goto done;
    }
    if ((st = api_base64_decode(img->valuestring, strlen(img->valuestring), &r->image, &r->image_len, e)))
        goto done;
    if (pr && !cJSON_IsNull(pr)) {
        if (!cJSON_IsString(pr)) {
            st = ds_fail(e, DSOCR_E_INVALID_ARG, "prompt must be a string");
            goto done;
        }
        if ((st = set_prompt(r, pr->valuestring, strlen(pr->valuestring), lim, e))) goto done;
    } else if ((st = set_prompt(r, API_DEFAULT_PROMPT, strlen(API_DEFAULT_PROMPT), NULL, e))) {
        goto done;
    }
    if ((st = json_options(j, r, lim, 1, e))) goto done;
    st = finish(r, e);
done:
    cJSON_Delete(j);
    return st;
}

/* ---- POST /v1/chat/completions ---- */

/* The data of one image part: {"type":"image_url","image_url":{"url":U}} or {"image_url":U}. */
static DsocrStatus image_part(const cJSON *part, const char **url, DsError *e) {
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
    if (cJSON_IsObject(iu)) iu = cJSON_GetObjectItemCaseSensitive(iu, "url");
    if (!cJSON_IsString(iu)) return ds_fail(e, DSOCR_E_INVALID_ARG, "an image_url part needs image_url.url (a string)");
    *url = iu->valuestring;
    return DSOCR_OK;
}

DsocrStatus api_parse_chat(const uint8_t *body, size_t len, const ApiLimits *lim, OcrRequest *r, DsError *e) {
    cJSON *j;
    DsocrStatus st = json_parse(body, len, &j, e);
    if (st) return st;
    char *text = NULL;
    size_t tlen = 0;
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "'messages' must be a non-empty array");
        goto done;
    }
    const cJSON *last_user = NULL, *m;
    int n_images = 0, idx = 0;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
            st = ds_fail(e, DSOCR_E_INVALID_ARG, "messages[%d] must be an object with a string 'role'", idx);
            goto done;
        }
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (content && !cJSON_IsString(content) && !cJSON_IsArray(content) && !cJSON_IsNull(content)) {
            st = ds_fail(e, DSOCR_E_INVALID_ARG, "messages[%d].content must be a string or an array of parts", idx);
            goto done;
        }
        if (cJSON_IsArray(content)) {
            const cJSON *part;
            cJSON_ArrayForEach(part, content) {
                const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
                if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
                    st = ds_fail(e, DSOCR_E_INVALID_ARG, "messages[%d]: each content part needs a string 'type'", idx);
                    goto done;
                }
                if (!strcmp(type->valuestring, "image_url")) n_images++;
            }
        }
        if (!strcmp(role->valuestring, "user")) last_user = m;
        idx++;
    }
    if (n_images > 1) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "the request has %d images; one image per request is supported", n_images);
        goto done;
    }
    if (!last_user) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "no message with role 'user'");
        goto done;
    }
    cJSON_ArrayForEach(m, msgs) {
        if (m == last_user) continue;
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!strcmp(role->valuestring, "system"))
            warn(r, "%s messages are ignored", "system");
        else
            warn(r, "%s", "earlier messages are ignored: each request is one OCR of one image");
    }
    const char *url = NULL;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(last_user, "content");
    if (cJSON_IsString(content)) {
        tlen = strlen(content->valuestring);
        text = strdup(content->valuestring);
        if (!text) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto done;
        }
    } else if (cJSON_IsArray(content)) {
        const cJSON *part;
        cJSON_ArrayForEach(part, content) {
            const char *type = cJSON_GetObjectItemCaseSensitive(part, "type")->valuestring;
            if (!strcmp(type, "image_url")) {
                if ((st = image_part(part, &url, e))) goto done;
            } else if (!strcmp(type, "text")) {
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (!cJSON_IsString(t)) {
                    st = ds_fail(e, DSOCR_E_INVALID_ARG, "a text part needs 'text' (a string)");
                    goto done;
                }
                size_t add = strlen(t->valuestring), nl = tlen ? 1 : 0;
                if (lim && lim->max_prompt && tlen + nl + add > lim->max_prompt) {
                    st = ds_fail(e, DSOCR_E_INVALID_ARG, "the prompt is longer than %zu bytes", lim->max_prompt);
                    goto done;
                }
                char *nt = realloc(text, tlen + nl + add + 1);
                if (!nt) {
                    st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
                    goto done;
                }
                text = nt;
                if (nl) text[tlen++] = '\n';
                memcpy(text + tlen, t->valuestring, add + 1);
                tlen += add;
            } else {
                st = ds_fail(e, DSOCR_E_INVALID_ARG, "content part type \"%.40s\" is not supported (text, image_url)",
                             type);
                goto done;
            }
        }
    }
    if (!url) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "the last user message has no image (an image_url content part)");
        goto done;
    }
    if (!strncasecmp(url, "http://", 7) || !strncasecmp(url, "https://", 8) || !strncasecmp(url, "file:", 5)) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "image URLs are not fetched; send the image as a data: URL or base64");
        goto done;
    }
    if ((st = api_base64_decode(url, strlen(url), &r->image, &r->image_len, e))) goto done;
    {
        const char *body_text = tlen ? text : "Free OCR.";
        size_t bl = tlen ? tlen : strlen(body_text);
        if (strstr(body_text, "<image>")) {
            st = set_prompt(r, body_text, bl, lim, e);
        } else {
            char *p = malloc(bl + 9);
            if (!p) {
                st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
                goto done;
            }
            memcpy(p, "<image>\n", 8);
            memcpy(p + 8, body_text, bl + 1);
            st = set_prompt(r, p, bl + 8, lim, e);
            free(p);
        }
        if (st) goto done;
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "max_tokens");
    if (!mt || cJSON_IsNull(mt)) mt = cJSON_GetObjectItemCaseSensitive(j, "max_completion_tokens");
    if (mt && !cJSON_IsNull(mt)) {
        int x;
        if (!cJSON_IsNumber(mt) || json_int(mt, &x)) {
            st = ds_fail(e, DSOCR_E_INVALID_ARG, "max_tokens must be an integer");
            goto done;
        }
        char b[24];
        snprintf(b, sizeof b, "%d", x);
        string_field(r, "max_tokens", b, lim, e, &st);
        if (st) goto done;
    }
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(j, "stream");
    if (stream && !cJSON_IsNull(stream)) {
        if (!cJSON_IsBool(stream)) {
            st = ds_fail(e, DSOCR_E_INVALID_ARG, "stream must be true or false");
            goto done;
        }
        r->stream = cJSON_IsTrue(stream);
    }
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(j, "stream_options");
    if (cJSON_IsObject(so)) r->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "n");
    if (n && !cJSON_IsNull(n) && !(cJSON_IsNumber(n) && n->valuedouble == 1)) {
        st = ds_fail(e, DSOCR_E_INVALID_ARG, "n must be 1: decoding is greedy, so every choice would be the same");
        goto done;
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (cJSON_IsString(model)) snprintf(r->model, sizeof r->model, "%s", model->valuestring);
    static const char *SAMPLING[] = {"temperature", "top_p", "top_k", "min_p", "presence_penalty",
                                     "frequency_penalty", "repetition_penalty", "seed", "stop", "logit_bias"};
    for (size_t i = 0; i < sizeof SAMPLING / sizeof SAMPLING[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, SAMPLING[i]);
        if (!v || cJSON_IsNull(v)) continue;
        if (i == 0 && cJSON_IsNumber(v) && v->valuedouble == 0) continue; /* temperature 0 is greedy */
        warn(r, "%s is ignored: decoding is greedy", SAMPLING[i]);
    }
    if ((st = json_options(j, r, lim, 0, e))) goto done;
    st = finish(r, e);
done:
    free(text);
    cJSON_Delete(j);
    return st;
}
