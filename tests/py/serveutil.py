"""Helpers for the HTTP server tests: start `dsocr serve` on a free port, plain http.client requests, a
multipart/form-data encoder, a server-sent-events reader, the server's RSS. Standard library only."""
import http.client
import json
import os
import re
import signal
import subprocess
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DSOCR = os.path.join(REPO, "dsocr")
IMAGES = os.path.join(REPO, "tests", "images")


def image_bytes(name="small.png"):
    with open(os.path.join(IMAGES, name), "rb") as f:
        return f.read()


class Server:
    """A running `dsocr serve`; its stderr goes to a log file the tests read."""

    def __init__(self, args, log_path, binary=DSOCR, env=None, wait_ready=True):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([binary, "serve", "--port", "0"] + list(args), stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        self.port = None
        deadline = time.time() + 60
        while time.time() < deadline:
            m = re.search(r"listening on http://[^ ]*:(\d+)", self.text())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.text())
            time.sleep(0.05)
        if self.port is None:
            raise RuntimeError("server did not start: " + self.text())
        if wait_ready:
            while time.time() < deadline:
                if self.request("GET", "/health")[0] == 200:
                    break
                time.sleep(0.05)

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def request(self, method, path, body=None, headers=None, timeout=120):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
        except http.client.RemoteDisconnected as e:
            # the same exception (tests that expect it still catch it), with what the server said meanwhile
            raise http.client.RemoteDisconnected("%s %s: %s; the server's log ends:\n%s" %
                                                 (method, path, e, self.text()[-4000:])) from e
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None, timeout=120):
        st, h, data = self.request(method, path, body, headers, timeout)
        return st, h, json.loads(data) if data else None

    def post_json(self, path, obj, headers=None, timeout=120):
        hd = {"Content-Type": "application/json"}
        hd.update(headers or {})
        return self.json("POST", path, json.dumps(obj).encode(), hd, timeout)

    def post_form(self, path, fields, files, headers=None, timeout=120):
        body, ctype = multipart(fields, files)
        hd = {"Content-Type": ctype}
        hd.update(headers or {})
        return self.json("POST", path, body, hd, timeout)

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def multipart(fields, files):
    """fields: {name: str}; files: {name: (filename, bytes, content_type)} -> (body, content type)."""
    b = "----dsocrtest" + uuid.uuid4().hex
    out = []
    for k, v in fields.items():
        out.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n" % (b, k)).encode() + str(v).encode() + b"\r\n")
    for k, (fn, data, ct) in files.items():
        out.append(("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\nContent-Type: %s\r\n\r\n"
                    % (b, k, fn, ct)).encode() + data + b"\r\n")
    out.append(("--%s--\r\n" % b).encode())
    return b"".join(out), "multipart/form-data; boundary=" + b


def chat_body(img, text="Free OCR.", **kw):
    import base64
    url = "data:image/png;base64," + base64.b64encode(img).decode()
    body = {"model": "deepseek-ocr", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]}
    body.update(kw)
    return body


def sse_events(resp):
    """Yields the data of each server-sent event of an http.client response."""
    buf = b""
    while True:
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            for line in ev.split(b"\n"):
                if line.startswith(b"data: "):
                    yield line[6:].decode()


def slope(ys):
    """Least-squares slope of ys over their index."""
    n = len(ys)
    mx = (n - 1) / 2
    my = sum(ys) / n
    num = sum((i - mx) * (y - my) for i, y in enumerate(ys))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den
