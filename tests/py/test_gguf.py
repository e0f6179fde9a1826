"""GGUF end to end on the tiny random checkpoint: `dsocr quantize` files load back and give the same tokens
(generated ids compared from --dump) as the source they came from.
  - bf16, dsocr's single file: the same ids and the same logits bytes as the safetensors folder;
  - bf16, llama.cpp's pair (text GGUF + mmproj GGUF), opened by folder and by the text file's path: the same;
  - q8_0 / q4: the same ids and logits from the single file and from the pair; the same ids as the safetensors
    folder quantised at load with the same policy (--quant; skipped while this build has no such option);
  - the pair with CLIP attention split into v.blk.I.attn_{q,k,v} (--split-clip-qkv, as newer llama.cpp converters
    write it): the same ids and logits as the fused pair and the folder; split and fused CLIP attention re-typed
    (F32, F16, Q8_0, Q4_0, with gguf_lite) agree; q and k swapped changes the logits; a missing part, a part of
    the wrong shape or type, and split parts beside the fused tensor are refused naming the tensor."""
import os
import subprocess

import pytest

import gguf_lite
from tpaths import DSOCR, IMAGES

IMG = IMAGES["small.png"]
STEPS = 6


def run(args, **kw):
    r = subprocess.run([DSOCR] + args, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{args}: {r.stderr[-2000:]}"
    return r


def ids(model, tmp, name, extra=()):
    d = os.path.join(tmp, name)
    run(["ocr", "--model", model, "--mode", "tiny", "--max-tokens", str(STEPS), "--ignore-eos", "--retries", "0",
         "--threads", "2", "--dump", d, *extra, IMG])
    with open(os.path.join(d, "generated.bin"), "rb") as f:
        gen = f.read()
    with open(os.path.join(d, "logits.bin"), "rb") as f:
        logits = f.read()
    return gen, logits


@pytest.fixture(scope="module")
def ref(tiny_model, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("gguf"))
    return tmp, ids(tiny_model, tmp, "st")


def test_bf16_single_file_same_tokens(tiny_model, ref):
    tmp, (gen, logits) = ref
    out = os.path.join(tmp, "tiny-bf16.gguf")
    run(["quantize", "--model", tiny_model, "--type", "bf16", "--out", out])
    g, lg = ids(out, tmp, "bf16")
    assert g == gen and len(gen) > 0
    assert lg == logits  # bit for bit: the same bf16 weights


def test_llama_pair_same_tokens(tiny_model, ref):
    tmp, (gen, logits) = ref
    d = os.path.join(tmp, "pair")
    os.makedirs(d)
    out = os.path.join(d, "tiny-bf16.gguf")
    r = run(["quantize", "--model", tiny_model, "--type", "bf16", "--layout", "llama", "--out", out])
    assert os.path.exists(os.path.join(d, "mmproj-tiny-bf16.gguf")), r.stdout
    for model in (d, out):  # the folder, and the text model's path with its mmproj beside it
        g, lg = ids(model, tmp, "pair-" + str(len(model)))
        assert g == gen and lg == logits


def test_pair_without_mmproj_is_refused(tiny_model, ref):
    tmp, _ = ref
    d = os.path.join(tmp, "alone")
    os.makedirs(d)
    out = os.path.join(d, "t.gguf")
    run(["quantize", "--model", tiny_model, "--type", "bf16", "--layout", "llama", "--out", out])
    os.remove(os.path.join(d, "mmproj-t.gguf"))
    r = subprocess.run([DSOCR, "check-model", out], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "mmproj" in r.stderr + r.stdout


def quant_option_exists():
    r = subprocess.run([DSOCR, "ocr", "--help"], capture_output=True, text=True)
    return "--quant" in r.stdout + r.stderr


@pytest.mark.parametrize("qtype", ["q8_0", "q4"])
def test_quantized_file_equals_quantized_at_load(tiny_model, ref, qtype):
    tmp, (gen, _) = ref
    out = os.path.join(tmp, f"tiny-{qtype}.gguf")
    r = run(["quantize", "--model", tiny_model, "--type", qtype, "--out", out])
    assert "relative error" in r.stdout
    g, lg = ids(out, tmp, qtype)
    assert len(g) == len(gen)
    # the same blocks through llama.cpp's pair give the same ids and logits
    d = os.path.join(tmp, "pair-" + qtype)
    os.makedirs(d)
    run(["quantize", "--model", tiny_model, "--type", qtype, "--layout", "llama", "--out", os.path.join(d, "m.gguf")])
    gp, lgp = ids(d, tmp, qtype + "-pair")
    assert gp == g and lgp == lg
    if not quant_option_exists():
        pytest.skip("this build has no --quant (load-time quantisation) to compare with")
    g2, lg2 = ids(tiny_model, tmp, qtype + "-load", ("--quant", qtype))
    assert g == g2 and lg == lg2


def load_log(model):
    r = run(["check-model", model])
    return r.stderr


def clip_attn(tensors):
    return sorted(t["name"] for t in tensors if t["name"].startswith("v.blk.") and ".attn_" in t["name"]
                  and ".attn_out." not in t["name"])


@pytest.fixture(scope="module")
def pairs(tiny_model, ref):
    """The bf16 llama.cpp pair written fused and written with split CLIP q/k/v: {"fused": dir, "split": dir}."""
    tmp, _ = ref
    out = {}
    for kind, extra in (("fused", []), ("split", ["--split-clip-qkv"])):
        d = os.path.join(tmp, "qkv-" + kind)
        os.makedirs(d)
        run(["quantize", "--model", tiny_model, "--type", "bf16", "--layout", "llama", "--out",
             os.path.join(d, "t.gguf"), *extra])
        out[kind] = d
    return out


def variant(tmp, pairs, kind, name, edit):
    """A copy of pair `kind` whose mmproj file's tensor list is edit(list); the text model is linked."""
    d = os.path.join(tmp, f"v-{kind}-{name}")
    os.makedirs(d)
    os.symlink(os.path.join(pairs[kind], "t.gguf"), os.path.join(d, "t.gguf"))
    kvs, tensors = gguf_lite.read(os.path.join(pairs[kind], "mmproj-t.gguf"))
    gguf_lite.write(os.path.join(d, "mmproj-t.gguf"), kvs, edit([dict(t) for t in tensors]))
    return d


def test_split_clip_qkv_same_tokens(ref, pairs):
    tmp, (gen, logits) = ref
    _, fused = gguf_lite.read(os.path.join(pairs["fused"], "mmproj-t.gguf"))
    _, split = gguf_lite.read(os.path.join(pairs["split"], "mmproj-t.gguf"))
    layers = range(2)  # the tiny config's CLIP layers
    assert clip_attn(fused) == sorted(f"v.blk.{i}.attn_qkv.{w}" for i in layers for w in ("weight", "bias"))
    assert clip_attn(split) == sorted(f"v.blk.{i}.attn_{p}.{w}" for i in layers for p in "qkv"
                                      for w in ("weight", "bias"))
    # the parts are the fused tensor's rows in thirds, q then k then v
    by = {t["name"]: t for t in split}
    for t in fused:
        if ".attn_qkv." in t["name"]:
            parts = [by[t["name"].replace("attn_qkv", "attn_" + p)] for p in "qkv"]
            assert b"".join(p["data"] for p in parts) == t["data"]
            assert all(p["ne"][:-1] == t["ne"][:-1] and 3 * p["ne"][-1] == t["ne"][-1] for p in parts)
    g, lg = ids(pairs["split"], tmp, "split")
    gf, lgf = ids(pairs["fused"], tmp, "fused")
    assert g == gf == gen and len(gen) > 0
    assert lg == lgf == logits  # bit for bit
    # our writer puts q, k, v back to back, so the loader uses them in place; in another order they are copied
    log = load_log(pairs["split"])
    assert "4 CLIP attention tensors stored split" in log and "4 in place" in log
    shuffled = variant(tmp, pairs, "split", "reversed", lambda ts: ts[::-1])
    assert "0 in place (parts back to back in the file), 4 joined in memory" in load_log(shuffled)
    g, lg = ids(shuffled, tmp, "split-reversed")
    assert g == gen and lg == logits


@pytest.mark.parametrize("ttype", ["F32", "F16", "Q8_0", "Q4_0"])
def test_split_clip_qkv_every_type(ref, pairs, ttype):
    """CLIP attention stored as ttype, fused in one pair and split in the other, gives the same ids and logits
    (the parts are whole rows, whole blocks for Q8_0 / Q4_0); F32 is exact, so also the folder's."""
    tmp, (gen, logits) = ref
    tt = getattr(gguf_lite, ttype)

    def retype(ts):
        return [gguf_lite.convert_bf16(t, tt) if t["name"] in clip_attn(ts) else t for t in ts]

    g, lg = ids(variant(tmp, pairs, "split", ttype, retype), tmp, "split-" + ttype)
    gf, lgf = ids(variant(tmp, pairs, "fused", ttype, retype), tmp, "fused-" + ttype)
    assert g == gf and lg == lgf and len(g) == len(gen)
    if ttype == "F32":
        assert g == gen and lg == logits


def test_split_clip_qkv_order_matters(ref, pairs):
    """q and k swapped in the split file: it loads, and the logits change (the joined order is what is tested)."""
    tmp, (_, logits) = ref

    def swap(ts):
        by = {t["name"]: t for t in ts}
        q, k = by["v.blk.0.attn_q.weight"], by["v.blk.0.attn_k.weight"]
        q["data"], k["data"] = k["data"], q["data"]
        return ts

    _, lg = ids(variant(tmp, pairs, "split", "swap", swap), tmp, "split-swap")
    assert lg != logits


def refused(model):
    r = subprocess.run([DSOCR, "check-model", model], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout
    return r.stderr


def test_split_clip_qkv_broken_refused(ref, pairs):
    tmp, _ = ref

    def drop(*names):
        return lambda ts: [t for t in ts if t["name"] not in names]

    def reshape(ts):
        for t in ts:
            if t["name"] == "v.blk.0.attn_v.weight":  # [128, 128] -> [64, 128]: half the rows
                t["ne"] = [t["ne"][0], t["ne"][1] // 2]
                t["data"] = t["data"][:len(t["data"]) // 2]
        return ts

    def retype(ts):
        return [gguf_lite.convert_bf16(t, gguf_lite.F32) if t["name"] == "v.blk.1.attn_k.bias" else t for t in ts]

    err = refused(variant(tmp, pairs, "split", "no-k", drop("v.blk.1.attn_k.weight")))
    assert "missing tensor 'v.blk.1.attn_k.weight'" in err and "2 of the 3" in err
    err = refused(variant(tmp, pairs, "split", "no-kv", drop("v.blk.0.attn_k.bias", "v.blk.0.attn_v.bias")))
    assert "'v.blk.0.attn_k.bias'" in err and "'v.blk.0.attn_v.bias'" in err and "2 problems" in err
    err = refused(variant(tmp, pairs, "split", "no-qkv", drop(*(f"v.blk.1.attn_{p}.weight" for p in "qkv"))))
    assert "missing tensor 'v.blk.1.attn_qkv.weight'" in err and "v.blk.1.attn_q.weight" in err
    err = refused(variant(tmp, pairs, "split", "shape", reshape))
    assert "tensor 'v.blk.0.attn_v.weight'" in err and "has shape [64, 128], expected [128, 128]" in err
    err = refused(variant(tmp, pairs, "split", "type", retype))
    assert "tensor 'v.blk.1.attn_k.bias' has type F32" in err
    # split parts beside the fused tensor: the parts are extra
    _, split = gguf_lite.read(os.path.join(pairs["split"], "mmproj-t.gguf"))
    parts = [t for t in split if t["name"].startswith("v.blk.0.attn_q.")]
    err = refused(variant(tmp, pairs, "fused", "both", lambda ts: ts + parts))
    assert "extra tensor 'v.blk.0.attn_q.weight'" in err and "extra tensor 'v.blk.0.attn_q.bias'" in err


def test_split_clip_qkv_needs_llama_layout(tiny_model, ref):
    tmp, _ = ref
    r = subprocess.run([DSOCR, "quantize", "--model", tiny_model, "--type", "bf16", "--split-clip-qkv", "--out",
                        os.path.join(tmp, "x.gguf")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--layout llama" in r.stderr
