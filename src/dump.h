/* dump.h: stage dumps, the format shared with tools/reference (tools/reference/DUMP.md): one file per tensor,
 * DIR/NAME.bin = 8-byte magic "DSDUMP01", u32 dtype (0 f32, 1 bf16, 2 i32, 3 u8, 4 i64), u32 ndim,
 * ndim x u64 shape, then the raw little-endian C-order data. */
#ifndef DSOCR_DUMP_H
#define DSOCR_DUMP_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

enum { DUMP_F32 = 0, DUMP_BF16 = 1, DUMP_I32 = 2, DUMP_U8 = 3, DUMP_I64 = 4 };

/* Writes DIR/NAME.bin. dir NULL = do nothing (returns DSOCR_OK), so callers can dump unconditionally. */
DsocrStatus dump_write(const char *dir, const char *name, int dtype, int ndim, const int64_t *shape,
                       const void *data, DsError *e);
/* Convenience: f32 with 1..3 dims (d1, d2 = 0 for fewer). */
DsocrStatus dump_f32(const char *dir, const char *name, const float *x, int64_t d0, int64_t d1, int64_t d2,
                     DsError *e);

/* Reads an i32 dump file (e.g. the reference's generated.bin) into a fresh array of *n elements (any shape). */
DsocrStatus dump_read_i32(const char *path, int32_t **out, int64_t *n, DsError *e);
/* Reads an f32 dump file (e.g. image_embeds.bin) into a fresh array; its shape into shape[8], *ndim dims. A file
 * that is not DSDUMP01, not f32, or whose length disagrees with its shape is DSOCR_E_FORMAT with a message
 * naming the file. */
DsocrStatus dump_read_f32(const char *path, float **out, int64_t *shape, int *ndim, DsError *e);
/* What both readers do with the file's bytes (dtype DUMP_F32 or DUMP_I32; name for messages): every count is
 * checked against len before anything is read. For the readers and the fuzz target. */
DsocrStatus dump_parse4(const char *name, const void *data, size_t len, int dtype, void **out, int64_t *shape,
                        int *ndim, DsError *e);
#endif
