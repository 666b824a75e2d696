#!/usr/bin/env bash
# The upcycling demo of issue #18 (docs/moe.md, "Upcycling"): tiny-gpt
# trained dense for 100 steps, upcycled to 8 experts top-2 (random router),
# continued for 60 steps; the loss curve joins the dense run's without a
# jump. Both continuations see the same batches at the same learning rates
# (the upcycled checkpoint keeps the step, data position and schedule), so
# the curves compare step by step. The MoE loss includes the routers' aux
# losses, 4 layers * (0.01 * 1 + 0.001 * ln(8)^2) = 0.0573 at uniform
# routing (load balancing alpha, z-loss ln(8)^2 per layer), so the MoE run
# is measured against dense + that offset:
#   1. with --optimizer copy (the default: the experts take their shard of
#      the dense MLP's AdamW moments), the mean of (MoE - dense - offset)
#      over steps 101-110 is at most 0.01 (measured -0.008), and over steps
#      141-160 too (measured -0.016): no jump, and the curve stays joined;
#   2. the MoE loss keeps falling: the mean over steps 151-160 is at least
#      0.05 below the mean over steps 101-110 (measured 0.09);
#   3. with --optimizer reset (Megatron's; the moments start at zero) the
#      loss jumps (step 102 +0.064, steps 101-110 +0.019 on average), and
#      the copy run's mean over steps 101-110 is lower by at least 0.01
#      (measured 0.028).
# Prints the curves side by side. About 2 minutes on 2 cores.
set -euo pipefail
: "${MTC:?}" "${MTC_PREPROCESS:?}" "${MTC_UPCYCLE:?}" "${MTC_SRC:?}" "${MTC_E2E_WORK:?}"
W="$MTC_E2E_WORK/upcycle_demo"
rm -rf "$W" && mkdir -p "$W"

corpus=(/usr/share/games/fortunes/fortunes /usr/share/games/fortunes/literature /usr/share/games/fortunes/science)
"$MTC_PREPROCESS" --input "${corpus[@]}" --output-prefix "$W/data" --tokenizer byte \
  --split-documents fortune > "$W/preprocess.log"
"$MTC" compile "$MTC_SRC/examples/tiny-gpt.json" --target host -o "$W/dense" > "$W/compile_dense.log"
"$MTC" compile "$MTC_SRC/examples/tiny-moe.json" --target host -o "$W/moe" > "$W/compile_moe.log"

# Dense: 160 steps, checkpointed at step 100 (resume is exact, so steps
# 101-160 are the dense run continued from that checkpoint).
"$W/dense/train" --data "$W/data" --steps 160 --save "$W/dense_ckpt" --save-interval 100 \
  --log-interval 20 --metrics "$W/dense.jsonl" > "$W/dense.log"

for opt in copy reset; do
  "$MTC_UPCYCLE" "$W/dense_ckpt/step_000100" --experts 8 --topk 2 --optimizer "$opt" \
    -o "$W/moe_$opt" > "$W/upcycle_$opt.log"
  "$W/moe/train" --data "$W/data" --steps 160 --save "$W/moe_$opt" --resume \
    --log-interval 20 --metrics "$W/moe_$opt.jsonl" > "$W/moe_$opt.log"
done
grep -q "has no optimizer state" "$W/moe_reset.log" ||
  { echo "FAIL: the --optimizer reset run did not start with fresh AdamW moments"; exit 1; }
if grep -q "has no optimizer state" "$W/moe_copy.log"; then
  echo "FAIL: the --optimizer copy run started with fresh AdamW moments"; exit 1
fi

# step loss, one line per step, for each run.
table() { grep -o '"step":[0-9]*,"loss":[^,}]*' "$1" | sed 's/"step":\([0-9]*\),"loss":/\1 /'; }
table "$W/dense.jsonl" > "$W/dense.txt"
table "$W/moe_copy.jsonl" > "$W/copy.txt"
table "$W/moe_reset.jsonl" > "$W/reset.txt"

awk -v o="$(awk 'BEGIN {print 4 * (0.01 + 0.001 * log(8) * log(8))}')" '
  FILENAME ~ /dense/ { d[$1] = $2; next }
  FILENAME ~ /copy/  { c[$1] = $2; next }
                     { r[$1] = $2 }
  function mean(a, lo, hi,   s, n, i) { for (i = lo; i <= hi; ++i) { s += a[i]; n++ } return s / n }
  function excess(a, lo, hi,   s, n, i) { for (i = lo; i <= hi; ++i) { s += a[i] - d[i] - o; n++ } return s / n }
  END {
    printf "dense tiny-gpt, steps 1-100:"
    for (i = 10; i <= 100; i += 10) printf " %d:%.3f", i, d[i]
    printf "\nupcycled at step 100 to 8 experts top-2; aux offset at uniform routing %.4f\n", o
    printf "%5s %9s %9s %9s %9s %9s %9s\n", "step", "dense", "dense+aux", "MoE copy", "- d - aux", "MoE reset", "- d - aux"
    for (i = 101; i <= 160; ++i)
      printf "%5d %9.4f %9.4f %9.4f %+9.4f %9.4f %+9.4f\n", i, d[i], d[i] + o, c[i], c[i] - d[i] - o, r[i], r[i] - d[i] - o
    e1 = excess(c, 101, 110); e2 = excess(c, 141, 160); er = excess(r, 101, 110)
    fall = mean(c, 101, 110) - mean(c, 151, 160)
    printf "mean (MoE - dense - aux) over steps 101-110: copy %+.4f, reset %+.4f; steps 141-160: copy %+.4f, reset %+.4f\n", e1, er, e2, excess(r, 141, 160)
    printf "MoE copy: mean loss steps 101-110 %.4f, steps 151-160 %.4f (fell %.4f)\n", mean(c, 101, 110), mean(c, 151, 160), fall
    bad = 0
    if (!(e1 <= 0.01)) { print "FAIL: the copy run jumps: steps 101-110 above dense + aux + 0.01"; bad = 1 }
    if (!(e2 <= 0.01)) { print "FAIL: the copy run does not stay joined: steps 141-160 above dense + aux + 0.01"; bad = 1 }
    if (!(fall >= 0.05)) { print "FAIL: the copy run did not keep falling (by 0.05 from steps 101-110 to 151-160)"; bad = 1 }
    if (!(e1 <= er - 0.01)) { print "FAIL: copying the moments did not beat resetting them by 0.01 over steps 101-110"; bad = 1 }
    exit bad
  }' "$W/dense.txt" "$W/copy.txt" "$W/reset.txt"
echo "PASS"
