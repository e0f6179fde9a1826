"""`dsocr ocr --batch N` (issue 13): the pages of PDFs and images decoded together through one queue
(src/pagequeue.c) while each page is rendered, retried and written on a thread of its own (DocOptions.parallel).
On the CPU a batch gives every page exactly its tokens alone, so the outputs must equal a run without --batch:
the same pages, statuses, raw text and markdown, in page order, on disk and on stdout; failed pages still fail
with their message; the log shows that pages really ran together."""
import json
import os
import re
import shutil
import subprocess

from tpaths import DSOCR, IMAGES
from test_documents import make_pdf

ARGS = ["--mode", "tiny", "--max-tokens", "12", "--retries", "0", "--threads", "2"]


def run(model, args):
    return subprocess.run([DSOCR, "ocr", "--model", model] + ARGS + args, capture_output=True, text=True,
                          timeout=600)


def pages_of(path):
    doc = json.load(open(path))
    return [(p["page"], p["status"], p["raw"], p["markdown"], p["error"], p["tokens"]["generated"])
            for p in doc["pages"]]


def test_batch_outputs_equal_one_at_a_time(tmp_path, tiny_model):
    src = tmp_path / "in"
    src.mkdir()
    make_pdf(str(src / "five.pdf"), 5, figure_page=2)
    make_pdf(str(src / "liar.pdf"), 3)
    b = open(src / "liar.pdf", "rb").read()
    open(src / "liar.pdf", "wb").write(b.replace(b"/Count 3", b"/Count 4"))  # page 4: a failed page
    shutil.copy(IMAGES["small.png"], src / "small.png")
    open(src / "bad.png", "wb").write(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # an image that cannot be decoded
    one, many = tmp_path / "one", tmp_path / "many"
    r1 = run(tiny_model, ["-o", str(one), str(src)])
    rb = run(tiny_model, ["--batch", "3", "-o", str(many), str(src)])
    assert r1.returncode == 1 and rb.returncode == 1, (r1.stderr, rb.stderr)  # the failed pages
    m = re.search(r"batch: (\d+) pages decoded, at most (\d+) at once", rb.stderr)
    assert m, rb.stderr
    assert int(m.group(1)) == 5 + 3 + 1 and int(m.group(2)) >= 2, rb.stderr  # every good page; several at once
    for stem in ("five", "liar", "small", "bad"):
        a, b = pages_of(one / f"{stem}.json"), pages_of(many / f"{stem}.json")
        assert a == b, (stem, a, b)
        assert open(one / f"{stem}.md").read() == open(many / f"{stem}.md").read()
    liar = [p[1] for p in pages_of(many / "liar.json")]
    assert liar[3] == "failed" and "failed" not in liar[:3], liar
    assert pages_of(many / "bad.json")[0][1] == "failed"
    assert all(p[5] == 12 for p in pages_of(many / "five.json"))  # really decoded (12 tokens each)
    # every page's record is there, and a second run finds them all done
    for k in range(1, 6):
        assert os.path.isfile(many / "five.pages" / f"{k:04d}.json"), k
    again = run(tiny_model, ["--batch", "3", "-o", str(many), str(src / "five.pdf")])
    assert again.returncode == 0, again.stderr
    assert len(re.findall(r"page \d/5: cached", again.stderr)) == 5, again.stderr


def test_batch_stdout_in_page_order(tmp_path, tiny_model):
    pdf = str(tmp_path / "four.pdf")
    make_pdf(pdf, 4)
    r1 = run(tiny_model, [pdf])
    rb = run(tiny_model, ["--batch", "4", pdf])
    assert r1.returncode == 0 and rb.returncode == 0, (r1.stderr, rb.stderr)
    split = "<--- Page Split --->"
    a = [t.strip() for t in r1.stdout.split(split)]
    b = [t.strip() for t in rb.stdout.split(split)]
    assert len(a) == 4 and a == b, (r1.stdout, rb.stdout)
    assert re.search(r"at most [2-4] at once", rb.stderr), rb.stderr


def test_batch_refuses_one_page_options(tmp_path, tiny_model):
    r = run(tiny_model, ["--batch", "2", "--dump", str(tmp_path / "d"), IMAGES["small.png"]])
    assert r.returncode == 2 and "not with --batch" in r.stderr, r.stderr
    r = run(tiny_model, ["--batch", "0", IMAGES["small.png"]])
    assert r.returncode == 2 and "--batch must be within 1..4096" in r.stderr, r.stderr


def test_batch_many_files_at_once(tmp_path, tiny_model):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        for name in ("small.png", "portrait.jpg", "wide.png"):
            shutil.copy(IMAGES[name], src / f"{k}-{name}")
    one, many = tmp_path / "one", tmp_path / "many"
    r1 = run(tiny_model, ["-o", str(one), str(src)])
    rb = run(tiny_model, ["--batch", "4", "-o", str(many), str(src)])
    assert r1.returncode == 0 and rb.returncode == 0, (r1.stderr, rb.stderr)
    m = re.search(r"batch: (\d+) pages decoded, at most (\d+) at once", rb.stderr)
    assert m and int(m.group(1)) == 9 and 2 <= int(m.group(2)) <= 4, rb.stderr  # files decoded together
    for f in sorted(os.listdir(src)):
        stem = f.rsplit(".", 1)[0]
        assert pages_of(one / f"{stem}.json") == pages_of(many / f"{stem}.json"), stem
    assert len(re.findall(r"\[\d+/9 pages\]", rb.stderr)) == 9, rb.stderr
