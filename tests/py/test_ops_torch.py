"""Cross-checks of the C ops (src/cpu/ops_*.c, through tests/tools/ops_dump.c) against PyTorch (Debian's
/usr/bin/python3 with torch): antialiased bicubic and 1-D linear resampling, erf GELU, layer norm and conv2d.
Run with /usr/bin/python3 -m pytest tests/py/test_ops_torch.py."""
import os
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOOL = os.path.join(ROOT, "build", "tests", "tools", "ops_dump")
RTOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def built_tool():
    subprocess.run(["make", "-s", "CUDA=0", "build/tests/tools/ops_dump"], cwd=ROOT, check=True)


def run(args, *arrays, n_out):
    data = b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays)
    out = subprocess.run([TOOL] + [str(a) for a in args], input=data, capture_output=True, check=True).stdout
    got = np.frombuffer(out, dtype="<f4")
    assert got.size == n_out, (got.size, n_out)
    return got


def close(got, want, rtol=RTOL):
    """Max abs difference within rtol of the largest reference magnitude."""
    want = np.asarray(want, dtype=np.float64).ravel()
    err = np.max(np.abs(np.asarray(got, dtype=np.float64).ravel() - want))
    scale = max(np.max(np.abs(want)), 1e-30)
    assert err <= rtol * scale, f"max abs err {err:.3g} vs scale {scale:.3g}"


def bf16_exact(a):
    return torch.from_numpy(a).to(torch.bfloat16).float().numpy()


@pytest.mark.parametrize("src,dst", [(64, 40), (16, 10), (64, 80), (16, 20), (64, 32), (16, 8)])
def test_bicubic_aa(src, dst):
    rng = np.random.default_rng(src * 100 + dst)
    C = 5
    x = bf16_exact(rng.standard_normal((C, src, src)).astype(np.float32))
    want = F.interpolate(torch.from_numpy(x)[None], size=(dst, dst), mode="bicubic", antialias=True,
                         align_corners=False)[0].numpy()
    close(run(["bicubic", C, src, src, dst, dst], x, n_out=C * dst * dst), want)
    got_hwc = run(["bicubic_hwc", C, src, src, dst, dst], x.transpose(1, 2, 0), n_out=C * dst * dst)
    close(got_hwc.reshape(dst, dst, C).transpose(2, 0, 1), want)


def test_bicubic_aa_non_square():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 12, 20)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x)[None], size=(7, 30), mode="bicubic", antialias=True,
                         align_corners=False)[0].numpy()
    close(run(["bicubic", 3, 12, 20, 7, 30], x, n_out=3 * 7 * 30), want)


@pytest.mark.parametrize("dst", [79, 159])
def test_linear_1d(dst):
    rng = np.random.default_rng(dst)
    C, src = 64, 127
    t = bf16_exact(rng.standard_normal((src, C)).astype(np.float32))
    want = F.interpolate(torch.from_numpy(t).t()[None], size=dst, mode="linear", align_corners=False)[0].t().numpy()
    close(run(["linear1d", C, src, dst], t, n_out=dst * C), want)


def test_gelu():
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    want = F.gelu(torch.from_numpy(x).double()).numpy()  # exact erf GELU
    got = run(["gelu", x.size], x, n_out=2 * x.size)
    close(got[: x.size], want)
    close(got[x.size:], want)


@pytest.mark.parametrize("M,n,eps", [(5, 768, 1e-6), (3, 1024, 1e-5), (2, 37, 1e-6)])
def test_layernorm(M, n, eps):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((M, n)) * 3 + 1).astype(np.float32)
    w = bf16_exact(rng.standard_normal(n).astype(np.float32))
    b = bf16_exact(rng.standard_normal(n).astype(np.float32))
    want = F.layer_norm(torch.from_numpy(x).double(), (n,), torch.from_numpy(w).double(),
                        torch.from_numpy(b).double(), eps).numpy()
    got = run(["layernorm", M, n, eps], x, w, b, n_out=2 * M * n)
    close(got[: M * n], want)
    close(got[M * n:], want)


@pytest.mark.parametrize("H,W,I,O,k,stride,pad", [(32, 32, 3, 8, 16, 16, 0), (9, 7, 6, 5, 3, 1, 1),
                                                   (10, 11, 8, 12, 3, 2, 1), (6, 6, 16, 4, 1, 1, 0)])
def test_conv2d(H, W, I, O, k, stride, pad):
    rng = np.random.default_rng(H * W + O)
    x = rng.standard_normal((H, W, I)).astype(np.float32)
    w = bf16_exact((rng.standard_normal((O, I, k, k)) * 0.2).astype(np.float32))
    b = bf16_exact(rng.standard_normal(O).astype(np.float32))
    want = F.conv2d(torch.from_numpy(x).double().permute(2, 0, 1)[None], torch.from_numpy(w).double(),
                    torch.from_numpy(b).double(), stride=stride, padding=pad)[0].permute(1, 2, 0).numpy()
    n = want.size
    got = run(["conv2d", H, W, I, O, k, stride, pad], x, w, b, n_out=2 * n)
    close(got[:n], want)
    close(got[n:], want)
