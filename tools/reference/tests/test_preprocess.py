"""Preprocessing: the reference against a direct Pillow pipeline written here, for every mode on the four test
images; tiling grids and slot counts against the spec's formulas and worked examples (spec §4, §16 R5/R8/R10);
and Pillow's BICUBIC against the fixed-point algorithm of spec §4.6 re-implemented in numpy."""
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from rpaths import IMAGES
from preprocess import (MODES, grid_candidates, load_image, make_views, normalize, pick_grid, plan, resolve_mode,
                        slot_count)

# spec §4.4 step 2, copied from the text
CAND9 = "(1,2) (2,1) (3,1) (1,3) (2,2) (4,1) (1,4) (5,1) (1,5) (1,6) (6,1) (3,2) (2,3) (7,1) (1,7) (4,2) (2,4) (1,8) (8,1) (1,9) (3,3) (9,1)"
CAND6 = "(1,2) (2,1) (3,1) (1,3) (4,1) (1,4) (2,2) (1,5) (5,1) (6,1) (2,3) (1,6) (3,2)"


def _parse(s):
    return [tuple(int(v) for v in t.strip("()").split(",")) for t in s.split()]


def _spec_pick(w, h, cands, T=640):
    best, bd = (1, 1), float("inf")
    for i, j in cands:
        d = abs(w / h - i / j)
        if d < bd or (d == bd and w * h > 0.5 * T * T * i * j):
            best, bd = (i, j), min(d, bd)
    return best


def _pillow_views(path, base, size, crop, compat):
    """What the official code does, step by step with Pillow (spec §4)."""
    im = ImageOps.exif_transpose(Image.open(path))
    if compat == "vllm" and im.mode == "RGBA":
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    im = im.convert("RGB")
    w, h = im.size
    out = []
    if crop and (w > 640 or h > 640):
        tw, th = _spec_pick(w, h, _parse(CAND9 if compat == "hf" else CAND6), size)
        big = im.resize((tw * size, th * size), Image.BICUBIC)
        for k in range(tw * th):
            x, y = (k % tw) * size, (k // tw) * size
            out.append(np.asarray(big.crop((x, y, x + size, y + size))))
    if crop:
        g = ImageOps.pad(im, (base, base), color=(127, 127, 127))
    else:
        g = im.resize((size, size), Image.BICUBIC) if size <= 640 else im
        side = size if compat == "hf" else base
        g = ImageOps.pad(g, (side, side), color=(127, 127, 127))
    out.append(np.asarray(g))
    return out


CASES = [(m, *MODES[m]) for m in MODES] + [("custom", 1024, 640, False), ("custom", 640, 512, False)]


@pytest.mark.parametrize("compat", ["hf", "vllm"])
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_views_equal_pillow_pipeline(name, compat):
    path = IMAGES[name]
    for mode, base, size, crop in CASES:
        img = load_image(path, compat)
        views, p = make_views(img, base, size, crop, compat)
        want = _pillow_views(path, base, size, crop, compat)
        assert [v.shape for _, v in views] == [w.shape for w in want], (mode, name)
        for (vn, v), w in zip(views, want):
            assert v.dtype == np.uint8 and np.array_equal(v, w), (mode, name, vn)
        assert [n for n, _ in views] == [f"tile{k}" for k in range(len(views) - 1)] + ["global"]
        assert p["slots"] == slot_count(p["global_side"], size, p["grid"])


def test_exif_rotation():
    raw = Image.open(IMAGES["exif_rgba.png"])
    assert raw.size == (500, 760) and raw.mode == "RGBA"
    rot = raw.transpose(Image.ROTATE_270)                           # orientation 6
    assert rot.getextrema()[3][0] < 255                             # the image has transparent parts
    white = Image.new("RGB", rot.size, (255, 255, 255))
    white.paste(rot, mask=rot.getchannel("A"))
    expect = {"hf": rot.convert("RGB"), "vllm": white}              # hf drops alpha, vllm composites on white
    for compat in ("hf", "vllm"):
        im = load_image(IMAGES["exif_rgba.png"], compat)
        assert im.size == (760, 500) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), np.asarray(expect[compat]))


def test_alpha_rules(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (60, 90, 4), dtype=np.uint8)
    arr[:20, :, 3] = 0
    arr[20:40, :, 3] = 128
    arr[40:, :, 3] = 255
    p = tmp_path / "a.png"
    Image.fromarray(arr, "RGBA").save(p)
    hf = np.asarray(load_image(str(p), "hf"))
    vl = np.asarray(load_image(str(p), "vllm"))
    assert np.array_equal(hf, arr[..., :3])                        # hf: alpha dropped, stored RGB kept
    assert (vl[:20] == 255).all()                                  # vllm: transparent -> white
    assert np.array_equal(vl[40:], arr[40:, :, :3])
    mid = arr[20:40, :, :3].astype(int)
    assert np.abs(vl[20:40].astype(int) - (mid * 128 + 255 * 127) / 255).max() <= 1


def test_candidate_order_matches_spec():
    assert grid_candidates(9) == _parse(CAND9)
    assert grid_candidates(6) == _parse(CAND6)


@pytest.mark.parametrize("w,h,mx,grid,slots", [
    (1920, 1080, 6, (2, 1), 483), (1920, 1080, 9, (4, 2), 1093),
    (1191, 1684, 6, (2, 3), 903), (1191, 1684, 9, (2, 3), 903),
    (800, 600, 6, (3, 2), None), (800, 600, 9, (3, 2), None),
    (700, 700, 6, (2, 2), None), (700, 700, 9, (2, 2), None),
    (2000, 2000, 6, (2, 2), None), (2000, 2000, 9, (3, 3), None),
])
def test_spec_worked_examples(w, h, mx, grid, slots):
    assert pick_grid(w, h, 640, mx) == grid
    p = plan(w, h, 1024, 640, True, "hf" if mx == 9 else "vllm")
    assert p["grid"] == grid
    tw, th = grid
    assert p["slots"] == 273 + (10 * th) * (10 * tw + 1)       # spec §4.2 Gundam formula
    if slots is not None:
        assert p["slots"] == slots


def test_grid_search_is_the_spec_rule_on_many_sizes():
    for w in range(100, 4000, 137):
        for h in range(100, 4000, 151):
            assert pick_grid(w, h, 640, 9) == _spec_pick(w, h, _parse(CAND9))
            assert pick_grid(w, h, 640, 6) == _spec_pick(w, h, _parse(CAND6))


def test_mode_slot_counts():
    want = {"tiny": 73, "small": 111, "base": 273, "large": 421, "gundam": 273}
    for m, (b, i, c) in MODES.items():
        n = b // 64 if c else i // 64
        assert plan(500, 400, b, i, c)["slots"] == want[m] == n * (n + 1) + 1
    # R5: custom base 1024 / image 640 / no crop differs between the profiles
    assert plan(900, 700, 1024, 640, False, "hf")["slots"] == 111
    assert plan(900, 700, 1024, 640, False, "vllm")["slots"] == 273
    # no tiles at or under 640 on both sides
    assert plan(640, 640, 1024, 640, True)["grid"] is None
    assert plan(641, 100, 1024, 640, True)["grid"] is not None


def test_gundam_m_and_bad_sizes():
    with pytest.raises(ValueError, match="Hugging Face"):
        plan(2000, 1000, 1280, 1024, True, "hf")
    p = plan(2000, 1000, 1280, 1024, True, "vllm")
    assert p["grid"] == (2, 1) and p["slots"] == 421 + 16 * (2 * 16 + 1)
    with pytest.raises(ValueError, match="multiple of 64"):
        resolve_mode("base", image_size=1000)
    with pytest.raises(ValueError, match="unknown mode"):
        resolve_mode("huge")


def test_extreme_aspect_is_a_clear_error():
    with pytest.raises(ValueError, match="5000x2"):
        make_views(Image.new("RGB", (5000, 2)), 1024, 1024, False)


def test_pad_offsets_ties_to_even():
    # spec §4.3: 1000x700 -> 1024x717, top offset round(153.5) = 154, bottom 153
    im = Image.new("RGB", (1000, 700), (10, 200, 30))
    g = np.asarray(make_views(im, 1024, 1024, False)[0][-1][1])
    content = np.where((g != 127).any(axis=(1, 2)))[0]
    assert content[0] == 154 and content[-1] == 154 + 717 - 1


def test_normalize():
    px = np.array([[[0, 127, 255]]], dtype=np.uint8)
    x = normalize(px)
    assert x.shape == (3, 1, 1) and x.dtype == np.float32
    assert x[0, 0, 0] == -1.0 and x[2, 0, 0] == 1.0 and abs(x[1, 0, 0] - (127 / 255 - 0.5) / 0.5) < 1e-7


# ---------------------------------------------------------------- spec §4.6 fixed-point bicubic, in numpy
def _coeffs(n_in, n_out):
    scale = n_in / n_out
    fs = max(scale, 1.0)
    support = 2.0 * fs
    a = -0.5

    def K(t):
        t = abs(t)
        if t < 1:
            return ((a + 2) * t - (a + 3)) * t * t + 1
        if t < 2:
            return a * (t ** 3 - 5 * t * t + 8 * t - 4)
        return 0.0
    rows = []
    for o in range(n_out):
        center = (o + 0.5) * scale
        xmin = max(0, int(center - support + 0.5))
        xmax = min(n_in, int(center + support + 0.5))
        ws = [K((x - center + 0.5) / fs) for x in range(xmin, xmax)]
        s = sum(ws)
        ws = [w / s for w in ws]
        rows.append((xmin, [int(w * (1 << 22) + 0.5) if w >= 0 else int(w * (1 << 22) - 0.5) for w in ws]))
    return rows


def _pass(arr, n_out, axis):
    a = np.moveaxis(arr.astype(np.int64), axis, 0)
    out = np.empty((n_out,) + a.shape[1:], dtype=np.int64)
    for o, (xmin, ws) in enumerate(_coeffs(a.shape[0], n_out)):
        acc = np.full(a.shape[1:], 1 << 21, dtype=np.int64)
        for k, w in enumerate(ws):
            acc += a[xmin + k] * w
        out[o] = np.clip(acc >> 22, 0, 255)
    return np.moveaxis(out, 0, axis).astype(np.uint8)


def _spec_resize(arr, w, h):
    if arr.shape[1] != w:
        arr = _pass(arr, w, 1)
    if arr.shape[0] != h:
        arr = _pass(arr, h, 0)
    return arr


@pytest.mark.parametrize("name,size", [("small.png", (512, 512)), ("small.png", (97, 61)),
                                        ("exif_rgba.png", (333, 219)), ("wide.png", (640, 96))])
def test_pillow_bicubic_is_the_spec_algorithm(name, size):
    im = load_image(IMAGES[name])
    want = np.asarray(im.resize(size, Image.BICUBIC))
    got = _spec_resize(np.asarray(im), *size)
    assert np.array_equal(got, want)
