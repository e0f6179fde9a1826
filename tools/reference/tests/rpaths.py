"""Paths the reference's tests share (a module of its own: `from conftest import ...` is ambiguous when several
conftest.py files are loaded in one pytest run)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(REF))
if REF not in sys.path:
    sys.path.insert(0, REF)

IMAGES = {n: os.path.join(REPO, "tests", "images", n) for n in ("small.png", "portrait.jpg", "wide.png", "exif_rgba.png")}
