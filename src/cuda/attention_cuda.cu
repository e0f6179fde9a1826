/* attention_cuda.cu: attention on the GPU (ops.h semantics of ops_attention, ops_attention_kv, kv_write).
 *
 * attention: a flash-style kernel (streaming softmax over 32-key tiles held in shared memory, fp32 arithmetic).
 *   TPQ = 1, 2 or 4 threads share a query row, 32 head dimensions each (head_dim <= 128); 128 threads a block.
 *   The SAM decomposed relative-position bias is computed on the fly: each block first forms, for each of its
 *   queries, q·Rh[i1 − i2 + gh − 1] for every key row i2 and q·Rw[j1 − j2 + gw − 1] for every key column j2
 *   ((gh + gw) floats a query, in shared memory); a score then adds two of them (with bf16_bias: each term and
 *   their sum rounded to bf16, as the official bf16 run's bias tensor). No [T, T] array exists.
 *   Larger head_dim, or grids whose tables do not fit in shared memory, take a plain two-pass kernel.
 * attention_kv: one block per (row, head[, key split]) over the block KV cache (bf16 or f32); four warps walk the
 *   keys, KV_U keys a step per warp (their loads in flight together), each lane holds head_dim/32 dimensions;
 *   few rows (decode) split the keys into 32-key chunks whose partial softmax states the last chunk's block to
 *   finish merges (flash-decoding, one launch), so a single token fills the GPU. The grid covers the pool; chunks past a row's
 *   position return at once (the position is read on the device, so a recorded step stays valid).
 * kv_write: the block table is on the host; the block ids a launch needs travel as a kernel parameter. */
#include <math.h>

#include "cuda/cuda_common.h"

enum { BK = 32, NT = 128, SEG = 36, KV_SPLIT = 32, KVW_BLOCKS = 64, MAX_COUNTERS = 1024 };

struct AttnArgs {
    float *out;
    const float *q, *k, *v;
    int ldo, ldq, ldk, ldv, tq, tk, H, D;
    float scale;
    int causal, q_offset;
    const float *rh, *rw;
    int gh, gw, bf16_bias;
};

template <int TPQ>
static __device__ __forceinline__ float group_sum(float v) {
#pragma unroll
    for (int o = TPQ / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <int TPQ>
__global__ void __launch_bounds__(NT) attn_flash_k(AttnArgs a) {
    constexpr int QPB = NT / TPQ, RS = TPQ * SEG;
    extern __shared__ float sm[];
    float *Ks = sm, *Vs = sm + BK * RS, *rel = sm + 2 * BK * RS;
    const int tid = threadIdx.x, ql = tid / TPQ, part = tid % TPQ, d0 = part * 32;
    const int qi = blockIdx.x * QPB + ql, b = blockIdx.z, h = blockIdx.y;
    const bool valid = qi < a.tq;
    const int qc = valid ? qi : 0;
    float q[32];
    const float *qr = a.q + (size_t)(b * a.tq + qc) * a.ldq + (size_t)h * a.D;
#pragma unroll
    for (int c = 0; c < 32; c++) q[c] = (valid && d0 + c < a.D) ? qr[d0 + c] : 0.f;
    if (a.rh) {
        const int i1 = qc / a.gw, j1 = qc % a.gw;
        for (int r = 0; r < a.gh + a.gw; r++) {
            const float *t = r < a.gh ? a.rh + (size_t)(i1 - r + a.gh - 1) * a.D
                                      : a.rw + (size_t)(j1 - (r - a.gh) + a.gw - 1) * a.D;
            float s = 0.f;
#pragma unroll
            for (int c = 0; c < 32; c++)
                if (d0 + c < a.D) s += q[c] * t[d0 + c];
            s = group_sum<TPQ>(s);
            if (part == 0) rel[r * QPB + ql] = a.bf16_bias ? rbf(s) : s;
        }
    }
    const int qlast = min(a.tq, (int)(blockIdx.x + 1) * QPB) - 1;
    const int kend = a.causal ? min(a.tk, a.q_offset + qlast + 1) : a.tk;
    const int qlim = a.causal ? a.q_offset + qi : a.tk; /* last key this query sees */
    const float *kb = a.k + (size_t)b * a.tk * a.ldk + (size_t)h * a.D;
    const float *vb = a.v + (size_t)b * a.tk * a.ldv + (size_t)h * a.D;
    float m = -INFINITY, l = 0.f, acc[32];
#pragma unroll
    for (int c = 0; c < 32; c++) acc[c] = 0.f;
    for (int k0 = 0; k0 < kend; k0 += BK) {
        __syncthreads();
        for (int e = tid; e < BK * TPQ * 32; e += NT) {
            int j = e / (TPQ * 32), d = e % (TPQ * 32), key = k0 + j;
            float kv = 0.f, vv = 0.f;
            if (key < a.tk && d < a.D) {
                kv = kb[(size_t)key * a.ldk + d];
                vv = vb[(size_t)key * a.ldv + d];
            }
            int o = j * RS + (d >> 5) * SEG + (d & 31);
            Ks[o] = kv;
            Vs[o] = vv;
        }
        __syncthreads();
        float s[BK], mt = -INFINITY;
#pragma unroll
        for (int j = 0; j < BK; j++) {
            const float4 *kr = (const float4 *)(Ks + j * RS + part * SEG);
            float dot = 0.f;
#pragma unroll
            for (int c = 0; c < 8; c++) {
                float4 kv = kr[c];
                dot += q[4 * c] * kv.x + q[4 * c + 1] * kv.y + q[4 * c + 2] * kv.z + q[4 * c + 3] * kv.w;
            }
            dot = group_sum<TPQ>(dot);
            int key = k0 + j;
            float sc = -INFINITY;
            if (key < a.tk && key <= qlim) {
                sc = dot * a.scale;
                if (a.rh) {
                    float bias = rel[(key / a.gw) * QPB + ql] + rel[(a.gh + key % a.gw) * QPB + ql];
                    sc += a.bf16_bias ? rbf(bias) : bias;
                }
            }
            s[j] = sc;
            mt = fmaxf(mt, sc);
        }
        float mn = fmaxf(m, mt);
        if (mn == -INFINITY) continue;
        float corr = expf(m - mn);
        l *= corr;
#pragma unroll
        for (int c = 0; c < 32; c++) acc[c] *= corr;
#pragma unroll
        for (int j = 0; j < BK; j++) {
            float p = expf(s[j] - mn);
            l += p;
            const float4 *vr = (const float4 *)(Vs + j * RS + part * SEG);
#pragma unroll
            for (int c = 0; c < 8; c++) {
                float4 vv = vr[c];
                acc[4 * c] += p * vv.x;
                acc[4 * c + 1] += p * vv.y;
                acc[4 * c + 2] += p * vv.z;
                acc[4 * c + 3] += p * vv.w;
            }
        }
        m = mn;
    }
    if (!valid) return;
    float inv = 1.f / l;
    float *o = a.out + (size_t)(b * a.tq + qi) * a.ldo + (size_t)h * a.D;
#pragma unroll
    for (int c = 0; c < 32; c++)
        if (d0 + c < a.D) o[d0 + c] = acc[c] * inv;
}

/* Fallback: one thread per (batch, head, query), two passes, accumulator in local memory (head_dim <= 512). */
__global__ void attn_plain_k(AttnArgs a, int nb) {
    size_t total = (size_t)nb * a.H * a.tq;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % a.tq), h = (int)((idx / a.tq) % a.H), b = (int)(idx / ((size_t)a.tq * a.H));
        const float *qr = a.q + (size_t)(b * a.tq + i) * a.ldq + (size_t)h * a.D;
        int nk = a.tk;
        if (a.causal && a.q_offset + i + 1 < nk) nk = a.q_offset + i + 1;
        float acc[512];
        float mx = -INFINITY, sum = 0.f;
        for (int pass = 0; pass < 2; pass++) {
            for (int j = 0; j < nk; j++) {
                const float *kr = a.k + (size_t)(b * a.tk + j) * a.ldk + (size_t)h * a.D;
                float dot = 0.f;
                for (int c = 0; c < a.D; c++) dot += qr[c] * kr[c];
                float s = dot * a.scale;
                if (a.rh) {
                    int i1 = i / a.gw, j1 = i % a.gw, i2 = j / a.gw, j2 = j % a.gw;
                    const float *rh = a.rh + (size_t)(i1 - i2 + a.gh - 1) * a.D;
                    const float *rw = a.rw + (size_t)(j1 - j2 + a.gw - 1) * a.D;
                    float th = 0.f, tw = 0.f;
                    for (int c = 0; c < a.D; c++) {
                        th += qr[c] * rh[c];
                        tw += qr[c] * rw[c];
                    }
                    s += a.bf16_bias ? rbf(rbf(th) + rbf(tw)) : th + tw;
                }
                if (pass == 0) {
                    mx = fmaxf(mx, s);
                } else {
                    float p = expf(s - mx);
                    sum += p;
                    const float *vr = a.v + (size_t)(b * a.tk + j) * a.ldv + (size_t)h * a.D;
                    for (int c = 0; c < a.D; c++) acc[c] += p * vr[c];
                }
            }
            if (pass == 0)
                for (int c = 0; c < a.D; c++) acc[c] = 0.f;
        }
        float *o = a.out + (size_t)(b * a.tq + i) * a.ldo + (size_t)h * a.D;
        for (int c = 0; c < a.D; c++) o[c] = acc[c] / sum;
    }
}

template <int TPQ>
static bool launch_flash(CudaCtx *c, const AttnArgs &a, int nb) {
    constexpr int QPB = NT / TPQ;
    size_t smem = (size_t)2 * BK * TPQ * SEG * sizeof(float);
    if (a.rh) smem += (size_t)(a.gh + a.gw) * QPB * sizeof(float);
    if (smem > (size_t)c->smem_optin) return false;
    if (smem > 48 * 1024) CU_CHECK(cudaFuncSetAttribute(attn_flash_k<TPQ>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    for (int b0 = 0; b0 < nb; b0 += 65535) {
        AttnArgs s = a;
        int nc = nb - b0 < 65535 ? nb - b0 : 65535;
        s.q += (size_t)b0 * a.tq * a.ldq;
        s.out += (size_t)b0 * a.tq * a.ldo;
        s.k += (size_t)b0 * a.tk * a.ldk;
        s.v += (size_t)b0 * a.tk * a.ldv;
        dim3 grid(cdiv(a.tq, QPB), a.H, nc);
        attn_flash_k<TPQ><<<grid, NT, smem, c->stream>>>(s);
        CU_LAUNCHED();
    }
    return true;
}

void cu_attention(Backend *b, const OpsAttention *o) {
    DS_ASSERT(o->n_batch >= 0 && o->tq >= 0 && o->tk > 0 && o->n_heads > 0 && o->head_dim > 0 && o->head_dim <= 512);
    int width = o->n_heads * o->head_dim;
    DS_ASSERT(o->ldq >= width && o->ldk >= width && o->ldv >= width && o->ldo >= width);
    if (o->relpos_h) {
        DS_ASSERT(o->relpos_w && o->grid_h > 0 && o->grid_w > 0);
        DS_ASSERT(o->tq == o->grid_h * o->grid_w && o->tk == o->tq);
    }
    if (o->causal) DS_ASSERT(o->q_offset >= 0);
    if (o->n_batch == 0 || o->tq == 0) return;
    if (cu_attention_mma(b, o)) return;
    DS_ASSERT(!o->io_bf16); /* callers ask attention_bf16 first */
    CudaCtx *c = cctx(b);
    AttnArgs a;
    a.out = o->out;
    a.q = o->q;
    a.k = o->k;
    a.v = o->v;
    a.ldo = o->ldo;
    a.ldq = o->ldq;
    a.ldk = o->ldk;
    a.ldv = o->ldv;
    a.tq = o->tq;
    a.tk = o->tk;
    a.H = o->n_heads;
    a.D = o->head_dim;
    a.scale = o->scale;
    a.causal = o->causal;
    a.q_offset = o->q_offset;
    a.rh = o->relpos_h;
    a.rw = o->relpos_h ? o->relpos_w : NULL;
    a.gh = o->relpos_h ? o->grid_h : 0;
    a.gw = o->relpos_h ? o->grid_w : 1;
    a.bf16_bias = o->relpos_h ? o->bf16_bias : 0;
    bool done = false;
    if (a.D <= 32)
        done = launch_flash<1>(c, a, o->n_batch);
    else if (a.D <= 64)
        done = launch_flash<2>(c, a, o->n_batch);
    else if (a.D <= 128)
        done = launch_flash<4>(c, a, o->n_batch);
    if (!done) {
        size_t total = (size_t)o->n_batch * a.H * a.tq;
        attn_plain_k<<<cdiv(total, 128), 128, 0, c->stream>>>(a, o->n_batch);
        CU_LAUNCHED();
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Attention over the block KV cache. */

struct KvArgs {
    float *out;
    const float *q;
    int ldo, ldq;
    const int32_t *pos, *seq;
    const int32_t *const *tables;
    const void *data;
    int bf16, L, width, bs, layer, H, D, nsplit, round;
    float scale;
    float *part; /* [n][H][nsplit][D + 2] when nsplit > 1 */
    int *count;  /* [n][H] split blocks done (the last one merges and resets it to 0) */
};

/* One step of a warp's walk over the keys: KV_U keys' scores (q·k, summed over the warp, scaled; keys past j1 get
 * -inf), the running max m and sum l rescaled, and acc += p·v. */
template <int DPL, int KV_U>
static __device__ __forceinline__ void kv_update(const float (&kv)[KV_U][DPL], const float (&vv)[KV_U][DPL],
                                                 const float (&q)[DPL], int jb, int j1, float scale, float &m,
                                                 float &l, float (&acc)[DPL]) {
    float sc[KV_U];
#pragma unroll
    for (int u = 0; u < KV_U; u++) {
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; i++) dot += q[i] * kv[u][i];
        sc[u] = dot;
    }
#pragma unroll
    for (int u = 0; u < KV_U; u++) sc[u] = jb + u < j1 ? warp_sum(sc[u]) * scale : -INFINITY;
    float mn = m;
#pragma unroll
    for (int u = 0; u < KV_U; u++) mn = fmaxf(mn, sc[u]);
    float corr = expf(m - mn), p[KV_U];
    l *= corr;
#pragma unroll
    for (int u = 0; u < KV_U; u++) {
        p[u] = expf(sc[u] - mn);
        l += p[u];
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        float t = acc[i] * corr;
#pragma unroll
        for (int u = 0; u < KV_U; u++) t += p[u] * vv[u][i];
        acc[i] = t;
    }
    m = mn;
}

/* The raw bf16 K and V of keys jb .. jb + KV_U - 1 (past j1: key jb's again, masked later), 4 dimensions a lane */
template <int KV_U>
static __device__ __forceinline__ void kv_load_bf16x4(uint2 (&kn)[KV_U], uint2 (&vn)[KV_U], const uint16_t *d,
                                                      const int32_t *table, const KvArgs &a, int jb, int j1, int h,
                                                      int dl) {
#pragma unroll
    for (int u = 0; u < KV_U; u++) {
        const int j = jb + u < j1 ? jb + u : jb;
        const size_t row = ((size_t)(table[j / a.bs] * a.L + a.layer) * 2 * a.bs + j % a.bs) * a.width +
                           (size_t)h * a.D + dl;
        kn[u] = __ldg((const uint2 *)(d + row));
        vn[u] = __ldg((const uint2 *)(d + row + (size_t)a.bs * a.width));
    }
}

template <int DPL>
__global__ void __launch_bounds__(128) attn_kv_k(KvArgs a) {
    pdl_wait();
    constexpr int KV_U = DPL <= 4 ? 8 : DPL <= 8 ? 4 : 2; /* keys a step per warp */
    __shared__ float sm_m[4], sm_l[4], sm_acc[4][DPL * 32];
    const int r = blockIdx.x, h = blockIdx.y, sp = blockIdx.z, warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int nk = a.pos[r] + 1;
    int j0 = 0, j1 = nk;
    if (a.nsplit > 1) {
        j0 = sp * KV_SPLIT;
        j1 = min(nk, j0 + KV_SPLIT);
        if (j0 >= j1) return;
    }
    const int32_t *table = a.tables[a.seq ? a.seq[r] : 0];
    const int dl = lane * DPL;
    float q[DPL], acc[DPL];
    const float *qr = a.q + (size_t)r * a.ldq + (size_t)h * a.D;
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        q[i] = dl + i < a.D ? qr[dl + i] : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    if (DPL == 4 && a.bf16 && a.D == 128) {
        /* the model's case (bf16 pool, head_dim 128): a warp loads its next KV_U keys while it computes on the
         * current ones, twice the bytes in flight of the loop below, with the same arithmetic in the same order */
        const uint16_t *d = (const uint16_t *)a.data;
        uint2 kn[KV_U], vn[KV_U];
        int jb = j0 + warp * KV_U;
        if (jb < j1) kv_load_bf16x4<KV_U>(kn, vn, d, table, a, jb, j1, h, dl);
        for (; jb < j1; jb += 4 * KV_U) {
            float kv[KV_U][DPL], vv[KV_U][DPL];
#pragma unroll
            for (int u = 0; u < KV_U; u++) {
                kv[u][0] = __uint_as_float(kn[u].x << 16);
                kv[u][1 % DPL] = __uint_as_float(kn[u].x & 0xffff0000u);
                kv[u][2 % DPL] = __uint_as_float(kn[u].y << 16);
                kv[u][3 % DPL] = __uint_as_float(kn[u].y & 0xffff0000u);
                vv[u][0] = __uint_as_float(vn[u].x << 16);
                vv[u][1 % DPL] = __uint_as_float(vn[u].x & 0xffff0000u);
                vv[u][2 % DPL] = __uint_as_float(vn[u].y << 16);
                vv[u][3 % DPL] = __uint_as_float(vn[u].y & 0xffff0000u);
            }
            if (jb + 4 * KV_U < j1) kv_load_bf16x4<KV_U>(kn, vn, d, table, a, jb + 4 * KV_U, j1, h, dl);
            kv_update<DPL, KV_U>(kv, vv, q, jb, j1, a.scale, m, l, acc);
        }
    } else
        for (int jb = j0 + warp * KV_U; jb < j1; jb += 4 * KV_U) {
            float kv[KV_U][DPL], vv[KV_U][DPL];
#pragma unroll
            for (int u = 0; u < KV_U; u++) {
                const int j = jb + u;
                const bool ok = j < j1;
                int blk = table[(ok ? j : jb) / a.bs];
                size_t row =
                    ((size_t)(blk * a.L + a.layer) * 2 * a.bs + (ok ? j : jb) % a.bs) * a.width + (size_t)h * a.D;
                size_t vrow = row + (size_t)a.bs * a.width;
                if (a.bf16) {
                    const uint16_t *d = (const uint16_t *)a.data;
#pragma unroll
                    for (int i = 0; i < DPL; i++) {
                        kv[u][i] = dl + i < a.D ? bf2f(d[row + dl + i]) : 0.f;
                        vv[u][i] = dl + i < a.D ? bf2f(d[vrow + dl + i]) : 0.f;
                    }
                } else {
                    const float *d = (const float *)a.data;
#pragma unroll
                    for (int i = 0; i < DPL; i++) {
                        kv[u][i] = dl + i < a.D ? d[row + dl + i] : 0.f;
                        vv[u][i] = dl + i < a.D ? d[vrow + dl + i] : 0.f;
                    }
                }
            }
            kv_update<DPL, KV_U>(kv, vv, q, jb, j1, a.scale, m, l, acc);
        }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) sm_acc[warp][dl + i] = acc[i];
    __syncthreads();
    __shared__ int last;
    if (warp == 0) {
        float M = fmaxf(fmaxf(sm_m[0], sm_m[1]), fmaxf(sm_m[2], sm_m[3])), L = 0.f, f[4];
#pragma unroll
        for (int w = 0; w < 4; w++) {
            f[w] = sm_m[w] == -INFINITY ? 0.f : expf(sm_m[w] - M);
            L += sm_l[w] * f[w];
        }
        float o[DPL];
#pragma unroll
        for (int i = 0; i < DPL; i++)
            o[i] = sm_acc[0][dl + i] * f[0] + sm_acc[1][dl + i] * f[1] + sm_acc[2][dl + i] * f[2] +
                   sm_acc[3][dl + i] * f[3];
        if (a.nsplit == 1) {
            float *out = a.out + (size_t)r * a.ldo + (size_t)h * a.D;
#pragma unroll
            for (int i = 0; i < DPL; i++)
                if (dl + i < a.D) out[dl + i] = a.round ? rbf(o[i] / L) : o[i] / L;
        } else {
            float *p = a.part + ((size_t)(r * a.H + h) * a.nsplit + sp) * (a.D + 2);
            if (lane == 0) {
                p[0] = M;
                p[1] = L;
            }
#pragma unroll
            for (int i = 0; i < DPL; i++)
                if (dl + i < a.D) p[2 + dl + i] = o[i];
            /* the last split block of this (row, head) merges every split's state (flash-decoding) */
            __threadfence();
            int t = 0;
            if (lane == 0) t = atomicAdd(&a.count[r * a.H + h], 1);
            t = __shfl_sync(0xffffffffu, t, 0);
            if (lane == 0) last = t == (nk + KV_SPLIT - 1) / KV_SPLIT - 1;
        }
    }
    if (a.nsplit == 1) return;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (threadIdx.x == 0) a.count[r * a.H + h] = 0;
    /* the merge over the ns splits, online as within a split: warp w takes splits w, w + 4, ..., MU at a time with
     * all their loads (max, sum, output) in flight together, keeping its own max, sum and output; warp 0 then merges
     * the four as above (one round trip to L2 per 4·MU splits, not three dependent passes) */
    const int ns = (nk + KV_SPLIT - 1) / KV_SPLIT;
    constexpr int MU = DPL <= 4 ? 8 : 2;
    const float *q0 = a.part + (size_t)(r * a.H + h) * a.nsplit * (a.D + 2);
    float mw = -INFINITY, lw = 0.f, ow[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) ow[i] = 0.f;
    for (int c0 = warp; c0 < ns; c0 += 4 * MU) {
        float Ms[MU], Ls[MU], V[MU][DPL];
#pragma unroll
        for (int u = 0; u < MU; u++) {
            const int s2 = c0 + 4 * u;
            const float *ps = q0 + (size_t)(s2 < ns ? s2 : 0) * (a.D + 2);
            Ms[u] = s2 < ns ? __ldcg(ps) : -INFINITY;
            Ls[u] = s2 < ns ? __ldcg(ps + 1) : 0.f;
#pragma unroll
            for (int i = 0; i < DPL; i++) V[u][i] = s2 < ns && dl + i < a.D ? __ldcg(ps + 2 + dl + i) : 0.f;
        }
        float mn = mw;
#pragma unroll
        for (int u = 0; u < MU; u++) mn = fmaxf(mn, Ms[u]);
        const float corr = mw == -INFINITY ? 0.f : expf(mw - mn);
        lw *= corr;
#pragma unroll
        for (int i = 0; i < DPL; i++) ow[i] *= corr;
#pragma unroll
        for (int u = 0; u < MU; u++) {
            const float f2 = Ms[u] == -INFINITY ? 0.f : expf(Ms[u] - mn);
            lw += Ls[u] * f2;
#pragma unroll
            for (int i = 0; i < DPL; i++) ow[i] += V[u][i] * f2;
        }
        mw = mn;
    }
    __syncthreads(); /* sm_m, sm_l, sm_acc are free again */
    if (lane == 0) {
        sm_m[warp] = mw;
        sm_l[warp] = lw;
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) sm_acc[warp][dl + i] = ow[i];
    __syncthreads();
    if (warp) return;
    const float MM = fmaxf(fmaxf(sm_m[0], sm_m[1]), fmaxf(sm_m[2], sm_m[3]));
    float LL = 0.f, fw[4];
#pragma unroll
    for (int w = 0; w < 4; w++) {
        fw[w] = sm_m[w] == -INFINITY ? 0.f : expf(sm_m[w] - MM);
        LL += sm_l[w] * fw[w];
    }
    float *out = a.out + (size_t)r * a.ldo + (size_t)h * a.D;
#pragma unroll
    for (int i = 0; i < DPL; i++)
        if (dl + i < a.D) {
            const float v = (sm_acc[0][dl + i] * fw[0] + sm_acc[1][dl + i] * fw[1] + sm_acc[2][dl + i] * fw[2] +
                             sm_acc[3][dl + i] * fw[3]) / LL;
            out[dl + i] = a.round ? rbf(v) : v;
        }
}

void cu_attention_kv(Backend *b, const OpsAttentionKv *o) {
    const KvCache *kv = o->kv;
    DS_ASSERT(o->n >= 0 && o->n_heads > 0 && o->head_dim > 0 && o->head_dim <= 512);
    DS_ASSERT(o->n_heads * o->head_dim == kv->width && o->ldq >= kv->width && o->ldo >= kv->width);
    DS_ASSERT(o->layer >= 0 && o->layer < kv->n_layers && o->pos && o->tables);
    DS_ASSERT(kv->dtype == DS_BF16 || kv->dtype == DS_F32);
    if (o->n == 0) return;
    CudaCtx *c = cctx(b);
    KvArgs a;
    a.out = o->out;
    a.q = o->q;
    a.ldo = o->ldo;
    a.ldq = o->ldq;
    a.pos = o->pos;
    a.seq = o->seq;
    a.tables = o->tables;
    a.data = kv->data;
    a.bf16 = kv->dtype == DS_BF16;
    a.L = kv->n_layers;
    a.width = kv->width;
    a.bs = kv->block_size;
    a.layer = o->layer;
    a.H = o->n_heads;
    a.D = o->head_dim;
    a.scale = o->scale;
    a.round = o->round_bf16;
    a.part = c->part;
    a.count = c->kv_count;
    size_t pool = (size_t)kv->n_blocks * kv->block_size, ns = (pool + KV_SPLIT - 1) / KV_SPLIT;
    size_t rows_heads = (size_t)o->n * o->n_heads;
    a.nsplit = 1;
    if (ns > 1 && rows_heads < (size_t)2 * c->n_sm && ns <= 65535 && rows_heads * ns * (a.D + 2) <= c->part_floats &&
        rows_heads <= MAX_COUNTERS)
        a.nsplit = (int)ns;
    DS_ASSERT(o->n_heads <= 65535);
    dim3 grid(o->n, o->n_heads, a.nsplit);
    if (a.D <= 32)
        launch_pdl(c, attn_kv_k<1>, dim3(grid), dim3(128), 0, a);
    else if (a.D <= 64)
        launch_pdl(c, attn_kv_k<2>, dim3(grid), dim3(128), 0, a);
    else if (a.D <= 128)
        launch_pdl(c, attn_kv_k<4>, dim3(grid), dim3(128), 0, a);
    else if (a.D <= 256)
        launch_pdl(c, attn_kv_k<8>, dim3(grid), dim3(128), 0, a);
    else
        launch_pdl(c, attn_kv_k<16>, dim3(grid), dim3(128), 0, a);
    CU_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------------------
 * kv_write */

struct KvwIds {
    int32_t id[KVW_BLOCKS];
};

__global__ void kv_write_k(KvDst d, int pos0, int n, int first, KvwIds ids, const float *k, int ldk, const float *v,
                           int ldv) {
    size_t total = (size_t)n * d.width;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int t = (int)(i / d.width), c = (int)(i % d.width), p = pos0 + t;
        int blk = ids.id[p / d.bs - first];
        kv_store(d, blk, p, c, 0, k[(size_t)t * ldk + c]);
        kv_store(d, blk, p, c, 1, v[(size_t)t * ldv + c]);
    }
}

void cu_kv_write(Backend *b, KvCache *kv, int layer, const int32_t *table_host, int pos0, int n, const float *k,
                 int ldk, const float *v, int ldv) {
    DS_ASSERT(layer >= 0 && layer < kv->n_layers && pos0 >= 0 && n >= 0);
    DS_ASSERT(kv->dtype == DS_BF16 || kv->dtype == DS_F32);
    const int bs = kv->block_size;
    for (int p = pos0; p < pos0 + n;) {
        int first = p / bs, end = (first + KVW_BLOCKS) * bs;
        if (end > pos0 + n) end = pos0 + n;
        KvwIds ids;
        memset(&ids, 0, sizeof ids);
        for (int i = 0; i <= (end - 1) / bs - first; i++) {
            ids.id[i] = table_host[first + i];
            DS_ASSERT(ids.id[i] >= 0 && ids.id[i] < kv->n_blocks);
        }
        size_t total = (size_t)(end - p) * kv->width;
        unsigned grid = cdiv(total, 256);
        if (grid > 65535 * 8) grid = 65535 * 8;
        kv_write_k<<<grid, 256, 0, cctx(b)->stream>>>(kv_dst(kv, layer), p, end - p, first, ids,
                                                      k + (size_t)(p - pos0) * ldk, ldk, v + (size_t)(p - pos0) * ldv,
                                                      ldv);
        CU_LAUNCHED();
        p = end;
    }
}

/* kv_write with the positions and the block table read on the device (capturable in a graph). */
__global__ void kv_write_dev_k(KvDst d, int n, const int32_t *const *tables, const int32_t *seq, const int32_t *pos,
                               const float *k, int ldk, const float *v, int ldv) {
    pdl_wait();
    size_t total = (size_t)n * d.width;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int t = (int)(i / d.width), c = (int)(i % d.width), p = pos[t];
        const int32_t *table = tables[seq ? seq[t] : 0];
        kv_put(d, table, p, c, 0, k[(size_t)t * ldk + c]);
        kv_put(d, table, p, c, 1, v[(size_t)t * ldv + c]);
    }
}

void cu_kv_write_dev(Backend *b, KvCache *kv, int layer, const int32_t *const *tables, const int32_t *seq,
                     const int32_t *pos, int n, const float *k, int ldk, const float *v, int ldv) {
    DS_ASSERT(layer >= 0 && layer < kv->n_layers && n >= 0 && tables && pos);
    DS_ASSERT(kv->dtype == DS_BF16 || kv->dtype == DS_F32);
    if (n == 0) return;
    size_t total = (size_t)n * kv->width;
    unsigned grid = cdiv(total, 256);
    if (grid > 65535 * 8) grid = 65535 * 8;
    launch_pdl(cctx(b), kv_write_dev_k, dim3(grid), dim3(256), 0, kv_dst(kv, layer), n, tables, seq, pos, k, ldk, v,
               ldv);
    CU_LAUNCHED();
}
