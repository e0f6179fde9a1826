"""`dsocr ocr --force-embeds FILE` (issue 6: the GPU decoder measured from the CPU's image embeddings) on the tiny
checkpoint, CPU only: a run fed its own image_embeds dump (and its own tokens) repeats every stage bit for bit;
scaled embeddings change the decoder (the option takes effect) but not vision (which still runs and dumps); a
truncated, mistyped, missing or wrong-shape file is a clear error and a nonzero exit."""
import os
import struct
import subprocess

import numpy as np
import pytest

from tpaths import DSOCR, IMAGES
from dumpcmp import compare, load


def ocr(model, image, mode, *args, max_tokens=None):
    cmd = [DSOCR, "ocr", "--model", model, "--mode", mode, "--device", "cpu", "--precision", "fp32", "--threads", "2",
           "--ignore-eos", "--quiet"]
    if max_tokens:
        cmd += ["--max-tokens", str(max_tokens)]
    return subprocess.run(cmd + list(args) + [image], capture_output=True, text=True, timeout=120)


def ok(p):
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def write_f32(path, a):
    a = np.ascontiguousarray(a, dtype="<f4")
    with open(path, "wb") as f:
        f.write(b"DSDUMP01" + struct.pack("<II", 0, a.ndim) + struct.pack(f"<{a.ndim}Q", *a.shape) + a.tobytes())


def same_everywhere(b, a):
    """Every tensor of a's dump equals b's bit for bit (rel L2 0, integers equal)."""
    res = compare(b, a)
    assert "image_embeds" in res and "logits" in res and "layer0.out" in res
    bad = {n: v for n, v in res.items() if not (v[0] == 0.0 or (v[0] == "equal" and v[1]))}
    assert not bad, bad
    return res


@pytest.fixture(scope="module")
def base_dump(tiny_model, tmp_path_factory):
    """A plain tiny base run's dumps (8 tokens)."""
    a = str(tmp_path_factory.mktemp("fe") / "A")
    ok(ocr(tiny_model, IMAGES["portrait.jpg"], "base", "--dump", a, max_tokens=8))
    return a


def test_own_embeds_repeat_every_stage(tiny_model, base_dump, tmp_path):
    b = str(tmp_path / "B")
    ok(ocr(tiny_model, IMAGES["portrait.jpg"], "base", "--force-ids", f"{base_dump}/generated.bin",
           "--force-embeds", f"{base_dump}/image_embeds.bin", "--dump", b))
    res = same_everywhere(b, base_dump)
    assert any(n.startswith("layer") for n in res) and "global.proj" in res


def test_gundam_own_embeds_repeat_every_stage(tiny_model, tmp_path):
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    ok(ocr(tiny_model, IMAGES["wide.png"], "gundam", "--dump", a, max_tokens=3))
    assert os.path.exists(f"{a}/tile1.proj.bin")  # several views: their rows, newlines and separator are forced
    ok(ocr(tiny_model, IMAGES["wide.png"], "gundam", "--force-ids", f"{a}/generated.bin", "--force-embeds",
           f"{a}/image_embeds.bin", "--dump", b))
    same_everywhere(b, a)


def test_scaled_embeds_change_the_decoder_not_vision(tiny_model, base_dump, tmp_path):
    emb = load(base_dump, "image_embeds")
    f, c = str(tmp_path / "scaled.bin"), str(tmp_path / "C")
    write_f32(f, emb * 2.0)
    ok(ocr(tiny_model, IMAGES["portrait.jpg"], "base", "--force-ids", f"{base_dump}/generated.bin", "--force-embeds",
           f, "--dump", c))
    assert np.array_equal(load(c, "image_embeds"), emb * 2.0)  # the dump is of what the decoder was fed
    res = compare(c, base_dump)
    for n, v in res.items():
        if n.startswith("global."):
            assert v[0] == 0.0 or v[0] == "equal", (n, v)  # vision ran as usual
    assert res["layer0.out"][0] > 1e-3
    assert res["logits"][0] > 1e-3, res["logits"]


def test_bad_files_are_clear_errors(tiny_model, base_dump, tmp_path):
    emb_path = f"{base_dump}/image_embeds.bin"
    emb = load(base_dump, "image_embeds")
    raw = open(emb_path, "rb").read()
    img = IMAGES["portrait.jpg"]

    short = str(tmp_path / "short.bin")
    with open(short, "wb") as f:
        f.write(raw[:-100])
    p = ocr(tiny_model, img, "base", "--force-embeds", short, max_tokens=1)
    assert p.returncode != 0 and short in p.stderr and "truncated" in p.stderr, p.stderr

    p = ocr(tiny_model, img, "base", "--force-embeds", f"{base_dump}/generated.bin", max_tokens=1)
    assert p.returncode != 0 and "generated.bin" in p.stderr and "not an f32 dump" in p.stderr, p.stderr

    p = ocr(tiny_model, img, "base", "--force-embeds", str(tmp_path / "missing.bin"), max_tokens=1)
    assert p.returncode != 0 and "missing.bin" in p.stderr and "cannot open" in p.stderr, p.stderr

    wrong = str(tmp_path / "wrong.bin")
    write_f32(wrong, emb[:-1])
    p = ocr(tiny_model, img, "base", "--force-embeds", wrong, max_tokens=1)
    rows, d = emb.shape
    assert p.returncode != 0 and wrong in p.stderr, p.stderr
    assert f"[{rows - 1}, {d}]" in p.stderr and f"[{rows}, {d}]" in p.stderr, p.stderr

    # another mode's embeddings (gundam's block is larger than base's): refused before vision runs
    p = ocr(tiny_model, img, "gundam", "--force-embeds", emb_path, max_tokens=1)
    assert p.returncode != 0 and emb_path in p.stderr and f"[{rows}, {d}]" in p.stderr, p.stderr
