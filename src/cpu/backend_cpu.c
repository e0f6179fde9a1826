/* backend_cpu.c: the CPU backend: host memory and the ops_*_cpu functions behind the Backend table
 * (backend.h). Allocation is counted so that the session can report its footprint like the GPU backend. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "backend.h"
#include "prof.h"
#include "cpu/scratch.h"

typedef struct CpuCtx {
    _Atomic size_t allocated, peak;
} CpuCtx;

/* Every block carries its size in a 64-byte header (keeps 64-byte alignment of the payload). */
static void *cpu_alloc(Backend *b, size_t bytes) {
    CpuCtx *c = b->ctx;
    size_t total;
    if (!ds_add_ok(bytes, 64, &total)) return NULL;
    uint8_t *p = aligned_alloc(64, (total + 63) & ~(size_t)63);
    if (!p) return NULL;
    memcpy(p, &bytes, sizeof bytes);
    size_t now = atomic_fetch_add(&c->allocated, bytes) + bytes, pk = atomic_load(&c->peak);
    while (now > pk && !atomic_compare_exchange_weak(&c->peak, &pk, now)) {
    }
    return p + 64;
}

static void cpu_free(Backend *b, void *p) {
    if (!p) return;
    CpuCtx *c = b->ctx;
    uint8_t *base = (uint8_t *)p - 64;
    size_t bytes;
    memcpy(&bytes, base, sizeof bytes);
    atomic_fetch_sub(&c->allocated, bytes);
    free(base);
}

static void cpu_upload(Backend *b, void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
static void cpu_download(Backend *b, void *dst, const void *src, size_t n) { memcpy(dst, src, n); }
static void cpu_copy(Backend *b, void *dst, const void *src, size_t n) { memmove(dst, src, n); }
static void cpu_memset0(Backend *b, void *dst, size_t n) { memset(dst, 0, n); }
static void cpu_sync(Backend *b) {}
static size_t cpu_allocated(const Backend *b) { return atomic_load(&((CpuCtx *)b->ctx)->allocated); }
static size_t cpu_peak(const Backend *b) { return atomic_load(&((CpuCtx *)b->ctx)->peak); }

static void round_rows(float *y, int ldy, int M, int N) { ops_round_bf16_rows_cpu(y, ldy, M, N); }
/* linear's BE_GELU / BE_QGELU step over the M × N outputs (after BE_ROUND's rounding), rounded again with BE_ROUND */
static void act_rows(float *y, int ldy, int M, int N, int flags) {
    if (!(flags & (BE_GELU | BE_QGELU))) return;
    const int rows = ldy == N ? 1 : M;
    const size_t n = ldy == N ? (size_t)M * N : (size_t)N;
    for (int i = 0; i < rows; i++) {
        float *r = y + (size_t)i * ldy;
        if (flags & BE_ROUND) { /* bf16 values in and out: the table (bit for bit the computed act, rounded) */
            ops_act_bf16_table_cpu(r, n, (flags & BE_GELU) == 0);
            continue;
        }
        if (flags & BE_GELU)
            ops_gelu_cpu(r, r, n);
        else
            ops_quick_gelu_cpu(r, r, n);
        if (flags & BE_ROUND) ops_round_bf16_cpu(r, n);
    }
}
static void cpu_linear(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias,
                       int flags) {
    ops_linear_cpu(y, ldy, x, ldx, M, K, w, N, bias, flags & ~(BE_ROUND | BE_GELU | BE_QGELU | BE_FP32_SUMS));
    if (flags & BE_ROUND) round_rows(y, ldy, M, N);
    act_rows(y, ldy, M, N, flags);
}
/* bf16 mode: the mean rounded to bf16, x − mean rounded to bf16 before the variance and the output (the official
 * module's bf16 arithmetic); the sums in double, four partial sums a row (summed in a fixed order), w and bias widened
 * once per call */
enum { LN_MAX = 16384 };
static void cpu_layernorm_rows(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW bias,
                               float eps, int flags) {
    if (!(flags & OPS_BF16)) {
        ops_layernorm_cpu(y, ldy, x, ldx, M, n, w, bias, eps);
        return;
    }
    float *wb = n <= LN_MAX ? malloc(sizeof(float) * 2 * (size_t)n) : NULL;
    if (wb)
        for (int i = 0; i < n; i++) {
            wb[i] = ds_w_get(w, (size_t)i);
            wb[n + i] = bias.data ? ds_w_get(bias, (size_t)i) : 0.0f;
        }
#pragma omp parallel for schedule(static) if ((size_t)M * n > 65536)
    for (int r = 0; r < M; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        double s4[4] = {0, 0, 0, 0};
        int i = 0;
        for (; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++) s4[j] += xr[i + j];
        for (; i < n; i++) s4[0] += xr[i];
        const float u = bf16_round((float)((s4[0] + s4[1] + (s4[2] + s4[3])) / n));
        double q4[4] = {0, 0, 0, 0};
        for (i = 0; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++) {
                const float d = bf16_round(xr[i + j] - u);
                q4[j] += (double)d * d;
            }
        for (; i < n; i++) {
            const float d = bf16_round(xr[i] - u);
            q4[0] += (double)d * d;
        }
        const float inv = 1.0f / sqrtf((float)((q4[0] + q4[1] + (q4[2] + q4[3])) / n) + eps);
        if (wb) {
            for (i = 0; i < n; i++) yr[i] = bf16_round(xr[i] - u) * inv * wb[i] + wb[n + i];
        } else {
            for (i = 0; i < n; i++) {
                const float d = bf16_round(xr[i] - u);
                yr[i] = d * inv * ds_w_get(w, (size_t)i) + (bias.data ? ds_w_get(bias, (size_t)i) : 0.0f);
            }
        }
    }
    free(wb);
}
/* flags & BE_ROUND: the output rounded to bf16 as well (backend.h layernorm) */
static void cpu_layernorm(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW bias,
                          float eps, int flags) {
    cpu_layernorm_rows(b, y, ldy, x, ldx, M, n, w, bias, eps, flags & ~BE_ROUND);
    if (flags & BE_ROUND) round_rows(y, ldy, M, n);
}
static void cpu_rmsnorm(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, float eps,
                        int flags) {
    ops_rmsnorm_cpu(y, ldy, x, ldx, M, n, w, eps, flags);
}
static void cpu_gelu(Backend *b, float *out, const float *x, size_t n) { ops_gelu_cpu(out, x, n); }
static void cpu_quick_gelu(Backend *b, float *out, const float *x, size_t n) { ops_quick_gelu_cpu(out, x, n); }
static void cpu_add(Backend *b, float *out, const float *a, const float *c, size_t n) { ops_add_cpu(out, a, c, n); }
static void cpu_round_bf16(Backend *b, float *x, size_t n) { ops_round_bf16_cpu(x, n); }
static void cpu_attention(Backend *b, const OpsAttention *a) { ops_attention_cpu(a); }
static void cpu_attention_kv(Backend *b, const OpsAttentionKv *a) { ops_attention_kv_cpu(a); }
static void cpu_kv_write(Backend *b, KvCache *kv, int layer, const int32_t *table, int pos0, int n, const float *k,
                         int ldk, const float *v, int ldv) {
    kv_write(kv, layer, table, pos0, n, k, ldk, v, ldv);
}
/* add_rmsnorm through the table's own add, round_bf16 and rmsnorm (so cpu-ref keeps its rmsnorm arithmetic) */
static void cpu_add_rmsnorm(Backend *b, float *y, float *x, const float *r, int M, int n, DsW w, float eps,
                            int flags) {
    b->add(b, x, x, r, (size_t)M * n);
    if (flags & OPS_BF16) b->round_bf16(b, x, (size_t)M * n);
    b->rmsnorm(b, y, n, x, n, M, n, w, eps, flags);
}
static void cpu_kv_write_dev(Backend *b, KvCache *kv, int layer, const int32_t *const *tables, const int32_t *seq,
                             const int32_t *pos, int n, const float *k, int ldk, const float *v, int ldv) {
    for (int t = 0; t < n; t++)
        kv_write(kv, layer, tables[seq ? seq[t] : 0], pos[t], 1, k + (size_t)t * ldk, ldk, v + (size_t)t * ldv, ldv);
}
static void cpu_rope(Backend *b, float *x, int ld, int T, int n_heads, int head_dim, const int32_t *pos, float theta,
                     int flags) {
    ops_rope_neox_cpu(x, ld, T, n_heads, head_dim, pos, theta, flags);
}
static void cpu_conv2d(Backend *b, float *y, const float *x, const OpsConv2d *c, DsW w, DsW bias, float *scratch,
                       size_t scratch_n) {
    ops_conv2d_cpu(y, x, c, w, bias, scratch, scratch_n);
}
static void cpu_swiglu(Backend *b, float *y, const float *x, int n, int D, int F, DsW gate, DsW up, DsW down,
                       int flags, float *scratch) {
    ops_expert_ffn_cpu(y, x, n, D, F, gate, up, down, flags, scratch);
}

/* Scratch layout of cpu_moe: logits [n, E] | idx [n, k] | wts [n, k] | acc [n, D] | xg [n, D] | yg [n, D] |
 * rows [n] | wg [n] | ffn 2·n·max(F, S) (one row: the k experts' outputs [k, D] there, moe_routed). */
static size_t cpu_moe_scratch(int n, const BackendMoe *m) {
    size_t F = (size_t)(m->d_ff > m->d_shared ? m->d_ff : m->d_shared);
    return (size_t)n * ((size_t)m->n_experts + 2 * (size_t)m->top_k + 3 * (size_t)m->d_model + 2 + 2 * F) +
           (size_t)m->top_k * m->d_model + 64;
}

enum { MAXK_ROW = 64 }; /* the grouped path's most experts a row */

typedef void (*LinearFn)(float *, int, const float *, int, int, int, DsW, int, DsW, int);
typedef void (*FfnFn)(float *, const float *, int, int, int, DsW, DsW, DsW, int, float *);

/* One row (decode): the row's experts in ascending order, their FFNs in two parallel regions (the same bits as one
 * expert at a time); shared_y != NULL: the shared experts' FFN (an expert of d_shared) joins the same two regions,
 * its output into shared_y. acc must be zero. ffn: the k outputs [k, D]. */
static void moe_routed1(float *acc, const float *x, const int32_t *idx, const float *wts, const BackendMoe *m,
                        int flags, float *ffn, float *shared_y) {
    const int D = m->d_model, E = m->n_experts, K = m->top_k;
    int ord[16] = {0}, nk = 0, fs[17] = {0};
    DsW g[17] = {0}, u[17] = {0}, d[17] = {0};
    float *ys[17] = {0};
    for (int e = 0; e < E; e++)
        for (int j = 0; j < K; j++)
            if (idx[j] == e) ord[nk++] = j;
    for (int i = 0; i < nk; i++) {
        const BackendExpert *ex = &m->experts[idx[ord[i]]];
        g[i] = ex->gate, u[i] = ex->up, d[i] = ex->down, fs[i] = m->d_ff, ys[i] = ffn + (size_t)i * D;
    }
    const int ns = shared_y != NULL;
    if (ns) g[nk] = m->shared.gate, u[nk] = m->shared.up, d[nk] = m->shared.down, fs[nk] = m->d_shared, ys[nk] = shared_y;
    ops_expert_ffn1_many_cpu(ys, x, D, fs, g, u, d, nk + ns, flags);
    for (int i = 0; i < nk; i++) ops_scale_add_cpu(acc, wts[ord[i]], ys[i], (size_t)D);
    if (flags & OPS_BF16) ops_round_bf16_cpu(acc, (size_t)D);
}

/* Many rows (a prefill chunk): acc [n, D] as moe_routed computes it, every chosen expert's FFN over its rows (and
 * the shared experts' over all rows into shared_y, when given) as one job list (ops_expert_ffn_jobs_cpu: two parallel
 * regions for all of them), each row's outputs then added in ascending expert order, as moe_routed adds them.
 * Returns 0 when out of memory (nothing done). */
static int moe_routed_grouped(float *acc, const float *x, int n, const int32_t *idx, const float *wts,
                              const BackendMoe *m, int flags, float *shared_y) {
    const int D = m->d_model, E = m->n_experts, K = m->top_k, nk = n * K;
    /* xg, yg [nk, D] (the pairs in expert order) | pair_of [nk]: row r's j-th choice's place in that order */
    float *xg = cpu_scratch(SCRATCH_MOE, sizeof(float) * 2 * (size_t)nk * D + sizeof(int32_t) * (size_t)nk);
    OpsExpertJob *jobs = malloc(sizeof *jobs * ((size_t)E + 1));
    int32_t *cnt = calloc((size_t)E + 1, sizeof *cnt);
    if (!xg || !jobs || !cnt) {
        free(jobs), free(cnt);
        return 0;
    }
    float *yg = xg + (size_t)nk * D;
    int32_t *pair_of = (int32_t *)(yg + (size_t)nk * D);
    for (int p = 0; p < nk; p++) cnt[idx[p] + 1]++;
    for (int e = 0; e < E; e++) cnt[e + 1] += cnt[e]; /* cnt[e]: expert e's first pair */
    int nj = 0;
    for (int e = 0; e < E; e++) {
        const int c0 = cnt[e], c1 = cnt[e + 1];
        if (c1 == c0) continue;
        const BackendExpert *ex = &m->experts[e];
        jobs[nj++] = (OpsExpertJob){yg + (size_t)c0 * D, xg + (size_t)c0 * D, c1 - c0, m->d_ff, ex->gate, ex->up,
                                    ex->down};
    }
    for (int r = 0; r < n; r++) /* rows in order within an expert, as moe_routed gathers them */
        for (int j = 0; j < K; j++) pair_of[r * K + j] = cnt[idx[r * K + j]]++;
#pragma omp parallel for schedule(static) if ((size_t)nk * D >= 65536)
    for (int p = 0; p < nk; p++) memcpy(xg + (size_t)pair_of[p] * D, x + (size_t)(p / K) * D, sizeof(float) * D);
    if (shared_y)
        jobs[nj++] = (OpsExpertJob){shared_y, x, n, m->d_shared, m->shared.gate, m->shared.up, m->shared.down};
    ops_expert_ffn_jobs_cpu(jobs, nj, D, flags);
#pragma omp parallel for schedule(static) if ((size_t)n * D >= 65536)
    for (int r = 0; r < n; r++) {
        float *a = acc + (size_t)r * D;
        memset(a, 0, sizeof(float) * D);
        int done[MAXK_ROW] = {0};
        for (int c = 0; c < K; c++) { /* the row's choices by ascending expert */
            int b = -1;
            for (int j = 0; j < K; j++)
                if (!done[j] && (b < 0 || idx[r * K + j] < idx[r * K + b])) b = j;
            done[b] = 1;
            const float w = wts[r * K + b], *y = yg + (size_t)pair_of[r * K + b] * D;
            for (int i = 0; i < D; i++) a[i] += w * y[i];
        }
        if (flags & OPS_BF16)
            for (int i = 0; i < D; i++) a[i] = bf16_round(a[i]);
    }
    free(jobs), free(cnt);
    return 1;
}

/* acc [n, D] = Σ_j wts[r, j]·Expert_idx[r, j](x_r), experts in ascending order, each chosen expert's weights read
 * once for all its rows (rounded in bf16 mode); scratch: xg, yg [n, D] | rows, wg [n] | ffn 2·n·F (and, for one
 * row, the k outputs [k, D] from ffn on) */
static void moe_routed(FfnFn ffn_fn, float *acc, const float *x, int n, const int32_t *idx, const float *wts,
                       const BackendMoe *m, int flags, float *scratch) {
    const int D = m->d_model, E = m->n_experts, K = m->top_k;
    float *xg = scratch, *yg = xg + (size_t)n * D;
    int32_t *rows = (int32_t *)(yg + (size_t)n * D);
    float *wg = (float *)(rows + n), *ffn = wg + n;
    if (n > 1 && ffn_fn == ops_expert_ffn_cpu && K <= MAXK_ROW && moe_routed_grouped(acc, x, n, idx, wts, m, flags, NULL))
        return;
    memset(acc, 0, sizeof(float) * (size_t)n * D);
    if (n == 1 && ffn_fn == ops_expert_ffn_cpu && K <= 16) {
        moe_routed1(acc, x, idx, wts, m, flags, ffn, NULL);
        return;
    }
    for (int e = 0; e < E; e++) {
        int cnt = 0;
        for (int r = 0; r < n; r++)
            for (int j = 0; j < K; j++)
                if (idx[r * K + j] == e) {
                    rows[cnt] = r;
                    wg[cnt] = wts[r * K + j];
                    memcpy(xg + (size_t)cnt * D, x + (size_t)r * D, sizeof(float) * D);
                    cnt++;
                }
        if (!cnt) continue;
        const BackendExpert *ex = &m->experts[e];
        ffn_fn(yg, xg, cnt, D, m->d_ff, ex->gate, ex->up, ex->down, flags, ffn);
        for (int i = 0; i < cnt; i++) ops_scale_add_cpu(acc + (size_t)rows[i] * D, wg[i], yg + (size_t)i * D, (size_t)D);
    }
    if (flags & OPS_BF16) ops_round_bf16_cpu(acc, (size_t)n * D);
}

size_t backend_cpu_moe_routed_scratch(int n, const BackendMoe *m) {
    return (size_t)n * (2 * (size_t)m->d_model + 2 + 2 * (size_t)m->d_ff) + (size_t)m->top_k * m->d_model + 16;
}
void backend_cpu_moe_routed(float *acc, const float *x, int n, const int32_t *idx, const float *wts,
                            const BackendMoe *m, int flags, float *scratch) {
    moe_routed(ops_expert_ffn_cpu, acc, x, n, idx, wts, m, flags, scratch);
}

static void moe_with(LinearFn linear, FfnFn ffn_fn, float *y, const float *x, int n, const BackendMoe *m, int flags,
                     float *router_logits, int32_t *experts, float *scratch) {
    const int D = m->d_model, E = m->n_experts, K = m->top_k;
    float *logits = scratch;
    int32_t *idx = (int32_t *)(logits + (size_t)n * E);
    float *wts = (float *)(idx + (size_t)n * K);
    float *acc = wts + (size_t)n * K, *rest = acc + (size_t)n * D;
    linear(logits, E, x, D, n, D, m->router, E, ds_w_none(), 0);
    ops_moe_route(logits, E, n, E, K, flags & OPS_BF16, idx, wts);
    if (router_logits) {
        memcpy(router_logits, logits, sizeof(float) * (size_t)n * E);
        if (flags & OPS_BF16) ops_round_bf16_cpu(router_logits, (size_t)n * E);
    }
    if (experts) memcpy(experts, idx, sizeof(int32_t) * (size_t)n * K);
    if (n == 1 && ffn_fn == ops_expert_ffn_cpu && K <= 16 && m->shared.gate.data) {
        /* decode: the shared experts in the routed experts' two parallel regions, not two more (the same bits:
         * ops_expert_ffn1_many_cpu equals ops_expert_ffn_cpu expert by expert) */
        float *ffn = rest + 2 * (size_t)n * D + 2 * (size_t)n; /* moe_routed's ffn part */
        memset(acc, 0, sizeof(float) * D);
        moe_routed1(acc, x, idx, wts, m, flags, ffn, y);
        ops_add_cpu(y, y, acc, (size_t)D);
        if (flags & OPS_BF16) ops_round_bf16_cpu(y, (size_t)D);
        return;
    }
    if (n > 1 && ffn_fn == ops_expert_ffn_cpu && K <= MAXK_ROW && m->shared.gate.data &&
        moe_routed_grouped(acc, x, n, idx, wts, m, flags, y)) { /* the shared experts in the same regions */
        ops_add_cpu(y, y, acc, (size_t)n * D);
        if (flags & OPS_BF16) ops_round_bf16_cpu(y, (size_t)n * D);
        return;
    }
    moe_routed(ffn_fn, acc, x, n, idx, wts, m, flags, rest);
    if (m->shared.gate.data) {
        float *ffn = rest + 2 * (size_t)n * D + 2 * (size_t)n; /* moe_routed's ffn part: free again */
        ffn_fn(y, x, n, D, m->d_shared, m->shared.gate, m->shared.up, m->shared.down, flags, ffn);
        ops_add_cpu(y, y, acc, (size_t)n * D);
        if (flags & OPS_BF16) ops_round_bf16_cpu(y, (size_t)n * D);
    } else {
        memcpy(y, acc, sizeof(float) * (size_t)n * D);
    }
}

static void cpu_moe(Backend *b, float *y, const float *x, int n, const BackendMoe *m, int flags, float *router_logits,
                    int32_t *experts, float *scratch) {
    moe_with(ops_linear_cpu, ops_expert_ffn_cpu, y, x, n, m, flags, router_logits, experts, scratch);
}

static void cpu_chw_to_hwc(Backend *b, float *dst, const float *src, int S) {
    const size_t P = (size_t)S * S;
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < P; i++) dst[i * 3 + c] = src[(size_t)c * P + i];
}

/* the windows of a g × g grid, zero rows where a window passes the edge; a thread per padded grid row */
static void cpu_window_partition(Backend *b, float *dst, const float *src, int g, int C, int ws) {
    const int nw = (g + ws - 1) / ws, gp = nw * ws;
#pragma omp parallel for schedule(static) if ((size_t)g * g * C >= 65536)
    for (int i = 0; i < gp; i++)
        for (int j = 0; j < gp; j++) {
            size_t wi = (size_t)(i / ws) * nw + j / ws, t = (size_t)(i % ws) * ws + j % ws;
            float *d = dst + (wi * ws * ws + t) * C;
            if (i < g && j < g)
                memcpy(d, src + ((size_t)i * g + j) * C, sizeof(float) * C);
            else
                memset(d, 0, sizeof(float) * C);
        }
}

static void cpu_window_unpartition_add(Backend *b, float *x, const float *win, int g, int C, int ws) {
    const int nw = (g + ws - 1) / ws;
#pragma omp parallel for schedule(static) if ((size_t)g * g * C >= 65536)
    for (int i = 0; i < g; i++)
        for (int j = 0; j < g; j++) {
            size_t wi = (size_t)(i / ws) * nw + j / ws, t = (size_t)(i % ws) * ws + j % ws;
            float *xr = x + ((size_t)i * g + j) * C;
            const float *wr = win + (wi * ws * ws + t) * C;
            for (int c = 0; c < C; c++) xr[c] += wr[c];
        }
}

static void cpu_embed(Backend *b, float *dst, const int32_t *ids, int n, DsW table, int D) {
    for (int r = 0; r < n; r++)
        for (int i = 0; i < D; i++) dst[(size_t)r * D + i] = ds_w_get(table, (size_t)ids[r] * D + i);
}

static void cpu_fill_rows(Backend *b, float *dst, int n, DsW vec, int D) {
    for (int i = 0; i < D; i++) dst[i] = ds_w_get(vec, (size_t)i);
    for (int r = 1; r < n; r++) memcpy(dst + (size_t)r * D, dst, sizeof(float) * D);
}

static void cpu_concat_cols(Backend *b, float *dst, const float *a, int lda, int wa, const float *c, int ldc, int wc,
                            int n) {
    for (int r = 0; r < n; r++) {
        memcpy(dst + (size_t)r * (wa + wc), a + (size_t)r * lda, sizeof(float) * wa);
        memcpy(dst + (size_t)r * (wa + wc) + wa, c + (size_t)r * ldc, sizeof(float) * wc);
    }
}

static void cpu_copy_rows(Backend *b, float *dst, int ldd, const float *src, int lds, int n, int w) {
    for (int r = 0; r < n; r++) memmove(dst + (size_t)r * ldd, src + (size_t)r * lds, sizeof(float) * w);
}

static void cpu_mask_ids(Backend *b, float *x, const int32_t *idx, int n) {
    for (int i = 0; i < n; i++) x[idx[i]] = -INFINITY;
}
static void cpu_argmax_rows(Backend *b, int32_t *out, const float *x, size_t ld, int rows, int n) {
    for (int r = 0; r < rows; r++) out[r] = ops_argmax(x + (size_t)r * ld, n);
}
static void cpu_argmax(Backend *b, int32_t *out, const float *x, int n, int32_t *step) {
    out[0] = ops_argmax(x, n);
    if (step) {
        step[0] = out[0];
        step[1]++;
    }
}

static CpuCtx g_cpu_ctx;
/* DSOCR_PROFILE=1: wall time between marks (the CPU's ops are synchronous), per section label */
static ProfTable g_prof;
static const char *g_prof_open; /* the section running since g_prof_t */
static double g_prof_t;
static int prof_on(void) {
    static int on = -1;
    if (on < 0) on = ds_env_on("DSOCR_PROFILE");
    return on;
}
static void cpu_mark(Backend *b, const char *label) {
    if (!prof_on()) return;
    const double now = ds_now();
    if (g_prof_open) prof_add(&g_prof, g_prof_open, 1000 * (now - g_prof_t));
    g_prof_open = label;
    g_prof_t = now;
}
static void cpu_profile_report(Backend *b, void *file) {
    if (!prof_on()) return;
    cpu_mark(b, NULL);
    prof_report(&g_prof, (FILE *)file);
}

static Backend g_cpu = {
    .name = "cpu",
    .ctx = &g_cpu_ctx,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .memset0 = cpu_memset0,
    .sync = cpu_sync,
    .allocated = cpu_allocated,
    .peak = cpu_peak,
    .linear = cpu_linear,
    .layernorm = cpu_layernorm,
    .rmsnorm = cpu_rmsnorm,
    .add_rmsnorm = cpu_add_rmsnorm,
    .gelu = cpu_gelu,
    .quick_gelu = cpu_quick_gelu,
    .add = cpu_add,
    .round_bf16 = cpu_round_bf16,
    .attention = cpu_attention,
    .attention_kv = cpu_attention_kv,
    .kv_write = cpu_kv_write,
    .kv_write_dev = cpu_kv_write_dev,
    .rope_neox = cpu_rope,
    .conv2d = cpu_conv2d,
    .swiglu = cpu_swiglu,
    .moe = cpu_moe,
    .moe_scratch_floats = cpu_moe_scratch,
    .chw_to_hwc = cpu_chw_to_hwc,
    .window_partition = cpu_window_partition,
    .window_unpartition_add = cpu_window_unpartition_add,
    .embed = cpu_embed,
    .embed_dev = cpu_embed,
    .fill_rows = cpu_fill_rows,
    .concat_cols = cpu_concat_cols,
    .copy_rows = cpu_copy_rows,
    .argmax = cpu_argmax,
    .argmax_rows = cpu_argmax_rows,
    .mask_ids = cpu_mask_ids,
    .mark = cpu_mark,
    .profile_report = cpu_profile_report,
};

Backend *backend_cpu(void) { return &g_cpu; }

/* ---- the reference backend: the scalar _ref ops (double accumulation) behind the same table ---- */

static void ref_linear(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias,
                       int flags) {
    ops_linear_ref(y, ldy, x, ldx, M, K, w, N, bias, flags & ~(BE_ROUND | BE_GELU | BE_QGELU | BE_FP32_SUMS));
    if (flags & BE_ROUND) round_rows(y, ldy, M, N);
    act_rows(y, ldy, M, N, flags);
}
static void ref_layernorm(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW bias,
                          float eps, int flags) {
    if (flags & OPS_BF16)
        cpu_layernorm_rows(b, y, ldy, x, ldx, M, n, w, bias, eps, flags & ~BE_ROUND);
    else
        ops_layernorm_ref(y, ldy, x, ldx, M, n, w, bias, eps);
    if (flags & BE_ROUND) round_rows(y, ldy, M, n);
}
static void ref_rmsnorm(Backend *b, float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, float eps,
                        int flags) {
    ops_rmsnorm_ref(y, ldy, x, ldx, M, n, w, eps, flags);
}
static void ref_attention(Backend *b, const OpsAttention *a) { ops_attention_ref(a); }
static void ref_attention_kv(Backend *b, const OpsAttentionKv *a) { ops_attention_kv_ref(a); }
static void ref_rope(Backend *b, float *x, int ld, int T, int n_heads, int head_dim, const int32_t *pos, float theta,
                     int flags) {
    ops_rope_neox_ref(x, ld, T, n_heads, head_dim, pos, theta, flags);
}
static void ref_conv2d(Backend *b, float *y, const float *x, const OpsConv2d *c, DsW w, DsW bias, float *scratch,
                       size_t scratch_n) {
    ops_conv2d_ref(y, x, c, w, bias, scratch, scratch_n);
}
static void ref_swiglu(Backend *b, float *y, const float *x, int n, int D, int F, DsW gate, DsW up, DsW down,
                       int flags, float *scratch) {
    ops_expert_ffn_ref(y, x, n, D, F, gate, up, down, flags, scratch);
}
static void ref_moe(Backend *b, float *y, const float *x, int n, const BackendMoe *m, int flags, float *router_logits,
                    int32_t *experts, float *scratch) {
    moe_with(ops_linear_ref, ops_expert_ffn_ref, y, x, n, m, flags, router_logits, experts, scratch);
}

Backend *backend_cpu_ref(void) {
    static Backend r;
    static int init;
    if (!init) { /* same memory and data movement as the CPU backend; the arithmetic of the _ref ops */
        r = g_cpu;
        r.name = "cpu-ref";
        r.linear = ref_linear;
        r.layernorm = ref_layernorm;
        r.rmsnorm = ref_rmsnorm;
        r.attention = ref_attention;
        r.attention_kv = ref_attention_kv;
        r.rope_neox = ref_rope;
        r.conv2d = ref_conv2d;
        r.swiglu = ref_swiglu;
        r.moe = ref_moe;
        init = 1;
    }
    return &r;
}
