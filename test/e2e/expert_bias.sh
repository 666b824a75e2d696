#!/usr/bin/env bash
# Aux-loss-free load balancing (model.moe.expert_bias, docs/moe.md) on the
# host, with test/e2e/Inputs/parallel-moe-bias.json (8 experts top-2,
# softmax-then-top-k, no aux loss, MoE layers 0 and 2, rate 0.01):
#   1. the biases move: after 20 and 40 steps every MoE layer's bias is
#      nonzero, changed between the two, each entry a whole number of
#      rate steps and at most steps * rate from 0;
#   2. they balance the loads: the rows per expert of one batch (the
#      loads' slot of --dump-grads) at step 41 are more even (max / mean
#      load, per layer) than with the same weights and a zeroed bias, and
#      than a run of 40 steps whose bias barely moves (rate 1e-12: the
#      same program, no balancing to speak of);
#   3. checkpoints keep them: resuming step 20's checkpoint gives steps
#      21-40 and the final biases of the uninterrupted run, bit for bit;
#   4. parallel plans move them as one process does: dp = 2 ep = 2 (each
#      rank routes other tokens; the loads are summed over dp) and tp = 2 +
#      sp (every tp rank routes the same whole tokens) end step 5 with the
#      one-process run's biases, bit for bit (the full equivalence, losses,
#      gradients and checkpoints both ways, is
#      e2e.parallel_equivalence.moe-bias).
set -euo pipefail
: "${MTC:?}" "${MTC_PREPROCESS:?}" "${MTC_LAUNCH:?}" "${MTC_SRC:?}" "${MTC_E2E_WORK:?}" "${PYTHON:?}"
W="$MTC_E2E_WORK/expert_bias"
rm -rf "$W" && mkdir -p "$W"
SPEC="$MTC_SRC/test/e2e/Inputs/parallel-moe-bias.json"
"$MTC_PREPROCESS" --input /usr/share/games/fortunes/fortunes --output-prefix "$W/data" \
  --tokenizer byte --split-documents fortune > /dev/null

"$MTC" compile "$SPEC" --target host -o "$W/on" > "$W/compile_on.log"
"$MTC" compile "$SPEC" --target host --moe-router-bias-update-rate 1e-12 -o "$W/off" \
  > "$W/compile_off.log"
"$W/on/train" --data "$W/data" --steps 40 --save "$W/ck" --save-interval 5 \
  --metrics "$W/on.jsonl" > "$W/on.log"
"$W/off/train" --data "$W/data" --steps 40 --save "$W/ck_off" --save-interval 40 > "$W/off.log"

# A copy of step 40's checkpoint with every expert bias zeroed.
cp -r "$W/ck/step_000040" "$W/zeroed"
"$PYTHON" - "$W/zeroed/model.safetensors" <<'PY'
import json, struct, sys
path = sys.argv[1]
b = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
header = json.loads(b[8:8 + n])
hits = 0
for name, t in header.items():
    if name.endswith(".expert_bias"):
        s, e = t["data_offsets"]
        b[8 + n + s:8 + n + e] = bytes(e - s)
        hits += 1
assert hits == 2, f"expected 2 expert biases in the checkpoint, found {hits}"
open(path, "wb").write(b)
PY
for run in on:ck/step_000040 zeroed:zeroed off:ck_off/step_000040; do
  name=${run%%:*} ckpt=${run#*:}
  prog=$([ "$name" = off ] && echo off || echo on)
  "$W/$prog/train" --data "$W/data" --steps 41 --load "$W/$ckpt" \
    --dump-grads "$W/loads_$name.safetensors" > "$W/dump_$name.log"
done

# Step 3: resume from step 20.
mkdir -p "$W/ck_resumed"
"$W/on/train" --data "$W/data" --steps 40 --load "$W/ck/step_000020" --resume \
  --save "$W/ck_resumed" --save-interval 40 --metrics "$W/resumed.jsonl" > "$W/resumed.log"

# Step 4: two plans, 5 steps.
for plan in "dp=2,ep=2:2:--dp 2 --ep 2" "tp=2,sp:2:--tp 2 --sp"; do
  IFS=: read -r name ranks flags <<< "$plan"
  dir="$W/$(echo "$name" | tr ',=' '_-')"
  # shellcheck disable=SC2086
  "$MTC" compile "$SPEC" --target host $flags -o "$dir" > "$dir.compile.log"
  "$MTC_LAUNCH" -n "$ranks" "$dir/train" --data "$W/data" --steps 5 --save "$dir.ck" \
    --save-interval 5 > "$dir.log" 2>&1 || { echo "FAIL $name: training failed"; tail -5 "$dir.log"; exit 1; }
done

"$PYTHON" - "$W" <<'PY'
import json, struct, sys, array
W = sys.argv[1]
RATE = 0.01
LAYERS = ["layers.0.mlp.router.expert_bias", "layers.2.mlp.router.expert_bias"]

def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    out = {}
    for name, t in json.loads(b[8:8 + n]).items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        s, e = t["data_offsets"]
        a = array.array("f")
        a.frombytes(b[8 + n + s:8 + n + e])
        out[name] = list(a)
    return out

def biases(ckpt):
    t = tensors(f"{W}/{ckpt}/model.safetensors")
    return {k: t[k] for k in LAYERS}

fails = []
def check(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        fails.append(what)

print("1. the biases move")
b20, b40 = biases("ck/step_000020"), biases("ck/step_000040")
for k in LAYERS:
    print(f"  {k}: step 20 {[round(x, 3) for x in b20[k]]}")
    print(f"  {k}: step 40 {[round(x, 3) for x in b40[k]]}")
    for step, b in ((20, b20[k]), (40, b40[k])):
        check(any(x != 0 for x in b), f"{k} nonzero at step {step}")
        check(all(abs(x / RATE - round(x / RATE)) < 1e-3 and abs(x) <= step * RATE + 1e-6 for x in b),
              f"{k} at step {step}: whole rate steps, |b| <= {step} * rate")
    check(b20[k] != b40[k], f"{k} changed between steps 20 and 40")

print("2. they balance the loads (rows per expert of step 41's batch / 4 microbatches, max / mean)")
def imbalance(name):
    t = tensors(f"{W}/loads_{name}.safetensors")
    r = {}
    for k in LAYERS:
        loads = t[k]
        mean = sum(loads) / len(loads)
        r[k] = max(loads) / mean
        print(f"  {name:7} {k}: loads {[round(x, 2) for x in loads]}, max/mean {r[k]:.3f}")
    return r
on, zeroed, off = imbalance("on"), imbalance("zeroed"), imbalance("off")
for k in LAYERS:
    check(on[k] < zeroed[k], f"{k}: learned bias {on[k]:.3f} < zeroed bias {zeroed[k]:.3f}")
    check(on[k] < off[k], f"{k}: balanced run {on[k]:.3f} < unbalanced run {off[k]:.3f}")

print("3. checkpoints keep them")
def losses(path):
    return {json.loads(l)["step"]: json.loads(l)["loss"] for l in open(path)}
full, resumed = losses(f"{W}/on.jsonl"), losses(f"{W}/resumed.jsonl")
steps = sorted(resumed)
check(steps == list(range(21, 41)), f"the resumed run ran steps 21-40 (got {steps[:1]}..{steps[-1:]})")
check(all(resumed[s] == full[s] for s in steps), "steps 21-40: the uninterrupted run's losses, bit for bit")
check(biases("ck_resumed/step_000040") == b40, "final biases: the uninterrupted run's, bit for bit")

print("4. parallel plans move them as one process does")
b5 = biases("ck/step_000005")
check(all(any(x != 0 for x in b5[k]) for k in LAYERS), "the one-process biases moved by step 5")
for plan in ("dp-2_ep-2", "tp-2_sp"):
    got = biases(f"{plan}.ck/step_000005")
    check(got == b5, f"{plan}: step 5's biases are the one-process run's")
sys.exit(1 if fails else 0)
PY
echo "PASS"
