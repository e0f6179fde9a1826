"""Hand-written safetensors reader/writer and the stage-dump format (DUMP.md), for the reference only.

safetensors layout: 8-byte little-endian header length N, N bytes of JSON header
({name: {"dtype", "shape", "data_offsets": [begin, end]}, optional "__metadata__": {str: str}}; offsets are
relative to the first data byte), then the data. We pad the header with spaces to a multiple of 8 bytes.
Only BF16/F32/F16/I32/I64/U8 tensors are handled (the checkpoints are all BF16).

Dump file (one tensor per file, DIR/NAME.bin): b"DSDUMP01", u32 dtype code (0 f32, 1 bf16, 2 i32, 3 u8,
4 i64), u32 ndim, ndim x u64 shape, then raw little-endian C-order data.
"""
import json
import mmap
import os
import struct

import numpy as np
import torch

ST_DTYPES = {"BF16": (torch.bfloat16, 2), "F32": (torch.float32, 4), "F16": (torch.float16, 2),
             "I32": (torch.int32, 4), "I64": (torch.int64, 8), "U8": (torch.uint8, 1)}


def bf16_bytes(t):
    """Raw little-endian bytes of a tensor rounded to bf16 (round to nearest even)."""
    t = t.detach().to(torch.bfloat16).contiguous().view(torch.int16)
    return t.numpy().astype("<i2", copy=False).tobytes()


def build_header(entries, metadata=None):
    """entries: list of (name, dtype_str, shape) in file order. Returns (header_bytes incl. the 8-byte length,
    dict name -> (begin, end), total data size)."""
    hdr, offs, pos = {}, {}, 0
    if metadata:
        hdr["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, dt, shape in entries:
        n = ST_DTYPES[dt][1]
        for s in shape:
            n *= int(s)
        hdr[name] = {"dtype": dt, "shape": [int(s) for s in shape], "data_offsets": [pos, pos + n]}
        offs[name] = (pos, pos + n)
        pos += n
    js = json.dumps(hdr, separators=(",", ":")).encode("utf-8")
    js += b" " * ((8 - (8 + len(js)) % 8) % 8)
    return struct.pack("<Q", len(js)) + js, offs, pos


def read_header(path):
    """(header dict, data start offset) of a safetensors file; raises ValueError on a malformed header."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: shorter than 8 bytes")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            raise ValueError(f"{path}: header length {n} is implausible")
        js = f.read(n)
        if len(js) != n:
            raise ValueError(f"{path}: truncated header")
    return json.loads(js.decode("utf-8")), 8 + n


class SafeTensors:
    """Memory-mapped read-only view of one safetensors file: get(name) -> torch tensor (original dtype)."""

    def __init__(self, path):
        self.path = path
        self.header, self.start = read_header(path)
        self.meta = self.header.pop("__metadata__", {})
        self._f = open(path, "rb")
        self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
        size = len(self._mm)
        for name, e in self.header.items():
            b, en = e["data_offsets"]
            if e["dtype"] not in ST_DTYPES or not (0 <= b <= en) or self.start + en > size:
                raise ValueError(f"{path}: tensor {name}: bad dtype or offsets")

    def names(self):
        return list(self.header)

    def get(self, name):
        e = self.header[name]
        dt, _ = ST_DTYPES[e["dtype"]]
        b, en = e["data_offsets"]
        npdt = {torch.bfloat16: "<i2", torch.float16: "<f2", torch.float32: "<f4", torch.int32: "<i4",
                torch.int64: "<i8", torch.uint8: "u1"}[dt]
        arr = np.frombuffer(self._mm, dtype=npdt, count=(en - b) // np.dtype(npdt).itemsize, offset=self.start + b)
        t = torch.from_numpy(arr.copy())
        if dt == torch.bfloat16:
            t = t.view(torch.bfloat16)
        return t.reshape(e["shape"])


# ----------------------------------------------------------------------------------------------- dumps
DUMP_MAGIC = b"DSDUMP01"
DUMP_CODES = {0: ("<f4", torch.float32), 1: ("<i2", torch.bfloat16), 2: ("<i4", torch.int32),
              3: ("u1", torch.uint8), 4: ("<i8", torch.int64)}


def write_dump(path, t, code=None):
    """Writes tensor/ndarray `t` as a dump file. Floats go out as f32 unless code=1 (bf16)."""
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    t = t.detach().contiguous()
    if code is None:
        code = {torch.int32: 2, torch.uint8: 3, torch.int64: 4, torch.bfloat16: 1}.get(t.dtype, 0)
    npdt, tdt = DUMP_CODES[code]
    if code == 1:
        data = bf16_bytes(t)
    else:
        data = t.to(tdt).numpy().astype(npdt, copy=False).tobytes()
    with open(path, "wb") as f:
        f.write(DUMP_MAGIC + struct.pack("<II", code, t.dim()))
        f.write(struct.pack("<%dQ" % t.dim(), *t.shape))
        f.write(data)


def read_dump(path):
    """Reads a dump file: returns a torch tensor (bf16 dumps come back as torch.bfloat16)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:8] != DUMP_MAGIC or len(raw) < 16:
        raise ValueError(f"{path}: not a DSDUMP01 file")
    code, nd = struct.unpack_from("<II", raw, 8)
    if code not in DUMP_CODES or nd > 8:
        raise ValueError(f"{path}: bad dtype code {code} or ndim {nd}")
    shape = struct.unpack_from("<%dQ" % nd, raw, 16)
    npdt, tdt = DUMP_CODES[code]
    off = 16 + 8 * nd
    count = int(np.prod(shape)) if nd else 1
    if len(raw) != off + count * np.dtype(npdt).itemsize:
        raise ValueError(f"{path}: size does not match shape {shape}")
    arr = np.frombuffer(raw, dtype=npdt, count=count, offset=off).copy().reshape(shape)
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if code == 1 else t


def read_dump_dir(d):
    """All dumps of a folder: dict NAME -> tensor (plus 'meta' -> dict from meta.json when present)."""
    out = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".bin"):
            out[fn[:-4]] = read_dump(os.path.join(d, fn))
    mp = os.path.join(d, "meta.json")
    if os.path.exists(mp):
        with open(mp) as f:
            out["meta"] = json.load(f)
    return out
