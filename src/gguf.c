/* gguf.c: see gguf.h. */
#include "gguf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

/* Hard limits well above any real file (the official model has ~2,700 tensors and ~40 keys). */
#define MAX_TENSORS (1 << 20)
#define MAX_KV (1 << 20)
#define MAX_KEY 65536

static const char *TYPE_NAMES[GGUF_T_COUNT] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                                "bool", "string", "array", "u64", "i64", "f64"};
static const char *type_name(uint32_t t) { return t < GGUF_T_COUNT ? TYPE_NAMES[t] : "?"; }
static const size_t TYPE_SIZE[GGUF_T_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

int gguf_type_of_dtype(DsDtype t) {
    switch (t) {
    case DS_F32: return GGML_TYPE_F32;
    case DS_F16: return GGML_TYPE_F16;
    case DS_BF16: return GGML_TYPE_BF16;
    case DS_Q8_0: return GGML_TYPE_Q8_0;
    case DS_Q4_0: return GGML_TYPE_Q4_0;
    default: return -1;
    }
}

DsDtype gguf_dtype_of_type(uint32_t g) {
    switch (g) {
    case GGML_TYPE_F32: return DS_F32;
    case GGML_TYPE_F16: return DS_F16;
    case GGML_TYPE_BF16: return DS_BF16;
    case GGML_TYPE_Q8_0: return DS_Q8_0;
    case GGML_TYPE_Q4_0: return DS_Q4_0;
    default: return DS_DTYPE_UNKNOWN;
    }
}

/* Names of ggml types dsocr does not read, for messages. */
static const char *ggml_type_name(uint32_t g) {
    static const char *n[] = {"F32",  "F16",  "Q4_0", "Q4_1", "(4)",  "(5)",  "Q5_0", "Q5_1", "Q8_0", "Q8_1",
                              "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
                              "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64",
                              "IQ1_M", "BF16"};
    return g < sizeof n / sizeof n[0] ? n[g] : "unknown";
}

/* ---- reader ---- */

typedef struct Rd {
    const uint8_t *p, *end, *base;
    const char *what;
    DsError *e;
} Rd;

static uint64_t rd_off(const Rd *r) { return (uint64_t)(r->p - r->base); }

static DsocrStatus need(Rd *r, uint64_t n, const char *field) {
    if ((uint64_t)(r->end - r->p) < n)
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: truncated GGUF file: %s at byte %" PRIu64 " needs %" PRIu64
                       " bytes, %" PRIu64 " left", r->what, field, rd_off(r), n, (uint64_t)(r->end - r->p));
    return DSOCR_OK;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static DsocrStatus rd_u32(Rd *r, uint32_t *v, const char *field) {
    DsocrStatus st = need(r, 4, field);
    if (st) return st;
    *v = (uint32_t)le(r->p, 4);
    r->p += 4;
    return DSOCR_OK;
}

static DsocrStatus rd_u64(Rd *r, uint64_t *v, const char *field) {
    DsocrStatus st = need(r, 8, field);
    if (st) return st;
    *v = le(r->p, 8);
    r->p += 8;
    return DSOCR_OK;
}

static DsocrStatus rd_str(Rd *r, GgufStr *s, const char *field) {
    uint64_t n;
    DsocrStatus st = rd_u64(r, &n, field);
    if (st) return st;
    if ((uint64_t)(r->end - r->p) < n)
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: %s at byte %" PRIu64 ": string length %" PRIu64
                       " runs past the end of the file", r->what, field, rd_off(r) - 8, n);
    s->s = (const char *)r->p;
    s->n = n;
    r->p += n;
    return DSOCR_OK;
}

static char *dup_str(GgufStr s) {
    char *c = malloc((size_t)s.n + 1);
    if (!c) return NULL;
    memcpy(c, s.s, (size_t)s.n);
    c[s.n] = 0;
    return c;
}

/* Skips one value of type t (not an array); for strings checks the length. */
static DsocrStatus skip_scalar(Rd *r, uint32_t t, const char *key) {
    if (t == GGUF_T_STRING) {
        GgufStr s;
        return rd_str(r, &s, key);
    }
    DsocrStatus st = need(r, TYPE_SIZE[t], key);
    if (st) return st;
    if (t == GGUF_T_BOOL && *r->p > 1)
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: key '%.200s': bool value %u is neither 0 nor 1", r->what, key,
                       *r->p);
    r->p += TYPE_SIZE[t];
    return DSOCR_OK;
}

static int cmp_kv(const void *a, const void *b) {
    return strcmp(((const GgufKv *)a)->key, ((const GgufKv *)b)->key);
}

static const GgufFile *g_sort_file; /* qsort context (single-threaded parse) */
static int cmp_tidx(const void *a, const void *b) {
    return strcmp(g_sort_file->tensors[*(const int64_t *)a].name, g_sort_file->tensors[*(const int64_t *)b].name);
}
static int cmp_toff(const void *a, const void *b) {
    uint64_t x = g_sort_file->tensors[*(const int64_t *)a].offset, y = g_sort_file->tensors[*(const int64_t *)b].offset;
    return x < y ? -1 : x > y;
}

static DsocrStatus parse_kv(Rd *r, GgufFile *f, int64_t i) {
    GgufKv *kv = &f->kv[i];
    GgufStr k;
    char field[64];
    snprintf(field, sizeof field, "key %" PRId64, i);
    DsocrStatus st = rd_str(r, &k, field);
    if (st) return st;
    if (k.n == 0 || k.n > MAX_KEY)
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: key %" PRId64 " has length %" PRIu64 " (must be 1 to %d)",
                       r->what, i, k.n, MAX_KEY);
    if (memchr(k.s, 0, (size_t)k.n))
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: key %" PRId64 " contains a NUL byte", r->what, i);
    if (!(kv->key = dup_str(k))) return ds_fail(r->e, DSOCR_E_NOMEM, "out of memory");
    f->n_kv = i + 1;
    uint32_t t;
    if ((st = rd_u32(r, &t, kv->key))) return st;
    if (t >= GGUF_T_COUNT)
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: key '%.200s' has unknown value type %u", r->what, kv->key, t);
    kv->type = (GgufType)t;
    if (t != GGUF_T_ARRAY) {
        kv->val = r->p;
        if ((st = skip_scalar(r, t, kv->key))) return st;
        kv->val_size = (uint64_t)(r->p - kv->val);
        return DSOCR_OK;
    }
    uint32_t at;
    uint64_t n;
    if ((st = rd_u32(r, &at, kv->key)) || (st = rd_u64(r, &n, kv->key))) return st;
    if (at >= GGUF_T_COUNT)
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: key '%.200s': array of unknown element type %u", r->what,
                       kv->key, at);
    if (at == GGUF_T_ARRAY)
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: key '%.200s': arrays of arrays are not supported", r->what,
                       kv->key);
    kv->arr_type = (GgufType)at;
    kv->arr_n = n;
    kv->val = r->p;
    if (at == GGUF_T_STRING) {
        /* each element takes at least its 8-byte length */
        if (n > (uint64_t)(r->end - r->p) / 8)
            return ds_fail(r->e, DSOCR_E_FORMAT, "%s: key '%.200s': %" PRIu64 " strings cannot fit in the %" PRIu64
                           " bytes left", r->what, kv->key, n, (uint64_t)(r->end - r->p));
        for (uint64_t j = 0; j < n; j++)
            if ((st = skip_scalar(r, at, kv->key))) return st;
    } else {
        uint64_t es = TYPE_SIZE[at];
        if (n > (uint64_t)(r->end - r->p) / es)
            return ds_fail(r->e, DSOCR_E_FORMAT, "%s: key '%.200s': array of %" PRIu64 " %s runs past the end of "
                           "the file", r->what, kv->key, n, type_name(at));
        if (at == GGUF_T_BOOL) {
            for (uint64_t j = 0; j < n; j++)
                if ((st = skip_scalar(r, at, kv->key))) return st;
        } else {
            r->p += n * es;
        }
    }
    kv->val_size = (uint64_t)(r->p - kv->val);
    return DSOCR_OK;
}

static DsocrStatus parse_tensor_info(Rd *r, GgufFile *f, int64_t i) {
    GgufTensor *t = &f->tensors[i];
    GgufStr nm;
    char field[64];
    snprintf(field, sizeof field, "tensor %" PRId64 " name", i);
    DsocrStatus st = rd_str(r, &nm, field);
    if (st) return st;
    if (nm.n == 0 || nm.n >= GGUF_MAX_NAME || memchr(nm.s, 0, (size_t)nm.n))
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: tensor %" PRId64 " has a name of %" PRIu64
                       " bytes (must be 1 to %d, without NUL bytes)", r->what, i, nm.n, GGUF_MAX_NAME - 1);
    if (!(t->name = dup_str(nm))) return ds_fail(r->e, DSOCR_E_NOMEM, "out of memory");
    f->n_tensors = i + 1;
    uint32_t nd;
    if ((st = rd_u32(r, &nd, t->name))) return st;
    if (nd < 1 || nd > GGUF_MAX_DIMS)
        return ds_fail(r->e, DSOCR_E_FORMAT, "%s: tensor '%s' has %u dims (must be 1 to %d)", r->what, t->name, nd,
                       GGUF_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t numel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (int d = 0; d < (int)nd; d++) {
        uint64_t v;
        if ((st = rd_u64(r, &v, t->name))) return st;
        if (v > (uint64_t)INT64_MAX)
            return ds_fail(r->e, DSOCR_E_FORMAT, "%s: tensor '%s': dim %d is %" PRIu64 " (negative as int64)",
                           r->what, t->name, d, v);
        t->ne[d] = (int64_t)v;
        if (v && numel > (uint64_t)INT64_MAX / v)
            return ds_fail(r->e, DSOCR_E_FORMAT, "%s: tensor '%s': the element count overflows", r->what, t->name);
        numel *= v;
    }
    t->numel = numel;
    uint32_t gt;
    if ((st = rd_u32(r, &gt, t->name))) return st;
    t->ggml_type = gt;
    t->dtype = gguf_dtype_of_type(gt);
    if (t->dtype == DS_DTYPE_UNKNOWN)
        return ds_fail(r->e, DSOCR_E_UNSUPPORTED, "%s: tensor '%s' has ggml type %u (%s); dsocr reads F32, F16, "
                       "BF16, Q8_0 and Q4_0", r->what, t->name, gt, ggml_type_name(gt));
    if ((st = rd_u64(r, &t->offset, t->name))) return st;
    if (quant_is_block(t->dtype)) {
        if (t->ne[0] % QK)
            return ds_fail(r->e, DSOCR_E_FORMAT, "%s: tensor '%s' is %s but its rows of %" PRId64
                           " elements are not a multiple of %d", r->what, t->name, ds_dtype_name(t->dtype), t->ne[0], QK);
        uint64_t rb = quant_row_bytes(t->dtype, t->ne[0]), rows = t->ne[0] ? numel / (uint64_t)t->ne[0] : 0;
        if (t->ne[0] == 0) rb = 0, rows = 0;
        if (rows && rb > UINT64_MAX / rows)
            return ds_fail(r->e, DSOCR_E_FORMAT, "%s: tensor '%s': the byte size overflows", r->what, t->name);
        t->nbytes = rb * rows;
    } else {
        uint64_t es = ds_dtype_size(t->dtype);
        if (numel > UINT64_MAX / es)
            return ds_fail(r->e, DSOCR_E_FORMAT, "%s: tensor '%s': the byte size overflows", r->what, t->name);
        t->nbytes = numel * es;
    }
    return DSOCR_OK;
}

DsocrStatus gguf_parse(const uint8_t *data, size_t size, const char *what, GgufFile *out, DsError *e) {
    memset(out, 0, sizeof *out);
    snprintf(out->what, sizeof out->what, "%s", what);
    Rd r = {data, data + size, data, out->what, e};
    DsocrStatus st;
    if (size < 4 || memcmp(data, GGUF_MAGIC, 4) != 0)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: not a GGUF file (no \"GGUF\" magic)", what);
    r.p += 4;
    uint64_t nt, nkv;
    if ((st = rd_u32(&r, &out->version, "version"))) return st;
    if (out->version != GGUF_VERSION)
        return ds_fail(e, out->version == 1 || out->version == 2 ? DSOCR_E_UNSUPPORTED : DSOCR_E_FORMAT,
                       "%s: GGUF version %u (dsocr reads version 3)", what, out->version);
    if ((st = rd_u64(&r, &nt, "tensor count")) || (st = rd_u64(&r, &nkv, "key/value count"))) return st;
    /* each tensor info takes >= 8+1+4+8+4+8 bytes, each key/value >= 8+1+4+1 */
    if (nt > MAX_TENSORS || nt > size / 33)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor count %" PRIu64 " cannot fit in a file of %zu bytes", what,
                       nt, size);
    if (nkv > MAX_KV || nkv > size / 14)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: key/value count %" PRIu64 " cannot fit in a file of %zu bytes",
                       what, nkv, size);
    out->kv = calloc((size_t)nkv + 1, sizeof *out->kv);
    out->tensors = calloc((size_t)nt + 1, sizeof *out->tensors);
    out->by_name = calloc((size_t)nt + 1, sizeof *out->by_name);
    if (!out->kv || !out->tensors || !out->by_name) {
        st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
        goto fail;
    }
    for (int64_t i = 0; i < (int64_t)nkv; i++)
        if ((st = parse_kv(&r, out, i))) goto fail;
    /* duplicate keys */
    if (out->n_kv > 1) {
        GgufKv *s = malloc(sizeof *s * (size_t)out->n_kv);
        if (!s) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto fail;
        }
        memcpy(s, out->kv, sizeof *s * (size_t)out->n_kv);
        qsort(s, (size_t)out->n_kv, sizeof *s, cmp_kv);
        for (int64_t i = 1; i < out->n_kv; i++)
            if (!strcmp(s[i - 1].key, s[i].key)) {
                st = ds_fail(e, DSOCR_E_FORMAT, "%s: key '%.200s' appears twice", what, s[i].key);
                free(s);
                goto fail;
            }
        free(s);
    }
    out->alignment = GGUF_DEFAULT_ALIGNMENT;
    const GgufKv *al = gguf_find_kv(out, "general.alignment");
    if (al) {
        if (al->type != GGUF_T_U32) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: general.alignment has type %s (must be u32)", what,
                         type_name(al->type));
            goto fail;
        }
        uint32_t a = (uint32_t)le(al->val, 4);
        if (a == 0 || (a & (a - 1))) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: general.alignment is %u (must be a power of two)", what, a);
            goto fail;
        }
        out->alignment = a;
    }
    for (int64_t i = 0; i < (int64_t)nt; i++)
        if ((st = parse_tensor_info(&r, out, i))) goto fail;
    uint64_t hdr = rd_off(&r), pad = (out->alignment - hdr % out->alignment) % out->alignment;
    if (nt > 0 && (st = need(&r, pad, "padding before the data section"))) goto fail;
    if (pad > (uint64_t)(r.end - r.p)) pad = (uint64_t)(r.end - r.p); /* no tensors: the data section may be absent */
    out->data = r.p + pad;
    out->data_size = (uint64_t)(r.end - out->data);
    for (int64_t i = 0; i < out->n_tensors; i++) {
        GgufTensor *t = &out->tensors[i];
        out->by_name[i] = i;
        if (t->offset % out->alignment) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s' has offset %" PRIu64 ", not a multiple of the alignment %u",
                         what, t->name, t->offset, out->alignment);
            goto fail;
        }
        if (t->offset > out->data_size || t->nbytes > out->data_size - t->offset) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s' (%" PRIu64 " bytes at offset %" PRIu64
                         ") runs past the end of the data section (%" PRIu64 " bytes; truncated file?)",
                         what, t->name, t->nbytes, t->offset, out->data_size);
            goto fail;
        }
        t->data = out->data + t->offset;
    }
    g_sort_file = out;
    qsort(out->by_name, (size_t)out->n_tensors, sizeof *out->by_name, cmp_tidx);
    for (int64_t i = 1; i < out->n_tensors; i++)
        if (!strcmp(out->tensors[out->by_name[i - 1]].name, out->tensors[out->by_name[i]].name)) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s' appears twice", what, out->tensors[out->by_name[i]].name);
            goto fail;
        }
    /* overlaps: sort a copy of the indexes by offset */
    if (out->n_tensors > 1) {
        int64_t *o = malloc(sizeof *o * (size_t)out->n_tensors);
        if (!o) {
            st = ds_fail(e, DSOCR_E_NOMEM, "out of memory");
            goto fail;
        }
        for (int64_t i = 0; i < out->n_tensors; i++) o[i] = i;
        qsort(o, (size_t)out->n_tensors, sizeof *o, cmp_toff);
        for (int64_t i = 1; i < out->n_tensors; i++) {
            const GgufTensor *a = &out->tensors[o[i - 1]], *b = &out->tensors[o[i]];
            if (a->offset + a->nbytes > b->offset) {
                st = ds_fail(e, DSOCR_E_FORMAT, "%s: tensors '%s' and '%s' overlap", what, a->name, b->name);
                free(o);
                goto fail;
            }
        }
        free(o);
    }
    g_sort_file = NULL;
    return DSOCR_OK;
fail:
    g_sort_file = NULL;
    gguf_close(out);
    return st;
}

DsocrStatus gguf_open(const char *path, GgufFile *out, DsError *e) {
    DsMap m;
    DsocrStatus st = ds_map_file(path, &m, e);
    if (st) {
        memset(out, 0, sizeof *out);
        return st;
    }
    if ((st = gguf_parse(m.data, m.size, path, out, e))) {
        ds_map_free(&m);
        return st;
    }
    out->map = m;
    out->owns_map = 1;
    return DSOCR_OK;
}

void gguf_close(GgufFile *f) {
    if (!f) return;
    for (int64_t i = 0; i < f->n_kv; i++) free(f->kv[i].key);
    for (int64_t i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    free(f->by_name);
    if (f->owns_map) ds_map_free(&f->map);
    memset(f, 0, sizeof *f);
}

int gguf_is_gguf_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char m[4];
    int ok = fread(m, 1, 4, f) == 4 && !memcmp(m, GGUF_MAGIC, 4);
    fclose(f);
    return ok;
}

const GgufKv *gguf_find_kv(const GgufFile *f, const char *key) {
    for (int64_t i = 0; i < f->n_kv; i++)
        if (!strcmp(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const GgufTensor *gguf_find_tensor(const GgufFile *f, const char *name) {
    int64_t lo = 0, hi = f->n_tensors - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const GgufTensor *t = &f->tensors[f->by_name[mid]];
        int c = strcmp(t->name, name);
        if (!c) return t;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

static int is_int_type(GgufType t) {
    return t <= GGUF_T_I32 || t == GGUF_T_U64 || t == GGUF_T_I64;
}

static int64_t int_at(GgufType t, const uint8_t *p, int *ok) {
    *ok = 1;
    switch (t) {
    case GGUF_T_U8: return p[0];
    case GGUF_T_I8: return (int8_t)p[0];
    case GGUF_T_U16: return (int64_t)le(p, 2);
    case GGUF_T_I16: return (int16_t)le(p, 2);
    case GGUF_T_U32: return (int64_t)le(p, 4);
    case GGUF_T_I32: return (int32_t)le(p, 4);
    case GGUF_T_I64: return (int64_t)le(p, 8);
    case GGUF_T_U64: {
        uint64_t v = le(p, 8);
        if (v > (uint64_t)INT64_MAX) *ok = 0;
        return (int64_t)v;
    }
    default: *ok = 0; return 0;
    }
}

static DsocrStatus wrong_type(const GgufFile *f, const GgufKv *kv, const char *want, DsError *e) {
    return ds_fail(e, DSOCR_E_FORMAT, "%s: key '%.200s' has type %s%s%s, expected %s", f->what, kv->key,
                   type_name(kv->type), kv->type == GGUF_T_ARRAY ? " of " : "",
                   kv->type == GGUF_T_ARRAY ? type_name(kv->arr_type) : "", want);
}

DsocrStatus gguf_get_i64(const GgufFile *f, const char *key, int *found, int64_t *out, DsError *e) {
    const GgufKv *kv = gguf_find_kv(f, key);
    *found = kv != NULL;
    if (!kv) return DSOCR_OK;
    if (!is_int_type(kv->type)) return wrong_type(f, kv, "an integer", e);
    int ok;
    int64_t v = int_at(kv->type, kv->val, &ok);
    if (!ok) return ds_fail(e, DSOCR_E_FORMAT, "%s: key '%.200s' is out of range", f->what, key);
    *out = v;
    return DSOCR_OK;
}

DsocrStatus gguf_get_f64(const GgufFile *f, const char *key, int *found, double *out, DsError *e) {
    const GgufKv *kv = gguf_find_kv(f, key);
    *found = kv != NULL;
    if (!kv) return DSOCR_OK;
    if (kv->type == GGUF_T_F32) {
        uint32_t u = (uint32_t)le(kv->val, 4);
        float x;
        memcpy(&x, &u, 4);
        *out = x;
    } else if (kv->type == GGUF_T_F64) {
        uint64_t u = le(kv->val, 8);
        memcpy(out, &u, 8);
    } else {
        return wrong_type(f, kv, "f32 or f64", e);
    }
    return DSOCR_OK;
}

DsocrStatus gguf_get_bool(const GgufFile *f, const char *key, int *found, int *out, DsError *e) {
    const GgufKv *kv = gguf_find_kv(f, key);
    *found = kv != NULL;
    if (!kv) return DSOCR_OK;
    if (kv->type != GGUF_T_BOOL) return wrong_type(f, kv, "bool", e);
    *out = kv->val[0] != 0;
    return DSOCR_OK;
}

DsocrStatus gguf_get_str(const GgufFile *f, const char *key, int *found, GgufStr *out, DsError *e) {
    const GgufKv *kv = gguf_find_kv(f, key);
    *found = kv != NULL;
    if (!kv) return DSOCR_OK;
    if (kv->type != GGUF_T_STRING) return wrong_type(f, kv, "string", e);
    out->n = le(kv->val, 8);
    out->s = (const char *)kv->val + 8;
    return DSOCR_OK;
}

int64_t gguf_arr_i64(const GgufKv *kv, uint64_t i) {
    DS_ASSERT(kv->type == GGUF_T_ARRAY && is_int_type(kv->arr_type) && i < kv->arr_n);
    int ok;
    return int_at(kv->arr_type, kv->val + i * TYPE_SIZE[kv->arr_type], &ok);
}

GgufStr gguf_arr_str_next(const GgufKv *kv, uint64_t *pos) {
    DS_ASSERT(kv->type == GGUF_T_ARRAY && kv->arr_type == GGUF_T_STRING && *pos + 8 <= kv->val_size);
    GgufStr s = {(const char *)kv->val + *pos + 8, le(kv->val + *pos, 8)};
    *pos += 8 + s.n;
    return s;
}

/* ---- writer ---- */

typedef struct WKv {
    char *key;
    uint8_t *bytes; /* type (u32) and the value, serialized */
    size_t n;
} WKv;

typedef struct WTensor {
    char *name;
    DsDtype dtype;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes, offset;
} WTensor;

struct GgufWriter {
    WKv *kv;
    int n_kv, cap_kv;
    WTensor *t;
    int n_t, cap_t;
    uint32_t alignment;
    int oom;
    int written; /* tensors written so far */
    char bad[256]; /* first problem found while collecting */
};

typedef struct WBuf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} WBuf;

static void wb_put(WBuf *b, const void *s, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap : 64;
        while (nc < b->n + n) nc *= 2;
        uint8_t *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void wb_u32(WBuf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    wb_put(b, x, 4);
}
static void wb_u64(WBuf *b, uint64_t v) {
    uint8_t x[8];
    for (int i = 0; i < 8; i++) x[i] = (uint8_t)(v >> (8 * i));
    wb_put(b, x, 8);
}
static void wb_str(WBuf *b, const char *s, size_t n) {
    wb_u64(b, n);
    wb_put(b, s, n);
}

GgufWriter *gguf_writer_new(void) {
    GgufWriter *w = calloc(1, sizeof *w);
    if (w) w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_free(GgufWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].bytes);
    }
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

static void add_kv(GgufWriter *w, const char *key, WBuf *b) {
    if (b->oom || w->oom) {
        w->oom = 1;
        free(b->p);
        return;
    }
    if (w->n_kv == w->cap_kv) {
        int nc = w->cap_kv ? 2 * w->cap_kv : 32;
        WKv *nk = realloc(w->kv, sizeof *nk * (size_t)nc);
        if (!nk) {
            w->oom = 1;
            free(b->p);
            return;
        }
        w->kv = nk;
        w->cap_kv = nc;
    }
    char *k = strdup(key);
    if (!k) {
        w->oom = 1;
        free(b->p);
        return;
    }
    w->kv[w->n_kv++] = (WKv){k, b->p, b->n};
}

#define SCALAR(fn, ctype, gtype, put)                                                                         \
    void fn(GgufWriter *w, const char *key, ctype v) {                                                        \
        WBuf b = {0};                                                                                         \
        wb_u32(&b, gtype);                                                                                    \
        put;                                                                                                  \
        add_kv(w, key, &b);                                                                                   \
    }
SCALAR(gguf_writer_u32, uint32_t, GGUF_T_U32, wb_u32(&b, v))
SCALAR(gguf_writer_i32, int32_t, GGUF_T_I32, wb_u32(&b, (uint32_t)v))
SCALAR(gguf_writer_f32, float, GGUF_T_F32, {
    uint32_t u;
    memcpy(&u, &v, 4);
    wb_u32(&b, u);
})
SCALAR(gguf_writer_bool, int, GGUF_T_BOOL, {
    uint8_t x = v != 0;
    wb_put(&b, &x, 1);
})
SCALAR(gguf_writer_str, const char *, GGUF_T_STRING, wb_str(&b, v, strlen(v)))
#undef SCALAR

void gguf_writer_arr_i32(GgufWriter *w, const char *key, const int32_t *v, size_t n) {
    WBuf b = {0};
    wb_u32(&b, GGUF_T_ARRAY);
    wb_u32(&b, GGUF_T_I32);
    wb_u64(&b, n);
    for (size_t i = 0; i < n; i++) wb_u32(&b, (uint32_t)v[i]);
    add_kv(w, key, &b);
}

void gguf_writer_arr_f32(GgufWriter *w, const char *key, const float *v, size_t n) {
    WBuf b = {0};
    wb_u32(&b, GGUF_T_ARRAY);
    wb_u32(&b, GGUF_T_F32);
    wb_u64(&b, n);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        wb_u32(&b, u);
    }
    add_kv(w, key, &b);
}

void gguf_writer_arr_str(GgufWriter *w, const char *key, const char *const *v, const size_t *lens, size_t n) {
    WBuf b = {0};
    wb_u32(&b, GGUF_T_ARRAY);
    wb_u32(&b, GGUF_T_STRING);
    wb_u64(&b, n);
    for (size_t i = 0; i < n; i++) wb_str(&b, v[i] ? v[i] : "", v[i] ? (lens ? lens[i] : strlen(v[i])) : 0);
    add_kv(w, key, &b);
}

void gguf_writer_tensor(GgufWriter *w, const char *name, DsDtype t, int n_dims, const int64_t *ne) {
    if (w->oom) return;
    if (!w->bad[0]) {
        if (strlen(name) == 0 || strlen(name) >= GGUF_MAX_NAME)
            snprintf(w->bad, sizeof w->bad, "tensor name '%.100s' must be 1 to %d bytes", name, GGUF_MAX_NAME - 1);
        else if (gguf_type_of_dtype(t) < 0)
            snprintf(w->bad, sizeof w->bad, "tensor '%s': dtype %s has no GGUF type", name, ds_dtype_name(t));
        else if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
            snprintf(w->bad, sizeof w->bad, "tensor '%s': %d dims", name, n_dims);
        else if (quant_is_block(t) && ne[0] % QK)
            snprintf(w->bad, sizeof w->bad, "tensor '%s': %s rows of %" PRId64 " are not a multiple of %d", name,
                     ds_dtype_name(t), ne[0], QK);
    }
    if (w->n_t == w->cap_t) {
        int nc = w->cap_t ? 2 * w->cap_t : 256;
        WTensor *nt = realloc(w->t, sizeof *nt * (size_t)nc);
        if (!nt) {
            w->oom = 1;
            return;
        }
        w->t = nt;
        w->cap_t = nc;
    }
    WTensor *x = &w->t[w->n_t];
    memset(x, 0, sizeof *x);
    if (!(x->name = strdup(name))) {
        w->oom = 1;
        return;
    }
    x->dtype = t;
    x->n_dims = n_dims < 1 ? 1 : n_dims > GGUF_MAX_DIMS ? GGUF_MAX_DIMS : n_dims;
    uint64_t numel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        x->ne[d] = d < x->n_dims ? ne[d] : 1;
        numel *= (uint64_t)(x->ne[d] < 0 ? 0 : x->ne[d]);
    }
    if (quant_is_block(t))
        x->nbytes = ne[0] > 0 ? quant_row_bytes(t, ne[0]) * (numel / (uint64_t)ne[0]) : 0;
    else
        x->nbytes = numel * ds_dtype_size(t);
    w->n_t++;
}

size_t gguf_writer_tensor_bytes(const GgufWriter *w, int i) {
    return i >= 0 && i < w->n_t ? (size_t)w->t[i].nbytes : 0;
}

static const uint8_t ZEROS[256];

static int write_pad(FILE *f, uint64_t pos, uint32_t align) {
    uint64_t pad = (align - pos % align) % align;
    while (pad) {
        size_t k = pad > sizeof ZEROS ? sizeof ZEROS : (size_t)pad;
        if (fwrite(ZEROS, 1, k, f) != k) return -1;
        pad -= k;
    }
    return 0;
}

DsocrStatus gguf_writer_write_header(GgufWriter *w, FILE *f, DsError *e) {
    if (w->oom) return ds_fail(e, DSOCR_E_NOMEM, "out of memory while collecting GGUF metadata");
    if (w->bad[0]) return ds_fail(e, DSOCR_E_INVALID_ARG, "GGUF writer: %s", w->bad);
    for (int i = 0; i < w->n_kv; i++) {
        for (int j = 0; j < i; j++)
            if (!strcmp(w->kv[i].key, w->kv[j].key))
                return ds_fail(e, DSOCR_E_INVALID_ARG, "GGUF writer: key '%s' added twice", w->kv[i].key);
        if (!strcmp(w->kv[i].key, "general.alignment")) {
            uint32_t a = (uint32_t)le(w->kv[i].bytes + 4, 4);
            if (le(w->kv[i].bytes, 4) != GGUF_T_U32 || a == 0 || (a & (a - 1)))
                return ds_fail(e, DSOCR_E_INVALID_ARG, "GGUF writer: general.alignment must be a u32 power of two");
            w->alignment = a;
        }
    }
    for (int i = 0; i < w->n_t; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(w->t[i].name, w->t[j].name))
                return ds_fail(e, DSOCR_E_INVALID_ARG, "GGUF writer: tensor '%s' added twice", w->t[i].name);
    WBuf b = {0};
    wb_put(&b, GGUF_MAGIC, 4);
    wb_u32(&b, GGUF_VERSION);
    wb_u64(&b, (uint64_t)w->n_t);
    wb_u64(&b, (uint64_t)w->n_kv);
    for (int i = 0; i < w->n_kv; i++) {
        wb_str(&b, w->kv[i].key, strlen(w->kv[i].key));
        wb_put(&b, w->kv[i].bytes, w->kv[i].n);
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n_t; i++) {
        WTensor *t = &w->t[i];
        wb_str(&b, t->name, strlen(t->name));
        wb_u32(&b, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) wb_u64(&b, (uint64_t)t->ne[d]);
        wb_u32(&b, (uint32_t)gguf_type_of_dtype(t->dtype));
        t->offset = off;
        wb_u64(&b, off);
        off += t->nbytes;
        off += (w->alignment - off % w->alignment) % w->alignment;
    }
    if (b.oom) {
        free(b.p);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    }
    int bad = fwrite(b.p, 1, b.n, f) != b.n || write_pad(f, b.n, w->alignment);
    free(b.p);
    if (bad) return ds_fail(e, DSOCR_E_IO, "GGUF writer: write failed (disk full?): %s", strerror(errno));
    w->written = 0;
    return DSOCR_OK;
}

DsocrStatus gguf_writer_write_data(GgufWriter *w, FILE *f, int i, const void *data, size_t n, DsError *e) {
    if (i != w->written || i >= w->n_t)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "GGUF writer: tensor %d written out of order", i);
    if (n != w->t[i].nbytes)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "GGUF writer: tensor '%s' is %" PRIu64 " bytes, got %zu", w->t[i].name,
                       w->t[i].nbytes, n);
    if ((n && fwrite(data, 1, n, f) != n) || write_pad(f, n, w->alignment))
        return ds_fail(e, DSOCR_E_IO, "GGUF writer: write failed (disk full?): %s", strerror(errno));
    w->written++;
    return DSOCR_OK;
}
