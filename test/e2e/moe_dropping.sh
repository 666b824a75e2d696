#!/usr/bin/env bash
# Token dropping (model.moe.capacity_factor, docs/moe.md) on the host:
#   1. tiny-moe with capacity_factor 1.0 (C = ceil(1.0 * 512 * 2 / 8) = 128
#      rows per expert of a micro-batch's 1024 assignments; the "probs"
#      policy) trains: the loss falls, and its first loss differs from the
#      dropless run's (assignments were dropped);
#   2. with capacity_factor 4.0 (C = 512 = T: no expert can be over
#      capacity) the program runs the capacity path (moe_permute_capacity)
#      and its losses are the dropless run's, bit for bit;
#   3. the "position" policy trains too (finite losses, falling).
set -euo pipefail
: "${MTC:?}" "${MTC_PREPROCESS:?}" "${MTC_SRC:?}" "${MTC_E2E_WORK:?}"
W="$MTC_E2E_WORK/moe_dropping"
rm -rf "$W" && mkdir -p "$W"

corpus=(/usr/share/games/fortunes/fortunes /usr/share/games/fortunes/literature /usr/share/games/fortunes/science)
"$MTC_PREPROCESS" --input "${corpus[@]}" --output-prefix "$W/data" --tokenizer byte \
  --split-documents fortune > "$W/preprocess.log"

spec() {  # name, extra model.moe keys
  sed "s/\"z_loss_coeff\": 0.001/\"z_loss_coeff\": 0.001, $2/" "$MTC_SRC/examples/tiny-moe.json" > "$W/$1.json"
  grep -q capacity_factor "$W/$1.json" || { echo "FAIL: could not write $1.json"; exit 1; }
  "$MTC" compile "$W/$1.json" --target host -o "$W/$1" > "$W/compile_$1.log"
}
spec cf1 '"capacity_factor": 1.0'
spec cf4 '"capacity_factor": 4.0'
spec position '"capacity_factor": 1.0, "drop_policy": "position"'
"$MTC" compile "$MTC_SRC/examples/tiny-moe.json" --target host -o "$W/dropless" > "$W/compile_dropless.log"
grep -q "moe_permute_capacity(" "$W/cf4/program.cpp" ||
  { echo "FAIL: the capacity_factor 4 program does not call moe_permute_capacity"; exit 1; }
if grep -q "moe_permute_capacity(" "$W/dropless/program.cpp"; then
  echo "FAIL: the dropless program calls moe_permute_capacity"; exit 1
fi

losses() { grep -o '"loss":[^,}]*' "$1" | cut -d: -f2; }
train() {  # name, steps
  "$W/$1/train" --data "$W/data" --steps "$2" --metrics "$W/$1.jsonl" --log-interval 20 > "$W/$1.log"
}
falls() {  # name: mean of the last 5 losses at least 0.5 below the first 5's
  local first last
  first=$(losses "$W/$1.jsonl" | awk 'NR <= 5 {s += $1; n++} END {print s/n}')
  last=$(losses "$W/$1.jsonl" | tail -5 | awk '{s+=$1} END {print s/NR}')
  echo "$1: first 5 steps $first, last 5 steps $last"
  awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < a - 0.5)}' || { echo "FAIL: $1: loss did not fall"; exit 1; }
}

# 1. Dropping trains.
train cf1 60
falls cf1
train dropless 20
d1=$(losses "$W/dropless.jsonl" | head -1)
c1=$(losses "$W/cf1.jsonl" | head -1)
echo "step 1: dropless $d1, capacity_factor 1.0 $c1"
[ "$d1" != "$c1" ] || { echo "FAIL: capacity_factor 1.0 dropped nothing at step 1"; exit 1; }

# 2. A capacity nothing exceeds is the dropless run.
train cf4 20
if ! cmp -s <(losses "$W/dropless.jsonl") <(losses "$W/cf4.jsonl"); then
  echo "FAIL: capacity_factor 4.0 losses differ from the dropless run's:"
  paste <(losses "$W/dropless.jsonl") <(losses "$W/cf4.jsonl") | head -20
  exit 1
fi
echo "capacity_factor 4.0: 20 losses identical to the dropless run's"

# 3. The position policy.
train position 60
falls position
echo "PASS"
