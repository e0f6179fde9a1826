"""Writes the seed corpora of fuzz/fuzz_image.c (fuzz/corpus/image: small files of every format, each after
one options byte) and fuzz/fuzz_exif.c (fuzz/corpus/exif: EXIF blocks, a raw-profile text, an XMP packet).
Reuses the generators of tests/py/test_image_pillow.py. Run: /usr/bin/python3 fuzz/make_image_corpus.py"""
import io
import os
import random
import sys

import numpy as np
from PIL import Image, TiffImagePlugin

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "py"))
import test_image_pillow as t  # noqa: E402


def enc(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def main():
    img_dir, exif_dir = os.path.join(HERE, "corpus", "image"), os.path.join(HERE, "corpus", "exif")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(exif_dir, exist_ok=True)
    rgb = Image.fromarray(t.page(24, 17, 1))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(24 * 17).reshape(17, 24) % 256).astype(np.uint8)))
    pal = rgb.quantize(8)
    ex = Image.Exif()
    ex[0x0112] = 6
    ti = TiffImagePlugin.ImageFileDirectory_v2()
    ti[274] = 6
    rng = np.random.default_rng(1)
    files = {
        "jpeg_exif.jpg": enc(rgb, "JPEG", exif=ex.tobytes(), quality=50),
        "jpeg_grey.jpg": enc(rgb.convert("L"), "JPEG"),
        "jpeg_cmyk.jpg": enc(rgb.convert("CMYK"), "JPEG"),
        "jpeg_prog.jpg": enc(rgb, "JPEG", progressive=True),
        "png_rgb.png": enc(rgb, "PNG"),
        "png_rgba_exif.png": enc(rgba, "PNG", exif=ex.tobytes()),
        "png_pal_trns.png": enc(pal, "PNG", transparency=bytes([0, 100])),
        "png_1.png": enc(rgb.convert("1"), "PNG"),
        "png_i16.png": enc(Image.fromarray((np.arange(60).reshape(6, 10) * 30).astype(np.uint16)), "PNG"),
        "png_la.png": enc(rgba.convert("LA"), "PNG"),
        "png_rgb16.png": t.raw_png(rng.integers(0, 65536, (5, 6, 3)), 2, 16),
        "png_grey2.png": t.raw_png(rng.integers(0, 4, (5, 7, 1)), 0, 2),
        "png_adam7.png": t.raw_png(t.page(9, 7, 2), 2, 8, interlace=True),
        "png_key.png": t.raw_png(rng.integers(0, 2, (4, 4, 3)) * 255, 2, 8, t.png_chunk(b"tRNS", b"\0\xff" * 3)),
        "webp_lossy.webp": enc(rgb, "WEBP", quality=50),
        "webp_lossless_alpha.webp": enc(rgba, "WEBP", lossless=True, exif=ex.tobytes()),
        "gif_trns.gif": enc(pal, "GIF", transparency=2),
        "gif_interlaced.gif": enc(pal, "GIF", interlace=True),
        "bmp_rgb.bmp": enc(rgb, "BMP"),
        "bmp_1.bmp": enc(rgb.convert("1"), "BMP"),
        "bmp_p.bmp": enc(pal, "BMP"),
        "bmp_rgba.bmp": enc(rgba, "BMP"),
        "bmp_565.bmp": t.bmp_file(4, 3, 16, bytes(range(24)), 3, masks=(0xF800, 0x7E0, 0x1F)),
        "bmp_core.bmp": t.bmp_file(5, 2, 4, bytes(range(8)), header=12, palette=bytes(range(48))),
        "bmp_rle8.bmp": t.bmp_file(4, 2, 8, bytes([4, 1, 0, 0, 0, 3, 5, 6, 7, 0, 1, 2, 0, 1]), 1,
                                   palette=bytes(range(256)) * 4),
        "bmp_rle4.bmp": t.bmp_file(4, 2, 4, bytes([4, 0x12, 0, 0, 0, 4, 0x34, 0x56, 0, 1]), 2,
                                   palette=bytes(range(64))),
        "tiff_rgb_orient.tif": enc(rgb, "TIFF", tiffinfo=ti),
        "tiff_lzw.tif": enc(rgb, "TIFF", compression="tiff_lzw"),
        "tiff_g4.tif": enc(rgb.convert("1"), "TIFF", compression="group4"),
        "tiff_cmyk.tif": enc(rgb.convert("CMYK"), "TIFF"),
        "tiff_p.tif": enc(pal, "TIFF"),
        "tiff_i16.tif": enc(Image.fromarray((np.arange(60).reshape(6, 10) * 30).astype(np.uint16)), "TIFF"),
        "tiff_jpeg.tif": enc(Image.fromarray(t.page(16, 16, 3)), "TIFF", compression="jpeg"),
    }
    for i, (name, data) in enumerate(sorted(files.items())):
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(bytes([i % 16]) + data)
    r = random.Random(3)
    blobs = {f"blob{i:02d}.bin": t.exif_blob(r) for i in range(20)}
    blobs["pillow_exif.bin"] = ex.tobytes()
    hexd = ex.tobytes().hex()
    blobs["raw_profile.txt"] = f"\nexif\n{len(hexd) // 2:8d}\n{hexd}\n".encode()
    blobs["xmp.txt"] = b'<x:xmpmeta><rdf:Description tiff:Orientation="8"/></x:xmpmeta>'
    for name, data in blobs.items():
        with open(os.path.join(exif_dir, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
