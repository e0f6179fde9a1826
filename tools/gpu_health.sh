#!/bin/bash
# On the GPU machine (device tool, .devrun/ carried): serves the tiny random model on the GPU and prints /health
# and /cleanup, to check the seed's GPU fields.
set -u
for f in .devrun/lib/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
CUBLAS=$(dirname "$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$PWD/.devrun/lib:$CUBLAS:${LD_LIBRARY_PATH:-}
python3 tools/reference/make_checkpoint.py --config tiny --seed 1 --out /tmp/tiny > /dev/null
.devrun/dsocr serve --model /tmp/tiny --device cuda --port 8031 > /tmp/serve.log 2>&1 &
# the device's own curl would pick up the carried libcurl: ask with Python's stdlib instead
get() { env -u LD_LIBRARY_PATH python3 -c "import sys,urllib.request as u; r=u.Request('http://127.0.0.1:8031'+sys.argv[1], method=sys.argv[2], data=b'' if sys.argv[2]=='POST' else None); print(u.urlopen(r, timeout=5).read().decode())" "$@"; }
for i in $(seq 1 60); do get /health GET 2>/dev/null | grep -q healthy && break; sleep 0.5; done
get /health GET | tee "${OUT:-/tmp}/health-gpu.json"
get /cleanup POST | tee "${OUT:-/tmp}/cleanup-gpu.json"
tail -5 /tmp/serve.log
kill %1; wait
