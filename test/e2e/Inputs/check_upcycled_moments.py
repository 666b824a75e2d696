"""Checks mtc-upcycle --optimizer copy's moments (docs/moe.md, "Optimizer
state"): each expert's exp_avg is its shard of the dense tensor's times r,
exp_avg_sq times r^2, exactly (r a power of two here), the routers' are
zero and every other tensor's are copied.
usage: check_upcycled_moments.py DENSE_STEP_DIR MOE_STEP_DIR E K G ZERO_ROUTER(0|1)"""
import json
import struct
import sys

import numpy as np


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=np.float32).reshape(t["shape"])
    return out


dense_dir, moe_dir, E, k, G, zero = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
dense = load(dense_dir + "/optimizer.safetensors")
moe = load(moe_dir + "/optimizer.safetensors")
c = E * G / k  # softmax-topk
f = 1.0 if zero else k / E
checked = 0
for name, m in moe.items():
    base, kind = name.rsplit(".", 1)
    power = 1 if kind == "exp_avg" else 2
    if ".mlp.router." in name:
        assert not m.any(), name + ": a router's moments must start at zero"
    elif ".mlp.experts." in name:
        layer, rest = base.split(".mlp.experts.")
        src = dense[layer + ".mlp." + rest + "." + kind]
        r = f * G / k if rest.startswith("fc1") else f * G / (k * c)
        for e in range(E):
            s = e % G
            if rest == "fc1.weight" or rest == "fc1.bias":
                fs = src.shape[0] // G
                want = src[s * fs:(s + 1) * fs]
            elif rest == "fc2.weight":
                fs = src.shape[1] // G
                want = src[:, s * fs:(s + 1) * fs]
            else:
                want = src
            assert np.array_equal(m[e], want * np.float32(r ** power)), f"{name}[{e}]"
    else:
        assert np.array_equal(m, dense[name]), name + ": not copied"
    checked += 1
print(f"moments: {checked} tensors checked (E={E} k={k} G={G} r fc1 {f * G / k:g}, fc2 {f * G / (k * c):g})")
