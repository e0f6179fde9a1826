"""The model on the tiny checkpoints: realism checks (issue 3), fp32 vs bf16 agreement, KV-cache consistency,
the resampling formulas of spec §5.6 re-derived here in double precision, RoPE, and both n-gram guards."""
import math

import pytest
import torch

from rpaths import IMAGES
from model import Reference
from pipeline import banned_tokens, generate
from realism import measure


@pytest.fixture(scope="module")
def ref32(tiny_ckpt):
    return Reference(tiny_ckpt, "fp32")


@pytest.mark.parametrize("which", ["tiny_ckpt", "stress_ckpt"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_realism(which, precision, tok, request):
    ref = Reference(request.getfixturevalue(which), precision)
    r = measure(ref, tok, IMAGES["small.png"], mode="small", steps=64)
    assert r["finite"]
    assert all(0.3 <= x <= 3.0 for x in r["residual_ratio"]), r["residual_ratio"]
    assert r["topk_mass"] >= 0.5, r
    assert r["router_gap"] >= 0.1, r
    assert r["logit_margin"] >= 0.5, r
    assert len(r["generated"]) == 64 and r["distinct"] >= 8, r


def test_fp32_and_bf16_logits_agree(tiny_ckpt, tok, ref32):
    a = generate(ref32, tok, IMAGES["portrait.jpg"], "tiny", max_tokens=8, ignore_eos=True, keep_logits=True)
    b = generate(Reference(tiny_ckpt, "bf16"), tok, IMAGES["portrait.jpg"], "tiny", max_tokens=8,
                 ignore_eos=True, keep_logits=True, forced=a["generated"])
    A, B = torch.stack(a["logits"]), torch.stack(b["logits"])
    assert A.shape == B.shape == (8, 129280)
    rel = (A - B).norm(dim=1) / A.norm(dim=1)
    assert float(rel.max()) < 3e-2, rel
    assert float(rel.min()) > 0                      # the two modes really differ
    # bf16 logits are bf16 values
    assert torch.equal(B, B.to(torch.bfloat16).float())


def test_kv_cache_matches_full_prefill(ref32, tok):
    res = generate(ref32, tok, IMAGES["small.png"], "tiny", max_tokens=6, ignore_eos=True, keep_logits=True)
    ids = torch.tensor(res["prompt_ids"] + res["generated"][:-1])
    from pipeline import encode_image
    from preprocess import load_image
    block, _, _ = encode_image(ref32, load_image(IMAGES["small.png"]), 512, 512, False, "hf")
    h = ref32.embed(ids)
    h[ids == 128815] = block
    full = ref32.decoder(h, torch.arange(len(ids)), [], logits_all=True)
    T = len(res["prompt_ids"])
    for i, row in enumerate(res["logits"]):
        assert torch.allclose(full[T - 1 + i], row, rtol=1e-4, atol=1e-4), i
        assert int(row.argmax()) == res["generated"][i]


def _aa_bicubic_1d(n_in, n_out):
    """Spec §5.6 antialiased bicubic weights (a = -0.5), double precision: [n_out, n_in]."""
    scale = n_in / n_out
    fs = max(scale, 1.0)
    sup = 2.0 * fs
    W = torch.zeros(n_out, n_in, dtype=torch.float64)

    def K(t):
        t = abs(t)
        return (1.5 * t - 2.5) * t * t + 1 if t < 1 else (-0.5 * (t ** 3 - 5 * t * t + 8 * t - 4) if t < 2 else 0.0)
    for o in range(n_out):
        c = (o + 0.5) * scale
        lo, hi = max(0, int(c - sup + 0.5)), min(n_in, int(c + sup + 0.5))
        ws = [K((x - c + 0.5) / fs) for x in range(lo, hi)]
        for x, w in zip(range(lo, hi), ws):
            W[o, x] = w / sum(ws)
    return W


@pytest.mark.parametrize("g", [32, 40, 80])
def test_sam_pos_resample_is_spec_bicubic(ref32, g):
    pe = ref32.w("model.sam_model.pos_embed")[0].double()          # [64,64,C]
    W = _aa_bicubic_1d(64, g)
    want = torch.einsum("oh,hwc,pw->opc", W, pe, W)
    got = ref32.sam_pos(g)[0].double()
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=2 ** -8, atol=1e-4)       # bf16 rounding of fp32 results


@pytest.mark.parametrize("n", [8, 10, 20])
def test_clip_pos_resample_is_spec_bicubic(ref32, n):
    pe = ref32.w("model.vision_model.embeddings.position_embedding.weight").double()
    W = _aa_bicubic_1d(16, n)
    want = torch.einsum("oh,hwc,pw->opc", W, pe[1:].reshape(16, 16, -1), W).reshape(n * n, -1)
    got = ref32.clip_pos(n).double()
    assert torch.equal(got[0], pe[0])
    assert torch.allclose(got[1:], want, rtol=2 ** -8, atol=1e-4)


@pytest.mark.parametrize("size", [32, 40, 64])
def test_rel_pos_table_is_spec_linear(ref32, size):
    name = "model.sam_model.blocks.1.attn.rel_pos_h"                 # a global block: 127 rows
    t = ref32.w(name).double()
    L = 2 * size - 1
    R = torch.zeros(L, t.shape[1], dtype=torch.float64)
    for o in range(L):
        src = max((o + 0.5) * t.shape[0] / L - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, t.shape[0] - 1)
        lam = src - i0
        R[o] = (1 - lam) * t[i0] + lam * t[i1]
    got = ref32.rel_table(name, size).double()
    for i in range(size):
        for j in (0, size // 2, size - 1):
            assert torch.allclose(got[i, j], R[i - j + size - 1], rtol=2 ** -8, atol=1e-4)


def test_rope_is_neox_rotate_half(ref32):
    hd = ref32.cfg.head_dim
    x = torch.randn(1, 3, hd, generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([0, 7, 4000])
    cos, sin = ref32.rope(pos)
    y = ref32.apply_rope(x, cos, sin)
    for r, p in enumerate(pos.tolist()):
        for d in range(hd // 2):
            th = p * 10000.0 ** (-2 * d / hd)
            want0 = x[0, r, d] * math.cos(th) - x[0, r, d + hd // 2] * math.sin(th)
            want1 = x[0, r, d + hd // 2] * math.cos(th) + x[0, r, d] * math.sin(th)
            assert abs(float(y[0, r, d]) - want0) < 1e-3 and abs(float(y[0, r, d + hd // 2]) - want1) < 1e-3


def test_ngram_guards():
    # hf: n=20 over prompt + output; the 19 last tokens appeared before, followed by 7 -> 7 banned
    seq = list(range(100, 119)) + [7] + list(range(100, 119))
    assert banned_tokens(seq, [], "hf") == {7}
    assert banned_tokens(seq[1:], [], "hf") == set()
    # vllm: output only, n=30 within the last 90, <td> (128821) exempt
    pat = list(range(200, 229))
    out = pat + [5] + pat
    assert banned_tokens([0] * 50 + out, out, "vllm") == {5}
    out2 = pat + [128821] + pat
    assert banned_tokens(out2, out2, "vllm") == set()
    out3 = pat + [5] + list(range(1000, 1100)) + pat                # first occurrence left the 90-token window
    assert banned_tokens(out3, out3, "vllm") == set()
    assert banned_tokens(seq, seq, "vllm") == set()                   # shorter than 30


def test_missing_tensor_is_a_clear_error(tmp_path, tiny_ckpt):
    import json
    import shutil
    from st_io import build_header
    from make_checkpoint import ST_NAME
    for fn in ("config.json",):
        shutil.copy(f"{tiny_ckpt}/{fn}", tmp_path / fn)
    hdr, _, total = build_header([("model.norm.weight", "BF16", [128])])
    (tmp_path / ST_NAME).write_bytes(hdr + b"\0" * total)
    with pytest.raises(ValueError, match="tensors missing"):
        Reference(str(tmp_path))
    assert json.load(open(tmp_path / "config.json"))["hidden_size"] == 128
