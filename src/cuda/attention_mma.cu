/* attention_mma.cu: flash attention on the tensor cores (mma.sync m16n8k16, bf16 inputs, fp32 accumulation), for
 * the vision encoder's attention (SAM global and windowed blocks with the decomposed relative-position bias
 * added on the fly, CLIP): ops_attention semantics for head_dim 64, not causal.
 *
 * A first kernel converts K and V to bf16 (exact for the bf16 model, whose activations are already bf16 values)
 * into the GEMM conversion scratch, both row-major [key][64]. Then a block of 8 warps takes 128 query rows of one
 * (sequence, head); each warp 16 rows. Keys and values stream through shared memory in tiles of 64 rows, two
 * stages by cp.async (the next tile lands while the current one is used); K fragments by ldmatrix, V fragments by
 * ldmatrix.trans. Scores S = Q·Kᵀ and the output O += P·V are accumulated in fp32; the online softmax (running
 * max and sum per row) is fp32, exponentials by ex2 with the log2(e) scaling folded into one FMA; P enters the
 * second product rounded to bf16, as a bf16 flash attention does.
 * Relative positions (only with bf16_bias, the official bf16 run's rule; fp32 terms are left to the SIMT kernel):
 * before the key loop each warp computes for its 16 queries
 *   relH[i][r] = q_i · Rh[i1 − r + gh − 1]  (r < gh)   and   relW[i][c] = q_i · Rw[j1 − c + gw − 1]  (c < gw)
 * as tensor-core products of its q fragments with every row of the two tables (each table split into a bf16 high
 * and low part, so a table that is not bf16-exact loses nothing), each rounded to bf16 into shared memory, the
 * terms of rows i and i + 8 of a warp side by side in one 32-bit word. A score of key j then adds
 * relH[i][j / gw] + relW[i][j % gw] for both rows at once by one bf16x2 add (rounded to bf16, as
 * ops_attention_ref's bf16 bias). No [T, T] array exists. Needs sm_80 (bf16 mma, cp.async); the caller uses the
 * SIMT kernel elsewhere, and in f16 mode (set_gemm_f16), which runs what an sm_75 card runs. */
#include <math.h>

#include "cuda/cuda_common.h"

namespace {

enum { HD = 64, NW = 8, QT = NW * 16, KT = 64, KS = HD + 8 /* bf16 row stride of the K and V tiles (bank spread) */ };

struct MmaArgs {
    float *out;
    const float *q;
    /* bf16 K and V: element (sequence b, head h, key j, dim d) at kb[b·sb + h·sh + j·sk + d] (vb alike) */
    const uint16_t *kb, *vb;
    size_t sb, sh, svb, svh;
    int sk, svk;
    const uint16_t *q16; /* io16: q and out in bf16 storage (strides ldq, ldo in elements) */
    uint16_t *out16;
    int io16;
    int ldo, ldq, tq, tk, H;
    float scale;
    const float *rh, *rw;
    int gh, gw;
    int wb, rws; /* REL: the relW terms start at word wb of a pair's row of rws words */
};

/* Four 8×8 bf16 matrices from shared memory into mma fragments (sm_75+): lane l gives the address of row l % 8 of
 * matrix l / 8; register i receives matrix i's (row l / 4, columns 2·(l % 4) and +1), an m16n8k16 B fragment half;
 * TRANS (ldmatrix .trans): matrix i's (rows 2·(l % 4) and +1, column l / 4). */
template <bool TRANS = false> __device__ __forceinline__ void ldsm_x4(uint32_t *r, const uint16_t *p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
#else
    __trap();
#endif
}

/* K and V of one (sequence, head, 64-key tile) to bf16, row-major [seq·H][tkp][HD] each, zero rows past tk.
 * Grid (tkp / 64, H, n_batch), 256 threads: thread -> (key tid / 4, 16 dims). */
__global__ void __launch_bounds__(256) kv_to_bf16_k(const float *k, const float *v, int ldk, int ldv, int tk, int tkp,
                                                    int H, uint16_t *kb, uint16_t *vb) {
    const int tid = threadIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int j = tid >> 2, d0 = (tid & 3) * 16, key = blockIdx.x * KT + j;
    const bool ok = key < tk;
    const size_t src = ((size_t)b * tk + (ok ? key : 0)), dst = (((size_t)b * H + h) * tkp + key) * HD + d0;
    const float4 *ks = (const float4 *)(k + src * ldk + (size_t)h * HD + d0);
    const float4 *vs = (const float4 *)(v + src * ldv + (size_t)h * HD + d0);
    uint32_t ko[8], vo[8];
#pragma unroll
    for (int c = 0; c < 4; c++) {
        float4 x = ok ? ks[c] : make_float4(0.f, 0.f, 0.f, 0.f);
        float4 y = ok ? vs[c] : make_float4(0.f, 0.f, 0.f, 0.f);
        ko[2 * c] = pack_bf16(x.x, x.y), ko[2 * c + 1] = pack_bf16(x.z, x.w);
        vo[2 * c] = pack_bf16(y.x, y.y), vo[2 * c + 1] = pack_bf16(y.z, y.w);
    }
    uint4 *kd = (uint4 *)(kb + dst), *vd = (uint4 *)(vb + dst);
    kd[0] = make_uint4(ko[0], ko[1], ko[2], ko[3]), kd[1] = make_uint4(ko[4], ko[5], ko[6], ko[7]);
    vd[0] = make_uint4(vo[0], vo[1], vo[2], vo[3]), vd[1] = make_uint4(vo[4], vo[5], vo[6], vo[7]);
}

/* a + b on bf16 pairs, rounded to nearest even (one instruction on sm_80+) */
__device__ __forceinline__ uint32_t add_bf16x2(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(0x3f803f80u), "r"(b));
    return r;
#else
    return 0;
#endif
}
__device__ __forceinline__ float lo_f(uint32_t x) { return __uint_as_float(x << 16); }
__device__ __forceinline__ float hi_f(uint32_t x) { return __uint_as_float(x & 0xffff0000u); }
__device__ __forceinline__ float ex2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

/* Shared memory of a block: two stages of K and V tiles, then (REL) the relative terms [QT / 2][rws] (u32 pairs),
 * then (REL && !GW64) the key table [tkp] (u32: j / gw, gh + j % gw). */
static size_t mma_smem(int rws, int ktab) { return (size_t)4 * KT * KS * 2 + (size_t)(QT / 2) * rws * 4 + (size_t)ktab * 4; }

/* One table's relative terms of a warp's 16 query rows (rows gid and gid + 8 of the warp: grid coordinates ia, ib
 * along this table's axis), into the 16-bit halves of rel[pair][base + r]. */
__device__ __forceinline__ void rel_terms(uint16_t *rel16, int rws, int pair, int base, const float *tab, int len,
                                          int ia, int ib, const uint32_t (*qa)[4], int gid, int tig) {
    const int rows = 2 * len - 1;
    for (int nt = 0; nt * 8 < rows; nt++) {
        float c[4] = {0.f, 0.f, 0.f, 0.f};
        const int t = nt * 8 + gid;
        const float *tr = tab + (size_t)(t < rows ? t : 0) * HD;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ks++) {
            float2 x0 = t < rows ? *(const float2 *)(tr + ks * 16 + tig * 2) : make_float2(0.f, 0.f);
            float2 x1 = t < rows ? *(const float2 *)(tr + ks * 16 + 8 + tig * 2) : make_float2(0.f, 0.f);
            const uint32_t h0 = pack_bf16(x0.x, x0.y), h1 = pack_bf16(x1.x, x1.y);
            mma_bf16(c, qa[ks], h0, h1);
            const uint32_t l0 = pack_bf16(x0.x - lo_f(h0), x0.y - hi_f(h0));
            const uint32_t l1 = pack_bf16(x1.x - lo_f(h1), x1.y - hi_f(h1));
            mma_bf16(c, qa[ks], l0, l1);
        }
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int tt = nt * 8 + tig * 2 + e, ra = ia + len - 1 - tt, rb = ib + len - 1 - tt;
            if (ra >= 0 && ra < len) rel16[((size_t)pair * rws + base + ra) * 2] = (uint16_t)(pack_bf16(c[e], 0.f) & 0xffffu);
            if (rb >= 0 && rb < len)
                rel16[((size_t)pair * rws + base + rb) * 2 + 1] = (uint16_t)(pack_bf16(c[2 + e], 0.f) & 0xffffu);
        }
    }
}

/* REL: relative-position terms; FULL: tk a multiple of KT (no key masking); GW64: the key grid's width is KT, so a
 * key tile is one grid row (its relH term is one pair a query pair, its relW terms sit at fixed offsets). */
template <bool REL, bool FULL, bool GW64>
__global__ void __launch_bounds__(NW * 32, 2) attn_mma_k(MmaArgs a) {
    extern __shared__ __align__(16) unsigned char smem[];
    uint16_t *kv = (uint16_t *)smem;           /* [2 stages][K, V][KT][KS] */
    uint32_t *rel = (uint32_t *)(kv + 4 * KT * KS);
    uint32_t *ktab = rel + (QT / 2) * a.rws;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gid = lane >> 2, tig = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * QT;
    const size_t qoff = (size_t)b * a.tq * a.ldq + (size_t)h * HD;
    const uint16_t *kg = a.kb + (size_t)b * a.sb + (size_t)h * a.sh, *vg = a.vb + (size_t)b * a.svb + (size_t)h * a.svh;
    const int ntiles = (a.tk + KT - 1) / KT;

    /* tile loads: thread -> (row tid / 4, two 16-byte pieces) of K and of V */
    const int lr = tid >> 2, lc = (tid & 3) * 16;
    auto load_tile = [&](int t) {
        const int key = t * KT + lr;
        const bool ok = FULL || key < a.tk;
        const size_t off = (size_t)(ok ? key : 0) * a.sk + lc, vo = (size_t)(ok ? key : 0) * a.svk + lc;
        uint16_t *ks = kv + (t & 1) * 2 * KT * KS + lr * KS + lc, *vs = ks + KT * KS;
        cp16(ks, kg + off, ok);
        cp16(ks + 8, kg + off + 8, ok);
        cp16(vs, vg + vo, ok);
        cp16(vs + 8, vg + vo + 8, ok);
        cp_commit();
    };
    load_tile(0);

    /* this warp's 16 query rows as A fragments (bf16), 4 k-steps over the head dimension */
    const int r0 = q0 + warp * 16 + gid, r1 = r0 + 8;
    uint32_t qa[HD / 16][4];
    const bool v0 = r0 < a.tq, v1 = r1 < a.tq;
    if (a.io16) {
        const uint16_t *p0 = a.q16 + qoff + (size_t)(v0 ? r0 : 0) * a.ldq, *p1 = a.q16 + qoff + (size_t)(v1 ? r1 : 0) * a.ldq;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            const int d = kk * 16 + tig * 2;
            qa[kk][0] = v0 ? *(const uint32_t *)(p0 + d) : 0u;
            qa[kk][1] = v1 ? *(const uint32_t *)(p1 + d) : 0u;
            qa[kk][2] = v0 ? *(const uint32_t *)(p0 + d + 8) : 0u;
            qa[kk][3] = v1 ? *(const uint32_t *)(p1 + d + 8) : 0u;
        }
    } else {
        const float *p0 = a.q + qoff + (size_t)(v0 ? r0 : 0) * a.ldq, *p1 = a.q + qoff + (size_t)(v1 ? r1 : 0) * a.ldq;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            const int d = kk * 16 + tig * 2;
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
    const int pair = warp * 8 + gid;
    const bool active = q0 + warp * 16 < a.tq; /* warp-uniform */
    const uint32_t *relp = rel + (size_t)pair * a.rws;
    if (REL) {
        const int ra = r0 < a.tq ? r0 : 0, rb = r1 < a.tq ? r1 : 0;
        const int ia = ra / a.gw, ib = rb / a.gw;
        if (active) rel_terms((uint16_t *)rel, a.rws, pair, 0, a.rh, a.gh, ia, ib, qa, gid, tig);
        if (active) rel_terms((uint16_t *)rel, a.rws, pair, a.wb, a.rw, a.gw, ra - ia * a.gw, rb - ib * a.gw, qa, gid, tig);
        if (!GW64)
            for (int j = tid; j < ntiles * KT; j += NW * 32) { /* keys past tk (masked) read term 0 */
                const int jr = j < a.tk ? j / a.gw : 0;
                ktab[j] = (uint32_t)jr | (uint32_t)(a.wb + (j < a.tk ? j - jr * a.gw : 0)) << 16;
            }
        /* the rows of a pair are the warp's own, the key table everyone's: the first tile's barrier orders both */
    }

    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
    const float L2E = 1.4426950408889634f, sc = a.scale;

    for (int t = 0; t < ntiles; t++) {
        const int k0 = t * KT;
        if (t + 1 < ntiles) {
            load_tile(t + 1);
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads(); /* tile t landed for everyone (and, the first time, rel and ktab written) */
        if (!active) { /* every row of this warp is past tq: it only helps load */
            __syncthreads();
            continue;
        }
        const uint16_t *Ks = kv + (t & 1) * 2 * KT * KS, *Vs = Ks + KT * KS;
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
        /* scale and bias (x = s·scale + b), mask; row maxima */
        float mx0 = -INFINITY, mx1 = -INFINITY;
        uint32_t rh = 0;
        if (REL && GW64) rh = relp[t];
#pragma unroll
        for (int n = 0; n < KT / 8; n++) {
            const int kl = n * 8 + tig * 2;
            uint32_t bb[2] = {0u, 0u};
            if (REL && GW64) {
                const uint2 w = *(const uint2 *)(relp + a.wb + kl);
                bb[0] = add_bf16x2(rh, w.x);
                bb[1] = add_bf16x2(rh, w.y);
            } else if (REL) {
                const uint2 kt = *(const uint2 *)(ktab + k0 + kl);
                bb[0] = add_bf16x2(relp[kt.x & 0xffffu], relp[kt.x >> 16]);
                bb[1] = add_bf16x2(relp[kt.y & 0xffffu], relp[kt.y >> 16]);
            }
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const bool ok = FULL || k0 + kl + e < a.tk;
                float x0 = REL ? fmaf(s[n][e], sc, lo_f(bb[e])) : s[n][e] * sc;
                float x1 = REL ? fmaf(s[n][2 + e], sc, hi_f(bb[e])) : s[n][2 + e] * sc;
                x0 = ok ? x0 : -INFINITY;
                x1 = ok ? x1 : -INFINITY;
                s[n][e] = x0;
                s[n][2 + e] = x1;
                mx0 = fmaxf(mx0, x0);
                mx1 = fmaxf(mx1, x1);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1); /* finite: every tile has a valid key */
        const float c0 = ex2((m0 - mn0) * L2E), c1 = ex2((m1 - mn1) * L2E);
        m0 = mn0;
        m1 = mn1;
        const float nm0 = -mn0 * L2E, nm1 = -mn1 * L2E;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            o[n][0] *= c0;
            o[n][1] *= c0;
            o[n][2] *= c1;
            o[n][3] *= c1;
        }
        /* P = exp(x − m), then O += P V over 4 k-steps of 16 keys; Vᵀ fragments by ldmatrix.trans */
#pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
            float p[2][4];
#pragma unroll
            for (int u = 0; u < 2; u++) {
                p[u][0] = ex2(fmaf(s[2 * kk + u][0], L2E, nm0));
                p[u][1] = ex2(fmaf(s[2 * kk + u][1], L2E, nm0));
                p[u][2] = ex2(fmaf(s[2 * kk + u][2], L2E, nm1));
                p[u][3] = ex2(fmaf(s[2 * kk + u][3], L2E, nm1));
                l0 += p[u][0] + p[u][1];
                l1 += p[u][2] + p[u][3];
            }
            uint32_t pa[4] = {pack_bf16(p[0][0], p[0][1]), pack_bf16(p[0][2], p[0][3]), pack_bf16(p[1][0], p[1][1]),
                              pack_bf16(p[1][2], p[1][3])};
#pragma unroll
            for (int n = 0; n < HD / 8; n += 2) { /* dims n and n + 1: matrices (keys +0/+8) × (dims n, n + 1) */
                uint32_t vb[4];
                const int mtx = lane >> 3;
                ldsm_x4<true>(vb, Vs + (kk * 16 + (mtx & 1) * 8 + (lane & 7)) * KS + (n + (mtx >> 1)) * 8);
                mma_bf16(o[n], pa, vb[0], vb[1]);
                mma_bf16(o[n + 1], pa, vb[2], vb[3]);
            }
        }
        __syncthreads(); /* this stage is free for tile t + 2 */
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = 1.f / l0, i1 = 1.f / l1;
    const size_t oo = (size_t)b * a.tq * a.ldo + (size_t)h * HD;
    if (a.io16) { /* rounded to bf16 as it is stored */
#pragma unroll
        for (int n = 0; n < HD / 8; n++) {
            const int d = n * 8 + tig * 2;
            if (v0) *(uint32_t *)(a.out16 + oo + (size_t)r0 * a.ldo + d) = pack_bf16(o[n][0] * i0, o[n][1] * i0);
            if (v1) *(uint32_t *)(a.out16 + oo + (size_t)r1 * a.ldo + d) = pack_bf16(o[n][2] * i1, o[n][3] * i1);
        }
        return;
    }
#pragma unroll
    for (int n = 0; n < HD / 8; n++) {
        const int d = n * 8 + tig * 2;
        if (v0) *(float2 *)(a.out + oo + (size_t)r0 * a.ldo + d) = make_float2(o[n][0] * i0, o[n][1] * i0);
        if (v1) *(float2 *)(a.out + oo + (size_t)r1 * a.ldo + d) = make_float2(o[n][2] * i1, o[n][3] * i1);
    }
}

} // namespace

/* Whether the tensor-core kernel takes o (sm_80+, head_dim 64, not causal, aligned rows, relative terms only with
 * bf16_bias, shared memory and conversion scratch enough); with o->io_bf16 the rows are bf16 (16-byte aligned K/V
 * rows for cp.async, no conversion). */
/* The relative terms' row of a query pair (REL): relH at words [0, gh), relW from word wb = gh rounded up to even
 * (64-bit loads), rws words in all, ≡ 8 (mod 16) so that a warp's 64-bit loads of relW terms hit every bank once. */
static int rel_wb(const OpsAttention *o) { return (o->grid_h + 1) & ~1; }
static int rel_rws(const OpsAttention *o) {
    int rws = rel_wb(o) + o->grid_w;
    return rws + (8 - rws % 16 + 16) % 16;
}

static bool mma_applies(const CudaCtx *c, const OpsAttention *o, size_t *smem_out) {
    if (c->cc < 80 || c->exact_gemm || c->gemm_f16 || o->head_dim != HD || o->causal) return false;
    if (o->relpos_h && !o->bf16_bias) return false;
    if (o->n_batch > 65535 || o->n_heads > 65535 || o->n_batch < 1 || o->tq < 1) return false;
    if (o->io_bf16) {
        if (o->ldq % 2 || o->ldk % 8 || o->ldv % 8 || o->ldo % 2) return false;
        if (((uintptr_t)o->k | (uintptr_t)o->v) & 15 || ((uintptr_t)o->q | (uintptr_t)o->out) & 3) return false;
    } else {
        if (o->ldq % 4 || o->ldk % 4 || o->ldv % 4 || o->ldo % 2) return false;
        if (((uintptr_t)o->q | (uintptr_t)o->k | (uintptr_t)o->v) & 15 || ((uintptr_t)o->out & 7)) return false;
        const size_t tkp = (size_t)(o->tk + KT - 1) / KT * KT;
        if ((size_t)2 * o->n_batch * o->n_heads * tkp * HD > c->xb_elems) return false; /* conversion scratch */
    }
    const bool rel = o->relpos_h != NULL, gw64 = rel && o->tk % KT == 0 && o->grid_w == KT;
    const size_t smem = mma_smem(rel ? rel_rws(o) : 0, rel && !gw64 ? (o->tk + KT - 1) / KT * KT : 0);
    if (smem > (size_t)c->smem_optin) return false;
    if (smem_out) *smem_out = smem;
    return true;
}

/* backend.h attention_bf16: only this kernel reads and writes bf16 storage */
int cu_attention_bf16(Backend *b, const OpsAttention *o) {
    OpsAttention t = *o;
    t.io_bf16 = 1;
    return mma_applies(cctx(b), &t, NULL) ? 1 : 0;
}

/* Runs the tensor-core kernel when mma_applies; returns false to leave the call to the SIMT kernels. */
bool cu_attention_mma(Backend *b, const OpsAttention *o) {
    CudaCtx *c = cctx(b);
    size_t smem = 0;
    if (!mma_applies(c, o, &smem)) return false;
    const bool rel = o->relpos_h != NULL, full = o->tk % KT == 0, gw64 = rel && full && o->grid_w == KT;
    MmaArgs a;
    a.io16 = o->io_bf16 != 0;
    a.out = o->out;
    a.q = o->q;
    a.q16 = (const uint16_t *)o->q;
    a.out16 = (uint16_t *)o->out;
    a.ldo = o->ldo;
    a.ldq = o->ldq;
    a.tq = o->tq;
    a.tk = o->tk;
    a.H = o->n_heads;
    a.scale = o->scale;
    a.rh = o->relpos_h;
    a.rw = rel ? o->relpos_w : NULL;
    a.gh = rel ? o->grid_h : 0;
    a.gw = rel ? o->grid_w : 1;
    a.wb = rel ? rel_wb(o) : 0;
    a.rws = rel ? rel_rws(o) : 0;
    const int tkp = (o->tk + KT - 1) / KT * KT;
    if (a.io16) { /* K and V read where they are */
        a.kb = (const uint16_t *)o->k;
        a.vb = (const uint16_t *)o->v;
        a.sk = o->ldk, a.svk = o->ldv;
        a.sh = a.svh = HD;
        a.sb = (size_t)o->tk * o->ldk, a.svb = (size_t)o->tk * o->ldv;
    } else { /* converted into the GEMM conversion scratch */
        const size_t kv_elems = (size_t)2 * o->n_batch * o->n_heads * tkp * HD;
        a.kb = c->xb;
        a.vb = c->xb + kv_elems / 2;
        a.sh = a.svh = (size_t)tkp * HD;
        a.sb = a.svb = a.sh * o->n_heads;
        a.sk = a.svk = HD;
        kv_to_bf16_k<<<dim3(tkp / KT, o->n_heads, o->n_batch), 256, 0, c->stream>>>(
            o->k, o->v, o->ldk, o->ldv, o->tk, tkp, o->n_heads, (uint16_t *)a.kb, (uint16_t *)a.vb);
        CU_LAUNCHED();
    }
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
