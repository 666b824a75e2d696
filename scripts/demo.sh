#!/usr/bin/env bash
# The main job: build mtc, turn the Debian fortunes corpus into a token
# dataset, compile the tiny GPT for this machine and train it.
#   MTC_DEMO_STEPS   training steps (default: the spec's train_steps)
#   MTC_DEMO_TARGET  host or cuda (default: cuda when a GPU is present)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD="${MTC_BUILD_DIR:-build}"
BIN="$BUILD/bin"

mkdir -p data
if [ ! -f data/fortunes.idx ]; then
  echo "== preparing data/fortunes from /usr/share/games/fortunes"
  mapfile -t corpus < <(find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
  "$BIN/mtc-preprocess" --input "${corpus[@]}" --output-prefix data/fortunes \
    --tokenizer byte --split-documents fortune
fi

# The CUDA target when a GPU and the runtime's CUDA backend are both here.
TARGET=host
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 &&
   [ -f "$BUILD/runtime/libmtc_runtime_cuda.a" ]; then
  TARGET=cuda
fi
[ -n "${MTC_DEMO_TARGET:-}" ] && TARGET=$MTC_DEMO_TARGET
echo "== compiling examples/tiny-gpt.json for the $TARGET target"
"$BIN/mtc" compile examples/tiny-gpt.json --target "$TARGET" -o out/tiny-gpt

# Checkpoints and metrics live beside the program, not in it: a compile
# replaces only a directory that holds nothing but its own outputs.
echo "== training"
STEPS=()
[ -n "${MTC_DEMO_STEPS:-}" ] && STEPS=(--steps "$MTC_DEMO_STEPS")
mkdir -p out/tiny-gpt-run
out/tiny-gpt/train --data data/fortunes "${STEPS[@]}" --log-interval 10 \
  --eval-interval 100 --save out/tiny-gpt-run/checkpoints --metrics out/tiny-gpt-run/metrics.jsonl
