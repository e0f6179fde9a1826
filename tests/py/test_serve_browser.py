"""The web page in a real browser: Debian's headless Chromium, driven over the DevTools protocol (a small
WebSocket client from the standard library), loads the page from the server, picks an image through the file
input, runs it, and must see the streamed text appear: the same text the API gives for the same request, and
the page's status saying it is done. Skipped when chromium is not installed."""
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time

import pytest

from serveutil import IMAGES, Server, chat_body, image_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: text frames, client masking, fragmentation."""

    def __init__(self, url, timeout=60):
        m = re.match(r"ws://([^:/]+):(\d+)(/.*)", url)
        self.sock = socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           % (m.group(3), m.group(1), m.group(2), key)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id = 0

    def _exact(self, n):
        b = b""
        while len(b) < n:
            chunk = self.sock.recv(n - len(b))
            if not chunk:
                raise ConnectionError("websocket closed")
            b += chunk
        return b

    def send(self, text):
        data = text.encode()
        n = len(data)
        head = bytes([0x81])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        msg = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            op = b0 & 0x0F
            if op == 8:
                raise ConnectionError("websocket closed by the browser")
            if op in (0, 1, 2):
                msg += payload
                if b0 & 0x80:
                    return msg.decode()

    def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        self.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            m = json.loads(self.recv())
            if m.get("id") == my:
                assert "error" not in m, m
                return m.get("result", {})

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")


@pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed")
def test_page_in_headless_chromium(tiny_model, tmp_path):
    s = Server(["--model", tiny_model, "--results-dir", ""], str(tmp_path / "server.log"))
    browser = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--disable-extensions", "--remote-debugging-port=0",
                                "--user-data-dir=" + str(tmp_path / "profile"), "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = None
        deadline = time.time() + 60
        err = b""
        while time.time() < deadline and url is None:
            line = browser.stderr.readline()
            if not line:
                break
            err += line
            m = re.search(rb"DevTools listening on (ws://\S+)", line)
            if m:
                url = m.group(1).decode()
        assert url, "chromium did not start: " + err.decode("utf-8", "replace")[-2000:]
        port = re.match(r"ws://[^:]+:(\d+)/", url).group(1)
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
        c.request("GET", "/json/list")
        pages = [t for t in json.loads(c.getresponse().read()) if t["type"] == "page"]
        c.close()
        ws = WebSocket(pages[0]["webSocketDebuggerUrl"])
        ws.call("Page.enable")
        ws.call("Page.navigate", url="http://127.0.0.1:%d/" % s.port)
        deadline = time.time() + 30
        while time.time() < deadline and ws.eval("document.readyState + '|' + !!document.getElementById('file')") != "complete|true":
            time.sleep(0.1)
        assert ws.eval("document.title").startswith("dsocr")
        # pick the image through the real file input
        root = ws.call("DOM.getDocument")["root"]["nodeId"]
        node = ws.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        ws.call("DOM.setFileInputFiles", nodeId=node, files=[os.path.join(IMAGES, "small.png")])
        while time.time() < deadline and ws.eval("document.getElementById('run').disabled"):
            time.sleep(0.05)
        assert ws.eval("document.getElementById('run').disabled") is False, "the page did not take the file"
        ws.eval("document.getElementById('mode').value = 'tiny'; document.getElementById('maxtok').value = '6'; "
                "document.getElementById('prompt').value = 'Free OCR.'; document.getElementById('run').click(); 1")
        deadline = time.time() + 60
        while time.time() < deadline and ws.eval("document.body.dataset.state || ''") != "done":
            time.sleep(0.1)
        status = ws.eval("document.getElementById('status').textContent")
        shown = ws.eval("document.getElementById('out').textContent")
        assert status.startswith("Done"), status
        assert shown, "no text appeared"
        # the text the page shows is the API's answer to the same request
        st, _, j = s.post_json("/v1/chat/completions", chat_body(image_bytes("small.png"), "Free OCR.", mode="tiny",
                                                                 max_tokens=6))
        assert st == 200 and j["choices"][0]["message"]["content"] == shown
        assert "[r" in s.text() and "POST /v1/chat/completions -> 200" in s.text()
    finally:
        browser.kill()
        browser.wait()
        assert s.stop() == 0
