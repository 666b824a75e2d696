#!/usr/bin/env bash
# Mixture of experts on one GPU (issue #18): the MoE kernels' tests, the tiny
# MoE trained on the CUDA target against the host target, and mtc's 8-expert
# top-2 MoE on the 1.3B GPT's layers against PyTorch (bench/moe_bench.py:
# torch.compile, experts by torch._grouped_mm or by a loop) and against the
# dense base, all in one call.
#
# The models: examples/gpt-1.3b-moe.json and examples/gpt-1.3b.json with 8
# layers instead of 24 (hidden 2048, MLP 8192, sequence 2048, micro-batch
# 4): the 24-layer MoE has 6.96B parameters, whose fp32 weights, gradients
# and AdamW moments (16 bytes each, 111 GB) do not fit one GPU; at 8 layers
# it has 2.39B (0.77B active per token, the tied embedding included).
#   bench/moe_gpu.sh prepare   here (mtc and nvcc, no GPU): the programs into
#       .devrun/prog-* (bench/prepare_gpu.sh first unless .devrun/lib.tar.xz
#       exists), the kernel tests, the baseline script
#   bench/moe_gpu.sh run       on the GPU machine; writes $OUT (or ./gpu-out)/
#       moe.txt (the summary) and the logs
#   bench/moe_gpu.sh run2      on the GPU machine: check2 then accum:
#       check2: tiny-moe twice (determinism) and under compute-sanitizer
#       (memcheck, racecheck); accum: the 8-layer models with 4 microbatches
#       a step, mtc and PyTorch
set -uo pipefail
cd "$(dirname "$0")/.."
D=.devrun
MODE="${1:-run}"
LAYERS=8

if [ "$MODE" = prepare ]; then
  set -e
  BUILD="${MTC_BUILD_DIR:-build}"
  BIN="$BUILD/bin"
  [ -f "$D/lib.tar.xz" ] || bash bench/prepare_gpu.sh
  cmake --build "$BUILD" --target mtc mtc-cuda-tests mtc_runtime_cuda
  cp "$BIN/mtc-cuda-tests" "$D/" && strip "$D/mtc-cuda-tests"
  mkdir -p "$D/bench" "$D/specs"
  for m in gpt-1.3b-moe gpt-1.3b; do
    python3 -c "
import json, sys
s = json.load(open('examples/$m.json'))
s['model'].update(name='$m-${LAYERS}l', num_layers=$LAYERS)
json.dump(s, open('$D/specs/$m-${LAYERS}l.json', 'w'), indent=2)"
  done
  compile() {  # name spec target flags...
    local name=$1 spec=$2 target=$3; shift 3
    rm -rf "$D/prog-$name"
    "$BIN/mtc" compile "$spec" --target "$target" -o "$D/prog-$name" "$@" > "$D/compile-$name.log"
    rm -rf "$D/prog-$name/build" "$D/prog-$name/program.cpp" "$D/prog-$name/train.mlir"
    strip "$D/prog-$name/train"
  }
  compile moe-${LAYERS}l "$D/specs/gpt-1.3b-moe-${LAYERS}l.json" cuda --micro-batch-size 4 --global-batch-size 4
  compile dense-${LAYERS}l "$D/specs/gpt-1.3b-${LAYERS}l.json" cuda --micro-batch-size 4 --global-batch-size 4
  # Four microbatches a step (the optimizer's share of a step as in real
  # training, where it is amortized over many microbatches).
  compile moe-${LAYERS}l-gb16 "$D/specs/gpt-1.3b-moe-${LAYERS}l.json" cuda --micro-batch-size 4 --global-batch-size 16
  compile dense-${LAYERS}l-gb16 "$D/specs/gpt-1.3b-${LAYERS}l.json" cuda --micro-batch-size 4 --global-batch-size 16
  compile tiny-moe-cuda examples/tiny-moe.json cuda
  compile tiny-moe-host examples/tiny-moe.json host
  cp bench/moe_bench.py "$D/bench/"
  # The programs share most of their bytes: one archive (the carry limit).
  progs="prog-moe-${LAYERS}l prog-dense-${LAYERS}l prog-moe-${LAYERS}l-gb16 prog-dense-${LAYERS}l-gb16 prog-tiny-moe-cuda prog-tiny-moe-host"
  tar -cJf "$D/moe-progs.tar.xz" -C "$D" $progs
  (cd "$D" && rm -rf $progs)
  du -sh "$D"
  exit 0
fi

OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
[ -f "$D/lib.tar.xz" ] && mkdir -p /tmp/mtc-lib && tar -xJf "$D/lib.tar.xz" -C /tmp/mtc-lib
[ -f "$D/moe-progs.tar.xz" ] && tar -xJf "$D/moe-progs.tar.xz" -C "$D"
export LD_LIBRARY_PATH="/tmp/mtc-lib/lib:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
S="$OUT/moe${MODE#run}.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$S"
[ -f /tmp/mtc-random.tokens ] || python3 -c "
import numpy as np; np.random.seed(0)
np.random.randint(0, 50257, size=64*1025*60, dtype=np.uint16).tofile('/tmp/mtc-random.tokens')"

# Median tokens/s of a metrics file after its fourth step, and the peaks.
mtc_rate() {  # label jsonl log
  python3 - "$2" "$3" "$1" <<'PY' | tee -a "$S"
import json, re, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tps = statistics.median(r["tokens_per_s"] for r in rows[4:])
log = open(sys.argv[2]).read()
peak = re.search(r"measured peak ([0-9.]+ \w+) in use", log)
print(f"MTC {sys.argv[3]} tokens_per_s {tps:.0f} loss {rows[-1]['loss']:.4f}"
      + (f" measured_peak {peak.group(1).replace(' ', '')}" if peak else "")
      + " step_ms " + " ".join(f"{r['step_time_s'] * 1e3:.0f}" for r in rows))
PY
}

if [ "$MODE" = run2 ] || [ "$MODE" = check2 ]; then
  # (a) tiny-moe on the CUDA target twice (is a run deterministic?), then
  #     under compute-sanitizer: memcheck over 30 steps, racecheck (shared
  #     memory) over 3.
  for r in 1 2; do
    "$D/prog-tiny-moe-cuda/train" --data "$D/data/fortunes" --steps 60 --log-interval 10 \
      --metrics "$OUT/tiny-moe-cuda-$r.jsonl" > "$OUT/tiny-moe-cuda-$r.log" 2>&1
  done
  python3 - "$OUT/tiny-moe-cuda-1.jsonl" "$OUT/tiny-moe-cuda-2.jsonl" <<'PY' | tee -a "$S"
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(p)] for p in sys.argv[1:3])
same = sum(x == y for x, y in zip(a, b))
print(f"tiny-moe cuda run 1 vs run 2: {same} of {len(a)} step losses identical; "
      f"largest difference {max(abs(x - y) for x, y in zip(a, b)):.6f}; "
      f"steps with loss > 5 after step 10: run 1 {[i + 1 for i, x in enumerate(a) if i >= 10 and x > 5]}, "
      f"run 2 {[i + 1 for i, x in enumerate(b) if i >= 10 and x > 5]}")
PY
  CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [ -n "$CS" ]; then
    timeout 150 "$CS" --tool memcheck --print-limit 20 "$D/prog-tiny-moe-cuda/train" \
      --data "$D/data/fortunes" --steps 30 --log-interval 10 > "$OUT/memcheck.log" 2>&1
    echo "memcheck 30 steps: exit $?, $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log")" | tee -a "$S"
    timeout 100 "$CS" --tool racecheck --print-limit 20 "$D/prog-tiny-moe-cuda/train" \
      --data "$D/data/fortunes" --steps 3 --log-interval 1 > "$OUT/racecheck.log" 2>&1
    echo "racecheck 3 steps: exit $?, $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$OUT/racecheck.log")" | tee -a "$S"
  else
    echo "compute-sanitizer not found" | tee -a "$S"
  fi
fi
if [ "$MODE" = run2 ] || [ "$MODE" = accum ]; then
  # (b) Four microbatches a step: mtc MoE and dense, PyTorch grouped MoE and
  #     dense with the same accumulation.
  for m in moe dense; do
    "$D/prog-$m-${LAYERS}l-gb16/train" --data /tmp/mtc-random.tokens --split 100,0 --steps 10 \
      --log-interval 1 --metrics "$OUT/mtc-$m-gb16.jsonl" > "$OUT/mtc-$m-gb16.log" 2>&1 ||
      echo "mtc $m gb16 FAILED: $(tail -3 "$OUT/mtc-$m-gb16.log")" | tee -a "$S"
    mtc_rate "$m-gb16" "$OUT/mtc-$m-gb16.jsonl" "$OUT/mtc-$m-gb16.log"
  done
  for cfg in "dense:0" "moe-grouped:1"; do
    IFS=: read -r name moe <<< "$cfg"
    timeout 150 python3 "$D/bench/moe_bench.py" --moe "$moe" --experts grouped --layers "$LAYERS" \
      --batch 4 --accum 4 --iters 8 --compile 1 > "$OUT/torch-$name-gb16.log" 2>&1
    grep BENCH_RESULT "$OUT/torch-$name-gb16.log" | tee -a "$S" ||
      echo "torch $name gb16: $(tail -3 "$OUT/torch-$name-gb16.log")" | tee -a "$S"
  done
  python3 "$D/bench/moe_bench.py" --summary "$S" --suffix=-gb16 --layers "$LAYERS" | tee -a "$S"
fi
case "$MODE" in run2|check2|accum) exit 0 ;; esac

# 1. The kernels against the host kernels (and the GEMM / elementwise ones
#    the MoE path calls).
timeout 150 "$D/mtc-cuda-tests" --gtest_filter='CudaMoe.*:CudaGemm.*:CudaElementwise.*' \
  > "$OUT/cuda-tests.log" 2>&1
echo "cuda tests (CudaMoe, CudaGemm, CudaElementwise): exit $?, $(grep -E '^\[  (PASSED|FAILED)' "$OUT/cuda-tests.log" | tr '\n' ' ')" | tee -a "$S"
grep -E "FAIL" "$OUT/cuda-tests.log" | head -10 | tee -a "$S"

# 2. tiny-moe, 60 steps on the fortunes data: CUDA (bf16) against the host
#    target (fp32, the reference math), the same seed and data.
for t in host cuda; do
  "$D/prog-tiny-moe-$t/train" --data "$D/data/fortunes" --steps 60 --log-interval 10 \
    --metrics "$OUT/tiny-moe-$t.jsonl" > "$OUT/tiny-moe-$t.log" 2>&1 ||
    echo "tiny-moe $t FAILED: $(tail -3 "$OUT/tiny-moe-$t.log")" | tee -a "$S"
done
python3 - "$OUT/tiny-moe-host.jsonl" "$OUT/tiny-moe-cuda.jsonl" <<'PY' | tee -a "$S"
import json, sys
h, c = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
pairs = [(a["step"], a["loss"], b["loss"]) for a, b in zip(h, c)]
print("tiny-moe loss host / cuda: " + ", ".join(f"step {s}: {x:.4f} / {y:.4f}" for s, x, y in pairs))
worst = max(abs(y - x) / abs(x) for _, x, y in pairs)
print(f"tiny-moe largest relative loss difference cuda vs host: {worst:.4f}")
PY

# 3. Throughput: mtc MoE and dense, then PyTorch.
for m in moe dense; do
  "$D/prog-$m-${LAYERS}l/train" --data /tmp/mtc-random.tokens --split 100,0 --steps 14 \
    --log-interval 1 --metrics "$OUT/mtc-$m.jsonl" > "$OUT/mtc-$m.log" 2>&1 ||
    echo "mtc $m FAILED: $(tail -3 "$OUT/mtc-$m.log")" | tee -a "$S"
  mtc_rate "$m" "$OUT/mtc-$m.jsonl" "$OUT/mtc-$m.log"
  grep -E "plan peak|measured peak" "$OUT/mtc-$m.log" | head -2 | tee -a "$S"
done
for cfg in "dense:0:grouped" "moe-grouped:1:grouped" "moe-loop:1:loop"; do
  IFS=: read -r name moe experts <<< "$cfg"
  timeout 200 python3 "$D/bench/moe_bench.py" --moe "$moe" --experts "$experts" \
    --layers "$LAYERS" --batch 4 --compile 1 > "$OUT/torch-$name.log" 2>&1
  grep BENCH_RESULT "$OUT/torch-$name.log" | tee -a "$S" ||
    echo "torch $name: $(tail -3 "$OUT/torch-$name.log")" | tee -a "$S"
done
python3 "$D/bench/moe_bench.py" --summary "$S" --layers "$LAYERS" | tee -a "$S"
