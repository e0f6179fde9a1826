"""Fixtures of the reference tests: the tokenizer and paths (the tiny checkpoints come from the repository's
conftest.py, shared with tests/py)."""
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
def tok():
    from tokenizer import Tokenizer
    return Tokenizer(os.path.join(REPO, "data", "tokenizer", "tokenizer.json"))
