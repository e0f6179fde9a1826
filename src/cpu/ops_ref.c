/* ops_ref.c: the scalar reference ops (the specification of every op in ops.h), and the ops that have a single
 * implementation (argmax, resampling, MoE routing, the KV cache pool). Written for clarity, not speed:
 * reductions are accumulated in double, attention recomputes scores instead of keeping a row buffer. */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "ops.h"
#include "quant.h"

float ds_w_get(DsW w, size_t i) {
    switch (w.dtype) {
    case DS_F32: return ((const float *)w.data)[i];
    case DS_BF16: return bf16_to_f32(((const uint16_t *)w.data)[i]);
    case DS_F16: return fp16_to_f32(((const uint16_t *)w.data)[i]);
    case DS_Q8_0: { /* rows are whole blocks, so element i is in block i / QK of the whole matrix */
        const BlockQ8_0 *b = (const BlockQ8_0 *)w.data + i / QK;
        return (float)b->q[i % QK] * fp16_to_f32(b->d);
    }
    case DS_Q4_0: {
        const BlockQ4_0 *b = (const BlockQ4_0 *)w.data + i / QK;
        int j = (int)(i % QK), v = j < QK / 2 ? (b->q[j] & 0x0f) : (b->q[j - QK / 2] >> 4);
        return (float)(v - 8) * fp16_to_f32(b->d);
    }
    default: DS_ASSERT(!"unsupported weight dtype");
    }
    return 0;
}

/* ---- linear ---- */

void ops_linear_ref(float *y, int ldy, const float *x, int ldx, int M, int K, DsW w, int N, DsW bias, int flags) {
    DS_ASSERT(M >= 0 && K > 0 && N > 0 && ldx >= K && ldy >= N && w.data);
    DS_ASSERT(!quant_is_block(w.dtype) || K % QK == 0);
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int k = 0; k < K; k++) acc += (double)x[(size_t)m * ldx + k] * ds_w_get(w, (size_t)n * K + k);
            if (bias.data) acc += ds_w_get(bias, n);
            float *o = &y[(size_t)m * ldy + n];
            *o = (flags & OPS_ACCUM) ? (float)(*o + acc) : (float)acc;
        }
    }
}

/* ---- norms ---- */

void ops_layernorm_ref(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, DsW b, float eps) {
    DS_ASSERT(M >= 0 && n > 0 && w.data);
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * ldx;
        float *yr = y + (size_t)m * ldy;
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++) mean += xr[i];
        mean /= n;
        for (int i = 0; i < n; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= n;
        double inv = 1.0 / sqrt(var + eps);
        for (int i = 0; i < n; i++) {
            double v = (xr[i] - mean) * inv * ds_w_get(w, i);
            if (b.data) v += ds_w_get(b, i);
            yr[i] = (float)v;
        }
    }
}

void ops_rmsnorm_ref(float *y, int ldy, const float *x, int ldx, int M, int n, DsW w, float eps, int flags) {
    DS_ASSERT(M >= 0 && n > 0 && w.data);
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * ldx;
        float *yr = y + (size_t)m * ldy;
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        float r = (float)(1.0 / sqrt(ss / n + eps));
        for (int i = 0; i < n; i++) {
            float v = xr[i] * r;
            if (flags & OPS_BF16) v = bf16_round(v);
            v *= ds_w_get(w, i);
            if (flags & OPS_BF16) v = bf16_round(v);
            yr[i] = v;
        }
    }
}

/* ---- elementwise ---- */

void ops_gelu_ref(float *out, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = (float)(0.5 * x[i] * (1.0 + erf(x[i] * M_SQRT1_2)));
}

void ops_quick_gelu_ref(float *out, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = (float)(x[i] / (1.0 + exp(-1.702 * x[i])));
}

void ops_silu_mul_ref(float *out, const float *g, const float *u, size_t n, int flags) {
    for (size_t i = 0; i < n; i++) {
        float s = (float)(g[i] / (1.0 + exp(-(double)g[i])));
        if (flags & OPS_BF16) s = bf16_round(s);
        float v = s * u[i];
        out[i] = (flags & OPS_BF16) ? bf16_round(v) : v;
    }
}

void ops_add_ref(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void ops_scale_add_ref(float *y, float s, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += s * x[i];
}

void ops_round_bf16_ref(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = bf16_round(x[i]);
}

void ops_softmax_ref(float *y, int ldy, const float *x, int ldx, int M, int n) {
    DS_ASSERT(M >= 0 && n > 0);
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * ldx;
        float *yr = y + (size_t)m * ldy;
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < n; i++) mx = xr[i] > mx ? xr[i] : mx;
        for (int i = 0; i < n; i++) sum += exp(xr[i] - mx);
        for (int i = 0; i < n; i++) yr[i] = (float)(exp(xr[i] - mx) / sum);
    }
}

int ops_argmax(const float *x, int n) {
    int best = 0;
    float bv = -INFINITY;
    int found = 0;
    for (int i = 0; i < n; i++) {
        if (x[i] != x[i]) continue; /* NaN */
        if (!found || x[i] > bv) {
            bv = x[i];
            best = i;
            found = 1;
        }
    }
    return best;
}

/* ---- attention ---- */

/* Score of query row qi against key row kj (both already offset to the head), SAM bias included. */
static double attn_score_ref(const OpsAttention *a, const float *qr, const float *kr, int i, int j) {
    int D = a->head_dim;
    double dot = 0;
    for (int c = 0; c < D; c++) dot += (double)qr[c] * kr[c];
    double s = a->scale * dot;
    if (a->relpos_h) {
        int i1 = i / a->grid_w, j1 = i % a->grid_w, i2 = j / a->grid_w, j2 = j % a->grid_w;
        const float *rh = a->relpos_h + (size_t)(i1 - i2 + a->grid_h - 1) * D;
        const float *rw = a->relpos_w + (size_t)(j1 - j2 + a->grid_w - 1) * D;
        double th = 0, tw = 0;
        for (int c = 0; c < D; c++) {
            th += (double)qr[c] * rh[c];
            tw += (double)qr[c] * rw[c];
        }
        if (a->bf16_bias)
            s += bf16_round(bf16_round((float)th) + bf16_round((float)tw));
        else
            s += th + tw;
    }
    return s;
}

static void attn_check(const OpsAttention *a) {
    DS_ASSERT(a->n_batch >= 0 && a->tq >= 0 && a->tk > 0 && a->n_heads > 0 && a->head_dim > 0 && !a->io_bf16);
    int width = a->n_heads * a->head_dim;
    DS_ASSERT(a->ldq >= width && a->ldk >= width && a->ldv >= width && a->ldo >= width);
    DS_ASSERT(a->head_dim <= 512);
    if (a->relpos_h) {
        DS_ASSERT(a->relpos_w && a->grid_h > 0 && a->grid_w > 0);
        DS_ASSERT(a->tq == a->grid_h * a->grid_w && a->tk == a->tq);
    }
    if (a->causal) DS_ASSERT(a->q_offset >= 0);
}

void ops_attention_ref(const OpsAttention *a) {
    attn_check(a);
    int D = a->head_dim;
    double acc[512];
    for (int b = 0; b < a->n_batch; b++)
        for (int h = 0; h < a->n_heads; h++)
            for (int i = 0; i < a->tq; i++) {
                const float *qr = a->q + (size_t)(b * a->tq + i) * a->ldq + h * D;
                int nk = a->tk;
                if (a->causal && a->q_offset + i + 1 < nk) nk = a->q_offset + i + 1;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < nk; j++) {
                    double s = attn_score_ref(a, qr, a->k + (size_t)(b * a->tk + j) * a->ldk + h * D, i, j);
                    mx = s > mx ? s : mx;
                }
                for (int c = 0; c < D; c++) acc[c] = 0;
                for (int j = 0; j < nk; j++) {
                    double p = exp(attn_score_ref(a, qr, a->k + (size_t)(b * a->tk + j) * a->ldk + h * D, i, j) - mx);
                    sum += p;
                    const float *vr = a->v + (size_t)(b * a->tk + j) * a->ldv + h * D;
                    for (int c = 0; c < D; c++) acc[c] += p * vr[c];
                }
                float *o = a->out + (size_t)(b * a->tq + i) * a->ldo + h * D;
                for (int c = 0; c < D; c++) o[c] = (float)(acc[c] / sum);
            }
}

/* ---- KV cache ---- */

size_t kvcache_bytes(int n_layers, int width, int block_size, int n_blocks) {
    if (n_layers <= 0 || width <= 0 || block_size <= 0 || n_blocks <= 0) return 0;
    size_t r = 2 * sizeof(uint16_t);
    if (!ds_mul_ok(r, (size_t)n_layers, &r) || !ds_mul_ok(r, (size_t)width, &r) ||
        !ds_mul_ok(r, (size_t)block_size, &r) || !ds_mul_ok(r, (size_t)n_blocks, &r))
        return 0;
    return r;
}

DsocrStatus kvcache_new(KvCache *kv, int n_layers, int width, int block_size, int n_blocks, DsError *e) {
    return kvcache_new_typed(kv, n_layers, width, block_size, n_blocks, DS_BF16, e);
}

DsocrStatus kvcache_new_typed(KvCache *kv, int n_layers, int width, int block_size, int n_blocks, DsDtype dtype,
                              DsError *e) {
    memset(kv, 0, sizeof *kv);
    size_t bytes = kvcache_bytes(n_layers, width, block_size, n_blocks);
    if (dtype != DS_BF16 && dtype != DS_F32)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "KV cache: element type %s (bf16 or f32)", ds_dtype_name(dtype));
    if (dtype == DS_F32 && !ds_mul_ok(bytes, 2, &bytes)) bytes = 0;
    if (!bytes)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "KV cache: bad shape (%d layers, width %d, %d-token blocks, %d blocks)",
                       n_layers, width, block_size, n_blocks);
    kv->data = calloc(1, bytes);
    if (!kv->data) return ds_fail(e, DSOCR_E_NOMEM, "KV cache: cannot allocate %zu bytes", bytes);
    kv->dtype = dtype;
    kv->n_layers = n_layers;
    kv->width = width;
    kv->block_size = block_size;
    kv->n_blocks = n_blocks;
    return DSOCR_OK;
}

void kvcache_free(KvCache *kv) {
    if (!kv) return;
    free(kv->data);
    memset(kv, 0, sizeof *kv);
}

/* Element offset of the k (kv_idx 0) or v (1) row of position pos in the sequence with block table `table`. */
static inline size_t kv_row(const KvCache *kv, int layer, const int32_t *table, int pos, int kv_idx) {
    int32_t blk = table[pos / kv->block_size];
    DS_ASSERT(blk >= 0 && blk < kv->n_blocks);
    size_t row = ((size_t)(blk * kv->n_layers + layer) * 2 + kv_idx) * kv->block_size + pos % kv->block_size;
    return row * kv->width;
}

/* Element i of the pool, widened. */
static inline float kv_get(const KvCache *kv, size_t i) {
    return kv->dtype == DS_F32 ? ((const float *)kv->data)[i] : bf16_to_f32(((const uint16_t *)kv->data)[i]);
}

void kv_write(KvCache *kv, int layer, const int32_t *table, int pos0, int n, const float *k, int ldk, const float *v,
              int ldv) {
    DS_ASSERT(layer >= 0 && layer < kv->n_layers && pos0 >= 0 && n >= 0);
    for (int t = 0; t < n; t++) {
        size_t kr = kv_row(kv, layer, table, pos0 + t, 0), vr = kv_row(kv, layer, table, pos0 + t, 1);
        if (kv->dtype == DS_F32) {
            memcpy((float *)kv->data + kr, k + (size_t)t * ldk, sizeof(float) * (size_t)kv->width);
            memcpy((float *)kv->data + vr, v + (size_t)t * ldv, sizeof(float) * (size_t)kv->width);
            continue;
        }
        uint16_t *kd = (uint16_t *)kv->data + kr, *vd = (uint16_t *)kv->data + vr;
        for (int c = 0; c < kv->width; c++) {
            kd[c] = f32_to_bf16(k[(size_t)t * ldk + c]);
            vd[c] = f32_to_bf16(v[(size_t)t * ldv + c]);
        }
    }
}

static void attn_kv_check(const OpsAttentionKv *a) {
    DS_ASSERT(a->n >= 0 && a->n_heads > 0 && a->head_dim > 0 && a->head_dim <= 512);
    DS_ASSERT(a->n_heads * a->head_dim == a->kv->width && a->ldq >= a->kv->width && a->ldo >= a->kv->width);
    DS_ASSERT(a->layer >= 0 && a->layer < a->kv->n_layers && a->pos && a->tables);
}

void ops_attention_kv_ref(const OpsAttentionKv *a) {
    attn_kv_check(a);
    int D = a->head_dim;
    double acc[512];
    for (int r = 0; r < a->n; r++) {
        const int32_t *table = a->tables[a->seq ? a->seq[r] : 0];
        int nk = a->pos[r] + 1;
        DS_ASSERT(nk > 0);
        for (int h = 0; h < a->n_heads; h++) {
            const float *qr = a->q + (size_t)r * a->ldq + h * D;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < nk; j++) {
                size_t kr = kv_row(a->kv, a->layer, table, j, 0) + (size_t)h * D;
                double dot = 0;
                for (int c = 0; c < D; c++) dot += (double)qr[c] * kv_get(a->kv, kr + c);
                mx = a->scale * dot > mx ? a->scale * dot : mx;
            }
            for (int c = 0; c < D; c++) acc[c] = 0;
            for (int j = 0; j < nk; j++) {
                size_t kr = kv_row(a->kv, a->layer, table, j, 0) + (size_t)h * D;
                size_t vr = kv_row(a->kv, a->layer, table, j, 1) + (size_t)h * D;
                double dot = 0;
                for (int c = 0; c < D; c++) dot += (double)qr[c] * kv_get(a->kv, kr + c);
                double p = exp(a->scale * dot - mx);
                sum += p;
                for (int c = 0; c < D; c++) acc[c] += p * kv_get(a->kv, vr + c);
            }
            float *o = a->out + (size_t)r * a->ldo + h * D;
            for (int c = 0; c < D; c++) o[c] = (float)(acc[c] / sum);
            if (a->round_bf16) ops_round_bf16_ref(o, (size_t)D);
        }
    }
}

/* ---- RoPE ---- */

void ops_rope_neox_ref(float *x, int ld, int T, int n_heads, int head_dim, const int32_t *pos, float theta, int flags) {
    DS_ASSERT(head_dim > 0 && head_dim % 2 == 0 && ld >= n_heads * head_dim);
    int half = head_dim / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float inv = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
            float ang = (float)pos[t] * inv;
            float c = cosf(ang), s = sinf(ang);
            if (flags & OPS_BF16) {
                c = bf16_round(c);
                s = bf16_round(s);
            }
            for (int h = 0; h < n_heads; h++) {
                float *r = x + (size_t)t * ld + h * head_dim;
                float x1 = r[i], x2 = r[i + half];
                if (flags & OPS_BF16) {
                    r[i] = bf16_round(bf16_round(x1 * c) + bf16_round(-x2 * s));
                    r[i + half] = bf16_round(bf16_round(x2 * c) + bf16_round(x1 * s));
                } else {
                    r[i] = x1 * c - x2 * s;
                    r[i + half] = x2 * c + x1 * s;
                }
            }
        }
}

/* ---- conv2d ---- */

int ops_conv2d_out_h(const OpsConv2d *c) { return (c->in_h + 2 * c->pad - c->kh) / c->stride + 1; }
int ops_conv2d_out_w(const OpsConv2d *c) { return (c->in_w + 2 * c->pad - c->kw) / c->stride + 1; }

size_t ops_conv2d_scratch_floats(const OpsConv2d *c) {
    if (c->kh == 1 && c->kw == 1 && c->stride == 1 && c->pad == 0) return 0;
    return (size_t)ops_conv2d_out_h(c) * ops_conv2d_out_w(c) * c->in_c * c->kh * c->kw;
}

void ops_conv2d_ref(float *y, const float *x, const OpsConv2d *c, DsW w, DsW bias, float *scratch, size_t scratch_n) {
    DS_ASSERT(c->in_h > 0 && c->in_w > 0 && c->in_c > 0 && c->out_c > 0 && c->kh > 0 && c->kw > 0 && c->stride > 0 && c->pad >= 0);
    int Ho = ops_conv2d_out_h(c), Wo = ops_conv2d_out_w(c);
    DS_ASSERT(Ho > 0 && Wo > 0);
    for (int oy = 0; oy < Ho; oy++)
        for (int ox = 0; ox < Wo; ox++)
            for (int o = 0; o < c->out_c; o++) {
                double acc = bias.data ? ds_w_get(bias, o) : 0.0;
                for (int i = 0; i < c->in_c; i++)
                    for (int ky = 0; ky < c->kh; ky++) {
                        int iy = oy * c->stride - c->pad + ky;
                        if (iy < 0 || iy >= c->in_h) continue;
                        for (int kx = 0; kx < c->kw; kx++) {
                            int ix = ox * c->stride - c->pad + kx;
                            if (ix < 0 || ix >= c->in_w) continue;
                            acc += (double)x[((size_t)iy * c->in_w + ix) * c->in_c + i] *
                                   ds_w_get(w, (((size_t)o * c->in_c + i) * c->kh + ky) * c->kw + kx);
                        }
                    }
                y[((size_t)oy * Wo + ox) * c->out_c + o] = (float)acc;
            }
}

/* ---- resampling ---- */

enum { AA_MAX_TAPS = 1024 };

static double cubic_aa(double x) {
    const double a = -0.5;
    if (x < 0) x = -x;
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
}

/* Taps of output index o for an in→out axis: first input index, count, and normalised weights. */
static int aa_taps(int in, int out, int o, int *first, double *wts) {
    double scale = (double)in / out;
    double fs = scale > 1 ? scale : 1;
    double support = 2 * fs, center = (o + 0.5) * scale;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in) xmax = in;
    int n = xmax - xmin;
    DS_ASSERT(n > 0 && n <= AA_MAX_TAPS);
    double total = 0;
    for (int j = 0; j < n; j++) {
        wts[j] = cubic_aa((j + xmin - center + 0.5) / fs);
        total += wts[j];
    }
    if (total != 0)
        for (int j = 0; j < n; j++) wts[j] /= total;
    *first = xmin;
    return n;
}

void ops_resample_bicubic_aa(float *out, const float *in, int C, int in_h, int in_w, int out_h, int out_w, int hwc) {
    DS_ASSERT(C > 0 && in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0);
    size_t ics = hwc ? 1 : (size_t)in_h * in_w, iys = hwc ? (size_t)in_w * C : (size_t)in_w, ixs = hwc ? (size_t)C : 1;
    size_t ocs = hwc ? 1 : (size_t)out_h * out_w, oys = hwc ? (size_t)out_w * C : (size_t)out_w,
           oxs = hwc ? (size_t)C : 1;
    double wy[AA_MAX_TAPS], wx[AA_MAX_TAPS];
    for (int oy = 0; oy < out_h; oy++) {
        int y0, ny = aa_taps(in_h, out_h, oy, &y0, wy);
        for (int ox = 0; ox < out_w; ox++) {
            int x0, nx = aa_taps(in_w, out_w, ox, &x0, wx);
            for (int c = 0; c < C; c++) {
                double acc = 0;
                for (int j = 0; j < ny; j++) {
                    const float *row = in + c * ics + (size_t)(y0 + j) * iys;
                    double h = 0;
                    for (int i = 0; i < nx; i++) h += wx[i] * row[(size_t)(x0 + i) * ixs];
                    acc += wy[j] * h;
                }
                out[c * ocs + oy * oys + ox * oxs] = (float)acc;
            }
        }
    }
}

void ops_resample_linear_1d(float *out, const float *in, int in_len, int out_len, int C) {
    DS_ASSERT(in_len > 0 && out_len > 0 && C > 0);
    float scale = (float)in_len / (float)out_len;
    for (int o = 0; o < out_len; o++) {
        float src = scale * ((float)o + 0.5f) - 0.5f;
        if (src < 0) src = 0;
        int i0 = (int)src;
        if (i0 > in_len - 1) i0 = in_len - 1;
        int i1 = i0 < in_len - 1 ? i0 + 1 : i0;
        float l1 = src - (float)i0, l0 = 1.0f - l1;
        for (int c = 0; c < C; c++)
            out[(size_t)o * C + c] = l0 * in[(size_t)i0 * C + c] + l1 * in[(size_t)i1 * C + c];
    }
}

/* ---- MoE ---- */

void ops_moe_route(const float *logits, int ld, int M, int n_experts, int k, int flags, int32_t *idx, float *wts) {
    DS_ASSERT(n_experts > 0 && n_experts <= 256 && k > 0 && k <= n_experts && M >= 0);
    float p[256];
    unsigned char taken[256];
    for (int m = 0; m < M; m++) {
        const float *l = logits + (size_t)m * ld;
        float mx = -INFINITY, sum = 0;
        for (int e = 0; e < n_experts; e++) {
            p[e] = (flags & OPS_BF16) ? bf16_round(l[e]) : l[e];
            mx = p[e] > mx ? p[e] : mx;
        }
        for (int e = 0; e < n_experts; e++) {
            p[e] = expf(p[e] - mx);
            sum += p[e];
        }
        for (int e = 0; e < n_experts; e++) {
            p[e] /= sum;
            taken[e] = 0;
        }
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < n_experts; e++)
                if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
            taken[best] = 1;
            idx[(size_t)m * k + j] = best;
            wts[(size_t)m * k + j] = p[best];
        }
    }
}

size_t ops_expert_ffn_scratch_floats(int M, int d_ff) { return 2 * (size_t)M * d_ff; }

void ops_expert_ffn_ref(float *y, const float *x, int M, int d_model, int d_ff, DsW gate, DsW up, DsW down,
                        int flags, float *scratch) {
    float *g = scratch, *u = scratch + (size_t)M * d_ff;
    ops_linear_ref(g, d_ff, x, d_model, M, d_model, gate, d_ff, ds_w_none(), 0);
    ops_linear_ref(u, d_ff, x, d_model, M, d_model, up, d_ff, ds_w_none(), 0);
    if (flags & OPS_BF16) {
        ops_round_bf16_ref(g, (size_t)M * d_ff);
        ops_round_bf16_ref(u, (size_t)M * d_ff);
    }
    ops_silu_mul_ref(g, g, u, (size_t)M * d_ff, flags);
    ops_linear_ref(y, d_model, g, d_ff, M, d_ff, down, d_model, ds_w_none(), 0);
    if (flags & OPS_BF16) ops_round_bf16_ref(y, (size_t)M * d_model);
}
