#!/bin/sh
# Issue 12's CPU table on this machine, in one JSON: `dsocr bench --device cpu --ceilings` (base and gundam pages,
# bf16 and Q8_0 decoder weights) and the PyTorch reference on the same stages (tools/reference/bench.py, fp32).
#   tools/bench_cpu.sh MODEL_DIR OUT.json [NOTE]
# Environment: TOKENS (dsocr's decode tokens a page, default 64), REPEAT (dsocr's measured runs a page, medians;
# default 1), REF_TOKENS (the reference's, default 16),
# PYTHON (an interpreter with torch, default python3), DSOCR (default ./dsocr).
set -eu
[ $# -ge 2 ] || { echo "usage: tools/bench_cpu.sh MODEL_DIR OUT.json [NOTE]" >&2; exit 2; }
M=$1 OUTF=$2 NOTE=${3:-}
DSOCR=${DSOCR:-./dsocr} PY=${PYTHON:-python3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
for q in none q8_0; do
    qa=""; [ $q = none ] || qa="--quant $q"
    # shellcheck disable=SC2086
    "$DSOCR" bench --model "$M" --device cpu --mode base,gundam --tokens "${TOKENS:-64}" --repeat "${REPEAT:-1}" \
        --ceilings $qa --note "tools/bench_cpu.sh: dsocr bench --device cpu --mode base,gundam --tokens ${TOKENS:-64} \
--repeat ${REPEAT:-1} --ceilings $qa. $NOTE" \
        > "$T/dsocr-$q.json"
done
"$PY" "$(dirname "$0")/reference/bench.py" --model "$M" --mode base,gundam --tokens "${REF_TOKENS:-16}" \
    --note "tools/bench_cpu.sh: tools/reference/bench.py --mode base,gundam --tokens ${REF_TOKENS:-16} (fp32). $NOTE" \
    --dsocr "$T/dsocr-none.json" --dsocr "$T/dsocr-q8_0.json" > "$OUTF"
