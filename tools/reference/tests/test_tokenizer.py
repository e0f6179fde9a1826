"""The Python byte-level BPE against Hugging Face's own outputs (data/tokenizer/*.jsonl) and spec §6 vectors."""
import json
import os

import pytest

from rpaths import REPO
from pipeline import IMAGE_ID, build_ids
from tokenizer import Tokenizer

TOKDIR = os.path.join(REPO, "data", "tokenizer")


def _lines(name):
    with open(os.path.join(TOKDIR, name), encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def test_encode_matches_hf_on_every_line(tok):
    lines = _lines("encode.jsonl")
    assert len(lines) > 3000
    bad = [d["text"][:60] for d in lines if tok.encode(d["text"]) != d["ids"]]
    assert not bad, f"{len(bad)} lines differ, first: {bad[:3]!r}"


def test_decode_matches_hf_on_every_line(tok):
    for d in _lines("decode.jsonl"):
        assert tok.decode(d["ids"]) == d["text"]
        assert tok.decode(d["ids"], skip_special=True) == d["text_skip_special"]


@pytest.mark.parametrize("text,ids", [
    ("Hello", [19923]),
    ("12345", [6895, 1883]),
    ("\nFree OCR.", [201, 21431, 126041, 16]),
    ("<image>\n<|grounding|>Convert the document to markdown.",
     [128815, 201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16]),
    ("<image>\n<|grounding|>Convert the document to markdown. ",
     [128815, 201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16, 223]),
    ("line1\r\nline2\n\n\n   \n", [1836, 19, 204, 201, 1836, 20, 6328, 14320]),
    ("", []),
])
def test_spec_vectors(tok, text, ids):
    assert tok.encode(text) == ids


def test_decode_specials_and_unknown_ids(tok):
    assert tok.decode([0, 6366, 1, 128815, 128820]) == "<｜begin▁of▁sentence｜>hi<｜end▁of▁sentence｜><image><|grounding|>"
    assert tok.decode([0, 6366, 1, 128815], skip_special=True) == "hi"
    assert tok.decode([6366, 999999, 6366]) == "hihi"


def test_prompt_ids_base_free_ocr(tok):
    ids = build_ids(tok, "<image>\nFree OCR.", 273)
    assert ids == [0] + [IMAGE_ID] * 273 + [201, 21431, 126041, 16] and len(ids) == 278
    # hf strips, vllm does not: a trailing space adds id 223
    assert build_ids(tok, "<image>\nFree OCR. ", 1, "hf")[-1] == 16
    assert build_ids(tok, "<image>\nFree OCR. ", 1, "vllm")[-1] == 223
    with pytest.raises(ValueError, match="exactly one <image>"):
        build_ids(tok, "<image><image>x", 1)


def test_rejects_other_pretokenizer(tmp_path):
    with open(os.path.join(TOKDIR, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{N}"
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(tj), encoding="utf-8")
    with pytest.raises(ValueError, match="pre-tokenizer"):
        Tokenizer(str(p))
