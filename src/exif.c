/* exif.c: the EXIF orientation as Pillow 9.4 reads it (Image.getexif + Exif.load + ImageFileDirectory_v2.load),
 * from the three places it can come from: a TIFF-structured EXIF block, a PNG "Raw profile type exif" text (an
 * ImageMagick hex dump), and an XMP packet's tiff:Orientation. Reads untrusted bytes: every read is bounds
 * checked (fuzz/fuzz_exif.c). It is not a general EXIF reader: only IFD0 tag 0x0112 is looked at. */
#include <math.h>
#include <string.h>

#include "image.h"
#include "image_codec.h"

static uint32_t rd16(const uint8_t *p, int le) { return le ? (uint32_t)(p[0] | p[1] << 8) : (uint32_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p, int le) {
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static uint64_t rd64(const uint8_t *p, int le) {
    return le ? (uint64_t)rd32(p, 1) | (uint64_t)rd32(p + 4, 1) << 32 : (uint64_t)rd32(p, 0) << 32 | rd32(p + 4, 0);
}

/* Bytes per value of the TIFF field types Pillow can load; 0 for types it skips. */
static unsigned type_size(unsigned t) {
    switch (t) {
    case 1: case 2: case 6: case 7: return 1;
    case 3: case 8: return 2;
    case 4: case 9: case 11: case 13: return 4;
    case 5: case 10: case 12: case 16: return 8;
    default: return 0;
    }
}

/* The orientation a stored value maps to in exif_transpose's table: an integer 1..8 equal (as Python's ==) to
 * the first value; 0 otherwise. BYTE, ASCII and UNDEFINED values load as bytes/str and never match. */
static int value_orientation(unsigned type, const uint8_t *d, int le) {
    double v;
    switch (type) {
    case 3: v = rd16(d, le); break;
    case 8: v = (int16_t)rd16(d, le); break;
    case 4: case 13: v = rd32(d, le); break;
    case 9: v = (int32_t)rd32(d, le); break;
    case 6: v = (int8_t)d[0]; break;
    case 16: {
        uint64_t u = rd64(d, le);
        v = u > 100 ? 100 : (double)u;
        break;
    }
    case 5: case 10: {
        uint32_t nu = rd32(d, le), de = rd32(d + 4, le);
        int64_t n = type == 5 ? (int64_t)nu : (int64_t)(int32_t)nu, q = type == 5 ? (int64_t)de : (int64_t)(int32_t)de;
        if (q == 0 || n % q) return 0;
        v = (double)(n / q);
        break;
    }
    case 11: {
        uint32_t u = rd32(d, le);
        float f;
        memcpy(&f, &u, 4);
        v = f;
        break;
    }
    case 12: {
        uint64_t u = rd64(d, le);
        memcpy(&v, &u, 8);
        break;
    }
    default: return 0;
    }
    if (!(v >= 1 && v <= 8) || v != floor(v)) return 0;
    return (int)v;
}

/* Orientation of a TIFF-structured block (no "Exif" prefix); *present = 1 when IFD0 holds a loadable 0x0112
 * entry (whatever its value). */
int exif_orientation_tiff(const uint8_t *data, size_t len, int *present) {
    *present = 0;
    if (len < 8) return 0;
    int le;
    if (!memcmp(data, "MM\0*", 4) || !memcmp(data, "MM*\0", 4))
        le = 0;
    else if (!memcmp(data, "II*\0", 4) || !memcmp(data, "II\0*", 4))
        le = 1;
    else
        return 0; /* not TIFF, or BigTIFF (which Pillow's 8-byte EXIF header read cannot parse) */
    uint64_t pos = rd32(data + 4, le);
    if (pos + 2 > len) return 0;
    unsigned count = rd16(data + pos, le);
    pos += 2;
    unsigned best_type = 0;
    const uint8_t *best = NULL;
    for (unsigned i = 0; i < count; i++) {
        if (pos + 12 > len) break; /* a cut IFD keeps the entries before the cut */
        const uint8_t *ent = data + pos;
        pos += 12;
        unsigned tag = rd16(ent, le), type = rd16(ent + 2, le);
        uint64_t n = rd32(ent + 4, le);
        unsigned us = type_size(type);
        if (!us) continue;
        uint64_t size = n * us;
        const uint8_t *val = ent + 8;
        if (size > 4) {
            uint64_t off = rd32(ent + 8, le);
            if (off + size > len) break; /* Pillow's truncated read ends the whole IFD */
            val = data + off;
        }
        if (size == 0) continue;
        if (tag == 0x0112) {
            best_type = type;
            best = val;
        }
    }
    if (!best) return 0;
    *present = 1;
    return value_orientation(best_type, best, le);
}

int exif_orientation_present(const uint8_t *data, size_t len, int *present) {
    if (len >= 6 && !memcmp(data, "Exif\0\0", 6)) {
        data += 6;
        len -= 6;
    }
    return exif_orientation_tiff(data, len, present);
}

int exif_orientation(const uint8_t *data, size_t len) {
    int present;
    if (!data) return 0;
    return exif_orientation_present(data, len, &present);
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int is_space(int c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

int exif_orientation_from_raw_profile(const char *text, size_t len, int *present) {
    *present = 0;
    /* bytes.fromhex("".join(text.split("\n")[3:])): drop the first three lines, join the rest. */
    size_t i = 0;
    for (int nl = 0; nl < 3; nl++) {
        while (i < len && text[i] != '\n') i++;
        if (i >= len) return 0; /* "".join([]) is empty: Exif.load(b"") loads nothing */
        i++;
    }
    /* Only the TIFF header and IFD0 matter, but a malformed dump anywhere makes Pillow's getexif raise, so
     * the whole dump is validated; decoding stops keeping bytes after a generous prefix. */
    enum { KEEP = 1 << 16 };
    static const size_t keep_max = KEEP;
    uint8_t buf[KEEP];
    size_t n = 0;
    int hi = -1;
    for (; i < len; i++) {
        int c = (unsigned char)text[i];
        if (c == '\n') continue;
        if (is_space(c) && hi < 0) continue;
        int v = hexval(c);
        if (v < 0) return -1;
        if (hi < 0) {
            hi = v;
        } else {
            if (n < keep_max) buf[n] = (uint8_t)(hi << 4 | v);
            n++;
            hi = -1;
        }
    }
    if (hi >= 0) return -1;
    return exif_orientation_present(buf, n < keep_max ? n : keep_max, present);
}

int exif_orientation_from_xmp(const char *text, size_t len) {
    static const char key[] = "tiff:Orientation";
    size_t kl = sizeof key - 1;
    for (size_t i = 0; i + kl + 2 <= len; i++) {
        if (memcmp(text + i, key, kl)) continue;
        const char *p = text + i + kl;
        size_t rest = len - i - kl;
        if (rest >= 3 && p[0] == '=' && p[1] == '"' && p[2] >= '0' && p[2] <= '9') return p[2] - '0';
        if (rest >= 2 && p[0] == '>' && p[1] >= '0' && p[1] <= '9') return p[1] - '0';
    }
    return 0;
}
