#!/bin/bash
# Issue 7: a GGUF pair in llama.cpp's layout written by `dsocr quantize` from the full random checkpoint loads and
# gives the same tokens (and logits) as the safetensors folder it came from (bf16), and the Q8_0 pair the same as
# the folder quantised at load (--quant q8_0). CPU engine, tiny mode, 8 tokens. Needs $WORK/full (make_checkpoint.py
# --config full --seed 1 --out $WORK/full) and about 12 GB of disk.
set -e
cd /work/main
D=${WORK:-/tmp/gg}
mkdir -p $D/pair $D/pairq
t0=$(date +%s)
./dsocr quantize --model $D/full --type bf16 --layout llama --out $D/pair/deepseek-ocr-bf16.gguf > $D/q1.log 2>&1
./dsocr quantize --model $D/full --type q8_0 --layout llama --out $D/pairq/deepseek-ocr-q8_0.gguf > $D/q2.log 2>&1
echo "quantize done in $(( $(date +%s) - t0 )) s"; ls -la $D/pair $D/pairq
O="ocr --device cpu --mode tiny --max-tokens 8 --ignore-eos --retries 0 --quiet"
./dsocr $O --model $D/full --dump $D/d-st tests/images/portrait.jpg > /dev/null
./dsocr $O --model $D/pair --dump $D/d-pair tests/images/portrait.jpg > /dev/null
./dsocr $O --model $D/full --quant q8_0 --dump $D/d-stq tests/images/portrait.jpg > /dev/null
./dsocr $O --model $D/pairq --dump $D/d-pairq tests/images/portrait.jpg > /dev/null
for x in generated logits; do
  cmp $D/d-st/$x.bin $D/d-pair/$x.bin && echo "bf16 pair vs safetensors: $x identical"
  cmp $D/d-stq/$x.bin $D/d-pairq/$x.bin && echo "q8_0 pair vs --quant q8_0: $x identical"
done
echo "all done in $(( $(date +%s) - t0 )) s"
