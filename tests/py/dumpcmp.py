"""Compares two stage-dump folders (tools/reference/DUMP.md format): the C engine's and the reference's.

Used by the engine-vs-reference tests and by hand:
    /usr/bin/python3 tests/py/dumpcmp.py C_DIR REF_DIR
prints, per tensor both folders hold, the relative L2 error |c - r| / |r|, the cosine, and max |c - r|.
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "reference"))
from st_io import read_dump  # noqa: E402


def load(d, name):
    return np.asarray(read_dump(os.path.join(d, name + ".bin")))


def names(d):
    return sorted(f[:-4] for f in os.listdir(d) if f.endswith(".bin"))


def stats(c, r):
    c = np.asarray(c, dtype=np.float64).ravel()
    r = np.asarray(r, dtype=np.float64).ravel()
    nr = np.linalg.norm(r)
    rel = np.linalg.norm(c - r) / nr if nr > 0 else float(np.linalg.norm(c - r))
    nc = np.linalg.norm(c)
    cos = float(c @ r / (nc * nr)) if nc > 0 and nr > 0 else (1.0 if nc == nr else 0.0)
    return float(rel), cos, float(np.max(np.abs(c - r))) if c.size else 0.0


def compare(cdir, rdir, skip=()):
    """{name: (rel_l2, cosine, max_abs)} for float tensors in both folders; {name: equal} for integer ones."""
    out = {}
    for n in names(rdir):
        if n in skip or not os.path.exists(os.path.join(cdir, n + ".bin")):
            continue
        c, r = load(cdir, n), load(rdir, n)
        if c.shape != r.shape:
            out[n] = ("shape", c.shape, r.shape)
            continue
        if np.issubdtype(r.dtype, np.integer):
            out[n] = ("equal", bool(np.array_equal(c, r)))
        else:
            out[n] = stats(c, r)
    return out


def main():
    res = compare(sys.argv[1], sys.argv[2])
    for n, v in res.items():
        if v[0] == "shape":
            print(f"{n:32s} SHAPE MISMATCH c={v[1]} ref={v[2]}")
        elif v[0] == "equal":
            print(f"{n:32s} {'identical' if v[1] else 'DIFFERENT'}")
        else:
            print(f"{n:32s} rel_l2 {v[0]:.3e}  cos {v[1]:.9f}  max_abs {v[2]:.3e}")


if __name__ == "__main__":
    main()
