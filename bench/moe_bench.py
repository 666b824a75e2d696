# MoE training-throughput baseline for issue #18 (random tokens), in the
# style of ../shared/bench/gpt_bench.py (pre-LN GPT blocks, LayerNorm with
# bias, SDPA causal attention, tied embeddings, bf16 autocast over fp32
# master weights, fused AdamW, grad-clip 1.0, no dropout, no activation
# checkpointing, torch.compile), with every MLP an MoE layer as mtc's
# `model.moe` builds it (docs/moe.md):
#   router: logits = x W_r^T in fp32, softmax over E experts, top-k (not
#     renormalized), load-balancing loss a E sum_e f_e P_e + z-loss
#     z mean(logsumexp^2), added to the loss;
#   experts: fc1 (E, ffn, d) + bias, GELU (tanh), fc2 (E, d, ffn) + bias;
#   dropless: every (token, slot) assignment is computed, weighted by its
#     router probability and summed back.
# Expert GEMMs, --experts:
#   loop:    tokens sorted by expert, one F.linear per expert on its rows
#            (the expert counts go to the host: .tolist());
#   grouped: torch._grouped_mm over all experts at once, each expert's rows
#            padded to a multiple of 16 (its alignment), static shapes, no
#            host synchronization.
# --moe 0 gives the dense base (the same model with a plain MLP).
# FLOPs per token (gpt_bench.py's convention on active parameters):
#   6 N_active + 12 L d T, N_active = every parameter but the position table
#   and the E - k unused experts of each layer.
# Usage: python3 moe_bench.py --moe 1 --experts grouped --layers 8 --batch 4
#        [--accum 1] [--compile 1] [--peak 989]
#        python3 moe_bench.py --smoke   (CPU, tiny: both expert paths agree)
import argparse, json, math, statistics, time
import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 50304
ALIGN = 16


def grouped_mm(a, b, offs):
    """a (M, K) @ b[e] (K, N) for the rows of expert e: offs[e] = end row."""
    if hasattr(torch, "_grouped_mm") and a.is_cuda:
        return torch._grouped_mm(a, b, offs=offs)
    # Reference for the CPU smoke test.
    out, start = [], 0
    for e, end in enumerate(offs.tolist()):
        out.append(a[start:end] @ b[e])
        start = end
    out.append(a.new_zeros(a.shape[0] - start, b.shape[2]))  # rows past the last group
    return torch.cat(out)


class MoE(nn.Module):
    def __init__(self, d, ffn, e, k, aux, z, experts):
        super().__init__()
        self.e, self.k, self.aux, self.z, self.experts = e, k, aux, z, experts
        self.router = nn.Linear(d, e, bias=False)
        self.fc1_w = nn.Parameter(torch.empty(e, ffn, d))
        self.fc1_b = nn.Parameter(torch.zeros(e, ffn))
        self.fc2_w = nn.Parameter(torch.empty(e, d, ffn))
        self.fc2_b = nn.Parameter(torch.zeros(e, d))

    def forward(self, x):
        B, T, d = x.shape
        xf = x.reshape(B * T, d)
        n, e, k = xf.shape[0], self.e, self.k
        with torch.autocast(x.device.type, enabled=False):  # the router in fp32
            logits = F.linear(xf.float(), self.router.weight.float())
        probs = logits.softmax(-1)
        w, idx = probs.topk(k, dim=-1)
        flat = idx.reshape(-1)
        counts = torch.zeros(e, dtype=torch.long, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat))
        aux = self.aux * e * ((counts.float() / (n * k)) * probs.mean(0)).sum()
        aux = aux + self.z * torch.logsumexp(logits, -1).pow(2).mean()
        order = torch.argsort(flat, stable=True)
        token = order // k
        xs = xf[token]
        dt = torch.bfloat16 if x.is_cuda else x.dtype
        if self.experts == "loop":
            ys, start = [], 0
            for i, c in enumerate(counts.tolist()):
                seg = xs[start:start + c]
                h = F.gelu(F.linear(seg, self.fc1_w[i], self.fc1_b[i]), approximate="tanh")
                ys.append(F.linear(h, self.fc2_w[i], self.fc2_b[i]))
                start += c
            y = torch.cat(ys)
        else:
            # Each expert's rows at a multiple of ALIGN: static size m + ALIGN e.
            m = n * k
            padded = (counts + ALIGN - 1) // ALIGN * ALIGN
            pad_end = torch.cumsum(padded, 0)
            start = torch.cumsum(counts, 0) - counts
            ex = flat[order]
            dest = torch.arange(m, device=x.device) - start[ex] + (pad_end - padded)[ex]
            rows = m + ALIGN * e
            row_ex = torch.searchsorted(pad_end, torch.arange(rows, device=x.device), right=True)
            row_ex = row_ex.clamp(max=e - 1)
            offs = pad_end.to(torch.int32)
            a = torch.zeros(rows, d, dtype=dt, device=x.device).index_copy(0, dest, xs.to(dt))
            h = grouped_mm(a, self.fc1_w.to(dt).transpose(1, 2), offs) + self.fc1_b.to(dt)[row_ex]
            h = F.gelu(h, approximate="tanh")
            yp = grouped_mm(h, self.fc2_w.to(dt).transpose(1, 2), offs) + self.fc2_b.to(dt)[row_ex]
            y = yp[dest]
        ws = w.reshape(-1)[order]
        out = torch.zeros(n, d, dtype=torch.float32, device=x.device)
        out = out.index_add(0, token, y.float() * ws[:, None])
        return out.to(x.dtype).reshape(B, T, d), aux


class Block(nn.Module):
    def __init__(self, d, h, ffn, moe_cfg):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.moe = MoE(d, ffn, **moe_cfg) if moe_cfg else None
        if not moe_cfg:
            self.c_fc = nn.Linear(d, ffn)
            self.mlp_proj = nn.Linear(ffn, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q = q.view(B, T, self.h, C // self.h).transpose(1, 2)
        k = k.view(B, T, self.h, C // self.h).transpose(1, 2)
        v = v.view(B, T, self.h, C // self.h).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        if self.moe is None:
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")), 0.0
        out, aux = self.moe(self.ln_2(x))
        return x + out, aux


class GPT(nn.Module):
    def __init__(self, n_layer, d, h, ffn, seq, moe_cfg):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.wpe = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList([Block(d, h, ffn, moe_cfg) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d)
        for n, p in self.named_parameters():
            if p.dim() >= 2:
                proj = n.endswith(("c_proj.weight", "mlp_proj.weight", "fc2_w"))
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer) if proj else 0.02)
            elif n.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        aux = 0.0
        for b in self.blocks:
            x, a = b(x)
            aux = aux + a
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied LM head
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1)) + aux


def flops_per_token(L, d, ffn, T, e, k, moe):
    attn = 3 * d * d + 3 * d + d * d + d + 4 * d  # qkv, proj, two LayerNorms
    expert = 2 * d * ffn + ffn + d
    mlp = (d * e + k * expert) if moe else expert
    n_active = L * (attn + mlp) + 2 * d + VOCAB * d  # final norm, tied head
    return 6 * n_active + 12 * L * d * T


def run(a):
    L, d, h, ffn, T = a.layers, 2048, 16, 8192, 2048
    moe_cfg = dict(e=8, k=2, aux=0.01, z=0.001, experts=a.experts) if a.moe else None
    torch.manual_seed(1234)
    model = GPT(L, d, h, ffn, T, moe_cfg).cuda()
    fpt = flops_per_token(L, d, ffn, T, 8, 2, a.moe)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    fwd = torch.compile(model) if a.compile else model
    B = a.batch
    xs = [torch.randint(0, 50257, (B, T), device="cuda") for _ in range(4)]
    ys = [torch.randint(0, 50257, (B, T), device="cuda") for _ in range(4)]

    def step(i):
        for j in range(a.accum):  # gradient accumulation: a.accum microbatches a step
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(xs[(i + j) % 4], ys[(i + j) % 4]) / a.accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for i in range(a.warmup):
        loss = step(i)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    times = []
    for i in range(a.iters):
        ts = time.perf_counter()
        loss = step(i)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - ts)
    med = statistics.median(times)
    tps = a.accum * B * T / med
    name = ("pytorch-moe-" + a.experts) if a.moe else "pytorch-dense"
    return dict(system=name + ("-compile" if a.compile else "-eager"), layers=L, B=B, T=T,
                microbatches=a.accum,
                flops_per_token=fpt, step_ms_median=med * 1e3, tokens_per_s=tps,
                tflops=fpt * tps / 1e12, mfu=fpt * tps / 1e12 / a.peak, warmup_s=warm,
                final_loss=loss.item(), max_mem_GiB=torch.cuda.max_memory_allocated() / 2**30)


def smoke():
    """CPU, fp32, tiny: the grouped path (padded, reference grouped_mm) gives
    the loop path's loss and gradients."""
    torch.manual_seed(0)
    out = {}
    for experts in ("loop", "grouped"):
        torch.manual_seed(0)
        m = MoE(16, 32, 4, 2, 0.01, 0.001, experts)
        for p in m.parameters():
            nn.init.normal_(p, 0.0, 0.2)
        x = torch.randn(2, 24, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y, aux = m(x)
        (y.pow(2).sum() + aux).backward()
        out[experts] = [y.detach(), aux.detach(), x.grad] + [p.grad for p in m.parameters()]
    for u, v in zip(out["loop"], out["grouped"]):
        assert torch.allclose(u, v, rtol=1e-4, atol=1e-5), (u - v).abs().max()
    print("smoke: loop and grouped agree on outputs, aux loss and every gradient")


def summary(path, suffix, L, peak=989e12):
    """Tokens/s and MFU on active parameters of the "MTC <model><suffix>
    tokens_per_s" lines (moe_gpu.sh) and the BENCH_RESULT lines of a
    summary file, and mtc against each baseline of the same model."""
    import re
    text = open(path).read()
    mtc = {m: float(v) for m, v in
           re.findall(r"^MTC (moe|dense)%s tokens_per_s ([0-9.]+)" % re.escape(suffix), text, re.M)}
    fpt = {m: flops_per_token(L, 2048, 8192, 2048, 8, 2, m == "moe") for m in ("moe", "dense")}
    mfu = {m: t * fpt[m] / peak for m, t in mtc.items()}
    for m, t in mtc.items():
        print(f"mtc {m}{suffix}: {t:,.0f} tokens/s, MFU {mfu[m]:.3f} (active parameters, of "
              f"{peak / 1e12:.0f} TFLOP/s)")
    for l in text.splitlines():
        if not l.startswith("BENCH_RESULT"):
            continue
        r = json.loads(l.split(" ", 1)[1])
        if not r.get("tokens_per_s"):
            continue
        m = "moe" if "moe" in r["system"] else "dense"
        t = r["tokens_per_s"]
        print(f"{r['system']} ({r.get('microbatches', 1)} microbatches): {t:,.0f} tokens/s, "
              f"MFU {t * fpt[m] / peak:.3f}" + (f"; mtc / it {mtc[m] / t:.3f}" if m in mtc else ""))
    if len(mfu) == 2:
        print(f"mtc MoE MFU / mtc dense MFU{suffix}: {mfu['moe'] / mfu['dense']:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moe", type=int, default=1)
    ap.add_argument("--experts", choices=["loop", "grouped"], default="grouped")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1, help="microbatches per optimizer step")
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--peak", type=float, default=989.0, help="bf16 dense TFLOP/s (H100 SXM)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--summary", help="print the comparison of a moe_gpu.sh summary file")
    ap.add_argument("--suffix", default="", help="with --summary: the mtc runs' suffix (-gb16)")
    a = ap.parse_args()
    if a.smoke:
        return smoke()
    if a.summary:
        return summary(a.summary, a.suffix, a.layers)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        print("BENCH_RESULT", json.dumps(run(a)), flush=True)
    except Exception as ex:  # report, so that the other baselines still run
        print("BENCH_RESULT", json.dumps(dict(system="pytorch-" + a.experts, error=str(ex)[:300])))


if __name__ == "__main__":
    main()
