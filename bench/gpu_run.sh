#!/usr/bin/env bash
# Runs on the GPU machine (device tool, with .devrun carried; see
# bench/prepare_gpu.sh): kernel tests, host-vs-CUDA loss curves, one step
# under compute-sanitizer, per-kernel timings, and the benchmark of mtc
# against PyTorch (torch.compile) and the GEMM ceiling in the same run.
# Writes logs and a summary under $OUT (or ./gpu-out).
#   gpu_run.sh [all|check|bench|compare]
# compare (needs MTC_OLD_MTC at prepare time): each benchmark model's old
# and new programs interleaved (old, new, old, new), then the kernel tests,
# the tiny GPT and tiny Nemotron (squared ReLU) host-vs-CUDA curves, and
# torch.compile once per model: new/old tokens/s per pair.
set -uo pipefail
cd "$(dirname "$0")/.."
D=.devrun
OUT="${OUT:-gpu-out}"
rm -f "$OUT/random.tokens"
mkdir -p "$OUT"
[ -f "$D/lib.tar.xz" ] && mkdir -p /tmp/mtc-lib && tar -xJf "$D/lib.tar.xz" -C /tmp/mtc-lib
[ -f "$D/progs.tar.xz" ] && tar -xJf "$D/progs.tar.xz" -C "$D"
export LD_LIBRARY_PATH="/tmp/mtc-lib/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
WHAT="${1:-all}"
SUMMARY="$OUT/summary.txt"
say() { echo "$*" | tee -a "$SUMMARY"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$SUMMARY"

# Loss curves of two runs' metrics files: max and mean |difference|.
compare_curves() {  # label host.jsonl cuda.jsonl
  python3 - "$@" <<'PY' | tee -a "$SUMMARY"
import json, sys
label, a, b = sys.argv[1:4]
h = [json.loads(l)["loss"] for l in open(a)]
c = [json.loads(l)["loss"] for l in open(b)]
d = [abs(x - y) for x, y in zip(h, c)]
print(f"{label}: steps {len(d)}: host {h[0]:.4f}->{h[-1]:.4f}, cuda {c[0]:.4f}->{c[-1]:.4f}, "
      f"max |diff| {max(d):.4f}, mean |diff| {sum(d)/len(d):.4f}; "
      + ("AGREE (max diff < 0.05)" if max(d) < 0.05 else "DIFFER"))
PY
}

# compare: new/old tokens/s of each interleaved pair (and against
# torch.compile once its log exists).
ratios() {
  python3 - "$OUT" <<'PY' | tee -a "$SUMMARY"
import json, statistics, sys, os
out = sys.argv[1]
def tps(f):
    rows = [json.loads(l) for l in open(os.path.join(out, f))]
    return statistics.median(r["tokens_per_s"] for r in rows[5:])
for name, size in (("gpt2-124m", "124m"), ("gpt-1.3b", "1.3b")):
    try:
        o = [tps(f"old{k}-{name}.jsonl") for k in (1, 2)]
        n = [tps(f"new{k}-{name}.jsonl") for k in (1, 2)]
    except Exception as e:
        print(f"{name}: missing result ({e})"); continue
    torch = None
    path = os.path.join(out, f"torch-{size}.log")
    for l in open(path) if os.path.exists(path) else []:
        if l.startswith("BENCH_RESULT"):
            torch = json.loads(l.split(" ", 1)[1])["tokens_per_s"]
    pairs = ", ".join(f"{b/a:.4f}" for a, b in zip(o, n))
    line = (f"{name}: old {o[0]:,.0f} / {o[1]:,.0f} tok/s, new {n[0]:,.0f} / {n[1]:,.0f} tok/s; "
            f"new/old per pair {pairs}; medians {statistics.median(n)/statistics.median(o):.4f}")
    if torch:
        line += f" | torch.compile {torch:,.0f} tok/s, new/torch {statistics.median(n)/torch:.3f}"
    print(line)
PY
}

if [ "$WHAT" = compare ]; then
  python3 -c "
import numpy as np; np.random.seed(0)
np.random.randint(0, 50257, size=64*1025*60, dtype=np.uint16).tofile('/tmp/mtc-random.tokens')"
  for m in gpt2-124m:30 gpt-1.3b:20; do
    IFS=: read -r name steps <<< "$m"
    for run in old:1 new:1 old:2 new:2; do
      IFS=: read -r which k <<< "$run"
      p="$D/prog-$name"; [ "$which" = old ] && p="$D/prog-$name-old"
      "$p/train" --data /tmp/mtc-random.tokens --split 100,0 --steps "$steps" --log-interval 5 \
        --metrics "$OUT/$which$k-$name.jsonl" > "$OUT/$which$k-$name.log" 2>&1 \
        || say "$which $name FAILED: $(tail -5 "$OUT/$which$k-$name.log")"
    done
  done
  ratios
  say "== kernel tests"
  "$D/mtc-cuda-tests" > "$OUT/cuda-tests.log" 2>&1
  say "$(grep -E '^\[  (PASSED|FAILED)' "$OUT/cuda-tests.log")"
  grep -E '^\[  FAILED' "$OUT/cuda-tests.log" | tee -a "$SUMMARY"
  say "== host (fp32) vs CUDA (bf16), 50 steps, same seed and data"
  for m in tiny tiny-nemotron; do
    for t in host cuda; do
      "$D/prog-$m-$t/train" --data "$D/data/fortunes" --steps 50 --log-interval 10 \
        --metrics "$OUT/$m-$t.jsonl" > "$OUT/$m-$t.log" 2>&1 || say "$m-$t FAILED: $(tail -3 "$OUT/$m-$t.log")"
    done
    compare_curves "$m" "$OUT/$m-host.jsonl" "$OUT/$m-cuda.jsonl"
  done
  for m in 124m:64 1.3b:8; do
    IFS=: read -r size batch <<< "$m"
    timeout 200 python3 "$D/bench/gpt_bench.py" --size "$size" --compile 1 --batch "$batch" \
      > "$OUT/torch-$size.log" 2>&1
    grep BENCH_RESULT "$OUT/torch-$size.log" | tee -a "$SUMMARY" || say "torch $size: $(tail -3 "$OUT/torch-$size.log")"
  done
  ratios
fi

if [ "$WHAT" = all ] || [ "$WHAT" = check ]; then
  say "== kernel tests"
  "$D/mtc-cuda-tests" > "$OUT/cuda-tests.log" 2>&1
  say "$(grep -E '^\[  (PASSED|FAILED)' "$OUT/cuda-tests.log")"
  say "== host (fp32) vs CUDA (bf16): tiny GPT, 50 steps, same seed and data"
  for t in host cuda; do
    "$D/prog-tiny-$t/train" --data "$D/data/fortunes" --steps 50 --log-interval 10 \
      --metrics "$OUT/tiny-$t.jsonl" > "$OUT/tiny-$t.log" 2>&1 || say "tiny-$t FAILED: $(tail -3 "$OUT/tiny-$t.log")"
  done
  python3 - "$OUT/tiny-host.jsonl" "$OUT/tiny-cuda.jsonl" <<'PY' | tee -a "$SUMMARY"
import json, sys
h = [json.loads(l)["loss"] for l in open(sys.argv[1])]
c = [json.loads(l)["loss"] for l in open(sys.argv[2])]
d = [abs(a - b) for a, b in zip(h, c)]
print(f"steps {len(d)}: host {h[0]:.4f}->{h[-1]:.4f}, cuda {c[0]:.4f}->{c[-1]:.4f}, "
      f"max |diff| {max(d):.4f}, mean |diff| {sum(d)/len(d):.4f}")
print("loss curves " + ("AGREE (max diff < 0.05)" if max(d) < 0.05 else "DIFFER"))
PY
  say "== compute-sanitizer memcheck, 2 steps"
  compute-sanitizer --tool memcheck --error-exitcode 9 "$D/prog-tiny-cuda/train" \
    --data "$D/data/fortunes" --steps 2 > "$OUT/sanitizer.log" 2>&1
  say "sanitizer exit $? : $(grep -E 'ERROR SUMMARY' "$OUT/sanitizer.log" | tail -1)"
fi

if [ "$WHAT" = all ] || [ "$WHAT" = bench ]; then
  say "== GEMM ceiling"
  python3 "$D/bench/env_gemm.py" > "$OUT/gemm.log" 2>&1
  PEAK=$(python3 -c "import json,sys
for l in open('$OUT/gemm.log'):
    if l.startswith('GEMM_RESULT'): print(round(json.loads(l.split(' ',1)[1])['median_tflops'],1))")
  PEAK=${PEAK:-781}
  say "peak bf16 GEMM: $PEAK TFLOP/s"
  python3 -c "
import numpy as np; np.random.seed(0)
np.random.randint(0, 50257, size=64*1025*60, dtype=np.uint16).tofile('/tmp/mtc-random.tokens')"
  export MTC_PEAK_TFLOPS=$PEAK
  for m in gpt2-124m:64x1024:30 gpt-1.3b:8x2048:20; do
    IFS=: read -r name shape steps <<< "$m"
    say "== mtc $name ($shape), $steps steps"
    "$D/prog-$name/train" --data /tmp/mtc-random.tokens --split 100,0 --steps "$steps" \
      --log-interval 5 --metrics "$OUT/mtc-$name.jsonl" > "$OUT/mtc-$name.log" 2>&1 \
      || say "mtc $name FAILED: $(tail -5 "$OUT/mtc-$name.log")"
    tail -2 "$OUT/mtc-$name.log" | tee -a "$SUMMARY"
  done
  for m in 124m:64 1.3b:8; do
    IFS=: read -r size batch <<< "$m"
    say "== PyTorch compile $size batch $batch"
    timeout 300 python3 "$D/bench/gpt_bench.py" --size "$size" --compile 1 --batch "$batch" \
      --peak "$PEAK" > "$OUT/torch-$size.log" 2>&1
    grep BENCH_RESULT "$OUT/torch-$size.log" | tee -a "$SUMMARY" || say "torch $size: $(tail -3 "$OUT/torch-$size.log")"
  done
  python3 - "$OUT" "$PEAK" <<'PY' | tee -a "$SUMMARY"
import json, statistics, sys, os
out, peak = sys.argv[1], float(sys.argv[2])
# FLOPs per token as gpt_bench.py counts them: 6 N + 12 L d T, N without the
# position table, the tied embedding counted once.
models = {"gpt2-124m": (12, 768, 1024, "124m"), "gpt-1.3b": (24, 2048, 2048, "1.3b")}
for name, (L, d, T, size) in models.items():
    N = 50304 * d + L * (12 * d * d + 13 * d) + 2 * d
    fpt = 6 * N + 12 * L * d * T
    try:
        rows = [json.loads(l) for l in open(os.path.join(out, f"mtc-{name}.jsonl"))]
        tps = statistics.median(r["tokens_per_s"] for r in rows[5:])
    except Exception as e:
        print(f"{name}: no mtc result ({e})"); continue
    torch = None
    for l in open(os.path.join(out, f"torch-{size}.log")):
        if l.startswith("BENCH_RESULT"):
            torch = json.loads(l.split(" ", 1)[1])
    mfu = tps * fpt / 1e12 / peak
    line = f"{name}: mtc {tps:,.0f} tok/s, {tps*fpt/1e12:.0f} TFLOP/s, MFU {100*mfu:.1f}%"
    if torch:
        line += (f" | torch.compile {torch['tokens_per_s']:,.0f} tok/s, MFU {100*torch['mfu']:.1f}%"
                 f" | ratio {tps/torch['tokens_per_s']:.3f}")
    print(line)
PY
  say "== per-kernel timings (1.3B shapes)"
  "$D/mtc-cuda-tests" --gtest_also_run_disabled_tests --gtest_filter='CudaTimings.*' > "$OUT/timings.log" 2>&1
  tail -40 "$OUT/timings.log" >> "$SUMMARY"
fi
# The device tool returns at most 8 files: the summary, and the logs in one archive.
tar -czf "$OUT/logs.tar.gz" --exclude=logs.tar.gz --exclude=random.tokens -C "$OUT" .
cat "$SUMMARY"
