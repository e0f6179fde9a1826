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

/* Many rows on a Q8_0 weight in bf16 mode (a decode batch's attention projections and lm_head; cu_linear): the
 * tensor cores on the blocks as stored, instead of dequantising the whole weight into bf16 chunks every step
 * (Q8_0 lm_head at 128 rows took 1.57 ms a step on an H200 that way, against 0.16 ms in bf16).
 * A block of nw warps takes nw·16 output columns (a warp 16: two n8 tiles) and rpb rows of x (grid x: the row
 * groups, so that blocks on the same weight columns run together). Over the reduction, QR_KC values at a time, the
 * block's rows of x land in shared memory by cp.async, two stages (the next lands while the current is used), and
 * each warp runs mma.sync m16n8k16 on all of them, so a weight block is read once per rpb rows. Per 32-wide step
 * lane (g = lane / 4, t = lane % 4) holds weights 8t..8t+7 of its two weight rows (loaded a stage ahead, into
 * registers) and x values 8t..8t+7 of its rows, rounded to bf16 (exact in bf16 mode, where the inputs are bf16
 * values); the step's index is permuted the same way in both operands (an mma's k pair 2t, 2t+1 is the step's
 * 8t + 4s, +1 and its pair 2t + 8, 2t + 9 the step's 8t + 4s + 2, +3, for its half s), as in moe_cuda.cu's
 * group_mma_k. The int8 weights enter the mma as bf16 (exact); each block's sums are scaled by the block's scale
 * and added in fp32. The order of the sums differs from ops_linear_ref's block path: the batch's rule is the
 * teacher-forced margins one, not bit equality. */
enum { QR_ROWS = 128, QR_KC = 64, QR_STEPS = QR_KC / 32, QR_MT = QR_ROWS / 16 };
/* bytes a row of x takes in a stage (fp32): = 16 mod 128, so that a quarter warp's 16-byte loads (rows g, g + 1 at
 * 32t, 32t + 16) meet no bank twice */
enum { QR_XS = QR_KC * 4 + 16 };

__global__ void __launch_bounds__(256) q8_rows_k(float *y, int ldy, const float *x, int ldx, const uint8_t *w, int M,
                                                 int K, int N, int round) {
    extern __shared__ uint4 q8_rows_smem[];
    uint8_t *xs = (uint8_t *)q8_rows_smem;
    const int nw = (int)blockDim.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int m0 = (int)blockIdx.x * QR_ROWS, rows = min((int)QR_ROWS, M - m0), nmt = (rows + 15) / 16;
    const int c0 = ((int)blockIdx.y * nw + (int)(threadIdx.x >> 5)) * 16;
    const bool live = c0 < N; /* warp-uniform; a dead warp still helps stage x */
    const size_t rb = (size_t)(K / 32) * 34, stage = (size_t)nmt * 16 * QR_XS;
    const uint8_t *wr0 = w + (size_t)(live ? c0 + g : 0) * rb, *wr1 = w + (size_t)(live ? c0 + 8 + g : 0) * rb;
    const int nst = (K + QR_KC - 1) / QR_KC;
    /* stage st's x: rows 16·nmt (zeros past rows), values st·QR_KC.. (zeros past K), 16 bytes a copy */
    auto fill = [&](int st) {
        uint8_t *dst = xs + (size_t)(st & 1) * stage;
        const int k0 = st * QR_KC;
        for (int i = threadIdx.x; i < nmt * 16 * (QR_KC / 4); i += blockDim.x) {
            const int r = i / (QR_KC / 4), c4 = i % (QR_KC / 4);
            const bool ok = r < rows && k0 + 4 * c4 < K;
            cp16(dst + (size_t)r * QR_XS + 16 * c4, ok ? x + (size_t)(m0 + r) * ldx + k0 + 4 * c4 : x, ok);
        }
        cp_commit();
    };
    QRaw wq[QR_STEPS][2];
    auto wload = [&](int st) {
#pragma unroll
        for (int s = 0; s < QR_STEPS; s++) {
            const int kb = st * QR_STEPS + s;
            if (live && kb < K / 32) {
                wq[s][0] = qload<DS_Q8_0>(wr0 + (size_t)kb * 34, t);
                wq[s][1] = qload<DS_Q8_0>(wr1 + (size_t)kb * 34, t);
            } else {
                wq[s][0].w0 = wq[s][0].w1 = wq[s][1].w0 = wq[s][1].w1 = 0;
                wq[s][0].d = wq[s][1].d = 0;
            }
        }
    };
    float acc[QR_MT][2][4];
#pragma unroll
    for (int mt = 0; mt < QR_MT; mt++)
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[mt][j][q] = 0.f;
    fill(0);
    wload(0);
    for (int st = 0; st < nst; st++) {
        uint32_t B[QR_STEPS][2][4];
        float sc[QR_STEPS][2][2];
#pragma unroll
        for (int s = 0; s < QR_STEPS; s++)
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const QRaw &r = wq[s][j];
                B[s][j][0] = q8_pair(r.w0, 0), B[s][j][1] = q8_pair(r.w0, 1);
                B[s][j][2] = q8_pair(r.w1, 0), B[s][j][3] = q8_pair(r.w1, 1);
                const float d = __half2float(__ushort_as_half(r.d));
                /* the scales of this lane's accumulator columns 2t and 2t + 1 (weight rows of lanes 8t, 8t + 4) */
                sc[s][j][0] = __shfl_sync(0xffffffffu, d, 8 * t), sc[s][j][1] = __shfl_sync(0xffffffffu, d, 8 * t + 4);
            }
        if (st + 1 < nst) {
            wload(st + 1);
            fill(st + 1);
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads(); /* stage st is in for every thread */
        const uint8_t *xst = xs + (size_t)(st & 1) * stage;
        if (live) {
#pragma unroll
            for (int s = 0; s < QR_STEPS; s++) {
#pragma unroll
                for (int mt = 0; mt < QR_MT; mt++) {
                    if (mt >= nmt) break;
                    const uint8_t *xa = xst + (size_t)(16 * mt + g) * QR_XS + 128 * s + 32 * t;
                    const float4 p0 = *(const float4 *)xa, p1 = *(const float4 *)(xa + 16);
                    const float4 q0 = *(const float4 *)(xa + 8 * QR_XS), q1 = *(const float4 *)(xa + 8 * QR_XS + 16);
                    const uint32_t a0[4] = {pack_bf16(p0.x, p0.y), pack_bf16(q0.x, q0.y), pack_bf16(p0.z, p0.w),
                                            pack_bf16(q0.z, q0.w)};
                    const uint32_t a1[4] = {pack_bf16(p1.x, p1.y), pack_bf16(q1.x, q1.y), pack_bf16(p1.z, p1.w),
                                            pack_bf16(q1.z, q1.w)};
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        float c[4] = {0.f, 0.f, 0.f, 0.f};
                        mma_bf16(c, a0, B[s][j][0], B[s][j][1]);
                        mma_bf16(c, a1, B[s][j][2], B[s][j][3]);
                        acc[mt][j][0] += c[0] * sc[s][j][0], acc[mt][j][1] += c[1] * sc[s][j][1];
                        acc[mt][j][2] += c[2] * sc[s][j][0], acc[mt][j][3] += c[3] * sc[s][j][1];
                    }
                }
            }
        }
        __syncthreads(); /* stage st is used up before stage st + 2 lands in its place */
    }
    if (!live) return;
    /* accumulator q of (mt, j): row 16 mt + g (+ 8 for q >= 2), column c0 + 8 j + 2t (+ 1 for odd q) */
#pragma unroll
    for (int mt = 0; mt < QR_MT; mt++) {
        if (mt >= nmt) break;
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = 16 * mt + g + 8 * h, col = c0 + 8 * j + 2 * t;
                if (row >= rows) continue;
                float v0 = acc[mt][j][2 * h], v1 = acc[mt][j][2 * h + 1];
                if (round) v0 = rbf(v0), v1 = rbf(v1);
                *(float2 *)(y + (size_t)(m0 + row) * ldy + col) = make_float2(v0, v1);
            }
    }
}

bool cu_linear_q8_rows(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, int N, const void *w,
                       int round) {
    CudaCtx *c = cctx(b);
    if (c->cc < 80 || M <= 0 || K % 32 || N % 16 || ldx % 4 || ldy % 2 || ((uintptr_t)x & 15) || ((uintptr_t)y & 7))
        return false;
    /* 8 warps (128 columns) and QR_ROWS rows a block: cu_linear takes this for wide products only (the lm_head) */
    const int nw = 8, smem = 2 * (int)cdiv(M < QR_ROWS ? M : QR_ROWS, 16) * 16 * QR_XS;
    if (smem > c->smem_optin) return false;
    if (smem > 48 * 1024) /* 128 rows' stage pair: 68 KB */
        CU_CHECK(cudaFuncSetAttribute(q8_rows_k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    q8_rows_k<<<dim3(cdiv(M, QR_ROWS), cdiv(N, 16 * nw)), nw * 32, smem, c->stream>>>(y, ldy, x, ldx,
                                                                                    (const uint8_t *)w, M, K, N, round);
    CU_LAUNCHED();
    return true;
}
