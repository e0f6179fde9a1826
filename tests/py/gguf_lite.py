"""A small GGUF v3 reader and writer for the tests (no gguf package on Debian): a file is read into its key/value
pairs, kept as their raw bytes, and its tensors (name, dims innermost first, ggml type, bytes), so that a test can
drop, add, reshape or re-type tensors and write the file back. Tensor conversions for the types dsocr reads:
bf16 bytes to F32, F16, Q8_0 and Q4_0 (ggml's block layouts, src/quant.h). Test-only code; trusts its input."""
import struct

F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes


def _skip_value(b, pos, t):
    if t in _SCALAR:
        return pos + _SCALAR[t]
    if t == 8:  # string
        (n,) = struct.unpack_from("<Q", b, pos)
        return pos + 8 + n
    assert t == 9, f"value type {t}"
    et, n = struct.unpack_from("<IQ", b, pos)
    pos += 12
    if et in _SCALAR:
        return pos + n * _SCALAR[et]
    for _ in range(n):
        pos = _skip_value(b, pos, et)
    return pos


def _str(b, pos):
    (n,) = struct.unpack_from("<Q", b, pos)
    return b[pos + 8:pos + 8 + n].decode(), pos + 8 + n


def nbytes(ttype, ne):
    n = 1
    for d in ne:
        n *= d
    if ttype in (Q8_0, Q4_0):
        return n // 32 * (34 if ttype == Q8_0 else 18)
    return n * {F32: 4, F16: 2, BF16: 2}[ttype]


def read(path):
    """(kvs, tensors): kvs a list of (key, raw bytes of the whole pair); tensors a list of dicts with name, ne
    (innermost first), type, data."""
    with open(path, "rb") as f:
        b = f.read()
    assert b[:4] == b"GGUF"
    _, nt, nkv = struct.unpack_from("<IQQ", b, 4)
    pos, kvs, align = 24, [], 32
    for _ in range(nkv):
        start = pos
        key, pos = _str(b, pos)
        (t,) = struct.unpack_from("<I", b, pos)
        end = _skip_value(b, pos + 4, t)
        if key == "general.alignment":
            (align,) = struct.unpack_from("<I", b, pos + 4)
        kvs.append((key, b[start:end]))
        pos = end
    infos = []
    for _ in range(nt):
        name, pos = _str(b, pos)
        (nd,) = struct.unpack_from("<I", b, pos)
        ne = list(struct.unpack_from(f"<{nd}Q", b, pos + 4))
        ttype, off = struct.unpack_from("<IQ", b, pos + 4 + 8 * nd)
        pos += 4 + 8 * nd + 12
        infos.append((name, ne, ttype, off))
    data0 = pos + (-pos) % align
    tensors = [dict(name=n, ne=ne, type=t, data=b[data0 + off:data0 + off + nbytes(t, ne)]) for n, ne, t, off in infos]
    return kvs, tensors


def write(path, kvs, tensors, align=32):
    """Writes kvs (as read) and tensors, each tensor's bytes at the next multiple of align."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(raw for _, raw in kvs)
    data, off = b"", 0
    for t in tensors:
        assert len(t["data"]) == nbytes(t["type"], t["ne"]), t["name"]
        name = t["name"].encode()
        head += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(t["ne"]))
        head += b"".join(struct.pack("<Q", d) for d in t["ne"]) + struct.pack("<IQ", t["type"], off)
        pad = (-len(t["data"])) % align
        data += t["data"] + b"\0" * pad
        off += len(t["data"]) + pad
    head += b"\0" * ((-len(head)) % align)
    with open(path, "wb") as f:
        f.write(head + data)


def bf16_to_floats(data):
    return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for (h,) in struct.iter_unpack("<H", data)]


def _q8_0(x):
    out = b""
    for i in range(0, len(x), 32):
        blk = x[i:i + 32]
        d = max(abs(v) for v in blk) / 127.0
        inv = 1.0 / d if d else 0.0
        out += struct.pack("<e", d) + struct.pack("<32b", *(max(-127, min(127, round(v * inv))) for v in blk))
    return out


def _q4_0(x):
    out = b""
    for i in range(0, len(x), 32):
        blk = x[i:i + 32]
        m = max(blk, key=abs)
        d = m / -8.0
        inv = 1.0 / d if d else 0.0
        q = [max(0, min(15, int(v * inv + 8.5))) for v in blk]
        out += struct.pack("<e", d) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return out


def convert_bf16(t, ttype):
    """Tensor t (BF16) converted to ttype (F32, F16, Q8_0, Q4_0: blocks along ne[0], a multiple of 32)."""
    assert t["type"] == BF16
    x = bf16_to_floats(t["data"])
    if ttype == F32:
        data = struct.pack(f"<{len(x)}f", *x)
    elif ttype == F16:
        data = struct.pack(f"<{len(x)}e", *x)
    elif ttype == Q8_0:
        data = _q8_0(x)
    elif ttype == Q4_0:
        data = _q4_0(x)
    else:
        raise ValueError(ttype)
    return dict(t, type=ttype, data=data)
