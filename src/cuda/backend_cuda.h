/* backend_cuda.h: CUDA-only extras beside the Backend table (backend.h): precision knobs, device facts and the
 * ceilings the benchmark measures. Plain C; the table itself comes from backend_cuda_new (backend.h).
 * What it is not: model code never needs these (it sees only Backend *). */
#ifndef DSOCR_BACKEND_CUDA_H
#define DSOCR_BACKEND_CUDA_H

#include <stddef.h>

#include "backend.h"

/* Linear with bf16 weights and more than 8 rows runs on the tensor cores with the activations rounded to bf16
 * (exact when they already are, as in the bf16 model). on != 0: the activations are split into hi + lo bf16 parts
 * and multiplied twice, giving about 16 mantissa bits (the fp32 yardstick mode). Default off. No effect while the
 * table's set_gemm_f16 mode is on (fp16 inputs, backend.h). */
void backend_cuda_set_exact_gemm(Backend *b, int on);

/* How many linear calls with bf16 storage (backend.h BE_IN_BF16 / BE_OUT_BF16) have run so far (issued, or
 * recorded into a graph) on the fast paths (bf16 operands straight to the tensor cores, a bf16 output from
 * cuBLASLt) and how many on fp32 copies of the rows (the GEMV, f16 mode, fp32 weights, or shapes, alignments or
 * bias types cuBLASLt has no algorithm for); a block-quantised weight's many-row product counts once per chunk of
 * columns it is dequantised in. For tests and benchmarks: the fallback is correct, only slower. */
void backend_cuda_bf16_io_counts(const Backend *b, long *direct, long *staged);

/* y[0..n) (bf16 storage on the device, n % 8 == 0, 16-byte aligned) = rbf(gelu(y)) by the table the products'
 * BE_GELU with bf16 output uses; for tests (bit for bit against gelu on floats). */
void backend_cuda_gelu_bf16(Backend *b, uint16_t *y, size_t n);

/* The device's name ("NVIDIA H100 80GB HBM3"), multiprocessor count and compute capability (e.g. 90). */
const char *backend_cuda_device_name(const Backend *b);
int backend_cuda_sm_count(const Backend *b);
int backend_cuda_compute_capability(const Backend *b);

/* Driver's view of device memory in bytes: total and used by everything on the card (cudaMemGetInfo). */
void backend_cuda_mem_info(const Backend *b, size_t *used, size_t *total);
/* The driver's used bytes measured right after this backend created its CUDA context, before it allocated
 * anything: "peak device memory" figures subtract it (the context itself is not dsocr's doing). */
size_t backend_cuda_context_used(const Backend *b);
/* Every later allocation that would take this backend's allocated bytes past `bytes` fails (returns NULL: the
 * caller's out-of-memory status), whatever the card has free: the --gpu-mem budget (plan.h). 0: no limit. */
void backend_cuda_set_budget(Backend *b, size_t bytes);

/* The hybrid MoE (routed experts in host memory) copies the experts to the GPU and computes there for this many
 * rows and more (a prefill chunk), when its staging cache fits at least one expert within the budget; for fewer
 * rows (decode) the CPU computes them. DSOCR_NO_STREAM=1: always the CPU. */
enum { CU_MOE_STREAM_ROWS = 32 };

/* Ceilings for the benchmark, measured on this card: cuBLAS bf16 x bf16 -> bf16 GEMM (fp32 accumulation) of
 * side n in TFLOP/s (median of reps), and a device-to-device copy of `bytes` in GB/s counting bytes read plus
 * written. Return 0, or -1 when the buffers do not fit (nothing measured). */
int backend_cuda_gemm_ceiling(Backend *b, int n, int reps, double *tflops);
int backend_cuda_copy_ceiling(Backend *b, size_t bytes, int reps, double *gbps);

/* Seconds between two events recorded around fn(arg) run reps times on the backend's stream, divided by reps
 * (after one warm-up call). For the benchmark's per-op figures. */
double backend_cuda_time(Backend *b, void (*fn)(void *), void *arg, int reps);

#endif
