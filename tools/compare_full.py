#!/usr/bin/python3
"""The C engine against the PyTorch reference on the FULL-size random checkpoint (issue 5), fp32 against fp32:
one base-mode image and one gundam image, every stage within 1e-3 relative L2, tokens teacher-forced over 32
steps (the rules of tests/py/engine_vs_ref.py). Writes a JSON report.

    /usr/bin/python3 tools/compare_full.py [--model DIR] [--out bench/results/full-vs-reference-cpu.json]

Without --model it generates the full random checkpoint (6.7 GB, seed 1) into build/full-model first.
Needs about 12 GB of RAM; the reference is slow (minutes per image on 2 cores).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
sys.path.insert(0, os.path.join(REPO, "tests", "py"))

from engine_vs_ref import check, run_c, run_reference  # noqa: E402

CASES = [("portrait.jpg", "base"), ("portrait.jpg", "gundam")]


def machine():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "full-vs-reference-cpu.json"))
    ap.add_argument("--work", default=os.path.join(REPO, "build", "full-compare"))
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    model = a.model
    if not model:
        import make_checkpoint
        model = os.path.join(REPO, "build", "full-model")
        if not os.path.exists(os.path.join(model, "model-00001-of-000001.safetensors")):
            t = time.time()
            make_checkpoint.write_checkpoint("full", model, seed=1, log=lambda s: print(s, flush=True))
            print(f"generated the full checkpoint in {time.time() - t:.0f} s", flush=True)
    from model import Reference
    from tokenizer import Tokenizer
    ref = Reference(model, "fp32")
    tok = Tokenizer(os.path.join(model, "tokenizer.json"))
    report = {"what": "C engine (fp32) vs PyTorch reference (fp32), full-size random checkpoint (seed 1)",
              "command": "/usr/bin/python3 tools/compare_full.py", "machine": machine(),
              "tolerance_rel_l2": 1e-3, "steps": a.steps, "cases": []}
    ok = True
    for img, mode in CASES:
        rdir = os.path.join(a.work, f"{mode}-ref")
        cdir = os.path.join(a.work, f"{mode}-c")
        subprocess.run(["rm", "-rf", rdir, cdir], check=True)
        t = time.time()
        run_reference(ref, tok, os.path.join(REPO, "tests", "images", img), rdir, mode, "hf", a.steps)
        t_ref = time.time() - t
        t = time.time()
        run_c(model, os.path.join(REPO, "tests", "images", img), cdir, mode, "hf", "fp32",
              os.path.join(rdir, "generated.bin"), threads=a.threads, timeout=7200)
        t_c = time.time() - t
        lines, fails, ties = check(cdir, rdir, 1e-3)
        ok = ok and not fails
        case = {"image": img, "mode": mode, "compat": "hf", "seconds_reference": round(t_ref, 1),
                "seconds_c_with_dumps": round(t_c, 1), "stages_rel_l2": lines, "failures": fails,
                "near_ties": ties, "pass": not fails}
        report["cases"].append(case)
        print(json.dumps(case, indent=1), flush=True)
    report["pass"] = ok
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {a.out}; pass = {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
