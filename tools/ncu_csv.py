"""Reads ncu's per-kernel times: the CSV of `ncu --csv --print-units base --metrics gpu__time_duration.sum`, as
(kernel name, grid size, microseconds) in launch order. Shared by tools/ncu_step.py and tools/ncu_view.py."""
import csv


def kernel_times(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    rows = []
    for r in csv.DictReader(lines):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            rows.append((r["Kernel Name"], r.get("Grid Size", ""),
                         float(r["Metric Value"].replace(",", "")) / 1000.0))
    return rows
