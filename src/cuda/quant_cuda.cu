/* quant_cuda.cu: the block GEMV, y[m, n] (+)= x[m, :]·w[n, :] (+ bias[n]) on Q8_0 / Q4_0 weights for few rows (decode:
 * attention projections, the dense MLP off the single-token path, lm_head), cu_gemv's contract and epilogue.
 * One warp per output column reads the weight row once for up to R rows of x with quant_cuda.h's qdot (8 blocks
 * at a time, four lanes a block); for one row of x (decode) a warp takes two adjacent columns (qdot2: the x loads
 * shared, and twice the weight bytes in flight per warp, which is what a latency-bound GEMV runs on); fp32
 * arithmetic. What it is not: the many-row products (cu_linear dequantises
 * chunks for the tensor cores) and the MoE (moe_cuda.cu, on the same dot products). */
#include "cuda/quant_cuda.h"

enum { QG_WARPS = 8, QG_ROWS = 8 };

struct GemvQArgs {
    float *y;
    const float *x;
    const uint8_t *w;
    const void *bias;
    int ldy, ldx, M, K, N, bdt, accum, round;
};

template <int DT, int R>
__global__ void __launch_bounds__(QG_WARPS * 32) gemvq_k(GemvQArgs a) {
    pdl_wait();
    const int n = blockIdx.x * QG_WARPS + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (n >= a.N) return;
    const int m0 = blockIdx.y * R, nr = min(R, a.M - m0);
    float acc[R];
    const float *xr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        acc[r] = 0.f;
        xr[r] = a.x + (size_t)(m0 + (r < nr ? r : 0)) * a.ldx;
    }
    qdot<DT, R>(acc, xr, nr, a.w + (size_t)n * (a.K / 32) * qbytes(DT), a.K, lane);
    gemv_rows_store<R>(acc, nr, lane, a.y, a.ldy, m0, n, a.bias, a.bdt, a.accum, a.round);
}

/* One row of x: columns n, n + 1 per warp, the first batch of weight loads issued before the wait. */
template <int DT>
__global__ void __launch_bounds__(QG_WARPS * 32, 4) gemvq1_k(GemvQArgs a) {
    const int n = 2 * (blockIdx.x * QG_WARPS + threadIdx.x / 32), lane = threadIdx.x & 31;
    const size_t rb = (size_t)(a.K / 32) * qbytes(DT);
    const int n1 = n + 1 < a.N ? n + 1 : n;
    Q2Batch<DT> q;
    if (n < a.N) qdot2_first<DT>(q, a.w + (size_t)n * rb, a.w + (size_t)n1 * rb, a.K, lane);
    pdl_wait();
    if (n >= a.N) return;
    float g = 0.f, u = 0.f;
    qdot2_rest<DT>(g, u, q, a.x, a.w + (size_t)n * rb, a.w + (size_t)n1 * rb, a.K, lane);
    g = warp_sum(g);
    u = warp_sum(u);
    if (lane < 2 && n + lane < a.N) gemv_store(a.y + n + lane, lane ? u : g, a.bias, a.bdt, n + lane, a.accum, a.round);
}

template <int DT>
static void gemvq(CudaCtx *c, const GemvQArgs &a) {
    const dim3 blk(QG_WARPS * 32);
    if (a.M == 1)
        launch_pdl(c, gemvq1_k<DT>, dim3(cdiv(a.N, 2 * QG_WARPS)), blk, 0, a);
    else if (a.M <= 4)
        launch_pdl(c, gemvq_k<DT, 4>, dim3(cdiv(a.N, QG_WARPS)), blk, 0, a);
    else
        launch_pdl(c, gemvq_k<DT, QG_ROWS>, dim3(cdiv(a.N, QG_WARPS), cdiv(a.M, QG_ROWS)), blk, 0, a);
    CU_LAUNCHED();
}

void cu_gemv_q(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags,
               int round_bf16) {
    DS_ASSERT(is_block(w.dtype) && K % 32 == 0 && M >= 0 && M <= 65535 * QG_ROWS && ldx >= K && ldy >= N && w.data);
    if (M == 0) return;
    GemvQArgs a = {y, x, (const uint8_t *)w.data, bias.data, ldy, ldx, M, K, N, (int)bias.dtype,
                   (flags & OPS_ACCUM) != 0, round_bf16};
    if (w.dtype == DS_Q8_0)
        gemvq<DS_Q8_0>(cctx(b), a);
    else
        gemvq<DS_Q4_0>(cctx(b), a);
}
