/* image.h: the image pipeline in front of the vision encoder: decode (JPEG, PNG, WebP, BMP, GIF, TIFF) from
 * memory into 8-bit RGB exactly as Pillow 9.4's `Image.open` + `ImageOps.exif_transpose` + `.convert("RGB")`,
 * Pillow-exact BICUBIC resize, fit-and-pad (`ImageOps.pad`), tiling ("dynamic_preprocess"), the view plan of
 * every mode, the normalisation to bf16-representable floats, and the image-token slot count (spec §4, §5.4-5.5,
 * §16 R5, R8-R11).
 *
 * What it is not: no PDF rendering, no model code. All functions are reentrant (no global state); decoder
 * libraries' messages come back in DsError, never on stderr.
 *
 * Defined choices where the references have none or disagree (documented here, tested in tests/):
 *  - Extreme aspect ratios (spec R10): Pillow raises when the short side of fit-and-pad rounds to 0; we clamp it
 *    to 1 px and pad the rest.
 *  - Tiling happens only when w > 640 or h > 640 whatever the tile side (IMAGE_TILE_THRESHOLD): both official
 *    paths hard-code 640 even for 1024-px tiles, and the engine's goal is parity with them; an image that would
 *    get tiles is a function of the image alone, not of the tile side.
 *  - Non-crop mode follows the HF path for both profiles (R5): the single view's side is image_size, direct
 *    resize when image_size <= 640, else fit-and-pad to image_size.
 *  - alpha_white (the vLLM profile, R8): any transparency (RGBA, LA, palette tRNS, grey/RGB colour key, GIF
 *    transparent index) is composited on white as Pillow's `paste(img, mask=alpha)` onto a white RGB canvas does;
 *    otherwise alpha is dropped as `convert("RGB")` does. EXIF orientation is applied in both profiles.
 *  - Images are always encoded (R11: the reference's "pixel sum is 0" skip is not replicated).
 *  - Pillow 9.4 quirks reproduced because the reference has them: a TIFF orientation is applied twice (net:
 *    180 degrees for 6 and 8, nothing for the others); a PNG eXIf chunk that already starts with "Exif\0\0"
 *    does not parse; palette indices past the palette read as grey (i, i, i); BMP RLE as Pillow's decoder
 *    reads it. Animated WebP is refused (Pillow would take its first frame); BigTIFF EXIF gives no
 *    orientation. */
#ifndef DSOCR_IMAGE_H
#define DSOCR_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define IMAGE_MAX_PIXELS 100000000LL /* refuse anything larger (w*h) */
#define IMAGE_TILE_THRESHOLD 640     /* tile only when w or h exceeds this */
#define IMAGE_MIN_TILES 2
#define IMAGE_MAX_TILES_HF 9
#define IMAGE_MAX_TILES_VLLM 6
#define IMAGE_PAD_FILL 127 /* int(0.5*255) */
#define IMAGE_PATCH_PER_TOKEN 64 /* a view of side s gives an (s/64) x (s/64) token grid */

/* An 8-bit RGB image. rgb: [h][w][3], row-major, owned (image_free). */
typedef struct DsImage {
    int w, h;
    uint8_t *rgb;
} DsImage;

/* Allocates an uninitialised w x h image (w, h >= 1, w*h <= IMAGE_MAX_PIXELS). */
DsocrStatus image_new(DsImage *im, int w, int h, DsError *e);
/* Frees the pixels and zeroes the struct; safe on a zeroed struct. */
void image_free(DsImage *im);

typedef enum { IMAGE_FMT_UNKNOWN = 0, IMAGE_FMT_JPEG, IMAGE_FMT_PNG, IMAGE_FMT_WEBP, IMAGE_FMT_GIF,
               IMAGE_FMT_BMP, IMAGE_FMT_TIFF } ImageFormat;
/* The format from the magic bytes, IMAGE_FMT_UNKNOWN when none matches. */
ImageFormat image_sniff(const uint8_t *bytes, size_t len);
const char *image_format_name(ImageFormat f);

typedef struct ImageDecodeOptions {
    int alpha_white;    /* 0: drop alpha (HF, Pillow convert("RGB")); 1: composite on white (vLLM profile) */
    int ignore_exif;    /* 1: do not apply the EXIF orientation */
    long long max_pixels; /* 0 = IMAGE_MAX_PIXELS; a smaller limit for callers that want one */
} ImageDecodeOptions;

/* Decodes an image held in memory (bytes, len; never a path) into out (fresh, caller frees with image_free).
 * opt may be NULL (defaults: drop alpha, apply EXIF). Fails with DSOCR_E_IMAGE and a message naming the problem
 * (unknown format, truncated or corrupt data, more than max_pixels, a header claiming more pixels than the file
 * could hold) before any large allocation; out is zeroed on failure. */
DsocrStatus image_decode(const uint8_t *bytes, size_t len, const ImageDecodeOptions *opt, DsImage *out,
                         DsError *e);

/* EXIF orientation (1..8) of a TIFF-structured EXIF block (optionally starting with "Exif\0\0"), read from IFD0
 * tag 0x0112 as Pillow's Exif.load + get does (integer type, count 1, last entry wins, truncated IFDs keep the
 * entries before the cut). Returns 0 when absent or unreadable. Reads untrusted bytes; never reads past len. */
int exif_orientation(const uint8_t *data, size_t len);

/* Applies an EXIF orientation (2..8) in place as Pillow's exif_transpose does; 0, 1 and other values leave
 * the image unchanged. */
DsocrStatus image_orient(DsImage *im, int orientation, DsError *e);

/* Pillow-exact BICUBIC resize (spec §4.6) of src to ow x oh into dst (fresh). Each pass runs only when its
 * dimension changes; same size gives a copy. */
DsocrStatus image_resize_bicubic(const DsImage *src, int ow, int oh, DsImage *dst, DsError *e);

/* Pillow ImageOps.pad(src, (side, side), BICUBIC, color=(fill,fill,fill)) with centering 0.5 (spec §4.3);
 * the short side is clamped to >= 1 px (R10). dst fresh. */
DsocrStatus image_fit_pad(const DsImage *src, int side, uint8_t fill, DsImage *dst, DsError *e);
/* The size fit-and-pad resizes to before padding, and the paste offset (x0, y0). */
void image_fit_size(int w, int h, int side, int *nw, int *nh, int *x0, int *y0);

/* Tile grid search (spec §4.4): the (tw, th) = (columns, rows) with min_tiles <= tw*th <= max_tiles closest to
 * the aspect ratio w/h, in the official candidate order with its tie rule (T = tile_side). */
void image_grid(int w, int h, int tile_side, int min_tiles, int max_tiles, int *tw, int *th);

/* A mode: base_size (global view in crop mode), image_size (the tile side in crop mode, the single view's side
 * otherwise), crop_mode. Named modes: tiny 512/512/0, small 640/640/0, base 1024/1024/0, large 1280/1280/0,
 * gundam 1024/640/1. */
typedef struct ImageMode {
    int base_size, image_size, crop_mode;
} ImageMode;
/* Fills m for a named mode; returns 0 on success, -1 for an unknown name. */
int image_mode_by_name(const char *name, ImageMode *m);
/* Checks sizes: multiples of 64 from 512 to 1280. */
DsocrStatus image_mode_check(const ImageMode *m, DsError *e);

/* What the views of one image will be. Views are ordered tiles k = 0..n_tiles-1 (row-major) then the global. */
typedef struct ImagePlan {
    int src_w, src_h;
    int n_tiles;       /* tw*th, 0 when not tiled */
    int tw, th;        /* grid columns x rows; 0 x 0 when not tiled */
    int tile_side;     /* T = image_size (crop mode), 0 when not tiled */
    int global_side;   /* S: base_size in crop mode, image_size otherwise */
    int global_direct; /* 1: direct resize to S x S (non-crop, image_size <= 640); 0: fit-and-pad */
    int n_tile;        /* tokens per tile side = tile_side/64 (0 when not tiled) */
    int n_global;      /* tokens per global side = global_side/64 */
    int n_views;       /* n_tiles + 1 */
    int n_slots;       /* image-token slots in the sequence (image_slots) */
} ImagePlan;

/* Plans the views of a w x h image under mode m with at most max_tiles tiles (IMAGE_MAX_TILES_HF or _VLLM). */
DsocrStatus image_plan(int w, int h, const ImageMode *m, int max_tiles, ImagePlan *p, DsError *e);
/* Tokens per side of a view: side / 64. */
static inline int image_view_n(int side) { return side / IMAGE_PATCH_PER_TOKEN; }
/* Slots of an image block (spec §5.5): n_g(n_g+1) + 1 + [tiled] (th*n_l)(tw*n_l+1). */
int image_slots(int n_global, int tw, int th, int n_tile);

/* Makes the u8 views of im for plan p: views[0..p->n_views-1] (caller-provided array, each fresh; free with
 * image_free). Order: tiles row-major, then the global view. On failure every view is freed. */
DsocrStatus image_make_views(const DsImage *im, const ImagePlan *p, DsImage *views, DsError *e);

/* Normalises one view into chw: [3][h][w] floats, v = ((p/255) - 0.5)/0.5 in float32 as torch computes it,
 * then rounded to the nearest bf16 (so every value is exactly bf16-representable). */
void image_normalize(const DsImage *view, float *chw);

#endif
