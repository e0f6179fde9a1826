"""The C image pipeline against Pillow 9.4, to the pixel (spec §4, §16 R5, R8-R10).

Drives build/tests/tools/image_dump (built by `make test`). The Pillow side is written here directly:
Image.open -> ImageOps.exif_transpose -> convert("RGB") (or, for the vLLM profile, any transparency pasted
on white), then the official view construction: ImageOps.pad(..., color=(127,127,127)), Image.resize (BICUBIC),
crop, with the tile grid from the official dynamic_preprocess search.
Run with Debian's python3: /usr/bin/python3 -m pytest tests/py/test_image_pillow.py
"""
import io
import os
import random
import struct
import subprocess
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps, TiffImagePlugin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "build", "tests", "tools", "image_dump")
IMAGES = os.path.join(ROOT, "tests", "images")
MODES = {"tiny": (512, 512, False), "small": (640, 640, False), "base": (1024, 1024, False),
         "large": (1280, 1280, False), "gundam": (1024, 640, True)}
MAX_TILES = {"hf": 9, "vllm": 6}


def tool(*args, check=True):
    assert os.path.exists(TOOL), f"{TOOL} is missing: build it with `make CUDA=0 {os.path.relpath(TOOL, ROOT)}`"
    r = subprocess.run([TOOL, *map(str, args)], capture_output=True)
    if check and r.returncode != 0:
        raise AssertionError(f"image_dump {' '.join(map(str, args))} failed: {r.stderr.decode()}")
    return r


def read_image(buf):
    nl = buf.index(b"\n")
    w, h = map(int, buf[:nl].split())
    return np.frombuffer(buf[nl + 1:], np.uint8).reshape(h, w, 3)


def c_decode(path, alpha_white=False):
    return read_image(tool("decode", *(["--alpha-white"] if alpha_white else []), path).stdout)


# ------------------------------------------------------------------------------------------------ Pillow side

def has_transparency(im):
    return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info


def pil_load(path, alpha_white=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im = Image.open(path)
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # what the official code does when EXIF handling throws
            pass
        if alpha_white and has_transparency(im):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", im.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.split()[3])
            return bg
        return im.convert("RGB")


def target_ratios(lo, hi):
    return sorted({(i, j) for n in range(lo, hi + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                   if lo <= i * j <= hi}, key=lambda x: x[0] * x[1])


def find_grid(w, h, tile, lo, hi):
    ar = w / h
    best_d, best = float("inf"), (1, 1)
    for r in target_ratios(lo, hi):
        d = abs(ar - r[0] / r[1])
        if d < best_d:
            best_d, best = d, r
        elif d == best_d and w * h > 0.5 * tile * tile * r[0] * r[1]:
            best = r
    return best


def pil_views(img, base, isz, crop, max_tiles):
    """(views, (tw, th)) as the HF infer path builds them (non-crop: HF semantics, spec R5)."""
    views, grid = [], (0, 0)
    if crop:
        w, h = img.size
        if w > 640 or h > 640:
            tw, th = grid = find_grid(w, h, isz, 2, max_tiles)
            big = img.resize((tw * isz, th * isz))
            for k in range(tw * th):
                x, y = (k % tw) * isz, (k // tw) * isz
                views.append(big.crop((x, y, x + isz, y + isz)))
        views.append(ImageOps.pad(img, (base, base), color=(127, 127, 127)))
    else:
        if isz <= 640:
            img = img.resize((isz, isz))
        views.append(ImageOps.pad(img, (isz, isz), color=(127, 127, 127)))
    return views, grid


def c_views(path, compat, *mode_args, norm=False):
    out = tool("views", *mode_args, "--compat", compat, *(["--norm"] if norm else []), path).stdout
    nl = out.index(b"\n")
    tw, th, tile, gside, direct, slots, nviews = map(int, out[:nl].split())
    data, views, off = out[nl + 1:], [], 0
    for v in range(nviews):
        s = tile if v < nviews - 1 else gside
        n = s * s * 3 * (4 if norm else 1)
        buf = data[off:off + n]
        views.append(np.frombuffer(buf, np.float32).reshape(3, s, s) if norm
                     else np.frombuffer(buf, np.uint8).reshape(s, s, 3))
        off += n
    assert off == len(data)
    return (tw, th), tile, gside, slots, views


def slots(n_g, tw, th, n_l):
    return n_g * (n_g + 1) + 1 + ((th * n_l) * (tw * n_l + 1) if tw else 0)


def check_views(path, compat, base, isz, crop, mode_args):
    img = pil_load(path, alpha_white=compat == "vllm")
    ref, grid = pil_views(img, base, isz, crop, MAX_TILES[compat])
    cgrid, tile, gside, nslots, views = c_views(path, compat, *mode_args)
    assert cgrid == grid, (path, compat, mode_args)
    assert len(views) == len(ref)
    gs = base if crop else isz
    assert gside == gs
    assert nslots == slots(gs // 64, grid[0], grid[1], isz // 64)
    for k, (c, r) in enumerate(zip(views, ref)):
        r = np.asarray(r)
        assert c.shape == r.shape, (path, compat, mode_args, k)
        diff = np.argwhere(c != r)
        assert len(diff) == 0, f"{path} {compat} {mode_args} view {k}: {len(diff)} values differ, first {diff[:3]}"


# ------------------------------------------------------------------------------------------------ images

def png_chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def raw_png(arr, ct, bd, extra=b"", interlace=False, plte=None):
    """A PNG written by hand (for what Pillow cannot write: 16-bit RGB(A), 2/4-bit grey, colour keys,
    Adam7). arr: [h][w][channels] unsigned samples."""
    h, w = arr.shape[:2]
    arr = arr.reshape(h, w, -1)

    def rows(a):
        out = b""
        for row in a:
            if bd < 8:
                bits = "".join(format(int(v), f"0{bd}b") for v in row.reshape(-1))
                bits += "0" * (-len(bits) % 8)
                out += b"\0" + int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b"\0"
            else:
                out += b"\0" + row.astype(">u2" if bd == 16 else np.uint8).tobytes()
        return out

    if interlace:
        data = b""
        for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                               (0, 1, 1, 2)]:
            sub = arr[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                data += rows(sub)
    else:
        data = rows(arr)
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bd, ct, 0, 0, int(interlace)))
    if plte is not None:
        out += png_chunk(b"PLTE", bytes(plte))
    return out + extra + png_chunk(b"IDAT", zlib.compress(data)) + png_chunk(b"IEND", b"")


def bmp_file(w, h, bits, pixels, compression=0, palette=b"", masks=None, header=40, topdown=False):
    if header == 12:
        info = struct.pack("<IHHHH", 12, w, h, 1, bits)
    else:
        info = struct.pack("<IiiHHIIiiII", 40, w, -h if topdown else h, 1, bits, compression, len(pixels), 2835,
                           2835, len(palette) // 4 if palette else 0, 0)
    extra = b"".join(struct.pack("<I", m) for m in masks) if masks else b""
    off = 14 + len(info) + len(extra) + len(palette)
    return b"BM" + struct.pack("<IHHI", off + len(pixels), 0, 0, off) + info + extra + palette + pixels


def page(w, h, seed):
    """A page-like RGB test image: smooth gradients, hard edges and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 7) % 256], -1)
    a = a.astype(np.int32)
    a[(x // 17 + y // 13) % 5 == 0] = 20
    a += rng.integers(-30, 30, a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    files = {}

    def save(name, data_or_img, **kw):
        p = str(d / name)
        if isinstance(data_or_img, bytes):
            with open(p, "wb") as f:
                f.write(data_or_img)
        else:
            data_or_img.save(p, **kw)
        files[name] = p

    rgb = Image.fromarray(page(900, 700, 1))
    g16 = (np.arange(300 * 200).reshape(200, 300) * 7 % 1400).astype(np.uint16)
    save("grey16.png", Image.fromarray(g16))
    pal = Image.fromarray(page(300, 200, 2)).quantize(60)
    save("palette_trns.png", pal, transparency=bytes([0, 64, 128] + [255] * 20 + [7]))
    la = Image.fromarray(page(320, 240, 3)[:, :, 0]).convert("L")
    alpha = Image.fromarray((np.arange(320 * 240).reshape(240, 320) % 256).astype(np.uint8))
    save("la.png", Image.merge("LA", (la, alpha)))
    rgba = Image.fromarray(page(500, 300, 4)).convert("RGBA")
    rgba.putalpha(alpha.resize((500, 300)))
    save("rgba.png", rgba)
    for o in (2, 3, 4, 5, 6, 7, 8):
        ex = Image.Exif()
        ex[0x0112] = o
        save(f"exif{o}.jpg", Image.fromarray(page(700, 500, 10 + o)), exif=ex.tobytes(), quality=85)
    save("gray.jpg", Image.fromarray(page(400, 300, 5)[:, :, 1]), quality=80)
    save("cmyk.jpg", rgb.convert("CMYK"), quality=90)
    save("prog.jpg", rgb, progressive=True, quality=75, subsampling=2)
    save("lossy.webp", rgb, quality=80)
    save("lossless.webp", Image.fromarray(page(300, 300, 6)), lossless=True)
    ex = Image.Exif()
    ex[0x0112] = 6
    save("alpha_exif.webp", rgba, quality=90, exif=ex.tobytes())
    save("trns.gif", pal, transparency=3)
    save("plain.gif", Image.fromarray(page(700, 300, 7)).convert("P"))
    save("rgb.bmp", Image.fromarray(page(333, 211, 8)))
    save("one.bmp", Image.fromarray(page(101, 77, 9)[:, :, 0]).convert("1"))
    save("l.bmp", Image.fromarray(page(120, 90, 9)[:, :, 2]))
    save("p.bmp", pal)
    save("rgba.bmp", rgba)
    save("rgb.tif", rgb)
    save("lzw.tif", rgb, compression="tiff_lzw")
    save("deflate.tif", Image.fromarray(page(640, 480, 11)), compression="tiff_adobe_deflate")
    save("jpeg.tif", rgb, compression="jpeg")
    save("cmyk.tif", rgb.convert("CMYK"))
    save("one_g4.tif", Image.fromarray(page(700, 700, 12)[:, :, 0]).convert("1"), compression="group4")
    save("l.tif", Image.fromarray(page(300, 200, 13)[:, :, 0]))
    save("p.tif", pal)
    save("rgba.tif", rgba)
    save("i16.tif", Image.fromarray(g16))
    for o in range(2, 9):  # Pillow 9.4 applies a TIFF orientation twice (see image_codecs.c)
        ti = TiffImagePlugin.ImageFileDirectory_v2()
        ti[274] = o
        save(f"orient{o}.tif", Image.fromarray(page(30, 20, 14)), tiffinfo=ti, compression=None if o % 2 else
             "tiff_lzw")
    save("one.png", Image.fromarray(page(333, 100, 15)[:, :, 0]).convert("1"))
    # hand-written PNGs
    rng = np.random.default_rng(20)
    save("rgb16.png", raw_png(rng.integers(0, 65536, (60, 70, 3)), 2, 16))
    save("rgba16.png", raw_png(rng.integers(0, 65536, (50, 40, 4)), 6, 16))
    save("la16.png", raw_png(rng.integers(0, 65536, (50, 40, 2)), 4, 16))
    save("grey2.png", raw_png(rng.integers(0, 4, (33, 45, 1)), 0, 2))
    save("grey4_trns.png", raw_png(rng.integers(0, 16, (33, 45, 1)), 0, 4, png_chunk(b"tRNS", b"\0\x05")))
    save("grey8_trns.png", raw_png(rng.integers(0, 4, (30, 30, 1)) * 60, 0, 8, png_chunk(b"tRNS", b"\0\x3c")))
    save("rgb_trns.png", raw_png(rng.integers(0, 2, (30, 30, 3)) * 255, 2, 8,
                                 png_chunk(b"tRNS", b"\0\xff\0\0\0\xff")))
    save("pal_short.png", raw_png(rng.integers(0, 256, (20, 40, 1)), 3, 8, png_chunk(b"tRNS", b"\x10\x20"),
                                  plte=[10, 20, 30, 200, 100, 50, 1, 2, 3]))
    save("pal4.png", raw_png(rng.integers(0, 16, (21, 37, 1)), 3, 4, plte=list(rng.integers(0, 256, 48))))
    save("adam7.png", raw_png(page(67, 45, 21), 2, 8, interlace=True))
    save("adam7_16.png", raw_png(rng.integers(0, 65536, (23, 19, 1)), 0, 16, interlace=True))
    # orientation from PNG text chunks
    ex = Image.Exif()
    ex[0x0112] = 3
    blob = ex.tobytes()  # starts with Exif\0\0
    hexd = blob.hex()
    raw_text = f"\nexif\n{len(blob):8d}\n" + "\n".join(hexd[i:i + 72] for i in range(0, len(hexd), 72)) + "\n"
    save("rawprofile.png", raw_png(page(64, 40, 22), 2, 8, png_chunk(b"tEXt", b"Raw profile type exif\0" +
                                                                        raw_text.encode())))
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    save("xmp.png", raw_png(page(64, 40, 23), 2, 8, png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp)))
    save("exif_after_idat.png", raw_png(page(50, 30, 24), 2, 8)[:-12] + png_chunk(b"eXIf", ex.tobytes()[6:]) +
         png_chunk(b"IEND", b""))
    # Pillow prepends Exif\0\0 to an eXIf chunk itself: a chunk that carries one already does not parse
    save("exif_prefixed.png", raw_png(page(50, 30, 25), 2, 8, png_chunk(b"eXIf", ex.tobytes())))
    # hand-written BMPs
    v = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    save("bgr15.bmp", bmp_file(256, 256, 16, v.astype("<u2").tobytes()))
    save("bgr16.bmp", bmp_file(256, 256, 16, v.astype("<u2").tobytes(), 3, masks=(0xF800, 0x7E0, 0x1F)))
    save("bgr15_bf.bmp", bmp_file(256, 256, 16, v.astype("<u2").tobytes(), 3, masks=(0x7C00, 0x3E0, 0x1F)))
    p32 = rng.integers(0, 256, (20, 30, 4)).astype(np.uint8).tobytes()
    save("xbgr.bmp", bmp_file(30, 20, 32, p32, 3, masks=(0xFF000000, 0xFF0000, 0xFF00)))
    save("topdown.bmp", bmp_file(30, 20, 24, rng.integers(0, 256, (20, 92)).astype(np.uint8).tobytes(),
                                 topdown=True))
    palette = bytes(rng.integers(0, 256, 16 * 4).astype(np.uint8))
    save("p4.bmp", bmp_file(31, 9, 4, rng.integers(0, 256, (9, 16)).astype(np.uint8).tobytes(),
                            palette=palette))
    save("core.bmp", bmp_file(31, 9, 4, rng.integers(0, 256, (9, 16)).astype(np.uint8).tobytes(), header=12,
                              palette=bytes(b for i in range(16) for b in palette[4 * i:4 * i + 3])))
    pal8 = bytes(rng.integers(0, 256, 256 * 4).astype(np.uint8))
    # Pillow's RLE8 reader: absolute runs word-aligned on the file offset, delta read as 0 2 x x right up
    rle8 = bytes([3, 7, 0, 3, 1, 2, 3, 0, 4, 9, 0, 0, 0, 2, 0, 0, 5, 1, 5, 200, 0, 0, 10, 4, 0, 0, 1, 1, 0, 0, 10,
                  6])
    save("rle8.bmp", bmp_file(10, 6, 8, rle8, 1, palette=pal8))
    rle4 = bytes([10, 0x12, 0, 0, 0, 8, 0x34, 0x56, 0x78, 0x9A, 2, 0xEF, 0, 0, 3, 0xCD, 0, 0])
    save("rle4.bmp", bmp_file(10, 3, 4, rle4, 2, palette=palette))
    # files Pillow refuses (names start with "bad_"): C must refuse them too
    save("bad_rle_short.bmp", bmp_file(10, 3, 4, rle4[:-2] + bytes([0, 1]), 2, palette=palette))
    save("bad_bitfields.bmp", bmp_file(4, 4, 16, bytes(32), 3, masks=(0xF00, 0xF0, 0xF)))
    save("bad_trunc.bmp", bmp_file(30, 20, 24, bytes(1000)))
    return files


GENERATED_DECODE = None  # filled from the fixture's keys


def test_four_images_decode_and_views_every_mode_and_profile():
    for name in sorted(os.listdir(IMAGES)):
        if name.endswith(".py"):
            continue
        path = os.path.join(IMAGES, name)
        for aw in (False, True):
            assert np.array_equal(c_decode(path, aw), np.asarray(pil_load(path, aw))), (name, aw)
        for compat in ("hf", "vllm"):
            for mode, (base, isz, crop) in MODES.items():
                check_views(path, compat, base, isz, crop, ["--mode", mode])


def test_generated_images_decode_like_pillow(gen):
    for name, path in sorted(gen.items()):
        for aw in (False, True):
            if name.startswith("bad_"):
                with pytest.raises(Exception):
                    pil_load(path, aw)
                r = tool("decode", path, check=False)
                assert r.returncode == 1 and r.stderr.startswith(b"error: "), name
                continue
            r = np.asarray(pil_load(path, aw))
            c = c_decode(path, aw)
            assert c.shape == r.shape, (name, aw, c.shape, r.shape)
            bad = np.argwhere(c != r)
            assert len(bad) == 0, f"{name} alpha_white={aw}: {len(bad)} values differ, first {bad[:3]}"


def test_orientations_really_transform(gen):
    # an oriented file must not decode like its raw pixels (so the comparison above cannot pass vacuously)
    for name in ("exif3.jpg", "exif6.jpg", "exif8.jpg", "rawprofile.png", "xmp.png", "exif_after_idat.png",
                 "alpha_exif.webp"):
        with Image.open(gen[name]) as im:
            raw = np.asarray(im.convert("RGB"))
        c = c_decode(gen[name])
        assert c.shape != raw.shape or not np.array_equal(c, raw), name
    # TIFF: Pillow's own loading already applies the tag, so compare with the pixels written
    src = page(30, 20, 14)
    for o in range(2, 9):
        want = src[::-1, ::-1] if o in (6, 8) else src
        assert np.array_equal(c_decode(gen[f"orient{o}.tif"]), want), o


def test_generated_images_views(gen):
    for name in ("cmyk.jpg", "exif6.jpg", "grey16.png", "palette_trns.png", "lossy.webp", "plain.gif",
                 "rgba.bmp", "lzw.tif", "one_g4.tif", "rgba.png"):
        for compat in ("hf", "vllm"):
            for mode in ("gundam", "small"):
                base, isz, crop = MODES[mode]
                check_views(gen[name], compat, base, isz, crop, ["--mode", mode])


def test_custom_sizes(gen):
    path = os.path.join(IMAGES, "portrait.jpg")
    for base, isz, crop in [(1024, 896, True), (1280, 1024, True), (768, 512, True), (1024, 640, False),
                            (768, 768, False), (576, 576, False), (1280, 704, True)]:
        for compat in ("hf", "vllm"):
            check_views(path, compat, base, isz, crop, ["--base", base, "--image", isz, "--crop", int(crop)])
    bad = tool("views", "--base", 1000, "--image", 640, "--crop", 1, path, check=False)
    assert bad.returncode == 1 and b"multiple of 64" in bad.stderr


def test_grid_examples_from_spec():
    cases = [((1920, 1080, 6), (2, 1)), ((1920, 1080, 9), (4, 2)), ((1191, 1684, 6), (2, 3)),
             ((1191, 1684, 9), (2, 3)), ((800, 600, 9), (3, 2)), ((700, 700, 9), (2, 2)),
             ((2000, 2000, 6), (2, 2)), ((2000, 2000, 9), (3, 3))]
    for (w, h, mx), want in cases:
        out = tool("grid", w, h, 640, 2, mx).stdout.split()
        assert tuple(map(int, out)) == want, (w, h, mx)
    assert slots(16, 2, 1, 10) == 483 and slots(16, 4, 2, 10) == 1093 and slots(16, 2, 3, 10) == 903


def batch(cmd, rows):
    inp = "".join(" ".join(map(str, r)) + "\n" for r in rows).encode()
    r = subprocess.run([TOOL, cmd, "-"], input=inp, capture_output=True, check=True)
    return [tuple(map(int, line.split())) for line in r.stdout.decode().splitlines()]


def test_grid_matches_official_search():
    rng = random.Random(5)
    sizes = [(rng.randint(641, 5000), rng.randint(100, 5000)) for _ in range(300)]
    # exact ratios make exact ties, where candidate order and the area rule decide
    sizes += [(a * k, b * k) for a in range(1, 10) for b in range(1, 10) for k in (70, 200, 333, 1000) if a * k > 640]
    rows = [(w, h, tile, 2, mx) for w, h in sizes for mx in (6, 9) for tile in (640, 1024)]
    got = batch("grid", rows)
    assert len(got) == len(rows)
    for row, g in zip(rows, got):
        assert g == find_grid(row[0], row[1], row[2], 2, row[4]), row


def test_candidate_order_is_cpythons():
    # the C tables must be CPython's order (spec §4.4); the spec's printed lists are what C tabulates
    assert target_ratios(2, 9) == [(1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6),
                                   (6, 1), (3, 2), (2, 3), (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9),
                                   (3, 3), (9, 1)]
    assert target_ratios(2, 6) == [(1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1), (6, 1),
                                   (2, 3), (1, 6), (3, 2)]


def pillow_fit(w, h, s):
    """ImageOps.contain's size and ImageOps.pad's paste offset (Pillow 9.4's arithmetic)."""
    if w / h > 1:
        nw, nh = s, round(h / w * s)
    elif w / h < 1:
        nw, nh = round(w / h * s), s
    else:
        nw, nh = s, s
    x0 = round((s - nw) * 0.5) if nw != s else 0
    y0 = round((s - nh) * 0.5) if nw == s and nh != s else 0
    return nw, nh, x0, y0


def test_fit_sizes_match_pillow_contain_and_pad():
    rng = random.Random(7)
    sizes = [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(500)] + [(1000, 700), (700, 1000),
                                                                                    (1024, 1024), (3, 2)]
    rows = [(w, h, s) for w, h in sizes for s in (512, 1024, 1280)]
    for row, g in zip(rows, batch("fit", rows)):
        want = pillow_fit(*row)
        if min(want[:2]) == 0:  # R10: Pillow raises; we clamp the short side to 1 px
            want = pillow_fit(*row)[:2]
            assert g[:2] == tuple(max(v, 1) for v in want), row
        else:
            assert g == want, row
    # the arithmetic above is Pillow's: check it on real images (small ones, to stay fast)
    for w, h in [(30, 7), (7, 30), (1000, 700), (13, 13), (300, 299)]:
        for s in (64, 100):
            im = Image.new("RGB", (w, h), (200, 0, 0))
            pad = np.asarray(ImageOps.pad(im, (s, s), color=(127, 127, 127)))
            nw, nh, x0, y0 = pillow_fit(w, h, s)
            assert ImageOps.contain(im, (s, s)).size == (nw, nh)
            assert (pad[y0, x0] == (200, 0, 0)).all() and (pad[y0 + nh - 1, x0 + nw - 1] == (200, 0, 0)).all()
            assert (pad == 127).all(axis=2).sum() == s * s - nw * nh
    # spec §4.3 example, and R10: the short side is clamped to 1 px where Pillow raises
    assert tool("fit", 1000, 700, 1024).stdout.split() == [b"1024", b"717", b"0", b"154"]
    assert tool("fit", 5000, 2, 1024).stdout.split() == [b"1024", b"1", b"0", b"512"]
    with pytest.raises(ValueError):
        ImageOps.pad(Image.new("RGB", (5000, 2)), (1024, 1024))


def test_resize_matches_pillow_bicubic(tmp_path):
    rng = np.random.default_rng(3)
    src = rng.integers(0, 256, (23, 37, 3)).astype(np.uint8)
    src[5:9] = 255
    src[:, 20:22] = 0
    p = str(tmp_path / "r.png")
    Image.fromarray(src).save(p)
    for ow, oh in [(37, 11), (13, 23), (80, 51), (5, 3), (1, 1), (200, 7), (36, 24), (37, 23)]:
        c = read_image(tool("resize", ow, oh, p).stdout)
        r = np.asarray(Image.fromarray(src).resize((ow, oh), Image.Resampling.BICUBIC))
        assert np.array_equal(c, r), (ow, oh)


def test_normalisation_is_torch_bf16():
    torch = pytest.importorskip("torch")
    path = os.path.join(IMAGES, "small.png")
    _, _, _, _, u8 = c_views(path, "hf", "--mode", "tiny")
    _, _, _, _, fl = c_views(path, "hf", "--mode", "tiny", norm=True)
    t = torch.from_numpy(u8[0].copy()).permute(2, 0, 1).float().div(255)
    t = t.sub(torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)).div(torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1))
    ref = t.to(torch.bfloat16).float().numpy()
    assert np.array_equal(fl[0], ref)
    assert np.abs(fl[0]).max() <= 1.0 and len(np.unique(fl[0])) > 50


def exif_blob(rng):
    """A random EXIF block: valid structure with random types, counts, duplicates, cuts and offsets."""
    le = rng.random() < 0.5
    e = "<" if le else ">"
    head = (b"II\x2a\x00" if le else b"MM\x00\x2a") if rng.random() < 0.9 else rng.choice(
        [b"II\x00\x2a", b"MM\x2a\x00", b"II\x2b\x00", b"XX\x2a\x00"])
    n = rng.randint(0, 5)
    ifd_off = 8 + rng.choice([0, 0, 0, 3])
    entries, tail = b"", b""
    data_off = ifd_off + 2 + 12 * n + 4
    for _ in range(n):
        tag = 0x0112 if rng.random() < 0.6 else rng.choice([0x010F, 0x8769, 0x0112])
        typ = rng.choice([1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 0, 17])
        count = rng.choice([0, 1, 1, 1, 2, 3])
        val = rng.choice([1, 2, 3, 5, 6, 8, 9, 0, 65535, 6 * 65536])
        unit = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8}.get(typ, 4)
        if typ in (5, 10):
            item = struct.pack(e + "II", val * 2, rng.choice([1, 2, 0, 4]))
        elif typ == 11:
            item = struct.pack(e + "f", float(val))
        elif typ == 12:
            item = struct.pack(e + "d", float(val) + rng.choice([0, 0.5]))
        elif typ == 16:
            item = struct.pack(e + "Q", val)
        else:
            item = (val % (1 << (8 * unit))).to_bytes(unit, "little" if le else "big")
        payload = (item * max(count, 1))[:unit * count]
        if len(payload) <= 4:
            field = payload + b"\0" * (4 - len(payload))
        else:
            off = data_off + len(tail) + rng.choice([0, 0, 0, 1000])
            field = struct.pack(e + "I", off)
            tail += payload
        entries += struct.pack(e + "HHI", tag, typ, count) + field
    blob = head + struct.pack(e + "I", ifd_off) + b"\0" * (ifd_off - 8) + struct.pack(e + "H", n) + entries + \
        b"\0\0\0\0" + tail
    if rng.random() < 0.2:
        blob = blob[:rng.randint(0, len(blob))]
    if rng.random() < 0.3:
        blob = b"Exif\0\0" + blob
    return blob


def pillow_orientation(blob):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ex = Image.Exif()
            ex.load(blob)
            o = ex.get(0x0112)
            return {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8}.get(o, 0) if not isinstance(o, (bytes, str)) \
                else 0
        except Exception:
            return 0


def test_exif_parser_matches_pillow(tmp_path):
    rng = random.Random(11)
    p = tmp_path / "exif.bin"
    for i in range(250):
        blob = exif_blob(rng)
        p.write_bytes(blob)
        got = int(tool("exif", p).stdout)
        assert got == pillow_orientation(blob), (i, blob.hex())


def test_bad_files_give_errors(tmp_path):
    cases = {"empty": b"", "random": bytes(random.Random(1).randrange(256) for _ in range(3000)),
             "trunc_png": open(os.path.join(IMAGES, "small.png"), "rb").read()[:900],
             "trunc_jpg": open(os.path.join(IMAGES, "portrait.jpg"), "rb").read()[:5000]}
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        r = tool("decode", p, check=False)
        # one line from us, nothing printed by the libraries
        assert r.returncode == 1 and r.stderr.startswith(b"error: ") and r.stderr.count(b"\n") == 1, (name, r.stderr)
        assert r.stdout == b""
    # each library's own error path: a valid header followed by garbage
    for name in ("small.png", "portrait.jpg"):
        data = bytearray(open(os.path.join(IMAGES, name), "rb").read())
        for i in range(len(data) // 3, len(data) - 20, 97):
            data[i] ^= 0x5A
        p = tmp_path / ("garbled_" + name)
        p.write_bytes(bytes(data))
        r = tool("decode", p, check=False)
        assert r.stderr.count(b"\n") <= 1 and (r.returncode == 0 or r.stderr.startswith(b"error: ")), r.stderr
