#!/usr/bin/env bash
# Upcycling a dense checkpoint to mixture-of-experts (docs/moe.md) and
# training MoE models on the host:
#   1. examples/tiny-moe.json (8 experts, top-2) trains: the loss falls;
#   2. tiny-gpt trained dense for 20 steps and saved, upcycled with a zero
#      router to 8 experts top-2 (G = 1) and to 8 fine-grained experts
#      top-2 (G = 2, virtual groups), and resumed with the MoE programs: the
#      loss of step 21 equals the dense run's step-21 loss plus the routers'
#      aux losses at uniform routing, 4 layers * (0.01 * 1 + 0.001 *
#      ln(8)^2) (load balancing is exactly alpha for uniform probabilities;
#      every logsumexp is ln 8). G = 1 is exact up to fp32 rounding of the
#      sum (the weight scaling by E/k = 4 and the weights 1/8 are powers of
#      two); G = 2 sums two half-width GEMMs, tolerance 1e-4;
#   3. with the paper's random router (std 0.02, shared by each virtual
#      group) the step-21 loss is within 0.02 of that: the MoE MLP is the
#      dense one times c_t = (E/k) * (sum of the top-2 probabilities) >= 1,
#      close to 1 for small router logits, and the aux losses move a little
#      off their uniform value;
#   4. --optimizer reset (zero_g1) starts the moments at zero, the default
#      --optimizer copy carries them: each expert's are its shard of the
#      dense moments times r and r^2, exactly (Inputs/
#      check_upcycled_moments.py; test/e2e/upcycle_demo.sh shows what that
#      does to the loss curve);
#      A program with expert biases resumes a checkpoint upcycled with
#      --expert-bias (zero biases) with the zero-router step-21 loss, and
#      refuses one upcycled without them, naming the missing tensor;
#   5. the CUDA target refuses MoE specs with expert biases, naming
#      model.moe.expert_bias (it has kernels for the other MoE ops); mtc-upcycle
#      refuses bad flags: a checkpoint without moments under --optimizer
#      copy.
set -euo pipefail
: "${MTC:?}" "${MTC_PREPROCESS:?}" "${MTC_UPCYCLE:?}" "${MTC_SRC:?}" "${MTC_E2E_WORK:?}"
PYTHON="${PYTHON:-/usr/bin/python3}"  # with numpy
W="$MTC_E2E_WORK/upcycle"
rm -rf "$W" && mkdir -p "$W"

corpus=(/usr/share/games/fortunes/fortunes /usr/share/games/fortunes/literature /usr/share/games/fortunes/science)
"$MTC_PREPROCESS" --input "${corpus[@]}" --output-prefix "$W/data" --tokenizer byte \
  --split-documents fortune > "$W/preprocess.log"

"$MTC" compile "$MTC_SRC/examples/tiny-gpt.json" --target host -o "$W/dense" > "$W/compile_dense.log"
"$MTC" compile "$MTC_SRC/examples/tiny-moe.json" --target host -o "$W/moe" > "$W/compile_moe.log"
"$MTC" compile "$MTC_SRC/test/e2e/Inputs/tiny-moe-g2.json" --target host -o "$W/moe_g2" > "$W/compile_g2.log"

losses() { grep -o '"loss":[^,}]*' "$1" | cut -d: -f2; }
loss_at() { grep "\"step\":$2," "$1" | grep -o '"loss":[^,}]*' | cut -d: -f2; }

# 1. The MoE model trains.
"$W/moe/train" --data "$W/data" --steps 60 --metrics "$W/moe60.jsonl" --log-interval 20 > "$W/moe60.log"
first=$(losses "$W/moe60.jsonl" | awk 'NR <= 5 {s += $1; n++} END {print s/n}')
last=$(losses "$W/moe60.jsonl" | tail -5 | awk '{s+=$1} END {print s/NR}')
echo "tiny-moe: first 5 steps $first, last 5 steps $last"
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < a - 0.5)}' || { echo "FAIL: MoE loss did not fall"; exit 1; }

# 2. Dense 20 steps, saved; the dense run continued gives step 21's loss.
"$W/dense/train" --data "$W/data" --steps 40 --exit-interval 20 --save "$W/dense_ckpt" \
  --metrics "$W/dense.jsonl" > "$W/dense1.log"
cp -r "$W/dense_ckpt" "$W/dense_ckpt_20"
"$W/dense/train" --data "$W/data" --steps 40 --save "$W/dense_ckpt" --resume \
  --metrics "$W/dense.jsonl" > "$W/dense2.log"
dense21=$(loss_at "$W/dense.jsonl" 21)
offset=$(awk 'BEGIN {printf "%.9f", 4 * (0.01 + 0.001 * log(8) * log(8))}')

check() {  # name, program, upcycle flags..., then "--" tolerance
  local name=$1 prog=$2; shift 2
  local flags=() tol
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  tol=$2
  "$MTC_UPCYCLE" "$W/dense_ckpt_20" "${flags[@]}" -o "$W/$name" > "$W/$name.log"
  "$W/$prog/train" --data "$W/data" --steps 30 --save "$W/$name" --resume \
    --metrics "$W/$name.jsonl" > "$W/$name.train.log"
  local moe21; moe21=$(loss_at "$W/$name.jsonl" 21)
  echo "$name: step 21 loss $moe21, dense $dense21 + aux at uniform routing $offset (tolerance $tol)"
  awk -v m="$moe21" -v d="$dense21" -v o="$offset" -v t="$tol" \
    'BEGIN {x = m - d - o; if (x < 0) x = -x; exit !(x <= t)}' ||
    { echo "FAIL: $name: |step-21 loss - dense - offset| above $tol"; exit 1; }
}
check zero_g1 moe --experts 8 --topk 2 --router-init zero --optimizer reset -- 2e-6
check zero_g2 moe_g2 --experts 8 --topk 2 --granularity 2 --router-init zero -- 1e-4
check random_g1 moe --experts 8 --topk 2 -- 0.02
# An expert-bias program (model.moe.expert_bias) resumes a checkpoint
# upcycled with --expert-bias (zero biases: the zero router's ties go as
# without them, so the same step-21 loss) and refuses one without them.
"$MTC" compile "$MTC_SRC/examples/tiny-moe.json" --target host --moe-router-enable-expert-bias \
  -o "$W/moe_bias" > "$W/compile_moe_bias.log"
check zero_bias moe_bias --experts 8 --topk 2 --router-init zero --optimizer reset --expert-bias -- 2e-6
"$MTC_UPCYCLE" "$W/dense_ckpt_20" --experts 8 --topk 2 -o "$W/no_bias" > "$W/no_bias.log"
if "$W/moe_bias/train" --data "$W/data" --steps 30 --save "$W/no_bias" --resume \
    > "$W/no_bias.train.log" 2>&1; then
  echo "FAIL: an expert-bias program resumed a checkpoint without expert biases"; exit 1
fi
grep -q "layers.0.mlp.router.expert_bias" "$W/no_bias.train.log" ||
  { echo "FAIL: the refusal does not name the missing bias: $(tail -3 "$W/no_bias.train.log")"; exit 1; }
grep -q "has no optimizer state" "$W/zero_g1.train.log" ||
  { echo "FAIL: the --optimizer reset run did not start with fresh AdamW moments"; exit 1; }
# The copied moments, exactly: G = 1 with the random router (r = 1/8 on fc1,
# 1/32 on fc2) and G = 2 with the zero router (r = 1, 1/8).
"$MTC_UPCYCLE" "$W/dense_ckpt_20" --experts 8 --topk 2 --granularity 2 --router-init zero \
  -o "$W/copy_g2" > "$W/copy_g2.log"
"$PYTHON" "$MTC_SRC/test/e2e/Inputs/check_upcycled_moments.py" "$W/dense_ckpt_20/step_000020" \
  "$W/copy_g2/step_000020" 8 2 2 1
"$PYTHON" "$MTC_SRC/test/e2e/Inputs/check_upcycled_moments.py" "$W/dense_ckpt_20/step_000020" \
  "$W/random_g1/step_000020" 8 2 1 0
if grep -q "has no optimizer state" "$W/random_g1.train.log"; then
  echo "FAIL: the --optimizer copy run (the default) started with fresh AdamW moments"; exit 1
fi

# 5. Refusals.
if "$MTC" compile "$MTC_SRC/examples/tiny-moe.json" --target cuda --moe-router-enable-expert-bias \
    -o "$W/cuda" > "$W/cuda.log" 2>&1; then
  echo "FAIL: the CUDA target accepted an MoE spec with expert biases"; exit 1
fi
grep -q "model.moe.expert_bias" "$W/cuda.log" ||
  { echo "FAIL: no model.moe.expert_bias in: $(cat "$W/cuda.log")"; exit 1; }
if "$MTC_UPCYCLE" "$W/dense_ckpt_20" --experts 6 --topk 2 --granularity 4 -o "$W/bad" > "$W/bad.log" 2>&1; then
  echo "FAIL: --experts 6 --granularity 4 accepted"; exit 1
fi
grep -q "multiple of --granularity" "$W/bad.log" || { echo "FAIL: $(cat "$W/bad.log")"; exit 1; }
# A dense checkpoint without moments (as one saved without its optimizer).
mkdir -p "$W/no_moments" && cp "$W/dense_ckpt_20/step_000020"/{model.safetensors,state.json} "$W/no_moments/"
sed -i 's/"has_optimizer": true/"has_optimizer": false/' "$W/no_moments/state.json"
if "$MTC_UPCYCLE" "$W/no_moments" --experts 8 --topk 2 -o "$W/bad2" > "$W/bad2.log" 2>&1; then
  echo "FAIL: --optimizer copy accepted a checkpoint without moments"; exit 1
fi
grep -q "has no optimizer state" "$W/bad2.log" || { echo "FAIL: $(cat "$W/bad2.log")"; exit 1; }
echo "refusals: CUDA target (expert biases) and bad upcycle flags"
echo "PASS"
