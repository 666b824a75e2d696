#!/usr/bin/env bash
# Usage: parallel_equivalence.sh SPEC PLAN...
#   a PLAN is flags of `mtc compile` without dashes: "tp=2", "tp=2,dp=2",
#   "tp=2,sp" (sequence parallelism)
#
# "Same math under any plan": compiles SPEC for one process and for each
# plan, runs each plan as N cooperating processes (mtc-launch, Gloo), and
# checks against the one-process run of the same global batch:
#   - the losses and gradient norms of 5 training steps agree to 1e-5
#     relative (the norm counts every element of a split or sharded
#     gradient once);
#   - every parameter's gradient after step 1 (--dump-grads, gathered to
#     global tensors) agrees to 1e-5 relative (test/e2e/compare_dumps.py);
#   - pipeline plans (pp=...): the validation loss after 2 steps equals the
#     one-process run's (to the 4 printed decimals);
#   - with the distributed optimizer (plan "...,use-distributed-optimizer"),
#     whose AdamW moments are sharded over dp: the plan's checkpoint after 3
#     steps, resumed by the one-process program, and the one-process
#     program's checkpoint, resumed by the plan, both give steps 4 and 5 the
#     one-process run's losses (moments gathered and cut correctly); the
#     same for expert-parallel plans ("...,ep=2"), whose experts' weights
#     and moments are split over the ep ranks (with the distributed
#     optimizer the experts' moments are sharded over the expert-data-
#     parallel ranks, the others over dp); and the checkpoint of the
#     previous such plan in the list, resumed by this one, too (a
#     checkpoint crosses from one parallel plan to another).
# Environment (test/e2e/CMakeLists.txt): MTC, MTC_PREPROCESS, MTC_LAUNCH,
# MTC_SRC, MTC_E2E_WORK, PYTHON.
set -euo pipefail
: "${MTC:?}" "${MTC_PREPROCESS:?}" "${MTC_LAUNCH:?}" "${MTC_SRC:?}" "${MTC_E2E_WORK:?}" "${PYTHON:?}"
SPEC=$1; shift
NAME=$(basename "$SPEC" .json)
W="$MTC_E2E_WORK/parallel/$NAME"
rm -rf "$W" && mkdir -p "$W"
"$MTC_PREPROCESS" --input /usr/share/games/fortunes/fortunes --output-prefix "$W/data" \
  --tokenizer byte --split-documents fortune > /dev/null

losses() { grep -o '"loss":[^,}]*' "$1" | cut -d: -f2; }

"$MTC" compile "$SPEC" --target host -o "$W/ref" > "$W/ref.compile.log"
"$W/ref/train" --data "$W/data" --steps 5 --metrics "$W/ref.jsonl" > "$W/ref.log"
"$W/ref/train" --data "$W/data" --dump-grads "$W/ref.safetensors" > "$W/ref.dump.log"

status=0
prev=""  # the last plan whose checkpoint round trip passed: its $dir
for plan in "$@"; do
  flags=() ranks=1
  IFS=, read -ra parts <<< "$plan"
  for p in "${parts[@]}"; do
    if [[ $p != *=* ]]; then flags+=("--$p"); continue; fi
    k=${p%%=*} v=${p#*=}
    flags+=("--$k" "$v")
    case $k in tp|dp|pp) ranks=$((ranks * v)) ;; esac
  done
  dir="$W/$(echo "$plan" | tr ',=' '_-' | tr -c 'A-Za-z0-9_.\n-' '_')"
  "$MTC" compile "$SPEC" --target host "${flags[@]}" -o "$dir" > "$dir.compile.log"
  "$MTC_LAUNCH" -n "$ranks" "$dir/train" --data "$W/data" --steps 5 --metrics "$dir.jsonl" > "$dir.log" 2>&1 ||
    { echo "FAIL $plan: training failed:"; tail -5 "$dir.log"; status=1; continue; }
  "$MTC_LAUNCH" -n "$ranks" "$dir/train" --data "$W/data" --dump-grads "$dir.safetensors" > "$dir.dump.log" 2>&1 ||
    { echo "FAIL $plan: --dump-grads failed:"; tail -5 "$dir.dump.log"; status=1; continue; }
  echo "== $plan ($ranks ranks)"
  if ! "$PYTHON" - "$W/ref.jsonl" "$dir.jsonl" <<'PY'
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
got = [json.loads(l) for l in open(sys.argv[2])]
assert len(ref) == len(got) == 5, (len(ref), len(got))
ok = True
for key, what in (("loss", "losses"), ("grad_norm", "gradient norms")):
    err = max(abs(a[key] - b[key]) / abs(a[key]) for a, b in zip(ref, got))
    print(f"  {what} of 5 steps: max relative error {err:.2e}")
    ok &= err <= 1e-5
sys.exit(0 if ok else 1)
PY
  then echo "FAIL $plan: losses or gradient norms differ"; status=1; fi
  "$PYTHON" "$MTC_SRC/test/e2e/compare_dumps.py" "$W/ref.safetensors" "$dir.safetensors" || status=1
  if [[ $plan == *pp=* ]]; then
    # Validation runs the pipeline's eval pieces: the same loss as one process.
    [ -f "$W/ref.val.log" ] || "$W/ref/train" --data "$W/data" --steps 2 --eval-interval 2 \
      --eval-iters 2 --split 90,10 > "$W/ref.val.log"
    "$MTC_LAUNCH" -n "$ranks" "$dir/train" --data "$W/data" --steps 2 --eval-interval 2 \
      --eval-iters 2 --split 90,10 > "$dir.val.log" 2>&1 || { echo "FAIL $plan: validation run failed"; status=1; }
    want=$(grep -o 'validation at step 2 | loss [0-9.]*' "$W/ref.val.log")
    got=$(grep -o 'validation at step 2 | loss [0-9.]*' "$dir.val.log" || true)
    if [ -n "$want" ] && [ "$want" = "$got" ]; then echo "  validation: $got (as one process)"
    else echo "FAIL $plan: validation '$got', one process '$want'"; status=1; fi
  fi
  if [[ $plan == *use-distributed-optimizer* || $plan == *ep=* ]]; then
    rm -rf "$dir.ckpt" "$W/ref.ckpt" "$dir.r1.jsonl" "$dir.r2.jsonl" "$dir.r3.jsonl"
    "$MTC_LAUNCH" -n "$ranks" "$dir/train" --data "$W/data" --steps 5 --exit-interval 3 \
      --save "$dir.ckpt" > "$dir.save.log" 2>&1 &&
    "$W/ref/train" --data "$W/data" --steps 5 --load "$dir.ckpt" --resume --metrics "$dir.r1.jsonl" \
      > "$dir.r1.log" 2>&1 &&
    "$W/ref/train" --data "$W/data" --steps 5 --exit-interval 3 --save "$W/ref.ckpt" \
      > "$W/ref.save.log" 2>&1 &&
    "$MTC_LAUNCH" -n "$ranks" "$dir/train" --data "$W/data" --steps 5 --load "$W/ref.ckpt" --resume \
      --metrics "$dir.r2.jsonl" > "$dir.r2.log" 2>&1 ||
      { echo "FAIL $plan: checkpoint round trip failed:"; tail -3 "$dir".*.log; status=1; continue; }
    if [ -n "$prev" ]; then
      "$MTC_LAUNCH" -n "$ranks" "$dir/train" --data "$W/data" --steps 5 --load "$prev.ckpt" --resume \
        --metrics "$dir.r3.jsonl" > "$dir.r3.log" 2>&1 ||
        { echo "FAIL $plan: resuming the checkpoint of $(basename "$prev") failed:"; tail -3 "$dir.r3.log"
          status=1; continue; }
    fi
    if ! "$PYTHON" - "$W/ref.jsonl" "$dir.r1.jsonl" "$dir.r2.jsonl" "$dir.r3.jsonl" "$(basename "$prev")" <<'PY'
import json, os, sys
ref = [json.loads(l)["loss"] for l in open(sys.argv[1])][3:]
runs = [("plan's checkpoint resumed by one process", sys.argv[2]),
        ("one process's checkpoint resumed by the plan", sys.argv[3])]
if os.path.exists(sys.argv[4]):
    runs.append((f"{sys.argv[5]}'s checkpoint resumed by the plan", sys.argv[4]))
for name, path in runs:
    got = [json.loads(l)["loss"] for l in open(path)]
    assert len(got) == 2, (path, len(got))
    err = max(abs(a - b) / abs(a) for a, b in zip(ref, got))
    print(f"  {name}: steps 4-5 max relative error {err:.2e}")
    if err > 1e-5: sys.exit(1)
PY
    then echo "FAIL $plan: resumed losses differ"; status=1; else prev=$dir; fi
  fi
done
exit $status
