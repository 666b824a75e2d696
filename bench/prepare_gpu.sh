#!/usr/bin/env bash
# Builds, on this machine (no GPU needed), everything bench/gpu_run.sh runs
# on the GPU machine, into .devrun/ (ignored by git; name it in the device
# tool's `carry`): the CUDA kernel tests, the tiny GPT for the host and CUDA
# targets (correctness), the benchmark models for CUDA, the shared libraries
# the GPU image lacks, the fortunes dataset and the PyTorch baselines.
#   MTC_BUILD_DIR  a build of mtc with the compiler and the CUDA backend
#                  (default: build; scripts/setup.sh makes one where nvcc is)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${MTC_BUILD_DIR:-build}"
OUTD=.devrun
BIN="$BUILD/bin"
grep -qx '/.devrun/' .git/info/exclude 2>/dev/null || echo '/.devrun/' >> .git/info/exclude
rm -rf "$OUTD/lib" "$OUTD/lib.tar.xz"
mkdir -p "$OUTD/lib" "$OUTD/bench" "$OUTD/data"
cmake --build "$BUILD" --target mtc mtc-preprocess mtc-cuda-tests mtc_runtime_cuda
cp "$BIN/mtc-cuda-tests" "$OUTD/"

compile() {  # name spec target extra-flags...
  local name=$1 spec=$2 target=$3; shift 3
  "$BIN/mtc" compile "$spec" --target "$target" -o "$OUTD/prog-$name" "$@" > "$OUTD/compile-$name.log"
  rm -rf "$OUTD/prog-$name/build"
}
compile tiny-host examples/tiny-gpt.json host
compile tiny-cuda examples/tiny-gpt.json cuda
compile gpt2-124m examples/gpt2-124m.json cuda --micro-batch-size 64 --global-batch-size 64
compile gpt-1.3b examples/gpt-1.3b.json cuda --micro-batch-size 8 --global-batch-size 8

# Libraries of this machine's toolchain that the GPU image (Ubuntu 24.04,
# CUDA 13) does not have.
for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libgloo.so; do
  p=$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')
  [ -n "$p" ] && cp -L "$p" "$OUTD/lib/"
done

if [ ! -f "$OUTD/data/fortunes.idx" ]; then
  mapfile -t corpus < <(find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
  "$BIN/mtc-preprocess" --input "${corpus[@]}" --output-prefix "$OUTD/data/fortunes" \
    --tokenizer byte --split-documents fortune > /dev/null
fi
cp ../shared/bench/*.py "$OUTD/bench/"
# The device tool carries at most 64 MiB: the libraries travel compressed.
tar -cJf "$OUTD/lib.tar.xz" -C "$OUTD" lib && rm -rf "$OUTD/lib"
rm -rf "$OUTD"/prog-*/build
du -sh "$OUTD"
