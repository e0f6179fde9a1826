#!/bin/sh
# The decoder's noise floor: two correct CPU implementations with the same bf16 rounding points (the fast ops and the
# scalar _ref ops, DSOCR_BACKEND=cpu-ref), both fed the same image embeddings and tokens, compared stage by stage.
# What the GPU's decoder_same_input figures of tools/gpu_parity.py are to be read against. The _ref run skips the
# vision encoder (DSOCR_FORCE_EMBEDS_NO_VISION=1: its output would be replaced) and is single-threaded: tens of
# minutes on the full checkpoint.
#   tools/decoder_floor.sh MODEL_DIR MODE WORK_DIR [STEPS]     (then tests/py/dumpcmp.py WORK/ref WORK/cpu)
set -e
M=$1 MODE=$2 W=$3 STEPS=${4:-32}
cd "$(dirname "$0")/.."
C="--model $M --device cpu --mode $MODE --precision bf16 --ignore-eos --quiet"
rm -rf "$W/cpu" "$W/ref"
mkdir -p "$W"
t0=$(date +%s)
./dsocr ocr $C --max-tokens "$STEPS" --dump "$W/cpu" tests/images/portrait.jpg > /dev/null
echo "fast CPU run: $(( $(date +%s) - t0 )) s"
DSOCR_BACKEND=cpu-ref DSOCR_FORCE_EMBEDS_NO_VISION=1 ./dsocr ocr $C --force-ids "$W/cpu/generated.bin" \
    --force-embeds "$W/cpu/image_embeds.bin" --dump "$W/ref" tests/images/portrait.jpg > /dev/null
echo "reference CPU run (decoder only): $(( $(date +%s) - t0 )) s"
${PYTHON:-python3} tests/py/dumpcmp.py "$W/ref" "$W/cpu"
