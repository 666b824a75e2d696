#!/usr/bin/env python3
"""An independent PyTorch model of an mtc-compiled GPT / Llama, used to check
the generated training program's loss and gradients.

Given the compiled program's resolved spec (DIR/spec.json, written by
`mtc compile`), its parameters (a checkpoint's model.safetensors, normally
from `train --init-only`) and a gradient dump of the same parameters
(`train --dump-grads`), this builds the model from the spec in float64 on the
CPU, runs the dumped batch through it (microbatch by microbatch, as the
trainer does), backpropagates with autograd and compares:

    loss:      |loss_mtc - loss_ref| / |loss_ref|              <= tol
    gradients: ||g_mtc - g_ref|| / ||g_ref||  for EVERY tensor <= tol
               (the absolute ||g_mtc - g_ref|| where ||g_ref|| == 0)

It prints one row per tensor, the 5 worst, and `PASS` as the last line; any
mismatch, or any missing, unexpected or misshapen tensor, exits 1.

The model, written from docs/spec.md and docs/checkpoints.md (not from the
compiler's code):
  x = wte[tokens] (+ wpe[pos] for learned positions)  (post-LN: embedding.norm)
  per layer, pre-LN:  x += attn(norm(x)); x += mlp(norm(x));  final_norm at the end
             post-LN: x = norm(x + attn(x)); x = norm(x + mlp(x))
  attn: fused qkv linear in Megatron's grouped layout (KV groups of
        [R = H/KV query heads, k, v], Dh each), rotate-half RoPE on q and k
        (theta_c = pos * base^(-2c/Dh)), softmax(q k^T / sqrt(Dh)) v with a
        causal mask, heads concatenated, output projection
  mlp:  fc1 -> gelu (erf) | gelu_tanh | squared_relu -> fc2,  or  down(silu(gate(x)) * up(x))
  logits = x @ W^T, W = wte when tied else lm_head; columns past vocab_size
  (vocabulary padding) are excluded from the softmax; loss = mean
  cross-entropy over targets != -1, averaged over the microbatches.
Linear weights are (out, in); biases and LayerNorm's beta exist iff
model.bias. For a step-0 checkpoint it also checks the initialization the
spec implies (ones / zeros / normal(0, init_std), output projections
init_std / sqrt(2 * num_layers)).

Not modelled (refused with a message): dropout > 0 (its masks come from the
runtime's counter-based RNG) and arch "bert" (its attention-mask input is not
trained by the host target yet).

Needs only Python 3, numpy and torch (1.13 is enough); safetensors files are
parsed by hand.
"""

import argparse
import json
import math
import struct
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F


class CheckError(Exception):
    """A problem with the inputs or a mismatch that stops the check."""


# ---------------------------------------------------------------------------
# safetensors: [u64 LE header length N][N bytes of JSON][raw LE tensor data]
# ---------------------------------------------------------------------------

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U8": "u1"}


def read_safetensors(path):
    """Returns (OrderedDict name -> numpy array, metadata dict)."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise CheckError(f"cannot read {path}: {e.strerror}")
    if len(blob) < 8:
        raise CheckError(f"{path}: {len(blob)} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise CheckError(f"{path}: header length {n} runs past the end of the file ({len(blob)} bytes)")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckError(f"{path}: the header is not valid JSON: {e}")
    if not isinstance(header, dict):
        raise CheckError(f"{path}: the header is not a JSON object")
    data = memoryview(blob)[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    tensors = OrderedDict()
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckError(f"{where}: entry needs dtype, shape and data_offsets [begin, end]")
        if dtype not in _DTYPES:
            raise CheckError(f"{where}: dtype {dtype} is not supported here ({', '.join(_DTYPES)})")
        np_dtype = np.dtype(_DTYPES[dtype])
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(d < 0 for d in shape) or not 0 <= begin <= end <= len(data):
            raise CheckError(f"{where}: shape {shape} / data_offsets [{begin}, {end}] invalid "
                             f"(data section is {len(data)} bytes)")
        if end - begin != numel * np_dtype.itemsize:
            raise CheckError(f"{where}: {end - begin} bytes for {dtype} {shape} "
                             f"({numel * np_dtype.itemsize} expected)")
        tensors[name] = np.frombuffer(data[begin:end], dtype=np_dtype).reshape(shape).copy()
    return tensors, meta


# ---------------------------------------------------------------------------
# The model's parameters, from the spec
# ---------------------------------------------------------------------------

def load_spec(path):
    try:
        with open(path) as f:
            spec = json.load(f)
    except OSError as e:
        raise CheckError(f"cannot read {path}: {e.strerror}")
    except json.JSONDecodeError as e:
        raise CheckError(f"{path}: not valid JSON: {e}")
    m = spec.get("model")
    needed = ["arch", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "ffn_hidden_size",
              "vocab_size", "padded_vocab_size", "seq_length", "norm", "norm_placement", "norm_eps",
              "activation", "position_embedding", "rope_theta", "tied_embeddings", "bias", "causal",
              "hidden_dropout", "attention_dropout", "init_std"]
    if not isinstance(m, dict) or any(k not in m for k in needed):
        missing = needed if not isinstance(m, dict) else [k for k in needed if k not in m]
        raise CheckError(f"{path}: not a resolved spec (as mtc compile writes DIR/spec.json); "
                         f"model lacks {', '.join(missing)}")
    if m["arch"] == "bert" or not m["causal"]:
        raise CheckError(f"{path}: arch {m['arch']!r} / causal {m['causal']}: bidirectional models with an "
                         "attention-mask input are not trained by the host target yet; not checked here")
    if m["hidden_dropout"] > 0 or m["attention_dropout"] > 0:
        raise CheckError(f"{path}: dropout {m['hidden_dropout']} / {m['attention_dropout']}: the runtime's "
                         "dropout masks are not modelled here; check a spec without dropout")
    return spec


def expected_params(m):
    """OrderedDict name -> (shape, init, std), init in {"normal", "ones", "zeros"}."""
    d, L = m["hidden_size"], m["num_layers"]
    h, kv = m["num_heads"], m["num_kv_heads"]
    dh = d // h
    std, out_std = m["init_std"], m["init_std"] / math.sqrt(2.0 * L)
    p = OrderedDict()

    def linear(name, out, inp, s):
        p[name + ".weight"] = ((out, inp), "normal", s)
        if m["bias"]:
            p[name + ".bias"] = ((out,), "zeros", 0.0)

    def norm(name):
        p[name + ".weight"] = ((d,), "ones", 0.0)
        if m["norm"] == "layernorm" and m["bias"]:
            p[name + ".bias"] = ((d,), "zeros", 0.0)

    p["embedding.word_embeddings.weight"] = ((m["padded_vocab_size"], d), "normal", std)
    if m["position_embedding"] == "learned":
        p["embedding.position_embeddings.weight"] = ((m["seq_length"], d), "normal", std)
    post = m["norm_placement"] == "post"
    if post:
        norm("embedding.norm")
    for i in range(L):
        pre = f"layers.{i}"
        if not post:
            norm(pre + ".input_norm")
        linear(pre + ".attn.qkv", (h + 2 * kv) * dh, d, std)
        linear(pre + ".attn.proj", d, h * dh, out_std)
        norm(pre + (".post_attn_norm" if post else ".pre_mlp_norm"))
        if m["activation"] == "swiglu":
            linear(pre + ".mlp.gate", m["ffn_hidden_size"], d, std)
            linear(pre + ".mlp.up", m["ffn_hidden_size"], d, std)
            linear(pre + ".mlp.down", d, m["ffn_hidden_size"], out_std)
        else:
            linear(pre + ".mlp.fc1", m["ffn_hidden_size"], d, std)
            linear(pre + ".mlp.fc2", d, m["ffn_hidden_size"], out_std)
        if post:
            norm(pre + ".post_mlp_norm")
    if not post:
        norm("final_norm")
    if not m["tied_embeddings"]:
        p["lm_head.weight"] = ((m["padded_vocab_size"], d), "normal", std)
    return p


def check_names(what, found, expected):
    """found: name -> shape. Raises listing every missing, unexpected or misshapen tensor."""
    problems = []
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"missing {name} {list(shape)}")
        elif tuple(found[name]) != tuple(shape):
            problems.append(f"{name}: shape {list(found[name])}, the spec gives {list(shape)}")
    for name in found:
        if name not in expected:
            problems.append(f"unexpected {name} {list(found[name])}")
    if problems:
        raise CheckError(f"{what} does not match the model of the spec:\n  " + "\n  ".join(problems))


def check_init(params, expected):
    """Problems with a step-0 checkpoint's values against the spec's init."""
    problems = []
    for name, (_, init, std) in expected.items():
        x = params[name].astype(np.float64).ravel()
        if init == "zeros" and np.any(x != 0):
            problems.append(f"{name}: expected zeros, max |x| = {np.abs(x).max():.3g}")
        elif init == "ones" and np.any(x != 1):
            problems.append(f"{name}: expected ones, max |x - 1| = {np.abs(x - 1).max():.3g}")
        elif init == "normal":
            n = x.size
            mean, sd = x.mean(), x.std()
            # 6-sigma bounds on the sample mean and standard deviation.
            if abs(mean) > 6 * std / math.sqrt(n) or abs(sd / std - 1) > 6 / math.sqrt(2 * n):
                problems.append(f"{name}: expected normal(0, {std:.6g}), sample mean {mean:.3g}, "
                                f"std {sd:.6g} over {n} values")
    return problems


# ---------------------------------------------------------------------------
# The model, in float64
# ---------------------------------------------------------------------------

class ReferenceGPT:
    def __init__(self, m, params):
        self.m = m
        self.p = params  # name -> float64 leaf tensor with requires_grad

    def linear(self, name, x):
        return F.linear(x, self.p[name + ".weight"], self.p.get(name + ".bias"))

    def norm(self, name, x):
        m = self.m
        g = self.p[name + ".weight"]
        if m["norm"] == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), g, self.p.get(name + ".bias"), m["norm_eps"])
        # RMSNorm: x / sqrt(mean(x^2) + eps) * g
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + m["norm_eps"]) * g

    def rope(self, x):
        """Rotate-half RoPE on (B, S, heads, Dh) at positions 0..S-1."""
        s, dh = x.shape[1], x.shape[-1]
        half = dh // 2
        inv_freq = self.m["rope_theta"] ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / dh)
        theta = torch.arange(s, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (S, Dh/2)
        cos, sin = theta.cos()[None, :, None, :], theta.sin()[None, :, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    def attention(self, prefix, x):
        m = self.m
        b, s, d = x.shape
        h, kv = m["num_heads"], m["num_kv_heads"]
        r, dh = h // kv, d // h
        qkv = self.linear(prefix + ".qkv", x).view(b, s, kv, r + 2, dh)
        q = qkv[:, :, :, :r, :].reshape(b, s, h, dh)   # head g*R + i = group g, slot i
        k = qkv[:, :, :, r, :]                          # (B, S, KV, Dh)
        v = qkv[:, :, :, r + 1, :]                      # (B, S, KV, Dh)
        if m["position_embedding"] == "rope":
            q, k = self.rope(q), self.rope(k)
        k = k.repeat_interleave(r, dim=2)               # query head j reads group j // R
        v = v.repeat_interleave(r, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, Dh)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (B, H, S, S)
        if m["causal"]:
            future = torch.ones(s, s, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v          # (B, H, S, Dh)
        out = out.transpose(1, 2).reshape(b, s, h * dh)
        return self.linear(prefix + ".proj", out)

    def mlp(self, prefix, x):
        act = self.m["activation"]
        if act == "swiglu":
            y = F.silu(self.linear(prefix + ".gate", x)) * self.linear(prefix + ".up", x)
            return self.linear(prefix + ".down", y)
        y = self.linear(prefix + ".fc1", x)
        if act == "squared_relu":
            y = torch.relu(y) ** 2
        else:
            y = F.gelu(y, approximate="tanh") if act == "gelu_tanh" else F.gelu(y)
        return self.linear(prefix + ".fc2", y)

    def loss(self, tokens, targets):
        """Mean cross-entropy over the targets != -1 of one microbatch (0 if none)."""
        m = self.m
        wte = self.p["embedding.word_embeddings.weight"]
        x = wte[tokens]                                   # (B, S, D)
        if m["position_embedding"] == "learned":
            x = x + self.p["embedding.position_embeddings.weight"][: tokens.shape[1]]
        post = m["norm_placement"] == "post"
        if post:
            x = self.norm("embedding.norm", x)
        for i in range(m["num_layers"]):
            pre = f"layers.{i}"
            if post:
                x = self.norm(pre + ".post_attn_norm", x + self.attention(pre + ".attn", x))
                x = self.norm(pre + ".post_mlp_norm", x + self.mlp(pre + ".mlp", x))
            else:
                x = x + self.attention(pre + ".attn", self.norm(pre + ".input_norm", x))
                x = x + self.mlp(pre + ".mlp", self.norm(pre + ".pre_mlp_norm", x))
        if not post:
            x = self.norm("final_norm", x)
        head = wte if m["tied_embeddings"] else self.p["lm_head.weight"]
        logits = x @ head.t()                             # (B, S, Vpadded)
        vocab, padded = m["vocab_size"], head.shape[0]
        if padded > vocab:
            pad = torch.arange(padded) >= vocab
            logits = logits.masked_fill(pad, float("-inf"))
        flat = targets.reshape(-1)
        if not bool((flat != -1).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, padded), flat, ignore_index=-1)


# ---------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------

def meta_int(meta, key, path):
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        raise CheckError(f"{path}: metadata {key!r} missing or not an integer")


def run_check(args):
    spec = load_spec(args.spec)
    m = spec["model"]
    expected = expected_params(m)
    shapes = OrderedDict((k, v[0]) for k, v in expected.items())

    params, pmeta = read_safetensors(args.params)
    check_names(args.params, {k: v.shape for k, v in params.items()}, shapes)
    dump, dmeta = read_safetensors(args.dump)
    tokens_all, targets_all = dump.pop("batch.tokens", None), dump.pop("batch.targets", None)
    if tokens_all is None or targets_all is None:
        raise CheckError(f"{args.dump}: batch.tokens / batch.targets missing (not a --dump-grads file?)")
    check_names(args.dump, {k: v.shape for k, v in dump.items()}, shapes)
    for path, tensors in ((args.params, params), (args.dump, dump)):
        for name, x in tensors.items():
            if x.dtype != np.float32:
                raise CheckError(f"{path}: {name} is {x.dtype}, expected F32")

    mb, nmb = meta_int(dmeta, "mtc.micro_batch", args.dump), meta_int(dmeta, "mtc.num_microbatches", args.dump)
    s = m["seq_length"]
    if tokens_all.shape != (nmb * mb, s) or targets_all.shape != tokens_all.shape:
        raise CheckError(f"{args.dump}: batch.tokens {list(tokens_all.shape)} / batch.targets "
                         f"{list(targets_all.shape)}, expected [{nmb} x {mb}, {s}]")
    if tokens_all.min() < 0 or tokens_all.max() >= m["vocab_size"]:
        raise CheckError(f"{args.dump}: token ids outside [0, {m['vocab_size']})")
    bad = (targets_all != -1) & ((targets_all < 0) | (targets_all >= m["vocab_size"]))
    if bad.any():
        raise CheckError(f"{args.dump}: targets outside [0, {m['vocab_size']}) and not -1")
    try:
        loss_mtc = float(dmeta["mtc.loss"])
        mb_losses_mtc = json.loads(dmeta.get("mtc.microbatch_losses", "[]"))
    except (KeyError, ValueError):
        raise CheckError(f"{args.dump}: metadata mtc.loss missing or not a number")

    print(f"reference: {m.get('name', 'model')} ({m['arch']}: {m['num_layers']} layers, hidden "
          f"{m['hidden_size']}, heads {m['num_heads']}/{m['num_kv_heads']} kv, {m['norm']} "
          f"{m['norm_placement']}, {m['activation']}, {m['position_embedding']} positions, "
          f"{'tied' if m['tied_embeddings'] else 'untied'}, bias {m['bias']}); float64, torch "
          f"{torch.__version__}")
    print(f"batch: {nmb} microbatches x {mb} sequences x {s} tokens; tolerance {args.tol:g} relative")

    failures = []
    if pmeta.get("mtc.step") == "0":
        init_problems = check_init(params, expected)
        print(f"init: {len(expected) - len(init_problems)}/{len(expected)} tensors as the spec "
              "initializes them")
        for p in init_problems:
            print(f"  {p}")
        failures += [f"init: {p}" for p in init_problems]

    leaves = OrderedDict((k, torch.from_numpy(v.astype(np.float64)).requires_grad_(True))
                         for k, v in params.items())
    model = ReferenceGPT(m, leaves)
    tokens = torch.from_numpy(tokens_all.astype(np.int64))
    targets = torch.from_numpy(targets_all.astype(np.int64))
    # The trainer accumulates each microbatch's mean-loss gradient and
    # divides by the number of microbatches.
    mb_losses = [model.loss(tokens[i * mb:(i + 1) * mb], targets[i * mb:(i + 1) * mb]) for i in range(nmb)]
    loss_ref = torch.stack(mb_losses).mean()
    loss_ref.backward()

    def rel(a, b):
        return abs(a - b) / abs(b) if b != 0 else abs(a - b)

    loss_err = rel(loss_mtc, loss_ref.item())
    print(f"loss: mtc {loss_mtc:.9f}  reference {loss_ref.item():.9f}  relative error {loss_err:.2e}")
    if not loss_err <= args.tol:
        failures.append(f"loss: relative error {loss_err:.2e}")
    if len(mb_losses_mtc) == nmb:
        for i, (a, b) in enumerate(zip(mb_losses_mtc, mb_losses)):
            e = rel(float(a), b.item())
            print(f"  microbatch {i}: mtc {float(a):.7f}  reference {b.item():.7f}  relative error {e:.2e}")
            if not e <= args.tol:
                failures.append(f"microbatch {i} loss: relative error {e:.2e}")

    rows = []
    for name, leaf in leaves.items():
        g_ref = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        g_mtc = torch.from_numpy(dump[name].astype(np.float64))
        ref_norm = g_ref.norm().item()
        diff = (g_mtc - g_ref).norm().item()
        err = diff / ref_norm if ref_norm > 0 else diff
        if not math.isfinite(err):
            err = math.inf
        rows.append((name, list(leaf.shape), ref_norm, g_mtc.norm().item(), err))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'tensor':<{width}}  {'shape':<12}  {'|g_ref|':>10}  {'|g_mtc|':>10}  {'rel err':>9}")
    for name, shape, rn, mn, err in rows:
        flag = "" if err <= args.tol else "  <-- FAIL"
        print(f"{name:<{width}}  {'x'.join(map(str, shape)):<12}  {rn:10.4e}  {mn:10.4e}  {err:9.2e}{flag}")
        if not err <= args.tol:
            failures.append(f"{name}: gradient relative error {err:.2e}"
                            + ("" if rn > 0 else " (absolute: the reference gradient is 0)"))
    print("\nworst 5 gradients:")
    for name, _, _, _, err in sorted(rows, key=lambda r: -r[4])[:5]:
        print(f"  {err:9.2e}  {name}")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="DIR/spec.json written by mtc compile")
    ap.add_argument("--params", required=True, help="model.safetensors of the parameters (train --init-only)")
    ap.add_argument("--dump", required=True, help="gradient dump of those parameters (train --dump-grads)")
    ap.add_argument("--tol", type=float, default=1e-5, help="relative tolerance (default 1e-5)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, args.threads))
    try:
        failures = run_check(args)
    except CheckError as e:
        print(f"reference_gpt.py: error: {e}", file=sys.stderr)
        print("FAIL")
        return 1
    if failures:
        print(f"\nFAIL: {len(failures)} check(s) over tolerance {args.tol:g}:")
        for f in failures:
            print(f"  {f}")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
