"""Documents end to end through `dsocr ocr` on the tiny random model: a batch over a folder (multi-page PDF
with a figure, a broken PDF, one whose page count lies, images in a sub-folder), the real libtasn1 manual,
outputs per page, the JSON against docs/json-schema.json (and a fixture that breaks it), resume after a kill,
teacher forcing of a grounded answer (boxes, crops, drawn pages, markdown), a page that loops retried and
flagged, and the grounding matcher against Python's re."""
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys

import pytest

from tpaths import DSOCR, IMAGES, REPO
from schema_lite import validate

SCHEMA = json.load(open(os.path.join(REPO, "docs", "json-schema.json")))
TASN1 = "/usr/share/doc/libtasn1-doc/libtasn1.pdf"
GDUMP = os.path.join(REPO, "build", "tests", "tools", "grounding_dump")
FAST = ["--mode", "tiny", "--max-tokens", "2", "--retries", "0", "--threads", "2"]


def run(model, args, **kw):
    return subprocess.run([DSOCR, "ocr", "--model", model] + args, capture_output=True, text=True, timeout=300, **kw)


def make_pdf(path, n, size=(200, 260), figure_page=None):
    from PIL import Image, ImageDraw
    ims = []
    for i in range(n):
        im = Image.new("RGB", size, "white")
        d = ImageDraw.Draw(im)
        d.text((10, 10), f"Page {i + 1}: some text", fill="black")
        if i == figure_page:
            for k in range(6):
                d.rectangle([20 + 25 * k, 80, 40 + 25 * k, 200 - 15 * k], fill=(40 * k, 120, 255 - 30 * k))
        ims.append(im)
    ims[0].save(path, "PDF", save_all=True, append_images=ims[1:], resolution=72)


def check_doc_json(path, n_selected=None):
    doc = json.load(open(path))
    errs = validate(doc, SCHEMA)
    assert not errs, errs[:5]
    if n_selected is not None:
        assert len(doc["pages"]) == n_selected
    for p in doc["pages"]:
        for b in p["blocks"]:
            for x1, y1, x2, y2 in b["boxes"]:
                assert 0 <= x1 <= x2 <= p["width"] and 0 <= y1 <= y2 <= p["height"], (b, p["width"], p["height"])
    return doc


def test_schema_rejects_a_broken_fixture():
    bad = json.load(open(os.path.join(REPO, "tests", "fixtures", "document_bad.json")))
    errs = validate(bad, SCHEMA)
    assert any("items < 4" in e for e in errs), errs
    # the same document with the boxes fixed is valid, so the failure is the box and nothing else
    for b in bad["pages"][0]["blocks"]:
        b["box"] = [1, 3, 3, 4]
        b["boxes"] = [[1, 3, 3, 4]]
    assert validate(bad, SCHEMA) == []
    for mutate in (lambda d: d["pages"][0].update(status="dropped"), lambda d: d.update(extra=1),
                   lambda d: d["pages"][0].pop("markdown"), lambda d: d["summary"].update(ok=-1)):
        d = json.loads(json.dumps(bad))
        mutate(d)
        assert validate(d, SCHEMA), "a mutation went unnoticed"


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("batch")
    src, out = root / "in", root / "out"
    (src / "scans").mkdir(parents=True)
    make_pdf(str(src / "multi.pdf"), 3, figure_page=1)
    make_pdf(str(src / "liar.pdf"), 3)
    b = open(src / "liar.pdf", "rb").read()
    assert b.count(b"/Count 3") == 1
    open(src / "liar.pdf", "wb").write(b.replace(b"/Count 3", b"/Count 5"))
    open(src / "broken.pdf", "wb").write(b"%PDF-1.4\n" + os.urandom(300))
    open(src / "notes.txt", "w").write("not an input")
    shutil.copy(IMAGES["small.png"], src / "scans" / "small.png")
    shutil.copy(IMAGES["portrait.jpg"], src / "scans" / "portrait.jpg")
    r = run(tiny_model, FAST + ["-o", str(out), "--format", "md,json,txt,raw,boxes,crops", str(src)])
    return src, out, r


def test_batch_outputs(batch):
    src, out, r = batch
    assert r.returncode == 1, r.stderr  # the broken PDF and the two missing pages are failures
    assert "broken.pdf: not a readable PDF" in r.stderr
    assert r.stdout == ""
    for stem, n in (("multi", 3), ("liar", 5), ("scans/small", 1), ("scans/portrait", 1)):
        for ext in ("md", "json", "txt", "raw.md"):
            assert os.path.isfile(out / f"{stem}.{ext}"), (stem, ext)
        doc = check_doc_json(out / f"{stem}.json", n)
        md = open(out / f"{stem}.md").read()
        assert md.count("<--- Page Split --->") == n - 1
        for p in doc["pages"]:
            rec = out / f"{stem}.pages" / f"{p['page']:04d}.json"
            assert os.path.isfile(rec)
            if p["status"] != "failed":
                assert os.path.isfile(out / f"{stem}.pages" / f"{p['page']:04d}-boxes.jpg")
                assert p["width"] > 0 and p["attempts"] and p["tokens"]["generated"] == 2
    assert not os.path.exists(out / "broken.json") and not os.path.exists(out / "notes.json")
    liar = json.load(open(out / "liar.json"))
    assert [p["status"] for p in liar["pages"]][3:] == ["failed", "failed"]
    assert all(p["status"] != "failed" for p in liar["pages"][:3])
    assert "missing from its page tree" in liar["pages"][3]["error"]
    multi = json.load(open(out / "multi.json"))
    assert multi["pages"][0]["width"] == 400 and multi["pages"][0]["height"] == 520  # 144 dpi
    # log lines (stderr is not a terminal): one per page with the running count
    assert len(re.findall(r"\[\d+/10 pages\]", r.stderr)) == 10, r.stderr  # the broken PDF has no pages
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_real_pdf_from_stdin_list(tmp_path, tiny_model):
    if not os.path.exists(TASN1):
        pytest.skip("libtasn1-doc is not installed (scripts/install-deps.sh)")
    out = tmp_path / "o"
    r = run(tiny_model, FAST + ["-o", str(out), "--pages", "1,36", "--dpi", "72", "-"], input=TASN1 + "\n")
    assert r.returncode == 0, r.stderr
    doc = check_doc_json(out / "libtasn1.json", 2)
    assert doc["pages_total"] == 36 and [p["page"] for p in doc["pages"]] == [1, 36]
    assert (doc["pages"][0]["width"], doc["pages"][0]["height"]) == (612, 792)


def test_resume_after_kill(tmp_path, tiny_model):
    pdf, out = str(tmp_path / "four.pdf"), str(tmp_path / "o")
    make_pdf(pdf, 4)
    args = [DSOCR, "ocr", "--model", tiny_model] + FAST + ["-o", out, pdf]
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    done = 0
    for line in p.stderr:
        if re.search(r"page \d/4: ", line):
            done += 1
            if done == 2:
                p.send_signal(signal.SIGKILL)
                break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    recs = sorted(f for f in os.listdir(os.path.join(out, "four.pages")) if re.fullmatch(r"\d{4}\.json", f))
    kept = {int(f[:4]) for f in recs}
    for f in recs:  # every record that exists is complete JSON
        json.load(open(os.path.join(out, "four.pages", f)))
    assert 2 <= len(kept) < 4 and not os.path.exists(os.path.join(out, "four.json"))
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    cached = {int(m) for m in re.findall(r"page (\d)/4: cached", r.stderr)}
    redone = {int(m) for m in re.findall(r"page (\d)/4: (?:ok|retried|incomplete|failed)", r.stderr)}
    assert cached == kept and redone == {1, 2, 3, 4} - kept, r.stderr
    check_doc_json(os.path.join(out, "four.json"), 4)
    # --force redoes everything; changed options redo everything too
    r = subprocess.run(args + ["--force"], capture_output=True, text=True, timeout=300)
    assert not re.search(r"page \d/4: cached", r.stderr) and len(re.findall(r"page \d/4: incomplete", r.stderr)) == 4


GROUNDED = ("<|ref|>title<|/ref|><|det|>[[100, 40, 900, 120]]<|/det|>\n# Quarterly \\coloneqq report\n\n"
            "<|ref|>image<|/ref|><|det|>[[80, 300, 700, 790]]<|/det|>\n\n\n\n"
            "<|ref|>text<|/ref|><|det|>[[100, 820, 1200, 999]]<|/det|>\nRevenue grew.\n\n"
            "<|ref|>table<|/ref|><|det|>[[100, 150, 900, 290]]<|/det|>\n"
            "<table><tr><td>Q1</td><td>10</td></tr></table>"
            "<\uff5cend\u2581of\u2581sentence\uff5c>")


def write_ids(path, ids):
    with open(path, "wb") as f:
        f.write(b"DSDUMP01" + struct.pack("<III", 2, 1, 0)[:8] + struct.pack("<Q", len(ids)))
        f.write(struct.pack(f"<{len(ids)}i", *ids))


def test_teacher_forced_grounding(tmp_path, tiny_model):
    tok = subprocess.run([DSOCR, "tokenize", "--tokenizer", os.path.join(REPO, "data", "tokenizer", "tokenizer.json")],
                         input=json.dumps(GROUNDED) + "\n", capture_output=True, text=True, check=True)
    ids = json.loads(tok.stdout)
    assert ids[-1] == 1  # the end-of-sentence token
    write_ids(tmp_path / "ids.bin", ids)
    img, out = str(tmp_path / "page.png"), tmp_path / "o"
    from PIL import Image
    Image.new("RGB", (600, 800), (250, 250, 240)).save(img)
    r = run(tiny_model, ["--mode", "tiny", "--force-ids", str(tmp_path / "ids.bin"), "-o", str(out),
                         "--format", "md,json,txt,raw,boxes,crops", img])
    assert r.returncode == 0, r.stderr
    doc = check_doc_json(out / "page.json", 1)
    p = doc["pages"][0]
    assert p["status"] == "ok" and p["stop"] == "eos" and p["tokens"]["generated"] == len(ids)
    assert [b["label"] for b in p["blocks"]] == ["title", "image", "text", "table"]
    assert p["blocks"][0]["boxes"] == [[int(100 / 999 * 600), int(40 / 999 * 800), int(900 / 999 * 600),
                                        int(120 / 999 * 800)]]
    assert p["blocks"][2]["boxes"][0][2] == 600  # 1200 clamped to the page
    assert p["blocks"][1]["crops"] == ["images/page-0001-0.jpg"]
    crop = Image.open(out / "images" / "page-0001-0.jpg")
    x1, y1, x2, y2 = p["blocks"][1]["boxes"][0]
    assert crop.size == (x2 - x1, y2 - y1)
    drawn = Image.open(out / "page.pages" / "0001-boxes.jpg")
    assert drawn.size == (600, 800)
    md = open(out / "page.md").read()
    assert md.startswith("# Quarterly := report\n\n![](images/page-0001-0.jpg)\n\nRevenue grew.")
    assert "<|ref|>" not in md and "\n\n\n" not in md
    raw = open(out / "page.raw.md").read()
    assert raw.startswith("<|ref|>title<|/ref|>") and "end\u2581of" not in raw
    txt = open(out / "page.txt").read()
    assert "Q1\t10" in txt and "<td>" not in txt and "![](" not in txt


def zero_lm_head(src, dst):
    """A copy of the tiny model whose lm_head is zero: every logit is 0, so greedy decoding repeats token 0."""
    shutil.copytree(src, dst)
    for f in os.listdir(dst):
        if not f.endswith(".safetensors"):
            continue
        with open(os.path.join(dst, f), "r+b") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            hdr = json.loads(fh.read(n))
            if "lm_head.weight" in hdr:
                a, b = hdr["lm_head.weight"]["data_offsets"]
                fh.seek(8 + n + a)
                fh.write(b"\0" * (b - a))
                return
    raise AssertionError("no lm_head.weight")


def test_looping_page_is_retried_and_flagged(tmp_path, tiny_model):
    model = str(tmp_path / "looper")
    zero_lm_head(tiny_model, model)
    out = tmp_path / "o"
    # no n-gram guard: the first attempt repeats one token until the detector stops it; the retry's guard bans
    # the repeat, so the model moves on to the next best token (end of sentence) and the page completes
    r = run(model, ["--mode", "tiny", "--max-tokens", "200", "--no-repeat-ngram", "0", "--loop-span", "16",
                    "-o", str(out), "--format", "json,raw", IMAGES["small.png"]])
    assert r.returncode == 0, r.stderr
    assert "loop after 16 tokens" in r.stderr
    doc = check_doc_json(out / "small.json", 1)
    p = doc["pages"][0]
    assert p["status"] == "retried", p["attempts"]
    assert p["attempts"][0]["stop"] == "loop" and p["attempts"][0]["loop_period"] == 1
    assert p["attempts"][1]["no_repeat_ngram"] == 12 and p["attempts"][1]["stop"] == "eos"
    assert p["attempts"][1]["tokens"] == 12  # twelve repeats, then the 12-gram guard bans the thirteenth
    # with no retries the same page is kept, cut after the first period of the loop, and flagged
    r = run(model, ["--mode", "tiny", "--max-tokens", "200", "--no-repeat-ngram", "0", "--loop-span", "16",
                    "--retries", "0", "-o", str(tmp_path / "o2"), "--format", "json", IMAGES["small.png"]])
    p = check_doc_json(tmp_path / "o2" / "small.json", 1)["pages"][0]
    assert p["status"] == "incomplete" and p["stop"] == "loop" and len(p["attempts"]) == 1
    assert p["raw"] == "<\uff5cbegin\u2581of\u2581sentence\uff5c>"


def test_stdout_mode_unchanged(tmp_path, tiny_model):
    r = run(tiny_model, ["--mode", "tiny", "--max-tokens", "4", "--ignore-eos", IMAGES["small.png"]], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and len(r.stdout) > 1 and os.listdir(tmp_path) == []
    assert "4 generated" in r.stderr and "profile hf" in r.stderr


def test_bad_options(tiny_model, tmp_path):
    for args, msg in ((["--format", "md,pdf", "-o", str(tmp_path)], "unknown format"),
                      (["--pages", "3-1", "-o", str(tmp_path)], "bad page selection"),
                      (["--dpi", "5"], "--dpi"), (["--retries", "7"], "--retries"),
                      (["--format", "md"], "needs -o"),
                      (["--precision", "f8"], "--precision must be fp32, bf16 or f16")):
        r = run(tiny_model, args + [IMAGES["small.png"]])
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    r = run(tiny_model, FAST + [str(tmp_path / "nothing.pdf")])
    assert r.returncode == 1 and "nothing.pdf" in r.stderr


def test_precision_f16_refused_on_cpu(tiny_model, tmp_path):
    """f16 is the CUDA path for cards without bf16: on the CPU, `ocr` and `bench` refuse it with one clear error
    (before any page runs), exit 1, and write nothing."""
    r = run(tiny_model, ["--device", "cpu", "--precision", "f16", "--mode", "tiny", IMAGES["small.png"]], cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == "" and os.listdir(tmp_path) == [], r.stderr
    assert "dsocr ocr: precision f16 is the CUDA path" in r.stderr and "the CPU runs fp32 or bf16" in r.stderr
    assert "Traceback" not in r.stderr and "Assertion" not in r.stderr and "failed" not in r.stderr
    b = subprocess.run([DSOCR, "bench", "--model", tiny_model, "--device", "cpu", "--precision", "f16", "--image",
                        IMAGES["small.png"], "--mode", "tiny", "--tokens", "1", "--repeat", "1", "--warmup", "0"],
                       capture_output=True, text=True, timeout=120)
    assert b.returncode == 1 and "f16 is the CUDA path" in b.stderr and b.stdout == "", b.stderr


PIECES = ["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|ref|>image<|/ref|>", "image", "title", "[[1, 2, 3, 4]]",
          "[[10,20,30,40],[5,6,7,8]]", "\n", "x", " ", "<|", "|>", "[", "]"]


@pytest.mark.skipif(not os.path.exists(GDUMP), reason="build/tests/tools/grounding_dump not built")
def test_grounding_matches_python_re():
    rng = random.Random(7)
    pat = re.compile(r"(<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>)", re.DOTALL)
    for _ in range(200):
        s = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        got = json.loads(subprocess.run([GDUMP, "1000", "1000"], input=s.encode(), capture_output=True,
                                        check=True).stdout)
        want = pat.findall(s)
        blocks = [b for b in got["blocks"]]
        lead = s[:s.find(want[0][0])] if want else s
        if lead.strip():
            assert blocks[0]["label"] == "text" and blocks[0]["text"] == lead.strip()
            blocks = blocks[1:]
        assert [b["label"] for b in blocks] == [m[1] for m in want], s
        assert [b["image"] for b in blocks] == ["<|ref|>image<|/ref|>" in m[0] for m in want], s


def test_bench_cpu_ceilings(tiny_model):
    """`bench --device cpu --ceilings`: the CPU's ceilings measured by the same run (the read bandwidth, OpenBLAS
    fp32 GEMM at the encoder's own shapes per mode) and each stage's rate as a fraction of them, as JSON."""
    b = subprocess.run([DSOCR, "bench", "--model", tiny_model, "--device", "cpu", "--threads", "1", "--image",
                        IMAGES["small.png"], "--mode", "tiny", "--tokens", "2", "--repeat", "1", "--warmup", "0",
                        "--ceilings"], capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr
    d = json.loads(b.stdout)
    c = d["ceilings"]
    assert c["threads"] == 1 and c["read_gbps"] > 0 and c["fp32_gemm_2048_gflops"] > 0
    assert [g["mode"] for g in c["fp32_gemm_at_encoder_shapes"]] == ["tiny"]
    g = c["fp32_gemm_at_encoder_shapes"][0]
    assert g["shapes"] >= 10 and g["gflops"] > 0
    (o,) = d["of_ceilings"]
    assert o["mode"] == "tiny"
    for k in ("vision_of_gemm_ceiling", "prefill_of_gemm_ceiling", "decode_of_read_ceiling"):
        assert o[k] > 0, (k, o)
    # the fractions are the stage rates over the ceilings
    (run,) = d["runs"]
    vis = run["vision_flops"] / run["vision_s"]["median"] / 1e9 / g["gflops"]
    dec = run["decode_bytes_per_token"] * run["decode_tok_s"]["median"] / 1e9 / c["read_gbps"]
    assert abs(o["vision_of_gemm_ceiling"] - vis) <= 0.002 + 0.02 * vis, (o, vis)
    assert abs(o["decode_of_read_ceiling"] - dec) <= 0.002 + 0.02 * dec, (o, dec)
