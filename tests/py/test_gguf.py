"""GGUF end to end on the tiny random checkpoint: `dsocr quantize` files load back and give the same tokens
(generated ids compared from --dump) as the source they came from.
  - bf16, dsocr's single file: the same ids and the same logits bytes as the safetensors folder;
  - bf16, llama.cpp's pair (text GGUF + mmproj GGUF), opened by folder and by the text file's path: the same;
  - q8_0 / q4: the same ids and logits from the single file and from the pair; the same ids as the safetensors
    folder quantised at load with the same policy (--quant; skipped while this build has no such option)."""
import os
import subprocess

import pytest

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
