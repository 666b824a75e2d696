// Helpers shared by the host kernel tests (kernels_*.cpp): random data,
// closeness checks against double-precision references, and central finite
// differences of fp32 kernels.
//
// Finite differences: the objective is L(x) = sum_i w_i * out_i(x). Every
// backward kernel is checked twice:
// - against central differences of the fp32 forward kernel itself (eps
//   ~1e-2, L summed in double, the quotient divided by the perturbation
//   actually represented in fp32): errors are the O(eps^2) truncation term
//   and fp32 rounding of the outputs (~1e-7 |out| / eps), so tolerance ~1e-2;
//   this proves forward and backward kernels agree;
// - where the test has a double reference of the forward, against central
//   differences of it in double (eps ~1e-6, error ~1e-9), with tolerance
//   ~1e-4: this catches small errors in the gradient formula.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace mtc::rt::host::test {

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  std::vector<float> uniform(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(gen_);
    return v;
  }
  std::vector<float> normal(size_t n, float stddev = 1.0f) {
    std::normal_distribution<float> dist(0.0f, stddev);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(gen_);
    return v;
  }
  int32_t integer(int32_t lo, int32_t hi) {  // in [lo, hi]
    return std::uniform_int_distribution<int32_t>(lo, hi)(gen_);
  }
  std::vector<int32_t> integers(size_t n, int32_t lo, int32_t hi) {
    std::vector<int32_t> v(n);
    for (auto& x : v) x = integer(lo, hi);
    return v;
  }

 private:
  std::mt19937_64 gen_;
};

// sum_i w_i * out_i in double.
template <typename T>
double weighted_sum(const std::vector<T>& out, const std::vector<float>& w) {
  double acc = 0.0;
  for (size_t i = 0; i < out.size(); ++i) acc += static_cast<double>(w[i]) * out[i];
  return acc;
}

// Central differences of `objective` with respect to every element of x
// (x is restored afterwards). With T = float the quotient divides by the step
// actually represented in fp32; with T = double (a double reference
// implementation) eps ~1e-6 gives gradients good to ~1e-9.
template <typename T>
std::vector<double> finite_difference(std::vector<T>& x, const std::function<double()>& objective,
                                      T eps) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const T saved = x[i];
    const T hi = saved + eps, lo = saved - eps;
    x[i] = hi;
    const double f_hi = objective();
    x[i] = lo;
    const double f_lo = objective();
    x[i] = saved;
    grad[i] = (f_hi - f_lo) / (static_cast<double>(hi) - static_cast<double>(lo));
  }
  return grad;
}

inline double rms(const std::vector<double>& v) {
  double acc = 0.0;
  for (double x : v) acc += x * x;
  return v.empty() ? 0.0 : std::sqrt(acc / static_cast<double>(v.size()));
}

// Every element: |actual - expected| <= rtol * |expected| + atol.
template <typename A>
void expect_near_all(const std::vector<A>& actual, const std::vector<double>& expected,
                     double rtol, double atol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int reported = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double err = std::abs(static_cast<double>(actual[i]) - expected[i]);
    if (!(err <= rtol * std::abs(expected[i]) + atol)) {
      ADD_FAILURE() << what << "[" << i << "]: got " << actual[i] << ", expected "
                    << expected[i] << " (rtol " << rtol << ", atol " << atol << ")";
      if (++reported == 5) return;
    }
  }
}

// An analytic gradient against finite differences: every element within
// rtol of the FD value plus rtol times the FD gradient's RMS (so that a wrong
// factor or sign on any element that matters fails).
template <typename A>
void expect_gradient(const std::vector<A>& analytic, const std::vector<double>& fd,
                     double rtol, const std::string& what) {
  const double scale = rms(fd);
  ASSERT_GT(scale, 0.0) << what << ": the finite-difference gradient is zero";
  expect_near_all(analytic, fd, rtol, rtol * scale, what);
}

template <typename T>
std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

}  // namespace mtc::rt::host::test
