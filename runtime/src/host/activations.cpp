// Host elementwise activations: GELU (tanh approximation or exact erf),
// SwiGLU, squared ReLU and counter-based dropout, each with its gradient.
//
// Math (computed in double, stored fp32):
//   gelu_erf(x)  = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt(2))) / 2
//                  d/dx = Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi)
//   gelu_tanh(x) = x/2 * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 x^3)
//                  d/dx = (1 + tanh(u))/2
//                         + x/2 * (1 - tanh(u)^2) * sqrt(2/pi) * (1 + 3*0.044715 x^2)
//   swiglu(g, u) = silu(g) * u,  silu(g) = g * sigmoid(g)
//                  dgate = dy * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))
//                  dup   = dy * silu(g)
//   squared_relu(x) = max(x, 0)^2,  d/dx = 2 max(x, 0)
//   dropout: y[i] = x[i] / (1 - p) if keep(i) else 0, with keep(i) the
//            counter-based hash of mtc/rt/dropout_hash.h at global index
//            offset + i. It is linear with a fixed mask, so its gradient is
//            the same call on dy.
#include "mtc/rt/host_kernels.h"

#include <algorithm>
#include <cmath>

#include "host/parallel.h"
#include "mtc/rt/dropout_hash.h"

namespace mtc::rt::host {
namespace {

constexpr int64_t kGrain = 1 << 15;
constexpr double kSqrt2OverPi = 0.79788456080286535588;   // sqrt(2/pi)
constexpr double kInvSqrt2 = 0.70710678118654752440;      // 1/sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;    // 1/sqrt(2 pi)
constexpr double kGeluCoeff = 0.044715;

double gelu(double x, bool tanh_approx) {
  if (tanh_approx) {
    double u = kSqrt2OverPi * (x + kGeluCoeff * x * x * x);
    return 0.5 * x * (1.0 + std::tanh(u));
  }
  return 0.5 * x * (1.0 + std::erf(x * kInvSqrt2));
}

double gelu_grad(double x, bool tanh_approx) {
  if (tanh_approx) {
    double u = kSqrt2OverPi * (x + kGeluCoeff * x * x * x);
    double th = std::tanh(u);
    return 0.5 * (1.0 + th) +
           0.5 * x * (1.0 - th * th) * kSqrt2OverPi * (1.0 + 3.0 * kGeluCoeff * x * x);
  }
  return 0.5 * (1.0 + std::erf(x * kInvSqrt2)) + x * std::exp(-0.5 * x * x) * kInvSqrt2Pi;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

// y (n) = gelu(x (n)).
void gelu_forward(const float* x, float* y, int64_t n, bool tanh_approx) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      y[i] = static_cast<float>(gelu(x[i], tanh_approx));
  });
}

// dx (n) = dy * gelu'(x).
void gelu_backward(const float* x, const float* dy, float* dx, int64_t n,
                   bool tanh_approx) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      dx[i] = static_cast<float>(dy[i] * gelu_grad(x[i], tanh_approx));
  });
}

// y (n) = silu(gate) * up.
void swiglu_forward(const float* gate, const float* up, float* y, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double g = gate[i];
      y[i] = static_cast<float>(g * sigmoid(g) * up[i]);
    }
  });
}

// dgate, dup (n): see the header for the math.
void swiglu_backward(const float* gate, const float* up, const float* dy,
                     float* dgate, float* dup, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double g = gate[i];
      double s = sigmoid(g);
      double d = dy[i];
      dgate[i] = static_cast<float>(d * up[i] * s * (1.0 + g * (1.0 - s)));
      dup[i] = static_cast<float>(d * g * s);
    }
  });
}

// y (n) = max(x, 0)^2.
void squared_relu_forward(const float* x, float* y, int64_t n) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double r = std::max(double(x[i]), 0.0);
      y[i] = static_cast<float>(r * r);
    }
  });
}

// dx (n) = dy * 2 max(x, 0).
void squared_relu_backward(const float* x, const float* dy, float* dx,
                           int64_t n) {
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      dx[i] = static_cast<float>(double(dy[i]) * 2.0 *
                                 std::max(double(x[i]), 0.0));
  });
}

// y (n) = x * keep / (1 - p); element i uses global index offset + i.
// p <= 0 copies; p >= 1 drops everything.
void dropout(const float* x, float* y, int64_t n, float p, uint64_t seed,
             uint64_t key, int64_t offset) {
  if (n <= 0) return;
  if (p <= 0.0f) {
    if (x != y) std::copy(x, x + n, y);
    return;
  }
  if (p >= 1.0f) {
    std::fill(y, y + n, 0.0f);
    return;
  }
  const float scale = 1.0f / (1.0f - p);
  const uint64_t stream = dropout_stream(seed, key);
  const uint64_t base = static_cast<uint64_t>(offset);
  parallel_for(n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      y[i] = dropout_keep(stream, base + static_cast<uint64_t>(i), p)
                 ? x[i] * scale
                 : 0.0f;
  });
}

}  // namespace mtc::rt::host
