#!/usr/bin/env bash
# Llama-1B on one GPU (issue #19): mtc's CUDA program against two PyTorch
# baselines in the same call, at examples/llama-1b.json's micro-batch 4 x
# 2048: bench/llama_bench.py's own Llama and transformers'
# LlamaForCausalLM, both under torch.compile (SDPA with grouped KV heads,
# fused AdamW, bf16 autocast).
#   bench/llama_gpu.sh prepare   here (needs mtc and nvcc, no GPU): compiles
#       llama-1b for CUDA into .devrun/prog-llama-1b (bench/prepare_gpu.sh
#       first unless .devrun/lib.tar.xz exists) and copies the baseline
#   bench/llama_gpu.sh run       on the GPU machine: mtc 20 steps (tokens/s:
#       median of the logged intervals after the fifth; its measured and
#       planned peak memory), then each baseline; writes $OUT (or ./gpu-out)/
#       llama.txt and the logs
set -uo pipefail
cd "$(dirname "$0")/.."
D=.devrun
MODE="${1:-run}"

if [ "$MODE" = prepare ]; then
  set -e
  BIN="${MTC_BUILD_DIR:-build}/bin"
  [ -f "$D/lib.tar.xz" ] || bash bench/prepare_gpu.sh
  rm -rf "$D/prog-llama-1b"
  "$BIN/mtc" compile examples/llama-1b.json --target cuda --micro-batch-size 4 \
    --global-batch-size 4 -o "$D/prog-llama-1b" > "$D/compile-llama-1b.log"
  rm -rf "$D/prog-llama-1b/build" "$D/prog-llama-1b/program.cpp" "$D/prog-llama-1b/train.mlir"
  mkdir -p "$D/bench" && cp bench/llama_bench.py "$D/bench/"
  du -sh "$D"
  exit 0
fi

OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
[ -f "$D/lib.tar.xz" ] && mkdir -p /tmp/mtc-lib && tar -xJf "$D/lib.tar.xz" -C /tmp/mtc-lib
export LD_LIBRARY_PATH="/tmp/mtc-lib/lib:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
S="$OUT/llama.txt"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$S"
[ -f /tmp/mtc-random.tokens ] || python3 -c "
import numpy as np; np.random.seed(0)
np.random.randint(0, 50257, size=64*1025*60, dtype=np.uint16).tofile('/tmp/mtc-random.tokens')"
"$D/prog-llama-1b/train" --data /tmp/mtc-random.tokens --split 100,0 --steps 20 --log-interval 1 \
  --metrics "$OUT/mtc-llama.jsonl" > "$OUT/mtc-llama.log" 2>&1 ||
  echo "mtc llama-1b FAILED: $(tail -3 "$OUT/mtc-llama.log")" | tee -a "$S"
python3 - "$OUT/mtc-llama.jsonl" "$OUT/mtc-llama.log" <<'PY' | tee -a "$S"
import json, re, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tps = statistics.median(r["tokens_per_s"] for r in rows[5:])
log = open(sys.argv[2]).read()
peak = re.search(r"measured peak ([0-9.]+ \w+) in use", log)
mfu = [r.get("mfu") for r in rows[5:] if r.get("mfu") is not None]
print(f"mtc llama-1b B=4: {tps:,.0f} tokens/s"
      + (f", MFU {statistics.median(mfu):.3f}" if mfu else "")
      + (f", measured peak {peak.group(1)}" if peak else ""))
PY
grep -E "plan peak|measured peak|attention" "$OUT/mtc-llama.log" | head -5 | tee -a "$S"
for impl in own hf; do
  timeout 240 python3 "$D/bench/llama_bench.py" --impl "$impl" --compile 1 --batch 4 \
    > "$OUT/torch-llama-$impl.log" 2>&1
  grep BENCH_RESULT "$OUT/torch-llama-$impl.log" | tee -a "$S" ||
    echo "torch $impl: $(tail -3 "$OUT/torch-llama-$impl.log")" | tee -a "$S"
done
python3 - "$S" <<'PY' | tee -a "$S"
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"mtc llama-1b B=4: ([0-9,]+) tokens/s", text)
base = {json.loads(l.split(" ", 1)[1]).get("system"): json.loads(l.split(" ", 1)[1]).get("tokens_per_s")
        for l in text.splitlines() if l.startswith("BENCH_RESULT")}
if m:
    mtc = float(m.group(1).replace(",", ""))
    for k, v in base.items():
        if v: print(f"mtc / {k}: {mtc / v:.3f}")
PY
