"""tools/bench_cpu.sh (issue 12's CPU table): `dsocr bench --device cpu --ceilings` for bf16 and Q8_0 decoder
weights and the PyTorch reference's stage times (tools/reference/bench.py) in one JSON, on the tiny checkpoint."""
import json
import os
import subprocess
import sys

from tpaths import REPO


def test_bench_cpu_table(tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, TOKENS="3", REF_TOKENS="2", PYTHON=sys.executable)
    r = subprocess.run([os.path.join(REPO, "tools", "bench_cpu.sh"), tiny_model, str(out), "pytest"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(out.read_text())
    assert [o["quant"] for o in d["dsocr"]] == ["none", "q8_0"]
    for o in d["dsocr"]:
        assert [r["mode"] for r in o["runs"]] == ["base", "gundam"]
        assert o["ceilings"]["read_gbps"] > 0
        # a read probe right after each measured page (Linux), each decode sample a fraction of its own probe;
        # the probes' 512 MiB buffers stay out of the peak RSS (the tiny model's run is far below that)
        assert o["ceilings"]["read_probes_after_runs"] is True
        for r in o["runs"]:
            assert len(r["read_gbps_after_run"]["samples"]) == 1 and r["read_gbps_after_run"]["median"] > 0
            # the best of the run (printed to 2 decimals) is at least every probe after a run
            assert o["ceilings"]["read_gbps"] >= r["read_gbps_after_run"]["median"] - 0.006
        assert all(f["decode_of_read_after_run"] > 0 for f in o["of_ceilings"])
        assert 0 < o["memory"]["peak_rss_bytes"] < 512 << 20
        assert all(0 < f["vision_of_gemm_ceiling"] for f in o["of_ceilings"])
    ref = d["pytorch_reference"]
    assert ref["precision"] == "fp32" and ref["threads"] == os.cpu_count()
    for run in ref["runs"]:
        assert run["generated"] == 2 and run["vision_s"] > 0 and run["prefill_s"] > 0 and run["decode_tok_s"] > 0
    assert [r["mode"] for r in ref["runs"]] == ["base", "gundam"]
    assert ref["runs"][1]["views"] > ref["runs"][0]["views"] == 1
    for sp in d["speedup"]:
        assert [m["mode"] for m in sp["modes"]] == ["base", "gundam"]
        assert all(m["vision"] > 0 and m["decode"] > 0 for m in sp["modes"])


def test_reference_bench_rejects_a_bad_dsocr_file(tiny_model, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "reference", "bench.py"), "--model", tiny_model,
                        "--mode", "tiny", "--tokens", "1", "--warmup", "0", "--dsocr", str(bad)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "bad.json" in r.stderr
