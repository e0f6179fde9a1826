/* image_codecs.c: JPEG, PNG, WebP, GIF and TIFF decoding from memory through Debian's libraries
 * (libjpeg-turbo, libpng, libwebp, giflib, libtiff), converted to RGB with Pillow 9.4's rules (spec §16 R9):
 * 16-bit grey clipped at 255, other 16-bit samples keep their high byte, palettes looked up (entries past the
 * palette read as the grey ramp (i, i, i), as Pillow's palette starts), 1-bit 0/255, CMYK naively inverted,
 * alpha dropped (or kept in ImageRaw.alpha for compositing). Library errors come back as messages: libjpeg and
 * libpng through longjmp from their error hooks, giflib through its error codes, libtiff through per-handle
 * handlers; nothing is printed. Sizes are checked before the pixel buffers are allocated. */
#include <stdio.h> /* before jpeglib.h, which needs FILE */

#include <gif_lib.h>
#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>
#include <webp/decode.h>

#include "image_codec.h"

static void palette_ramp(uint8_t pal[256][3]) {
    for (int i = 0; i < 256; i++) pal[i][0] = pal[i][1] = pal[i][2] = (uint8_t)i;
}

/* =========================================================================================================
 * JPEG */

typedef struct JpegErr {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX + 64];
} JpegErr;

static void jpeg_err_exit(j_common_ptr c) {
    JpegErr *je = (JpegErr *)c->err;
    c->err->format_message(c, je->msg);
    longjmp(je->jb, 1);
}
static void jpeg_emit(j_common_ptr c, int level) {
    (void)level;
    c->err->num_warnings++;
}
static void jpeg_output(j_common_ptr c) { (void)c; }

static void src_init(j_decompress_ptr c) { (void)c; }
static boolean src_fill(j_decompress_ptr c) {
    JpegErr *je = (JpegErr *)c->err;
    snprintf(je->msg, sizeof je->msg, "file is truncated");
    longjmp(je->jb, 1);
}
static void src_skip(j_decompress_ptr c, long n) {
    if (n <= 0) return;
    if ((size_t)n > c->src->bytes_in_buffer) src_fill(c);
    c->src->next_input_byte += n;
    c->src->bytes_in_buffer -= (size_t)n;
}
static void src_term(j_decompress_ptr c) { (void)c; }

static void jpeg_progress(j_common_ptr c) {
    j_decompress_ptr d = (j_decompress_ptr)c;
    if (d->is_decompressor && d->input_scan_number > 1000) {
        JpegErr *je = (JpegErr *)c->err;
        snprintf(je->msg, sizeof je->msg, "more than 1000 progressive scans");
        longjmp(je->jb, 1);
    }
}

DsocrStatus image_decode_jpeg(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e) {
    struct jpeg_decompress_struct cinfo;
    JpegErr je;
    struct jpeg_source_mgr src;
    struct jpeg_progress_mgr prog;
    uint8_t *volatile row = NULL;
    volatile int started = 0;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jpeg_err_exit;
    je.pub.emit_message = jpeg_emit;
    je.pub.output_message = jpeg_output;
    je.msg[0] = 0;
    if (setjmp(je.jb)) {
        jpeg_destroy_decompress(&cinfo);
        free(row);
        if (started) image_raw_free(r);
        return ds_fail(e, DSOCR_E_IMAGE, "JPEG: %s", je.msg[0] ? je.msg : "cannot decode");
    }
    jpeg_create_decompress(&cinfo);
    src.init_source = src_init;
    src.fill_input_buffer = src_fill;
    src.skip_input_data = src_skip;
    src.resync_to_restart = jpeg_resync_to_restart;
    src.term_source = src_term;
    src.next_input_byte = b;
    src.bytes_in_buffer = n;
    cinfo.src = &src;
    prog.progress_monitor = jpeg_progress;
    cinfo.progress = &prog;
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo, TRUE);
    int nc = cinfo.num_components;
    if (nc != 1 && nc != 3 && nc != 4) {
        jpeg_destroy_decompress(&cinfo);
        return ds_fail(e, DSOCR_E_IMAGE, "JPEG: cannot handle %d-component images", nc);
    }
    DsocrStatus st = image_check_dims("JPEG", cinfo.image_width, cinfo.image_height, 1.0, n,
                                      cinfo.arith_code ? 8192.0 : 512.0, o->max_pixels, e);
    if (st != DSOCR_OK) {
        jpeg_destroy_decompress(&cinfo);
        return st;
    }
    /* Pillow: the first APP1 that starts with "Exif\0" */
    int orient = 0;
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 5 && !memcmp(m->data, "Exif\0", 5)) {
            orient = exif_orientation(m->data, m->data_length);
            break;
        }
    cinfo.out_color_space = nc == 1 ? JCS_GRAYSCALE : nc == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_start_decompress(&cinfo);
    int w = (int)cinfo.output_width, h = (int)cinfo.output_height;
    st = image_raw_alloc(r, w, h, 0, e);
    if (st != DSOCR_OK) {
        jpeg_destroy_decompress(&cinfo);
        return st;
    }
    started = 1;
    r->orientation = orient;
    row = malloc((size_t)w * (size_t)nc);
    if (!row) {
        jpeg_destroy_decompress(&cinfo);
        image_raw_free(r);
        return ds_fail(e, DSOCR_E_NOMEM, "JPEG: out of memory");
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        int y = (int)cinfo.output_scanline;
        JSAMPROW rp = row;
        jpeg_read_scanlines(&cinfo, &rp, 1);
        uint8_t *out = r->rgb + (size_t)y * w * 3;
        if (nc == 3) {
            memcpy(out, row, (size_t)w * 3);
        } else if (nc == 1) {
            for (int x = 0; x < w; x++) out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = row[x];
        } else {
            for (int x = 0; x < 4 * w; x++) row[x] = (uint8_t)(255 - row[x]); /* Pillow's "CMYK;I" (Adobe) */
            image_cmyk_to_rgb(row, out, (size_t)w);
        }
    }
    free(row);
    row = NULL;
    /* Pixels are complete; whatever follows the last scan (a missing EOI, trailing bytes) does not matter. */
    if (!setjmp(je.jb)) jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return DSOCR_OK;
}

/* =========================================================================================================
 * PNG */

typedef struct PngCtx {
    const uint8_t *data;
    size_t len, pos;
    jmp_buf jb;
    char msg[256];
} PngCtx;

static void png_err_fn(png_structp png, png_const_charp msg) {
    PngCtx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    longjmp(c->jb, 1);
}
static void png_warn_fn(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}
static void png_read_fn(png_structp png, png_bytep out, size_t n) {
    PngCtx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) png_error(png, "file is truncated");
    memcpy(out, c->data + c->pos, n);
    c->pos += n;
}

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* Metadata Pillow reads from a PNG: EXIF from eXIf chunks (own walk over the chunk list: the last one before
 * IDAT, or when there is none, the last in the file, since Pillow then loads the whole file). */
static void png_find_exif(const uint8_t *b, size_t n, const uint8_t **exif, size_t *exif_len, int *before_idat) {
    size_t pos = 8;
    int seen_idat = 0;
    *exif = NULL;
    *exif_len = 0;
    *before_idat = 0;
    while (pos + 12 <= n) {
        uint32_t len = be32(b + pos);
        if (len > n - pos - 12) break;
        const uint8_t *type = b + pos + 4;
        if (!memcmp(type, "IDAT", 4)) {
            if (!seen_idat && *exif) {
                *before_idat = 1;
                return;
            }
            seen_idat = 1;
        } else if (!memcmp(type, "eXIf", 4)) {
            *exif = b + pos + 8;
            *exif_len = len;
        } else if (!memcmp(type, "IEND", 4)) {
            break;
        }
        pos += 12 + (size_t)len;
    }
}

typedef struct PngText {
    const char *raw;
    size_t raw_len;
    const char *xmp;
    size_t xmp_len;
} PngText;

static void png_scan_text(png_structp png, png_infop info, PngText *t) {
    png_textp text;
    int num = 0;
    if (!info || !png_get_text(png, info, &text, &num)) return;
    for (int i = 0; i < num; i++) {
        const char *val = text[i].text ? text[i].text : "";
        size_t len = text[i].compression > 0 ? text[i].itxt_length : text[i].text_length;
        if (!strcmp(text[i].key, "Raw profile type exif")) {
            t->raw = val;
            t->raw_len = len;
        } else if (!strcmp(text[i].key, "XML:com.adobe.xmp")) {
            t->xmp = val;
            t->xmp_len = len;
        }
    }
}

/* One PNG row (native layout after png_set_packing / expand_gray) to RGB (+ alpha). */
typedef struct PngFmt {
    int ct, bd;
    uint8_t pal[256][3];
    uint8_t trns_a[256]; /* palette alpha */
    int has_key;
    uint16_t key[3]; /* colour key, raw tRNS values */
} PngFmt;

static void png_convert_row(const PngFmt *f, const uint8_t *in, int w, uint8_t *rgb, uint8_t *alpha) {
    int b16 = f->bd == 16;
    for (int x = 0; x < w; x++) {
        uint8_t *o = rgb + 3 * x;
        int a = 255;
        switch (f->ct) {
        case PNG_COLOR_TYPE_GRAY: {
            int v;
            if (b16) {
                int full = in[2 * x] << 8 | in[2 * x + 1];
                v = full > 255 ? 255 : full; /* Pillow mode "I": clipped, not scaled */
                if (f->has_key && full == f->key[0]) a = 0;
            } else {
                v = in[x];
                if (f->has_key && v == f->key[0]) a = 0;
            }
            o[0] = o[1] = o[2] = (uint8_t)v;
            break;
        }
        case PNG_COLOR_TYPE_PALETTE:
            memcpy(o, f->pal[in[x]], 3);
            a = f->trns_a[in[x]];
            break;
        case PNG_COLOR_TYPE_RGB:
            for (int c = 0; c < 3; c++) o[c] = in[(b16 ? 6 : 3) * x + (b16 ? 2 * c : c)];
            if (f->has_key && o[0] == f->key[0] && o[1] == f->key[1] && o[2] == f->key[2]) a = 0;
            break;
        case PNG_COLOR_TYPE_GRAY_ALPHA:
            o[0] = o[1] = o[2] = in[(b16 ? 4 : 2) * x];
            a = in[(b16 ? 4 : 2) * x + (b16 ? 2 : 1)];
            break;
        default: /* RGBA */
            for (int c = 0; c < 3; c++) o[c] = in[(b16 ? 8 : 4) * x + (b16 ? 2 * c : c)];
            a = in[(b16 ? 8 : 4) * x + (b16 ? 6 : 3)];
            break;
        }
        if (alpha) alpha[x] = (uint8_t)a;
    }
}

DsocrStatus image_decode_png(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e) {
    PngCtx ctx = {.data = b, .len = n, .pos = 0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_err_fn, png_warn_fn);
    if (!png) return ds_fail(e, DSOCR_E_NOMEM, "PNG: out of memory");
    png_infop info = png_create_info_struct(png);
    png_infop end_info = png_create_info_struct(png);
    PngFmt *volatile fmt = NULL;
    uint8_t *volatile native = NULL;
    uint8_t **volatile rows = NULL;
    volatile int started = 0;
    if (!info || !end_info) {
        png_destroy_read_struct(&png, &info, &end_info);
        return ds_fail(e, DSOCR_E_NOMEM, "PNG: out of memory");
    }
    if (setjmp(ctx.jb)) {
        png_destroy_read_struct(&png, &info, &end_info);
        free(fmt);
        free(native);
        free(rows);
        if (started) image_raw_free(r);
        return ds_fail(e, DSOCR_E_IMAGE, "PNG: %s", ctx.msg);
    }
    png_set_read_fn(png, &ctx, png_read_fn);
    png_set_user_limits(png, 1u << 30, 1u << 30);
    png_set_chunk_malloc_max(png, 64u << 20);
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_DEFAULT);
    png_read_info(png, info);
    png_uint_32 w, h;
    int bd, ct, il;
    png_get_IHDR(png, info, &w, &h, &bd, &ct, &il, NULL, NULL);
    int chans = ct == PNG_COLOR_TYPE_RGB ? 3 : ct == PNG_COLOR_TYPE_RGBA ? 4 : ct == PNG_COLOR_TYPE_GRAY_ALPHA ? 2 : 1;
    /* deflate expands one byte into at most 1032 */
    DsocrStatus st = image_check_dims("PNG", w, h, chans * bd / 8.0 + 1.0 / (w ? w : 1), n, 1100.0,
                                      o->max_pixels, e);
    if (st != DSOCR_OK) {
        png_destroy_read_struct(&png, &info, &end_info);
        return st;
    }
    fmt = calloc(1, sizeof *fmt);
    if (!fmt) png_error(png, "out of memory");
    fmt->ct = ct;
    fmt->bd = bd;
    palette_ramp(fmt->pal);
    memset(fmt->trns_a, 255, sizeof fmt->trns_a);
    int has_trns = 0;
    if (ct == PNG_COLOR_TYPE_PALETTE) {
        png_colorp plte;
        int np = 0;
        if (png_get_PLTE(png, info, &plte, &np))
            for (int i = 0; i < np && i < 256; i++) {
                fmt->pal[i][0] = plte[i].red;
                fmt->pal[i][1] = plte[i].green;
                fmt->pal[i][2] = plte[i].blue;
            }
    }
    {
        png_bytep ta;
        int nt = 0;
        png_color_16p tc;
        if (png_get_tRNS(png, info, &ta, &nt, &tc)) {
            has_trns = 1;
            if (ct == PNG_COLOR_TYPE_PALETTE) {
                for (int i = 0; i < nt && i < 256; i++) fmt->trns_a[i] = ta[i];
            } else if (ct == PNG_COLOR_TYPE_GRAY) {
                fmt->has_key = 1;
                fmt->key[0] = tc->gray;
            } else if (ct == PNG_COLOR_TYPE_RGB) {
                fmt->has_key = 1;
                fmt->key[0] = tc->red;
                fmt->key[1] = tc->green;
                fmt->key[2] = tc->blue;
            }
        }
    }
    if (bd < 8) {
        if (ct == PNG_COLOR_TYPE_GRAY) png_set_expand_gray_1_2_4_to_8(png);
        else png_set_packing(png);
    }
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    int want_alpha = o->alpha_white && (ct == PNG_COLOR_TYPE_RGBA || ct == PNG_COLOR_TYPE_GRAY_ALPHA || has_trns);
    st = image_raw_alloc(r, (int)w, (int)h, want_alpha, e);
    if (st != DSOCR_OK) {
        png_destroy_read_struct(&png, &info, &end_info);
        free(fmt);
        return st;
    }
    started = 1;
    if (passes > 1) {
        native = malloc(rowbytes * h);
        rows = malloc(sizeof(uint8_t *) * h);
        if (!native || !rows) png_error(png, "out of memory for an interlaced image");
        for (png_uint_32 y = 0; y < h; y++) rows[y] = native + rowbytes * y;
        png_read_image(png, rows);
        for (png_uint_32 y = 0; y < h; y++)
            png_convert_row(fmt, rows[y], (int)w, r->rgb + (size_t)y * w * 3,
                            r->alpha ? r->alpha + (size_t)y * w : NULL);
    } else {
        native = malloc(rowbytes);
        if (!native) png_error(png, "out of memory");
        for (png_uint_32 y = 0; y < h; y++) {
            png_read_row(png, native, NULL);
            png_convert_row(fmt, native, (int)w, r->rgb + (size_t)y * w * 3,
                            r->alpha ? r->alpha + (size_t)y * w : NULL);
        }
    }
    free(native);
    native = NULL;
    free(rows);
    rows = NULL;
    free(fmt);
    fmt = NULL;
    /* Chunks after IDAT: Pillow reads them when it looks for EXIF; errors there no longer matter. */
    volatile int end_ok = 0;
    if (!setjmp(ctx.jb)) {
        png_read_end(png, end_info);
        end_ok = 1;
    }
    const uint8_t *exif;
    size_t exif_len;
    int exif_early, present = 0, orient = 0;
    png_find_exif(b, n, &exif, &exif_len, &exif_early);
    PngText txt = {0};
    png_scan_text(png, info, &txt);
    if (!exif_early && end_ok) png_scan_text(png, end_info, &txt);
    if (exif) {
        orient = exif_orientation_tiff(exif, exif_len, &present);
    } else if (txt.raw) {
        orient = exif_orientation_from_raw_profile(txt.raw, txt.raw_len, &present);
        if (orient < 0) {
            orient = 0;
            present = 1;
        }
    }
    if (!present && txt.xmp) orient = exif_orientation_from_xmp(txt.xmp, txt.xmp_len);
    r->orientation = orient;
    png_destroy_read_struct(&png, &info, &end_info);
    return DSOCR_OK;
}

/* =========================================================================================================
 * WebP */

static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* The first EXIF chunk of an extended (VP8X) WebP, as libwebpdemux hands it to Pillow. */
static int webp_orientation(const uint8_t *b, size_t n) {
    if (n < 20 || memcmp(b + 12, "VP8X", 4)) return 0;
    size_t riff_end = (size_t)le32(b + 4) + 8;
    if (riff_end > n) riff_end = n;
    size_t pos = 12;
    while (pos + 8 <= riff_end) {
        uint32_t len = le32(b + pos + 4);
        if (len > riff_end - pos - 8) break;
        if (!memcmp(b + pos, "EXIF", 4)) return exif_orientation(b + pos + 8, len);
        pos += 8 + (size_t)len + (len & 1);
    }
    return 0;
}

DsocrStatus image_decode_webp(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e) {
    WebPBitstreamFeatures f;
    VP8StatusCode vs = WebPGetFeatures(b, n, &f);
    if (vs != VP8_STATUS_OK)
        return ds_fail(e, DSOCR_E_IMAGE, "WebP: cannot read the header (%s)",
                       vs == VP8_STATUS_NOT_ENOUGH_DATA ? "file is truncated" : "malformed bitstream");
    if (f.has_animation) return ds_fail(e, DSOCR_E_IMAGE, "WebP: animated WebP is not supported");
    /* VP8L and VP8 both reach ratios far above deflate's on flat content; only the pixel cap applies. */
    DsocrStatus st = image_check_dims("WebP", f.width, f.height, 1.0, n, 0, o->max_pixels, e);
    if (st != DSOCR_OK) return st;
    int w = f.width, h = f.height;
    uint8_t *rgba = malloc((size_t)w * h * 4);
    if (!rgba) return ds_fail(e, DSOCR_E_NOMEM, "WebP: out of memory for %dx%d", w, h);
    if (!WebPDecodeRGBAInto(b, n, rgba, (size_t)w * h * 4, w * 4)) {
        free(rgba);
        return ds_fail(e, DSOCR_E_IMAGE, "WebP: cannot decode (corrupt or truncated data)");
    }
    st = image_raw_alloc(r, w, h, o->alpha_white && f.has_alpha, e);
    if (st != DSOCR_OK) {
        free(rgba);
        return st;
    }
    size_t np = (size_t)w * h;
    for (size_t i = 0; i < np; i++) {
        memcpy(r->rgb + 3 * i, rgba + 4 * i, 3);
        if (r->alpha) r->alpha[i] = rgba[4 * i + 3];
    }
    free(rgba);
    r->orientation = webp_orientation(b, n);
    return DSOCR_OK;
}

/* =========================================================================================================
 * GIF (first frame, as Pillow 9.4's GifImagePlugin composes it) */

typedef struct GifSrc {
    const uint8_t *data;
    size_t len, pos;
} GifSrc;

static int gif_read(GifFileType *g, GifByteType *out, int n) {
    GifSrc *s = g->UserData;
    size_t k = (size_t)n;
    if (k > s->len - s->pos) k = s->len - s->pos;
    memcpy(out, s->data + s->pos, k);
    s->pos += k;
    return (int)k;
}

static DsocrStatus gif_fail(GifFileType *g, int err, DsError *e, const char *what) {
    if (g) {
        int ce;
        DGifCloseFile(g, &ce);
    }
    const char *m = GifErrorString(err);
    return ds_fail(e, DSOCR_E_IMAGE, "GIF: %s%s%s", what, m ? ": " : "", m ? m : "");
}

DsocrStatus image_decode_gif(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e) {
    GifSrc src = {b, n, 0};
    int err = 0;
    GifFileType *g = DGifOpen(&src, gif_read, &err);
    if (!g) return gif_fail(NULL, err, e, "cannot read the header");
    int transparency = -1;
    for (;;) {
        GifRecordType rt;
        if (DGifGetRecordType(g, &rt) == GIF_ERROR) return gif_fail(g, g->Error, e, "corrupt or truncated file");
        if (rt == TERMINATE_RECORD_TYPE) {
            int ce;
            DGifCloseFile(g, &ce);
            return ds_fail(e, DSOCR_E_IMAGE, "GIF: file holds no image");
        }
        if (rt == EXTENSION_RECORD_TYPE) {
            int code;
            GifByteType *ext;
            if (DGifGetExtension(g, &code, &ext) == GIF_ERROR) return gif_fail(g, g->Error, e, "corrupt extension");
            int first = 1;
            while (ext) {
                if (first && code == GRAPHICS_EXT_FUNC_CODE && ext[0] >= 4 && (ext[1] & 1)) transparency = ext[4];
                first = 0;
                if (DGifGetExtensionNext(g, &ext) == GIF_ERROR) return gif_fail(g, g->Error, e, "corrupt extension");
            }
            continue;
        }
        if (rt != IMAGE_DESC_RECORD_TYPE) continue;
        if (DGifGetImageDesc(g) == GIF_ERROR) return gif_fail(g, g->Error, e, "corrupt image descriptor");
        break;
    }
    GifImageDesc *d = &g->Image;
    long long x0 = d->Left, y0 = d->Top, fw = d->Width, fh = d->Height;
    long long cw = g->SWidth, ch = g->SHeight;
    if (x0 + fw > cw) cw = x0 + fw; /* Pillow grows the canvas to hold the frame */
    if (y0 + fh > ch) ch = y0 + fh;
    DsocrStatus st = image_check_dims("GIF", cw, ch, 1.0, n, 0, o->max_pixels, e);
    if (st == DSOCR_OK && fw * fh > 0) /* LZW: one 12-bit code stands for at most 4096 pixels */
        st = image_check_dims("GIF", fw, fh, 1.0, n, 2800.0, o->max_pixels, e);
    if (st != DSOCR_OK) {
        int ce;
        DGifCloseFile(g, &ce);
        return st;
    }
    uint8_t pal[256][3];
    palette_ramp(pal);
    ColorMapObject *cm = d->ColorMap ? d->ColorMap : g->SColorMap;
    if (cm)
        for (int i = 0; i < cm->ColorCount && i < 256; i++) {
            pal[i][0] = cm->Colors[i].Red;
            pal[i][1] = cm->Colors[i].Green;
            pal[i][2] = cm->Colors[i].Blue;
        }
    int W = (int)cw, H = (int)ch;
    uint8_t *idx = malloc((size_t)W * H);
    if (!idx) {
        int ce;
        DGifCloseFile(g, &ce);
        return ds_fail(e, DSOCR_E_NOMEM, "GIF: out of memory for %dx%d", W, H);
    }
    memset(idx, transparency >= 0 ? transparency : 0, (size_t)W * H);
    if (fw > 0 && fh > 0) {
        uint8_t *line = malloc((size_t)fw);
        if (!line) {
            free(idx);
            int ce;
            DGifCloseFile(g, &ce);
            return ds_fail(e, DSOCR_E_NOMEM, "GIF: out of memory");
        }
        static const int start[4] = {0, 4, 2, 1}, step[4] = {8, 8, 4, 2};
        int npass = d->Interlace ? 4 : 1;
        for (int p = 0; p < npass; p++) {
            int y = d->Interlace ? start[p] : 0, dy = d->Interlace ? step[p] : 1;
            for (; y < fh; y += dy) {
                if (DGifGetLine(g, line, (int)fw) == GIF_ERROR) {
                    free(line);
                    free(idx);
                    return gif_fail(g, g->Error, e, "corrupt or truncated image data");
                }
                memcpy(idx + (size_t)(y0 + y) * W + x0, line, (size_t)fw);
            }
        }
        free(line);
    }
    int ce;
    DGifCloseFile(g, &ce);
    st = image_raw_alloc(r, W, H, o->alpha_white && transparency >= 0, e);
    if (st != DSOCR_OK) {
        free(idx);
        return st;
    }
    size_t np = (size_t)W * H;
    for (size_t i = 0; i < np; i++) {
        memcpy(r->rgb + 3 * i, pal[idx[i]], 3);
        if (r->alpha && idx[i] == transparency) r->alpha[i] = 0;
    }
    free(idx);
    return DSOCR_OK;
}

/* =========================================================================================================
 * TIFF (first directory) through TIFFClientOpenExt over memory */

typedef struct TiffSrc {
    const uint8_t *data;
    size_t len, pos;
    char msg[256];
} TiffSrc;

static tmsize_t tif_read(thandle_t h, void *buf, tmsize_t n) {
    TiffSrc *s = h;
    if (n < 0) return 0;
    size_t k = (size_t)n;
    if (s->pos >= s->len) return 0;
    if (k > s->len - s->pos) k = s->len - s->pos;
    memcpy(buf, s->data + s->pos, k);
    s->pos += k;
    return (tmsize_t)k;
}
static tmsize_t tif_write(thandle_t h, void *buf, tmsize_t n) {
    (void)h;
    (void)buf;
    (void)n;
    return -1;
}
static toff_t tif_seek(thandle_t h, toff_t off, int whence) {
    TiffSrc *s = h;
    uint64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? s->pos : s->len;
    uint64_t np = base + off;
    if (np > ((uint64_t)1 << 62)) return (toff_t)-1;
    s->pos = (size_t)np;
    return np;
}
static int tif_close(thandle_t h) {
    (void)h;
    return 0;
}
static toff_t tif_size(thandle_t h) { return ((TiffSrc *)h)->len; }
static int tif_map(thandle_t h, void **base, toff_t *size) {
    (void)h;
    (void)base;
    (void)size;
    return 0;
}
static void tif_unmap(thandle_t h, void *base, toff_t size) {
    (void)h;
    (void)base;
    (void)size;
}
static int tif_error(TIFF *t, void *user, const char *module, const char *fmt, va_list ap) {
    (void)t;
    (void)module;
    TiffSrc *s = user;
    if (!s->msg[0]) vsnprintf(s->msg, sizeof s->msg, fmt, ap);
    return 1;
}
static int tif_warning(TIFF *t, void *user, const char *module, const char *fmt, va_list ap) {
    (void)t;
    (void)user;
    (void)module;
    (void)fmt;
    (void)ap;
    return 1;
}

typedef enum { TK_GREY, TK_GREY16, TK_GREYA, TK_RGB, TK_RGB16, TK_RGBA, TK_RGBA_ASSOC, TK_RGBX, TK_PAL,
               TK_CMYK } TiffKind;

typedef struct TiffFmt {
    TiffKind kind;
    int bps, spp, invert, nbits;
    uint8_t pal[256][3];
} TiffFmt;

/* n pixels of packed native samples (starting at bit 0) to RGB (+ alpha) */
static void tiff_convert(const TiffFmt *f, const uint8_t *in, int n, uint8_t *rgb, uint8_t *alpha) {
    for (int x = 0; x < n; x++) {
        uint8_t *o = rgb + 3 * x;
        int a = 255;
        switch (f->kind) {
        case TK_GREY:
        case TK_PAL: {
            int v;
            if (f->bps == 8) {
                v = in[x];
            } else {
                int bitpos = x * f->bps;
                v = (in[bitpos >> 3] >> (8 - f->bps - (bitpos & 7))) & ((1 << f->bps) - 1);
            }
            if (f->kind == TK_PAL) {
                memcpy(o, f->pal[v], 3);
            } else {
                if (f->bps == 1) v = v ? 255 : 0;
                else if (f->bps == 2) v *= 85;
                else if (f->bps == 4) v *= 17;
                if (f->invert) v = 255 - v;
                o[0] = o[1] = o[2] = (uint8_t)v;
            }
            break;
        }
        case TK_GREY16: {
            uint16_t v;
            memcpy(&v, in + 2 * x, 2);
            o[0] = o[1] = o[2] = (uint8_t)(v > 255 ? 255 : v);
            break;
        }
        case TK_GREYA:
            o[0] = o[1] = o[2] = in[2 * x];
            a = in[2 * x + 1];
            break;
        case TK_RGB:
        case TK_RGBX:
        case TK_RGBA:
            memcpy(o, in + (size_t)f->spp * x, 3);
            if (f->kind == TK_RGBA) a = in[(size_t)f->spp * x + 3];
            break;
        case TK_RGBA_ASSOC: {
            const uint8_t *p = in + (size_t)f->spp * x;
            a = p[3];
            for (int c = 0; c < 3; c++) {
                int v = a == 0 ? 0 : a == 255 ? p[c] : p[c] * 255 / a;
                o[c] = (uint8_t)(v > 255 ? 255 : v);
            }
            break;
        }
        case TK_RGB16:
            for (int c = 0; c < 3; c++) {
                uint16_t v;
                memcpy(&v, in + 2 * ((size_t)f->spp * x + c), 2);
                o[c] = (uint8_t)(v >> 8);
            }
            break;
        case TK_CMYK:
            image_cmyk_to_rgb(in + 4 * (size_t)x, o, 1);
            break;
        }
        if (alpha) alpha[x] = (uint8_t)a;
    }
}

static DsocrStatus tiff_fail(TIFF *t, TiffSrc *s, DsError *e, const char *what) {
    if (t) TIFFClose(t);
    return ds_fail(e, DSOCR_E_IMAGE, "TIFF: %s%s%s", what, s->msg[0] ? ": " : "", s->msg);
}

DsocrStatus image_decode_tiff(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e) {
    TiffSrc src = {.data = b, .len = n};
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    if (!opts) return ds_fail(e, DSOCR_E_NOMEM, "TIFF: out of memory");
    TIFFOpenOptionsSetErrorHandlerExtR(opts, tif_error, &src);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, tif_warning, &src);
    TIFFOpenOptionsSetMaxSingleMemAlloc(opts, (tmsize_t)512 << 20);
    TIFF *t = TIFFClientOpenExt("memory", "rm", &src, tif_read, tif_write, tif_seek, tif_close, tif_size, tif_map,
                                tif_unmap, opts);
    TIFFOpenOptionsFree(opts);
    if (!t) return tiff_fail(NULL, &src, e, "cannot open");
    uint32_t w = 0, h = 0;
    uint16_t bps = 1, spp = 1, photo = 0, planar = 1, comp = 1, fmt_sf = 1, inkset = 1;
    TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h);
    TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bps);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(t, TIFFTAG_PLANARCONFIG, &planar);
    TIFFGetFieldDefaulted(t, TIFFTAG_COMPRESSION, &comp);
    TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &fmt_sf);
    TIFFGetFieldDefaulted(t, TIFFTAG_INKSET, &inkset);
    if (!TIFFGetField(t, TIFFTAG_PHOTOMETRIC, &photo)) return tiff_fail(t, &src, e, "no photometric tag");
    uint16_t nextra = 0, *extra = NULL;
    TIFFGetField(t, TIFFTAG_EXTRASAMPLES, &nextra, &extra);
    int ex0 = nextra > 0 && extra ? extra[0] : -1;
    double ratio = comp == COMPRESSION_NONE ? 1.05 : (double)(w > 512 ? w : 512) * 8.0;
    DsocrStatus st = image_check_dims("TIFF", w, h, bps * spp / 8.0, n, ratio, o->max_pixels, e);
    if (st != DSOCR_OK) {
        TIFFClose(t);
        return st;
    }
    TiffFmt *f = calloc(1, sizeof *f);
    if (!f) {
        TIFFClose(t);
        return ds_fail(e, DSOCR_E_NOMEM, "TIFF: out of memory");
    }
    f->bps = bps;
    f->spp = spp;
    int ok = planar == PLANARCONFIG_CONTIG && fmt_sf == SAMPLEFORMAT_UINT;
    if (ok && (photo == PHOTOMETRIC_MINISBLACK || photo == PHOTOMETRIC_MINISWHITE)) {
        f->invert = photo == PHOTOMETRIC_MINISWHITE;
        if (spp == 1 && (bps == 1 || bps == 2 || bps == 4 || bps == 8)) f->kind = TK_GREY;
        else if (spp == 1 && bps == 16 && !f->invert) f->kind = TK_GREY16;
        else if (spp == 2 && bps == 8 && !f->invert && ex0 == EXTRASAMPLE_UNASSALPHA) f->kind = TK_GREYA;
        else ok = 0;
    } else if (ok && photo == PHOTOMETRIC_RGB) {
        if (bps == 8 && spp == 3) f->kind = TK_RGB;
        else if (bps == 8 && spp == 4 && ex0 == EXTRASAMPLE_UNASSALPHA) f->kind = TK_RGBA;
        else if (bps == 8 && spp == 4 && ex0 == EXTRASAMPLE_ASSOCALPHA) f->kind = TK_RGBA_ASSOC;
        else if (bps == 8 && spp == 4) f->kind = TK_RGBX;
        else if (bps == 16 && (spp == 3 || spp == 4)) f->kind = TK_RGB16;
        else ok = 0;
    } else if (ok && photo == PHOTOMETRIC_PALETTE && spp == 1 && (bps == 1 || bps == 2 || bps == 4 || bps == 8)) {
        uint16_t *rm, *gm, *bm;
        f->kind = TK_PAL;
        palette_ramp(f->pal);
        if (!TIFFGetField(t, TIFFTAG_COLORMAP, &rm, &gm, &bm)) ok = 0;
        else
            for (int i = 0; i < (1 << bps); i++) {
                f->pal[i][0] = (uint8_t)(rm[i] >> 8);
                f->pal[i][1] = (uint8_t)(gm[i] >> 8);
                f->pal[i][2] = (uint8_t)(bm[i] >> 8);
            }
    } else if (ok && photo == PHOTOMETRIC_SEPARATED && bps == 8 && spp == 4 && inkset == INKSET_CMYK) {
        f->kind = TK_CMYK;
    } else if (ok && photo == PHOTOMETRIC_YCBCR && comp == COMPRESSION_JPEG && bps == 8 && spp == 3) {
        TIFFSetField(t, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB);
        f->kind = TK_RGB;
    } else {
        ok = 0;
    }
    if (!ok) {
        free(f);
        TIFFClose(t);
        return ds_fail(e, DSOCR_E_IMAGE,
                       "TIFF: unsupported layout (photometric %u, %u samples of %u bits, planar %u, format %u)",
                       photo, spp, bps, planar, fmt_sf);
    }
    int alpha = o->alpha_white && (f->kind == TK_RGBA || f->kind == TK_RGBA_ASSOC || f->kind == TK_GREYA);
    st = image_raw_alloc(r, (int)w, (int)h, alpha, e);
    if (st != DSOCR_OK) {
        free(f);
        TIFFClose(t);
        return st;
    }
    uint8_t *buf = NULL;
    const char *what = NULL;
    if (TIFFIsTiled(t)) {
        uint32_t tw = 0, th = 0;
        TIFFGetField(t, TIFFTAG_TILEWIDTH, &tw);
        TIFFGetField(t, TIFFTAG_TILELENGTH, &th);
        tmsize_t tsz = TIFFTileSize(t), trow = TIFFTileRowSize(t);
        if (tw == 0 || th == 0 || tsz <= 0 || trow <= 0) {
            what = "bad tile size";
        } else if (!(buf = malloc((size_t)tsz))) {
            what = "out of memory";
        } else {
            for (uint32_t ty = 0; ty < h && !what; ty += th)
                for (uint32_t tx = 0; tx < w && !what; tx += tw) {
                    if (TIFFReadEncodedTile(t, TIFFComputeTile(t, tx, ty, 0, 0), buf, tsz) < 0) {
                        what = "corrupt or truncated tile";
                        break;
                    }
                    uint32_t cw = w - tx < tw ? w - tx : tw, chh = h - ty < th ? h - ty : th;
                    for (uint32_t y = 0; y < chh; y++)
                        tiff_convert(f, buf + (size_t)y * trow, (int)cw, r->rgb + ((size_t)(ty + y) * w + tx) * 3,
                                     r->alpha ? r->alpha + (size_t)(ty + y) * w + tx : NULL);
                }
        }
    } else {
        uint32_t rps = 0;
        TIFFGetFieldDefaulted(t, TIFFTAG_ROWSPERSTRIP, &rps);
        if (rps == 0 || rps > h) rps = h;
        tmsize_t ssz = TIFFStripSize(t), srow = TIFFScanlineSize(t);
        if (ssz <= 0 || srow <= 0) {
            what = "bad strip size";
        } else if (!(buf = malloc((size_t)ssz))) {
            what = "out of memory";
        } else {
            for (uint32_t y0 = 0; y0 < h; y0 += rps) {
                if (TIFFReadEncodedStrip(t, TIFFComputeStrip(t, y0, 0), buf, ssz) < 0) {
                    what = "corrupt or truncated strip";
                    break;
                }
                uint32_t nr = h - y0 < rps ? h - y0 : rps;
                for (uint32_t y = 0; y < nr; y++)
                    tiff_convert(f, buf + (size_t)y * srow, (int)w, r->rgb + (size_t)(y0 + y) * w * 3,
                                 r->alpha ? r->alpha + (size_t)(y0 + y) * w : NULL);
            }
        }
    }
    free(buf);
    free(f);
    if (what) {
        image_raw_free(r);
        return tiff_fail(t, &src, e, what);
    }
    TIFFClose(t);
    /* Pillow reads the orientation from the first IFD with its EXIF loader (the file is one EXIF block). Pillow
     * 9.4 then applies it twice: TiffImageFile.load_end transposes by the tag, and exif_transpose transposes the
     * loaded image again. Orientations 2-5 and 7 are involutions (net: unchanged); 6 and 8 end up rotated by
     * 180 degrees. We reproduce the reference (tests/py/test_image_pillow.py checks all eight). */
    int orient = exif_orientation(b, n);
    r->orientation = orient == 6 || orient == 8 ? 3 : 0;
    return DSOCR_OK;
}
