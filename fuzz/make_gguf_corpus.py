#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/fuzz_gguf.c (fuzz/corpus/gguf/): small valid GGUF v3 files (metadata of every
value type, tensors of every type dsocr reads, a custom alignment, a tiny byte-level tokenizer in llama.cpp's
keys, CLIP attention split into attn_q/k/v as newer llama.cpp converters write it) and malformed ones
(truncated, bad counts, bad offsets, nested arrays, unknown types)."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "gguf")


def s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def kv(key, t, payload):
    return s(key) + struct.pack("<I", t) + payload


def arr(t, items):
    return struct.pack("<IQ", t, len(items)) + b"".join(items)


def tinfo(name, ne, t, off):
    return s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne) + struct.pack("<IQ", t, off)


def gguf(kvs, tensors, data, align=32):
    h = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(tensors)
    h += b"\0" * ((-len(h)) % align)
    return h + data


def pad(b, a=32):
    return b + b"\0" * ((-len(b)) % a)


def main():
    os.makedirs(OUT, exist_ok=True)
    files = {}
    scalars = [
        kv("general.architecture", 8, s("dsocr")),
        kv("k.u8", 0, b"\x07"), kv("k.i8", 1, b"\xf9"), kv("k.u16", 2, b"\x01\x02"), kv("k.i16", 3, b"\xff\xff"),
        kv("k.u32", 4, struct.pack("<I", 9)), kv("k.i32", 5, struct.pack("<i", -9)),
        kv("k.f32", 6, struct.pack("<f", 0.5)), kv("k.bool", 7, b"\x01"),
        kv("k.u64", 10, struct.pack("<Q", 1 << 40)), kv("k.i64", 11, struct.pack("<q", -5)),
        kv("k.f64", 12, struct.pack("<d", 2.25)),
        kv("k.arr", 9, arr(5, [struct.pack("<i", i) for i in range(4)])),
        kv("k.strs", 9, arr(8, [s("a"), s(""), s("bc")])),
    ]
    f32 = struct.pack("<6f", *range(6))
    q8 = pad(struct.pack("<H", 0x3c00) + bytes(range(32)))
    q4 = struct.pack("<H", 0x3c00) + bytes(range(16))
    tens = [tinfo("w.f32", [3, 2], 0, 0), tinfo("w.f16", [2], 1, 32), tinfo("w.bf16", [2], 30, 64),
            tinfo("w.q8", [32], 8, 96), tinfo("w.q4", [32, 1], 2, 160)]
    data = pad(f32) + pad(b"\0<\0<") + pad(b"\x80?\x80?") + q8 + q4
    files["valid_all_types.gguf"] = gguf(scalars, tens, data)
    files["valid_align64.gguf"] = gguf([kv("general.alignment", 4, struct.pack("<I", 64))],
                                       [tinfo("a", [4], 0, 0), tinfo("b", [4], 0, 64)], pad(b"\1" * 16, 64) + b"\2" * 16,
                                       align=64)
    files["valid_empty.gguf"] = gguf([], [], b"")
    # llama.cpp's split CLIP attention (v.blk.I.attn_{q,k,v}, which the loader joins into attn_qkv), bf16
    split = [tinfo(f"v.blk.0.attn_{p}.{w}", [4, 2] if w == "weight" else [4], 30, 32 * i)
             for i, (p, w) in enumerate((p, w) for w in ("weight", "bias") for p in "qkv")]
    split_data = b"".join(pad(bytes(range(i, i + (16 if i < 3 else 8)))) for i in range(6))
    files["valid_split_clip_qkv.gguf"] = gguf([kv("clip.projector_type", 8, s("deepseekocr"))], split, split_data)
    # a tiny byte-level BPE tokenizer in llama.cpp's keys (every byte symbol, one merge, two added tokens)
    def bl(b):
        bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        cs, n = bs[:], 0
        for x in range(256):
            if x not in bs:
                bs.append(x)
                cs.append(256 + n)
                n += 1
        return chr(dict(zip(bs, cs))[b])
    toks = [bl(b) for b in range(256)] + ["ab", "<s>", "<image>"]
    types = [1] * 257 + [3, 4]
    tk = [kv("tokenizer.ggml.model", 8, s("gpt2")), kv("tokenizer.ggml.pre", 8, s("deepseek-v3")),
          kv("tokenizer.ggml.tokens", 9, arr(8, [s(t) for t in toks])),
          kv("tokenizer.ggml.token_type", 9, arr(5, [struct.pack("<i", t) for t in types])),
          kv("tokenizer.ggml.merges", 9, arr(8, [s("a b")]))]
    files["tokenizer_llama_keys.gguf"] = gguf(tk, [], b"")
    files["tokenizer_dsocr_keys.gguf"] = gguf(tk + [kv("dsocr.tokenizer.added_flags", 9, arr(5, [struct.pack("<i", -1)] * 257 + [struct.pack("<i", 1), struct.pack("<i", 2)])),
                                                   kv("dsocr.tokenizer.split_regexes", 9, arr(8, [s("\\p{N}{1,3}"), s("\\s+|\\S+")]))], [], b"")
    files["tokenizer_bad_merge.gguf"] = gguf(tk[:4] + [kv("tokenizer.ggml.merges", 9, arr(8, [s("zz qq")]))], [], b"")
    # malformed
    v = files["valid_all_types.gguf"]
    files["trunc_header.gguf"] = v[:40]
    files["trunc_data.gguf"] = v[:-20]
    files["bad_version.gguf"] = b"GGUF" + struct.pack("<IQQ", 2, 0, 0)
    files["huge_counts.gguf"] = b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 1 << 62)
    files["nested_array.gguf"] = gguf([kv("k", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 0))], [], b"")
    files["bad_value_type.gguf"] = gguf([kv("k", 77, b"")], [], b"")
    files["bad_string_len.gguf"] = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 60) + b"k"
    files["bad_offset.gguf"] = gguf([], [tinfo("t", [4], 0, 8)], b"\0" * 64)
    files["overlap.gguf"] = gguf([], [tinfo("a", [16], 0, 0), tinfo("b", [4], 0, 32)], b"\0" * 128)
    files["dup_tensor.gguf"] = gguf([], [tinfo("a", [4], 0, 0), tinfo("a", [4], 0, 32)], b"\0" * 64)
    files["q8_odd_row.gguf"] = gguf([], [tinfo("q", [33], 8, 0)], b"\0" * 64)
    files["unknown_tensor_type.gguf"] = gguf([], [tinfo("t", [256], 12, 0)], b"\0" * 256)
    files["dims_overflow.gguf"] = gguf([], [tinfo("t", [1 << 40, 1 << 40], 0, 0)], b"")
    files["bad_alignment.gguf"] = gguf([kv("general.alignment", 4, struct.pack("<I", 24))], [], b"")
    for name, data in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    print(f"{len(files)} files in {OUT}")


if __name__ == "__main__":
    main()
