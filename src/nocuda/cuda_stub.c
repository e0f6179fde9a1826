/* cuda_stub.c: the CUDA backend's entry points in a build without CUDA (compiled instead of src/cuda/ when nvcc
 * is absent or CUDA=0, and into the sanitizer and fuzzing builds). */
#include "cuda/backend_cuda.h"

int backend_cuda_built(void) { return 0; }

Backend *backend_cuda_new(int device, DsError *e) {
    (void)device;
    ds_fail(e, DSOCR_E_UNSUPPORTED, "this build has no CUDA backend (rebuild with nvcc present and CUDA=1)");
    return NULL;
}

void backend_cuda_free(Backend *b) { (void)b; }

void backend_cuda_set_budget(Backend *b, size_t bytes) { (void)b, (void)bytes; }

void backend_cuda_bf16_io_counts(const Backend *b, long *direct, long *staged) {
    (void)b;
    *direct = *staged = 0;
}

const char *backend_cuda_device_name(const Backend *b) {
    (void)b;
    return "";
}

int backend_cuda_compute_capability(const Backend *b) {
    (void)b;
    return 0;
}

void backend_cuda_mem_info(const Backend *b, size_t *used, size_t *total) {
    (void)b;
    *used = *total = 0;
}

size_t backend_cuda_context_used(const Backend *b) {
    (void)b;
    return 0;
}

int backend_cuda_gemm_ceiling(Backend *b, int n, int reps, double *tflops) {
    (void)b, (void)n, (void)reps;
    *tflops = 0;
    return -1;
}

int backend_cuda_copy_ceiling(Backend *b, size_t bytes, int reps, double *gbps) {
    (void)b, (void)bytes, (void)reps;
    *gbps = 0;
    return -1;
}
