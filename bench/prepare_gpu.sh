#!/usr/bin/env bash
# Builds, on this machine (no GPU needed), everything bench/gpu_run.sh runs
# on the GPU machine, into .devrun/ (ignored by git; name it in the device
# tool's `carry`): the CUDA kernel tests, the tiny GPT for the host and CUDA
# targets (correctness), the benchmark models for CUDA, the shared libraries
# the GPU image lacks, the fortunes dataset and the PyTorch baselines.
#   MTC_BUILD_DIR  a build of mtc with the compiler and the CUDA backend
#                  (default: build; scripts/setup.sh makes one where nvcc is)
#   MTC_OLD_MTC    (single) another `mtc` binary, e.g. a build of the last
#                  landed commit: the benchmark models are also built from
#                  its generated source (prog-NAME-old, against this
#                  runtime), for `gpu_run.sh compare` (new/old tokens/s in
#                  one call)
#   MTC_PREPARE    single (default: for gpu_run.sh) or parallel (for
#                  gpu_parallel_run.sh on two GPUs: tensor, sequence and data
#                  parallelism, the distributed optimizer); the carried folder
#                  must stay under 64 MiB
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${MTC_PREPARE:-single}"
case "$MODE" in
  single|parallel) ;;
  *) echo "MTC_PREPARE must be single or parallel, got '$MODE'" >&2; exit 2 ;;
esac
BUILD="${MTC_BUILD_DIR:-build}"
OUTD=.devrun
BIN="$BUILD/bin"
rm -rf "$OUTD/lib" "$OUTD/lib.tar.xz"
mkdir -p "$OUTD/lib" "$OUTD/bench" "$OUTD/data"
rm -rf "$OUTD"/prog-* "$OUTD/progs.tar.xz" "$OUTD"/compile-*.log "$OUTD/mtc-cuda-tests" "$OUTD/bin"
cmake --build "$BUILD" --target mtc mtc-preprocess mtc-launch mtc-cuda-tests mtc_runtime_cuda
mkdir -p "$OUTD/bin"
cp "$BIN/mtc-launch" "$OUTD/bin/"
cp "$BIN/mtc-cuda-tests" "$OUTD/"

compile() {  # name spec target extra-flags...
  local name=$1 spec=$2 target=$3; shift 3
  "$BIN/mtc" compile "$spec" --target "$target" -o "$OUTD/prog-$name" "$@" > "$OUTD/compile-$name.log"
  rm -rf "$OUTD/prog-$name/build"
}
compile gpt2-124m examples/gpt2-124m.json cuda --micro-batch-size 64 --global-batch-size 64
compile gpt-1.3b examples/gpt-1.3b.json cuda --micro-batch-size 8 --global-batch-size 8
if [ "$MODE" = single ]; then
  compile tiny-host examples/tiny-gpt.json host
  compile tiny-cuda examples/tiny-gpt.json cuda
  compile tiny-nemotron-host examples/tiny-nemotron.json host
  compile tiny-nemotron-cuda examples/tiny-nemotron.json cuda
  if [ -n "${MTC_OLD_MTC:-}" ]; then
    # The same models from the other compiler's source, built by this
    # runtime's CMake project.
    for m in gpt2-124m:64 gpt-1.3b:8; do
      IFS=: read -r name mb <<< "$m"
      d="$OUTD/prog-$name-old"
      "$BIN/mtc" compile "examples/$name.json" --target cuda --micro-batch-size "$mb" \
        --global-batch-size "$mb" -o "$d" --no-build > "$OUTD/compile-$name-old.log"
      "$MTC_OLD_MTC" compile "examples/$name.json" --target cuda --micro-batch-size "$mb" \
        --global-batch-size "$mb" --emit=source > "$d/program.cpp"
      cmake -S "$d" -B "$d/build" -G Ninja "-Dmtc_DIR=$PWD/$BUILD" -DCMAKE_BUILD_TYPE=Release \
        >> "$OUTD/compile-$name-old.log"
      cmake --build "$d/build" >> "$OUTD/compile-$name-old.log"
      cp "$d/build/train" "$d/train"
      rm -rf "$d/build"
    done
  fi
elif [ "$MODE" = parallel ]; then
  # Tiny GPT, global batch 16 everywhere: one GPU (2 microbatches), dp = 2
  # (buckets overlapped with backward), dp = 2 with the distributed
  # optimizer; tp = 2 with and without sp on the same 16 sequences as one
  # microbatch, against one GPU doing the same.
  compile tiny-gb16 examples/tiny-gpt.json cuda --micro-batch-size 8 --global-batch-size 16
  compile tiny-mb16 examples/tiny-gpt.json cuda --micro-batch-size 16 --global-batch-size 16
  # The host target (fp32, the reference math) on the same batches: every
  # GPU plan above is checked against one GPU, and one GPU against this.
  compile tiny-host-mb16 examples/tiny-gpt.json host --micro-batch-size 16 --global-batch-size 16
  compile tiny-dp2 examples/tiny-gpt.json cuda --dp 2 --micro-batch-size 8 --global-batch-size 16
  compile tiny-dp2-zero examples/tiny-gpt.json cuda --dp 2 --micro-batch-size 8 --global-batch-size 16 --use-distributed-optimizer
  compile tiny-tp2 examples/tiny-gpt.json cuda --tp 2 --micro-batch-size 16 --global-batch-size 16
  compile tiny-tp2-sp examples/tiny-gpt.json cuda --tp 2 --sp --micro-batch-size 16 --global-batch-size 16
  compile tiny-tp2-onebl examples/tiny-gpt.json cuda --tp 2 --tp-backward-lanes=false --micro-batch-size 16 --global-batch-size 16
  # tp = 2 with both half-batch lanes on the compute stream, and with the tp
  # all-reduces on NCCL instead of the copy engines (compile options: the
  # generated programs read no switches from the environment).
  compile tiny-tp2-onestream examples/tiny-gpt.json cuda --tp 2 --tp-lanes=one-stream --micro-batch-size 16 --global-batch-size 16
  compile tiny-tp2-nccl examples/tiny-gpt.json cuda --tp 2 --tp-allreduce=nccl --micro-batch-size 16 --global-batch-size 16
  # Dropout 0.1 (hidden and attention): one GPU, tp = 2 with sp (dropout on
  # sequence shards and head slices) and dp = 2 draw the same masks.
  python3 -c "
import json, sys
spec = json.load(open('examples/tiny-gpt.json'))
spec['model'].update(name='tiny-gpt-dropout', hidden_dropout=0.1, attention_dropout=0.1)
json.dump(spec, open('$OUTD/tiny-gpt-dropout.json', 'w'), indent=2)"
  compile tiny-drop-mb16 "$OUTD/tiny-gpt-dropout.json" cuda --micro-batch-size 16 --global-batch-size 16
  compile tiny-drop-gb16 "$OUTD/tiny-gpt-dropout.json" cuda --micro-batch-size 8 --global-batch-size 16
  compile tiny-drop-tp2-sp "$OUTD/tiny-gpt-dropout.json" cuda --tp 2 --sp --micro-batch-size 16 --global-batch-size 16
  compile tiny-drop-dp2 "$OUTD/tiny-gpt-dropout.json" cuda --dp 2 --micro-batch-size 8 --global-batch-size 16
  for m in gpt2-124m:64:1024 gpt-1.3b:8:2048; do
    IFS=: read -r name mb _ <<< "$m"
    compile "$name-dp2" "examples/$name.json" cuda --dp 2 --micro-batch-size "$mb" --global-batch-size $((2 * mb))
    compile "$name-dp2-zero" "examples/$name.json" cuda --dp 2 --micro-batch-size "$mb" --global-batch-size $((2 * mb)) --use-distributed-optimizer
    compile "$name-tp2" "examples/$name.json" cuda --tp 2 --micro-batch-size "$mb" --global-batch-size "$mb"
    compile "$name-tp2-sp" "examples/$name.json" cuda --tp 2 --sp --micro-batch-size "$mb" --global-batch-size "$mb"
    # tp = 2 with autodiff's order of the backward pass (the comparison for
    # mtc-schedule-weight-gradients).
    compile "$name-tp2-nodelay" "examples/$name.json" cuda --tp 2 --micro-batch-size "$mb" --global-batch-size "$mb" --delay-wgrad-compute=false
    # tp = 2 with the backward pass in one lane (the default splits it into
    # half-batch lanes as well as the forward pass).
    compile "$name-tp2-onebl" "examples/$name.json" cuda --tp 2 --micro-batch-size "$mb" --global-batch-size "$mb" --tp-backward-lanes=false
    # tp = 2 with both forward lanes on the compute stream and with the tp
    # all-reduces on NCCL instead of the copy engines.
    compile "$name-tp2-onestream" "examples/$name.json" cuda --tp 2 --micro-batch-size "$mb" --global-batch-size "$mb" --tp-lanes=one-stream
    compile "$name-tp2-nccl" "examples/$name.json" cuda --tp 2 --micro-batch-size "$mb" --global-batch-size "$mb" --tp-allreduce=nccl
  done
  # Both at once, for gpu_parallel_run.sh halfnorm's NCCL run on the 1.3B GPT.
  compile gpt-1.3b-tp2-onestream-nccl examples/gpt-1.3b.json cuda --tp 2 --micro-batch-size 8 --global-batch-size 8 --tp-lanes=one-stream --tp-allreduce=nccl
fi
strip "$OUTD"/prog-*/train "$OUTD/bin/"* 2>/dev/null || true

# Libraries of this machine's toolchain that the GPU image (Ubuntu 24.04,
# CUDA 13) does not have.
for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libgloo.so.0 libhiredis.so.0.14 \
    libibverbs.so.1 libnl-route-3.so.200 libnl-3.so.200; do
  p=$(ldconfig -p | awk -v l="$lib" '$1 == l && !found {print $NF; found = 1}')
  if [ -n "$p" ]; then cp -L "$p" "$OUTD/lib/"; else echo "note: $lib not found here"; fi
done

if [ ! -f "$OUTD/data/fortunes.idx" ]; then
  mapfile -t corpus < <(find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
  "$BIN/mtc-preprocess" --input "${corpus[@]}" --output-prefix "$OUTD/data/fortunes" \
    --tokenizer byte --split-documents fortune > /dev/null
fi
cp ../shared/bench/*.py bench/*.py "$OUTD/bench/"
# The device tool carries at most 64 MiB: the libraries travel compressed.
tar -cJf "$OUTD/lib.tar.xz" -C "$OUTD" lib && rm -rf "$OUTD/lib"
rm -rf "$OUTD"/prog-*/build
# The programs share most of their bytes: they travel as one archive too.
tar -cJf "$OUTD/progs.tar.xz" -C "$OUTD" $(cd "$OUTD" && ls -d prog-*) && rm -rf "$OUTD"/prog-*
du -sh "$OUTD"
