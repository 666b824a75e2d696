# Llama training-throughput baselines for issue #19 (random tokens), in the
# style of ../shared/bench/gpt_bench.py: bf16 autocast over fp32 master
# weights, fused AdamW, grad-clip 1.0, no dropout, no activation
# checkpointing, torch.compile.
#   --impl own: a compact Llama (RMSNorm, RoPE, GQA through
#       F.scaled_dot_product_attention(enable_gqa=True), SwiGLU MLP, tied
#       embeddings), the shape of examples/llama-1b.json;
#   --impl hf: transformers' LlamaForCausalLM with the same config
#       (attn_implementation="sdpa").
# FLOPs per token: 6 N + 12 L d T (N: every parameter but the embedding
# table counted once as the tied LM head), the convention gpt_bench.py uses.
# Usage: python3 llama_bench.py --impl own|hf --compile 1 --batch 4 [--peak 798]
import argparse, json, math, statistics, time
import torch
import torch.nn as nn
import torch.nn.functional as F

CFG = dict(n_layer=16, d=2048, n_head=32, n_kv=8, ffn=8192, vocab=128256, seq=2048,
           theta=500000.0, eps=1e-5)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(seq, dh, theta, device):
    inv = 1.0 / (theta ** (torch.arange(0, dh, 2, device=device).float() / dh))
    f = torch.outer(torch.arange(seq, device=device).float(), inv)
    return f.cos(), f.sin()


def apply_rope(x, cos, sin):  # x (B, H, T, Dh), rotating interleaved pairs
    x1, x2 = x[..., ::2], x[..., 1::2]
    c, s = cos[None, None], sin[None, None]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.h, self.kv = c["d"], c["n_head"], c["n_kv"]
        self.dh = d // self.h
        self.attn_norm = RMSNorm(d, c["eps"])
        self.wq = nn.Linear(d, d, bias=False)
        self.wkv = nn.Linear(d, 2 * self.kv * self.dh, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.mlp_norm = RMSNorm(d, c["eps"])
        self.gate_up = nn.Linear(d, 2 * c["ffn"], bias=False)
        self.down = nn.Linear(c["ffn"], d, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.attn_norm(x)
        q = self.wq(h).view(B, T, self.h, self.dh).transpose(1, 2)
        k, v = self.wkv(h).view(B, T, 2, self.kv, self.dh).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.wo(y.transpose(1, 2).reshape(B, T, C))
        g, u = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c["vocab"], c["d"])
        self.blocks = nn.ModuleList([Block(c) for _ in range(c["n_layer"])])
        self.norm = RMSNorm(c["d"], c["eps"])
        self.lm_head = nn.Linear(c["d"], c["vocab"], bias=False)
        self.lm_head.weight = self.emb.weight  # tied
        for n, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * c["n_layer"]) if n.endswith(("wo.weight", "down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        T = idx.shape[1]
        cos, sin = rope_tables(T, self.c["d"] // self.c["n_head"], self.c["theta"], idx.device)
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))


def build(impl):
    c = CFG
    if impl == "own":
        return Llama(c)
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=c["vocab"], hidden_size=c["d"], intermediate_size=c["ffn"],
                      num_hidden_layers=c["n_layer"], num_attention_heads=c["n_head"],
                      num_key_value_heads=c["n_kv"], max_position_embeddings=c["seq"],
                      rms_norm_eps=c["eps"], rope_theta=c["theta"], tie_word_embeddings=True,
                      attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"
    m = LlamaForCausalLM(cfg)

    class HF(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, idx, targets):
            logits = self.m(input_ids=idx, use_cache=False).logits
            return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))
    return HF(m)


def run(impl, do_compile, B, warmup, iters, peak):
    c = CFG
    T, L, d = c["seq"], c["n_layer"], c["d"]
    torch.manual_seed(1234)
    model = build(impl).cuda()
    n_total = sum(p.numel() for p in model.parameters())  # tied: counted once
    flops_per_token = 6 * n_total + 12 * L * d * T
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if do_compile else model
    xs = [torch.randint(0, c["vocab"], (B, T), device="cuda") for _ in range(4)]
    ys = [torch.randint(0, c["vocab"], (B, T), device="cuda") for _ in range(4)]

    def step(i):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(xs[i % 4], ys[i % 4])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for i in range(warmup):
        loss = step(i)
    torch.cuda.synchronize()
    t_warm = time.perf_counter() - t0
    times = []
    for i in range(iters):
        ts = time.perf_counter()
        loss = step(i)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - ts)
    med = statistics.median(times)
    tps = B * T / med
    tflops = flops_per_token * tps / 1e12
    return dict(system=f"pytorch-{impl}-" + ("compile" if do_compile else "eager"), model="llama-1b",
                B=B, T=T, n_total=n_total, flops_per_token=flops_per_token,
                step_ms_median=med * 1e3, step_ms_min=min(times) * 1e3, tokens_per_s=tps,
                tflops=tflops, mfu=tflops / peak, warmup_s=t_warm, final_loss=loss.item(),
                max_mem_GiB=torch.cuda.max_memory_allocated() / 2**30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", default="own", choices=["own", "hf"])
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--peak", type=float, default=798.0, help="measured bf16 GEMM TFLOP/s")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        res = run(a.impl, bool(a.compile), a.batch, a.warmup, a.iters, a.peak)
    except torch.OutOfMemoryError as e:
        res = dict(system=f"pytorch-{a.impl}", model="llama-1b", error=f"OOM: {str(e)[:200]}")
    print("BENCH_RESULT", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
