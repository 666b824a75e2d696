// Tests of the host linear-algebra kernels (matmul, reduce_rows, add,
// accumulate, fill, reduce_broadcast) against double-precision loops, and of
// the matmul gradient identities the autodiff pass relies on against finite
// differences.
#include <tuple>

#include "kernels_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::host::test {
namespace {

// C = op(A) op(B) + bias in double; A, B stored as described in host_kernels.h.
std::vector<double> matmul_ref(const std::vector<float>& a, const std::vector<float>& b,
                               const float* bias, int64_t m, int64_t n, int64_t k,
                               bool ta, bool tb) {
  std::vector<double> c(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = bias ? bias[j] : 0.0;
      for (int64_t p = 0; p < k; ++p) {
        double av = ta ? a[p * m + i] : a[i * k + p];
        double bv = tb ? b[j * k + p] : b[p * n + j];
        acc += av * bv;
      }
      c[i * n + j] = acc;
    }
  return c;
}

TEST(KernelMatmul, MatchesReferenceForEveryTransposeAndBias) {
  Rng rng(1);
  const std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes = {
      {1, 1, 1}, {3, 5, 7}, {17, 13, 29}, {64, 33, 70}, {2, 100, 1}};
  for (auto [m, n, k] : shapes)
    for (int mode = 0; mode < 8; ++mode) {
      const bool ta = mode & 1, tb = mode & 2, with_bias = mode & 4;
      auto a = rng.uniform(m * k), b = rng.uniform(k * n), bias = rng.uniform(n);
      std::vector<float> c(m * n, 123.0f);
      matmul(a.data(), b.data(), with_bias ? bias.data() : nullptr, c.data(), m, n, k, ta, tb);
      auto ref = matmul_ref(a, b, with_bias ? bias.data() : nullptr, m, n, k, ta, tb);
      expect_near_all(c, ref, 1e-5, 1e-5 * std::sqrt(double(k)),
                      "matmul m=" + std::to_string(m) + " n=" + std::to_string(n) +
                          " k=" + std::to_string(k) + " mode=" + std::to_string(mode));
    }
}

TEST(KernelMatmul, EmptyInnerDimensionGivesBiasOrZero) {
  std::vector<float> bias = {1.0f, -2.0f, 3.0f};
  std::vector<float> c(6, 7.0f);
  matmul(nullptr, nullptr, bias.data(), c.data(), 2, 3, 0, false, false);
  expect_near_all(c, {1, -2, 3, 1, -2, 3}, 0, 0, "bias only");
  matmul(nullptr, nullptr, nullptr, c.data(), 2, 3, 0, false, false);
  expect_near_all(c, std::vector<double>(6, 0.0), 0, 0, "zeros");
}

// For C = A B + bias and L = sum(W . C): dA = W B^T, dB = A^T W,
// dbias = reduce_rows(W), all computed with the kernels themselves.
TEST(KernelMatmul, GradientIdentitiesMatchFiniteDifferences) {
  Rng rng(2);
  const int64_t m = 5, n = 4, k = 7;
  auto a = rng.uniform(m * k), b = rng.uniform(k * n), bias = rng.uniform(n);
  auto w = rng.uniform(m * n);
  std::vector<float> c(m * n);
  auto objective = [&] {
    matmul(a.data(), b.data(), bias.data(), c.data(), m, n, k, false, false);
    return weighted_sum(c, w);
  };
  std::vector<float> da(m * k), db(k * n), dbias(n);
  matmul(w.data(), b.data(), nullptr, da.data(), m, k, n, false, true);
  matmul(a.data(), w.data(), nullptr, db.data(), k, n, m, true, false);
  reduce_rows(w.data(), dbias.data(), m, n);
  expect_gradient(da, finite_difference(a, objective, 1e-2f), 1e-3, "dA");
  expect_gradient(db, finite_difference(b, objective, 1e-2f), 1e-3, "dB");
  expect_gradient(dbias, finite_difference(bias, objective, 1e-2f), 1e-3, "dbias");
}

TEST(KernelReduceRows, MatchesColumnSums) {
  Rng rng(3);
  for (auto [m, n] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {7, 3}, {300, 2049}}) {
    auto x = rng.uniform(m * n);
    std::vector<float> y(n, 99.0f);
    reduce_rows(x.data(), y.data(), m, n);
    std::vector<double> ref(n, 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) ref[j] += x[i * n + j];
    expect_near_all(y, ref, 1e-6, 1e-6, "reduce_rows");
  }
}

TEST(KernelAdd, ResidualAndBroadcast) {
  Rng rng(4);
  for (auto [n, nb] : std::vector<std::pair<int64_t, int64_t>>{{13, 13}, {3 * 5 * 7, 5 * 7}, {12, 1}}) {
    auto a = rng.uniform(n), b = rng.uniform(nb);
    std::vector<float> out(n);
    add(a.data(), b.data(), out.data(), n, nb);
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) ref[i] = double(a[i]) + b[i % nb];
    expect_near_all(out, ref, 1e-7, 0, "add nb=" + std::to_string(nb));
  }
  // In place (out == a), as the residual stream uses it.
  auto a = rng.uniform(6), b = rng.uniform(6);
  std::vector<double> ref(6);
  for (int i = 0; i < 6; ++i) ref[i] = double(a[i]) + b[i];
  add(a.data(), b.data(), a.data(), 6, 6);
  expect_near_all(a, ref, 1e-7, 0, "add in place");
}

// reduce_broadcast is the gradient of add's broadcast operand.
TEST(KernelAdd, ReduceBroadcastIsTheGradientOfTheBroadcastOperand) {
  Rng rng(5);
  const int64_t n = 4 * 6, nb = 6;
  auto a = rng.uniform(n), b = rng.uniform(nb), w = rng.uniform(n);
  std::vector<float> out(n), db(nb), da(n);
  auto objective = [&] {
    add(a.data(), b.data(), out.data(), n, nb);
    return weighted_sum(out, w);
  };
  reduce_broadcast(w.data(), db.data(), n, nb);
  expect_gradient(db, finite_difference(b, objective, 1e-2f), 1e-3, "db");
  expect_gradient(w, finite_difference(a, objective, 1e-2f), 1e-3, "da");
}

TEST(KernelAccumulate, AddsInPlaceAndFillOverwrites) {
  Rng rng(6);
  auto dst = rng.uniform(11), src = rng.uniform(11);
  std::vector<double> ref(11);
  for (int i = 0; i < 11; ++i) ref[i] = double(dst[i]) + src[i];
  accumulate(dst.data(), src.data(), 11);
  expect_near_all(dst, ref, 1e-7, 0, "accumulate");
  fill(dst.data(), -2.5f, 11);
  expect_near_all(dst, std::vector<double>(11, -2.5), 0, 0, "fill");
}

}  // namespace
}  // namespace mtc::rt::host::test
