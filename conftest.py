"""Fixtures shared by every Python test folder (tests/py, tools/reference/tests): the tiny and tiny --stress
random checkpoints, written once per test session by the reference generator into pytest's temp dir."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))

import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    import make_checkpoint
    d = str(tmp_path_factory.mktemp("tiny"))
    make_checkpoint.write_checkpoint("tiny", d, seed=1)
    return d


@pytest.fixture(scope="session")
def stress_ckpt(tmp_path_factory):
    import make_checkpoint
    d = str(tmp_path_factory.mktemp("tiny_stress"))
    make_checkpoint.write_checkpoint("tiny", d, seed=1, stress=True)
    return d
