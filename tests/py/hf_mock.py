"""A local imitation of the Hugging Face Hub endpoints `dsocr pull` uses (Python stdlib only), for tests.

  GET /api/models/{repo}/revision/{rev}?blobs=true   model info: sha, cardData.license, siblings with
                                                     rfilename, size, blobId (git blob sha1), lfs.sha256/size
  GET /api/models/{repo}/tree/{rev}                  tree listing: type, path, size, oid, lfs.oid/size
  GET /{repo}/resolve/{rev}/{path}                   small files directly; LFS files by a 302 redirect to a
                                                     second server (the "CDN", another port) that honours
                                                     "Range: bytes=N-" with 206
Errors as the Hub gives them: 401 for a private repository without a valid "Authorization: Bearer" token,
404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound.

Each repository is a folder of files. Files over LFS_MIN bytes are "LFS" files. Knobs for tests:
  hub.private[repo] = token        the repository needs this token
  hub.drop_once.add(path)          the CDN sends half of that file, then closes the connection (once)
  hub.lie_sha256[(repo, path)] = x the listing gives x as the file's sha256
  hub.requests                     every request: (server, method, path, headers dict)

Run by hand: python3 tests/py/hf_mock.py OWNER/NAME=DIR ...  (prints the endpoint; serves until ^C)
"""
import hashlib
import http.server
import json
import os
import re
import sys
import threading
import urllib.parse

LFS_MIN = 1 << 20
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    def __init__(self, repos, license="mit"):
        self.repos = {}  # repo -> {path: (abs path, size, sha256, git sha1)}
        self.blobs = {}  # sha256 -> abs path
        for repo, folder in repos.items():
            self.add_repo(repo, folder)
        self.license = license
        self.private = {}
        self.drop_once = set()
        self.lie_sha256 = {}
        self.requests = []
        self.lock = threading.Lock()
        self.api = _server(self, "api")
        self.cdn = _server(self, "cdn")

    def add_repo(self, repo, folder):
        files = {}
        for root, _, names in os.walk(folder):
            for n in sorted(names):
                p = os.path.join(root, n)
                rel = os.path.relpath(p, folder).replace(os.sep, "/")
                data = open(p, "rb").read()
                sha = hashlib.sha256(data).hexdigest()
                git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                files[rel] = (p, len(data), sha, git)
                self.blobs[sha] = p
        self.repos[repo] = files

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.api.server_address[1]

    def start(self):
        for s in (self.api, self.cdn):
            threading.Thread(target=s.serve_forever, daemon=True).start()
        return self

    def stop(self):
        for s in (self.api, self.cdn):
            s.shutdown()
            s.server_close()

    def log(self, server, method, path, headers):
        with self.lock:
            self.requests.append((server, method, path, {k.lower(): v for k, v in headers.items()}))

    def info(self, repo):
        sib = []
        for rel, (_, size, sha, git) in sorted(self.repos[repo].items()):
            e = {"rfilename": rel, "size": size, "blobId": git}
            if size > LFS_MIN:
                e["lfs"] = {"sha256": self.lie_sha256.get((repo, rel), sha), "size": size, "pointerSize": 134}
            sib.append(e)
        return {"_id": "x", "id": repo, "modelId": repo, "sha": COMMIT, "private": repo in self.private,
                "cardData": {"license": self.license}, "tags": ["license:" + self.license], "siblings": sib}

    def tree(self, repo):
        out, dirs = [], set()
        for rel, (_, size, sha, git) in sorted(self.repos[repo].items()):
            if "/" in rel:
                dirs.add(rel.split("/")[0])
                continue
            e = {"type": "file", "oid": git, "size": size, "path": rel}
            if size > LFS_MIN:
                e["lfs"] = {"oid": self.lie_sha256.get((repo, rel), sha), "size": size, "pointerSize": 134}
            out.append(e)
        out += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
        return out


def _server(hub, kind):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send(self, code, body=b"", ctype="application/json", extra=None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def error(self, code, ecode, msg):
            self.send(code, json.dumps({"error": msg}).encode(), extra={"X-Error-Code": ecode, "X-Error-Message": msg})

        def do_GET(self):
            hub.log(kind, "GET", self.path, dict(self.headers))
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            if kind == "cdn":
                return self.cdn(path)
            m = re.match(r"^/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)$", path)
            if m:
                repo, what, rev = m.groups()
                if not self.access(repo):
                    return
                if rev not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound", "Invalid rev id: " + rev)
                body = hub.info(repo) if what == "revision" else hub.tree(repo)
                return self.send(200, json.dumps(body).encode())
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m:
                repo, rev, rel = m.groups()
                if not self.access(repo):
                    return
                if rev not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound", "Invalid rev id: " + rev)
                f = hub.repos[repo].get(rel)
                if not f:
                    return self.error(404, "EntryNotFound", rel + " does not exist on " + rev)
                p, size, sha, git = f
                if size > LFS_MIN:
                    loc = "http://127.0.0.1:%d/blobs/%s?name=%s" % (hub.cdn.server_address[1], sha,
                                                                   urllib.parse.quote(rel))
                    return self.send(302, b"", extra={"Location": loc, "X-Repo-Commit": COMMIT,
                                                       "X-Linked-Size": str(size), "X-Linked-Etag": '"%s"' % sha})
                return self.send(200, open(p, "rb").read(), "application/octet-stream",
                                 {"X-Repo-Commit": COMMIT, "ETag": '"%s"' % git})
            self.error(404, "RepoNotFound", "not found")

        def access(self, repo):
            if repo not in hub.repos:
                self.error(404, "RepoNotFound", "Repository Not Found for url: " + self.path)
                return False
            tok = hub.private.get(repo)
            if tok and self.headers.get("Authorization") != "Bearer " + tok:
                # the Hub does not tell private repositories from absent ones without a valid token
                self.error(401, "RepoNotFound", "Repository Not Found for url: " + self.path +
                           ". Please make sure you specified the correct `repo_id` and `repo_type`.")
                return False
            return True

        def cdn(self, path):
            m = re.match(r"^/blobs/([0-9a-f]{64})$", path)
            if not m or m.group(1) not in hub.blobs:
                return self.send(404, b"NoSuchKey", "text/plain")
            data = open(hub.blobs[m.group(1)], "rb").read()
            start = 0
            rng = self.headers.get("Range")
            if rng:
                r = re.match(r"^bytes=(\d+)-$", rng)
                if not r or int(r.group(1)) >= len(data):
                    return self.send(416, b"", "text/plain", {"Content-Range": "bytes */%d" % len(data)})
                start = int(r.group(1))
            body = data[start:]
            self.send_response(206 if rng else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if rng:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
            self.end_headers()
            key = m.group(1)
            with hub.lock:
                drop = any(hub.blobs.get(key) == hub_path(hub, d) for d in hub.drop_once)
                if drop:
                    hub.drop_once = {d for d in hub.drop_once if hub_path(hub, d) != hub.blobs[key]}
            if drop:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            for i in range(0, len(body), 1 << 20):
                self.wfile.write(body[i:i + (1 << 20)])

    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    s.daemon_threads = True
    return s


def hub_path(hub, rel):
    """The file behind a repository path (any repository) named in drop_once."""
    for files in hub.repos.values():
        if rel in files:
            return files[rel][0]
    return None


if __name__ == "__main__":
    repos = dict(a.split("=", 1) for a in sys.argv[1:])
    hub = Hub(repos).start()
    print(hub.endpoint, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()
