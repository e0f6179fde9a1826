#!/usr/bin/python3
"""Tokenizer benchmark: Hugging Face `tokenizers` (PyPI) against our C tokenizer, same text, same machine, one run.

Hugging Face side: Tokenizer.from_file load time (median of --runs), single-thread encode throughput over every
text of encode.jsonl with add_special_tokens=False (median of --runs passes; the same work as build/bench/
bench_tokenizer), encode_batch throughput over all cores for reference, a 1 MB text with no spaces, and a check
that its ids equal the file's. With --c-bench it also runs the C benchmark and writes both to --out.

    /usr/bin/python3 -m pip install --break-system-packages tokenizers     # for this benchmark only
    make CUDA=0 build/bench/bench_tokenizer
    /usr/bin/python3 bench/tokenizer_hf.py --c-bench build/bench/bench_tokenizer --out bench/results/tokenizer-cpu.json
"""
import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{socket.gethostname()}: {cpu} ({os.cpu_count()} cores)"


def hf_bench(tok_path, texts_path, runs):
    import tokenizers
    from tokenizers import Tokenizer

    load_ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        tok = Tokenizer.from_file(tok_path)
        load_ms.append((time.perf_counter() - t0) * 1e3)
    rows = [json.loads(line) for line in open(texts_path, encoding="utf-8").read().split("\n") if line]
    texts = [r["text"] for r in rows]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    mismatches = sum(1 for r in rows if tok.encode(r["text"], add_special_tokens=False).ids != r["ids"])
    mbs, batch_mbs, ntok = [], [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        ntok = 0
        for t in texts:
            ntok += len(tok.encode(t, add_special_tokens=False).ids)
        mbs.append(nbytes / 1e6 / (time.perf_counter() - t0))
    for _ in range(runs):
        t0 = time.perf_counter()
        tok.encode_batch(texts, add_special_tokens=False)
        batch_mbs.append(nbytes / 1e6 / (time.perf_counter() - t0))
    big = "".join(chr(ord("a") + (i * 7 + i // 26) % 26) for i in range(1 << 20))
    t0 = time.perf_counter()
    tok.encode(big, add_special_tokens=False)
    big_s = time.perf_counter() - t0
    return {
        "bench": "tokenizer",
        "impl": f"Hugging Face tokenizers {tokenizers.__version__} (Python binding, Rust core)",
        "machine": machine(),
        "tokenizer": tok_path,
        "texts": texts_path,
        "runs": runs,
        "load_ms_median": statistics.median(load_ms),
        "load_ms_runs": load_ms,
        "encode_texts": len(texts),
        "encode_bytes": nbytes,
        "encode_tokens": ntok,
        "encode_threads": 1,
        "encode_mb_s_median": statistics.median(mbs),
        "encode_mb_s_best": max(mbs),
        "encode_batch_mb_s_median": statistics.median(batch_mbs),
        "encode_batch_threads": os.cpu_count(),
        "encode_1mb_no_spaces_s": big_s,
        "ids_mismatching_encode_jsonl": mismatches,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    ap.add_argument("--texts", default="data/tokenizer/encode.jsonl")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--c-bench", help="path of build/bench/bench_tokenizer: run it too and combine")
    ap.add_argument("--out", help="write the combined JSON here (needs --c-bench)")
    a = ap.parse_args()
    load_before = os.getloadavg()[0]
    hf = hf_bench(a.tokenizer, a.texts, a.runs)
    if not a.c_bench:
        print(json.dumps(hf, indent=2))
        return 0
    r = subprocess.run([a.c_bench, "--tokenizer", a.tokenizer, "--texts", a.texts, "--runs", str(a.runs)],
                       capture_output=True, text=True, check=True)
    c = json.loads(r.stdout)
    out = {
        "bench": "tokenizer",
        "machine": c["machine"],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_1min_before": load_before,
        "note": "wall-clock figures on a shared 2-core machine: see loadavg for how busy it was",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "c": c,
        "hf": hf,
        "c_over_hf_encode_single_thread": c["encode_mb_s_median"] / hf["encode_mb_s_median"],
        "c_over_hf_load": hf["load_ms_median"] / c["load_ms_median"],
    }
    s = json.dumps(out, indent=2)
    print(s)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            f.write(s + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
