/* dump.c: see dump.h. */
#include "dump.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

DsocrStatus dump_write(const char *dir, const char *name, int dtype, int ndim, const int64_t *shape,
                       const void *data, DsError *e) {
    if (!dir) return DSOCR_OK;
    static const size_t esz[] = {4, 2, 4, 1, 8};
    if (dtype < 0 || dtype > 4 || ndim < 0 || ndim > 8) return ds_fail(e, DSOCR_E_INVALID_ARG, "bad dump call");
    char path[2048];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return ds_fail(e, DSOCR_E_IO, "%s: cannot create: %s", path, strerror(errno));
    uint32_t hdr[2] = {(uint32_t)dtype, (uint32_t)ndim};
    size_t n = 1;
    int ok = fwrite("DSDUMP01", 1, 8, f) == 8 && fwrite(hdr, 4, 2, f) == 2;
    for (int i = 0; ok && i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        ok = fwrite(&d, 8, 1, f) == 1;
        n *= (size_t)shape[i];
    }
    if (ok && n) ok = fwrite(data, esz[dtype], n, f) == n;
    if (fclose(f) != 0) ok = 0;
    return ok ? DSOCR_OK : ds_fail(e, DSOCR_E_IO, "%s: write failed", path);
}

DsocrStatus dump_f32(const char *dir, const char *name, const float *x, int64_t d0, int64_t d1, int64_t d2,
                     DsError *e) {
    int64_t s[3] = {d0, d1, d2};
    int nd = d2 ? 3 : d1 ? 2 : 1;
    return dump_write(dir, name, DUMP_F32, nd, s, x, e);
}

DsocrStatus dump_parse4(const char *name, const void *data, size_t len, int dtype, void **out, int64_t *shape,
                        int *ndim, DsError *e) {
    static const char *dname[] = {"f32", "bf16", "i32", "u8", "i64"};
    const uint8_t *buf = data;
    *out = NULL;
    *ndim = 0;
    DS_ASSERT(dtype == DUMP_F32 || dtype == DUMP_I32);
    uint32_t dt, nd;
    if (len < 16 || memcmp(buf, "DSDUMP01", 8)) return ds_fail(e, DSOCR_E_FORMAT, "%s: not a DSDUMP01 file", name);
    memcpy(&dt, buf + 8, 4);
    memcpy(&nd, buf + 12, 4);
    if (dt != (uint32_t)dtype)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: not an %s dump (dtype %s)", name, dname[dtype],
                       dt < 5 ? dname[dt] : "unknown");
    if (nd > 8 || len < 16 + 8 * (size_t)nd) return ds_fail(e, DSOCR_E_FORMAT, "%s: truncated header", name);
    uint64_t cnt = 1;
    for (uint32_t i = 0; i < nd; i++) {
        uint64_t d;
        memcpy(&d, buf + 16 + 8 * i, 8);
        shape[i] = (int64_t)d;
        if (d > (1u << 28) || __builtin_mul_overflow(cnt, d, &cnt)) cnt = UINT64_MAX;
    }
    size_t off = 16 + 8 * (size_t)nd;
    if (cnt > (1u << 28)) return ds_fail(e, DSOCR_E_FORMAT, "%s: its shape is too large", name);
    if (len - off != cnt * 4)
        return ds_fail(e, DSOCR_E_FORMAT, "%s: %zu data bytes, but its shape needs %llu (truncated or corrupt)", name,
                       len - off, (unsigned long long)cnt * 4);
    void *v = malloc(cnt * 4 + 4);
    if (!v) return ds_fail(e, DSOCR_E_NOMEM, "out of memory");
    memcpy(v, buf + off, cnt * 4);
    *out = v;
    *ndim = (int)nd;
    return DSOCR_OK;
}

/* Reads a dump file of dtype f32 or i32 (dump_parse4 on its bytes). */
static DsocrStatus dump_read4(const char *path, int dtype, void **out, int64_t *shape, int *ndim, DsError *e) {
    char *buf;
    size_t len;
    *out = NULL;
    *ndim = 0;
    DsocrStatus st = ds_read_file(path, 1u << 30, &buf, &len, e);
    if (st) return st;
    st = dump_parse4(path, buf, len, dtype, out, shape, ndim, e);
    free(buf);
    return st;
}

DsocrStatus dump_read_i32(const char *path, int32_t **out, int64_t *n, DsError *e) {
    int64_t shape[8];
    int nd;
    *n = 0;
    DsocrStatus st = dump_read4(path, DUMP_I32, (void **)out, shape, &nd, e);
    if (st) return st;
    *n = 1;
    for (int i = 0; i < nd; i++) *n *= shape[i];
    return DSOCR_OK;
}

DsocrStatus dump_read_f32(const char *path, float **out, int64_t *shape, int *ndim, DsError *e) {
    return dump_read4(path, DUMP_F32, (void **)out, shape, ndim, e);
}
