#!/usr/bin/env bash
# Pipeline parallelism on the CUDA target, prepared here and run on a
# machine with 2 GPUs (device tool, kind nvidia-h100-x2 or nvidia-h200-x2,
# .devrun-pp carried; the GPU machine has no MLIR):
#   bash bench/pipeline_gpu.sh prepare   (here) builds mtc-launch, the
#       programs and the data into .devrun-pp/: the tiny GPT and GPT-2 124M,
#       one GPU and --pp 2 (1f1b; for the tiny GPT also gpipe and zb-h1),
#       the same global batches
#   bash bench/pipeline_gpu.sh check     (there) 20 steps of each, every
#       pp = 2 loss curve against the one-GPU program's within 0.05 (bf16
#       tolerance: reduction order and rounding, not different math)
# NCCL cannot hold two ranks of one communicator on one GPU (the runtime
# picks GPU LOCAL_RANK % count, so both pipeline ranks would share GPU 0 and
# ncclCommInitRank refuses the duplicate device): on a 1-GPU machine the
# check says so and runs only the one-GPU programs.
# Writes summary.txt and the logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
D=.devrun-pp
WHAT="${1:-check}"

if [ "$WHAT" = prepare ]; then
  set -e
  BUILD="${MTC_BUILD_DIR:-build}"
  BIN="$BUILD/bin"
  EXCLUDE=$(git rev-parse --git-path info/exclude)  # a worktree's too
  mkdir -p "$(dirname "$EXCLUDE")"
  grep -qx '/.devrun-pp/' "$EXCLUDE" 2>/dev/null || echo '/.devrun-pp/' >> "$EXCLUDE"
  rm -rf "$D"
  mkdir -p "$D/bin" "$D/lib" "$D/data"
  cmake --build "$BUILD" --target mtc mtc-preprocess mtc-launch mtc_runtime_cuda
  cp "$BIN/mtc-launch" "$D/bin/"
  compile() {  # name spec flags...
    local name=$1 spec=$2; shift 2
    "$BIN/mtc" compile "$spec" --target cuda -o "$D/prog-$name" "$@" > "$D/compile-$name.log"
    rm -rf "$D/prog-$name/build"
  }
  T=(examples/tiny-gpt.json --micro-batch-size 8 --global-batch-size 32)
  compile tiny-pp1 "${T[@]}"
  compile tiny-pp2 "${T[@]}" --pp 2
  compile tiny-pp2-gpipe "${T[@]}" --pp 2 --pipeline-schedule gpipe
  compile tiny-pp2-zb "${T[@]}" --pp 2 --pipeline-schedule zb-h1
  G=(examples/gpt2-124m.json --micro-batch-size 4 --global-batch-size 16)
  compile gpt2-pp1 "${G[@]}"
  compile gpt2-pp2 "${G[@]}" --pp 2
  strip "$D"/prog-*/train "$D/bin/"* 2>/dev/null || true
  for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0 libgloo.so.0 libhiredis.so.0.14 \
      libibverbs.so.1 libnl-route-3.so.200 libnl-3.so.200; do
    p=$(ldconfig -p | awk -v l="$lib" '$1 == l && !found {print $NF; found = 1}')
    if [ -n "$p" ]; then cp -L "$p" "$D/lib/"; else echo "note: $lib not found here"; fi
  done
  mapfile -t corpus < <(find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
  "$BIN/mtc-preprocess" --input "${corpus[@]}" --output-prefix "$D/data/fortunes" \
    --tokenizer byte --split-documents fortune > /dev/null
  tar -cJf "$D/lib.tar.xz" -C "$D" lib && rm -rf "$D/lib"
  tar -cJf "$D/progs.tar.xz" -C "$D" $(cd "$D" && ls -d prog-*) && rm -rf "$D"/prog-*
  du -sh "$D"
  exit 0
fi

OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
say() { echo "$*" | tee -a "$SUMMARY"; }
[ -f "$D/progs.tar.xz" ] || { say "no $D: run 'bash bench/pipeline_gpu.sh prepare' here first"; exit 2; }
mkdir -p /tmp/mtc-lib && tar -xJf "$D/lib.tar.xz" -C /tmp/mtc-lib
tar -xJf "$D/progs.tar.xz" -C "$D"
export LD_LIBRARY_PATH="/tmp/mtc-lib/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$SUMMARY"
GPUS=$(nvidia-smi -L | wc -l)
DATA="$D/data/fortunes"

run() {  # name ranks
  local name=$1 ranks=$2 cmd=()
  [ "$ranks" -gt 1 ] && cmd=("$D/bin/mtc-launch" -n "$ranks")
  timeout "${RUN_TIMEOUT:-300}" "${cmd[@]}" "$D/prog-$name/train" --data "$DATA" --steps 20 \
    --log-interval 5 --metrics "$OUT/$name.jsonl" > "$OUT/$name.log" 2>&1 \
    || say "FAILED $name: $(tail -4 "$OUT/$name.log" | tr '\n' ' ')"
}

compare() {  # REF=PLAN,PLAN ...
  python3 - "$OUT" "$@" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, os, sys
out = sys.argv[1]
def losses(n):
    try:
        return [json.loads(l)["loss"] for l in open(os.path.join(out, n + ".jsonl"))]
    except OSError:
        return []
for arg in sys.argv[2:]:
    ref, plans = arg.split("=")
    a = losses(ref)
    for p in plans.split(","):
        b = losses(p)
        if len(a) != 20 or len(b) != 20:
            print(f"{p} vs {ref}: MISSING ({len(a)} and {len(b)} steps)")
            continue
        d = max(abs(x - y) for x, y in zip(a, b))
        print(f"{p} vs {ref}: {a[0]:.4f}->{a[-1]:.4f} vs {b[0]:.4f}->{b[-1]:.4f}, "
              f"max |diff| {d:.4f} {'AGREE' if d < 0.05 else 'DIFFER'}")
PY
}

say "== one GPU"
run tiny-pp1 1
run gpt2-pp1 1
if [ "$GPUS" -lt 2 ]; then
  say "SKIPPED pp = 2: $GPUS GPU here; NCCL cannot put two ranks of one communicator on one GPU (use kind nvidia-h100-x2)"
  exit 0
fi
say "== pp = 2 against one GPU (20 steps, same global batches)"
run tiny-pp2 2
run tiny-pp2-gpipe 2
run tiny-pp2-zb 2
run gpt2-pp2 2
compare tiny-pp1=tiny-pp2,tiny-pp2-gpipe,tiny-pp2-zb gpt2-pp1=gpt2-pp2
