"""`dsocr tokenize` against Hugging Face's outputs in data/tokenizer/ (every line, encode and decode, in one process
each), and its errors on bad input lines."""
import json
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DSOCR = ROOT / "dsocr"
TOK = ROOT / "data" / "tokenizer" / "tokenizer.json"


def run(args, stdin):
    if not DSOCR.exists():
        pytest.skip("./dsocr is not built")
    return subprocess.run([str(DSOCR), "tokenize", "--tokenizer", str(TOK), *args], input=stdin.encode(),
                          capture_output=True, timeout=120)


def jsonl(name):
    return [json.loads(line) for line in (ROOT / "data" / "tokenizer" / name).read_text(encoding="utf-8").split("\n") if line]


def test_encode_every_line():
    rows = jsonl("encode.jsonl")
    r = run([], "".join(json.dumps(row["text"]) + "\n" for row in rows))
    assert r.returncode == 0, r.stderr.decode()
    got = [json.loads(line) for line in r.stdout.decode().split("\n") if line]
    assert len(got) == len(rows)
    bad = [i for i, (g, row) in enumerate(zip(got, rows)) if g != row["ids"]]
    assert not bad, f"{len(bad)} lines differ, first: line {bad[0] + 1}"


@pytest.mark.parametrize("skip", [False, True])
def test_decode_every_line(skip):
    rows = jsonl("decode.jsonl")
    r = run(["--decode"] + (["--skip-special"] if skip else []),
            "".join(json.dumps(row["ids"]) + "\n" for row in rows))
    assert r.returncode == 0, r.stderr.decode()
    got = [json.loads(line) for line in r.stdout.decode("utf-8").split("\n") if line]
    want = [row["text_skip_special" if skip else "text"] for row in rows]
    assert got == want


def test_bad_lines_are_named():
    r = run([], '"ok"\n[1,2]\n')
    assert r.returncode == 1
    assert r.stdout.decode() == "[633]\n"
    assert "line 2: expected a JSON string" in r.stderr.decode()
    r = run(["--decode"], "[1, 2.5]\n")
    assert r.returncode == 1 and "line 1: element 1 is not an integer id" in r.stderr.decode()
    r = run(["--skip-special"], "")
    assert r.returncode == 2


def test_missing_tokenizer_file():
    if not DSOCR.exists():
        pytest.skip("./dsocr is not built")
    r = subprocess.run([str(DSOCR), "tokenize", "--tokenizer", "/nonexistent/tokenizer.json"], input=b"",
                       capture_output=True)
    assert r.returncode == 1 and "/nonexistent/tokenizer.json" in r.stderr.decode()
