"""Fixtures of the Python-driven tests of the C engine (the tiny checkpoints come from the repository's
conftest.py; shared paths are in tpaths.py)."""
import pytest

import tpaths  # noqa: F401  (puts tools/reference on sys.path)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    """The tiny random checkpoint (alias of the shared tiny_ckpt)."""
    return tiny_ckpt


@pytest.fixture(scope="session")
def stress_model(stress_ckpt):
    """The tiny --stress random checkpoint (alias of the shared stress_ckpt)."""
    return stress_ckpt
