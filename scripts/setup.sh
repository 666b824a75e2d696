#!/usr/bin/env bash
# Installs what mtc needs (Debian 12 packages) when missing, then configures
# and builds it in ./build. Safe to run again: it only does what is missing.
#   MTC_BUILD_DIR   build directory (default: build)
#   MTC_JOBS        parallel build jobs (default: nproc)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(cmake ninja-build g++ git
  llvm-22-dev libmlir-22-dev mlir-22-tools llvm-22-tools
  nlohmann-json3-dev libopenblas-dev libgtest-dev libgmock-dev libbenchmark-dev
  fortunes python3-torch python3-numpy libgloo-dev
  clang-14 libclang-rt-14-dev)  # scripts/sanitize.sh: ASan/UBSan and libFuzzer

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

BUILD="${MTC_BUILD_DIR:-build}"
JOBS="${MTC_JOBS:-$(nproc)}"
CUDA_ARGS=()
if [ -x /usr/local/cuda/bin/nvcc ]; then
  CUDA_ARGS=(-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc)
fi
if [ ! -f "$BUILD/build.ninja" ]; then
  echo "== configuring $BUILD"
  cmake -G Ninja -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DMLIR_DIR=/usr/lib/llvm-22/lib/cmake/mlir "${CUDA_ARGS[@]}"
fi
echo "== building ($JOBS jobs)"
cmake --build "$BUILD" -j "$JOBS"
