#!/usr/bin/env python3
"""Compares two gradient dumps (`train --dump-grads`) of the same global batch.

Usage: compare_dumps.py REFERENCE.safetensors OTHER.safetensors [--rtol 1e-5]

The reference is the one-process run; the other a parallel plan of the same
program. Checks: the same batch (tokens, targets), the loss within rtol, and
for every parameter ||g - g_ref|| / ||g_ref|| <= rtol. A vocabulary padded
further under tensor parallelism (more embedding rows) is compared on the
reference's rows, and the extra rows must be zero (padding never receives a
gradient). Prints the worst tensors; exits 1 on any failure.
"""
import argparse
import math
import sys

import numpy as np

from reference_gpt import CheckError, read_safetensors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reference")
    ap.add_argument("other")
    ap.add_argument("--rtol", type=float, default=1e-5)
    a = ap.parse_args()
    ref, ref_meta = read_safetensors(a.reference)
    got, got_meta = read_safetensors(a.other)
    failures = []
    for name in ("batch.tokens", "batch.targets"):
        if name not in ref or name not in got or not np.array_equal(ref[name], got[name]):
            failures.append(f"{name}: the two runs did not train on the same batch")
    lr, lg = float(ref_meta["mtc.loss"]), float(got_meta["mtc.loss"])
    loss_err = abs(lg - lr) / max(abs(lr), 1e-12)
    if not loss_err <= a.rtol:
        failures.append(f"loss {lg} vs {lr}: relative error {loss_err:.3g}")
    missing = sorted(set(ref) ^ set(got))
    if missing:
        failures.append(f"tensors in only one dump: {missing}")
    rows = []
    for name, r in ref.items():
        if name.startswith("batch.") or name not in got:
            continue
        g = got[name]
        if g.shape != r.shape:
            if g.ndim == r.ndim and g.shape[1:] == r.shape[1:] and g.shape[0] > r.shape[0]:
                extra = g[r.shape[0]:]
                if np.any(extra != 0):
                    failures.append(f"{name}: padding rows got a gradient")
                g = g[: r.shape[0]]
            else:
                failures.append(f"{name}: shape {list(g.shape)} vs {list(r.shape)}")
                continue
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        den = np.linalg.norm(r64)
        err = np.linalg.norm(g64 - r64) / den if den > 0 else np.linalg.norm(g64)
        rows.append((err, name))
        if not err <= a.rtol:
            failures.append(f"{name}: relative error {err:.3g}")
    rows.sort(reverse=True)
    print(f"loss {lr:.8f} vs {lg:.8f} (relative error {loss_err:.2e}); "
          f"{len(rows)} gradients, worst:")
    for err, name in rows[:5]:
        print(f"  {err:.2e}  {name}")
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckError as e:
        print(f"FAIL: {e}")
        sys.exit(1)
