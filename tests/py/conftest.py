"""Paths for the Python-driven tests of the C engine (the tiny checkpoints come from the repository's
conftest.py)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REF = os.path.join(REPO, "tools", "reference")
sys.path.insert(0, REF)
sys.path.insert(0, HERE)

import torch  # noqa: E402

torch.set_num_threads(2)

DSOCR = os.path.join(REPO, "dsocr")
IMAGES = {n: os.path.join(REPO, "tests", "images", n) for n in ("small.png", "portrait.jpg", "wide.png", "exif_rgba.png")}

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    """The tiny random checkpoint (alias of the shared tiny_ckpt)."""
    return tiny_ckpt


@pytest.fixture(scope="session")
def stress_model(stress_ckpt):
    """The tiny --stress random checkpoint (alias of the shared stress_ckpt)."""
    return stress_ckpt
