// Host MoE kernels (runtime/src/host/moe.cpp) against double-precision
// references and central finite differences of those references (eps 1e-6,
// tolerance 1e-4: kernels_util.h explains the budget). Top-k selection is
// piecewise constant: the random logits are far enough apart (gaps >> eps)
// that no finite-difference step changes which experts are selected.
#include "kernels_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::host::test {
namespace {

struct RouterRef {
  std::vector<double> weights;  // (T, k)
  double aux = 0;
};

// The router's weights and aux loss in double, for fixed indices; f_e of
// the aux loss counts `fidx` when given (an expert bias: the unbiased
// top-k), else the indices.
RouterRef router_ref(const std::vector<double>& l, const std::vector<int32_t>& idx, int64_t t,
                     int64_t e, int64_t k, bool topk_softmax, double scale, double a, double z,
                     const std::vector<int32_t>* fidx = nullptr) {
  RouterRef r;
  r.weights.assign(size_t(t * k), 0.0);
  std::vector<double> psum(size_t(e), 0.0), assigned(size_t(e), 0.0);
  double zsum = 0;
  for (int64_t i = 0; i < t; ++i) {
    double mx = l[i * e], sum = 0;
    for (int64_t j = 0; j < e; ++j) mx = std::max(mx, l[i * e + j]);
    for (int64_t j = 0; j < e; ++j) sum += std::exp(l[i * e + j] - mx);
    double lse = mx + std::log(sum);
    zsum += lse * lse;
    for (int64_t j = 0; j < e; ++j) psum[j] += std::exp(l[i * e + j] - lse);
    double ssum = 0;
    for (int64_t j = 0; j < k; ++j) ssum += std::exp(l[i * e + idx[i * k + j]]);
    for (int64_t j = 0; j < k; ++j) {
      int32_t x = idx[i * k + j];
      assigned[fidx ? (*fidx)[i * k + j] : x] += 1;
      r.weights[i * k + j] = scale * (topk_softmax ? std::exp(l[i * e + x]) / ssum
                                                   : std::exp(l[i * e + x] - lse));
    }
  }
  for (int64_t j = 0; j < e; ++j) r.aux += a * e * (assigned[j] / double(t * k)) * (psum[j] / t);
  r.aux += z * zsum / t;
  return r;
}

void check_router(bool topk_softmax) {
  const int64_t t = 12, e = 6, k = 2;
  const double scale = 1.5, a = 0.3, z = 0.05;
  Rng rng(7 + topk_softmax);
  std::vector<float> logits = rng.normal(t * e, 2.0f);
  std::vector<float> probs(t * e), weights(t * k), aux(1);
  std::vector<int32_t> idx(t * k);
  moe_router_forward(logits.data(), probs.data(), idx.data(), weights.data(), aux.data(), t, e, k,
                     topk_softmax, float(scale), float(a), float(z), nullptr);
  // The selection: the k largest logits in decreasing order.
  for (int64_t i = 0; i < t; ++i) {
    std::vector<int> order(e);
    for (int j = 0; j < e; ++j) order[j] = j;
    std::stable_sort(order.begin(), order.end(),
                     [&](int x, int y) { return logits[i * e + x] > logits[i * e + y]; });
    for (int64_t j = 0; j < k; ++j) ASSERT_EQ(idx[i * k + j], order[j]) << "token " << i;
  }
  std::vector<double> ld = to_double(logits);
  RouterRef ref = router_ref(ld, idx, t, e, k, topk_softmax, scale, a, z);
  expect_near_all(weights, ref.weights, 1e-5, 1e-7, "weights");
  expect_near_all(aux, {ref.aux}, 1e-5, 1e-7, "aux_loss");

  // L = sum w * W + c * aux.
  std::vector<float> dw = rng.normal(t * k);
  const float c = 0.7f;
  std::vector<float> dlogits(t * e);
  moe_router_backward(logits.data(), probs.data(), idx.data(), dw.data(), &c, dlogits.data(), t, e,
                      k, topk_softmax, float(scale), float(a), float(z), false);
  std::vector<double> fd = finite_difference<double>(
      ld,
      [&] {
        RouterRef r = router_ref(ld, idx, t, e, k, topk_softmax, scale, a, z);
        return weighted_sum(r.weights, dw) + c * r.aux;
      },
      1e-6);
  expect_gradient(dlogits, fd, 1e-4, "dlogits");
}

TEST(MoeKernels, RouterSoftmaxTopk) { check_router(false); }
TEST(MoeKernels, RouterTopkSoftmax) { check_router(true); }

// An expert bias, by hand: two tokens, four experts, top-2. Token 0's
// logits (2, 1, 0, -1) give probabilities p = e^l / 11.1055 = (0.6439,
// 0.2369, 0.0871, 0.0321); the bias (0, 0, 0.5, 0) lifts expert 2 over
// expert 1 for softmax-then-top-k (0.0871 + 0.5 > 0.2369), so it takes
// experts (0, 2) with the unbiased weights (0.6439, 0.0871). Ranking
// logits + bias (top-k then softmax), 0 + 0.5 < 1: still (0, 1). Token 1
// (logits all 0): the bias alone picks expert 2 first, then the lowest
// index, 0; weights 1/4 each (softmax-then-top-k) or 1/2 (top-k then
// softmax over two equal logits).
TEST(MoeKernels, RouterExpertBiasByHand) {
  const int64_t t = 2, e = 4, k = 2;
  const std::vector<float> logits = {2, 1, 0, -1, 0, 0, 0, 0};
  const std::vector<float> bias = {0, 0, 0.5f, 0};
  std::vector<float> probs(t * e), w(t * k), aux(1);
  std::vector<int32_t> idx(t * k);
  const double z0 = std::exp(2.0) + std::exp(1.0) + 1 + std::exp(-1.0);
  moe_router_forward(logits.data(), probs.data(), idx.data(), w.data(), aux.data(), t, e, k,
                     false, 1.0f, 0.0f, 0.0f, bias.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 2, 2, 0}));
  EXPECT_NEAR(w[0], std::exp(2.0) / z0, 1e-7);
  EXPECT_NEAR(w[1], 1.0 / z0, 1e-7);
  EXPECT_NEAR(w[2], 0.25, 1e-7);
  EXPECT_NEAR(w[3], 0.25, 1e-7);
  // The probabilities stay the unbiased softmax.
  EXPECT_NEAR(probs[1], std::exp(1.0) / z0, 1e-7);

  moe_router_forward(logits.data(), probs.data(), idx.data(), w.data(), aux.data(), t, e, k,
                     true, 1.0f, 0.0f, 0.0f, bias.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 2, 0}));
  EXPECT_NEAR(w[0], std::exp(1.0) / (std::exp(1.0) + 1), 1e-7);
  EXPECT_NEAR(w[1], 1 / (std::exp(1.0) + 1), 1e-7);
  EXPECT_NEAR(w[2], 0.5, 1e-7);
  EXPECT_NEAR(w[3], 0.5, 1e-7);

  // A zero bias selects exactly what no bias does.
  const std::vector<float> zero(e, 0.0f);
  std::vector<int32_t> idx0(t * k), idx1(t * k);
  std::vector<float> w0(t * k), w1(t * k);
  for (bool ts : {false, true}) {
    moe_router_forward(logits.data(), probs.data(), idx0.data(), w0.data(), aux.data(), t, e, k,
                       ts, 1.0f, 0.0f, 0.0f, nullptr);
    moe_router_forward(logits.data(), probs.data(), idx1.data(), w1.data(), aux.data(), t, e, k,
                       ts, 1.0f, 0.0f, 0.0f, zero.data());
    EXPECT_EQ(idx0, idx1);
    EXPECT_EQ(w0, w1);
  }
}

// A random bias that changes many selections: the weights are the
// unbiased scores of the biased selection, f_e counts the unbiased top-k,
// and the backward (biased_selection) is the finite difference of that.
void check_router_bias(bool topk_softmax) {
  const int64_t t = 12, e = 6, k = 2;
  const double scale = 1.5, a = 0.3, z = 0.05;
  Rng rng(21 + topk_softmax);
  std::vector<float> logits = rng.normal(t * e, 2.0f);
  std::vector<float> bias = rng.normal(e, topk_softmax ? 3.0f : 0.5f);
  std::vector<float> probs(t * e), weights(t * k), aux(1);
  std::vector<int32_t> idx(t * k);
  moe_router_forward(logits.data(), probs.data(), idx.data(), weights.data(), aux.data(), t, e, k,
                     topk_softmax, float(scale), float(a), float(z), bias.data());
  std::vector<int32_t> unbiased(t * k);
  int changed = 0;
  for (int64_t i = 0; i < t; ++i) {
    auto rank = [&](bool biased) {
      std::vector<int> order(e);
      for (int j = 0; j < e; ++j) order[j] = j;
      auto score = [&](int x) {
        float s = topk_softmax ? logits[i * e + x] : probs[i * e + x];
        return biased ? s + bias[x] : s;
      };
      std::stable_sort(order.begin(), order.end(),
                       [&](int x, int y) { return score(x) > score(y); });
      return order;
    };
    std::vector<int> b = rank(true), u = rank(false);
    for (int64_t j = 0; j < k; ++j) {
      ASSERT_EQ(idx[i * k + j], b[j]) << "token " << i;
      unbiased[i * k + j] = u[j];
      changed += b[j] != u[j];
    }
  }
  ASSERT_GT(changed, 0) << "the bias must change some selections for this test to mean anything";
  std::vector<double> ld = to_double(logits);
  RouterRef ref = router_ref(ld, idx, t, e, k, topk_softmax, scale, a, z, &unbiased);
  expect_near_all(weights, ref.weights, 1e-5, 1e-7, "weights");
  expect_near_all(aux, {ref.aux}, 1e-5, 1e-7, "aux_loss");

  std::vector<float> dw = rng.normal(t * k);
  const float c = 0.7f;
  std::vector<float> dlogits(t * e);
  moe_router_backward(logits.data(), probs.data(), idx.data(), dw.data(), &c, dlogits.data(), t, e,
                      k, topk_softmax, float(scale), float(a), float(z), true);
  std::vector<double> fd = finite_difference<double>(
      ld,
      [&] {
        RouterRef r = router_ref(ld, idx, t, e, k, topk_softmax, scale, a, z, &unbiased);
        return weighted_sum(r.weights, dw) + c * r.aux;
      },
      1e-6);
  expect_gradient(dlogits, fd, 1e-4, "dlogits");
}

TEST(MoeKernels, RouterExpertBiasSoftmaxTopk) { check_router_bias(false); }
TEST(MoeKernels, RouterExpertBiasTopkSoftmax) { check_router_bias(true); }

// The loads of two microbatches add up; the update moves each bias by
// rate toward the mean load and clears the loads. Loads (3, 5, 4, 4):
// mean 4, so expert 0 (under) +rate, expert 1 (over) -rate, experts 2 and
// 3 (at the mean) unchanged. Loads (1, 2, 2): mean 5/3, not a float, and
// still exactly +, -, -.
TEST(MoeKernels, ExpertBiasUpdateByHand) {
  std::vector<float> load(4, 0.0f);
  const std::vector<int32_t> a = {1, 3, 4, 0}, b = {2, 2, 0, 4};
  moe_accumulate_load(a.data(), load.data(), 4);
  moe_accumulate_load(b.data(), load.data(), 4);
  EXPECT_EQ(load, (std::vector<float>{3, 5, 4, 4}));
  std::vector<float> bias = {0.5f, 0.0f, -0.25f, 0.125f};
  moe_update_expert_bias(load.data(), bias.data(), 4, 0.01f);
  EXPECT_EQ(bias, (std::vector<float>{0.5f + 0.01f, 0.0f - 0.01f, -0.25f, 0.125f}));
  EXPECT_EQ(load, (std::vector<float>{0, 0, 0, 0}));

  std::vector<float> load3 = {1, 2, 2}, bias3 = {0, 0, 0};
  moe_update_expert_bias(load3.data(), bias3.data(), 3, 1e-3f);
  EXPECT_EQ(bias3, (std::vector<float>{1e-3f, -1e-3f, -1e-3f}));
  // Balanced loads leave the bias alone.
  std::vector<float> even = {7, 7, 7}, bias_even = {0.25f, -0.5f, 0};
  moe_update_expert_bias(even.data(), bias_even.data(), 3, 1e-3f);
  EXPECT_EQ(bias_even, (std::vector<float>{0.25f, -0.5f, 0}));
}

// Equal logits: the lower indices win, every probability is 1/E, and the
// aux loss is exactly aux_coeff + z_coeff * log(E)^2 (the upcycling test's
// offset, docs/moe.md).
TEST(MoeKernels, RouterTiesAndUniformAux) {
  const int64_t t = 5, e = 8, k = 2;
  std::vector<float> logits(t * e, 0.0f), probs(t * e), weights(t * k), aux(1);
  std::vector<int32_t> idx(t * k);
  moe_router_forward(logits.data(), probs.data(), idx.data(), weights.data(), aux.data(), t, e, k,
                     false, 1.0f, 0.01f, 0.001f, nullptr);
  for (int64_t i = 0; i < t; ++i) {
    EXPECT_EQ(idx[i * k], 0);
    EXPECT_EQ(idx[i * k + 1], 1);
    EXPECT_FLOAT_EQ(weights[i * k], 1.0f / e);
  }
  EXPECT_NEAR(aux[0], 0.01 + 0.001 * std::log(8.0) * std::log(8.0), 1e-7);
}

TEST(MoeKernels, PermuteUnpermute) {
  const int64_t t = 7, d = 5, e = 4, k = 2;
  Rng rng(11);
  std::vector<float> x = rng.normal(t * d);
  // Distinct experts per token; expert 3 gets no token.
  std::vector<int32_t> idx;
  for (int64_t i = 0; i < t; ++i) {
    int32_t a = rng.integer(0, 2), b = (a + 1 + rng.integer(0, 1)) % 3;
    idx.push_back(a);
    idx.push_back(b);
  }
  std::vector<float> xp(t * k * d);
  std::vector<int32_t> pos(t * k), counts(e);
  moe_permute(x.data(), idx.data(), xp.data(), pos.data(), counts.data(), t, d, e, k);
  // Counts, offsets and order: expert by expert, token order within.
  std::vector<int32_t> want(e, 0);
  for (int32_t v : idx) ++want[v];
  EXPECT_EQ(counts, want);
  int64_t row = 0;
  for (int32_t ex = 0; ex < e; ++ex)
    for (int64_t i = 0; i < t * k; ++i)
      if (idx[i] == ex) {
        EXPECT_EQ(pos[i], row) << "assignment " << i;
        for (int64_t c = 0; c < d; ++c) EXPECT_EQ(xp[row * d + c], x[(i / k) * d + c]);
        ++row;
      }

  // Weighted unpermute against its double reference and its gradients.
  std::vector<float> h = rng.normal(t * k * d), w = rng.uniform(t * k, 0.1f, 1.0f);
  std::vector<double> hd = to_double(h), wd = to_double(w);
  auto ref = [&] {
    std::vector<double> y(t * d, 0.0);
    for (int64_t i = 0; i < t; ++i)
      for (int64_t j = 0; j < k; ++j)
        for (int64_t c = 0; c < d; ++c) y[i * d + c] += wd[i * k + j] * hd[pos[i * k + j] * d + c];
    return y;
  };
  std::vector<float> y(t * d);
  moe_unpermute(h.data(), pos.data(), w.data(), y.data(), t, d, k);
  expect_near_all(y, ref(), 1e-6, 1e-6, "unpermute");
  std::vector<float> dy = rng.normal(t * d), dh(t * k * d), dwts(t * k);
  moe_unpermute_backward(h.data(), pos.data(), w.data(), dy.data(), dh.data(), dwts.data(), t, d,
                         k);
  auto objective = [&] { return weighted_sum(ref(), dy); };
  expect_gradient(dh, finite_difference<double>(hd, objective, 1e-6), 1e-4, "dh");
  expect_gradient(dwts, finite_difference<double>(wd, objective, 1e-6), 1e-4, "dweights");

  // Unweighted unpermute is permute's adjoint: <permute(x), g> = <x, unpermute(g)>.
  std::vector<float> g = rng.normal(t * k * d), xg(t * d);
  moe_unpermute(g.data(), pos.data(), nullptr, xg.data(), t, d, k);
  double lhs = 0, rhs = 0;
  for (size_t i = 0; i < g.size(); ++i) lhs += double(xp[i]) * g[i];
  for (size_t i = 0; i < x.size(); ++i) rhs += double(x[i]) * xg[i];
  EXPECT_NEAR(lhs, rhs, 1e-4 * std::abs(lhs) + 1e-5);
}

// The kept assignments of a capacity-C permute, in double-free integer
// logic: per expert, its assignments in (token, slot) order, ranked by
// decreasing priority (ties: the earlier) or kept in order without one.
std::vector<char> kept_ref(const std::vector<int32_t>& idx, const std::vector<float>* prio,
                           int64_t e, int64_t cap) {
  std::vector<char> keep(idx.size(), 0);
  for (int32_t ex = 0; ex < e; ++ex) {
    std::vector<int64_t> list;
    for (size_t i = 0; i < idx.size(); ++i)
      if (idx[i] == ex) list.push_back(int64_t(i));
    // Selection sort by rank: the C best, one at a time.
    for (int64_t c = 0; c < cap && !list.empty(); ++c) {
      size_t best = 0;
      for (size_t i = 1; i < list.size(); ++i)
        if (prio != nullptr && (*prio)[list[i]] > (*prio)[list[best]]) best = i;
      keep[list[best]] = 1;
      list.erase(list.begin() + long(best));
    }
  }
  return keep;
}

// Token dropping: both drop policies against kept_ref, rows packed expert
// by expert in token order, the tail zero, dropped positions -1; the
// unpermute skips them and its backward gives them no gradient.
TEST(MoeKernels, PermuteCapacityDrops) {
  const int64_t t = 20, d = 3, e = 4, k = 2, cap = 6;
  const int64_t rows = std::min(e * cap, t * k);  // 24 of 40 assignments
  Rng rng(17);
  std::vector<float> x = rng.normal(t * d), prio = rng.uniform(t * k, 0.0f, 1.0f);
  std::vector<int32_t> idx;
  for (int64_t i = 0; i < t; ++i) {  // experts 0 and 1 are crowded
    int32_t a = rng.integer(0, 1), b = 2 + rng.integer(0, 1);
    if (i % 3 == 0) b = 1 - a;
    idx.push_back(a);
    idx.push_back(b);
  }
  for (bool by_prob : {true, false}) {
    SCOPED_TRACE(by_prob ? "policy probs" : "policy position");
    const float* p = by_prob ? prio.data() : nullptr;
    std::vector<float> xp(rows * d, 99.0f);
    std::vector<int32_t> pos(t * k), counts(e);
    moe_permute_capacity(x.data(), idx.data(), xp.data(), pos.data(), counts.data(), t, d, e, k,
                         p, cap);
    std::vector<char> keep = kept_ref(idx, by_prob ? &prio : nullptr, e, cap);
    int64_t row = 0, dropped = 0;
    for (int32_t ex = 0; ex < e; ++ex) {
      int32_t n = 0;
      for (int64_t i = 0; i < t * k; ++i) {
        if (idx[i] != ex) continue;
        if (!keep[i]) {
          EXPECT_EQ(pos[i], -1) << "assignment " << i << " is dropped";
          ++dropped;
          continue;
        }
        EXPECT_EQ(pos[i], row) << "assignment " << i;
        for (int64_t c = 0; c < d; ++c) EXPECT_EQ(xp[row * d + c], x[(i / k) * d + c]);
        ++row;
        ++n;
      }
      EXPECT_EQ(counts[ex], n) << "expert " << ex;
      EXPECT_LE(counts[ex], cap);
    }
    EXPECT_GT(dropped, 0) << "the test routes more than capacity to experts 0 and 1";
    for (int64_t i = row * d; i < rows * d; ++i) ASSERT_EQ(xp[i], 0.0f) << "the tail is zero";

    // The combine: dropped assignments add nothing (weight 0).
    std::vector<float> h = rng.normal(rows * d), w = rng.uniform(t * k, 0.1f, 1.0f);
    std::vector<double> hd = to_double(h), wd = to_double(w);
    auto ref = [&] {
      std::vector<double> y(t * d, 0.0);
      for (int64_t i = 0; i < t * k; ++i)
        if (keep[i])
          for (int64_t c = 0; c < d; ++c) y[(i / k) * d + c] += wd[i] * hd[pos[i] * d + c];
      return y;
    };
    std::vector<float> y(t * d);
    moe_unpermute(h.data(), pos.data(), w.data(), y.data(), t, d, k);
    expect_near_all(y, ref(), 1e-6, 1e-6, "unpermute");
    std::vector<float> dy = rng.normal(t * d), dh(rows * d, 0.0f), dwts(t * k, 99.0f);
    moe_unpermute_backward(h.data(), pos.data(), w.data(), dy.data(), dh.data(), dwts.data(), t,
                           d, k);
    auto objective = [&] { return weighted_sum(ref(), dy); };
    expect_gradient(dh, finite_difference<double>(hd, objective, 1e-6), 1e-4, "dh");
    expect_gradient(dwts, finite_difference<double>(wd, objective, 1e-6), 1e-4, "dweights");
    for (int64_t i = 0; i < t * k; ++i)
      if (!keep[i]) ASSERT_EQ(dwts[i], 0.0f) << "dropped assignment " << i;
  }
}

// Equal priorities: the "probs" policy keeps the earlier assignments, as
// "position" does. A capacity of T drops nothing: the dropless permute's
// rows, positions and counts, bit for bit.
TEST(MoeKernels, PermuteCapacityTiesAndNoDrop) {
  const int64_t t = 9, d = 4, e = 3, k = 2;
  Rng rng(19);
  std::vector<float> x = rng.normal(t * d), same(t * k, 0.5f);
  std::vector<int32_t> idx;
  for (int64_t i = 0; i < t; ++i) {
    int32_t a = rng.integer(0, 2);
    idx.push_back(a);
    idx.push_back((a + 1) % 3);
  }
  const int64_t cap = 2, rows = e * cap;
  std::vector<float> xa(rows * d), xb(rows * d);
  std::vector<int32_t> pa(t * k), pb(t * k), ca(e), cb(e);
  moe_permute_capacity(x.data(), idx.data(), xa.data(), pa.data(), ca.data(), t, d, e, k,
                       same.data(), cap);
  moe_permute_capacity(x.data(), idx.data(), xb.data(), pb.data(), cb.data(), t, d, e, k, nullptr,
                       cap);
  EXPECT_EQ(pa, pb);
  EXPECT_EQ(ca, cb);
  EXPECT_EQ(xa, xb);

  std::vector<float> prio = rng.uniform(t * k, 0.0f, 1.0f), xd(t * k * d), xc(t * k * d);
  std::vector<int32_t> pd(t * k), pc(t * k), cd(e), cc(e);
  moe_permute(x.data(), idx.data(), xd.data(), pd.data(), cd.data(), t, d, e, k);
  moe_permute_capacity(x.data(), idx.data(), xc.data(), pc.data(), cc.data(), t, d, e, k,
                       prio.data(), t);
  EXPECT_EQ(pc, pd);
  EXPECT_EQ(cc, cd);
  EXPECT_EQ(xc, xd);
}

// Rows past the counts' total (dropped capacity): grouped_matmul zeroes
// them.
TEST(MoeKernels, GroupedMatmulTailRows) {
  const int64_t e = 2, kdim = 3, n = 4, rows = 6;
  const std::vector<int32_t> counts = {2, 1};
  Rng rng(23);
  std::vector<float> x = rng.normal(rows * kdim), w = rng.normal(e * kdim * n), y(rows * n, 99.0f);
  grouped_matmul(x.data(), w.data(), counts.data(), nullptr, y.data(), rows, e, n, kdim, false);
  for (int64_t i = 0; i < 3 * n; ++i) ASSERT_NE(y[i], 99.0f);
  for (int64_t i = 3 * n; i < rows * n; ++i) ASSERT_EQ(y[i], 0.0f);
}

TEST(MoeKernels, GroupedMatmul) {
  const int64_t e = 3, kdim = 4, n = 5;
  const std::vector<int32_t> counts = {3, 0, 4};  // expert 1 has no rows
  const int64_t rows = 7;
  Rng rng(13);
  std::vector<float> x = rng.normal(rows * kdim), w = rng.normal(e * n * kdim),
                     bias = rng.normal(e * n);
  std::vector<double> xd = to_double(x), wd = to_double(w), bd = to_double(bias);
  auto group = [&](int64_t r) { return r < 3 ? 0 : 2; };
  // y = x_e · w_e^T + b_e, w (E, Nout, K) (transpose_b).
  auto ref = [&] {
    std::vector<double> y(rows * n, 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < n; ++o) {
        double acc = bd[group(r) * n + o];
        for (int64_t c = 0; c < kdim; ++c)
          acc += xd[r * kdim + c] * wd[(group(r) * n + o) * kdim + c];
        y[r * n + o] = acc;
      }
    return y;
  };
  std::vector<float> y(rows * n);
  grouped_matmul(x.data(), w.data(), counts.data(), bias.data(), y.data(), rows, e, n, kdim, true);
  expect_near_all(y, ref(), 1e-5, 1e-5, "grouped_matmul");

  // The gradient ops that mtc.grouped_matmul's rule builds.
  std::vector<float> dy = rng.normal(rows * n), dx(rows * kdim), dw(e * n * kdim, 99.0f),
                     db(e * n, 99.0f);
  grouped_matmul(dy.data(), w.data(), counts.data(), nullptr, dx.data(), rows, e, kdim, n, false);
  grouped_matmul_wgrad(dy.data(), x.data(), counts.data(), dw.data(), rows, e, n, kdim);
  grouped_bias_grad(dy.data(), counts.data(), db.data(), rows, e, n);
  auto objective = [&] { return weighted_sum(ref(), dy); };
  expect_gradient(dx, finite_difference<double>(xd, objective, 1e-6), 1e-4, "dx");
  expect_gradient(dw, finite_difference<double>(wd, objective, 1e-6), 1e-4, "dw");
  expect_gradient(db, finite_difference<double>(bd, objective, 1e-6), 1e-4, "dbias");
  for (int64_t i = n * kdim; i < 2 * n * kdim; ++i) ASSERT_EQ(dw[i], 0.0f) << "expert 1 has no rows";
}

}  // namespace
}  // namespace mtc::rt::host::test
