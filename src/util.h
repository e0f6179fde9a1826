/* util.h: small shared pieces: error values, checked allocation, whole-file reads and read-only mappings,
 * bf16/fp16 conversion. Not a grab bag: anything that belongs to one module lives in that module. */
#ifndef DSOCR_UTIL_H
#define DSOCR_UTIL_H

#include <stddef.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include "dsocr.h"

/* An error a person can act on: a status code and a message. Functions that can fail on outside input take a
 * DsError * (may be NULL) and return the status (DSOCR_OK = 0 on success). */
typedef struct DsError {
    DsocrStatus code;
    char msg[512];
} DsError;

/* Sets e (when non-NULL) and returns code, so callers write `return ds_fail(e, DSOCR_E_FORMAT, "...", ...)`. */
DsocrStatus ds_fail(DsError *e, DsocrStatus code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefixes e->msg with "context: " (e.g. a file name). */
void ds_error_prefix(DsError *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Internal invariant broken: print file:line and abort. Never for conditions outside input can cause. */
#define DS_ASSERT(c)                                                                                          \
    do {                                                                                                      \
        if (!(c)) ds_panic(__FILE__, __LINE__, #c);                                                           \
    } while (0)
_Noreturn void ds_panic(const char *file, int line, const char *what);

/* A read-only view of a file: mmap'd when possible. data == NULL and size == 0 for an empty file. */
typedef struct DsMap {
    const uint8_t *data;
    size_t size;
    int mapped; /* 1 when data is an mmap (munmap on free), 0 when malloc'd */
} DsMap;
DsocrStatus ds_map_file(const char *path, DsMap *out, DsError *e);
void ds_map_free(DsMap *m);
/* Gives back the resident pages wholly inside [p, p + n) when that range lies in m's file mapping (read-only and
 * private, so they are clean: the kernel drops them and would read them from the file again if touched); nothing
 * otherwise (memory that is not a mapping is never touched). Returns the bytes given back. */
size_t ds_map_release(const DsMap *m, const void *p, size_t n);

/* mkdir -p: creates path (self = 1) or the folder that holds it (self = 0), with missing parents.
 * Returns 0, or -1 with errno set. */
int ds_mkdirs(const char *path, int self);

/* Reads a whole file into a fresh NUL-terminated buffer (caller frees). max_bytes guards against absurd files. */
DsocrStatus ds_read_file(const char *path, size_t max_bytes, char **out, size_t *len, DsError *e);

/* Overflow-checked size arithmetic: returns 0 on overflow. */
/* An on/off environment switch (DSOCR_NO_GRAPH=1 and the like): on when set, not empty and not "0". */
static inline int ds_env_on(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}
static inline int ds_mul_ok(size_t a, size_t b, size_t *r) { return !__builtin_mul_overflow(a, b, r); }
static inline int ds_add_ok(size_t a, size_t b, size_t *r) { return !__builtin_add_overflow(a, b, r); }

/* bf16 <-> fp32. bf16 is the top 16 bits of an IEEE float; rounding is to nearest even, NaN kept quiet. */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
/* Rounds a float to the nearest bf16 value, returned as float. */
static inline float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);

/* Monotonic clock in seconds. */
double ds_now(void);

#endif
