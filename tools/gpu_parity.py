#!/usr/bin/python3
"""The GPU pipeline against the CPU engine (issue 6): per stage within 2e-2 relative L2, and teacher-forced over
32 tokens the top-1 agrees wherever the CPU's margin exceeds 10x the measured logit error (the rules of
tests/py/engine_vs_ref.py), on a base and a gundam page. Runs where a GPU is (tools/gpu_run.sh).

Two GPU runs per mode, both teacher-forced on the CPU's tokens (--force-ids):
  - end to end: the GPU's own vision feeds its decoder. Every stage outside the decoder (VIEW.*, image_embeds,
    prompt_ids, generated) is judged. Its decoder stages are reported but not judged: they start from the GPU's
    image embeddings, whose difference from the CPU's is at the noise floor of two correct bf16 implementations
    (bench/results/noise-floor-full-cpu.txt), and the decoder's layers amplify that (on the full checkpoint to
    2.2e-2 at the logits), through no error of the decoder ("end_to_end_logits" keeps that figure).
  - decoder_same_input: the decoder fed the CPU's image embeddings (--force-embeds CPU/image_embeds.bin), so each
    decoder stage (layerL.*, logits, the top-1 rule) measures the GPU decoder's own error. These are judged; its
    image_embeds must equal the CPU's exactly (the forcing took effect).
A mode passes when the end-to-end vision stages and the same-input decoder stages pass; "pass" is all modes.

--precision bf16 (default): both sides in bf16. --precision f16: the GPU runs --precision f16 (fp16 inputs to the
matrix products, fp32 elsewhere: the path of cards without bf16, forced) and the CPU, the yardstick, fp32.

    python3 tools/gpu_parity.py --model DIR [--precision bf16|f16] [--out FILE.json]
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "py"))
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
sys.path.insert(0, HERE)
import dsocr_run  # noqa: E402

from dumpcmp import compare  # noqa: E402
from engine_vs_ref import check  # noqa: E402


def is_decoder(line):
    """Whether a check() report or failure line is about a decoder stage: layerL.* (experts rows included), logits,
    the logit error, or a teacher-forced step's top-1."""
    return line.startswith(("layer", "logit", "step "))


def run(args):
    return dsocr_run.ocr(args, timeout=240)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="gpu-vs-cpu.json")
    ap.add_argument("--work", default="/tmp/gpu-parity")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--precision", choices=("bf16", "f16"), default="bf16")
    a = ap.parse_args()
    cpu_prec, gpu_prec = ("fp32", "f16") if a.precision == "f16" else ("bf16", "bf16")
    img = os.path.join(REPO, "tests", "images", "portrait.jpg")
    report = {"what": f"dsocr GPU (cuda, {gpu_prec}) vs CPU engine ({cpu_prec}), random checkpoint {a.model}",
              "rule": "pass = end-to-end vision stages within 2e-2 and, with the decoder fed the CPU's image "
                      "embeddings (decoder_same_input), its layer stages and logits within 2e-2 and the top-1 rule; "
                      "the end-to-end decoder figures are reported, not judged",
              "command": f"tools/gpu_run.sh (tools/gpu_parity.py --precision {a.precision})",
              "precision_gpu": gpu_prec, "precision_cpu": cpu_prec, "steps": a.steps, "cases": []}
    ok = True
    for mode in ("base", "gundam"):
        cdir, gdir, sdir = f"{a.work}/{mode}-cpu", f"{a.work}/{mode}-cuda", f"{a.work}/{mode}-cuda-same-input"
        subprocess.run(["rm", "-rf", cdir, gdir, sdir])
        common = ["--model", a.model, "--mode", mode, "--ignore-eos", "--quiet"]
        gpu = common + ["--precision", gpu_prec, "--device", "cuda", "--force-ids", f"{cdir}/generated.bin"]
        t_cpu = run(common + ["--precision", cpu_prec, "--device", "cpu", "--max-tokens", str(a.steps), "--dump", cdir,
                              img])
        t_gpu = run(gpu + ["--dump", gdir, img])
        lines, fails, ties = check(gdir, cdir, 2e-2)
        t_same = run(gpu + ["--force-embeds", f"{cdir}/image_embeds.bin", "--dump", sdir, img])
        s_lines, s_fails, s_ties = check(sdir, cdir, 2e-2)
        vision_fails = [f for f in fails if not is_decoder(f)]
        dec_fails = [f for f in s_fails if is_decoder(f)]
        forced = compare(sdir, cdir).get("image_embeds", ("missing",))[0]
        if forced != 0.0:
            dec_fails.append(f"image_embeds of the same-input run: relative L2 {forced} to the CPU's, not 0 "
                             "(--force-embeds did not take effect)")
        same = {"seconds_gpu_with_dumps": round(t_same, 1),
                "stages_rel_l2": [ln for ln in s_lines if is_decoder(ln)], "failures": dec_fails,
                "near_ties": s_ties, "pass": not dec_fails}
        case_ok = not vision_fails and not dec_fails
        ok = ok and case_ok
        case = {"mode": mode, "precision": a.precision, "seconds_cpu_with_dumps": round(t_cpu, 1),
                "seconds_gpu_with_dumps": round(t_gpu, 1),
                "stages_rel_l2": lines, "failures": fails, "near_ties": ties, "end_to_end_all_stages_pass": not fails,
                "end_to_end_logits": [ln for ln in lines if ln.startswith("logit")],
                "end_to_end_vision_failures": vision_fails, "decoder_same_input": same,
                "pass": case_ok}
        report["cases"].append(case)
        print(json.dumps(case, indent=1), flush=True)
    report["pass"] = ok
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"pass = {ok} (GPU {gpu_prec} vs CPU {cpu_prec}, {a.model}: end-to-end vision, decoder from the same "
          "image embeddings)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
