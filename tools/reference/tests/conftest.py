"""Fixtures of the reference tests: the tokenizer (the tiny checkpoints come from the repository's conftest.py,
shared with tests/py; shared paths are in rpaths.py)."""
import os

import pytest

from rpaths import REPO


@pytest.fixture(scope="session")
def tok():
    from tokenizer import Tokenizer
    return Tokenizer(os.path.join(REPO, "data", "tokenizer", "tokenizer.json"))
