/* image.c: decode dispatch and Pillow's conversion rules, EXIF orientation, Pillow-exact BICUBIC resize,
 * fit-and-pad, tile grid, view plan, views and normalisation (contracts in image.h; spec §4, §5.5, §16).
 * The per-format decoders live in image_codecs.c and image_bmp.c, the EXIF parser in exif.c. */
#include "image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image_codec.h"

DsocrStatus image_new(DsImage *im, int w, int h, DsError *e) {
    memset(im, 0, sizeof *im);
    if (w < 1 || h < 1 || (long long)w * h > IMAGE_MAX_PIXELS)
        return ds_fail(e, DSOCR_E_IMAGE, "image size %dx%d is out of range (1..%lld pixels)", w, h,
                       (long long)IMAGE_MAX_PIXELS);
    im->rgb = malloc((size_t)w * (size_t)h * 3);
    if (!im->rgb) return ds_fail(e, DSOCR_E_NOMEM, "out of memory for a %dx%d image", w, h);
    im->w = w;
    im->h = h;
    return DSOCR_OK;
}

void image_free(DsImage *im) {
    if (!im) return;
    free(im->rgb);
    memset(im, 0, sizeof *im);
}

/* ---------------------------------------------------------------------------------------------------------
 * Format sniffing and decode dispatch */

ImageFormat image_sniff(const uint8_t *b, size_t n) {
    if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return IMAGE_FMT_JPEG;
    if (n >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8)) return IMAGE_FMT_PNG;
    if (n >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4)) return IMAGE_FMT_WEBP;
    if (n >= 6 && (!memcmp(b, "GIF87a", 6) || !memcmp(b, "GIF89a", 6))) return IMAGE_FMT_GIF;
    if (n >= 2 && b[0] == 'B' && b[1] == 'M') return IMAGE_FMT_BMP;
    if (n >= 4 && (!memcmp(b, "II*\0", 4) || !memcmp(b, "MM\0*", 4) || !memcmp(b, "II+\0", 4) ||
                   !memcmp(b, "MM\0+", 4)))
        return IMAGE_FMT_TIFF;
    return IMAGE_FMT_UNKNOWN;
}

const char *image_format_name(ImageFormat f) {
    switch (f) {
    case IMAGE_FMT_JPEG: return "JPEG";
    case IMAGE_FMT_PNG: return "PNG";
    case IMAGE_FMT_WEBP: return "WebP";
    case IMAGE_FMT_GIF: return "GIF";
    case IMAGE_FMT_BMP: return "BMP";
    case IMAGE_FMT_TIFF: return "TIFF";
    default: return "unknown";
    }
}

DsocrStatus image_check_dims(const char *fmt, long long w, long long h, double bytes_per_pixel, size_t len,
                             double max_ratio, long long max_pixels, DsError *e) {
    if (w < 1 || h < 1) return ds_fail(e, DSOCR_E_IMAGE, "%s: image has no pixels (%lldx%lld)", fmt, w, h);
    if (w > (1LL << 30) || h > (1LL << 30))
        return ds_fail(e, DSOCR_E_IMAGE, "%s: image is %lldx%lld, more than the limit of %lld pixels", fmt, w, h,
                       max_pixels);
    if (w * h > max_pixels)
        return ds_fail(e, DSOCR_E_IMAGE, "%s: image is %lldx%lld = %lld pixels, more than the limit of %lld",
                       fmt, w, h, w * h, max_pixels);
    if (max_ratio > 0) {
        double raw = (double)w * (double)h * bytes_per_pixel;
        if (raw > ((double)len + 1.0) * max_ratio)
            return ds_fail(e, DSOCR_E_IMAGE,
                           "%s: header claims %lldx%lld pixels, more than a %zu-byte file could hold", fmt, w, h,
                           len);
    }
    return DSOCR_OK;
}

DsocrStatus image_raw_alloc(ImageRaw *raw, int w, int h, int want_alpha, DsError *e) {
    size_t n = (size_t)w * (size_t)h;
    raw->w = w;
    raw->h = h;
    raw->rgb = malloc(n * 3);
    raw->alpha = want_alpha ? malloc(n) : NULL;
    if (!raw->rgb || (want_alpha && !raw->alpha)) {
        image_raw_free(raw);
        return ds_fail(e, DSOCR_E_NOMEM, "out of memory decoding a %dx%d image", w, h);
    }
    if (raw->alpha) memset(raw->alpha, 255, n);
    return DSOCR_OK;
}

void image_raw_free(ImageRaw *raw) {
    free(raw->rgb);
    free(raw->alpha);
    raw->rgb = raw->alpha = NULL;
}

/* Pillow's x*y/255 with rounding as its MULDIV255 macro computes it. */
static inline int muldiv255(int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

void image_cmyk_to_rgb(const uint8_t *cmyk, uint8_t *rgb, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int nk = 255 - cmyk[4 * i + 3];
        for (int c = 0; c < 3; c++) {
            int v = nk - muldiv255(cmyk[4 * i + c], nk);
            rgb[3 * i + c] = (uint8_t)(v < 0 ? 0 : v);
        }
    }
}

/* Pillow's paste(img, mask=alpha) of each channel over a white canvas: DIV255(in*a + 255*(255-a)). */
static void composite_white(ImageRaw *raw) {
    size_t n = (size_t)raw->w * (size_t)raw->h;
    for (size_t i = 0; i < n; i++) {
        int a = raw->alpha[i];
        if (a == 255) continue;
        for (int c = 0; c < 3; c++) {
            int t = raw->rgb[3 * i + c] * a + 255 * (255 - a) + 128;
            raw->rgb[3 * i + c] = (uint8_t)(((t >> 8) + t) >> 8);
        }
    }
}

DsocrStatus image_decode(const uint8_t *bytes, size_t len, const ImageDecodeOptions *opt, DsImage *out,
                         DsError *e) {
    memset(out, 0, sizeof *out);
    ImageDecodeOptions o = {0};
    if (opt) o = *opt;
    if (o.max_pixels <= 0 || o.max_pixels > IMAGE_MAX_PIXELS) o.max_pixels = IMAGE_MAX_PIXELS;
    if (!bytes || len == 0) return ds_fail(e, DSOCR_E_IMAGE, "image is empty (0 bytes)");
    ImageFormat f = image_sniff(bytes, len);
    ImageRaw raw = {0};
    DsocrStatus st;
    switch (f) {
    case IMAGE_FMT_JPEG: st = image_decode_jpeg(bytes, len, &o, &raw, e); break;
    case IMAGE_FMT_PNG: st = image_decode_png(bytes, len, &o, &raw, e); break;
    case IMAGE_FMT_WEBP: st = image_decode_webp(bytes, len, &o, &raw, e); break;
    case IMAGE_FMT_GIF: st = image_decode_gif(bytes, len, &o, &raw, e); break;
    case IMAGE_FMT_BMP: st = image_decode_bmp(bytes, len, &o, &raw, e); break;
    case IMAGE_FMT_TIFF: st = image_decode_tiff(bytes, len, &o, &raw, e); break;
    default:
        return ds_fail(e, DSOCR_E_IMAGE,
                       "not a supported image (%zu bytes; expected JPEG, PNG, WebP, GIF, BMP or TIFF)", len);
    }
    if (st != DSOCR_OK) {
        image_raw_free(&raw);
        return st;
    }
    if (raw.alpha && o.alpha_white) composite_white(&raw);
    free(raw.alpha);
    out->w = raw.w;
    out->h = raw.h;
    out->rgb = raw.rgb;
    if (!o.ignore_exif && raw.orientation >= 2 && raw.orientation <= 8) {
        st = image_orient(out, raw.orientation, e);
        if (st != DSOCR_OK) image_free(out);
    }
    return st;
}

/* ---------------------------------------------------------------------------------------------------------
 * Orientation (Pillow Image.transpose as chosen by ImageOps.exif_transpose) */

DsocrStatus image_orient(DsImage *im, int orientation, DsError *e) {
    if (orientation < 2 || orientation > 8) return DSOCR_OK;
    int w = im->w, h = im->h;
    int swap = orientation >= 5;
    int ow = swap ? h : w, oh = swap ? w : h;
    uint8_t *dst = malloc((size_t)w * (size_t)h * 3);
    if (!dst) return ds_fail(e, DSOCR_E_NOMEM, "out of memory rotating a %dx%d image", w, h);
    for (int y = 0; y < oh; y++) {
        for (int x = 0; x < ow; x++) {
            int sx, sy;
            switch (orientation) {
            case 2: sx = w - 1 - x; sy = y; break;          /* FLIP_LEFT_RIGHT */
            case 3: sx = w - 1 - x; sy = h - 1 - y; break;  /* ROTATE_180 */
            case 4: sx = x; sy = h - 1 - y; break;          /* FLIP_TOP_BOTTOM */
            case 5: sx = y; sy = x; break;                  /* TRANSPOSE */
            case 6: sx = y; sy = h - 1 - x; break;          /* ROTATE_270 (90 clockwise) */
            case 7: sx = w - 1 - y; sy = h - 1 - x; break;  /* TRANSVERSE */
            default: sx = w - 1 - y; sy = x; break;         /* 8: ROTATE_90 (90 counter-clockwise) */
            }
            memcpy(dst + ((size_t)y * ow + x) * 3, im->rgb + ((size_t)sy * w + sx) * 3, 3);
        }
    }
    free(im->rgb);
    im->rgb = dst;
    im->w = ow;
    im->h = oh;
    return DSOCR_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Pillow BICUBIC resampling (spec §4.6): per axis, fixed-point coefficients with 22 fractional bits. */

#define RS_PRECISION 22

static double bicubic_kernel(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

typedef struct Coeffs {
    int ksize;
    int *bounds; /* [out][2]: first tap, number of taps */
    int *k;      /* [out][ksize] fixed-point weights */
} Coeffs;

static int coeffs_make(int in_size, int out_size, Coeffs *c) {
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    c->ksize = ksize;
    c->bounds = malloc(sizeof(int) * 2 * (size_t)out_size);
    c->k = calloc((size_t)out_size * (size_t)ksize, sizeof(int));
    double *pre = malloc(sizeof(double) * (size_t)ksize);
    if (!c->bounds || !c->k || !pre) {
        free(c->bounds);
        free(c->k);
        free(pre);
        return -1;
    }
    double ss = 1.0 / filterscale;
    for (int o = 0; o < out_size; o++) {
        double center = (o + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            double w = bicubic_kernel((x + xmin - center + 0.5) * ss);
            pre[x] = w;
            ww += w;
        }
        int *k = c->k + (size_t)o * ksize;
        for (int x = 0; x < xmax; x++) {
            double w = ww != 0.0 ? pre[x] / ww : pre[x];
            k[x] = w < 0 ? (int)(-0.5 + w * (1 << RS_PRECISION)) : (int)(0.5 + w * (1 << RS_PRECISION));
        }
        c->bounds[2 * o] = xmin;
        c->bounds[2 * o + 1] = xmax;
    }
    free(pre);
    return 0;
}

static void coeffs_free(Coeffs *c) {
    free(c->bounds);
    free(c->k);
}

static inline uint8_t clip8(int64_t v) {
    if (v >= ((int64_t)1 << RS_PRECISION << 8)) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> RS_PRECISION);
}

/* src: [h][sw][3] -> dst: [h][dw][3] */
static void resample_h(const uint8_t *src, int sw, int h, uint8_t *dst, int dw, const Coeffs *c) {
    for (int y = 0; y < h; y++) {
        const uint8_t *row = src + (size_t)y * sw * 3;
        uint8_t *out = dst + (size_t)y * dw * 3;
        for (int x = 0; x < dw; x++) {
            int xmin = c->bounds[2 * x], n = c->bounds[2 * x + 1];
            const int *k = c->k + (size_t)x * c->ksize;
            int64_t s0 = 1 << (RS_PRECISION - 1), s1 = s0, s2 = s0;
            for (int t = 0; t < n; t++) {
                const uint8_t *p = row + (size_t)(xmin + t) * 3;
                s0 += (int64_t)p[0] * k[t];
                s1 += (int64_t)p[1] * k[t];
                s2 += (int64_t)p[2] * k[t];
            }
            out[3 * x] = clip8(s0);
            out[3 * x + 1] = clip8(s1);
            out[3 * x + 2] = clip8(s2);
        }
    }
}

/* src: [sh][w][3] -> dst: [dh][w][3] */
static void resample_v(const uint8_t *src, int w, uint8_t *dst, int dh, const Coeffs *c) {
    size_t stride = (size_t)w * 3;
    for (int y = 0; y < dh; y++) {
        int ymin = c->bounds[2 * y], n = c->bounds[2 * y + 1];
        const int *k = c->k + (size_t)y * c->ksize;
        uint8_t *out = dst + (size_t)y * stride;
        for (size_t i = 0; i < stride; i++) {
            int64_t s = 1 << (RS_PRECISION - 1);
            for (int t = 0; t < n; t++) s += (int64_t)src[(size_t)(ymin + t) * stride + i] * k[t];
            out[i] = clip8(s);
        }
    }
}

DsocrStatus image_resize_bicubic(const DsImage *src, int ow, int oh, DsImage *dst, DsError *e) {
    memset(dst, 0, sizeof *dst);
    if (!src->rgb || src->w < 1 || src->h < 1) return ds_fail(e, DSOCR_E_INVALID_ARG, "resize of an empty image");
    DsocrStatus st = image_new(dst, ow, oh, e);
    if (st != DSOCR_OK) return st;
    int need_h = ow != src->w, need_v = oh != src->h;
    if (!need_h && !need_v) {
        memcpy(dst->rgb, src->rgb, (size_t)ow * oh * 3);
        return DSOCR_OK;
    }
    Coeffs ch = {0}, cv = {0};
    uint8_t *tmp = NULL;
    if ((need_h && coeffs_make(src->w, ow, &ch)) || (need_v && coeffs_make(src->h, oh, &cv))) goto nomem;
    if (need_h && need_v) {
        /* Only the rows the vertical pass reads are resampled horizontally (Pillow does the same). */
        int y0 = cv.bounds[0], y1 = cv.bounds[2 * (oh - 1)] + cv.bounds[2 * (oh - 1) + 1];
        tmp = malloc((size_t)ow * (size_t)(y1 - y0) * 3);
        if (!tmp) goto nomem;
        resample_h(src->rgb + (size_t)y0 * src->w * 3, src->w, y1 - y0, tmp, ow, &ch);
        for (int y = 0; y < oh; y++) cv.bounds[2 * y] -= y0;
        resample_v(tmp, ow, dst->rgb, oh, &cv);
    } else if (need_h) {
        resample_h(src->rgb, src->w, src->h, dst->rgb, ow, &ch);
    } else {
        resample_v(src->rgb, src->w, dst->rgb, oh, &cv);
    }
    free(tmp);
    coeffs_free(&ch);
    coeffs_free(&cv);
    return DSOCR_OK;
nomem:
    free(tmp);
    coeffs_free(&ch);
    coeffs_free(&cv);
    image_free(dst);
    return ds_fail(e, DSOCR_E_NOMEM, "out of memory resizing to %dx%d", ow, oh);
}

/* ---------------------------------------------------------------------------------------------------------
 * Fit-and-pad (ImageOps.contain + pad) */

void image_fit_size(int w, int h, int side, int *nw, int *nh, int *x0, int *y0) {
    double im_ratio = (double)w / (double)h;
    *nw = side;
    *nh = side;
    if (im_ratio != 1.0) {
        if (im_ratio > 1.0) {
            int v = (int)nearbyint((double)h / (double)w * side);
            *nh = v < 1 ? 1 : v;
        } else {
            int v = (int)nearbyint((double)w / (double)h * side);
            *nw = v < 1 ? 1 : v;
        }
    }
    *x0 = *nw != side ? (int)nearbyint((side - *nw) * 0.5) : 0;
    *y0 = *nw == side && *nh != side ? (int)nearbyint((side - *nh) * 0.5) : 0;
}

DsocrStatus image_fit_pad(const DsImage *src, int side, uint8_t fill, DsImage *dst, DsError *e) {
    memset(dst, 0, sizeof *dst);
    int nw, nh, x0, y0;
    image_fit_size(src->w, src->h, side, &nw, &nh, &x0, &y0);
    DsImage r;
    DsocrStatus st = image_resize_bicubic(src, nw, nh, &r, e);
    if (st != DSOCR_OK) return st;
    if (nw == side && nh == side) {
        *dst = r;
        return DSOCR_OK;
    }
    st = image_new(dst, side, side, e);
    if (st != DSOCR_OK) {
        image_free(&r);
        return st;
    }
    memset(dst->rgb, fill, (size_t)side * side * 3);
    for (int y = 0; y < nh; y++)
        memcpy(dst->rgb + ((size_t)(y + y0) * side + x0) * 3, r.rgb + (size_t)y * nw * 3, (size_t)nw * 3);
    image_free(&r);
    return DSOCR_OK;
}

/* ---------------------------------------------------------------------------------------------------------
 * Tile grid (dynamic_preprocess). The candidate order is CPython's: a set of (i, j) sorted (stably) by i*j.
 * For the official (2, 9) and (2, 6) the orders are tabulated (spec §4.4, checked against CPython in
 * tests/py/test_image_pillow.py); other limits use i-major order within equal products, which differs only on
 * exact float ties between different aspect ratios. */

static const int GRID_ORDER_9[][2] = {{1, 2}, {2, 1}, {3, 1}, {1, 3}, {2, 2}, {4, 1}, {1, 4}, {5, 1},
                                      {1, 5}, {1, 6}, {6, 1}, {3, 2}, {2, 3}, {7, 1}, {1, 7}, {4, 2},
                                      {2, 4}, {1, 8}, {8, 1}, {1, 9}, {3, 3}, {9, 1}};
static const int GRID_ORDER_6[][2] = {{1, 2}, {2, 1}, {3, 1}, {1, 3}, {4, 1}, {1, 4}, {2, 2},
                                      {1, 5}, {5, 1}, {6, 1}, {2, 3}, {1, 6}, {3, 2}};

void image_grid(int w, int h, int tile_side, int min_tiles, int max_tiles, int *tw, int *th) {
    int cand[128][2], nc = 0;
    if (min_tiles == 2 && max_tiles == 9) {
        nc = (int)(sizeof GRID_ORDER_9 / sizeof GRID_ORDER_9[0]);
        memcpy(cand, GRID_ORDER_9, sizeof GRID_ORDER_9);
    } else if (min_tiles == 2 && max_tiles == 6) {
        nc = (int)(sizeof GRID_ORDER_6 / sizeof GRID_ORDER_6[0]);
        memcpy(cand, GRID_ORDER_6, sizeof GRID_ORDER_6);
    } else {
        if (max_tiles > 32) max_tiles = 32;
        for (int p = min_tiles < 1 ? 1 : min_tiles; p <= max_tiles; p++)
            for (int i = 1; i <= p; i++)
                if (p % i == 0 && nc < 128) {
                    cand[nc][0] = i;
                    cand[nc][1] = p / i;
                    nc++;
                }
    }
    double ar = (double)w / (double)h;
    double best = INFINITY;
    double area = (double)w * (double)h;
    int bw = 1, bh = 1;
    for (int c = 0; c < nc; c++) {
        int i = cand[c][0], j = cand[c][1];
        double d = fabs(ar - (double)i / (double)j);
        if (d < best) {
            best = d;
            bw = i;
            bh = j;
        } else if (d == best && area > 0.5 * tile_side * tile_side * i * j) {
            bw = i;
            bh = j;
        }
    }
    *tw = bw;
    *th = bh;
}

/* ---------------------------------------------------------------------------------------------------------
 * Modes, plans, views */

int image_mode_by_name(const char *name, ImageMode *m) {
    static const struct {
        const char *name;
        ImageMode m;
    } modes[] = {{"tiny", {512, 512, 0}},
                 {"small", {640, 640, 0}},
                 {"base", {1024, 1024, 0}},
                 {"large", {1280, 1280, 0}},
                 {"gundam", {1024, 640, 1}}};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (name && !strcmp(name, modes[i].name)) {
            *m = modes[i].m;
            return 0;
        }
    return -1;
}

DsocrStatus image_mode_check(const ImageMode *m, DsError *e) {
    const int sz[2] = {m->base_size, m->image_size};
    const char *nm[2] = {"base_size", "image_size"};
    for (int i = 0; i < 2; i++)
        if (sz[i] < 512 || sz[i] > 1280 || sz[i] % 64)
            return ds_fail(e, DSOCR_E_INVALID_ARG, "%s %d: must be a multiple of 64 from 512 to 1280", nm[i],
                           sz[i]);
    return DSOCR_OK;
}

int image_slots(int n_global, int tw, int th, int n_tile) {
    int s = n_global * (n_global + 1) + 1;
    if (tw > 0 && th > 0) s += (th * n_tile) * (tw * n_tile + 1);
    return s;
}

DsocrStatus image_plan(int w, int h, const ImageMode *m, int max_tiles, ImagePlan *p, DsError *e) {
    memset(p, 0, sizeof *p);
    DsocrStatus st = image_mode_check(m, e);
    if (st != DSOCR_OK) return st;
    if (w < 1 || h < 1) return ds_fail(e, DSOCR_E_INVALID_ARG, "image size %dx%d has no pixels", w, h);
    if (max_tiles < IMAGE_MIN_TILES || max_tiles > 32)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "max_tiles %d: must be from %d to 32", max_tiles, IMAGE_MIN_TILES);
    p->src_w = w;
    p->src_h = h;
    if (m->crop_mode) {
        p->global_side = m->base_size;
        if (w > IMAGE_TILE_THRESHOLD || h > IMAGE_TILE_THRESHOLD) {
            p->tile_side = m->image_size;
            image_grid(w, h, m->image_size, IMAGE_MIN_TILES, max_tiles, &p->tw, &p->th);
            p->n_tiles = p->tw * p->th;
            p->n_tile = image_view_n(p->tile_side);
        }
    } else {
        p->global_side = m->image_size;
        p->global_direct = m->image_size <= 640;
    }
    p->n_global = image_view_n(p->global_side);
    p->n_views = p->n_tiles + 1;
    p->n_slots = image_slots(p->n_global, p->tw, p->th, p->n_tile);
    return DSOCR_OK;
}

DsocrStatus image_make_views(const DsImage *im, const ImagePlan *p, DsImage *views, DsError *e) {
    for (int v = 0; v < p->n_views; v++) memset(&views[v], 0, sizeof views[v]);
    if (im->w != p->src_w || im->h != p->src_h)
        return ds_fail(e, DSOCR_E_INVALID_ARG, "plan is for %dx%d, image is %dx%d", p->src_w, p->src_h, im->w,
                       im->h);
    DsocrStatus st = DSOCR_OK;
    if (p->n_tiles > 0) {
        int T = p->tile_side;
        DsImage big;
        st = image_resize_bicubic(im, p->tw * T, p->th * T, &big, e);
        if (st != DSOCR_OK) return st;
        for (int k = 0; k < p->n_tiles && st == DSOCR_OK; k++) {
            st = image_new(&views[k], T, T, e);
            if (st != DSOCR_OK) break;
            int x0 = (k % p->tw) * T, y0 = (k / p->tw) * T;
            for (int y = 0; y < T; y++)
                memcpy(views[k].rgb + (size_t)y * T * 3, big.rgb + ((size_t)(y0 + y) * big.w + x0) * 3,
                       (size_t)T * 3);
        }
        image_free(&big);
    }
    if (st == DSOCR_OK) {
        DsImage *g = &views[p->n_tiles];
        if (p->global_direct)
            st = image_resize_bicubic(im, p->global_side, p->global_side, g, e);
        else
            st = image_fit_pad(im, p->global_side, IMAGE_PAD_FILL, g, e);
    }
    if (st != DSOCR_OK)
        for (int v = 0; v < p->n_views; v++) image_free(&views[v]);
    return st;
}

void image_normalize(const DsImage *view, float *chw) {
    size_t n = (size_t)view->w * (size_t)view->h;
    float lut[256];
    for (int i = 0; i < 256; i++) {
        float t = (float)i / 255.0f; /* float32 steps as torch takes them: div, then sub, then div */
        lut[i] = bf16_round((t - 0.5f) / 0.5f);
    }
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < n; i++) chw[(size_t)c * n + i] = lut[view->rgb[3 * i + c]];
}
