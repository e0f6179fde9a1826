#!/usr/bin/python3
"""Writes a random-weight DeepSeek-OCR checkpoint folder in the official layout (see README.md).

  make_checkpoint.py --config tiny|full [--stress] --seed N --out DIR [--header-only]

DIR gets config.json, model-00001-of-000001.safetensors (all tensors BF16, written by hand, streamed one tensor
at a time), model.safetensors.index.json, the tokenizer files of data/tokenizer/ and manifest.json (sha256 of
each tensor's raw bytes). --header-only writes everything but the tensor data: the safetensors header goes to
model-00001-of-000001.safetensors.header (8-byte length + JSON, exactly the file's first bytes) and no manifest.

Every tensor is drawn from its own generator seeded by sha256(seed, name), so a tensor's values do not depend
on the others (the same name and seed give the same bytes in tiny and full when the shapes agree). Scales are
chosen so that the random model behaves like a trained one on the checks of tests/test_realism.py; --stress
draws matrices from a Student-t (3 degrees of freedom; lm_head stays Gaussian), scales 2 input channels of every
matrix by 8 and channel 5 of the token embeddings by 6, and
puts residual channels near 1e4 into the BOS embedding row and the view separator (massive activations).
Works with Debian's torch 1.13 and recent torch.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from config import load_config, tensor_plan  # noqa: E402
from st_io import bf16_bytes, build_header  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
DATA_MODEL = os.path.join(REPO, "data", "model")
DATA_TOK = os.path.join(REPO, "data", "tokenizer")
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "processor_config.json"]
ST_NAME = "model-00001-of-000001.safetensors"

TINY_LANG = {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 2,
             "intermediate_size": 256, "moe_intermediate_size": 64, "n_routed_experts": 8,
             "num_experts_per_tok": 3, "n_shared_experts": 2, "first_k_dense_replace": 1, "vocab_size": 129280,
             "max_position_embeddings": 8192}
TINY_SAM = {"width": 64, "layers": 4, "heads": 2, "global_attn_indexes": [1, 3], "downsample_channels": [64, 128],
            "window_size": 14, "out_chans": 32}
TINY_CLIP = {"width": 128, "heads": 2, "layers": 2, "image_size": 224, "patch_size": 14}
TINY_PROJ = {"input_dim": 256, "n_embed": 128}


def config_json(kind):
    """The config.json dict for 'full' (the official file untouched) or 'tiny'."""
    with open(os.path.join(DATA_MODEL, "config.json")) as f:
        cj = json.load(f)
    if kind == "full":
        return cj
    if kind != "tiny":
        raise ValueError(f"unknown config {kind!r} (tiny or full)")
    for k, v in TINY_LANG.items():
        cj[k] = v
        cj["language_config"][k] = v
    cj["vision_config"]["width"]["sam_vit_b"].update(TINY_SAM)
    cj["vision_config"]["width"]["clip-l-14-224"].update(TINY_CLIP)
    cj["projector_config"].update(TINY_PROJ)
    return cj


def _gen(seed, name):
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))
    return g


def _draw(g, shape, std, stress):
    """N(0, std^2), or under stress a unit-variance-scaled Student-t(3) times std."""
    x = torch.randn(shape, generator=g)
    if stress:
        chi = torch.randn((3,) + tuple(shape), generator=g).pow(2).sum(0) / 3.0
        x = x / torch.sqrt(chi.clamp_min(1e-3)) / math.sqrt(3.0)
    return x * std


def init_tensor(name, shape, c, seed, stress=False):
    """Random float32 values for one checkpoint tensor (spec names; scales documented in README.md)."""
    g = _gen(seed, name)
    base = re.sub(r"\.\d+\.", ".N.", name)
    last = name.rsplit(".", 1)[-1]
    D = c.hidden_size

    def mat(std):
        w = _draw(g, shape, std, stress)
        if stress and len(shape) >= 2:
            cols = torch.randperm(shape[1], generator=g)[:2]
            w[:, cols] *= 8.0
        return w

    def vec(mean, std):
        return mean + torch.randn(shape, generator=g) * std

    if len(shape) == 1 and last == "weight" and ("norm" in base or "layrnorm" in base or ".neck." in base):
        return vec(1.0, 0.05)                                   # every LayerNorm / RMSNorm / LayerNorm2d gain
    if len(shape) == 1 and last == "bias":
        return vec(0.0, 0.05)
    # ---- SAM
    if base == "model.sam_model.pos_embed":
        return vec(0.0, 0.5)
    if base == "model.sam_model.patch_embed.proj.weight":
        return mat(1.0 / math.sqrt(shape[1] * shape[2] * shape[3]))
    if "rel_pos" in base:
        return vec(0.0, 0.15)
    if base.endswith("attn.qkv.weight") or base.endswith("mlp.lin1.weight"):
        return mat(1.0 / math.sqrt(shape[1]))
    if base.endswith("attn.proj.weight") or base.endswith("mlp.lin2.weight"):
        return mat(0.5 / math.sqrt(shape[1]))
    if base.startswith("model.sam_model.neck.N.weight") or base.startswith("model.sam_model.net_"):
        return mat(1.0 / math.sqrt(shape[1] * shape[2] * shape[3]))
    # ---- CLIP
    if base == "model.vision_model.embeddings.class_embedding":
        return vec(0.0, 1.0)
    if base == "model.vision_model.embeddings.patch_embedding.weight":
        return mat(0.02)
    if base == "model.vision_model.embeddings.position_embedding.weight":
        return vec(0.0, 0.5)
    if base.endswith("qkv_proj.weight") or base.endswith("fc1.weight"):
        return mat(1.0 / math.sqrt(shape[1]))
    if base.endswith("out_proj.weight") or base.endswith("fc2.weight"):
        return mat(0.5 / math.sqrt(shape[1]))
    # ---- glue
    if base == "model.projector.layers.weight":
        return mat(1.0 / math.sqrt(shape[1]))
    if base in ("model.image_newline", "model.view_seperator"):
        v = vec(0.0, 1.0)
        if stress and base == "model.view_seperator":
            v[: 2] = torch.tensor([1.0e4, -0.9e4])
        return v
    # ---- decoder
    if base == "model.embed_tokens.weight":
        w = _draw(g, shape, 1.0, False)
        if stress:
            w[0, :2] = torch.tensor([1.0e4, -0.9e4])
            w[:, 5] *= 6.0
        return w
    if base == "lm_head.weight":    # Gaussian even under --stress: heavy-tailed rows would pick a few tokens always
        return _draw(g, shape, 9.0 / math.sqrt(D), False)
    if base.endswith("q_proj.weight") or base.endswith("k_proj.weight") or base.endswith("v_proj.weight"):
        return mat(1.0 / math.sqrt(shape[1]))
    if base.endswith("o_proj.weight"):
        return mat(0.8 / math.sqrt(shape[1]))
    if base.endswith("mlp.gate.weight"):   # router logit std 0.5*log2(E): 1.5 for 8 experts, 3 for 64
        return mat(0.5 * math.log2(max(shape[0], 2)) / math.sqrt(shape[1]))
    if base.endswith("gate_proj.weight") or base.endswith("up_proj.weight"):
        return mat(1.0 / math.sqrt(shape[1]))
    if base.endswith("down_proj.weight"):
        return mat(1.0 / math.sqrt(shape[1]))
    raise KeyError(f"no init rule for {name}")


def write_checkpoint(kind, out, seed=0, stress=False, header_only=False, log=None):
    """Writes the folder; returns the manifest dict (None with header_only)."""
    os.makedirs(out, exist_ok=True)
    cj = config_json(kind)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cj, f, indent=1)
    c = load_config(os.path.join(out, "config.json"))
    plan = tensor_plan(c)
    for fn in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(DATA_TOK, fn), os.path.join(out, fn))
    header, offs, total = build_header([(n, "BF16", s) for n, s in plan], {"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": {n: ST_NAME for n, _ in plan}}
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    if header_only:
        with open(os.path.join(out, ST_NAME + ".header"), "wb") as f:
            f.write(header)
        return None
    tensors = {}
    fsha = hashlib.sha256(header)
    tmp = os.path.join(out, ST_NAME + ".partial")
    with open(tmp, "wb") as f:
        f.write(header)
        for i, (name, shape) in enumerate(plan):
            t = init_tensor(name, shape, c, seed, stress)
            if tuple(t.shape) != tuple(shape):
                raise AssertionError(f"{name}: generated {tuple(t.shape)}, planned {tuple(shape)}")
            if not torch.isfinite(t).all():
                raise AssertionError(f"{name}: non-finite init")
            raw = bf16_bytes(t)
            del t
            b, e = offs[name]
            if len(raw) != e - b or f.tell() != len(header) + b:
                raise AssertionError(f"{name}: offsets out of step")
            f.write(raw)
            fsha.update(raw)
            tensors[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [b, e],
                             "sha256": hashlib.sha256(raw).hexdigest()}
            if log and (i % 200 == 0 or i == len(plan) - 1):
                log(f"{i + 1}/{len(plan)} {name}")
    os.replace(tmp, os.path.join(out, ST_NAME))
    manifest = {"format": "dsocr-random-checkpoint-1", "config": kind, "seed": seed, "stress": stress,
                "file": ST_NAME, "file_sha256": fsha.hexdigest(), "total_size": total, "n_tensors": len(plan),
                "tensors": tensors}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "full"], required=True)
    ap.add_argument("--stress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--header-only", action="store_true")
    a = ap.parse_args(argv)
    m = write_checkpoint(a.config, a.out, a.seed, a.stress, a.header_only,
                         log=lambda s: print(s, file=sys.stderr) if a.config == "full" else None)
    if m:
        print(f"{a.out}: {m['n_tensors']} tensors, {m['total_size']} bytes of data, sha256 {m['file_sha256']}")
    else:
        print(f"{a.out}: header and index written (no data)")


if __name__ == "__main__":
    main()
