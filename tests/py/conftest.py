"""Fixtures for the Python-driven tests of the C engine: random checkpoints (tiny, tiny --stress) written once
per session by the reference generator, and paths."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REF = os.path.join(REPO, "tools", "reference")
sys.path.insert(0, REF)
sys.path.insert(0, HERE)

import torch  # noqa: E402

torch.set_num_threads(2)

DSOCR = os.path.join(REPO, "dsocr")
IMAGES = {n: os.path.join(REPO, "tests", "images", n) for n in ("small.png", "portrait.jpg", "wide.png", "exif_rgba.png")}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    import make_checkpoint
    d = str(tmp_path_factory.mktemp("tiny"))
    make_checkpoint.write_checkpoint("tiny", d, seed=1)
    return d


@pytest.fixture(scope="session")
def stress_model(tmp_path_factory):
    import make_checkpoint
    d = str(tmp_path_factory.mktemp("tiny_stress"))
    make_checkpoint.write_checkpoint("tiny", d, seed=2, stress=True)
    return d
