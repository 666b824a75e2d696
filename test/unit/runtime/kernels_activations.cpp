// Tests of the host elementwise kernels: GELU (tanh and erf), SwiGLU and
// squared ReLU against double formulas and finite differences, and dropout: the
// documented counter-based hash (mtc/rt/dropout_hash.h), mask statistics,
// independence from how the tensor is split, and its gradient.
#include <cstring>

#include "kernels_util.h"
#include "mtc/rt/dropout_hash.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::host::test {
namespace {

double gelu_ref(double x, bool tanh_approx) {
  const double pi = 3.14159265358979323846;
  if (tanh_approx)
    return 0.5 * x * (1 + std::tanh(std::sqrt(2 / pi) * (x + 0.044715 * x * x * x)));
  return x * 0.5 * std::erfc(-x / std::sqrt(2.0));
}

TEST(KernelGelu, ForwardMatchesReference) {
  Rng rng(30);
  auto x = rng.uniform(1001, -6.0f, 6.0f);
  for (bool ta : {true, false}) {
    std::vector<float> y(x.size());
    gelu_forward(x.data(), y.data(), x.size(), ta);
    std::vector<double> ref(x.size());
    for (size_t i = 0; i < x.size(); ++i) ref[i] = gelu_ref(x[i], ta);
    expect_near_all(y, ref, 1e-6, 1e-7, ta ? "gelu tanh" : "gelu erf");
  }
}

TEST(KernelGelu, BackwardMatchesFiniteDifferences) {
  Rng rng(31);
  auto x = rng.uniform(257, -4.0f, 4.0f), w = rng.uniform(257);
  for (bool ta : {true, false}) {
    std::vector<float> y(x.size()), dx(x.size());
    auto objective = [&] {
      gelu_forward(x.data(), y.data(), x.size(), ta);
      return weighted_sum(y, w);
    };
    gelu_backward(x.data(), w.data(), dx.data(), x.size(), ta);
    expect_gradient(dx, finite_difference(x, objective, 1e-2f), 1e-2, ta ? "gelu tanh" : "gelu erf");
    auto xd = to_double(x);
    auto objective_d = [&] {
      double acc = 0;
      for (size_t i = 0; i < xd.size(); ++i) acc += w[i] * gelu_ref(xd[i], ta);
      return acc;
    };
    expect_gradient(dx, finite_difference(xd, objective_d, 1e-6), 1e-5,
                    ta ? "gelu tanh (double)" : "gelu erf (double)");
  }
}

TEST(KernelSwiglu, ForwardMatchesReference) {
  Rng rng(32);
  auto g = rng.uniform(333, -8.0f, 8.0f), u = rng.uniform(333, -2.0f, 2.0f);
  std::vector<float> y(g.size());
  swiglu_forward(g.data(), u.data(), y.data(), g.size());
  std::vector<double> ref(g.size());
  for (size_t i = 0; i < g.size(); ++i) ref[i] = g[i] / (1 + std::exp(-double(g[i]))) * u[i];
  expect_near_all(y, ref, 1e-6, 1e-7, "swiglu");
}

TEST(KernelSwiglu, BackwardMatchesFiniteDifferences) {
  Rng rng(33);
  const size_t n = 199;
  auto g = rng.uniform(n, -5.0f, 5.0f), u = rng.uniform(n, -2.0f, 2.0f), w = rng.uniform(n);
  std::vector<float> y(n), dg(n), du(n);
  auto objective = [&] {
    swiglu_forward(g.data(), u.data(), y.data(), n);
    return weighted_sum(y, w);
  };
  swiglu_backward(g.data(), u.data(), w.data(), dg.data(), du.data(), n);
  expect_gradient(dg, finite_difference(g, objective, 1e-2f), 1e-2, "dgate");
  expect_gradient(du, finite_difference(u, objective, 1e-2f), 1e-2, "dup");
  auto gd = to_double(g), ud = to_double(u);
  auto objective_d = [&] {
    double acc = 0;
    for (size_t i = 0; i < n; ++i) acc += w[i] * gd[i] / (1 + std::exp(-gd[i])) * ud[i];
    return acc;
  };
  expect_gradient(dg, finite_difference(gd, objective_d, 1e-6), 1e-5, "dgate (double)");
  expect_gradient(du, finite_difference(ud, objective_d, 1e-6), 1e-5, "dup (double)");
}

TEST(KernelSquaredRelu, ForwardMatchesReference) {
  Rng rng(34);
  auto x = rng.uniform(517, -4.0f, 4.0f);
  std::vector<float> y(x.size());
  squared_relu_forward(x.data(), y.data(), x.size());
  std::vector<double> ref(x.size());
  for (size_t i = 0; i < x.size(); ++i) ref[i] = x[i] > 0 ? double(x[i]) * x[i] : 0.0;
  expect_near_all(y, ref, 1e-6, 1e-7, "squared_relu");
}

TEST(KernelSquaredRelu, BackwardMatchesFiniteDifferences) {
  Rng rng(35);
  const size_t n = 263;
  auto x = rng.uniform(n, -3.0f, 3.0f), w = rng.uniform(n);
  std::vector<float> dx(n);
  squared_relu_backward(x.data(), w.data(), dx.data(), n);
  // In double with a small step: the kink at 0 is never within it.
  auto xd = to_double(x);
  auto objective = [&] {
    double acc = 0;
    for (size_t i = 0; i < n; ++i) acc += w[i] * (xd[i] > 0 ? xd[i] * xd[i] : 0.0);
    return acc;
  };
  expect_gradient(dx, finite_difference(xd, objective, 1e-6), 1e-5, "squared_relu");
}

// The documented hash, written independently: SplitMix64's output function
// and its generator (state += GAMMA; output mix(state)).
uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct SplitMix64 {
  uint64_t state;
  uint64_t next() { return mix(state += 0x9E3779B97F4A7C15ull); }
};

TEST(KernelDropout, HashIsSplitMix64) {
  // Reference outputs of SplitMix64 seeded with 1234567 (the standard test
  // vector of Vigna's splitmix64.c).
  const uint64_t expected[] = {6457827717110365317ull, 3203168211198807973ull,
                               9817491932198370423ull, 4593380528125082431ull,
                               16408922859458223821ull};
  for (uint64_t i = 0; i < 5; ++i)
    EXPECT_EQ(dropout_bits(1234567, i), expected[i]) << "output " << i;
}

TEST(KernelDropout, MaskFollowsTheDocumentedFunction) {
  Rng rng(34);
  const int64_t n = 5000, offset = 123457;
  const uint64_t seed = 0xDEADBEEFCAFEull, key = 17;
  const float p = 0.3f;
  auto x = rng.uniform(n);
  std::vector<float> y(n);
  dropout(x.data(), y.data(), n, p, seed, key, offset);
  // stream(seed, key) = mix(seed + GAMMA * (mix(key + GAMMA) | 1)).
  SplitMix64 gen{mix(seed + 0x9E3779B97F4A7C15ull * (mix(key + 0x9E3779B97F4A7C15ull) | 1))};
  for (int64_t i = 0; i < offset; ++i) gen.next();
  const float scale = 1.0f / (1.0f - p);
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float u = float(gen.next() >> 40) / 16777216.0f;
    const float expect = u >= p ? x[i] * scale : 0.0f;
    kept += u >= p;
    ASSERT_EQ(std::memcmp(&y[i], &expect, sizeof(float)), 0) << "element " << i;
  }
  // Binomial(n, 0.7): 4 standard deviations.
  EXPECT_NEAR(double(kept) / n, 0.7, 4 * std::sqrt(0.7 * 0.3 / n));
}

TEST(KernelDropout, SplittingTheTensorGivesTheSameMask) {
  Rng rng(35);
  const int64_t n = 1000, cut = 377, offset = 50;
  auto x = rng.uniform(n);
  std::vector<float> whole(n), parts(n);
  dropout(x.data(), whole.data(), n, 0.5f, 9, 3, offset);
  dropout(x.data(), parts.data(), cut, 0.5f, 9, 3, offset);
  dropout(x.data() + cut, parts.data() + cut, n - cut, 0.5f, 9, 3, offset + cut);
  EXPECT_EQ(whole, parts);
}

TEST(KernelDropout, KeysAndSeedsGiveIndependentMasks) {
  const int64_t n = 20000;
  std::vector<float> ones(n, 1.0f), a(n), b(n), c(n);
  dropout(ones.data(), a.data(), n, 0.5f, 1, 0, 0);
  dropout(ones.data(), b.data(), n, 0.5f, 1, 1, 0);
  dropout(ones.data(), c.data(), n, 0.5f, 2, 0, 0);
  int64_t same_ab = 0, same_ac = 0;
  for (int64_t i = 0; i < n; ++i) {
    same_ab += (a[i] == 0) == (b[i] == 0);
    same_ac += (a[i] == 0) == (c[i] == 0);
  }
  // Independent masks agree on half the elements: 4 standard deviations.
  const double tol = 4 * std::sqrt(0.25 / n);
  EXPECT_NEAR(double(same_ab) / n, 0.5, tol);
  EXPECT_NEAR(double(same_ac) / n, 0.5, tol);
}

TEST(KernelDropout, ZeroProbabilityCopiesAndOneDropsAll) {
  Rng rng(36);
  auto x = rng.uniform(100);
  std::vector<float> y(100, 5.0f);
  dropout(x.data(), y.data(), 100, 0.0f, 1, 2, 3);
  EXPECT_EQ(y, x);
  dropout(x.data(), y.data(), 100, 1.0f, 1, 2, 3);
  EXPECT_EQ(y, std::vector<float>(100, 0.0f));
}

// L = sum(w . dropout(x)): dL/dx = dropout(w) with the same (seed, key, offset).
TEST(KernelDropout, GradientIsTheSameMaskOnDy) {
  Rng rng(37);
  const int64_t n = 300;
  auto x = rng.uniform(n), w = rng.uniform(n);
  std::vector<float> y(n), dx(n);
  auto objective = [&] {
    dropout(x.data(), y.data(), n, 0.25f, 77, 5, 1000);
    return weighted_sum(y, w);
  };
  dropout(w.data(), dx.data(), n, 0.25f, 77, 5, 1000);
  expect_near_all(dx, finite_difference(x, objective, 1e-2f), 1e-4, 1e-5, "ddropout");
}

}  // namespace
}  // namespace mtc::rt::host::test
