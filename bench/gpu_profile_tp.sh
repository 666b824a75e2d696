#!/usr/bin/env bash
# Where tensor parallelism's time goes on two GPUs: profiles the 1.3B GPT at
# tp = 2 (MTC_PREPARE=parallel bench/prepare_gpu.sh builds it) with Nsight
# Systems and reports, for GPU 0 over the last steps, the time in NCCL
# kernels, how much of it ran while a compute kernel was running, and the
# compute kernels' own time. Needs nsys on the GPU machine.
#   bash bench/gpu_profile_tp.sh [PROGRAM [STEPS [ENV...]]]
# Writes summary.txt under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
D=.devrun
OUT="${OUT:-gpu-out}"
PROG="${1:-gpt-1.3b-tp2}"
STEPS="${2:-8}"
shift 2 2>/dev/null || shift $#
mkdir -p "$OUT"
[ -f "$D/lib.tar.xz" ] && mkdir -p /tmp/mtc-lib && tar -xJf "$D/lib.tar.xz" -C /tmp/mtc-lib
[ -f "$D/progs.tar.xz" ] && [ ! -d "$D/prog-$PROG" ] && tar -xJf "$D/progs.tar.xz" -C "$D"
export LD_LIBRARY_PATH="/tmp/mtc-lib/lib:${LD_LIBRARY_PATH:-}"
export NCCL_NVLS_ENABLE=0
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
[ -n "$NSYS" ] || { echo "no nsys on this machine" | tee "$OUT/summary.txt"; exit 0; }
python3 -c "
import numpy as np; np.random.seed(0)
np.random.randint(0, 50257, size=2*64*1025*40, dtype=np.uint16).tofile('/tmp/mtc-random.tokens')"
env "$@" "$NSYS" profile -t cuda -o /tmp/mtc-prof --force-overwrite true \
  "$D/bin/mtc-launch" -n 2 "$D/prog-$PROG/train" --data /tmp/mtc-random.tokens --split 100,0 \
  --steps "$STEPS" --log-interval 1 > "$OUT/profile.log" 2>&1 || tail -5 "$OUT/profile.log"
"$NSYS" export --type sqlite -o /tmp/mtc-prof.sqlite --force-overwrite true /tmp/mtc-prof.nsys-rep \
  >> "$OUT/profile.log" 2>&1
python3 - /tmp/mtc-prof.sqlite "$STEPS" <<'PY' 2>&1 | tee "$OUT/summary.txt"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
steps = int(sys.argv[2])
rows = db.execute("""
  SELECT k.start, k.end, k.deviceId, k.streamId, s.value
  FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s ON k.shortName = s.id
  ORDER BY k.start""").fetchall()
dev = min(r[2] for r in rows)
rows = [r for r in rows if r[2] == dev]
t0, t1 = rows[0][0], rows[-1][1]
# The last 3 steps: the window is cut by the optimizer's AdamW launches.
adam = [r[0] for r in rows if "adamw" in r[4].lower()]
start = adam[-4] if len(adam) >= 4 else t0 + (t1 - t0) // 2
win = [r for r in rows if r[0] >= start]
nccl = [(a, b) for a, b, _, _, n in win if "nccl" in n.lower()]
comp = [(a, b) for a, b, _, _, n in win if "nccl" not in n.lower()]
def union(iv):
    out = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]: out[-1][1] = max(out[-1][1], b)
        else: out.append([a, b])
    return out
cu = union(comp)
def overlap(a, b):
    tot = 0
    for c, d in cu:
        if d <= a: continue
        if c >= b: break
        tot += min(b, d) - max(a, c)
    return tot
n_time = sum(b - a for a, b in union(nccl))
n_over = sum(overlap(a, b) for a, b in union(nccl))
span = win[-1][1] - start
print(f"GPU {dev}, last {min(3, len(adam) - 1)} steps, {span/1e6:.1f} ms:")
print(f"  NCCL kernels {len(nccl)}, busy {n_time/1e6:.1f} ms, of which beside compute {n_over/1e6:.1f} ms")
print(f"  compute kernels busy {sum(b - a for a, b in cu)/1e6:.1f} ms; idle {max(0, span - sum(b - a for a, b in union(nccl + comp)))/1e6:.1f} ms")
by = {}
for a, b, _, _, n in win:
    k = n[:60]
    by[k] = by.get(k, 0) + (b - a)
for k, v in sorted(by.items(), key=lambda x: -x[1])[:15]:
    print(f"  {v/1e6:8.2f} ms  {k}")
PY
