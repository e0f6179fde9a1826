"""Paths the Python tests of the engine share (a module of its own: `from conftest import ...` is ambiguous when
several conftest.py files are loaded in one pytest run)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REF = os.path.join(REPO, "tools", "reference")
if REF not in sys.path:
    sys.path.insert(0, REF)

DSOCR = os.path.join(REPO, "dsocr")
IMAGES = {n: os.path.join(REPO, "tests", "images", n) for n in ("small.png", "portrait.jpg", "wide.png", "exif_rgba.png")}
