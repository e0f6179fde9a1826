/* safetensors.h: reads the safetensors format (untrusted input): an 8-byte little-endian header length, a JSON
 * header mapping tensor names to {dtype, shape, data_offsets}, then the raw data. The parser checks everything a
 * hostile file could get wrong (lengths, offsets, overlaps, sizes, dtypes, JSON) and reports it by name.
 * It does not know the model: model.c checks names and shapes against the config. Also writes the format
 * (used for the bf16 conversion cache and by tests). */
#ifndef DSOCR_SAFETENSORS_H
#define DSOCR_SAFETENSORS_H

#include <stdint.h>
#include <stdio.h>

#include "util.h"

typedef enum DsDtype {
    DS_DTYPE_UNKNOWN = 0,
    DS_F32,
    DS_F16,
    DS_BF16,
    DS_F64,
    DS_I8,
    DS_U8,
    DS_I16,
    DS_I32,
    DS_I64,
    DS_BOOL,
    /* Block-quantised weights (src/quant.h; ggml's layouts, so GGUF files interoperate). Never in a safetensors
     * file: they come from GGUF files or from quantising at load. Rows of K elements are K/32 blocks. */
    DS_Q8_0,
    DS_Q4_0,
} DsDtype;

/* Bytes per element (0 for unknown, and for the block types: their size is per row, quant_row_bytes). */
size_t ds_dtype_size(DsDtype t);
/* The safetensors spelling ("BF16", "F32", ...); "Q8_0" / "Q4_0" for the block types (never parsed, never
 * written to a safetensors file). */
const char *ds_dtype_name(DsDtype t);
/* Parses a safetensors dtype string; DS_DTYPE_UNKNOWN when not recognised. */
DsDtype ds_dtype_parse(const char *s);

#define ST_MAX_DIMS 8

typedef struct StTensor {
    char *name;
    DsDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end;  /* byte range relative to the data section */
    const uint8_t *data;  /* points into the file's bytes */
} StTensor;

typedef struct StFile {
    DsMap map;            /* the whole file (owned when opened with safetensors_open) */
    int owns_map;
    uint64_t header_len;
    const uint8_t *data;  /* start of the data section */
    uint64_t data_size;
    StTensor *tensors;    /* sorted by name */
    int n_tensors;
    char *metadata_json;  /* the __metadata__ object printed back, or NULL */
} StFile;

/* Largest JSON header accepted (the official file's is ~200 KB). */
#define ST_MAX_HEADER (100u << 20)

/* Parses a safetensors image held in memory (size bytes). `what` names it in messages (a path). On success the
 * StFile points into `data`, which must outlive it. */
DsocrStatus safetensors_parse(const uint8_t *data, size_t size, const char *what, StFile *out, DsError *e);
/* mmaps path and parses it. */
DsocrStatus safetensors_open(const char *path, StFile *out, DsError *e);
void safetensors_close(StFile *f);
/* Binary search by name; NULL when absent. */
const StTensor *safetensors_find(const StFile *f, const char *name);

/* Writer: call safetensors_write_header with the full list (names, dtypes, shapes; offsets are assigned in list
 * order), then write each tensor's bytes in the same order with fwrite. metadata: NULL or a flat list of
 * key/value string pairs (n_meta pairs). */
typedef struct StWriteTensor {
    const char *name;
    DsDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} StWriteTensor;
DsocrStatus safetensors_write_header(FILE *f, const StWriteTensor *t, int n, const char *const *meta, int n_meta,
                                     DsError *e);

#endif
