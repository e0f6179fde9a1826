"""Shared fixtures of the reference tests: the tiny and tiny --stress checkpoints (written once per session into
pytest's temp dir), the tokenizer, and paths."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(REF))
sys.path.insert(0, REF)

import torch  # noqa: E402

torch.set_num_threads(2)

IMAGES = {n: os.path.join(REPO, "tests", "images", n) for n in ("small.png", "portrait.jpg", "wide.png", "exif_rgba.png")}


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


@pytest.fixture(scope="session")
def tok():
    from tokenizer import Tokenizer
    return Tokenizer(os.path.join(REPO, "data", "tokenizer", "tokenizer.json"))
