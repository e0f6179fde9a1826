#!/bin/bash
# Runs on the GPU machine (device tool), from the repository root, with .devrun/ carried (tools/pack_device.sh).
# STAGES (default "test bench parity") picks what runs, results under $OUT:
#   test    build/tests/cuda/test_cuda (every kernel against the _ref ops) and bench_cuda (per-op figures)
#   bench   dsocr bench on the full random checkpoint: base and gundam pages, 1,000 tokens, warm process,
#           ceilings; then the same with DSOCR_PROFILE=1 (device time per section; DSOCR_NO_GRAPH=1 for decode)
#   parity  the GPU pipeline against the CPU engine (bf16, per stage, 32 teacher-forced tokens; tiny and full)
#   check   dsocr check --json (with and without --gpu-mem 2G)
#   qgpu    quantised weights on the GPU: Q8_0 and 4-bit, GPU against CPU on tiny (teacher-forced logits), then
#           dsocr bench --quant on the full checkpoint (base page, 1,000 tokens)
#   quant   issue 7's quality check on the machine's CPU: KL of Q8_0 and 4-bit against bf16 (tools/quant_quality.py),
#           gundam page, 128 teacher-forced steps, on the full and the full --stress checkpoints
#   batch   issue 13: bench_batch (B different pages decoded together, 1,000 tokens each, --check on the first
#           two pages of every batch) for bf16 and Q8_0 at B = 1, 8, 32, 64, 128, then bf16 and Q8_0 B = 128 for 300
#           tokens with DSOCR_PROFILE=1 (batch.* sections: the batch's steps; dec.*: the pages' prefills), then gundam
#           pages at B = 64 (pages per second)
#   batchprof  only the profile runs of batch (B = 128, 300 tokens, DSOCR_PROFILE=1, bf16 and Q8_0)
#   batchtop   the top of batch's table only: B = 128, 1,000 tokens, --check, bf16 and Q8_0 (BATCHTOP_QUANTS: which);
#           then the Q8_0 profile (B = 128, 300 tokens)
#   cpu     issue 12 on the machine's CPU: bench_blas (OpenBLAS's tiles on cold and warmed buffers), then
#           tools/bench_cpu.sh (dsocr bench --device cpu --ceilings, bf16 and Q8_0, base and gundam, medians of
#           REPEAT runs, default 3; the PyTorch reference's stage times beside them)
#   cputest the CPU ops' unit tests (test_ops, test_quant) on the machine's CPU: its AVX-512 kernels, which must
#           give the bits of the 8-lane and portable ones, run nowhere else; then again with DSOCR_NO_AVX512=1 (the
#           AVX2 kernels on an Intel core)
#   cpuprof issue 12's decode on the machine's CPU, looked into: DSOCR_PROFILE=1 sections of a base page (bf16 and
#           Q8_0, 64 tokens, all cores), then decode rates at THREADS_SWEEP threads (default "4 8 12")
#   cpusweep  issue 12's decode knobs on the machine's CPU: base page, 64 tokens, medians of 2, bf16 and Q8_0, each
#           setting of SWEEP (words; X: none, "+" joins variables; default: the defaults, session 11's (static, no
#           far prefetch), each of the two alone, DSOCR_PF=8192, dynamic,2, the defaults again)
#   f16     the path of cards without bf16 (fp16 matrix products, fp32 everywhere else), forced on this card with
#           --precision f16: f16-parity (GPU f16 against the CPU engine in fp32, the parity rules; tiny and full)
#           and f16-stress (base and gundam pages on the full --stress checkpoint with every dumped stage checked
#           for inf/NaN by tools/finite_check.py, then dsocr bench --precision f16, base page, 1,000 tokens); either
#           half can be named alone
set -u
STAGES=${STAGES:-test bench parity}
for f in .devrun/lib/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
CUBLAS=$(dirname "$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$PWD/.devrun/lib:$CUBLAS:${LD_LIBRARY_PATH:-}
cp .devrun/dsocr ./dsocr
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
has() { case " $STAGES " in *" $1 "*) return 0 ;; esac; return 1; }
M=/tmp/full
stress_ckpt() {
    if [ ! -s /tmp/full-stress/config.json ]; then
        python3 tools/reference/make_checkpoint.py --config full --stress --seed 1 --out /tmp/full-stress > /dev/null
    fi
}
full_ckpt() {
    if [ ! -s $M/config.json ]; then
        t0=$(date +%s)
        python3 tools/reference/make_checkpoint.py --config full --seed 1 --out $M > /dev/null
        echo "checkpoint in $(( $(date +%s) - t0 )) s"
    fi
}
if has test; then
    timeout 300 .devrun/test_cuda > "$OUT/cuda-test.log" 2>&1
    echo "test_cuda rc $?"; grep -E "FAIL|passed" "$OUT/cuda-test.log" | tail -15
    timeout 120 .devrun/bench_cuda > "$OUT/cuda-ops.json" 2> "$OUT/cuda-ops.err"
    grep -E '"op"' "$OUT/cuda-ops.json" | grep -E "attention|moe|q/k/v|lm_head" | cut -c1-150
    DSOCR_NO_Q8_ROWS=1 timeout 120 .devrun/bench_cuda > "$OUT/cuda-ops-noq8rows.json" 2>> "$OUT/cuda-ops.err"
    echo "bench_cuda with DSOCR_NO_Q8_ROWS=1:"
    grep -E '"op"' "$OUT/cuda-ops-noq8rows.json" | grep -E "M128" | cut -c1-150
fi
if has check; then
    ./dsocr check --json > "$OUT/check-gpu.json" 2> /dev/null || true
    ./dsocr check --json --gpu-mem 2G > "$OUT/check-gpu-2g.json" 2> /dev/null || true
fi
if has bench; then
    full_ckpt
    timeout 240 ./dsocr bench --model $M --device cuda --mode base,gundam --tokens 1000 --repeat 3 --ceilings \
        --note "tools/gpu_run.sh: dsocr bench --model full --device cuda --mode base,gundam --tokens 1000 --repeat 3 --ceilings" \
        > "$OUT/bench-cuda.json" 2> "$OUT/bench-cuda.err"
    echo "bench rc $?"; grep -E '"mode"|median|memory|driver|ceilings' "$OUT/bench-cuda.json" | cut -c1-160
    tail -3 "$OUT/bench-cuda.err"
    DSOCR_PROFILE=1 timeout 120 ./dsocr bench --model $M --device cuda --mode base,gundam --tokens 100 --repeat 1 \
        > /dev/null 2> "$OUT/profile.txt"
    DSOCR_PROFILE=1 DSOCR_NO_GRAPH=1 timeout 120 ./dsocr bench --model $M --device cuda --mode base --tokens 200 \
        --repeat 1 > /dev/null 2> "$OUT/profile-nograph.txt"
    head -30 "$OUT/profile.txt"; grep -E "dec\.|total" "$OUT/profile-nograph.txt" | head -12
fi
if has parity; then
    python3 tools/reference/make_checkpoint.py --config tiny --seed 1 --out /tmp/tiny > /dev/null
    PYTHONUNBUFFERED=1 timeout 120 python3 tools/gpu_parity.py --model /tmp/tiny --out "$OUT/gpu-vs-cpu-tiny.json" \
        --work /tmp/gpu-tiny 2>&1 | tail -6
    full_ckpt
    PYTHONUNBUFFERED=1 timeout 400 python3 tools/gpu_parity.py --model $M --out "$OUT/gpu-vs-cpu.json" 2>&1 | tail -30
fi
if has quant; then
    full_ckpt
    stress_ckpt
    for ck in full full-stress; do
        PYTHONUNBUFFERED=1 timeout 280 python3 tools/quant_quality.py --model /tmp/$ck --mode gundam --steps 128 \
            --work /tmp/qq-$ck --out "$OUT/quant-quality-$ck.json" 2>&1 | tail -3
    done
fi
if has qgpu; then
    python3 tools/reference/make_checkpoint.py --config tiny --seed 1 --out /tmp/tiny > /dev/null
    for q in q8_0 q4; do
        C="--model /tmp/tiny --mode tiny --precision bf16 --ignore-eos --quiet --quant $q"
        rm -rf /tmp/qg-$q-cpu /tmp/qg-$q-gpu
        ./dsocr ocr $C --device cpu --max-tokens 8 --dump /tmp/qg-$q-cpu tests/images/portrait.jpg > /dev/null
        ./dsocr ocr $C --device cuda --force-ids /tmp/qg-$q-cpu/generated.bin --dump /tmp/qg-$q-gpu \
            tests/images/portrait.jpg > /dev/null
        python3 tests/py/dumpcmp.py /tmp/qg-$q-gpu /tmp/qg-$q-cpu > "$OUT/qgpu-tiny-$q.txt" 2>&1
        echo "tiny $q: $(grep -E '^(logits|image_embeds|layer3.out) ' "$OUT/qgpu-tiny-$q.txt" | tr -s ' ' | tr '\n' ';')"
    done
    full_ckpt
    for q in q8_0 q4; do
        timeout 150 ./dsocr bench --model $M --device cuda --quant $q --mode base --tokens 1000 --repeat 2 \
            --note "tools/gpu_run.sh qgpu: dsocr bench --quant $q --mode base --tokens 1000 --repeat 2" \
            > "$OUT/bench-cuda-$q.json" 2> "$OUT/bench-cuda-$q.err"
        echo "$q: $(grep -E 'decode_tok_s|page_s|driver_used_minus' "$OUT/bench-cuda-$q.json" | tr -s ' ' | tr '\n' ' ')"
        tail -2 "$OUT/bench-cuda-$q.err"
    done
fi
if has f16 || has f16-parity; then
    [ -s /tmp/tiny/config.json ] || python3 tools/reference/make_checkpoint.py --config tiny --seed 1 --out /tmp/tiny > /dev/null
    PYTHONUNBUFFERED=1 timeout 150 python3 tools/gpu_parity.py --precision f16 --model /tmp/tiny \
        --out "$OUT/gpu-vs-cpu-f16-tiny.json" --work /tmp/gpu-f16-tiny 2>&1 | tail -6
    full_ckpt
    PYTHONUNBUFFERED=1 timeout 450 python3 tools/gpu_parity.py --precision f16 --model $M --out "$OUT/gpu-vs-cpu-f16.json" \
        --work /tmp/gpu-f16 2>&1 | tail -30
fi
if has f16 || has f16-stress; then
    stress_ckpt
    for mode in base gundam; do
        rm -rf /tmp/f16-stress-$mode
        timeout 200 ./dsocr ocr --model /tmp/full-stress --device cuda --precision f16 --mode $mode --max-tokens 32 \
            --ignore-eos --quiet --dump /tmp/f16-stress-$mode tests/images/portrait.jpg \
            > "$OUT/f16-stress-$mode.txt" 2> "$OUT/f16-stress-$mode.err"
        echo "f16 stress $mode: dsocr rc $? ($(wc -c < "$OUT/f16-stress-$mode.txt") bytes of text)"; tail -2 "$OUT/f16-stress-$mode.err"
    done
    python3 tools/finite_check.py /tmp/f16-stress-base /tmp/f16-stress-gundam > "$OUT/f16-stress-finite.txt" 2>&1
    echo "finite_check rc $?"; cut -c1-400 "$OUT/f16-stress-finite.txt" | tail -12
    full_ckpt
    timeout 200 ./dsocr bench --model $M --device cuda --precision f16 --mode base --tokens 1000 --repeat 2 \
        --note "tools/gpu_run.sh f16: dsocr bench --precision f16 --mode base --tokens 1000 --repeat 2" \
        > "$OUT/bench-cuda-f16.json" 2> "$OUT/bench-cuda-f16.err"
    echo "f16 bench rc $?: $(grep -E '"gpu"|vision_s|prefill_s|decode_tok_s|page_s|driver_used_minus' "$OUT/bench-cuda-f16.json" \
        | tr -s ' ' | cut -c1-90 | tr '\n' ' ')"
    tail -2 "$OUT/bench-cuda-f16.err"
fi
if has batch; then
    full_ckpt
    BB="timeout 200 .devrun/bench_batch --model $M --device cuda --tokens 1000"
    for q in bf16 q8_0; do
        qa=""; [ $q = bf16 ] || qa="--quant $q"
        $BB $qa --batches 1,8,32,64,128 --check --check-pages 2 > "$OUT/batch-$q.json" 2> "$OUT/batch-$q.err"
        echo "bench_batch $q rc $?"; grep '"batch"' "$OUT/batch-$q.json" | cut -c1-200; tail -2 "$OUT/batch-$q.err"
    done
    $BB --mode gundam --batches 64 > "$OUT/batch-gundam.json" 2> "$OUT/batch-gundam.err"
    echo "bench_batch gundam rc $?"; grep '"batch"' "$OUT/batch-gundam.json" | cut -c1-200
fi
if has batch || has batchprof; then
    full_ckpt
    for q in bf16 q8_0; do
        qa=""; sfx=""; [ $q = bf16 ] || { qa="--quant $q"; sfx="-$q"; }
        # shellcheck disable=SC2086
        DSOCR_PROFILE=1 timeout 100 .devrun/bench_batch --model $M --device cuda $qa --batches 128 --tokens 300 \
            > "$OUT/batch-profile$sfx.json" 2> "$OUT/batch-profile$sfx.err"
        grep '"batch"' "$OUT/batch-profile$sfx.json" | cut -c1-200
        grep -E "profile (batch\.|\(idle\)|total)" "$OUT/batch-profile$sfx.err"
    done
fi
if has batchtop; then
    full_ckpt
    for q in ${BATCHTOP_QUANTS:-bf16 q8_0}; do
        qa=""; [ $q = bf16 ] || qa="--quant $q"
        # shellcheck disable=SC2086
        timeout 150 .devrun/bench_batch --model $M --device cuda --tokens 1000 $qa --batches 128 --check \
            --check-pages 2 > "$OUT/batchtop-$q.json" 2> "$OUT/batchtop-$q.err"
        echo "batchtop $q rc $?"; grep '"batch"' "$OUT/batchtop-$q.json" | cut -c1-400
    done
    DSOCR_PROFILE=1 timeout 100 .devrun/bench_batch --model $M --device cuda --quant q8_0 --batches 128 --tokens 300 \
        > "$OUT/batch-profile-q8_0.json" 2> "$OUT/batch-profile-q8_0.err"
    grep -E "profile (batch\.|total)" "$OUT/batch-profile-q8_0.err"
fi
if has cputest; then
    for t in test_ops test_quant; do
        timeout 300 .devrun/$t > "$OUT/$t.log" 2>&1
        echo "$t rc $?: $(tail -1 "$OUT/$t.log")"; grep -E "FAIL" "$OUT/$t.log" | head -10
        DSOCR_NO_AVX512=1 timeout 300 .devrun/$t > "$OUT/$t-avx2.log" 2>&1
        echo "$t (DSOCR_NO_AVX512=1) rc $?: $(tail -1 "$OUT/$t-avx2.log")"; grep -E "FAIL" "$OUT/$t-avx2.log" | head -10
    done
fi
if has cpuprof; then
    full_ckpt
    for q in none q8_0; do
        qa=""; [ $q = none ] || qa="--quant $q"
        # shellcheck disable=SC2086
        DSOCR_PROFILE=1 timeout 200 ./dsocr bench --model $M --device cpu --mode base --tokens 64 --repeat 2 \
            --ceilings $qa > "$OUT/cpuprof-$q.json" 2> "$OUT/cpuprof-$q.err"
        echo "$q: $(grep -E '"decode_tok_s"' "$OUT/cpuprof-$q.json")"
        grep -E "step\.|read_gbps" "$OUT/cpuprof-$q.err" "$OUT/cpuprof-$q.json" | head -14
        for t in ${THREADS_SWEEP:-4 8 12}; do
            # shellcheck disable=SC2086
            timeout 100 ./dsocr bench --model $M --device cpu --mode base --tokens 64 --repeat 2 --threads "$t" \
                $qa > "$OUT/cpuprof-$q-t$t.json" 2> /dev/null
            echo "$q threads $t: $(grep -E '"decode_tok_s"' "$OUT/cpuprof-$q-t$t.json")"
        done
    done
fi
if has cpusweep; then
    full_ckpt
    i=0
    for q in none q8_0; do
        qa=""; [ $q = none ] || qa="--quant $q"
        for e in ${SWEEP:-X DSOCR_GEMV_SCHED=static+DSOCR_PF=0 DSOCR_PF=0 DSOCR_GEMV_SCHED=static DSOCR_PF=8192 \
            DSOCR_GEMV_SCHED=dynamic,2 X}; do
            # shellcheck disable=SC2046,SC2086
            env $(echo "$e" | tr '+' ' ' | sed 's/^X$//') timeout 100 ./dsocr bench --model $M \
                --device cpu --mode base --tokens 64 --repeat 2 --ceilings $qa > "$OUT/sweep-$i.json" 2> /dev/null
            python3 -c "import json,sys; d=json.load(open(sys.argv[1])); r=d['runs'][0]; \
print(sys.argv[2], sys.argv[3], r['decode_tok_s']['samples'], r['read_gbps_after_run']['samples'], \
d['of_ceilings'][0]['decode_of_read_after_run'])" "$OUT/sweep-$i.json" $q "$e" || echo "$q $e failed"
            i=$((i + 1))
        done
    done
fi
if has cpu; then
    full_ckpt
    timeout 120 .devrun/bench_blas > "$OUT/bench-blas-host.json" 2>&1
    echo "bench_blas rc $?"; grep case "$OUT/bench-blas-host.json"
    REPEAT=${REPEAT:-3} timeout 540 tools/bench_cpu.sh $M "$OUT/bench-cpu-host.json" "the GPU machine's CPU, $(nproc) cores" \
        2> "$OUT/bench-cpu-host.err"
    echo "bench_cpu rc $?"; tail -3 "$OUT/bench-cpu-host.err"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d['speedup'])); \
[print(o['quant'], json.dumps(o['of_ceilings']), o['memory']) for o in d['dsocr']]" "$OUT/bench-cpu-host.json"
fi
