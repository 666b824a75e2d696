// Tests of the host optimizer kernels: sum_squares against a double loop and
// three AdamW steps against torch.optim.AdamW's update written out in double
// (decoupled weight decay, bias-corrected moments, eps outside the sqrt).
#include "kernels_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::host::test {
namespace {

TEST(KernelSumSquares, MatchesDoubleSum) {
  Rng rng(60);
  for (int64_t n : {0, 1, 1000, 200001}) {
    auto x = rng.normal(n, 3.0f);
    double ref = 0;
    for (float v : x) ref += double(v) * v;
    EXPECT_NEAR(sum_squares(x.data(), n), ref, 1e-12 * (1 + ref)) << "n=" << n;
  }
}

TEST(KernelAdamW, ThreeStepsMatchTorchAdamW) {
  Rng rng(61);
  const int64_t n = 1001;
  const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, scale = 0.5;
  auto param = rng.normal(n);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  std::vector<double> p_ref(param.begin(), param.end()), m_ref(n, 0.0), v_ref(n, 0.0);
  for (int64_t step = 1; step <= 3; ++step) {
    auto grad = rng.normal(n, 2.0f);
    grad[0] = 0.0f;           // a parameter that never gets a gradient
    grad[1] = 1e-6f * step;   // a gradient far below the noise of v
    adamw(param.data(), grad.data(), m.data(), v.data(), n, float(lr), float(b1), float(b2),
          float(eps), float(wd), step, float(scale));
    // torch.optim.AdamW, one parameter at a time.
    for (int64_t i = 0; i < n; ++i) {
      const double g = double(grad[i]) * scale;
      p_ref[i] *= 1 - lr * wd;
      m_ref[i] = b1 * m_ref[i] + (1 - b1) * g;
      v_ref[i] = b2 * v_ref[i] + (1 - b2) * g * g;
      const double m_hat = m_ref[i] / (1 - std::pow(b1, step));
      const double v_hat = v_ref[i] / (1 - std::pow(b2, step));
      p_ref[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
    const std::string tag = " step " + std::to_string(step);
    expect_near_all(param, p_ref, 1e-6, 1e-6, "param" + tag);
    expect_near_all(m, m_ref, 1e-5, 1e-7, "m" + tag);  // m ~ 0.1: cancellations
    expect_near_all(v, v_ref, 1e-5, 1e-12, "v" + tag);
  }
}

TEST(KernelAdamW, ZeroWeightDecayAndUnitScale) {
  Rng rng(62);
  const int64_t n = 64;
  auto param = rng.normal(n), grad = rng.normal(n);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  std::vector<double> ref(n);
  // Step 1 with wd = 0: m_hat = g, v_hat = g^2, so p -= lr * g / (|g| + eps).
  for (int64_t i = 0; i < n; ++i) ref[i] = param[i] - 1e-3 * grad[i] / (std::abs(double(grad[i])) + 1e-8);
  adamw(param.data(), grad.data(), m.data(), v.data(), n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, 1.0f);
  expect_near_all(param, ref, 1e-6, 1e-7, "param");
}

}  // namespace
}  // namespace mtc::rt::host::test
