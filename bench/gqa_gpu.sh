#!/usr/bin/env bash
# Grouped-query attention through cuDNN (attention_cudnn.cpp) on one GPU:
# correctness of the cuDNN path for GQA/MQA against the host reference, then
# attention fwd / bwd timings, own kernels and cuDNN, at the 1.3B GPT, GPT-2
# 124M and Llama-1B (B=4, S=2048, H=32, KV=8, Dh=64, causal) shapes, and
# PyTorch's SDPA on the Llama-1B shape for scale.
#   bench/gqa_gpu.sh prepare   here (needs nvcc, no GPU): builds
#       mtc-cuda-tests into .devrun/ (bench/prepare_gpu.sh first, for the
#       libraries the GPU image lacks, unless .devrun/lib.tar.xz exists);
#       carry .devrun to the GPU machine
#   bench/gqa_gpu.sh run       on the GPU machine (no MLIR there: only the
#       prebuilt test binary): runs every CudaAttention* test (own kernels
#       and cuDNN: MHA, GQA, MQA) with MTC_CUDA_ATTN_VERBOSE=1, then
#       CudaTimings.DISABLED_Attention (TFLOP/s, FLOPs as bench/README.md:
#       4 B H S^2 Dh / 2 forward causal, 2.5x that backward) and the
#       PyTorch SDPA timing. Writes $OUT (or ./gpu-out)/gqa.txt and the
#       logs. A cuDNN test that cannot build its plan is SKIPPED with
#       cuDNN's reason: that counts as a failure of this change, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
D=.devrun
MODE="${1:-run}"

if [ "$MODE" = prepare ]; then
  set -e
  BUILD="${MTC_BUILD_DIR:-build}"
  if [ -f "$D/lib.tar.xz" ]; then
    cmake --build "$BUILD" --target mtc-cuda-tests
    cp "$BUILD/bin/mtc-cuda-tests" "$D/"
  else
    bash bench/prepare_gpu.sh  # also copies mtc-cuda-tests
  fi
  strip "$D/mtc-cuda-tests"
  du -sh "$D"
  exit 0
fi

OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
[ -f "$D/lib.tar.xz" ] && mkdir -p /tmp/mtc-lib && tar -xJf "$D/lib.tar.xz" -C /tmp/mtc-lib
export LD_LIBRARY_PATH="/tmp/mtc-lib/lib:${LD_LIBRARY_PATH:-}"
S="$OUT/gqa.txt"
: > "$S"
say() { echo "$*" | tee -a "$S"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$S"

# cuDNN is loaded with dlopen: the system's libcudnn.so.9, else PyTorch's.
if [ -z "${MTC_CUDNN_LIB:-}" ] && ! ldconfig -p | grep -q 'libcudnn.so.9 '; then
  lib=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib", "libcudnn.so.9"))' 2>/dev/null || true)
  [ -n "$lib" ] && [ -f "$lib" ] && export MTC_CUDNN_LIB="$lib"
fi
say "cuDNN: ${MTC_CUDNN_LIB:-libcudnn.so.9 from the loader path}"

# 1. Correctness: own kernels and cuDNN against the host reference.
MTC_CUDA_ATTN_VERBOSE=1 "$D/mtc-cuda-tests" --gtest_filter='CudaAttention*' \
  > "$OUT/gqa-tests.log" 2>&1
rc=$?
grep -E '^\[ +(OK|FAILED|SKIPPED) +\]|^\[  PASSED|cuDNN attention unavailable|\[mtc attention\]' \
  "$OUT/gqa-tests.log" | tee -a "$S"
ok=$(grep -c '^\[       OK \] CudaAttentionCudnn\.' "$OUT/gqa-tests.log")
total=$(grep -c '^\[ RUN      \] CudaAttentionCudnn\.' "$OUT/gqa-tests.log")
if [ "$rc" -eq 0 ] && [ "$ok" -gt 0 ] && [ "$ok" -eq "$total" ]; then
  say "attention tests: PASS (exit 0; cuDNN path: $ok of $total ran and passed)"
else
  say "attention tests: FAIL (exit $rc; cuDNN path: $ok of $total passed, the rest failed or skipped)"
fi

# 2. Timings: own kernels and cuDNN, MHA and GQA shapes, and the q packing copy.
"$D/mtc-cuda-tests" --gtest_also_run_disabled_tests --gtest_filter='CudaTimings.DISABLED_Attention' \
  > "$OUT/gqa-timings.log" 2>&1
say "attention timings: exit $?"
grep '^\[timing\]' "$OUT/gqa-timings.log" | tee -a "$S"

# 3. PyTorch's scaled_dot_product_attention on the Llama-1B shape, causal,
# GQA (enable_gqa) per backend, and MHA on K, V repeated per group.
python3 - <<'PY' 2>&1 | tee -a "$S"
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

b, s, h, kv, dh = 4, 2048, 32, 8, 64
flops = 4.0 * b * h * s * s * dh / 2
torch.manual_seed(0)
q = torch.randn(b, h, s, dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(b, kv, s, dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(b, kv, s, dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
do = torch.randn(b, h, s, dh, device="cuda", dtype=torch.bfloat16)

def median_ms(fn):
    for _ in range(3):
        fn()
    times = []
    for _ in range(10):
        a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); e.record(); e.synchronize()
        times.append(a.elapsed_time(e))
    return sorted(times)[len(times) // 2]

def run(name, backend, gqa):
    def fwd():
        kk, vv = (k, v) if gqa else (k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1))
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
    try:
        with torch.no_grad():
            ms_f = median_ms(fwd)
        ms_fb = median_ms(lambda: fwd().backward(do))
    except Exception as ex:  # backend refuses the shape
        print(f"[torch] sdpa {name}: unavailable ({str(ex).splitlines()[0][:100]})")
        return
    print(f"[torch] sdpa {name:36s} fwd {ms_f:7.3f} ms {flops / ms_f * 1e-9:6.1f} TFLOP/s   "
          f"fwd+bwd {ms_fb:7.3f} ms {3.5 * flops / ms_fb * 1e-9:6.1f} TFLOP/s")

print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
      f"Llama-1B GQA (4 x 32/8 x 2048 x 64), causal")
run("cuDNN, enable_gqa", SDPBackend.CUDNN_ATTENTION, True)
run("flash, enable_gqa", SDPBackend.FLASH_ATTENTION, True)
run("cuDNN, K V repeated (MHA)", SDPBackend.CUDNN_ATTENTION, False)
PY
echo "summary: $S"
