// Tests that sum_squares and the multi-tensor AdamW (one launch over tensors
// of odd sizes and offsets, per-tensor weight decay, device-side clipping
// from the gradient norm, bf16 copy in the same pass) match the host kernels,
// also with the moments of a ZeRO-1 shard only (AdamWTensor::state_offset).
#include <algorithm>
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

TEST_F(CudaOptimizer, ShardedAdamWWithStateOffset) {
  // ZeRO-1: each rank updates the part of the flat parameter buffer in its
  // shard [s0, s1) and keeps m, v for that shard only (state_offset =
  // offset - s0). Tensors are cut at the shard edges. Two partitions: one
  // with an odd edge (scalar path), one with 4-aligned edges (float4 path).
  const std::vector<AdamWTensor> tensors = {{0, 1000, true},       {1000, 7, false},
                                            {1007, 200001, true},  {201008, 768, false},
                                            {201776, 4096, true}};
  const int64_t n = 201776 + 4096;
  const int64_t kGuard = 64;  // after each rank's moments: must stay untouched
  const float kSentinel = 123.f;
  std::vector<float> p0 = randn(n, 721, 0.02f), g = randn(n, 722, 0.05f);
  std::vector<float> m0 = randn(n, 723, 0.01f), v0 = uniform(n, 724, 0.f, 1e-3f);
  AdamWHyper hp;
  hp.lr = 3e-4f;
  hp.weight_decay = 0.1f;
  hp.step = 5;
  hp.grad_scale = 0.5f;
  hp.max_grad_norm = 1.0f;  // clipping active (global norm over every gradient)
  const double norm = std::sqrt(host::sum_squares(g.data(), n)) * hp.grad_scale;
  const float scale =
      static_cast<float>(hp.grad_scale * std::min(1.0, hp.max_grad_norm / (norm + 1e-6)));

  // The unsharded GPU step (state_offset = -1), for comparison.
  DevBuf<float> fp(n), fg(n), fm(n), fv(n);
  DevBuf<double> sumsq(1);
  upload(fp, p0);
  upload(fg, g);
  upload(fm, m0);
  upload(fv, v0);
  sum_squares(ctx(), fg.get(), n, sumsq.get(), false);
  {
    AdamWPlan plan(ctx(), tensors);
    adamw(ctx(), plan, fp.get(), fg.get(), fm.get(), fv.get(), nullptr, hp, sumsq.get());
  }
  const std::vector<float> full_p = download(fp);

  for (const std::vector<int64_t>& edges :
       {std::vector<int64_t>{0, 102937, n}, std::vector<int64_t>{0, 68624, 137248, n}}) {
    DevBuf<float> dp(n);
    DevBuf<bf16> dpb(n);  // NaN-poisoned: only the shards' elements get written
    upload(dp, p0);
    std::vector<float> rp = p0;
    for (size_t r = 0; r + 1 < edges.size(); ++r) {
      const int64_t s0 = edges[r], s1 = edges[r + 1], ns = s1 - s0;
      std::vector<AdamWTensor> shard;
      for (const AdamWTensor& t : tensors) {
        const int64_t lo = std::max(t.offset, s0), hi = std::min(t.offset + t.numel, s1);
        if (hi > lo) shard.push_back(AdamWTensor{lo, hi - lo, t.weight_decay, lo - s0});
      }
      std::vector<float> m(m0.begin() + s0, m0.begin() + s1), v(v0.begin() + s0, v0.begin() + s1);
      m.resize(ns + kGuard, kSentinel);
      v.resize(ns + kGuard, kSentinel);
      DevBuf<float> dm(ns + kGuard), dv(ns + kGuard);
      upload(dm, m);
      upload(dv, v);
      AdamWPlan plan(ctx(), shard);
      adamw(ctx(), plan, dp.get(), fg.get(), dm.get(), dv.get(), dpb.get(), hp, sumsq.get());

      std::vector<float> rm = m, rv = v;
      for (const AdamWTensor& t : shard)
        host::adamw(rp.data() + t.offset, g.data() + t.offset, rm.data() + t.state_offset,
                    rv.data() + t.state_offset, t.numel, hp.lr, hp.beta1, hp.beta2, hp.eps,
                    t.weight_decay ? hp.weight_decay : 0.f, hp.step, scale);
      const std::string tg = " shard [" + std::to_string(s0) + ", " + std::to_string(s1) + ")";
      // The guards' reference is the sentinel: a stray write fails.
      expect_close("sharded adamw m" + tg, download(dm), rm, Tol{1e-9, 1e-5, 0});
      expect_close("sharded adamw v" + tg, download(dv), rv, Tol{1e-12, 1e-5, 0});
      std::vector<float> gm = download(dm);
      for (int64_t i = ns; i < ns + kGuard; ++i) EXPECT_EQ(gm[i], kSentinel) << "m guard " << i;
    }
    const std::string tg = " (" + std::to_string(edges.size() - 1) + " shards)";
    const std::vector<float> got = download(dp);
    expect_close("sharded adamw param vs host" + tg, got, rp, Tol{1e-7, 1e-5, 0});
    // Same per-element math as the unsharded kernel.
    expect_close("sharded adamw param vs unsharded GPU step" + tg, got, full_p,
                 Tol{1e-9, 1e-6, 0});
    expect_close("sharded adamw bf16 copy" + tg, download(dpb), round_bf16(got), Tol{0, 0, 0});
  }
}

}  // namespace
}  // namespace mtc::rt::cuda::test
