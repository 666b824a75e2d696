// Tests that the mixture-of-experts kernels on the GPU match the host
// kernels (runtime/src/host/moe.cpp) on the same inputs: the router (both
// kinds, load-balancing and z-loss, forward and backward), the permute
// (dropless, and with a capacity by priority and by position), the
// unpermute and its gradient, and the grouped GEMMs (with and without
// bias, both weight layouts, an expert with no rows) and their weight and
// bias gradients. Routing decisions (indices, positions, counts) must be
// identical; values within bf16 / fp32 tolerances.
#include <numeric>

#include "cuda_test_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::cuda::test {
namespace {

class CudaMoe : public CudaTest {};

std::vector<int32_t> download_i32(const DevBuf<int32_t>& d) { return d.download_raw(); }

struct Routed {
  std::vector<int32_t> indices;
  std::vector<float> weights;
};

// Routing of t tokens over e experts (top-k), from the host router on
// random logits; `skip` (>= 0) is an expert no token picks.
Routed route(int64_t t, int64_t e, int64_t k, uint64_t seed, int skip = -1) {
  std::vector<float> logits = randn(t * e, seed, 2.f);
  if (skip >= 0)
    for (int64_t r = 0; r < t; ++r) logits[r * e + skip] = -50.f;
  std::vector<float> probs(t * e), aux(1);
  Routed out{std::vector<int32_t>(t * k), std::vector<float>(t * k)};
  host::moe_router_forward(logits.data(), probs.data(), out.indices.data(), out.weights.data(),
                           aux.data(), t, e, k, false, 1.f, 0.f, 0.f);
  return out;
}

TEST_F(CudaMoe, RouterForwardBackward) {
  struct Case { int64_t t, e, k; bool topk_softmax; float scale, aux, z; };
  for (Case c : {Case{1000, 8, 2, false, 1.f, 0.01f, 0.001f}, Case{333, 64, 6, true, 2.5f, 0.1f, 0.f},
                 Case{257, 40, 1, false, 1.f, 0.f, 0.01f}, Case{64, 8, 8, true, 1.f, 0.f, 0.f}}) {
    const int64_t t = c.t, e = c.e, k = c.k;
    const std::string name = " T=" + std::to_string(t) + " E=" + std::to_string(e) +
                             " K=" + std::to_string(k) + (c.topk_softmax ? " topk-softmax" : "");
    std::vector<float> logits = randn(t * e, 501 + e, 1.5f), dw = randn(t * k, 502);
    std::vector<float> daux = {0.7f};
    DevBuf<float> dl(t * e), dp(t * e), dwt(t * k), da(1), ddw(t * k), dda(1);
    DevBuf<int32_t> di(t * k);
    DevBuf<bf16> dg(t * e);
    upload(dl, logits);
    upload(ddw, dw);
    upload(dda, daux);
    moe_router_forward(ctx(), dl.get(), dp.get(), di.get(), dwt.get(), da.get(), t, e, k,
                       c.topk_softmax, c.scale, c.aux, c.z);
    std::vector<float> probs(t * e), weights(t * k), aux(1), grad(t * e);
    std::vector<int32_t> indices(t * k);
    host::moe_router_forward(logits.data(), probs.data(), indices.data(), weights.data(),
                             aux.data(), t, e, k, c.topk_softmax, c.scale, c.aux, c.z);
    EXPECT_EQ(download_i32(di), indices) << "router indices" << name;
    expect_close("router probs" + name, download(dp), probs, Tol{1e-6, 1e-5, 0});
    expect_close("router weights" + name, download(dwt), weights, Tol{1e-6, 1e-5, 0});
    expect_close("router aux" + name, download(da), aux, Tol{1e-7, 1e-5, 0});
    // Backward from the device's own forward (same indices as checked).
    moe_router_backward(ctx(), dl.get(), dp.get(), di.get(), ddw.get(), dda.get(), dg.get(), t, e,
                        k, c.topk_softmax, c.scale, c.aux, c.z);
    host::moe_router_backward(logits.data(), probs.data(), indices.data(), dw.data(), daux.data(),
                              grad.data(), t, e, k, c.topk_softmax, c.scale, c.aux, c.z);
    expect_close("router dlogits" + name, download(dg), grad,
                 Tol{2e-3 * (rms(grad) + 1e-6), 8e-3, 1e-2});
    // Without daux: only the weights' gradient.
    moe_router_backward(ctx(), dl.get(), dp.get(), di.get(), ddw.get(), nullptr, dg.get(), t, e, k,
                        c.topk_softmax, c.scale, c.aux, c.z);
    host::moe_router_backward(logits.data(), probs.data(), indices.data(), dw.data(), nullptr,
                              grad.data(), t, e, k, c.topk_softmax, c.scale, c.aux, c.z);
    expect_close("router dlogits no daux" + name, download(dg), grad,
                 Tol{2e-3 * (rms(grad) + 1e-6), 8e-3, 1e-2});
  }
}

// Permute (dropless or with a capacity), then unpermute and its gradient.
void check_permute(int64_t t, int64_t d, int64_t e, int64_t k, int64_t capacity,
                   bool by_priority, int skip) {
  const std::string name = " T=" + std::to_string(t) + " D=" + std::to_string(d) +
                           " E=" + std::to_string(e) + " K=" + std::to_string(k) +
                           (capacity >= 0 ? " capacity=" + std::to_string(capacity) +
                                                (by_priority ? " probs" : " position")
                                          : std::string(" dropless"));
  Routed r = route(t, e, k, 600 + t + e, skip);
  const int64_t rows = capacity >= 0 ? std::min(e * capacity, t * k) : t * k;
  std::vector<float> x = round_bf16(randn(t * d, 601)), dy = round_bf16(randn(t * d, 602));
  DevBuf<bf16> dx(t * d), dout(rows * d), dyd(t * d), dh(rows * d), ddy(t * d);
  DevBuf<int32_t> di(t * k), dpos(t * k), dcnt(e);
  DevBuf<float> dwt(t * k), ddw(t * k);
  upload(dx, x);
  upload(di, r.indices);
  upload(dwt, r.weights);
  upload(dyd, dy);
  std::vector<float> out(rows * d), y(t * d), dh_ref(rows * d, 0.f), dw_ref(t * k);
  std::vector<int32_t> pos(t * k), cnt(e);
  if (capacity >= 0) {
    moe_permute_capacity(ctx(), dx.get(), di.get(), dout.get(), dpos.get(), dcnt.get(), t, d, e, k,
                         by_priority ? dwt.get() : nullptr, capacity);
    host::moe_permute_capacity(x.data(), r.indices.data(), out.data(), pos.data(), cnt.data(), t,
                               d, e, k, by_priority ? r.weights.data() : nullptr, capacity);
  } else {
    moe_permute(ctx(), dx.get(), di.get(), dout.get(), dpos.get(), dcnt.get(), t, d, e, k);
    host::moe_permute(x.data(), r.indices.data(), out.data(), pos.data(), cnt.data(), t, d, e, k);
  }
  EXPECT_EQ(download_i32(dcnt), cnt) << "permute counts" << name;
  EXPECT_EQ(download_i32(dpos), pos) << "permute positions" << name;
  expect_close("permute rows" + name, download(dout), out, Tol{0, 0, 0});
  // Combine the permuted rows back (weighted), and its gradient.
  moe_unpermute(ctx(), dout.get(), dpos.get(), dwt.get(), ddy.get(), t, d, k);
  host::moe_unpermute(out.data(), pos.data(), r.weights.data(), y.data(), t, d, k);
  expect_close("unpermute" + name, download(ddy), y, Tol{1e-2, 8e-3, 1e-2});
  // Rows of no assignment keep what they held: start both from zero.
  MTC_TEST_CUDA(cudaMemsetAsync(dh.get(), 0, rows * d * sizeof(bf16), ctx().stream));
  moe_unpermute_backward(ctx(), dout.get(), dpos.get(), dwt.get(), dyd.get(), dh.get(), ddw.get(),
                         t, d, k);
  host::moe_unpermute_backward(out.data(), pos.data(), r.weights.data(), dy.data(), dh_ref.data(),
                               dw_ref.data(), t, d, k);
  expect_close("unpermute_backward dh" + name, download(dh), dh_ref, Tol{1e-3, 8e-3, 1e-2});
  expect_close("unpermute_backward dweights" + name, download(ddw), dw_ref,
               Tol{1e-3 * (rms(dw_ref) + 1), 1e-3, 1e-3});
  // Unweighted (the permute's gradient).
  moe_unpermute(ctx(), dout.get(), dpos.get(), nullptr, ddy.get(), t, d, k);
  host::moe_unpermute(out.data(), pos.data(), nullptr, y.data(), t, d, k);
  expect_close("unpermute unweighted" + name, download(ddy), y, Tol{1e-2, 8e-3, 1e-2});
}

TEST_F(CudaMoe, PermuteDropless) {
  check_permute(1000, 128, 8, 2, -1, false, -1);
  check_permute(4096, 64, 64, 6, -1, false, 3);  // more assignments than a block scans at once
  check_permute(37, 20, 5, 3, -1, false, -1);     // D not a multiple of 8: scalar rows
}

TEST_F(CudaMoe, PermuteWithCapacity) {
  for (bool by_priority : {true, false}) {
    check_permute(1000, 128, 8, 2, 200, by_priority, -1);  // some experts over, some under
    check_permute(512, 64, 16, 4, 16, by_priority, 2);     // most over capacity
    check_permute(100, 32, 4, 1, 1000, by_priority, -1);   // none over: the dropless layout
  }
}

TEST_F(CudaMoe, GroupedMatmulAndGradients) {
  struct Case { int64_t t, e, k, kin, n; bool bias, trans_b; int skip; };
  for (Case c : {Case{512, 8, 2, 128, 256, true, true, -1}, Case{300, 4, 1, 64, 96, false, false, 1},
                 Case{1024, 16, 4, 256, 64, true, false, 5}}) {
    const std::string name = " rows=" + std::to_string(c.t * c.k) + " E=" + std::to_string(c.e) +
                             " K=" + std::to_string(c.kin) + " N=" + std::to_string(c.n) +
                             (c.bias ? " bias" : "") + (c.trans_b ? " trans_b" : "");
    Routed r = route(c.t, c.e, c.k, 700 + c.e, c.skip);
    const int64_t rows = c.t * c.k, e = c.e, kin = c.kin, n = c.n;
    // The counts come from a device permute, as in a program.
    std::vector<float> x = round_bf16(randn(c.t * kin, 701));
    DevBuf<bf16> dx(c.t * kin), dxp(rows * kin), dw(e * n * kin), db(e * n), dy(rows * n),
        dg(rows * n);
    DevBuf<int32_t> di(rows), dpos(rows), dcnt(e);
    upload(dx, x);
    upload(di, r.indices);
    moe_permute(ctx(), dx.get(), di.get(), dxp.get(), dpos.get(), dcnt.get(), c.t, kin, e, c.k);
    std::vector<int32_t> cnt = download_i32(dcnt);
    if (c.skip >= 0) EXPECT_EQ(cnt[c.skip], 0) << name;
    std::vector<float> xp(rows * kin), w = round_bf16(randn(e * n * kin, 702, 0.1f)),
                                       b = round_bf16(randn(e * n, 703)),
                                       g = round_bf16(randn(rows * n, 704));
    std::vector<int32_t> pos(rows), hcnt(e);
    host::moe_permute(x.data(), r.indices.data(), xp.data(), pos.data(), hcnt.data(), c.t, kin, e,
                      c.k);
    upload(dw, w);
    upload(db, b);
    upload(dg, g);
    grouped_matmul(ctx(), dxp.get(), dw.get(), dcnt.get(), c.bias ? db.get() : nullptr, dy.get(),
                   rows, e, n, kin, c.trans_b);
    std::vector<float> y(rows * n);
    host::grouped_matmul(xp.data(), w.data(), hcnt.data(), c.bias ? b.data() : nullptr, y.data(),
                         rows, e, n, kin, c.trans_b);
    expect_close("grouped_matmul" + name, download(dy), y, Tol{4e-3 * rms(y), 8e-3, 1e-2});
    // Weight gradient (E, N, K) = per expert g_e^T xp_e, accumulated.
    std::vector<float> w0 = randn(e * n * kin, 705), dw_ref(e * n * kin);
    DevBuf<float> dgw(e * n * kin), dgb(e * n);
    upload(dgw, w0);
    grouped_matmul_wgrad(ctx(), dg.get(), dxp.get(), dcnt.get(), dgw.get(), rows, e, n, kin);
    host::grouped_matmul_wgrad(g.data(), xp.data(), hcnt.data(), dw_ref.data(), rows, e, n, kin);
    expect_close("grouped_matmul_wgrad (accumulated)" + name, download(dgw), plus(w0, dw_ref),
                 Tol{1e-3 * (rms(dw_ref) + 1), 1e-3, 1e-3});
    std::vector<float> b0 = randn(e * n, 706), db_ref(e * n);
    upload(dgb, b0);
    grouped_bias_grad(ctx(), dg.get(), dcnt.get(), dgb.get(), rows, e, n);
    host::grouped_bias_grad(g.data(), hcnt.data(), db_ref.data(), rows, e, n);
    expect_close("grouped_bias_grad (accumulated)" + name, download(dgb), plus(b0, db_ref),
                 Tol{1e-3 * (rms(db_ref) + 1), 1e-3, 1e-3});
  }
}

// Counts written by an upload, not a permute (declared with
// moe_counts_written): the grouped GEMM copies them itself; rows past the counted ones are zeroed.
TEST_F(CudaMoe, GroupedMatmulCountsNotFromAPermute) {
  const int64_t rows = 96, e = 3, n = 32, kin = 16;
  std::vector<int32_t> cnt = {40, 0, 30};  // 26 rows owned by no expert
  std::vector<float> x = round_bf16(randn(rows * kin, 801)), w = round_bf16(randn(e * n * kin, 802));
  DevBuf<bf16> dx(rows * kin), dw(e * n * kin), dy(rows * n);
  DevBuf<int32_t> dcnt(e);
  upload(dx, x);
  upload(dw, w);
  upload(dcnt, cnt);
  moe_counts_written(ctx(), dcnt.get());  // the address may have held a permute's counts
  grouped_matmul(ctx(), dx.get(), dw.get(), dcnt.get(), nullptr, dy.get(), rows, e, n, kin, true);
  std::vector<float> y(rows * n);
  host::grouped_matmul(x.data(), w.data(), cnt.data(), nullptr, y.data(), rows, e, n, kin, true);
  expect_close("grouped_matmul uploaded counts", download(dy), y, Tol{4e-3 * rms(y), 8e-3, 1e-2});
}

}  // namespace
}  // namespace mtc::rt::cuda::test
