#!/usr/bin/env bash
# Usage: scripts/compare_codegen.sh OLD_MTC NEW_MTC
#
# Compiles every example spec under a set of parallel plans for both
# targets with two `mtc` binaries (--emit=source) and reports, per case,
# whether the generated programs are byte-identical. A refactoring of the
# code generators that claims "same program" proves it with this (exit 0
# only when every case is identical; cases both binaries refuse count as
# identical when their messages match).
set -uo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_MTC NEW_MTC" >&2; exit 2; }
OLD=$1 NEW=$2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
CASES=(
  "tiny-gpt host" "tiny-gpt cuda" "tiny-llama host" "gpt2-124m cuda"
  "gpt-1.3b cuda" "llama-1b cuda"
  "tiny-gpt cuda --tp 2" "tiny-gpt cuda --tp 2 --tp-backward-lanes=false"
  "tiny-gpt cuda --tp 2 --sp" "tiny-gpt cuda --dp 2 --global-batch-size 16"
  "tiny-gpt cuda --dp 2 --global-batch-size 16 --use-distributed-optimizer"
  "tiny-gpt cuda --tp 2 --dp 2 --global-batch-size 16"
  "tiny-gpt host --tp 2 --sp --dp 2 --global-batch-size 16"
  "gpt-1.3b cuda --tp 2" "gpt2-124m cuda --tp 2" "gpt-1.3b cuda --dp 2"
  "llama-1b cuda --tp 2" "tiny-llama host --tp 2 --sp"
)
same=0 differ=0
for c in "${CASES[@]}"; do
  read -r spec target flags <<< "$c"
  args=("$ROOT/examples/$spec.json" --target "$target" --emit=source)
  # shellcheck disable=SC2206
  [ -n "${flags:-}" ] && args+=($flags)
  "$OLD" compile "${args[@]}" > "$W/old" 2>&1
  "$NEW" compile "${args[@]}" > "$W/new" 2>&1
  if cmp -s "$W/old" "$W/new"; then
    same=$((same + 1)); echo "same     $c"
  else
    differ=$((differ + 1)); echo "DIFFERS  $c ($(diff "$W/old" "$W/new" | grep -c '^[<>]') lines)"
  fi
done
echo "$same identical, $differ differ"
[ "$differ" -eq 0 ]
