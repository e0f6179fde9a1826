"""dsocr serve --max-batch (issue 13): image requests that arrive together are decoded together (each joining the
running batch at a token boundary), and every response is the one the same request gets from a server that takes
them one at a time; a bad image in the middle of a batch gets its own error and the others their texts; the
server's log shows the batch (several jobs running at once)."""
import re
import threading

import pytest

from serveutil import Server, image_bytes

IMAGES = [image_bytes("small.png"), image_bytes("portrait.jpg"), image_bytes("wide.png")]
CASES = [(IMAGES[i % 3], mode, str(4 + 3 * i)) for i, mode in enumerate(["tiny", "small", "tiny", "base", "tiny",
                                                                        "small"])]


def ocr(srv, img, mode, max_tokens):
    return srv.post_form("/ocr", {"mode": mode, "max_tokens": max_tokens, "save_to_file": "false"},
                         {"image": ("page.png", img, "image/png")})


@pytest.fixture(scope="module")
def alone(tiny_model, tmp_path_factory):
    """Every case's response from a server without batching, one request at a time."""
    d = tmp_path_factory.mktemp("serve_alone")
    s = Server(["--model", tiny_model, "--threads", "2"], str(d / "server.log"))
    try:
        return [ocr(s, *c) for c in CASES]
    finally:
        assert s.stop() == 0, s.text()


def test_batched_requests_as_alone(tiny_model, tmp_path_factory, alone):
    d = tmp_path_factory.mktemp("serve_batch")
    s = Server(["--model", tiny_model, "--threads", "2", "--max-batch", "4"], str(d / "server.log"))
    try:
        out = [None] * (len(CASES) + 1)

        def send(k):
            if k == len(CASES):
                out[k] = s.post_form("/ocr", {"mode": "tiny", "max_tokens": "3"},
                                     {"image": ("bad.png", b"not an image", "image/png")})
            else:
                out[k] = ocr(s, *CASES[k])

        threads = [threading.Thread(target=send, args=(k,)) for k in range(len(CASES) + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        for k, (st, _, j) in enumerate(out[:-1]):
            st1, _, j1 = alone[k]
            assert st == 200 and st1 == 200, (j, j1)
            assert j["text"] == j1["text"], (k, j["text"], j1["text"])
        st, _, j = out[-1]
        assert st in (400, 422), j
        # still serving afterwards, one request alone
        st, _, j = ocr(s, *CASES[0])
        assert st == 200 and j["text"] == alone[0][2]["text"]
        most = [int(m) for m in re.findall(r"batch done: \d+ jobs, at most (\d+) at once", s.text())]
        assert most and max(most) >= 2, s.text()
    finally:
        assert s.stop() == 0, s.text()
