"""`dsocr pull` and `dsocr check` against a local imitation of the Hugging Face Hub (hf_mock.py) serving the tiny
random checkpoint: clean download, a connection dropped half-way (resumed in the same run, and across runs),
a sha256 mismatch, a 404 repository, a 401 without token and success with HF_TOKEN (the token never reaching
the CDN), the pulled folder found by `ocr` without --model, and `check --json` with no driver and with a fake
one."""
import json
import os
import shutil
import subprocess

import pytest

from tpaths import DSOCR, IMAGES, REPO
from hf_mock import COMMIT, Hub

EXTRA = {"LICENSE": "MIT License\n\nCopyright (c) test\n", "README.md": "---\nlicense: mit\n---\n# tiny\n",
         "modeling_deepseekocr.py": "print('code is not downloaded')\n", "assets/figure.png": "not an image\n"}
ST = "model-00001-of-000001.safetensors"


@pytest.fixture(scope="module")
def hub(tiny_model, tmp_path_factory):
    src = str(tmp_path_factory.mktemp("hubrepo"))
    for n in os.listdir(tiny_model):
        shutil.copy(os.path.join(tiny_model, n), src)
    for rel, text in EXTRA.items():
        os.makedirs(os.path.dirname(os.path.join(src, rel)) or src, exist_ok=True)
        with open(os.path.join(src, rel), "w") as f:
            f.write(text)
    h = Hub({"test/tiny": src, "test/private": src, "test/corrupt": src, "deepseek-ai/DeepSeek-OCR": src})
    h.private["test/private"] = "hf_secret"
    h.lie_sha256[("test/corrupt", ST)] = "ab" * 32
    h.src = src
    h.start()
    yield h
    h.stop()


def env_for(hub, tmp_path, **kw):
    env = dict(os.environ)
    for k in ("HF_TOKEN", "DSOCR_MODEL", "HF_ENDPOINT"):
        env.pop(k, None)
    env.update(HF_ENDPOINT=hub.endpoint, HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               DSOCR_LIBCUDA="none")
    env.update(kw)
    return env


def pull(hub, tmp_path, *args, cwd=REPO, **kw):
    return subprocess.run([DSOCR, "pull", *args], env=env_for(hub, tmp_path, **kw), cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def expected_files(hub):
    return sorted(n for n in os.listdir(hub.src) if os.path.isfile(os.path.join(hub.src, n)) and not n.endswith(".py"))


def same(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def record(d):
    with open(os.path.join(d, ".dsocr-pull.json")) as f:
        return json.load(f)


def test_clean_download_then_ocr(hub, tmp_path):
    d = str(tmp_path / "m")
    n0 = len(hub.requests)
    r = pull(hub, tmp_path, "test/tiny", "--dir", d)
    assert r.returncode == 0, r.stderr
    got = sorted(n for n in os.listdir(d) if not n.startswith("."))
    assert got == expected_files(hub)  # weights, configs, tokenizer, LICENSE, README; no code, no assets/
    for n in got:
        assert same(os.path.join(d, n), os.path.join(hub.src, n)), n
    rec = record(d)
    assert rec["complete"] is True and rec["commit"] == COMMIT and rec["license"] == "mit"
    assert "licence: mit" in r.stderr and "sha256 ok" in r.stderr and "git sha1 ok" in r.stderr
    reqs = hub.requests[n0:]
    # the LFS weights came through the redirect to the CDN, pinned to the listing's commit
    assert any(s == "api" and p.startswith("/test/tiny/resolve/%s/%s" % (COMMIT, ST)) for s, _, p, _ in reqs)
    assert any(s == "cdn" for s, _, _, _ in reqs)
    # a second run downloads nothing; --if-missing does not even list
    n1 = len(hub.requests)
    r2 = pull(hub, tmp_path, "test/tiny", "--dir", d)
    assert r2.returncode == 0 and "nothing to download" in r2.stderr, r2.stderr
    assert [p for s, _, p, _ in hub.requests[n1:]] == ["/api/models/test/tiny/revision/main?blobs=True"]
    n2 = len(hub.requests)
    r3 = pull(hub, tmp_path, "test/tiny", "--dir", d, "--if-missing")
    assert r3.returncode == 0 and len(hub.requests) == n2
    # the pulled folder runs
    o = subprocess.run([DSOCR, "ocr", "--model", d, "--mode", "tiny", "--max-tokens", "4", IMAGES["small.png"]],
                       capture_output=True, text=True, timeout=120)
    assert o.returncode == 0, o.stderr
    # check --json: no GPU here, the CPU recommended, the folder complete and valid
    c = subprocess.run([DSOCR, "check", "--json", "--model", d], env=env_for(hub, tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert c.returncode == 0, c.stderr
    j = json.loads(c.stdout)
    assert j["gpus"] == [] and j["recommended"] == "cpu-fp32"
    assert j["model"]["state"] == "complete" and j["model"]["valid"] is True and j["model"]["repo"] == "test/tiny"
    assert j["needs"]["from_model_folder"] is True
    assert j["needs"]["weight_bytes"] == os.path.getsize(os.path.join(d, ST)) - 8 - header_len(os.path.join(d, ST))


def header_len(path):
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "little")


def test_drop_resumed_in_same_run(hub, tmp_path):
    d = str(tmp_path / "m")
    hub.drop_once.add(ST)
    n0 = len(hub.requests)
    r = pull(hub, tmp_path, "test/tiny", "--dir", d)
    assert r.returncode == 0, r.stderr
    assert "retrying" in r.stderr and "resuming at" in r.stderr
    assert same(os.path.join(d, ST), os.path.join(hub.src, ST))
    ranges = [h.get("range") for s, _, _, h in hub.requests[n0:] if s == "cdn"]
    size = os.path.getsize(os.path.join(hub.src, ST))
    assert ranges[0] is None and ranges[-1] == "bytes=%d-" % (size // 2), ranges


def test_drop_resumed_by_next_run(hub, tmp_path):
    d = str(tmp_path / "m")
    hub.drop_once.add(ST)
    r = pull(hub, tmp_path, "test/tiny", "--dir", d, "--retries", "0")
    assert r.returncode == 1
    assert "run the same command again to resume" in r.stderr, r.stderr
    size = os.path.getsize(os.path.join(hub.src, ST))
    assert not os.path.exists(os.path.join(d, ST))  # nothing that looks complete
    assert os.path.getsize(os.path.join(d, ST + ".part")) == size // 2
    assert record(d)["complete"] is False
    # ocr and check see an incomplete folder, and say how to finish it
    c = subprocess.run([DSOCR, "check", "--json", "--model", d], env=env_for(hub, tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert json.loads(c.stdout)["model"]["state"] == "incomplete"
    n0 = len(hub.requests)
    r2 = pull(hub, tmp_path, "test/tiny", "--dir", d)
    assert r2.returncode == 0, r2.stderr
    ranges = [h.get("range") for s, _, _, h in hub.requests[n0:] if s == "cdn"]
    assert ranges == ["bytes=%d-" % (size // 2)], ranges
    assert same(os.path.join(d, ST), os.path.join(hub.src, ST)) and not os.path.exists(os.path.join(d, ST + ".part"))
    assert record(d)["complete"] is True


def test_sha256_mismatch_refused(hub, tmp_path):
    d = str(tmp_path / "m")
    r = pull(hub, tmp_path, "test/corrupt", "--dir", d)
    assert r.returncode == 1
    assert "sha256 mismatch" in r.stderr and ST in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(d, ST)) and not os.path.exists(os.path.join(d, ST + ".part"))
    assert record(d)["complete"] is False
    o = subprocess.run([DSOCR, "check-model", d], capture_output=True, text=True, timeout=60)
    assert o.returncode != 0


def test_404_repository(hub, tmp_path):
    r = pull(hub, tmp_path, "test/nothing-here", "--dir", str(tmp_path / "m"))
    assert r.returncode == 1
    assert "404" in r.stderr and "check the repository name 'test/nothing-here'" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "m")
    r = pull(hub, tmp_path, "test/tiny", "--revision", "v9", "--dir", str(tmp_path / "m"))
    assert r.returncode == 1 and "no revision 'v9'" in r.stderr, r.stderr


def test_401_without_token_then_token(hub, tmp_path):
    d = str(tmp_path / "m")
    r = pull(hub, tmp_path, "test/private", "--dir", d)
    assert r.returncode == 1
    assert "401" in r.stderr and "HF_TOKEN" in r.stderr, r.stderr
    r = pull(hub, tmp_path, "test/private", "--dir", d, HF_TOKEN="hf_wrong")
    assert r.returncode == 1 and "token in HF_TOKEN was refused" in r.stderr, r.stderr
    n0 = len(hub.requests)
    r = pull(hub, tmp_path, "test/private", "--dir", d, HF_TOKEN="hf_secret")
    assert r.returncode == 0, r.stderr
    reqs = hub.requests[n0:]
    assert all(h.get("authorization") == "Bearer hf_secret" for s, _, _, h in reqs if s == "api")
    cdn = [h for s, _, _, h in reqs if s == "cdn"]
    assert cdn and all("authorization" not in h for h in cdn)  # the token stays with the Hub's host
    assert same(os.path.join(d, ST), os.path.join(hub.src, ST))


def test_default_folder_found_by_ocr(hub, tmp_path):
    work = tmp_path / "work"  # a folder without ./models/deepseek-ocr
    work.mkdir()
    env = env_for(hub, tmp_path)
    o = subprocess.run([DSOCR, "ocr", "--mode", "tiny", "--max-tokens", "4", IMAGES["small.png"]], env=env,
                       cwd=str(work), capture_output=True, text=True, timeout=60)
    assert o.returncode != 0 and "pull' downloads deepseek-ai/DeepSeek-OCR" in o.stderr, o.stderr
    r = pull(hub, tmp_path, cwd=str(work))
    assert r.returncode == 0, r.stderr
    cache = os.path.join(str(tmp_path / "cache"), "dsocr", "models", "deepseek-ai", "DeepSeek-OCR")
    s = pull(hub, tmp_path, "--show-dir", cwd=str(work))
    assert s.stdout.strip() == cache
    assert os.path.exists(os.path.join(cache, ST))
    o = subprocess.run([DSOCR, "ocr", "--mode", "tiny", "--max-tokens", "4", IMAGES["small.png"]], env=env,
                       cwd=str(work), capture_output=True, text=True, timeout=120)
    assert o.returncode == 0, o.stderr
    # DSOCR_MODEL still wins
    env2 = dict(env, DSOCR_MODEL=str(tmp_path / "nowhere"))
    o = subprocess.run([DSOCR, "ocr", "--mode", "tiny", "--max-tokens", "4", IMAGES["small.png"]], env=env2,
                       cwd=str(work), capture_output=True, text=True, timeout=60)
    assert o.returncode != 0 and "nowhere" in o.stderr


def test_bad_arguments(hub, tmp_path):
    r = pull(hub, tmp_path, "../etc", "--dir", str(tmp_path / "m"))
    assert r.returncode == 1 and "not a repository name" in r.stderr
    r = pull(hub, tmp_path, "test/tiny", "--dir", str(tmp_path / "m"), HF_ENDPOINT="ftp://x")
    assert r.returncode == 1 and "not an http" in r.stderr
    r = pull(hub, tmp_path, "test/tiny", "--dir", str(tmp_path / "m"), "--retries", "1",
             HF_ENDPOINT="http://127.0.0.1:1")
    assert r.returncode == 1 and "network" in r.stderr, r.stderr
    r = pull(hub, tmp_path, "test/tiny", "--gguf", "Q8_0", "--dir", str(tmp_path / "m"))
    assert r.returncode == 1 and "no GGUF model file names 'Q8_0'" in r.stderr, r.stderr


FAKE_CUDA = r"""
#include <stddef.h>
#include <string.h>
int cuInit(unsigned f) { return 0; }
int cuDriverGetVersion(int *v) { *v = 12040; return 0; }
int cuDeviceGetCount(int *n) { *n = 1; return 0; }
int cuDeviceGet(int *d, int i) { *d = i; return 0; }
int cuDeviceGetName(char *s, int n, int d) { strncpy(s, "NVIDIA H100 80GB HBM3", n); return 0; }
int cuDeviceGetAttribute(int *v, int a, int d) { *v = a == 75 ? 9 : a == 76 ? 0 : a == 16 ? 132 : 0; return 0; }
int cuDeviceTotalMem_v2(size_t *b, int d) { *b = 85017755648ull; return 0; }
int cuDevicePrimaryCtxRetain(void **c, int d) { *c = (void *)1; return 0; }
int cuDevicePrimaryCtxRelease_v2(int d) { return 0; }
int cuCtxPushCurrent_v2(void *c) { return 0; }
int cuCtxPopCurrent_v2(void **c) { return 0; }
int cuMemGetInfo_v2(size_t *f, size_t *t) { *f = 84500000000ull; *t = 85017755648ull; return 0; }
"""


def test_check_with_a_fake_driver(tmp_path):
    src = tmp_path / "fake.c"
    src.write_text(FAKE_CUDA)
    lib = tmp_path / "libcuda_fake.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    env = dict(os.environ, DSOCR_LIBCUDA=str(lib), DSOCR_MODEL=str(tmp_path / "none"))
    j = json.loads(subprocess.run([DSOCR, "check", "--json"], env=env, capture_output=True, text=True,
                                  timeout=60).stdout)
    g = j["gpus"][0]
    assert g["name"] == "NVIDIA H100 80GB HBM3" and g["compute_capability"] == "9.0" and g["bf16"] is True
    assert g["free_bytes"] == 84500000000 and j["cuda"]["driver_version"] == 12040
    names = {s["name"]: s for s in j["settings"]}
    assert names["gpu-bf16"]["fits"] is True
    if j["build"]["cuda"]:
        assert j["recommended"] == "gpu-bf16"
    else:  # a CPU-only build recommends the CPU and says what the GPU would take
        assert j["recommended"] == "cpu-fp32" and j["best_when_built"] == "gpu-bf16"
    j = json.loads(subprocess.run([DSOCR, "check", "--json", "--gpu-mem", "2G"], env=env, capture_output=True,
                                  text=True, timeout=60).stdout)
    fit = [s["name"] for s in j["settings"] if s["fits"]]
    assert fit == ["gpu-hybrid", "cpu-fp32"], fit
    assert j["gpu_mem_budget_bytes"] == 2 << 30
    if j["build"]["cuda"]:  # the hybrid placement (issue 8) is built with the CUDA backend
        assert j["recommended"] == "gpu-hybrid"
    else:
        assert j["recommended"] == "cpu-fp32" and j["best_when_built"] == "gpu-hybrid"
    h = subprocess.run([DSOCR, "check"], env=env, capture_output=True, text=True, timeout=60).stdout
    assert "NVIDIA H100 80GB HBM3, compute 9.0" in h and "driver API 12.4" in h
