// Host optimizer kernels: the squared norm used for gradient clipping and one
// AdamW step, following PyTorch's torch.optim.AdamW (single-tensor path,
// amsgrad off, maximize off) operation by operation:
//
//   g  = grad * grad_scale
//   p *= 1 - lr * wd                       (decoupled weight decay)
//   m  = b1 * m + (1 - b1) * g
//   v  = b2 * v + (1 - b2) * g^2
//   bc1 = 1 - b1^step, bc2 = 1 - b2^step   (in double, as Python floats)
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
//
// which is  p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p_old)  of
// host_kernels.h. Element updates are fp32 like PyTorch's; step counts from 1.
#include "mtc/rt/host_kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "host/parallel.h"

namespace mtc::rt::host {

// sum_i x[i]^2 (n) in double; chunk sums added in chunk order.
double sum_squares(const float* x, int64_t n) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  parallel_for(chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double acc = 0.0;
      const int64_t hi = std::min(n, (c + 1) * kChunk);
      for (int64_t i = c * kChunk; i < hi; ++i) acc += static_cast<double>(x[i]) * x[i];
      partial[c] = acc;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

// param, grad, m, v (n).
void adamw(float* param, const float* grad, float* m, float* v, int64_t n,
           float lr, float beta1, float beta2, float eps, float weight_decay,
           int64_t step, float grad_scale) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
  const float step_size = static_cast<float>(static_cast<double>(lr) / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = static_cast<float>(1.0 - static_cast<double>(lr) * weight_decay);
  parallel_for(n, 1 << 15, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float g = grad[i] * grad_scale;
      float p = param[i] * decay;
      m[i] = beta1 * m[i] + (1.0f - beta1) * g;
      v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
      p -= step_size * (m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps));
      param[i] = p;
    }
  });
}

}  // namespace mtc::rt::host
