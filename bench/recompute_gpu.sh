#!/usr/bin/env bash
# Recomputation on one GPU: step time and measured peak memory of each
# policy against the plan's figure, for GPT-2 124M, the 1.3B GPT and
# Llama-1B (docs/memory.md).
#   bench/recompute_gpu.sh prepare   here (needs mtc and nvcc, no GPU): runs
#       bench/prepare_gpu.sh (the runtime's libraries, the data) unless
#       .devrun/lib.tar.xz exists, then compiles every (model, policy) for
#       CUDA into .devrun/rc-progs.tar.xz with its plan.txt/plan.json;
#       carry .devrun to the GPU machine
#   bench/recompute_gpu.sh run [MODEL-POLICY...]
#                                    on the GPU machine (no MLIR there: only
#       the prebuilt binaries): trains each program a few steps and prints,
#       per program, ms per step (median of the logged intervals after the
#       first), tokens/s, the measured peak (the training binary's
#       "measured peak" line: cudaMemGetInfo's least free memory over the
#       run) and the plan's peak, with their ratio. Writes $OUT (or
#       ./gpu-out)/recompute.txt and the logs.
# Policies: none, selective, selective with core_attn+activation, full,
# and auto under 0.9 of the GPU (80 GiB) at a micro-batch that does not
# fit without recomputation (the 1.3B GPT at 32).
set -uo pipefail
cd "$(dirname "$0")/.."
D=.devrun
MODE="${1:-run}"
# name spec micro-batch flags...
CASES=(
  "gpt2-124m none 64 --recompute none"
  "gpt2-124m selective 64 --recompute selective"
  "gpt2-124m attn-act 64 --recompute selective --recompute-modules=core_attn,activation"
  "gpt2-124m full 64 --recompute full"
  "gpt-1.3b none 8 --recompute none"
  "gpt-1.3b selective 8 --recompute selective"
  "gpt-1.3b attn-act 8 --recompute selective --recompute-modules=core_attn,activation"
  "gpt-1.3b full 8 --recompute full"
  "gpt-1.3b auto-mb32 32 --recompute auto --memory-budget 0.9"
  "llama-1b none 8 --recompute none"
  "llama-1b selective 8 --recompute selective"
  "llama-1b full 8 --recompute full"
)

if [ "$MODE" = prepare ]; then
  set -e
  BIN="${MTC_BUILD_DIR:-build}/bin"
  [ -f "$D/lib.tar.xz" ] || bash bench/prepare_gpu.sh
  rm -rf "$D"/rc-* "$D/rc-progs.tar.xz"
  for c in "${CASES[@]}"; do
    read -r model policy mb flags <<< "$c"
    dir="$D/rc-$model-$policy"
    # shellcheck disable=SC2086
    "$BIN/mtc" compile "examples/$model.json" --target cuda --micro-batch-size "$mb" \
      --global-batch-size "$mb" $flags -o "$dir" > "$D/rc-compile-$model-$policy.log" 2>&1 ||
      { echo "compile $model $policy failed:"; tail -5 "$D/rc-compile-$model-$policy.log"; exit 1; }
    rm -rf "$dir/build" "$dir/program.cpp" "$dir/train.mlir"
  done
  tar -cJf "$D/rc-progs.tar.xz" -C "$D" $(cd "$D" && ls -d rc-*-* | grep -v '\.log$') &&
    rm -rf $(ls -d "$D"/rc-*-* | grep -v '\.log$\|\.tar\.xz$')
  du -sh "$D"
  exit 0
fi

OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
[ -f "$D/lib.tar.xz" ] && mkdir -p /tmp/mtc-lib && tar -xJf "$D/lib.tar.xz" -C /tmp/mtc-lib
tar -xJf "$D/rc-progs.tar.xz" -C "$D"
export LD_LIBRARY_PATH="/tmp/mtc-lib/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0
S="$OUT/recompute.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$S"
python3 -c "
import numpy as np; np.random.seed(0)
np.random.randint(0, 50257, size=64*1025*60, dtype=np.uint16).tofile('/tmp/mtc-random.tokens')"
printf '%-10s %-11s %9s %11s %12s %12s %7s\n' model policy ms/step tokens/s measured planned ratio | tee -a "$S"
shift || true
for c in "${CASES[@]}"; do
  read -r model policy mb flags <<< "$c"
  if [ $# -gt 0 ] && [[ " $* " != *" $model-$policy "* ]]; then continue; fi
  dir="$D/rc-$model-$policy" log="$OUT/rc-$model-$policy.log"
  "$dir/train" --data /tmp/mtc-random.tokens --split 100,0 --steps 15 --log-interval 1 \
    --metrics "$OUT/rc-$model-$policy.jsonl" > "$log" 2>&1 ||
    { echo "$model $policy FAILED: $(tail -3 "$log")" | tee -a "$S"; continue; }
  python3 - "$model" "$policy" "$OUT/rc-$model-$policy.jsonl" "$log" "$dir/plan.json" <<'PY' | tee -a "$S"
import json, re, statistics, sys
model, policy, metrics, log, plan = sys.argv[1:6]
rows = [json.loads(l) for l in open(metrics)]
def unit(text):
    n, u = text.split()
    return float(n) * 1024 ** ["B", "KiB", "MiB", "GiB", "TiB"].index(u)
m = re.search(r"measured peak ([0-9.]+ \w+) in use", open(log).read())
measured = unit(m.group(1)) if m else float("nan")
planned = json.load(open(plan))["memory_bytes"]["peak"]
tps = statistics.median(r.get("tokens_per_s", 0) for r in rows[3:]) if len(rows) > 3 else 0
ms = 1e3 * statistics.median(r["step_time_s"] for r in rows[3:]) if len(rows) > 3 else float("nan")
print(f"{model:10s} {policy:11s} {ms:9.1f} {tps:11.0f} {measured/2**30:9.2f} GiB {planned/2**30:9.2f} GiB {measured/planned:7.3f}")
PY
done
