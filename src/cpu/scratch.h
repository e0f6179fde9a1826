/* scratch.h: per-thread scratch buffers for the CPU ops that need more than a stack (a weight widened whole): each
 * slot grows to the largest request its thread made, is kept for the thread's next call, and is freed when the
 * thread ends (server workers come and go; a buffer kept past its thread would leak). */
#ifndef DSOCR_CPU_SCRATCH_H
#define DSOCR_CPU_SCRATCH_H

#include <stddef.h>

enum { SCRATCH_WIDE, SCRATCH_FFN, SCRATCH_XQ, SCRATCH_MOE, SCRATCH_KV, SCRATCH_SLOTS };

/* 64-byte aligned memory of at least `bytes` for this thread's slot; NULL when out of memory (the old buffer is
 * freed then). What the slot held before is not kept. */
void *cpu_scratch(int slot, size_t bytes);

#endif
