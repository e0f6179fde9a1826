#!/usr/bin/python3
"""Checks that every float tensor in stage-dump folders (tools/reference/DUMP.md, as `dsocr ocr --dump` writes them)
is finite: no inf and no NaN anywhere. Issue 6's test of the f16 path on the --stress checkpoint (tools/gpu_run.sh,
stage f16): fp16 overflows to inf where a value passes 65504, which the f16 path must never let happen.

Prints, per folder, the number of tensors, the largest magnitude and where it is, and the tensors holding values
beyond the fp16 range (information: such a value entering a matrix product is saturated to 65504 in f16 mode, not
a failure); then one line "finite_check: PASS" or "finite_check: FAIL (...)". Exit status 1 on any inf or NaN, or a
folder with no float tensor.

    python3 tools/finite_check.py DIR [DIR ...]
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
from st_io import read_dump  # noqa: E402

F16_MAX = 65504.0


def load(path):
    """A dump as a numpy array (bf16 dumps widened to f32)."""
    t = read_dump(path)
    if str(t.dtype) == "torch.bfloat16":
        t = t.float()
    return t.numpy()


def check_dir(d):
    """(report lines, names of tensors with inf/NaN, number of float tensors)."""
    bad, big, lines = [], [], []
    n_float, top, top_name = 0, 0.0, ""
    for fn in sorted(os.listdir(d)):
        if not fn.endswith(".bin"):
            continue
        name = fn[:-4]
        a = load(os.path.join(d, fn))
        if not np.issubdtype(a.dtype, np.floating):
            continue
        n_float += 1
        fin = np.isfinite(a)
        if not fin.all():
            n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
            bad.append(name)
            lines.append(f"  {name}: {n_nan} NaN, {n_inf} inf of {a.size}")
        m = float(np.abs(a[fin]).max()) if fin.any() else 0.0
        if m > top:
            top, top_name = m, name
        if m > F16_MAX:
            big.append(f"{name} ({m:.3g})")
    head = f"{d}: {n_float} float tensors, {len(bad)} with inf/NaN; largest |x| {top:.4g} ({top_name})"
    if big:
        head += f"; beyond fp16's 65504: {len(big)} tensors: " + ", ".join(big[:12]) + (" ..." if len(big) > 12 else "")
    return [head] + lines, bad, n_float


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    fails = []
    for d in argv[1:]:
        if not os.path.isdir(d):
            print(f"{d}: not a folder")
            fails.append(f"{d} missing")
            continue
        lines, bad, n_float = check_dir(d)
        print("\n".join(lines), flush=True)
        if n_float == 0:
            fails.append(f"{d} has no float tensor")
        fails += [f"{os.path.basename(os.path.normpath(d))}/{n}" for n in bad]
    if fails:
        print(f"finite_check: FAIL ({len(fails)}: " + ", ".join(fails[:20]) + (" ..." if len(fails) > 20 else "") + ")")
        return 1
    print(f"finite_check: PASS (every float tensor of {len(argv) - 1} folder(s) finite)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
