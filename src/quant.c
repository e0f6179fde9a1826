/* quant.c: see quant.h. The scalar specification of the Q8_0 and Q4_0 formats: quantise, dequantise, sizes.
 * Rounding follows ggml's reference quantisers so that our bytes equal llama.cpp's for the same floats:
 * the scale d is computed in fp32, the elements are multiplied by id = 1/d (0 when d == 0) rather than divided
 * by d, and only then is d stored as fp16. */
#include "quant.h"

#include <math.h>

#include "util.h"

int quant_is_block(DsDtype t) { return t == DS_Q8_0 || t == DS_Q4_0; }

size_t quant_row_bytes(DsDtype t, int64_t n) {
    if (n < 0) return 0;
    if (quant_is_block(t)) {
        if (n % QK) return 0;
        return (size_t)(n / QK) * (t == DS_Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0));
    }
    return (size_t)n * ds_dtype_size(t);
}

/* roundf (halves away from zero) for |v| < 2^31, written out: without -ffast-math GCC calls libm's roundf for every
 * element, and that call was most of the time `--quant q8_0` spent quantising at load. v − t is exact here. */
static inline int round_half_away(float v) {
    int t = (int)v;
    const float r = v - (float)t;
    return t + (r >= 0.5f) - (r <= -0.5f);
}

void quant_q8_0_ref(BlockQ8_0 *dst, const float *x, int64_t n) {
    DS_ASSERT(n % QK == 0);
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = 0.0f; /* fmaxf(amax, |x|), NaN skipped as fmaxf does, inline */
        for (int j = 0; j < QK; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        dst[b].d = f32_to_fp16(d);
        for (int j = 0; j < QK; j++) dst[b].q[j] = (int8_t)round_half_away(x[j] * id);
    }
}

void quant_q4_0_ref(BlockQ4_0 *dst, const float *x, int64_t n) {
    DS_ASSERT(n % QK == 0);
    for (int64_t b = 0; b < n / QK; b++, x += QK) {
        float amax = 0.0f, max = 0.0f; /* max: the first element of largest magnitude, with its sign */
        for (int j = 0; j < QK; j++)
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        /* x·id lies in [−8, 8]; +8.5 then truncation rounds half up onto 0..16, and 16 (only the element
         * opposite in sign to max at full magnitude) is clamped to 15. An all-zero block gets d = −0. */
        float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        dst[b].d = f32_to_fp16(d);
        for (int j = 0; j < QK / 2; j++) {
            int lo = (int8_t)(x[j] * id + 8.5f), hi = (int8_t)(x[j + QK / 2] * id + 8.5f);
            if (lo > 15) lo = 15;
            if (hi > 15) hi = 15;
            dst[b].q[j] = (uint8_t)(lo | hi << 4);
        }
    }
}

void dequant_q8_0_ref(float *y, const BlockQ8_0 *src, int64_t n) {
    DS_ASSERT(n % QK == 0);
    for (int64_t b = 0; b < n / QK; b++, y += QK) {
        float d = fp16_to_f32(src[b].d);
        for (int j = 0; j < QK; j++) y[j] = (float)src[b].q[j] * d;
    }
}

void dequant_q4_0_ref(float *y, const BlockQ4_0 *src, int64_t n) {
    DS_ASSERT(n % QK == 0);
    for (int64_t b = 0; b < n / QK; b++, y += QK) {
        float d = fp16_to_f32(src[b].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)((src[b].q[j] & 0x0f) - 8) * d;
            y[j + QK / 2] = (float)((src[b].q[j] >> 4) - 8) * d;
        }
    }
}

void quant_row_ref(DsDtype t, void *dst, const float *x, int64_t n) {
    DS_ASSERT(quant_is_block(t));
    if (t == DS_Q8_0)
        quant_q8_0_ref(dst, x, n);
    else
        quant_q4_0_ref(dst, x, n);
}

void dequant_row_ref(DsDtype t, float *y, const void *src, int64_t n) {
    DS_ASSERT(quant_is_block(t));
    if (t == DS_Q8_0)
        dequant_q8_0_ref(y, src, n);
    else
        dequant_q4_0_ref(y, src, n);
}

/* ---- which tensors to quantise (shared by `dsocr quantize` and load-time quantisation) ---- */

static int name_ends(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

DsDtype quant_choose(const char *name, int ndim, const int64_t *shape, DsDtype target) {
    if (target != DS_Q8_0 && target != DS_Q4_0) return DS_BF16;
    if (ndim != 2 || shape[1] % QK) return DS_BF16;
    int lm_head = !strcmp(name, "lm_head.weight");
    int dec = !strncmp(name, "model.layers.", 13) &&
              (strstr(name, ".self_attn.") || strstr(name, ".mlp.experts.") || strstr(name, ".mlp.shared_experts.") ||
               name_ends(name, ".mlp.gate_proj.weight") || name_ends(name, ".mlp.up_proj.weight") ||
               name_ends(name, ".mlp.down_proj.weight"));
    if (!lm_head && !dec) return DS_BF16; /* vision, embeddings, norms, router (mlp.gate) */
    if (target == DS_Q4_0 && strstr(name, ".mlp.experts.")) return DS_Q4_0;
    return DS_Q8_0;
}
