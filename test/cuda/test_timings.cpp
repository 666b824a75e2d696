// Kernel timings at the GPT 1.3B shapes (B=8, S=2048, D=2048, H=16, Dh=128,
// F=4D, V=50304) and the GPT-2 124M and Llama-1B (GQA) attention shapes, for
// the GPU run. Not a
// test (nothing is asserted): disabled by default; run with
//   mtc-cuda-tests --gtest_also_run_disabled_tests --gtest_filter='CudaTimings.*'
// Each kernel: 3 warm-up calls, then the median of 10 calls timed with CUDA
// events; prints TFLOP/s for GEMMs and attention (attention FLOPs counted as
// bench/README.md: 4 B H S^2 Dh / 2 forward causal, 2.5x that backward) and
// GB/s (bytes each kernel must read + write) for the memory-bound kernels.
// Inputs are random (tiled from a random block), never zeros.
#include <algorithm>
#include <functional>

#include "cuda_test_util.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaTimings : public CudaTest {};

// Fills a device buffer with a random block repeated (bytes, not values).
template <typename T>
void fill_random(DevBuf<T>& d, uint64_t seed, float stddev) {
  const size_t block = std::min<size_t>(d.size(), size_t{1} << 20);
  std::vector<float> r = randn(block, seed, stddev);
  std::vector<T> h(block);
  for (size_t i = 0; i < block; ++i) {
    if constexpr (std::is_same_v<T, bf16>) {
      h[i] = __float2bfloat16(r[i]);  // round to nearest even, as to_bf16_bits
    } else {
      h[i] = static_cast<T>(r[i]);
    }
  }
  cudaStream_t s = ctx().stream;
  MTC_TEST_CUDA(
      cudaMemcpyAsync(d.get(), h.data(), block * sizeof(T), cudaMemcpyHostToDevice, s));
  for (size_t done = block; done < d.size();) {
    const size_t n = std::min(done, d.size() - done);
    MTC_TEST_CUDA(
        cudaMemcpyAsync(d.get() + done, d.get(), n * sizeof(T), cudaMemcpyDeviceToDevice, s));
    done += n;
  }
  MTC_TEST_CUDA(cudaStreamSynchronize(s));
}

double median_ms(const std::function<void()>& fn) {
  cudaStream_t s = ctx().stream;
  for (int i = 0; i < 3; ++i) fn();
  std::vector<float> ms;
  cudaEvent_t a, b;
  MTC_TEST_CUDA(cudaEventCreate(&a));
  MTC_TEST_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 10; ++i) {
    MTC_TEST_CUDA(cudaEventRecord(a, s));
    fn();
    MTC_TEST_CUDA(cudaEventRecord(b, s));
    MTC_TEST_CUDA(cudaEventSynchronize(b));
    float t = 0;
    MTC_TEST_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void report_flops(const char* what, double ms, double flops) {
  std::printf("[timing] %-56s %9.3f ms  %7.1f TFLOP/s\n", what, ms, flops / ms * 1e-9);
  std::fflush(stdout);
}
void report_bytes(const char* what, double ms, double bytes) {
  std::printf("[timing] %-56s %9.3f ms  %7.1f GB/s\n", what, ms, bytes / ms * 1e-6);
  std::fflush(stdout);
}

TEST_F(CudaTimings, DISABLED_Gpt1p3BShapes) {
  // The attention shapes are in their own test (DISABLED_Attention).
  const int64_t B = 8, S = 2048, T = B * S, D = 2048, F = 4 * D, V = 50304;
  auto& c = ctx();
  {
    // GEMMs of one layer (weights stored (out, in)) and the LM head.
    DevBuf<bf16> x(T * F), y(T * F), pre(T * F), w(F * D), bias(F);
    DevBuf<float> wg(F * D), bg(F);
    fill_random(x, 1, 1.f);
    fill_random(w, 2, 0.02f);
    fill_random(bias, 3, 0.02f);
    fill_random(pre, 4, 1.f);
    fill(c, wg.get(), 0.f, F * D);
    fill(c, bg.get(), 0.f, F);
    struct G { const char* name; int64_t m, n, k; };
    for (G g : {G{"gemm qkv fwd (T x 3D x D) +bias", T, 3 * D, D},
                G{"gemm proj fwd (T x D x D) +bias", T, D, D},
                G{"gemm fc2 fwd (T x D x 4D) +bias", T, D, F}}) {
      double ms = median_ms([&] {
        matmul(c, x.get(), w.get(), bias.get(), y.get(), g.m, g.n, g.k, false, true);
      });
      report_flops(g.name, ms, 2.0 * g.m * g.n * g.k);
    }
    double ms = median_ms([&] {
      matmul_gelu(c, x.get(), w.get(), bias.get(), y.get(), pre.get(), T, F, D, false, true);
    });
    report_flops("gemm fc1 fwd +bias +gelu (aux)", ms, 2.0 * T * F * D);
    ms = median_ms([&] {
      matmul_dgelu(c, x.get(), w.get(), pre.get(), y.get(), bg.get(), T, F, D, false, false);
    });
    report_flops("gemm fc2 dgrad +dgelu +dbias", ms, 2.0 * T * F * D);
    ms = median_ms([&] { matmul(c, x.get(), w.get(), nullptr, y.get(), T, D, F, false, false); });
    report_flops("gemm fc1 dgrad (T x D x 4D)", ms, 2.0 * T * D * F);
    ms = median_ms([&] {
      matmul_f32(c, x.get(), y.get(), wg.get(), bg.get(), F, D, T, true, false, true);
    });
    report_flops("gemm fc1 wgrad fp32 += (4D x D x T) +dbias", ms, 2.0 * F * D * T);
    ms = median_ms([&] {
      matmul_f32(c, x.get(), y.get(), wg.get(), nullptr, D, D, T, true, false, true);
    });
    report_flops("gemm proj wgrad fp32 += (D x D x T)", ms, 2.0 * D * D * T);
  }
  {
    DevBuf<bf16> x(T * D), wte(V * D), logits(T * V);
    DevBuf<int32_t> tgt(T);
    DevBuf<float> loss(1), wg(V * D);
    fill_random(x, 5, 1.f);
    fill_random(wte, 6, 0.02f);
    upload(tgt, randint(T, 7, 0, 50257));
    fill(c, wg.get(), 0.f, V * D);
    double ms = median_ms(
        [&] { matmul(c, x.get(), wte.get(), nullptr, logits.get(), T, V, D, false, true); });
    report_flops("gemm lm_head fwd (T x V x D)", ms, 2.0 * T * V * D);
    ms = median_ms([&] {
      cross_entropy(c, logits.get(), tgt.get(), loss.get(), logits.get(), T, V, 50257, -100, 1.f);
    });
    report_bytes("cross_entropy fused (T x V), in place", ms, 2.0 * T * V * 2);
    ms = median_ms(
        [&] { matmul(c, logits.get(), wte.get(), nullptr, x.get(), T, D, V, false, false); });
    report_flops("gemm lm_head dgrad (T x D x V)", ms, 2.0 * T * V * D);
    ms = median_ms([&] {
      matmul_f32(c, logits.get(), x.get(), wg.get(), nullptr, V, D, T, true, false, true);
    });
    report_flops("gemm lm_head wgrad fp32 += (V x D x T)", ms, 2.0 * T * V * D);
    DevBuf<int32_t> tok(T);
    upload(tok, randint(T, 8, 0, static_cast<int32_t>(V)));
    DevBuf<bf16> pos(S * D), emb(T * D);
    fill_random(pos, 9, 0.02f);
    ms = median_ms([&] {
      embedding_forward(c, tok.get(), wte.get(), pos.get(), emb.get(), T, V, D, S);
    });
    report_bytes("embedding_forward (+pos)", ms, 3.0 * T * D * 2);
    ms = median_ms([&] { embedding_backward(c, tok.get(), emb.get(), wg.get(), T, V, D); });
    report_bytes("embedding_backward (fp32 atomics)", ms, T * D * (2.0 + 8.0));
  }
  {
    DevBuf<bf16> x(T * D), y(T * D), dy(T * D), dx(T * D), g(D), b(D);
    DevBuf<float> dg(D), db(D);
    fill_random(x, 10, 1.f);
    fill_random(dy, 11, 1.f);
    fill_random(g, 12, 1.f);
    fill_random(b, 13, 1.f);
    fill(c, dg.get(), 0.f, D);
    fill(c, db.get(), 0.f, D);
    double ms = median_ms(
        [&] { layer_norm_forward(c, x.get(), g.get(), b.get(), y.get(), T, D, 1e-5f); });
    report_bytes("layer_norm_forward (T x D)", ms, 2.0 * T * D * 2);
    ms = median_ms([&] {
      layer_norm_backward(c, x.get(), g.get(), dy.get(), dx.get(), dg.get(), db.get(), T, D,
                          1e-5f);
    });
    report_bytes("layer_norm_backward (T x D)", ms, 3.0 * T * D * 2);
    ms = median_ms([&] { add(c, x.get(), dy.get(), y.get(), T * D, T * D); });
    report_bytes("add residual (T x D)", ms, 3.0 * T * D * 2);
    ms = median_ms([&] { dropout_add(c, x.get(), dy.get(), y.get(), T * D, 0.1f, 1, 2, 0); });
    report_bytes("dropout_add p=0.1 (T x D)", ms, 3.0 * T * D * 2);
  }
  {
    DevBuf<bf16> h(T * F), dh(T * F), o(T * F);
    fill_random(h, 14, 1.f);
    fill_random(dh, 15, 1.f);
    double ms = median_ms([&] { gelu_forward(c, h.get(), o.get(), T * F, true); });
    report_bytes("gelu_forward tanh (T x 4D)", ms, 2.0 * T * F * 2);
    ms = median_ms([&] { gelu_backward(c, h.get(), dh.get(), o.get(), T * F, true); });
    report_bytes("gelu_backward tanh (T x 4D)", ms, 3.0 * T * F * 2);
  }
  {
    // AdamW over 1.3B parameters (fp32 master, m, v, grads; bf16 copy).
    const int64_t n = 1300000000;
    DevBuf<float> p(n), gr(n), m(n), v(n);
    DevBuf<bf16> pb(n);
    DevBuf<double> sumsq(1);
    fill_random(p, 18, 0.02f);
    fill_random(gr, 19, 1e-3f);
    fill(c, m.get(), 0.f, n);
    fill(c, v.get(), 0.f, n);
    std::vector<AdamWTensor> tensors;
    for (int64_t off = 0; off < n; off += 2048 * 8192)
      tensors.push_back({off, std::min<int64_t>(2048 * 8192, n - off), (off / 2048) % 2 == 0});
    AdamWPlan plan(c, tensors);
    AdamWHyper hp;
    hp.lr = 1e-4f;
    hp.weight_decay = 0.1f;
    hp.max_grad_norm = 1.f;
    double ms = median_ms([&] { sum_squares(c, gr.get(), n, sumsq.get(), false); });
    report_bytes("sum_squares (1.3B fp32)", ms, 4.0 * n);
    ms = median_ms([&] {
      adamw(c, plan, p.get(), gr.get(), m.get(), v.get(), pb.get(), hp, sumsq.get());
    });
    report_bytes("adamw + bf16 copy (1.3B params)", ms, n * (16.0 + 12.0 + 2.0));
  }
}

// Attention forward and backward, causal, both implementations: the 1.3B GPT
// and GPT-2 124M shapes (MHA) and Llama 3.2 1B's (GQA, 32 query heads on 8
// KV heads), with the strided copy the cuDNN path makes of q (and dq) for
// grouped heads timed on its own.
TEST_F(CudaTimings, DISABLED_Attention) {
  auto& c = ctx();
  struct A { const char* name; int64_t b, s, h, kv, dh; };
  for (A a : {A{"1.3B (8 x 16 x 2048 x 128)", 8, 2048, 16, 16, 128},
              A{"124M (16 x 12 x 1024 x 64)", 16, 1024, 12, 12, 64},
              A{"Llama-1B GQA (4 x 32/8 x 2048 x 64)", 4, 2048, 32, 8, 64}}) {
    const int64_t t = a.b * a.s, width = (a.h + 2 * a.kv) * a.dh;
    DevBuf<bf16> qkv(t * width), out(t * a.h * a.dh), dout(t * a.h * a.dh), dqkv(t * width);
    DevBuf<float> lse(a.b * a.h * a.s);
    fill_random(qkv, 16, 1.f);
    fill_random(dout, 17, 1.f);
    const float scale = 1.f / std::sqrt(static_cast<float>(a.dh));
    c.reserve_scratch(2 * attention_backward_scratch_bytes(a.b, a.s, a.h, a.dh));
    const double fwd_flops = 4.0 * a.b * a.h * a.s * a.s * a.dh / 2;
    for (AttentionBackend be : {AttentionBackend::own, AttentionBackend::cudnn}) {
      const char* bname = be == AttentionBackend::own ? "own" : "cuDNN";
      std::string why;
      if (be == AttentionBackend::cudnn &&
          !cudnn_attention_supported(c, a.b, a.s, a.h, a.kv, a.dh, true, false, &why)) {
        std::printf("[timing] attention %s %s: skipped (%s)\n", bname, a.name, why.c_str());
        continue;
      }
      set_attention_backend(be);
      double ms = median_ms([&] {
        attention_forward(c, qkv.get(), nullptr, out.get(), lse.get(), a.b, a.s, a.h, a.kv, a.dh,
                          true, scale);
      });
      double ms_b = median_ms([&] {
        attention_backward(c, qkv.get(), nullptr, out.get(), lse.get(), dout.get(), dqkv.get(), a.b,
                           a.s, a.h, a.kv, a.dh, true, scale);
      });
      const std::string tag = std::string(" causal ") + bname + " " + a.name;
      report_flops(("attention fwd" + tag).c_str(), ms, fwd_flops);
      report_flops(("attention bwd" + tag).c_str(), ms_b, 2.5 * fwd_flops);
      report_flops(("attention fwd+bwd" + tag).c_str(), ms + ms_b, 3.5 * fwd_flops);
    }
    set_attention_backend(AttentionBackend::automatic);
    if (a.kv > 1 && a.kv < a.h) {
      // The cuDNN path's q packing: (B S KV) rows of R Dh bf16 out of the
      // fused rows (once in the forward, twice in the backward).
      const int64_t r = a.h / a.kv;
      DevBuf<bf16> packed(t * a.h * a.dh);
      double ms = median_ms([&] {
        MTC_TEST_CUDA(cudaMemcpy2DAsync(packed.get(), sizeof(bf16) * r * a.dh, qkv.get(),
                                        sizeof(bf16) * (r + 2) * a.dh, sizeof(bf16) * r * a.dh,
                                        a.b * a.s * a.kv, cudaMemcpyDeviceToDevice, c.stream));
      });
      report_bytes(("q pack for cuDNN (cudaMemcpy2D) " + std::string(a.name)).c_str(), ms,
                   2.0 * t * a.h * a.dh * sizeof(bf16));
    }
  }
}

}  // namespace
}  // namespace mtc::rt::cuda::test
