#!/usr/bin/env bash
# Runs on a machine with 2 GPUs (device tool, kind nvidia-h200-x2, .devrun
# carried; MTC_PREPARE=parallel bench/prepare_gpu.sh builds what it needs):
# tensor, sequence and data parallelism and the distributed optimizer on the
# CUDA target.
#   bash bench/gpu_parallel_run.sh check   kernel and NCCL tests; the tiny GPT
#                                          under every plan against one GPU
#   bash bench/gpu_parallel_run.sh bench   throughput of GPT-2 124M and the
#                                          1.3B GPT: one GPU, dp = 2, dp = 2
#                                          with the distributed optimizer,
#                                          tp = 2 with and without sp;
#                                          PyTorch (one GPU and DDP) in the
#                                          same run
#   bash bench/gpu_parallel_run.sh all     both
#   bash bench/gpu_parallel_run.sh connsweep  1.3B at tp = 2 (and dp = 2) with
#                                          CUDA_DEVICE_MAX_CONNECTIONS=1
#   bash bench/gpu_parallel_run.sh tp      tp = 2 against one GPU (1.3B, 124M):
#                                          default, --delay-wgrad-compute=false,
#                                          --tp-lanes=one-stream, NCCL channel
#                                          limits; the tp = 2 profile
#   bash bench/gpu_parallel_run.sh check+tp  both
#   bash bench/gpu_parallel_run.sh peer    tp = 2 with the all-reduces through the
#                                          copy engines (the default program):
#                                          equivalence, then throughput against one GPU
#   bash bench/gpu_parallel_run.sh final   the defaults: tiny GPT tp = 2 against one GPU,
#                                          both models' tp = 2 (three times; also
#                                          --tp-lanes=one-stream, --tp-allreduce=nccl)
#                                          and dp = 2 against one
#                                          GPU, one GPU again at the end
#   bash bench/gpu_parallel_run.sh stagger the staggered lanes on two streams and on
#                                          one, the forward all-reduces adding the
#                                          residual: equivalence, then tp = 2 against
#                                          one GPU (1.3B, 124M) and a profile
#   bash bench/gpu_parallel_run.sh halfnorm the norms' backward on half the rows in
#                                          the tp all-reduces: equivalence, tp = 2 on
#                                          one and two streams against one GPU, profile
#   bash bench/gpu_parallel_run.sh tpcheck kernel tests and the tiny GPT's tp = 2, sp and
#                                          dp plans against one GPU (no benchmark)
#   bash bench/gpu_parallel_run.sh quick13 1.3B one GPU, tp = 2 twice, one GPU again
#   bash bench/gpu_parallel_run.sh bwdlanes the backward pass in half-batch lanes (the
#                                          default) against one backward lane:
#                                          equivalence, then 1.3B and 124M tp = 2
#   bash bench/gpu_parallel_run.sh headline the issue's comparison on the 1.3B GPT in one
#                                          call: one GPU, dp = 2, tp = 2 (twice), PyTorch
#                                          one GPU and DDP, one GPU again
#   bash bench/gpu_parallel_run.sh profile  MTC_PROFILE reports of the 1.3B GPT
#                                          (one GPU, tp = 2, tp = 2 + sp, dp = 2)
#                                          and NCCL's all-reduce bandwidth
# MTC_BENCH_MODELS="gpt2-124m" (or "gpt-1.3b") limits bench to one model so
# that each call of the device tool stays under its time limit;
# MTC_BENCH_TORCH=0 skips PyTorch.
# Equivalence is at bf16 tolerance: 20-step loss curves from the same seed
# and global batches within 0.05 of the one-GPU run (different reduction
# orders and bf16 rounding, not different math; the host target's CI tests
# check the math at 1e-5).
# Writes summary.txt and logs.tar.gz under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
D=.devrun
OUT="${OUT:-gpu-out}"
WHAT="${1:-all}"
mkdir -p "$OUT"
[ -f "$D/lib.tar.xz" ] && mkdir -p /tmp/mtc-lib && tar -xJf "$D/lib.tar.xz" -C /tmp/mtc-lib
[ -f "$D/progs.tar.xz" ] && tar -xJf "$D/progs.tar.xz" -C "$D"
export LD_LIBRARY_PATH="/tmp/mtc-lib/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
say() { echo "$*" | tee -a "$SUMMARY"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$SUMMARY"
LAUNCH="$D/bin/mtc-launch"
DATA="$D/data/fortunes"

# run NAME RANKS STEPS DATA [ENV...]: one training run, its metrics in
# $OUT/NAME.jsonl; a failure is reported with the log's tail.
run() {
  local name=$1 prog=$2 ranks=$3 steps=$4 data=$5; shift 5
  local extra=()
  [ "$data" != "$DATA" ] && extra=(--split 100,0)
  if [ "$ranks" = 1 ]; then
    env "$@" timeout "${RUN_TIMEOUT:-240}" "$D/prog-$prog/train" --data "$data" "${extra[@]}" --steps "$steps" \
      --log-interval 5 --metrics "$OUT/$name.jsonl" > "$OUT/$name.log" 2>&1
  else
    env "$@" timeout "${RUN_TIMEOUT:-240}" "$LAUNCH" -n "$ranks" "$D/prog-$prog/train" --data "$data" "${extra[@]}" \
      --steps "$steps" --log-interval 5 --metrics "$OUT/$name.jsonl" > "$OUT/$name.log" 2>&1
  fi || say "FAILED $name: $(tail -4 "$OUT/$name.log" | tr '\n' ' ')"
}

# compare REF=PLAN,PLAN ...: each plan's 20-step loss curve against its
# reference's, AGREE within 0.05 (bf16 tolerance).
compare() {
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

# finished NAME: the run wrote 20 steps of metrics (the tiny GPT's checks).
finished() { [ -f "$OUT/$1.jsonl" ] && [ "$(wc -l < "$OUT/$1.jsonl")" = 20 ]; }

check() {
  say "== kernel tests: tensor parallelism, optimizer, embedding, elementwise (dropout on slices), norms, NCCL (2 GPUs)"
  "$D/mtc-cuda-tests" --gtest_filter='CudaTensorParallel*:CudaOptimizer*:CudaEmbedding*:CudaElementwise*:CudaNorms*:Nccl*' > "$OUT/kernel-tests.log" 2>&1
  say "$(grep -E '^\[  (PASSED|FAILED) ' "$OUT/kernel-tests.log") $(grep -c '^\[  FAILED' "$OUT/kernel-tests.log") failed"
  say "== equivalence: tiny GPT, 20 steps, global batch 16, every plan vs one GPU"
  run tiny-gb16 tiny-gb16 1 20 "$DATA"
  run tiny-mb16 tiny-mb16 1 20 "$DATA"
  run tiny-host-mb16 tiny-host-mb16 1 20 "$DATA"
  run tiny-dp2 tiny-dp2 2 20 "$DATA"
  run tiny-dp2-zero tiny-dp2-zero 2 20 "$DATA"
  run tiny-tp2 tiny-tp2 2 20 "$DATA"
  run tiny-tp2-nolanes tiny-tp2-onestream 2 20 "$DATA"
  run tiny-tp2-sp tiny-tp2-sp 2 20 "$DATA"
  run tiny-drop-mb16 tiny-drop-mb16 1 20 "$DATA"
  run tiny-drop-gb16 tiny-drop-gb16 1 20 "$DATA"
  run tiny-drop-tp2-sp tiny-drop-tp2-sp 2 20 "$DATA"
  run tiny-drop-dp2 tiny-drop-dp2 2 20 "$DATA"
  compare tiny-host-mb16=tiny-mb16 tiny-gb16=tiny-dp2,tiny-dp2-zero \
    tiny-mb16=tiny-tp2,tiny-tp2-nolanes,tiny-tp2-sp tiny-drop-mb16=tiny-drop-tp2-sp \
    tiny-drop-gb16=tiny-drop-dp2
}

# Random GPT-2 token ids (enough for 40 steps of 2 x 64 x 1024), the
# benchmarks' data; prints the file's path.
random_tokens() {
  python3 -c "
import numpy as np; np.random.seed(0)
np.random.randint(0, 50257, size=2*64*1025*40, dtype=np.uint16).tofile('/tmp/mtc-random.tokens')"
  echo /tmp/mtc-random.tokens
}

# report "PLAN:GPUS_PER_BATCH ...": per-GPU throughput of each plan's runs
# against the one-GPU run of the same model (2: dp, each GPU its own batch;
# 1: tp, both GPUs on one batch), and PyTorch's when it ran.
report() {
  python3 - "$OUT" "$1" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, os, statistics, sys
out = sys.argv[1]
def step(name):
    """Median tokens/s (whole job) and step time of steps 6.., or None."""
    try:
        rows = [json.loads(l) for l in open(os.path.join(out, name + ".jsonl"))][5:]
        return (statistics.median(r["tokens_per_s"] for r in rows),
                statistics.median(r["step_time_s"] for r in rows))
    except Exception:
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
f = lambda x: "n/a" if x is None else f"{x:,.0f}"
for name, size in (("gpt2-124m", "124m"), ("gpt-1.3b", "1.3b")):
    one = step(f"{name}-1")
    if not one and not os.path.exists(os.path.join(out, f"{name}-1.log")):
        continue  # not run
    t1, t2 = torch(size, 1), torch(size, 2)
    print(f"{name}: one GPU {f(one and one[0])} tokens/s, step {one and one[1]*1e3:.1f} ms" if one else f"{name}: one GPU n/a")
    for plan, tokens_scale in ((p.split(":")[0], int(p.split(":")[1])) for p in sys.argv[2].split()):
        r = step(f"{name}-{plan}")
        if not r or not one:
            print(f"  {plan}: n/a"); continue
        per_gpu = r[0] / 2
        # The same work per GPU takes one GPU's step time (dp: the same
        # per-GPU batch) or half of it (tp: half of each GEMM).
        ideal = one[1] if tokens_scale == 2 else one[1] / 2
        print(f"  {plan}: {per_gpu:,.0f} tokens/s per GPU, efficiency {100*per_gpu/one[0]:.1f}%, "
              f"step {r[1]*1e3:.1f} ms, {max(0, r[1]-ideal)*1e3:.1f} ms over the ideal")
    if t1 and t2:
        dp2 = step(f"{name}-dp2")
        ratio = f"{dp2[0]/2/t2:.3f}" if dp2 else "n/a"
        print(f"  PyTorch: one GPU {f(t1)}, DDP {f(t2)} per GPU, efficiency {100*t2/t1:.1f}%; "
              f"mtc dp=2 / DDP {ratio}")
PY
}

# gemm_peak: the bf16 GEMM ceiling of GPU 0 in $PEAK (MFU's denominator).
gemm_peak() {
  python3 "$D/bench/env_gemm.py" > "$OUT/gemm.log" 2>&1
  PEAK=$(python3 -c "import json
for l in open('$OUT/gemm.log'):
    if l.startswith('GEMM_RESULT'): print(round(json.loads(l.split(' ',1)[1])['median_tflops'],1))")
  PEAK=${PEAK:-780}
  say "peak bf16 GEMM (GPU 0): $PEAK TFLOP/s"
  export MTC_PEAK_TFLOPS=$PEAK
}

bench() {
  gemm_peak
  local R
  R=$(random_tokens)
  for m in gpt2-124m:20:124m:64 gpt-1.3b:15:1.3b:8; do
    IFS=: read -r name steps size batch <<< "$m"
    [[ " ${MTC_BENCH_MODELS:-gpt2-124m gpt-1.3b} " == *" $name "* ]] || continue
    run "$name-1" "$name" 1 "$steps" "$R"
    run "$name-dp2" "$name-dp2" 2 "$steps" "$R"
    run "$name-dp2-zero" "$name-dp2-zero" 2 "$steps" "$R"
    run "$name-tp2" "$name-tp2" 2 "$steps" "$R"
    run "$name-tp2-sp" "$name-tp2-sp" 2 "$steps" "$R"
    if [ "${MTC_BENCH_TORCH:-1}" = 1 ]; then
      timeout 200 torchrun --nproc_per_node 1 "$D/bench/gpt_ddp.py" --size "$size" --batch "$batch" --peak "$PEAK" > "$OUT/torch-$size-1.log" 2>&1
      timeout 240 torchrun --nproc_per_node 2 "$D/bench/gpt_ddp.py" --size "$size" --batch "$batch" --peak "$PEAK" > "$OUT/torch-$size-2.log" 2>&1
    fi
  done
  report "dp2:2 dp2-zero:2 tp2:1 tp2-sp:1"
}

# One hardware queue (CUDA_DEVICE_MAX_CONNECTIONS=1, as Megatron-LM runs
# tensor parallelism): an early all-reduce is dispatched before the GEMM
# that follows it and gets its SMs.
connsweep() {
  local R
  R=$(random_tokens)
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R"
  run gpt-1.3b-tp2 gpt-1.3b-tp2 2 15 "$R"
  run gpt-1.3b-tp2-c1 gpt-1.3b-tp2 2 15 "$R" CUDA_DEVICE_MAX_CONNECTIONS=1
  run gpt-1.3b-dp2-c1 gpt-1.3b-dp2 2 15 "$R" CUDA_DEVICE_MAX_CONNECTIONS=1
  report "tp2:1 tp2-c1:1 dp2-c1:2"
}

# Tensor parallelism against one GPU, the 1.3B GPT and GPT-2 124M: tp = 2
# as compiled by default; with autodiff's backward order
# (--delay-wgrad-compute=false); with both forward lanes on the compute
# stream (--tp-lanes=one-stream); with NCCL held
# to 8 channels or given at least 32; dp = 2 beside them; then the MTC_PROFILE
# report of the default tp = 2 (and one GPU) on the 1.3B GPT.
tp() {
  local R
  R=$(random_tokens)
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R"
  run gpt-1.3b-tp2 gpt-1.3b-tp2 2 15 "$R"
  run gpt-1.3b-tp2-nodelay gpt-1.3b-tp2-nodelay 2 15 "$R"
  run gpt-1.3b-tp2-nolanes gpt-1.3b-tp2-onestream 2 15 "$R"
  run gpt-1.3b-tp2-ch8 gpt-1.3b-tp2 2 15 "$R" NCCL_MAX_NCHANNELS=8
  run gpt-1.3b-tp2-ch32 gpt-1.3b-tp2 2 15 "$R" NCCL_MIN_NCHANNELS=32
  run gpt-1.3b-dp2 gpt-1.3b-dp2 2 15 "$R"
  run gpt2-124m-1 gpt2-124m 1 20 "$R"
  run gpt2-124m-tp2 gpt2-124m-tp2 2 20 "$R"
  run gpt2-124m-tp2-nodelay gpt2-124m-tp2-nodelay 2 20 "$R"
  run gpt2-124m-dp2 gpt2-124m-dp2 2 20 "$R"
  report "tp2:1 tp2-nodelay:1 tp2-nolanes:1 tp2-ch8:1 tp2-ch32:1 dp2:2"
  run gpt-1.3b-1-prof gpt-1.3b 1 15 "$R" MTC_PROFILE="$OUT/profile-1gpu.txt"
  run gpt-1.3b-tp2-prof gpt-1.3b-tp2 2 15 "$R" MTC_PROFILE="$OUT/profile-tp2.txt"
  for p in "$OUT"/profile-1gpu.txt "$OUT"/profile-tp2.txt.rank0; do
    say "== $(basename "$p")"
    sed -n '1,/^NCCL/p' "$p" | head -60 | tee -a "$SUMMARY" > /dev/null
  done
}

# The tp all-reduces through the copy engines (the default program,
# --tp-allreduce=auto): the tiny GPT at tp = 2 (and
# --tp-lanes=one-stream) against one GPU first (and nothing more if it
# fails), then the 1.3B GPT and GPT-2 124M against one GPU, with and without
# --delay-wgrad-compute, and the profile of the 1.3B GPT's tp = 2. The
# "-peer" runs are the same programs as the runs without the suffix (repeats).
peer() {
  local R
  R=$(random_tokens)
  run tiny-mb16 tiny-mb16 1 20 "$DATA"
  RUN_TIMEOUT=60 run tiny-tp2-peer tiny-tp2 2 20 "$DATA"
  RUN_TIMEOUT=60 run tiny-tp2-peer-nolanes tiny-tp2-onestream 2 20 "$DATA"
  say "$(grep -h 'tp all-reduces' "$OUT"/tiny-tp2-peer.log | head -1)"
  compare tiny-mb16=tiny-tp2-peer,tiny-tp2-peer-nolanes
  if ! finished tiny-tp2-peer; then
    say "tiny tp = 2 through the copy engines did not finish: no benchmark"
    return
  fi
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R"
  run gpt-1.3b-tp2-nodelay gpt-1.3b-tp2-nodelay 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-peer gpt-1.3b-tp2 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-nodelay-peer gpt-1.3b-tp2-nodelay 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-peer-prof gpt-1.3b-tp2 2 15 "$R" MTC_PROFILE="$OUT/profile-tp2-peer.txt"
  run gpt2-124m-1 gpt2-124m 1 20 "$R"
  run gpt2-124m-tp2 gpt2-124m-tp2 2 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2-peer gpt2-124m-tp2 2 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2-nodelay-peer gpt2-124m-tp2-nodelay 2 20 "$R"
  report "tp2:1 tp2-nodelay:1 tp2-peer:1 tp2-nodelay-peer:1 tp2-peer-prof:1"
  [ -f "$OUT/profile-tp2-peer.txt.rank0" ] && sed -n '1,/^by op/p' "$OUT/profile-tp2-peer.txt.rank0" >> "$SUMMARY"
}

# kernel_tests FILTER: the CUDA kernel tests matching FILTER, summarized.
kernel_tests() {
  "$D/mtc-cuda-tests" --gtest_filter="$1" > "$OUT/kernel-tests.log" 2>&1
  say "$(grep -E '^\[  (PASSED|FAILED) ' "$OUT/kernel-tests.log") $(grep -c '^\[  FAILED' "$OUT/kernel-tests.log") failed ($1)"
}

# tiny_tp: the tiny GPT's tp = 2 (two lane streams; tiny-tp2-onestream and
# tiny-tp2-nccl: --tp-lanes=one-stream, --tp-allreduce=nccl), tp = 2 + sp
# and dp = 2 against one GPU; fails (no benchmark after it) when tp = 2 on
# either lane setting did not finish.
tiny_tp() {
  run tiny-mb16 tiny-mb16 1 20 "$DATA"
  run tiny-gb16 tiny-gb16 1 20 "$DATA"
  RUN_TIMEOUT=60 run tiny-tp2 tiny-tp2 2 20 "$DATA"
  RUN_TIMEOUT=60 run tiny-tp2-one tiny-tp2-onestream 2 20 "$DATA"
  RUN_TIMEOUT=60 run tiny-tp2-nccl tiny-tp2-nccl 2 20 "$DATA"
  run tiny-tp2-sp tiny-tp2-sp 2 20 "$DATA"
  run tiny-dp2 tiny-dp2 2 20 "$DATA"
  say "$(grep -h 'tp all-reduces' "$OUT"/tiny-tp2.log | head -1)"
  compare tiny-mb16=tiny-tp2,tiny-tp2-one,tiny-tp2-nccl,tiny-tp2-sp tiny-gb16=tiny-dp2
  if ! finished tiny-tp2 || ! finished tiny-tp2-one; then
    say "tiny tp = 2 did not finish: no benchmark"
    return 1
  fi
}

# The default build and runtime: kernel tests, the tiny GPT's tp = 2 (also
# on one stream and with NCCL), tp = 2 + sp and dp = 2 against one GPU;
# then both models' tp = 2 and dp = 2 against one GPU: tp = 2 twice, on one
# lane stream (--tp-lanes=one-stream) and with NCCL (--tp-allreduce=nccl),
# and one GPU again at the end.
final() {
  local R
  R=$(random_tokens)
  kernel_tests 'CudaElementwise*:CudaNorms*:CudaTensorParallel*:CudaGemm*'
  tiny_tp || return
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2 gpt-1.3b-tp2 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-again gpt-1.3b-tp2 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-one gpt-1.3b-tp2-onestream 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-nccl gpt-1.3b-tp2-nccl 2 15 "$R"
  run gpt-1.3b-dp2 gpt-1.3b-dp2 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-third gpt-1.3b-tp2 2 15 "$R"
  run gpt-1.3b-1-again gpt-1.3b 1 15 "$R"
  run gpt2-124m-1 gpt2-124m 1 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2 gpt2-124m-tp2 2 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2-one gpt2-124m-tp2-onestream 2 20 "$R"
  run gpt2-124m-tp2-nccl gpt2-124m-tp2-nccl 2 20 "$R"
  run gpt2-124m-dp2 gpt2-124m-dp2 2 20 "$R"
  report "tp2:1 tp2-again:1 tp2-third:1 tp2-one:1 tp2-nccl:1 dp2:2"
  one_again
}

# A short check of the tp = 2 code paths, no benchmark: the kernel tests of
# the kernels they call and the tiny GPT's plans against one GPU.
tpcheck() {
  kernel_tests 'CudaNorms*:CudaElementwise*:CudaTensorParallel*'
  tiny_tp
}

# The backward pass in half-batch lanes (the default since 2026-11-22)
# against one backward lane (--tp-backward-lanes=false): the tiny GPT
# against one GPU (copy engines, NCCL), then 1.3B tp = 2 both ways,
# interleaved, three times, and GPT-2 124M.
bwdlanes() {
  local R i
  R=$(random_tokens)
  kernel_tests 'CudaNorms*:CudaElementwise*:CudaTensorParallel*'
  run tiny-mb16 tiny-mb16 1 20 "$DATA"
  RUN_TIMEOUT=60 run tiny-tp2 tiny-tp2 2 20 "$DATA"
  RUN_TIMEOUT=60 run tiny-tp2-onebl tiny-tp2-onebl 2 20 "$DATA"
  RUN_TIMEOUT=60 run tiny-tp2-nccl tiny-tp2-nccl 2 20 "$DATA"
  compare tiny-mb16=tiny-tp2,tiny-tp2-onebl,tiny-tp2-nccl
  if ! finished tiny-tp2; then
    say "tiny tp = 2 with backward lanes did not finish: no benchmark"
    return
  fi
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R"
  for i in a b c; do
    RUN_TIMEOUT=90 run "gpt-1.3b-tp2-onebl-$i" gpt-1.3b-tp2-onebl 2 15 "$R"
    RUN_TIMEOUT=90 run "gpt-1.3b-tp2-$i" gpt-1.3b-tp2 2 15 "$R"
  done
  run gpt-1.3b-1-again gpt-1.3b 1 15 "$R"
  run gpt2-124m-1 gpt2-124m 1 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2-onebl-a gpt2-124m-tp2-onebl 2 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2-a gpt2-124m-tp2 2 20 "$R"
  report "tp2-onebl-a:1 tp2-a:1 tp2-onebl-b:1 tp2-b:1 tp2-onebl-c:1 tp2-c:1"
  one_again
}

# The 1.3B GPT's tp = 2 against one GPU, briefly: one GPU, tp = 2 twice,
# one GPU again.
quick13() {
  local R
  R=$(random_tokens)
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2 gpt-1.3b-tp2 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-b gpt-1.3b-tp2 2 15 "$R"
  run gpt-1.3b-1-again gpt-1.3b 1 15 "$R"
  report "tp2:1 tp2-b:1"
  one_again
}

# The comparison the tensor/data-parallel issue asks for, 1.3B GPT only
# (one call): mtc one GPU, dp = 2, tp = 2 twice, then PyTorch (torch.compile)
# on one GPU and under DDP on two, then mtc's one GPU again.
headline() {
  local R
  gemm_peak
  R=$(random_tokens)
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-dp2 gpt-1.3b-dp2 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2 gpt-1.3b-tp2 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-b gpt-1.3b-tp2 2 15 "$R"
  timeout 150 torchrun --nproc_per_node 1 "$D/bench/gpt_ddp.py" --size 1.3b --batch 8 --peak "$PEAK" > "$OUT/torch-1.3b-1.log" 2>&1
  timeout 180 torchrun --nproc_per_node 2 "$D/bench/gpt_ddp.py" --size 1.3b --batch 8 --peak "$PEAK" > "$OUT/torch-1.3b-2.log" 2>&1
  run gpt-1.3b-1-again gpt-1.3b 1 15 "$R"
  report "dp2:2 tp2:1 tp2-b:1"
  one_again
}

# The one-GPU 1.3B run repeated at the end of a call (gpt-1.3b-1-again):
# how far the reference drifted over the call.
one_again() {
  python3 - "$OUT/gpt-1.3b-1-again.jsonl" <<'PY' 2>&1 | tee -a "$SUMMARY"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][5:]
print(f"gpt-1.3b one GPU again (last 1.3B run): {statistics.median(r['tokens_per_s'] for r in rows):,.0f} tokens/s, "
      f"step {statistics.median(r['step_time_s'] for r in rows)*1e3:.1f} ms")
PY
}

# The staggered lanes and the residual added by the forward all-reduces:
# kernel tests, the tiny GPT's tp = 2 against one GPU (two lane streams, one
# stream, NCCL), then the 1.3B GPT's tp = 2 on two lane streams (the
# default) and on one stream (--tp-lanes=one-stream), with NCCL
# (--tp-allreduce=nccl), the profile of the one-stream run, one GPU again
# at the end (the reference's drift), and GPT-2 124M's tp = 2 both ways.
stagger() {
  local R
  R=$(random_tokens)
  kernel_tests 'CudaElementwise*:CudaTensorParallel*'
  tiny_tp || return
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2 gpt-1.3b-tp2 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-one gpt-1.3b-tp2-onestream 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-nccl gpt-1.3b-tp2-nccl 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-one-prof gpt-1.3b-tp2-onestream 2 15 "$R" MTC_PROFILE="$OUT/profile-tp2-one.txt"
  run gpt-1.3b-1-again gpt-1.3b 1 15 "$R"
  run gpt2-124m-1 gpt2-124m 1 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2 gpt2-124m-tp2 2 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2-one gpt2-124m-tp2-onestream 2 20 "$R"
  report "tp2:1 tp2-one:1 tp2-nccl:1 tp2-one-prof:1"
  one_again
  [ -f "$OUT/profile-tp2-one.txt.rank0" ] && sed -n '1,/^by op/p' "$OUT/profile-tp2-one.txt.rank0" >> "$SUMMARY"
}

# The norms' backward on half the rows inside the tp all-reduces: kernel
# tests, the tiny GPT's tp = 2 (one and two lane streams, NCCL's
# reduce-scatter / all-gather path), tp = 2 + sp and dp = 2 against one
# GPU, then the 1.3B GPT's tp = 2 on one stream (--tp-lanes=one-stream,
# twice) and on two, on one stream with NCCL (--tp-allreduce=nccl), the
# one-stream profile, one GPU again; GPT-2 124M both ways.
halfnorm() {
  local R
  R=$(random_tokens)
  kernel_tests 'CudaElementwise*:CudaNorms*:CudaTensorParallel*'
  tiny_tp || return
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-one gpt-1.3b-tp2-onestream 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2 gpt-1.3b-tp2 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-one-again gpt-1.3b-tp2-onestream 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-nccl gpt-1.3b-tp2-onestream-nccl 2 15 "$R"
  RUN_TIMEOUT=90 run gpt-1.3b-tp2-one-prof gpt-1.3b-tp2-onestream 2 15 "$R" MTC_PROFILE="$OUT/profile-tp2-one.txt"
  run gpt-1.3b-1-again gpt-1.3b 1 15 "$R"
  run gpt2-124m-1 gpt2-124m 1 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2-one gpt2-124m-tp2-onestream 2 20 "$R"
  RUN_TIMEOUT=90 run gpt2-124m-tp2 gpt2-124m-tp2 2 20 "$R"
  report "tp2-one:1 tp2:1 tp2-one-again:1 tp2-nccl:1 tp2-one-prof:1"
  one_again
  [ -f "$OUT/profile-tp2-one.txt.rank0" ] && sed -n '1,/^NCCL/p' "$OUT/profile-tp2-one.txt.rank0" >> "$SUMMARY"
}

# Where the time goes on the 1.3B GPT (MTC_PROFILE reports, steps 3-15):
# one GPU, tp = 2 with the forward pass in half-batch lanes on two streams
# and on one (--tp-lanes=one-stream); tp = 2 unprofiled, with sp; GPT-2
# 124M at tp = 2 both ways. The ranks' reports go to logs.tar.gz, rank 0's tables
# to the summary. Then NCCL's all-reduce
# bandwidth through PyTorch (the ceiling of the tp all-reduces).
profile() {
  local R
  R=$(random_tokens)
  run gpt-1.3b-1 gpt-1.3b 1 15 "$R" MTC_PROFILE="$OUT/profile-1gpu.txt"
  run gpt-1.3b-tp2 gpt-1.3b-tp2 2 15 "$R" MTC_PROFILE="$OUT/profile-tp2.txt"
  run gpt-1.3b-tp2-nolanes gpt-1.3b-tp2-onestream 2 15 "$R" MTC_PROFILE="$OUT/profile-tp2-nolanes.txt"
  run gpt-1.3b-tp2-noprof gpt-1.3b-tp2 2 15 "$R"
  run gpt-1.3b-tp2-sp gpt-1.3b-tp2-sp 2 15 "$R"
  run gpt2-124m-1 gpt2-124m 1 20 "$R"
  run gpt2-124m-tp2 gpt2-124m-tp2 2 20 "$R"
  run gpt2-124m-tp2-nolanes gpt2-124m-tp2-onestream 2 20 "$R"
  report "tp2:1 tp2-nolanes:1 tp2-noprof:1 tp2-sp:1"
  for p in "$OUT"/profile-1gpu.txt "$OUT"/profile-*.rank0; do
    say "== $(basename "$p")"
    sed -n '1,/^by op/p' "$p" | tee -a "$SUMMARY" > /dev/null
    sed -n '/^NCCL/,$p' "$p" | tee -a "$SUMMARY" > /dev/null
  done
  say "== NCCL all-reduce bandwidth (PyTorch)"
  timeout 120 torchrun --nproc_per_node 2 "$D/bench/nccl_bw.py" 2>&1 | grep NCCL_BW | tee -a "$SUMMARY"
}

case "$WHAT" in
  check) check ;;
  connsweep) connsweep ;;
  profile) profile ;;
  tp) tp ;;
  peer) peer ;;
  final) final ;;
  stagger) stagger ;;
  halfnorm) halfnorm ;;
  tpcheck) tpcheck ;;
  quick13) quick13 ;;
  bwdlanes) bwdlanes ;;
  headline) headline ;;
  bench) bench ;;
  all) check; bench ;;
  check+tp) check; tp ;;
  *) echo "usage: $0 check|bench|all|connsweep|profile|tp|check+tp|peer|final|stagger|halfnorm|tpcheck|quick13|bwdlanes|headline" >&2; exit 2 ;;
esac
tar -czf "/tmp/mtc-logs.tar.gz" -C "$OUT" . && mv /tmp/mtc-logs.tar.gz "$OUT/logs.tar.gz"
# Only a few files come back from the device tool: keep the summary and the
# archive (and the kernel-test log).
find "$OUT" -maxdepth 1 -type f ! -name summary.txt ! -name logs.tar.gz -delete
