#!/bin/sh
# The main job (what `make run` does after installing packages and building): finds the model, downloads it
# when there is none (dsocr pull: deepseek-ai/DeepSeek-OCR, 6.7 GB, into the per-user cache), checks it and
# serves it. The folder is $DSOCR_MODEL when set (pulled into when empty), else ./models/deepseek-ocr when it
# holds a model, else the cache folder (~/.cache/dsocr/models/deepseek-ai/DeepSeek-OCR, or under
# $XDG_CACHE_HOME). HF_TOKEN and HF_ENDPOINT are honoured by the download.
cd "$(dirname "$0")/.." || exit 1

no_model() {
    cat >&2 <<MSG

dsocr: no model to serve: the download above did not complete (run 'make run' again to resume it).

Without network access, copy the Hugging Face folder deepseek-ai/DeepSeek-OCR from another machine into
$1 (or set DSOCR_MODEL=/path/to/folder).

To try dsocr without the real weights, make a small random-weight model in the same layout:
    /usr/bin/python3 tools/reference/make_checkpoint.py --config tiny --seed 1 --out models/tiny
    DSOCR_MODEL=models/tiny make run
MSG
    exit 1
}

if [ -n "$DSOCR_MODEL" ]; then
    MODEL=$DSOCR_MODEL
    if [ ! -f "$MODEL/config.json" ] || [ -f "$MODEL/.dsocr-pull.json" ]; then
        ./dsocr pull --if-missing --dir "$MODEL" || no_model "$MODEL"
    fi
elif [ -f models/deepseek-ocr/config.json ]; then
    MODEL=models/deepseek-ocr
else
    MODEL=$(./dsocr pull --show-dir) || exit 1
    ./dsocr pull --if-missing || no_model "$MODEL"
fi
./dsocr check-model "$MODEL" || exit 1
exec ./dsocr serve --model "$MODEL"
