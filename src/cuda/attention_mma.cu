/* attention_mma.cu: flash attention on the tensor cores (mma.sync m16n8k16, bf16 inputs, fp32 accumulation), for
 * the vision encoder's attention (SAM global and windowed blocks with the decomposed relative-position bias
 * added on the fly, CLIP): ops_attention semantics for head_dim 64, not causal.
 *
 * A first kernel converts K and V to bf16 (exact for the bf16 model, whose activations are already bf16 values)
 * into the GEMM conversion scratch, V transposed, so that both products read their B operands as 32-bit pairs.
 * Then a block of 8 warps takes 128 query rows of one (sequence, head); each warp 16 rows. Keys and values stream
 * through shared memory in tiles of 64 rows, the next tile's loads in flight while the current one is used. Scores S = Q·Kᵀ and the output O += P·V are accumulated in fp32; the online
 * softmax (running max and sum per row) is fp32; P enters the second product rounded to bf16, as a bf16 flash
 * attention does.
 * Relative positions: before the key loop, the block computes for each of its queries (fp32, from the fp32 q)
 *   relH[i][r] = q_i · Rh[i1 − r + gh − 1]  (r < gh)   and   relW[i][c] = q_i · Rw[j1 − c + gw − 1]  (c < gw)
 * into shared memory ((gh + gw) floats a query, rounded to bf16 with bf16_bias), and a score of key j adds
 * relH[i][j / gw] + relW[i][j % gw] (the sum rounded to bf16 with bf16_bias), as ops_attention_ref does.
 * No [T, T] array exists. Needs sm_80 (bf16 mma); the caller uses the SIMT kernel elsewhere, and in f16 mode
 * (set_gemm_f16), which runs what an sm_75 card runs. */
#include <math.h>

#include "cuda/cuda_common.h"

namespace {

enum { HD = 64, NW = 8, QT = NW * 16, KT = 64, KS = HD + 8 /* bf16 row stride of Ks (bank spread) */, VS = KT + 8 };

struct MmaArgs {
    float *out;
    const float *q, *k, *v;
    const uint16_t *kb, *vt; /* bf16 copies: K [seq·H][tkp][HD], V transposed [seq·H][HD][tkp] (zero past tk) */
    int tkp;
    int ldo, ldq, ldk, ldv, tq, tk, H;
    float scale;
    const float *rh, *rw;
    int gh, gw, bf16_bias;
};

/* Two floats to a bf16 pair, round to nearest even (one cvt on sm_80+, where this kernel runs; f2bf's result for
 * every finite value) */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (uint32_t)f2bf(lo) | ((uint32_t)f2bf(hi) << 16);
#endif
}
/* rbf (round to bf16 and back) in one cvt on sm_80+ */
__device__ __forceinline__ float rbf_hw(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    return __uint_as_float(pack_bf16(0.f, v) & 0xffff0000u);
#else
    return rbf(v);
#endif
}

__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

/* Four 8×8 bf16 matrices from shared memory into mma fragments (sm_75+): lane l gives the address of row l % 8 of
 * matrix l / 8; register i receives matrix i's (row l / 4, columns 2·(l % 4) and +1), an m16n8k16 B fragment half. */
__device__ __forceinline__ void ldsm_x4(uint32_t *r, const uint16_t *p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#else
    __trap();
#endif
}

/* K and V of one (sequence, head, 64-key tile) to bf16: K rows as they are, V through a shared tile into its
 * transposed layout. Grid (tkp / 64, H, n_batch), 256 threads. */
__global__ void __launch_bounds__(256) kv_to_bf16_k(MmaArgs a) {
    __shared__ float vs[KT][HD + 1];
    const int tid = threadIdx.x, h = blockIdx.y, b = blockIdx.z, k0 = blockIdx.x * KT;
    const size_t sh = (size_t)b * a.H + h;
    const int j = tid >> 2, d0 = (tid & 3) * 16, key = k0 + j;
    const bool ok = key < a.tk;
    const float4 *ks = (const float4 *)(a.k + ((size_t)b * a.tk + (ok ? key : 0)) * a.ldk + (size_t)h * HD + d0);
    const float4 *vsrc = (const float4 *)(a.v + ((size_t)b * a.tk + (ok ? key : 0)) * a.ldv + (size_t)h * HD + d0);
    uint16_t *kd = (uint16_t *)a.kb + (sh * a.tkp + key) * HD + d0;
#pragma unroll
    for (int c = 0; c < 4; c++) {
        float4 x = ok ? ks[c] : make_float4(0.f, 0.f, 0.f, 0.f);
        uint2 o;
        o.x = pack_bf16(x.x, x.y);
        o.y = pack_bf16(x.z, x.w);
        *(uint2 *)(kd + 4 * c) = o;
        float4 y = ok ? vsrc[c] : make_float4(0.f, 0.f, 0.f, 0.f);
        vs[j][d0 + 4 * c] = y.x, vs[j][d0 + 4 * c + 1] = y.y, vs[j][d0 + 4 * c + 2] = y.z, vs[j][d0 + 4 * c + 3] = y.w;
    }
    __syncthreads();
    /* thread -> (d = tid / 4, 16 keys) */
    const int d = tid >> 2, j0 = (tid & 3) * 16;
    uint16_t *vd = (uint16_t *)a.vt + (sh * HD + d) * a.tkp + k0 + j0;
#pragma unroll
    for (int c = 0; c < 4; c++) {
        uint2 o;
        o.x = pack_bf16(vs[j0 + 4 * c][d], vs[j0 + 4 * c + 1][d]);
        o.y = pack_bf16(vs[j0 + 4 * c + 2][d], vs[j0 + 4 * c + 3][d]);
        *(uint2 *)(vd + 4 * c) = o;
    }
}

/* REL: relative-position terms; FULL: tk a multiple of KT (no key masking); GW64: the key grid's width is KT, so a
 * key tile is one grid row (its relH term is one value per query, its relW terms sit at fixed offsets). */
template <bool REL, bool FULL, bool GW64>
__global__ void __launch_bounds__(NW * 32) attn_mma_k(MmaArgs a) {
    extern __shared__ __align__(16) unsigned char smem[];
    uint16_t *Ks = (uint16_t *)smem;          /* [KT][KS] */
    uint16_t *Vt = Ks + KT * KS;              /* [HD][VS]: V transposed */
    float *rel = (float *)(Vt + HD * VS);     /* [QT][RWS]: gh + gw terms a query, odd stride (banks) */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * QT;
    const float *qb = a.q + (size_t)b * a.tq * a.ldq + (size_t)h * HD;
    const uint4 *kg = (const uint4 *)(a.kb + ((size_t)b * a.H + h) * a.tkp * HD);
    const uint4 *vg = (const uint4 *)(a.vt + ((size_t)b * a.H + h) * HD * a.tkp);
    const int tpr = a.tkp / 8; /* uint4 per V row */
    const int RW = a.gh + a.gw, RWS = RW | 1;

    /* relative-position terms of this block's queries: thread -> query tid % QT (its q row in registers), every
     * other term */
    if (REL) {
        const int i = tid % QT, qi = q0 + i, half = tid / QT;
        float qr[HD];
        const bool valid = qi < a.tq;
        const float4 *q4 = (const float4 *)(qb + (size_t)(valid ? qi : 0) * a.ldq);
#pragma unroll
        for (int c = 0; c < HD / 4; c++) {
            float4 x = valid ? q4[c] : make_float4(0.f, 0.f, 0.f, 0.f);
            qr[4 * c] = x.x, qr[4 * c + 1] = x.y, qr[4 * c + 2] = x.z, qr[4 * c + 3] = x.w;
        }
        const int i1 = valid ? qi / a.gw : 0, j1 = valid ? qi % a.gw : 0;
        for (int r = half; r < RW; r += (NW * 32) / QT) {
            const float *t = r < a.gh ? a.rh + (size_t)(i1 - r + a.gh - 1) * HD
                                      : a.rw + (size_t)(j1 - (r - a.gh) + a.gw - 1) * HD;
            const float4 *t4 = (const float4 *)t;
            float s = 0.f;
#pragma unroll
            for (int c = 0; c < HD / 4; c++) {
                float4 y = __ldg(t4 + c);
                s += qr[4 * c] * y.x + qr[4 * c + 1] * y.y + qr[4 * c + 2] * y.z + qr[4 * c + 3] * y.w;
            }
            rel[i * RWS + r] = a.bf16_bias ? rbf(s) : s;
        }
    }

    /* this warp's 16 query rows as A fragments (bf16), 4 k-steps over the head dimension */
    const int r0 = q0 + warp * 16 + gid, r1 = r0 + 8;
    uint32_t qa[HD / 16][4];
    {
        const float *p0 = qb + (size_t)(r0 < a.tq ? r0 : 0) * a.ldq, *p1 = qb + (size_t)(r1 < a.tq ? r1 : 0) * a.ldq;
        const bool v0 = r0 < a.tq, v1 = r1 < a.tq;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            int d = kk * 16 + tig * 2;
            float2 x00 = v0 ? *(const float2 *)(p0 + d) : make_float2(0.f, 0.f);
            float2 x10 = v1 ? *(const float2 *)(p1 + d) : make_float2(0.f, 0.f);
            float2 x01 = v0 ? *(const float2 *)(p0 + d + 8) : make_float2(0.f, 0.f);
            float2 x11 = v1 ? *(const float2 *)(p1 + d + 8) : make_float2(0.f, 0.f);
            qa[kk][0] = pack_bf16(x00.x, x00.y);
            qa[kk][1] = pack_bf16(x10.x, x10.y);
            qa[kk][2] = pack_bf16(x01.x, x01.y);
            qa[kk][3] = pack_bf16(x11.x, x11.y);
        }
    }
    const float *rel0 = rel + (warp * 16 + gid) * RWS, *rel1 = rel0 + 8 * RWS;

    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    /* tiles: thread -> (row tid / 4, two 16-byte pieces), K rows and Vᵀ rows; the next tile's loads are issued
     * before the current tile is computed */
    const int lr = tid >> 2, lc = (tid & 3) * 2;
    uint4 pk0, pk1, pv0, pv1;
    pk0 = kg[lr * (HD / 8) + lc], pk1 = kg[lr * (HD / 8) + lc + 1];
    pv0 = vg[(size_t)lr * tpr + lc], pv1 = vg[(size_t)lr * tpr + lc + 1];
    for (int k0 = 0; k0 < a.tk; k0 += KT) {
        __syncthreads(); /* previous tile consumed (and, the first time, rel written) */
        *(uint4 *)(Ks + lr * KS + lc * 8) = pk0;
        *(uint4 *)(Ks + lr * KS + lc * 8 + 8) = pk1;
        *(uint4 *)(Vt + lr * VS + lc * 8) = pv0;
        *(uint4 *)(Vt + lr * VS + lc * 8 + 8) = pv1;
        __syncthreads();
        if (k0 + KT < a.tk) {
            const int kn = (k0 + KT) / 8;
            pk0 = kg[(size_t)(k0 + KT + lr) * (HD / 8) + lc], pk1 = kg[(size_t)(k0 + KT + lr) * (HD / 8) + lc + 1];
            pv0 = vg[(size_t)lr * tpr + kn + lc], pv1 = vg[(size_t)lr * tpr + kn + lc + 1];
        }
        /* S = Q Kᵀ: 8 tiles of 8 keys; K fragments by ldmatrix, two k-steps (four 8×8 matrices) a load */
        float s[KT / 8][4];
#pragma unroll
        for (int n = 0; n < KT / 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
            for (int kp = 0; kp < HD / 32; kp++) {
                uint32_t kb[4];
                ldsm_x4(kb, Ks + (n * 8 + (lane & 7)) * KS + kp * 32 + (lane >> 3) * 8);
                mma_bf16(s[n], qa[2 * kp], kb[0], kb[1]);
                mma_bf16(s[n], qa[2 * kp + 1], kb[2], kb[3]);
            }
        }
        /* scale, bias, mask; row maxima */
        float mx0 = -INFINITY, mx1 = -INFINITY;
        int jr = 0, jc = 0; /* (key / gw, key % gw) of key k0 + tig*2, stepped by 8 per tile */
        float rh0 = 0.f, rh1 = 0.f;
        if (REL && GW64) {
            rh0 = rel0[k0 / KT];
            rh1 = rel1[k0 / KT];
        } else if (REL) {
            int j = k0 + tig * 2;
            jr = j / a.gw;
            jc = j - jr * a.gw;
        }
#pragma unroll
        for (int n = 0; n < KT / 8; n++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int kl = n * 8 + tig * 2 + e, key = k0 + kl;
                const bool ok = FULL || key < a.tk;
                float b0 = 0.f, b1 = 0.f;
                if (REL && GW64) {
                    b0 = rh0 + rel0[a.gh + kl];
                    b1 = rh1 + rel1[a.gh + kl];
                } else if (REL) {
                    int rr = jr, cc = jc + e;
                    if (cc >= a.gw) {
                        cc -= a.gw;
                        rr++;
                    }
                    if (ok) {
                        b0 = rel0[rr] + rel0[a.gh + cc];
                        b1 = rel1[rr] + rel1[a.gh + cc];
                    }
                }
                if (REL && a.bf16_bias) {
                    b0 = rbf_hw(b0);
                    b1 = rbf_hw(b1);
                }
                float x0 = ok ? (s[n][e] * a.scale + b0) * 1.4426950408889634f : -INFINITY;
                float x1 = ok ? (s[n][2 + e] * a.scale + b1) * 1.4426950408889634f : -INFINITY;
                s[n][e] = x0;
                s[n][2 + e] = x1;
                mx0 = fmaxf(mx0, x0);
                mx1 = fmaxf(mx1, x1);
            }
            if (REL && !GW64) {
                jc += 8;
                while (jc >= a.gw) {
                    jc -= a.gw;
                    jr++;
                }
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1); /* finite: every tile has a valid key */
        const float c0 = exp2f(m0 - mn0), c1 = exp2f(m1 - mn1);
        m0 = mn0;
        m1 = mn1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            o[n][0] *= c0;
            o[n][1] *= c0;
            o[n][2] *= c1;
            o[n][3] *= c1;
        }
        /* P = exp2(S − m), then O += P V over 4 k-steps of 16 keys */
#pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
            float p[2][4];
#pragma unroll
            for (int t = 0; t < 2; t++) {
                p[t][0] = exp2f(s[2 * kk + t][0] - mn0);
                p[t][1] = exp2f(s[2 * kk + t][1] - mn0);
                p[t][2] = exp2f(s[2 * kk + t][2] - mn1);
                p[t][3] = exp2f(s[2 * kk + t][3] - mn1);
                l0 += p[t][0] + p[t][1];
                l1 += p[t][2] + p[t][3];
            }
            uint32_t pa[4] = {pack_bf16(p[0][0], p[0][1]), pack_bf16(p[0][2], p[0][3]), pack_bf16(p[1][0], p[1][1]),
                              pack_bf16(p[1][2], p[1][3])};
#pragma unroll
            for (int n = 0; n < HD / 8; n += 2) { /* Vᵀ fragments of dims n and n + 1 by one ldmatrix */
                uint32_t vb[4];
                ldsm_x4(vb, Vt + ((n + (lane >> 4)) * 8 + (lane & 7)) * VS + kk * 16 + ((lane >> 3) & 1) * 8);
                mma_bf16(o[n], pa, vb[0], vb[1]);
                mma_bf16(o[n + 1], pa, vb[2], vb[3]);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = 1.f / l0, i1 = 1.f / l1;
    float *ob = a.out + (size_t)b * a.tq * a.ldo + (size_t)h * HD;
#pragma unroll
    for (int n = 0; n < HD / 8; n++) {
        int d = n * 8 + tig * 2;
        if (r0 < a.tq) *(float2 *)(ob + (size_t)r0 * a.ldo + d) = make_float2(o[n][0] * i0, o[n][1] * i0);
        if (r1 < a.tq) *(float2 *)(ob + (size_t)r1 * a.ldo + d) = make_float2(o[n][2] * i1, o[n][3] * i1);
    }
}

} // namespace

/* Runs the tensor-core kernel when it applies (sm_80+, head_dim 64, not causal, aligned rows, the rel tables fit
 * in shared memory); returns false to leave the call to the SIMT kernels. */
bool cu_attention_mma(Backend *b, const OpsAttention *o) {
    CudaCtx *c = cctx(b);
    if (c->cc < 80 || c->exact_gemm || c->gemm_f16 || o->head_dim != HD || o->causal) return false;
    if (o->ldq % 4 || o->ldk % 4 || o->ldv % 4 || o->ldo % 2) return false;
    if (((uintptr_t)o->q | (uintptr_t)o->k | (uintptr_t)o->v) & 15 || ((uintptr_t)o->out & 7)) return false;
    if (o->relpos_h && (((uintptr_t)o->relpos_h | (uintptr_t)o->relpos_w) & 15)) return false;
    const int RWS = o->relpos_h ? (o->grid_h + o->grid_w) | 1 : 0;
    size_t smem = (size_t)KT * KS * 2 + (size_t)HD * VS * 2 + (size_t)QT * RWS * sizeof(float);
    if (smem > (size_t)c->smem_optin) return false;
    if (o->n_batch > 65535 || o->n_heads > 65535) return false;
    MmaArgs a;
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
    a.scale = o->scale;
    a.rh = o->relpos_h;
    a.rw = o->relpos_h ? o->relpos_w : NULL;
    a.gh = o->relpos_h ? o->grid_h : 0;
    a.gw = o->relpos_h ? o->grid_w : 1;
    a.bf16_bias = o->relpos_h ? o->bf16_bias : 0;
    a.tkp = (o->tk + KT - 1) / KT * KT;
    size_t kv_elems = (size_t)2 * o->n_batch * o->n_heads * a.tkp * HD; /* in the GEMM conversion scratch */
    if (kv_elems > c->xb_elems) return false;
    a.kb = c->xb;
    a.vt = c->xb + kv_elems / 2;
    kv_to_bf16_k<<<dim3(a.tkp / KT, o->n_heads, o->n_batch), 256, 0, c->stream>>>(a);
    CU_LAUNCHED();
    const bool rel = a.rh != NULL, full = o->tk % KT == 0, gw64 = rel && full && a.gw == KT;
    void (*k)(MmaArgs) = gw64           ? attn_mma_k<true, true, true>
                         : rel && full  ? attn_mma_k<true, true, false>
                         : rel          ? attn_mma_k<true, false, false>
                         : full         ? attn_mma_k<false, true, false>
                                        : attn_mma_k<false, false, false>;
    if (smem > 48 * 1024) CU_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid(cdiv(o->tq, QT), o->n_heads, o->n_batch);
    k<<<grid, NW * 32, smem, c->stream>>>(a);
    CU_LAUNCHED();
    return true;
}
