/* safetensors.c: see safetensors.h. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

static const struct {
    DsDtype t;
    const char *name;
    size_t size;
} DTYPES[] = {
    {DS_F32, "F32", 4}, {DS_F16, "F16", 2}, {DS_BF16, "BF16", 2}, {DS_F64, "F64", 8}, {DS_I8, "I8", 1},
    {DS_U8, "U8", 1},   {DS_I16, "I16", 2}, {DS_I32, "I32", 4},   {DS_I64, "I64", 8}, {DS_BOOL, "BOOL", 1},
};
#define N_DTYPES (sizeof DTYPES / sizeof DTYPES[0])

size_t ds_dtype_size(DsDtype t) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (DTYPES[i].t == t) return DTYPES[i].size;
    return 0;
}

const char *ds_dtype_name(DsDtype t) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (DTYPES[i].t == t) return DTYPES[i].name;
    /* Block types have names (GGUF's spelling) but no element size and no safetensors spelling: they are not in
     * DTYPES, so ds_dtype_parse never yields them from a file and the writer refuses them. */
    if (t == DS_Q8_0) return "Q8_0";
    if (t == DS_Q4_0) return "Q4_0";
    return "unknown";
}

DsDtype ds_dtype_parse(const char *s) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (!strcmp(DTYPES[i].name, s)) return DTYPES[i].t;
    return DS_DTYPE_UNKNOWN;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

static int cmp_begin(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* A JSON number that is a non-negative integer representable exactly (< 2^53). */
static int json_uint(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double v = j->valuedouble;
    if (!(v >= 0) || v > 9007199254740992.0 || floor(v) != v) return 0;
    *out = (uint64_t)v;
    return 1;
}

static DsocrStatus parse_entry(const cJSON *item, uint64_t data_size, const char *what, StTensor *t, DsError *e) {
    const char *nm = item->string;
    if (!cJSON_IsObject(item))
        return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s': header entry is not a JSON object", what, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt))
        return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", what, nm);
    t->dtype = ds_dtype_parse(dt->valuestring);
    if (t->dtype == DS_DTYPE_UNKNOWN)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s': unknown dtype \"%.32s\"", what, nm, dt->valuestring);
    if (!cJSON_IsArray(sh))
        return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", what, nm);
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s': %d dimensions (at most %d)", what, nm, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_uint(cJSON_GetArrayItem(sh, i), &d) || d > INT64_MAX)
            return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", what, nm,
                           i);
        t->shape[i] = (int64_t)d;
        if (__builtin_mul_overflow(numel, d, &numel))
            return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s': shape overflows", what, nm);
    }
    t->numel = numel;
    uint64_t b, en;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(cJSON_GetArrayItem(off, 0), &b) ||
        !json_uint(cJSON_GetArrayItem(off, 1), &en))
        return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s': \"data_offsets\" must be two non-negative integers", what,
                       nm);
    if (b > en)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before begin",
                       what, nm, b, en);
    if (en > data_size)
        return ds_fail(e, DSOCR_E_FORMAT,
                       "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] out of range (data section is %" PRIu64
                       " bytes; file truncated?)",
                       what, nm, b, en, data_size);
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)ds_dtype_size(t->dtype), &nbytes) || nbytes != en - b)
        return ds_fail(e, DSOCR_E_FORMAT,
                       "%s: tensor '%s': %" PRIu64 " bytes at data_offsets but shape and dtype %s need %" PRIu64, what,
                       nm, en - b, ds_dtype_name(t->dtype), numel * ds_dtype_size(t->dtype));
    t->begin = b;
    t->end = en;
    return DSOCR_OK;
}

DsocrStatus safetensors_parse(const uint8_t *data, size_t size, const char *what, StFile *out, DsError *e) {
    memset(out, 0, sizeof *out);
    if (!what) what = "safetensors";
    if (size < 8)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: file is %zu bytes, too short for a safetensors header", what, size);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | data[i];
    if (hl > size - 8)
        return ds_fail(e, DSOCR_E_FORMAT,
                       "%s: header length %" PRIu64 " is larger than the file (%zu bytes; truncated or not safetensors)",
                       what, hl, size);
    if (hl > ST_MAX_HEADER)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: header length %" PRIu64 " exceeds the %u-byte limit", what, hl,
                       ST_MAX_HEADER);
    if (hl < 2) return ds_fail(e, DSOCR_E_FORMAT, "%s: header of %" PRIu64 " bytes cannot be a JSON object", what, hl);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)data + 8, (size_t)hl, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - (const char *)data - 8) : 0;
        return ds_fail(e, DSOCR_E_FORMAT, "%s: header is not valid JSON (error near byte %zu of %" PRIu64 ")", what,
                       at, hl);
    }
    DsocrStatus st = DSOCR_OK;
    if (!cJSON_IsObject(root)) {
        st = ds_fail(e, DSOCR_E_FORMAT, "%s: header is JSON but not an object", what);
        goto fail;
    }
    /* the rest of the header after the JSON value may only be spaces (the format pads with 0x20) */
    for (const char *p = end; p && p < (const char *)data + 8 + hl; p++) {
        if (*p != ' ' && *p != '\n' && *p != '\t' && *p != '\r' && *p != 0) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: trailing bytes after the JSON header", what);
            goto fail;
        }
    }
    out->header_len = hl;
    out->data = data + 8 + hl;
    out->data_size = size - 8 - hl;
    int n = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        if (strcmp(it->string ? it->string : "", "__metadata__") != 0) n++;
    out->tensors = calloc(n ? (size_t)n : 1, sizeof(StTensor));
    if (!out->tensors) {
        st = ds_fail(e, DSOCR_E_NOMEM, "%s: out of memory for %d tensor entries", what, n);
        goto fail;
    }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (!it->string) continue;
        if (!strcmp(it->string, "__metadata__")) {
            if (!cJSON_IsObject(it)) {
                st = ds_fail(e, DSOCR_E_FORMAT, "%s: \"__metadata__\" is not an object", what);
                goto fail;
            }
            for (const cJSON *m = it->child; m; m = m->next) {
                if (!cJSON_IsString(m)) {
                    st = ds_fail(e, DSOCR_E_FORMAT, "%s: __metadata__ value for '%s' is not a string", what,
                                 m->string ? m->string : "");
                    goto fail;
                }
            }
            out->metadata_json = cJSON_PrintUnformatted(it);
            continue;
        }
        if (!*it->string) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: a tensor has an empty name", what);
            goto fail;
        }
        StTensor *t = &out->tensors[out->n_tensors];
        if ((st = parse_entry(it, out->data_size, what, t, e)) != DSOCR_OK) goto fail;
        t->name = strdup(it->string);
        if (!t->name) {
            st = ds_fail(e, DSOCR_E_NOMEM, "%s: out of memory", what);
            goto fail;
        }
        t->data = out->data + t->begin;
        out->n_tensors++;
    }
    qsort(out->tensors, (size_t)out->n_tensors, sizeof(StTensor), cmp_name);
    for (int i = 1; i < out->n_tensors; i++) {
        if (!strcmp(out->tensors[i - 1].name, out->tensors[i].name)) {
            st = ds_fail(e, DSOCR_E_FORMAT, "%s: tensor '%s' appears twice in the header", what, out->tensors[i].name);
            goto fail;
        }
    }
    /* overlapping ranges: sort pointers by begin and compare neighbours (empty tensors overlap nothing) */
    if (out->n_tensors > 1) {
        StTensor **by = malloc(sizeof(StTensor *) * (size_t)out->n_tensors);
        if (!by) {
            st = ds_fail(e, DSOCR_E_NOMEM, "%s: out of memory", what);
            goto fail;
        }
        int m = 0;
        for (int i = 0; i < out->n_tensors; i++)
            if (out->tensors[i].end > out->tensors[i].begin) by[m++] = &out->tensors[i];
        qsort(by, (size_t)m, sizeof *by, cmp_begin);
        for (int i = 1; i < m; i++) {
            if (by[i]->begin < by[i - 1]->end) {
                st = ds_fail(e, DSOCR_E_FORMAT,
                             "%s: tensors '%s' [%" PRIu64 ", %" PRIu64 ") and '%s' [%" PRIu64 ", %" PRIu64
                             ") overlap",
                             what, by[i - 1]->name, by[i - 1]->begin, by[i - 1]->end, by[i]->name, by[i]->begin,
                             by[i]->end);
                free(by);
                goto fail;
            }
        }
        free(by);
    }
    cJSON_Delete(root);
    return DSOCR_OK;
fail:
    cJSON_Delete(root);
    safetensors_close(out);
    return st;
}

DsocrStatus safetensors_open(const char *path, StFile *out, DsError *e) {
    DsMap m;
    DsocrStatus st = ds_map_file(path, &m, e);
    if (st) {
        memset(out, 0, sizeof *out);
        return st;
    }
    st = safetensors_parse(m.data, m.size, path, out, e);
    if (st) {
        ds_map_free(&m);
        return st;
    }
    out->map = m;
    out->owns_map = 1;
    return DSOCR_OK;
}

void safetensors_close(StFile *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->metadata_json);
    if (f->owns_map) ds_map_free(&f->map);
    memset(f, 0, sizeof *f);
}

const StTensor *safetensors_find(const StFile *f, const char *name) {
    int lo = 0, hi = f->n_tensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(f->tensors[mid].name, name);
        if (!c) return &f->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

DsocrStatus safetensors_write_header(FILE *f, const StWriteTensor *t, int n, const char *const *meta, int n_meta,
                                     DsError *e) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    if (n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; m && i < n_meta; i++) cJSON_AddStringToObject(m, meta[2 * i], meta[2 * i + 1]);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (!ds_dtype_size(t[i].dtype)) {
            cJSON_Delete(root);
            return ds_fail(e, DSOCR_E_INVALID_ARG, "safetensors: tensor '%s': dtype %s cannot be written",
                           t[i].name, ds_dtype_name(t[i].dtype));
        }
        cJSON *o = cJSON_AddObjectToObject(root, t[i].name);
        if (!o) break;
        cJSON_AddStringToObject(o, "dtype", ds_dtype_name(t[i].dtype));
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        uint64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) {
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[d]));
            numel *= (uint64_t)t[i].shape[d];
        }
        uint64_t nb = numel * ds_dtype_size(t[i].dtype);
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    char *js = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!js) return ds_fail(e, DSOCR_E_NOMEM, "out of memory writing a safetensors header");
    size_t len = strlen(js), padded = (len + 7) & ~(size_t)7;
    uint8_t hdr[8];
    for (int i = 0; i < 8; i++) hdr[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(hdr, 1, 8, f) == 8 && fwrite(js, 1, len, f) == len;
    for (size_t i = len; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    free(js);
    return ok ? DSOCR_OK : ds_fail(e, DSOCR_E_IO, "cannot write safetensors header");
}
