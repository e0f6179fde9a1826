#!/usr/bin/env bash
# Runs every test: the C unit tests (build/tests/test_*), the fuzz corpora replays (build/fuzz/replay_*),
# and the Python tests (tests/py, tools/reference/tests) with Debian's python3. Prints one summary line,
# "N passed, N failed", and exits non-zero when anything failed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
passed=0; failed=0; failures=()
add() { # add NAME LOGFILE RC
    local line p f
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$2" | tail -n 1)
    if [ -n "$line" ]; then p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}; else p=0; f=0; fi
    if [ "$3" != 0 ] && [ "$f" = 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f))
    if [ "$f" != 0 ]; then failures+=("$1"); echo "--- $1 FAILED (log: $2)"; tail -n 30 "$2"; else echo "ok   $1 ($p)"; fi
}
mkdir -p build/logs
for t in build/tests/test_*; do
    [ -x "$t" ] || continue
    n=$(basename "$t"); log=build/logs/$n.log
    timeout 600 "$t" >"$log" 2>&1; add "$n" "$log" $?
done
for r in build/fuzz/replay_*; do
    [ -x "$r" ] || continue
    n=$(basename "$r"); name=${n#replay_}; log=build/logs/$n.log
    timeout 300 "$r" fuzz/corpus/"$name" >"$log" 2>&1; add "$n" "$log" $?
done
pydirs=()
for d in tests/py tools/reference/tests; do [ -d "$d" ] && pydirs+=("$d"); done
if [ ${#pydirs[@]} -gt 0 ]; then
    log=build/logs/pytest.log
    "$PY" -m pytest -q -p no:cacheprovider --durations=15 "${pydirs[@]}" >"$log" 2>&1; rc=$?
    line=$(grep -E '[0-9]+ (passed|failed)' "$log" | tail -n 1)
    p=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+'); f=$(echo "$line" | grep -oE '[0-9]+ (failed|error)' | awk '{s+=$1} END{print s+0}')
    echo "${p:-0} passed, ${f:-0} failed" >>"$log"
    [ "$rc" = 5 ] && rc=0 # no tests collected
    add pytest "$log" $rc
fi
echo "${passed} passed, ${failed} failed"
[ "$failed" = 0 ]
