#!/usr/bin/env bash
# Builds examples/sharding-plugin out of tree against this build's mtc
# package, loads it into `mtc compile --pass-plugin` and `mtc-opt
# --load-pass-plugin`, and checks that its policy (tensor parallelism for the
# MLPs only) is what the partitioner executed: MLP weights split, attention
# and embeddings whole, one all_reduce per layer forward (after fc2).
set -euo pipefail
: "${MTC:?}" "${MTC_OPT:?}" "${MTC_SRC:?}" "${MTC_E2E_WORK:?}" "${MTC_PACKAGE_DIR:?}"
W="$MTC_E2E_WORK/sharding_plugin"
rm -rf "$W" && mkdir -p "$W"
cmake -S "$MTC_SRC/examples/sharding-plugin" -B "$W/build" -G Ninja \
  -Dmtc_DIR="$MTC_PACKAGE_DIR" > "$W/configure.log" 2>&1 || { cat "$W/configure.log"; exit 1; }
cmake --build "$W/build" > "$W/build.log" 2>&1 || { cat "$W/build.log"; exit 1; }
PLUGIN="$W/build/ShardMlpOnly.so"

"$MTC" compile "$MTC_SRC/examples/tiny-gpt.json" --tp 2 --pass-plugin "$PLUGIN" \
  --sharding-passes=example-shard-mlp-only --emit=train > "$W/train.mlir"
split=$(grep 'mtc.shard = ' "$W/train.mlir" | grep -o 'mtc.param "[^"]*"' | sort -u)
grep -q '"layers.0.mlp.fc1.weight"' <<< "$split" || { echo "FAIL: fc1 not split"; exit 1; }
grep -q '"layers.3.mlp.fc2.weight"' <<< "$split" || { echo "FAIL: fc2 not split"; exit 1; }
if grep -qE 'attn|embedding' <<< "$split"; then echo "FAIL: attention or embedding split: $split"; exit 1; fi
n=$(sed -n '/func.func @forward/,/^  }/p' "$W/train.mlir" | grep -c "shard.all_reduce")
[ "$n" = 4 ] || { echo "FAIL: $n all_reduces in @forward, expected 4 (one per layer)"; exit 1; }

"$MTC" compile "$MTC_SRC/examples/tiny-gpt.json" --tp 2 --emit=mlir > "$W/forward.mlir"
"$MTC_OPT" --load-pass-plugin="$PLUGIN" --pass-pipeline='builtin.module(example-shard-mlp-only)' \
  "$W/forward.mlir" > "$W/annotated.mlir"
[ "$(grep -c 'shard.shard ' "$W/annotated.mlir")" = 12 ] || { echo "FAIL: expected 12 annotations (3 per layer)"; exit 1; }

# A pipeline naming a pass nobody registered is refused clearly.
if "$MTC" compile "$MTC_SRC/examples/tiny-gpt.json" --tp 2 --sharding-passes=no-such-pass \
     --emit=train > "$W/bad.log" 2>&1; then echo "FAIL: unknown pass accepted"; exit 1; fi
grep -q "is not a valid pass pipeline" "$W/bad.log" || { cat "$W/bad.log"; exit 1; }
echo PASS
