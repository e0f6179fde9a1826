"""Image preprocessing of the reference (spec §4, §16 R5/R8/R10), done with Pillow itself.

load_image   EXIF transpose, then RGB: alpha dropped (`hf`) or composited on white (`vllm`)
grid_candidates / pick_grid    the tiling grid search of `dynamic_preprocess` (§4.4), CPython set order included
make_views   the views of one image: tiles (row-major, only in crop mode and when w > 640 or h > 640), then the
             global view; each a uint8 HxWx3 array of side S
slot_count   sequence slots of the image block: n_g(n_g+1) + 1 + th*n_l*(tw*n_l + 1)

Modes (base_size, image_size, crop_mode): tiny (512,512,0), small (640,640,0), base (1024,1024,0),
large (1280,1280,0), gundam (1024,640,1). In crop mode the global view is fit-and-padded to base_size and the
tiles are image_size; without crop mode images of image_size <= 640 are first resized to image_size^2 (no aspect
kept), then the global view is padded to image_size (hf) or base_size (vllm). `hf` has no working crop mode with
image_size != 640 (spec §4.2), so that combination is refused there.
"""
import math

import numpy as np
from PIL import Image, ImageOps

MODES = {"tiny": (512, 512, False), "small": (640, 640, False), "base": (1024, 1024, False),
         "large": (1280, 1280, False), "gundam": (1024, 640, True)}
PROFILES = {"hf": {"max_crops": 9, "alpha": "drop", "ngram": 20, "window": None, "whitelist": ()},
            "vllm": {"max_crops": 6, "alpha": "white", "ngram": 30, "window": 90, "whitelist": (128821, 128822)}}
MIN_CROPS = 2
TILE_THRESHOLD = 640
PAD_COLOR = (127, 127, 127)


def load_image(path_or_img, compat="hf"):
    """PIL RGB image after EXIF transpose and the profile's alpha rule."""
    img = Image.open(path_or_img) if not isinstance(path_or_img, Image.Image) else path_or_img
    img.load()
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # the official code falls back to the raw image when EXIF handling throws
        pass
    if PROFILES[compat]["alpha"] == "white" and (img.mode in ("RGBA", "LA", "PA")
                                                 or (img.mode == "P" and "transparency" in img.info)):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.split()[3])
        return bg
    return img.convert("RGB")


def grid_candidates(max_crops, min_crops=MIN_CROPS):
    """Candidate (cols, rows) grids in the official order (a Python set sorted by product)."""
    s = set((i, j) for n in range(min_crops, max_crops + 1) for i in range(1, n + 1) for j in range(1, n + 1)
            if min_crops <= i * j <= max_crops)
    return sorted(s, key=lambda x: x[0] * x[1])


def pick_grid(w, h, tile, max_crops, min_crops=MIN_CROPS):
    """(tw, th) chosen for a w x h image (find_closest_aspect_ratio of the official code)."""
    ar = w / h
    best_diff, best = float("inf"), (1, 1)
    area = w * h
    for i, j in grid_candidates(max_crops, min_crops):
        d = abs(ar - i / j)
        if d < best_diff:
            best_diff, best = d, (i, j)
        elif d == best_diff and area > 0.5 * tile * tile * i * j:
            best = (i, j)
    return best


def resolve_mode(mode="gundam", base_size=None, image_size=None, crop_mode=None):
    """(base_size, image_size, crop_mode) from a mode name plus overrides; validates the sizes."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    b, i, c = MODES[mode]
    b = b if base_size is None else int(base_size)
    i = i if image_size is None else int(image_size)
    c = c if crop_mode is None else bool(crop_mode)
    for name, v in (("base_size", b), ("image_size", i)):
        if v % 64 or not 64 <= v <= 4096:
            raise ValueError(f"{name} {v} must be a multiple of 64 in [64, 4096]")
    return b, i, c


def plan(w, h, base_size, image_size, crop_mode, compat="hf"):
    """Layout of an image of w x h: dict(global_side, tile_side, grid (tw, th) or None, slots)."""
    if compat not in PROFILES:
        raise ValueError(f"unknown compat {compat!r}")
    if crop_mode and compat == "hf" and image_size != 640:
        raise ValueError("crop mode with image_size != 640 is broken in the Hugging Face path (spec §4.2); "
                         "use --compat vllm")
    grid = None
    if crop_mode:
        gside = base_size
        if w > TILE_THRESHOLD or h > TILE_THRESHOLD:
            grid = pick_grid(w, h, image_size, PROFILES[compat]["max_crops"])
    else:
        gside = image_size if compat == "hf" else base_size
    return {"global_side": gside, "tile_side": image_size, "grid": grid,
            "slots": slot_count(gside, image_size, grid)}


def slot_count(global_side, tile_side, grid):
    """Sequence slots of one image block (features + newlines + 1 separator, spec §5.5)."""
    ng = global_side // 64
    n = ng * (ng + 1) + 1
    if grid:
        tw, th = grid
        nl = tile_side // 64
        n += th * nl * (tw * nl + 1)
    return n


def fit_pad(img, side):
    """ImageOps.pad to side x side with the (127,127,127) fill (BICUBIC, centred); errors name the image size."""
    try:
        return ImageOps.pad(img, (side, side), method=Image.BICUBIC, color=PAD_COLOR)
    except ValueError as e:  # spec §16 R10: extreme aspect ratios round the short side to 0
        raise ValueError(f"image {img.size[0]}x{img.size[1]} cannot be fitted into {side}x{side}: {e}") from None


def make_views(img, base_size, image_size, crop_mode, compat="hf"):
    """(views, plan): views = list of (name, uint8 array [S,S,3]) as tile0..tileK-1, then global."""
    w, h = img.size
    p = plan(w, h, base_size, image_size, crop_mode, compat)
    views = []
    if p["grid"]:
        tw, th = p["grid"]
        T = image_size
        big = img.resize((tw * T, th * T))
        for k in range(tw * th):
            x, y = (k % tw) * T, (k // tw) * T
            views.append((f"tile{k}", np.asarray(big.crop((x, y, x + T, y + T)), dtype=np.uint8)))
    g = img
    if not crop_mode and image_size <= 640:
        g = g.resize((image_size, image_size))
    g = fit_pad(g, p["global_side"])
    views.append(("global", np.asarray(g, dtype=np.uint8)))
    return views, p


def normalize(px):
    """uint8 [S,S,3] -> float32 [3,S,S] = (p/255 - 0.5)/0.5, computed in float32 as torchvision does."""
    x = np.asarray(px, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    return (x - np.float32(0.5)) / np.float32(0.5)
