/* image_codec.h: internal interface between image.c (dispatch, conversion, geometry) and the per-format
 * decoders (image_codecs.c, image_bmp.c). Not part of the public API. */
#ifndef DSOCR_IMAGE_CODEC_H
#define DSOCR_IMAGE_CODEC_H

#include "image.h"

/* What a decoder hands back: 8-bit RGB after Pillow's convert("RGB") rules, an optional transparency plane
 * (only when the caller asked for alpha_white and the image has transparency), and the EXIF orientation it
 * found (0 when none). */
typedef struct ImageRaw {
    int w, h;
    uint8_t *rgb;   /* [h][w][3] */
    uint8_t *alpha; /* [h][w] or NULL */
    int orientation;
} ImageRaw;

/* Checks a header's claim before allocating: w, h >= 1, w*h <= max_pixels, and w*h*bytes_per_pixel <=
 * (len + 1) * max_ratio, max_ratio being the most raw bytes one input byte can expand to in this format's
 * coding (0 = no such bound). Fails with DSOCR_E_IMAGE naming fmt. */
DsocrStatus image_check_dims(const char *fmt, long long w, long long h, double bytes_per_pixel, size_t len,
                             double max_ratio, long long max_pixels, DsError *e);

/* Allocates raw->rgb (and raw->alpha when want_alpha) for w x h; alpha is filled with 255. */
DsocrStatus image_raw_alloc(ImageRaw *raw, int w, int h, int want_alpha, DsError *e);
void image_raw_free(ImageRaw *raw);

/* Pillow's CMYK -> RGB (naive inversion): channel = clip(255 - k' ...); see image.c. */
void image_cmyk_to_rgb(const uint8_t *cmyk, uint8_t *rgb, size_t n);

/* exif_orientation, also telling whether IFD0 holds a loadable 0x0112 entry at all (*present), which decides
 * whether Pillow looks at XMP. */
int exif_orientation_present(const uint8_t *data, size_t len, int *present);
/* The same without stripping an "Exif\0\0" prefix: Pillow prepends one to a PNG eXIf chunk itself, so a chunk
 * that already carries one does not parse. */
int exif_orientation_tiff(const uint8_t *data, size_t len, int *present);
/* Orientation from a PNG "Raw profile type exif" text (an ImageMagick hex dump): -1 when the dump is malformed
 * (Pillow's getexif raises, so no orientation applies), else as exif_orientation_present. */
int exif_orientation_from_raw_profile(const char *text, size_t len, int *present);
/* The digit after the first "tiff:Orientation=\"" or "tiff:Orientation>" in an XMP packet; 0 when none. */
int exif_orientation_from_xmp(const char *text, size_t len);

DsocrStatus image_decode_jpeg(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e);
DsocrStatus image_decode_png(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e);
DsocrStatus image_decode_webp(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e);
DsocrStatus image_decode_gif(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e);
DsocrStatus image_decode_tiff(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e);
DsocrStatus image_decode_bmp(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e);

#endif
