// Tests of the host layer norm and RMS norm: forward against double loops,
// backward (dx, dgamma, dbeta) against finite differences of the fp32 kernel
// and of the double reference, with and without the bias, on odd widths.
#include "kernels_util.h"
#include "mtc/rt/host_kernels.h"

namespace mtc::rt::host::test {
namespace {

template <typename T>
std::vector<double> layer_norm_ref(const std::vector<T>& x, const std::vector<T>& g,
                                   const T* beta, int64_t t, int64_t d, double eps) {
  std::vector<double> y(t * d);
  for (int64_t r = 0; r < t; ++r) {
    double mean = 0, var = 0;
    for (int64_t j = 0; j < d; ++j) mean += x[r * d + j];
    mean /= d;
    for (int64_t j = 0; j < d; ++j) var += (x[r * d + j] - mean) * (x[r * d + j] - mean);
    var /= d;
    for (int64_t j = 0; j < d; ++j)
      y[r * d + j] = (x[r * d + j] - mean) / std::sqrt(var + eps) * g[j] + (beta ? beta[j] : 0.0);
  }
  return y;
}

template <typename T>
std::vector<double> rms_norm_ref(const std::vector<T>& x, const std::vector<T>& g,
                                 int64_t t, int64_t d, double eps) {
  std::vector<double> y(t * d);
  for (int64_t r = 0; r < t; ++r) {
    double ms = 0;
    for (int64_t j = 0; j < d; ++j) ms += double(x[r * d + j]) * x[r * d + j];
    ms /= d;
    for (int64_t j = 0; j < d; ++j) y[r * d + j] = x[r * d + j] / std::sqrt(ms + eps) * g[j];
  }
  return y;
}

const std::vector<std::pair<int64_t, int64_t>> kShapes = {{1, 1}, {3, 7}, {5, 64}, {2, 129}};

TEST(KernelLayerNorm, ForwardMatchesReference) {
  Rng rng(20);
  for (auto [t, d] : kShapes)
    for (bool with_beta : {true, false}) {
      auto x = rng.uniform(t * d, -2.0f, 3.0f), g = rng.uniform(d), b = rng.uniform(d);
      std::vector<float> y(t * d);
      const float* beta = with_beta ? b.data() : nullptr;
      layer_norm_forward(x.data(), g.data(), beta, y.data(), t, d, 1e-5f);
      expect_near_all(y, layer_norm_ref(x, g, beta, t, d, 1e-5), 1e-5, 1e-5,
                      "layer_norm d=" + std::to_string(d));
    }
}

TEST(KernelLayerNorm, BackwardMatchesFiniteDifferences) {
  Rng rng(21);
  // Plain variables, not a structured binding: the lambdas below capture
  // them, which C++17 does not allow for bindings (clang-14 refuses).
  for (auto shape : std::vector<std::pair<int64_t, int64_t>>{{3, 7}, {2, 33}})
    for (bool with_beta : {true, false}) {
      const int64_t t = shape.first, d = shape.second;
      const std::string tag = " d=" + std::to_string(d) + (with_beta ? " beta" : " no beta");
      auto x = rng.uniform(t * d, -2.0f, 2.0f), g = rng.uniform(d), b = rng.uniform(d);
      auto w = rng.uniform(t * d);
      std::vector<float> y(t * d), dx(t * d), dg(d, 9.0f), db(d, 9.0f);
      const float eps = 1e-5f;
      auto objective = [&] {
        layer_norm_forward(x.data(), g.data(), with_beta ? b.data() : nullptr, y.data(), t, d, eps);
        return weighted_sum(y, w);
      };
      layer_norm_backward(x.data(), g.data(), w.data(), dx.data(), dg.data(),
                          with_beta ? db.data() : nullptr, t, d, eps);
      expect_gradient(dx, finite_difference(x, objective, 1e-2f), 1e-2, "dx" + tag);
      expect_gradient(dg, finite_difference(g, objective, 1e-2f), 1e-2, "dgamma" + tag);
      if (with_beta)
        expect_gradient(db, finite_difference(b, objective, 1e-2f), 1e-2, "dbeta" + tag);
      else
        expect_near_all(db, std::vector<double>(d, 9.0), 0, 0, "dbeta untouched");
      // Against finite differences of the double reference.
      auto xd = to_double(x), gd = to_double(g), bd = to_double(b);
      auto objective_d = [&] {
        return weighted_sum(layer_norm_ref(xd, gd, with_beta ? bd.data() : nullptr, t, d, eps), w);
      };
      expect_gradient(dx, finite_difference(xd, objective_d, 1e-6), 1e-4, "dx (double)" + tag);
      expect_gradient(dg, finite_difference(gd, objective_d, 1e-6), 1e-4, "dgamma (double)" + tag);
      if (with_beta)
        expect_gradient(db, finite_difference(bd, objective_d, 1e-6), 1e-4, "dbeta (double)" + tag);
    }
}

TEST(KernelRmsNorm, ForwardMatchesReference) {
  Rng rng(22);
  for (auto [t, d] : kShapes) {
    auto x = rng.uniform(t * d, -2.0f, 3.0f), g = rng.uniform(d);
    std::vector<float> y(t * d);
    rms_norm_forward(x.data(), g.data(), y.data(), t, d, 1e-6f);
    expect_near_all(y, rms_norm_ref(x, g, t, d, 1e-6), 1e-5, 1e-6,
                    "rms_norm d=" + std::to_string(d));
  }
}

TEST(KernelRmsNorm, BackwardMatchesFiniteDifferences) {
  Rng rng(23);
  for (auto shape : std::vector<std::pair<int64_t, int64_t>>{{3, 7}, {2, 33}}) {
    const int64_t t = shape.first, d = shape.second;  // captured below: not a binding
    auto x = rng.uniform(t * d, -2.0f, 2.0f), g = rng.uniform(d), w = rng.uniform(t * d);
    std::vector<float> y(t * d), dx(t * d), dg(d);
    auto objective = [&] {
      rms_norm_forward(x.data(), g.data(), y.data(), t, d, 1e-6f);
      return weighted_sum(y, w);
    };
    rms_norm_backward(x.data(), g.data(), w.data(), dx.data(), dg.data(), t, d, 1e-6f);
    const std::string tag = " d=" + std::to_string(d);
    expect_gradient(dx, finite_difference(x, objective, 1e-2f), 1e-2, "dx" + tag);
    expect_gradient(dg, finite_difference(g, objective, 1e-2f), 1e-2, "dgamma" + tag);
    auto xd = to_double(x), gd = to_double(g);
    auto objective_d = [&] { return weighted_sum(rms_norm_ref(xd, gd, t, d, 1e-6), w); };
    expect_gradient(dx, finite_difference(xd, objective_d, 1e-6), 1e-4, "dx (double)" + tag);
    expect_gradient(dg, finite_difference(gd, objective_d, 1e-6), 1e-4, "dgamma (double)" + tag);
  }
}

}  // namespace
}  // namespace mtc::rt::host::test
