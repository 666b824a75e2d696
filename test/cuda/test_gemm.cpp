// Tests that the cuBLASLt GEMMs (row-major, all transpose combinations, bias,
// GELU with saved pre-activation, GELU gradient with bias gradient, fp32
// accumulating weight gradients with bias gradient) match host::matmul on the
// same bf16 inputs, through cuBLASLt's fused epilogues and through the
// unfused fallback path.
#include "cuda_test_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaGemm : public CudaTest {
 protected:
  void TearDown() override {
    set_fused_gemm_epilogues(true);
    CudaTest::TearDown();
  }
};

struct Shape {
  int64_t m, n, k;
};

std::string name(const char* op, Shape s, bool ta, bool tb, bool fused) {
  return std::string(op) + " M=" + std::to_string(s.m) + " N=" + std::to_string(s.n) +
         " K=" + std::to_string(s.k) + " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) +
         (fused ? " fused" : " unfused");
}

// bf16 output: one rounding (2^-9) plus fp32 accumulation-order noise,
// measured against the output's scale.
Tol bf16_out_tol(const std::vector<float>& ref) { return Tol{4e-3 * rms(ref), 8e-3, 1e-2}; }

double gelu_tanh(double x) {
  return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

TEST_F(CudaGemm, MatmulAllTransposesWithAndWithoutBias) {
  for (Shape s : {Shape{64, 96, 80}, Shape{37, 100, 24}, Shape{512, 2304, 768}}) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      std::vector<float> a = round_bf16(randn(s.m * s.k, 1 + t));
      std::vector<float> b = round_bf16(randn(s.k * s.n, 2 + t));
      std::vector<float> bias = round_bf16(randn(s.n, 3 + t));
      DevBuf<bf16> da(a.size()), db(b.size()), dbias(s.n), dc(s.m * s.n);
      upload(da, a);
      upload(db, b);
      upload(dbias, bias);
      for (bool with_bias : {false, true}) {
        dc.poison();
        matmul(ctx(), da.get(), db.get(), with_bias ? dbias.get() : nullptr, dc.get(), s.m, s.n,
               s.k, ta, tb);
        std::vector<float> ref(s.m * s.n);
        host::matmul(a.data(), b.data(), with_bias ? bias.data() : nullptr, ref.data(), s.m, s.n,
                     s.k, ta, tb);
        expect_close(name(with_bias ? "matmul+bias" : "matmul", s, ta, tb, true), download(dc),
                     ref, bf16_out_tol(ref));
      }
    }
  }
}

TEST_F(CudaGemm, MatmulGeluKeepsPreActivation) {
  for (bool fused : {true, false}) {
    set_fused_gemm_epilogues(fused);
    for (Shape s : {Shape{256, 8192, 2048}, Shape{48, 40, 32}}) {
      std::vector<float> a = round_bf16(randn(s.m * s.k, 11, 0.05f));
      std::vector<float> w = round_bf16(randn(s.n * s.k, 12, 0.5f));  // (N, K): tb
      std::vector<float> bias = round_bf16(randn(s.n, 13, 0.5f));
      DevBuf<bf16> da(a.size()), dw(w.size()), dbias(s.n), dc(s.m * s.n), dpre(s.m * s.n);
      upload(da, a);
      upload(dw, w);
      upload(dbias, bias);
      matmul_gelu(ctx(), da.get(), dw.get(), dbias.get(), dc.get(), dpre.get(), s.m, s.n, s.k,
                  false, true);
      std::vector<float> pre(s.m * s.n), y(s.m * s.n);
      host::matmul(a.data(), w.data(), bias.data(), pre.data(), s.m, s.n, s.k, false, true);
      // The GPU applies GELU to the fp32 pre-activation (fused) or to its bf16
      // rounding (unfused): both are within the bf16 output tolerance.
      for (size_t i = 0; i < pre.size(); ++i) y[i] = static_cast<float>(gelu_tanh(pre[i]));
      expect_close(name("matmul_gelu pre", s, false, true, fused), download(dpre), pre,
                   bf16_out_tol(pre));
      expect_close(name("matmul_gelu out", s, false, true, fused), download(dc), y,
                   bf16_out_tol(y));
      // Without keeping the pre-activation.
      dc.poison();
      matmul_gelu(ctx(), da.get(), dw.get(), dbias.get(), dc.get(), nullptr, s.m, s.n, s.k, false,
                  true);
      expect_close(name("matmul_gelu (no pre) out", s, false, true, fused), download(dc), y,
                   bf16_out_tol(y));
    }
  }
}

TEST_F(CudaGemm, MatmulDgeluWithBiasGradient) {
  for (bool fused : {true, false}) {
    set_fused_gemm_epilogues(fused);
    for (Shape s : {Shape{256, 8192, 2048}, Shape{64, 48, 32}}) {
      // dH (M, N) = (dY (M, K) W (K, N)) * gelu'(pre); W stored (K, N).
      std::vector<float> dy = round_bf16(randn(s.m * s.k, 21, 0.05f));
      std::vector<float> w = round_bf16(randn(s.k * s.n, 22, 0.5f));
      std::vector<float> pre = round_bf16(randn(s.m * s.n, 23, 1.5f));
      std::vector<float> db0 = randn(s.n, 24);
      DevBuf<bf16> ddy(dy.size()), dw(w.size()), dpre(pre.size()), dc(s.m * s.n);
      DevBuf<float> ddb(s.n);
      upload(ddy, dy);
      upload(dw, w);
      upload(dpre, pre);
      upload(ddb, db0);
      matmul_dgelu(ctx(), ddy.get(), dw.get(), dpre.get(), dc.get(), ddb.get(), s.m, s.n, s.k,
                   false, false);
      std::vector<float> g(s.m * s.n), ref(s.m * s.n), dbias(s.n);
      host::matmul(dy.data(), w.data(), nullptr, g.data(), s.m, s.n, s.k, false, false);
      host::gelu_backward(pre.data(), g.data(), ref.data(), s.m * s.n, true);
      host::reduce_rows(ref.data(), dbias.data(), s.m, s.n);
      expect_close(name("matmul_dgelu dx", s, false, false, fused), download(dc), ref,
                   bf16_out_tol(ref));
      // The bias gradient sums M bf16-accurate terms (fused: fp32 values).
      expect_close(name("matmul_dgelu dbias", s, false, false, fused), download(ddb),
                   plus(db0, dbias), Tol{1e-2 * rms(dbias), 1e-2, 1e-2});
    }
  }
}

// GEMMs planned for fewer SMs (Context::sm_margin, while a collective runs
// beside them) compute the same products, and the margin is part of the
// plan's key: the same shape without a margin afterwards is right too.
TEST_F(CudaGemm, SmMarginKeepsResults) {
  const Shape s{2048, 1024, 768};
  std::vector<float> a = round_bf16(randn(s.m * s.k, 41));
  std::vector<float> w = round_bf16(randn(s.n * s.k, 42));
  std::vector<float> ref(s.m * s.n);
  host::matmul(a.data(), w.data(), nullptr, ref.data(), s.m, s.n, s.k, false, true);
  DevBuf<bf16> da(a.size()), dw(w.size()), dc(s.m * s.n);
  upload(da, a);
  upload(dw, w);
  for (int margin : {32, 0, 16, 0}) {
    ctx().sm_margin = margin;
    dc.poison();
    matmul(ctx(), da.get(), dw.get(), nullptr, dc.get(), s.m, s.n, s.k, false, true);
    expect_close("matmul sm_margin=" + std::to_string(margin), download(dc), ref,
                 bf16_out_tol(ref));
  }
  ctx().sm_margin = 0;
}

TEST_F(CudaGemm, WeightGradientAccumulatesInFp32) {
  for (bool fused : {true, false}) {
    set_fused_gemm_epilogues(fused);
    for (Shape s : {Shape{768, 2304, 4096}, Shape{40, 24, 72}}) {
      // dW (M=out, N=in) += dY^T (M, K=T) X (K, N): dY stored (T, out) -> ta.
      std::vector<float> dy = round_bf16(randn(s.k * s.m, 31, 0.1f));
      std::vector<float> x = round_bf16(randn(s.k * s.n, 32));
      std::vector<float> c0 = randn(s.m * s.n, 33), db0 = randn(s.m, 34);
      DevBuf<bf16> ddy(dy.size()), dx(x.size());
      DevBuf<float> dc(s.m * s.n), ddb(s.m);
      upload(ddy, dy);
      upload(dx, x);
      upload(dc, c0);
      upload(ddb, db0);
      matmul_f32(ctx(), ddy.get(), dx.get(), dc.get(), ddb.get(), s.m, s.n, s.k, true, false,
                 /*accumulate=*/true);
      std::vector<float> g(s.m * s.n), dbias(s.m);
      host::matmul(dy.data(), x.data(), nullptr, g.data(), s.m, s.n, s.k, true, false);
      host::reduce_rows(dy.data(), dbias.data(), s.k, s.m);
      // fp32 output: only accumulation-order differences.
      expect_close(name("matmul_f32 accumulate dW", s, true, false, fused), download(dc),
                   plus(c0, g), Tol{1e-4 * (rms(g) + 1), 1e-4, 1e-4});
      expect_close(name("matmul_f32 dbias", s, true, false, fused), download(ddb),
                   plus(db0, dbias), Tol{1e-4 * (rms(dbias) + 1), 1e-4, 1e-4});
      // Overwrite mode, no bias gradient, other transposes.
      dc.poison();
      matmul_f32(ctx(), dx.get(), ddy.get(), dc.get(), nullptr, s.n, s.m, s.k, true, false,
                 /*accumulate=*/false);
      std::vector<float> g2(s.n * s.m);
      host::matmul(x.data(), dy.data(), nullptr, g2.data(), s.n, s.m, s.k, true, false);
      expect_close(name("matmul_f32 overwrite", Shape{s.n, s.m, s.k}, true, false, fused),
                   download(dc), g2, Tol{1e-4 * (rms(g2) + 1), 1e-4, 1e-4});
    }
  }
}

}  // namespace
}  // namespace mtc::rt::cuda::test
