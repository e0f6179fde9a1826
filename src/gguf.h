/* gguf.h: the GGUF v3 file format (ggml / llama.cpp): a reader over a read-only mapping, for untrusted files,
 * and a streaming writer.
 *
 * Layout (little-endian): "GGUF", u32 version (3), u64 n_tensors, u64 n_kv; n_kv key/value pairs (key string,
 * u32 value type, value); n_tensors tensor infos (name string, u32 n_dims, n_dims u64 dims innermost first,
 * u32 ggml type, u64 offset relative to the data section); padding to the alignment (general.alignment, u32,
 * default 32); the data section. A string is a u64 length and that many bytes (no NUL).
 *
 * The reader checks everything a hostile file can get wrong: truncation, counts that cannot fit the file, string
 * lengths, value and element types, nested arrays, duplicate keys and tensor names, the alignment's type and
 * value, dims (1 to 4, each >= 0), element counts and byte sizes against overflow, block types' row lengths,
 * tensor offsets (aligned, inside the data section, not overlapping). Each error names the file, the field and
 * the problem. Tensor types: F32, F16, BF16, Q8_0, Q4_0 (others are refused by name).
 *
 * What it is not: no model knowledge (checkpoint_gguf.c maps tensors and metadata onto the model). */
#ifndef DSOCR_GGUF_H
#define DSOCR_GGUF_H

#include <stdint.h>
#include <stdio.h>

#include "safetensors.h" /* DsDtype */
#include "util.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_VERSION 3
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
/* ggml's GGML_MAX_NAME: tensor names are shorter than this (llama.cpp refuses longer ones). */
#define GGUF_MAX_NAME 64

typedef enum GgufType {
    GGUF_T_U8 = 0,
    GGUF_T_I8 = 1,
    GGUF_T_U16 = 2,
    GGUF_T_I16 = 3,
    GGUF_T_U32 = 4,
    GGUF_T_I32 = 5,
    GGUF_T_F32 = 6,
    GGUF_T_BOOL = 7,
    GGUF_T_STRING = 8,
    GGUF_T_ARRAY = 9,
    GGUF_T_U64 = 10,
    GGUF_T_I64 = 11,
    GGUF_T_F64 = 12,
    GGUF_T_COUNT
} GgufType;

/* ggml tensor type ids (ggml.h's enum ggml_type) of the types dsocr reads and writes. */
enum {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_BF16 = 30,
};

typedef struct GgufStr {
    const char *s; /* into the mapping, not NUL-terminated */
    uint64_t n;
} GgufStr;

typedef struct GgufKv {
    char *key;           /* NUL-terminated copy */
    GgufType type;
    GgufType arr_type;   /* type == GGUF_T_ARRAY: the element type (never ARRAY) */
    uint64_t arr_n;      /* element count */
    const uint8_t *val;  /* the value's bytes in the mapping (for an array: its first element) */
    uint64_t val_size;   /* bytes of the value (all elements) */
} GgufKv;

typedef struct GgufTensor {
    char *name;          /* NUL-terminated copy */
    uint32_t ggml_type;
    DsDtype dtype;       /* DS_F32, DS_F16, DS_BF16, DS_Q8_0, DS_Q4_0 */
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* innermost first (ne[0] = row length); unused dims are 1 */
    uint64_t numel;
    uint64_t offset;     /* relative to the data section */
    uint64_t nbytes;
    const uint8_t *data; /* into the mapping */
} GgufTensor;

typedef struct GgufFile {
    DsMap map;
    int owns_map;
    uint32_t version;
    uint32_t alignment;
    GgufKv *kv;
    int64_t n_kv;
    GgufTensor *tensors;  /* in file order */
    int64_t n_tensors;
    int64_t *by_name;     /* tensor indexes sorted by name */
    const uint8_t *data;  /* start of the data section */
    uint64_t data_size;
    char what[512];       /* the path, for messages */
} GgufFile;

/* Parses a GGUF image of size bytes in memory; out points into data, which must outlive it. */
DsocrStatus gguf_parse(const uint8_t *data, size_t size, const char *what, GgufFile *out, DsError *e);
/* Maps path and parses it. */
DsocrStatus gguf_open(const char *path, GgufFile *out, DsError *e);
void gguf_close(GgufFile *f);
/* 1 when the file starts with the GGUF magic (does not parse it). */
int gguf_is_gguf_file(const char *path);

const GgufKv *gguf_find_kv(const GgufFile *f, const char *key);
const GgufTensor *gguf_find_tensor(const GgufFile *f, const char *name);

/* Typed getters: an absent key gives DSOCR_OK with *found = 0 and *out untouched; a present one *found = 1.
 * Integers of any integer type are accepted (u64 above INT64_MAX is an error); floats from F32 or F64; bools
 * from BOOL; strings as GgufStr. A key of another type is DSOCR_E_FORMAT naming the key and both types. */
DsocrStatus gguf_get_i64(const GgufFile *f, const char *key, int *found, int64_t *out, DsError *e);
DsocrStatus gguf_get_f64(const GgufFile *f, const char *key, int *found, double *out, DsError *e);
DsocrStatus gguf_get_bool(const GgufFile *f, const char *key, int *found, int *out, DsError *e);
DsocrStatus gguf_get_str(const GgufFile *f, const char *key, int *found, GgufStr *out, DsError *e);
/* Array element i (integer element types) widened to int64. */
int64_t gguf_arr_i64(const GgufKv *kv, uint64_t i);
/* Iterates an array of strings: *pos starts at 0; each call yields the next element. */
GgufStr gguf_arr_str_next(const GgufKv *kv, uint64_t *pos);

/* The ggml type of a dtype (-1 when it has none) and the dtype of a ggml type (DS_DTYPE_UNKNOWN). */
int gguf_type_of_dtype(DsDtype t);
DsDtype gguf_dtype_of_type(uint32_t ggml_type);

/* ---- writer ----
 * Collect metadata and tensor infos, then gguf_writer_write_header, then each tensor's bytes in the order they
 * were added with gguf_writer_write_data (it pads to the alignment). Everything is copied; nothing is written
 * before the header call. A general.alignment key (u32, power of two) sets the alignment. */
typedef struct GgufWriter GgufWriter;
GgufWriter *gguf_writer_new(void);
void gguf_writer_free(GgufWriter *w);
void gguf_writer_u32(GgufWriter *w, const char *key, uint32_t v);
void gguf_writer_i32(GgufWriter *w, const char *key, int32_t v);
void gguf_writer_f32(GgufWriter *w, const char *key, float v);
void gguf_writer_bool(GgufWriter *w, const char *key, int v);
void gguf_writer_str(GgufWriter *w, const char *key, const char *v);
void gguf_writer_arr_i32(GgufWriter *w, const char *key, const int32_t *v, size_t n);
void gguf_writer_arr_f32(GgufWriter *w, const char *key, const float *v, size_t n);
/* n strings; lens may be NULL (NUL-terminated strings). */
void gguf_writer_arr_str(GgufWriter *w, const char *key, const char *const *v, const size_t *lens, size_t n);
/* A tensor of dtype t with n_dims dims given innermost first. */
void gguf_writer_tensor(GgufWriter *w, const char *name, DsDtype t, int n_dims, const int64_t *ne);
/* Checks what was collected (sizes, names, duplicate keys) and writes the header and padding. */
DsocrStatus gguf_writer_write_header(GgufWriter *w, FILE *f, DsError *e);
/* Writes tensor i's bytes (exactly its size) and the padding after it. */
DsocrStatus gguf_writer_write_data(GgufWriter *w, FILE *f, int i, const void *data, size_t n, DsError *e);
/* Bytes tensor i takes (0 for a bad index). */
size_t gguf_writer_tensor_bytes(const GgufWriter *w, int i);

#endif
