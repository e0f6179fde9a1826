#!/bin/bash
# Runs on the GPU machine (device tool), from the repository root, with .devrun/ carried (tools/pack_device.sh):
# makes the full random checkpoint, compares the GPU pipeline with the CPU engine (bf16, base and gundam pages,
# 32 teacher-forced tokens), times a base page with 1,000 generated tokens, and writes everything under $OUT.
set -u
for f in .devrun/lib/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
CUBLAS=$(dirname "$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$PWD/.devrun/lib:$CUBLAS:${LD_LIBRARY_PATH:-}
cp .devrun/dsocr ./dsocr
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
./dsocr check --json > "$OUT/check-gpu.json" 2> /dev/null || true
./dsocr check --json --gpu-mem 2G > "$OUT/check-gpu-2g.json" 2> /dev/null || true
# smoke test on the tiny model first: GPU against CPU, bf16, dumps compared
python3 tools/reference/make_checkpoint.py --config tiny --seed 1 --out /tmp/tiny > /dev/null
PYTHONUNBUFFERED=1 timeout 120 python3 tools/gpu_parity.py --model /tmp/tiny --out "$OUT/gpu-vs-cpu-tiny.json" \
    --work /tmp/gpu-tiny 2>&1 | tail -12
M=/tmp/full
t0=$(date +%s)
python3 tools/reference/make_checkpoint.py --config full --seed 1 --out $M > /dev/null
echo "checkpoint in $(( $(date +%s) - t0 )) s"
PYTHONUNBUFFERED=1 timeout 300 python3 tools/gpu_parity.py --model $M --out "$OUT/gpu-vs-cpu.json" 2>&1 | tail -40
# a base page with 1,000 generated tokens on the GPU, and 64 on the CPU (16 cores) for scale
timeout 120 ./dsocr ocr --model $M --device cuda --precision bf16 --mode base --ignore-eos --max-tokens 1000 \
    tests/images/portrait.jpg > /dev/null 2> "$OUT/page-cuda.txt"
tail -c 400 "$OUT/page-cuda.txt"
timeout 120 ./dsocr ocr --model $M --device cpu --precision bf16 --mode base --ignore-eos --max-tokens 64 \
    tests/images/portrait.jpg > /dev/null 2> "$OUT/page-cpu.txt"
tail -c 400 "$OUT/page-cpu.txt"
