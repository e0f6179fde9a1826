#!/usr/bin/python3
"""Command-line front end of the PyTorch reference: prints the generated text (see README.md).

  run.py --model DIR --image FILE [--mode tiny|small|base|large|gundam] [--base-size N --image-size N
         --crop-mode 0|1] [--prompt NAME] [--compat hf|vllm] [--precision fp32|bf16] [--max-tokens N]
         [--ignore-eos] [--dump DIR]
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch  # noqa: E402

from model import Reference  # noqa: E402
from pipeline import generate  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder")
    ap.add_argument("--image", required=True)
    ap.add_argument("--mode", default="gundam", choices=["tiny", "small", "base", "large", "gundam"])
    ap.add_argument("--base-size", type=int)
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--crop-mode", type=int, choices=[0, 1])
    ap.add_argument("--prompt", default="markdown", help="markdown|ocr|free|figure|describe|locate:TEXT|raw:TEXT")
    ap.add_argument("--compat", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--dump", help="write stage dumps (DUMP.md) into this folder")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        ref = Reference(a.model, a.precision)
        tok = Tokenizer(os.path.join(a.model, "tokenizer.json"))
        res = generate(ref, tok, a.image, a.mode, a.base_size, a.image_size,
                       None if a.crop_mode is None else bool(a.crop_mode), a.prompt, a.compat, a.max_tokens,
                       a.ignore_eos, a.dump)
    except (ValueError, OSError) as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(res["text"])
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
