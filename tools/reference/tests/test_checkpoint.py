"""Random checkpoints: the full header against the official index (no 6.7 GB written), the tiny folder's layout,
config, offsets and manifest, and the generator's determinism."""
import hashlib
import json
import math
import os
import struct

import torch

from rpaths import REPO
import make_checkpoint as mc
from config import load_config, tensor_plan
from st_io import SafeTensors, read_header

OFFICIAL = os.path.join(REPO, "data", "model")

# spec §3.1 (full model)
SPEC_SHAPES = {
    "model.embed_tokens.weight": [129280, 1280], "lm_head.weight": [129280, 1280], "model.norm.weight": [1280],
    "model.layers.0.mlp.gate_proj.weight": [6848, 1280], "model.layers.0.mlp.down_proj.weight": [1280, 6848],
    "model.layers.5.mlp.gate.weight": [64, 1280], "model.layers.11.mlp.experts.63.down_proj.weight": [1280, 896],
    "model.layers.1.mlp.shared_experts.up_proj.weight": [1792, 1280],
    "model.layers.3.self_attn.o_proj.weight": [1280, 1280],
    "model.projector.layers.weight": [1280, 2048], "model.view_seperator": [1280],
    "model.sam_model.pos_embed": [1, 64, 64, 768], "model.sam_model.patch_embed.proj.weight": [768, 3, 16, 16],
    "model.sam_model.blocks.0.attn.rel_pos_h": [27, 64], "model.sam_model.blocks.2.attn.rel_pos_w": [127, 64],
    "model.sam_model.blocks.11.attn.rel_pos_h": [127, 64], "model.sam_model.blocks.7.attn.qkv.weight": [2304, 768],
    "model.sam_model.blocks.4.mlp.lin1.weight": [3072, 768], "model.sam_model.neck.0.weight": [256, 768, 1, 1],
    "model.sam_model.neck.2.weight": [256, 256, 3, 3], "model.sam_model.net_2.weight": [512, 256, 3, 3],
    "model.sam_model.net_3.weight": [1024, 512, 3, 3],
    "model.vision_model.embeddings.position_embedding.weight": [257, 1024],
    "model.vision_model.embeddings.patch_embedding.weight": [1024, 3, 14, 14],
    "model.vision_model.transformer.layers.23.self_attn.qkv_proj.weight": [3072, 1024],
    "model.vision_model.transformer.layers.0.mlp.fc2.weight": [1024, 4096],
}


def _check_header(hdr, total):
    ends = sorted((e["data_offsets"][0], e["data_offsets"][1], n) for n, e in hdr.items())
    pos = 0
    for b, e, n in ends:
        assert b == pos, f"{n}: gap or overlap at {pos}"
        assert hdr[n]["dtype"] == "BF16"
        assert e - b == 2 * math.prod(hdr[n]["shape"])
        pos = e
    assert pos == total


def test_full_header_equals_official_index(tmp_path):
    mc.write_checkpoint("full", str(tmp_path), seed=0, header_only=True)
    with open(os.path.join(OFFICIAL, "model.safetensors.index.json")) as f:
        official = json.load(f)
    with open(tmp_path / "model.safetensors.index.json") as f:
        ours = json.load(f)
    assert ours == official
    assert list(ours["weight_map"]) == list(official["weight_map"])
    assert len(ours["weight_map"]) == 2710 and ours["metadata"]["total_size"] == 6672212480
    raw = (tmp_path / (mc.ST_NAME + ".header")).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert len(raw) == 8 + n and (8 + n) % 8 == 0
    hdr = json.loads(raw[8:])
    assert hdr.pop("__metadata__") == {"format": "pt"}
    assert list(hdr) == list(official["weight_map"])
    _check_header(hdr, 6672212480)
    assert sum(math.prod(e["shape"]) for e in hdr.values()) == 3336106240
    for name, shape in SPEC_SHAPES.items():
        assert hdr[name]["shape"] == shape, name
    with open(os.path.join(OFFICIAL, "config.json")) as f:
        assert json.load(open(tmp_path / "config.json")) == json.load(f)
    assert not (tmp_path / mc.ST_NAME).exists() and not (tmp_path / "manifest.json").exists()


def test_tiny_folder_layout(tiny_ckpt):
    for fn in ["config.json", mc.ST_NAME, "model.safetensors.index.json", "manifest.json"] + mc.TOKENIZER_FILES:
        assert os.path.isfile(os.path.join(tiny_ckpt, fn)), fn
    for fn in mc.TOKENIZER_FILES:
        with open(os.path.join(tiny_ckpt, fn), "rb") as a, open(os.path.join(REPO, "data", "tokenizer", fn), "rb") as b:
            assert a.read() == b.read()


def test_tiny_config(tiny_ckpt):
    with open(os.path.join(tiny_ckpt, "config.json")) as f:
        cj = json.load(f)
    for k, v in mc.TINY_LANG.items():
        assert cj[k] == v and cj["language_config"][k] == v, k
    sam = cj["vision_config"]["width"]["sam_vit_b"]
    assert sam == {"width": 64, "layers": 4, "heads": 2, "global_attn_indexes": [1, 3],
                   "downsample_channels": [64, 128], "window_size": 14, "out_chans": 32}
    assert cj["vision_config"]["width"]["clip-l-14-224"] == {"width": 128, "heads": 2, "layers": 2,
                                                             "image_size": 224, "patch_size": 14}
    assert cj["projector_config"]["input_dim"] == 256 and cj["projector_config"]["n_embed"] == 128
    assert cj["vision_config"]["image_size"] == 1024 and cj["model_type"] == "deepseek_vl_v2"
    c = load_config(os.path.join(tiny_ckpt, "config.json"))
    assert (c.hidden_size, c.head_dim, c.sam_head_dim, c.sam_grid, c.clip_grid) == (128, 64, 32, 64, 16)


def test_tiny_tensors_offsets_and_manifest(tiny_ckpt):
    path = os.path.join(tiny_ckpt, mc.ST_NAME)
    hdr, start = read_header(path)
    meta = hdr.pop("__metadata__")
    assert meta == {"format": "pt"}
    with open(os.path.join(tiny_ckpt, "model.safetensors.index.json")) as f:
        index = json.load(f)
    total = index["metadata"]["total_size"]
    assert list(index["weight_map"]) == list(hdr) and set(index["weight_map"].values()) == {mc.ST_NAME}
    _check_header(hdr, total)
    assert os.path.getsize(path) == start + total
    shapes = dict((n, s) for n, s in tensor_plan(load_config(os.path.join(tiny_ckpt, "config.json"))))
    assert {n: e["shape"] for n, e in hdr.items()} == shapes
    want = {"model.sam_model.pos_embed": [1, 64, 64, 64], "model.sam_model.blocks.1.attn.rel_pos_h": [127, 32],
            "model.sam_model.blocks.0.attn.rel_pos_w": [27, 32], "model.sam_model.neck.3.weight": [32],
            "model.sam_model.net_3.weight": [128, 64, 3, 3],
            "model.vision_model.embeddings.position_embedding.weight": [257, 128],
            "model.projector.layers.weight": [128, 256], "model.layers.0.mlp.up_proj.weight": [256, 128],
            "model.layers.2.mlp.experts.7.gate_proj.weight": [64, 128],
            "model.layers.1.mlp.shared_experts.down_proj.weight": [128, 128],
            "model.layers.1.mlp.gate.weight": [8, 128], "lm_head.weight": [129280, 128]}
    for n, s in want.items():
        assert shapes[n] == s, n
    with open(os.path.join(tiny_ckpt, "manifest.json")) as f:
        man = json.load(f)
    assert set(man["tensors"]) == set(hdr) and man["total_size"] == total
    fsha = hashlib.sha256()
    with open(path, "rb") as f:
        data = f.read()
    fsha.update(data)
    assert fsha.hexdigest() == man["file_sha256"]
    for n, e in hdr.items():
        b, en = e["data_offsets"]
        assert hashlib.sha256(data[start + b:start + en]).hexdigest() == man["tensors"][n]["sha256"], n
    st = SafeTensors(path)
    for n in ("model.layers.1.mlp.gate.weight", "model.sam_model.pos_embed"):
        t = st.get(n)
        assert t.dtype == torch.bfloat16 and torch.isfinite(t.float()).all() and t.float().std() > 0


def test_generator_is_deterministic_per_tensor():
    c = load_config(os.path.join(OFFICIAL, "config.json"))
    a = mc.init_tensor("model.layers.3.mlp.experts.5.up_proj.weight", [896, 1280], c, seed=7)
    b = mc.init_tensor("model.layers.3.mlp.experts.5.up_proj.weight", [896, 1280], c, seed=7)
    d = mc.init_tensor("model.layers.3.mlp.experts.5.up_proj.weight", [896, 1280], c, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, d)
    assert abs(float(a.std()) - 1 / math.sqrt(1280)) < 0.05 / math.sqrt(1280)


def test_stress_is_heavy_tailed(stress_ckpt, tiny_ckpt):
    def kurt(x):
        x = x.float().flatten()
        x = x - x.mean()
        return float((x ** 4).mean() / (x ** 2).mean() ** 2)
    s = SafeTensors(os.path.join(stress_ckpt, mc.ST_NAME))
    t = SafeTensors(os.path.join(tiny_ckpt, mc.ST_NAME))
    name = "model.layers.2.mlp.experts.3.up_proj.weight"
    assert kurt(t.get(name)) < 3.5 < 10 < kurt(s.get(name))
    emb = s.get("model.embed_tokens.weight").float()
    assert emb[0].abs().max() >= 9000 and emb[1:].abs().max() < 1000
    assert s.get("model.view_seperator").float().abs().max() >= 9000
