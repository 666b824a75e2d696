// Tests of the host softmax cross-entropy: mean loss over non-ignored rows
// against a double reference (including large logits and a class id used as
// ignore_index), the all-ignored case, rejection of out-of-range targets, and
// the gradient against finite differences of the kernel and of the reference.
#include "kernels_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::host::test {
namespace {

template <typename T>
double cross_entropy_ref(const std::vector<T>& logits, const std::vector<int32_t>& targets,
                         int64_t t, int64_t v, int32_t ignore) {
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < t; ++i) {
    if (targets[i] == ignore) continue;
    double mx = logits[i * v];
    for (int64_t j = 0; j < v; ++j) mx = std::max(mx, double(logits[i * v + j]));
    double z = 0;
    for (int64_t j = 0; j < v; ++j) z += std::exp(logits[i * v + j] - mx);
    sum += -(logits[i * v + targets[i]] - mx - std::log(z));
    ++count;
  }
  return count ? sum / count : 0.0;
}

TEST(KernelCrossEntropy, ForwardMatchesReferenceWithIgnoredRows) {
  Rng rng(50);
  struct Case { int64_t t, v; int32_t ignore; float spread; };
  for (const Case& c : {Case{7, 11, -100, 3.0f}, Case{5, 1000, -100, 60.0f}, Case{9, 4, 0, 2.0f},
                        Case{1, 1, -1, 1.0f}}) {
    auto logits = rng.uniform(c.t * c.v, -c.spread, c.spread);
    auto targets = rng.integers(c.t, 0, int32_t(c.v - 1));
    if (c.t > 2) targets[1] = c.ignore;
    float loss = 0;
    ASSERT_TRUE(cross_entropy_forward(logits.data(), targets.data(), &loss, c.t, c.v, c.v, c.ignore));
    const double ref = cross_entropy_ref(logits, targets, c.t, c.v, c.ignore);
    EXPECT_NEAR(loss, ref, 1e-6 * (1 + std::abs(ref))) << "T=" << c.t << " V=" << c.v;
  }
}

TEST(KernelCrossEntropy, AllRowsIgnoredGivesZeroLossAndGradient) {
  Rng rng(51);
  const int64_t t = 3, v = 5;
  auto logits = rng.uniform(t * v);
  std::vector<int32_t> targets(t, -100);
  float loss = 7;
  ASSERT_TRUE(cross_entropy_forward(logits.data(), targets.data(), &loss, t, v, v, -100));
  EXPECT_EQ(loss, 0.0f);
  std::vector<float> d(t * v, 9.0f);
  cross_entropy_backward(logits.data(), targets.data(), 1.0f, d.data(), t, v, v, -100);
  EXPECT_EQ(d, std::vector<float>(t * v, 0.0f));
}

TEST(KernelCrossEntropy, RejectsOutOfRangeTargetsWithoutWriting) {
  Rng rng(52);
  const int64_t t = 4, v = 6;
  auto logits = rng.uniform(t * v);
  for (int32_t bad : {int32_t(v), int32_t(-1), int32_t(-99)}) {
    std::vector<int32_t> targets = {0, -100, bad, 5};
    float loss = 42.0f;
    EXPECT_FALSE(cross_entropy_forward(logits.data(), targets.data(), &loss, t, v, v, -100))
        << "target " << bad;
    EXPECT_EQ(loss, 42.0f);
  }
}

TEST(KernelCrossEntropy, BackwardMatchesFiniteDifferences) {
  Rng rng(53);
  const int64_t t = 6, v = 9;
  const int32_t ignore = -100;
  const float dloss = 1.7f;
  auto logits = rng.uniform(t * v, -3.0f, 3.0f);
  auto targets = rng.integers(t, 0, int32_t(v - 1));
  targets[2] = ignore;
  targets[4] = ignore;
  std::vector<float> d(t * v, 9.0f);
  auto objective = [&] {
    float loss = 0;
    EXPECT_TRUE(cross_entropy_forward(logits.data(), targets.data(), &loss, t, v, v, ignore));
    return double(dloss) * loss;
  };
  cross_entropy_backward(logits.data(), targets.data(), dloss, d.data(), t, v, v, ignore);
  expect_gradient(d, finite_difference(logits, objective, 1e-2f), 1e-2, "dlogits");
  auto logits_d = to_double(logits);
  auto objective_d = [&] { return dloss * cross_entropy_ref(logits_d, targets, t, v, ignore); };
  expect_gradient(d, finite_difference(logits_d, objective_d, 1e-6), 1e-4, "dlogits (double)");
  for (int64_t j = 0; j < v; ++j) {
    EXPECT_EQ(d[2 * v + j], 0.0f);
    EXPECT_EQ(d[4 * v + j], 0.0f);
  }
}

// Tests that padding columns (classes >= valid) are outside the softmax:
// the loss equals the unpadded one, padding gets zero gradient, a target in
// the padding is rejected, and the gradient matches finite differences.
TEST(KernelCrossEntropy, PaddedVocabularyMatchesUnpadded) {
  Rng rng(54);
  const int64_t t = 5, v = 7, padded = 12;
  const int32_t ignore = -1;
  auto logits = rng.uniform(t * padded, -3.0f, 3.0f);
  auto targets = rng.integers(t, 0, int32_t(v - 1));
  std::vector<float> unpadded(t * v);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < v; ++j) unpadded[i * v + j] = logits[i * padded + j];
  float loss = 0, ref = 0;
  ASSERT_TRUE(cross_entropy_forward(logits.data(), targets.data(), &loss, t, padded, v, ignore));
  ASSERT_TRUE(cross_entropy_forward(unpadded.data(), targets.data(), &ref, t, v, v, ignore));
  EXPECT_EQ(loss, ref);
  std::vector<float> d(t * padded, 9.0f), dref(t * v);
  cross_entropy_backward(logits.data(), targets.data(), 1.0f, d.data(), t, padded, v, ignore);
  cross_entropy_backward(unpadded.data(), targets.data(), 1.0f, dref.data(), t, v, v, ignore);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < padded; ++j)
      EXPECT_EQ(d[i * padded + j], j < v ? dref[i * v + j] : 0.0f) << i << "," << j;
  auto objective = [&] {
    float l = 0;
    EXPECT_TRUE(cross_entropy_forward(logits.data(), targets.data(), &l, t, padded, v, ignore));
    return double(l);
  };
  expect_gradient(d, finite_difference(logits, objective, 1e-2f), 1e-2, "dlogits (padded)");
  targets[3] = int32_t(v);  // a padding class is not a valid target
  EXPECT_FALSE(cross_entropy_forward(logits.data(), targets.data(), &loss, t, padded, v, ignore));
}

}  // namespace
}  // namespace mtc::rt::host::test
