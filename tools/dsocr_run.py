"""Runs the repository's ./dsocr for the GPU-machine tools (gpu_parity.py, quant_quality.py)."""
import os
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DSOCR = os.path.join(REPO, "dsocr")


def ocr(args, timeout):
    """`dsocr ocr ARGS`; the seconds it took. Raises with the end of stderr when it fails."""
    t = time.time()
    p = subprocess.run([DSOCR, "ocr"] + args, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"dsocr {' '.join(args)} failed: {p.stderr[-3000:]}")
    return time.time() - t
