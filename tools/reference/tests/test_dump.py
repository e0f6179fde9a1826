"""Stage dumps: the file format (write/read, every dtype, malformed files) and a CLI run with --dump whose files
are checked for names, shapes, layout (image block = tiles' and global projections + newlines + separator)
and consistency (generated = argmax of the dumped logits, prompt ids = the spec's layout)."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from rpaths import IMAGES, REF
from st_io import read_dump, read_dump_dir, write_dump


def test_roundtrip_every_dtype(tmp_path):
    cases = [(torch.randn(3, 4), 0), (torch.randn(5).to(torch.bfloat16), 1), (torch.arange(6, dtype=torch.int32), 2),
             (torch.arange(6, dtype=torch.uint8).reshape(1, 2, 3), 3), (torch.tensor([1 << 40]), 4)]
    for t, code in cases:
        p = tmp_path / f"{code}.bin"
        write_dump(str(p), t)
        raw = p.read_bytes()
        assert raw[:8] == b"DSDUMP01" and struct.unpack_from("<II", raw, 8) == (code, t.dim())
        back = read_dump(str(p))
        assert back.dtype == t.dtype and torch.equal(back, t)
    write_dump(str(tmp_path / "s.bin"), torch.tensor(3.5))               # 0-d
    assert read_dump(str(tmp_path / "s.bin")).item() == 3.5


def test_malformed_dumps(tmp_path):
    p = tmp_path / "x.bin"
    write_dump(str(p), torch.ones(4))
    raw = p.read_bytes()
    for bad in (b"XXXXXXXX" + raw[8:], raw[:-1], raw[:8] + struct.pack("<II", 9, 1) + raw[16:]):
        p.write_bytes(bad)
        with pytest.raises(ValueError):
            read_dump(str(p))


@pytest.fixture(scope="module")
def gundam_dump(tiny_ckpt, tmp_path_factory):
    d = str(tmp_path_factory.mktemp("dump"))
    r = subprocess.run([sys.executable, os.path.join(REF, "run.py"), "--model", tiny_ckpt, "--image",
                        IMAGES["portrait.jpg"], "--mode", "gundam", "--prompt", "free", "--max-tokens", "5",
                        "--ignore-eos", "--precision", "bf16", "--dump", d, "--threads", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d, r.stdout, read_dump_dir(d)


def test_dump_names_and_shapes(gundam_dump):
    d, stdout, D = gundam_dump
    m = D["meta"]
    assert m["grid"] == [2, 3] and m["views"] == [f"tile{k}" for k in range(6)] + ["global"]
    assert m["precision"] == "bf16" and m["compat"] == "hf" and m["logits_before_ban"] is True
    assert stdout.rstrip("\n") == m["text"]
    for v in m["views"]:
        S = 640 if v.startswith("tile") else 1024
        g, n = S // 16, S // 64
        assert D[f"{v}.pixels"].dtype == torch.uint8 and D[f"{v}.pixels"].shape == (S, S, 3)
        assert D[f"{v}.input"].shape == (3, S, S)
        assert D[f"{v}.sam_patch"].shape == (g, g, 64)
        assert D[f"{v}.sam"].shape == (128, n, n)
        assert D[f"{v}.clip"].shape == (1 + n * n, 128)
        assert D[f"{v}.proj"].shape == (n * n, 128)
        # input = normalised pixels rounded to bf16
        x = torch.from_numpy(D[f"{v}.pixels"].numpy().astype(np.float32)).permute(2, 0, 1) / 255
        assert torch.equal(D[f"{v}.input"], ((x - 0.5) / 0.5).to(torch.bfloat16).float())
    T = m["n_prompt"]
    assert m["slots"] == 273 + 30 * 21 and D["image_embeds"].shape == (m["slots"], 128)
    ids = D["prompt_ids"]
    assert ids.dtype == torch.int32 and ids.shape == (T,) and int(ids[0]) == 0
    assert int((ids == 128815).sum()) == m["slots"] and ids[-4:].tolist() == [201, 21431, 126041, 16]
    for L in range(3):
        assert D[f"layer{L}.out"].shape == (T, 128)
    for L in (1, 2):
        assert D[f"layer{L}.experts"].dtype == torch.int32 and D[f"layer{L}.experts"].shape == (T, 3)
        assert D[f"layer{L}.router_logits"].shape == (T, 8)
        top = D[f"layer{L}.router_logits"].topk(3, -1).indices.sort(-1).values
        assert torch.equal(top, D[f"layer{L}.experts"].long().sort(-1).values)
    assert "layer0.experts" not in D
    assert D["logits"].shape == (5, 129280) and D["generated"].dtype == torch.int32
    assert D["generated"].tolist() == D["logits"].argmax(-1).tolist()          # no ban fires in 5 tokens


def test_image_block_layout(gundam_dump):
    _, _, D = gundam_dump
    blk = D["image_embeds"]
    nl_rows = []
    tw, th, n = 2, 3, 10
    r = 0
    for ty in range(th):
        for i in range(n):
            for tx in range(tw):
                assert torch.equal(blk[r:r + n], D[f"tile{ty * tw + tx}.proj"][i * n:(i + 1) * n])
                r += n
            nl_rows.append(r)
            r += 1
    for i in range(16):
        assert torch.equal(blk[r:r + 16], D["global.proj"][i * 16:(i + 1) * 16])
        r += 16
        nl_rows.append(r)
        r += 1
    assert r == blk.shape[0] - 1
    nl = blk[nl_rows[0]]
    assert all(torch.equal(blk[k], nl) for k in nl_rows) and not torch.equal(blk[r], nl)


def test_cli_errors(tiny_ckpt):
    r = subprocess.run([sys.executable, os.path.join(REF, "run.py"), "--model", tiny_ckpt, "--image",
                        IMAGES["small.png"], "--prompt", "raw:no image tag"], capture_output=True, text=True)
    assert r.returncode == 2 and "exactly one <image>" in r.stderr
    r = subprocess.run([sys.executable, os.path.join(REF, "run.py"), "--model", "/nonexistent", "--image",
                        IMAGES["small.png"]], capture_output=True, text=True)
    assert r.returncode == 2 and "config.json" in r.stderr
