#!/usr/bin/env bash
# Runs on a machine with 2 GPUs (device tool, kind nvidia-h200-x2, .devrun
# carried; bench/prepare_gpu.sh with MTC_PREPARE_DP=1 builds what it needs):
# data parallelism on the CUDA target against the one-GPU run, and against
# PyTorch DDP (torch.compile) measured in the same run.
#   1. equivalence: the tiny GPT, dp = 2 vs one GPU on the same global
#      batches, 20 steps (bf16: loss curves within 0.05);
#   2. throughput: GPT-2 124M (64 x 1024 per GPU) and the 1.3B GPT (8 x 2048
#      per GPU), one GPU and dp = 2, mtc and PyTorch;
# Writes summary.txt and logs.tar.gz under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
D=.devrun
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
[ -f "$D/lib.tar.xz" ] && mkdir -p /tmp/mtc-lib && tar -xJf "$D/lib.tar.xz" -C /tmp/mtc-lib
[ -f "$D/progs.tar.xz" ] && tar -xJf "$D/progs.tar.xz" -C "$D"
export LD_LIBRARY_PATH="/tmp/mtc-lib/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
say() { echo "$*" | tee -a "$SUMMARY"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$SUMMARY"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
LAUNCH="$D/bin/mtc-launch"

say "== NCCL program communicator (2 GPUs, one process)"
"$D/mtc-cuda-tests" --gtest_filter='Nccl*' > "$OUT/nccl-test.log" 2>&1
say "$(grep -E '^\[  (PASSED|FAILED|SKIPPED)' "$OUT/nccl-test.log")"

say "== equivalence: tiny GPT, dp=2 vs 1 GPU, same global batches, 20 steps"
"$D/prog-tiny-cuda-gb16/train" --data "$D/data/fortunes" --steps 20 --metrics "$OUT/tiny-1.jsonl" > "$OUT/tiny-1.log" 2>&1 || say "tiny 1 GPU FAILED: $(tail -3 "$OUT/tiny-1.log")"
timeout 120 "$LAUNCH" -n 2 "$D/prog-tiny-cuda-dp2/train" --data "$D/data/fortunes" --steps 20 --metrics "$OUT/tiny-2.jsonl" > "$OUT/tiny-2.log" 2>&1 || say "tiny dp=2 FAILED: $(tail -5 "$OUT/tiny-2.log")"
python3 - "$OUT/tiny-1.jsonl" "$OUT/tiny-2.jsonl" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1])]
b = [json.loads(l)["loss"] for l in open(sys.argv[2])]
d = [abs(x - y) for x, y in zip(a, b)]
print(f"steps {len(d)}: 1 GPU {a[0]:.4f}->{a[-1]:.4f}, dp=2 {b[0]:.4f}->{b[-1]:.4f}, max |diff| {max(d):.4f}")
print("loss curves " + ("AGREE (max diff < 0.05)" if len(d) == 20 and max(d) < 0.05 else "DIFFER"))
PY

python3 "$D/bench/env_gemm.py" > "$OUT/gemm.log" 2>&1
PEAK=$(python3 -c "import json
for l in open('$OUT/gemm.log'):
    if l.startswith('GEMM_RESULT'): print(round(json.loads(l.split(' ',1)[1])['median_tflops'],1))")
PEAK=${PEAK:-780}
say "peak bf16 GEMM (GPU 0): $PEAK TFLOP/s"
python3 -c "
import numpy as np; np.random.seed(0)
np.random.randint(0, 50257, size=2*64*1025*40, dtype=np.uint16).tofile('/tmp/mtc-random.tokens')"
export MTC_PEAK_TFLOPS=$PEAK
for m in gpt2-124m:20 gpt-1.3b:15; do
  IFS=: read -r name steps <<< "$m"
  "$D/prog-$name/train" --data /tmp/mtc-random.tokens --split 100,0 --steps "$steps" \
    --log-interval 5 --metrics "$OUT/mtc-$name-1.jsonl" > "$OUT/mtc-$name-1.log" 2>&1 || say "mtc $name 1 GPU FAILED: $(tail -3 "$OUT/mtc-$name-1.log")"
  timeout 180 "$LAUNCH" -n 2 "$D/prog-$name-dp2/train" --data /tmp/mtc-random.tokens --split 100,0 --steps "$steps" \
    --log-interval 5 --metrics "$OUT/mtc-$name-2.jsonl" > "$OUT/mtc-$name-2.log" 2>&1 || say "mtc $name dp=2 FAILED: $(tail -5 "$OUT/mtc-$name-2.log")"
done
for m in 124m:64 1.3b:8; do
  IFS=: read -r size batch <<< "$m"
  timeout 200 torchrun --nproc_per_node 1 "$D/bench/gpt_ddp.py" --size "$size" --batch "$batch" --peak "$PEAK" > "$OUT/torch-$size-1.log" 2>&1
  timeout 240 torchrun --nproc_per_node 2 "$D/bench/gpt_ddp.py" --size "$size" --batch "$batch" --peak "$PEAK" > "$OUT/torch-$size-2.log" 2>&1
done
python3 - "$OUT" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, os, statistics, sys
out = sys.argv[1]
def mtc(name, n):
    try:
        rows = [json.loads(l) for l in open(os.path.join(out, f"mtc-{name}-{n}.jsonl"))]
        return statistics.median(r["tokens_per_s"] for r in rows[5:]) / n
    except Exception as e:
        return None
def torch(size, n):
    try:
        for l in open(os.path.join(out, f"torch-{size}-{n}.log")):
            if l.startswith("DDP_RESULT"):
                r = json.loads(l.split(" ", 1)[1])
                return r.get("tokens_per_s_per_gpu") or r["tokens_per_s"] / n
    except Exception:
        pass
    return None
for name, size in (("gpt2-124m", "124m"), ("gpt-1.3b", "1.3b")):
    m1, m2, t1, t2 = mtc(name, 1), mtc(name, 2), torch(size, 1), torch(size, 2)
    f = lambda x: "n/a" if x is None else f"{x:,.0f}"
    eff = lambda a, b: "n/a" if not a or not b else f"{100*b/a:.1f}%"
    print(f"{name}: tokens/s per GPU: mtc 1 GPU {f(m1)}, dp=2 {f(m2)} (efficiency {eff(m1, m2)}); "
          f"PyTorch 1 GPU {f(t1)}, DDP 2 {f(t2)} (efficiency {eff(t1, t2)}); "
          f"mtc dp=2 / PyTorch DDP {('n/a' if not m2 or not t2 else f'{m2/t2:.3f}')}")
PY
tar -czf "$OUT/logs.tar.gz" --exclude=logs.tar.gz -C "$OUT" .
cat "$SUMMARY"
