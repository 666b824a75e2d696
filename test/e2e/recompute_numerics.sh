#!/usr/bin/env bash
# Usage: recompute_numerics.sh SPEC
#
# Recomputation changes what is kept, never what is computed: on the host
# target (deterministic fp32 kernels) every policy must give the `none`
# run's results bit for bit. Compiles SPEC under each policy (and under
# tp = 2 with and without recomputation, through mtc-launch), trains 5
# steps, and compares the loss lines of the metrics as text and the
# gradients after one step (--dump-grads) byte for byte. SPEC should have
# dropout, so that recomputed dropouts are checked to draw the same masks.
# Environment (test/e2e/CMakeLists.txt): MTC, MTC_PREPROCESS, MTC_LAUNCH,
# MTC_E2E_WORK.
set -euo pipefail
: "${MTC:?}" "${MTC_PREPROCESS:?}" "${MTC_LAUNCH:?}" "${MTC_E2E_WORK:?}"
SPEC=$1
W="$MTC_E2E_WORK/recompute/$(basename "$SPEC" .json)"
rm -rf "$W" && mkdir -p "$W"
"$MTC_PREPROCESS" --input /usr/share/games/fortunes/fortunes --output-prefix "$W/data" \
  --tokenizer byte --split-documents fortune > /dev/null

losses() { grep -o '"loss":[^,}]*' "$1"; }

# run NAME RANKS FLAGS...: compile, train 5 steps, dump the gradients of step 1.
run() {
  local name=$1 ranks=$2; shift 2
  "$MTC" compile "$SPEC" --target host "$@" -o "$W/$name" > "$W/$name.compile.log"
  "$MTC_LAUNCH" -n "$ranks" "$W/$name/train" --data "$W/data" --steps 5 \
    --metrics "$W/$name.jsonl" > "$W/$name.log" 2>&1
  "$MTC_LAUNCH" -n "$ranks" "$W/$name/train" --data "$W/data" \
    --dump-grads "$W/$name.safetensors" > "$W/$name.dump.log" 2>&1
  grep -q recomputed "$W/$name/train.mlir" || [[ $name == none* ]] ||
    { echo "FAIL $name: nothing recomputed"; return 1; }
}

status=0
# compare REF NAME: the losses as printed and the gradient dumps, exactly.
compare() {
  local ref=$1 name=$2
  if [[ "$(losses "$W/$ref.jsonl")" == "$(losses "$W/$name.jsonl")" ]] &&
     [[ $(losses "$W/$name.jsonl" | wc -l) == 5 ]] &&
     cmp -s "$W/$ref.safetensors" "$W/$name.safetensors"; then
    echo "ok   $name == $ref (5 losses, gradients byte for byte)"
  else
    echo "FAIL $name differs from $ref:"; paste <(losses "$W/$ref.jsonl") <(losses "$W/$name.jsonl")
    status=1
  fi
}

run none 1 --recompute none
run selective 1 --recompute selective
run modules 1 --recompute selective --recompute-modules=core_attn,activation,layernorm
run mlp 1 --recompute selective --recompute-modules=mlp
run full 1 --recompute full
run full_uniform2 1 --recompute full --recompute-method uniform --recompute-num-layers 2
run full_block1 1 --recompute full --recompute-method block --recompute-num-layers 1
# A budget halfway between full's and none's peaks: auto mixes levels.
peak() { grep -o '"peak": [0-9]*' "$W/$1/plan.json" | grep -o '[0-9]*$'; }
run auto 1 --recompute auto --memory-budget "$(( ($(peak none) + $(peak full)) / 2 ))B"
for name in selective modules mlp full full_uniform2 full_block1 auto; do compare none "$name"; done

run none_tp2 2 --tp 2 --recompute none
run selective_tp2 2 --tp 2 --recompute selective
run full_tp2_sp 2 --tp 2 --sp --recompute full
run none_tp2_sp 2 --tp 2 --sp --recompute none
compare none_tp2 selective_tp2
compare none_tp2_sp full_tp2_sp
exit $status
