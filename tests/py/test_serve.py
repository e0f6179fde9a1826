"""The HTTP server against the tiny random checkpoint, with a real HTTP client (http.client): every endpoint of
the seed API and the OpenAI-compatible API, every error (bad image bytes, empty file, wrong field names, huge
Content-Length, bad base64, bad JSON, unknown route, wrong key), status codes and JSON shapes; the server is
still healthy afterwards. Requests use the tiny mode and a few tokens so that each takes well under a second."""
import base64
import http.client
import io
import json
import os
import re
import socket
import threading
import time

import pytest

from serveutil import Server, chat_body, image_bytes, multipart, sse_events

IMG = image_bytes("small.png")
NAME_RE = re.compile(r"^ocr_\d{13}_[0-9a-f]{8}\.txt$")


@pytest.fixture(scope="module")
def srv(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    s = Server(["--model", tiny_model, "--results-dir", str(d / "results"), "--results-max", "3",
                "--max-upload", "1M", "--max-pixels", "2000000", "--threads", "2"], str(d / "server.log"))
    s.results = d / "results"
    yield s
    assert s.stop() == 0, s.text()


def ocr(srv, fields=None, img=IMG, **kw):
    f = {"mode": "tiny", "max_tokens": "3"}
    f.update(fields or {})
    return srv.post_form("/ocr", f, {"image": ("page.png", img, "image/png")}, **kw)


def detail(st, body, code):
    assert st == code, body
    assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"], body
    return body["detail"]


# ---- the seed API ----

def test_root_json(srv):
    st, h, j = srv.json("GET", "/", headers={"Accept": "*/*"})
    assert st == 200 and h["content-type"].startswith("application/json")
    assert j["status"] == "running" and isinstance(j["name"], str) and isinstance(j["model"], str)
    assert isinstance(j["mode"], str) and isinstance(j["optimizations"], list)
    for p in ("/health", "/ocr", "/ocr-base64", "/results/{filename}", "/cleanup", "/v1/chat/completions",
              "/v1/models"):
        assert isinstance(j["endpoints"][p], str)


def test_root_html_for_browsers(srv):
    st, h, body = srv.request("GET", "/", headers={
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"})
    assert st == 200 and h["content-type"].startswith("text/html")
    page = body.decode()
    assert "<html" in page and 'id="file"' in page and "/v1/chat/completions" in page
    assert "http://" not in page and "https://" not in page  # nothing loaded from the internet
    st, h, _ = srv.request("GET", "/", headers={"Accept": "application/json"})
    assert h["content-type"].startswith("application/json")


def test_health(srv):
    st, h, j = srv.json("GET", "/health")
    assert st == 200, j
    assert j["status"] == "healthy" and j["model_loaded"] is True and j["tokenizer_loaded"] is True
    assert j["device"] == "cpu" and isinstance(j["mode"], str)
    assert "gpu_name" not in j and "gpu_memory_total" not in j   # GPU fields only when serving on a GPU
    assert isinstance(j["queue_depth"], int) and isinstance(j["requests_served"], int)
    assert isinstance(j["uptime_s"], (int, float)) and j["uptime_s"] >= 0
    assert h["x-request-id"]


def test_ocr_multipart_and_results(srv):
    st, h, j = ocr(srv)
    assert st == 200, j
    assert j["success"] is True and isinstance(j["message"], str)
    assert isinstance(j["text"], str) and j["text"]
    assert NAME_RE.match(j["output_file"]), j
    st, h, body = srv.request("GET", "/results/" + j["output_file"])
    assert st == 200 and body.decode() == j["text"]
    # the same request gives the same text (greedy decoding), and save_to_file false saves nothing
    st, _, j2 = ocr(srv, {"save_to_file": "false"})
    assert st == 200 and j2["text"] == j["text"] and j2["output_file"] is None


def test_ocr_seed_defaults(srv):
    """No options at all: the seed's prompt and sizes (1024 global view, 896-px tiles, crop mode)."""
    st, _, j = srv.post_form("/ocr", {"max_tokens": "1"}, {"image": ("a.png", IMG, "image/png")})
    assert st == 200 and j["success"] is True, j


def test_ocr_base64(srv):
    b64 = base64.b64encode(IMG).decode()
    outs = []
    for img in (b64, "data:image/png;base64," + b64, "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))):
        st, _, j = srv.post_json("/ocr-base64", {"image_base64": img, "prompt": "<image>\nFree OCR.", "mode": "tiny",
                                                 "max_tokens": 3, "save_to_file": False})
        assert st == 200, j
        assert j["success"] is True and j["output_file"] is None
        outs.append(j["text"])
    assert outs[0] == outs[1] == outs[2]
    # sizes instead of a mode, and string-typed options as pydantic accepts them
    st, _, j = srv.post_json("/ocr-base64", {"image_base64": b64, "base_size": "512", "image_size": 512,
                                             "crop_mode": "false", "max_tokens": 2})
    assert st == 200 and NAME_RE.match(j["output_file"]), j


def test_cleanup(srv):
    st, _, j = srv.json("POST", "/cleanup")
    assert st == 200
    assert isinstance(j["message"], str)
    assert isinstance(j["gpu_memory_allocated"], str) and isinstance(j["gpu_memory_reserved"], str)


def test_results_cap_and_traversal(srv):
    names = []
    for _ in range(5):
        st, _, j = ocr(srv, {"max_tokens": "1"})
        assert st == 200, j
        names.append(j["output_file"])
    files = sorted(os.listdir(srv.results))
    assert len(files) == 3 and files == sorted(names[-3:])
    assert srv.request("GET", "/results/" + names[0])[0] == 404  # the oldest went first
    assert srv.request("GET", "/results/" + names[-1])[0] == 200
    for bad in ("/results/../../etc/passwd", "/results/..%2F..%2Fetc%2Fpasswd", "/results/%2Fetc%2Fpasswd",
                "/results/", "/results/server.log", "/results/ocr_0000000000000_00000000.txt",
                "/results/" + names[-1] + "/x", "/results/" + names[-1].upper()):
        st, _, j = srv.json("GET", bad)
        detail(st, j, 404)


# ---- errors ----

def test_bad_image_bytes(srv):
    st, _, j = ocr(srv, img=b"this is not an image at all")
    assert "image" in detail(st, j, 400)
    st, _, j = ocr(srv, img=IMG[:200])  # a truncated PNG
    detail(st, j, 400)


def test_empty_file(srv):
    st, _, j = ocr(srv, img=b"")
    assert "empty" in detail(st, j, 400)


def test_wrong_field_names(srv):
    st, _, j = srv.post_form("/ocr", {"mode": "tiny"}, {"file": ("a.png", IMG, "image/png")})
    assert "image" in detail(st, j, 400)
    st, _, j = srv.post_json("/ocr-base64", {"image": base64.b64encode(IMG).decode()})
    assert "image_base64" in detail(st, j, 400)


def test_bad_options(srv):
    for fields in ({"mode": "huge"}, {"base_size": "1000", "mode": ""}, {"crop_mode": "maybe"},
                   {"max_tokens": "0"}, {"max_tokens": "x"}, {"prompt": "x" * 5000},
                   {"prompt": "<image> and <image>"}):
        st, _, j = ocr(srv, fields)
        detail(st, j, 400)
    st, _, j = srv.post_form("/ocr", {"mode": "tiny", "max_tokens": "1", "colour": "blue"},
                             {"image": ("a.png", IMG, "image/png"), "image2": ("b.png", IMG, "x")})
    assert st == 200 and j["success"] is True  # unknown fields are ignored as the seed does
    st, _, j = srv.json("POST", "/ocr", b"image=abc", {"Content-Type": "application/x-www-form-urlencoded"})
    assert "multipart" in detail(st, j, 400)
    body, ct = multipart({"mode": "tiny"}, {"image": ("a.png", IMG, "image/png")})
    st, _, j = srv.json("POST", "/ocr", body[:-20], {"Content-Type": ct})  # no closing boundary
    detail(st, j, 400)


def test_too_many_pixels(srv):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1200), (255, 255, 255)).save(buf, "PNG")
    st, _, j = ocr(srv, img=buf.getvalue())
    assert "pixels" in detail(st, j, 400) or "large" in j["detail"]


def test_huge_content_length(srv):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    c.putrequest("POST", "/ocr")
    c.putheader("Content-Type", "multipart/form-data; boundary=x")
    c.putheader("Content-Length", str(10 ** 15))
    c.endheaders()
    r = c.getresponse()
    assert r.status == 413
    assert json.loads(r.read())["detail"]
    c.close()


def test_upload_over_limit(srv):
    big = b"\x89PNG" + os.urandom(1_100_000)
    body, ct = multipart({}, {"image": ("big.png", big, "image/png")})
    try:
        st, _, j = srv.json("POST", "/ocr", body, {"Content-Type": ct})
        detail(st, j, 413)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer 413 and close before the client has sent everything
    # chunked upload (no Content-Length): the limit holds too
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    c.putrequest("POST", "/ocr-base64")
    c.putheader("Content-Type", "application/json")
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    try:
        for _ in range(20):
            piece = b"x" * 100_000
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        c.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = c.getresponse()
    assert r.status == 413
    c.close()


def test_bad_base64_and_json(srv):
    for b64 in ("@@@@", "data:image/png,abcd", "QUJD=QUJD", "A", ""):
        st, _, j = srv.post_json("/ocr-base64", {"image_base64": b64})
        detail(st, j, 400)
    st, _, j = srv.post_json("/ocr-base64", {"image_base64": base64.b64encode(b"not an image").decode()})
    detail(st, j, 400)
    for body in (b"{", b"", b"[1,2]", b'{"image_base64": 5}', b'{"a":1} trailing', b"\xff\xfe"):
        st, _, j = srv.json("POST", "/ocr-base64", body, {"Content-Type": "application/json"})
        detail(st, j, 400)


def test_unknown_route_and_method(srv):
    st, _, j = srv.json("GET", "/nope")
    assert detail(st, j, 404) == "Not Found"
    st, _, j = srv.json("GET", "/ocr")
    detail(st, j, 405)
    st, _, j = srv.json("DELETE", "/health")
    detail(st, j, 405)


# ---- the OpenAI-compatible API ----

def test_models(srv):
    st, _, j = srv.json("GET", "/v1/models")
    assert st == 200 and j["object"] == "list"
    assert len(j["data"]) == 1 and j["data"][0]["object"] == "model" and isinstance(j["data"][0]["id"], str)


def test_chat_completion_and_stream(srv):
    body = chat_body(IMG, mode="tiny", max_tokens=6, temperature=0.7)
    body["messages"].insert(0, {"role": "system", "content": "You are an OCR engine."})
    st, _, j = srv.post_json("/v1/chat/completions", body)
    assert st == 200, j
    assert j["object"] == "chat.completion" and j["id"].startswith("chatcmpl-") and j["model"] == "deepseek-ocr"
    ch = j["choices"][0]
    assert ch["index"] == 0 and ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str)
    assert ch["finish_reason"] in ("stop", "length")
    u = j["usage"]
    assert u["completion_tokens"] <= 6 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert any("system" in w for w in j["warnings"]) and any("temperature" in w for w in j["warnings"])
    # the same request streamed gives the same text
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    events = list(sse_events(r))
    c.close()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(k["object"] == "chat.completion.chunk" for k in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(k["choices"][0]["delta"].get("content", "") for k in chunks if k["choices"])
    assert text == ch["message"]["content"]
    finals = [k for k in chunks if k["choices"] and k["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == ch["finish_reason"]
    assert chunks[-1]["usage"]["completion_tokens"] == u["completion_tokens"]


def test_chat_errors(srv):
    img = chat_body(IMG)["messages"][0]["content"][0]
    cases = [
        {"messages": [{"role": "user", "content": [img, img, {"type": "text", "text": "x"}]}]},  # two images
        {"messages": [{"role": "user", "content": "no image here"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]},
        {"messages": []},
        {"messages": "hello"},
        {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]},
        {"messages": [{"role": "user", "content": [img]}], "max_tokens": -1},
        {"messages": [{"role": "user", "content": [img]}], "n": 3},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}]},
    ]
    for body in cases:
        st, _, j = srv.post_json("/v1/chat/completions", body)
        assert st == 400, (body, j)
        assert isinstance(j["error"]["message"], str) and j["error"]["type"] == "invalid_request_error"
    st, _, j = srv.json("POST", "/v1/chat/completions", b"{oops", {"Content-Type": "application/json"})
    assert st == 400 and j["error"]["message"]


def test_request_ids_in_logs(srv):
    st, h, _ = srv.json("GET", "/health", headers={"X-Request-Id": "trace-abc_123"})
    assert h["x-request-id"] == "trace-abc_123"
    st, h, j = ocr(srv, headers={"X-Request-Id": "trace-ocr-1"})
    assert st == 200
    time.sleep(0.2)
    log = srv.text()
    assert "[trace-ocr-1] job done" in log and "[trace-ocr-1] POST /ocr -> 200" in log
    for line in log.splitlines():
        if " dsocr serve [" in line:
            assert re.search(r" dsocr serve \[[^\]]+\] ", line), line


def test_disconnect_cancels(srv):
    """A streaming client that goes away, and a waiting one that does, get their requests cancelled."""
    body = chat_body(IMG, mode="tiny", max_tokens=4000, stream=True)
    s = socket.create_connection(("127.0.0.1", srv.port))
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-stream\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    got = b""
    while got.count(b"data: ") < 3:
        got += s.recv(65536)
    s.close()
    # a non-streaming request whose client leaves while it runs
    body["stream"] = False
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-wait\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    time.sleep(1.0)
    s.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        log = srv.text()
        if "[gone-stream] job done" in log and "[gone-wait] job" in log:
            break
        time.sleep(0.1)
    log = srv.text()
    # noticed either while waiting for tokens (the socket polled) or when a write fails
    assert re.search(r"\[gone-stream\] (client disconnected during the stream|stream closed before the end): "
                     r"request cancelled", log), log[-3000:]
    m = re.search(r"\[gone-stream\] job done .* (\d+) generated, stop cancelled", log)
    assert m and int(m.group(1)) < 4000, log[-3000:]
    assert "[gone-wait] client disconnected: request cancelled" in log
    assert re.search(r"\[gone-wait\] job (done .*stop cancelled|failed .*cancel)", log), log[-3000:]
    # and the server answers the next request right away
    t0 = time.time()
    st, _, j = ocr(srv, {"max_tokens": "1"})
    assert st == 200 and time.time() - t0 < 30


def test_still_healthy_afterwards(srv):
    st, _, j = srv.json("GET", "/health")
    assert st == 200 and j["status"] == "healthy" and j["requests_served"] >= 15
    assert srv.proc.poll() is None


# ---- separate servers: key, queue, loading failure, drain ----

def test_api_key(tiny_model, tmp_path):
    env = dict(os.environ, DSOCR_API_KEY="s3cret")
    s = Server(["--fake-engine", "--results-dir", ""], str(tmp_path / "log"), env=env)
    try:
        b = chat_body(IMG)
        st, h, j = s.post_json("/v1/chat/completions", b)
        assert st == 401 and h.get("www-authenticate") == "Bearer" and j["error"]["message"]
        st, _, j = s.post_json("/v1/chat/completions", b, {"Authorization": "Bearer wrong"})
        assert st == 401
        st, _, j = s.post_form("/ocr", {}, {"image": ("a.png", IMG, "image/png")}, {"Authorization": "Bearer s3cre"})
        detail(st, j, 401)
        st, _, j = s.post_form("/ocr", {}, {"image": ("a.png", IMG, "image/png")}, {"Authorization": "Bearer s3cret"})
        assert st == 200 and j["success"] is True and j["output_file"] is None  # no results folder: not saved
        assert "not saved" in j["message"]
        st, _, j = s.post_json("/v1/chat/completions", b, {"Authorization": "Bearer s3cret"})
        assert st == 200
        assert s.json("GET", "/health")[0] == 200 and s.json("GET", "/")[0] == 200  # open without the key
        assert s.json("GET", "/v1/models")[0] == 401
        assert s.json("POST", "/cleanup")[0] == 401
    finally:
        assert s.stop() == 0


def test_memory_budget_507(tmp_path):
    # a request the engine's memory budget cannot hold is refused with 507 and says why (the fake engine's budget
    # holds 4,096 tokens, as a model's KV cache would under --gpu-mem); the server goes on serving
    s = Server(["--fake-engine", "--results-dir", ""], str(tmp_path / "log"))
    try:
        st, _, j = ocr(s, {"max_tokens": "5000"})
        assert "memory budget" in detail(st, j, 507)
        st, _, j = ocr(s, {"max_tokens": "2"})
        assert st == 200 and j["success"] is True
    finally:
        assert s.stop() == 0


def test_queue_full_429_and_timeout(tiny_model, tmp_path):
    s = Server(["--model", tiny_model, "--queue", "1", "--results-dir", "", "--threads", "2"], str(tmp_path / "log"))
    try:
        results = []

        def one(i):
            st, h, j = s.post_form("/ocr", {"mode": "tiny", "max_tokens": "12"},
                                   {"image": ("a.png", IMG, "image/png")})
            results.append((st, h, j))

        ts = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        codes = sorted(r[0] for r in results)
        assert codes.count(429) >= 1 and codes.count(200) >= 2 and set(codes) <= {200, 429}, codes
        for st, h, j in results:
            if st == 429:
                assert int(h["retry-after"]) >= 1 and j["detail"]
            else:
                assert j["success"] is True and isinstance(j["text"], str)
        deadline = time.time() + 5  # the worker clears its running job just after the answer goes out
        while s.json("GET", "/health")[2]["queue_depth"] and time.time() < deadline:
            time.sleep(0.02)
        st, _, j = s.json("GET", "/health")
        assert st == 200 and j["queue_depth"] == 0
    finally:
        assert s.stop() == 0
    s = Server(["--model", tiny_model, "--timeout", "2", "--results-dir", ""], str(tmp_path / "log2"))
    try:
        t0 = time.time()
        st, _, j = s.post_form("/ocr", {"mode": "tiny", "max_tokens": "5000"}, {"image": ("a.png", IMG, "image/png")})
        detail(st, j, 504)
        assert time.time() - t0 < 10
        deadline = time.time() + 10
        while "stop cancelled" not in s.text() and time.time() < deadline:
            time.sleep(0.05)
        assert re.search(r"job done .* stop cancelled", s.text())
        assert s.json("GET", "/health")[0] == 200
    finally:
        assert s.stop() == 0


def test_model_that_fails_to_load(tmp_path):
    s = Server(["--model", str(tmp_path / "missing"), "--results-dir", ""], str(tmp_path / "log"), wait_ready=False)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            st, _, j = s.json("GET", "/health")
            if "failed" in j["detail"]:
                break
            time.sleep(0.05)
        assert "failed to load" in detail(st, j, 503)
        st, _, j = s.post_form("/ocr", {}, {"image": ("a.png", IMG, "image/png")})
        detail(st, j, 503)
    finally:
        assert s.stop() == 0


def test_sigterm_drains(tiny_model, tmp_path):
    s = Server(["--model", tiny_model, "--results-dir", ""], str(tmp_path / "log"))
    out = {}

    def long_one():
        out["r"] = s.post_form("/ocr", {"mode": "tiny", "max_tokens": "40"}, {"image": ("a.png", IMG, "image/png")})

    t = threading.Thread(target=long_one)
    t.start()
    deadline = time.time() + 20
    while "job done" not in s.text() and s.json("GET", "/health")[2]["queue_depth"] == 0 and time.time() < deadline:
        time.sleep(0.02)
    s.proc.send_signal(15)
    time.sleep(0.2)
    try:
        st, _, j = s.post_form("/ocr", {"mode": "tiny"}, {"image": ("a.png", IMG, "image/png")})
        assert st == 503 and "shutting down" in j["detail"]
    except (ConnectionRefusedError, ConnectionResetError):
        pass
    t.join()
    st, _, j = out["r"]
    assert st == 200 and j["success"] is True
    assert s.stop() == 0
    assert "SIGTERM" in s.text() and "stopped" in s.text()


def test_page_c_is_generated_from_page_html():
    import subprocess
    import sys
    from serveutil import REPO
    r = subprocess.run([sys.executable, os.path.join(REPO, "src", "serve", "gen_page.py"), "--check"])
    assert r.returncode == 0, "src/serve/page.c is out of date: run src/serve/gen_page.py"
