#!/usr/bin/python3
"""Quality of quantised weights against bf16 (issue 7): a page decoded greedily in bf16 for N steps
(--ignore-eos), then the same page teacher-forced on that sequence with --quant q8_0 and --quant q4; per step the
KL divergence KL(p_bf16 || p_quant) of the next-token distributions, its mean, and top-1 agreement on the steps
whose bf16 margin (top-1 minus top-2 logit) exceeds 10x the measured error (the largest |logit difference| over
all steps, as tests/py/engine_vs_ref.py measures it). Runs the CPU engine (quantised weights are CPU-only so far).

    python3 tools/quant_quality.py --model DIR [--mode gundam] [--steps 128] [--out FILE.json]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
sys.path.insert(0, HERE)
import dsocr_run  # noqa: E402
from st_io import read_dump  # noqa: E402


def run(args):
    return dsocr_run.ocr(args, timeout=900)


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mode", default="gundam")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--image", default=os.path.join(REPO, "tests", "images", "portrait.jpg"))
    ap.add_argument("--work", default="/tmp/quant-quality")
    ap.add_argument("--out", default="quant-quality.json")
    ap.add_argument("--variants", default="q8_0,q4",
                    help="q8_0, q4, and fp32 (no quantisation, fp32 arithmetic: how far the bf16 rounding points "
                         "alone move the distribution on these weights; no limit)")
    a = ap.parse_args()
    common = ["--model", a.model, "--device", "cpu", "--mode", a.mode, "--precision", "bf16", "--ignore-eos",
              "--quiet"]
    base = os.path.join(a.work, "bf16")
    subprocess.run(["rm", "-rf", a.work])
    t = run(common + ["--max-tokens", str(a.steps), "--dump", base, a.image])
    lb = np.asarray(read_dump(os.path.join(base, "logits.bin")), dtype=np.float64)
    report = {"what": "KL(bf16 || quantised) of the next-token distribution, teacher-forced on the bf16 greedy "
                      "sequence, CPU engine, bf16 rounding points",
              "command": "python3 tools/quant_quality.py " + " ".join(sys.argv[1:]), "model": a.model,
              "mode": a.mode, "steps": int(lb.shape[0]), "seconds_bf16": round(t, 1), "quant": {}}
    srt = np.sort(lb, axis=1)
    margin = srt[:, -1] - srt[:, -2]
    top_b = lb.argmax(axis=1)
    lpb = log_softmax(lb)
    pb = np.exp(lpb)
    ok = True
    for q in a.variants.split(","):
        d = os.path.join(a.work, q)
        extra = ["--precision", "fp32"] if q == "fp32" else ["--quant", q]
        t = run(common + extra + ["--dump", d, "--force-ids", os.path.join(base, "generated.bin"), a.image])
        lq = np.asarray(read_dump(os.path.join(d, "logits.bin")), dtype=np.float64)
        assert lq.shape == lb.shape, (lq.shape, lb.shape)
        kl = (pb * (lpb - log_softmax(lq))).sum(axis=1)
        err = float(np.abs(lq - lb).max())
        sure = margin > 10 * err
        agree = int((lq.argmax(axis=1)[sure] == top_b[sure]).sum())
        limit = {"q8_0": 0.002, "q4": 0.03}.get(q)
        r = {"mean_kl": float(kl.mean()), "max_kl": float(kl.max()), "kl_limit": limit,
             "top1_agreement_all_steps": float((lq.argmax(axis=1) == top_b).mean()),
             "logit_error_max_abs": err, "steps_with_margin_over_10x_error": int(sure.sum()),
             "top1_agree_on_those": agree, "seconds": round(t, 1),
             "pass": bool(limit is None or (kl.mean() <= limit and agree == int(sure.sum())))}
        if limit is not None:
            ok = ok and r["pass"]
        report["quant"][q] = r
        print(q, json.dumps(r))
    report["pass"] = ok
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    print("pass =", ok)


if __name__ == "__main__":
    main()
