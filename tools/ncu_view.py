#!/usr/bin/python3
"""Sums ncu's per-kernel times (CSV from `ncu --csv --print-units base --metrics gpu__time_duration.sum`) over the
first vision view of a run: the kernels from the first chw_to_hwc_k launch up to the first embedding kernel of the
prompt, grouped by kernel name and grid (so that products of different shapes stay apart). Used on the GPU machine:
    python3 tools/ncu_view.py ncu.csv"""
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ncu_csv import kernel_times  # noqa: E402

rows = kernel_times(sys.argv[1])
start = next((i for i, (n, _, _) in enumerate(rows) if n.startswith("chw_to_hwc")), None)
if start is None:
    sys.exit("no chw_to_hwc_k launch in the trace")
end = next((i for i in range(start, len(rows)) if rows[i][0].startswith("embed")), len(rows))
view = rows[start:end]
by = OrderedDict()
for n, g, us in view:
    key = (n.split("(")[0][:60], g)
    c, t = by.get(key, (0, 0.0))
    by[key] = (c + 1, t + us)
total = sum(t for _, _, t in view)
print(f"one view: {len(view)} kernels, sum of kernel times {total:.1f} us")
for (k, g), (c, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:45]:
    print(f"{k:60s} {g:>16s} {c:4d} calls {t:9.1f} us {100 * t / total:5.1f}% {t / c:8.2f} us/call")
