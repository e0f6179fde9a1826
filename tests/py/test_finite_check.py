"""tools/finite_check.py (the f16 path's no-inf/NaN check on the GPU machine): passes finite dump folders, fails on
an inf or a NaN and names the tensor, and reports values beyond the fp16 range without failing."""
import os
import subprocess
import sys

import numpy as np

from tpaths import REPO
from st_io import write_dump

TOOL = os.path.join(REPO, "tools", "finite_check.py")


def run(*dirs):
    return subprocess.run([sys.executable, TOOL] + [str(d) for d in dirs], capture_output=True, text=True, timeout=60)


def test_finite_check(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    write_dump(str(good / "layer0.out.bin"), np.array([[1.0, -2.0], [3e5, 0.5]], dtype=np.float32))
    write_dump(str(good / "prompt_ids.bin"), np.array([1, 2, 3], dtype=np.int32))
    r = run(good)
    assert r.returncode == 0 and "finite_check: PASS" in r.stdout, r.stdout + r.stderr
    assert "beyond fp16's 65504: 1 tensors: layer0.out" in r.stdout
    write_dump(str(bad / "global.sam.bin"), np.array([1.0, np.inf, np.nan], dtype=np.float32))
    write_dump(str(bad / "logits.bin"), np.zeros((2, 3), dtype=np.float32))
    r = run(good, bad)
    assert r.returncode == 1 and "finite_check: FAIL" in r.stdout and "bad/global.sam" in r.stdout, r.stdout
    assert "global.sam: 1 NaN, 1 inf of 3" in r.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(empty).returncode == 1
