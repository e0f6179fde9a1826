#!/usr/bin/python3
"""Sums ncu's per-kernel times (CSV from `ncu --csv --print-units base --metrics gpu__time_duration.sum`) over one
decode step: the kernels between the last two argmax_k launches, by name. Used on the GPU machine:
    python3 tools/ncu_step.py ncu.csv"""
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncu_csv import kernel_times  # noqa: E402

rows = [(n, us) for n, _, us in kernel_times(sys.argv[1])]
marks = [i for i, (n, _) in enumerate(rows) if n.startswith("argmax_k")]
if len(marks) < 2:
    sys.exit("fewer than two argmax_k launches in the trace")
step = rows[marks[-2] + 1: marks[-1] + 1]
by = OrderedDict()
for n, us in step:
    key = n.split("(")[0]
    c, t = by.get(key, (0, 0.0))
    by[key] = (c + 1, t + us)
print(f"one decode step: {len(step)} kernels, sum of kernel times {sum(t for _, t in step):.1f} us")
for k, (c, t) in sorted(by.items(), key=lambda kv: -kv[1][1]):
    print(f"{k[:44]:44s} {c:4d} calls {t:9.1f} us total {t / c:8.2f} us/call")
