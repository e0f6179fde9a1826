"""How much quantising the vision encoder's linear weights would cost (issue 7: "measure before deciding what
else stays"). Runs the PyTorch reference (fp32) on a checkpoint folder and on copies whose weights are replaced by
their Q8_0 / Q4_0 dequantisation (tests/py/test_quant_reference.py's independent quantisers) for four policies:
the decoder only (what dsocr does), decoder + vision, vision only at Q8_0 and at Q4_0; prints the relative L2
error of the vision stages, two decoder layers and the first step's logits against the unquantised run.

    /usr/bin/python3 tools/quant_vision_error.py MODEL_DIR [--image FILE] [--mode gundam]
Results and the decision: bench/results/quant-notes.md."""
import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "py"))
sys.path.insert(0, os.path.join(HERE, "reference"))

import numpy as np  # noqa: E402
import st_io  # noqa: E402
from dumpcmp import compare, load  # noqa: E402
from engine_vs_ref import run_reference  # noqa: E402
from model import Reference  # noqa: E402
from test_quant_reference import q4_0, q8_0  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402
from tpaths import IMAGES  # noqa: E402


def is_dec(n, w):
    return n == "lm_head.weight" or (n.startswith("model.layers.") and w.ndim == 2 and (
        ".self_attn." in n or ".mlp.experts." in n or ".mlp.shared_experts." in n or n.endswith("_proj.weight")))


def is_vis(n, w):
    return (w.ndim == 2 and w.shape[1] % 32 == 0 and n.endswith(".weight") and "norm" not in n and
            n.startswith(("model.sam_model.blocks.", "model.vision_model.transformer.", "model.projector.")))


POLICIES = {"decoder Q8_0": lambda n, w: q8_0(w) if is_dec(n, w) else w,
            "decoder + vision Q8_0": lambda n, w: q8_0(w) if is_dec(n, w) or is_vis(n, w) else w,
            "vision Q8_0": lambda n, w: q8_0(w) if is_vis(n, w) else w,
            "vision Q4_0": lambda n, w: q4_0(w) if is_vis(n, w) else w}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--image", default=IMAGES["portrait.jpg"])
    ap.add_argument("--mode", default="gundam")
    a = ap.parse_args()
    src = st_io.SafeTensors(os.path.join(a.model, "model-00001-of-000001.safetensors"))
    tmp = tempfile.mkdtemp(prefix="quant_vision_")
    try:
        def run(d, name):
            ref = Reference(d, "fp32")
            out = os.path.join(tmp, "dump_" + name)
            run_reference(ref, Tokenizer(os.path.join(d, "tokenizer.json")), a.image, out, a.mode, "hf", 1)
            return out
        base = run(a.model, "base")
        for i, (name, fn) in enumerate(POLICIES.items()):
            d = os.path.join(tmp, f"m{i}")
            os.makedirs(d)
            for f in ("config.json", "tokenizer.json"):
                shutil.copy(os.path.join(a.model, f), d)
            names = src.names()
            hdr, _, _ = st_io.build_header([(n, "F32", list(src.get(n).shape)) for n in names])
            with open(os.path.join(d, "model-00001-of-000001.safetensors"), "wb") as f:
                f.write(hdr)
                for n in names:
                    f.write(np.ascontiguousarray(fn(n, src.get(n).float().numpy()), "<f4").tobytes())
            r = run(d, f"p{i}")
            res = compare(r, base)
            lg, lb = load(r, "logits")[0].astype(np.float64), load(base, "logits")[0].astype(np.float64)
            stages = " ".join(f"{k} {res[k][0]:.2e}" for k in ("global.sam", "global.clip", "image_embeds",
                                                               "layer0.out", "layer2.out") if k in res)
            print(f"{name:24s} {stages} logits {np.linalg.norm(lg - lb) / np.linalg.norm(lb):.2e}", flush=True)
            shutil.rmtree(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
