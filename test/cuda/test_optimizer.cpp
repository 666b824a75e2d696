// Tests that sum_squares and the multi-tensor AdamW (one launch over tensors
// of odd sizes and offsets, per-tensor weight decay, device-side clipping
// from the gradient norm, bf16 copy in the same pass) match the host kernels.
#include <cmath>

#include "cuda_test_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaOptimizer : public CudaTest {};

TEST_F(CudaOptimizer, SumSquares) {
  for (int64_t n : {int64_t{1} << 22, int64_t{12345}, int64_t{3}}) {
    std::vector<float> x = randn(n, 701, 0.01f);
    DevBuf<float> dx(n);
    DevBuf<double> out(1);
    upload(dx, x);
    sum_squares(ctx(), dx.get(), n, out.get(), false);
    const double ref = host::sum_squares(x.data(), n);
    const double got = out.download_raw()[0];
    sum_squares(ctx(), dx.get(), n, out.get(), true);
    const double got2 = out.download_raw()[0];
    const double rel = std::fabs(got - ref) / ref, rel2 = std::fabs(got2 - 2 * ref) / (2 * ref);
    std::printf("[sum_squares n=%lld] got %.15g ref %.15g rel %.2e; accumulate rel %.2e %s\n",
                static_cast<long long>(n), got, ref, rel, rel2,
                rel < 1e-12 && rel2 < 1e-12 ? "PASS" : "FAIL");
    EXPECT_LT(rel, 1e-12);
    EXPECT_LT(rel2, 1e-12);
  }
}

TEST_F(CudaOptimizer, MultiTensorAdamWWithClipping) {
  // Tensors laid out back to back, some sizes/offsets not multiples of 4
  // (scalar path), one larger than a chunk (65536).
  std::vector<AdamWTensor> tensors = {{0, 1000, true},  {1000, 7, false},   {1007, 200001, true},
                                      {201008, 768, false}, {201776, 4096, true}};
  const int64_t n = 201776 + 4096;
  std::vector<float> p0 = randn(n, 711, 0.02f), g = randn(n, 712, 0.05f);
  std::vector<float> m0 = randn(n, 713, 0.01f), v0 = uniform(n, 714, 0.f, 1e-3f);
  for (int clip_case = 0; clip_case < 3; ++clip_case) {
    DevBuf<float> dp(n), dg(n), dm(n), dv(n);
    DevBuf<bf16> dpb(n);
    DevBuf<double> sumsq(1);
    upload(dp, p0);
    upload(dg, g);
    upload(dm, m0);
    upload(dv, v0);
    AdamWHyper hp;
    hp.lr = 3e-4f;
    hp.beta1 = 0.9f;
    hp.beta2 = 0.95f;
    hp.eps = 1e-8f;
    hp.weight_decay = 0.1f;
    hp.step = 7;
    hp.grad_scale = 0.5f;
    // 0: no clipping info; 1: clipping active (small max norm); 2: inactive.
    hp.max_grad_norm = clip_case == 1 ? 1.0f : 1e6f;
    sum_squares(ctx(), dg.get(), n, sumsq.get(), false);
    AdamWPlan plan(ctx(), tensors);
    adamw(ctx(), plan, dp.get(), dg.get(), dm.get(), dv.get(), dpb.get(), hp,
          clip_case == 0 ? nullptr : sumsq.get());

    const double norm = std::sqrt(host::sum_squares(g.data(), n)) * hp.grad_scale;
    double scale = hp.grad_scale;
    if (clip_case != 0) scale *= std::min(1.0, hp.max_grad_norm / (norm + 1e-6));
    std::vector<float> rp = p0, rm = m0, rv = v0;
    for (const AdamWTensor& t : tensors)
      host::adamw(rp.data() + t.offset, g.data() + t.offset, rm.data() + t.offset,
                  rv.data() + t.offset, t.numel, hp.lr, hp.beta1, hp.beta2, hp.eps,
                  t.weight_decay ? hp.weight_decay : 0.f, hp.step, static_cast<float>(scale));
    const std::string tg = " clip case " + std::to_string(clip_case) + " (grad norm " +
                           std::to_string(norm) + ")";
    // Same fp32 operations; the GPU may contract a*b+c into one FMA.
    expect_close("adamw param" + tg, download(dp), rp, Tol{1e-7, 1e-5, 0});
    expect_close("adamw m" + tg, download(dm), rm, Tol{1e-9, 1e-5, 0});
    expect_close("adamw v" + tg, download(dv), rv, Tol{1e-12, 1e-5, 0});
    expect_close("adamw bf16 copy" + tg, download(dpb), round_bf16(download(dp)), Tol{0, 0, 0});
  }
}

}  // namespace
}  // namespace mtc::rt::cuda::test
