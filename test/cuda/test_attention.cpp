// Tests that the FlashAttention-2 style forward and backward kernels match
// host::attention_forward / attention_backward (double-precision reference
// math) on the same bf16 inputs: causal and bidirectional, padding masks
// (including a sequence with every key masked: out 0, lse -inf, no
// gradient), GQA through the grouped fused-QKV layout, head_dim 64 and 128,
// ragged sequence lengths, and the GPT-2 124M and 1.3B head shapes; for the
// own kernels and, where it applies (no mask), the cuDNN path: MHA, GQA
// (q packed, dk and dv summed over each group by cuDNN) and MQA (skipped
// with the reason when cuDNN or an engine is missing).
#include <cmath>

#include "cuda_test_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaAttention : public CudaTest {
 protected:
  void TearDown() override {
    set_attention_backend(AttentionBackend::automatic);
    CudaTest::TearDown();
  }
};
class CudaAttentionCudnn : public CudaAttention {};

struct Case {
  int64_t b, s, h, kv, dh;
  bool causal;
  int mask_kind;  // 0 none, 1 random padding, 2 padding + one batch fully masked
};

std::string tag(const Case& c) {
  return " B=" + std::to_string(c.b) + " S=" + std::to_string(c.s) + " H=" + std::to_string(c.h) +
         " KV=" + std::to_string(c.kv) + " Dh=" + std::to_string(c.dh) +
         (c.causal ? " causal" : " bidirectional") +
         (c.mask_kind == 0 ? "" : c.mask_kind == 1 ? " padded" : " padded+empty");
}

void run_case(const Case& c, uint64_t seed, AttentionBackend backend) {
  if (backend == AttentionBackend::cudnn) {
    std::string why;
    if (!cudnn_attention_supported(ctx(), c.b, c.s, c.h, c.kv, c.dh, c.causal, c.mask_kind != 0,
                                   &why))
      GTEST_SKIP() << "cuDNN attention unavailable: " << why;
  }
  set_attention_backend(backend);
  const int64_t width = (c.h + 2 * c.kv) * c.dh;
  const int64_t nqkv = c.b * c.s * width, nout = c.b * c.s * c.h * c.dh, nlse = c.b * c.h * c.s;
  const float scale = 1.f / std::sqrt(static_cast<float>(c.dh));
  std::vector<float> qkv = round_bf16(randn(nqkv, seed));
  std::vector<float> dout = round_bf16(randn(nout, seed + 1));
  std::vector<int32_t> mask;
  if (c.mask_kind > 0) {
    mask = randint(c.b * c.s, seed + 2, 0, 4);  // ~25% padding
    for (int32_t& m : mask) m = m != 0;
    if (c.mask_kind == 2)
      for (int64_t j = 0; j < c.s; ++j) mask[(c.b - 1) * c.s + j] = 0;
  }
  DevBuf<bf16> dqkv_in(nqkv), out(nout), ddout(nout), dqkv(nqkv);
  DevBuf<float> lse(nlse);
  DevBuf<int32_t> dmask(mask.empty() ? 1 : mask.size());
  upload(dqkv_in, qkv);
  upload(ddout, dout);
  if (!mask.empty()) upload(dmask, mask);
  const int32_t* mp = mask.empty() ? nullptr : dmask.get();

  attention_forward(ctx(), dqkv_in.get(), mp, out.get(), lse.get(), c.b, c.s, c.h, c.kv, c.dh,
                    c.causal, scale);
  std::vector<float> got_out = download(out);
  // The backward takes the GPU's own bf16 output, as in training. Its
  // scratch (dq accumulators, row sums, cuDNN's packed q and dq for grouped
  // heads and workspace) starts as NaN, so a kernel relying on zeroed scratch
  // fails.
  const size_t scratch = 2 * attention_backward_scratch_bytes(c.b, c.s, c.h, c.dh) + (16u << 20);
  MTC_TEST_CUDA(cudaMemsetAsync(ctx().scratch(scratch), 0xff, ctx().scratch_bytes(), ctx().stream));
  attention_backward(ctx(), dqkv_in.get(), mp, out.get(), lse.get(), ddout.get(), dqkv.get(), c.b,
                     c.s, c.h, c.kv, c.dh, c.causal, scale);
  std::vector<float> got_lse = download(lse), got_dqkv = download(dqkv);

  std::vector<float> ref_out(nout), ref_lse(nlse), ref_dqkv(nqkv);
  const int32_t* hm = mask.empty() ? nullptr : mask.data();
  host::attention_forward(qkv.data(), hm, ref_out.data(), ref_lse.data(), c.b, c.s, c.h, c.kv,
                          c.dh, c.causal, scale);
  host::attention_backward(qkv.data(), hm, got_out.data(), ref_lse.data(), dout.data(),
                           ref_dqkv.data(), c.b, c.s, c.h, c.kv, c.dh, c.causal, scale);

  const std::string t = tag(c) + (backend == AttentionBackend::cudnn ? " [cuDNN]" : " [own]");
  // out: P is rounded to bf16 before P V (as in FlashAttention), out to bf16.
  expect_close("attention_forward out" + t, got_out, ref_out, Tol{1e-2, 2e-2, 1e-2});
  // lse: fp32 scores of exact bf16 inputs; -inf must match exactly.
  expect_close("attention_forward lse" + t, got_lse, ref_lse, Tol{1e-4, 1e-4, 0});

  // dq, dk, dv separately: P and dS are rounded to bf16 for the MMAs.
  std::vector<float> gq, rq, gk, rk, gv, rv;
  const int64_t r = c.h / c.kv;
  for (int64_t row = 0; row < c.b * c.s; ++row)
    for (int64_t g = 0; g < c.kv; ++g)
      for (int64_t j = 0; j < r + 2; ++j)
        for (int64_t e = 0; e < c.dh; ++e) {
          const int64_t i = row * width + (g * (r + 2) + j) * c.dh + e;
          auto& gd = j < r ? gq : j == r ? gk : gv;
          auto& rd = j < r ? rq : j == r ? rk : rv;
          gd.push_back(got_dqkv[i]);
          rd.push_back(ref_dqkv[i]);
        }
  expect_close("attention_backward dq" + t, gq, rq, Tol{2e-2 * max_abs(rq), 5e-2, 2e-2});
  expect_close("attention_backward dk" + t, gk, rk, Tol{2e-2 * max_abs(rk), 5e-2, 2e-2});
  expect_close("attention_backward dv" + t, gv, rv, Tol{2e-2 * max_abs(rv), 5e-2, 2e-2});
}

constexpr AttentionBackend kOwn = AttentionBackend::own;
constexpr AttentionBackend kCudnn = AttentionBackend::cudnn;

TEST_F(CudaAttention, SmallCausalRagged) { run_case({1, 100, 2, 2, 64, true, 0}, 801, kOwn); }
TEST_F(CudaAttention, SmallBidirectionalRagged128) {
  run_case({2, 77, 2, 1, 128, false, 0}, 802, kOwn);
}
TEST_F(CudaAttention, GqaPaddingMaskCausal) { run_case({2, 130, 4, 2, 64, true, 1}, 803, kOwn); }
TEST_F(CudaAttention, GqaPaddingMaskEmptyRows128) {
  run_case({2, 96, 8, 2, 128, false, 2}, 804, kOwn);
}
TEST_F(CudaAttention, CausalWithEmptyBatch128) {
  run_case({2, 192, 4, 4, 128, true, 2}, 805, kOwn);
}
TEST_F(CudaAttention, Gpt2_124M_Shape) { run_case({1, 1024, 12, 12, 64, true, 0}, 806, kOwn); }
TEST_F(CudaAttention, Gpt_1p3B_Shape) { run_case({1, 2048, 16, 16, 128, true, 0}, 807, kOwn); }

TEST_F(CudaAttentionCudnn, SmallCausalRagged) { run_case({1, 100, 2, 2, 64, true, 0}, 811, kCudnn); }
TEST_F(CudaAttentionCudnn, Bidirectional128) {
  run_case({2, 128, 4, 4, 128, false, 0}, 812, kCudnn);
}
TEST_F(CudaAttentionCudnn, Gpt2_124M_Shape) {
  run_case({2, 1024, 12, 12, 64, true, 0}, 813, kCudnn);
}
TEST_F(CudaAttentionCudnn, Gpt_1p3B_Shape) {
  run_case({1, 2048, 16, 16, 128, true, 0}, 814, kCudnn);
}
// Grouped KV heads: 4 query heads per KV head (q has no 4-D view and is
// packed), and one KV head for all (MQA: q is a view, dk and dv are still
// group sums).
TEST_F(CudaAttentionCudnn, GqaCausal) { run_case({2, 256, 8, 2, 64, true, 0}, 815, kCudnn); }
TEST_F(CudaAttentionCudnn, GqaCausal128) { run_case({2, 256, 8, 2, 128, true, 0}, 816, kCudnn); }
TEST_F(CudaAttentionCudnn, GqaBidirectionalRagged) {
  run_case({2, 200, 8, 2, 64, false, 0}, 817, kCudnn);
}
TEST_F(CudaAttentionCudnn, MqaCausal) { run_case({2, 256, 8, 1, 64, true, 0}, 818, kCudnn); }
// The Llama 3.2 1B head shape (32 query heads on 8 KV heads), one sequence.
TEST_F(CudaAttentionCudnn, Llama1B_Shape) { run_case({1, 1024, 32, 8, 64, true, 0}, 819, kCudnn); }
TEST_F(CudaAttention, GqaCausal) { run_case({2, 256, 8, 2, 64, true, 0}, 808, kOwn); }

}  // namespace
}  // namespace mtc::rt::cuda::test
