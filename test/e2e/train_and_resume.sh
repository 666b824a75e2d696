#!/usr/bin/env bash
# Compiles examples/tiny-gpt.json for the host, trains it on a slice of the
# fortunes corpus and checks that:
#   1. the loss falls (mean of the last 5 steps < mean of the first 5 - 0.5);
#   2. 40 steps straight and 20 steps + --resume for 20 more give identical
#      losses (the checkpoint holds parameters, AdamW moments, RNG and data
#      position);
#   3. a corrupt checkpoint and missing data are refused with a clear error.
set -euo pipefail
: "${MTC:?}" "${MTC_PREPROCESS:?}" "${MTC_SRC:?}" "${MTC_E2E_WORK:?}"
W="$MTC_E2E_WORK/train_and_resume"
rm -rf "$W" && mkdir -p "$W"

corpus=(/usr/share/games/fortunes/fortunes /usr/share/games/fortunes/literature /usr/share/games/fortunes/science)
"$MTC_PREPROCESS" --input "${corpus[@]}" --output-prefix "$W/data" --tokenizer byte \
  --split-documents fortune > "$W/preprocess.log"

"$MTC" compile "$MTC_SRC/examples/tiny-gpt.json" --target host -o "$W/prog" > "$W/compile.log"
T="$W/prog/train"

# Per-step loss from a metrics file, one per line.
losses() { grep -o '"loss":[^,}]*' "$1" | cut -d: -f2; }

"$T" --data "$W/data" --steps 60 --metrics "$W/m60.jsonl" --log-interval 20 > "$W/t60.log"
first=$(losses "$W/m60.jsonl" | awk 'NR <= 5 {s += $1; n++} END {print s/n}')
last=$(losses "$W/m60.jsonl" | tail -5 | awk '{s+=$1} END {print s/NR}')
echo "loss: first 5 steps $first, last 5 steps $last"
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < a - 0.5)}' || { echo "FAIL: loss did not fall"; exit 1; }

"$T" --data "$W/data" --steps 40 --metrics "$W/straight.jsonl" --log-interval 10 > "$W/straight.log"
"$T" --data "$W/data" --steps 40 --exit-interval 20 --save "$W/ckpt" --metrics "$W/resumed.jsonl" --log-interval 10 > "$W/first10.log"
"$T" --data "$W/data" --steps 40 --save "$W/ckpt" --resume --metrics "$W/resumed.jsonl" --log-interval 10 > "$W/second10.log"
if ! diff <(losses "$W/straight.jsonl") <(losses "$W/resumed.jsonl"); then
  echo "FAIL: 40 steps straight and 20 + resume 20 differ"; exit 1
fi
echo "resume: 40 losses identical"

# Bad inputs are refused with a message naming the file.
if "$T" --data "$W/nonexistent" --steps 40 > "$W/bad.log" 2>&1; then
  echo "FAIL: missing data accepted"; exit 1
fi
grep -q "nonexistent" "$W/bad.log" || { echo "FAIL: no file name in: $(cat "$W/bad.log")"; exit 1; }
ck=$(cat "$W/ckpt/latest")
ckdir="$W/ckpt/$ck"
[ -d "$ckdir" ] || ckdir="$ck"
truncate -s 100 "$ckdir/model.safetensors"
if "$T" --data "$W/data" --steps 40 --save "$W/ckpt" --resume > "$W/corrupt.log" 2>&1; then
  echo "FAIL: truncated checkpoint accepted"; exit 1
fi
grep -q "model.safetensors" "$W/corrupt.log" || { echo "FAIL: no file name in: $(cat "$W/corrupt.log")"; exit 1; }
echo "bad inputs: refused with messages"
echo "PASS"
