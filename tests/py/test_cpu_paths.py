"""The CPU kernels' AVX2 paths, on a machine with AVX-512 too: DSOCR_NO_AVX512=1 (read once per process) turns
the 16-lane kernels off, so the C unit tests of the kernels run again with it. This covers the 8-lane kernels
(among them the 16-bit Q8_0 GEMV that AVX2-only CPUs run) against the references, with every tolerance and
bit-for-bit agreement those tests assert."""
import os
import re
import subprocess

import pytest

from tpaths import REPO


@pytest.mark.parametrize("name", ["test_quant", "test_ops"])
def test_kernels_without_avx512(name):
    exe = os.path.join(REPO, "build", "tests", name)
    assert os.path.isfile(exe), exe + " is built by make test-bins"
    r = subprocess.run([exe], env=dict(os.environ, DSOCR_NO_AVX512="1"), capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and re.search(r"\b[1-9]\d* passed, 0 failed", out), out[-4000:]
