"""Quantised weights end to end (issue 7): the C engine quantising the tiny checkpoint at load (`dsocr ocr
--quant q8_0|q4`) against the PyTorch reference run on exactly the dequantised weights, which
build/tests/tools/dequant_model writes as an fp32 folder. Same parity rules as the fp32 CPU engine
(test_engine_reference.py): every stage within 1e-4 relative L2, routed experts and teacher-forced top-1 tokens
equal wherever the reference's margin is clear of the measured error.

The folder itself is checked first against a quantiser written here from the format (ggml's Q8_0 / Q4_0
rounding), so the yardstick does not share the engine's quantiser: the policy (which tensors are quantised, to
which type) and the values of every tensor."""
import os
import subprocess

import numpy as np
import pytest

from tpaths import IMAGES, REPO
from engine_vs_ref import check, run_c, run_reference

TOOL = os.path.join(REPO, "build", "tests", "tools", "dequant_model")
STEPS = 64
CASES = [("q8_0", "small.png", "tiny", "hf"), ("q8_0", "wide.png", "small", "vllm"),
         ("q4", "portrait.jpg", "small", "vllm"), ("q4", "exif_rgba.png", "tiny", "hf")]


@pytest.fixture(scope="module")
def dequant(tiny_ckpt, tmp_path_factory):
    subprocess.run(["make", "-s", "CUDA=0", "build/tests/tools/dequant_model"], cwd=REPO, check=True)
    out = {}
    for q in ("q8_0", "q4"):
        d = str(tmp_path_factory.mktemp("tiny_" + q))
        subprocess.run([TOOL, "--model", tiny_ckpt, "--quant", q, "--out", d], check=True, capture_output=True)
        out[q] = d
    return out


def fp16(x):
    return x.astype(np.float16).astype(np.float32)


def q8_0(w):
    """Dequantised Q8_0 of w [N, K] (float32): d = amax/127 per 32-block, q = round-half-away(x * (1/d))."""
    b = w.reshape(-1, 32)
    d = np.abs(b).max(1, keepdims=True) / np.float32(127)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = b * inv
    q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    return (q * fp16(d)).reshape(w.shape)


def q4_0(w):
    """Dequantised Q4_0: d = m / -8 with m the first element of largest magnitude, q = min(15, trunc(x/d + 8.5))."""
    b = w.reshape(-1, 32)
    m = b[np.arange(len(b)), np.abs(b).argmax(1)][:, None]
    d = m / np.float32(-8)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.minimum(15, np.trunc(b * inv + np.float32(8.5)))
    return ((q - 8) * fp16(d)).reshape(w.shape)


def test_dequantised_folder(tiny_ckpt, dequant):
    from st_io import SafeTensors
    src = SafeTensors(os.path.join(tiny_ckpt, "model-00001-of-000001.safetensors"))
    kinds = {}
    for q, d in dequant.items():
        dst = SafeTensors(os.path.join(d, "model-00001-of-000001.safetensors"))
        assert sorted(dst.names()) == sorted(src.names())
        for n in src.names():
            w = src.get(n).float().numpy()
            got = dst.get(n).numpy()
            assert got.dtype == np.float32 and got.shape == w.shape, n
            dec = n.startswith("model.layers.") and (".self_attn." in n or ".mlp.experts." in n or
                                                    ".mlp.shared_experts." in n or n.endswith("_proj.weight"))
            if n == "lm_head.weight" or (dec and w.ndim == 2):
                kind = "q4" if q == "q4" and ".mlp.experts." in n else "q8"
                want = (q4_0 if kind == "q4" else q8_0)(w)
            else:
                kind, want = "kept", w
            kinds[(q, kind)] = kinds.get((q, kind), 0) + 1
            assert np.array_equal(got, want), f"{q} {n} ({kind}): max diff {np.abs(got - want).max()}"
            if kind != "kept":
                rel = np.linalg.norm(got - w) / np.linalg.norm(w)
                assert 0 < rel < (0.15 if kind == "q4" else 0.01), f"{q} {n}: relative error {rel}"
    # tiny: 3 layers x 4 attention + 3 dense + 2 MoE layers x (8 experts + shared) x 3 + lm_head = 70
    assert kinds[("q8_0", "q8")] == 70 and ("q8_0", "q4") not in kinds
    assert kinds[("q4", "q4")] == 48 and kinds[("q4", "q8")] == 22


_refs = {}


@pytest.mark.parametrize("quant,img,mode,compat", CASES)
def test_quant_vs_reference(tiny_ckpt, dequant, quant, img, mode, compat, tmp_path):
    from model import Reference
    from tokenizer import Tokenizer
    d = dequant[quant]
    if d not in _refs:
        _refs[d] = (Reference(d, "fp32"), Tokenizer(os.path.join(d, "tokenizer.json")))
    ref, tok = _refs[d]
    rdir, cdir = str(tmp_path / "ref"), str(tmp_path / "c")
    run_reference(ref, tok, IMAGES[img], rdir, mode, compat, STEPS)
    run_c(tiny_ckpt, IMAGES[img], cdir, mode, compat, "fp32", os.path.join(rdir, "generated.bin"),
          extra_args=["--quant", quant, "--device", "cpu"])
    report, fails, ties = check(cdir, rdir, 1e-4)
    if ties:
        print(f"{quant} {img} {mode} {compat}: near-ties (not judged): " + "; ".join(ties))
    assert not fails, f"{quant} {img} {mode} {compat}:\n  " + "\n  ".join(fails)
    assert any(r.startswith("logit error") for r in report)


def test_bad_quant_value(tiny_ckpt):
    p = subprocess.run([os.path.join(REPO, "dsocr"), "ocr", "--model", tiny_ckpt, "--quant", "q5",
                        IMAGES["small.png"]], capture_output=True, text=True)
    assert p.returncode == 2 and "--quant must be q8_0 or q4" in p.stderr, p.stderr
