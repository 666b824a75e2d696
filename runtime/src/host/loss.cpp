// Host softmax cross-entropy over the vocabulary, mean over the rows whose
// target is not ignore_index.
//
// Math, per counted row t with target y_t (count = number of counted rows):
//   lse_t = log sum_v exp(logits[t, v])
//   loss  = (1 / count) sum_t (lse_t - logits[t, y_t])          (0 if count == 0)
//   dlogits[t, v] = dloss / count * (exp(logits[t, v] - lse_t) - [v == y_t])
//   dlogits[t, :] = 0 on ignored rows.
// Row terms are computed in double in parallel and summed in row order.
// Classes at or past `valid` (vocabulary padding) take no part: they are
// left out of the log-sum-exp and get a zero gradient, so a padded
// vocabulary computes the same loss as the unpadded one.
// Targets are validated by the forward pass; backward treats an
// out-of-range target like ignore_index instead of reading out of bounds.
#include "mtc/rt/host_kernels.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "host/parallel.h"

namespace mtc::rt::host {
namespace {

bool counted(int32_t target, int64_t v, int32_t ignore_index) {
  return target != ignore_index && target >= 0 && target < v;
}

// log sum_v exp(row[v]) in double.
double log_sum_exp(const float* row, int64_t v) {
  double mx = row[0];
  for (int64_t j = 1; j < v; ++j) mx = std::max(mx, static_cast<double>(row[j]));
  double sum = 0.0;
  for (int64_t j = 0; j < v; ++j) sum += std::exp(row[j] - mx);
  return mx + std::log(sum);
}

int64_t row_grain(int64_t v) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(v, 1)); }

}  // namespace

// logits (T, V), targets (T); *loss = mean over counted rows.
bool cross_entropy_forward(const float* logits, const int32_t* targets,
                           float* loss, int64_t t, int64_t v, int64_t valid,
                           int32_t ignore_index) {
  const int64_t stride = v;
  v = valid;
  for (int64_t i = 0; i < t; ++i)
    if (targets[i] != ignore_index && (targets[i] < 0 || targets[i] >= v)) return false;
  std::vector<double> row_loss(static_cast<size_t>(t), 0.0);  // (T)
  parallel_for(t, row_grain(v), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (!counted(targets[i], v, ignore_index)) continue;
      const float* row = logits + i * stride;
      row_loss[i] = log_sum_exp(row, v) - row[targets[i]];
    }
  });
  double sum = 0.0;
  int64_t count = 0;
  for (int64_t i = 0; i < t; ++i) {
    if (!counted(targets[i], v, ignore_index)) continue;
    sum += row_loss[i];
    ++count;
  }
  *loss = count > 0 ? static_cast<float>(sum / static_cast<double>(count)) : 0.0f;
  return true;
}

// dlogits (T, V) overwritten.
void cross_entropy_backward(const float* logits, const int32_t* targets,
                            float dloss, float* dlogits, int64_t t, int64_t v,
                            int64_t valid, int32_t ignore_index) {
  const int64_t stride = v;
  v = valid;
  int64_t count = 0;
  for (int64_t i = 0; i < t; ++i) count += counted(targets[i], v, ignore_index);
  const double coeff = count > 0 ? static_cast<double>(dloss) / static_cast<double>(count) : 0.0;
  parallel_for(t, row_grain(v), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* d = dlogits + i * stride;
      std::fill(d + v, d + stride, 0.0f);
      if (!counted(targets[i], v, ignore_index)) {
        std::fill(d, d + v, 0.0f);
        continue;
      }
      const float* row = logits + i * stride;
      const double lse = log_sum_exp(row, v);
      for (int64_t j = 0; j < v; ++j)
        d[j] = static_cast<float>(coeff * std::exp(row[j] - lse));
      d[targets[i]] = static_cast<float>(coeff * (std::exp(row[targets[i]] - lse) - 1.0));
    }
  });
}

}  // namespace mtc::rt::host
