#!/usr/bin/env bash
# CI's second job: the compiler, runtime, tools and a generated host program
# built with AddressSanitizer + UndefinedBehaviorSanitizer (clang-14, Debian
# 12's; scripts/setup.sh installs it) in ./build-asan, then
#   1. the unit and lit tests, the fuzz targets' replay of their seed corpus
#      and regression inputs (ctest, e2e excluded);
#   2. e2e.train_and_resume: a host program compiled by `mtc compile` (it
#      inherits CC/CXX/CXXFLAGS, so it is sanitized too) trains and resumes;
#   3. each libFuzzer target for MTC_FUZZ_SECONDS (default 25) from its seed
#      corpus; new inputs go to a scratch directory, a crash leaves its input
#      in build-asan/fuzz/<target>/ and fails the job (keep it in
#      test/fuzz/regressions/<target>/ with the fix: docs/security.md),
#      except in a target with known crashes (below).
# Any sanitizer report fails the job. Prints the time of each phase.
#   MTC_JOBS           parallel build and test jobs (default: nproc)
#   MTC_FUZZ_SECONDS   seconds per fuzz target (default 25)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=build-asan
JOBS="${MTC_JOBS:-$(nproc)}"
FUZZ_SECONDS="${MTC_FUZZ_SECONDS:-25}"
if ! command -v clang++-14 >/dev/null || [ ! -f /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a ]; then
  echo "sanitize.sh: clang-14 and libclang-rt-14-dev are missing: run scripts/setup.sh" >&2
  exit 1
fi

# LLVM and MLIR are prebuilt without ASan. Our code and theirs both touch
# std::vector, which makes ASan's container-overflow check report false
# positives (annotations only in the instrumented half), so it is off. The
# example pass plugin links the mtc dialect that mtc-opt, which loads it,
# also holds; mtc-opt exports its symbols, so the plugin uses mtc-opt's
# copies, but ASan's default ODR check (level 2) still reports the two
# same-sized definitions: level 1 reports only definitions that differ in
# size. MLIR is built without RTTI, so UBSan's vptr check cannot tell the
# dynamic type of the objects it creates and reports every member call our
# code makes on one (mtc-opt destroying its DialectRegistry's extensions,
# OperationName::Impl, ...): that check is off. LLVM's BumpPtrAllocator
# poisons the free part of a new slab when the code that inlines it is
# instrumented and unpoisons each allocation: when our instrumented
# template code (an attribute's storage) opens a slab and the
# uninstrumented MLIR library then allocates from it, that memory is still
# poisoned (use-after-poison in FileLineColRange::get): user poisoning is
# off (allow_user_poisoning=0; ASan's own redzones stay). The leak check,
# overflows, use-after-free and the rest of UBSan stay on.
export ASAN_OPTIONS="detect_container_overflow=0:detect_odr_violation=1:detect_leaks=1:allow_user_poisoning=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
SAN="-fsanitize=address,undefined -fno-sanitize=vptr -fno-sanitize-recover=undefined"
SAN+=" -fno-omit-frame-pointer"
export CC=clang-14 CXX=clang++-14 CFLAGS="$SAN" CXXFLAGS="$SAN" LDFLAGS="-fsanitize=address,undefined"

phase_start=$SECONDS
phase() {
  echo "== sanitize: $1 took $((SECONDS - phase_start)) s"
  phase_start=$SECONDS
}

# -O1 -g1: ASan's advice (readable stacks, fast enough) and a quicker build
# than Release's -O3; NDEBUG as the LLVM/MLIR we link was built. The flags
# are passed every time, so a change here reaches an existing build-asan.
cmake -G Ninja -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_C_FLAGS="$SAN" \
  -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELEASE="-O1 -g1 -DNDEBUG" \
  -DMTC_ENABLE_CUDA=OFF -DMTC_FUZZ=ON -DMLIR_DIR=/usr/lib/llvm-22/lib/cmake/mlir >/dev/null
cmake --build "$BUILD" -j "$JOBS"
phase "build"

ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" -E '^e2e\.'
phase "unit, lit and fuzz replay tests"

ctest --test-dir "$BUILD" --output-on-failure -R '^e2e\.train_and_resume$'
phase "e2e.train_and_resume"

# Crashes another branch is fixing (test/fuzz/known/<target>/): such a
# target is fuzzed past each crash (fork mode), its known inputs replayed
# and every crash reported by class, not fatal, until the fix lands and the
# inputs move to regressions/. Any other target's crash fails the job.
crash_class() {  # the first sanitizer or exception line of replaying $2
  "$BUILD/bin/fuzz_$1" "$2" 2>&1 |
    grep -m1 -oE "what\(\): .*|runtime error: .*|ERROR: (Address|Leak)Sanitizer: [a-z-]+" |
    sed -E "s/'[^']*'/'...'/g" || true
}
failed=()
for target in spec safetensors indexed_dataset checkpoint_state; do
  work="$BUILD/fuzz/$target"
  rm -rf "$work" && mkdir -p "$work/new"
  known="test/fuzz/known/$target"
  opts=(-max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$work/")
  [ "$target" != indexed_dataset ] && opts+=(-dict=test/fuzz/json.dict)  # the JSON readers
  if [ -d "$known" ]; then
    for input in "$known"/*; do
      class=$(crash_class "$target" "$input")
      echo "== fuzz $target: known $input: ${class:-no longer crashes: move it to regressions/}"
    done
    "$BUILD/bin/fuzz_$target" "${opts[@]}" -fork=1 -ignore_crashes=1 "$work/new" \
      "test/fuzz/corpus/$target" >"$work/fuzz.log" 2>&1 || true
    echo "== fuzz $target: $(grep -oE 'fuzzed for [0-9]+ seconds' "$work/fuzz.log" | tail -1);" \
      "crashes by class (reported, not fatal while $known holds inputs):"
    for crash in "$work"/crash-*; do
      if [ -e "$crash" ]; then crash_class "$target" "$crash"; fi
    done | sort | uniq -c
  elif "$BUILD/bin/fuzz_$target" "${opts[@]}" "$work/new" "test/fuzz/corpus/$target" \
      >"$work/fuzz.log" 2>&1; then
    echo "== fuzz $target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$work/fuzz.log")"
  else
    echo "== fuzz $target: CRASH"
    tail -40 "$work/fuzz.log"
    failed+=("$target")
  fi
done
phase "fuzzing"
if [ ${#failed[@]} -gt 0 ]; then
  echo "sanitize.sh: the fuzzer crashed: ${failed[*]} (inputs in $BUILD/fuzz/<target>/crash-*)" >&2
  exit 1
fi
