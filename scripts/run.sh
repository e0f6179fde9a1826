#!/bin/sh
# The main job (what `make run` does after installing packages and building): checks the model folder and
# serves it. The folder is $DSOCR_MODEL, else ./models/deepseek-ocr.
MODEL=${DSOCR_MODEL:-models/deepseek-ocr}
if [ ! -f "$MODEL/config.json" ]; then
    cat >&2 <<MSG
dsocr: no model in '$MODEL' (no config.json there).

To use the real DeepSeek-OCR weights (6.7 GB), download the Hugging Face folder deepseek-ai/DeepSeek-OCR
into that folder on a machine with internet access, for example:
    python3 -m pip install huggingface_hub
    huggingface-cli download deepseek-ai/DeepSeek-OCR --local-dir $MODEL
then run 'make run' again (or set DSOCR_MODEL=/path/to/folder). 'dsocr pull' will do this itself once it exists.

To try dsocr without the real weights, make a small random-weight model in the same layout:
    /usr/bin/python3 tools/reference/make_checkpoint.py --config tiny --seed 1 --out models/tiny
    DSOCR_MODEL=models/tiny make run
MSG
    exit 1
fi
./dsocr check-model "$MODEL" || exit 1
exec ./dsocr serve --model "$MODEL"
