#!/usr/bin/env bash
# Usage: reference_check.sh MODEL   (MODEL: an examples/MODEL.json, gpt or llama)
#
# Checks the program mtc generates against a model nobody here generated:
# compiles examples/MODEL.json for the host with 2 microbatches of 2 sequences
# (so gradient accumulation is exercised), writes its initial parameters
# (--init-only), runs step 1's forward and backward from them on a slice of
# the fortunes corpus (--dump-grads), and has test/e2e/reference_gpt.py
# rebuild the same model in PyTorch (float64, CPU) from the compiled spec
# (DIR/spec.json) and compare the loss and every parameter gradient
# (relative error <= 1e-5).
#
# Environment (set by test/e2e/CMakeLists.txt): MTC, MTC_PREPROCESS, MTC_SRC,
# MTC_E2E_WORK, PYTHON (a python3 with torch and numpy).
set -euo pipefail
: "${MTC:?}" "${MTC_PREPROCESS:?}" "${MTC_SRC:?}" "${MTC_E2E_WORK:?}" "${PYTHON:?}"
[ $# -eq 1 ] || { echo "usage: $0 MODEL (e.g. tiny-gpt)" >&2; exit 2; }
MODEL=$1
SPEC="$MTC_SRC/examples/$MODEL.json"
[ -f "$SPEC" ] || { echo "FAIL: no spec $SPEC" >&2; exit 1; }
W="$MTC_E2E_WORK/pytorch_reference/$MODEL"
rm -rf "$W" && mkdir -p "$W"

"$MTC_PREPROCESS" --input /usr/share/games/fortunes/fortunes --output-prefix "$W/data" \
  --tokenizer byte --split-documents fortune > "$W/preprocess.log"

"$MTC" compile "$SPEC" --target host --micro-batch-size 2 --global-batch-size 4 \
  -o "$W/prog" > "$W/compile.log"
[ -f "$W/prog/spec.json" ] || { echo "FAIL: mtc compile wrote no $W/prog/spec.json"; exit 1; }

"$W/prog/train" --init-only "$W/init" > "$W/init.log"
"$W/prog/train" --data "$W/data" --load "$W/init/step_000000" \
  --dump-grads "$W/grads.safetensors" > "$W/dump.log"

"$PYTHON" "$MTC_SRC/test/e2e/reference_gpt.py" --spec "$W/prog/spec.json" \
  --params "$W/init/step_000000/model.safetensors" --dump "$W/grads.safetensors" \
  | tee "$W/reference.log"
# The comparison must have covered gradient accumulation.
grep -q "^batch: 2 microbatches x 2 sequences" "$W/reference.log" ||
  { echo "FAIL: the dump does not hold 2 microbatches of 2 sequences"; exit 1; }
