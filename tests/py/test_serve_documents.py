"""The server's document endpoint, POST /v1/ocr, against the tiny random checkpoint with a real HTTP client: a
2-page PDF made with Pillow and an image answer the document JSON (validated against docs/json-schema.json);
page selection; a broken PDF is a 400 with the renderer's message; bad options are 400s; the upload limit (413),
the API key (401) and the queue limit (429) hold; stream=true (or Accept: text/event-stream) sends the page
events in order and then the whole document; a client that disconnects mid-document cancels it between pages.
Requests use the tiny mode, 2-4 tokens and few retries, so the module takes well under a minute."""
import http.client
import io
import json
import os
import re
import threading
import time

import pytest

from schema_lite import validate
from serveutil import REPO, Server, image_bytes, multipart, sse_events
from test_serve_memory import asan_dsocr  # noqa: F401  (the fixture building the ASan server)

SCHEMA = json.load(open(os.path.join(REPO, "docs", "json-schema.json")))
KEY = "doc-test-key"
AUTH = {"Authorization": "Bearer " + KEY}
FAST = {"mode": "tiny", "max_tokens": "2", "retries": "0"}


def make_pdf(n, size=(200, 260)):
    from PIL import Image, ImageDraw
    ims = []
    for i in range(n):
        im = Image.new("RGB", size, "white")
        ImageDraw.Draw(im).text((10, 10 + 20 * i), f"Page {i + 1}: some text", fill="black")
        ims.append(im)
    buf = io.BytesIO()
    ims[0].save(buf, "PDF", save_all=True, append_images=ims[1:], resolution=72)
    return buf.getvalue()


PDF2 = make_pdf(2)
PNG = image_bytes("small.png")


@pytest.fixture(scope="module")
def srv(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_docs")
    s = Server(["--model", tiny_model, "--results-dir", "", "--max-upload", "1M", "--threads", "2",
                "--queue", "1", "--api-key", KEY], str(d / "server.log"))
    yield s
    assert s.stop() == 0, s.text()


def post_doc(srv, fields, data=PDF2, name="two.pdf", ctype="application/pdf", headers=None):
    h = dict(AUTH)
    h.update(headers or {})
    return srv.post_form("/v1/ocr", fields, {"file": (name, data, ctype)} if data is not None else {}, headers=h)


def check_doc(doc, kind, n_pages, source):
    errs = validate(doc, SCHEMA)
    assert not errs, errs[:5]
    assert doc["kind"] == kind and doc["source"] == source
    assert len(doc["pages"]) == n_pages
    for p in doc["pages"]:
        assert p["status"] in ("ok", "retried", "incomplete"), p
        assert 1 <= p["tokens"]["generated"] <= 2 * len(p["attempts"])


def test_pdf_two_pages(srv):
    st, h, doc = post_doc(srv, FAST)
    assert st == 200, doc
    assert h["content-type"].startswith("application/json")
    check_doc(doc, "pdf", 2, "two.pdf")
    assert doc["pages_total"] == 2 and doc["dpi"] == 144
    assert [p["page"] for p in doc["pages"]] == [1, 2]
    # 144 dpi: the 200x260-point pages are rendered at twice their size
    assert (doc["pages"][0]["width"], doc["pages"][0]["height"]) == (400, 520)
    assert doc["options"]["mode"] == "tiny" and doc["options"]["max_tokens"] == 2


def test_pdf_page_selection_and_dpi(srv):
    st, _, doc = post_doc(srv, dict(FAST, pages="2", dpi="72"))
    assert st == 200, doc
    check_doc(doc, "pdf", 1, "two.pdf")
    assert doc["pages"][0]["page"] == 2 and doc["dpi"] == 72
    assert (doc["pages"][0]["width"], doc["pages"][0]["height"]) == (200, 260)


def test_image(srv):
    st, _, doc = post_doc(srv, dict(FAST, prompt="free"), data=PNG, name="small.png", ctype="image/png")
    assert st == 200, doc
    check_doc(doc, "image", 1, "small.png")
    assert doc["options"]["prompt"] == "free"
    from PIL import Image
    w, h = Image.open(io.BytesIO(PNG)).size
    assert (doc["pages"][0]["width"], doc["pages"][0]["height"]) == (w, h)


def test_broken_pdf_is_400_with_the_renderers_message(srv):
    st, _, j = post_doc(srv, FAST, data=b"%PDF-1.4\n" + bytes(range(256)) * 3, name="broken.pdf")
    assert st == 400, j
    assert "broken.pdf: not a readable PDF" in j["detail"] and "mutool" in j["detail"], j
    assert j["error"]["code"] == 400  # the /v1/ error shape


BAD = [  # (id, fields over FAST (None: drop the field), the upload, what the message names)
    ("mode", {"mode": "huge"}, PDF2, "unknown mode"),
    ("dpi", {"dpi": "5"}, PDF2, "dpi"),
    ("retries", {"retries": "3"}, PDF2, "retries"),
    ("pages-syntax", {"pages": "x-y"}, PDF2, "pages"),
    ("pages-none", {"pages": "5-7"}, PDF2, "pages"),  # no page of this 2-page document
    ("prompt", {"prompt": "nonsense"}, PDF2, "prompt"),
    ("format", {"format": "md,boxes"}, PDF2, "format"),
    ("max-tokens", {"max_tokens": "0"}, PDF2, "max_tokens"),
    ("unknown-field", {"colour": "red"}, PDF2, "unknown field 'colour'"),
    ("sizes", {"mode": None, "base_size": "1000", "image_size": "640"}, PDF2, "64"),
    ("mode-and-sizes", {"base_size": "640", "image_size": "640"}, PDF2, "not both"),
    ("no-file", {}, None, "missing form field 'file'"),
    ("empty-file", {}, b"", "empty"),
    ("not-a-document", {}, b"just some text, neither a PDF nor an image", "upload.pdf"[:0]),
]


@pytest.mark.parametrize("fields,data,needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_requests_are_400(srv, fields, data, needle):
    f = dict(FAST)
    for k, v in fields.items():
        if v is None:
            f.pop(k)
        else:
            f[k] = v
    st, _, j = post_doc(srv, f, data=data)
    assert st == 400, j
    assert isinstance(j["detail"], str) and j["detail"] and needle in j["detail"], j


def test_key_and_upload_limit(srv):
    body, ctype = multipart(FAST, {"file": ("two.pdf", PDF2, "application/pdf")})
    st, h, j = srv.json("POST", "/v1/ocr", body, {"Content-Type": ctype})
    assert st == 401 and h["www-authenticate"] == "Bearer", j
    st, _, j = srv.json("POST", "/v1/ocr", body, {"Content-Type": ctype, "Authorization": "Bearer nope"})
    assert st == 401, j
    # over --max-upload (1M): refused from the Content-Length, before the body is read
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    c.putrequest("POST", "/v1/ocr")
    c.putheader("Content-Type", ctype)
    c.putheader("Authorization", AUTH["Authorization"])
    c.putheader("Content-Length", str(1_100_000))
    c.endheaders()
    r = c.getresponse()
    assert r.status == 413 and "over the limit" in json.loads(r.read())["detail"]
    c.close()
    st, _, j = srv.json("GET", "/v1/ocr", headers=AUTH)
    assert st == 405, j


def open_stream(srv, fields, data=PDF2, accept=None):
    body, ctype = multipart(fields, {"file": ("doc.pdf", data, "application/pdf")})
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    h = dict(AUTH, **{"Content-Type": ctype})
    if accept:
        h["Accept"] = accept
    c.request("POST", "/v1/ocr", body=body, headers=h)
    r = c.getresponse()
    return c, r


def test_stream_events_in_order(srv):
    # retries 1 with 2 tokens: each page hits the limit, is retried once, and ends incomplete
    c, r = open_stream(srv, dict(FAST, retries="1", stream="true"))
    try:
        assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
        evs = [json.loads(d) for d in sse_events(r)]
    finally:
        c.close()
    kinds = [e["event"] for e in evs]
    assert kinds == ["page_start", "page_retry", "page_done"] * 2 + ["done"], kinds
    doc = evs[-1]["document"]
    check_doc(doc, "pdf", 2, "doc.pdf")
    for i, page in enumerate((1, 2)):
        start, retry, done = evs[3 * i:3 * i + 3]
        assert start["page"] == retry["page"] == done["page"] == page
        assert start["index"] == i and start["n_pages"] == 2
        assert "token limit" in retry["message"], retry
        assert done["status"] == "incomplete" and done["tokens"] == 4
        assert not validate(done["result"], SCHEMA["$defs"]["page"], SCHEMA)
        assert done["result"] == doc["pages"][i]  # the page event carries the page as the document has it


def test_stream_by_accept_header(srv):
    c, r = open_stream(srv, dict(FAST, pages="1"), accept="text/event-stream")
    try:
        assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
        raw = r.read().decode()
    finally:
        c.close()
    # real server-sent events: an event name line before each data line
    names = re.findall(r"^event: (\w+)\ndata: \{", raw, re.M)
    assert names == ["page_start", "page_done", "done"], raw[:500]


def health(srv):
    st, _, j = srv.json("GET", "/health")
    assert st == 200, j
    return j


def test_disconnect_cancels_between_pages(srv):
    before = srv.text()
    c, r = open_stream(srv, dict(FAST, max_tokens="4", stream="true"), data=make_pdf(12))
    evs = sse_events(r)
    for d in evs:
        if json.loads(d)["event"] == "page_done":
            break
    c.sock.shutdown(2)
    c.close()
    deadline = time.time() + 60
    while time.time() < deadline and health(srv)["queue_depth"]:
        time.sleep(0.1)
    log = srv.text()[len(before):]
    m = re.search(r"document doc\.pdf failed after [\d.]+s \((\d+) pages done\): cancelled", log)
    assert m, log[-3000:]
    assert 1 <= int(m.group(1)) < 12, log[-3000:]
    assert "client disconnected during the stream" in log
    # the server goes on serving
    st, _, doc = post_doc(srv, dict(FAST, pages="1"))
    assert st == 200 and len(doc["pages"]) == 1, doc


def test_queue_full_is_429_and_accepted_requests_are_answered(srv):
    # A runs (a 3-page document), B waits in the queue (--queue 1), C is refused
    c, r = open_stream(srv, dict(FAST, stream="true"), data=make_pdf(3))
    evs = sse_events(r)
    first = json.loads(next(evs))
    assert first["event"] == "page_start"
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("b", post_doc(srv, dict(FAST, pages="1"))))
    t.start()
    deadline = time.time() + 30
    while time.time() < deadline and health(srv)["queue_depth"] < 2:
        time.sleep(0.02)
    st, h, j = post_doc(srv, FAST, data=PNG, name="c.png", ctype="image/png")
    assert st == 429, j
    assert int(h["retry-after"]) >= 1
    rest = [json.loads(d) for d in evs]
    c.close()
    assert rest[-1]["event"] == "done" and len(rest[-1]["document"]["pages"]) == 3
    t.join(60)
    st, _, doc = got["b"]
    assert st == 200 and doc["pages"][0]["page"] == 1, doc
    assert health(srv)["status"] == "healthy"


def test_root_lists_the_endpoint(srv):
    st, _, j = srv.json("GET", "/", headers={"Accept": "application/json"})
    assert st == 200 and "/v1/ocr" in j["endpoints"], j


def test_disconnect_cancels_without_stream(srv):
    before = len(srv.text())
    body, ctype = multipart(dict(FAST, max_tokens="4"), {"file": ("quiet.pdf", make_pdf(12), "application/pdf")})
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    c.request("POST", "/v1/ocr", body=body, headers=dict(AUTH, **{"Content-Type": ctype}))
    deadline = time.time() + 60
    while time.time() < deadline and not re.search(r"page 1 \(1/12\)", srv.text()[before:]):
        time.sleep(0.05)
    c.sock.shutdown(2)
    c.close()
    while time.time() < deadline and not re.search(r"document quiet\.pdf (failed|done)", srv.text()[before:]):
        time.sleep(0.1)
    log = srv.text()[before:]
    m = re.search(r"document quiet\.pdf failed after [\d.]+s \((\d+) pages done\): cancelled", log)
    assert m and int(m.group(1)) < 12, log[-3000:]
    assert "client disconnected: request cancelled" in log


def test_leak_sanitizer(asan_dsocr, tiny_model, tmp_path):
    """The ASan build of the server (the fixture of test_serve_memory.py) over document requests, one cancelled
    by a disconnect: no leak, no error."""
    binary = asan_dsocr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=23",
               LSAN_OPTIONS="exitcode=23", OPENBLAS_NUM_THREADS="1")
    s = Server(["--model", tiny_model, "--results-dir", "", "--threads", "1"], str(tmp_path / "log"),
               binary=binary, env=env)
    try:
        st, _, doc = s.post_form("/v1/ocr", FAST, {"file": ("two.pdf", PDF2, "application/pdf")})
        assert st == 200 and len(doc["pages"]) == 2, doc
        broken = b"%PDF-1.4\n" + bytes(range(256))
        st, _, _ = s.post_form("/v1/ocr", FAST, {"file": ("b.pdf", broken, "application/pdf")})
        assert st == 400
        st, _, _ = s.post_form("/v1/ocr", dict(FAST, pages="9"), {"file": ("two.pdf", PDF2, "application/pdf")})
        assert st == 400
        body, ctype = multipart(dict(FAST, stream="true"), {"file": ("s.pdf", make_pdf(6), "application/pdf")})
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
        c.request("POST", "/v1/ocr", body=body, headers={"Content-Type": ctype})
        r = c.getresponse()
        for d in sse_events(r):
            if json.loads(d)["event"] == "page_done":
                break
        c.sock.shutdown(2)
        c.close()
        st, _, doc = s.post_form("/v1/ocr", dict(FAST, stream="false"), {"file": ("i.png", PNG, "image/png")})
        assert st == 200 and doc["kind"] == "image", doc
    finally:
        rc = s.stop(timeout=120)
    log = s.text()
    assert "LeakSanitizer" not in log and "AddressSanitizer" not in log and "runtime error" not in log, log[-5000:]
    assert rc == 0, log[-3000:]


def test_timeout_applies_per_page(srv, tiny_model, tmp_path):
    """--timeout bounds each page of a document, not the whole document: a document that takes longer than the
    limit in all still completes when its pages are quick. The limit is set from a measured page time."""
    import math
    st, _, three = post_doc(srv, FAST, data=make_pdf(3))
    assert st == 200, three
    times = sorted(max(p["timings"]["total"], 0.02) for p in three["pages"])
    # a limit far above a page (8x the median: load on the machine must not make one page time out), and enough
    # pages that even at the fastest page time measured the whole takes 1.5x the limit
    limit = max(2, math.ceil(8 * times[1]))
    n = math.ceil(1.5 * limit / times[0]) + 1
    s = Server(["--model", tiny_model, "--results-dir", "", "--threads", "2", "--timeout", str(limit)],
               str(tmp_path / "log"))
    try:
        st, _, doc = s.post_form("/v1/ocr", FAST, {"file": ("long.pdf", make_pdf(n), "application/pdf")})
        assert st == 200 and len(doc["pages"]) == n, (doc, limit, times)
        assert doc["summary"]["seconds"] > limit, (doc["summary"], limit, times)  # the whole took longer than --timeout
    finally:
        assert s.stop() == 0, s.text()
