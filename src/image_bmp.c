/* image_bmp.c: our own BMP reader, written to give what Pillow 9.4's BmpImagePlugin gives (headers of 12, 40,
 * 64, 108 and 124 bytes; 1/4/8-bit palettes, 16-bit 5-5-5 and 5-6-5, 24-bit, 32-bit with Pillow's supported
 * bit-field layouts; RLE8 and RLE4 with Pillow's decoder's exact behaviour, quirks included; bottom-up and
 * top-down rows). It reads untrusted bytes: every read is bounds checked (fuzz/fuzz_image.c). What Pillow
 * refuses (other header sizes, 2-bit, other bit fields, compressions 4-6) is refused with a message. */
#include <stdlib.h>
#include <string.h>

#include "image_codec.h"

static uint32_t u16le(const uint8_t *p) { return (uint32_t)(p[0] | p[1] << 8); }
static uint32_t u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

typedef enum { BM_PAL, BM_1, BM_L, BM_BGR15, BM_BGR16, BM_BGR, BM_BGRX, BM_XBGR, BM_ABGR, BM_RGBA, BM_BGRA } BmpRaw;

static DsocrStatus bad(DsError *e, const char *what) { return ds_fail(e, DSOCR_E_IMAGE, "BMP: %s", what); }

/* Pillow's RLE8/RLE4 decoder: fills idx (w*h, file row order) and returns 0, or -1 when the stream ends before
 * w*h pixels are produced (Pillow: "not enough image data"). pos is an absolute file offset (word alignment
 * in absolute mode depends on it). */
static int bmp_rle(const uint8_t *b, size_t n, size_t pos, int w, int h, int rle4, uint8_t *idx) {
    uint64_t total = (uint64_t)w * h, len = 0;
    uint64_t x = 0;
#define PUT(v)                                                                                                \
    do {                                                                                                      \
        if (len < total) idx[len] = (uint8_t)(v);                                                             \
        len++;                                                                                                \
    } while (0)
    while (len < total) {
        if (pos + 2 > n) break;
        unsigned count = b[pos], byte = b[pos + 1];
        pos += 2;
        if (count) {
            if (x + count > (uint64_t)w) count = x < (uint64_t)w ? (unsigned)(w - x) : 0;
            for (unsigned i = 0; i < count; i++) PUT(rle4 ? (i % 2 == 0 ? byte >> 4 : byte & 15) : byte);
            x += count;
        } else if (byte == 0) {
            uint64_t pad = ((uint64_t)w - len % (uint64_t)w) % (uint64_t)w;
            uint64_t target = len + pad;
            while (len < target && len < total) PUT(0);
            len = target;
            x = 0;
        } else if (byte == 1) {
            break;
        } else if (byte == 2) {
            /* Pillow reads two bytes, then two more for (right, up) */
            if (pos + 2 > n) break;
            pos += 2;
            if (pos + 2 > n) return -1;
            unsigned right = b[pos], up = b[pos + 1];
            pos += 2;
            uint64_t add = right + (uint64_t)up * w;
            uint64_t fill = add;
            if (len < total) {
                uint64_t room = total - len;
                if (fill > room) fill = room;
                memset(idx + len, 0, fill);
            }
            len += add;
            x = len % (uint64_t)w;
        } else {
            size_t want = rle4 ? byte / 2 : byte;
            size_t got = n - pos < want ? n - pos : want;
            for (size_t i = 0; i < got; i++) {
                if (rle4) {
                    PUT(b[pos + i] >> 4);
                    PUT(b[pos + i] & 15);
                } else {
                    PUT(b[pos + i]);
                }
            }
            pos += got;
            if (got < want) break;
            x += byte;
            if (pos % 2) pos++;
        }
    }
#undef PUT
    return len >= total ? 0 : -1;
}

DsocrStatus image_decode_bmp(const uint8_t *b, size_t n, const ImageDecodeOptions *o, ImageRaw *r, DsError *e) {
    if (n < 18) return bad(e, "file is truncated (no header)");
    uint64_t offset = u32le(b + 10);
    uint32_t hs = u32le(b + 14);
    if (hs != 12 && hs != 40 && hs != 64 && hs != 108 && hs != 124) return ds_fail(e, DSOCR_E_IMAGE, "BMP: unsupported header size %u", hs);
    if (14 + (size_t)hs > n) return bad(e, "file is truncated (header)");
    const uint8_t *hd = b + 18; /* header data after its size field */
    uint64_t w, h;
    unsigned bits, compression = 0;
    uint64_t colors = 0;
    int topdown = 0, padding;
    size_t pos = 14 + hs;
    uint32_t mask[4] = {0, 0, 0, 0};
    if (hs == 12) {
        w = u16le(hd);
        h = u16le(hd + 2);
        bits = u16le(hd + 6);
        padding = 3;
    } else {
        topdown = hd[7] == 0xFF;
        w = u32le(hd);
        h = topdown ? ((uint64_t)1 << 32) - u32le(hd + 4) : u32le(hd + 4);
        bits = u16le(hd + 10);
        compression = u32le(hd + 12);
        colors = u32le(hd + 28);
        padding = 4;
        if (compression == 3) {
            if (hs - 4 >= 52) {
                for (int i = 0; i < 4; i++) mask[i] = u32le(hd + 36 + 4 * i);
            } else {
                if (pos + 12 > n) return bad(e, "file is truncated (bit fields)");
                for (int i = 0; i < 3; i++) mask[i] = u32le(b + pos + 4 * i);
                pos += 12;
            }
        }
    }
    if (colors == 0) colors = bits < 32 ? (uint64_t)1 << bits : 0;
    if (offset == 14 + hs && bits <= 8) offset += 4 * colors;
    BmpRaw raw;
    switch (bits) {
    case 1: case 4: case 8: raw = BM_PAL; break;
    case 16: raw = BM_BGR15; break;
    case 24: raw = BM_BGR; break;
    case 32: raw = BM_BGRX; break;
    default: return ds_fail(e, DSOCR_E_IMAGE, "BMP: unsupported pixel depth %u", bits);
    }
    int rle = 0;
    if (compression == 3) {
        uint32_t r_ = mask[0], g_ = mask[1], b_ = mask[2], a_ = mask[3];
#define M(R, G, B, A) (r_ == (R) && g_ == (G) && b_ == (B) && a_ == (A))
#define M3(R, G, B) (r_ == (R) && g_ == (G) && b_ == (B))
        if (bits == 32 && M(0xFF0000, 0xFF00, 0xFF, 0)) raw = BM_BGRX;
        else if (bits == 32 && M(0xFF000000u, 0xFF0000, 0xFF00, 0)) raw = BM_XBGR;
        else if (bits == 32 && M(0xFF000000u, 0xFF0000, 0xFF00, 0xFF)) raw = BM_ABGR;
        else if (bits == 32 && M(0xFF, 0xFF00, 0xFF0000, 0xFF000000u)) raw = BM_RGBA;
        else if (bits == 32 && (M(0xFF0000, 0xFF00, 0xFF, 0xFF000000u) || M(0, 0, 0, 0))) raw = BM_BGRA;
        else if (bits == 24 && M3(0xFF0000, 0xFF00, 0xFF)) raw = BM_BGR;
        else if (bits == 16 && M3(0xF800, 0x7E0, 0x1F)) raw = BM_BGR16;
        else if (bits == 16 && M3(0x7C00, 0x3E0, 0x1F)) raw = BM_BGR15;
        else return bad(e, "unsupported bit-field layout");
#undef M
#undef M3
    } else if (compression == 1 || compression == 2) {
        if (raw != BM_PAL) return bad(e, "run-length coding of a non-palette image");
        rle = (int)compression;
    } else if (compression != 0) {
        return ds_fail(e, DSOCR_E_IMAGE, "BMP: unsupported compression %u", compression);
    }
    uint8_t pal[256][3];
    for (int i = 0; i < 256; i++) pal[i][0] = pal[i][1] = pal[i][2] = (uint8_t)i;
    if (raw == BM_PAL) {
        if (colors == 0 || colors > 256) return ds_fail(e, DSOCR_E_IMAGE, "BMP: unsupported palette size %llu", (unsigned long long)colors);
        if (pos + padding * colors > n) return bad(e, "file is truncated (palette)");
        int grey = 1;
        for (unsigned i = 0; i < colors; i++) {
            const uint8_t *p = b + pos + padding * i;
            unsigned val = colors == 2 ? (i ? 255 : 0) : i;
            if (p[0] != val || p[1] != val || p[2] != val) grey = 0;
            pal[i][0] = p[2];
            pal[i][1] = p[1];
            pal[i][2] = p[0];
        }
        if (grey) {
            /* Pillow drops a grey palette and reads the data as mode "1" / "L": the same pixels when that raw
             * mode has the file's bit depth; otherwise it misreads the data, which we refuse. */
            if (colors == 2 && bits == 1 && !rle) raw = BM_1;
            else if (colors != 2 && bits == 8) raw = BM_L;
            else return bad(e, "grey palette with a bit depth Pillow cannot read");
        }
    }
    int has_alpha = raw == BM_ABGR || raw == BM_RGBA || raw == BM_BGRA;
    uint64_t stride = ((w * bits + 31) >> 3) & ~(uint64_t)3;
    DsocrStatus st;
    if (rle) {
        st = image_check_dims("BMP", (long long)w, (long long)h, 1.0, n, 64.0 * (double)(w + 1), o->max_pixels, e);
        if (st != DSOCR_OK) return st;
    } else {
        st = image_check_dims("BMP", (long long)w, (long long)h, 0, n, 0, o->max_pixels, e);
        if (st != DSOCR_OK) return st;
        uint64_t need = stride * (h - 1) + (w * bits + 7) / 8;
        if (offset > n || need > n - offset)
            return ds_fail(e, DSOCR_E_IMAGE, "BMP: file is truncated (%llu bytes of pixels needed, %llu present)",
                           (unsigned long long)need, (unsigned long long)(offset > n ? 0 : n - offset));
    }
    int W = (int)w, H = (int)h;
    uint8_t *idx = NULL;
    if (rle) {
        idx = malloc((size_t)W * H);
        if (!idx) return ds_fail(e, DSOCR_E_NOMEM, "BMP: out of memory");
        if (offset > n || bmp_rle(b, n, (size_t)offset, W, H, rle == 2, idx)) {
            free(idx);
            return bad(e, "run-length data ends before the image is complete");
        }
    }
    st = image_raw_alloc(r, W, H, o->alpha_white && has_alpha, e);
    if (st != DSOCR_OK) {
        free(idx);
        return st;
    }
    for (int fy = 0; fy < H; fy++) {
        int y = topdown ? fy : H - 1 - fy;
        uint8_t *out = r->rgb + (size_t)y * W * 3;
        uint8_t *al = r->alpha ? r->alpha + (size_t)y * W : NULL;
        if (rle) {
            const uint8_t *row = idx + (size_t)fy * W;
            for (int x = 0; x < W; x++) memcpy(out + 3 * x, pal[row[x]], 3);
            continue;
        }
        const uint8_t *row = b + offset + stride * fy;
        for (int x = 0; x < W; x++) {
            uint8_t *px = out + 3 * x;
            int a = 255;
            switch (raw) {
            case BM_PAL: {
                unsigned v = bits == 8 ? row[x] : bits == 4 ? (row[x >> 1] >> (x & 1 ? 0 : 4)) & 15 : (row[x >> 3] >> (7 - (x & 7))) & 1;
                memcpy(px, pal[v], 3);
                break;
            }
            case BM_1: px[0] = px[1] = px[2] = (row[x >> 3] >> (7 - (x & 7))) & 1 ? 255 : 0; break;
            case BM_L: px[0] = px[1] = px[2] = row[x]; break;
            case BM_BGR15: {
                unsigned v = u16le(row + 2 * x);
                px[2] = (uint8_t)((v & 31) * 255 / 31);
                px[1] = (uint8_t)(((v >> 5) & 31) * 255 / 31);
                px[0] = (uint8_t)(((v >> 10) & 31) * 255 / 31);
                break;
            }
            case BM_BGR16: {
                unsigned v = u16le(row + 2 * x);
                px[2] = (uint8_t)((v & 31) * 255 / 31);
                px[1] = (uint8_t)(((v >> 5) & 63) * 255 / 63);
                px[0] = (uint8_t)(((v >> 11) & 31) * 255 / 31);
                break;
            }
            case BM_BGR: px[0] = row[3 * x + 2]; px[1] = row[3 * x + 1]; px[2] = row[3 * x]; break;
            case BM_BGRX: px[0] = row[4 * x + 2]; px[1] = row[4 * x + 1]; px[2] = row[4 * x]; break;
            case BM_BGRA: px[0] = row[4 * x + 2]; px[1] = row[4 * x + 1]; px[2] = row[4 * x]; a = row[4 * x + 3]; break;
            case BM_XBGR: px[0] = row[4 * x + 3]; px[1] = row[4 * x + 2]; px[2] = row[4 * x + 1]; break;
            case BM_ABGR: px[0] = row[4 * x + 3]; px[1] = row[4 * x + 2]; px[2] = row[4 * x + 1]; a = row[4 * x]; break;
            case BM_RGBA: memcpy(px, row + 4 * x, 3); a = row[4 * x + 3]; break;
            }
            if (al) al[x] = (uint8_t)a;
        }
    }
    free(idx);
    return DSOCR_OK;
}
