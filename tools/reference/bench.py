#!/usr/bin/python3
"""Times the PyTorch reference on the stages `dsocr bench` reports, for scale (issue 12), and prints JSON.

  bench.py --model DIR [--image FILE] [--mode base,gundam] [--tokens N] [--precision fp32|bf16] [--threads N]
           [--warmup N] [--note TEXT] [--dsocr FILE ...]

Stages, per mode (one warm process, --warmup unmeasured pages first, then one measured page):
  preprocess_s  loading the file, the views and their normalisation (preprocess.py)
  vision_s      SAM + CLIP of every view and the image block (model.encode_view, model.image_block)
  prefill_s     the prompt's embeddings and the decoder over all prompt tokens (KV cache filled)
  decode_s      --tokens greedy steps of one token each (the guard's n-gram ban included), and decode_tok_s
The weights are converted to float32 once and kept (as a loaded PyTorch model holds them), so no stage pays for
reading the checkpoint; the routed experts a page never uses are never converted. Threads: every core (as dsocr's
default) unless --threads. The figures are the reference's, an implementation written for clarity, not speed.
--dsocr FILE (repeatable): `dsocr bench` JSON of the same machine (tools/bench_cpu.sh runs both); printed as
{"dsocr": [...], "pytorch_reference": ..., "speedup": [per file and mode, the reference's stage time over dsocr's
median (decode: dsocr's tokens/s over the reference's)]}.
"""
import argparse
import json
import os
import platform
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch  # noqa: E402

from model import Reference  # noqa: E402
from pipeline import IMAGE_ID, banned_tokens, build_ids, prompt_text  # noqa: E402
from preprocess import load_image, make_views, normalize, resolve_mode  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


def page(ref, tok, image, mode, tokens, compat="hf"):
    """Runs one page; returns the stage times (seconds) and counts."""
    b, i, c = resolve_mode(mode, None, None, None)
    t0 = time.perf_counter()
    img = load_image(image, compat)
    views, plan = make_views(img, b, i, c, compat)
    pixels = [(name, normalize(px)) for name, px in views]
    t1 = time.perf_counter()
    with torch.no_grad():
        feats = {name: ref.encode_view(px) for name, px in pixels}
        tiles = [feats[n] for n, _ in views if n != "global"]
        block = ref.image_block(tiles, plan["grid"], feats["global"])
        t2 = time.perf_counter()
        ids = build_ids(tok, prompt_text("markdown"), plan["slots"], compat, ref.cfg.bos_token_id)
        idt = torch.tensor(ids, dtype=torch.int64)
        h = ref.embed(idt)
        h[idt == IMAGE_ID] = block
        cache = []
        logits = ref.decoder(h, torch.arange(len(ids)), cache)
        t3 = time.perf_counter()
        out = []
        for _ in range(tokens):
            ban = banned_tokens(ids + out, out, compat)
            if ban:
                logits = logits.clone()
                logits[torch.tensor(sorted(ban))] = float("-inf")
            t = int(torch.argmax(logits))
            out.append(t)
            if len(out) == tokens:
                break
            logits = ref.decoder(ref.embed(torch.tensor([t])), torch.tensor([len(ids) + len(out) - 1]), cache)
        t4 = time.perf_counter()
    return {"mode": mode, "views": len(views), "prompt_tokens": len(ids), "generated": len(out),
            "preprocess_s": round(t1 - t0, 6), "vision_s": round(t2 - t1, 6), "prefill_s": round(t3 - t2, 6),
            "decode_s": round(t4 - t3, 6), "decode_tok_s": round(len(out) / (t4 - t3), 3) if t4 > t3 else 0.0}


def speedups(ours, ref):
    """Per mode: the reference's stage time over dsocr's median (decode: per token)."""
    out = []
    mine = {r["mode"]: r for r in ours.get("runs", [])}
    for r in ref["runs"]:
        m = mine.get(r["mode"])
        if not m:
            continue
        row = {"mode": r["mode"]}
        for k in ("preprocess_s", "vision_s", "prefill_s"):
            if m[k]["median"] > 0:
                row[k.replace("_s", "")] = round(r[k] / m[k]["median"], 2)
        if r["decode_tok_s"] > 0:
            row["decode"] = round(m["decode_tok_s"]["median"] / r["decode_tok_s"], 2)
        out.append(row)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder")
    ap.add_argument("--image", default=os.path.join(HERE, "..", "..", "tests", "images", "portrait.jpg"))
    ap.add_argument("--mode", default="base,gundam", help="comma-separated modes")
    ap.add_argument("--tokens", type=int, default=16, help="decode steps a page (default 16)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: every core, as dsocr)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured pages first, per mode (default 1)")
    ap.add_argument("--note", default="")
    ap.add_argument("--dsocr", action="append", default=[], help="dsocr bench JSON to print beside the reference's")
    a = ap.parse_args(argv)
    if a.tokens < 1 or a.warmup < 0:
        ap.error("--tokens must be at least 1 and --warmup at least 0")
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    try:
        t0 = time.perf_counter()
        ref = Reference(a.model, a.precision, cache_limit=float("inf"))
        tok = Tokenizer(os.path.join(a.model, "tokenizer.json"))
        load_s = time.perf_counter() - t0
        runs = []
        for mode in [m for m in a.mode.split(",") if m]:
            for _ in range(a.warmup):
                page(ref, tok, a.image, mode, a.tokens)
            runs.append(page(ref, tok, a.image, mode, a.tokens))
    except (ValueError, OSError) as e:
        print(f"bench.py: {e}", file=sys.stderr)
        return 2
    res = {"what": "PyTorch reference (tools/reference/bench.py): one measured page per mode after --warmup",
           "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
           "torch": torch.__version__, "threads": torch.get_num_threads(), "precision": a.precision,
           "model": a.model, "image": a.image, "tokens": a.tokens, "warmup": a.warmup, "note": a.note,
           "load_s": round(load_s, 3), "runs": runs,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if a.dsocr:
        ours = []
        for path in a.dsocr:
            try:
                with open(path) as f:
                    ours.append(json.load(f))
            except (OSError, ValueError) as e:
                print(f"bench.py: {path}: {e}", file=sys.stderr)
                return 2
        res = {"dsocr": ours, "pytorch_reference": res,
               "speedup": [{"quant": o.get("quant"), "precision": o.get("precision"), "modes": speedups(o, res)}
                           for o in ours]}
    json.dump(res, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
