#!/bin/sh
# Packs ./dsocr (built here with CUDA) and the Debian shared libraries it needs into .devrun/ for the GPU machine
# of the device tool (which has CUDA and PyTorch but not our Debian libraries). .devrun/ is git-ignored.
set -e
cd "$(dirname "$0")/.."
# CUDA_ARCH / BUILD may be given to build for the device's card only (faster), e.g. CUDA_ARCH=90 BUILD=build/dev
B=${BUILD:-build}
make -j2 BUILD="$B" ${CUDA_ARCH:+CUDA_ARCH="$CUDA_ARCH"} dsocr "$B/tests/cuda/test_cuda" "$B/bench/bench_cuda" \
    "$B/bench/bench_batch" "$B/bench/bench_blas" "$B/tests/test_ops" "$B/tests/test_quant" >/dev/null
# the CUDA runtime and cuBLAS are the device's own (its PyTorch ships them); the rest comes from here
rm -rf .devrun && mkdir -p .devrun/lib
cp dsocr .devrun/
cp "$B/tests/cuda/test_cuda" "$B/bench/bench_cuda" "$B/bench/bench_batch" "$B/bench/bench_blas" "$B/tests/test_ops" \
    "$B/tests/test_quant" .devrun/
ldd ./dsocr | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libresolv*|libstdc++*|libgcc_s*|libcuda.so*|libcublas*) ;;
    *) cp -L "$lib" .devrun/lib/ ;;
    esac
done
# large libraries travel compressed (the working tree that travels is capped); gpu_run.sh unpacks them
find .devrun/lib -size +4M -exec gzip -9 {} \;
grep -qx '/.devrun/' .git/info/exclude 2>/dev/null || echo '/.devrun/' >> .git/info/exclude
du -sh .devrun
