#!/usr/bin/env bash
# The measured idle fraction of each pipeline schedule on the host target
# against the schedule's own figure (docs/pipeline.md, performance.md).
#   bench/pipeline_bubble.sh [OUTDIR]      (needs a build with mtc; no GPU)
# A 4-layer GPT (hidden 256, sequence 128, micro-batch 2) trains 6 steps
# under pp = 2 with 8 microbatches for each schedule, one process per pipeline
# rank with one BLAS thread each (OPENBLAS_NUM_THREADS=1, so that the ranks
# do not fight over the cores; run it on a machine with >= 2 idle cores);
# `train --trace` measures, per rank, 1 - (time in pieces) / (step time)
# over the steps after the first. The schedule's figure is the idle share of
# a step with equal pieces: (p-1)/(m+p-1) for GPipe and 1F1B, (p-1)/(v*m+p-1)
# interleaved; ZB-H1 a third of 1F1B's idle time. The compiler's own
# simulation (plan.txt, "idle") uses each piece's FLOPs instead.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${MTC_BUILD_DIR:-build}/bin"
W="${1:-/tmp/mtc-pipeline-bubble}"
mkdir -p "$W"
cat > "$W/spec.json" <<'JSON'
{
  "model": {"name": "bubble-gpt", "arch": "gpt", "num_layers": 4, "hidden_size": 256,
            "num_heads": 4, "vocab_size": 256, "seq_length": 128},
  "training": {"micro_batch_size": 2, "global_batch_size": 16, "train_steps": 6,
               "precision": "fp32", "optimizer": {"lr": 1e-3, "warmup_steps": 1}}
}
JSON
[ -f "$W/data.bin" ] || "$BIN/mtc-preprocess" --input /usr/share/games/fortunes/fortunes \
  --output-prefix "$W/data" --tokenizer byte --split-documents fortune > /dev/null
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
printf '%-12s %-22s %-18s %s\n' schedule "measured idle (r0 r1)" "schedule's figure" "compiler's simulation (r0 r1)"
for s in gpipe 1f1b interleaved zb-h1; do
  extra=()
  [ "$s" = interleaved ] && extra=(--virtual-pipeline-model-parallel-size 2)
  "$BIN/mtc" compile "$W/spec.json" --pp 2 --pipeline-schedule "$s" "${extra[@]}" -o "$W/$s" \
    > "$W/$s.compile.log"
  "$BIN/mtc-launch" -n 2 "$W/$s/train" --data "$W/data" --steps 6 --trace "$W/$s.trace.json" \
    > "$W/$s.log" 2>&1
  measured=$(grep -o 'per rank: .*' "$W/$s.log" | cut -d' ' -f3-)
  sim=$(grep -E '^  rank [0-9]' "$W/$s/plan.txt" | grep -o 'idle [0-9.]*' | cut -d' ' -f2 | tr '\n' ' ')
  case $s in
    gpipe|1f1b) figure="1/9 = 0.111" ;;
    interleaved) figure="1/17 = 0.059" ;;
    zb-h1) figure="1/25 = 0.040" ;;
  esac
  printf '%-12s %-22s %-18s %s\n' "$s" "$measured" "$figure" "$sim"
done
echo "traces: $W/*.trace.json (chrome://tracing or ui.perfetto.dev); pictures: $W/*/schedule.svg"
